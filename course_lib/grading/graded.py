"""The one function every graded test cell goes through.

:func:`graded_check` first puts back any library function the notebook replaced (see
:mod:`course_lib.grading.guard`), then runs :func:`course_lib.checks.check` with
``raise_on_fail=True`` (nbgrader scores a raised error as 0), exact dtypes, and the references of
the assignment forbidden inside the learner's function.
"""
from __future__ import annotations

from typing import Callable, Iterable

from course_lib.checks import check
from course_lib.grading import guard

__all__ = ["graded_check"]

guard.take()      # the pristine state: taken when the locked set-up cell imports the grader


def graded_check(fn: Callable, reference: Callable, make_inputs: Callable, *, name: str,
                 trials: int, seed: int, forbid: Iterable[Callable], atol: float = 1e-6,
                 rtol: float = 1e-5, exact_dtype: bool = True) -> None:
    """Check ``fn`` against ``reference``; raise :class:`course_lib.checks.CheckFailure` if wrong.

    Returns ``None`` on purpose: nbgrader reads a number left as a test cell's result as partial
    credit, so a graded check shows its verdict by printing only."""
    replaced = guard.restore()
    if replaced:
        print(f"⚠️ the grader put back {', '.join(replaced)}, which this notebook had replaced; "
              "changing library functions is not allowed in graded work")
    check(fn, reference, make_inputs, trials=trials, seed=seed, atol=atol, rtol=rtol,
          raise_on_fail=True, forbid=forbid, exact_dtype=exact_dtype, name=name)
