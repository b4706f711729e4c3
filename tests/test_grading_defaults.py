"""Every default value of a parameter in an assignment's answer functions is exercised by its
tests: an answer whose default is wrong (say ``beta=2.0`` where the notebook asks for 1) must
lose a point. For each default of each solution, the test changes that one default and runs the
assignment's visible and hidden tests in-process against the changed solution."""
from __future__ import annotations

import ast
import contextlib
import io

import pytest

from grading.crafted import ROOT, locked_sources, solution_answers

ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if (p / f"{p.name}.ipynb").exists())


def _constant_defaults(node: ast.FunctionDef):
    """(parameter, default node) for the number and bool defaults of one function."""
    args = node.args
    positional = args.posonlyargs + args.args
    pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
    pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
    for arg, default in pairs:
        if isinstance(default, ast.Constant) and type(default.value) in (int, float, bool):
            yield arg.arg, default


def _defaults(tree: ast.Module):
    """(function, parameter, default node) for the answer's top-level functions."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for parameter, default in _constant_defaults(node):
                yield node.name, parameter, default


def _changed(value):
    return (not value) if isinstance(value, bool) else value * 3 + 1


def _mutant(source: str, function: str, parameter: str) -> str:
    tree = ast.parse(source)
    for fn, param, default in _defaults(tree):
        if (fn, param) == (function, parameter):
            default.value = _changed(default.value)
    return ast.unparse(tree)


def _failures(assignment: str, answers: dict[str, str]) -> int:
    locked = locked_sources(assignment)
    setup = ast.parse(locked["setup"])
    ns: dict = {}
    exec(ast.unparse(ast.Module([n for n in setup.body if isinstance(n, (ast.Import, ast.ImportFrom))],
                                type_ignores=[])), ns)
    for source in answers.values():
        exec(source, ns)
    failed = 0
    for gid, source in locked.items():
        if gid == "setup" or not gid.endswith(("_visible", "_hidden")):
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(source, dict(ns))
        except Exception:                                   # noqa: BLE001 (a failed test)
            failed += 1
    return failed


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_default_of_an_answer_is_exercised(assignment):
    answers = solution_answers(assignment)
    assert _failures(assignment, answers) == 0
    untested = []
    for gid, source in answers.items():
        for function, parameter, default in _defaults(ast.parse(source)):
            mutant = dict(answers, **{gid: _mutant(source, function, parameter)})
            if _failures(assignment, mutant) == 0:
                untested.append(f"{function}({parameter}={default.value!r})")
    assert not untested, f"{assignment}: no test notices a wrong default: {', '.join(untested)}"
