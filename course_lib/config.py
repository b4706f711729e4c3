"""Run-wide settings: the smoke/full switch, the seed and the course's folders.

Every notebook starts the same way::

    SMOKE = None   # parameters cell: None follows env COURSE_SMOKE; papermill -p SMOKE True forces it
    SEED = 0
    cfg = course_lib.setup(smoke=SMOKE, seed=SEED)
    NUM_EPOCHS = cfg.pick(smoke=1, full=20)   # every size decision, in one place

Folders (each can be moved with an environment variable):

=================  =====================  ==========================================
folder             environment variable   default
=================  =====================  ==========================================
``data_dir()``     ``COURSE_DATA_DIR``    ``<user cache>/course_lib/data``
``cache_dir()``    ``COURSE_CACHE_DIR``   ``<user cache>/course_lib/cache``
``output_dir()``   ``COURSE_OUTPUT_DIR``  ``<user cache>/course_lib/outputs``
=================  =====================  ==========================================
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
import torch

__all__ = ["Config", "setup", "is_smoke", "data_dir", "cache_dir", "output_dir"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def is_smoke(override: bool | None = None) -> bool:
    """The smoke/full switch: ``override`` if given, else env ``COURSE_SMOKE`` (default: full)."""
    if override is not None:
        return bool(override)
    raw = os.environ.get("COURSE_SMOKE", "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"COURSE_SMOKE={raw!r} is not understood: use 1 (smoke) or 0 (full)")


def _root() -> Path:
    return Path(platformdirs.user_cache_dir("course_lib", appauthor=False))


def _folder(env: str, default: str) -> Path:
    path = Path(os.environ.get(env) or _root() / default).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """Where datasets live (env ``COURSE_DATA_DIR``)."""
    return _folder("COURSE_DATA_DIR", "data")


def cache_dir() -> Path:
    """Where derived files and downloads are cached (env ``COURSE_CACHE_DIR``)."""
    return _folder("COURSE_CACHE_DIR", "cache")


def output_dir() -> Path:
    """Where notebooks save samples, metrics and checkpoints (env ``COURSE_OUTPUT_DIR``)."""
    return _folder("COURSE_OUTPUT_DIR", "outputs")


@dataclass(frozen=True)
class Config:
    """What a notebook needs to know about this run."""

    smoke: bool
    seed: int
    device: torch.device
    data_dir: Path = field(default_factory=data_dir)
    output_dir: Path = field(default_factory=output_dir)

    def pick(self, smoke: Any, full: Any) -> Any:
        """``smoke`` in smoke mode, ``full`` otherwise: ``cfg.pick(smoke=200, full=5000)``."""
        return smoke if self.smoke else full

    def __str__(self) -> str:
        mode = ("smoke (tiny sizes, seconds: models barely train, so samples look like noise)" if self.smoke
                else "full (real training)")
        from course_lib.device import amp
        return (f"mode: {mode} | seed: {self.seed} | device: {self.device} | "
                f"fit trains in: {amp(self.device).describe()}")


def setup(smoke: bool | None = None, seed: int = 0, device: str | torch.device | None = None,
          verbose: bool = True) -> Config:
    """Seed everything, pick the device and return the run's :class:`Config`.

    ``smoke=None`` follows env ``COURSE_SMOKE``; ``device=None`` picks CUDA → MPS → CPU
    (or env ``COURSE_DEVICE``).
    """
    from course_lib.device import get_device, seed_everything

    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    seed_everything(seed)
    cfg = Config(smoke=is_smoke(smoke), seed=seed, device=get_device(device))
    if verbose:
        print(cfg)
    return cfg
