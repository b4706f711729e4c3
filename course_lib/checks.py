"""Self-checks: compare a learner's function with the course reference on fresh random inputs.

    >>> check(my_softmax, reference_softmax, lambda g: (torch.randn(4, 10, generator=g),))
    ✅ my_softmax matches the reference on 3 random inputs

A failed check says *what* is wrong (shape, dtype, device, NaN/inf, which values differ and
by how much) instead of a bare ``AssertionError``. A function that still raises
``NotImplementedError`` is reported as "not attempted yet", so notebooks run end to end
before the exercises are done.

Graded test cells use the same function with ``raise_on_fail=True`` (a failure becomes a
:class:`CheckFailure`, which nbgrader scores as 0) and ``forbid=(reference,)`` (an answer that
calls the reference, directly or through a wrapper, fails with :class:`ReferenceCalled`).

The torch functions used to compare outputs are captured when this module is imported, so a
notebook that later replaces ``torch.allclose`` or ``torch.isfinite`` does not change a verdict
(``course_lib.grading`` also puts back replaced ``torch.Tensor`` methods before grading).
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

__all__ = ["CheckResult", "CheckFailure", "ReferenceCalled", "RemoteCallable", "compare_outputs",
           "check", "call_forbidding", "call_answer", "recorded_checks"]

# Captured at import: later monkeypatching of these names cannot change a comparison.
_Tensor = torch.Tensor
_as_tensor_fn = torch.as_tensor
_isfinite = torch.isfinite
_nonzero = torch.nonzero
_np_asarray = np.asarray
_np_isscalar = np.isscalar
_np_ndarray = np.ndarray
_float64 = torch.float64
_bool = torch.bool
_getprofile, _setprofile = sys.getprofile, sys.setprofile


@dataclass
class CheckResult:
    passed: bool
    message: str
    attempted: bool = True

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message


class CheckFailure(AssertionError):
    """A check that failed in a graded test cell; the message says what is wrong."""


class ReferenceCalled(Exception):
    """The learner's function called the course reference it is being compared with."""


class RemoteCallable:
    """Base of the grader's proxies for functions that live in a grading sandbox: they run
    the call (and watch for forbidden references) on the sandbox's side."""

    def call_forbidding(self, args: tuple, forbid: tuple) -> Any:
        raise NotImplementedError


def _as_tensor(x: Any) -> Any:
    if isinstance(x, _np_ndarray) or _np_isscalar(x):
        return _as_tensor_fn(_np_asarray(x))
    return x


def _describe_inputs(args: tuple) -> str:
    parts = []
    for a in args:
        if isinstance(a, (_Tensor, _np_ndarray)):
            parts.append(f"{type(a).__name__}{tuple(a.shape)}")
        elif callable(a):
            parts.append(getattr(a, "__name__", type(a).__name__))
        else:
            parts.append(repr(a) if len(repr(a)) < 40 else type(a).__name__)
    return "(" + ", ".join(parts) + ")"


def _compare_tensors(g, w, atol: float, rtol: float, where: str, exact_dtype: bool) -> str | None:
    if g.shape != w.shape:
        return f"{where} has shape {tuple(g.shape)}, expected {tuple(w.shape)}"
    if g.device != w.device:
        return f"{where} is on {g.device}, expected {w.device}"
    if exact_dtype and g.dtype != w.dtype:
        return f"{where} has dtype {g.dtype}, expected {w.dtype}"
    if g.dtype.is_floating_point != w.dtype.is_floating_point or (
            w.dtype == _bool) != (g.dtype == _bool):
        return f"{where} has dtype {g.dtype}, expected {w.dtype}"
    g, w = g.detach().cpu().to(_float64), w.detach().cpu().to(_float64)  # float64 on the CPU only
    bad = ~_isfinite(g) & _isfinite(w)
    if bad.any():
        return f"{where} contains {int(bad.sum())} NaN/inf value(s) where the reference is finite"
    diff = (g - w).abs()
    tol = atol + rtol * w.abs()
    wrong = ~(diff <= tol) & _isfinite(w)
    if wrong.any():
        idx = tuple(int(i) for i in _nonzero(wrong)[0]) if g.dim() else ()
        return (f"{where}: {int(wrong.sum())} of {w.numel()} values differ (max abs difference "
                f"{diff[wrong].max():.3g}); first at index {idx}: got {g[idx].item():.6g}, "
                f"expected {w[idx].item():.6g}")
    return None


def compare_outputs(got: Any, want: Any, atol: float = 1e-5, rtol: float = 1e-4,
                    where: str = "output", exact_dtype: bool = False) -> str | None:
    """``None`` when ``got`` matches ``want``, else a sentence saying how they differ.
    Handles tensors, arrays, numbers, texts and (nested) tuples/lists/dicts of them.
    ``exact_dtype=True`` also requires the same dtype (float32 is not float64)."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return f"{where} should be a dict with keys {sorted(want)}, got {type(got).__name__}" + (
                f" with keys {sorted(got)}" if isinstance(got, dict) else "")
        for k in want:
            msg = compare_outputs(got[k], want[k], atol, rtol, f"{where}[{k!r}]", exact_dtype)
            if msg:
                return msg
        return None
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return f"{where} should be a sequence of {len(want)} items, got {type(got).__name__}" + (
                f" of {len(got)}" if isinstance(got, (tuple, list)) else "")
        for i, (g, w) in enumerate(zip(got, want)):
            msg = compare_outputs(g, w, atol, rtol, f"{where}[{i}]", exact_dtype)
            if msg:
                return msg
        return None
    if got is None:
        return f"{where} is None: did you forget to `return` it?"
    if isinstance(want, str):                      # a fact in words (what a random tensor is)
        return None if got == want else f"{where} is {got!r}, expected {want!r}"
    if isinstance(got, str):
        return f"{where} should be a {type(want).__name__}, got the text {got[:40]!r}"
    g, w = _as_tensor(got), _as_tensor(want)
    if isinstance(w, _Tensor) and not isinstance(g, _Tensor):
        return f"{where} should be a torch.Tensor, got {type(got).__name__}"
    if not isinstance(g, _Tensor) or not isinstance(w, _Tensor):
        return None if g == w else f"{where} is {got!r}, expected {want!r}"
    return _compare_tensors(g, w, atol, rtol, where, exact_dtype)


# ----------------------------------------------------------------------------- forbidden calls
def _code_objects(funcs: Iterable[Callable]) -> dict:
    codes = {}
    for f in funcs:
        code = getattr(getattr(f, "__wrapped__", f), "__code__", None)
        if code is not None:
            codes[code] = f"{f.__module__}.{f.__qualname__}"
    return codes


def call_forbidding(fn: Callable, args: tuple, forbid: Iterable[Callable] = ()) -> Any:
    """``fn(*args)``, raising :class:`ReferenceCalled` if any function in ``forbid`` ran during
    the call (however it was reached: directly, through ``functools.partial``, a lambda, an
    alias or a copy of its code object)."""
    codes = _code_objects(forbid)
    if not codes:
        return fn(*args)
    hits: list[str] = []

    def watch(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            hits.append(codes[frame.f_code])

    previous = _getprofile()
    _setprofile(watch)
    try:
        result = fn(*args)
    finally:
        replaced = _getprofile() is not watch
        _setprofile(previous)
    if hits:
        raise ReferenceCalled(f"it calls the course reference {hits[0]}; write your own code")
    if replaced:
        raise ReferenceCalled("it switched off the grader's call monitor (sys.setprofile)")
    return result


def call_answer(fn: Callable, args: tuple, forbid: tuple) -> Any:
    """The learner's ``fn(*args)`` with ``forbid`` watched, in this process or, for a
    :class:`RemoteCallable`, in the grading sandbox where the function lives."""
    if isinstance(fn, RemoteCallable):                 # a function living in a grading sandbox
        return fn.call_forbidding(args, forbid)
    return call_forbidding(fn, args, forbid)


# ----------------------------------------------------------------------------- check
_RECORDERS: list[list[CheckResult]] = []


@contextmanager
def recorded_checks() -> Iterator[list[CheckResult]]:
    """The result of every :func:`check` run inside the block, in order (the test suite tries
    each notebook exercise with its stub and with its solution this way)."""
    results: list[CheckResult] = []
    _RECORDERS.append(results)
    try:
        yield results
    finally:
        _RECORDERS.remove(results)


def trial_inputs(reference: Callable, make_inputs: Callable[[torch.Generator], tuple], trials: int,
                 seed: int) -> Iterator[tuple[tuple, Any]]:
    """``(args, reference(*args))`` for ``trials`` inputs drawn by ``make_inputs`` from one seeded generator.

    :func:`check` and the graded hints replay the same sequence, so a hint speaks of the input
    the check failed on."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(trials):
        args = make_inputs(gen)
        args = args if isinstance(args, tuple) else (args,)
        yield args, reference(*args)


def check(fn: Callable, reference: Callable, make_inputs: Callable[[torch.Generator], tuple],
          trials: int = 3, seed: int = 1234, atol: float = 1e-5, rtol: float = 1e-4,
          verbose: bool = True, *, raise_on_fail: bool = False, forbid: Iterable[Callable] = (),
          exact_dtype: bool = False, name: str | None = None) -> CheckResult:
    """Call ``fn`` and ``reference`` on ``trials`` inputs from ``make_inputs(generator)``.

    Prints (when ``verbose``) and returns a :class:`CheckResult`; truthy when all trials match.
    Graded tests pass ``raise_on_fail=True`` (raise :class:`CheckFailure` instead of returning
    a failed result) and ``forbid=(reference,)`` (calling the reference fails the check).
    """
    name = name or getattr(fn, "__name__", "your function")
    forbid = tuple(forbid)
    result = CheckResult(True, f"✅ {name} matches the reference on {trials} random inputs")
    for args, want in trial_inputs(reference, make_inputs, trials, seed):
        try:
            got = call_answer(fn, args, forbid)
        except NotImplementedError:
            result = CheckResult(False, f"⏳ {name} is not attempted yet: replace the "
                                 "`raise NotImplementedError` with your code", attempted=False)
            break
        except ReferenceCalled as exc:
            result = CheckResult(False, f"❌ {name} earns nothing here: {exc}")
            break
        except Exception as exc:  # the learner's bug, reported rather than raised
            result = CheckResult(False, f"❌ {name}{_describe_inputs(args)} raised "
                                 f"{type(exc).__name__}: {exc}")
            break
        msg = compare_outputs(got, want, atol, rtol, exact_dtype=exact_dtype)
        if msg:
            result = CheckResult(False, f"❌ {name}{_describe_inputs(args)}: {msg}")
            break
    for results in _RECORDERS:
        results.append(result)
    if verbose:
        print(result.message)
    if raise_on_fail and not result.passed:
        raise CheckFailure(result.message)
    return result
