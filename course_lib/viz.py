"""Pictures for the course: image grids, side-by-side comparisons, training curves,
animations and sliders.

    show_images(x)                                   # a grid of a batch (N, C, H, W)
    compare({"real": x, "generated": samples})       # labelled rows
    plot_curves(result.history, smooth=50)           # training curves
    plot_training(result)                            # fit's result: its loss, smoothed
    draw_graph(loss)                                 # a scalar autograd graph (Phase 1 · 03)
    animate(trajectory, save="denoise.gif")          # a denoising trajectory (T, N, C, H, W)
    slider(lambda t: q_sample(x0, t), t=(0, 999, 1)) # explore a parameter

**Value ranges.** Images may be in [-1, 1] (diffusion models), [0, 1] or [0, 255]. With
``value_range=None`` the range is guessed: any negative value means [-1, 1], else a maximum
of at most 1 means [0, 1], else [0, 255] (``uint8`` is always [0, 255]). Pass ``(lo, hi)``
to fix it, or ``"minmax"`` to stretch every image to its own minimum and maximum.

**Showing things exactly once.** The figure functions return a :class:`ShownFigure` (a
matplotlib ``Figure``) and :func:`animate` an :class:`Animation` (an IPython ``Image``).
Inside a Jupyter kernel they display themselves at once, so they also appear when called
in a loop or in the middle of a cell. Jupyter also displays the value of a cell's last
line; an object already shown by the running cell skips that second display, so
``show_images(x)`` as the last line shows one grid, not two. Showing it again later
(``fig`` alone in a new cell, or ``display(fig)``) draws it again. Outside a kernel (plain
Python, pytest, scripts) nothing is displayed: use ``save=``. These figures are not
pyplot figures, so ``plt.show()`` neither shows nor duplicates them.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import matplotlib
import numpy as np
import torch
from IPython.display import Image as _IPythonImage
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["make_grid", "show_images", "compare", "plot_curves", "plot_training", "smooth_curve",
           "draw_graph", "graph_layout", "animate",
           "frames_to_gif_bytes", "slider", "mask_editor", "MaskEditor", "widgets_are_live", "ShownFigure",
           "Animation"]

_FALSE = {"", "0", "false", "no", "off"}
_MAX_FIG_WIDTH = 12.0  # inches: wider figures get scrollbars in notebooks
_SHAPES = "(N, C, H, W), (C, H, W), (N, H, W) or (H, W) with C in {1, 3}"


# ---------------------------------------------------------------------------------------------
# images -> a normalised batch (N, H, W, C) in [0, 1]
# ---------------------------------------------------------------------------------------------

def _to_numpy(images: Any, caller: str) -> np.ndarray:
    """``images`` (tensor, array, PIL image or a list of same-shaped images) as an array,
    float32 unless it is uint8."""
    if isinstance(images, torch.Tensor):
        x = images.detach().cpu()
        return (x if x.dtype == torch.uint8 else x.float()).numpy()  # bool, half, bf16 -> float32
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError(f"{caller} got an empty list of images")
        parts = [_to_numpy(im, caller) for im in images]
        if len({p.shape for p in parts}) > 1:
            raise ValueError(f"{caller} got a list of images with different shapes "
                             f"{sorted({p.shape for p in parts})}; resize them to one shape first")
        return np.stack(parts)
    x = np.asarray(images)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise TypeError(f"{caller} expects a torch tensor or numpy array of images, "
                        f"got {type(images).__name__}")
    return x if x.dtype == np.uint8 else x.astype(np.float32)


def _as_batch(images: Any, caller: str) -> np.ndarray:
    """Any accepted image layout -> (N, H, W, C) with C in {1, 3}, values not yet rescaled.

    Channels-first is tried first: a 3-D input whose first axis is 1 or 3 is one (C, H, W)
    image. Channels-last is accepted when unambiguous: (H, W, C) or (N, H, W, C) whose
    last axis is 1 or 3. Any other 3-D input is a batch (N, H, W) of grayscale images.
    """
    x = _to_numpy(images, caller)
    shape = x.shape
    if x.ndim == 2:                                   # (H, W)
        x = x[None, :, :, None]
    elif x.ndim == 3 and shape[0] in (1, 3):          # (C, H, W)
        x = x.transpose(1, 2, 0)[None]
    elif x.ndim == 3 and shape[-1] in (1, 3):         # (H, W, C)
        x = x[None]
    elif x.ndim == 3:                                 # (N, H, W)
        x = x[..., None]
    elif x.ndim == 4 and shape[1] in (1, 3):          # (N, C, H, W)
        x = x.transpose(0, 2, 3, 1)
    elif x.ndim == 4 and shape[-1] in (1, 3):         # (N, H, W, C)
        pass
    else:
        hint = " (a video? use animate)" if x.ndim == 5 else ""
        raise ValueError(f"{caller} expects {_SHAPES} (or channels-last); got {tuple(shape)}{hint}")
    if 0 in x.shape:
        raise ValueError(f"{caller} got an empty batch of images with shape {tuple(shape)}")
    return x


def _guess_range(arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    """The value range a batch was most likely made in: [-1, 1], [0, 1] or [0, 255]."""
    if all(a.dtype == np.uint8 for a in arrays):
        return 0.0, 255.0
    lo = min(float(np.nanmin(a)) for a in arrays)
    hi = max(float(np.nanmax(a)) for a in arrays)
    if lo < 0:
        return -1.0, 1.0
    return (0.0, 1.0) if hi <= 1 else (0.0, 255.0)


def _rescale(x: np.ndarray, value_range: Any) -> np.ndarray:
    """(N, H, W, C) in ``value_range`` -> float32 in [0, 1] (clipped; NaN/inf drawn as 0)."""
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        warnings.warn("images contain NaN or inf values; they are drawn as 0 (black)",
                      stacklevel=3)
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if value_range is None:
        value_range = _guess_range([x])
    if isinstance(value_range, str):
        if value_range != "minmax":
            raise ValueError(f"value_range must be None, (lo, hi) or 'minmax'; got {value_range!r}")
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        hi = x.max(axis=(1, 2, 3), keepdims=True)
    else:
        try:
            lo, hi = (float(v) for v in value_range)
        except (TypeError, ValueError):
            raise ValueError(f"value_range must be None, (lo, hi) or 'minmax'; "
                             f"got {value_range!r}") from None
        if not hi > lo:
            raise ValueError(f"value_range must have lo < hi; got {value_range!r}")
    span = np.maximum(hi - lo, 1e-12)
    return np.clip((x - lo) / span, 0.0, 1.0)


def _prepare(images: Any, value_range: Any, caller: str) -> np.ndarray:
    """Images in any accepted layout -> (N, H, W, C) float32 in [0, 1]."""
    return _rescale(_as_batch(images, caller), value_range)


def _check_grid_args(nrow: Any, padding: Any) -> None:
    if not isinstance(nrow, int) or isinstance(nrow, bool) or nrow < 1:
        raise ValueError(f"nrow (images per row) must be a positive int, got {nrow!r}")
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")


def _tile(batch: np.ndarray, nrow: int, padding: int, pad_value: float) -> np.ndarray:
    """(N, H, W, C) -> one (rows*H + gaps, cols*W + gaps, C) picture, ``nrow`` images per row."""
    n, h, w, c = batch.shape
    cols = min(n, nrow)
    rows = math.ceil(n / cols)
    grid = np.full((rows * h + (rows - 1) * padding, cols * w + (cols - 1) * padding, c),
                   pad_value, dtype=np.float32)
    for i, image in enumerate(batch):
        top, left = (i // cols) * (h + padding), (i % cols) * (w + padding)
        grid[top:top + h, left:left + w] = image
    return grid


def make_grid(images: Any, nrow: int = 8, padding: int = 1, value_range: Any = None,
              pad_value: float = 1.0) -> np.ndarray:
    """Tile a batch of images into one picture, ``nrow`` images per row.

    images: tensor or array, (N, C, H, W), (C, H, W), (N, H, W) or (H, W) with C in {1, 3}
            (NumPy may also be channels-last, (N, H, W, C) or (H, W, C)); or a list of images.
    value_range: None (guess), (lo, hi), or "minmax" (each image stretched to [0, 1]).
    Returns (H_grid, W_grid, C) float32 in [0, 1]; images are separated by ``padding``
    pixels of ``pad_value`` (1.0 = white).
    """
    _check_grid_args(nrow, padding)
    return _tile(_prepare(images, value_range, "make_grid"), nrow, padding, pad_value)


# ---------------------------------------------------------------------------------------------
# showing figures and animations exactly once
# ---------------------------------------------------------------------------------------------

def _kernel_shell() -> Any:
    """The IPython shell when running inside a Jupyter kernel (JupyterLab, Colab, VS Code,
    nbclient/papermill), else None (plain Python, pytest, terminal IPython)."""
    from IPython import get_ipython

    shell = get_ipython()
    return shell if shell is not None and getattr(shell, "kernel", None) is not None else None


_captured: list | None = None  # while not None, new figures are collected here, not shown


@contextlib.contextmanager
def _capturing() -> Iterator[list]:
    """Collect the figures made inside the block instead of displaying them."""
    global _captured
    previous, _captured = _captured, []
    try:
        yield _captured
    finally:
        _captured = previous


class _ShowsOnce:
    """Mixin for results that display themselves in the notebook cell that made them (see the
    module docstring): a second display by the same cell, as its last-line value, is skipped."""

    _shown_in_cell: int | None = None

    def _picture(self) -> tuple[bytes, str]:
        """The bytes to display and their format ("png" or "gif")."""
        raise NotImplementedError

    def _display(self) -> None:
        from IPython.display import display

        data, fmt = self._picture()
        display(_IPythonImage(data=data, format=fmt))

    def _show_now(self) -> None:
        """Called by the function that made the object: show it if in a kernel."""
        if _captured is not None:
            _captured.append(self)
            return
        shell = _kernel_shell()
        if shell is not None:
            self._display()
            self._shown_in_cell = shell.execution_count

    def _ipython_display_(self) -> None:
        """Called by Jupyter for ``display(obj)`` and for a cell's last-line value."""
        shell = _kernel_shell()
        if shell is None or self._shown_in_cell != shell.execution_count:
            self._display()


class ShownFigure(_ShowsOnce, Figure):
    """A matplotlib Figure that shows itself once in a notebook (see the module docstring)."""

    def _picture(self) -> tuple[bytes, str]:
        return _png_bytes(self), "png"


class Animation(_ShowsOnce, _IPythonImage):
    """A GIF that shows itself once in a notebook; ``.data`` holds the GIF bytes."""

    def __init__(self, data: bytes):
        super().__init__(data=data, format="gif")

    def _picture(self) -> tuple[bytes, str]:
        return self.data, "gif"


def _png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.05,
                facecolor="white")
    return buffer.getvalue()


def _finish(fig: ShownFigure, save: str | os.PathLike | None) -> ShownFigure:
    """Save ``fig`` as a PNG when asked, show it in the notebook, and return it."""
    if save is not None:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight", pad_inches=0.05, facecolor="white")
    fig._show_now()
    return fig


def _cell_inches(h: int, w: int, cols: int, scale: float) -> float:
    """Width in inches of one image cell: small images get enlarged, the row stays <= 12 in."""
    cell = min(max(w / 28 * 0.9, 0.6), 3.0)
    cell = max(cell, 2.5 / cols)  # a single small image should not be a postage stamp
    return min(cell, _MAX_FIG_WIDTH / cols) * scale


def _imshow(ax: Axes, picture: np.ndarray) -> None:
    """Draw an (H, W, C) picture in [0, 1] on ``ax`` with no ticks; grayscale when C == 1."""
    if picture.shape[-1] == 1:
        ax.imshow(picture[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(picture, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _check_scale(scale: Any) -> None:
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------

def show_images(images: Any, nrow: int = 8, title: str | None = None,
                labels: Sequence[Any] | None = None, value_range: Any = None,
                scale: float = 1.0, save: str | os.PathLike | None = None) -> ShownFigure:
    """Show a batch of images as a grid (grayscale when C == 1) and return the figure.

    images: as for :func:`make_grid`, e.g. (N, C, H, W).
    labels: optional, one per image (class names, timesteps ...), written above each image.
    scale: enlarge (> 1) or shrink (< 1) the figure. save: path of a PNG to write.
    """
    _check_grid_args(nrow, 1)
    _check_scale(scale)
    batch = _prepare(images, value_range, "show_images")
    n, h, w, _ = batch.shape
    if labels is not None and len(labels) != n:
        raise ValueError(f"show_images got {len(labels)} labels for {n} images; give one per image")
    cols = min(n, nrow)
    rows = math.ceil(n / cols)
    cell = _cell_inches(h, w, cols, scale)
    label_room = 0.25 if labels is not None else 0.0
    title_room = 0.35 if title else 0.0
    fig = ShownFigure(figsize=(cols * cell, rows * (cell * h / w + label_room) + title_room),
                      layout="constrained")
    if labels is None:
        _imshow(fig.add_subplot(), _tile(batch, nrow, padding=1, pad_value=1.0))
    else:
        axes = fig.subplots(rows, cols, squeeze=False)
        fontsize = 9 if cell >= 0.8 else 7
        for i, ax in enumerate(axes.flat):
            if i < n:
                _imshow(ax, batch[i])
                ax.set_title(str(labels[i]), fontsize=fontsize, pad=2)
            else:
                ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return _finish(fig, save)


def compare(rows: Mapping[str, Any], nrow: int | None = None, value_range: Any = None,
            title: str | None = None, save: str | os.PathLike | None = None) -> ShownFigure:
    """Labelled rows of images one above the other, e.g. ``{"real": x, "generated": s}``.

    rows: {label: images}; each entry as for :func:`make_grid` and ranged on its own
          (unless ``value_range`` is given), so a [0, 1] row and a [-1, 1] row both look right.
    nrow: images per line; None puts a row's images on one line (wrapping after 16).
    """
    if not isinstance(rows, Mapping) or not rows:
        raise TypeError("compare expects a non-empty dict {label: images}, e.g. "
                        "compare({'real': x, 'generated': samples})")
    if nrow is not None:
        _check_grid_args(nrow, 1)
    batches = {str(k): _prepare(v, value_range, f"compare (row {k!r})") for k, v in rows.items()}
    per_line = nrow or min(16, max(len(b) for b in batches.values()))
    grids = {k: _tile(b, per_line, padding=1, pad_value=1.0) for k, b in batches.items()}
    widest = max(g.shape[1] for g in grids.values())
    # pad shorter rows on the right, so every row is drawn at the same scale, left-aligned
    grids = {k: np.pad(g, ((0, 0), (0, widest - g.shape[1]), (0, 0)), constant_values=1.0)
             for k, g in grids.items()}
    cols = min(per_line, max(len(b) for b in batches.values()))
    _, h, w, _ = next(iter(batches.values())).shape
    width = cols * _cell_inches(h, w, cols, 1.0)  # inches for the widest row
    inch_per_px = width / widest
    heights = [g.shape[0] for g in grids.values()]
    label_room = 0.12 * max(len(k) for k in grids) + 0.3
    fig = ShownFigure(figsize=(width + label_room, sum(heights) * inch_per_px + 0.2 * len(grids)
                               + (0.35 if title else 0)), layout="constrained")
    axes = fig.subplots(len(grids), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, (label, grid) in zip(axes[:, 0], grids.items()):
        _imshow(ax, grid)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=11)
    if title:
        fig.suptitle(title)
    return _finish(fig, save)


def smooth_curve(values: Any, window: int) -> np.ndarray:
    """Trailing moving average: point i is the mean of the last ``window`` values up to i
    (fewer at the start, so the smoothed curve starts where the raw one does)."""
    y = np.asarray(values, dtype=np.float64)
    if window <= 1:
        return y
    sums = np.concatenate([[0.0], np.cumsum(y)])
    end = np.arange(1, len(y) + 1)
    start = np.maximum(0, end - window)
    return (sums[end] - sums[start]) / (end - start)


def _as_curves(curves: Any) -> dict[str, np.ndarray]:
    """A dict {name: 1-D float array}; a bare sequence becomes one unnamed curve."""
    if isinstance(curves, Mapping):
        items = list(curves.items())
    else:
        items = [("", curves)]
    if not items:
        raise ValueError("plot_curves got no curves")
    out = {}
    for name, values in items:
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().double().numpy()
        try:
            y = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"plot_curves: curve {name!r} must be a sequence of numbers, "
                            f"got {type(values).__name__}") from None
        if y.ndim != 1 or len(y) == 0:
            raise ValueError(f"plot_curves: curve {name!r} must be a non-empty 1-D sequence, "
                             f"got shape {y.shape}")
        out[str(name)] = y
    return out


def plot_curves(curves: Mapping[str, Any] | Sequence[float], xlabel: str = "step",
                ylabel: str | None = None, logy: bool = False, smooth: int = 0,
                title: str | None = None, save: str | os.PathLike | None = None) -> ShownFigure:
    """Plot training curves: ``{"train loss": [...], "val loss": [...]}`` or one sequence.

    smooth: moving-average window in points (0 or 1 = raw); the raw curve stays faint behind.
    Point i is drawn at x = i + 1 (the step it was logged after).
    """
    if not isinstance(smooth, int) or isinstance(smooth, bool) or smooth < 0:
        raise ValueError(f"smooth must be a non-negative int (a window in points), got {smooth!r}")
    data = _as_curves(curves)
    fig = ShownFigure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, y) in enumerate(data.items()):
        x = np.arange(1, len(y) + 1)
        color = colors[i % len(colors)]
        if smooth > 1:
            ax.plot(x, y, color=color, alpha=0.25, linewidth=1)
            ax.plot(x, smooth_curve(y, smooth), color=color, linewidth=2, label=name or None)
        else:
            ax.plot(x, y, color=color, linewidth=1.5, label=name or None)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if any(data):
        ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return _finish(fig, save)


def plot_training(result: Any, keys: Sequence[str] = ("loss",), smooth: int | None = None,
                  logy: bool = False, title: str | None = None,
                  save: str | os.PathLike | None = None) -> ShownFigure:
    """The curves ``keys`` of a training run (default: the loss), smoothed over ~2 % of it.

    result: anything with ``history`` (name → one value per step), e.g. what
    :func:`course_lib.train.fit` returns (Phase 2 · 02). smooth: the moving-average window in
    steps; None picks max(1, steps // 50).
    """
    history = getattr(result, "history", None)
    if not isinstance(history, Mapping):
        raise TypeError(f"plot_training expects a training result with a .history dict (what fit "
                        f"returns), got {type(result).__name__}; use plot_curves for plain lists")
    missing = [k for k in keys if k not in history]
    if missing:
        raise KeyError(f"no curve {missing[0]!r} in the history; it has {sorted(history)}")
    steps = getattr(result, "steps", len(history[keys[0]]) if keys else 0)
    smooth = max(1, steps // 50) if smooth is None else smooth
    return plot_curves({k: history[k] for k in keys}, smooth=smooth, logy=logy, title=title, save=save)


# ---------------------------------------------------------------------------------------------
# computational graphs (Phase 1 · 03)
# ---------------------------------------------------------------------------------------------

def graph_layout(root: Any) -> tuple[list[Any], dict[int, tuple[float, float]]]:
    """Where to draw each node of the scalar graph behind ``root``.

    A node has ``edges``: ``((operand, d node / d operand), ...)``, empty for an input (the
    ``Value`` of Phase 1 · 03 and ``course_lib.foundations.autograd.Value``). Returns the nodes
    (root first) and ``{id(node): (x, y)}``: a node's column is its longest path from an input
    (an input sits just left of its first use); inputs get evenly spaced heights and every
    other node sits at the mean height of its operands.
    """
    nodes, stack, seen = [], [root], set()
    while stack:                                   # every node reachable from root
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            nodes.append(node)
            stack.extend(operand for operand, _ in node.edges)
    depth: dict[int, int] = {}

    def column(node: Any) -> int:                 # longest path from an input
        if id(node) not in depth:
            depth[id(node)] = 1 + max((column(op) for op, _ in node.edges), default=-1)
        return depth[id(node)]

    column(root)
    users: dict[int, list[Any]] = {id(n): [] for n in nodes}
    for n in nodes:
        for operand, _ in n.edges:
            users[id(operand)].append(n)
    for n in nodes:                                # inputs sit just left of their first use
        if not n.edges and users[id(n)]:
            depth[id(n)] = min(depth[id(u)] for u in users[id(n)]) - 1
    height: dict[int, float] = {}
    for i, n in enumerate(n for n in reversed(nodes) if not n.edges):
        height[id(n)] = -i
    for n in sorted(nodes, key=lambda n: depth[id(n)]):
        if n.edges:
            height[id(n)] = float(np.mean([height[id(op)] for op, _ in n.edges]))
    return nodes, {id(n): (2.2 * depth[id(n)], 1.1 * height[id(n)]) for n in nodes}


def draw_graph(root: Any, title: str | None = None, save: str | os.PathLike | None = None) -> ShownFigure:
    """Draw the scalar graph behind ``root``: one box per node (its name, data and grad), one
    arrow per edge, labelled in red with the local derivative d node / d operand.

    Nodes need ``edges``, ``data``, ``grad``, ``op`` and ``label`` (see :func:`graph_layout`).
    """
    if not hasattr(root, "edges"):
        raise TypeError(f"draw_graph expects a graph node with .edges (a Value), got {type(root).__name__}")
    nodes, pos = graph_layout(root)
    fig = ShownFigure(figsize=(10.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for n in nodes:
        for operand, local in n.edges:
            (x0, y0), (x1, y1) = pos[id(operand)], pos[id(n)]
            ax.annotate("", xy=(x1 - 0.55, y1), xytext=(x0 + 0.55, y0),
                        arrowprops={"arrowstyle": "->", "color": "gray"})
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, f"{local:.3g}", fontsize=7,
                    color="C3", ha="center")
    for n in nodes:
        x, y = pos[id(n)]
        name = (n.label or "?") + (f" = {n.op}" if n.op else " (input)")
        ax.text(x, y, f"{name}\ndata {n.data:.3f}\ngrad {n.grad:.3f}", ha="center", va="center",
                fontsize=8, bbox={"boxstyle": "round", "fc": "C0" if n.edges else "C1", "alpha": 0.25})
    xs, ys = zip(*pos.values())
    ax.set_xlim(min(xs) - 1, max(xs) + 1)
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    ax.set_axis_off()
    ax.set_title(title or "computational graph (red numbers: local derivatives)")
    return _finish(fig, save)


# ---------------------------------------------------------------------------------------------
# animations
# ---------------------------------------------------------------------------------------------

def _to_pil(picture: Any) -> Any:
    """(H, W, C) / (H, W) array (floats in [0, 1] or uint8), or a PIL image -> PIL image."""
    from PIL import Image

    if isinstance(picture, Image.Image):
        return picture
    x = np.asarray(picture)
    if x.dtype != np.uint8:
        x = (np.clip(x, 0.0, 1.0) * 255).round().astype(np.uint8)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] != 3):
        raise ValueError(f"a GIF frame must be (H, W), (H, W, 1) or (H, W, 3); got {x.shape}")
    return Image.fromarray(x)


def frames_to_gif_bytes(frames: Sequence[Any], fps: float = 8, loop: int = 0) -> bytes:
    """Encode pictures as an animated GIF. frames: (H, W, C) or (H, W) arrays (floats in
    [0, 1] or uint8) or PIL images, all the same size. loop=0 repeats forever."""
    if len(frames) == 0:
        raise ValueError("frames_to_gif_bytes got no frames")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    pictures = [_to_pil(f) for f in frames]
    if len({p.size for p in pictures}) > 1:
        raise ValueError("all GIF frames must have the same size")
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:],
                     duration=round(1000 / fps), loop=loop)
    return buffer.getvalue()


def _frame_batches(frames: Any) -> list[np.ndarray]:
    """(T, N, C, H, W) / (T, C, H, W) / a list of image batches -> T arrays (N, H, W, C)."""
    if isinstance(frames, (torch.Tensor, np.ndarray)):
        if frames.ndim < 3:
            raise ValueError("animate expects frames (T, N, C, H, W), (T, C, H, W) or a list of "
                             f"image batches; got shape {tuple(frames.shape)}")
        frames = list(frames)
    if not isinstance(frames, (list, tuple)) or len(frames) == 0:
        raise ValueError("animate expects frames (T, N, C, H, W), (T, C, H, W) or a non-empty "
                         f"list of image batches; got {type(frames).__name__}")
    batches = [_as_batch(f, f"animate (frame {i})") for i, f in enumerate(frames)]
    if len({b.shape for b in batches}) > 1:
        raise ValueError("animate: all frames must have the same shape; got "
                         f"{sorted({b.shape for b in batches})}")
    return batches


def _caption(picture: Any, text: str) -> Any:
    """The picture with ``text`` in a white strip above it."""
    from PIL import Image, ImageDraw, ImageFont

    size = max(12, min(24, picture.width // 16))
    font = ImageFont.load_default(size=size)
    out = Image.new(picture.mode, (picture.width, picture.height + size + 8), color=255
                    if picture.mode == "L" else (255, 255, 255))
    out.paste(picture, (0, size + 8))
    ImageDraw.Draw(out).text((picture.width // 2, 4), text, fill=0 if picture.mode == "L"
                             else (0, 0, 0), font=font, anchor="mt")
    return out


def animate(frames: Any, fps: float = 8, nrow: int = 8, value_range: Any = None,
            save: str | os.PathLike | None = None,
            titles: Sequence[str] | None = None) -> Animation:
    """Animate a sequence of image batches (a denoising trajectory, an interpolation, a video).

    frames: (T, N, C, H, W) or (T, C, H, W) tensor/array, or a list of T image batches.
    One value range is used for all frames (guessed over all of them when None), so the
    brightness does not flicker. Small pictures are enlarged (nearest neighbour) to at least
    about 320 pixels. titles: one caption per frame, e.g. [f"t={t}" for t in ts].
    save: a ``.gif`` path. Returns an :class:`Animation` (shows inline in Jupyter).
    """
    _check_grid_args(nrow, 1)
    batches = _frame_batches(frames)
    if titles is not None and len(titles) != len(batches):
        raise ValueError(f"animate got {len(titles)} titles for {len(batches)} frames")
    if save is not None and Path(save).suffix.lower() != ".gif":
        raise ValueError(f"animate saves GIF files; save must end in .gif, got {str(save)!r}")
    if value_range is None:
        value_range = _guess_range(batches)
    grids = [_tile(_rescale(b, value_range), nrow, padding=1, pad_value=1.0) for b in batches]
    h, w = grids[0].shape[:2]
    zoom = min(16, max(1, math.ceil(320 / max(h, w))))
    pictures = [_to_pil(g).resize((w * zoom, h * zoom), resample=0) for g in grids]  # 0: nearest
    if titles is not None:
        pictures = [_caption(p, str(t)) for p, t in zip(pictures, titles)]
    data = frames_to_gif_bytes(pictures, fps=fps)
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        Path(save).write_bytes(data)
    animation = Animation(data)
    animation._show_now()
    return animation


# ---------------------------------------------------------------------------------------------
# sliders: a live widget in Jupyter, a static strip of panels everywhere else
# ---------------------------------------------------------------------------------------------

def widgets_are_live() -> bool:
    """Whether :func:`slider` should draw a live ipywidgets control.

    Live only inside a Jupyter kernel (see :func:`_kernel_shell`) with ipywidgets installed,
    and neither env ``COURSE_STATIC_WIDGETS`` (any value but 0/false/no/off) nor env ``CI``
    set. Set ``COURSE_STATIC_WIDGETS=1`` when executing notebooks headlessly (nbclient,
    papermill), where nobody can move a slider, so the saved notebook shows a static view.
    """
    if os.environ.get("COURSE_STATIC_WIDGETS", "").strip().lower() not in _FALSE:
        return False
    if os.environ.get("CI", "").strip().lower() not in _FALSE:
        return False
    if _kernel_shell() is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


class _Param:
    """One slider parameter: a range ``(lo, hi[, step])``, a list of choices, a bool, or a
    fixed value; ``default`` is fn's own default when it is one of the options."""

    def __init__(self, name: str, spec: Any, fn_default: Any):
        self.name = name
        self.kind, self.options = self._parse(name, spec)
        self.default = self._default(spec, fn_default)

    @staticmethod
    def _parse(name: str, spec: Any) -> tuple[str, Any]:
        if isinstance(spec, tuple):
            if len(spec) not in (2, 3) or not all(_is_number(v) for v in spec):
                raise ValueError(f"slider: {name}={spec!r} must be (lo, hi) or (lo, hi, step) numbers")
            lo, hi = spec[0], spec[1]
            is_int = all(isinstance(v, (int, np.integer)) for v in spec)
            step = spec[2] if len(spec) == 3 else (1 if is_int else (hi - lo) / 100)
            if not hi > lo or not step > 0:
                raise ValueError(f"slider: {name}={spec!r} needs lo < hi and a positive step")
            return ("int" if is_int else "float"), (lo, hi, step)
        if isinstance(spec, list):
            if not spec:
                raise ValueError(f"slider: {name}=[] has no choices")
            return ("numbers" if all(_is_number(v) for v in spec) else "choices"), list(spec)
        if isinstance(spec, bool):
            return "bool", [False, True]
        return "fixed", spec

    def _default(self, spec: Any, fn_default: Any) -> Any:
        if self.kind == "fixed":
            return self.options
        if self.kind == "bool":
            return spec
        if self.kind in ("int", "float"):
            lo, hi, _ = self.options
            ok = _is_number(fn_default) and lo <= fn_default <= hi
            return fn_default if ok else lo
        return fn_default if fn_default in self.options else self.options[0]

    @property
    def numeric(self) -> bool:
        return self.kind in ("int", "float", "numbers")

    def sweep(self, count: int = 5) -> list:
        """A handful of values across the options, for the static view."""
        if self.kind in ("int", "float"):
            lo, hi, step = self.options
            values = [lo + round((v - lo) / step) * step for v in np.linspace(lo, hi, count)]
            values = [min(v, hi) for v in values]
            values = [int(v) for v in values] if self.kind == "int" else [float(v) for v in values]
            return list(dict.fromkeys(values))
        if self.kind in ("numbers", "choices"):
            if len(self.options) <= count + 1:
                return self.options
            picks = np.linspace(0, len(self.options) - 1, count).round().astype(int)
            return [self.options[i] for i in picks]
        if self.kind == "bool":
            return [False, True]
        return [self.options]

    def widget(self) -> Any:
        import ipywidgets as w

        common = dict(description=self.name, continuous_update=False)
        if self.kind in ("int", "float"):
            lo, hi, step = self.options
            cls = w.IntSlider if self.kind == "int" else w.FloatSlider
            return cls(min=lo, max=hi, step=step, value=self.default, **common)
        if self.kind == "numbers":
            return w.SelectionSlider(options=self.options, value=self.default, **common)
        if self.kind == "choices":
            return w.Dropdown(options=self.options, value=self.default, description=self.name)
        return w.Checkbox(value=self.default, description=self.name)


def _parse_params(fn: Callable, params: dict[str, Any]) -> dict[str, _Param]:
    try:
        signature = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        signature = {}
    defaults = {k: p.default for k, p in signature.items() if p.default is not inspect.Parameter.empty}
    return {k: _Param(k, spec, defaults.get(k)) for k, spec in params.items()}


def _rasterize(fig: Figure) -> np.ndarray:
    """A figure as an (H, W, 3) float array in [0, 1]."""
    from PIL import Image

    picture = Image.open(io.BytesIO(_png_bytes(fig))).convert("RGB")
    return np.asarray(picture, dtype=np.float32) / 255


def _call_for_picture(fn: Callable, kwargs: dict[str, Any]) -> np.ndarray:
    """Run ``fn(**kwargs)`` without displaying anything and return what it drew or returned
    as an (H, W, C) picture. fn may return images, a Figure or Axes, or draw with pyplot."""
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    try:
        with _capturing() as made:
            result = fn(**kwargs)
        new_pyplot = [plt.figure(n) for n in plt.get_fignums() if n not in before]
        if isinstance(result, Axes):
            result = result.figure
        if result is None and (made or new_pyplot):
            result = (made or new_pyplot)[-1]
        if result is None:
            raise ValueError("slider: fn returned None and drew no figure; return images or a "
                             "Figure (e.g. `return show_images(x)`)")
        if isinstance(result, Figure):
            return _rasterize(result)
        return make_grid(result)
    finally:
        for n in set(plt.get_fignums()) - before:
            plt.close(n)


def _static_slider(fn: Callable, params: dict[str, _Param]) -> ShownFigure:
    """fn at a handful of values of its first numeric parameter (others at their defaults),
    side by side in one figure."""
    sweepable = [p for p in params.values() if p.kind != "fixed"]
    numeric = [p for p in sweepable if p.numeric]
    swept = (numeric or sweepable or [None])[0]
    base = {k: p.default for k, p in params.items()}
    values = swept.sweep() if swept is not None else [None]
    panels = []
    for value in values:
        kwargs = dict(base, **({swept.name: value} if swept is not None else {}))
        panels.append(_call_for_picture(fn, kwargs))
    width = min(3.0, _MAX_FIG_WIDTH / len(panels))
    aspect = max(p.shape[0] / p.shape[1] for p in panels)
    fig = ShownFigure(figsize=(width * len(panels), width * aspect + 0.5), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.08, wspace=0.04)  # a visible gap between panels
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, picture, value in zip(axes, panels, values):
        _imshow(ax, picture)
        if swept is not None:
            ax.set_title(f"{swept.name} = {value:g}" if _is_number(value)
                         else f"{swept.name} = {value}", fontsize=10)
    return fig


def _live_slider(fn: Callable, params: dict[str, _Param]) -> Any:
    """An ipywidgets box: controls for the parameters, and fn's output redrawn below them."""
    import ipywidgets as w

    controls = {k: p.widget() for k, p in params.items() if p.kind != "fixed"}
    fixed = {k: p.default for k, p in params.items() if p.kind == "fixed"}

    def draw(**kwargs):
        result = fn(**kwargs, **fixed)
        if isinstance(result, Axes):
            result = result.figure
        if result is None or isinstance(result, _ShowsOnce):
            return  # drew itself (or drew with pyplot, which ipywidgets shows)
        if isinstance(result, Figure):
            if result.canvas.manager is None:  # not a pyplot figure: show it ourselves
                from IPython.display import display

                display(_IPythonImage(data=_png_bytes(result), format="png"))
            return
        show_images(result)

    output = w.interactive_output(draw, controls)
    return w.VBox([*controls.values(), output])


def slider(fn: Callable, **params: Any) -> ShownFigure | None:
    """Explore ``fn`` with sliders: ``slider(show_noisy, t=(0, 999, 1))``.

    fn(**kwargs) returns images (anything :func:`show_images` takes), returns a Figure or
    Axes, or draws with pyplot. Each parameter is one of:
    ``(lo, hi)`` / ``(lo, hi, step)`` a slider; ``[v1, v2, ...]`` a slider over numbers or a
    drop-down over other choices; ``True``/``False`` a check box; anything else a fixed value.
    A parameter starts at fn's own default when that is one of its options, else at the first.

    With a live widget front end (:func:`widgets_are_live`) the controls are displayed and
    ``None`` is returned. Otherwise fn is evaluated at a handful of values of its first
    numeric parameter (the others at their defaults) and the results are drawn side by side
    in one figure, which is returned.
    """
    if not callable(fn):
        raise TypeError(f"slider expects a function as its first argument, got {type(fn).__name__}")
    if not params:
        raise ValueError("slider needs at least one parameter, e.g. slider(fn, t=(0, 999, 1))")
    parsed = _parse_params(fn, params)
    if widgets_are_live():
        from IPython.display import display

        display(_live_slider(fn, parsed))
        return None
    return _finish(_static_slider(fn, parsed), save=None)


# ---------------------------------------------------------------------------------------------
# a mask editor: paint a control image by clicking cells, then run a function on it
# ---------------------------------------------------------------------------------------------

class MaskEditor:
    """A grid of ``cells`` x ``cells`` toggle buttons that paints a binary (S, S) mask, a "run"
    button that calls ``fn(mask)`` and shows what it returns, and a "clear" button.

    start: (S, S), (1, S, S) or (1, 1, S, S) in [0, 1], S a multiple of ``cells``; each button is
    one (S / cells)-pixel square, on when most of its pixels are. fn(mask) gets (1, 1, S, S) float
    in {0, 1} and returns images (as :func:`show_images` takes) or a Figure. ``.widget`` is the
    ipywidgets box; ``.mask()`` reads the buttons; ``.run()`` is what the run button does.
    """

    def __init__(self, fn: Callable, start: Any, cells: int = 16, label: str = "generate"):
        import ipywidgets as w

        self.fn, self.start = fn, _editor_mask(start, cells)
        self.cells, self.size = cells, self.start.shape[-1]
        on = _editor_cells(self.start, cells)
        square = w.Layout(width="18px", height="18px", padding="0px", margin="0px")
        self.buttons = [w.ToggleButton(value=bool(v), layout=square, tooltip=f"row {i // cells}, column {i % cells}")
                        for i, v in enumerate(on.flatten().tolist())]
        grid = w.GridBox(self.buttons, layout=w.Layout(grid_template_columns=f"repeat({cells}, 18px)",
                                                       grid_gap="1px"))
        self.run_button, self.clear_button = w.Button(description=label), w.Button(description="clear")
        self.run_button.on_click(lambda _: self.run())
        self.clear_button.on_click(lambda _: self.clear())
        self.output = w.Output()
        self.widget = w.HBox([w.VBox([grid, w.HBox([self.run_button, self.clear_button])]), self.output])

    def mask(self) -> torch.Tensor:
        """(1, 1, S, S) float in {0, 1}: each on button a (S / cells)-pixel square of ones."""
        cells = torch.tensor([b.value for b in self.buttons], dtype=torch.float32).view(self.cells, self.cells)
        return _cells_to_mask(cells, self.size // self.cells)

    def clear(self) -> None:
        for b in self.buttons:
            b.value = False

    def run(self) -> Any:
        from IPython.display import display

        result = self.fn(self.mask())
        self.output.clear_output(wait=True)
        with self.output:
            if isinstance(result, Figure):
                display(_IPythonImage(data=_png_bytes(result), format="png"))
            else:
                show_images(result)
        return result


def _editor_mask(start: Any, cells: int) -> torch.Tensor:
    x = torch.as_tensor(start, dtype=torch.float32)
    while x.dim() > 2 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"mask_editor: start must be a square (S, S), (1, S, S) or (1, 1, S, S) mask, "
                         f"got shape {tuple(torch.as_tensor(start).shape)}")
    if not isinstance(cells, int) or cells < 2 or x.shape[0] % cells:
        raise ValueError(f"mask_editor: cells={cells!r} must be an int >= 2 dividing the mask size {x.shape[0]}")
    return x


def _editor_cells(mask: torch.Tensor, cells: int) -> torch.Tensor:
    """(S, S) -> (cells, cells) bool: a cell is on when at least half of its pixels are."""
    k = mask.shape[0] // cells
    return mask.view(cells, k, cells, k).mean((1, 3)) >= 0.5


def _cells_to_mask(cells: torch.Tensor, k: int) -> torch.Tensor:
    """(cells, cells) -> (1, 1, S, S) with S = k * cells: each cell a k x k square of its value."""
    return cells.repeat_interleave(k, 0).repeat_interleave(k, 1)[None, None]


def mask_editor(fn: Callable, start: Any, cells: int = 16, label: str = "generate") -> ShownFigure | None:
    """Paint a control mask and see what ``fn`` makes of it: ``mask_editor(draw_from_mask, start=mask)``.

    With a live widget front end (:func:`widgets_are_live`) a :class:`MaskEditor` is displayed
    (click cells to paint or erase them, then press the button) and ``None`` is returned. Otherwise
    fn runs once on ``start`` snapped to the grid, and the mask and fn's pictures are drawn side by
    side in one figure, which is returned.
    """
    if not callable(fn):
        raise TypeError(f"mask_editor expects a function as its first argument, got {type(fn).__name__}")
    start = _editor_mask(start, cells)
    if widgets_are_live():
        from IPython.display import display

        editor = MaskEditor(fn, start, cells, label)
        display(editor.widget)
        editor.run()
        return None
    snapped = _cells_to_mask(_editor_cells(start, cells).float(), start.shape[0] // cells)
    panels = [make_grid(snapped.expand(-1, 3, -1, -1)), _call_for_picture(fn, {"mask": snapped})]
    widths = [p.shape[1] / p.shape[0] for p in panels]          # both panels drawn at the same height
    height = min(3.2, _MAX_FIG_WIDTH / sum(widths))
    fig = ShownFigure(figsize=(height * sum(widths), height + 0.4), layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=widths)
    for ax, picture, title in zip(axes, panels, ["mask (run in Jupyter to paint it)",
                                                 f"{getattr(fn, '__name__', 'fn')}(mask)"]):
        _imshow(ax, picture)
        ax.set_title(title, fontsize=9)
    return _finish(fig, save=None)
