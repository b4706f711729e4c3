"""course_lib: reference implementations and helpers for the course
*Zero to Research-Level Image & Video Generation*.

Start every notebook with ``cfg = course_lib.setup(smoke=SMOKE, seed=SEED)``.
"""
from course_lib.config import Config, cache_dir, data_dir, is_smoke, output_dir, setup
from course_lib.device import get_device, seed_everything

__version__ = "0.1.0"
__all__ = ["Config", "setup", "is_smoke", "data_dir", "cache_dir", "output_dir",
           "get_device", "seed_everything"]
