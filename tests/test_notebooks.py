"""Same seed, same numbers. (Every notebook running top to bottom in smoke mode within its
budget is checked by nbval, in the same test command: see tests/notebook_plugin.py.)"""
from __future__ import annotations

import json

import pytest

from nbrun import NOTEBOOKS, run_notebook

MEASURED_SPEED = ("throughput", "seconds", "per_second")


def _reported_numbers(workdir):
    runs = sorted((workdir / "outputs" / "runs").glob("*/*/metrics.json"))
    assert runs, "the notebook saved no metrics with course_lib.artifacts.save_run"
    out = {}
    for f in runs:
        metrics = json.loads(f.read_text())
        metrics.pop("run", None)  # name, timestamp, versions: not results
        for key in [k for k in metrics if any(word in k for word in MEASURED_SPEED)]:
            metrics.pop(key)      # a speed measured on the clock, e.g. 05's throughput gain: not a result of the seed
        out[str(f.relative_to(workdir))] = metrics
    return out


DETERMINISM = [p for p in NOTEBOOKS if p.name.startswith(("03_", "05_"))]


@pytest.mark.notebook
@pytest.mark.parametrize("path", DETERMINISM, ids=lambda p: p.name)
def test_same_seed_same_numbers(path, tmp_path):
    """Two runs with the same seed report identical numbers."""
    first, second = tmp_path / "first", tmp_path / "second"
    run_notebook(path, first, smoke=True, threads=1)
    run_notebook(path, second, smoke=True, threads=1)
    a, b = _reported_numbers(first), _reported_numbers(second)
    assert a == b, f"{path.name} reported different numbers for the same seed:\n{a}\n{b}"
