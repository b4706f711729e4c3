"""Every notebook follows the notebook standard of CONTRIBUTING.md (checked without running it)."""
from __future__ import annotations

import ast
import io
import re
import tokenize

import nbformat
import pytest

from nbrun import NOTEBOOKS, ROOT

PHASE_NOTEBOOKS = [p for p in NOTEBOOKS if p.name != "00_start_here.ipynb"]
_ids = lambda p: str(p.relative_to(ROOT / "notebooks"))  # noqa: E731


def _cells(path):
    return nbformat.read(path, as_version=4).cells


def _source(cells, kind):
    return "\n".join(c.source for c in cells if c.cell_type == kind)


SETUP_MAX_LINES = 25
# Any of these in a code cell is a smoke/full decision (a ternary `x if cfg.smoke else y` too).
DECISION = re.compile(r"\.pick\(|\bSMOKE\b|\.smoke\b|\bis_smoke\(")
NOT_IN_SETUP = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.While, ast.With,
                ast.Import, ast.ImportFrom)


def imports_only(source: str) -> bool:
    """A cell of import statements (and comments) only."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in body)


def code_lines(source: str) -> int:
    """Non-blank lines of a code cell (comments count: they are lines a reader reads)."""
    return sum(1 for line in source.splitlines() if line.strip())


def without_comments(source: str) -> str:
    """The cell's source minus its comments (strings stay: an f-string can hold a decision)."""
    try:
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        comments = [t for t in tokens if t.type == tokenize.COMMENT]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return source
    lines = source.splitlines(keepends=True)
    for t in reversed(comments):
        row, col = t.start
        lines[row - 1] = lines[row - 1][:col] + lines[row - 1][t.end[1]:]
    return "".join(lines)


def setup_problems(setup, cells, params) -> list[str]:
    """The set-up cell holds cfg = course_lib.setup(...), sizes and knobs only (no imports, no
    helpers), and no other code cell makes a smoke/full decision."""
    problems = []
    n = code_lines(setup.source)
    if n > SETUP_MAX_LINES:
        problems.append(f"the set-up cell has {n} non-blank lines (at most {SETUP_MAX_LINES}: "
                        "cfg = course_lib.setup(...), sizes and knobs; helpers, models and data go to "
                        "the cell that first uses them)")
    try:
        tree = ast.parse(setup.source)
    except SyntaxError:
        tree = ast.Module(body=[], type_ignores=[])
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            problems.append(f"the set-up cell imports nothing (line {node.lineno}): the notebook's imports go in "
                            "the imports cell before the parameters cell")
        elif isinstance(node, NOT_IN_SETUP):
            what = getattr(node, "name", type(node).__name__.lower())
            problems.append(f"the set-up cell holds sizes and knobs only, not `{what}` (line {node.lineno}): "
                            "move it to the cell that first uses it")
    for i, c in enumerate(cells):
        if c.cell_type != "code" or c is setup or c is params:
            continue
        for line in without_comments(c.source).splitlines():
            if DECISION.search(line):
                problems.append(f"a smoke/full decision outside the parameters and set-up cells "
                                f"(cell {i + 1} of {len(cells)}): {line.strip()[:80]!r}; decide sizes with "
                                "cfg.pick(...) in the set-up cell")
                break
    return problems


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
        at = code.index(params[0])
        if at != 2 or not imports_only(code[1].source):
            problems.append("the code cells start: the Colab install, then one cell of the notebook's imports "
                            "(imports only), then the parameters cell")
        names = {t.id for node in ast.parse(params[0].source).body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)}
        if not {"SMOKE", "SEED"} <= names:
            problems.append("the parameters cell sets SMOKE and SEED")
        setup = code[code.index(params[0]) + 1] if params[0] is not code[-1] else None
        if setup is None or "course_lib.setup(" not in setup.source:
            problems.append("the cell after the parameters cell calls course_lib.setup(smoke=SMOKE, seed=SEED)")
        if setup is not None:
            problems += setup_problems(setup, cells, params[0])
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


def _with_setup_and_cell(tmp_path, setup_extra: str, later: str):
    """A copy of a Phase 1 notebook with lines added to its set-up cell and one code cell appended."""
    nb = nbformat.read(ROOT / "notebooks" / "1_foundations" / "01_python_numpy.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    setup = code[next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])) + 1]
    setup.source += setup_extra
    nb.cells.append(nbformat.v4.new_code_cell(later))
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    return standard_problems(path)


@pytest.mark.parametrize("later", [
    "n = 10 if cfg.smoke else 1000",                     # a ternary
    "steps = cfg.pick(smoke=1, full=2)",
    "if not SMOKE:\n    print('full')",
    "print(f\"{'smoke' if cfg.smoke else 'full'} run\")",  # inside an f-string
    "from course_lib.config import is_smoke\nfast = is_smoke()",
])
def test_a_smoke_full_decision_outside_the_set_up_cell_fails(tmp_path, later):
    problems = _with_setup_and_cell(tmp_path, "", later)
    assert any("smoke/full decision outside" in p for p in problems), problems


def test_comments_and_other_words_are_not_decisions(tmp_path):
    later = "# in smoke mode (cfg.pick in the set-up cell) this is tiny\nsmoked = 3  # not a decision"
    assert _with_setup_and_cell(tmp_path, "", later) == []


def test_a_long_set_up_cell_or_a_helper_in_it_fails(tmp_path):
    long = "".join(f"\nKNOB_{i} = {i}" for i in range(25))     # the cell already has a few lines
    problems = _with_setup_and_cell(tmp_path, long, "x = 1")
    assert any("non-blank lines (at most 25:" in p for p in problems), problems
    problems = _with_setup_and_cell(tmp_path, "\ndef helper(x):\n    return x", "x = 1")
    assert any("not `helper`" in p for p in problems), problems
