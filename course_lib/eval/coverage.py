"""Precision and recall for generators: quality and coverage told apart.

    precision_recall(real_features, fake_features)  # quality (precision) vs coverage (recall),
                                                    # plus density / coverage

Each real and fake feature gets a radius, the distance to its k-th nearest neighbour in its own
set (``knn_radii``); a fake sample is "precise" when it lies inside some real sample's ball, a
real sample is "recalled" when it lies inside some fake sample's ball (notebook 3 · 07).

Papers: Kynkäänniemi et al. 2019 (improved precision and recall, https://arxiv.org/abs/1904.06991);
Naeem et al. 2020 (density and coverage, https://arxiv.org/abs/2002.09797).
"""
from __future__ import annotations

import torch
from torch import Tensor

from course_lib.eval.distances import _as_features

__all__ = ["knn_radii", "precision_recall"]


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
