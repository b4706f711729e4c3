"""Every notebook follows the notebook standard of CONTRIBUTING.md (checked without running it)."""
from __future__ import annotations

import ast
import re

import nbformat
import pytest

from nbrun import NOTEBOOKS, ROOT

PHASE_NOTEBOOKS = [p for p in NOTEBOOKS if p.name != "00_start_here.ipynb"]
_ids = lambda p: str(p.relative_to(ROOT / "notebooks"))  # noqa: E731


def _cells(path):
    return nbformat.read(path, as_version=4).cells


def _source(cells, kind):
    return "\n".join(c.source for c in cells if c.cell_type == kind)


def standard_problems(path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    cells, problems = nb.cells, []
    if nb.metadata.get("kernelspec", {}).get("name") != "python3":
        problems.append("kernelspec must be python3")
    if any(c.cell_type == "code" and (c.outputs or c.execution_count) for c in cells):
        problems.append("notebooks are committed without outputs")
    first = cells[0]
    if first.cell_type != "markdown" or not first.source.startswith("# "):
        problems.append("the first cell is a markdown title")
    elif "colab.research.google.com" not in first.source:
        problems.append("the title cell has an Open-in-Colab badge")
    for heading in ("What you will learn", "Prerequisites", "Time"):
        if heading not in first.source:
            problems.append(f"the title cell says '{heading}'")
    code = [c for c in cells if c.cell_type == "code"]
    if not code or "google.colab" not in code[0].source:
        problems.append("the first code cell installs the course on Colab only")
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    if len(params) != 1:
        problems.append(f"exactly one cell tagged 'parameters' (found {len(params)})")
    else:
        names = {t.id for node in ast.parse(params[0].source).body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)}
        if not {"SMOKE", "SEED"} <= names:
            problems.append("the parameters cell sets SMOKE and SEED")
        setup = code[code.index(params[0]) + 1] if params[0] is not code[-1] else None
        if setup is None or "course_lib.setup(" not in setup.source:
            problems.append("the cell after the parameters cell calls course_lib.setup(smoke=SMOKE, seed=SEED)")
        for c in code:
            if c is not setup and re.search(r"\.pick\(|^\s*if\s+(not\s+)?(cfg\.smoke|SMOKE)\b", c.source, flags=re.M) and c is not params[0]:
                problems.append("a smoke/full decision outside the set-up cell: " + c.source.splitlines()[0][:60])
                break
    markdown = _source(cells, "markdown")
    if "## Summary" not in markdown:
        problems.append("a '## Summary' section")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_follows_the_standard(path):
    problems = standard_problems(path)
    assert not problems, f"{path.name} breaks the notebook standard:\n- " + "\n- ".join(problems)


@pytest.mark.parametrize("path", PHASE_NOTEBOOKS, ids=_ids)
def test_phase_notebook_has_exercises_papers_and_artifacts(path):
    cells = _cells(path)
    markdown, code = _source(cells, "markdown"), _source(cells, "code")
    exercises = re.findall(r"^#+ Exercise \d", markdown, flags=re.M)
    assert len(exercises) >= 2, f"{path.name} has {len(exercises)} exercises (at least 2)"
    assert len(re.findall(r"\bcheck\(", code)) >= 2, f"{path.name}: each exercise has a self-check"
    assert re.search(r"^## Papers", markdown, flags=re.M), f"{path.name} lists its papers"
    assert "save_run(" in code, f"{path.name} saves its numbers with course_lib.artifacts.save_run"


def test_the_standard_check_catches_a_broken_notebook(tmp_path):
    src = NOTEBOOKS[0]
    nb = nbformat.read(src, as_version=4)
    nb.cells[0].source = "no title"
    for c in nb.cells:
        c.metadata.pop("tags", None)
    broken = tmp_path / "broken.ipynb"
    nbformat.write(nb, broken)
    problems = standard_problems(broken)
    assert any("title" in p for p in problems) and any("parameters" in p for p in problems)
