"""Save the course text-to-image model as a `diffusers` pipeline folder, and load it back offline.

    folder/
      model_index.json   the class of each component, e.g. ["course_lib.diffusion.export", "CourseUNetModel"]
      unet/          config.json + diffusion_pytorch_model.safetensors
      vae/           config.json (with scaling_factor) + weights
      text_encoder/  config.json (with the tokenizer's vocabulary) + weights
      scheduler/     scheduler_config.json (our exact betas; DDIM with "trailing" steps)

    >>> export_pipeline(model, "out/shapes-t2i")                          # model: a TextToImage
    >>> pipe = CourseTextToImagePipeline.from_pretrained("out/shapes-t2i")  # no network needed
    >>> pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    >>> images = pipe("a large red circle at the top", guidance_scale=3.0, num_inference_steps=20,
    ...               generator=torch.Generator().manual_seed(0), output_type="pt").images

Each course network is wrapped in a ``ModelMixin + ConfigMixin`` class: ``register_to_config``
records the constructor's arguments in ``config.json`` and ``ModelMixin`` saves and loads the
weights (safetensors). ``model_index.json`` names each wrapper by its module path; `diffusers`
resolves such a custom module from ``sys.modules``, so import this module before loading (using
``CourseTextToImagePipeline.from_pretrained`` does that for you). The pipeline runs the loop every
`diffusers` pipeline runs, so any `diffusers` scheduler built from ``pipe.scheduler.config``
(which carries our betas) can drive it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, ImagePipelineOutput, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import Tensor

from course_lib.data.text import GRAMMAR_WORDS, CaptionTokenizer
from course_lib.diffusion.guidance import ClassifierFreeGuidance
from course_lib.diffusion.schedule import NoiseSchedule, to_image_range
from course_lib.diffusion.schedulers import diffusers_scheduler, sample_with_scheduler
from course_lib.diffusion.text2image import TextToImage
from course_lib.models.autoencoder import LatentAutoencoder
from course_lib.models.clip import TextEncoder
from course_lib.models.unet import UNet

__all__ = ["BASE_MODEL_DIR", "CourseUNetModel", "CourseAutoencoderModel", "CourseTextEncoderModel",
           "CourseTextToImagePipeline", "ddim_scheduler", "pipeline_from_model", "export_pipeline",
           "model_from_pipeline"]

BASE_MODEL_DIR = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes_sd"
"""The course's base text-to-image model (one and two objects), made by scripts/train_base_model.py."""

# ----------------------------------------------------------------------------- the components
class CourseUNetModel(ModelMixin, ConfigMixin):
    """The course :class:`UNet` as a `diffusers` model.

    ``forward(sample, timestep, encoder_hidden_states, encoder_attention_mask)``: the names `diffusers` uses.
    """

    @register_to_config
    def __init__(self, in_ch: int = 4, out_ch: int | None = None, base: int = 32,
                 mults: Sequence[int] = (1, 2), num_res_blocks: int = 1, attn_levels: Sequence[int] = (1,),
                 num_classes: int | None = None, context_dim: int | None = None, num_heads: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        self.net = UNet(in_ch, out_ch, base, tuple(mults), num_res_blocks, tuple(attn_levels),
                        num_classes, context_dim, num_heads, dropout)

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor,
                encoder_attention_mask: Tensor | None = None) -> Tensor:
        """sample (B, c, s, s); timestep (B,) or scalar; encoder_hidden_states (B, T, D); mask (B, T) -> eps."""
        return self.net(sample, timestep, context=encoder_hidden_states, context_mask=encoder_attention_mask)


class CourseAutoencoderModel(ModelMixin, ConfigMixin):
    """The :class:`LatentAutoencoder` plus its ``scaling_factor`` (diffusers' name for the latent scale)."""

    @register_to_config
    def __init__(self, in_ch: int = 3, latent_ch: int = 4, width: int = 32, levels: int = 2,
                 kl_weight: float = 1e-4, scaling_factor: float = 1.0):
        super().__init__()
        self.net = LatentAutoencoder(in_ch, latent_ch, width, levels, kl_weight)

    def encode(self, images: Tensor) -> Tensor:
        """(B, C, S, S) in [-1, 1] -> unscaled latents (B, latent_ch, S/f, S/f)."""
        return self.net.encode(images)

    def decode(self, latents: Tensor) -> Tensor:
        """Unscaled latents -> images (B, C, S, S), roughly in [-1, 1]."""
        return self.net.decode(latents)


class CourseTextEncoderModel(ModelMixin, ConfigMixin):
    """The course :class:`TextEncoder`, with the tokenizer's vocabulary in its config so that it travels along."""

    @register_to_config
    def __init__(self, vocabulary: Sequence[str] = (), context_length: int = 16, dim: int = 64,
                 depth: int = 2, num_heads: int = 4, embed_dim: int = 64, pad_id: int = 0,
                 eos_id: int = 2, pool: str = "mean"):
        super().__init__()
        extra = [w for w in list(vocabulary)[4:] if w not in GRAMMAR_WORDS]    # ids 0..3 are the special tokens
        self.tokenizer = CaptionTokenizer(extra_words=extra, context_length=context_length)
        if vocabulary and self.tokenizer.itos != list(vocabulary):
            raise ValueError("the saved vocabulary does not match CaptionTokenizer's: the grammar of "
                             "course_lib.data.text changed since this model was exported")
        self.net = TextEncoder(self.tokenizer.vocab_size, context_length, dim, depth, num_heads,
                               embed_dim, pad_id, eos_id, pool)

    def encode_prompt(self, prompts: str | Sequence[str]) -> tuple[Tensor, Tensor]:
        """Strings -> (features (B, T, D), mask (B, T) bool, True at real tokens)."""
        tokens = self.tokenizer(prompts).to(self.device)
        return self.net.encode_tokens(tokens), self.net.padding_mask(tokens)

    def forward(self, tokens: Tensor) -> Tensor:
        """ids (B, T) -> per-token features (B, T, D)."""
        return self.net.encode_tokens(tokens)


_PREDICTION_TYPE = {"eps": "epsilon", "v": "v_prediction"}          # course name -> diffusers name


def ddim_scheduler(schedule: NoiseSchedule, prediction: str = "eps") -> DDIMScheduler:
    """`diffusers`' DDIM set up to equal the course's ``ddim_step`` (our betas, trailing steps, no
    clipping); ``prediction`` "v" sets its ``prediction_type="v_prediction"``."""
    return diffusers_scheduler("ddim", schedule, clip_sample=False, prediction_type=_PREDICTION_TYPE[prediction])


# ----------------------------------------------------------------------------- the pipeline
class CourseTextToImagePipeline(DiffusionPipeline):
    """Text -> shapes image with the course networks, in the shape of every `diffusers` pipeline.

    Components: ``unet`` (CourseUNetModel), ``vae`` (CourseAutoencoderModel), ``text_encoder``
    (CourseTextEncoderModel, which holds the tokenizer) and ``scheduler`` (any `diffusers` scheduler).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, unet: CourseUNetModel, vae: CourseAutoencoderModel,
                 text_encoder: CourseTextEncoderModel, scheduler):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, text_encoder=text_encoder, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                 guidance_scale: float = 3.0, num_inference_steps: int = 20,
                 generator: torch.Generator | None = None, num_images_per_prompt: int = 1,
                 image_size: int = 32, output_type: str = "pil", return_dict: bool = True, eta: float = 0.0):
        """Images for ``prompt`` (one string or a list).

        guidance: eps = eps_neg + s (eps_text - eps_neg), eps_neg from ``negative_prompt`` (the
        empty caption when None); s = guidance_scale (1: no guidance). The starting noise is drawn
        on the CPU from ``generator``, so a seed gives the same images on any device.
        eta: DDIM's noise level (0: deterministic, 1: fresh noise at every step), as in `diffusers`' pipelines.
        output_type: "pt" (tensor (B, 3, S, S) in [0, 1]), "np" ((B, S, S, 3)) or "pil".
        """
        if output_type not in ("pt", "np", "pil"):
            raise ValueError(f"output_type must be 'pt', 'np' or 'pil', got {output_type!r}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        negatives = "" if negative_prompt is None else negative_prompt
        negatives = [negatives] * len(prompts) if isinstance(negatives, str) else \
            [n for n in negatives for _ in range(num_images_per_prompt)]
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(negatives)} negative prompts")
        device = self.unet.device
        context, mask = self.text_encoder.encode_prompt(prompts)
        neg_context, neg_mask = self.text_encoder.encode_prompt(negatives)
        cond = {"encoder_hidden_states": context, "encoder_attention_mask": mask}
        uncond = {"encoder_hidden_states": neg_context, "encoder_attention_mask": neg_mask}

        shape = (len(prompts), *self.vae.net.latent_shape(image_size))
        # the loop every diffusers pipeline runs, with eps = eps_neg + s (eps_text - eps_neg)
        guided = ClassifierFreeGuidance(self.unet, cond, uncond, guidance_scale)
        latents = sample_with_scheduler(guided, self.scheduler, shape, num_inference_steps, generator=generator,
                                        device=device, eta=eta,
                                        progress=not getattr(self, "_progress_bar_config", {}).get("disable", False))

        images = self.vae.decode(latents / self.vae.config.scaling_factor)      # x = decode(z / scale)
        images = to_image_range(images)                                        # [-1, 1] -> [0, 1]
        if output_type == "pt":
            out = images.cpu()
        else:
            out = images.permute(0, 2, 3, 1).float().cpu().numpy()
            if output_type == "pil":
                out = self.numpy_to_pil(out)
        return ImagePipelineOutput(images=out) if return_dict else (out,)


# ----------------------------------------------------------------------------- course <-> diffusers
def pipeline_from_model(model: TextToImage, scheduler=None) -> CourseTextToImagePipeline:
    """Wrap a trained :class:`TextToImage` (weights copied) as a pipeline (scheduler: :func:`ddim_scheduler`)."""
    if not isinstance(model, TextToImage):
        raise TypeError(f"model must be a TextToImage, got {type(model).__name__}")
    te, tok = model.text_encoder, model.tokenizer
    unet = CourseUNetModel(**model.unet.config)
    vae = CourseAutoencoderModel(**model.autoencoder.config, scaling_factor=float(model.latent_scale))
    text_encoder = CourseTextEncoderModel(vocabulary=list(tok.itos), context_length=te.context_length,
                                          dim=te.dim, depth=len(te.blocks), num_heads=te.blocks[0].attn.num_heads,
                                          embed_dim=te.proj.out_features, pad_id=te.pad_id, eos_id=te.eos_id,
                                          pool=te.pool_mode)
    unet.net.load_state_dict(model.unet.state_dict())
    vae.net.load_state_dict(model.autoencoder.state_dict())
    text_encoder.net.load_state_dict(te.state_dict())
    pipe = CourseTextToImagePipeline(unet=unet, vae=vae, text_encoder=text_encoder,
                                     scheduler=scheduler or ddim_scheduler(model.schedule, model.prediction))
    return pipe.to(model.device)


_SHIM = '''"""Lets `DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder, trust_remote_code=True)`
find the pipeline class, which lives in course_lib (pip install the course library first)."""
from course_lib.diffusion.export import CourseTextToImagePipeline  # noqa: F401
'''


def export_pipeline(model: TextToImage, folder: str | Path, scheduler=None) -> CourseTextToImagePipeline:
    """Save ``model`` as a `diffusers` pipeline folder (safetensors weights); returns the in-memory pipeline.

    Load it with ``CourseTextToImagePipeline.from_pretrained(folder)``, or with the generic
    ``DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder, trust_remote_code=True)``,
    which reads the one-line ``pipeline.py`` written here (it only imports the class from course_lib).
    """
    pipe = pipeline_from_model(model, scheduler)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    (Path(folder) / "pipeline.py").write_text(_SHIM)
    return pipe


def model_from_pipeline(pipe: CourseTextToImagePipeline) -> TextToImage:
    """The course :class:`TextToImage` that a pipeline holds (same modules, shared weights), with its schedule."""
    betas = torch.as_tensor(pipe.scheduler.betas, dtype=torch.float64)
    prediction = {v: k for k, v in _PREDICTION_TYPE.items()}[pipe.scheduler.config.prediction_type]
    return TextToImage(pipe.text_encoder.tokenizer, pipe.text_encoder.net, pipe.unet.net, pipe.vae.net,
                       NoiseSchedule(betas), pipe.vae.config.scaling_factor, prediction).to(pipe.unet.device)
