"""Crafted submissions of A1, generated from the committed release and the solution notebook.

Each entry of :func:`crafted_submissions` is ``name -> (notebook text, expectation)``; the
expectation says the score, the status and a piece of the reason the grader must give.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
ASSIGNMENT = "a1_gradients"
SOURCE = ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
RELEASE = ROOT / "assignments" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
POINTS = {"p1": 3, "p2": 4, "p3": 3, "p4": 2}
FULL = sum(POINTS.values())


@dataclass
class Expect:
    score: float
    status: str                 # graded | needs review | failed to run
    reason: str = ""            # a piece of the reason (case-insensitive)


def _grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def _source(assignment: str) -> Path:
    return ROOT / "solutions" / assignment / f"{assignment}.ipynb"


def solution_answers(assignment: str = ASSIGNMENT) -> dict[str, str]:
    """The answer cells of the source notebook, without the solution markers."""
    answers = {}
    for cell in nbformat.read(_source(assignment), as_version=4).cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            lines = [l for l in cell.source.splitlines() if "BEGIN SOLUTION" not in l
                     and "END SOLUTION" not in l]
            answers[_grade_id(cell)] = "\n".join(lines)
    return answers


def locked_sources(assignment: str = ASSIGNMENT) -> dict[str, str]:
    """The locked cells (set-up, visible and hidden tests) of the source notebook."""
    return {_grade_id(c): c.source for c in nbformat.read(_source(assignment), as_version=4).cells
            if c.metadata.get("nbgrader", {}).get("locked")}


def release(assignment: str = ASSIGNMENT) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "assignments" / assignment / f"{assignment}.ipynb", as_version=4)


def notebook(answers: dict[str, str] | None = None, edit=None, assignment: str = ASSIGNMENT) -> str:
    """The release with answer cells replaced (``None``: all correct), then ``edit(nb)``."""
    nb = release(assignment)
    answers = solution_answers(assignment) if answers is None else answers
    for cell in nb.cells:
        if _grade_id(cell) in answers:
            cell.source = answers[_grade_id(cell)]
    if edit is not None:
        edit(nb)
    return nbformat.writes(nb)


def _with(**changes: str) -> dict[str, str]:
    answers = solution_answers()
    answers.update({f"{k}_answer": v for k, v in changes.items()})
    return answers


def _prepend_to_body(source: str, code: str) -> str:
    """Insert ``code`` as the first statement of the function defined in ``source``."""
    lines = source.splitlines()
    head = next(i for i, l in enumerate(lines) if l.startswith("def "))
    # skip the docstring line that follows the def
    return "\n".join(lines[:head + 2] + ["    " + c for c in code.splitlines()] + lines[head + 2:])


WRONG_KL = '''
def kl_normal(mu_p, sigma_p, mu_q, sigma_q):
    """KL, wrongly: always zero."""
    return torch.zeros_like(mu_p * mu_q)
'''

WRONG_GD = '''
def gradient_descent(grad_fn, x0, lr, steps):
    """Forgets the starting point."""
    x, path = x0.clone(), []
    for _ in range(steps):
        x = x - lr * grad_fn(x)
        path.append(x)
    return torch.stack(path) if path else x0[None]
'''

SUBTLY_WRONG_NG = '''
def numerical_gradient(f, x, eps=1e-6):
    """Central differences, but in the dtype of x (fine for float64, not for float32)."""
    x = x.detach().clone()
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        step = torch.zeros_like(x)
        step.view(-1)[i] = eps
        grad.view(-1)[i] = (f(x + step) - f(x - step)) / (2 * eps)
    return grad
'''

CALLS_REFERENCE_NG = '''
def numerical_gradient(f, x, eps=1e-6):
    """Hands the work to the course library."""
    from course_lib.foundations import autograd
    return autograd.numerical_gradient(f, x, eps)
'''


def _edit_tests(nb) -> None:
    for cell in nb.cells:
        if _grade_id(cell) in ("p3_visible", "p3_hidden"):
            cell.source = "print('all good')"


def _delete_tests(nb) -> None:
    nb.cells = [c for c in nb.cells if _grade_id(c) not in ("p4_visible", "p4_hidden")]


def _monkeypatch_cell(nb) -> None:
    cheat = nbformat.v4.new_code_cell(
        "import torch, course_lib.checks, course_lib.grading.graded\n"
        "torch.allclose = lambda *a, **k: True\n"
        "course_lib.checks.compare_outputs = lambda *a, **k: None\n"
        "course_lib.grading.graded.check = lambda *a, **k: None\n"
        "check_kl_normal = lambda *a, **k: None\n")
    at = next(i for i, c in enumerate(nb.cells) if _grade_id(c) == "p3_answer")
    nb.cells.insert(at + 1, cheat)


def _swallow_errors_cell(nb) -> None:
    cheat = nbformat.v4.new_code_cell(
        "get_ipython().set_custom_exc((Exception,), lambda *args, **kwargs: None)")
    nb.cells.insert(2, cheat)


def _snoop_cell(outside: Path, gradebook: Path):
    def edit(nb) -> None:
        code = f'''
import pathlib, course_lib
course = pathlib.Path(course_lib.__file__).resolve().parents[1]
stolen = []
for secret in [course / "solutions" / "a1_gradients" / "a1_gradients.ipynb", pathlib.Path({str(gradebook)!r})]:
    try:
        stolen.append(secret.read_text()[:200])
    except Exception as exc:
        print("could not read", secret, type(exc).__name__)
for target in [course / "WRITTEN_BY_A_SUBMISSION.txt", pathlib.Path({str(outside)!r}),
               pathlib.Path.cwd().parent / "NEXT_DOOR.txt"]:
    try:
        target.write_text("hello from a submission")
    except Exception as exc:
        print("could not write", target, type(exc).__name__)
print("stolen:", stolen)
'''
        nb.cells.insert(2, nbformat.v4.new_code_cell(code))
    return edit


def _warn_everywhere(answers: dict[str, str]) -> dict[str, str]:
    noisy = {}
    for gid, source in answers.items():
        noisy[gid] = "import sys, warnings\n" + _prepend_to_body(
            source, 'warnings.warn("this is only a warning")\nprint("debug output", file=sys.stderr)')
    return noisy


def crafted_submissions(outside: Path, gradebook: Path) -> dict[str, tuple[str, Expect]]:
    answers = solution_answers()
    corrupt = notebook(_with(p1=SUBTLY_WRONG_NG))
    return {
        "correct": (notebook(), Expect(FULL, "graded")),
        "blank": (nbformat.writes(release()), Expect(0, "graded")),
        "subtly_wrong": (notebook(_with(p1=SUBTLY_WRONG_NG)), Expect(FULL - 2, "graded")),
        "edited_tests": (notebook(_with(p3=WRONG_KL), _edit_tests),
                         Expect(FULL - POINTS["p3"], "graded", "test cell p3_visible was edited")),
        "deleted_tests": (notebook(_with(p4=WRONG_GD), _delete_tests),
                          Expect(FULL - POINTS["p4"], "graded", "test cell p4_visible was deleted")),
        "infinite_loop": (notebook(_with(p2=_prepend_to_body(answers["p2_answer"], "while True:\n    pass"))),
                          Expect(FULL - POINTS["p2"], "needs review", "time limit")),
        "memory_hog": (notebook(_with(p3=_prepend_to_body(
            answers["p3_answer"], "hog = [torch.empty(25_000_000) for _ in range(400)]"))),
                       Expect(FULL - POINTS["p3"], "needs review", "memory limit")),
        "dead_kernel": (notebook(_with(p3=_prepend_to_body(answers["p3_answer"], "import os\nos._exit(3)"))),
                        Expect(FULL - POINTS["p3"] - POINTS["p4"], "failed to run", "kernel died")),
        "corrupt_json": (corrupt[: len(corrupt) // 2], Expect(0, "failed to run", "not valid JSON")),
        "calls_reference": (notebook(_with(p1=CALLS_REFERENCE_NG)),
                            Expect(FULL - POINTS["p1"], "needs review", "course reference")),
        "monkeypatch": (notebook(_with(p3=WRONG_KL), _monkeypatch_cell),
                        Expect(FULL - POINTS["p3"], "needs review", "monkeypatches torch.allclose")),
        "swallows_errors": (notebook(_with(p3=WRONG_KL), _swallow_errors_cell),
                            Expect(FULL - POINTS["p3"], "needs review", "re-checked")),
        "snoops": (notebook(edit=_snoop_cell(outside, gradebook)),
                   Expect(FULL, "needs review", "tried to read")),
        "warnings": (notebook(_warn_everywhere(answers)), Expect(FULL, "graded")),
        **issue_12_attacks(answers),
    }


def issue_12_attacks(answers: dict[str, str]) -> dict[str, tuple[str, Expect]]:
    """The attacks of issue 12 (and two more) on A1; see tests/grading/attacks.py."""
    from grading import attacks
    target, locked = attacks.a1_target(), locked_sources()
    table = attacks.record_visible_answers(target, answers, locked["setup"], locked)
    return {
        "thread_reference": (notebook(attacks.reference_in_a_thread(target)),
                             Expect(0, "needs review", "calls the course reference")),
        "carried_answers": (notebook(attacks.answers_carried_over(target)),
                            Expect(0, "needs review", "fails when re-checked")),
        "blinds_grader": (notebook(attacks.blinds_the_grader(target)),
                          Expect(0, "needs review", "calls the course reference")),
        "erases_audit": (notebook(attacks.erases_the_audit_trail(target, answers)),
                         Expect(FULL, "needs review", "started a process")),
        "reference_copied": (notebook(attacks.reference_copied_from_source(target)),
                             Expect(0, "needs review", "source of a course reference")),
        "memorised": (notebook(attacks.memorised_visible_answers(target, table)),
                      Expect(0, "needs review", "fails when re-checked")),
    }


def write_submissions(folder: Path, subs: dict[str, tuple[str, Expect]],
                      assignment: str = ASSIGNMENT) -> None:
    """``folder/<student>/<assignment>/<assignment>.ipynb`` for each submission."""
    for student, (text, _) in subs.items():
        dest = folder / student / assignment
        dest.mkdir(parents=True, exist_ok=True)
        (dest / f"{assignment}.ipynb").write_text(text)


def verdict_problems(rows: dict[str, dict], subs: dict[str, tuple[str, Expect]]) -> list[str]:
    """Every graded row (from the grades CSV) whose score, status or reason is not the expected one."""
    wrong = []
    for student, (_, expect) in subs.items():
        row = rows[student]
        got = (float(row["score"]), row["status"])
        if got != (expect.score, expect.status) or expect.reason.lower() not in row["reason"].lower():
            wrong.append(f"{student}: got {got} ({row['reason']}), expected "
                         f"{(expect.score, expect.status)} with '{expect.reason}'")
    return wrong


def hidden_test_lines() -> list[str]:
    """Lines of the source notebook's hidden-test regions (long enough to be distinctive)."""
    found, inside = [], False
    for cell in nbformat.read(SOURCE, as_version=4).cells:
        for line in cell.source.splitlines():
            if "BEGIN HIDDEN TESTS" in line:
                inside = True
            elif "END HIDDEN TESTS" in line:
                inside = False
            elif inside and len(line.strip()) > 20:
                found.append(line.strip())
    return found


def solution_lines() -> list[str]:
    found = []
    for source in solution_answers().values():
        found += [l.strip() for l in source.splitlines()
                  if len(l.strip()) > 20 and not l.strip().startswith(("def ", '"""'))]
    return found

