"""The exercises of the notebooks: which cells are an exercise's stub, its self-check and its
solution, read from cell metadata ``{"course": {"exercise": "<id>", "role": "stub" | "check" |
"solution"}}`` (``scripts/tag_exercises.py`` writes it), and the code that tries them.

The solution is the fenced Python code inside the collapsed ``<details>`` block of the markdown
cell tagged ``solution``. The notebook run (nbval, see ``notebook_plugin.py``) adds one item after
each exercise's last check cell; it runs :func:`try_exercise` in the notebook's kernel (its own
namespace, where the cells above have run): the stub
and the checks again, then the solution and the checks, then the stub again, so the cells that
follow see what a learner who skipped the exercise has.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("stub", "check", "solution")
TESTS_DIR = str(Path(__file__).resolve().parent)
_DETAILS = re.compile(r"<details>(.*?)</details>", re.S)
_FENCED = re.compile(r"```python\n(.*?)```", re.S)


@dataclass
class Exercise:
    name: str
    stub: int | None = None                          # cell indices in the notebook
    checks: list[int] = field(default_factory=list)
    solution: int | None = None


def link(cell) -> tuple[str, str] | None:
    """(exercise id, role) of a cell, or None."""
    meta = cell.metadata.get("course", {})
    if "exercise" in meta and "role" in meta:
        return meta["exercise"], meta["role"]
    return None


def exercises(nb) -> dict[str, Exercise]:
    """The notebook's exercises by id, in the order their stubs appear."""
    found: dict[str, Exercise] = {}
    for i, cell in enumerate(nb.cells):
        tagged = link(cell)
        if tagged is None:
            continue
        name, role = tagged
        ex = found.setdefault(name, Exercise(name))
        if role == "check":
            ex.checks.append(i)
        elif role in ("stub", "solution"):
            if getattr(ex, role) is not None:
                raise ValueError(f"exercise {name!r} has two cells with role {role!r}")
            setattr(ex, role, i)
        else:
            raise ValueError(f"exercise {name!r}: unknown role {role!r} (one of {ROLES})")
    return found


def solution_code(markdown: str) -> str:
    """The Python code of the collapsed solution in a markdown cell."""
    return "\n\n".join(code for block in _DETAILS.findall(markdown) for code in _FENCED.findall(block))


def defined_names(source: str) -> set[str]:
    """Functions and classes a cell defines at its top level."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return set()
    return {node.name for node in body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def problems(nb) -> list[str]:
    """What is wrong with the links: a missing part, parts out of order, a solution that does not
    define what the stub defines, a stub or a solution block that belongs to no exercise."""
    out = []
    found = exercises(nb)
    for ex in found.values():
        missing = [r for r in ROLES if not (ex.checks if r == "check" else getattr(ex, r) is not None)]
        if missing:
            out.append(f"exercise {ex.name!r} has no {' and no '.join(missing)} cell")
            continue
        if not ex.stub < min(ex.checks) <= max(ex.checks) < ex.solution:
            out.append(f"exercise {ex.name!r}: the cells are not in the order stub, check(s), solution")
        stub, solution = nb.cells[ex.stub].source, solution_code(nb.cells[ex.solution].source)
        if "NotImplementedError" not in stub:
            out.append(f"exercise {ex.name!r}: its stub cell raises no NotImplementedError")
        if not solution:
            out.append(f"exercise {ex.name!r}: no ```python block inside <details> in its solution cell")
        elif not defined_names(stub) <= defined_names(solution):
            out.append(f"exercise {ex.name!r}: the solution does not define "
                       f"{sorted(defined_names(stub) - defined_names(solution))}")
        if not all("check(" in nb.cells[i].source for i in ex.checks):
            out.append(f"exercise {ex.name!r}: a cell tagged 'check' calls no check(...)")
    for i, cell in enumerate(nb.cells):
        if link(cell):
            continue
        if cell.cell_type == "code" and "raise NotImplementedError  # your code here" in cell.source:
            out.append(f"cell {i} is an exercise stub tagged with no exercise (run scripts/tag_exercises.py)")
        if cell.cell_type == "markdown" and "<summary>Solution" in cell.source:
            out.append(f"cell {i} holds a solution tagged with no exercise (run scripts/tag_exercises.py)")
    return out


def try_exercise(name: str, stub: str, checks: list[str], solution: str, namespace: dict) -> None:
    """In a notebook's namespace: the stub must leave every check "not attempted", the solution
    must pass every check; the stub is put back at the end. Raises AssertionError otherwise."""
    from course_lib.checks import recorded_checks

    def run(sources: list[str], what: str):
        with recorded_checks() as results:
            for source in sources:
                exec(compile(source, f"<exercise {name}: {what}>", "exec"), namespace)
        return results

    failures = []
    with_stub = run([stub, *checks], "stub and checks")
    if not with_stub:
        failures.append("its check cells ran no check(...)")
    failures += [f"with the stub, a check says {r.message!r} (expected 'not attempted')"
                 for r in with_stub if r.passed or r.attempted]
    with_solution = run([solution, *checks], "solution and checks")
    failures += [f"with the solution, a check says {r.message!r}" for r in with_solution if not r.passed]
    if len(with_solution) != len(with_stub):
        failures.append(f"the checks ran {len(with_stub)} time(s) with the stub, {len(with_solution)} "
                        "with the solution")
    run([stub], "stub put back")
    assert not failures, f"exercise {name!r}:\n- " + "\n- ".join(failures)


def try_notebook_exercise(notebook: str, name: str, namespace: dict) -> None:
    """:func:`try_exercise` for exercise ``name`` of ``notebook``, read from the file."""
    import nbformat
    nb = nbformat.read(notebook, as_version=4)
    ex = exercises(nb)[name]
    try_exercise(name, nb.cells[ex.stub].source, [nb.cells[i].source for i in ex.checks],
                 solution_code(nb.cells[ex.solution].source), namespace)


def kernel_source(notebook: Path, name: str) -> str:
    """The cell the notebook's kernel runs to try exercise ``name``."""
    return (f"# the course's test of exercise {name!r}: its stub, then its solution, through its checks\n"
            f"import sys\n"
            f"sys.path.insert(0, {TESTS_DIR!r})\n"
            f"from exercises import try_notebook_exercise\n"
            f"sys.path.remove({TESTS_DIR!r})\n"
            f"try_notebook_exercise({str(notebook)!r}, {name!r}, globals())")
