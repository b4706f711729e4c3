"""The DDPM objective, one reverse step, DDIM, the samplers and guidance.

Conventions are those of ``course_lib.diffusion.schedule``: x0 in [-1, 1], integer t in
[0, T), ``x_t = sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t) eps`` and a model ``model(x_t, t, **cond)``
that returns its guess of eps with the shape of x_t.

Prediction targets: the network predicts eps by default. With ``prediction="v"`` it predicts
the velocity of Salimans & Ho (2022) instead,

    v = sqrt(a_bar_t) eps - sqrt(1 - a_bar_t) x0,   and back:  eps = sqrt(a_bar_t) v + sqrt(1 - a_bar_t) x_t,

and ``sample`` turns its output into eps before any sampler step, so every sampler and the
guidance work unchanged. Why it matters: through x0_hat, ||eps_hat - eps||^2 = SNR_t ||x0_hat - x0||^2
while ||v_hat - v||^2 = (1 + SNR_t) ||x0_hat - x0||^2, so the eps loss barely cares about x0 at
high noise (SNR -> 0), where a sample's overall colour and background are decided.

Guidance scale convention (the one `diffusers` uses): ``eps = eps_u + s * (eps_c - eps_u)``;
s = 1 is the plain conditional model, s = 0 the unconditional one, s > 1 pushes further
toward the condition. (Ho & Salimans write w = s - 1.)
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from course_lib.diffusion.schedule import NoiseSchedule, q_sample

VARIANCES = ("beta", "posterior")
PREDICTIONS = ("eps", "v")


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def v_target(x0: Tensor, noise: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """The velocity target  v = sqrt(a_bar_t) eps - sqrt(1 - a_bar_t) x0.   x0, noise: (B, ...); t: (B,)."""
    a = schedule.at(schedule.alphas_cumprod, t, x0.dim()).to(x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def eps_from_v(v: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """A v-prediction turned into the eps-prediction samplers use:  eps = sqrt(a_bar_t) v + sqrt(1 - a_bar_t) x_t."""
    a = schedule.at(schedule.alphas_cumprod, t, x_t.dim()).to(x_t)
    return a.sqrt() * v + (1 - a).sqrt() * x_t


def ddpm_loss(model: Callable, x0: Tensor, schedule: NoiseSchedule, cond: Mapping | None = None,
              t: Tensor | None = None, noise: Tensor | None = None,
              generator: torch.Generator | None = None, prediction: str = "eps") -> Tensor:
    """The simple DDPM loss  E_{t, eps} || eps - eps_theta(x_t, t) ||^2  (a scalar).

    x0: (B, C, H, W) in [-1, 1]; t: (B,) steps (uniform in [0, T) when None); noise: like x0
    (standard normal when None); cond: keyword arguments for the model (labels, text, ...).
    prediction="v": the target is v = sqrt(a_bar_t) eps - sqrt(1 - a_bar_t) x0 instead of eps.
    """
    _check_prediction(prediction)
    B = x0.shape[0]
    if t is None:
        t = torch.randint(0, schedule.T, (B,), generator=generator, device="cpu").to(x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0)
    xt = q_sample(x0, t, noise, schedule)
    target = noise if prediction == "eps" else v_target(x0, noise, t, schedule)
    return F.mse_loss(model(xt, t, **(cond or {})), target)


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


@torch.no_grad()
def sample(model: Callable, shape: tuple[int, ...], schedule: NoiseSchedule, *,
           steps: int | None = None, eta: float = 0.0, cond: Mapping | None = None,
           uncond: Mapping | None = None, guidance_scale: float = 1.0,
           generator: torch.Generator | None = None, device=None, x_T: Tensor | None = None,
           variance: str = "beta", clip_x0: bool = True, trajectory_every: int = 0,
           eps_fn: Callable | None = None, prediction: str = "eps", progress: bool = True):
    """Generate a batch from noise.  Returns x0 (B, C, H, W) in [-1, 1], or (x0, frames).

    steps=None: DDPM's ancestral chain through all T steps; steps=k: DDIM on k evenly spaced
    steps with the given eta. cond/uncond/guidance_scale: classifier-free guidance (see
    ``guided_eps``). eps_fn(x, t) replaces the model call entirely (classifier guidance).
    prediction="v": the model predicts v; its (guided) output is turned into eps with ``eps_from_v``.
    trajectory_every=k > 0 also returns every k-th intermediate x_t, for animations.
    The noise comes from ``generator`` on the CPU, so a seed gives the same images on any device.
    """
    _check_prediction(prediction)
    device = device or next(iter(getattr(model, "parameters", lambda: iter([torch.empty(0)]))())).device
    randn = lambda: torch.randn(shape, generator=generator).to(device)  # noqa: E731
    x = randn() if x_T is None else x_T.to(device)
    if x.shape != torch.Size(shape):
        raise ValueError(f"x_T has shape {tuple(x.shape)}, expected {tuple(shape)}")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    ts = list(range(schedule.T - 1, -1, -1)) if steps is None else ddim_timesteps(steps, schedule.T)
    frames = [x.cpu()] if trajectory_every else None
    for i, step in enumerate(tqdm(ts, desc="sampling", leave=False, disable=not progress)):
        t = torch.full((shape[0],), step, device=device, dtype=torch.long)
        if eps_fn:
            eps = eps_fn(x, t)
        else:
            eps = guided_eps(model, x, t, cond, uncond, guidance_scale)
            if prediction == "v":
                eps = eps_from_v(eps, x, t, schedule)      # guidance is linear, so mixing v's is the same
        if steps is None:
            x = reverse_step(eps, x, t, schedule, randn(), variance=variance, clip_x0=clip_x0)
        else:
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            x = ddim_step(eps, x, t, t_prev, schedule, eta, randn() if eta > 0 else None, clip_x0=clip_x0)
        if trajectory_every and ((i + 1) % trajectory_every == 0 or i + 1 == len(ts)):
            frames.append(x.cpu())
    if was_training:
        model.train()
    return (x, frames) if trajectory_every else x
