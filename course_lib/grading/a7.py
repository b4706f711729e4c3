"""Graded checks of assignment A7 (Phase 4): a DDIM step and classifier-free guidance.

Each ``check_*`` compares the learner's function with the course reference
(:mod:`course_lib.diffusion.ddpm`) on random inputs and raises
:class:`course_lib.checks.CheckFailure` when they differ, with a hint when the answer matches a
classic mistake (a square root forgotten on alpha_bar, sigma missing one of its two factors,
x0_hat left out, alpha_bar_prev read from the end of the table at the last step, the guidance
scale in the w = s - 1 convention, eps_u and eps_c swapped, two model calls instead of one
batched call ...), see :func:`course_lib.grading.graded.hinted_check`. The defaults are the
visible tests of the assignment; the hidden tests (in the instructor's source notebook only)
call the same functions with other seeds, shapes, dtypes, schedules, steps and scales.

Here t and t_prev are Python ints (a sampler takes the same step for the whole batch), except
for the model call of :func:`check_guided_eps`, where t is a (B,) tensor as the model wants it.
The guided check hands out a :class:`LabelEpsModel` that may be called once per answer: a
module-level class, so a check can send it to a grading sandbox.

    >>> check_cfg_combine(cfg_combine)
    ✅ cfg_combine matches the reference on 3 random inputs
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from course_lib.diffusion import ddpm as _ddpm
from course_lib.diffusion import schedule as _sched
from course_lib.diffusion import solver as _solver
from course_lib.diffusion.schedule import NoiseSchedule
from course_lib.grading.a6 import _cycle, _tolerance  # the same test-input cycling and tolerances as A6
from course_lib.grading.graded import hinted_check

__all__ = ["check_predict_x0", "check_ddim_step", "check_cfg_combine", "check_guided_eps",
           "LabelEpsModel"]

# An A7 answer may call none of the diffusion references (however it reaches them).
REFERENCES = (_sched.q_sample, _sched.NoiseSchedule.q_sample, _ddpm.ddpm_loss, _ddpm.predict_x0,
              _ddpm.reverse_step, _ddpm.ddim_step, _ddpm.guided_eps, _ddpm.classifier_guided_eps,
              _solver.sample)


def _full(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.long)


def _abar(sch: NoiseSchedule, t: int, wrap: bool = False) -> float:
    """alpha_bar at step t as a number; t = -1 is "the data" (1.0) unless ``wrap`` (a mistake:
    Python's index -1 reads the END of the table)."""
    if t < 0 and not wrap:
        return 1.0
    return float(sch.alphas_cumprod[t])


# ----------------------------------------------------------------------------- part 1
def _ref_predict_x0(eps, x_t, t, schedule):
    return _ddpm.predict_x0(eps, x_t, _full(t, x_t), schedule)


def _x0(eps, x, t, sch, *, name="alphas_cumprod", sqrt=True, shift=0, sign=-1.0):
    a = torch.tensor(float(getattr(sch, name)[t + shift]), dtype=torch.float64)
    signal, spread = (a.sqrt(), (1 - a).sqrt()) if sqrt else (a, 1 - a)
    return ((x + sign * spread.to(x.dtype) * eps) / signal.to(x.dtype))


_X0_MISTAKES = [
    (lambda *a: _x0(*a, sqrt=False),
     "alpha_bar_t is a variance: x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), "
     "with square roots"),
    (lambda *a: _x0(*a, name="alphas"),
     "use alpha_bar_t = schedule.alphas_cumprod[t] (the product up to t), not alpha_t"),
    (lambda *a: _x0(*a, shift=-1),
     "t is already the 0-based index: alphas_cumprod[t], not t - 1"),
    (lambda *a: _x0(*a, sign=1.0),
     "subtract the noise: x_t = sqrt(a_bar) x0 + sqrt(1 - a_bar) eps, so "
     "x0_hat = (x_t - sqrt(1 - a_bar) eps) / sqrt(a_bar)"),
]


def _eps_inputs(gen, shape, dtype, schedule, t):
    sch = NoiseSchedule.make(*schedule)                       # fresh: an answer may not spoil it
    x_t = torch.randn(*shape, generator=gen, dtype=dtype)
    eps = torch.randn(*shape, generator=gen, dtype=dtype)
    return eps, x_t, min(t, sch.T - 1), sch


def check_predict_x0(fn: Callable, *, seed: int = 0,
                     shapes: Sequence[tuple[int, ...]] = ((4, 1, 4, 4), (3, 2, 5, 5)),
                     schedules: Sequence[tuple[str, int]] = (("linear", 50), ("cosine", 40)),
                     steps: Sequence[int] = (7, 0, 39), dtype: torch.dtype = torch.float32,
                     trials: int = 3):
    """``fn(eps, x_t, t, schedule)`` must return ``x0_hat = (x_t - sqrt(1 - a_bar_t) eps) /
    sqrt(a_bar_t)``; t: an int from ``steps`` (clipped to T - 1)."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            i = next(calls)
            return _eps_inputs(gen, _cycle(shapes, i), dtype, _cycle(schedules, i), _cycle(steps, i))
        return draw

    hinted_check(fn, _ref_predict_x0, make_inputs, name="predict_x0", trials=trials, seed=seed,
                 forbid=REFERENCES, mistakes=_X0_MISTAKES, **_tolerance(dtype))


# ----------------------------------------------------------------------------- part 2
def _ref_ddim_step(eps, x_t, t, t_prev, schedule, eta, noise):
    return _ddpm.ddim_step(eps, x_t, _full(t, x_t), t_prev, schedule, eta,
                           noise if eta > 0 else None)


def _ddim(eps, x, t, t_prev, sch, eta, noise, *, a_prev=None, sigma="full", room=True,
          use_x0=True, name="alphas_cumprod", sqrt_signal=True, clamp=True):
    num = lambda v: torch.as_tensor(float(v), dtype=torch.float64)  # noqa: E731
    a_t = num(getattr(sch, name)[t])
    a_p = (num(1.0 if t_prev < 0 else getattr(sch, name)[t_prev]) if a_prev is None
           else num(a_prev))
    x0 = (x - ((1 - a_t) ** 0.5).to(x.dtype) * eps) / (a_t ** 0.5).to(x.dtype) if use_x0 else x
    first, second = (1 - a_p) / (1 - a_t), 1 - a_t / a_p
    if clamp:
        first, second = first.clamp(min=0), second.clamp(min=0)
    s = {"full": eta * first.sqrt() * second.sqrt(), "no_first": eta * second.sqrt(),
         "no_second": eta * first.sqrt(), "squared": eta * first * second,
         "eta_one": first.sqrt() * second.sqrt()}[sigma]
    direction = 1 - a_p - (s ** 2 if room else 0.0)
    direction = (direction.clamp(min=0) if clamp else direction).sqrt()
    signal = a_p.sqrt() if sqrt_signal else a_p
    cast = lambda v: v.to(x.dtype)  # noqa: E731
    return cast(signal) * x0 + cast(direction) * eps + cast(s) * noise


def _ddim_naive_wrap(eps, x, t, t_prev, sch, eta, noise):
    """alphas_cumprod[-1] at the last step, computed without clamps: 1 - a_bar_t / a_bar_prev
    is then negative, and sigma is NaN (even for eta = 0, as 0 * NaN is NaN)."""
    if t_prev >= 0:
        raise ValueError("only a mistake of the last step")
    return _ddim(eps, x, t, t_prev, sch, eta, noise, a_prev=_abar(sch, t_prev, wrap=True),
                 clamp=False)


_SIGMA_FACTOR_HINT = ("sigma is missing a factor: sigma = eta * sqrt((1 - a_bar_prev) / (1 - a_bar_t)) * "
                      "sqrt(1 - a_bar_t / a_bar_prev)")

_LAST_STEP_HINT = ("at the last step t_prev = -1 means \"the data\": alpha_bar_prev = 1 there "
                   "(alphas_cumprod[-1] is Python's LAST entry, the noisiest step)")
_DDIM_MISTAKES = [
    (lambda e, x, t, tp, s, eta, n: _ddim(e, x, t, tp, s, eta, n, a_prev=_abar(s, tp, wrap=True)),
     _LAST_STEP_HINT),
    (_ddim_naive_wrap, _LAST_STEP_HINT),
    (lambda e, x, t, tp, s, eta, n: _ddim(e, x, t, tp, s, eta, n, a_prev=_abar(s, max(tp, 0))),
     _LAST_STEP_HINT + "; t_prev = -1 is not step 0"),
    (lambda e, x, t, tp, s, eta, n: _ddim(e, x, t, tp, s, eta, n, a_prev=_abar(s, t - 1)),
     "DDIM jumps from t to t_prev, which need not be t - 1: alpha_bar_prev = "
     "alphas_cumprod[t_prev] (1 when t_prev = -1)"),
    (lambda e, x, t, tp, s, eta, n: _ddim(e, x, t, tp, s, eta, n,
                                          a_prev=float(s.alphas_cumprod_prev[t])),
     "DDIM jumps from t to t_prev, which need not be t - 1: alpha_bar_prev = "
     "alphas_cumprod[t_prev] (1 when t_prev = -1), not alphas_cumprod_prev[t]"),
    (lambda *a: _ddim(*a, use_x0=False),
     "the first term is sqrt(alpha_bar_prev) * x0_hat, the predicted clean image "
     "(x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), not x_t"),
    (lambda *a: _ddim(*a, sigma="no_first"),
     _SIGMA_FACTOR_HINT),
    (lambda *a: _ddim(*a, sigma="no_second"),
     _SIGMA_FACTOR_HINT),
    (lambda *a: _ddim(*a, sigma="squared"),
     "that is sigma^2: take the square root, sigma = eta * sqrt((1 - a_bar_prev) / "
     "(1 - a_bar_t) * (1 - a_bar_t / a_bar_prev))"),
    (lambda *a: _ddim(*a, sigma="eta_one"),
     "eta scales sigma: sigma = eta * sqrt(...) (eta = 0 is deterministic DDIM)"),
    (lambda *a: _ddim(*a, room=False),
     "the direction term is sqrt(1 - a_bar_prev - sigma^2) * eps: leave room for the noise you "
     "add"),
    (lambda *a: _ddim(*a, sqrt_signal=False),
     "the square root is missing: the first term is sqrt(alpha_bar_prev) * x0_hat"),
    (lambda *a: _ddim(*a, name="alphas"),
     "DDIM works with alpha_bar = schedule.alphas_cumprod (the products), not the one-step alphas"),
]


def check_ddim_step(fn: Callable, *, seed: int = 0,
                    shapes: Sequence[tuple[int, ...]] = ((4, 1, 4, 4), (3, 2, 5, 5)),
                    schedules: Sequence[tuple[str, int]] = (("linear", 50),),
                    steps: Sequence[tuple[int, int, float]] = ((49, 39, 0.0), (30, 20, 1.0),
                                                               (6, -1, 0.0), (20, 5, 0.5)),
                    dtype: torch.dtype = torch.float32, trials: int = 4):
    """``fn(eps, x_t, t, t_prev, schedule, eta, noise)`` must return one DDIM step from t to
    t_prev < t (t_prev = -1: to the data, alpha_bar_prev = 1):

        x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma noise,
        sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev);

    ``steps`` = (t, t_prev, eta) per trial (they must fit every schedule's T)."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            i = next(calls)
            t, t_prev, eta = _cycle(steps, i)
            eps, x_t, _, sch = _eps_inputs(gen, _cycle(shapes, i), dtype, _cycle(schedules, i), t)
            if not -1 <= t_prev < t < sch.T:
                raise ValueError(f"steps ({t}, {t_prev}) do not fit a schedule of T = {sch.T}")
            noise = torch.randn(*x_t.shape, generator=gen, dtype=dtype)
            return eps, x_t, t, t_prev, sch, float(eta), noise
        return draw

    hinted_check(fn, _ref_ddim_step, make_inputs, name="ddim_step", trials=trials, seed=seed,
                 forbid=REFERENCES, mistakes=_DDIM_MISTAKES,
                 error_hints=[("index -1 is out of bounds", _LAST_STEP_HINT)],
                 random_hint="it gives different answers for the same inputs: use the noise you "
                             "are given instead of drawing your own", **_tolerance(dtype))


# ----------------------------------------------------------------------------- part 3
def _ref_cfg_combine(eps_u, eps_c, s):
    return eps_u + s * (eps_c - eps_u)


_W_HINT = ("that is the w convention of Ho & Salimans, (1 + w) eps_c - w eps_u, with w = s; this "
           "course (and diffusers) uses eps_u + s (eps_c - eps_u), where s = 1 is the plain "
           "conditional model (w = s - 1)")
_SWAP_HINT = ("eps_u and eps_c are swapped: start from the unconditional eps_u and move by s "
              "towards the conditional eps_c, eps_u + s (eps_c - eps_u)")
_CFG_MISTAKES = [
    (lambda u, c, s: (1 + s) * c - s * u, _W_HINT),
    (lambda u, c, s: c + s * (u - c), _SWAP_HINT),
    (lambda u, c, s: u + s * c,
     "guide along the DIFFERENCE eps_c - eps_u: eps_u + s (eps_c - eps_u)"),
    (lambda u, c, s: s * (c - u),
     "start from eps_u: eps = eps_u + s (eps_c - eps_u) (s = 0 gives the unconditional model)"),
    (lambda u, c, s: c, "the scale s is not used: eps = eps_u + s (eps_c - eps_u)"),
]


def check_cfg_combine(fn: Callable, *, seed: int = 0,
                      shapes: Sequence[tuple[int, ...]] = ((4, 1, 4, 4), (3, 2, 5, 5)),
                      scales: Sequence[float] = (3.0, 1.0, 0.0), dtype: torch.dtype = torch.float32,
                      trials: int = 3):
    """``fn(eps_u, eps_c, s)`` must return ``eps_u + s (eps_c - eps_u)``; s: a float from
    ``scales`` per trial."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            i = next(calls)
            shape = _cycle(shapes, i)
            eps_u = torch.randn(*shape, generator=gen, dtype=dtype)
            eps_c = torch.randn(*shape, generator=gen, dtype=dtype)
            return eps_u, eps_c, float(_cycle(scales, i))
        return draw

    hinted_check(fn, _ref_cfg_combine, make_inputs, name="cfg_combine", trials=trials, seed=seed,
                 forbid=REFERENCES, mistakes=_CFG_MISTAKES, **_tolerance(dtype))


# ----------------------------------------------------------------------------- part 4
class LabelEpsModel(nn.Module):
    """A small fixed class-conditional "noise predictor" for the checks,
    ``model(x_t, t, y) -> (B, ...)`` like x_t:

        eps_hat = tanh(a_t * x_t + b_t + e_y),    a, b: one number per step; e: one per label,

    labels 0 .. num_classes - 1, and num_classes for "no label" (the null label of
    classifier-free guidance). It may be called ``max_calls`` times (once: guidance batches the
    conditional and unconditional inputs into one call); :meth:`eps` is the same function
    without the count."""

    def __init__(self, T: int, num_classes: int, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32, max_calls: int = 1):
        super().__init__()
        self.num_classes, self.max_calls, self.calls = num_classes, max_calls, 0
        self.register_buffer("a", 0.5 + torch.rand(T, generator=generator, dtype=dtype))
        self.register_buffer("b", 0.3 * torch.randn(T, generator=generator, dtype=dtype))
        self.register_buffer("e", torch.randn(num_classes + 1, generator=generator, dtype=dtype))

    def eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        for name, v in (("t", t), ("y", y)):
            if not torch.is_tensor(v) or v.is_floating_point() or v.shape != (B,):
                shape = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
                raise ValueError(f"{name} must be an integer tensor of shape (B,) = ({B},), one "
                                 f"per sample of x, got {shape}")
        shaped = lambda v: v.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))  # noqa: E731
        return torch.tanh(shaped(self.a[t]) * x + shaped(self.b[t]) + shaped(self.e[y]))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.max_calls:
            raise RuntimeError(f"this test model counts its calls and was called {self.calls} "
                               f"times: guidance needs ONE call on the doubled batch")
        return self.eps(x, t, y)


def _ref_guided_eps(model, x_t, t, y, y_null, s):
    return _ddpm.guided_eps(model.eps, x_t, t, {"y": y}, {"y": y_null}, s)


def _guided(model, x, t, y, y_null, s, *, combine=_ref_cfg_combine, swap=False):
    eps_u, eps_c = model.eps(x, t, y_null), model.eps(x, t, y)
    return combine(eps_c, eps_u, s) if swap else combine(eps_u, eps_c, s)


_GUIDED_MISTAKES = [
    (lambda *a: _guided(*a, swap=True),
     _SWAP_HINT + ". The half of the batch with the null labels y_null gives eps_u"),
    (lambda *a: _guided(*a, combine=_CFG_MISTAKES[0][0]), _W_HINT),
    (lambda m, x, t, y, yn, s: m.eps(x, t, y),
     "the scale s is not used: eps = eps_u + s (eps_c - eps_u), with eps_u from the null labels"),
]

_GUIDED_ERRORS = [
    ("called 2 times",
     "call the model once, on the doubled batch: x = cat([x_t, x_t]), t = cat([t, t]), "
     "y = cat([y_null, y]); then split the output in two halves (.chunk(2)) for eps_u and eps_c"),
    ("t must be an integer tensor of shape (B,)",
     "repeat t as well as x_t for the doubled batch: torch.cat([t, t])"),
    ("y must be an integer tensor of shape (B,)",
     "the doubled batch needs one label per sample: torch.cat([y_null, y]) (the labels, not "
     "a single number)"),
]


def check_guided_eps(fn: Callable, *, seed: int = 0,
                     shapes: Sequence[tuple[int, ...]] = ((4, 1, 4, 4), (3, 2, 5, 5)),
                     scales: Sequence[float] = (3.0, 0.0, 7.5), num_classes: int = 10, T: int = 50,
                     dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(model, x_t, t, y, y_null, s)`` must return the classifier-free guided noise
    ``eps_u + s (eps_c - eps_u)`` with ``eps_c = model(x_t, t, y)`` and
    ``eps_u = model(x_t, t, y_null)``, from ONE model call on the doubled batch; t, y, y_null:
    (B,) integer tensors; model: a :class:`LabelEpsModel` (it refuses a second call)."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            i = next(calls)
            shape = _cycle(shapes, i)
            model = LabelEpsModel(T, num_classes, gen, dtype)
            x_t = torch.randn(*shape, generator=gen, dtype=dtype)
            t = torch.randint(0, T, (shape[0],), generator=gen)
            y = torch.randint(0, num_classes, (shape[0],), generator=gen)
            y_null = torch.full_like(y, num_classes)
            return model, x_t, t, y, y_null, float(_cycle(scales, i))
        return draw

    hinted_check(fn, _ref_guided_eps, make_inputs, name="guided_eps", trials=trials, seed=seed,
                 forbid=REFERENCES, mistakes=_GUIDED_MISTAKES, error_hints=_GUIDED_ERRORS,
                 **_tolerance(dtype))
