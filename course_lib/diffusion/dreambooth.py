"""DreamBooth (Ruiz et al. 2022, https://arxiv.org/abs/2208.12242): teach a pretrained text-to-image
model one new subject from a few pictures, bound to a rare identifier word, Phase 4b.

The instance pictures are captioned "a [V] [class]" ("a sks circle at the top left"): a reserved
word that the model never read, then the subject's class noun. Fine-tuning on four pictures alone
makes the model forget what the class word meant (*language drift*: every "circle" comes out as
the subject) and draw less varied things. **Prior preservation** fights both: the frozen model first
draws pictures of the bare class ("a circle at the top left"), and every batch holds some of them
with their own prompts, so the model must keep drawing the class as it did::

    L = E || eps - eps_theta(z_t^inst, t, c_inst) ||^2  +  lambda E || eps - eps_theta(z_t^prior, t, c_class) ||^2

(the paper's Eq. 2 in the noise-prediction form; lambda = 1 in the `diffusers` scripts'
``--prior_loss_weight``). As there, the instance and prior halves go through the network in one
batch, and the prediction is split into the two parts afterwards (``torch.chunk`` there; here the
instance part is the first ``n_instance`` rows).

**The frozen model as teacher** (this course's variant, not the paper's): the prior half can regress on
what the frozen model itself predicts at the same noisy input instead of on the noise,

    lambda E || eps_frozen(z_t^prior, t, c_class) - eps_theta(z_t^prior, t, c_class) ||^2,

a distillation in the spirit of Learning without Forgetting (Li & Hoiem 2016). Both targets ask for
the same thing on average (the frozen model's prediction is its estimate of E[eps | z_t]), but the
noise target's variance hides small systematic shifts, such as a class drifting towards the subject's
colour, while the teacher's target shows them directly. Costs one more forward pass of the frozen model
on the prior rows, without gradients.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from course_lib.diffusion.path import DiffusionPath
from course_lib.diffusion.schedule import NoiseSchedule

__all__ = ["prior_preservation_loss", "dreambooth_loss"]


def prior_preservation_loss(pred: Tensor, target: Tensor, n_instance: int, prior_weight: float = 1.0) -> Tensor:
    """MSE of the first ``n_instance`` rows + prior_weight * MSE of the rest: pred, target (B, ...) -> scalar.

    Each part is a mean over its own rows, so the weight does not depend on how many prior rows a
    batch holds. With no prior rows (B == n_instance) it is the plain instance loss.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if not 1 <= n_instance <= len(pred):
        raise ValueError(f"n_instance must be in 1..{len(pred)}, got {n_instance}")
    loss = F.mse_loss(pred[:n_instance], target[:n_instance])
    if n_instance < len(pred) and prior_weight:
        loss = loss + prior_weight * F.mse_loss(pred[n_instance:], target[n_instance:])
    return loss


def dreambooth_loss(unet: Callable, schedule: NoiseSchedule, latents: Tensor, context: Tensor,
                    context_mask: Tensor | None, n_instance: int, prior_weight: float = 1.0,
                    prediction: str = "eps", generator: torch.Generator | None = None,
                    teacher: Callable | None = None) -> Tensor:
    """One DreamBooth loss: latents (B, c, s, s) = instance rows, then prior rows; context (B, T, D)
    and context_mask (B, T) their prompts' encodings. One noising and one network call for all rows
    (random numbers from the CPU ``generator``: t, then the noise, as ``ddpm_loss``).

    ``teacher``: the frozen network (same call signature as ``unet``). When given, the prior rows'
    target is its prediction at the same (x_t, t, prompt) instead of the path's target (module docstring);
    the instance rows keep the path's target."""
    path = DiffusionPath(schedule, prediction)
    t = path.sample_t(latents.shape[0], generator, latents.device)
    noise = torch.randn(latents.shape, generator=generator, device="cpu").to(latents)
    ps = path.sample(latents, noise, t)
    pred = unet(ps.x_t, t, context=context, context_mask=context_mask)
    target = ps.target
    if teacher is not None and n_instance < len(latents):
        prior = slice(n_instance, None)
        with torch.no_grad():
            taught = teacher(ps.x_t[prior], t[prior], context=context[prior],
                             context_mask=None if context_mask is None else context_mask[prior])
        target = torch.cat([target[:n_instance], taught])
    return prior_preservation_loss(pred, target, n_instance, prior_weight)
