"""Probability references for Phase 1 · 04 (probability).

All functions work elementwise on tensors and broadcast like ``torch`` arithmetic; plain Python
numbers are accepted too (they become tensors of the default dtype). Standard deviations
(``sigma``) must be strictly positive: anything else raises a ``ValueError`` that says where.

    >>> gaussian_log_prob(x, mu, sigma)          # log N(x; mu, sigma^2)
    >>> kl_normal(mu_p, sigma_p, mu_q, sigma_q)  # KL(N(mu_p, sigma_p^2) || N(mu_q, sigma_q^2))
    >>> reparameterize(mu, sigma, eps)           # mu + sigma * eps, differentiable in mu, sigma
"""
from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["gaussian_log_prob", "mvn_log_prob", "kl_normal", "kl_monte_carlo", "reparameterize",
           "inverse_cdf_sample", "exponential_icdf", "entropy_normal"]

_LOG_2PI = math.log(2.0 * math.pi)


def _tensor(x, name: str) -> torch.Tensor:
    """``x`` as a floating-point tensor (tensors keep their dtype, device and autograd link)."""
    if isinstance(x, torch.Tensor):
        return x if x.dtype.is_floating_point else x.to(torch.get_default_dtype())
    try:
        return torch.as_tensor(x, dtype=torch.get_default_dtype())
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a number or a tensor, got {type(x).__name__}") from exc


def _positive(sigma, name: str = "sigma") -> torch.Tensor:
    s = _tensor(sigma, name)
    bad = ~(s > 0)                                   # also catches NaN
    if bad.any():
        first = s.detach().reshape(-1)[bad.reshape(-1)][0].item()
        raise ValueError(f"{name} must be > 0 everywhere (a standard deviation), but "
                         f"{int(bad.sum())} value(s) are not, e.g. {first:g}")
    return s


def gaussian_log_prob(x, mu, sigma) -> torch.Tensor:
    """Elementwise ``log N(x; mu, sigma^2)``; shapes broadcast.

    log N(x; mu, sigma^2) = -1/2 log(2 pi) - log(sigma) - (x - mu)^2 / (2 sigma^2)
    """
    x, mu, sigma = _tensor(x, "x"), _tensor(mu, "mu"), _positive(sigma)
    z = (x - mu) / sigma                             # standardised distance
    return -0.5 * _LOG_2PI - torch.log(sigma) - 0.5 * z ** 2


def mvn_log_prob(x, mean, cov) -> torch.Tensor:
    """Log-density of a D-dimensional Gaussian ``N(mean, cov)`` at each row of ``x``.

    log N(x; m, S) = -1/2 [ D log(2 pi) + log det S + (x - m)^T S^{-1} (x - m) ]

    Args:
        x: (..., D) points; mean: (D,); cov: (D, D) symmetric positive definite.
    Returns:
        (...,) log-densities.
    """
    x, mean, cov = _tensor(x, "x"), _tensor(mean, "mean"), _tensor(cov, "cov")
    D = mean.shape[-1]
    if cov.shape != (D, D) or x.shape[-1] != D:
        raise ValueError(f"shapes do not fit: x {tuple(x.shape)}, mean {tuple(mean.shape)}, "
                         f"cov {tuple(cov.shape)} (want x (..., D), mean (D,), cov (D, D))")
    L, info = torch.linalg.cholesky_ex(cov)          # cov = L L^T
    if info.item() != 0:
        raise ValueError("cov must be symmetric positive definite (its Cholesky factor failed)")
    diff = (x - mean).unsqueeze(-1)                                        # (..., D, 1)
    z = torch.linalg.solve_triangular(L, diff, upper=False).squeeze(-1)     # L z = x - m
    mahalanobis = (z ** 2).sum(-1)                                         # (x-m)^T S^-1 (x-m)
    log_det = 2.0 * torch.log(torch.diagonal(L)).sum()                     # log det S
    return -0.5 * (D * _LOG_2PI + log_det + mahalanobis)


def kl_normal(mu_p, sigma_p, mu_q, sigma_q) -> torch.Tensor:
    """Closed-form ``KL(N(mu_p, sigma_p^2) || N(mu_q, sigma_q^2))``, elementwise, broadcasting.

    KL = log(sigma_q / sigma_p) + (sigma_p^2 + (mu_p - mu_q)^2) / (2 sigma_q^2) - 1/2
    """
    mu_p, mu_q = _tensor(mu_p, "mu_p"), _tensor(mu_q, "mu_q")
    sigma_p, sigma_q = _positive(sigma_p, "sigma_p"), _positive(sigma_q, "sigma_q")
    return (torch.log(sigma_q) - torch.log(sigma_p)
            + (sigma_p ** 2 + (mu_p - mu_q) ** 2) / (2.0 * sigma_q ** 2) - 0.5)


def reparameterize(mu, sigma, eps) -> torch.Tensor:
    """A sample of ``N(mu, sigma^2)`` written as ``mu + sigma * eps`` with ``eps ~ N(0, 1)``.

    The randomness sits in ``eps``; the result is a differentiable function of ``mu`` and
    ``sigma``, so gradients flow through the sample (the trick that makes VAEs trainable).
    """
    mu, sigma, eps = _tensor(mu, "mu"), _positive(sigma), _tensor(eps, "eps")
    return mu + sigma * eps


def kl_monte_carlo(mu_p, sigma_p, mu_q, sigma_q, num_samples: int = 1000,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Monte Carlo estimate of ``KL(p || q) = E_{x~p}[log p(x) - log q(x)]`` for Gaussians.

    Draws ``num_samples`` samples from ``p`` for every element of the broadcast parameters and
    averages the log-ratio; unbiased, with an error that shrinks like ``1 / sqrt(num_samples)``.

    Returns:
        a tensor with the broadcast shape of the four parameters.
    """
    if not (isinstance(num_samples, int) and num_samples > 0):
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    mu_p, mu_q = _tensor(mu_p, "mu_p"), _tensor(mu_q, "mu_q")
    sigma_p, sigma_q = _positive(sigma_p, "sigma_p"), _positive(sigma_q, "sigma_q")
    shape = torch.broadcast_shapes(mu_p.shape, sigma_p.shape, mu_q.shape, sigma_q.shape)
    eps = torch.randn((num_samples, *shape), generator=generator, dtype=mu_p.dtype,
                      device=mu_p.device)
    x = reparameterize(mu_p, sigma_p, eps)                      # (S, ...) samples from p
    log_ratio = gaussian_log_prob(x, mu_p, sigma_p) - gaussian_log_prob(x, mu_q, sigma_q)
    return log_ratio.mean(dim=0)


def exponential_icdf(u, rate: float = 1.0) -> torch.Tensor:
    """Inverse CDF of the exponential distribution: F(x) = 1 - e^(-rate x), so
    F^-1(u) = -log(1 - u) / rate, for u in [0, 1)."""
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate!r}")
    u = _tensor(u, "u")
    return -torch.log1p(-u) / rate


def inverse_cdf_sample(icdf: Callable[[torch.Tensor], torch.Tensor], n: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` samples ``icdf(u)`` with ``u ~ Uniform(0, 1)``: if ``icdf`` is the inverse of a CDF
    ``F``, the samples have distribution ``F`` (inverse-transform sampling). Returns (n,)."""
    if not (isinstance(n, int) and n > 0):
        raise ValueError(f"n must be a positive int, got {n!r}")
    u = torch.rand(n, generator=generator)
    return icdf(u)


def entropy_normal(sigma) -> torch.Tensor:
    """Differential entropy of ``N(mu, sigma^2)`` in nats: H = 1/2 log(2 pi e sigma^2).
    It does not depend on the mean, and is negative when sigma < 1 / sqrt(2 pi e)."""
    sigma = _positive(sigma)
    return 0.5 * (_LOG_2PI + 1.0) + torch.log(sigma)
