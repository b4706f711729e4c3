"""Video diffusion on top of a frozen text-to-image model: the loss, given frames, and sampling.

The video model is a :class:`~course_lib.models.temporal.VideoUNet`: the image U-Net of a
:class:`~course_lib.diffusion.text2image.TextToImage` with temporal blocks inserted. Clips travel
as flat batches of frames, clip after clip: latents (B*T, c, s, s), so the course's samplers and
guidance run unchanged.

A motion caption "a large red circle moves left" is split in two: the appearance ("a large red
circle", a caption the image model knows) goes to the frozen text encoder and the spatial
cross-attention of every frame; the direction ("left") is a motion label for the temporal blocks,
the only layers that learn what moving means.

Noise that moves with the object (``warp`` > 0; Chang et al. 2024, "How I Warped Your Noise";
Burgert et al. 2025, "Go-with-the-Flow"): every frame's noise is frame 0's, shifted along the
caption's direction at a speed (drawn from the world's prior, or read off given frames), mixed
with fresh noise, eps_t = sqrt(rho) shift_t(eps_0) + sqrt(1 - rho) z_t, so each frame's noise is
still N(0, I) while the frames share what lies under the moving object. Trained on it
(:func:`video_loss` with ``shifts``), the temporal layers move the object with its noise.

Given frames (image-to-video: the first; interpolation: the first and the last) are handed to
the network clean, at step t = 0, in their place in the clip; the loss skips them. Trained that
way, the temporal layers learn to read a clean frame and continue it, which is how SVD and
Make-A-Video's interpolation network are conditioned (on given frames, not by editing the
samples afterwards).
"""
from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from course_lib.data.moving import DIRECTIONS, direction_steps, draw_speeds
from course_lib.data.shapes import COLOURS, SHAPE_KINDS, SIZES
from course_lib.diffusion.guidance import ClassifierFreeGuidance
from course_lib.diffusion.schedule import NoiseSchedule
from course_lib.diffusion.solver import DDIMRule, cpu_noise, sample
from course_lib.models.temporal import VideoUNet

__all__ = ["MOTION_MODULE_DIR", "split_motion_caption", "video_loss", "GivenFrames", "given_mask", "motion_shifts",
           "warped_noise", "speeds_from_frames", "prior_speeds", "generate_video", "generate_clips", "load_frame_unet",
           "sampling_warp", "load_video_model"]

MOTION_MODULE_DIR = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes_video"


def split_motion_caption(caption: str) -> tuple[str, int]:
    """"a large red circle moves left" -> ("a large red circle", DIRECTIONS.index("left")).

    The appearance may leave things open: "moves left" -> ("", 0), the empty caption that training's
    caption dropout showed the model (any object, moving left); "a red circle moves up" (any size),
    "a large shape moves down" (any colour and shape): the words the world's captions use, in their
    order, any of size and colour left out, "shape" for any shape.
    """
    words = caption.split() if isinstance(caption, str) else []
    if len(words) < 2 or words[-2] != "moves" or words[-1] not in DIRECTIONS:
        words = []
    appearance = words[:-2]
    if appearance:
        rest = appearance[1:]
        if rest[:1] and rest[0] in SIZES:
            rest = rest[1:]
        if rest[:1] and rest[0] in COLOURS:
            rest = rest[1:]
        if appearance[0] != "a" or len(rest) != 1 or rest[0] not in (*SHAPE_KINDS, "shape"):
            words = []
    if not words:
        raise ValueError(f"not a motion caption (\"a <size> <colour> <shape> moves <direction>\", size and colour "
                         f"optional, shape may be \"shape\"; or \"moves <direction>\"): {caption!r}")
    return " ".join(appearance), DIRECTIONS.index(words[-1])


def given_mask(batch: int, frames: int, mode: str = "none") -> Tensor:
    """(B, T) bool, True at the frames handed in clean: mode "none", "first" or "first_last"."""
    mask = torch.zeros(batch, frames, dtype=torch.bool)
    if mode in ("first", "first_last"):
        mask[:, 0] = True
    if mode == "first_last":
        mask[:, -1] = True
    elif mode not in ("none", "first"):
        raise ValueError(f"mode must be 'none', 'first' or 'first_last', got {mode!r}")
    return mask


def motion_shifts(directions: Tensor, speeds: Tensor, frames: int, scale: float = 1.0) -> Tensor:
    """(N, T, 2) whole-pixel shifts (x, y) of frame t's noise: round(step(direction) * speed * t * scale).

    directions: (N,) indices into DIRECTIONS; speeds: (N,) image pixels per frame; scale: latent
    pixels per image pixel (16 / 32 for the course's autoencoder).
    """
    step = direction_steps(directions)                                         # (N, 2)
    t = torch.arange(frames, dtype=torch.float32)
    return (step[:, None, :] * torch.as_tensor(speeds).float()[:, None, None] * t[None, :, None] * scale).round().long()


def warped_noise(shifts: Tensor, shape: Sequence[int], rho: float | Tensor = 1.0,
                 generator: torch.Generator | None = None) -> Tensor:
    """Noise (N*T, *shape), clip after clip: eps_t = sqrt(rho) roll(eps_0, shifts[:, t]) + sqrt(1 - rho) z_t.

    shifts: (N, T, 2) whole pixels (x, y), :func:`motion_shifts`; shape: one frame's (c, h, w); rho:
    a number or (N,) per clip, 0 = independent frames. A circular shift of white noise is white
    noise, so every frame is exactly N(0, I). Drawn on the CPU from ``generator``: eps_0, then z.
    """
    N, T = shifts.shape[:2]
    c, h, w = shape
    base = torch.randn(N, 1, c, h, w, generator=generator).expand(N, T, c, h, w)
    rows = (torch.arange(h) - shifts[..., 1, None]) % h                       # (N, T, h): roll by y
    cols = (torch.arange(w) - shifts[..., 0, None]) % w                       # (N, T, w): roll by x
    moved = base.gather(3, rows[:, :, None, :, None].expand(N, T, c, h, w))
    moved = moved.gather(4, cols[:, :, None, None, :].expand(N, T, c, h, w))
    rho = torch.as_tensor(rho, dtype=torch.float32)
    rho = rho.view(-1, 1, 1, 1, 1) if rho.dim() else rho
    fresh = torch.randn(N, T, c, h, w, generator=generator)
    return (rho.sqrt() * moved + (1 - rho).sqrt() * fresh).flatten(0, 1)


def speeds_from_frames(first: Tensor, last: Tensor, frames: int) -> Tensor:
    """(N,) pixels per frame between two given frames (N, 3, S, S) in [0, 1] of a straight, even motion:
    the distance between their brightness-weighted centroids (black background) over T - 1."""
    def centroid(x: Tensor) -> Tensor:
        m = x.amax(1)                                                          # (N, S, S)
        ys, xs = torch.meshgrid(torch.arange(m.shape[1]), torch.arange(m.shape[2]), indexing="ij")
        total = m.sum((1, 2)).clamp(min=1e-6)
        return torch.stack([(m * xs).sum((1, 2)) / total, (m * ys).sum((1, 2)) / total], -1)
    return (centroid(last) - centroid(first)).norm(dim=-1) / (frames - 1)


def video_loss(model: VideoUNet, latents: Tensor, schedule: NoiseSchedule, context: Tensor, context_mask: Tensor,
               motion: Tensor, given: Tensor | None = None, generator: torch.Generator | None = None,
               noise_shift: float = 1.0, shifts: Tensor | None = None, rho: float | Tensor = 1.0) -> Tensor:
    """The DDPM loss on clips, one step t per clip:  mean over the frames that are not given of ||eps - eps_theta||^2.

    latents: (B, T, c, s, s) scaled latents; context (B, L, D) / context_mask (B, L): the appearance
    captions; motion: (B,) labels; given: (B, T) bool, frames handed in clean at t = 0 (None: none).
    noise_shift s: t = floor(T u^(1/s)) with u uniform; s = 1 is DDPM's uniform t, s > 1 visits the
    noisiest steps more often, where a clip's layout and motion are decided (Stable Video Diffusion
    shifts its noise levels up for video in the same spirit). shifts (B, T, 2): the clips' noise is
    :func:`warped_noise` along them with ``rho`` (a number or (B,)); None: independent frames.
    """
    if noise_shift <= 0:
        raise ValueError(f"noise_shift must be > 0, got {noise_shift}")
    B, T = latents.shape[:2]
    x0 = latents.flatten(0, 1)                                              # (B*T, c, s, s)
    u = torch.rand(B, generator=generator)
    t = (schedule.T * u ** (1 / noise_shift)).long().clamp(max=schedule.T - 1)
    t = t.repeat_interleave(T).to(x0.device)
    if shifts is None:
        noise = torch.randn(x0.shape, generator=generator).to(x0)
    else:
        noise = warped_noise(shifts, x0.shape[1:], rho, generator).to(x0)
    a = schedule.at(schedule.alphas_cumprod, t, x0.dim()).to(x0)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise                           # x_t = sqrt(a_bar) x0 + sqrt(1 - a_bar) eps
    keep = torch.ones(B * T, device=x0.device)
    if given is not None:
        g = given.flatten().to(x0.device)
        x_t = torch.where(g[:, None, None, None], x0, x_t)
        t = torch.where(g, torch.zeros_like(t), t)
        keep = (~g).float()
    eps = model(x_t, t, context.repeat_interleave(T, 0), context_mask.repeat_interleave(T, 0), motion)
    per_frame = (eps - noise).pow(2).flatten(1).mean(1)                    # (B*T,)
    return (per_frame * keep).sum() / keep.sum().clamp(min=1)


class GivenFrames:
    """Wraps a prediction function so that given frames are always seen clean at t = 0.

    fn(x, t) with x (B*T, ...) flat; latents: (B*T, ...) the given frames' clean latents (anything
    elsewhere); given: (B*T,) bool. ``.model`` is the wrapped function (as the sampler expects).
    """

    def __init__(self, fn, latents: Tensor, given: Tensor):
        self.model, self.latents, self.given = fn, latents, given.flatten()

    def fill(self, x: Tensor) -> Tensor:
        return torch.where(self.given.to(x.device)[:, None, None, None], self.latents.to(x), x)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        g = self.given.to(x.device)
        return self.model(self.fill(x), torch.where(g, torch.zeros_like(t), t))


def prior_speeds(captions: Sequence[str], frames: int, image_size: int, seed: int | None = None) -> Tensor:
    """(B,) speeds in pixels per frame for B motion captions, drawn from the world's prior for each
    caption's size (either size where the caption leaves it open; :func:`draw_speeds`)."""
    sizes = torch.tensor([next((SIZES.index(w) for w in c.split() if w in SIZES), -1) for c in captions])
    return draw_speeds(sizes, frames, image_size, None if seed is None else torch.Generator().manual_seed(seed))


def sampling_warp(video_unet: VideoUNet, warp: float | None = None, temporal: bool = True) -> float:
    """The rho to sample with: ``warp`` when given, else the model's own (``video_unet.warp``, set by
    :func:`load_video_model` from config.json); 0 for the per-frame image model (temporal=False)."""
    if warp is None:
        warp = video_unet.warp if temporal else 0.0
    return float(warp)


@torch.no_grad()
def generate_video(text_model, video_unet: VideoUNet, captions: Sequence[str], *, guidance_scale: float = 2.0,
                   steps: int = 20, eta: float = 1.0, image_size: int = 32, generator: torch.Generator | None = None,
                   given_frames: Tensor | None = None, given: Tensor | None = None, temporal: bool = True,
                   warp: float | None = None, speeds: Tensor | None = None) -> Tensor:
    """Clips (B, T, 3, S, S) in [0, 1] on the CPU for B motion captions.

    text_model: the :class:`TextToImage` whose U-Net the video model was built from (its text
    encoder, autoencoder and schedule are used). Guidance: eps = eps_u + s (eps_c - eps_u), with
    the unconditional half given neither text nor motion. given_frames (B, T, 3, S, S) in [0, 1]
    and given (B, T) bool: frames handed in (image-to-video, interpolation). temporal=False: the
    frozen image model frame by frame, every frame with its own noise (the per-frame baseline).
    warp: rho of :func:`warped_noise` for x_T and every step's noise, along the captions' directions
    at ``speeds`` (B,) pixels per frame (None: drawn from the world's prior for each caption's size,
    :func:`~course_lib.data.moving.draw_speeds`, with a generator seeded ``generator``'s seed + 1);
    0: independent noise per frame; None: the model's own ``video_unet.warp`` (0 with temporal=False).
    """
    warp = sampling_warp(video_unet, warp, temporal)
    captions = list(captions)
    B, T = len(captions), video_unet.frames
    split = [split_motion_caption(c) for c in captions]
    context, mask = text_model.encode_prompt([a for a, _ in split])
    null_ctx, null_mask = text_model.encode_prompt([""] * B)
    motion = torch.tensor([d for _, d in split], device=context.device)
    null_motion = torch.full_like(motion, video_unet.null_motion)
    rep = lambda x: x.repeat_interleave(T, 0)  # noqa: E731   (B, ...) -> (B*T, ...), clip after clip
    cond = {"context": rep(context), "context_mask": rep(mask), "motion": rep(motion)}
    uncond = {"context": rep(null_ctx), "context_mask": rep(null_mask), "motion": rep(null_motion)}
    net = video_unet if temporal else partial(video_unet, temporal=False)
    fn = ClassifierFreeGuidance(net, cond, uncond, guidance_scale)
    if given is not None:
        if given_frames is None or given_frames.shape[:2] != (B, T) or given.shape != (B, T):
            raise ValueError(f"given (B, T) = ({B}, {T}) needs given_frames (B, T, 3, S, S) in [0, 1]")
        latents = text_model.encode_images(given_frames.flatten(0, 1) * 2 - 1)
        fn = GivenFrames(fn, latents, given)
    shape = (B * T, *text_model.latent_shape(image_size))
    noise, x_T = cpu_noise, None
    if not 0 <= warp <= 1:
        raise ValueError(f"warp is rho, the share of each frame's noise moved from frame 0: 0 to 1, got {warp}")
    if warp > 0:
        if speeds is None:
            speeds = prior_speeds(captions, T, image_size, None if generator is None else generator.initial_seed() + 1)
        if len(speeds) != B:
            raise ValueError(f"warp > 0 needs speeds, (B,) = ({B},) pixels per frame")
        shifts = motion_shifts(motion.cpu(), speeds, T, scale=shape[-1] / image_size)
        noise = lambda x, g: warped_noise(shifts, x.shape[1:], warp, g).to(x.device)  # noqa: E731
        x_T = noise(torch.empty(shape), generator)
    rule = DDIMRule(text_model.schedule, steps, eta=eta, clip_x0=False, noise=noise)
    was_training = video_unet.training
    video_unet.eval()
    z = sample(fn, shape, rule, generator=generator, x_T=x_T, device=text_model.device, progress=False)
    video_unet.train(was_training)
    if given is not None:
        z = fn.fill(z)
    return text_model.decode_latents(z).view(B, T, 3, image_size, image_size)


def generate_clips(text_model, video_unet: VideoUNet, clips, mode: str = "none", *, seed: int = 0,
                   captions: Sequence[str] | None = None, batch_size: int = 16, **sampling) -> Tensor:
    """Clips (N, T, 3, S, S) for the N captions of ``clips`` (a ``MovingShapesBatch``), generated with
    the real clips' frames handed in where ``given_mask(N, T, mode)`` says: "none" (text to video),
    "first" (image to video) or "first_last" (interpolation).

    captions: other captions for the same clips (e.g. with the appearance left open); seed: the
    generator's; sampling: :func:`generate_video`'s keywords (guidance_scale, steps, eta, temporal, warp).
    With warp > 0 (by default the model's own, :func:`sampling_warp`) the noise moves at the speed
    read off the first and last frames when both are given, else at a speed drawn from the world's
    prior for the caption's size (:func:`prior_speeds`, seed + 1).

    Clips are made ``batch_size`` at a time, one generator running through the batches (on a CPU,
    64 clips take about twice as long in one batch as in four); up to ``batch_size`` clips are
    exactly one :func:`generate_video` call.
    """
    n, frames = clips.videos.shape[:2]
    captions = list(clips.captions if captions is None else captions)
    given = given_mask(n, frames, mode) if mode != "none" else None
    sampling["warp"] = sampling_warp(video_unet, sampling.get("warp"), sampling.get("temporal", True))
    speeds = sampling.pop("speeds", None)
    if sampling["warp"] > 0 and speeds is None:
        speeds = (speeds_from_frames(clips.videos[:, 0], clips.videos[:, -1], frames) if mode == "first_last"
                  else prior_speeds(captions, frames, clips.videos.shape[-1], seed + 1))
    generator, made = torch.Generator().manual_seed(seed), []
    for i in range(0, n, batch_size):
        part = slice(i, i + batch_size)
        made.append(generate_video(text_model, video_unet, captions[part], image_size=clips.videos.shape[-1],
                                   generator=generator, given_frames=None if given is None else clips.videos[part],
                                   given=None if given is None else given[part],
                                   speeds=None if speeds is None else speeds[part], **sampling))
    return torch.cat(made)


def _checked_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    missing = [f for f in ("config.json", "frame_unet.safetensors", "motion_module.safetensors")
               if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}: make it with scripts/train_motion_module.py")
    return folder


def load_frame_unet(text_model, folder: str | Path = MOTION_MODULE_DIR):
    """A copy of ``text_model``'s U-Net with the frame-adapted weights of ``folder`` (the image model the
    motion module was trained on; AnimateDiff v3 calls this stage a domain adapter). Eval mode, frozen."""
    folder = _checked_folder(folder)
    unet = copy.deepcopy(text_model.unet)
    unet.load_state_dict({k: v.float() for k, v in load_file(str(folder / "frame_unet.safetensors")).items()})
    return unet.eval().requires_grad_(False)


def load_video_model(text_model, folder: str | Path = MOTION_MODULE_DIR) -> VideoUNet:
    """The shipped video model for ``text_model`` (the base model ``shapes_sd``): a :class:`VideoUNet`
    built on :func:`load_frame_unet` with the motion module of ``folder`` loaded, in eval mode.

    folder holds ``frame_unet.safetensors``, ``motion_module.safetensors`` and ``config.json``, as
    ``scripts/train_motion_module.py`` writes them (AnimateDiff ships a motion module the same way:
    the temporal weights alone, for a given image model). ``text_model`` is left unchanged. The
    model's ``warp`` is config.json's (rho of the noise it was trained to be sampled with; 0 if absent),
    which :func:`generate_video` and :func:`generate_clips` use unless told otherwise.
    """
    unet = load_frame_unet(text_model, folder)                  # checks the folder
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    video = VideoUNet(unet, frames=cfg["frames"],
                      motion_classes=cfg["motion_classes"], motion_dim=cfg["motion_dim"], num_heads=cfg["num_heads"],
                      conv=cfg["conv"])
    motion = load_file(str(folder / "motion_module.safetensors"))
    expected = set(video.temporal_state_dict())
    if set(motion) != expected:
        lacks, extra = sorted(expected - set(motion))[:3], sorted(set(motion) - expected)[:3]
        raise ValueError(f"{folder / 'motion_module.safetensors'} does not fit this VideoUNet: "
                         f"missing {lacks}, unexpected {extra}")
    video.load_state_dict(motion, strict=False)
    video.warp = cfg.get("warp", 0.0)           # trained on warped noise: sampled with it
    return video.to(next(text_model.unet.parameters()).device).eval()
