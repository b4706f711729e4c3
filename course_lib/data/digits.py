"""scikit-learn's 1,797 handwritten digits (8 x 8, shipped with sklearn: no download),
resized to ``size`` x ``size`` and split 80/20 with every digit in the same proportion.

    >>> ds = DigitsDataset("train", size=16)
    >>> ds.images.shape, ds.labels.shape, ds[0][1]
    (torch.Size([1437, 1, 16, 16]), torch.Size([1437]), 3)
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["DigitsDataset", "DIGIT_SPLITS"]

DIGIT_SPLITS = ("train", "test", "all")


@lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) float32 in [0, 1] (sklearn stores 0..16) and (1797,) int64 labels."""
    from sklearn.datasets import load_digits  # imported here: sklearn takes a while to load

    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def _split_indices(labels: np.ndarray, split: str, seed: int) -> np.ndarray:
    """Indices of ``split``: a stratified 80/20 shuffle fixed by ``seed`` ("all": every index)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    if split == "all":
        return index
    train, test = train_test_split(index, test_size=0.2, stratify=labels, random_state=seed)
    return train if split == "train" else test


class DigitsDataset(Dataset):
    """Item ``i`` is ``(image (1, size, size) float32 in [0, 1], label int)``.

    ``.images``: (N, 1, size, size); ``.labels``: (N,) int64; ``.classes``: ["0", ..., "9"].
    Resizing is bilinear with anti-aliasing, clamped back into [0, 1].
    """

    classes = [str(d) for d in range(10)]

    def __init__(self, split: str = "train", size: int = 16, seed: int = 0):
        if split not in DIGIT_SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(DIGIT_SPLITS)}")
        if not isinstance(size, int) or not 8 <= size <= 64:
            raise ValueError(f"size must be an int from 8 to 64 (the originals are 8 x 8), "
                             f"got {size!r}")
        images, labels = _raw_digits()
        keep = _split_indices(labels, split, seed)
        x = torch.from_numpy(images[keep]).unsqueeze(1)                  # (N, 1, 8, 8)
        if size != 8:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True).clamp(0, 1)
        self.images = x.contiguous()
        self.labels = torch.from_numpy(labels[keep])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])
