"""Procedurally rendered shapes whose every attribute is known exactly.

Each image shows one coloured shape (or two, with a spatial relation between them) on a
black background. Because we drew it, we know its shape, colour, size, grid position, its
pixel mask and its outline, so a generated image can be scored exactly later in the course.

    >>> batch = render_shapes(8, size=32, seed=0, two_objects=0.5)
    >>> batch.images.shape, batch.masks.shape, batch.captions[0]
    (torch.Size([8, 3, 32, 32]), torch.Size([8, 1, 32, 32]), 'a small magenta diamond at the top')

Layout. Inside a one-pixel frame that stays background, the canvas is a 3 x 3 grid of cells
(``cell_size(size)`` pixels wide: 10 at 32 x 32). An object's half-extent is
``HALF_EXTENT[size]`` of a cell (a "large" object is 1.5x as wide as a "small" one) and its
centre lies within ``JITTER`` = 0.2 of a cell from its cell's centre, so the centres of
objects in different cells are at least 0.6 of a cell apart. Towards the frame or the other
object a centre moves less, so objects never leave the grid and never touch. Relations are
strict and axis-aligned: "A left of B" means A and B sit in the same row with A in a column
further left; "A above B" means the same column with A in a higher row.

Captions come from a small grammar (whitespace-separated words, lower case)::

    caption  ::= object " at the " position
               | object " " relation " " object
    object   ::= "a " size " " colour " " shape
    size     ::= "small" | "large"
    colour   ::= "red" | "green" | "blue" | "yellow" | "magenta" | "cyan"
    shape    ::= "circle" | "square" | "triangle" | "cross" | "diamond"
    position ::= "top left" | "top" | "top right" | "left" | "center" | "right"
               | "bottom left" | "bottom" | "bottom right"
    relation ::= "left of" | "right of" | "above" | "below"

A one-object caption names the position; a two-object caption names the relation instead
(the positions are still in ``attrs``). :func:`caption_for` writes a caption from attribute
indices and :func:`parse_caption` reads one back (``None`` when the text is not a sentence
of the grammar), so ``parse_caption(caption_for(row))`` returns ``row``'s captioned keys.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["SHAPE_KINDS", "NOVEL_KINDS", "COLOURS", "SIZES", "POSITIONS", "RELATIONS", "ATTR_KEYS",
           "HALF_EXTENT", "JITTER", "cell_size", "ShapesBatch", "render_shapes", "shape_coverage",
           "edge_map", "render_subject", "caption_for", "parse_caption", "ShapesDataset"]

SHAPE_KINDS = ("circle", "square", "triangle", "cross", "diamond")
NOVEL_KINDS = ("ring",)   # drawn by render_subject only: no caption of the grammar names them (DreamBooth)
COLOURS = {  # name -> RGB in [0, 1]; hues far apart so they survive anti-aliasing
    "red": (0.95, 0.15, 0.15),
    "green": (0.15, 0.85, 0.2),
    "blue": (0.2, 0.4, 1.0),
    "yellow": (0.95, 0.9, 0.15),
    "magenta": (0.9, 0.2, 0.9),
    "cyan": (0.15, 0.85, 0.9),
}
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right",
             "left", "center", "right",
             "bottom left", "bottom", "bottom right")  # row-major: index = 3 * row + col
RELATIONS = ("left of", "right of", "above", "below")
ATTR_KEYS = ("shape", "colour", "size", "position",
             "shape2", "colour2", "size2", "position2", "relation")

HALF_EXTENT = (0.3, 0.45)  # per size, in cells: half the width of the object's bounding box
JITTER = 0.2               # in cells: the most an object's centre strays from its cell's centre
_GAP = 0.05                # in cells: the least space between an object and the grid's edge or
                           # the middle line between two adjacent objects' cells
_FRAME = 1.0               # pixels of background around the grid

_COLOUR_RGB = torch.tensor(list(COLOURS.values()), dtype=torch.float32)  # (6, 3)


def cell_size(size: int) -> float:
    """Width in pixels of one cell of the 3 x 3 grid on a ``size`` x ``size`` canvas."""
    return (size - 2 * _FRAME) / 3


def grid_cell(x: float, y: float, height: int, width: int) -> int:
    """The grid position (0..8, row-major as POSITIONS) of the pixel point (x, y) on an H x W canvas;
    points in the frame count to the nearest cell."""
    col = min(max(int((x - _FRAME) // cell_size(width)), 0), 2)
    row = min(max(int((y - _FRAME) // cell_size(height)), 0), 2)
    return 3 * row + col


@dataclass
class ShapesBatch:
    """A rendered batch. ``attrs`` values are indices into the constants (−1: no 2nd object).

    images: (N, 3, H, W) float32 in [0, 1]      masks: (N, 1, H, W) float32 in {0, 1}
    edges:  (N, 1, H, W) float32 in {0, 1}      centers: (N, 2, 2) pixel (x, y) per object,
    attrs:  dict of (N,) int64, keys ATTR_KEYS           NaN where there is no 2nd object
    captions: list of N strings

    Pixel (i, j) spans [j, j + 1] x [i, i + 1] in the coordinates of ``centers``.
    """

    images: torch.Tensor
    masks: torch.Tensor
    edges: torch.Tensor
    attrs: dict[str, torch.Tensor]
    captions: list[str]
    centers: torch.Tensor

    def __len__(self) -> int:
        return len(self.captions)

    def attr_row(self, i: int) -> dict[str, int]:
        """The attributes of image ``i`` as plain ints (what :func:`caption_for` takes)."""
        return {key: int(value[i]) for key, value in self.attrs.items()}


# ----------------------------------------------------------------------------- drawing
def _box_sdf(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Signed distance to an axis-aligned box of half-sizes (a, b) (negative inside)."""
    qx, qy = x.abs() - a, y.abs() - b
    outside = torch.hypot(qx.clamp(min=0), qy.clamp(min=0))
    inside = torch.maximum(qx, qy).clamp(max=0)
    return outside + inside


def _sdf(kind: str, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels) from pixel offsets (x, y) to a shape of half-extent ``r``.

    The y axis points down, as in images. Every shape fits in the box ``|x|, |y| <= r``.
    """
    if kind == "circle":
        return torch.hypot(x, y) - r                                  # |p| - r
    if kind == "square":                                              # 0.9 r: about the
        return _box_sdf(x, y, 0.9 * r, 0.9 * r)                       # circle's area
    if kind == "diamond":                                             # a square turned 45°
        u, v = (x + y) / math.sqrt(2), (x - y) / math.sqrt(2)
        return _box_sdf(u, v, r / math.sqrt(2), r / math.sqrt(2))
    if kind == "triangle":                                            # apex (0, -r), base (±r, r)
        left = -(2 * x + y + r) / math.sqrt(5)                        # beyond the left side
        right = (2 * x - y - r) / math.sqrt(5)                        # beyond the right side
        # inside both sides and the bounding box (which adds the base and keeps corners sharp)
        return torch.maximum(torch.maximum(left, right), _box_sdf(x, y, r, r))
    if kind == "cross":                                               # two bars, 0.68 r thick
        w = 0.34 * r
        return torch.minimum(_box_sdf(x, y, r, w), _box_sdf(x, y, w, r))
    if kind == "ring":                                                # | |p| - 0.75 r | - 0.25 r:
        return (torch.hypot(x, y) - 0.75 * r).abs() - 0.25 * r       # radii r and r / 2
    raise ValueError(f"unknown shape kind {kind!r}; valid: {SHAPE_KINDS + NOVEL_KINDS}")


def shape_coverage(kinds: torch.Tensor, centers: torch.Tensor, half_extents: torch.Tensor,
                   size: int) -> torch.Tensor:
    """How much of each pixel each shape covers, anti-aliased analytically.

    kinds: (N,) int64 index into SHAPE_KINDS + NOVEL_KINDS; centers: (N, 2) pixel (x, y), where pixel
    (i, j) spans [j, j+1] x [i, i+1]; half_extents: (N,) pixels. Returns (N, H, W) in [0, 1]:
    ``coverage = clamp(0.5 - sdf, 0, 1)``, the fraction of a pixel on the inside of an edge.
    The distances are only computed in a small window around each shape (the rest is 0).
    """
    n = len(kinds)
    full = torch.zeros(n, size, size)
    if n == 0:
        return full
    side = min(size, math.ceil(2 * float(half_extents.max()) + 3))   # shape + 0.5 px rim + 1
    corner = (centers - side / 2).floor().long().clamp(0, size - side)  # (N, 2) window's (x, y)
    cols = corner[:, :1] + torch.arange(side)                        # (N, side)
    rows = corner[:, 1:] + torch.arange(side)                        # (N, side)
    x = (cols + 0.5 - centers[:, :1]).view(n, 1, side)               # pixel centre - shape centre
    y = (rows + 0.5 - centers[:, 1:]).view(n, side, 1)
    x, y = torch.broadcast_tensors(x, y)                             # (N, side, side)
    r = half_extents.view(-1, 1, 1).float()
    sdf = torch.empty(n, side, side)
    for k, kind in enumerate(SHAPE_KINDS + NOVEL_KINDS):
        idx = (kinds == k).nonzero().squeeze(1)
        if len(idx):
            sdf[idx] = _sdf(kind, x[idx], y[idx], r[idx])
    full[torch.arange(n).view(n, 1, 1), rows.view(n, side, 1), cols.view(n, 1, side)] = \
        (0.5 - sdf).clamp(0, 1)
    return full


def edge_map(masks: torch.Tensor) -> torch.Tensor:
    """Inner boundary of binary masks: mask pixels with a 4-neighbour outside the mask.

    masks: (N, 1, H, W) in {0, 1}  ->  (N, 1, H, W) in {0, 1}
    """
    m = F.pad(masks, (1, 1, 1, 1))
    inner = m[..., 1:-1, 1:-1]
    eroded = inner * m[..., :-2, 1:-1] * m[..., 2:, 1:-1] * m[..., 1:-1, :-2] * m[..., 1:-1, 2:]
    return inner - eroded


def _coverage_of(attrs: dict[str, torch.Tensor], centers: torch.Tensor, idx: torch.Tensor,
                 second: bool, size: int) -> torch.Tensor:
    """(len(idx), 1, H, W) coverage of the first (or second) object of images ``idx``."""
    suffix, slot = ("2", 1) if second else ("", 0)
    half = torch.tensor(HALF_EXTENT)[attrs["size" + suffix][idx]] * cell_size(size)
    return shape_coverage(attrs["shape" + suffix][idx], centers[idx, slot], half, size).unsqueeze(1)


# ----------------------------------------------------------------------------- sampling
def _sample_attrs(n: int, rng: np.random.Generator, two_objects: float) -> dict[str, np.ndarray]:
    """Attribute indices for n images; every random draw is made for all n (determinism)."""
    a = {"shape": rng.integers(len(SHAPE_KINDS), size=n),
         "colour": rng.integers(len(COLOURS), size=n),
         "size": rng.integers(len(SIZES), size=n),
         "position": rng.integers(len(POSITIONS), size=n),
         "shape2": rng.integers(len(SHAPE_KINDS), size=n),
         "colour2": rng.integers(len(COLOURS), size=n),
         "size2": rng.integers(len(SIZES), size=n),
         "relation": rng.integers(len(RELATIONS), size=n)}
    line = rng.integers(3, size=n)            # the shared row (left/right) or column (above/below)
    pair = np.array([(0, 1), (0, 2), (1, 2)])[rng.integers(3, size=n)]  # (n, 2): first < second
    has2 = rng.random(n) < two_objects
    swap = a["relation"] % 2 == 1             # "right of"/"below": the first object comes second
    first, second = np.where(swap, pair[:, 1], pair[:, 0]), np.where(swap, pair[:, 0], pair[:, 1])
    horizontal = a["relation"] < 2            # "left of"/"right of": same row, columns differ
    pos1 = np.where(horizontal, 3 * line + first, 3 * first + line)
    pos2 = np.where(horizontal, 3 * line + second, 3 * second + line)
    a["position"] = np.where(has2, pos1, a["position"])
    a["position2"] = pos2
    for key in ("shape2", "colour2", "size2", "position2", "relation"):
        a[key] = np.where(has2, a[key], -1)
    return {key: a[key] for key in ATTR_KEYS}


def _side_room(blocked: np.ndarray, half_extent: np.ndarray) -> np.ndarray:
    """How far (cells) a centre may move towards one side: JITTER when that side is open,
    less when it faces the canvas edge or the other object, so a ``_GAP`` stays free."""
    tight = np.clip(0.5 - half_extent - _GAP, 0.0, JITTER)
    return np.where(blocked, tight, JITTER)


def _centres(position: np.ndarray, size_idx: np.ndarray, other: np.ndarray,
             rng: np.random.Generator, size: int) -> np.ndarray:
    """Pixel (x, y) of objects in grid cells ``position`` (other object's cell: ``other``,
    −1 for none), each centre jittered inside its cell as far as :func:`_side_room` allows."""
    row, col = np.divmod(position, 3)
    orow, ocol = np.divmod(other, 3)
    paired = other >= 0
    half = np.array(HALF_EXTENT)[size_idx]
    u = rng.random(size=(len(position), 2))
    xy = np.empty((len(position), 2))
    for axis, (here, there, same_line) in enumerate(((col, ocol, paired & (orow == row)),
                                                     (row, orow, paired & (ocol == col)))):
        low = _side_room((here == 0) | (same_line & (there == here - 1)), half)
        high = _side_room((here == 2) | (same_line & (there == here + 1)), half)
        xy[:, axis] = here + 0.5 - low + (low + high) * u[:, axis]   # uniform in the allowed span
    return _FRAME + xy * cell_size(size)


def _check_args(n: int, size: int, two_objects: float) -> None:
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(size, (int, np.integer)) or not 16 <= size <= 64:
        raise ValueError(f"size must be an int from 16 to 64 (shapes are clearest at 32 or more), "
                         f"got {size!r}")
    if not 0.0 <= two_objects <= 1.0:
        raise ValueError(f"two_objects is a probability in [0, 1], got {two_objects!r}")


def render_shapes(n: int, size: int = 32, seed: int = 0, two_objects: float = 0.0) -> ShapesBatch:
    """Render ``n`` images of ``size`` x ``size``; the same seed gives identical tensors.

    ``two_objects`` is the probability that an image holds a second object, related to the
    first by one of RELATIONS. Returns a :class:`ShapesBatch`.
    """
    _check_args(n, size, two_objects)
    rng = np.random.default_rng(seed)
    attrs = _sample_attrs(n, rng, two_objects)
    centers = np.full((n, 2, 2), np.nan, dtype=np.float32)
    centers[:, 0] = _centres(attrs["position"], attrs["size"], attrs["position2"], rng, size)
    second = _centres(np.maximum(attrs["position2"], 0), np.maximum(attrs["size2"], 0),
                      attrs["position"], rng, size)
    has2 = attrs["relation"] >= 0
    centers[has2, 1] = second[has2]

    attrs_t = {key: torch.from_numpy(value.astype(np.int64)) for key, value in attrs.items()}
    centers_t = torch.from_numpy(centers)
    everyone, two = torch.arange(n), torch.from_numpy(has2).nonzero().squeeze(1)
    cover = _coverage_of(attrs_t, centers_t, everyone, False, size)          # (N, 1, H, W)
    images = _COLOUR_RGB[attrs_t["colour"]].view(n, 3, 1, 1) * cover         # x = colour a
    masks = (cover >= 0.5).float()
    cover = _coverage_of(attrs_t, centers_t, two, True, size)
    colour = _COLOUR_RGB[attrs_t["colour2"][two]].view(-1, 3, 1, 1)
    images[two] = images[two] * (1 - cover) + colour * cover         # "over": x (1 - a) + colour a
    masks[two] = torch.maximum(masks[two], (cover >= 0.5).float())
    captions = [caption_for({key: int(v[i]) for key, v in attrs.items()}) for i in range(n)]
    return ShapesBatch(images, masks, edge_map(masks), attrs_t, captions, centers_t)


def render_subject(positions, kind: str = "ring", colour: str = "magenta", size: str = "large",
                   image_size: int = 32, seed: int = 0) -> ShapesBatch:
    """One object per image, all of one ``kind`` (any of SHAPE_KINDS + NOVEL_KINDS), ``colour`` and
    ``size``, in the grid cells ``positions`` (indices into POSITIONS, one image each), jittered
    inside its cell as :func:`render_shapes` does. A DreamBooth subject's instance pictures.

    ``attrs["shape"]`` indexes SHAPE_KINDS + NOVEL_KINDS (5 is "ring"); the captions describe the
    picture in plain words ("a large magenta ring at the top left"), not always in the grammar.
    """
    kinds = SHAPE_KINDS + NOVEL_KINDS
    if kind not in kinds or colour not in COLOURS or size not in SIZES:
        raise ValueError(f"render_subject: kind in {kinds}, colour in {tuple(COLOURS)}, size in {SIZES}; "
                         f"got {kind!r}, {colour!r}, {size!r}")
    position = np.asarray(positions, dtype=np.int64).reshape(-1)
    if ((position < 0) | (position >= len(POSITIONS))).any():
        raise ValueError(f"render_subject: positions are indices 0..8 into POSITIONS, got {list(position)}")
    n = len(position)
    _check_args(n, image_size, 0.0)
    rng = np.random.default_rng(seed)
    size_idx = np.full(n, SIZES.index(size))
    attrs = {key: torch.full((n,), -1, dtype=torch.int64) for key in ATTR_KEYS}
    attrs.update(shape=torch.full((n,), kinds.index(kind)), colour=torch.full((n,), list(COLOURS).index(colour)),
                 size=torch.from_numpy(size_idx), position=torch.from_numpy(position))
    centers = torch.full((n, 2, 2), float("nan"))
    centers[:, 0] = torch.from_numpy(_centres(position, size_idx, np.full(n, -1), rng, image_size)).float()
    cover = _coverage_of(attrs, centers, torch.arange(n), False, image_size)
    images = _COLOUR_RGB[attrs["colour"]].view(n, 3, 1, 1) * cover
    masks = (cover >= 0.5).float()
    captions = [f"a {size} {colour} {kind} at the {POSITIONS[p]}" for p in position.tolist()]
    return ShapesBatch(images, masks, edge_map(masks), attrs, captions, centers)


# ----------------------------------------------------------------------------- captions
_COLOUR_NAMES = tuple(COLOURS)


def _index(value, names: tuple[str, ...], key: str) -> int:
    i = int(value)
    if not 0 <= i < len(names):
        raise ValueError(f"attrs[{key!r}] = {i} is not a valid index into {names}")
    return i


def _object(row: dict, suffix: str = "") -> str:
    size = SIZES[_index(row["size" + suffix], SIZES, "size" + suffix)]
    colour = _COLOUR_NAMES[_index(row["colour" + suffix], _COLOUR_NAMES, "colour" + suffix)]
    shape = SHAPE_KINDS[_index(row["shape" + suffix], SHAPE_KINDS, "shape" + suffix)]
    return f"a {size} {colour} {shape}"


def caption_for(attrs_row: dict) -> str:
    """The caption of one image from its attribute indices (ints or 0-d tensors).

    With ``relation`` missing or −1: "a large red circle at the top left";
    otherwise: "a small blue square left of a large green triangle".
    """
    relation = int(attrs_row.get("relation", -1))
    if relation < 0:
        position = POSITIONS[_index(attrs_row["position"], POSITIONS, "position")]
        return f"{_object(attrs_row)} at the {position}"
    relation_words = RELATIONS[_index(relation, RELATIONS, "relation")]
    return f"{_object(attrs_row)} {relation_words} {_object(attrs_row, '2')}"


def _alternatives(words) -> str:
    return "(" + "|".join(re.escape(w) for w in words) + ")"


_OBJECT = f"a {_alternatives(SIZES)} {_alternatives(COLOURS)} {_alternatives(SHAPE_KINDS)}"
_ONE = re.compile(f"{_OBJECT} at the {_alternatives(POSITIONS)}")
_TWO = re.compile(f"{_OBJECT} {_alternatives(RELATIONS)} {_OBJECT}")


def parse_caption(text: str) -> dict[str, int] | None:
    """Attribute indices of a caption of the grammar, or ``None`` if it is not one.

    Runs of whitespace count as one space. Keys are ATTR_KEYS; a key the caption does not
    fix is −1 (the second object's keys for one object; the positions for two objects).
    """
    if not isinstance(text, str):
        return None
    text = " ".join(text.split())
    out = dict.fromkeys(ATTR_KEYS, -1)
    if m := _ONE.fullmatch(text):
        size, colour, shape, position = m.groups()
        out.update(position=POSITIONS.index(position))
    elif m := _TWO.fullmatch(text):
        size, colour, shape, relation, size2, colour2, shape2 = m.groups()
        out.update(relation=RELATIONS.index(relation), size2=SIZES.index(size2),
                   colour2=_COLOUR_NAMES.index(colour2), shape2=SHAPE_KINDS.index(shape2))
    else:
        return None
    out.update(size=SIZES.index(size), colour=_COLOUR_NAMES.index(colour),
               shape=SHAPE_KINDS.index(shape))
    return out


# ----------------------------------------------------------------------------- dataset
class ShapesDataset(Dataset):
    """``n`` rendered shapes; item ``i`` is ``(image (3, H, W), attrs)`` with ``attrs`` a dict
    of 0-d int64 tensors (keys ATTR_KEYS). ``.batch`` is the whole :class:`ShapesBatch`,
    ``.captions`` its captions."""

    def __init__(self, n: int = 10000, size: int = 32, seed: int = 0, two_objects: float = 0.0):
        self.batch = render_shapes(n, size=size, seed=seed, two_objects=two_objects)
        self.captions = self.batch.captions

    def __len__(self) -> int:
        return len(self.batch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.batch.images[i], {key: value[i] for key, value in self.batch.attrs.items()}
