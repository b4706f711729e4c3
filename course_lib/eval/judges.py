"""Judges: two small classifiers that referee generated images.

FID on natural images uses Inception-v3 as a fixed feature extractor. Our offline world
(sklearn digits and rendered shapes) needs its own referee, one small enough to run on a
laptop CPU in CI. These are it:

- :class:`DigitsJudge` reads a grey digit ``(N, 1, H, W)`` and says which of 0-9 it is.
- :class:`ShapesJudge` reads a coloured single-object image ``(N, 3, H, W)`` and says its
  shape, colour, size and position (one classification head per attribute).

A third kind, not a network, reads shapes the way a person does, from the object's outline:
``load_judge("shapes_silhouette")``, a :class:`course_lib.eval.silhouette.SilhouetteJudge` with the
same ``predict``.

Both take images in ``[0, 1]`` at any resolution (they resize to their native 16x16 /
32x32 inside), and offer the same three views of an image::

    judge = load_judge("digits")          # trained weights shipped with course_lib
    judge.features(x)                     # (N, D) penultimate features (RMS 1), for FID / KID
    judge.logits(x)                       # (N, 10); the shapes judge gives a dict of heads
    labels, confidences = judge.predict(x)

The shipped weights in ``course_lib/checkpoints/`` are produced by
``python scripts/train_judges.py`` (deterministic, a few minutes on a CPU).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DigitsJudge", "ShapesJudge", "load_judge", "judge_path", "check_images",
           "JUDGE_NAMES", "SHAPES_JUDGE", "FEATURE_JUDGE", "build_judge", "save_judge", "load_judge_file",
           "extract_features", "reads_shapes", "attribute_classes"]

JUDGE_NAMES = ("digits", "shapes", "shapes_calibrated", "shapes_second", "shapes_silhouette")
SHAPES_JUDGE = "shapes_silhouette"    # the judge the course reads images of shapes with (docs/judges.md)
FEATURE_JUDGE = "shapes_calibrated"   # the network whose features embed shapes images for Fréchet distances
CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "checkpoints"   # course_lib/checkpoints
_RANGE_TOLERANCE = 1e-3  # allow float round-off just outside [0, 1]


# --------------------------------------------------------------------------- input checks
def check_images(x: Tensor, channels: int | None = None, who: str = "images") -> Tensor:
    """Check that ``x`` is a float batch ``(N, C, H, W)`` with values in ``[0, 1]``.

    Returns ``x`` unchanged; raises a ``TypeError`` / ``ValueError`` that says what was wrong
    and how to fix it (e.g. ``(x + 1) / 2`` for images in ``[-1, 1]``).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} must be a torch.Tensor of shape (N, C, H, W); got {type(x).__name__}")
    if x.dim() != 4:
        hint = " (a single image? add a batch dimension with x[None])" if x.dim() == 3 else ""
        raise ValueError(f"{who} must have shape (N, C, H, W); got {tuple(x.shape)}{hint}")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{who} is empty: shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        hint = {1: "; for RGB images use x.mean(dim=1, keepdim=True)",
                3: "; for grey images use x.expand(-1, 3, -1, -1)"}.get(channels, "")
        raise ValueError(f"{who} must have {channels} channel(s), shape (N, {channels}, H, W); "
                         f"got {tuple(x.shape)}{hint}")
    if x.dtype == torch.uint8:
        raise TypeError(f"{who} are uint8 (0..255); the judges expect floats in [0, 1]: "
                        "pass x.float() / 255")
    if not x.is_floating_point():
        raise TypeError(f"{who} must be a floating-point tensor in [0, 1]; got dtype {x.dtype}")
    lo, hi = x.min().item(), x.max().item()
    if lo != lo or hi != hi:  # NaN compares unequal to itself
        raise ValueError(f"{who} contain NaN values")
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        if lo < -_RANGE_TOLERANCE and lo >= -1 - 1e-2 and hi <= 1 + 1e-2:
            fix = ("they look like images in [-1, 1]: pass (x + 1) / 2 "
                   "(and .clamp(0, 1) if a model overshoots)")
        elif hi > 2 and lo >= 0:
            fix = "they look like 0..255 pixel values: pass x / 255"
        else:
            fix = "rescale them to [0, 1], e.g. x.clamp(0, 1) for small overshoots"
        raise ValueError(f"{who} must have values in [0, 1]; got values in [{lo:.3g}, {hi:.3g}]: {fix}")
    return x


# --------------------------------------------------------------------------- the networks
def _conv_body(in_channels: int, widths: tuple[int, ...], native_size: int,
               feature_dim: int, depth: int = 1) -> nn.Sequential:
    """Stages of (``depth`` x [conv3x3 -> BatchNorm -> ReLU], maxpool 2x2), then flatten,
    linear, ReLU.

    (N, in_channels, S, S) -> (N, feature_dim); each stage halves S.
    """
    layers: list[nn.Module] = []
    c = in_channels
    for w in widths:
        for _ in range(depth):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        layers.append(nn.MaxPool2d(2))
    side = native_size // 2 ** len(widths)
    if side < 1:
        raise ValueError(f"native_size {native_size} is too small for {len(widths)} stages")
    layers += [nn.Flatten(), nn.Linear(c * side * side, feature_dim), nn.ReLU()]
    return nn.Sequential(*layers)


class _Judge(nn.Module):
    """What both judges share: input checks, resizing, the feature body."""

    in_channels: int = 1
    kind: str = ""

    def __init__(self, native_size: int, widths: tuple[int, ...], feature_dim: int, depth: int):
        super().__init__()
        self.native_size = int(native_size)
        self.widths = tuple(int(w) for w in widths)
        self.feature_dim = int(feature_dim)
        self.depth = int(depth)
        self.body = _conv_body(self.in_channels, self.widths, self.native_size, self.feature_dim,
                               self.depth)
        # features() divides by this, set after training so that each feature has RMS 1 on the
        # real training images: it keeps KID's kernel (x.y/D + 1)^3 in its intended range.
        self.register_buffer("feature_scale", torch.ones(()))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def config(self) -> dict:
        """Everything needed to rebuild this judge (saved beside the weights)."""
        return {"kind": self.kind, "native_size": self.native_size,
                "widths": list(self.widths), "feature_dim": self.feature_dim, "depth": self.depth}

    def prepare(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, C, S, S) in [-1, 1] on the judge's device, S native."""
        check_images(x, self.in_channels, who=f"{type(self).__name__} input")
        x = x.to(self.device, torch.float32)
        s = self.native_size
        if x.shape[-2:] != (s, s):
            shrinking = x.shape[-2] > s or x.shape[-1] > s
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False,
                              antialias=shrinking)
        return x * 2 - 1

    def hidden(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, D) penultimate activations, what the heads read."""
        return self.body(self.prepare(x))

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, D) features for FID / KID: ``hidden(x) / feature_scale``."""
        return self.hidden(x) / self.feature_scale


class DigitsJudge(_Judge):
    """A 10-way digit classifier. Input ``(N, 1, H, W)`` in [0, 1]; native size 16x16."""

    in_channels = 1
    kind = "digits"

    def __init__(self, native_size: int = 16, widths: tuple[int, ...] = (16, 32, 64),
                 feature_dim: int = 64, depth: int = 1, num_classes: int = 10):
        super().__init__(native_size, widths, feature_dim, depth)
        self.num_classes = int(num_classes)
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def config(self) -> dict:
        return {**super().config(), "num_classes": self.num_classes}

    def logits(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) -> (N, 10) unnormalised class scores."""
        return self.head(self.dropout(self.hidden(x)))

    forward = logits

    @torch.no_grad()
    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 1, H, W) -> labels (N,) long and confidences (N,) = max softmax probability."""
        confidences, labels = self.logits(x).softmax(dim=-1).max(dim=-1)
        return labels, confidences


class ShapesJudge(_Judge):
    """A multi-head classifier for single-object shape images ``(N, 3, H, W)`` in [0, 1].

    One head per attribute, e.g. ``heads={"shape": 5, "colour": 6, "size": 2, "position": 9}``
    (the sizes come from the checkpoint, so they always match the data it was trained on).

    A head whose last class name is ``"unreadable"`` (the calibrated judges' shape head, 6 ways)
    never answers it: :meth:`predict` gives the most likely of the other classes, and its
    confidence is that class's probability under the full softmax, so probability put on
    "unreadable" lowers the confidence. ``min_confidence`` (``None`` for the old judge) is the
    confidence below which a shape verdict should not count (the judge abstains); ShapesEval
    uses it when it is given no ``min_confidence`` of its own.
    """

    in_channels = 3
    kind = "shapes"

    def __init__(self, heads: dict[str, int], native_size: int = 32,
                 widths: tuple[int, ...] = (16, 32, 64, 64), feature_dim: int = 128, depth: int = 1,
                 class_names: dict[str, list[str]] | None = None,
                 min_confidence: float | None = None):
        super().__init__(native_size, widths, feature_dim, depth)
        self.min_confidence = None if min_confidence is None else float(min_confidence)
        if not heads:
            raise ValueError("ShapesJudge needs at least one head, e.g. {'shape': 5}")
        self.class_names = dict(class_names or {})
        self.dropout = nn.Dropout(0.1)
        self.heads = nn.ModuleDict({k: nn.Linear(self.feature_dim, int(n)) for k, n in heads.items()})

    def config(self) -> dict:
        extra = {} if self.min_confidence is None else {"min_confidence": self.min_confidence}
        return {**super().config(), "heads": {k: h.out_features for k, h in self.heads.items()},
                "class_names": self.class_names, **extra}

    def logits(self, x: Tensor) -> dict[str, Tensor]:
        """(N, 3, H, W) -> {attribute: (N, K_attribute)} unnormalised scores."""
        h = self.dropout(self.hidden(x))
        return {k: head(h) for k, head in self.heads.items()}

    forward = logits

    @torch.no_grad()
    def predict(self, x: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(N, 3, H, W) -> ({attribute: labels (N,)}, {attribute: confidences (N,)})."""
        labels, confidences = {}, {}
        for k, z in self.logits(x).items():
            p = z.softmax(dim=-1)
            if self.class_names.get(k, [None])[-1] == "unreadable":   # never the answer itself
                p = p[:, :-1]
            confidences[k], labels[k] = p.max(dim=-1)
        return labels, confidences


# --------------------------------------------------------------------------- loading
def build_judge(config: dict) -> DigitsJudge | ShapesJudge:
    """Rebuild an untrained judge from its :meth:`config` dictionary."""
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind == "silhouette":
        from course_lib.eval.silhouette import SilhouetteJudge

        return SilhouetteJudge(**cfg)
    cfg["widths"] = tuple(cfg["widths"])
    if kind == "digits":
        return DigitsJudge(**cfg)
    if kind == "shapes":
        return ShapesJudge(**cfg)
    raise ValueError(f"unknown judge kind {kind!r}; valid kinds: {', '.join(JUDGE_NAMES)}")


def judge_path(name: str) -> Path:
    """Where the shipped checkpoint of judge ``name`` lives."""
    if name not in JUDGE_NAMES:
        raise ValueError(f"unknown judge {name!r}; valid names: {', '.join(JUDGE_NAMES)}")
    return CHECKPOINT_DIR / f"judge_{name}.safetensors"


def save_judge(judge: DigitsJudge | ShapesJudge, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``judge``'s weights (as float16 by default, half the bytes) and config to a safetensors file."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in judge.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"config": json.dumps(judge.config())})
    path.chmod(0o644)  # readable by everyone, like any other package file
    return path


def load_judge_file(path: str | Path, device: str | torch.device = "cpu") -> DigitsJudge | ShapesJudge:
    """Read a judge written by :func:`save_judge`: float32, eval mode, gradients off."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    judge = build_judge(config)
    judge.load_state_dict(state)
    return judge.eval().requires_grad_(False).to(device)


_CACHE: dict[tuple[str, str], nn.Module] = {}


def load_judge(name: str, device: str | torch.device | None = None) -> DigitsJudge | ShapesJudge:
    """A trained judge (one of JUDGE_NAMES): eval mode, frozen, cached per process.

    ``"shapes_calibrated"`` and ``"shapes_second"`` were trained to abstain on what a person would
    call unreadable; ``"shapes_silhouette"`` (a :class:`course_lib.eval.silhouette.SilhouetteJudge`)
    reads the shape from the outline. Read their verdicts at ``judge.min_confidence`` (docs/judges.md).

    ``device=None`` picks CUDA -> MPS -> CPU (see :func:`course_lib.device.get_device`).
    The same object is returned on every call, so do not train or modify it.
    """
    from course_lib.device import get_device

    if not isinstance(name, str):
        raise TypeError(f"judge name must be a string, one of {', '.join(JUDGE_NAMES)}; got {name!r}")
    path = judge_path(name)
    device = get_device(device)
    key = (name, str(device))
    if key not in _CACHE:
        if not path.exists():
            raise FileNotFoundError(f"the {name} judge's weights are missing ({path}); "
                                    "create them with: python scripts/train_judges.py")
        _CACHE[key] = load_judge_file(path, device)
    return _CACHE[key]


# --------------------------------------------------------------------------- images -> features
def _get_judge(judge, device=None) -> nn.Module:
    """A judge name ("digits" / "shapes") or a judge-like module with ``.features``."""
    if isinstance(judge, str):
        return load_judge(judge, device)
    if isinstance(judge, nn.Module) and hasattr(judge, "features"):
        return judge
    raise TypeError(f"judge must be 'digits', 'shapes' or a module with .features(x); got {judge!r}")


def reads_shapes(judge: nn.Module) -> bool:
    """True for a judge that names shapes: a ShapesJudge (a "shape" head) or a SilhouetteJudge."""
    return "shape" in attribute_classes(judge)


def attribute_classes(judge: nn.Module) -> dict[str, int]:
    """How many classes each attribute a judge reads has: {"shape": 6, "colour": 6, ...} for a
    ShapesJudge (its heads), the same attributes for a SilhouetteJudge ({} for the digits judge)."""
    if hasattr(judge, "heads"):
        return {k: head.out_features for k, head in judge.heads.items()}
    return dict(getattr(judge, "attributes", {}))


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


@torch.no_grad()
def _predict(j: nn.Module, images: Tensor, batch_size: int):
    """Run ``j.predict`` in batches; returns (labels, confidences) as CPU tensors or dicts."""
    parts = [j.predict(b) for b in _batches(images, batch_size)]
    labels, confidences = zip(*parts)
    if isinstance(labels[0], Mapping):
        return ({k: torch.cat([p[k] for p in labels]).cpu() for k in labels[0]},
                {k: torch.cat([p[k] for p in confidences]).cpu() for k in confidences[0]})
    return torch.cat(labels).cpu(), torch.cat(confidences).cpu()
