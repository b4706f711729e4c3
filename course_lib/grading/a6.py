"""Graded checks of assignment A6 (Phase 4): DDPM's forward process, loss and reverse step.

Each ``check_*`` compares the learner's function with the course reference
(:mod:`course_lib.diffusion.schedule`, :mod:`course_lib.diffusion.ddpm`) on random inputs and
raises :class:`course_lib.checks.CheckFailure` when they differ, with a hint when the answer
matches a classic mistake (data left in [0, 1], a square root forgotten on alpha_bar, alpha_t
taken for alpha_bar_t, t off by one, noise added at t = 0, the variance used as a standard
deviation, a model called without t ...), see :func:`course_lib.grading.graded.hinted_check`.
The defaults are the visible tests of the assignment; the hidden tests (in the instructor's
source notebook only) call the same functions with other seeds, shapes, dtypes and schedules.

The schedules handed to the answers are :class:`~course_lib.diffusion.schedule.NoiseSchedule`
objects (their ``betas``, ``alphas``, ``alphas_cumprod``, ... are float32 tensors of shape (T,)),
and the loss check hands out an :class:`EpsModel`: module-level classes, so a check can send
them to a grading sandbox.

    >>> check_q_sample(q_sample)
    ✅ q_sample matches the reference on 3 random inputs
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from course_lib.diffusion import ddpm as _ddpm
from course_lib.diffusion import schedule as _sched
from course_lib.diffusion import solver as _solver
from course_lib.diffusion.schedule import NoiseSchedule
from course_lib.grading.graded import hinted_check

__all__ = ["check_to_model_range", "check_q_sample", "check_training_loss", "check_reverse_step",
           "EpsModel"]

# An A6 answer may call none of the diffusion references (however it reaches them).
REFERENCES = (_sched.q_sample, _sched.NoiseSchedule.q_sample, _sched.to_model_range,
              _sched.to_image_range, _ddpm.ddpm_loss, _ddpm.predict_x0, _ddpm.reverse_step,
              _ddpm.ddim_step, _solver.sample)

Schedules = Sequence[tuple[str, int]]


def _cycle(options: Sequence, i: int):
    return options[i % len(options)]


def _tolerance(dtype: torch.dtype) -> dict:
    """The same for float32 and float64: the schedules are float32 tensors, so a float64 answer
    that reads them (rightly) in float32 still carries float32 roundings, which 1 / sqrt(alpha)
    can magnify near the end of the chain."""
    return dict(atol=1e-5, rtol=1e-4)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values (B,) -> (B, 1, ..., 1) in the dtype of ``like``, to broadcast against it."""
    return values.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def _steps(gen: torch.Generator, B: int, T: int) -> torch.Tensor:
    """(B,) integer steps: 0 first, then 1 (when B > 2), T - 1 last (when B > 1), the rest
    random; the ends of the chain are where the classic mistakes show."""
    t = torch.randint(0, T, (B,), generator=gen)
    t[0] = 0
    if B > 2:
        t[1] = 1
    if B > 1:
        t[-1] = T - 1
    return t


# ----------------------------------------------------------------------------- the test model
class EpsModel(nn.Module):
    """A small fixed "noise predictor" for the checks: ``model(x_t, t) -> (B, ...)`` like x_t,

        eps_hat = tanh(a_t * x_t + b_t),    a, b: one number per step t (T of each).

    It insists on integer steps t of shape (B,), as the course's U-Net does (it embeds them)."""

    def __init__(self, T: int, generator: torch.Generator, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("a", 0.5 + torch.rand(T, generator=generator, dtype=dtype))
        self.register_buffer("b", 0.5 * torch.randn(T, generator=generator, dtype=dtype))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.is_floating_point():
            raise TypeError(f"this model takes the integer steps t (0 .. {len(self.a) - 1}), "
                            f"got a tensor of dtype {t.dtype}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape (B,) = ({x.shape[0]},), one step per sample, "
                             f"got {tuple(t.shape)}")
        return torch.tanh(_per_sample(self.a[t], x) * x + _per_sample(self.b[t], x))


# ----------------------------------------------------------------------------- part 1
def _images(gen: torch.Generator, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """Images in [0, 1] with some pixels exactly 0 and 1 (the ends of the range)."""
    x = torch.rand(*shape, generator=gen, dtype=dtype)
    flat = x.view(-1)
    flat[0], flat[-1] = 0.0, 1.0
    return x


_RANGE_MISTAKES = [
    (lambda x: x,
     "the images are still in [0, 1]: the diffusion is defined on data in [-1, 1], so map them "
     "with x * 2 - 1"),
    (lambda x: x - 0.5,
     "x - 0.5 lands in [-0.5, 0.5]; the data must fill [-1, 1]: x * 2 - 1"),
    (lambda x: x * 2,
     "x * 2 lands in [0, 2]; shift it too: x * 2 - 1 maps 0 -> -1 and 1 -> 1"),
    (lambda x: 1 - 2 * x,
     "the map is flipped: 0 (black) must go to -1 and 1 (white) to 1, so x * 2 - 1"),
    (lambda x: x / 255 * 2 - 1,
     "the images are already in [0, 1] (floats, not bytes 0..255): don't divide by 255"),
    (lambda x: (x - x.mean()) / x.std(),
     "standardising with the batch's mean and std depends on the batch and does not give "
     "[-1, 1]: use the fixed map x * 2 - 1"),
]


def check_to_model_range(fn: Callable, *, seed: int = 0,
                         shapes: Sequence[tuple[int, ...]] = ((4, 1, 5, 5), (2, 3, 4, 4)),
                         dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(images)`` must map images in [0, 1] (any shape) to the model's range [-1, 1]:
    ``images * 2 - 1``, same shape and dtype."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            return (_images(gen, _cycle(shapes, next(calls)), dtype),)
        return draw

    hinted_check(fn, _sched.to_model_range, make_inputs, name="to_model_range", trials=trials,
                 seed=seed, forbid=REFERENCES, mistakes=_RANGE_MISTAKES, **_tolerance(dtype))


# ----------------------------------------------------------------------------- part 2
def _coef(sch: NoiseSchedule, name: str, t: torch.Tensor, like: torch.Tensor, shift: int = 0):
    """schedule.<name>[t + shift] shaped (B, 1, ..., 1) (negative indices wrap, as Python's do)."""
    return _per_sample(getattr(sch, name)[t + shift], like)


def _qs(x0, t, noise, sch, *, name="alphas_cumprod", sqrt_signal=True, sqrt_noise=True, shift=0,
        swap=False):
    a = _coef(sch, name, t, x0, shift)
    signal = a.sqrt() if sqrt_signal else a
    spread = (1 - a).sqrt() if sqrt_noise else 1 - a
    if swap:
        signal, spread = spread, signal
    return signal * x0 + spread * noise


def _qs_unshaped(x0, t, noise, sch):
    a = sch.alphas_cumprod[t].to(x0.dtype)             # (B,) lines up with the LAST dim of x0
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


_SQRT_HINT = ("alpha_bar_t and 1 - alpha_bar_t are variances; x_t = sqrt(alpha_bar_t) x0 + "
              "sqrt(1 - alpha_bar_t) eps uses their square roots")
_OFF_BY_ONE_HINT = ("t is already the 0-based index of the step: use alphas_cumprod[t] (t = 0 "
                    "already carries one step of noise), not t - 1")
_BROADCAST_HINT = ("alphas_cumprod[t] has shape (B,): reshape it to (B, 1, ..., 1), e.g. "
                   ".view(-1, *[1] * (x0.dim() - 1)), so that it scales whole samples")

_Q_MISTAKES = [
    (lambda *a: _qs(*a, sqrt_signal=False, sqrt_noise=False), _SQRT_HINT),
    (lambda *a: _qs(*a, sqrt_signal=False), "the square root is missing on alpha_bar_t: " + _SQRT_HINT),
    (lambda *a: _qs(*a, sqrt_noise=False), "the square root is missing on 1 - alpha_bar_t: " + _SQRT_HINT),
    (lambda *a: _qs(*a, name="alphas"),
     "use alpha_bar_t = schedule.alphas_cumprod[t], the product of all the alphas up to step t, "
     "not alpha_t = schedule.alphas[t] (one step's share)"),
    (lambda *a: _qs(*a, swap=True),
     "the two weights are swapped: the signal x0 gets sqrt(alpha_bar_t) (close to 1 at small t), "
     "the noise sqrt(1 - alpha_bar_t)"),
    (lambda *a: _qs(*a, shift=-1), _OFF_BY_ONE_HINT),
    (lambda *a: _qs(*a, name="alphas_cumprod_prev"), _OFF_BY_ONE_HINT),
    (_qs_unshaped, _BROADCAST_HINT + " (alpha * x0 with alpha: (B,) lines it up with the LAST "
                   "dimension)"),
]

_Q_ERRORS = [
    ("must match the size of tensor", _BROADCAST_HINT),
]


def _diffusion_inputs(gen, shape, dtype, schedule):
    """(x0 in [-1, 1], t (B,), noise, schedule) for one trial."""
    sch = NoiseSchedule.make(*schedule)                       # fresh: an answer may not spoil it
    x0 = torch.rand(*shape, generator=gen, dtype=dtype) * 2 - 1
    noise = torch.randn(*shape, generator=gen, dtype=dtype)
    return x0, _steps(gen, shape[0], sch.T), noise, sch


def check_q_sample(fn: Callable, *, seed: int = 0,
                   shapes: Sequence[tuple[int, ...]] = ((4, 1, 4, 4), (3, 2, 5, 5)),
                   schedules: Schedules = (("linear", 50), ("cosine", 40)),
                   dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(x0, t, noise, schedule)`` must return ``x_t = sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t)
    noise`` with ``a_bar = schedule.alphas_cumprod``; x0, noise: ``shapes``; t: (B,) integer
    steps (always including 0, and 1 and T - 1 when B allows); ``schedules`` = (kind, T) per trial."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            i = next(calls)
            return _diffusion_inputs(gen, _cycle(shapes, i), dtype, _cycle(schedules, i))
        return draw

    hinted_check(fn, _sched.q_sample, make_inputs, name="q_sample", trials=trials, seed=seed,
                 forbid=REFERENCES, mistakes=_Q_MISTAKES, error_hints=_Q_ERRORS,
                 **_tolerance(dtype))


# ----------------------------------------------------------------------------- part 3
def _ref_training_loss(model, images, t, noise, schedule):
    """The library's loss on images in [0, 1]: mapped to [-1, 1] first."""
    return _ddpm.ddpm_loss(model, _sched.to_model_range(images), schedule, t=t, noise=noise)


def _loss(model, images, t, noise, sch, *, prep=True, target="noise", model_input="xt",
          reduce="mse"):
    x0 = images * 2 - 1 if prep else images
    xt = _qs(x0, t, noise, sch)
    pred = model(xt if model_input == "xt" else x0, t)
    want = noise if target == "noise" else x0
    if reduce == "sum":
        return ((pred - want) ** 2).sum()
    if reduce == "l1":
        return (pred - want).abs().mean()
    return ((pred - want) ** 2).mean()


_LOSS_MISTAKES = [
    (lambda *a: _loss(*a, prep=False),
     "the data must be in [-1, 1] before q_sample: images arrive in [0, 1], map them with your "
     "to_model_range first (noise of std 1 swamps data in [0, 1] differently, and the sampler "
     "would return images in the wrong range)"),
    (lambda *a: _loss(*a, target="x0"),
     "the model predicts the noise: compare its output with noise, not with x0"),
    (lambda *a: _loss(*a, model_input="x0"),
     "the model sees the noisy x_t = q_sample(x0, t, noise), not the clean x0"),
    (lambda *a: _loss(*a, reduce="sum"),
     "average the squared errors over every number (a mean, like F.mse_loss), don't sum them"),
    (lambda *a: _loss(*a, reduce="l1"),
     "the DDPM loss is the mean SQUARED error || eps - eps_theta(x_t, t) ||^2"),
]

_T_HINT = ("the model needs the step too: model(x_t, t). A network that does not see t cannot "
           "know how much noise x_t carries")
_LOSS_ERRORS = [
    ("missing 1 required positional argument: 't'", _T_HINT),
    ("takes the integer steps t", "pass the integer steps t as they are (not t / T): the model "
                                  "embeds integer steps"),
    ("must match the size of tensor", _BROADCAST_HINT),
]


def check_training_loss(fn: Callable, *, seed: int = 0,
                        shapes: Sequence[tuple[int, ...]] = ((4, 1, 4, 4), (3, 2, 5, 5)),
                        schedules: Schedules = (("linear", 50), ("cosine", 40)),
                        dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(model, images, t, noise, schedule)`` must return the DDPM loss of one batch, a
    scalar: ``mean((model(x_t, t) - noise)^2)`` with ``x_t = q_sample(to_model_range(images), t,
    noise, schedule)``; images in [0, 1] of ``shapes``; model: an :class:`EpsModel`."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            i = next(calls)
            shape = _cycle(shapes, i)
            sch = NoiseSchedule.make(*_cycle(schedules, i))
            model = EpsModel(sch.T, gen, dtype)
            images = _images(gen, shape, dtype)
            noise = torch.randn(*shape, generator=gen, dtype=dtype)
            return model, images, _steps(gen, shape[0], sch.T), noise, sch
        return draw

    hinted_check(fn, _ref_training_loss, make_inputs, name="training_loss", trials=trials,
                 seed=seed, forbid=REFERENCES, mistakes=_LOSS_MISTAKES, error_hints=_LOSS_ERRORS,
                 random_hint="it gives different answers for the same inputs: use the t and the "
                             "noise you are given instead of drawing your own",
                 **_tolerance(dtype))


# ----------------------------------------------------------------------------- part 4
def _ref_reverse_step(eps, x_t, t, noise, schedule):
    return _ddpm.reverse_step(eps, x_t, t, schedule, noise, variance="beta")


def _step(eps, x, t, noise, sch, *, var="beta", std=True, mask_from=1, divide_by="alphas",
          spread_from="alphas_cumprod", sqrt_spread=True, sqrt_alpha=True, shift=0, sign=-1.0):
    beta = _coef(sch, "betas", t, x, shift)
    alpha = _coef(sch, divide_by, t, x, shift)
    a = _coef(sch, spread_from, t, x, shift)
    spread = (1 - a).sqrt() if sqrt_spread else 1 - a
    mean = (x + sign * beta / spread * eps) / (alpha.sqrt() if sqrt_alpha else alpha)
    variance = beta if var == "beta" else _coef(sch, "posterior_variance", t, x, shift)
    sigma = variance.sqrt() if std else variance
    keep = _per_sample((t >= mask_from), x)
    return mean + keep * sigma * noise


_VAR_HINT = ("this assignment uses DDPM's sigma_t^2 = beta_t (schedule.betas[t]); you used the "
             "posterior variance beta~_t (schedule.posterior_variance[t])")
_REVERSE_MISTAKES = [
    (lambda *a: _step(*a, mask_from=0),
     "no noise at t = 0: the last step returns the mean itself (multiply the noise by a mask "
     "that is 0 where t == 0)"),
    (lambda *a: _step(*a, mask_from=10**9),
     "add sigma_t * noise where t > 0: DDPM's reverse step draws a sample, it is not "
     "deterministic"),
    (lambda *a: _step(*a, mask_from=2),
     "t = 0 is the last step (0-based): add noise wherever t > 0, including t = 1"),
    (lambda *a: _step(*a, var="posterior"), _VAR_HINT),
    (lambda *a: _step(*a, std=False),
     "sigma_t^2 = beta_t is the variance: scale the noise by the standard deviation "
     "sigma_t = sqrt(beta_t), not by beta_t"),
    (lambda *a: _step(*a, var="posterior", std=False),
     "scale the noise by a standard deviation, sqrt(beta_t) (and use beta_t, not the posterior "
     "variance)"),
    (lambda *a: _step(*a, divide_by="alphas_cumprod"),
     "divide by sqrt(alpha_t), this one step's alpha (schedule.alphas[t]), not by "
     "sqrt(alpha_bar_t)"),
    (lambda *a: _step(*a, spread_from="alphas"),
     "the noise's weight is beta_t / sqrt(1 - alpha_bar_t), with alpha_bar_t = "
     "schedule.alphas_cumprod[t] (the product), not alpha_t"),
    (lambda *a: _step(*a, sqrt_spread=False),
     "the square root is missing: the noise's weight is beta_t / sqrt(1 - alpha_bar_t)"),
    (lambda *a: _step(*a, sqrt_alpha=False),
     "the square root is missing: mean = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t)"),
    (lambda *a: _step(*a, shift=-1),
     "t is already the 0-based index of this step: use betas[t], alphas[t], alphas_cumprod[t] "
     "(not t - 1)"),
    (lambda *a: _step(*a, sign=1.0),
     "subtract the predicted noise: mean = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t)"),
]

_REVERSE_ERRORS = [
    ("must match the size of tensor",
     "the per-step numbers indexed with t have shape (B,): reshape them to (B, 1, ..., 1) so "
     "that they broadcast over x_t"),
    ("Boolean value of Tensor with more than one",
     "t holds one step per sample: mask the noise per sample, e.g. "
     "(t > 0).to(x_t.dtype).view(-1, *[1] * (x_t.dim() - 1)), instead of `if t == 0`"),
]


def check_reverse_step(fn: Callable, *, seed: int = 0,
                       shapes: Sequence[tuple[int, ...]] = ((4, 1, 4, 4), (3, 2, 5, 5)),
                       schedules: Schedules = (("linear", 50), ("cosine", 40)),
                       dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(eps, x_t, t, noise, schedule)`` must return one ancestral DDPM step x_{t-1}:
    ``(x_t - beta_t / sqrt(1 - a_bar_t) eps) / sqrt(alpha_t) + sigma_t noise`` with
    ``sigma_t^2 = beta_t``, and no noise where ``t == 0``; t: (B,) (always including 0, and
    1 and T - 1 when B allows)."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            i = next(calls)
            x_t, t, noise, sch = _diffusion_inputs(gen, _cycle(shapes, i), dtype,
                                                   _cycle(schedules, i))
            eps = torch.randn(*x_t.shape, generator=gen, dtype=dtype)
            return eps, x_t, t, noise, sch
        return draw

    hinted_check(fn, _ref_reverse_step, make_inputs, name="reverse_step", trials=trials,
                 seed=seed, forbid=REFERENCES, mistakes=_REVERSE_MISTAKES,
                 error_hints=_REVERSE_ERRORS,
                 random_hint="it gives different answers for the same inputs: use the noise you "
                             "are given instead of drawing your own",
                 **_tolerance(dtype))
