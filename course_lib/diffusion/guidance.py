"""Guidance for diffusion models: steer a sampler toward a class (Phase 4 · 06).

Guidance is a *wrapper around the model call*: each wrapper turns a network and a condition into a
plain ``fn(x_t, t) -> eps`` that the sampling loop (``course_lib.diffusion.solver``) calls like any
network, so every step rule gets guidance for free. Conventions: x0 in [-1, 1], integer t in [0, T),
the model predicts eps (wrap a v-model in ``objectives.EpsFromV`` *outside* the guidance wrapper).

- **classifier-free guidance** (Ho & Salimans, 2022): one network learns both ``eps(x_t, t, y)``
  and ``eps(x_t, t, null)`` because the label is replaced by the null label with probability p
  during training (:func:`drop_condition`, :func:`cfg_loss`); at sampling time
  ``eps = eps_u + s * (eps_c - eps_u)`` (:class:`ClassifierFreeGuidance`, built on
  ``ddpm.guided_eps``; :func:`cfg_sample` samples one image per requested label).
- **classifier guidance** (Dhariwal & Nichol, 2021): a classifier trained on *noisy* images,
  ``p_phi(y | x_t, t)`` (``course_lib.models.noisy_classifier.NoiseAwareClassifier``), pushes each
  step along its gradient, ``eps' = eps - s * sqrt(1 - a_bar_t) * grad_x log p_phi(y | x_t, t)``
  (``ddpm.classifier_guided_eps``). Here: :func:`noisy_classifier_loss` to train it,
  :func:`classifier_log_prob` and :func:`classifier_guidance_fn` to wrap the model with it.

Scale convention (the phase's, and ``diffusers``' ``guidance_scale``): s = 0 unconditional,
s = 1 the plain conditional model, s > 1 guided. Ho & Salimans write the same mix as
``(1 + w) eps_c - w eps_u``, so w = s - 1. :func:`guidance_convention_report` tells the two apart.

Measuring a sweep (accuracy and diversity per scale, with a judge) is evaluation: see
``course_lib.eval.sweeps``. :func:`class_labels` builds the rows-are-classes batch of requests.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.diffusion.ddpm import cfg_combine, classifier_guided_eps, ddpm_loss, guided_eps
from course_lib.diffusion.schedule import NoiseSchedule, q_sample
from course_lib.diffusion.solver import DDIMRule, sample

__all__ = ["drop_condition", "cfg_loss", "ClassifierFreeGuidance", "cfg_sample", "noisy_classifier_loss",
           "classifier_log_prob", "ClassifierGuidance", "classifier_guidance_fn", "cfg_combine",
           "guidance_convention_report", "class_labels"]


# --------------------------------------------------------------------------- classifier-free guidance
def drop_condition(y: Tensor, p: float, null_label: int, u: Tensor | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    """Condition dropout: each label becomes ``null_label`` with probability p.   y: (B,) -> (B,).

    u: (B,) uniform numbers in [0, 1) deciding the drops (label i is dropped when u_i < p); drawn
    from ``generator`` when None. The result is a new tensor; y is not modified.
    """
    if not 0 <= p <= 1:
        raise ValueError(f"p (the probability of dropping a label) must be in [0, 1], got {p!r}")
    y = torch.as_tensor(y)
    if y.is_floating_point():
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if u is None:
        u = torch.rand(y.shape, generator=generator).to(y.device)
    if u.shape != y.shape:
        raise ValueError(f"u has shape {tuple(u.shape)} but y has {tuple(y.shape)}: give one number per label")
    return torch.where(u < p, torch.full_like(y, null_label), y)       # y_i -> null with probability p


def cfg_loss(model: nn.Module, x0: Tensor, y: Tensor, schedule: NoiseSchedule, p_uncond: float = 0.15,
             generator: torch.Generator | None = None, prediction: str = "eps") -> Tensor:
    """The DDPM loss of a label-conditioned U-Net with condition dropout (a scalar).

    x0: (B, C, H, W) in [-1, 1]; y: (B,) labels in [0, num_classes). A fraction p_uncond of the
    labels is replaced by ``model.null_label``, so the same network also learns eps(x_t, t, null).
    prediction: "eps" or "v" (see ``ddpm_loss``).
    """
    null = model.null_label
    y = torch.as_tensor(y, device=x0.device).long()
    if y.shape != (x0.shape[0],):
        raise ValueError(f"y must be (B,) = ({x0.shape[0]},) labels, got {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= null:
        raise ValueError(f"labels must be in [0, {null - 1}] (label {null} is the null label)")
    y = drop_condition(y, p_uncond, null, generator=generator)
    return ddpm_loss(model, x0, schedule, cond={"y": y}, generator=generator, prediction=prediction)


class ClassifierFreeGuidance:
    """Classifier-free guidance as a wrapper: ``fn(x, t) = eps_u + s (eps_c - eps_u)`` (``ddpm.guided_eps``).

    cond / uncond: keyword arguments for ``model`` with the condition and with the "null"
    condition (e.g. ``{"y": labels}`` and ``{"y": null_labels}``); uncond None or s = 1: just the
    conditional model (one call, no batch doubling). ``.model`` is the wrapped network.
    """

    def __init__(self, model: Callable, cond: Mapping | None = None, uncond: Mapping | None = None,
                 scale: float = 1.0):
        self.model, self.cond, self.uncond, self.scale = model, cond, uncond, scale

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return guided_eps(self.model, x, t, self.cond, self.uncond, self.scale)


@torch.no_grad()
def cfg_sample(model: nn.Module, labels: Tensor, schedule: NoiseSchedule, guidance_scale: float,
               steps: int = 25, shape: Sequence[int] | None = None,
               generator: torch.Generator | None = None) -> Tensor:
    """One image per requested label with classifier-free guidance.  labels: (B,) -> (B, C, H, W) in [-1, 1], CPU.

    eps = eps_u + s (eps_c - eps_u) with s = guidance_scale (s = 1: no guidance, s = 0: ignore
    the labels); DDIM (eta = 0) with ``steps`` steps. ``shape`` is (C, H, W); by default
    (model.in_ch, 16, 16). For other samplers compose ``solver.sample`` with
    :class:`ClassifierFreeGuidance` and a step rule yourself.
    """
    device = next(model.parameters()).device
    labels = torch.as_tensor(labels).long().to(device)
    C, H, W = shape if shape is not None else (model.in_ch, 16, 16)
    uncond = {"y": torch.full_like(labels, model.null_label)}
    guided = ClassifierFreeGuidance(model, {"y": labels}, uncond, guidance_scale)
    return sample(guided, (labels.shape[0], C, H, W), DDIMRule(schedule, steps), generator=generator,
                  progress=False).cpu()


def guidance_convention_report(fn: Callable[[Tensor, Tensor, float], Tensor]) -> str:
    """Diagnose a learner's ``fn(eps_u, eps_c, s)``: the right convention, the paper's w, or neither.

    Returns a one-line message starting with ✅, ❌ or ⏳ (never raises).
    """
    g = torch.Generator().manual_seed(0)
    eps_u, eps_c = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    try:
        got = {s: fn(eps_u.clone(), eps_c.clone(), s) for s in (0.0, 1.0, 3.0)}
    except NotImplementedError:
        return "⏳ not attempted yet"
    except Exception as e:  # noqa: BLE001  (a diagnosis, not a crash)
        return f"❌ it raised {type(e).__name__}: {e}"
    close = lambda a, b: isinstance(a, Tensor) and a.shape == b.shape and torch.allclose(a, b, atol=1e-5)  # noqa: E731
    if all(close(got[s], cfg_combine(eps_u, eps_c, s)) for s in got):
        return "✅ s = 0 gives eps_u, s = 1 gives eps_c, s = 3 extrapolates: the diffusers convention"
    if all(close(got[s], cfg_combine(eps_u, eps_c, s + 1)) for s in got):
        return ("❌ this is the paper's convention (1 + w) eps_c - w eps_u with w = s: at s = 1 it already "
                "guides (2 eps_c - eps_u). Here s = 1 must return eps_c, i.e. use w = s - 1")
    if close(got[1.0], eps_u) and close(got[0.0], eps_c):
        return "❌ eps_u and eps_c are swapped: s = 0 must give eps_u (unconditional), s = 1 eps_c"
    if not close(got[1.0], eps_c):
        return "❌ at s = 1 the result must be exactly eps_c, the plain conditional prediction"
    return "❌ s = 1 is right but other scales are not: eps = eps_u + s * (eps_c - eps_u)"


# --------------------------------------------------------------------------- classifier guidance
def noisy_classifier_loss(classifier: nn.Module, x0: Tensor, y: Tensor, schedule: NoiseSchedule,
                          generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """Cross-entropy of a noise-aware classifier on x_t ~ q(x_t | x0), t uniform in [0, T).

    x0: (B, C, H, W) in [-1, 1]; y: (B,) labels. Returns (loss, {"acc": accuracy on this batch}),
    the form ``course_lib.train.fit`` logs.
    """
    B = x0.shape[0]
    t = torch.randint(0, schedule.T, (B,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    logits = classifier(q_sample(x0, t, noise, schedule), t)
    y = torch.as_tensor(y, device=x0.device).long()
    return F.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean().item()}


def classifier_log_prob(logits_fn: Callable[[Tensor, Tensor], Tensor], y: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """log_prob_fn(x_t, t) -> (B,) log p(y_i | x_t_i, t_i), for ``classifier_guided_eps``.

    logits_fn(x_t, t) -> (B, K): a noise-aware classifier, or any classifier wrapped to ignore t.
    """
    y = torch.as_tensor(y).long()

    def log_prob(x: Tensor, t: Tensor) -> Tensor:
        logp = F.log_softmax(logits_fn(x, t), dim=-1)                   # (B, K)
        return logp.gather(1, y.to(x.device)[:, None]).squeeze(1)       # (B,)
    return log_prob


class ClassifierGuidance:
    """Classifier guidance as a wrapper: the model's eps shifted by a classifier's gradient.

        eps' = eps_theta(x_t, t, **model_kwargs) - s * sqrt(1 - a_bar_t) * grad_x log p(y | x_t, t)

    log_prob_fn(x_t, t) -> (B,): e.g. :func:`classifier_log_prob`. model_kwargs: e.g.
    ``{"y": null_labels}`` to guide the unconditional mode of a CFG U-Net. t_min: guide only at
    steps t >= t_min (the noisier part of the chain); below it the model's own eps is used.
    """

    def __init__(self, model: Callable, log_prob_fn: Callable[[Tensor, Tensor], Tensor],
                 schedule: NoiseSchedule, scale: float, model_kwargs: Mapping | None = None, t_min: int = 0):
        self.model, self.log_prob_fn, self.schedule, self.scale = model, log_prob_fn, schedule, scale
        self.model_kwargs, self.t_min = dict(model_kwargs or {}), t_min

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        eps = self.model(x, t, **self.model_kwargs)
        use = t >= self.t_min                                           # (B,) which samples to guide
        if not bool(use.any()):
            return eps
        guided = classifier_guided_eps(eps, x, t, self.schedule, self.log_prob_fn, self.scale)
        return torch.where(use.reshape(-1, *([1] * (x.dim() - 1))), guided, eps)


def classifier_guidance_fn(model: Callable, log_prob_fn: Callable[[Tensor, Tensor], Tensor],
                           schedule: NoiseSchedule, scale: float,
                           model_kwargs: Mapping | None = None, t_min: int = 0) -> ClassifierGuidance:
    """An ``fn(x, t) -> eps`` for ``solver.sample``: :class:`ClassifierGuidance` (the name notebook 06 uses)."""
    return ClassifierGuidance(model, log_prob_fn, schedule, scale, model_kwargs, t_min)


# --------------------------------------------------------------------------- requests for a sweep
def class_labels(n_per_class: int, num_classes: int = 10) -> Tensor:
    """Requests 0, 0, ..., 1, 1, ...: (num_classes * n_per_class,).

    A grid with nrow=n_per_class has one class per row.
    """
    if n_per_class < 1 or num_classes < 1:
        raise ValueError("n_per_class and num_classes must be positive")
    return torch.arange(num_classes).repeat_interleave(n_per_class)
