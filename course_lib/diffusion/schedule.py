"""Noise schedules and the closed-form forward process q(x_t | x_0) (Phase 4 · 01).

Time and data follow the course's convention, stated once in ``course_lib.diffusion.path``
(x0 in [-1, 1], integer t in [0, T), t = 0 the least noisy). The tables: ``beta_t`` is the
variance added at step t, ``alpha_t = 1 - beta_t`` and ``alpha_bar_t = prod_{s <= t} alpha_s``, so

    x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps,    eps ~ N(0, I).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SCHEDULES = ("linear", "cosine")


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's schedule: beta_t rises linearly from beta_start to beta_end over T steps, (T,).

    The end points are scaled by 1000 / T so a shorter chain destroys the data as completely
    as DDPM's 1,000 steps (improved DDPM's convention).
    """
    _check_T(T)
    scale = 1000 / T
    return torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), T, dtype=torch.float64)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal's schedule, (T,): alpha_bar(u) = cos^2((u + s) / (1 + s) * pi / 2), u = t / T.

    beta_t = 1 - alpha_bar(t + 1) / alpha_bar(t), clipped at max_beta so the last step stays finite.
    """
    _check_T(T)
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def _check_T(T) -> None:
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"T (number of diffusion steps) must be an int >= 2, got {T!r}")


@dataclass
class NoiseSchedule:
    """All the per-step numbers of a discrete diffusion, each a float32 tensor of shape (T,).

    >>> s = NoiseSchedule.make("cosine", T=1000)
    >>> xt = s.q_sample(x0, t, noise)
    """
    betas: Tensor
    kind: str = "custom"

    def __post_init__(self):
        b = torch.as_tensor(self.betas, dtype=torch.float64).flatten()
        if b.numel() < 2 or not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas must be a 1-D sequence of at least 2 values strictly between 0 and 1")
        alphas_cumprod = torch.cumprod(1 - b, 0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        self.T = b.numel()
        self.betas = b.float()
        self.alphas = (1 - b).float()
        self.alphas_cumprod = alphas_cumprod.float()
        self.alphas_cumprod_prev = prev.float()
        # Variance of the true posterior q(x_{t-1} | x_t, x0): beta~_t = (1 - a_bar_{t-1}) / (1 - a_bar_t) beta_t.
        self.posterior_variance = ((1 - prev) / (1 - alphas_cumprod) * b).float()

    @classmethod
    def make(cls, kind: str = "linear", T: int = 1000) -> "NoiseSchedule":
        """A named schedule: "linear" (DDPM) or "cosine" (improved DDPM)."""
        if kind == "linear":
            return cls(linear_betas(T), kind)
        if kind == "cosine":
            return cls(cosine_betas(T), kind)
        raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")

    def snr(self, t: Tensor | None = None) -> Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) at t (all steps when t is None)."""
        a = self.alphas_cumprod if t is None else self.at(self.alphas_cumprod, t, 1)
        return a / (1 - a)

    def at(self, values: Tensor, t: Tensor, ndim: int) -> Tensor:
        """``values[t]`` shaped (B, 1, ..., 1) to broadcast against a (B, ...) tensor of ``ndim`` dims."""
        t = self.check_t(t)
        return values.to(t.device)[t].reshape(-1, *([1] * (ndim - 1)))

    def check_t(self, t) -> Tensor:
        """t as a long tensor (B,), with a clear error for floats or values outside [0, T)."""
        t = torch.as_tensor(t)
        if t.is_floating_point():
            raise TypeError(f"t must hold integer step indices 0..{self.T - 1}, got dtype {t.dtype}")
        t = t.long().reshape(-1)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.T):
            raise ValueError(f"t must be in [0, {self.T - 1}], got values from {int(t.min())} to {int(t.max())}")
        return t

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.   x0, noise: (B, ...); t: (B,)."""
        return q_sample(x0, t, noise, self)

    def to(self, device) -> "NoiseSchedule":
        """A copy whose tensors live on ``device``."""
        out = NoiseSchedule.__new__(NoiseSchedule)
        for k, v in vars(self).items():
            setattr(out, k, v.to(device) if torch.is_tensor(v) else v)
        return out


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, schedule: NoiseSchedule) -> Tensor:
    """Sample x_t ~ q(x_t | x0) in closed form.

    x0: (B, C, H, W) (any (B, ...)) in [-1, 1]; t: (B,) integer steps; noise: same shape as x0.
    Returns x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * noise, shape of x0.
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)} but x0 has {tuple(x0.shape)}")
    t = schedule.check_t(t).to(x0.device)
    if t.shape[0] != x0.shape[0]:
        raise ValueError(f"t has {t.shape[0]} steps for a batch of {x0.shape[0]}: give one step per sample")
    a = schedule.at(schedule.alphas_cumprod, t, x0.dim()).to(x0.dtype)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def to_model_range(x: Tensor) -> Tensor:
    """Images in [0, 1] -> [-1, 1], the range the diffusion is defined on."""
    return x * 2 - 1


def to_image_range(x: Tensor) -> Tensor:
    """Model outputs in [-1, 1] -> images in [0, 1] (clamped)."""
    return ((x + 1) / 2).clamp(0, 1)
