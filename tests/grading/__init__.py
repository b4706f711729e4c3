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


def call_with_references_off(refs, fn, args: tuple) -> str | None:
    """``fn(*args)`` in a forked process whose ``refs`` are switched off, as they are in the
    grader's re-check job; returns the name of the reference that ran, or ``None``."""
    import os

    from course_lib.checks import ReferenceCalled
    from course_lib.grading import references

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                         # the child: never returns
        import torch
        torch.set_num_threads(1)         # the parent's OpenMP threads did not come along
        os.close(read)
        out = ""
        try:
            assert not references.disable([references.name_of(f) for f in refs])
            try:
                fn(*args)
            except ReferenceCalled as exc:
                out = str(exc)
        except BaseException as exc:                     # noqa: BLE001
            out = f"error: {exc!r}"
        os.write(write, out.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        out = fh.read().decode()
    os.waitpid(pid, 0)
    return out or None
