"""Drive a course model with any `diffusers` scheduler (DDPM, DDIM, PNDM, DPM-Solver, Euler ...).

The scheduler gets our exact betas (``trained_betas``), so it sees the same diffusion the model
was trained on; it then decides which steps to visit and how to combine the model's eps
predictions. ``diffusers`` is imported only when these functions are called.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor
from tqdm.auto import tqdm

from course_lib.diffusion.ddpm import guided_eps
from course_lib.diffusion.schedule import NoiseSchedule

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
                  prediction_type="epsilon")
    if name in ("ddpm", "ddim"):
        config["clip_sample"] = kwargs.pop("clip_sample", True)
    if name == "ddim":  # the course's DDIM: start at T - 1, end on the data (a_bar = 1)
        config["timestep_spacing"] = kwargs.pop("timestep_spacing", "trailing")
        config["set_alpha_to_one"] = kwargs.pop("set_alpha_to_one", True)
    if name == "pndm":
        config["skip_prk_steps"] = True
    return classes[name](**config, **kwargs)


@torch.no_grad()
def sample_with_scheduler(model: Callable, scheduler, shape: tuple[int, ...], steps: int, *,
                          cond: Mapping | None = None, uncond: Mapping | None = None,
                          guidance_scale: float = 1.0, generator: torch.Generator | None = None,
                          device=None, progress: bool = True) -> Tensor:
    """Sample (B, C, H, W) in [-1, 1] with a `diffusers` scheduler and ``steps`` model calls' worth of steps.

    The loop every `diffusers` pipeline runs:  x ~ N(0, sigma_max^2 I); for t in timesteps:
    eps = model(scale_model_input(x, t), t); x = scheduler.step(eps, t, x).prev_sample.
    """
    device = device or next(model.parameters()).device
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=generator).to(device) * scheduler.init_noise_sigma
    was_training = model.training
    model.eval()
    for t in tqdm(scheduler.timesteps, desc=type(scheduler).__name__, leave=False, disable=not progress):
        x_in = scheduler.scale_model_input(x, t)
        tt = t.to(device).expand(shape[0])  # some schedulers (Euler) visit fractional steps
        eps = guided_eps(model, x_in, tt, cond, uncond, guidance_scale)
        x = scheduler.step(eps, t, x, generator=generator).prev_sample if _takes_generator(scheduler) \
            else scheduler.step(eps, t, x).prev_sample
    model.train(was_training)
    return x


def _takes_generator(scheduler) -> bool:
    import inspect
    return "generator" in inspect.signature(scheduler.step).parameters
