"""The path a diffusion model learns to walk back, and the course's time convention (Phase 4 · 01-02).

**The time convention of the whole course** (stated here once; `diffusers` uses the same):

- ``x0`` is the data, in [-1, 1] (images in [0, 1] go through ``schedule.to_model_range``);
  ``x1`` is the other end of the path, standard normal noise;
- time runs *from data to noise*: ``t = 0`` is the least noisy point, the largest t pure noise;
- Phase 4 (this file): time is an integer step ``t = 0, 1, ..., T-1`` of a :class:`NoiseSchedule`,
  and the path is DDPM's variance-preserving one,

      x_t = sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t) x1,      x1 = eps ~ N(0, I);

- Phase 5 (flow matching) keeps the same direction with continuous ``t in [0, 1]``: a
  ``FlowPath`` beside :class:`DiffusionPath` will return ``x_t = (1 - t) x0 + t x1`` with the
  velocity target ``dx_t/dt = x1 - x0`` from the same ``sample(x0, x1, t) -> PathSample``, and its
  samplers will be step rules of ``course_lib.diffusion.solver``. (Meta's ``flow_matching``
  library runs time the other way, x_0 noise and x_1 data: read its t as 1 - t.)

A path knows how to make a training pair (x_t, target); it knows nothing about networks or
sampling. ``ddpm.ddpm_loss`` is "sample the path, regress the target".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from course_lib.diffusion.objectives import check_prediction, eps_from_v, training_target
from course_lib.diffusion.schedule import NoiseSchedule, q_sample


@dataclass
class PathSample:
    """One point on the path and what the network should predict there. All (B, ...) but t: (B,)."""
    x_t: Tensor
    target: Tensor
    x0: Tensor
    x1: Tensor
    t: Tensor


class DiffusionPath:
    """DDPM's variance-preserving path over a :class:`NoiseSchedule`, with an eps or v target.

    >>> path = DiffusionPath(NoiseSchedule.make("cosine", 100), prediction="v")
    >>> ps = path.sample(x0, torch.randn_like(x0), path.sample_t(len(x0)))
    >>> loss = ((net(ps.x_t, ps.t) - ps.target) ** 2).mean()
    """

    def __init__(self, schedule: NoiseSchedule, prediction: str = "eps"):
        check_prediction(prediction)
        self.schedule, self.prediction = schedule, prediction

    def sample_t(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """n steps uniform in [0, T), drawn on the CPU from ``generator`` (then moved to ``device``).  (n,)."""
        return torch.randint(0, self.schedule.T, (n,), generator=generator, device="cpu").to(device)

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        """x_t = sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t) x1 and its target (x1 for eps, v for v).

        x0: (B, ...) data in [-1, 1]; x1: noise like x0; t: (B,) integer steps.
        """
        x_t = q_sample(x0, t, x1, self.schedule)
        target = training_target(self.prediction, x0, x1, t, self.schedule)
        return PathSample(x_t=x_t, target=target, x0=x0, x1=x1, t=t)

    def eps_from_output(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The network's output (eps or v) as eps, the quantity every DDPM/DDIM step uses."""
        return output if self.prediction == "eps" else eps_from_v(output, x_t, t, self.schedule)
