"""Graded checks of assignment A2 (Phase 2): backpropagation from scratch, in NumPy.

Each ``check_*`` compares the learner's function with the course reference
(:mod:`course_lib.nn.numpy_mlp`) on random float64 NumPy inputs and raises
:class:`course_lib.checks.CheckFailure` with a specific message when they differ. The defaults
are the visible tests of the assignment; the hidden tests (in the instructor's source notebook
only) call the same functions with other seeds, shapes and edge cases (a batch of one, ties at
zero for ReLU, huge logits, networks of one to three layers).

Inputs are float64 on purpose: a loss comes back from a grading sandbox as a plain Python float,
which keeps float64 exactly, so the same comparison holds in the notebook and in the re-check.

    >>> check_linear_backward(linear_backward)
    ✅ linear_backward matches the reference on 3 random inputs
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from course_lib.grading.graded import graded_check
from course_lib.nn import numpy_mlp as _ref

__all__ = ["check_linear_backward", "check_relu_backward", "check_softmax_cross_entropy",
           "check_mlp_loss_and_grads"]

# An A2 answer may call none of the NumPy-network references (however it reaches them).
REFERENCES = (_ref.linear_forward, _ref.linear_backward, _ref.relu, _ref.relu_backward,
              _ref.log_softmax, _ref.softmax, _ref.softmax_cross_entropy, _ref.mlp_forward,
              _ref.mlp_backward, _ref.mlp_loss_and_grads, _ref.numerical_gradients)

_TOL = dict(atol=1e-10, rtol=1e-8)


def _cycle(options: Sequence, i: int):
    return options[i % len(options)]


def _randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    """A float64 NumPy array of N(0, scale^2) numbers drawn from ``gen``."""
    return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).numpy()


def _labels(gen: torch.Generator, n: int, c: int) -> np.ndarray:
    return torch.randint(0, c, (n,), generator=gen).numpy()          # (n,) int64


def check_linear_backward(fn: Callable, *, seed: int = 0,
                          sizes: Sequence[tuple[int, int, int]] = ((4, 3, 5),), trials: int = 3):
    """``fn(dZ, X, W)`` must return ``(dX, dW, db)`` for ``Z = X @ W + b``, with
    ``sizes`` = (N, D_in, D_out) per trial."""
    calls = iter(range(10**6))

    def make_inputs(gen: torch.Generator):
        n, d_in, d_out = _cycle(sizes, next(calls))
        return _randn(gen, n, d_out), _randn(gen, n, d_in), _randn(gen, d_in, d_out)

    graded_check(fn, _ref.linear_backward, make_inputs, name="linear_backward", trials=trials,
                 seed=seed, forbid=REFERENCES, **_TOL)


def check_relu_backward(fn: Callable, *, seed: int = 0, shapes: Sequence[tuple[int, ...]] = ((4, 6),),
                        zeros: float = 0.0, trials: int = 3):
    """``fn(dA, Z)`` must return ``dZ = dA * (Z > 0)``, shaped like ``Z``; ``zeros`` is the
    fraction of entries of ``Z`` set to exactly 0 (where the slope counts as 0)."""
    calls = iter(range(10**6))

    def make_inputs(gen: torch.Generator):
        shape = tuple(_cycle(shapes, next(calls)))
        dA, Z = _randn(gen, *shape), _randn(gen, *shape)
        Z[torch.rand(shape, generator=gen).numpy() < zeros] = 0.0
        return dA, Z

    graded_check(fn, _ref.relu_backward, make_inputs, name="relu_backward", trials=trials,
                 seed=seed, forbid=REFERENCES, **_TOL)


def check_softmax_cross_entropy(fn: Callable, *, seed: int = 0,
                                sizes: Sequence[tuple[int, int]] = ((5, 4),), scale: float = 2.0,
                                trials: int = 3):
    """``fn(logits, y)`` must return ``(loss, dlogits)``: the mean cross-entropy (a float) and
    its gradient (N, C), with ``sizes`` = (N, C) per trial and logits ~ N(0, scale^2)."""
    calls = iter(range(10**6))

    def make_inputs(gen: torch.Generator):
        n, c = _cycle(sizes, next(calls))
        return _randn(gen, n, c, scale=scale), _labels(gen, n, c)

    graded_check(fn, _ref.softmax_cross_entropy, make_inputs, name="softmax_cross_entropy",
                 trials=trials, seed=seed, forbid=REFERENCES, **_TOL)


def check_mlp_loss_and_grads(fn: Callable, *, seed: int = 0,
                             architectures: Sequence[Sequence[int]] = ((6, 8, 4),), batch: int = 5,
                             trials: int = 3):
    """``fn(params, X, y)`` must return ``(loss, grads)`` of the ReLU network with layer widths
    ``architectures[i]`` = [D0, D1, ..., DL] (one per trial; L = len - 1 layers)."""
    calls = iter(range(10**6))

    def make_inputs(gen: torch.Generator):
        sizes = list(_cycle(architectures, next(calls)))
        params = {}
        for l, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            params[f"W{l}"] = _randn(gen, d_in, d_out, scale=(2.0 / d_in) ** 0.5)
            params[f"b{l}"] = _randn(gen, d_out, scale=0.1)
        return params, _randn(gen, batch, sizes[0]), _labels(gen, batch, sizes[-1])

    graded_check(fn, _ref.mlp_loss_and_grads, make_inputs, name="mlp_loss_and_grads",
                 trials=trials, seed=seed, forbid=REFERENCES, **_TOL)
