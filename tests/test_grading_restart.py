"""A grading run killed halfway and started again grades every submission exactly once and
loses nothing from the gradebook."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import nbformat
import pytest

from grading.crafted import ASSIGNMENT, FULL, notebook

ROOT = Path(__file__).resolve().parents[1]
STUDENTS = [f"student{i:02d}" for i in range(10)]


def _slow_correct_notebook() -> str:
    """A correct submission with a learner cell that takes a moment (so the kill lands mid-run)."""
    nb = nbformat.reads(notebook(), as_version=4)
    nb.cells.insert(2, nbformat.v4.new_code_cell("import time\ntime.sleep(0.4)"))
    return nbformat.writes(nb)


def _grade(workspace: Path, source: Path | None) -> subprocess.Popen:
    args = [sys.executable, "-m", "course_lib.grading.cli", ASSIGNMENT, "--course", str(ROOT),
            "--jobs", "2", "--no-feedback"] + ([str(source)] if source else [])
    env = dict(os.environ, COURSE_GRADING_WORKSPACE=str(workspace))
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


@pytest.mark.exclusive
def test_killed_run_resumes_and_grades_each_submission_once(tmp_path):
    workspace, downloads = tmp_path / "workspace", tmp_path / "downloads"
    text = _slow_correct_notebook()
    for student in STUDENTS:
        (downloads / student).mkdir(parents=True)
        (downloads / student / f"{ASSIGNMENT}.ipynb").write_text(text)
    state = workspace / "grading" / ASSIGNMENT / "state"

    first = _grade(workspace, downloads)
    deadline = time.monotonic() + 240
    while len(list(state.glob("*.json"))) < 3:
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline, "the first run graded nothing in time"
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)               # the grader, its zygote, its jobs
    first.wait()
    graded_first = len(list(state.glob("*.json")))
    assert 3 <= graded_first < len(STUDENTS), "the kill did not land halfway"

    second = _grade(workspace, None)
    out, _ = second.communicate(timeout=400)
    assert second.returncode == 0, out
    assert f"{len(STUDENTS)} submissions: {len(STUDENTS)} graded" in out, out

    log = [json.loads(line) for line in (state.parent / "log.jsonl").read_text().splitlines()]
    assert Counter(entry["student"] for entry in log) == Counter(STUDENTS), log
    assert len({entry["run"] for entry in log}) == 2

    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{workspace / 'gradebook.db'}") as gb:
        submissions = gb.find_assignment(ASSIGNMENT).submissions
        assert sorted(s.student.id for s in submissions) == STUDENTS
        assert all(s.score == FULL for s in submissions), [(s.student.id, s.score) for s in submissions]
