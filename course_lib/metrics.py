"""Scores for generated images: FID, KID and the judges' verdicts.

Two sample-quality distances, computed on the features of a fixed judge network
(:mod:`course_lib.judges`, our stand-in for Inception-v3)::

    fid(real, fake, judge="digits")     # Fréchet distance between two Gaussians fitted to features
    kid(real, fake, judge="digits")     # unbiased MMD² with a cubic kernel, (mean, std) over subsets
    real_vs_real_baseline(real, n=500)  # the FID a perfect generator would get with n samples

and two "did it draw what I asked?" checks::

    attribute_accuracy(images, attrs)   # shapes: right shape / colour / position?
    class_report(images, labels)        # digits: recognisable, confident, every class present?

Each facade is two lines over small functions that work on features, so a notebook can
take the pieces apart: ``extract_features`` -> ``feature_stats`` -> ``frechet_distance``.
All statistics are computed in float64.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from course_lib.judges import check_images, load_judge

__all__ = ["feature_stats", "frechet_distance", "fid_from_features", "kid_from_features",
           "extract_features", "fid", "kid", "real_vs_real_baseline", "attribute_accuracy",
           "class_report"]


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
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64).cpu() for m in (mu1, mu2))
    sigma1, sigma2 = (torch.as_tensor(s, dtype=torch.float64).cpu() for s in (sigma1, sigma2))
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


# --------------------------------------------------------------------------- images -> features
def _get_judge(judge, device=None) -> nn.Module:
    """A judge name ("digits" / "shapes") or a judge-like module with ``.features``."""
    if isinstance(judge, str):
        return load_judge(judge, device)
    if isinstance(judge, nn.Module) and hasattr(judge, "features"):
        return judge
    raise TypeError(f"judge must be 'digits', 'shapes' or a module with .features(x); got {judge!r}")


def _check_batch(images, judge: nn.Module, who: str, min_n: int = 1) -> Tensor:
    """Shape, channel and range checks with the facade's name in the message."""
    if isinstance(images, Tensor) and images.dim() == 4 and images.shape[0] < min_n:
        raise ValueError(f"{who} expects images of shape (N, C, H, W) with N >= {min_n}; "
                         f"got {tuple(images.shape)}")
    if isinstance(images, Tensor) and images.dim() != 4:
        raise ValueError(f"{who} expects images of shape (N, C, H, W) with N >= {min_n}; "
                         f"got {tuple(images.shape)}")
    return check_images(images, getattr(judge, "in_channels", None), who=f"{who}: images")


def _batches(images: Tensor, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    for start in range(0, images.shape[0], batch_size):
        yield images[start:start + batch_size]


@torch.no_grad()
def extract_features(images: Tensor, judge="digits", batch_size: int = 256,
                     device=None) -> Tensor:
    """(N, C, H, W) images in [0, 1] -> (N, D) judge features (float32, on the CPU)."""
    j = _get_judge(judge, device)
    images = _check_batch(images, j, "extract_features")
    return torch.cat([j.features(b).float().cpu() for b in _batches(images, batch_size)])


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


# --------------------------------------------------------------------------- judges' verdicts
@torch.no_grad()
def _predict(j: nn.Module, images: Tensor, batch_size: int):
    """Run ``j.predict`` in batches; returns (labels, confidences) as CPU tensors or dicts."""
    parts = [j.predict(b) for b in _batches(images, batch_size)]
    labels, confidences = zip(*parts)
    if isinstance(labels[0], Mapping):
        return ({k: torch.cat([p[k] for p in labels]).cpu() for k in labels[0]},
                {k: torch.cat([p[k] for p in confidences]).cpu() for k in confidences[0]})
    return torch.cat(labels).cpu(), torch.cat(confidences).cpu()


def _attrs_as_tensors(attrs, keys: Sequence[str], n: int) -> dict[str, Tensor]:
    """dict of (N,) LongTensors, or a list of N dicts -> dict of (N,) LongTensors for ``keys``."""
    if isinstance(attrs, Mapping):
        missing = [k for k in keys if k not in attrs]
        if missing:
            raise KeyError(f"attribute_accuracy: attrs has no {missing}; it has {sorted(attrs)}")
        out = {k: torch.as_tensor(attrs[k]).long().flatten().cpu() for k in keys}
    elif isinstance(attrs, Sequence) and all(isinstance(a, Mapping) for a in attrs):
        missing = sorted({k for a in attrs for k in keys if k not in a})
        if missing:
            raise KeyError(f"attribute_accuracy: some attrs dicts lack {missing}")
        out = {k: torch.tensor([int(a[k]) for a in attrs], dtype=torch.long) for k in keys}
    else:
        raise TypeError("attribute_accuracy: attrs must be a dict of LongTensors (N,) or a list of "
                        f"N dicts; got {type(attrs).__name__}")
    for k, v in out.items():
        if v.shape != (n,):
            raise ValueError(f"attribute_accuracy: attrs[{k!r}] has {v.numel()} labels for {n} images")
    return out


def attribute_accuracy(images: Tensor, attrs, judge="shapes",
                       keys: Sequence[str] = ("shape", "colour", "position"),
                       batch_size: int = 256, device=None) -> dict[str, float]:
    """Does each image show the requested attributes? images (N, 3, H, W) in [0, 1].

    ``attrs``: the requested attributes, a dict of (N,) LongTensors as in
    ``render_shapes(...).attrs`` (or a list of N dicts). Returns the accuracy of each key in
    ``keys`` plus ``"all"``: the fraction of images with every listed key right at once.
    """
    j = _get_judge(judge, device)
    if not hasattr(j, "heads"):
        raise TypeError("attribute_accuracy needs a multi-head judge such as 'shapes'")
    keys = tuple(keys)
    unknown = [k for k in keys if k not in j.heads]
    if not keys or unknown:
        raise ValueError(f"attribute_accuracy: keys must be among the judge's heads "
                         f"{list(j.heads)}; got {list(keys)}")
    images = _check_batch(images, j, "attribute_accuracy")
    wanted = _attrs_as_tensors(attrs, keys, images.shape[0])
    for k in keys:
        k_max = j.heads[k].out_features
        if wanted[k].min() < 0 or wanted[k].max() >= k_max:
            raise ValueError(f"attribute_accuracy: attrs[{k!r}] must lie in 0..{k_max - 1}; "
                             f"got values {wanted[k].min().item()}..{wanted[k].max().item()}")
    predicted, _ = _predict(j, images, batch_size)
    correct = {k: predicted[k] == wanted[k] for k in keys}
    result = {k: c.float().mean().item() for k, c in correct.items()}
    result["all"] = torch.stack(list(correct.values())).all(dim=0).float().mean().item()
    return result


def class_report(images: Tensor, labels=None, judge="digits", min_confidence: float = 0.9,
                 key: str = "shape", batch_size: int = 256, device=None) -> dict:
    """What the judge sees in a batch of generated images (N, C, H, W) in [0, 1].

    Returns a dict with
    - ``"recognised"``: fraction of images classified with confidence >= min_confidence,
    - ``"mean_confidence"``, ``"class_counts"`` and ``"class_fraction"`` (predicted classes,
      over all N images), ``"min_class_fraction"`` (is every class drawn?),
    - when ``labels`` (N,) are the requested classes: ``"accuracy"`` and
      ``"per_class_accuracy"`` (None for a class never requested).
    For a multi-head judge (``"shapes"``) ``key`` picks the head.

    A usual bar: ``recognised >= 0.8`` and ``min_class_fraction >= 0.05``.
    """
    if not 0 <= min_confidence <= 1:
        raise ValueError(f"class_report: min_confidence must be in [0, 1]; got {min_confidence}")
    j = _get_judge(judge, device)
    images = _check_batch(images, j, "class_report")
    predicted, confidence = _predict(j, images, batch_size)
    if isinstance(predicted, Mapping):
        if key not in predicted:
            raise ValueError(f"class_report: key must be one of {list(predicted)}; got {key!r}")
        predicted, confidence = predicted[key], confidence[key]
        num_classes = j.heads[key].out_features
    else:
        num_classes = j.num_classes
    n = images.shape[0]
    counts = torch.bincount(predicted, minlength=num_classes)
    report = {"n": n,
              "recognised": (confidence >= min_confidence).float().mean().item(),
              "mean_confidence": confidence.mean().item(),
              "class_counts": counts.tolist(),
              "class_fraction": (counts / n).tolist(),
              "min_class_fraction": (counts.min() / n).item()}
    if labels is not None:
        labels = torch.as_tensor(labels).long().flatten().cpu()
        if labels.shape != (n,):
            raise ValueError(f"class_report: labels must have shape ({n},), one per image; "
                             f"got {tuple(labels.shape)}")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"class_report: labels must lie in 0..{num_classes - 1}")
        right = predicted == labels
        report["accuracy"] = right.float().mean().item()
        report["per_class_accuracy"] = [right[labels == c].float().mean().item()
                                        if (labels == c).any() else None
                                        for c in range(num_classes)]
    return report
