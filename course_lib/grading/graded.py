"""The functions every graded test cell goes through.

:func:`graded_check` first puts back any library function the notebook replaced (see
:mod:`course_lib.grading.guard`), then runs :func:`course_lib.checks.check` with
``raise_on_fail=True`` (nbgrader scores a raised error as 0), exact dtypes, and the references of
the assignment forbidden inside the learner's function. :func:`hinted_check` adds a hint
when a wrong answer reproduces a known classic mistake.

When the grader re-checks a submission in its own process, it sets :data:`SEED_OFFSET`: every
check then draws its inputs from other seeds than the notebook run did, so nothing the notebook
run saw or stored can answer the re-check.
"""
from __future__ import annotations

from contextvars import ContextVar
from typing import Callable, Iterable, Sequence

from course_lib.checks import CheckFailure, call_answer, check, compare_outputs, trial_inputs
from course_lib.grading import guard

__all__ = ["graded_check", "hinted_check", "Mistake"]

Mistake = tuple[Callable, str]       # (a wrong version of the function, what to tell the learner)

guard.take()      # the pristine state: taken when the locked set-up cell imports the grader

# added to every check's seed; set by the grader (per thread) while it re-checks, 0 elsewhere
SEED_OFFSET: ContextVar[int] = ContextVar("SEED_OFFSET", default=0)


def graded_check(fn: Callable, reference: Callable, make_inputs: Callable, *, name: str,
                 trials: int, seed: int, forbid: Iterable[Callable], atol: float = 1e-6,
                 rtol: float = 1e-5, exact_dtype: bool = True) -> None:
    """Check ``fn`` against ``reference``; raise :class:`course_lib.checks.CheckFailure` if wrong.

    Returns ``None`` on purpose: nbgrader reads a number left as a test cell's result as partial
    credit, so a graded check shows its verdict by printing only."""
    _check(fn, reference, make_inputs, name=name, trials=trials, seed=seed + SEED_OFFSET.get(),
           forbid=forbid, atol=atol, rtol=rtol, exact_dtype=exact_dtype)


def _check(fn, reference, make_inputs, *, name, trials, seed, forbid, atol, rtol,
           exact_dtype=True) -> None:
    replaced = guard.restore()
    if replaced:
        print(f"⚠️ the grader put back {', '.join(replaced)}, which this notebook had replaced; "
              "changing library functions is not allowed in graded work")
    check(fn, reference, make_inputs, trials=trials, seed=seed, atol=atol, rtol=rtol,
          raise_on_fail=True, forbid=forbid, exact_dtype=exact_dtype, name=name)


# ----------------------------------------------------------------------------- hints
def _diagnose(fn: Callable, reference: Callable, make_inputs: Callable, *, trials: int, seed: int,
              forbid: tuple, mistakes: Sequence[Mistake], error_hints: Sequence[tuple[str, str]],
              random_hint: str | None, atol: float, rtol: float) -> str | None:
    """Replay the check's inputs; on the first one the answer gets wrong, say which classic
    mistake the answer reproduces (if any)."""
    for args, want in trial_inputs(reference, make_inputs, trials, seed):
        try:
            got = call_answer(fn, args, forbid)
        except Exception as exc:                              # noqa: BLE001 (the learner's error)
            text = f"{type(exc).__name__}: {exc}"
            return next((hint for words, hint in error_hints if words in text), None)
        if compare_outputs(got, want, atol, rtol) is None:
            continue
        for mistake, hint in mistakes:
            try:
                wrong = mistake(*args)
            except Exception:                                 # noqa: BLE001 (a mistake that raises)
                continue
            # both ways round: a mistake that gives NaN must not match every answer
            if compare_outputs(got, wrong, atol, rtol) is None and \
                    compare_outputs(wrong, got, atol, rtol) is None:
                return hint
        if random_hint is None:
            return None
        try:
            again = call_answer(fn, args, forbid)
        except Exception:                                     # noqa: BLE001
            return None
        return random_hint if compare_outputs(got, again, 0.0, 0.0) is not None else None
    return None


def hinted_check(fn: Callable, reference: Callable, make_inputs: Callable[[], Callable], *, name: str,
                 trials: int, seed: int, forbid: tuple, mistakes: Sequence[Mistake] = (),
                 error_hints: Sequence[tuple[str, str]] = (), random_hint: str | None = None,
                 atol: float, rtol: float) -> None:
    """:func:`course_lib.grading.graded.graded_check`, plus a hint when the answer is wrong.

    ``make_inputs()`` returns a fresh ``make_inputs(generator)`` (so the inputs of a failed check
    can be drawn again); ``mistakes`` are wrong versions of the function with what to say when
    the answer reproduces one of them; ``error_hints`` are (words in the error, hint) for answers
    that raise; ``random_hint`` is said when the answer gives two different results for the same
    inputs (it drew its own noise). The hint is printed and added to the failure's message."""
    seed += SEED_OFFSET.get()
    try:
        _check(fn, reference, make_inputs(), name=name, trials=trials, seed=seed,
               forbid=forbid, atol=atol, rtol=rtol)
    except CheckFailure as failure:
        if "not attempted" in str(failure) or "earns nothing" in str(failure):
            raise
        hint = _diagnose(fn, reference, make_inputs(), trials=trials, seed=seed, forbid=forbid,
                         mistakes=mistakes, error_hints=error_hints, random_hint=random_hint,
                         atol=atol, rtol=rtol)
        if hint is None:
            raise
        print(f"💡 Hint: {hint}")
        raise CheckFailure(f"{failure}\n💡 Hint: {hint}") from None
