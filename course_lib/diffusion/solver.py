"""How a diffusion model is sampled: one loop, and step rules that plug into it (Phase 4 · 02, 04).

The loop never changes:

    x = rule.start(x_T)
    for i in range(len(rule.timesteps)):
        t = rule.t_at(i, x)                          # the model's time input, (B,)
        out = fn(rule.model_input(x, i), t)          # the (wrapped) network: eps for DDPM/DDIM
        x = rule.step(out, x, i, generator)          # the sampler's update

Everything else is a *step rule* (what one update does and which steps it visits) or a *wrapper*
around the model call (``guidance.ClassifierFreeGuidance``, ``guidance.classifier_guidance_fn``,
``objectives.EpsFromV``). The rules here: :class:`AncestralRule` (DDPM, ``reverse_step``) and
:class:`DDIMRule` (``ddim_step``, any eta); ``schedulers.SchedulerRule`` drives any `diffusers`
scheduler. Phase 5's flow-matching ODE solvers and consistency sampling are new rules, not new loops.

Random numbers: a rule that needs noise draws it from the CPU ``generator`` inside ``step``
(``cpu_noise``), so a seed gives the same samples on any device.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from course_lib.diffusion.ddpm import VARIANCES, ddim_step, ddim_timesteps, reverse_step
from course_lib.diffusion.schedule import NoiseSchedule


def cpu_noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``like``, drawn on the CPU from ``generator``, moved to its device."""
    return torch.randn(like.shape, generator=generator).to(like.device)


class StepRule(Protocol):
    """What the loop needs from a sampler. ``timesteps``: the steps visited, noisiest first."""
    timesteps: Sequence

    def start(self, x_T: Tensor) -> Tensor: ...
    def t_at(self, i: int, x: Tensor) -> Tensor: ...
    def model_input(self, x: Tensor, i: int) -> Tensor: ...
    def step(self, out: Tensor, x: Tensor, i: int, generator: torch.Generator | None) -> Tensor: ...


class IntegerStepRule:
    """Shared by the course's own rules: integer steps, the model sees x unchanged, start at x_T."""
    timesteps: list[int]

    def start(self, x_T: Tensor) -> Tensor:
        return x_T

    def t_at(self, i: int, x: Tensor) -> Tensor:
        """Step ``timesteps[i]`` for every sample, (B,) long on x's device."""
        return torch.full((x.shape[0],), self.timesteps[i], device=x.device, dtype=torch.long)

    def model_input(self, x: Tensor, i: int) -> Tensor:
        return x


class AncestralRule(IntegerStepRule):
    """DDPM's ancestral sampler: all T steps, x_{t-1} = mean(x_t, eps) + sigma_t z (``ddpm.reverse_step``).

    variance: "beta" (sigma_t^2 = beta_t) or "posterior" (beta~_t); clip_x0: clamp x0_hat to [-1, 1].
    Draws one noise tensor at every step, t = 0 included (where it is multiplied by 0).
    """

    def __init__(self, schedule: NoiseSchedule, variance: str = "beta", clip_x0: bool = True):
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        self.schedule, self.variance, self.clip_x0 = schedule, variance, clip_x0
        self.timesteps = list(range(schedule.T - 1, -1, -1))

    def step(self, eps: Tensor, x: Tensor, i: int, generator: torch.Generator | None) -> Tensor:
        return reverse_step(eps, x, self.t_at(i, x), self.schedule, cpu_noise(x, generator),
                            variance=self.variance, clip_x0=self.clip_x0)


class DDIMRule(IntegerStepRule):
    """DDIM on ``steps`` evenly spaced steps (``ddim_timesteps``), the last one landing on the data.

    eta = 0: deterministic (no random numbers after x_T); eta > 0 draws one noise tensor per step,
    with ``noise(x, generator)`` (default :func:`cpu_noise`; video samplers pass frame-correlated noise).
    """

    def __init__(self, schedule: NoiseSchedule, steps: int, eta: float = 0.0, clip_x0: bool = True,
                 noise: Callable[[Tensor, torch.Generator | None], Tensor] = cpu_noise):
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.schedule, self.eta, self.clip_x0, self.noise = schedule, eta, clip_x0, noise
        self.timesteps = ddim_timesteps(steps, schedule.T)

    def step(self, eps: Tensor, x: Tensor, i: int, generator: torch.Generator | None) -> Tensor:
        t_prev = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1     # -1: the data
        noise = self.noise(x, generator) if self.eta > 0 else None
        return ddim_step(eps, x, self.t_at(i, x), t_prev, self.schedule, self.eta, noise, clip_x0=self.clip_x0)


def solve(fn: Callable[[Tensor, Tensor], Tensor], x_T: Tensor, rule: StepRule,
          generator: torch.Generator | None = None, trajectory_every: int = 0, progress: bool = True):
    """Run ``rule`` from x_T (B, ...) with the prediction function ``fn(x, t)``.  Returns x0, or (x0, frames).

    trajectory_every = k > 0 also returns every k-th intermediate x (on the CPU), x_T first and
    the result last, for animations.
    """
    x = rule.start(x_T)
    n = len(rule.timesteps)
    frames = [x.cpu()] if trajectory_every else None
    for i in tqdm(range(n), desc=type(rule).__name__, leave=False, disable=not progress):
        out = fn(rule.model_input(x, i), rule.t_at(i, x))
        x = rule.step(out, x, i, generator)
        if trajectory_every and ((i + 1) % trajectory_every == 0 or i + 1 == n):
            frames.append(x.cpu())
    return (x, frames) if trajectory_every else x


def innermost_model(fn):
    """The network inside a stack of wrappers (each wrapper keeps it in ``.model``)."""
    while not isinstance(fn, torch.nn.Module) and hasattr(fn, "model"):
        fn = fn.model
    return fn


def model_device(fn) -> torch.device:
    """The device of the network inside ``fn`` (the CPU for a parameter-free function)."""
    params = getattr(innermost_model(fn), "parameters", None)
    return next(iter(params()), torch.empty(0)).device if params else torch.device("cpu")


@torch.no_grad()
def sample(fn: Callable[[Tensor, Tensor], Tensor], shape: Sequence[int], rule: StepRule | NoiseSchedule,
           generator: torch.Generator | None = None, x_T: Tensor | None = None, device=None,
           trajectory_every: int = 0, progress: bool = True):
    """Generate a batch from noise: the loop + a rule + whatever wrappers ``fn`` carries.  -> x0 (B, ...) in [-1, 1].

    fn(x, t): a network or a wrapped one (``guidance.ClassifierFreeGuidance(model, cond, uncond, s)``,
    ``objectives.EpsFromV(fn, schedule)``, ``guidance.classifier_guidance_fn(...)``); it must return eps.
    rule: a step rule; a bare NoiseSchedule means DDPM's full ancestral chain, ``AncestralRule(schedule)``.
    x_T: the starting noise (drawn on the CPU from ``generator`` when None). The network is put in
    eval mode for the run and restored afterwards. Returns (x0, frames) when trajectory_every > 0.

        sample(unet, (16, 1, 16, 16), DDIMRule(schedule, steps=25), generator=g)
    """
    rule = AncestralRule(schedule=rule) if isinstance(rule, NoiseSchedule) else rule
    device = device or model_device(fn)
    x = torch.randn(tuple(shape), generator=generator).to(device) if x_T is None else x_T.to(device)
    if x.shape != torch.Size(shape):
        raise ValueError(f"x_T has shape {tuple(x.shape)}, expected {tuple(shape)}")
    net = innermost_model(fn)
    was_training = getattr(net, "training", False)
    if hasattr(net, "eval"):
        net.eval()
    out = solve(fn, x, rule, generator, trajectory_every, progress)
    if was_training:
        net.train()
    return out
