"""Graded checks of assignment A4 (Phase 3): the loss of a variational autoencoder, piece by piece.

Each ``check_*`` compares the learner's function with the course reference (:mod:`course_lib.models.vae`)
on random inputs and raises :class:`course_lib.checks.CheckFailure` when they differ. When the
answer matches a classic mistake (``exp(logvar)`` for the standard deviation, a KL averaged over
the latent dimensions, a BCE fed probabilities ...) the message says so, with a hint
(:func:`course_lib.grading.graded.hinted_check`). The defaults are the visible tests of the
assignment; the hidden tests (in the instructor's source notebook only) call the same functions
with other seeds, shapes, dtypes, KL weights and extreme logits.

    >>> check_reparameterize(reparameterize)
    ✅ reparameterize matches the reference on 3 random inputs
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from course_lib.models import vae as _ref
from course_lib.grading.graded import hinted_check

__all__ = ["check_reparameterize", "check_gaussian_kl", "check_bernoulli_nll", "check_elbo_loss"]

# An A4 answer may call none of the VAE references (however it reaches them).
REFERENCES = (_ref.reparameterize, _ref.gaussian_kl_per_dim, _ref.gaussian_kl, _ref.bernoulli_nll,
              _ref.gaussian_nll, _ref.elbo_loss, _ref.VAE.forward, _ref.VAE.encode, _ref.VAE.loss,
              _ref.ELBOLoss.__call__)

def _cycle(options: Sequence, i: int):
    return options[i % len(options)]


def _tolerance(dtype: torch.dtype) -> dict:
    return dict(atol=1e-10, rtol=1e-9) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-5)


# ----------------------------------------------------------------------------- inputs
def _latents(gen: torch.Generator, B: int, D: int, dtype: torch.dtype, spread: float):
    mu = torch.randn(B, D, generator=gen, dtype=dtype)
    logvar = spread * torch.randn(B, D, generator=gen, dtype=dtype)
    return mu, logvar


def _images(gen: torch.Generator, shape: Sequence[int], dtype: torch.dtype, scale: float,
            binary: bool):
    """(logits, x): logits ~ N(0, scale^2); x in [0, 1], binary or grey."""
    logits = scale * torch.randn(*shape, generator=gen, dtype=dtype)
    x = torch.rand(*shape, generator=gen, dtype=dtype)
    return logits, (x > 0.5).to(dtype) if binary else x


# ----------------------------------------------------------------------------- part 1
def _reparam_variance(mu, logvar, eps):
    return mu + torch.exp(logvar) * eps


def _reparam_logvar_as_std(mu, logvar, eps):
    return mu + logvar * eps


def _reparam_sqrt_logvar(mu, logvar, eps):
    return mu + 0.5 * logvar.exp() * eps


_REPARAM_MISTAKES = [
    (_reparam_variance, "exp(logvar) is the variance sigma²; the standard deviation is "
                        "sigma = exp(0.5 * logvar)"),
    (_reparam_logvar_as_std, "logvar is the log of the variance, not the standard deviation: "
                             "use sigma = exp(0.5 * logvar)"),
    (_reparam_sqrt_logvar, "sigma = exp(0.5 * logvar) (the ½ goes inside the exponential)"),
]


def check_reparameterize(fn: Callable, *, seed: int = 0,
                         sizes: Sequence[tuple[int, int]] = ((4, 3),), spread: float = 1.0,
                         dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(mu, logvar, eps)`` must return ``z = mu + exp(½ logvar) * eps``, ``(B, D)``, with
    ``sizes`` = (B, D) per trial and ``logvar ~ N(0, spread^2)``."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            B, D = _cycle(sizes, next(calls))
            mu, logvar = _latents(gen, B, D, dtype, spread)
            return mu, logvar, torch.randn(B, D, generator=gen, dtype=dtype)
        return draw

    hinted_check(fn, _ref.reparameterize, make_inputs, name="reparameterize", trials=trials,
                 seed=seed, forbid=REFERENCES, mistakes=_REPARAM_MISTAKES, **_tolerance(dtype),
                 random_hint="it gives different answers for the same inputs: use the eps you are "
                             "given instead of drawing new noise")


# ----------------------------------------------------------------------------- part 2
def _kl_terms(mu, logvar):
    return 0.5 * (mu ** 2 + logvar.exp() - logvar - 1.0)


_KL_MISTAKES = [
    (lambda mu, lv: _kl_terms(mu, lv).mean(dim=1),
     "sum over the latent dimensions (the KL of independent dimensions adds up); a mean "
     "divides it by D"),
    (lambda mu, lv: _kl_terms(mu, lv).sum(),
     "return one KL per sample, shape (B,): sum over dim=1 only, not over the batch too"),
    (lambda mu, lv: _kl_terms(mu, lv).sum(dim=1).mean(),
     "return one KL per sample, shape (B,): don't average over the batch here"),
    (lambda mu, lv: _kl_terms(mu, lv).mean(),
     "return one KL per sample, shape (B,), summed over the latent dimensions"),
    (lambda mu, lv: -_kl_terms(mu, lv).sum(dim=1),
     "the sign is flipped: a KL divergence is never negative, "
     "KL = ½ Σ (mu² + exp(logvar) − logvar − 1)"),
    (lambda mu, lv: 2.0 * _kl_terms(mu, lv).sum(dim=1),
     "you forgot the factor ½: KL = ½ Σ (mu² + exp(logvar) − logvar − 1)"),
    (lambda mu, lv: 0.5 * (mu ** 2 + lv ** 2 - torch.log(lv ** 2) - 1.0).sum(dim=1),
     "logvar is log sigma², not sigma: sigma² = exp(logvar) and log sigma² = logvar"),
    (lambda mu, lv: 0.5 * (mu ** 2 + (0.5 * lv).exp() - lv - 1.0).sum(dim=1),
     "the KL needs the variance sigma² = exp(logvar), not the standard deviation exp(0.5 * logvar)"),
    (lambda mu, lv: 0.5 * (mu ** 2 + lv.exp() - lv).sum(dim=1),
     "you forgot the − 1 inside the sum: KL = ½ Σ (mu² + exp(logvar) − logvar − 1)"),
    (lambda mu, lv: 0.5 * (lv.exp() - lv - 1.0).sum(dim=1),
     "the mean matters too: the mu² term is missing"),
]


def check_gaussian_kl(fn: Callable, *, seed: int = 0,
                      sizes: Sequence[tuple[int, int]] = ((4, 3),), spread: float = 1.0,
                      zero: bool = False, dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(mu, logvar)`` must return ``KL(N(mu, diag exp(logvar)) || N(0, I))`` per sample,
    ``(B,)``; ``zero=True`` makes ``mu = logvar = 0`` (KL exactly 0)."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            B, D = _cycle(sizes, next(calls))
            mu, logvar = _latents(gen, B, D, dtype, spread)
            return (mu * 0, logvar * 0) if zero else (mu, logvar)
        return draw

    hinted_check(fn, _ref.gaussian_kl, make_inputs, name="gaussian_kl", trials=trials, seed=seed,
                 forbid=REFERENCES, mistakes=_KL_MISTAKES, **_tolerance(dtype))


# ----------------------------------------------------------------------------- part 3
def _bce(logits, x):
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none")


def _bce_naive(logits, x):
    p = torch.sigmoid(logits)
    return -(x * torch.log(p) + (1 - x) * torch.log(1 - p))


def _bce_of_logits_as_probabilities(logits, x):
    return -(x * torch.log(logits) + (1 - x) * torch.log(1 - logits))


_NLL_MISTAKES = [
    (lambda l, x: _bce(l, x).flatten(1).mean(dim=1),
     "sum over the pixels (the log-likelihoods of independent pixels add up); a mean divides "
     "the reconstruction term by the number of pixels and the KL term then dominates"),
    (lambda l, x: _bce(l, x).sum(),
     "return one value per image, shape (B,): sum over the pixels only, not over the batch"),
    (lambda l, x: _bce(l, x).mean(),
     "return one value per image, shape (B,), summed over its pixels"),
    (lambda l, x: _bce(l, x).flatten(1).sum(dim=1).mean(),
     "return one value per image, shape (B,): don't average over the batch here"),
    (lambda l, x: _bce(torch.sigmoid(l), x).flatten(1).sum(dim=1),
     "the sigmoid is applied twice: binary_cross_entropy_with_logits takes the logits and applies "
     "the sigmoid itself"),
    (lambda l, x: _bce_naive(l, x).flatten(1).sum(dim=1),
     "sigmoid then log is unstable: for large logits sigmoid rounds to exactly 0 or 1 and the "
     "log gives -inf. Work from the logits: F.binary_cross_entropy_with_logits, or "
     "log sigmoid(l) = -softplus(-l)"),
    (lambda l, x: _bce_of_logits_as_probabilities(l, x).flatten(1).sum(dim=1),
     "logits are not probabilities: p = sigmoid(logits); better, use "
     "F.binary_cross_entropy_with_logits, which is stable"),
    (lambda l, x: -_bce(l, x).flatten(1).sum(dim=1),
     "return the NEGATIVE log-likelihood (a loss, >= 0), not the log-likelihood"),
    (lambda l, x: F.binary_cross_entropy_with_logits(x, l, reduction="none").flatten(1).sum(dim=1),
     "the arguments are swapped: binary_cross_entropy_with_logits(logits, target)"),
]

_NLL_ERRORS = [
    ("should be between 0 and 1",
     "F.binary_cross_entropy wants probabilities; you have logits: use "
     "F.binary_cross_entropy_with_logits(logits, x, reduction='none')"),
]


def check_bernoulli_nll(fn: Callable, *, seed: int = 0,
                        shapes: Sequence[tuple[int, ...]] = ((4, 1, 6, 6),), scale: float = 2.0,
                        binary: bool = False, dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(logits, x)`` must return the Bernoulli negative log-likelihood per image, ``(B,)``,
    summed over all pixels; ``shapes`` are the image batches' shapes ``(B, ...)``,
    ``logits ~ N(0, scale^2)`` (a large scale tests a stable formula) and ``x`` in [0, 1]
    (``binary=True``: 0 or 1 only)."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            return _images(gen, _cycle(shapes, next(calls)), dtype, scale, binary)
        return draw

    hinted_check(fn, _ref.bernoulli_nll, make_inputs, name="bernoulli_nll", trials=trials,
                 seed=seed, forbid=REFERENCES, mistakes=_NLL_MISTAKES, error_hints=_NLL_ERRORS,
                 **_tolerance(dtype))


# ----------------------------------------------------------------------------- part 4
def _elbo(l, x, mu, lv, beta, nll_reduce="sum", kl_reduce="sum", sign=1.0, beta_on="kl",
          batch="mean", per_sample=True):
    bce = _bce(l, x).flatten(1)
    nll = bce.sum(dim=1) if nll_reduce == "sum" else bce.mean(dim=1)
    terms = _kl_terms(mu, lv)
    kl = terms.sum(dim=1) if kl_reduce == "sum" else terms.mean(dim=1)
    per_image = beta * nll + kl if beta_on == "nll" else nll + sign * beta * kl
    loss = per_image.mean() if batch == "mean" else per_image.sum()
    if not per_sample:
        return {"loss": loss, "nll": nll.mean(), "kl": kl.mean()}
    return {"loss": loss, "nll": nll, "kl": kl}


def _beta(args: tuple) -> tuple:
    """The check's arguments with beta filled in when a trial leaves it at its default."""
    return args if len(args) == 5 else args + (1.0,)


_ELBO_MISTAKES = [
    (lambda *a: _elbo(*_beta(a), batch="sum"),
     "loss is the MEAN over the batch of nll + beta * kl (a sum makes the step size depend "
     "on the batch size)"),
    (lambda *a: _elbo(*_beta(a), sign=-1.0),
     "the ELBO is E[log p(x|z)] − KL, so the loss −ELBO = nll + beta * kl: add the KL"),
    (lambda *a: _elbo(*_beta(a), beta_on="nll"),
     "beta weighs the KL term: loss = mean(nll + beta * kl), not beta * nll + kl"),
    (lambda l, x, mu, lv, beta=1.0: _elbo(l, x, mu, lv, 1.0),
     "the KL term must be weighted by beta: loss = mean(nll + beta * kl)"),
    (lambda *a: _elbo(*_beta(a), nll_reduce="mean"),
     "nll must be summed over the pixels of each image, not averaged"),
    (lambda *a: _elbo(*_beta(a), kl_reduce="mean"),
     "kl must be summed over the latent dimensions, not averaged"),
    (lambda *a: _elbo(*_beta(a), per_sample=False),
     "'nll' and 'kl' are per image, shape (B,); only 'loss' is averaged over the batch"),
]


def check_elbo_loss(fn: Callable, *, seed: int = 0,
                    shapes: Sequence[tuple[int, ...]] = ((4, 1, 6, 6),), latent: int = 3,
                    betas: Sequence[float | None] = (None, 4.0), scale: float = 2.0,
                    dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(recon_logits, x, mu, logvar, beta=1.0)`` must return
    ``{"loss": mean(nll + beta * kl), "nll": (B,), "kl": (B,)}`` with a Bernoulli decoder;
    ``shapes`` are the image batches' shapes, ``latent`` is D, ``betas`` cycle per trial
    (``None``: beta left out, so the default must be 1, the plain VAE)."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            i = next(calls)
            shape = _cycle(shapes, i)
            logits, x = _images(gen, shape, dtype, scale, binary=False)
            mu, logvar = _latents(gen, shape[0], latent, dtype, 1.0)
            beta = _cycle(betas, i)
            return (logits, x, mu, logvar) + (() if beta is None else (float(beta),))
        return draw

    tol = _tolerance(dtype)
    hinted_check(fn, _ref.elbo_loss, make_inputs, name="elbo_loss", trials=trials, seed=seed,
                 forbid=REFERENCES, mistakes=_ELBO_MISTAKES, error_hints=_NLL_ERRORS, **tol)

