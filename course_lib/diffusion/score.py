"""Score matching and the SDE view of diffusion, on 2-D points (Phase 4 · 03).

The **score** of a density p is the vector field s(x) = grad_x log p(x). Knowing it is enough
to sample (Langevin dynamics) and, at every noise level, it is what a diffusion model learns:

    s(x_t, t) = grad log q(x_t) = -E[eps | x_t] / sqrt(1 - a_bar_t)     (DDPM's eps-model)

This module holds the pieces the notebook builds:

- ``GaussianMixture``: a mixture whose score is known in closed form (also after noising);
- ``langevin`` and ``annealed_langevin``: sampling with a score (Song & Ermon, 2019);
- ``dsm_loss``: denoising score matching at several noise levels (Vincent, 2011);
- ``ScoreMLP``: a small MLP conditioned on a noise level sigma or on a step t;
- ``score_from_eps`` / ``eps_from_score``: the link between a score model and an eps-model;
- ``probability_flow_ode``: deterministic sampling (and encoding) with an eps-model;
- ``energy_distance``, ``mode_share``, ``checkerboard_fraction``: 2-D sample-quality measures.

Conventions are those of ``course_lib.diffusion.schedule``: integer t in [0, T), t = 0 least
noisy, x_t = sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t) eps, model(x_t, t) predicts eps.
Points are (N, D) tensors (D = 2 for the toys).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.diffusion.schedule import NoiseSchedule
from course_lib.nn.embeddings import timestep_embedding
from course_lib.nn.layers import MLP

__all__ = ["GaussianMixture", "langevin", "annealed_langevin", "geometric_sigmas", "dsm_loss",
           "ScoreMLP", "score_from_eps", "eps_from_score", "probability_flow_ode",
           "energy_distance", "mode_share", "checkerboard_fraction"]


def _check_points(x: Tensor, who: str, dim: int | None = None) -> Tensor:
    if not torch.is_tensor(x) or x.dim() != 2:
        raise ValueError(f"{who}: points must be a tensor (N, D), got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{who}: points have D = {x.shape[1]} but this needs D = {dim}")
    return x


# --------------------------------------------------------------------------- a known score
@dataclass
class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, sigma_k^2 I), isotropic components.

    means: (K, D); stds: (K,); weights: (K,) summing to 1 (equal when None).

    >>> gm = GaussianMixture.eight_gaussians()        # the "8gaussians" toy of course_lib.data
    >>> s = gm.score(x)                               # (N, 2), grad log p in closed form
    """
    means: Tensor
    stds: Tensor
    weights: Tensor | None = None

    def __post_init__(self):
        self.means = torch.as_tensor(self.means, dtype=torch.float32)
        if self.means.dim() != 2:
            raise ValueError(f"means must be (K, D), got shape {tuple(self.means.shape)}")
        K = self.means.shape[0]
        self.stds = torch.as_tensor(self.stds, dtype=torch.float32).expand(K).clone()
        if bool((self.stds <= 0).any()):
            raise ValueError("stds must be positive")
        w = torch.full((K,), 1.0 / K) if self.weights is None else torch.as_tensor(self.weights, dtype=torch.float32)
        if w.shape != (K,) or bool((w < 0).any()) or abs(float(w.sum()) - 1) > 1e-4:
            raise ValueError(f"weights must be {K} non-negative numbers summing to 1, got {w.tolist()}")
        self.weights = w

    @classmethod
    def eight_gaussians(cls, radius: float = math.sqrt(2), std: float = 0.1) -> "GaussianMixture":
        """The "8gaussians" toy: 8 equal components on a circle of ``radius``, each with ``std``."""
        angle = torch.arange(8) * (2 * math.pi / 8)
        return cls(radius * torch.stack([angle.cos(), angle.sin()], 1), torch.tensor(std))

    def _log_components(self, x: Tensor) -> Tensor:
        """log w_k + log N(x; mu_k, sigma_k^2 I) for every point and component, (N, K)."""
        D = self.means.shape[1]
        sq = ((x[:, None, :] - self.means[None].to(x)) ** 2).sum(-1)              # (N, K)
        var = self.stds.to(x) ** 2
        return self.weights.to(x).log() - 0.5 * sq / var - 0.5 * D * torch.log(2 * math.pi * var)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x), (N, D) -> (N,)."""
        return torch.logsumexp(self._log_components(_check_points(x, "log_prob", self.means.shape[1])), 1)

    def score(self, x: Tensor) -> Tensor:
        """grad_x log p(x) = sum_k r_k(x) (mu_k - x) / sigma_k^2, with r_k the posterior weights.  (N, D) -> (N, D)."""
        x = _check_points(x, "score", self.means.shape[1])
        r = self._log_components(x).softmax(1)                                     # (N, K) responsibilities
        pull = (self.means[None].to(x) - x[:, None, :]) / (self.stds.to(x) ** 2)[None, :, None]
        return (r[:, :, None] * pull).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n points, (n, D)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator)
        return self.means[k] + self.stds[k, None] * z

    def noised(self, sigma: float) -> "GaussianMixture":
        """The law of x + sigma z (z ~ N(0, I)): every variance grows by sigma^2."""
        return GaussianMixture(self.means, (self.stds ** 2 + sigma ** 2).sqrt(), self.weights)

    def diffused(self, alpha_bar: float) -> "GaussianMixture":
        """The law of x_t = sqrt(a_bar) x + sqrt(1 - a_bar) z: means shrink, variances a_bar s^2 + 1 - a_bar."""
        a = float(alpha_bar)
        return GaussianMixture(math.sqrt(a) * self.means, (a * self.stds ** 2 + 1 - a).sqrt(), self.weights)


# --------------------------------------------------------------------------- Langevin dynamics
def langevin(score_fn: Callable[[Tensor], Tensor], x: Tensor, step_size: float, n_steps: int,
             generator: torch.Generator | None = None, trajectory_every: int = 0):
    """Unadjusted Langevin dynamics: x <- x + (step / 2) s(x) + sqrt(step) z,  z ~ N(0, I).

    x: (N, D) starting points; score_fn(x) -> (N, D). Returns the final x, or (x, frames) with
    every ``trajectory_every``-th state when that is > 0.
    """
    if step_size <= 0 or n_steps < 0:
        raise ValueError(f"step_size must be > 0 and n_steps >= 0, got {step_size}, {n_steps}")
    frames = [x.clone()] if trajectory_every else None
    for k in range(n_steps):
        z = torch.randn(x.shape, generator=generator).to(x)
        x = x + 0.5 * step_size * score_fn(x) + math.sqrt(step_size) * z
        if trajectory_every and (k + 1) % trajectory_every == 0:
            frames.append(x.clone())
    return (x, frames) if trajectory_every else x


def geometric_sigmas(sigma_max: float, sigma_min: float, n: int) -> Tensor:
    """n noise levels from sigma_max down to sigma_min with a constant ratio, (n,)."""
    if not 0 < sigma_min < sigma_max or n < 2:
        raise ValueError(f"need 0 < sigma_min < sigma_max and n >= 2, got {sigma_min}, {sigma_max}, {n}")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n)


@torch.no_grad()
def annealed_langevin(score_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigmas: Tensor,
                      step_size: float, n_steps_each: int, generator: torch.Generator | None = None,
                      denoise: bool = True) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).   x: (N, D) -> (N, D).

    For each level sigma_i (largest first) run ``n_steps_each`` Langevin steps on
    score_fn(x, sigma_i) with step  a_i = step_size * sigma_i^2 / sigma_min^2.
    denoise: finish with one Tweedie step x + sigma_min^2 s(x, sigma_min), removing the last
    level's noise (Song & Ermon 2020; Jolicoeur-Martineau et al. 2020).
    score_fn(x, sigma) gets sigma as a (N,) tensor.
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    if sigmas.dim() != 1 or bool((sigmas[1:] > sigmas[:-1]).any()):
        raise ValueError("sigmas must be a 1-D tensor sorted from the largest level down")
    full = lambda s: torch.full((x.shape[0],), float(s), device=x.device)  # noqa: E731
    s_min = float(sigmas[-1])
    for s in sigmas:
        a = step_size * (float(s) / s_min) ** 2
        for _ in range(n_steps_each):
            z = torch.randn(x.shape, generator=generator).to(x)
            x = x + 0.5 * a * score_fn(x, full(s)) + math.sqrt(a) * z
    if denoise:
        x = x + s_min ** 2 * score_fn(x, full(s_min))
    return x


# --------------------------------------------------------------------------- learning the score
def dsm_loss(score_model: Callable[[Tensor, Tensor], Tensor], x0: Tensor, sigmas: Tensor,
             sigma_index: Tensor | None = None, noise: Tensor | None = None,
             generator: torch.Generator | None = None) -> Tensor:
    """Denoising score matching over several noise levels (NCSN's loss), a scalar.

        sigma ~ uniform over ``sigmas``,  x~ = x0 + sigma z,  the score of q(x~ | x0) is -z / sigma, and
        loss = mean over the batch of  1/2 || sigma s(x~, sigma) + z ||^2
             = 1/2 sigma^2 || s(x~, sigma) - (-z / sigma) ||^2     (the weight lambda(sigma) = sigma^2).

    x0: (B, D); sigmas: (L,) levels; sigma_index: (B,) which level per point (random when None);
    noise: (B, D) (standard normal when None). score_model(x, sigma) with sigma (B,) -> (B, D).
    """
    x0 = _check_points(x0, "dsm_loss")
    sigmas = torch.as_tensor(sigmas, dtype=x0.dtype, device=x0.device).reshape(-1)
    B = x0.shape[0]
    if sigma_index is None:
        sigma_index = torch.randint(0, len(sigmas), (B,), generator=generator).to(x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator).to(x0)
    if noise.shape != x0.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)} but x0 has {tuple(x0.shape)}")
    sigma = sigmas[sigma_index]                                                      # (B,)
    x_noisy = x0 + sigma[:, None] * noise
    residual = sigma[:, None] * score_model(x_noisy, sigma) + noise                  # (B, D)
    return 0.5 * (residual ** 2).sum(1).mean()


class ScoreMLP(nn.Module):
    """A small residual MLP for points, conditioned on a noise level or a diffusion step: (B, D), (B,) -> (B, D).

        e = MLP(embed(c))                           embed: sinusoidal features, as the U-Net's time embedding
        h = W_in x;   h <- h + MLP_k(SiLU(h + e))   for k = 1..depth   (the condition enters every block)
        out = W_out SiLU(h)

    cond="step": c is an integer step t in [0, T); the output is used as eps (an eps-model,
        ``model(x_t, t)``, trainable with ``ddpm_loss``).
    cond="sigma": c is a noise level sigma > 0, embedded through log sigma; the output is
        divided by sigma, so the network itself only has to predict -z, which is O(1) at every
        level (NCSNv2's parameterisation, Song & Ermon 2020). Train with ``dsm_loss``.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 32,
                 cond: str = "step"):
        super().__init__()
        if cond not in ("step", "sigma"):
            raise ValueError(f"cond must be 'step' or 'sigma', got {cond!r}")
        self.dim, self.emb_dim, self.cond = dim, emb_dim, cond
        self.emb = MLP(emb_dim, [hidden], hidden, act="silu")
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList([MLP(hidden, [hidden], hidden, act="silu") for _ in range(depth)])
        self.out = nn.Linear(hidden, dim)

    def embed(self, c: Tensor) -> Tensor:
        """(B,) steps or noise levels -> (B, emb_dim) sinusoidal features."""
        if self.cond == "sigma":
            return timestep_embedding(100 * c.float().log(), self.emb_dim, max_period=1000.0)
        return timestep_embedding(c, self.emb_dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        x = _check_points(x, "ScoreMLP", self.dim)
        c = torch.as_tensor(c, device=x.device)
        if c.dim() == 0:
            c = c.expand(x.shape[0])
        if c.shape != (x.shape[0],):
            raise ValueError(f"ScoreMLP: c must be (B,) = ({x.shape[0]},), got {tuple(c.shape)}")
        if self.cond == "sigma" and bool((c <= 0).any()):
            raise ValueError("ScoreMLP(cond='sigma'): noise levels must be > 0")
        e = self.emb(self.embed(c).to(x))                                  # (B, hidden)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(F.silu(h + e))
        out = self.out(F.silu(h))
        return out / c[:, None].to(x) if self.cond == "sigma" else out


# --------------------------------------------------------------------------- scores and eps-models
def score_from_eps(eps: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """s(x_t, t) = -eps / sqrt(1 - a_bar_t).   eps: (B, ...); t: (B,) -> (B, ...)."""
    a = schedule.at(schedule.alphas_cumprod, t, eps.dim()).to(eps)
    return -eps / (1 - a).sqrt()


def eps_from_score(score: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """eps = -sqrt(1 - a_bar_t) s(x_t, t), the inverse of :func:`score_from_eps`."""
    a = schedule.at(schedule.alphas_cumprod, t, score.dim()).to(score)
    return -(1 - a).sqrt() * score


@torch.no_grad()
def probability_flow_ode(model: Callable[[Tensor, Tensor], Tensor], x: Tensor, schedule: NoiseSchedule,
                         steps: int, *, direction: str = "decode", method: str = "heun",
                         trajectory: bool = False):
    """Integrate the probability-flow ODE of the VP diffusion with an eps-model.

    In the variables  y = x / sqrt(a_bar)  and  sigma = sqrt((1 - a_bar) / a_bar)  the ODE is
    simply  dy / dsigma = eps(x, t)  (Song, Meng & Ermon 2020; Karras et al. 2022): noise is
    sigma large, the data sigma = 0. The grid is ``steps`` steps from t = T - 1 down, then
    sigma = 0 for the data.

    direction="decode": x is noise at t = T - 1, returns data; "encode": x is data, returns the
        noise at t = T - 1 that decodes back to it (up to discretisation error).
    method="euler": one model call per step on DDIM's grid (trailing spacing); with
        direction="decode" this *is* DDIM with eta = 0.
        "heun": Heun's 2nd-order method on steps evenly spaced from T - 1 to 0, two calls per
        step except the last tiny hop from t = 0 to the data (eps is not defined at sigma = 0),
        so 2 * steps - 1 model calls.
    Returns x (B, ...) or (x, frames) with every intermediate state when trajectory=True, on x's
    device and in its dtype; y is integrated in float64 on the CPU (the device rule: no float64 on MPS).
    """
    from course_lib.diffusion.ddpm import ddim_timesteps

    if direction not in ("decode", "encode"):
        raise ValueError(f"direction must be 'decode' or 'encode', got {direction!r}")
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    # y is integrated in float64 on the CPU (MPS has no float64); the model runs on its device
    # in x's dtype, so each step moves y there and eps back: 2 small copies per model call.
    a_bar = schedule.alphas_cumprod.cpu().double()
    if method == "euler":                                            # DDIM's grid (trailing spacing)
        grid = ddim_timesteps(steps, schedule.T) + [-1]              # noisy -> data; -1 = the data
    else:                                                            # T - 1 ... 0 evenly, then the data
        grid = sorted({round(v) for v in torch.linspace(schedule.T - 1, 0, steps).tolist()}, reverse=True) + [-1]
    if direction == "encode":
        grid = grid[::-1]
    abar = lambda t: a_bar[t] if t >= 0 else a_bar.new_tensor(1.0)  # noqa: E731
    sig = lambda t: ((1 - abar(t)) / abar(t)).sqrt()                 # noqa: E731

    def eps_at(y: Tensor, t: int) -> Tensor:                         # eps(x, t) with x = sqrt(a_bar) y
        tt = torch.full((y.shape[0],), max(t, 0), device=x.device, dtype=torch.long)  # t = -1: use t = 0
        return model((abar(t).sqrt() * y).to(x.device, x.dtype), tt).cpu().double()

    y = x.cpu().double() / abar(grid[0]).sqrt()
    frames = [x.clone()] if trajectory else None
    for t, t_next in zip(grid[:-1], grid[1:]):
        d = eps_at(y, t)
        h = sig(t_next) - sig(t)
        y_next = y + h * d                                            # Euler: dy = eps dsigma
        if method == "heun" and t_next >= 0:                          # (no slope at the data, sigma = 0)
            y_next = y + h * 0.5 * (d + eps_at(y_next, t_next))       # Heun: average the two slopes
        y = y_next
        if trajectory:
            frames.append((abar(t_next).sqrt() * y).to(x.device, x.dtype))
    out = (abar(grid[-1]).sqrt() * y).to(x.device, x.dtype)
    return (out, frames) if trajectory else out


# --------------------------------------------------------------------------- 2-D sample quality
def energy_distance(x: Tensor, y: Tensor) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between point sets (N, D), (M, D).

    Zero exactly when the two laws are equal; the within-set terms leave out the zero
    diagonal (unbiased U-statistics), so two samples of one law give about 0 (up to noise).
    """
    x, y = (_check_points(p, "energy_distance").detach().cpu().double() for p in (x, y))
    if x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError("energy_distance needs two sets of >= 2 points of the same dimension")
    within = lambda a: torch.cdist(a, a).sum() / (len(a) * (len(a) - 1))  # noqa: E731
    return float(2 * torch.cdist(x, y).mean() - within(x) - within(y))


def mode_share(x: Tensor, means: Tensor, radius: float) -> float:
    """Fraction of points within ``radius`` of their nearest mode.  x: (N, D); means: (K, D)."""
    x = _check_points(x, "mode_share")
    return float((torch.cdist(x, torch.as_tensor(means).to(x)).min(1).values <= radius).float().mean())


def checkerboard_fraction(x: Tensor) -> float:
    """Fraction of points on the dark squares of the "checkerboard" toy (4 x 4 board on [-2, 2]^2).

    A point is on a dark square when it lies inside the board and floor(x + 2) + floor(y + 2)
    is even; a perfect sampler scores 1, uniform noise over the board 0.5.
    """
    x = _check_points(x, "checkerboard_fraction", 2)
    cells = torch.floor(x + 2)
    inside = ((x > -2) & (x < 2)).all(1)
    dark = (cells.sum(1) % 2) == 0
    return float((inside & dark).float().mean())
