"""Graded checks of assignment A5 (Phase 3): GAN losses and the WGAN-GP gradient penalty.

Each ``check_*`` compares the learner's function with the course reference (:mod:`course_lib.models.gan`)
on random inputs and raises :class:`course_lib.checks.CheckFailure` when they differ, with a hint
when the answer matches a classic mistake (swapped labels, a sigmoid applied twice, a gradient
norm over the wrong dimensions, a penalty that cannot be back-propagated ...), see
:func:`course_lib.grading.graded.hinted_check`. The defaults are the visible tests of the
assignment; the hidden tests (in the instructor's source notebook only) call the same functions
with other seeds, shapes, dtypes and extreme logits.

The gradient-penalty checks hand the answer a :class:`Critic` whose input gradient comes out NaN
unless it was taken with ``torch.autograd.grad(..., create_graph=True)``: a penalty computed
without ``create_graph`` cannot be back-propagated into the critic's weights, and this way the
answer's *value* shows it, in the notebook and in the grader's sandboxed re-check alike.

    >>> check_g_loss_nonsaturating(g_loss_nonsaturating)
    ✅ g_loss_nonsaturating matches the reference on 3 random inputs
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.models import gan as _ref
from course_lib.grading.graded import hinted_check

__all__ = ["check_d_loss_nonsaturating", "check_g_loss_nonsaturating", "check_wgan_d_loss",
           "check_wgan_g_loss", "check_gradient_penalty", "check_critic_gradients", "Critic"]

# An A5 answer may call none of the GAN loss references (however it reaches them).
REFERENCES = (_ref.d_loss_minimax, _ref.d_loss_nonsaturating, _ref.g_loss_minimax,
              _ref.g_loss_nonsaturating, _ref.wgan_d_loss, _ref.wgan_g_loss, _ref.gradient_penalty)


def _cycle(options: Sequence, i: int):
    return options[i % len(options)]


def _tolerance(dtype: torch.dtype) -> dict:
    return dict(atol=1e-10, rtol=1e-9) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- the test critic
class _CreateGraphProbe(torch.autograd.Function):
    """Identity forward. Backward passes the gradient through when autograd is building a graph
    of the backward pass (``create_graph=True``) and makes it NaN otherwise."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad if torch.is_grad_enabled() else grad * float("nan")


class Critic(nn.Module):
    """A small smooth critic for the checks: ``x (B, ...) -> scores (B,)``,

        f(x) = tanh(flatten(x) W1 + b1) w2 + b2,

    whose input gradient is NaN unless taken with ``create_graph=True`` (see the module's doc).
    A module-level class, so a check can send it to a grading sandbox."""

    def __init__(self, features: int, hidden: int, generator: torch.Generator, dtype: torch.dtype):
        super().__init__()
        def randn(*shape, scale):
            return nn.Parameter(scale * torch.randn(*shape, generator=generator, dtype=dtype))
        self.W1 = randn(features, hidden, scale=1.5 / features ** 0.5)
        self.b1 = randn(hidden, scale=0.5)
        self.w2 = randn(hidden, scale=2.0 / hidden ** 0.5)
        self.b2 = randn(1, scale=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _CreateGraphProbe.apply(x.flatten(1))                       # (B, features)
        return torch.tanh(h @ self.W1 + self.b1) @ self.w2 + self.b2     # (B,)


def _critic_inputs(gen: torch.Generator, shape: Sequence[int], dtype: torch.dtype, hidden: int = 8):
    """(critic, real, fake, alpha) with real, fake: ``shape`` and alpha: (B,) in [0, 1]."""
    features = 1
    for s in shape[1:]:
        features *= s
    critic = Critic(features, hidden, gen, dtype)
    real = torch.randn(*shape, generator=gen, dtype=dtype)
    fake = torch.randn(*shape, generator=gen, dtype=dtype)
    alpha = torch.rand(shape[0], generator=gen, dtype=dtype)
    return critic, real, fake, alpha


def _per_sample(alpha: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """alpha (B,) -> (B, 1, ..., 1), broadcasting over the non-batch dims of ``like``."""
    return alpha.reshape(-1, *([1] * (like.dim() - 1)))


def _ref_gradient_penalty(critic, real, fake, alpha):
    """The library's penalty with the assignment's alpha (B,)."""
    return _ref.gradient_penalty(critic, real, fake, _per_sample(alpha, real))


def _ref_critic_gradients(critic, real, fake, alpha, lam):
    loss = (_ref.wgan_d_loss(critic(real), critic(fake))
            + lam * _ref_gradient_penalty(critic, real, fake, alpha))
    return torch.autograd.grad(loss, list(critic.parameters()))


# ----------------------------------------------------------------------------- parts 1 and 2
def _bce(logits, label: float):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def _log_sigmoid_naive(logits):
    return torch.log(torch.sigmoid(logits))


_D_MISTAKES = [
    (lambda r, f: _bce(r, 0.0) + _bce(f, 1.0),
     "the labels are swapped: real samples get label 1, fakes label 0"),
    (lambda r, f: _bce(torch.sigmoid(r), 1.0) + _bce(torch.sigmoid(f), 0.0),
     "the sigmoid is applied twice: binary_cross_entropy_with_logits takes the logits and applies "
     "the sigmoid itself"),
    (lambda r, f: 0.5 * (_bce(r, 1.0) + _bce(f, 0.0)),
     "add the two terms, each averaged over its own batch: L_D = BCE(real, 1) + BCE(fake, 0), "
     "no ½ (and not one mean over real and fakes together)"),
    (lambda r, f: F.binary_cross_entropy_with_logits(
        torch.cat([r, f]), torch.cat([torch.ones_like(r), torch.zeros_like(f)])),
     "average each term over its own batch and add the two: one mean over real and fakes "
     "together weighs them by their batch sizes (and halves the loss)"),
    (lambda r, f: -(_bce(r, 1.0) + _bce(f, 0.0)),
     "the sign is flipped: D maximises E[log D(x)] + E[log(1 − D(G(z)))], so the loss to "
     "minimise is its negative, BCE(real, 1) + BCE(fake, 0)"),
    (lambda r, f: -_log_sigmoid_naive(r).mean() - torch.log(1 - torch.sigmoid(f)).mean(),
     "log(sigmoid(l)) is unstable: for large logits sigmoid rounds to exactly 0 or 1 and the log "
     "gives -inf. Use F.binary_cross_entropy_with_logits (or F.logsigmoid)"),
    (lambda r, f: -torch.log(r).mean() - torch.log(1 - f).mean(),
     "logits are not probabilities: D(x) = sigmoid(logit); better, use "
     "F.binary_cross_entropy_with_logits"),
]

_G_MISTAKES = [
    (lambda f: -_bce(f, 0.0),
     "that is the saturating minimax loss mean log(1 − D(G(z))); the non-saturating loss is "
     "−mean log D(G(z)) = BCE(fake_logits, 1)"),
    (lambda f: _bce(f, 0.0),
     "wrong label: the generator wants its fakes classified as real, label 1"),
    (lambda f: -_bce(f, 1.0),
     "the sign is flipped: the loss to minimise is −mean log D(G(z)) = BCE(fake_logits, 1)"),
    (lambda f: _bce(torch.sigmoid(f), 1.0),
     "the sigmoid is applied twice: binary_cross_entropy_with_logits takes the logits"),
    (lambda f: -_log_sigmoid_naive(f).mean(),
     "log(sigmoid(l)) is unstable: for very negative logits sigmoid rounds to 0 and the log gives "
     "-inf. Use F.binary_cross_entropy_with_logits (or F.logsigmoid)"),
    (lambda f: -torch.log(f).mean(),
     "logits are not probabilities: D(x) = sigmoid(logit)"),
]

_LOGIT_ERRORS = [
    ("should be between 0 and 1",
     "F.binary_cross_entropy wants probabilities; you have logits: use "
     "F.binary_cross_entropy_with_logits"),
]


def _logits(gen, n, dtype, scale):
    return scale * torch.randn(n, generator=gen, dtype=dtype)


def check_d_loss_nonsaturating(fn: Callable, *, seed: int = 0,
                               sizes: Sequence[tuple[int, int]] = ((5, 5), (4, 6)),
                               scale: float = 2.0, dtype: torch.dtype = torch.float32,
                               trials: int = 3):
    """``fn(real_logits, fake_logits)`` must return the discriminator's BCE loss (a scalar);
    ``sizes`` = (B_real, B_fake) per trial; logits ~ N(0, scale^2)."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            b_real, b_fake = _cycle(sizes, next(calls))
            return _logits(gen, b_real, dtype, scale), _logits(gen, b_fake, dtype, scale)
        return draw

    hinted_check(fn, _ref.d_loss_nonsaturating, make_inputs, name="d_loss_nonsaturating",
                 trials=trials, seed=seed, forbid=REFERENCES, mistakes=_D_MISTAKES,
                 error_hints=_LOGIT_ERRORS, **_tolerance(dtype))


def check_g_loss_nonsaturating(fn: Callable, *, seed: int = 0, sizes: Sequence[int] = (5,),
                               scale: float = 2.0, dtype: torch.dtype = torch.float32,
                               trials: int = 3):
    """``fn(fake_logits)`` must return the non-saturating generator loss ``BCE(fake, 1)``."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            return (_logits(gen, _cycle(sizes, next(calls)), dtype, scale),)
        return draw

    hinted_check(fn, _ref.g_loss_nonsaturating, make_inputs, name="g_loss_nonsaturating",
                 trials=trials, seed=seed, forbid=REFERENCES, mistakes=_G_MISTAKES,
                 error_hints=_LOGIT_ERRORS, **_tolerance(dtype))


# ----------------------------------------------------------------------------- part 3
_WGAN_D_MISTAKES = [
    (lambda r, f: r.mean() - f.mean(),
     "the sign is flipped: the critic raises the scores of real samples, so the loss to minimise "
     "is mean f(fake) − mean f(real)"),
    (lambda r, f: torch.sigmoid(f).mean() - torch.sigmoid(r).mean(),
     "a Wasserstein critic's scores are used as they are: no sigmoid"),
    (lambda r, f: f.sum() - r.sum(),
     "average the scores (mean), don't sum them"),
]

_WGAN_G_MISTAKES = [
    (lambda f: f.mean(),
     "the sign is flipped: the generator wants high critic scores, so it minimises −mean f(fake)"),
    (lambda f: -torch.sigmoid(f).mean(),
     "a Wasserstein critic's scores are used as they are: no sigmoid"),
    (lambda f: -f.sum(), "average the scores (mean), don't sum them"),
]


def check_wgan_d_loss(fn: Callable, *, seed: int = 0,
                      sizes: Sequence[tuple[int, int]] = ((5, 5), (4, 6)), scale: float = 3.0,
                      dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(real_scores, fake_scores)`` must return the critic's loss ``mean f(fake) − mean f(real)``."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            b_real, b_fake = _cycle(sizes, next(calls))
            return _logits(gen, b_real, dtype, scale) + 1.0, _logits(gen, b_fake, dtype, scale)
        return draw

    hinted_check(fn, _ref.wgan_d_loss, make_inputs, name="wgan_d_loss", trials=trials, seed=seed,
                 forbid=REFERENCES, mistakes=_WGAN_D_MISTAKES, **_tolerance(dtype))


def check_wgan_g_loss(fn: Callable, *, seed: int = 0, sizes: Sequence[int] = (5,),
                      scale: float = 3.0, dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(fake_scores)`` must return the generator's loss ``−mean f(fake)``."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            return (_logits(gen, _cycle(sizes, next(calls)), dtype, scale) + 0.5,)
        return draw

    hinted_check(fn, _ref.wgan_g_loss, make_inputs, name="wgan_g_loss", trials=trials, seed=seed,
                 forbid=REFERENCES, mistakes=_WGAN_G_MISTAKES, **_tolerance(dtype))


# ----------------------------------------------------------------------------- part 4
def _input_grad(critic, real, fake, alpha, *, create_graph=True, alpha_view="per_sample"):
    if alpha_view == "per_sample":
        a = _per_sample(alpha, real)
    elif alpha_view == "as_given":
        a = alpha                                        # (B,) lines up with the LAST dim
    else:
        a = alpha.reshape(-1, 1)                         # (B, 1) lines up with the last two dims
    x_hat = (a * real + (1 - a) * fake).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=create_graph)
    return grad


def _gp(critic, real, fake, alpha, *, norm="per_sample", minus_one=True, **kw):
    grad = _input_grad(critic, real, fake, alpha, **kw)
    if norm == "per_sample":
        n = grad.flatten(1).norm(2, dim=1)
    elif norm == "dim1":
        n = grad.norm(2, dim=1)
    elif norm == "all":
        n = grad.norm(2)
    else:                                                # squared norm
        n = grad.flatten(1).pow(2).sum(dim=1)
    return ((n - 1) ** 2).mean() if minus_one else (n ** 2).mean()


_CREATE_GRAPH_HINT = ("the penalty must be differentiable w.r.t. the critic's parameters (it is "
                      "added to the critic's loss): take the gradient with "
                      "torch.autograd.grad(scores.sum(), x_hat, create_graph=True)")

_GP_MISTAKES = [
    (lambda *a: _gp(*a, create_graph=False), _CREATE_GRAPH_HINT),
    (lambda *a: _gp(*a, norm="dim1"),
     "take the norm of each sample's whole gradient, over all its non-batch dimensions: "
     "grad.flatten(1).norm(2, dim=1), shape (B,)"),
    (lambda *a: _gp(*a, norm="all"),
     "take one norm per sample (over its non-batch dimensions), not one norm of the whole batch"),
    (lambda *a: _gp(*a, norm="squared"),
     "use the norm ‖∇f‖₂ (the square root of the sum of squares), not the squared norm"),
    (lambda *a: _gp(*a, minus_one=False),
     "the penalty pulls the gradient norm towards 1: mean((‖∇f‖₂ − 1)²), you left out the − 1"),
    (lambda *a: _gp(*a, alpha_view="as_given"),
     "alpha has shape (B,): reshape it to (B, 1, ..., 1) so that it scales whole samples "
     "(alpha * real lines (B,) up with the LAST dimension)"),
    (lambda *a: _gp(*a, alpha_view="column"),
     "alpha must broadcast over every non-batch dimension: reshape it to (B, 1, ..., 1), "
     "e.g. alpha.view(-1, *[1] * (real.dim() - 1))"),
    (lambda c, r, f, a: _gp(c, r, f, 1 - a),
     "x_hat = alpha * real + (1 − alpha) * fake: alpha weighs the real samples"),
]

_GP_ERRORS = [
    ("must match the size of tensor",
     "alpha has shape (B,): reshape it to (B, 1, ..., 1) so that it broadcasts over the other "
     "dimensions of real and fake"),
    ("does not require grad",
     "x_hat must require gradients before it goes through the critic: "
     "x_hat = (...).detach().requires_grad_(True)"),
    ("One of the differentiated Tensors appears to not have been used",
     "differentiate with respect to the x_hat you fed to the critic"),
]


def check_gradient_penalty(fn: Callable, *, seed: int = 0,
                           shapes: Sequence[tuple[int, ...]] = ((4, 2, 4, 4), (3, 5)),
                           dtype: torch.dtype = torch.float64, trials: int = 3):
    """``fn(critic, real, fake, alpha)`` must return ``mean((‖∇ f(x̂)‖₂ − 1)²)`` with
    ``x̂ = alpha real + (1 − alpha) fake`` and ``alpha: (B,)``, differentiable w.r.t. the critic's
    parameters; ``shapes`` are the shapes of real and fake (images or flat vectors)."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            return _critic_inputs(gen, _cycle(shapes, next(calls)), dtype)
        return draw

    hinted_check(fn, _ref_gradient_penalty, make_inputs, name="gradient_penalty", trials=trials,
                 seed=seed, forbid=REFERENCES, mistakes=_GP_MISTAKES, error_hints=_GP_ERRORS,
                 random_hint="it gives different answers for the same inputs: use the alpha you "
                             "are given instead of drawing your own", **_tolerance(dtype))


# ----------------------------------------------------------------------------- part 5
def _critic_grads(critic, real, fake, alpha, lam, *, gp_sign=1.0, gp_weight=True, detach=False,
                  wgan_sign=1.0):
    penalty = _gp(critic, real, fake, alpha)
    penalty = penalty.detach() if detach else penalty
    loss = (wgan_sign * (critic(fake).mean() - critic(real).mean())
            + gp_sign * (lam if gp_weight else 1.0) * penalty)
    return torch.autograd.grad(loss, list(critic.parameters()), allow_unused=True)


_STEP_MISTAKES = [
    (lambda *a: _critic_grads(*a, detach=True),
     "the penalty contributes nothing to these gradients: it must stay differentiable w.r.t. the "
     "critic's parameters (create_graph=True in Part 4, and no .detach() or .item())"),
    (lambda *a: _critic_grads(*a, gp_sign=-1.0),
     "the penalty is ADDED to the critic's loss: loss = wgan_d_loss + lam * gradient_penalty"),
    (lambda *a: _critic_grads(*a, gp_weight=False),
     "weigh the penalty by lam: loss = wgan_d_loss + lam * gradient_penalty"),
    (lambda *a: _critic_grads(*a, wgan_sign=-1.0),
     "the critic's Wasserstein loss is mean f(fake) − mean f(real)"),
]


def check_critic_gradients(fn: Callable, *, seed: int = 0,
                           shapes: Sequence[tuple[int, ...]] = ((4, 2, 4, 4), (3, 5)),
                           lams: Sequence[float] = (10.0, 1.0), dtype: torch.dtype = torch.float64,
                           trials: int = 3):
    """``fn(critic, real, fake, alpha, lam)`` must return the gradients of the WGAN-GP critic loss
    ``wgan_d_loss(critic(real), critic(fake)) + lam * gradient_penalty(...)`` w.r.t.
    ``critic.parameters()``, in that order (a tuple or list of tensors)."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            i = next(calls)
            return (*_critic_inputs(gen, _cycle(shapes, i), dtype), float(_cycle(lams, i)))
        return draw

    hinted_check(fn, _ref_critic_gradients, make_inputs, name="critic_gradients", trials=trials,
                 seed=seed, forbid=REFERENCES, mistakes=_STEP_MISTAKES,
                 error_hints=[(w, h) for w, h in _GP_ERRORS if "must match" not in w],
                 **_tolerance(dtype))
