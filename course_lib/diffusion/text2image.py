"""A small Stable-Diffusion-like text-to-image model for the shapes world (Phase 4 · 07).

    caption --CaptionTokenizer--> ids (B, T) --TextEncoder.encode_tokens--> context (B, T, D)
    noise z_T (B, c, s, s) --U-Net(z_t, t, context) x steps (DDIM, guidance)--> z_0
    z_0 / scale --LatentAutoencoder.decode--> image (B, 3, S, S)

- the diffusion runs on ``scale * z``, the autoencoder's latents brought to unit variance
  (``course_lib.diffusion.latent``); there is no clipping of x0 in latent space;
- the U-Net reads the text through cross-attention (``course_lib.models.unet.Attention``),
  padding masked out with ``TextEncoder.padding_mask``;
- the empty caption ``""`` (``<bos> <eos>``) is the unconditional input of classifier-free
  guidance; a negative prompt simply takes its place:
  ``eps = eps_neg + s (eps_text - eps_neg)`` (s = 1: the plain conditional model);
- training shows the model full captions, *partial* captions ("a red shape", "a circle at the
  top") and empty ones, so that short prompts and negative prompts mean something.
"""
from __future__ import annotations

import zlib
from typing import Sequence

import torch
from torch import Tensor, nn

from course_lib.data.shapes import COLOURS, POSITIONS, SHAPE_KINDS, SIZES
from course_lib.data.text import CaptionTokenizer
from course_lib.diffusion.ddpm import ddpm_loss
from course_lib.diffusion.guidance import ClassifierFreeGuidance
from course_lib.diffusion.objectives import EpsFromV
from course_lib.diffusion.schedule import NoiseSchedule, to_image_range
from course_lib.diffusion.schedulers import SchedulerRule
from course_lib.diffusion.solver import DDIMRule, sample
from course_lib.models.autoencoder import LatentAutoencoder
from course_lib.models.clip import TextEncoder
from course_lib.models.controlnet import ControlledUNet, ControlNet
from course_lib.models.unet import UNet

__all__ = ["PLACEHOLDER", "ATTRS", "RESERVED_WORDS", "make_tokenizer", "is_held_out", "partial_caption",
           "training_captions", "TextToImage", "word_attention_maps", "controlled_generate"]

PLACEHOLDER = "shape"          # stands in for the shape's kind in a partial caption: "a red shape"
ATTRS = ("shape", "colour", "size", "position")   # the columns of the (N, 4) attribute tables below
# words in the base model's vocabulary that no training caption contains: identifiers for DreamBooth
RESERVED_WORDS = ("sks", "zwx", "qlt", "vyr")
_COLOUR_NAMES = tuple(COLOURS)


def make_tokenizer(context_length: int = 12, reserved: Sequence[str] = ()) -> CaptionTokenizer:
    """The caption tokenizer with PLACEHOLDER and the ``reserved`` words (e.g. RESERVED_WORDS) added.

    12 tokens fit every one-object caption and every two-object one ("a small blue square left of
    a large green triangle" is 10 words + <bos> + <eos>).
    """
    return CaptionTokenizer(extra_words=(PLACEHOLDER, *reserved), context_length=context_length)


def is_held_out(caption: str, every: int = 10) -> bool:
    """True for about one caption in ``every``: the captions the course's base model never trained on.

    A fixed rule of the text alone (CRC-32 of the caption, modulo ``every``), so every notebook and
    script draws the same split without a file: 53 of the 540 one-object captions are held out.
    """
    return zlib.crc32(" ".join(caption.split()).encode()) % every == 0


def partial_caption(shape: int, colour: int, size: int, position: int,
                    keep: Sequence[bool] = (True, True, True, True)) -> str:
    """A caption that names only the kept attributes (order of ``keep``: shape, colour, size, position).

    All kept: the grammar's caption, ``"a small red circle at the top"``; shape and position
    dropped: ``"a small red shape"``; nothing kept: ``"a shape"``.
    """
    k_shape, k_colour, k_size, k_pos = (bool(k) for k in keep)
    words = ["a"]
    if k_size:
        words.append(SIZES[size])
    if k_colour:
        words.append(_COLOUR_NAMES[colour])
    words.append(SHAPE_KINDS[shape] if k_shape else PLACEHOLDER)
    if k_pos:
        words += ["at", "the", POSITIONS[position]]
    return " ".join(words)


def training_captions(attrs: Tensor, p_empty: float = 0.1, p_partial: float = 0.25,
                      generator: torch.Generator | None = None) -> list[str]:
    """One caption per row of ``attrs`` (N, 4) (columns ATTRS), with the dropout of classifier-free guidance.

    Each row independently gets: the empty caption with probability p_empty (the unconditional
    model), a partial caption (each attribute kept with probability 1/2) with probability
    p_partial, and the full caption otherwise.
    """
    if attrs.ndim != 2 or attrs.shape[1] != 4:
        raise ValueError(f"attrs must be (N, 4) with columns {ATTRS}, got {tuple(attrs.shape)}")
    if not (0 <= p_empty and 0 <= p_partial and p_empty + p_partial <= 1):
        raise ValueError("p_empty and p_partial must be probabilities with p_empty + p_partial <= 1")
    n = len(attrs)
    u = torch.rand(n, generator=generator)
    keep = torch.rand(n, 4, generator=generator) < 0.5
    rows = attrs.tolist()
    out = []
    for i in range(n):
        if u[i] < p_empty:
            out.append("")
        elif u[i] < p_empty + p_partial:
            out.append(partial_caption(*rows[i], keep=keep[i].tolist()))
        else:
            out.append(partial_caption(*rows[i]))
    return out


class TextToImage(nn.Module):
    """Tokenizer + text encoder + cross-attention U-Net + latent autoencoder + latent scale.

    Args:
        tokenizer: a CaptionTokenizer (e.g. :func:`make_tokenizer`); text_encoder: a TextEncoder
        of the same vocabulary; unet: a UNet whose ``context_dim`` is the encoder's width and whose
        ``in_ch`` is the autoencoder's ``latent_ch``; autoencoder: a (trained) LatentAutoencoder;
        schedule: the NoiseSchedule; latent_scale: 1 / std of the latents; prediction: what the
        U-Net predicts, "eps" or "v" (v = sqrt(a_bar_t) eps - sqrt(1 - a_bar_t) z_0; sampling turns
        it back into eps, so every sampler works unchanged).
    """

    def __init__(self, tokenizer: CaptionTokenizer, text_encoder: TextEncoder, unet: UNet,
                 autoencoder: LatentAutoencoder, schedule: NoiseSchedule, latent_scale: float = 1.0,
                 prediction: str = "eps"):
        super().__init__()
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")
        if unet.context_dim != text_encoder.dim:
            raise ValueError(f"the U-Net cross-attends to width {unet.context_dim} but the text encoder "
                             f"gives {text_encoder.dim}: build UNet(context_dim=text_encoder.dim)")
        if unet.in_ch != autoencoder.latent_ch:
            raise ValueError(f"the U-Net takes {unet.in_ch} channels but the latents have "
                             f"{autoencoder.latent_ch}: build UNet(in_ch=autoencoder.latent_ch)")
        if tokenizer.vocab_size > text_encoder.token_emb.num_embeddings:
            raise ValueError("the tokenizer knows more words than the text encoder has embeddings")
        self.tokenizer, self.schedule, self.prediction = tokenizer, schedule, prediction
        self.text_encoder, self.unet, self.autoencoder = text_encoder, unet, autoencoder
        self.register_buffer("latent_scale", torch.tensor(float(latent_scale)))

    @property
    def device(self) -> torch.device:
        return self.latent_scale.device

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(latent_ch, s, s) of the latents of an image_size x image_size image."""
        return self.autoencoder.latent_shape(image_size)

    def encode_prompt(self, prompts: str | Sequence[str]) -> tuple[Tensor, Tensor]:
        """Strings -> (context (B, T, D), context_mask (B, T) bool, True at real tokens)."""
        tokens = self.tokenizer(prompts).to(self.device)
        return self.text_encoder.encode_tokens(tokens), self.text_encoder.padding_mask(tokens)

    def forward(self, z_t: Tensor, t: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """eps_theta(z_t, t, text): z_t (B, c, s, s), t (B,), context (B, T, D) -> (B, c, s, s)."""
        return self.unet(z_t, t, context=context, context_mask=context_mask)

    def loss(self, latents: Tensor, captions: Sequence[str]) -> Tensor:
        """The DDPM loss (eps or v target) on scaled latents (B, c, s, s) with their captions; trains
        U-Net and text encoder together."""
        if len(captions) != len(latents):
            raise ValueError(f"{len(latents)} latents but {len(captions)} captions")
        context, mask = self.encode_prompt(list(captions))
        return ddpm_loss(self.unet, latents, self.schedule, cond={"context": context, "context_mask": mask},
                         prediction=self.prediction)

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """Images (B, 3, S, S) in [-1, 1], any device -> scaled latents ``scale * z`` (B, c, s, s), model device."""
        return self.autoencoder.encode(images.to(self.device)) * self.latent_scale

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """Scaled latents (B, c, s, s), any device -> images (B, 3, S, S) in [0, 1], CPU:  x = decode(z / scale)."""
        return to_image_range(self.autoencoder.decode(latents.to(self.device) / self.latent_scale)).cpu()

    def _conditions(self, prompt, negative_prompt, n: int | None):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if n is not None and len(prompts) == 1:
            prompts = prompts * n
        negatives = negative_prompt if negative_prompt is not None else ""
        negatives = [negatives] * len(prompts) if isinstance(negatives, str) else list(negatives)
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(negatives)} negative prompts")
        context, mask = self.encode_prompt(prompts)
        neg_context, neg_mask = self.encode_prompt(negatives)
        return ({"context": context, "context_mask": mask},
                {"context": neg_context, "context_mask": neg_mask})

    @torch.no_grad()
    def generate(self, prompt: str | Sequence[str], *, negative_prompt: str | Sequence[str] | None = None,
                 guidance_scale: float = 3.0, steps: int = 20, num_images: int | None = None,
                 image_size: int = 32, generator: torch.Generator | None = None, sampler=None,
                 eta: float = 0.0, return_latents: bool = False, unet: nn.Module | None = None,
                 extra_inputs: dict | None = None) -> Tensor:
        """Images (B, 3, S, S) in [0, 1] on the CPU for B prompts (or ``num_images`` copies of one prompt);
        with ``return_latents=True`` the scaled latents (B, c, s, s), on the CPU too.

        Guidance: eps = eps_neg + s (eps_text - eps_neg), where eps_neg is the model on the
        negative prompt, or on the empty caption when there is none. Sampling: the course DDIM
        (no clipping) with ``steps`` steps and ``eta`` (0: deterministic; 1: fresh noise at every
        step, as much as DDPM's); ``sampler`` may instead be a `diffusers` scheduler (run for
        ``steps`` steps, see ``course_lib.diffusion.schedulers``) or any step rule.
        ``unet`` samples with another network in place of the model's U-Net (e.g. a ``ControlledUNet``),
        ``extra_inputs`` are more keyword inputs for it, the same in both halves of guidance
        (e.g. ``{"control": control}``).
        """
        was_training = self.training
        self.eval()
        cond, uncond = self._conditions(prompt, negative_prompt, num_images)
        if extra_inputs:
            cond, uncond = {**cond, **extra_inputs}, {**uncond, **extra_inputs}
        shape = (cond["context"].shape[0], *self.latent_shape(image_size))
        if sampler is None:
            rule = DDIMRule(self.schedule, steps, eta=eta, clip_x0=False)
        elif getattr(getattr(sampler, "config", None), "prediction_type", "epsilon") != "epsilon":
            raise ValueError("generate hands the sampler eps: give it a scheduler with prediction_type='epsilon'")
        else:
            rule = sampler if hasattr(sampler, "t_at") else SchedulerRule(sampler, steps)
        guided = ClassifierFreeGuidance(self.unet if unet is None else unet, cond, uncond, guidance_scale)
        if self.prediction == "v":                 # guidance mixes v's; the step rules want eps
            guided = EpsFromV(guided, self.schedule)
        z = sample(guided, shape, rule, generator=generator, device=self.device, progress=False)
        self.train(was_training)
        return z.cpu() if return_latents else self.decode_latents(z)


@torch.no_grad()
def word_attention_maps(model: TextToImage, prompt: str, latents: Tensor, t: int,
                        image_size: int = 32) -> tuple[list[str], Tensor]:
    """Where each word of ``prompt`` is looked at: the U-Net's cross-attention at step t.

    latents: (1, c, s, s) a noisy latent at step t (any device). Runs the U-Net once with every
    Attention's ``record_cross`` on, averages the weights over heads and over every attention layer
    (each upsampled to image_size), and returns (the words, maps (n_words, image_size, image_size)
    on the CPU), each map normalised to sum to 1. <bos>, <eos> and padding are left out.
    """
    from course_lib.models.unet import Attention
    context, mask = model.encode_prompt(prompt)
    layers = [m for m in model.unet.modules() if isinstance(m, Attention) and m.context_dim is not None]
    for m in layers:
        m.record_cross = True
    try:
        model.unet(latents.to(model.device), torch.full((1,), t, device=model.device), context=context,
                   context_mask=mask)
        maps = []
        for m in layers:
            w = m.last_cross_weights.mean(1)[0]                        # (HW, T): mean over heads
            side = int(round(w.shape[0] ** 0.5))
            w = w.T.reshape(-1, 1, side, side)                         # (T, 1, h, w)
            maps.append(nn.functional.interpolate(w, size=(image_size, image_size), mode="nearest")[:, 0])
    finally:
        for m in layers:
            m.record_cross = False
    words = model.tokenizer.split(prompt)
    avg = torch.stack(maps).mean(0)                                   # (T, S, S)
    word_maps = avg[1:1 + len(words)]                                  # skip <bos>; stop before <eos>
    return words, (word_maps / word_maps.sum(dim=(1, 2), keepdim=True)).cpu()


def controlled_generate(model: TextToImage, controlnet: ControlNet, prompts: Sequence[str], control: Tensor, *,
                        guidance_scale: float = 2.0, steps: int = 20, eta: float = 1.0, scale: float = 1.0,
                        generator: torch.Generator | None = None, image_size: int = 32) -> Tensor:
    """Images (B, 3, S, S) in [0, 1], CPU, from a TextToImage ``model`` steered by a ControlNet (Phase 4 · 08).

    control: (B, k, S, S) control images (one per prompt), in both halves of guidance; ``scale`` is
    the control strength. Sampling as ``model.generate`` (DDIM with ``eta``, guidance on the empty caption).
    """
    prompts = list(prompts)
    if len(control) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(control)} control images")
    return model.generate(prompts, guidance_scale=guidance_scale, steps=steps, eta=eta, generator=generator,
                          image_size=image_size, unet=ControlledUNet(model.unet, controlnet, scale),
                          extra_inputs={"control": control.to(model.device)})
