"""Classic 2-D toy distributions, each roughly centred at 0 with a spread of about 1 per axis.

    >>> x = sample_toy("8gaussians", 1000, seed=0)              # (1000, 2) float32
    >>> x, y = sample_toy_labelled("8gaussians", 1000, seed=0)  # y: which Gaussian, 0..7

=============  ==========================================================  =============
name           what it is                                                  label
=============  ==========================================================  =============
moons          two interleaved half circles                                which moon
swiss_roll     a spiral, t (cos t, sin t) for t in [1.5 pi, 4.5 pi]        0
8gaussians     eight small Gaussians on a circle of radius sqrt(2)          which one
checkerboard   uniform on the 8 dark squares of a 4 x 4 board on [-2, 2]^2  0
rings          four concentric noisy circles, more points on bigger ones   which ring
=============  ==========================================================  =============
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from course_lib.data._names import unknown_name

__all__ = ["TOYS", "sample_toy", "sample_toy_labelled", "ToyDataset"]


def _moons(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    label = rng.integers(2, size=n)
    theta = rng.uniform(0, math.pi, size=n)
    upper = np.stack([np.cos(theta), np.sin(theta)], 1)              # arc over (0, 0)
    lower = np.stack([1 - np.cos(theta), 0.5 - np.sin(theta)], 1)    # arc under (1, 0.5)
    x = np.where(label[:, None] == 0, upper, lower) + rng.normal(0, 0.05, size=(n, 2))
    return (x - [0.5, 0.25]) * 1.4, label


def _swiss_roll(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    t = 1.5 * math.pi * (1 + 2 * rng.random(n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], 1) + rng.normal(0, 0.3, size=(n, 2))
    return (x - [2.0, 0.0]) / 7.0, np.zeros(n, dtype=np.int64)    # centred, spread ~1


def _eight_gaussians(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    label = rng.integers(8, size=n)
    angle = label * (2 * math.pi / 8)
    centre = math.sqrt(2) * np.stack([np.cos(angle), np.sin(angle)], 1)
    return centre + rng.normal(0, 0.1, size=(n, 2)), label


def _checkerboard(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    col, row = rng.integers(4, size=n), rng.integers(2, size=n)
    row = 2 * row + col % 2                            # row + col even: the dark squares
    x = np.stack([col, row], 1) + rng.random((n, 2)) - 2.0
    return x, np.zeros(n, dtype=np.int64)


def _rings(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    radii = np.array([0.45, 0.9, 1.35, 1.8])
    label = rng.choice(4, size=n, p=radii / radii.sum())  # even density along the rings
    angle = rng.uniform(0, 2 * math.pi, size=n)
    x = radii[label, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    return x + rng.normal(0, 0.04, size=(n, 2)), label


_SAMPLERS = {"moons": _moons, "swiss_roll": _swiss_roll, "8gaussians": _eight_gaussians,
             "checkerboard": _checkerboard, "rings": _rings}
TOYS = tuple(_SAMPLERS)


def sample_toy_labelled(name: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points of toy ``name`` and their component labels: (n, 2) float32, (n,) int64."""
    if name not in _SAMPLERS:
        raise unknown_name("toy distribution", name, TOYS)
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    x, label = _SAMPLERS[name](n, np.random.default_rng(seed))
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(label, dtype=torch.int64)


def sample_toy(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` points of toy ``name``: (n, 2) float32, the same for the same seed."""
    return sample_toy_labelled(name, n, seed)[0]


class ToyDataset(Dataset):
    """Item ``i`` is ``(point (2,), label)``: the component label (0 where there is none)."""

    def __init__(self, name: str, n: int = 10000, seed: int = 0):
        self.points, self.labels = sample_toy_labelled(name, n, seed)
        self.name = name

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.points[i], int(self.labels[i])
