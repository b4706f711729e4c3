"""Small pieces of the grader: the nbgrader plugins, collecting submissions, the report."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import nbformat
import pytest

from course_lib.grading import collect
from course_lib.grading.cli import parse_size
from course_lib.grading.course import Course, CourseError
from course_lib.grading.nbgrader_plugins import StderrAsStdout, StripHiddenTests
from course_lib.grading.pipeline import Outcome, clean_output, read_notebook, REVIEW
from course_lib.grading.report import table, write_csv

ROOT = Path(__file__).resolve().parents[1]


def _test_cell(source: str, outputs: list) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True,
                                 "grade_id": "t", "points": 2, "schema_version": 3}
    cell.outputs = [nbformat.from_dict(o) for o in outputs]
    return cell


def test_warnings_do_not_zero_a_test_cell():
    from nbgrader.utils import determine_grade
    cell = _test_cell("check()", [{"output_type": "stream", "name": "stderr", "text": "UserWarning: hm\n"}])
    assert determine_grade(cell)[0] == 0                       # nbgrader's own rule
    nb = nbformat.v4.new_notebook(cells=[cell])
    StderrAsStdout().preprocess(nb, {})
    assert determine_grade(nb.cells[0])[0] == 2
    assert nb.cells[0].outputs[0]["text"] == "UserWarning: hm\n"


def test_feedback_loses_hidden_tests_and_their_tracebacks():
    source = "check(f)\n### BEGIN HIDDEN TESTS\ncheck(f, seed=99887766)\n### END HIDDEN TESTS"
    cell = _test_cell(source, [{"output_type": "error", "ename": "CheckFailure", "evalue": "❌ wrong",
                                "traceback": ["----> 3 check(f, seed=99887766)", "CheckFailure: ❌ wrong"]}])
    nb = nbformat.v4.new_notebook(cells=[cell])
    StripHiddenTests().preprocess(nb, {})
    text = nbformat.writes(nb)
    assert "99887766" not in text and "BEGIN HIDDEN" not in text
    assert nb.cells[0].source.startswith("check(f)\n# (hidden tests")
    assert nb.cells[0].outputs[0]["traceback"] == ["CheckFailure: ❌ wrong"]


def test_outputs_from_a_job_are_validated():
    assert clean_output({"output_type": "stream", "name": "stdout", "text": "hi"}) is not None
    assert clean_output({"output_type": "stream", "name": "evil", "text": "hi"}) is None
    assert clean_output({"output_type": "error", "ename": 1, "evalue": "", "traceback": []}) is None
    assert clean_output("<script>") is None


def test_corrupt_notebooks_say_why(tmp_path):
    bad = tmp_path / "a.ipynb"
    bad.write_text('{"cells": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        read_notebook(bad)
    bad.write_text('{"cells": 3}')
    with pytest.raises(ValueError, match="not a valid notebook"):
        read_notebook(bad)


@pytest.fixture
def course(tmp_path, monkeypatch) -> Course:
    monkeypatch.setenv("COURSE_GRADING_WORKSPACE", str(tmp_path / "workspace"))
    return Course.load(ROOT)


def test_lms_zip_is_collected_into_submitted(course, tmp_path):
    release = (ROOT / "assignments" / "a1_gradients" / "a1_gradients.ipynb").read_text()
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("smithjane_1234_5678_a1_gradients.ipynb", release)
        z.writestr("doejohn_LATE_42_99_a1_gradients-1.ipynb", release)
        z.writestr("notes.txt", "not a submission")
    assert collect.collect_zip(course, "a1_gradients", archive) == ["doejohn", "smithjane"]
    for student in ("doejohn", "smithjane"):
        assert (course.submitted(student, "a1_gradients") / "a1_gradients.ipynb").read_text() == release


def test_unsafe_zip_and_student_ids_are_refused(course, tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../../escape_a1_gradients.ipynb", "{}")
    with pytest.raises(CourseError, match="unsafe path"):
        collect.collect_zip(course, "a1_gradients", archive)
    folder = tmp_path / "subs"
    (folder / "bad id").mkdir(parents=True)
    (folder / "bad id" / "x.ipynb").write_text("{}")
    with pytest.raises(CourseError, match="student id"):
        collect.collect_folder(course, "a1_gradients", folder)


def test_report_keeps_status_and_reason_next_to_the_score(tmp_path):
    outcome = Outcome("ann", score=3, max_score=12, parts={"p1_visible": 1.0})
    outcome.flag("cell p2_visible ran past the 30 s time limit")
    assert outcome.status == REVIEW
    path = tmp_path / "grades.csv"
    write_csv(path, "a1_gradients", [outcome, Outcome("bo", score=12, max_score=12)], ["p1_visible"])
    lines = path.read_text().splitlines()
    assert lines[0] == "student_id,assignment,score,max_score,status,reason,p1_visible"
    assert lines[1].startswith("ann,a1_gradients,3,12,needs review,cell p2_visible ran past")
    assert "needs review" in table([outcome])


def test_sizes():
    assert parse_size("2G") == 2 * 1024 ** 3 and parse_size("512M") == 512 * 1024 ** 2
    assert parse_size("1000") == 1000


def test_symbolic_links_in_a_submission_are_never_followed(course):
    from course_lib.grading.pipeline import FAILED, Grader, Settings
    secret = ROOT / "solutions" / "a1_gradients" / "a1_gradients.ipynb"
    linked = course.submitted("linker", "a1_gradients")
    linked.mkdir(parents=True)
    (linked / "a1_gradients.ipynb").symlink_to(secret)
    with_data = course.submitted("datalinker", "a1_gradients")
    with_data.mkdir(parents=True)
    shutil.copy(ROOT / "assignments" / "a1_gradients" / "a1_gradients.ipynb", with_data)
    (with_data / "data.txt").symlink_to(secret)
    outcomes = {o.student: o for o in Grader(course, "a1_gradients", Settings(
        jobs=2, keep_sandboxes=True)).run(["linker", "datalinker"])}
    assert (outcomes["linker"].status, outcomes["linker"].score) == (FAILED, 0)
    assert "symbolic link" in outcomes["linker"].reasons[0]
    assert outcomes["datalinker"].score == 0
    for kind in ("run", "recheck"):          # each job got its own fresh copy
        job_dir = course.grading_dir("a1_gradients") / "sandboxes" / "datalinker" / f"a1_gradients.{kind}"
        assert (job_dir / "a1_gradients.ipynb").exists() and not (job_dir / "data.txt").exists()


def test_course_grade_without_the_instructor_extra_says_how_to_install_it(monkeypatch):
    import importlib.util

    from course_lib.grading import cli
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nbgrader" else real_find_spec(name, *a))
    with pytest.raises(SystemExit, match=r"(?s)instructor extra \(nbgrader missing\).*\[instructor\]"):
        cli.main(["a1_gradients", "somewhere"])


def test_a_learner_runs_the_assignments_without_the_instructor_extra():
    """The graded checks a learner's notebook imports must not need nbgrader or sqlalchemy."""
    import subprocess
    import sys
    code = ("import sys, importlib\n"
            "sys.modules['nbgrader'] = None; sys.modules['sqlalchemy'] = None   # as if not installed\n"
            "for a in ['a1', 'a2', 'a3', 'a4', 'a5', 'a6', 'a7', 'a8']:\n"
            "    importlib.import_module('course_lib.grading.' + a)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
