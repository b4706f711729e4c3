"""Every exercise of the notebooks links its stub, its self-check and its collapsed solution in
cell metadata (tests/exercises.py); the notebook run (nbval) then tries each solution in its
notebook's kernel. These tests check the links without running a notebook, and that the trial
fails when it should."""
from __future__ import annotations

import nbformat
import pytest

from exercises import exercises, problems, try_exercise
from nbrun import NOTEBOOKS, ROOT

PHASE_NOTEBOOKS = [p for p in NOTEBOOKS if p.name != "00_start_here.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT / "notebooks")))
def test_every_exercise_links_stub_check_and_solution(path):
    nb = nbformat.read(path, as_version=4)
    found = problems(nb)
    assert not found, f"{path.name}:\n- " + "\n- ".join(found)
    solutions = sum("<summary>Solution" in c.source for c in nb.cells if c.cell_type == "markdown")
    assert len(exercises(nb)) == solutions


def test_the_course_has_its_exercises():
    count = sum(len(exercises(nbformat.read(p, as_version=4))) for p in PHASE_NOTEBOOKS)
    assert count >= 2 * len(PHASE_NOTEBOOKS), f"{count} exercises in {len(PHASE_NOTEBOOKS)} notebooks"


def test_a_missing_link_is_reported():
    nb = nbformat.read(ROOT / "notebooks" / "1_foundations" / "02_linear_algebra.ipynb", as_version=4)
    stub = next(c for c in nb.cells if c.metadata.get("course", {}).get("role") == "stub")
    del stub.metadata["course"]
    found = problems(nb)
    assert any("has no stub" in p for p in found) and any("tagged with no exercise" in p for p in found), found


STUB = "def double(x):\n    raise NotImplementedError  # your code here\n"
CHECK = "check(double, lambda x: 2 * x, lambda g: (torch.randn(3, generator=g),));"
RIGHT = "def double(x):\n    return x + x\n"


def _namespace():
    import torch

    from course_lib.checks import check
    return {"torch": torch, "check": check}


def test_a_right_solution_passes_and_the_stub_is_put_back():
    ns = _namespace()
    try_exercise("double", STUB, [CHECK], RIGHT, ns)
    with pytest.raises(NotImplementedError):
        ns["double"](1)


@pytest.mark.parametrize("stub, checks, solution, says", [
    (STUB, [CHECK], "def double(x):\n    return x * 3\n", "with the solution, a check says '❌ double"),
    (STUB, [CHECK], "def double(x):\n    return x.shape\n", "with the solution, a check says '❌ double"),
    (RIGHT, [CHECK], RIGHT, "with the stub, a check says '✅"),                    # a stub that passes
    ("def double(x):\n    return None\n", [CHECK], RIGHT, "with the stub, a check says '❌"),  # a stub that crashes
    (STUB, ["print('no check here')"], RIGHT, "ran no check(...)"),
])
def test_a_wrong_solution_or_stub_fails(stub, checks, solution, says):
    with pytest.raises(AssertionError, match="exercise 'double'") as info:
        try_exercise("double", stub, checks, solution, _namespace())
    assert says in str(info.value), str(info.value)
