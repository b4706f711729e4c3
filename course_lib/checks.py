"""Self-checks: compare a learner's function with the course reference on fresh random inputs.

    >>> check(my_softmax, reference_softmax, lambda g: (torch.randn(4, 10, generator=g),))
    ✅ my_softmax matches the reference on 3 random inputs

A failed check says *what* is wrong (shape, dtype, device, NaN/inf, which values differ and
by how much) instead of a bare ``AssertionError``. A function that still raises
``NotImplementedError`` is reported as "not attempted yet", so notebooks run end to end
before the exercises are done.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["CheckResult", "compare_outputs", "check"]


@dataclass
class CheckResult:
    passed: bool
    message: str
    attempted: bool = True

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message


def _as_tensor(x: Any) -> Any:
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return torch.as_tensor(np.asarray(x))
    return x


def _describe_inputs(args: tuple) -> str:
    parts = []
    for a in args:
        if isinstance(a, (torch.Tensor, np.ndarray)):
            parts.append(f"{type(a).__name__}{tuple(a.shape)}")
        else:
            parts.append(repr(a) if len(repr(a)) < 40 else type(a).__name__)
    return "(" + ", ".join(parts) + ")"


def compare_outputs(got: Any, want: Any, atol: float = 1e-5, rtol: float = 1e-4,
                    where: str = "output") -> str | None:
    """``None`` when ``got`` matches ``want``, else a sentence saying how they differ.
    Handles tensors, arrays, numbers and (nested) tuples/lists/dicts of them."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return f"{where} should be a dict with keys {sorted(want)}, got {type(got).__name__}" + (
                f" with keys {sorted(got)}" if isinstance(got, dict) else "")
        for k in want:
            msg = compare_outputs(got[k], want[k], atol, rtol, f"{where}[{k!r}]")
            if msg:
                return msg
        return None
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return f"{where} should be a sequence of {len(want)} items, got {type(got).__name__}" + (
                f" of {len(got)}" if isinstance(got, (tuple, list)) else "")
        for i, (g, w) in enumerate(zip(got, want)):
            msg = compare_outputs(g, w, atol, rtol, f"{where}[{i}]")
            if msg:
                return msg
        return None
    if got is None:
        return f"{where} is None: did you forget to `return` it?"
    g, w = _as_tensor(got), _as_tensor(want)
    if not isinstance(g, torch.Tensor) or not isinstance(w, torch.Tensor):
        return None if g == w else f"{where} is {got!r}, expected {want!r}"
    if g.shape != w.shape:
        return f"{where} has shape {tuple(g.shape)}, expected {tuple(w.shape)}"
    if g.device != w.device:
        return f"{where} is on {g.device}, expected {w.device}"
    if g.dtype.is_floating_point != w.dtype.is_floating_point or (
            w.dtype == torch.bool) != (g.dtype == torch.bool):
        return f"{where} has dtype {g.dtype}, expected {w.dtype}"
    g, w = g.detach().double().cpu(), w.detach().double().cpu()
    bad = ~torch.isfinite(g) & torch.isfinite(w)
    if bad.any():
        return f"{where} contains {int(bad.sum())} NaN/inf value(s) where the reference is finite"
    diff = (g - w).abs()
    tol = atol + rtol * w.abs()
    wrong = ~(diff <= tol) & torch.isfinite(w)
    if wrong.any():
        idx = tuple(int(i) for i in torch.nonzero(wrong)[0]) if g.dim() else ()
        return (f"{where}: {int(wrong.sum())} of {w.numel()} values differ (max abs difference "
                f"{diff[wrong].max():.3g}); first at index {idx}: got {g[idx].item():.6g}, "
                f"expected {w[idx].item():.6g}")
    return None


def check(fn: Callable, reference: Callable, make_inputs: Callable[[torch.Generator], tuple],
          trials: int = 3, seed: int = 1234, atol: float = 1e-5, rtol: float = 1e-4,
          verbose: bool = True) -> CheckResult:
    """Call ``fn`` and ``reference`` on ``trials`` inputs from ``make_inputs(generator)``.

    Prints (when ``verbose``) and returns a :class:`CheckResult`; truthy when all trials match.
    """
    name = getattr(fn, "__name__", "your function")
    gen = torch.Generator().manual_seed(seed)
    result = CheckResult(True, f"✅ {name} matches the reference on {trials} random inputs")
    for trial in range(trials):
        args = make_inputs(gen)
        args = args if isinstance(args, tuple) else (args,)
        want = reference(*args)
        try:
            got = fn(*args)
        except NotImplementedError:
            result = CheckResult(False, f"⏳ {name} is not attempted yet: replace the "
                                 "`raise NotImplementedError` with your code", attempted=False)
            break
        except Exception as exc:  # the learner's bug, reported rather than raised
            result = CheckResult(False, f"❌ {name}{_describe_inputs(args)} raised "
                                 f"{type(exc).__name__}: {exc}")
            break
        msg = compare_outputs(got, want, atol, rtol)
        if msg:
            result = CheckResult(False, f"❌ {name}{_describe_inputs(args)}: {msg}")
            break
    if verbose:
        print(result.message)
    return result
