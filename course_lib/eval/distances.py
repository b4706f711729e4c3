"""Distances between a generated and a real image set: FID and KID, on judge features.

    fid(real, fake, judge="digits")     # Fréchet distance between two Gaussians fitted to features
    kid(real, fake, judge="digits")     # unbiased MMD² with a cubic kernel, (mean, std) over subsets
    real_vs_real_baseline(real, n=500)  # the FID a perfect generator would get with n samples
    fid_vs_sample_size(real, fake, sizes=[50, 100, 200])   # how FID (or KID) moves with n

The features come from a fixed judge network (:mod:`course_lib.eval.judges`, our stand-in for
Inception-v3). Each facade is two lines over small functions that work on features, so a
notebook can take the pieces apart: ``extract_features`` -> ``feature_stats`` ->
``frechet_distance``. All statistics are computed in float64 (notebooks 3 · 02, 3 · 07).

Papers: Heusel et al. 2017 (FID, https://arxiv.org/abs/1706.08500); Bińkowski et al. 2018
(KID, https://arxiv.org/abs/1801.01401); Chong & Forsyth 2020 (FID's bias at finite n,
https://arxiv.org/abs/1911.07023).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from course_lib.eval.judges import _check_batch, _get_judge, extract_features

__all__ = ["feature_stats", "frechet_distance", "fid_from_features", "kid_from_features",
           "fid", "kid", "real_vs_real_baseline", "fid_vs_sample_size"]


# --------------------------------------------------------------------------- features -> numbers
def _as_features(f, who: str = "features", min_n: int = 2) -> Tensor:
    """Check a feature matrix (N, D) with N >= min_n and return it as a float64 CPU tensor."""
    if isinstance(f, np.ndarray):
        f = torch.from_numpy(f)
    if not isinstance(f, Tensor):
        raise TypeError(f"{who} must be a tensor or array of shape (N, D); got {type(f).__name__}")
    if f.dim() != 2 or f.shape[0] < min_n or f.shape[1] < 1:
        raise ValueError(f"{who} must have shape (N, D) with N >= {min_n}; got {tuple(f.shape)}")
    f = f.detach().to("cpu", torch.float64)
    if not torch.isfinite(f).all():
        raise ValueError(f"{who} contain NaN or inf values")
    return f


def feature_stats(features) -> tuple[Tensor, Tensor]:
    """(N, D) features -> mean mu (D,) and covariance Sigma (D, D), float64.

    mu = (1/N) sum_i f_i,   Sigma = 1/(N-1) sum_i (f_i - mu)(f_i - mu)^T
    """
    f = _as_features(features)
    mu = f.mean(dim=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return mu, sigma


def _sqrtm_psd(a: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix: V diag(sqrt(lambda)) V^T."""
    eigenvalues, vectors = torch.linalg.eigh(a)
    return vectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, Sigma1) and N(mu2, Sigma2):

        d² = ||mu1 - mu2||² + Tr(Sigma1 + Sigma2 - 2 (Sigma1 Sigma2)^{1/2})

    mu: (D,), sigma: (D, D). The trace of (Sigma1 Sigma2)^{1/2} equals the trace of
    (sqrt(Sigma1) Sigma2 sqrt(Sigma1))^{1/2}, a symmetric PSD matrix, so it is the sum of the
    square roots of real, non-negative eigenvalues: no complex numbers, stable when the
    covariances are singular (fewer samples than feature dimensions).
    """
    mu1, mu2 = (torch.as_tensor(m).cpu().double() for m in (mu1, mu2))   # float64 on the CPU only
    sigma1, sigma2 = (torch.as_tensor(s).cpu().double() for s in (sigma1, sigma2))
    d = mu1.shape[0] if mu1.dim() == 1 else -1
    if mu1.dim() != 1 or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError("frechet_distance expects mu1, mu2 of shape (D,) and sigma1, sigma2 of "
                         f"shape (D, D); got {tuple(mu1.shape)}, {tuple(sigma1.shape)}, "
                         f"{tuple(mu2.shape)}, {tuple(sigma2.shape)}")
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2  # remove round-off asymmetry
    root1 = _sqrtm_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    mean_term = (mu1 - mu2).square().sum()                           # ||mu1 - mu2||²
    cov_term = sigma1.trace() + sigma2.trace() - 2 * trace_sqrt      # Tr(S1 + S2 - 2 (S1 S2)^½)
    return max(float(mean_term + cov_term), 0.0)  # >= 0 in exact arithmetic; clip round-off


def fid_from_features(features_a, features_b) -> float:
    """FID between two feature sets (N_a, D) and (N_b, D)."""
    fa = _as_features(features_a, "fid: features_a")
    fb = _as_features(features_b, "fid: features_b")
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"fid: feature sizes differ: {tuple(fa.shape)} vs {tuple(fb.shape)}")
    return frechet_distance(*feature_stats(fa), *feature_stats(fb))


def _poly_kernel(x: Tensor, y: Tensor) -> Tensor:
    """k(x, y) = (x^T y / d + 1)^3 for all pairs: (m, d), (n, d) -> (m, n)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def _mmd2_unbiased(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD² between samples x (m, d) and y (n, d):

        1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j)
        - 2/(mn) sum_{i,j} k(x_i, y_j)
    """
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return within_x + within_y - 2 * k_xy.mean()


def kid_from_features(features_a, features_b, subsets: int = 50, subset_size: int | None = None,
                      seed: int = 0) -> tuple[float, float]:
    """KID: unbiased MMD² (cubic polynomial kernel) averaged over random subsets.

    features: (N_a, D), (N_b, D). Each of ``subsets`` rounds draws ``subset_size`` rows
    (default min(N_a, N_b) // 2, at most 1000, so that the rounds differ) from each set
    without replacement. Returns (mean, std) over the rounds (population std). Unlike FID
    it is unbiased: about 0 for equal distributions, and it can come out slightly negative.
    """
    fa = _as_features(features_a, "kid: features_a")
    fb = _as_features(features_b, "kid: features_b")
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"kid: feature sizes differ: {tuple(fa.shape)} vs {tuple(fb.shape)}")
    largest = min(fa.shape[0], fb.shape[0])
    m = max(2, min(largest // 2, 1000)) if subset_size is None else int(subset_size)
    if not 2 <= m <= largest:
        raise ValueError(f"kid: subset_size must be between 2 and min(N_a, N_b) = {largest}; got {m}")
    if subsets < 1:
        raise ValueError(f"kid: subsets must be >= 1; got {subsets}")
    g = torch.Generator().manual_seed(seed)
    scores = torch.stack([
        _mmd2_unbiased(fa[torch.randperm(fa.shape[0], generator=g)[:m]],
                       fb[torch.randperm(fb.shape[0], generator=g)[:m]])
        for _ in range(subsets)])
    return float(scores.mean()), float(scores.std(unbiased=False))


# --------------------------------------------------------------------------- images -> distances
def fid(images_a: Tensor, images_b: Tensor, judge="digits", batch_size: int = 256,
        device=None) -> float:
    """FID between two image sets (N, C, H, W) in [0, 1], on the judge's features.

    Lower is better; it is biased upwards at small N, so compare numbers only at equal N
    (and against :func:`real_vs_real_baseline` at that N).
    """
    j = _get_judge(judge, device)
    a, b = (_check_batch(x, j, "fid", min_n=2) for x in (images_a, images_b))
    return fid_from_features(extract_features(a, j, batch_size), extract_features(b, j, batch_size))


def kid(images_a: Tensor, images_b: Tensor, judge="digits", subsets: int = 50,
        subset_size: int | None = None, seed: int = 0, batch_size: int = 256,
        device=None) -> tuple[float, float]:
    """KID (mean, std) between two image sets (N, C, H, W) in [0, 1]; see :func:`kid_from_features`."""
    j = _get_judge(judge, device)
    a, b = (_check_batch(x, j, "kid", min_n=2) for x in (images_a, images_b))
    return kid_from_features(extract_features(a, j, batch_size), extract_features(b, j, batch_size),
                             subsets=subsets, subset_size=subset_size, seed=seed)


def real_vs_real_baseline(real_images: Tensor, n: int, judge="digits", repeats: int = 3,
                          seed: int = 0, batch_size: int = 256, device=None) -> dict:
    """FID between two disjoint random halves of size n of the real set, ``repeats`` times.

    This is the floor a perfect generator would reach with n samples: FID's bias at finite
    n. Returns ``{"mean", "std", "n", "values"}`` (std over repeats, population).
    """
    j = _get_judge(judge, device)
    real_images = _check_batch(real_images, j, "real_vs_real_baseline", min_n=4)
    total = real_images.shape[0]
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"real_vs_real_baseline: n must be an int >= 2; got {n!r}")
    if 2 * n > total:
        raise ValueError(f"real_vs_real_baseline needs 2 * n = {2 * n} real images for two "
                         f"disjoint subsets of n = {n}; got only {total}: lower n to at most {total // 2}")
    feats = extract_features(real_images, j, batch_size)
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(repeats):
        perm = torch.randperm(total, generator=g)
        values.append(fid_from_features(feats[perm[:n]], feats[perm[n:2 * n]]))
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": n, "values": values}


# --------------------------------------------------------------------------- sample size
def _features_of(x, judge, who: str, batch_size: int) -> Tensor:
    """Images (N, C, H, W) -> judge features (N, D); features (N, D) pass through."""
    if isinstance(x, Tensor) and x.dim() == 4:
        return extract_features(x, judge, batch_size)
    if isinstance(x, (Tensor, np.ndarray)) and x.ndim == 2:
        return _as_features(x, who)
    raise ValueError(f"fid_vs_sample_size: {who} must be images (N, C, H, W) or features (N, D); "
                     f"got {type(x).__name__} of shape {tuple(getattr(x, 'shape', ()))}")


def fid_vs_sample_size(real, fake, sizes: Sequence[int], repeats: int = 5, metric: str = "fid",
                       judge="digits", seed: int = 0, batch_size: int = 256) -> dict:
    """FID (or KID) at several sample sizes n: ``repeats`` random subsets per n.

    real: (N, C, H, W) images in [0, 1] or (N, D) features; fake likewise (M, ...).
    For each n in ``sizes`` (each at most min(N, M)), draw n real and n fake rows without
    replacement, ``repeats`` times, and score them. FID's estimate is biased upwards at small
    n (its expectation falls like a + b/n); KID's is unbiased. Returns
    ``{"sizes": [n, ...], "mean": [...], "std": [...], "values": [[...], ...], "metric": metric}``
    (population std over the repeats).
    """
    if metric not in ("fid", "kid"):
        raise ValueError(f"fid_vs_sample_size: metric must be 'fid' or 'kid'; got {metric!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"fid_vs_sample_size: repeats must be an int >= 1; got {repeats!r}")
    j = _get_judge(judge) if any(isinstance(x, Tensor) and x.dim() == 4 for x in (real, fake)) else None
    fr = _features_of(real, j, "real", batch_size)
    ff = _features_of(fake, j, "fake", batch_size)
    if fr.shape[1] != ff.shape[1]:
        raise ValueError(f"fid_vs_sample_size: feature sizes differ: {tuple(fr.shape)} vs {tuple(ff.shape)}")
    largest = min(fr.shape[0], ff.shape[0])
    sizes = [int(n) for n in sizes]
    if not sizes or any(not 2 <= n <= largest for n in sizes):
        raise ValueError(f"fid_vs_sample_size: every size must be from 2 to min(N_real, N_fake) = "
                         f"{largest}; got {sizes}")
    g = torch.Generator().manual_seed(seed)
    values = []
    for n in sizes:
        row = []
        for r in range(repeats):
            a = fr[torch.randperm(fr.shape[0], generator=g)[:n]]
            b = ff[torch.randperm(ff.shape[0], generator=g)[:n]]
            if metric == "fid":
                row.append(fid_from_features(a, b))
            else:  # one unbiased MMD² on the whole subsets: subset_size = n, one round
                row.append(kid_from_features(a, b, subsets=1, subset_size=n, seed=seed + r)[0])
        values.append(row)
    return {"sizes": sizes, "mean": [float(np.mean(v)) for v in values],
            "std": [float(np.std(v)) for v in values], "values": values, "metric": metric}
