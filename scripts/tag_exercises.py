"""Link each notebook exercise's cells in their metadata (idempotent; touches nothing else).

An exercise is a markdown cell with a collapsed ``<details><summary>Solution`` block; its stub is
the nearest code cell above it that raises ``NotImplementedError`` and defines the functions the
solution defines; its checks are the code cells between the two that call ``check(``. Each gets
``{"course": {"exercise": "<the solution's function names>", "role": "stub" | "check" |
"solution"}}``. Run it after adding an exercise; ``tests/test_exercises.py`` says when one is
missing::

    python scripts/tag_exercises.py notebooks/4_diffusion/02_ddpm.ipynb   # or no argument: all
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from exercises import defined_names, solution_code  # noqa: E402


def tag(nb) -> int:
    """Tag the exercises of ``nb`` in place; returns how many it found."""
    count = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown" or "<summary>Solution" not in cell.source:
            continue
        names = _defs_in_order(solution_code(cell.source))
        stub = next(j for j in range(i - 1, -1, -1) if nb.cells[j].cell_type == "code"
                    and "NotImplementedError" in nb.cells[j].source
                    and defined_names(nb.cells[j].source) <= set(names))
        checks = [j for j in range(stub + 1, i) if nb.cells[j].cell_type == "code" and "check(" in nb.cells[j].source]
        name = "+".join(n for n in names if n in defined_names(nb.cells[stub].source))
        for j, role in [(stub, "stub"), *((j, "check") for j in checks), (i, "solution")]:
            nb.cells[j].metadata["course"] = {"exercise": name, "role": role}
        count += 1
    return count


def _defs_in_order(source: str) -> list[str]:
    import ast
    return [n.name for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]


def main(paths: list[str]) -> None:
    paths = [Path(p) for p in paths] or sorted((ROOT / "notebooks").rglob("*.ipynb"))
    total = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        n = tag(nb)
        if n:
            nbformat.write(nb, path)
        total += n
        print(f"{n:3d}  {path}")
    print(f"{total} exercises")


if __name__ == "__main__":
    main(sys.argv[1:])
