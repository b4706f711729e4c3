"""Named test functions that graded checks pass to a learner's code.

They live at module level (not as lambdas) so a check can send them to a grading sandbox by
name. Scalar functions ``f(x) -> 0-d tensor`` feed ``numerical_gradient``; gradient functions
``g(x) -> (D,)`` feed ``gradient_descent``.
"""
from __future__ import annotations

import torch

__all__ = ["SCALAR_FUNCTIONS", "GRADIENT_FUNCTIONS"]


def quadratic(x: torch.Tensor) -> torch.Tensor:
    """f(x) = 1/2 sum x^2, whose gradient is x."""
    return 0.5 * (x ** 2).sum()


def cubic(x: torch.Tensor) -> torch.Tensor:
    """f(x) = sum(x^3 - 2x), gradient 3x^2 - 2."""
    return (x ** 3 - 2.0 * x).sum()


def wavy(x: torch.Tensor) -> torch.Tensor:
    """f(x) = sum(x sin 3x), gradient sin 3x + 3x cos 3x."""
    return (x * torch.sin(3.0 * x)).sum()


def logsumexp(x: torch.Tensor) -> torch.Tensor:
    """f(x) = log sum exp(x), gradient softmax(x)."""
    return torch.logsumexp(x.reshape(-1), dim=0)


def bowl_grad(x: torch.Tensor) -> torch.Tensor:
    """Gradient of f(x) = 1/2 sum_i i * x_i^2 (an elongated bowl): (1 x_1, 2 x_2, ...)."""
    return torch.arange(1, x.numel() + 1, dtype=x.dtype) * x


def rosenbrock_grad(x: torch.Tensor) -> torch.Tensor:
    """Gradient of the 2-D Rosenbrock valley f(a, b) = (1 - a)^2 + 10 (b - a^2)^2."""
    a, b = x[0], x[1]
    return torch.stack([-2.0 * (1.0 - a) - 40.0 * a * (b - a * a), 20.0 * (b - a * a)])


SCALAR_FUNCTIONS = {f.__name__: f for f in (quadratic, cubic, wavy, logsumexp)}
GRADIENT_FUNCTIONS = {f.__name__: f for f in (bowl_grad, rosenbrock_grad)}
