"""Every assignment: the committed release is exactly what nbgrader generates from the source,
leaks neither solutions nor hidden tests, and the solution scores full marks while the blank
release scores 0."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from course_lib.grading.course import Course
from course_lib.grading.pipeline import GRADED, Grader, Settings

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())


def _notebooks(folder: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.ipynb"))}


def _regions(source: str, begin: str, end: str) -> list[str]:
    """Lines inside begin/end markers, long enough to be distinctive."""
    lines, inside = [], False
    for line in source.splitlines():
        if begin in line:
            inside = True
        elif end in line:
            inside = False
        elif inside and len(line.strip()) > 15:
            lines.append(line.strip())
    return lines


@pytest.fixture
def course(tmp_path, monkeypatch) -> Course:
    monkeypatch.setenv("COURSE_GRADING_WORKSPACE", str(tmp_path / "workspace"))
    return Course.load(ROOT)


def test_there_is_an_assignment():
    assert "a1_gradients" in ASSIGNMENTS


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_committed_release_matches_a_fresh_generation(course, tmp_path, assignment):
    fresh = course.generate_release(assignment, tmp_path / "release")
    committed = ROOT / "assignments" / assignment
    assert committed.is_dir(), f"run `nbgrader generate_assignment {assignment}` and commit it"
    assert sorted(p.name for p in fresh.iterdir()) == sorted(p.name for p in committed.iterdir())
    assert _notebooks(fresh) == _notebooks(committed), (
        f"assignments/{assignment} is out of date: run `nbgrader generate_assignment "
        f"{assignment} --force` and commit the result")


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_leaks_no_solution_and_no_hidden_test(assignment):
    release_text = "\n".join(p.read_text() for p in (ROOT / "assignments" / assignment).rglob("*")
                             if p.is_file())
    assert not re.search(r"BEGIN (SOLUTION|HIDDEN TESTS)", release_text)
    for source_nb in (ROOT / "solutions" / assignment).glob("*.ipynb"):
        for cell in nbformat.read(source_nb, as_version=4).cells:
            secret = (_regions(cell.source, "BEGIN SOLUTION", "END SOLUTION")
                      + _regions(cell.source, "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"))
            for line in secret:
                assert json.dumps(line)[1:-1] not in release_text, f"leaked into the release: {line}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_scores_full_marks_and_blank_release_zero(course, assignment):
    for student, folder in (("solution", ROOT / "solutions" / assignment),
                            ("blank", ROOT / "assignments" / assignment)):
        dest = course.submitted(student, assignment)
        dest.mkdir(parents=True)
        for nb in folder.glob("*.ipynb"):
            shutil.copy(nb, dest / nb.name)
    outcomes = {o.student: o for o in Grader(course, assignment, Settings(jobs=2)).run(
        ["solution", "blank"])}
    solution, blank = outcomes["solution"], outcomes["blank"]
    assert solution.max_score > 0
    assert (solution.score, solution.status) == (solution.max_score, GRADED), solution.reasons
    assert (blank.score, blank.status) == (0, GRADED), blank.reasons
