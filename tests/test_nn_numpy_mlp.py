"""Unit tests of course_lib.nn.numpy_mlp: gradients against central differences and against
torch.autograd, shapes and dtypes, clear errors, and training that lowers the loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.nn.numpy_mlp import (NumpyMLP, init_mlp, linear_backward, log_softmax, mlp_backward, mlp_forward,
                                     mlp_loss_and_grads, numerical_gradients, relu_backward, sgd_step, softmax,
                                     softmax_cross_entropy)


def _data(n=6, d=5, c=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, c, n)


def _torch_loss_and_grads(params, X, y):
    """The same network in PyTorch; autograd gives the gradients."""
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    L = len(params) // 2
    a = torch.tensor(X)
    for l in range(1, L + 1):
        a = a @ tp[f"W{l}"] + tp[f"b{l}"]
        if l < L:
            a = torch.relu(a)
    loss = F.cross_entropy(a, torch.tensor(y))
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in tp.items()}


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("sizes", [[5, 4], [5, 7, 4], [5, 6, 3, 4]])
def test_gradients_match_central_differences(sizes):
    X, y = _data(d=sizes[0], c=sizes[-1], seed=len(sizes))
    params = init_mlp(sizes, seed=1)
    for k in params:
        if k.startswith("b"):        # non-zero biases, so their gradients are exercised fully
            params[k] += 0.1 * np.arange(params[k].size)
    _, grads = mlp_loss_and_grads(params, X, y)
    numeric = numerical_gradients(params, X, y)
    for k in params:
        np.testing.assert_allclose(grads[k], numeric[k], rtol=1e-6, atol=1e-8, err_msg=k)


@pytest.mark.parametrize("sizes", [[5, 4], [5, 8, 8, 4]])
def test_loss_and_gradients_match_torch_autograd(sizes):
    X, y = _data(n=9, d=sizes[0], c=sizes[-1], seed=7)
    params = init_mlp(sizes, seed=3)
    loss, grads = mlp_loss_and_grads(params, X, y)
    want_loss, want = _torch_loss_and_grads(params, X, y)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    assert list(grads) == list(params)
    for k in params:
        np.testing.assert_allclose(grads[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_pieces_match_torch():
    rng = np.random.default_rng(0)
    X, W, dZ = rng.standard_normal((4, 3)), rng.standard_normal((3, 2)), rng.standard_normal((4, 2))
    Xt, Wt = torch.tensor(X, requires_grad=True), torch.tensor(W, requires_grad=True)
    bt = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    (Xt @ Wt + bt).backward(torch.tensor(dZ))
    for got, want in zip(linear_backward(dZ, X, W), (Xt.grad, Wt.grad, bt.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-12)
    Z = np.array([[-1.0, 0.0, 2.0]])
    np.testing.assert_array_equal(relu_backward(np.array([[5.0, 6.0, 7.0]]), Z), [[0.0, 0.0, 7.0]])
    logits = rng.standard_normal((5, 6))
    np.testing.assert_allclose(log_softmax(logits), F.log_softmax(torch.tensor(logits), 1).numpy(),
                               rtol=1e-12)


# ----------------------------------------------------------------------------- softmax
def test_softmax_survives_huge_logits_and_rows_sum_to_one():
    logits = np.array([[1000.0, 0.0, -1000.0], [5.0, 5.0, 5.0]])
    p = softmax(logits)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[1], 1 / 3)
    loss, dlogits = softmax_cross_entropy(logits, np.array([0, 2]))
    assert loss == pytest.approx(np.log(3) / 2)
    np.testing.assert_allclose(dlogits.sum(axis=1), 0.0, atol=1e-15)   # p − onehot sums to 0


def test_loss_at_uniform_logits_is_log_num_classes():
    loss, _ = softmax_cross_entropy(np.zeros((3, 10)), np.array([1, 4, 9]))
    assert loss == pytest.approx(np.log(10))


# ----------------------------------------------------------------------------- shapes and dtypes
def test_forward_shapes_cache_and_float32():
    params = init_mlp([5, 7, 3], seed=0, dtype=np.float32)
    X = np.ones((2, 5), dtype=np.float32)
    logits, cache = mlp_forward(params, X)
    assert logits.shape == (2, 3) and logits.dtype == np.float32
    assert sorted(cache) == ["A0", "A1", "Z1", "Z2"]
    grads = mlp_backward(params, cache, softmax_cross_entropy(logits, np.array([0, 2]))[1])
    assert {k: (g.shape, g.dtype) for k, g in grads.items()} == {
        k: (p.shape, p.dtype) for k, p in params.items()}


def test_init_is_seeded_and_he_scaled():
    a, b = init_mlp([400, 300, 2], seed=5), init_mlp([400, 300, 2], seed=5)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["W1"], init_mlp([400, 300, 2], seed=6)["W1"])
    assert a["W1"].std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    assert not a["b1"].any()


@pytest.mark.parametrize("call, message", [
    (lambda: init_mlp([5]), "at least two"),
    (lambda: mlp_forward(init_mlp([5, 3]), np.ones((2, 4))), "4 features"),
    (lambda: mlp_forward({"W1": np.ones((2, 2))}, np.ones((1, 2))), "keys W1, b1"),
    (lambda: mlp_forward(init_mlp([2, 3]), torch.ones(1, 2)), "NumPy array"),
    (lambda: softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3])), r"\[0, 3\)"),
    (lambda: softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0])), "integer"),
    (lambda: linear_backward(np.ones((2, 3)), np.ones((2, 4)), np.ones((4, 2))), "do not match"),
    (lambda: sgd_step(init_mlp([2, 3]), {"W1": 0}, 0.1), "keys"),
])
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# ----------------------------------------------------------------------------- training
def test_sgd_step_moves_against_the_gradient_in_place():
    params = {"W1": np.ones((2, 2)), "b1": np.zeros(2)}
    same = sgd_step(params, {"W1": np.full((2, 2), 2.0), "b1": np.ones(2)}, lr=0.25)
    assert same is params
    np.testing.assert_allclose(params["W1"], 0.5)
    np.testing.assert_allclose(params["b1"], -0.25)


def test_training_lowers_the_loss_and_learns_a_separable_task():
    rng = np.random.default_rng(0)
    centres = 3 * rng.standard_normal((3, 4))
    y = rng.integers(0, 3, 300)
    X = centres[y] + rng.standard_normal((300, 4))
    net = NumpyMLP([4, 16, 3], seed=0)
    first = softmax_cross_entropy(net.logits(X), y)[0]
    history = net.fit(X, y, epochs=15, batch_size=30, lr=0.1, X_val=X, y_val=y)
    last = softmax_cross_entropy(net.logits(X), y)[0]
    assert last < 0.3 * first
    assert len(history["loss"]) == 15 * 10 and len(history["val_acc"]) == 15
    assert history["val_acc"][-1] > 0.9
    again = NumpyMLP([4, 16, 3], seed=0)
    assert again.fit(X, y, epochs=15, batch_size=30, lr=0.1)["loss"] == history["loss"]   # seeded
    assert net.predict(X[:5]).shape == (5,)
