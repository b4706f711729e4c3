"""A2 (backpropagation from scratch): the graded checks accept right answers, reject the usual
mistakes with a specific message, refuse answers that call course_lib.nn.numpy_mlp, and the
grader's sandboxed re-check catches a reference call too."""
from __future__ import annotations

import numpy as np
import pytest

from course_lib.grading import a2
from course_lib.nn import numpy_mlp as ref
from grading import assert_check_fails, assert_stub_not_attempted, grade_edited_solution


# ----------------------------------------------------------------------------- answers
def linear_backward(dZ, X, W):
    return dZ @ W.T, X.T @ dZ, dZ.sum(axis=0)


def linear_backward_mean_bias(dZ, X, W):
    return dZ @ W.T, X.T @ dZ, dZ.mean(axis=0)


def linear_backward_wrong_order(dZ, X, W):
    return X.T @ dZ, dZ @ W.T, dZ.sum(axis=0)


def relu_backward(dA, Z):
    return np.where(Z > 0, dA, 0.0)


def relu_backward_slope_one_at_zero(dA, Z):
    return dA * (Z >= 0)


def softmax_cross_entropy(logits, y):
    n = len(y)
    s = logits - logits.max(axis=1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    d = np.exp(logp)
    d[np.arange(n), y] -= 1
    return -logp[np.arange(n), y].mean(), d / n


def softmax_cross_entropy_naive(logits, y):
    n = len(y)
    with np.errstate(all="ignore"):
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        d = p.copy()
        d[np.arange(n), y] -= 1
        return -np.log(p[np.arange(n), y]).mean(), d / n


def softmax_cross_entropy_sum(logits, y):          # forgets to average the gradient
    loss, d = softmax_cross_entropy(logits, y)
    return loss, d * len(y)


def softmax_cross_entropy_calls_reference(logits, y):
    return ref.softmax_cross_entropy(logits, y)


def _mlp(params, X, y, relu_on_logits=False):
    L = len(params) // 2
    A, saved = X, []
    for l in range(1, L + 1):
        Z = A @ params[f"W{l}"] + params[f"b{l}"]
        saved.append((A, Z))
        A = np.maximum(Z, 0) if (l < L or relu_on_logits) else Z
    loss, dZ = softmax_cross_entropy(A, y)
    if relu_on_logits:
        dZ = relu_backward(dZ, saved[-1][1])
    grads = {}
    for l in range(L, 0, -1):
        dA, grads[f"W{l}"], grads[f"b{l}"] = linear_backward(dZ, saved[l - 1][0], params[f"W{l}"])
        if l > 1:
            dZ = relu_backward(dA, saved[l - 2][1])
    return loss, grads


def mlp(params, X, y):
    return _mlp(params, X, y)


def mlp_relu_on_logits(params, X, y):
    return _mlp(params, X, y, relu_on_logits=True)


def mlp_two_layers_only(params, X, y):               # fits the visible test, not the hidden ones
    grads = {}
    Z1 = X @ params["W1"] + params["b1"]
    A1 = np.maximum(Z1, 0)
    loss, dZ2 = softmax_cross_entropy(A1 @ params["W2"] + params["b2"], y)
    dA1, grads["W2"], grads["b2"] = linear_backward(dZ2, A1, params["W2"])
    _, grads["W1"], grads["b1"] = linear_backward(relu_backward(dA1, Z1), X, params["W1"])
    return loss, grads


def mlp_uses_library_backward(params, X, y):
    logits, cache = ref.mlp_forward(params, X)
    loss, d = softmax_cross_entropy(logits, y)
    return loss, ref.mlp_backward(params, cache, d)


# ----------------------------------------------------------------------------- checks
def test_right_answers_pass_visible_and_hidden_settings(capsys):
    a2.check_linear_backward(linear_backward)
    a2.check_linear_backward(linear_backward, sizes=[(1, 3, 2), (6, 1, 4), (3, 5, 1)])
    a2.check_relu_backward(relu_backward)
    a2.check_relu_backward(relu_backward, shapes=[(3, 5), (2, 3, 4), (7,)], zeros=0.3)
    a2.check_softmax_cross_entropy(softmax_cross_entropy)
    a2.check_softmax_cross_entropy(softmax_cross_entropy, sizes=[(1, 3), (6, 5)], scale=500.0)
    a2.check_mlp_loss_and_grads(mlp)
    a2.check_mlp_loss_and_grads(mlp, architectures=[(4, 3), (5, 7, 6, 3)], batch=1)
    assert capsys.readouterr().out.count("✅") == 8


@pytest.mark.parametrize("check, fn, kwargs, words", [
    (a2.check_linear_backward, linear_backward_mean_bias, {}, ["linear_backward", "output[2]", "differ"]),
    (a2.check_linear_backward, linear_backward_wrong_order, {}, ["output[0] has shape"]),
    (a2.check_relu_backward, relu_backward_slope_one_at_zero, {"zeros": 0.3}, ["relu_backward", "differ"]),
    (a2.check_softmax_cross_entropy, softmax_cross_entropy_naive, {"scale": 500.0}, ["NaN"]),
    (a2.check_softmax_cross_entropy, softmax_cross_entropy_sum, {}, ["output[1]", "differ"]),
    (a2.check_mlp_loss_and_grads, mlp_relu_on_logits, {}, ["mlp_loss_and_grads", "differ"]),
    (a2.check_mlp_loss_and_grads, mlp_two_layers_only, {"architectures": [(5, 7, 6, 3)]},
     ["mlp_loss_and_grads", "differ"]),
    (a2.check_softmax_cross_entropy, softmax_cross_entropy_calls_reference, {},
     ["earns nothing", "course_lib.nn.numpy_mlp.softmax_cross_entropy"]),
    (a2.check_mlp_loss_and_grads, mlp_uses_library_backward, {},
     ["earns nothing", "course_lib.nn.numpy_mlp.mlp_"]),
])
def test_wrong_answers_fail_with_a_specific_message(check, fn, kwargs, words):
    assert_check_fails(check, fn, words, **kwargs)


def test_a_stub_is_not_attempted_and_scores_nothing():
    assert_stub_not_attempted(a2.check_mlp_loss_and_grads)


def test_the_answer_gets_numpy_arrays_and_may_return_a_numpy_scalar_loss():
    seen = []

    def spy(logits, y):
        seen.append((type(logits), logits.dtype, y.dtype))
        loss, d = softmax_cross_entropy(logits, y)
        return np.float64(loss), d
    a2.check_softmax_cross_entropy(spy, trials=1)
    assert seen == [(np.ndarray, np.float64, np.int64)]


# ----------------------------------------------------------------------------- the grader's re-check
def test_sandboxed_recheck_catches_a_call_to_numpy_mlp(tmp_path, monkeypatch):
    """Part 2 calls the reference through an alias: the re-check (a separate, sandboxed process)
    must notice, so Part 2 scores 0 and the submission is flagged; the other parts keep their points."""
    from course_lib.grading.pipeline import REVIEW

    source = ("from course_lib.nn import numpy_mlp as helpers\n\n"
              "def relu_backward(dA, Z):\n"
              "    return helpers.relu_backward(dA, Z)\n")
    outcome = grade_edited_solution("a2_backprop", "p2_answer", source, tmp_path, monkeypatch)
    assert outcome.parts["p2_visible"] == 0 and outcome.parts["p2_hidden"] == 0, outcome.parts
    # Part 4 uses the learner's relu_backward, which calls the reference: no points there either
    assert outcome.parts["p4_visible"] == 0 and outcome.parts["p4_hidden"] == 0, outcome.parts
    assert outcome.score == outcome.max_score - 2 - 4, outcome.parts
    assert outcome.status == REVIEW
    # the re-check itself names the reference (numpy_mlp's code is known to the sandbox)
    assert any("relu_backward calls the course reference course_lib.nn.numpy_mlp.relu_backward" in r
               for r in outcome.reasons), outcome.reasons
    assert not any("passes when re-checked" in r for r in outcome.reasons), outcome.reasons
