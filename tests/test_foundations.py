"""Unit tests of course_lib.foundations.autograd and course_lib.foundations.probability."""
from __future__ import annotations

import math
import random

import pytest
import torch

from course_lib.foundations.autograd import Value, gradient_descent, mlp2_forward_backward, numerical_gradient
from course_lib.foundations.probability import (entropy_normal, exponential_icdf, gaussian_log_prob, inverse_cdf_sample,
                                                kl_monte_carlo, kl_normal, mvn_log_prob, reparameterize)

# ----------------------------------------------------------------------------- Value
# Each op works on both Value and torch tensors, so one random program builds twin graphs.
_UNARY = {
    "tanh": lambda a: a.tanh(),
    "exp": lambda a: (a * 0.3).exp(),
    "relu": lambda a: a.relu(),
    "square": lambda a: a ** 2,
    "cube": lambda a: a ** 3,
    "neg": lambda a: -a,
    "log": lambda a: (a * a + 1.0).log(),
    "recip": lambda a: 1.0 / (a * a + 0.5),
}
_BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b * b + 1.0),
    "radd": lambda a, b: 2.0 + a - b * 0.5,
}


def _random_program(rng: random.Random, num_inputs: int, num_ops: int) -> list:
    prog = []
    for i in range(num_ops):
        n_avail = num_inputs + i
        if rng.random() < 0.5:
            prog.append((rng.choice(sorted(_UNARY)), rng.randrange(n_avail), None))
        else:
            prog.append((rng.choice(sorted(_BINARY)), rng.randrange(n_avail),
                         rng.randrange(n_avail)))
    return prog


def _run(prog: list, inputs: list):
    nodes = list(inputs)
    for name, i, j in prog:
        nodes.append(_UNARY[name](nodes[i]) if j is None else _BINARY[name](nodes[i], nodes[j]))
    out = nodes[-1]
    for extra in nodes[-4:-1]:          # every input may matter: sum the last few nodes
        out = out + extra
    return out


@pytest.mark.parametrize("seed", range(12))
def test_value_matches_torch_autograd(seed):
    rng = random.Random(seed)
    xs = [rng.uniform(-1.5, 1.5) for _ in range(4)]
    prog = _random_program(rng, len(xs), num_ops=10)
    vals = [Value(x) for x in xs]
    out_v = _run(prog, vals)
    out_v.backward()
    ts = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in xs]
    out_t = _run(prog, ts)
    out_t.backward()
    assert out_v.data == pytest.approx(out_t.item(), rel=1e-10, abs=1e-12)
    for v, t in zip(vals, ts):
        want = 0.0 if t.grad is None else t.grad.item()
        assert v.grad == pytest.approx(want, rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("name", sorted(_UNARY) + sorted(_BINARY))
def test_each_op_matches_torch(name):
    for x0, y0 in [(-1.3, 0.7), (-0.2, -1.1), (0.4, 2.0), (1.7, -0.6)]:
        xv, yv = Value(x0), Value(y0)
        xt, yt = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (x0, y0))
        if name in _UNARY:
            out_v, out_t = _UNARY[name](xv), _UNARY[name](xt)
        else:
            out_v, out_t = _BINARY[name](xv, yv), _BINARY[name](xt, yt)
        out_v.backward()
        out_t.backward()
        assert out_v.data == pytest.approx(out_t.item(), rel=1e-12, abs=1e-12), name
        assert xv.grad == pytest.approx(xt.grad.item(), rel=1e-10, abs=1e-12), name
        if name in _BINARY:
            assert yv.grad == pytest.approx(yt.grad.item(), rel=1e-10, abs=1e-12), name


def test_value_reuse_accumulates_and_backward_resets():
    a = Value(3.0)
    out = a * a + a             # d/da = 2a + 1 = 7
    out.backward()
    assert a.grad == pytest.approx(7.0)
    out.backward()              # a second call gives the same, not double
    assert a.grad == pytest.approx(7.0)


def test_value_sigmoid_and_deep_chain():
    x = Value(0.3)
    s = x.sigmoid()
    s.backward()
    sig = 1 / (1 + math.exp(-0.3))
    assert x.grad == pytest.approx(sig * (1 - sig))
    y = Value(1.0)
    z = y
    for _ in range(3000):       # deeper than Python's recursion limit
        z = z * 1.0
    z.backward()
    assert y.grad == pytest.approx(1.0)


def test_value_bad_inputs():
    with pytest.raises(TypeError):
        Value("3")
    with pytest.raises(TypeError):
        Value(2.0) ** Value(2.0)
    with pytest.raises(TypeError):
        Value(2.0) + "x"
    with pytest.raises(ValueError):
        Value(-1.0).log()
    with pytest.raises(ValueError):
        Value(-2.0) ** 0.5
    with pytest.raises(ZeroDivisionError):
        Value(1.0) / Value(0.0)


# ----------------------------------------------------------------------------- numerical gradient
def test_numerical_gradient_matches_autograd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)

    def f(t):
        return (torch.sin(t) * w).sum() + (t ** 2).sum() * 0.1 + torch.tanh(t).prod()

    num = numerical_gradient(f, x)
    xa = x.clone().requires_grad_(True)
    f(xa).backward()
    assert num.shape == x.shape and num.dtype == torch.float64
    torch.testing.assert_close(num, xa.grad, rtol=1e-6, atol=1e-8)
    assert torch.equal(x, xa.detach())           # x was not modified


def test_numerical_gradient_float32_input_and_bad_inputs():
    x = torch.tensor([1.0, -2.0])                 # float32 in, float64 out
    num = numerical_gradient(lambda t: (t ** 3).sum(), x)
    torch.testing.assert_close(num, torch.tensor([3.0, 12.0], dtype=torch.float64),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="scalar"):
        numerical_gradient(lambda t: t * 2, x)
    with pytest.raises(ValueError, match="eps"):
        numerical_gradient(lambda t: t.sum(), x, eps=0.0)
    with pytest.raises(TypeError):
        numerical_gradient(lambda t: t.sum(), [1.0, 2.0])


# ----------------------------------------------------------------------------- tiny network
@pytest.mark.parametrize("N,D,H,O", [(5, 2, 8, 1), (7, 3, 4, 2), (1, 1, 1, 1)])
def test_mlp2_matches_autograd(N, D, H, O):
    g = torch.Generator().manual_seed(N * 100 + D * 10 + H)
    params = {
        "W1": torch.randn(D, H, generator=g, dtype=torch.float64),
        "b1": torch.randn(H, generator=g, dtype=torch.float64),
        "W2": torch.randn(H, O, generator=g, dtype=torch.float64),
        "b2": torch.randn(O, generator=g, dtype=torch.float64),
    }
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randn(N, O, generator=g, dtype=torch.float64)
    loss, grads = mlp2_forward_backward(x, y, **params)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    y_hat = torch.tanh(x @ leaves["W1"] + leaves["b1"]) @ leaves["W2"] + leaves["b2"]
    loss_t = torch.nn.functional.mse_loss(y_hat, y)
    loss_t.backward()
    assert loss.dim() == 0 and not loss.requires_grad
    torch.testing.assert_close(loss, loss_t.detach())
    assert set(grads) == {"W1", "b1", "W2", "b2"}
    for k in params:
        assert grads[k].shape == params[k].shape
        torch.testing.assert_close(grads[k], leaves[k].grad)


def test_mlp2_bad_shapes():
    x, y = torch.randn(4, 2), torch.randn(4, 1)
    W1, b1, W2, b2 = torch.randn(2, 3), torch.randn(3), torch.randn(3, 1), torch.randn(1)
    with pytest.raises(ValueError, match="W1"):
        mlp2_forward_backward(x, y, torch.randn(3, 3), b1, W2, b2)
    with pytest.raises(ValueError, match="y"):
        mlp2_forward_backward(x, torch.randn(4), W1, b1, W2, b2)
    with pytest.raises(TypeError):
        mlp2_forward_backward(x.numpy(), y, W1, b1, W2, b2)


# ----------------------------------------------------------------------------- gradient descent
def test_gradient_descent_on_a_bowl():
    # f = 1/2 (x^2 + 4 y^2): each step multiplies x by (1 - lr) and y by (1 - 4 lr)
    path = gradient_descent(lambda p: p * torch.tensor([1.0, 4.0]), [1.0, 1.0], lr=0.1, steps=5)
    assert path.shape == (6, 2)
    torch.testing.assert_close(path[-1], torch.tensor([0.9 ** 5, 0.6 ** 5]))
    with pytest.raises(ValueError):
        gradient_descent(lambda p: p, [1.0], lr=-1.0, steps=3)
    with pytest.raises(ValueError):
        gradient_descent(lambda p: p, [1.0], lr=0.1, steps=2.5)
    with pytest.raises(ValueError, match="shape"):
        gradient_descent(lambda p: p.sum(), [1.0, 2.0], lr=0.1, steps=1)


# ----------------------------------------------------------------------------- probability
def _gauss_params(seed: int, shape=(6,)):
    g = torch.Generator().manual_seed(seed)
    mu_p, mu_q = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    sigma_p = torch.rand(shape, generator=g) * 2 + 0.2
    sigma_q = torch.rand(shape, generator=g) * 2 + 0.2
    return mu_p, sigma_p, mu_q, sigma_q


def test_gaussian_log_prob_matches_torch():
    mu_p, sigma_p, x, _ = _gauss_params(0, (5, 3))
    want = torch.distributions.Normal(mu_p, sigma_p).log_prob(x)
    torch.testing.assert_close(gaussian_log_prob(x, mu_p, sigma_p), want)
    # broadcasting: x (5, 1) against parameters (3,)
    x = torch.randn(5, 1)
    got = gaussian_log_prob(x, mu_p[0], sigma_p[0])
    torch.testing.assert_close(got, torch.distributions.Normal(mu_p[0], sigma_p[0]).log_prob(x))
    assert got.shape == (5, 3)


def test_mvn_log_prob_matches_torch():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 3, generator=g, dtype=torch.float64)
    cov = A @ A.T + 0.5 * torch.eye(3, dtype=torch.float64)
    mean = torch.randn(3, generator=g, dtype=torch.float64)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    want = torch.distributions.MultivariateNormal(mean, cov).log_prob(x)
    torch.testing.assert_close(mvn_log_prob(x, mean, cov), want)
    with pytest.raises(ValueError, match="positive definite"):
        mvn_log_prob(x, mean, -cov)


def test_kl_normal_matches_torch_distributions():
    mu_p, sigma_p, mu_q, sigma_q = _gauss_params(2)
    want = torch.distributions.kl_divergence(torch.distributions.Normal(mu_p, sigma_p),
                                             torch.distributions.Normal(mu_q, sigma_q))
    torch.testing.assert_close(kl_normal(mu_p, sigma_p, mu_q, sigma_q), want)
    assert kl_normal(0.0, 1.0, 0.0, 1.0).item() == pytest.approx(0.0, abs=1e-7)
    assert (kl_normal(mu_p, sigma_p, mu_q, sigma_q) >= 0).all()
    assert kl_normal(torch.zeros(4, 1), 1.0, torch.zeros(3), 2.0).shape == (4, 3)


def test_kl_normal_matches_monte_carlo():
    mu_p, sigma_p, mu_q, sigma_q = (torch.tensor(v, dtype=torch.float64) for v in
                                    ([0.0, 1.0, -0.5], [1.0, 0.5, 2.0],
                                     [0.5, -1.0, 0.0], [1.5, 1.0, 1.0]))
    g = torch.Generator().manual_seed(3)
    mc = kl_monte_carlo(mu_p, sigma_p, mu_q, sigma_q, num_samples=200_000, generator=g)
    exact = kl_normal(mu_p, sigma_p, mu_q, sigma_q)
    assert mc.shape == exact.shape
    torch.testing.assert_close(mc, exact, rtol=0.03, atol=0.01)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_sigma_raises(bad):
    for fn in (lambda s: kl_normal(0.0, s, 0.0, 1.0), lambda s: kl_normal(0.0, 1.0, 0.0, s),
               lambda s: gaussian_log_prob(0.0, 0.0, s), lambda s: entropy_normal(s),
               lambda s: reparameterize(0.0, torch.tensor([1.0, s]), 0.0)):
        with pytest.raises(ValueError, match="sigma"):
            fn(bad)


def test_reparameterize_gradients_flow():
    mu = torch.tensor(1.5, requires_grad=True)
    sigma = torch.tensor(0.7, requires_grad=True)
    eps = torch.randn(200_000, generator=torch.Generator().manual_seed(4))
    x = reparameterize(mu, sigma, eps)
    (x ** 2).mean().backward()             # E[x^2] = mu^2 + sigma^2
    assert mu.grad.item() == pytest.approx(2 * 1.5, rel=0.02)
    assert sigma.grad.item() == pytest.approx(2 * 0.7, rel=0.02)


def test_entropy_and_inverse_cdf():
    sigma = torch.tensor([0.1, 1.0, 3.0])
    torch.testing.assert_close(entropy_normal(sigma),
                               torch.distributions.Normal(0.0, sigma).entropy())
    g = torch.Generator().manual_seed(5)
    x = inverse_cdf_sample(lambda u: exponential_icdf(u, rate=2.0), 100_000, generator=g)
    assert x.shape == (100_000,) and (x >= 0).all()
    assert x.mean().item() == pytest.approx(0.5, rel=0.02)     # mean of Exp(rate) is 1/rate
    with pytest.raises(ValueError):
        exponential_icdf(torch.rand(3), rate=0.0)
