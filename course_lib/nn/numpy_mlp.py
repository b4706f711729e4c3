"""A multilayer perceptron in plain NumPy: the reference for Phase 2 · 01 (a network from scratch).

One example per row (the row-vector convention), so a layer is ``X @ W + b``. With L layers:

    A_0 = X
    Z_l = A_{l-1} W_l + b_l            l = 1 .. L
    A_l = relu(Z_l)                    l = 1 .. L-1   (hidden layers)
    logits = Z_L                       (no activation on the last layer)
    loss = mean_n [ -log softmax(logits_n)[y_n] ]

    >>> params = init_mlp([64, 32, 10], seed=0)           # W1 (64, 32), b1 (32,), W2 (32, 10), b2 (10,)
    >>> logits, cache = mlp_forward(params, X)            # X (N, 64) -> logits (N, 10)
    >>> loss, dlogits = softmax_cross_entropy(logits, y)  # y (N,) ints in [0, 10)
    >>> grads = mlp_backward(params, cache, dlogits)      # same keys and shapes as params
    >>> sgd_step(params, grads, lr=0.1)                   # in place: θ ← θ − lr · ∂L/∂θ

``params`` is a plain dict ``{"W1": (D0, D1), "b1": (D1,), ..., "WL": (D_{L-1}, D_L), "bL": (D_L,)}``.
Every function keeps the floating dtype of its inputs (float64 for gradient checks, float32 to
train fast). :class:`NumpyMLP` wraps it all with ``fit`` / ``predict``.
"""
from __future__ import annotations

from numbers import Integral, Real
from typing import Callable, Sequence

import numpy as np

__all__ = ["init_mlp", "num_layers", "linear_forward", "linear_backward", "relu", "relu_backward",
           "log_softmax", "softmax", "softmax_cross_entropy", "mlp_forward", "mlp_backward",
           "mlp_loss_and_grads", "sgd_step", "accuracy", "numerical_gradients", "NumpyMLP"]

Params = dict  # {"W1": ndarray, "b1": ndarray, ...}


# ----------------------------------------------------------------------------- checks
def _array(x, name: str, ndim: int | None = None) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(x).__name__} "
                        "(convert a torch tensor with .numpy())")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {x.shape}")
    return x


def _labels(y, n: int, num_classes: int) -> np.ndarray:
    y = _array(y, "y", 1)
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"y must hold integer class indices, got dtype {y.dtype}")
    if len(y) != n:
        raise ValueError(f"y has {len(y)} labels but there are {n} rows of logits")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values from {y.min()} to {y.max()}")
    return y


def num_layers(params: Params) -> int:
    """L, the number of linear layers in ``params`` (keys W1, b1, ..., WL, bL)."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict {{'W1': ..., 'b1': ..., ...}}, got {type(params).__name__}")
    L = sum(1 for k in params if k.startswith("W"))
    expected = {f"{p}{l}" for l in range(1, L + 1) for p in "Wb"}
    if L == 0 or set(params) != expected:
        raise ValueError(f"params must have keys W1, b1, ..., WL, bL; got {sorted(params)}")
    return L


# ----------------------------------------------------------------------------- initialisation
def init_mlp(sizes: Sequence[int], seed: int = 0, dtype=np.float64) -> Params:
    """Parameters of an MLP with layer widths ``sizes = [D0, D1, ..., DL]`` (input first).

    W_l ~ N(0, 2 / D_{l-1}) (He initialisation: keeps the scale of ReLU activations roughly
    constant from layer to layer), b_l = 0. Returns {"W1": (D0, D1), "b1": (D1,), ...}.
    """
    sizes = list(sizes)
    if len(sizes) < 2 or not all(isinstance(s, Integral) and s >= 1 for s in sizes):
        raise ValueError(f"sizes must list at least two positive ints [inputs, ..., outputs], got {sizes}")
    rng = np.random.default_rng(seed)
    params: Params = {}
    for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f"W{l}"] = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(dtype)
        params[f"b{l}"] = np.zeros(fan_out, dtype=dtype)
    return params


# ----------------------------------------------------------------------------- layers
def linear_forward(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Z = X W + b.   X: (N, D_in), W: (D_in, D_out), b: (D_out,) -> Z: (N, D_out)."""
    _array(X, "X", 2), _array(W, "W", 2), _array(b, "b", 1)
    if X.shape[1] != W.shape[0] or W.shape[1] != b.shape[0]:
        raise ValueError(f"shapes do not chain: X {X.shape} @ W {W.shape} + b {b.shape}")
    return X @ W + b


def linear_backward(dZ: np.ndarray, X: np.ndarray, W: np.ndarray):
    """Gradients of a linear layer Z = X W + b, given dZ = ∂L/∂Z.

    dZ: (N, D_out), X: (N, D_in), W: (D_in, D_out) -> (dX (N, D_in), dW (D_in, D_out), db (D_out,)).
    Each gradient has the shape of the thing it is the gradient of.
    """
    _array(dZ, "dZ", 2), _array(X, "X", 2), _array(W, "W", 2)
    if dZ.shape != (X.shape[0], W.shape[1]) or X.shape[1] != W.shape[0]:
        raise ValueError(f"shapes do not match: dZ {dZ.shape}, X {X.shape}, W {W.shape}")
    dX = dZ @ W.T          # ∂L/∂X_nd = Σ_k ∂L/∂Z_nk W_dk
    dW = X.T @ dZ          # ∂L/∂W_dk = Σ_n X_nd ∂L/∂Z_nk   (sum over the batch)
    db = dZ.sum(axis=0)    # ∂L/∂b_k  = Σ_n ∂L/∂Z_nk        (b is added to every row)
    return dX, dW, db


def relu(Z: np.ndarray) -> np.ndarray:
    """A = max(Z, 0), elementwise (any shape)."""
    return np.maximum(Z, 0)


def relu_backward(dA: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """∂L/∂Z = ∂L/∂A ⊙ 1[Z > 0], elementwise; the slope at exactly 0 is taken as 0.

    dA, Z: the same shape (the gradient of A = relu(Z), and Z itself) -> dZ: that shape.
    """
    _array(dA, "dA"), _array(Z, "Z")
    if dA.shape != Z.shape:
        raise ValueError(f"dA {dA.shape} and Z {Z.shape} must have the same shape")
    return dA * (Z > 0)


# ----------------------------------------------------------------------------- softmax + loss
def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p_nc = s_nc − log Σ_k exp(s_nk), row by row, without overflow.

    Subtracting the row maximum m_n first changes nothing mathematically (it cancels) but
    keeps exp() from overflowing: log Σ_k exp(s_nk) = m_n + log Σ_k exp(s_nk − m_n).
    logits: (N, C) -> (N, C).
    """
    _array(logits, "logits", 2)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """p_nc = exp(s_nc) / Σ_k exp(s_nk), row by row (rows sum to 1). logits: (N, C) -> (N, C)."""
    return np.exp(log_softmax(logits))


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

        L = (1/N) Σ_n −log p_{n, y_n},    ∂L/∂s_nc = (p_nc − 1[c = y_n]) / N

    logits: (N, C) float, y: (N,) ints in [0, C) -> (loss: float, dlogits: (N, C)).
    """
    _array(logits, "logits", 2)
    n, c = logits.shape
    if n == 0:
        raise ValueError("softmax_cross_entropy needs at least one example")
    y = _labels(y, n, c)
    logp = log_softmax(logits)
    rows = np.arange(n)
    loss = -logp[rows, y].mean()             # L = −(1/N) Σ_n log p_{n, y_n}
    dlogits = np.exp(logp)                   # p
    dlogits[rows, y] -= 1                    # p − one_hot(y)
    dlogits /= n                             # the mean over the batch divides by N
    return float(loss), dlogits


# ----------------------------------------------------------------------------- the network
def mlp_forward(params: Params, X: np.ndarray):
    """Forward pass. X: (N, D0) -> (logits (N, DL), cache).

    ``cache`` keeps what the backward pass needs: {"A0": X, "Z1": ..., "A1": ..., "ZL": logits}
    (A_l = relu(Z_l) for the hidden layers).
    """
    L = num_layers(params)
    _array(X, "X", 2)
    if X.shape[1] != params["W1"].shape[0]:
        raise ValueError(f"X has {X.shape[1]} features but W1 expects {params['W1'].shape[0]}")
    cache = {"A0": X}
    A = X
    for l in range(1, L + 1):
        Z = linear_forward(A, params[f"W{l}"], params[f"b{l}"])   # Z_l = A_{l-1} W_l + b_l
        cache[f"Z{l}"] = Z
        if l < L:
            A = cache[f"A{l}"] = relu(Z)                          # A_l = relu(Z_l)
    return cache[f"Z{L}"], cache


def mlp_backward(params: Params, cache: dict, dlogits: np.ndarray) -> Params:
    """Backward pass: from dlogits = ∂L/∂Z_L (N, DL) to the gradient of every parameter.

    Walks the layers from L down to 1:
        dW_l, db_l, dA_{l-1} from linear_backward(dZ_l, A_{l-1}, W_l)
        dZ_{l-1} = relu_backward(dA_{l-1}, Z_{l-1})
    Returns {"W1": (D0, D1), "b1": (D1,), ...}: the same keys and shapes as ``params``.
    """
    L = num_layers(params)
    grads: Params = {}
    dZ = dlogits
    for l in range(L, 0, -1):
        dA_prev, grads[f"W{l}"], grads[f"b{l}"] = linear_backward(dZ, cache[f"A{l - 1}"], params[f"W{l}"])
        if l > 1:
            dZ = relu_backward(dA_prev, cache[f"Z{l - 1}"])
    return {k: grads[k] for k in params}     # in the order of params


def mlp_loss_and_grads(params: Params, X: np.ndarray, y: np.ndarray):
    """Forward, loss and backward in one call: (loss: float, grads: dict like params)."""
    logits, cache = mlp_forward(params, X)
    loss, dlogits = softmax_cross_entropy(logits, y)
    return loss, mlp_backward(params, cache, dlogits)


def sgd_step(params: Params, grads: Params, lr: float) -> Params:
    """One step of gradient descent, in place: θ ← θ − lr · ∂L/∂θ for every parameter.
    Returns ``params`` (the same dict)."""
    if set(grads) != set(params):
        raise ValueError(f"grads has keys {sorted(grads)} but params has {sorted(params)}")
    if not isinstance(lr, Real) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    for k in params:
        params[k] -= lr * grads[k]
    return params


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose largest logit is the label. logits: (N, C), y: (N,)."""
    return float((np.argmax(logits, axis=1) == y).mean())


def numerical_gradients(params: Params, X: np.ndarray, y: np.ndarray, eps: float = 1e-6) -> Params:
    """Central-difference gradient of the loss with respect to every parameter (slow: two
    forward passes per number; for gradient checks on tiny networks, in float64).

        ∂L/∂θ_i ≈ (L(θ + ε e_i) − L(θ − ε e_i)) / (2ε)
    """
    def loss() -> float:
        return softmax_cross_entropy(mlp_forward(params, X)[0], y)[0]

    grads: Params = {}
    for k, p in params.items():
        g = np.zeros_like(p)
        flat, gflat = p.reshape(-1), g.reshape(-1)       # views: editing flat edits p
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            up = loss()
            flat[i] = old - eps
            down = loss()
            flat[i] = old                                 # put it back
            gflat[i] = (up - down) / (2 * eps)
        grads[k] = g
    return grads


# ----------------------------------------------------------------------------- a small wrapper
class NumpyMLP:
    """The functions above behind ``fit`` / ``predict``.

        >>> net = NumpyMLP([256, 128, 10], seed=0)
        >>> history = net.fit(X, y, epochs=20, batch_size=32, lr=0.1, X_val=X_test, y_val=y_test)
        >>> net.predict(X_test)       # (N,) class indices
    """

    def __init__(self, sizes: Sequence[int], seed: int = 0, dtype=np.float32):
        self.sizes = list(sizes)
        self.params = init_mlp(self.sizes, seed=seed, dtype=dtype)

    def logits(self, X: np.ndarray) -> np.ndarray:
        """(N, D0) -> (N, DL)."""
        return mlp_forward(self.params, X.astype(self.params["W1"].dtype, copy=False))[0]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(N, D0) -> (N,) the class with the largest logit."""
        return np.argmax(self.logits(X), axis=1)

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        return accuracy(self.logits(X), y)

    def fit(self, X: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int = 32,
            lr: float = 0.1, seed: int = 0, X_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None,
            callback: Callable[[int, "NumpyMLP"], None] | None = None) -> dict[str, list[float]]:
        """Mini-batch SGD: each epoch visits the examples in a new random order (fixed by
        ``seed``) in batches of ``batch_size``; one :func:`sgd_step` per batch.

        Returns the history: "loss" (one value per step), "train_acc" and, with validation
        data, "val_acc" (one value per epoch). ``callback(epoch, self)`` runs after each epoch.
        """
        X = _array(X, "X", 2).astype(self.params["W1"].dtype, copy=False)
        y = _labels(y, len(X), self.sizes[-1])
        if not isinstance(epochs, Integral) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        if not isinstance(batch_size, Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        rng = np.random.default_rng(seed)
        history: dict[str, list[float]] = {"loss": [], "train_acc": []}
        if X_val is not None:
            history["val_acc"] = []
        for epoch in range(epochs):
            order = rng.permutation(len(X))
            for start in range(0, len(X), batch_size):
                idx = order[start:start + batch_size]
                loss, grads = mlp_loss_and_grads(self.params, X[idx], y[idx])
                sgd_step(self.params, grads, lr)
                history["loss"].append(loss)
            history["train_acc"].append(self.accuracy(X, y))
            if X_val is not None:
                history["val_acc"].append(self.accuracy(X_val, y_val))
            if callback is not None:
                callback(epoch, self)
        return history
