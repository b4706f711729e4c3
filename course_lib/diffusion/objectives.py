"""What a diffusion network is trained to predict, and the conversions between them (Phase 4 · 02, 05).

Three ways to parameterise the same denoiser, all at one step t of the course's path
(``course_lib.diffusion.path``: x_t = sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t) eps):

    eps  the noise that was added                 (DDPM; the default)
    v    v = sqrt(a_bar_t) eps - sqrt(1 - a_bar_t) x0   (Salimans & Ho, 2022; Phase 4 · 05)
    x0   the clean data, x0 = (x_t - sqrt(1 - a_bar_t) eps) / sqrt(a_bar_t)  (``ddpm.predict_x0``)

Why v matters: through x0_hat, ||eps_hat - eps||^2 = SNR_t ||x0_hat - x0||^2 while
||v_hat - v||^2 = (1 + SNR_t) ||x0_hat - x0||^2, so the eps loss barely cares about x0 at high
noise (SNR -> 0), where a sample's overall colour and background are decided.

Every sampler in the course steps with eps, so a v-network is wrapped once with :class:`EpsFromV`
(a wrapper around the model call, like guidance) and every step rule works unchanged.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from course_lib.diffusion.schedule import NoiseSchedule

PREDICTIONS = ("eps", "v")


def check_prediction(prediction: str) -> None:
    """A clear error for a prediction type the course does not know."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def v_target(x0: Tensor, noise: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """The velocity target  v = sqrt(a_bar_t) eps - sqrt(1 - a_bar_t) x0.   x0, noise: (B, ...); t: (B,)."""
    a = schedule.at(schedule.alphas_cumprod, t, x0.dim()).to(x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def eps_from_v(v: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """A v-prediction turned into the eps-prediction samplers use:  eps = sqrt(a_bar_t) v + sqrt(1 - a_bar_t) x_t."""
    a = schedule.at(schedule.alphas_cumprod, t, x_t.dim()).to(x_t)
    return a.sqrt() * v + (1 - a).sqrt() * x_t


def training_target(prediction: str, x0: Tensor, noise: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """What the network should output for (x0, noise, t): eps itself, or v.   (B, ...)."""
    check_prediction(prediction)
    return noise if prediction == "eps" else v_target(x0, noise, t, schedule)


class EpsFromV:
    """Wrap a v-predicting ``fn(x_t, t)`` so that it returns eps:  eps = sqrt(a_bar_t) v + sqrt(1 - a_bar_t) x_t.

    ``fn`` may already be guided (guidance is linear in the output, so mixing v's and then
    converting equals converting and then mixing). ``.model`` is the wrapped callable.
    """

    def __init__(self, model: Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule):
        self.model, self.schedule = model, schedule

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        return eps_from_v(self.model(x_t, t), x_t, t, self.schedule)
