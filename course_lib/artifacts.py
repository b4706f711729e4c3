"""Keep what a notebook produced, so runs can be looked at and compared later.

Every generative notebook ends with one call::

    save_run("ddpm_digits", samples=samples, metrics={"fid": fid, "nll": nll}, cfg=cfg)

which writes ``output_dir()/runs/<name>/<tag>/``:

=====================  ==============================================================
``samples.safetensors``  the samples (one tensor, or a dict of tensors)
``samples.png``          a grid of the first 64 samples, when they are images
                         (``samples_<key>.png`` for a dict; ``.gif`` for videos)
``metrics.json``         the metrics, the full-mode ``"targets"`` (if any), a ``"run"`` block
                         (name, tag, smoke, seed, device, torch version, time) and
                         ``"extra"`` information, if any
=====================  ==============================================================

A notebook states what full mode should reach beside the numbers it saves::

    save_run("ddpm", metrics={"recognised": 0.914, "fid_ratio": 1.08}, cfg=cfg,
             targets={"recognised": (">=", 0.90), "fid_ratio": ("<=", 3)})

and ``check_targets(metrics, targets)`` says which are met (``course-results`` prints them).

The tag defaults to ``smoke-seed0`` / ``full-seed0`` (from ``cfg``), so re-running a notebook
with the same settings replaces its previous result while other seeds and modes sit beside
it. Later: ``load_run(name)``, ``list_runs()``, ``compare_runs()``.
"""
from __future__ import annotations

import difflib
import json
import math
import operator
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from course_lib.config import output_dir

__all__ = ["save_run", "load_run", "list_runs", "compare_runs", "RunTable",
           "check_targets", "TargetCheck", "TARGET_OPS"]

_RESERVED = ("run", "extra", "targets")
_PREVIEW_COUNT = 64


def _runs_root() -> Path:
    return output_dir() / "runs"


def _check_part(value: Any, what: str) -> str:
    """A run name or tag must be one plain folder name."""
    if not isinstance(value, str) or not value or value.startswith(".") \
            or any(c in value for c in '/\\:*?"<>|') or value != value.strip():
        raise ValueError(f"the run {what} must be a plain folder name such as 'ddpm_digits' "
                         f"(no slashes, not starting with '.'); got {value!r}")
    return value


def _default_tag(cfg: Any) -> str:
    if cfg is None:
        return "default"
    return f"{'smoke' if cfg.smoke else 'full'}-seed{cfg.seed}"


# ---------------------------------------------------------------------------------------------
# metrics -> JSON
# ---------------------------------------------------------------------------------------------

def _jsonable(value: Any, where: str) -> Any:
    """``value`` with NumPy/torch scalars turned into Python numbers; anything JSON cannot
    hold faithfully (NaN, inf, arrays, objects) raises an error that names ``where``."""
    if isinstance(value, (np.generic, torch.Tensor)):
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            raise TypeError(f"{where} is a tensor of shape {tuple(value.shape)}; metrics hold "
                            "numbers (use .item(), .tolist(), or save tensors as samples)")
        return _jsonable(value.item(), where)
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}; JSON cannot store NaN or inf. Did training "
                             "diverge? Leave the metric out or store it as a string.")
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has a key {k!r}; keys must be strings")
            out[k] = _jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where} is a {type(value).__name__}; metrics may hold numbers, strings, "
                    "bools, None, and lists/dicts of them")


def _run_block(name: str, tag: str, cfg: Any) -> dict[str, Any]:
    return {"name": name, "tag": tag,
            "smoke": bool(cfg.smoke) if cfg is not None else None,
            "seed": int(cfg.seed) if cfg is not None else None,
            "device": str(cfg.device) if cfg is not None else None,
            "torch": torch.__version__,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="microseconds")}


# ---------------------------------------------------------------------------------------------
# targets: what a notebook promises in full mode
# ---------------------------------------------------------------------------------------------

TARGET_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class TargetCheck:
    """One declared target against the measured value, e.g. ``recognised 0.914 >= 0.9: met``."""

    metric: str
    op: str
    target: Any
    measured: Any
    met: bool

    def __str__(self) -> str:
        return f"{self.metric} {_cell(self.measured)} {self.op} {_cell(self.target)}: " \
               f"{'met' if self.met else 'MISSED'}"


def _kind(value: Any) -> str:
    """What a target may compare: "bool", "number", "string" (anything else: its type name)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def _parse_target(metric: str, spec: Any, measured: Any) -> tuple[str, Any]:
    """``spec`` = (op, value), checked against the ``measured`` value it will be compared with."""
    if isinstance(spec, str) or not isinstance(spec, (tuple, list)) or len(spec) != 2:
        raise ValueError(f"the target of {metric!r} must be a pair (op, value) such as ('>=', 0.9); got {spec!r}")
    op, value = spec
    if op not in TARGET_OPS:
        raise ValueError(f"the target of {metric!r} has the unknown op {op!r}; use one of {', '.join(TARGET_OPS)}")
    if op == "==":
        if _kind(value) not in ("bool", "number", "string") or _kind(value) != _kind(measured):
            raise ValueError(f"the target of {metric!r} (== {value!r}) compares a {_kind(value)} with the "
                             f"metric's {_kind(measured)} {measured!r}")
    elif _kind(value) != "number":
        raise ValueError(f"the target of {metric!r} ({op} {value!r}) needs a number after {op!r}")
    elif _kind(measured) != "number":
        raise ValueError(f"the target of {metric!r} ({op} {value!r}) orders numbers, but the metric is "
                         f"{measured!r}; compare it with '==' instead")
    return op, value


def check_targets(metrics: Mapping[str, Any], targets: Mapping[str, Any]) -> list[TargetCheck]:
    """Which declared targets the measured metrics meet.

    metrics: {name: measured value}, e.g. {"recognised": 0.914, "accuracy_rises": True}
    targets: {name: (op, value)}, e.g. {"recognised": (">=", 0.90), "accuracy_rises": ("==", True)};
             op is one of ``TARGET_OPS``: >=, <=, >, <, == (a JSON list [op, value] works too)
    returns: [TargetCheck(metric, op, target, measured, met)], one per target, in its order.

    Raises ValueError, naming the target, for an unknown op, a target naming a metric that is not
    in ``metrics``, an ordering op on something that is not a number, or an == between kinds.
    """
    checks = []
    for metric, spec in targets.items():
        if metric not in metrics or metric in _RESERVED:
            close = difflib.get_close_matches(str(metric), [k for k in metrics if k not in _RESERVED], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"a target names the metric {metric!r}, which is not among the metrics{hint} "
                             f"(metrics: {sorted(k for k in metrics if k not in _RESERVED)})")
        measured = metrics[metric]
        op, value = _parse_target(metric, spec, measured)
        checks.append(TargetCheck(metric, op, value, measured, bool(TARGET_OPS[op](measured, value))))
    return checks


# ---------------------------------------------------------------------------------------------
# samples
# ---------------------------------------------------------------------------------------------

def _sample_tensors(samples: Any) -> tuple[dict[str, torch.Tensor], str]:
    """samples -> ({key: contiguous CPU tensor}, "tensor" | "dict")."""
    def as_tensor(x: Any, where: str) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{where} must be a tensor or array, got {type(x).__name__}")
        return x.detach().to("cpu", copy=True).contiguous()

    if isinstance(samples, Mapping):
        if not samples:
            raise ValueError("samples is an empty dict")
        for key in samples:
            _check_part(key, "samples key")
        return {k: as_tensor(v, f"samples[{k!r}]") for k, v in samples.items()}, "dict"
    return {"samples": as_tensor(samples, "samples")}, "tensor"


def _write_preview(tensor: torch.Tensor, stem: Path) -> None:
    """samples.png for (N, C, H, W) / (C, H, W) images, samples.gif for (N, T, C, H, W) videos."""
    from PIL import Image

    from course_lib import viz

    t = tensor
    if t.dim() == 5 and t.shape[2] in (1, 3):
        clips = t[:16].transpose(0, 1)  # (T, N, C, H, W): frame t of every clip
        with viz._capturing():
            viz.animate(clips, nrow=4, save=stem.with_suffix(".gif"))
        return
    is_image = (t.dim() == 4 and t.shape[1] in (1, 3)) or (t.dim() == 3 and t.shape[0] in (1, 3))
    if not is_image or min(t.shape[-2:]) < 4:
        return
    grid = viz.make_grid(t[:_PREVIEW_COUNT] if t.dim() == 4 else t)
    pixels = (grid * 255).round().astype(np.uint8)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(stem.with_suffix(".png"))


def _write_samples(folder: Path, samples: Any) -> None:
    from safetensors.torch import save_file

    tensors, kind = _sample_tensors(samples)
    save_file(tensors, str(folder / "samples.safetensors"), metadata={"kind": kind})
    for key, tensor in tensors.items():
        _write_preview(tensor, folder / (key if kind == "tensor" else f"samples_{key}"))


# ---------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------

def save_run(name: str, *, samples: Any = None, metrics: Mapping[str, Any] | None = None,
             cfg: Any = None, tag: str | None = None,
             extra: Mapping[str, Any] | None = None,
             targets: Mapping[str, tuple[str, Any]] | None = None) -> Path:
    """Save a notebook's results under ``output_dir()/runs/<name>/<tag>`` and return that folder.

    samples: a tensor or array (e.g. (N, C, H, W) images or (N, T, C, H, W) videos), or a
             dict of them. metrics: {name: number or string} (NumPy/torch scalars are fine).
    cfg: the run's :class:`course_lib.config.Config`; it sets the default tag
         ("smoke-seed0", "full-seed1" ...; "default" without cfg).
    extra: more to keep: JSON-able values go into metrics.json under "extra"; matplotlib
           figures are saved as ``<key>.png``.
    targets: what full mode should reach, {metric: (op, value)} with op one of >=, <=, >, <, ==,
             e.g. {"recognised": (">=", 0.90)}; each must name one of ``metrics`` (checked
             here, see :func:`check_targets`). Saved under "targets"; a smoke run keeps them too.
    A previous run with the same name and tag is replaced as a whole.
    """
    from matplotlib.figure import Figure

    _check_part(name, "name")
    tag = _check_part(tag if tag is not None else _default_tag(cfg), "tag")
    record = _jsonable(dict(metrics or {}), "metrics")
    if clash := [k for k in _RESERVED if k in record]:
        raise ValueError(f"metrics may not be called {clash}: metrics.json uses those keys itself")
    if targets:
        checks = check_targets(record, _jsonable(dict(targets), "targets"))
        record["targets"] = {c.metric: [c.op, c.target] for c in checks}
    extra = dict(extra or {})
    figures = {k: v for k, v in extra.items() if isinstance(v, Figure)}
    for key in figures:
        _check_part(key, "extra figure name")
    record["run"] = _run_block(name, tag, cfg)
    if info := {k: v for k, v in extra.items() if k not in figures}:
        record["extra"] = _jsonable(info, "extra")
    if figures:
        record.setdefault("extra", {})["figures"] = [f"{k}.png" for k in figures]

    folder = _runs_root() / name / tag
    staging = folder.with_name(f".{tag}.saving-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if samples is not None:
            _write_samples(staging, samples)
        for key, fig in figures.items():
            fig.savefig(staging / f"{key}.png", dpi=150, bbox_inches="tight", facecolor="white")
        (staging / "metrics.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        _swap_in(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _swap_in(staging: Path, folder: Path) -> None:
    """Replace ``folder`` by the fully written ``staging`` folder."""
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(folder)


def _read_metrics(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder / 'metrics.json'} is missing or not valid JSON ({exc})") from exc


def _run_folders(name: str) -> list[Path]:
    """The saved runs (tags) of ``name``, oldest first."""
    base = _runs_root() / name
    folders = [d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")
               and (d / "metrics.json").exists()] if base.is_dir() else []
    return sorted(folders, key=lambda d: _read_metrics(d)["run"]["timestamp"])


def _names() -> list[str]:
    root = _runs_root()
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")) \
        if root.is_dir() else []


def load_run(name: str, tag: str | None = None) -> tuple[Any, dict[str, Any]]:
    """``(samples, metrics)`` of a saved run; ``tag=None`` takes the only or most recent one.

    samples: the tensor (or dict of tensors) that was saved, or None.
    metrics: the metrics dict, with the "run" block (and "extra", if any).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    _check_part(name, "name")
    folders = _run_folders(name)
    if not folders:
        raise FileNotFoundError(f"no saved run named {name!r} in {_runs_root()}; saved runs: "
                                f"{_names() or 'none'}")
    if tag is None:
        folder = folders[-1]
    else:
        matches = [d for d in folders if d.name == tag]
        if not matches:
            raise FileNotFoundError(f"run {name!r} has no tag {tag!r}; its tags are "
                                    f"{[d.name for d in folders]}")
        folder = matches[0]
    metrics = _read_metrics(folder)
    path = folder / "samples.safetensors"
    if not path.exists():
        return None, metrics
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        kind = (f.metadata() or {}).get("kind", "dict")
    return (tensors["samples"] if kind == "tensor" else tensors), metrics


def list_runs(name: str | None = None) -> list[dict[str, Any]]:
    """Every saved run (of ``name``, or of all names), oldest first within a name:
    ``[{"name", "tag", "path", "run": {...}, "metrics": {...}}, ...]``."""
    names = [_check_part(name, "name")] if name is not None else _names()
    runs = []
    for run_name in names:
        for folder in _run_folders(run_name):
            record = _read_metrics(folder)
            metrics = {k: v for k, v in record.items() if k not in _RESERVED}
            runs.append({"name": run_name, "tag": folder.name, "path": folder,
                         "run": record["run"], "metrics": metrics})
    return runs


class RunTable(list):
    """A list of row dicts (name, tag, time, metrics...) that prints as a text table."""

    def columns(self) -> list[str]:
        return list(dict.fromkeys(k for row in self for k in row))

    def __str__(self) -> str:
        if not self:
            return f"(no saved runs in {_runs_root()})"
        columns = self.columns()
        cells = [[_cell(row.get(c)) for c in columns] for row in self]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
        return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])

    __repr__ = __str__


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def compare_runs(name: str | None = None) -> RunTable:
    """A table of the scalar metrics of every saved run (of ``name``, or of all names).

    Returns a :class:`RunTable` (a list of row dicts); it shows as a text table when it is a
    cell's last line or is printed.
    """
    table = RunTable()
    for run in list_runs(name):
        row = {"name": run["name"], "tag": run["tag"], "time": run["run"]["timestamp"][:19].replace("T", " ")}
        row.update({k: v for k, v in run["metrics"].items()
                    if isinstance(v, (int, float, str, bool)) or v is None})
        table.append(row)
    return table
