"""Diffusion models (Phase 4), in two halves: what is learned, and how it is sampled.

What is learned
    ``schedule``     NoiseSchedule (beta, alpha, a_bar tables), q_sample, [0, 1] <-> [-1, 1]
    ``path``         the course's time convention (stated there, once) and ``DiffusionPath``:
                     ``path.sample(x0, x1, t) -> PathSample(x_t, target, x0, x1, t)``
    ``objectives``   eps / v targets and the conversions between them (``EpsFromV`` wrapper)
    ``ddpm``         DDPM and DDIM equation by equation: ``ddpm_loss``, ``predict_x0``,
                     ``reverse_step``, ``ddim_step``, ``guided_eps``, ``classifier_guided_eps``
How it is sampled
    ``solver``       one loop (``solve``) and step rules (``AncestralRule``, ``DDIMRule``);
                     ``sample(fn, shape, rule)`` composes them
    ``guidance``     classifier-free and classifier guidance as wrappers around the model call;
                     condition dropout and the noise-aware classifier's loss
    ``schedulers``   any `diffusers` scheduler as a step rule (``SchedulerRule``)
And: ``score`` (score matching on 2-D toys), ``latent`` (latent scale), ``text2image`` and
``export`` (a `diffusers` pipeline). The noise-aware classifier is a model:
``course_lib.models.noisy_classifier``; sweeps that need a judge live in ``course_lib.eval.sweeps``.

Phase 5 adds flow matching as a path beside ``DiffusionPath`` and its ODE solvers as step rules.
"""
from course_lib.diffusion.ddpm import (classifier_guided_eps, ddim_step, ddim_timesteps, ddpm_loss, guided_eps,
                                       predict_x0, reverse_step)
from course_lib.diffusion.guidance import ClassifierFreeGuidance, ClassifierGuidance
from course_lib.diffusion.latent import encode_dataset, latent_scale_factor, scale_latents, unscale_latents
from course_lib.diffusion.objectives import EpsFromV, eps_from_v, v_target
from course_lib.diffusion.path import DiffusionPath, PathSample
from course_lib.diffusion.schedule import (NoiseSchedule, cosine_betas, linear_betas, q_sample, to_image_range,
                                           to_model_range)
from course_lib.diffusion.schedulers import SchedulerRule, diffusers_scheduler, sample_with_scheduler
from course_lib.diffusion.solver import AncestralRule, DDIMRule, sample, solve

__all__ = ["NoiseSchedule", "linear_betas", "cosine_betas", "q_sample", "to_model_range",
           "to_image_range", "DiffusionPath", "PathSample", "v_target", "eps_from_v", "EpsFromV",
           "ddpm_loss", "predict_x0", "reverse_step", "ddim_step", "ddim_timesteps",
           "guided_eps", "classifier_guided_eps", "solve", "sample", "AncestralRule", "DDIMRule",
           "ClassifierFreeGuidance", "ClassifierGuidance", "SchedulerRule", "diffusers_scheduler",
           "sample_with_scheduler", "latent_scale_factor", "encode_dataset",
           "scale_latents", "unscale_latents"]
