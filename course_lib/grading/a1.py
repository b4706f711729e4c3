"""Graded checks of assignment A1 (Phase 1): gradients and gradient descent.

Each ``check_*`` compares the learner's function with the course reference on random inputs and
raises :class:`course_lib.checks.CheckFailure` with a specific message when they differ. The
defaults are the visible tests of the assignment; the hidden tests (in the instructor's source
notebook only) call the same functions with other seeds, shapes, dtypes and edge cases.

    >>> check_numerical_gradient(numerical_gradient)
    ✅ numerical_gradient matches the reference on 3 random inputs
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from course_lib.foundations.autograd import (gradient_descent as _ref_gradient_descent,
                                             mlp2_forward_backward as _ref_mlp2,
                                             numerical_gradient as _ref_numerical_gradient)
from course_lib.foundations.probability import kl_normal as _ref_kl_normal
from course_lib.grading.graded import graded_check
from course_lib.grading.testfns import GRADIENT_FUNCTIONS, SCALAR_FUNCTIONS

__all__ = ["check_numerical_gradient", "check_mlp2_forward_backward", "check_kl_normal",
           "check_gradient_descent"]

# An A1 answer may call none of the A1 references (however it reaches them).
REFERENCES = (_ref_numerical_gradient, _ref_mlp2, _ref_kl_normal, _ref_gradient_descent)

Shape = Sequence[int]


def _cycle(options: Sequence, i: int):
    return options[i % len(options)]


def check_numerical_gradient(fn: Callable, *, seed: int = 0, shapes: Sequence[Shape] = ((3,), (2, 3)),
                             functions: Sequence[str] = ("quadratic", "cubic", "wavy"),
                             eps: float | None = None, dtype: torch.dtype = torch.float64,
                             trials: int = 3):
    """``fn(f, x[, eps])`` must give the central-difference gradient of ``f`` at ``x``, float64,
    shaped like ``x`` (``eps`` is left at its default when ``None``)."""
    calls = iter(range(10**6))

    def make_inputs(gen: torch.Generator):
        i = next(calls)
        x = torch.randn(tuple(_cycle(shapes, i)), generator=gen, dtype=dtype)
        f = SCALAR_FUNCTIONS[_cycle(functions, i)]
        return (f, x) if eps is None else (f, x, eps)

    graded_check(fn, _ref_numerical_gradient, make_inputs, name="numerical_gradient",
                        trials=trials, seed=seed, forbid=REFERENCES, atol=1e-6, rtol=1e-5)


def check_mlp2_forward_backward(fn: Callable, *, seed: int = 0,
                                sizes: Sequence[tuple[int, int, int, int]] = ((4, 3, 5, 2),),
                                dtype: torch.dtype = torch.float64, trials: int = 3):
    """``fn(x, y, W1, b1, W2, b2)`` must return ``(loss, grads)`` of the tanh network, with
    ``sizes`` = (N, D, H, O) per trial."""
    calls = iter(range(10**6))

    def make_inputs(gen: torch.Generator):
        n, d, h, o = _cycle(sizes, next(calls))

        def randn(*shape, scale=1.0):
            return scale * torch.randn(*shape, generator=gen, dtype=dtype)

        return (randn(n, d), randn(n, o), randn(d, h, scale=0.7), randn(h, scale=0.1),
                randn(h, o, scale=0.7), randn(o, scale=0.1))

    tol = 1e-10 if dtype == torch.float64 else 1e-5
    graded_check(fn, _ref_mlp2, make_inputs, name="mlp2_forward_backward", trials=trials,
                        seed=seed, forbid=REFERENCES, atol=tol, rtol=tol * 10)


def check_kl_normal(fn: Callable, *, seed: int = 0,
                    shapes: Sequence[tuple[Shape, Shape]] = (((5,), (5,)),),
                    same: bool = False, sigma_range: float = 1.0,
                    dtype: torch.dtype = torch.float64, trials: int = 3):
    """``fn(mu_p, sigma_p, mu_q, sigma_q)`` must give the elementwise closed-form KL divergence.
    ``shapes`` gives the shapes of p's and q's parameters (they broadcast); ``same=True`` makes
    q equal to p (KL = 0); log-sigmas are drawn from N(0, sigma_range^2)."""
    calls = iter(range(10**6))

    def make_inputs(gen: torch.Generator):
        shape_p, shape_q = _cycle(shapes, next(calls))

        def draw(shape, log_scale=False):
            z = torch.randn(tuple(shape), generator=gen, dtype=dtype)
            return torch.exp(sigma_range * z) if log_scale else z

        mu_p, sigma_p = draw(shape_p), draw(shape_p, log_scale=True)
        if same:
            return mu_p, sigma_p, mu_p.clone(), sigma_p.clone()
        return mu_p, sigma_p, draw(shape_q), draw(shape_q, log_scale=True)

    graded_check(fn, _ref_kl_normal, make_inputs, name="kl_normal", trials=trials,
                        seed=seed, forbid=REFERENCES, atol=1e-9, rtol=1e-7)


def check_gradient_descent(fn: Callable, *, seed: int = 0, dims: Sequence[int] = (3,),
                           grad_fns: Sequence[str] = ("bowl_grad",), lr: float = 0.1,
                           steps: Sequence[int] = (5,), trials: int = 3):
    """``fn(grad_fn, x0, lr, steps)`` must return the trajectory, shape (steps + 1, D)."""
    calls = iter(range(10**6))

    def make_inputs(gen: torch.Generator):
        i = next(calls)
        grad_fn = GRADIENT_FUNCTIONS[_cycle(grad_fns, i)]
        dim = 2 if grad_fn.__name__ == "rosenbrock_grad" else _cycle(dims, i)
        x0 = torch.randn(dim, generator=gen, dtype=torch.float64)
        return grad_fn, x0, lr, _cycle(steps, i)

    graded_check(fn, _ref_gradient_descent, make_inputs, name="gradient_descent",
                        trials=trials, seed=seed, forbid=REFERENCES, atol=1e-10, rtol=1e-8)
