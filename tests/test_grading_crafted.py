"""A1 graded end to end with `course-grade` on crafted submissions: correct, blank, subtly wrong,
edited and deleted tests, an infinite loop, a memory hog, a dead kernel, corrupt JSON, calling
the reference, monkeypatching, swallowing errors, snooping, warnings, and the attacks of issue 12
(tests/grading/attacks.py). Each gets the right
score or "needs review"/"failed to run" with its reason; none stops the others; feedback shows
no hidden test; nothing is written outside the workspace."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from course_lib.grading import cli
from grading.crafted import (ASSIGNMENT, crafted_submissions, hidden_test_lines,
                             verdict_problems, write_submissions)

ROOT = Path(__file__).resolve().parents[1]


def _tree(folder: Path, skip: set[str]) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.iterdir() if p.name not in skip}


def _grade_crafted(tmp: Path) -> dict:
    workspace, outside = tmp / "workspace", tmp / "outside.txt"
    subs = crafted_submissions(outside, workspace / "gradebook.db")
    write_submissions(tmp / "downloads", subs)
    repo_before = _tree(ROOT, {".pytest_cache", "__pycache__"})
    code = cli.main([ASSIGNMENT, str(tmp / "downloads"), "--course", str(ROOT),
                     "--cell-timeout", "3", "--memory", "1G", "--jobs", "2"])
    with open(workspace / "grades" / f"{ASSIGNMENT}.csv") as fh:
        rows = {row["student_id"]: row for row in csv.DictReader(fh)}
    return {"code": code, "rows": rows, "subs": subs, "workspace": workspace, "tmp": tmp,
            "outside": outside, "repo_before": repo_before}


def _check_verdicts(graded: dict) -> None:
    assert graded["code"] == 0
    rows = graded["rows"]
    assert set(rows) == set(graded["subs"])
    wrong = verdict_problems(rows, graded["subs"])
    assert not wrong, "\n".join(wrong)
    for student in ("corrupt_json", "dead_kernel", "infinite_loop", "memory_hog"):
        assert rows[student]["status"] != "graded" and rows[student]["reason"], rows[student]


def _check_gradebook(graded: dict) -> None:
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{graded['workspace'] / 'gradebook.db'}") as gb:
        submissions = gb.find_assignment(ASSIGNMENT).submissions
        assert sorted(s.student.id for s in submissions) == sorted(graded["subs"])
        for s in submissions:
            score = s.score - (s.late_submission_penalty or 0)
            assert score == pytest.approx(float(graded["rows"][s.student.id]["score"]))


def _check_feedback(graded: dict) -> None:
    feedback = sorted((graded["workspace"] / "feedback").rglob("*.html"))
    assert len(feedback) == len(graded["subs"]) - 1          # corrupt JSON has none
    hidden = hidden_test_lines()
    assert hidden
    for html in feedback:
        text = html.read_text()
        leaked = [line for line in hidden if line in text]
        assert not leaked, f"hidden tests in {html}: {leaked}"
    correct = graded["workspace"] / "feedback" / "correct" / ASSIGNMENT / f"{ASSIGNMENT}.html"
    assert "hidden tests: not shown in feedback" in correct.read_text()


def _check_nothing_written_outside(graded: dict) -> None:
    assert not graded["outside"].exists()
    assert not (ROOT / "WRITTEN_BY_A_SUBMISSION.txt").exists()
    assert _tree(ROOT, {".pytest_cache", "__pycache__"}) == graded["repo_before"]
    assert _tree(graded["tmp"], set()) == {"workspace", "downloads"}
    assert not list(graded["workspace"].rglob("NEXT_DOOR.txt"))
    snoop = graded["rows"]["snoops"]["reason"]
    assert "tried to write" in snoop and "solutions/a1_gradients" in snoop


@pytest.mark.exclusive
def test_crafted_submissions_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_GRADING_WORKSPACE", str(tmp_path / "workspace"))
    graded = _grade_crafted(tmp_path)
    _check_verdicts(graded)
    _check_gradebook(graded)
    _check_feedback(graded)
    _check_nothing_written_outside(graded)
