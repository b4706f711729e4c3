"""Throughput: on the same 30 submissions, in one run, `course-grade` (sandboxed, re-checked,
feedback and CSV included) grades at least 1.5x as many submissions per minute as serial
`nbgrader autograde` (no isolation, no feedback). Both figures are reported at the end of the
pytest run (warnings summary) and as the test's properties."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from course_lib.grading.course import Course
from grading.crafted import ASSIGNMENT, FULL, notebook

ROOT = Path(__file__).resolve().parents[1]
N = 30


class ThroughputReport(UserWarning):
    """Not a problem: the measured grading throughput, shown in pytest's summary."""


def _workspace(path: Path, monkeypatch, text: str) -> dict:
    """A workspace with the assignment in its gradebook and N submissions in submitted/."""
    monkeypatch.setenv("COURSE_GRADING_WORKSPACE", str(path))
    course = Course.load(ROOT)
    course.ensure_assignment(ASSIGNMENT)
    for i in range(N):
        dest = course.submitted(f"s{i:02d}", ASSIGNMENT)
        dest.mkdir(parents=True)
        (dest / f"{ASSIGNMENT}.ipynb").write_text(text)
    return dict(os.environ, COURSE_GRADING_WORKSPACE=str(path),
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def _timed(args: list[str], env: dict) -> float:
    started = time.monotonic()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return seconds


@pytest.mark.exclusive
def test_course_grade_is_faster_than_serial_nbgrader(tmp_path, monkeypatch, record_property):
    text = notebook()
    env_nb = _workspace(tmp_path / "nbgrader", monkeypatch, text)
    env_cg = _workspace(tmp_path / "course_grade", monkeypatch, text)

    t_nb = _timed([sys.executable, "-m", "nbgrader", "autograde", ASSIGNMENT], env_nb)
    t_cg = _timed([sys.executable, "-m", "course_lib.grading.cli", ASSIGNMENT,
                   "--course", str(ROOT)], env_cg)

    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{tmp_path / 'nbgrader' / 'gradebook.db'}") as gb:
        assert [s.score for s in gb.find_assignment(ASSIGNMENT).submissions] == [FULL] * N
    with open(tmp_path / "course_grade" / "grades" / f"{ASSIGNMENT}.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(float(r["score"]), r["status"]) for r in rows] == [(FULL, "graded")] * N

    rate_nb, rate_cg = N / t_nb * 60, N / t_cg * 60
    report = (f"grading throughput on {N} submissions, {os.cpu_count()} cores: serial nbgrader "
              f"autograde {t_nb:.1f} s ({rate_nb:.1f}/min); course-grade {t_cg:.1f} s "
              f"({rate_cg:.1f}/min, sandboxed, re-checked, feedback included): "
              f"{rate_cg / rate_nb:.2f}x")
    record_property("throughput", report)
    warnings.warn(ThroughputReport(report))
    print(report)
    shutil.rmtree(tmp_path / "nbgrader" / "autograded", ignore_errors=True)
    assert rate_cg >= 1.5 * rate_nb, report
