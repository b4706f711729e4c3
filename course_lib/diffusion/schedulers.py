"""Any `diffusers` scheduler (DDPM, DDIM, PNDM, DPM-Solver, Euler ...) as a step rule (Phase 4 · 04).

The scheduler gets our exact betas (``trained_betas``), so it sees the same diffusion the model
was trained on; it then decides which steps to visit and how to combine the model's eps
predictions. :class:`SchedulerRule` adapts its ``set_timesteps`` / ``scale_model_input`` /
``step`` to the course's one sampling loop (``course_lib.diffusion.solver``), so guidance and the
v -> eps conversion wrap the model exactly as for the course's own rules.
``diffusers`` is imported only when these functions are called.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import Tensor

from course_lib.diffusion.schedule import NoiseSchedule
from course_lib.diffusion.solver import sample

SCHEDULERS = ("ddpm", "ddim", "pndm", "dpm", "euler")


def diffusers_scheduler(name: str, schedule: NoiseSchedule, **kwargs):
    """A `diffusers` scheduler named ``name`` (one of SCHEDULERS) with this schedule's betas.

    Extra keyword arguments go to the scheduler (e.g. ``solver_order=2`` for "dpm").
    """
    import diffusers

    classes = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler,
               "pndm": diffusers.PNDMScheduler, "dpm": diffusers.DPMSolverMultistepScheduler,
               "euler": diffusers.EulerDiscreteScheduler}
    if name not in classes:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {SCHEDULERS}")
    config = dict(num_train_timesteps=schedule.T, trained_betas=schedule.betas.double().tolist(),
                  prediction_type=kwargs.pop("prediction_type", "epsilon"))
    if name in ("ddpm", "ddim"):
        config["clip_sample"] = kwargs.pop("clip_sample", True)
    if name == "ddim":  # the course's DDIM: start at T - 1, end on the data (a_bar = 1)
        config["timestep_spacing"] = kwargs.pop("timestep_spacing", "trailing")
        config["set_alpha_to_one"] = kwargs.pop("set_alpha_to_one", True)
    if name == "pndm":
        config["skip_prk_steps"] = True
    return classes[name](**config, **kwargs)


class SchedulerRule:
    """A `diffusers` scheduler as a step rule of ``solver.solve``, with ``steps`` of its steps.

    The loop every `diffusers` pipeline runs, in the rule's words: x = x_T * init_noise_sigma;
    for t in timesteps: eps = model(scale_model_input(x, t), t); x = step(eps, t, x).prev_sample.
    Stochastic schedulers draw their noise from the loop's CPU generator. ``start`` calls
    ``set_timesteps`` again, which clears a multistep solver's history, so a rule can be reused.
    """

    def __init__(self, scheduler, steps: int, eta: float = 0.0):
        self.scheduler, self.steps = scheduler, steps
        scheduler.set_timesteps(steps)
        self.timesteps = scheduler.timesteps
        takes = inspect.signature(scheduler.step).parameters
        if eta and "eta" not in takes:
            raise ValueError(f"{type(scheduler).__name__} has no eta (DDIM's noise level); use eta=0")
        self._extra = {"eta": eta} if eta else {}
        self._takes_generator = "generator" in takes

    def start(self, x_T: Tensor) -> Tensor:
        self.scheduler.set_timesteps(self.steps)
        self.timesteps = self.scheduler.timesteps
        return x_T * self.scheduler.init_noise_sigma

    def t_at(self, i: int, x: Tensor) -> Tensor:
        """The scheduler's i-th step for every sample, (B,); some schedulers (Euler) visit fractional steps."""
        return self.timesteps[i].to(x.device).expand(x.shape[0])

    def model_input(self, x: Tensor, i: int) -> Tensor:
        return self.scheduler.scale_model_input(x, self.timesteps[i])

    def step(self, eps: Tensor, x: Tensor, i: int, generator: torch.Generator | None) -> Tensor:
        extra = {"generator": generator} if self._takes_generator else {}
        return self.scheduler.step(eps, self.timesteps[i], x, **extra, **self._extra).prev_sample


def sample_with_scheduler(fn: Callable, scheduler, shape: tuple[int, ...], steps: int,
                          generator: torch.Generator | None = None, device=None, progress: bool = True,
                          eta: float = 0.0) -> Tensor:
    """Sample (B, C, H, W) in [-1, 1] with a `diffusers` scheduler: ``solver.sample`` with a :class:`SchedulerRule`.

    fn(x, t) -> eps: the network, or a wrapped one (e.g. ``guidance.ClassifierFreeGuidance``).
    eta: DDIM's noise level (0: deterministic; 1: as much fresh noise as DDPM), for schedulers that have one.
    """
    return sample(fn, shape, SchedulerRule(scheduler, steps, eta), generator=generator, device=device,
                  progress=progress)
