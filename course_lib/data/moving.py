"""Moving-shape video clips: one shape glides in a straight line at constant speed.

    >>> clips = render_moving_shapes(4, frames=16, size=32, seed=0)
    >>> clips.videos.shape, clips.captions[0]
    (torch.Size([4, 16, 3, 32, 32]), 'a large yellow diamond moves left')

The shapes, colours and sizes are those of :mod:`course_lib.data.shapes` (same pixel sizes
for the same canvas). Captions follow ``"a " size " " colour " " shape " moves " direction``.
Each clip travels between half and all of the room the canvas leaves along its direction
(at least a third of the canvas at 32 x 32), starting where the whole path fits, so the
object never leaves the frame and never bounces.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from course_lib.data.shapes import _COLOUR_RGB, COLOURS, HALF_EXTENT, SHAPE_KINDS, SIZES, cell_size, shape_coverage

__all__ = ["DIRECTIONS", "MOVING_ATTR_KEYS", "MovingShapesBatch", "render_moving_shapes", "direction_steps",
           "draw_speeds", "moving_caption_for", "parse_moving_caption", "leave_open", "MovingShapesDataset"]

DIRECTIONS = ("left", "right", "up", "down")
MOVING_ATTR_KEYS = ("shape", "colour", "size", "direction")
_STEP = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)], dtype=np.float64)  # unit (x, y) per direction
_MARGIN = 1.0  # pixels kept free between the object and the frame edge


@dataclass
class MovingShapesBatch:
    """A rendered batch of clips. ``attrs`` values index SHAPE_KINDS, COLOURS, SIZES, DIRECTIONS.

    videos:  (N, T, 3, H, W) float32 in [0, 1]     attrs: dict of (N,) int64, MOVING_ATTR_KEYS
    centers: (N, T, 2) pixel (x, y) of the object in every frame
    speeds:  (N,) pixels per frame                 captions: list of N strings
    """

    videos: torch.Tensor
    attrs: dict[str, torch.Tensor]
    captions: list[str]
    centers: torch.Tensor
    speeds: torch.Tensor

    def __len__(self) -> int:
        return len(self.captions)


def direction_steps(direction: torch.Tensor) -> torch.Tensor:
    """(N,) direction indices -> (N, 2) unit steps (x, y) per frame; y grows downward."""
    return torch.from_numpy(_STEP).float()[torch.as_tensor(direction).long()]


def draw_speeds(sizes: torch.Tensor, frames: int, size: int = 32, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """(N,) speeds in pixels per frame, drawn as the renderer draws them: room x U(0.5, 1) / (T - 1).

    sizes: (N,) indices into SIZES, or -1 where the size is not known (a size is drawn for it).
    What a sampler needs when the speed is not given (a caption names only the direction).
    """
    sizes = torch.as_tensor(sizes).long()
    sizes = torch.where(sizes < 0, torch.randint(len(SIZES), sizes.shape, generator=generator), sizes)
    half = torch.tensor(HALF_EXTENT)[sizes] * cell_size(size)
    room = (size - half - _MARGIN) - (half + _MARGIN)          # as _trajectories: where a centre can go
    return room * (0.5 + 0.5 * torch.rand(sizes.shape, generator=generator)) / (frames - 1)


def _trajectories(direction: np.ndarray, half: np.ndarray, frames: int, size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Centres (N, T, 2) moving ``direction`` and their speeds (N,), inside the frame."""
    n = len(direction)
    low, high = half + _MARGIN, size - half - _MARGIN          # a centre stays in [low, high]
    room = (high - low)[:, None]                               # (N, 1) on both axes
    travel = room * rng.uniform(0.5, 1.0, size=(n, 1))         # path length: half to all the room
    step = _STEP[direction]                                    # (N, 2) unit step per frame
    # a uniform start from which the whole path x_0 + step * travel stays in [low, high]
    start = low[:, None] + rng.random((n, 2)) * (room - travel * np.abs(step))
    start = start - np.minimum(step, 0) * travel               # moving left/up: from the far side
    speed = travel / (frames - 1)                              # pixels per frame
    t = np.arange(frames)[None, :, None]
    centers = start[:, None, :] + step[:, None, :] * speed[:, None, :] * t  # x_t = x_0 + v t
    return centers, speed[:, 0]


def render_moving_shapes(n: int, frames: int = 16, size: int = 32,
                         seed: int = 0) -> MovingShapesBatch:
    """Render ``n`` clips of ``frames`` frames, ``size`` x ``size``; same seed, same tensors."""
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(frames, (int, np.integer)) or frames < 2:
        raise ValueError(f"frames must be an int >= 2 (motion needs two frames), got {frames!r}")
    if not isinstance(size, (int, np.integer)) or not 16 <= size <= 64:
        raise ValueError(f"size must be an int from 16 to 64, got {size!r}")
    rng = np.random.default_rng(seed)
    attrs = {"shape": rng.integers(len(SHAPE_KINDS), size=n),
             "colour": rng.integers(len(COLOURS), size=n),
             "size": rng.integers(len(SIZES), size=n),
             "direction": rng.integers(len(DIRECTIONS), size=n)}
    half = np.array(HALF_EXTENT)[attrs["size"]] * cell_size(size)  # pixels, as in render_shapes
    centers, speed = _trajectories(attrs["direction"], half, frames, size, rng)

    attrs_t = {key: torch.from_numpy(value.astype(np.int64)) for key, value in attrs.items()}
    centers_t = torch.from_numpy(centers).float()
    kinds = attrs_t["shape"].repeat_interleave(frames)         # (N * T,): one shape per frame
    halves = torch.from_numpy(half).float().repeat_interleave(frames)
    cov = shape_coverage(kinds, centers_t.reshape(-1, 2), halves, size)  # (N * T, H, W)
    rgb = _COLOUR_RGB[attrs_t["colour"].repeat_interleave(frames)].view(-1, 3, 1, 1)
    videos = (rgb * cov.unsqueeze(1)).view(n, frames, 3, size, size)  # black background
    captions = [moving_caption_for({k: int(v[i]) for k, v in attrs.items()}) for i in range(n)]
    return MovingShapesBatch(videos, attrs_t, captions, centers_t, torch.from_numpy(speed).float())


def moving_caption_for(attrs_row: dict) -> str:
    """"a small red circle moves right" from attribute indices (ints or 0-d tensors)."""
    names = {"shape": SHAPE_KINDS, "colour": tuple(COLOURS), "size": SIZES, "direction": DIRECTIONS}
    words = {}
    for key, options in names.items():
        i = int(attrs_row[key])
        if not 0 <= i < len(options):
            raise ValueError(f"attrs[{key!r}] = {i} is not a valid index into {options}")
        words[key] = options[i]
    return f"a {words['size']} {words['colour']} {words['shape']} moves {words['direction']}"


_MOVING = re.compile("a ({}) ({}) ({}) moves ({})".format(
    *("|".join(options) for options in (SIZES, COLOURS, SHAPE_KINDS, DIRECTIONS))))


def parse_moving_caption(text: str) -> dict[str, int] | None:
    """Attribute indices (keys MOVING_ATTR_KEYS) of a motion caption, else ``None``."""
    if not isinstance(text, str) or not (m := _MOVING.fullmatch(" ".join(text.split()))):
        return None
    size, colour, shape, direction = m.groups()
    return {"shape": SHAPE_KINDS.index(shape), "colour": tuple(COLOURS).index(colour),
            "size": SIZES.index(size), "direction": DIRECTIONS.index(direction)}


def leave_open(caption: str, *keys: str) -> str:
    """The motion caption with attributes left open: ("a large red circle moves left", "size") ->
    "a red circle moves left"; "colour" drops the colour; "shape" says "shape" ("a large red shape
    moves left"). A sampler given it may draw any value there; a video model should then keep one.
    """
    attrs = parse_moving_caption(caption)
    if attrs is None:
        raise ValueError(f"leave_open: not a motion caption of the world: {caption!r}")
    if not set(keys) <= {"size", "colour", "shape"}:
        raise ValueError(f"leave_open: keys are 'size', 'colour' and 'shape', got {keys}")
    words = ["a"] + ([] if "size" in keys else [SIZES[attrs["size"]]])
    words += [] if "colour" in keys else [tuple(COLOURS)[attrs["colour"]]]
    words += ["shape" if "shape" in keys else SHAPE_KINDS[attrs["shape"]], "moves", DIRECTIONS[attrs["direction"]]]
    return " ".join(words)


class MovingShapesDataset(Dataset):
    """``n`` clips; item ``i`` is ``(video (T, 3, H, W), attrs)`` with ``attrs`` a dict of
    0-d int64 tensors (keys MOVING_ATTR_KEYS). ``.batch`` is the :class:`MovingShapesBatch`."""

    def __init__(self, n: int = 1000, frames: int = 16, size: int = 32, seed: int = 0):
        self.batch = render_moving_shapes(n, frames=frames, size=size, seed=seed)
        self.captions = self.batch.captions

    def __len__(self) -> int:
        return len(self.batch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.batch.videos[i], {key: value[i] for key, value in self.batch.attrs.items()}
