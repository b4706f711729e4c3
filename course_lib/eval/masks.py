"""Masks and edges read back from generated shapes images, and how well two masks agree (IoU).

A ControlNet is told "draw an object inside this mask" (or "along these edges"); to score it we
read the mask back out of what it drew and compare it with the one we asked for::

    mask = object_mask(images)                  # (N, 1, H, W) bool: where an object is
    edges = edges_of(images)                    # (N, 1, H, W) bool: its inner boundary
    mask_iou(mask, batch.masks)                 # (N,) |A and B| / |A or B|

Reading a pixel. The background is black and every object is one of the six ``COLOURS`` c,
drawn anti-aliased: a pixel that an object covers by a fraction a is ``x = a c``. So each pixel
gets the palette colour it points towards (largest cosine similarity: brightness does not
matter) and its coverage back by projecting onto that colour::

    k = argmax_k <x, c_k> / |c_k|          a = <x, c_k> / <c_k, c_k>

``render_shapes`` calls a pixel part of the mask when its coverage is at least 0.5, so
``object_mask`` with ``threshold=0.5`` gives back *exactly* the rendered masks (measured: no
pixel differs on 20 000 renders, one and two objects, sizes 16 to 64). A threshold on the
brightest channel alone cannot: the colours have different brightness (green peaks at 0.85,
blue at 1.0), and the best such threshold (0.45) still gets 0.7 pixels of the anti-aliased rim
wrong per one-object image, 1.4 per two-object image.

Paper: ControlNet (Zhang et al. 2023, https://arxiv.org/abs/2302.05543) scores control with
edge/segmentation maps re-extracted from its samples by the same detector that made the
conditions (Canny, a segmentation network). The course can do better: its detector is exact
on real renders, so a drop in IoU is the generator's fault, not the detector's.
Used in notebook Phase 4b (ControlNet), and by ``eval.shapes_eval`` (notebook 4 · 07).
"""
from __future__ import annotations

import torch
from torch import Tensor

from course_lib.data.shapes import COLOURS, edge_map
from course_lib.eval.judges import check_images

__all__ = ["PALETTE", "pixel_colours", "object_mask", "edges_of", "mask_iou"]

PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32)   # (6, 3), as render_shapes


def _check_rgb(images, who: str) -> Tensor:
    if isinstance(images, Tensor) and images.dim() == 4 and images.shape[1] != 3:
        raise ValueError(f"{who}: images must be RGB, shape (N, 3, H, W); got {tuple(images.shape)}")
    return check_images(images, 3, who=f"{who}: images")


def _check_threshold(threshold: float, who: str) -> float:
    if not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"{who}: threshold is a coverage in (0, 1]; got {threshold!r}")
    return float(threshold)


@torch.no_grad()
def pixel_colours(images: Tensor) -> tuple[Tensor, Tensor]:
    """Which palette colour each pixel shows and how much of it: (N, 3, H, W) in [0, 1] ->
    ``colour`` (N, H, W) int64 index into ``COLOURS`` and ``coverage`` (N, H, W) float32.

    colour = argmax_k cos(x, c_k);  coverage = <x, c> / <c, c>  (0 on black, 1 on a full pixel).
    Computed in float64 so that a pixel of coverage exactly 0.5 comes back as 0.5.
    """
    x = _check_rgb(images, "pixel_colours").detach().to("cpu", torch.float64)
    palette = PALETTE.double()                                                # (K, 3)
    cosine = torch.einsum("nchw,kc->nkhw", x, palette / palette.norm(dim=1, keepdim=True))
    colour = cosine.argmax(dim=1)                                             # (N, H, W)
    c = palette[colour].permute(0, 3, 1, 2)                                   # (N, 3, H, W)
    coverage = (x * c).sum(dim=1) / (c * c).sum(dim=1)                        # <x, c> / <c, c>
    return colour, coverage.float()


def object_mask(images: Tensor, threshold: float = 0.5) -> Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 1, H, W) bool: pixels covered at least ``threshold``.

    With the default 0.5 this equals ``render_shapes(...).masks`` on real renders, pixel for pixel.
    """
    threshold = _check_threshold(threshold, "object_mask")
    _, coverage = pixel_colours(images)
    return (coverage >= threshold).unsqueeze(1)


def edges_of(images: Tensor, threshold: float = 0.5) -> Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 1, H, W) bool: the inner boundary of :func:`object_mask`.

    The same rule as ``data.shapes.edge_map`` (mask pixels with a 4-neighbour outside the mask),
    so ``edges_of(batch.images)`` equals ``batch.edges`` on real renders.
    """
    threshold = _check_threshold(threshold, "edges_of")
    return edge_map(object_mask(images, threshold).float()).bool()


def _as_mask(m, who: str, name: str) -> Tensor:
    """bool or {0, 1} tensors (N, 1, H, W) or (N, H, W) -> (N, H*W) bool."""
    if not isinstance(m, Tensor):
        raise TypeError(f"{who}: {name} must be a torch.Tensor mask (N, 1, H, W); got {type(m).__name__}")
    if m.dim() == 4 and m.shape[1] != 1 or m.dim() not in (3, 4):
        raise ValueError(f"{who}: {name} must have shape (N, 1, H, W) or (N, H, W); got {tuple(m.shape)}")
    if m.dtype != torch.bool:
        if m.is_floating_point() and torch.isnan(m).any():
            raise ValueError(f"{who}: {name} contains NaN")
        if not ((m == 0) | (m == 1)).all():
            raise ValueError(f"{who}: {name} must be binary (bool or 0/1); threshold it first, "
                             "e.g. object_mask(images) or soft_mask >= 0.5")
        m = m != 0
    return m.detach().cpu().flatten(1)


def mask_iou(pred: Tensor, target: Tensor, empty: float = 1.0) -> Tensor:
    """Intersection over union of each pair of masks: (N, 1, H, W), (N, 1, H, W) -> (N,) float32.

        IoU = |pred and target| / |pred or target|    (1: identical, 0: disjoint)

    Masks are bool or {0, 1}. When both masks of a pair are empty the ratio is 0 / 0; it is
    ``empty`` (1.0 by default: asked for nothing and drew nothing is perfect agreement).
    """
    p, t = _as_mask(pred, "mask_iou", "pred"), _as_mask(target, "mask_iou", "target")
    if p.shape != t.shape:
        raise ValueError(f"mask_iou: pred and target must have the same shape; got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    inter = (p & t).sum(dim=1).float()                                # |A and B|
    union = (p | t).sum(dim=1).float()                                # |A or B|
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, float(empty)))
