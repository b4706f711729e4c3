"""Helpers shared by the grading tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from course_lib.checks import CheckFailure

ROOT = Path(__file__).resolve().parents[2]


def assert_check_fails(check, fn, words, **kwargs) -> None:
    """``check(fn, **kwargs)`` must raise CheckFailure whose message contains every word."""
    with pytest.raises(CheckFailure) as info:
        check(fn, **kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)


def assert_stub_not_attempted(check) -> None:
    """A stub that raises NotImplementedError is reported as "not attempted"."""
    def stub(*args):
        raise NotImplementedError
    with pytest.raises(CheckFailure, match="not attempted"):
        check(stub)


def grade_edited_solution(assignment: str, grade_id: str, source: str, tmp_path, monkeypatch):
    """Grade the instructor's solution of ``assignment`` with the answer cell ``grade_id``
    replaced by ``source``, as the sole submission of a learner "cheater"; returns its outcome."""
    import nbformat

    from course_lib.grading.course import Course
    from course_lib.grading.pipeline import Grader, Settings

    monkeypatch.setenv("COURSE_GRADING_WORKSPACE", str(tmp_path / "workspace"))
    course = Course.load(ROOT)
    nb = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            cell.source = source
    dest = course.submitted("cheater", assignment)
    dest.mkdir(parents=True)
    nbformat.write(nb, dest / f"{assignment}.ipynb")
    (outcome,) = Grader(course, assignment, Settings(jobs=1)).run(["cheater"])
    return outcome
