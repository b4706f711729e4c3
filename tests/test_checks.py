"""course_lib.checks (learner self-checks) and the in-notebook half of grading: the A1 checks,
the guard against monkeypatching and the static audit of answer cells."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import course_lib.checks as checks
from course_lib.checks import CheckFailure, ReferenceCalled, call_forbidding, check, compare_outputs
from course_lib.foundations.autograd import numerical_gradient
from course_lib.foundations.probability import kl_normal
from course_lib.grading import a1, audit, guard


def _randn(g):
    return (torch.randn(4, 3, generator=g),)


# ----------------------------------------------------------------------------- compare_outputs
@pytest.mark.parametrize("got, want, words", [
    (torch.zeros(2, 3), torch.zeros(3, 2), ["shape (2, 3)", "(3, 2)"]),
    (torch.zeros(3, dtype=torch.int64), torch.zeros(3), ["dtype torch.int64"]),
    (torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]), ["1 NaN/inf"]),
    (torch.tensor([1.0, 2.5, 3.0]), torch.tensor([1.0, 2.0, 3.0]),
     ["1 of 3 values differ", "index (1,)", "got 2.5", "expected 2"]),
    (None, torch.zeros(1), ["None", "return"]),
    ({"a": torch.zeros(1)}, {"a": torch.zeros(1), "b": torch.zeros(1)}, ["keys ['a', 'b']"]),
    ((torch.zeros(1),), (torch.zeros(1), torch.zeros(1)), ["sequence of 2"]),
    ([1.0], torch.zeros(1), ["should be a torch.Tensor"]),
])
def test_compare_outputs_says_what_differs(got, want, words):
    msg = compare_outputs(got, want)
    assert msg is not None
    for word in words:
        assert word in msg, msg


def test_compare_outputs_accepts_close_values_and_arrays():
    assert compare_outputs(torch.ones(3) + 1e-7, torch.ones(3)) is None
    assert compare_outputs(np.ones(3), torch.ones(3, dtype=torch.float64)) is None
    assert compare_outputs(3, 3) is None


def test_exact_dtype_is_opt_in():
    a, b = torch.ones(2, dtype=torch.float32), torch.ones(2, dtype=torch.float64)
    assert compare_outputs(a, b) is None
    assert "dtype torch.float32, expected torch.float64" in compare_outputs(a, b, exact_dtype=True)


# ----------------------------------------------------------------------------- check
def test_check_reports_pass_fail_and_not_attempted(capsys):
    assert check(torch.tanh, torch.tanh, _randn)
    assert "✅" in capsys.readouterr().out
    result = check(torch.sigmoid, torch.tanh, _randn, verbose=False)
    assert not result and "values differ" in result.message
    def stub(x):
        raise NotImplementedError
    result = check(stub, torch.tanh, _randn, verbose=False)
    assert not result.attempted and "not attempted" in result.message
    result = check(lambda x: x.foo(), torch.tanh, _randn, verbose=False)
    assert "raised AttributeError" in result.message


def test_check_raise_on_fail():
    with pytest.raises(CheckFailure, match="values differ"):
        check(torch.sigmoid, torch.tanh, _randn, raise_on_fail=True, verbose=False)
    assert issubclass(CheckFailure, AssertionError)     # nbgrader scores it as a failure


@pytest.mark.parametrize("wrap", [
    lambda ref: ref,                                         # the reference itself
    lambda ref: (lambda f, x, eps=1e-6: ref(f, x, eps)),     # a wrapper
    lambda ref: functools.partial(ref),                      # a partial
])
def test_forbidden_reference_is_detected_however_it_is_reached(wrap):
    fn = wrap(numerical_gradient)
    with pytest.raises(ReferenceCalled, match="numerical_gradient"):
        call_forbidding(fn, (torch.sum, torch.ones(2)), forbid=[numerical_gradient])
    result = check(fn, numerical_gradient, lambda g: (torch.sum, torch.randn(3, generator=g)),
                   forbid=[numerical_gradient], verbose=False)
    assert not result and "earns nothing" in result.message


def test_comparisons_ignore_later_monkeypatching(monkeypatch):
    monkeypatch.setattr(torch, "isfinite", lambda x: torch.ones_like(x, dtype=torch.bool))
    monkeypatch.setattr(torch, "allclose", lambda *a, **k: True)
    assert compare_outputs(torch.tensor([float("nan")]), torch.tensor([1.0])) is not None
    assert compare_outputs(torch.tensor([2.0]), torch.tensor([1.0])) is not None


# ----------------------------------------------------------------------------- guard
def test_guard_restores_patched_library_functions():
    guard.take()
    real_allclose, real_abs = torch.allclose, torch.Tensor.abs
    real_compare = checks.compare_outputs
    try:
        torch.allclose = lambda *a, **k: True
        torch.Tensor.abs = lambda self: self
        checks.compare_outputs = lambda *a, **k: None
        found = guard.restore()
        assert {"torch.allclose", "torch.Tensor.abs", "course_lib.checks.compare_outputs"} <= set(found)
        assert torch.allclose is real_allclose and torch.Tensor.abs is real_abs
        assert checks.compare_outputs is real_compare
        assert guard.changed() == []
    finally:
        torch.allclose, checks.compare_outputs = real_allclose, real_compare
        if "abs" in vars(torch.Tensor):
            del torch.Tensor.abs


# ----------------------------------------------------------------------------- A1 checks
def _my_numerical_gradient(f, x, eps=1e-6):
    x = x.detach().double().clone()
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        step = torch.zeros_like(x)
        step.view(-1)[i] = eps
        grad.view(-1)[i] = (float(f(x + step)) - float(f(x - step))) / (2 * eps)
    return grad


def test_a1_checks_pass_for_correct_answers(capsys):
    a1.check_numerical_gradient(_my_numerical_gradient)
    a1.check_numerical_gradient(_my_numerical_gradient, seed=3, shapes=[(1,), (2, 1, 2)],
                                dtype=torch.float32, eps=1e-4)
    a1.check_mlp2_forward_backward(_manual_mlp, sizes=[(1, 2, 3, 1), (5, 3, 4, 2)])
    a1.check_kl_normal(lambda mp, sp, mq, sq: torch.log(sq / sp) + (sp ** 2 + (mp - mq) ** 2) / (2 * sq ** 2) - 0.5,
                       shapes=[((3, 1), (1, 4))])
    a1.check_gradient_descent(_manual_gd, steps=[0, 3], grad_fns=["rosenbrock_grad", "bowl_grad"])
    assert capsys.readouterr().out.count("✅") == 5


def _manual_mlp(x, y, W1, b1, W2, b2):
    h = torch.tanh(x @ W1 + b1)
    y_hat = h @ W2 + b2
    d = 2 * (y_hat - y) / y_hat.numel()
    da = (d @ W2.T) * (1 - h ** 2)
    return ((y_hat - y) ** 2).mean(), {"W1": x.T @ da, "b1": da.sum(0), "W2": h.T @ d, "b2": d.sum(0)}


def _manual_gd(grad_fn, x0, lr, steps):
    path = [x0.clone()]
    for _ in range(steps):
        path.append(path[-1] - lr * grad_fn(path[-1]))
    return torch.stack(path)


def test_a1_checks_fail_with_specific_messages():
    with pytest.raises(CheckFailure, match="dtype torch.float32, expected torch.float64"):
        a1.check_numerical_gradient(lambda f, x, eps=1e-6: _my_numerical_gradient(f, x, eps).float())
    with pytest.raises(CheckFailure, match="earns nothing"):
        a1.check_kl_normal(lambda *args: kl_normal(*args))
    with pytest.raises(CheckFailure, match="not attempted"):
        a1.check_gradient_descent(lambda *a: (_ for _ in ()).throw(NotImplementedError()))
    with pytest.raises(CheckFailure, match="shape"):
        a1.check_gradient_descent(lambda g, x0, lr, steps: _manual_gd(g, x0, lr, steps)[1:])


def test_a1_graded_check_puts_back_monkeypatched_torch(capsys):
    real = torch.allclose
    guard.take()
    try:
        torch.allclose = lambda *a, **k: True
        with pytest.raises(CheckFailure):
            a1.check_kl_normal(lambda mp, sp, mq, sq: torch.zeros_like(mp))
        assert torch.allclose is real
        assert "put back torch.allclose" in capsys.readouterr().out
    finally:
        torch.allclose = real


# ----------------------------------------------------------------------------- static audit
def _kinds(source: str, helpers=frozenset()) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in audit.inspect_cells([("p1_answer", source)], set(helpers)):
        found.setdefault(f.kind, []).append(f.message)
    return found


@pytest.mark.parametrize("source, kind, words", [
    ("import torch\ntorch.allclose = lambda *a, **k: True", "monkeypatch", "torch.allclose"),
    ("import torch as T\nT.Tensor.abs = None", "monkeypatch", "T.Tensor.abs"),
    ("import numpy as np\nsetattr(np, 'isclose', print)", "monkeypatch", "setattr"),
    ("import sys\nsys.modules['torch'] = None", "monkeypatch", "sys.modules"),
    ("import torch\ndel torch.isfinite", "monkeypatch", "torch.isfinite"),
    ("from course_lib.foundations.autograd import numerical_gradient", "reference", "course_lib.foundations"),
    ("from course_lib import foundations", "reference", "course_lib.foundations"),
    ("import course_lib.grading.a1 as g", "grader", "course_lib.grading"),
    ("def check_kl_normal(*a): pass", "helper", "check_kl_normal"),
    ("check_kl_normal = print", "helper", "check_kl_normal"),
    ("import os\nos._exit(1)", "risky", "os._exit"),
    ("get_ipython().set_custom_exc((Exception,), print)", "risky", "get_ipython"),
    ("import ctypes", "risky", "ctypes"),
    ("__import__('torch')", "risky", "__import__"),
    ("open('../../solutions/a1/a1.ipynb')", "path", "solutions/"),
    ("f = numerical_gradient.__code__", "risky", "__code__"),
])
def test_audit_flags(source, kind, words):
    found = _kinds(source, {"check_kl_normal"})
    assert kind in found, found
    assert any(words in m for m in found[kind]), found


def test_audit_leaves_ordinary_answers_alone():
    source = ('import math, sys, warnings\nimport torch\n%matplotlib inline\n!echo hi\n'
              'def kl(mu, s):\n    warnings.warn("careful")\n    print("x", file=sys.stderr)\n'
              '    x = torch.zeros(3)\n    x[0] = 1\n    return torch.log(s) + math.pi\n')
    assert audit.inspect_cells([("p3_answer", source)], {"check_kl_normal"}) == []


def test_helper_names_come_from_the_setup_imports():
    setup = "import torch\nfrom course_lib.grading.a1 import (check_kl_normal,\n    check_numerical_gradient)"
    assert audit.helper_names([setup]) == {"check_kl_normal", "check_numerical_gradient"}
