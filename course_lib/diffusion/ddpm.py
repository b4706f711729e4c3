"""DDPM and DDIM, equation by equation: the loss, x0 from eps, one ancestral step, one DDIM step,
and the two guidance formulas (Phase 4 · 02, 04, 06).

These are the pieces a learner writes in the notebooks and the assignments (a6, a7); they are
plain functions of tensors. How they are *composed* lives elsewhere:

- what is learned: ``path`` (the course's time convention, ``DiffusionPath``) and ``objectives``
  (eps / v targets and conversions);
- how it is sampled: ``solver`` (one loop, step rules ``AncestralRule`` and ``DDIMRule`` built on
  ``reverse_step`` and ``ddim_step``, and the convenience ``sample``), ``guidance`` (classifier-free
  and classifier guidance as wrappers around the model call) and ``schedulers`` (any `diffusers`
  scheduler as a step rule). The sampling loop is ``solver.sample``.

Guidance scale convention (the one `diffusers` uses): ``eps = eps_u + s * (eps_c - eps_u)``;
s = 1 is the plain conditional model, s = 0 the unconditional one, s > 1 pushes further
toward the condition. (Ho & Salimans write w = s - 1.)
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from course_lib.diffusion.path import DiffusionPath
from course_lib.diffusion.schedule import NoiseSchedule

VARIANCES = ("beta", "posterior")


def ddpm_loss(model: Callable, x0: Tensor, schedule: NoiseSchedule, cond: Mapping | None = None,
              t: Tensor | None = None, noise: Tensor | None = None,
              generator: torch.Generator | None = None, prediction: str = "eps") -> Tensor:
    """The simple DDPM loss  E_{t, eps} || eps - eps_theta(x_t, t) ||^2  (a scalar).

    x0: (B, C, H, W) in [-1, 1]; t: (B,) steps (uniform in [0, T) when None); noise: like x0
    (standard normal when None); cond: keyword arguments for the model (labels, text, ...).
    prediction="v": the target is v = sqrt(a_bar_t) eps - sqrt(1 - a_bar_t) x0 instead of eps.
    Random numbers (CPU ``generator``): first t, then the noise.
    """
    path = DiffusionPath(schedule, prediction)
    if t is None:
        t = path.sample_t(x0.shape[0], generator, x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0)
    ps = path.sample(x0, noise, t)                                  # x_t and the target (eps or v)
    return F.mse_loss(model(ps.x_t, t, **(cond or {})), ps.target)


def predict_x0(eps: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """Invert the forward process: x0_hat = (x_t - sqrt(1 - a_bar_t) eps) / sqrt(a_bar_t)."""
    a = schedule.at(schedule.alphas_cumprod, t, x_t.dim()).to(x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def reverse_step(eps: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule, noise: Tensor,
                 variance: str = "beta", clip_x0: bool = False) -> Tensor:
    """One ancestral step of DDPM: x_{t-1} ~ p(x_{t-1} | x_t).   All tensors (B, ...); t: (B,).

        mean = 1 / sqrt(alpha_t) * (x_t - beta_t / sqrt(1 - a_bar_t) * eps)
        x_{t-1} = mean + sigma_t * noise,   sigma_t^2 = beta_t ("beta") or beta~_t ("posterior"),
        and no noise is added at t = 0.

    clip_x0: clamp the implied x0_hat to [-1, 1] first (the same mean written as the posterior
    mean of q(x_{t-1} | x_t, x0_hat)); it keeps a short chain inside the data range.
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    t = schedule.check_t(t).to(x_t.device)
    at = lambda v: schedule.at(v, t, x_t.dim()).to(x_t)  # noqa: E731  (B, 1, 1, 1)
    alpha, beta, a_bar = at(schedule.alphas), at(schedule.betas), at(schedule.alphas_cumprod)
    if clip_x0:
        x0 = predict_x0(eps, x_t, t, schedule).clamp(-1, 1)
        a_prev = at(schedule.alphas_cumprod_prev)
        mean = (a_prev.sqrt() * beta * x0 + alpha.sqrt() * (1 - a_prev) * x_t) / (1 - a_bar)
    else:
        mean = (x_t - beta / (1 - a_bar).sqrt() * eps) / alpha.sqrt()
    var = beta if variance == "beta" else at(schedule.posterior_variance)
    nonzero = (t > 0).to(x_t).reshape(-1, *([1] * (x_t.dim() - 1)))
    return mean + nonzero * var.sqrt() * noise


def ddim_step(eps: Tensor, x_t: Tensor, t: Tensor, t_prev: Tensor, schedule: NoiseSchedule,
              eta: float = 0.0, noise: Tensor | None = None, clip_x0: bool = False) -> Tensor:
    """One DDIM step from t to t_prev < t (t_prev = -1 means "to the data", a_bar = 1).

        x0_hat = (x_t - sqrt(1 - a_bar_t) eps) / sqrt(a_bar_t)
        sigma  = eta * sqrt((1 - a_bar_prev) / (1 - a_bar_t)) * sqrt(1 - a_bar_t / a_bar_prev)
        x_prev = sqrt(a_bar_prev) x0_hat + sqrt(1 - a_bar_prev - sigma^2) eps + sigma * noise

    eta = 0 is the deterministic DDIM sampler; eta = 1 matches DDPM's ancestral variance.
    """
    t = schedule.check_t(t).to(x_t.device)
    t_prev = torch.as_tensor(t_prev, device=x_t.device).long().reshape(-1).expand_as(t)
    if bool((t_prev >= t).any()):
        raise ValueError("ddim_step goes backwards in time: t_prev must be smaller than t")
    shape = (-1, *([1] * (x_t.dim() - 1)))
    a_bar = schedule.alphas_cumprod.to(x_t.device)
    a_t = a_bar[t].reshape(shape).to(x_t)
    a_prev = torch.where(t_prev >= 0, a_bar[t_prev.clamp(min=0)], torch.ones_like(a_bar[t])).reshape(shape).to(x_t)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
    out = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise")
        out = out + sigma * noise
    return out


def ddim_timesteps(steps: int, T: int) -> list[int]:
    """The steps DDIM visits, largest first: T - 1, T - 1 - T/steps, ... (``steps`` of them).

    Every run starts at the noisiest step T - 1 and the last step jumps to the data (t_prev = -1);
    `diffusers` calls this spacing "trailing".
    """
    if not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an int from 1 to T={T}, got {steps!r}")
    return [round(T - 1 - i * T / steps) for i in range(steps)]


def cfg_combine(eps_u: Tensor, eps_c: Tensor, scale: float) -> Tensor:
    """The classifier-free guidance mix  eps = eps_u + s (eps_c - eps_u)  (s = 1: eps_c)."""
    return eps_u + scale * (eps_c - eps_u)


def guided_eps(model: Callable, x: Tensor, t: Tensor, cond: Mapping | None = None,
               uncond: Mapping | None = None, guidance_scale: float = 1.0) -> Tensor:
    """Classifier-free guidance: eps = eps_u + s * (eps_c - eps_u), one batched model call.

    cond / uncond: keyword arguments for the model with the condition and with the "null"
    condition (e.g. ``{"y": labels}`` and ``{"y": null_labels}``). Without uncond, or with
    s = 1, this is just the conditional model.
    """
    cond = dict(cond or {})
    if uncond is None or guidance_scale == 1.0:
        return model(x, t, **cond)
    if set(cond) != set(uncond):
        raise ValueError(f"cond and uncond must name the same inputs, got {sorted(cond)} and {sorted(uncond)}")
    both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
    eps_u, eps_c = model(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
    return cfg_combine(eps_u, eps_c, guidance_scale)


def classifier_guided_eps(eps: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule,
                          log_prob_fn: Callable[[Tensor, Tensor], Tensor], scale: float) -> Tensor:
    """Classifier guidance (Dhariwal & Nichol): eps' = eps - s * sqrt(1 - a_bar_t) * grad_x log p(y | x_t, t).

    log_prob_fn(x_t, t) -> (B,) log-probabilities of the wanted classes under a noise-aware
    classifier.
    """
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        grad, = torch.autograd.grad(log_prob_fn(x, t).sum(), x)
    a = schedule.at(schedule.alphas_cumprod, t, x_t.dim()).to(x_t)
    return eps - scale * (1 - a).sqrt() * grad
