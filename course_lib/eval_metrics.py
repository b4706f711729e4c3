"""More ways to score a generator: Inception Score, precision / recall, and FID's sample size.

:mod:`course_lib.metrics` has the two distances (FID, KID) and the real-vs-real baseline.
This module adds the scores that take a generator apart into *what* is wrong with it::

    inception_score(images, judge="digits")         # exp(E_x KL(p(y|x) || p(y))): confident and varied?
    precision_recall(real_features, fake_features)  # quality (precision) vs coverage (recall),
                                                    # plus density / coverage
    fid_vs_sample_size(real, fake, sizes=[50, 100, 200])   # how FID (or KID) moves with n

The pieces are public so a notebook can take them apart: ``class_probabilities`` ->
``inception_score_from_probs``; ``knn_radii`` -> ``precision_recall``.

Papers: Salimans et al. 2016 (Inception Score, https://arxiv.org/abs/1606.03498);
Kynkäänniemi et al. 2019 (improved precision and recall, https://arxiv.org/abs/1904.06991);
Naeem et al. 2020 (density and coverage, https://arxiv.org/abs/2002.09797);
Chong & Forsyth 2020 (FID's bias at finite n, https://arxiv.org/abs/1911.07023).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from course_lib.metrics import (_as_features, _batches, _check_batch, _get_judge,
                                extract_features, fid_from_features, kid_from_features)

__all__ = ["class_probabilities", "kl_to_marginal", "inception_score_from_probs",
           "inception_score", "knn_radii", "precision_recall", "fid_vs_sample_size"]

_EPS = 1e-12  # keeps log(0) out of 0 * log 0 terms; such terms contribute 0 either way


# --------------------------------------------------------------------------- Inception Score
def _as_probs(probs, who: str = "inception_score_from_probs") -> Tensor:
    """Check a (N, K) matrix of class probabilities (rows sum to 1) -> float64 CPU tensor."""
    if isinstance(probs, np.ndarray):
        probs = torch.from_numpy(probs)
    if not isinstance(probs, Tensor):
        raise TypeError(f"{who}: probs must be a tensor or array of shape (N, K); "
                        f"got {type(probs).__name__}")
    if probs.dim() != 2 or probs.shape[0] < 1 or probs.shape[1] < 2:
        raise ValueError(f"{who}: probs must have shape (N, K) with N >= 1 and K >= 2 classes; "
                         f"got {tuple(probs.shape)}")
    p = probs.detach().to("cpu", torch.float64)
    if not torch.isfinite(p).all():
        raise ValueError(f"{who}: probs contain NaN or inf values")
    if p.min() < -1e-6 or not torch.allclose(p.sum(dim=1), torch.ones(p.shape[0], dtype=p.dtype),
                                             atol=1e-4):
        raise ValueError(f"{who}: each row of probs must be a probability vector (non-negative, "
                         "summing to 1); got logits? pass logits.softmax(dim=1)")
    return p.clamp(min=0)


def kl_to_marginal(probs) -> Tensor:
    """(N, K) class probabilities p(y|x_i) -> (N,) KL( p(y|x_i) || p(y) ), in nats.

    p(y) = (1/N) sum_i p(y|x_i) is the marginal over the set itself.
    KL(p || q) = sum_y p(y) (log p(y) - log q(y)).
    """
    p = _as_probs(probs, "kl_to_marginal")
    marginal = p.mean(dim=0, keepdim=True)                                   # p(y): (1, K)
    return (p * ((p + _EPS).log() - (marginal + _EPS).log())).sum(dim=1)    # (N,)


def inception_score_from_probs(probs, splits: int = 1) -> tuple[float, float]:
    """Inception Score from class probabilities (N, K); returns (mean, std) over ``splits``.

        IS = exp( E_x KL( p(y|x) || p(y) ) )

    It lies between 1 (every image gets the same prediction) and K (every image is
    classified with certainty, and the classes are used equally often). As in Salimans et
    al. 2016 the N rows are cut into ``splits`` consecutive parts, the score is computed
    on each (with that part's own marginal p(y)) and the mean and (population) std are
    returned; splits=1 gives std 0.
    """
    p = _as_probs(probs)
    if not isinstance(splits, int) or not 1 <= splits <= p.shape[0]:
        raise ValueError(f"inception_score: splits must be an int from 1 to N = {p.shape[0]}; "
                         f"got {splits!r}")
    scores = [kl_to_marginal(part).mean().exp().item()                      # exp(E_x KL)
              for part in torch.tensor_split(p, splits)]
    return float(np.mean(scores)), float(np.std(scores))


@torch.no_grad()
def class_probabilities(images: Tensor, judge="digits", key: str | None = None,
                        batch_size: int = 256, device=None) -> Tensor:
    """(N, C, H, W) images in [0, 1] -> (N, K) the judge's softmax class probabilities (CPU).

    ``key`` picks the head of a multi-head judge ("shapes": "shape", "colour", ...;
    default "shape"). The judge should be in eval mode (``load_judge`` returns it so).
    """
    j = _get_judge(judge, device)
    if not hasattr(j, "logits"):
        raise TypeError("class_probabilities needs a judge with .logits(x) (a classifier), "
                        f"got {type(j).__name__}")
    images = _check_batch(images, j, "class_probabilities")
    parts = []
    for b in _batches(images, batch_size):
        logits = j.logits(b)
        if isinstance(logits, Mapping):
            key = "shape" if key is None else key
            if key not in logits:
                raise ValueError(f"class_probabilities: key must be one of {list(logits)}; "
                                 f"got {key!r}")
            logits = logits[key]
        parts.append(logits.float().softmax(dim=1).cpu())
    return torch.cat(parts)


def inception_score(images: Tensor, judge="digits", splits: int = 10, key: str | None = None,
                    batch_size: int = 256, device=None) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``) of images (N, C, H, W) in [0, 1].

    Our judge plays Inception-v3's part: its class probabilities p(y|x) go into
    :func:`inception_score_from_probs`. Higher is better, at most the judge's number of
    classes (10 for digits). It never looks at real images: it cannot see whether the
    images look like the *data*, only whether the judge is sure and the classes are varied.
    """
    probs = class_probabilities(images, judge, key=key, batch_size=batch_size, device=device)
    if probs.shape[0] < splits:
        raise ValueError(f"inception_score: {probs.shape[0]} images cannot be cut into "
                         f"splits={splits} parts; pass fewer splits")
    return inception_score_from_probs(probs, splits=splits)


# --------------------------------------------------------------------------- precision / recall
def _pairwise_distances(a: Tensor, b: Tensor, chunk: int = 1024):
    """Yield (start, distances (c, M)) Euclidean distances from row chunks of a (N, D) to b (M, D)."""
    for start in range(0, a.shape[0], chunk):
        yield start, torch.cdist(a[start:start + chunk], b)


def knn_radii(features, k: int = 3) -> Tensor:
    """(N, D) features -> (N,) distance from each point to its k-th nearest *other* point.

    The ball B(f_i, radius_i) is the k-NN estimate of the data manifold around f_i
    (Kynkäänniemi et al. 2019). The point itself (distance 0) is not counted.
    """
    f = _as_features(features, "knn_radii: features")
    if not isinstance(k, int) or not 1 <= k < f.shape[0]:
        raise ValueError(f"knn_radii: k must be an int from 1 to N - 1 = {f.shape[0] - 1}; got {k!r}")
    radii = torch.empty(f.shape[0], dtype=torch.float64)
    for start, d in _pairwise_distances(f, f):
        # k + 1 smallest distances of each row: the first is the point itself (0)
        radii[start:start + d.shape[0]] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def _inside_counts(points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """(P, D), (C, D), (C,) -> (P,) how many balls B(centre_i, radius_i) contain each point."""
    counts = torch.empty(points.shape[0], dtype=torch.long)
    for start, d in _pairwise_distances(points, centres):
        counts[start:start + d.shape[0]] = (d <= radii[None, :]).sum(dim=1)  # ||p - c_i|| <= r_i
    return counts


def precision_recall(real_features, fake_features, k: int = 3) -> dict:
    """k-NN precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020).

    real_features: (N, D), fake_features: (M, D), both from the same feature extractor.
    With r_i the distance from real point x_i to its k-th nearest real neighbour, and
    s_j the same for fake point y_j among the fakes:

        precision = (1/M) sum_j 1[ exists i: ||y_j - x_i|| <= r_i ]   fakes on the real manifold
        recall    = (1/N) sum_i 1[ exists j: ||x_i - y_j|| <= s_j ]   reals on the fake manifold
        density   = 1/(k M) sum_j sum_i 1[ ||y_j - x_i|| <= r_i ]     how many real balls, ~1 if equal
        coverage  = (1/N) sum_i 1[ exists j: ||y_j - x_i|| <= r_i ]   real balls hit by a fake

    Precision says "are the samples realistic?" (quality), recall "can the generator make
    everything the data has?" (diversity). Returns a dict of floats with those four keys.
    """
    real = _as_features(real_features, "precision_recall: real_features")
    fake = _as_features(fake_features, "precision_recall: fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision_recall: feature sizes differ: {tuple(real.shape)} vs "
                         f"{tuple(fake.shape)}; use the same extractor for both")
    if not isinstance(k, int) or not 1 <= k < min(real.shape[0], fake.shape[0]):
        raise ValueError(f"precision_recall: k must be an int from 1 to min(N, M) - 1 = "
                         f"{min(real.shape[0], fake.shape[0]) - 1}; got {k!r}")
    real_radii, fake_radii = knn_radii(real, k), knn_radii(fake, k)
    fake_in_real = _inside_counts(fake, real, real_radii)     # (M,) real balls around each fake
    real_in_fake = _inside_counts(real, fake, fake_radii)     # (N,) fake balls around each real
    # coverage: real ball i holds at least one fake <=> min_j ||y_j - x_i|| <= r_i
    nearest_fake = torch.cat([d.min(dim=1).values for _, d in _pairwise_distances(real, fake)])
    return {"precision": (fake_in_real > 0).double().mean().item(),
            "recall": (real_in_fake > 0).double().mean().item(),
            "density": (fake_in_real.double().sum() / (k * fake.shape[0])).item(),
            "coverage": (nearest_fake <= real_radii).double().mean().item()}


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
