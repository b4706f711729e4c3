"""The course's data: an offline world that is always there, and the real datasets.

    >>> ds = load_dataset("shapes", n=1000, size=32, two_objects=0.3)
    >>> x, attrs = ds[0]              # x: (3, 32, 32) float32 in [0, 1]

Images are float32 in [0, 1], shaped (C, H, W) (batches (N, C, H, W)); datasets return
``(x, y)`` pairs.

- ``digits``: x (1, size, size), y the digit; size 16 unless given; splits train/test/all.
- ``shapes``: x (3, size, size), y a dict of attribute indices; n=10000, size=32,
  ``two_objects=0.0``.
- ``moving_shapes``: x (T, 3, size, size), y a dict of attribute indices; n=1000, size=32,
  ``frames=16``.
- ``mnist``, ``fashion_mnist`` (x (1, 28, 28)) and ``cifar10`` (x (3, 32, 32)), y the class:
  files in ``data_dir()`` or internet needed; keywords ``root``, ``download``, ``verify``.
- 2-D toys ``moons``, ``swiss_roll``, ``8gaussians``, ``checkerboard``, ``rings``: x (2,),
  y the mixture component (0 where there is none); n=10000.

Offline datasets are generated from ``seed``; the "test" split uses ``seed + TEST_SEED_OFFSET``
so it never repeats the training data.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from course_lib.data._names import unknown_name
from course_lib.data.digits import DIGIT_SPLITS, DigitsDataset
from course_lib.data.moving import (DIRECTIONS, MOVING_ATTR_KEYS, MovingShapesBatch, MovingShapesDataset,
                                    moving_caption_for, parse_moving_caption, render_moving_shapes)
from course_lib.data.real import (OFFLINE_ALTERNATIVE, REAL_DATASETS, DatasetUnavailableError, load_real,
                                  write_cifar10_format, write_mnist_format, write_standin)
from course_lib.data.shapes import (ATTR_KEYS, COLOURS, HALF_EXTENT, JITTER, POSITIONS, RELATIONS, SHAPE_KINDS, SIZES,
                                    ShapesBatch, ShapesDataset, caption_for, cell_size, edge_map, grid_cell,
                                    parse_caption, render_shapes, render_subject, shape_coverage)
from course_lib.data.toys import TOYS, ToyDataset, sample_toy, sample_toy_labelled

__all__ = [
    "DATASETS", "TEST_SEED_OFFSET", "load_dataset", "stack_images",
    "DigitsDataset", "DIGIT_SPLITS",
    "SHAPE_KINDS", "COLOURS", "SIZES", "POSITIONS", "RELATIONS", "ATTR_KEYS", "HALF_EXTENT",
    "JITTER", "cell_size", "grid_cell", "ShapesBatch", "render_shapes", "render_subject", "shape_coverage", "edge_map",
    "caption_for", "parse_caption", "ShapesDataset",
    "DIRECTIONS", "MOVING_ATTR_KEYS", "MovingShapesBatch", "render_moving_shapes",
    "moving_caption_for", "parse_moving_caption", "MovingShapesDataset",
    "TOYS", "sample_toy", "sample_toy_labelled", "ToyDataset",
    "REAL_DATASETS", "OFFLINE_ALTERNATIVE", "DatasetUnavailableError", "load_real",
    "write_mnist_format", "write_cifar10_format", "write_standin",
]

DATASETS = ("digits", "shapes", "moving_shapes") + REAL_DATASETS + TOYS
TEST_SEED_OFFSET = 1_000_003
_SYNTHETIC_SPLITS = ("train", "test")


def _synthetic_seed(name: str, split: str, seed: int) -> int:
    if split not in _SYNTHETIC_SPLITS:
        raise ValueError(f"unknown split {split!r} for {name}; valid: 'train', 'test'")
    return seed + (TEST_SEED_OFFSET if split == "test" else 0)


def _first(ds: Dataset, n: int | None, name: str, split: str) -> Dataset:
    """The first ``n`` items of ``ds`` (all of it for ``n=None``)."""
    if n is None:
        return ds
    if not isinstance(n, int) or not 0 <= n <= len(ds):
        raise ValueError(f"n={n!r} but {name}/{split} has {len(ds)} items; pick 0..{len(ds)}")
    return Subset(ds, range(n))


def load_dataset(name: str, split: str = "train", *, size: int | None = None,
                 n: int | None = None, seed: int = 0, **kwargs) -> Dataset:
    """The dataset ``name`` (one of DATASETS) as a ``torch.utils.data.Dataset`` of ``(x, y)``.

    ``size``: image side in pixels; ``n``: number of items (generated for the offline
    world, the first n otherwise); ``seed``: which random draw (offline world, digit split).
    Other keywords go to the dataset: ``two_objects`` (shapes), ``frames`` (moving_shapes),
    ``root``/``download``/``verify`` (real datasets).
    """
    if name == "digits":
        return _first(DigitsDataset(split, size=size or 16, seed=seed, **kwargs), n, name, split)
    if name in REAL_DATASETS:
        return _first(load_real(name, split, size=size, **kwargs), n, name, split)
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    seed = _synthetic_seed(name, split, seed)
    if name == "shapes":
        return ShapesDataset(n=10000 if n is None else n, size=size or 32, seed=seed, **kwargs)
    if name == "moving_shapes":
        return MovingShapesDataset(n=1000 if n is None else n, size=size or 32, seed=seed, **kwargs)
    if size is not None:
        raise ValueError(f"{name} is a 2-D point distribution; size does not apply to it")
    return ToyDataset(name, n=10000 if n is None else n, seed=seed, **kwargs)


def stack_images(dataset: Dataset, n: int | None = None) -> torch.Tensor:
    """The inputs ``x`` of the first ``n`` items of a dataset of ``(x, y)`` as one tensor.

    dataset: any dataset of ``(x, y)`` pairs, x (C, H, W) (or (T, C, H, W) for videos);
    n: how many (all of them for None; a dataset shorter than n gives all it has).
    Returns (n, C, H, W): the tensor a metric or a plot wants, e.g. ``stack_images(test_set, 500)``.
    """
    count = len(dataset) if n is None else min(int(n), len(dataset))
    if count < 1:
        raise ValueError(f"stack_images needs at least one item; the dataset has {len(dataset)}, n={n!r}")
    return torch.stack([dataset[i][0] for i in range(count)])
