"""course_lib: reference implementations and helpers for the course
*Zero to Research-Level Image & Video Generation*.

Start every notebook with ``cfg = course_lib.setup(smoke=SMOKE, seed=SEED)``.
"""
from course_lib.config import Config, cache_dir, data_dir, is_smoke, output_dir, setup
from course_lib.device import get_device, seed_everything

__version__ = "0.1.0"
_SUBMODULES = {"artifacts", "checks", "config", "data", "device", "diffusion", "eval", "foundations",
               "models", "nn", "train", "viz"}


def __getattr__(name: str):
    """``course_lib.viz`` and friends work after a plain ``import course_lib`` (loaded on first use)."""
    if name in _SUBMODULES:
        import importlib
        return importlib.import_module(f"course_lib.{name}")
    raise AttributeError(f"module 'course_lib' has no attribute {name!r}")

__all__ = ["Config", "setup", "is_smoke", "data_dir", "cache_dir", "output_dir",
           "get_device", "seed_everything"]
