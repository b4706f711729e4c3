"""Diffusion models (Phase 4): schedules, the DDPM objective, samplers, guidance, the U-Net.

One convention everywhere (see ``schedule``): x0 in [-1, 1]; integer t in [0, T), t = 0 the
least noisy; x_t = sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t) eps; the model predicts eps; the
guidance scale s mixes eps_u + s (eps_c - eps_u) (s = 1: plain conditional model). A model may
predict v = sqrt(a_bar_t) eps - sqrt(1 - a_bar_t) x0 instead (``prediction="v"`` in the loss and
in ``sample``; Phase 4 · 05 shows why).

More in the submodules: ``score`` (score matching on 2-D toys), ``guidance`` (condition dropout,
noise-aware classifier), ``text2image`` and ``export`` (a `diffusers` pipeline).
"""
from course_lib.diffusion.ddpm import (classifier_guided_eps, ddim_step, ddim_timesteps, ddpm_loss,
                                       eps_from_v, guided_eps, predict_x0, reverse_step, sample, v_target)
from course_lib.diffusion.latent import (encode_dataset, latent_scale_factor, scale_latents,
                                         unscale_latents)
from course_lib.diffusion.schedule import (NoiseSchedule, cosine_betas, linear_betas, q_sample,
                                           to_image_range, to_model_range)
from course_lib.diffusion.schedulers import diffusers_scheduler, sample_with_scheduler

__all__ = ["NoiseSchedule", "linear_betas", "cosine_betas", "q_sample", "to_model_range",
           "to_image_range", "ddpm_loss", "v_target", "eps_from_v", "predict_x0", "reverse_step", "ddim_step", "ddim_timesteps",
           "guided_eps", "classifier_guided_eps", "sample", "diffusers_scheduler",
           "sample_with_scheduler", "latent_scale_factor", "encode_dataset",
           "scale_latents", "unscale_latents"]
