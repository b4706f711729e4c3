"""Calculus and autograd references for Phase 1 · 03 (calculus and autograd).

- :class:`Value`: a scalar that remembers how it was computed, so ``backward()`` can apply the
  chain rule through the whole expression (reverse-mode automatic differentiation).
- :func:`numerical_gradient`: central finite differences, the ground truth every hand-written
  gradient is checked against.
- :func:`mlp2_forward_backward`: a two-layer tanh network with a mean-squared-error loss and
  its backward pass written out by hand (no autograd).
- :func:`gradient_descent`: plain gradient descent that records its whole trajectory.

    >>> a, b = Value(2.0), Value(-3.0)
    >>> out = (a * b + a ** 2).tanh()
    >>> out.backward()          # fills a.grad = d out / d a and b.grad = d out / d b
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Callable, Iterable

import torch

__all__ = ["Value", "numerical_gradient", "mlp2_forward_backward", "gradient_descent"]


# ----------------------------------------------------------------------------- Value
class Value:
    """A scalar node of a computational graph.

    Each node stores its number (``data``), the derivative of the final output with respect to
    it (``grad``, filled by :meth:`backward`) and, for every input it was computed from, the
    *local* derivative ``d self / d input``. The backward pass multiplies local derivatives
    along every path from the output to each leaf and adds the paths up (the chain rule).
    """

    __slots__ = ("data", "grad", "op", "label", "edges")

    def __init__(self, data: float, edges: Iterable[tuple["Value", float]] = (), op: str = "",
                 label: str = ""):
        if isinstance(data, Value):
            raise TypeError("Value(Value(...)) is not allowed: use the Value itself")
        if not isinstance(data, Real):
            raise TypeError(f"Value holds a real number, got {type(data).__name__}")
        self.data = float(data)
        self.grad = 0.0
        self.op = op          # the operation that produced this node ("" for a leaf)
        self.label = label    # an optional name, used when drawing the graph
        # ((parent, d self / d parent), ...): where this node came from, with local derivatives
        self.edges: tuple[tuple[Value, float], ...] = tuple(edges)

    # -- graph structure -------------------------------------------------------------
    @property
    def parents(self) -> tuple["Value", ...]:
        """The nodes this one was computed from (empty for a leaf)."""
        return tuple(p for p, _ in self.edges)

    @property
    def local_grads(self) -> tuple[float, ...]:
        """``d self / d parent`` for each parent, in the order of :attr:`parents`."""
        return tuple(g for _, g in self.edges)

    def __repr__(self) -> str:
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g}" + (
            f", op={self.op!r})" if self.op else ")")

    @staticmethod
    def _lift(other: "Value | float") -> "Value":
        if isinstance(other, Value):
            return other
        if isinstance(other, Real):
            return Value(other)
        raise TypeError(f"cannot combine a Value with {type(other).__name__}")

    # -- arithmetic ------------------------------------------------------------------
    def __add__(self, other: "Value | float") -> "Value":
        other = self._lift(other)
        # z = x + y:  dz/dx = 1,  dz/dy = 1
        return Value(self.data + other.data, [(self, 1.0), (other, 1.0)], "+")

    def __mul__(self, other: "Value | float") -> "Value":
        other = self._lift(other)
        # z = x * y:  dz/dx = y,  dz/dy = x
        return Value(self.data * other.data, [(self, other.data), (other, self.data)], "*")

    def __pow__(self, k: float) -> "Value":
        if isinstance(k, Value) or not isinstance(k, Real):
            raise TypeError("Value ** k needs a plain number k (a Value exponent is not supported)")
        k = float(k)
        if self.data == 0.0 and k < 1.0:
            raise ZeroDivisionError(f"0 ** {k:g} has no finite derivative")
        if self.data < 0.0 and not k.is_integer():
            raise ValueError(f"({self.data:g}) ** {k:g} is not a real number")
        # z = x^k:  dz/dx = k x^(k-1)
        return Value(self.data ** k, [(self, k * self.data ** (k - 1.0))], f"**{k:g}")

    def __neg__(self) -> "Value":
        return self * -1.0

    def __sub__(self, other: "Value | float") -> "Value":
        return self + (-self._lift(other))

    def __truediv__(self, other: "Value | float") -> "Value":
        other = self._lift(other)
        if other.data == 0.0:
            raise ZeroDivisionError("division of a Value by zero")
        return self * other ** -1.0

    def __radd__(self, other: float) -> "Value":
        return self + other

    def __rmul__(self, other: float) -> "Value":
        return self * other

    def __rsub__(self, other: float) -> "Value":
        return self._lift(other) - self

    def __rtruediv__(self, other: float) -> "Value":
        return self._lift(other) / self

    # -- elementary functions --------------------------------------------------------
    def tanh(self) -> "Value":
        t = math.tanh(self.data)
        return Value(t, [(self, 1.0 - t * t)], "tanh")      # d tanh(x)/dx = 1 - tanh(x)^2

    def exp(self) -> "Value":
        e = math.exp(self.data)
        return Value(e, [(self, e)], "exp")                  # d e^x/dx = e^x

    def log(self) -> "Value":
        if self.data <= 0.0:
            raise ValueError(f"log of a non-positive number ({self.data:g})")
        return Value(math.log(self.data), [(self, 1.0 / self.data)], "log")   # d log x/dx = 1/x

    def relu(self) -> "Value":
        on = self.data > 0.0
        return Value(self.data if on else 0.0, [(self, 1.0 if on else 0.0)], "relu")

    def sigmoid(self) -> "Value":
        s = 1.0 / (1.0 + math.exp(-self.data))
        return Value(s, [(self, s * (1.0 - s))], "sigmoid")  # d σ(x)/dx = σ(x)(1 - σ(x))

    # -- backward pass ---------------------------------------------------------------
    def topological_order(self) -> list["Value"]:
        """Every node this one depends on (itself included), each after all of its parents."""
        order: list[Value] = []
        seen: set[int] = set()
        stack: list[tuple[Value, bool]] = [(self, False)]
        while stack:                       # iterative depth-first search (no recursion limit)
            node, parents_done = stack.pop()
            if parents_done:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p in node.parents if id(p) not in seen)
        return order

    def backward(self) -> None:
        """Fill ``.grad`` of every node in the graph with ``d self / d node``.

        Gradients *accumulate* (``+=``) because a node used twice gets a contribution from each
        use; grads from an earlier call are reset first.
        """
        order = self.topological_order()
        for node in order:
            node.grad = 0.0
        self.grad = 1.0                              # d self / d self
        for node in reversed(order):                 # outputs before inputs
            for parent, local in node.edges:
                parent.grad += local * node.grad     # chain rule: dL/dp += dL/dn * dn/dp


# ----------------------------------------------------------------------------- numerical gradient
def numerical_gradient(f: Callable[[torch.Tensor], torch.Tensor | float], x: torch.Tensor,
                       eps: float = 1e-6) -> torch.Tensor:
    """Central-difference gradient of a scalar function ``f`` at ``x``.

    ``grad[i] = (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)``, computed in float64.

    Args:
        f: takes a tensor shaped like ``x`` and returns a scalar (0-d tensor, 1-element tensor
            or Python number).
        x: any shape; it is not modified.
        eps: the step, > 0.
    Returns:
        a float64 tensor with the shape of ``x``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not (isinstance(eps, Real) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}")

    def scalar(value) -> float:
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"f must return a scalar, got a tensor of shape "
                                 f"{tuple(value.shape)}")
            return float(value.item())
        return float(value)

    base = x.detach().to(torch.float64).clone()
    grad = torch.zeros_like(base)
    flat, gflat = base.view(-1), grad.view(-1)
    with torch.no_grad():
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            f_plus = scalar(f(base))
            flat[i] = old - eps
            f_minus = scalar(f(base))
            flat[i] = old
            gflat[i] = (f_plus - f_minus) / (2.0 * eps)
    return grad


# ----------------------------------------------------------------------------- tiny network
def _check_mlp2_shapes(x, y, W1, b1, W2, b2) -> None:
    named = {"x": x, "y": y, "W1": W1, "b1": b1, "W2": W2, "b2": b2}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    want_dims = {"x": 2, "y": 2, "W1": 2, "b1": 1, "W2": 2, "b2": 1}
    for name, dims in want_dims.items():
        if named[name].dim() != dims:
            raise ValueError(f"{name} must have {dims} dimension(s), got shape "
                             f"{tuple(named[name].shape)}")
    N, D = x.shape
    H, O = W2.shape
    expected = {"W1": (D, H), "b1": (H,), "b2": (O,), "y": (N, O)}
    for name, shape in expected.items():
        if tuple(named[name].shape) != shape:
            raise ValueError(f"{name} has shape {tuple(named[name].shape)}, expected {shape} "
                             f"(x: {tuple(x.shape)}, W2: {tuple(W2.shape)})")


def mlp2_forward_backward(x: torch.Tensor, y: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor,
                          W2: torch.Tensor, b2: torch.Tensor
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and parameter gradients of a two-layer tanh network, by hand (no autograd).

    Forward::

        a = x @ W1 + b1        (N, H)
        h = tanh(a)            (N, H)
        y_hat = h @ W2 + b2    (N, O)
        loss = mean((y_hat - y)^2)   over all N * O elements

    Args:
        x: (N, D) inputs; y: (N, O) targets; W1: (D, H); b1: (H,); W2: (H, O); b2: (O,).
    Returns:
        ``(loss, grads)``: ``loss`` a 0-d tensor; ``grads`` a dict with keys
        ``"W1", "b1", "W2", "b2"``, each shaped like its parameter.
    """
    _check_mlp2_shapes(x, y, W1, b1, W2, b2)
    x, y, W1, b1, W2, b2 = (t.detach() for t in (x, y, W1, b1, W2, b2))
    # forward
    a = x @ W1 + b1
    h = torch.tanh(a)
    y_hat = h @ W2 + b2
    diff = y_hat - y
    loss = (diff ** 2).mean()
    # backward: each line is d loss / d (that quantity)
    d_y_hat = 2.0 * diff / diff.numel()          # d mean(diff^2) / d y_hat
    d_W2 = h.T @ d_y_hat                         # y_hat = h W2 + b2
    d_b2 = d_y_hat.sum(dim=0)
    d_h = d_y_hat @ W2.T
    d_a = d_h * (1.0 - h ** 2)                   # tanh'(a) = 1 - tanh(a)^2
    d_W1 = x.T @ d_a                             # a = x W1 + b1
    d_b1 = d_a.sum(dim=0)
    return loss, {"W1": d_W1, "b1": d_b1, "W2": d_W2, "b2": d_b2}


# ----------------------------------------------------------------------------- gradient descent
def gradient_descent(grad_fn: Callable[[torch.Tensor], torch.Tensor], x0, lr: float,
                     steps: int) -> torch.Tensor:
    """Run ``x <- x - lr * grad_fn(x)`` for ``steps`` steps from ``x0``.

    Args:
        grad_fn: maps a point (D,) to the gradient there (D,).
        x0: the start, (D,) (a tensor, list or array).
        lr: the learning rate (step size), > 0.
        steps: how many updates, >= 0.
    Returns:
        the trajectory, (steps + 1, D): row 0 is ``x0``, row t is the point after t updates.
        A diverging run fills in ``inf``/``nan``; it is returned as it is, so it can be shown.
    """
    if not (isinstance(lr, Real) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    x = torch.as_tensor(x0).detach().clone()
    if not x.dtype.is_floating_point:
        x = x.to(torch.get_default_dtype())
    if x.dim() != 1:
        raise ValueError(f"x0 must be a vector (D,), got shape {tuple(x.shape)}")
    path = torch.empty(steps + 1, x.numel(), dtype=x.dtype)
    path[0] = x
    for t in range(steps):
        g = torch.as_tensor(grad_fn(x), dtype=x.dtype).detach()
        if g.shape != x.shape:
            raise ValueError(f"grad_fn returned shape {tuple(g.shape)}, expected "
                             f"{tuple(x.shape)}")
        x = x - lr * g
        path[t + 1] = x
    return path
