"""From an image U-Net to a video U-Net: zero-initialised temporal layers (AnimateDiff, Video LDM).

A video is a batch of frames. The image U-Net already runs on (B*T, C, H, W): every frame on its
own, with the same weights (the *spatial* layers). :class:`VideoUNet` keeps that network frozen
and inserts a :class:`TemporalBlock` after each of its spatial blocks (every ResBlock/attention
pair on the way down and up, and the middle). A temporal block looks along the other axis: each
pixel position of a clip becomes a sequence of T feature vectors, one per frame,

    (B*T, C, H, W) -> (B*H*W, T, C)    tokens x_1 ... x_T of one pixel, one per frame
    x = x + W_out · attend(LN(x) (1 + g_1) + b_1 + pos_t)   temporal attention: frames look at frames
    x = x + conv1d_t(SiLU(LN(x) (1 + g_2) + b_2))            temporal convolution: kernel 3 along T
    (B*H*W, T, C) -> (B*T, C, H, W)

with pos_t a sinusoidal embedding of the frame index and (g_1, b_1, g_2, b_2) = W_m m a scale
and a shift made from an optional motion embedding m (here the direction word of the caption;
adaLN, the way DiT feeds in its class), so the direction can switch the blocks' inputs, not only
nudge them. W_out, the convolution and W_m start at zero, so at initialisation every temporal
block is the identity and the video model *is* the image model run frame by frame: exactly, not
approximately (``h + 0 == h`` in floating point). Training then changes only the temporal layers.

This is the factorised space-time U-Net of Video Diffusion Models (Ho et al. 2022): attention
and convolution over space in the image layers, over time in the new ones. A full 3-D
convolution (kernel 3 x 3 x 3) would mix space and time in one layer with 3x the weights and
would have to be trained from scratch; factorising lets the image model's weights be reused.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.models.unet import UNet
from course_lib.nn.attention import attend_heads
from course_lib.nn.embeddings import timestep_embedding

__all__ = ["TemporalBlock", "VideoUNet"]


class _ClipState:
    """What every temporal block needs to know about the batch it is in (not a Module: no weights)."""

    def __init__(self, frames: int):
        self.frames = frames
        self.motion: Tensor | None = None   # (B, motion_dim), one row per clip
        self.enabled = True                 # False: temporal layers skipped (the per-frame image model)


class TemporalBlock(nn.Module):
    """Attention and a convolution over the T frames of each pixel: (B*T, C, H, W) -> same.

    channels: C; motion_dim: width of the motion embedding added to the tokens (None: no motion
    input); conv: also the temporal convolution. Both residual branches end at zero.
    """

    def __init__(self, channels: int, num_heads: int = 4, motion_dim: int | None = None, conv: bool = True,
                 space_time: bool = False):
        super().__init__()
        self.space_time = space_time
        if channels % num_heads:
            raise ValueError(f"channels={channels} must be divisible by num_heads={num_heads}")
        self.channels, self.num_heads = channels, num_heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        # motion -> (gamma, beta) for each branch's normalised input (adaLN, as DiT conditions on its class)
        self.motion = nn.Linear(motion_dim, 4 * channels) if motion_dim else None
        self.conv_norm = nn.LayerNorm(channels) if conv else None
        self.conv = nn.Linear(3 * channels, channels) if conv else None   # kernel 3 along T, as one matmul
        for layer in (self.out, self.conv, self.motion):   # zero init: identity, and no modulation yet
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, h: Tensor, frames: int, motion: Tensor | None = None) -> Tensor:
        """h: (B*T, C, H, W) with T = frames; motion: (B, motion_dim) or None."""
        BT, C, H, W = h.shape
        if BT % frames:
            raise ValueError(f"a batch of {BT} frames is not a whole number of {frames}-frame clips")
        B = BT // frames
        x = h.reshape(B, frames, C, H * W).permute(0, 3, 1, 2).reshape(B * H * W, frames, C)
        pos = timestep_embedding(torch.arange(frames, device=h.device), C).to(h.dtype)   # (T, C)
        g1 = b1 = g2 = b2 = 0.0
        if self.motion is not None and motion is not None:
            mod = self.motion(motion).repeat_interleave(H * W, dim=0)[:, None, :]      # (B*H*W, 1, 4C)
            g1, b1, g2, b2 = mod.chunk(4, dim=-1)
        a = self.norm(x) * (1 + g1) + b1 + pos
        if self.space_time:           # every pixel of every frame of the clip: (B, H*W*T, C) tokens
            a = (a.reshape(B, H * W, frames, C) + _grid_embedding(H, W, C, h.device).to(h.dtype)[None, :, None, :])
            q, k, v = self.qkv(a.reshape(B, H * W * frames, C)).chunk(3, dim=-1)
            out = attend_heads(q, k, v, self.num_heads).reshape(B * H * W, frames, C)
        else:
            q, k, v = self.qkv(a).chunk(3, dim=-1)
            out = attend_heads(q, k, v, self.num_heads)
        x = x + self.out(out)
        if self.conv is not None:           # conv1d over T with zero padding: [x_{t-1}, x_t, x_{t+1}] W
            c = F.silu(self.conv_norm(x) * (1 + g2) + b2)
            c = F.pad(c, (0, 0, 1, 1))                                                  # (B*H*W, T + 2, C)
            x = x + self.conv(torch.cat([c[:, :-2], c[:, 1:-1], c[:, 2:]], dim=-1))
        return x.reshape(B, H * W, frames, C).permute(0, 2, 3, 1).reshape(BT, C, H, W)


def _grid_embedding(H: int, W: int, C: int, device) -> Tensor:
    """(H*W, C) sinusoidal position of each pixel: half the channels for the row, half for the column."""
    rows = timestep_embedding(torch.arange(H, device=device), C // 2)
    cols = timestep_embedding(torch.arange(W, device=device), C - C // 2)
    return torch.cat([rows[:, None].expand(H, W, -1), cols[None].expand(H, W, -1)], -1).reshape(H * W, C)


class _SpatialThenTemporal(nn.Module):
    """Takes the place of a U-Net block's attention slot: the spatial layer (if any), then time."""

    def __init__(self, spatial: nn.Module | None, temporal: TemporalBlock, state: _ClipState):
        super().__init__()
        self.spatial, self.temporal, self._state = spatial, temporal, state

    def forward(self, h: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        if self.spatial is not None:
            h = self.spatial(h, context, context_mask)
        if not self._state.enabled:
            return h
        return self.temporal(h, self._state.frames, self._state.motion)


class VideoUNet(nn.Module):
    """A frozen image :class:`~course_lib.models.unet.UNet` with temporal blocks inserted; only they train.

    Frames travel flattened, as a batch of images: x (B*T, C, H, W), clip after clip, so every
    sampler and guidance wrapper of the course works unchanged.

    Args:
        unet: the image model (copied; the copy is frozen, the original is left as it was).
        frames: T, the clip length.
        motion_classes: number of motion labels (e.g. 4 directions); label ``motion_classes`` is
            "no motion given" (for classifier-free guidance). None: no motion input.
        motion_dim: width of the motion embedding. num_heads: of the temporal attention.
        conv: also insert the temporal convolutions.

    ``warp`` (attribute, 0.0): rho of the noise its clips are sampled with
    (``course_lib.diffusion.video.warped_noise``; 0: independent noise per frame).
    ``load_video_model`` sets it from the module's config.json: a module trained on warped noise
    is sampled with it.
    """

    def __init__(self, unet: UNet, frames: int, motion_classes: int | None = None, motion_dim: int = 64,
                 num_heads: int = 4, conv: bool = True, space_time_levels: tuple[int, ...] = ()):
        super().__init__()
        if not isinstance(frames, int) or frames < 2:
            raise ValueError(f"frames must be an int >= 2, got {frames!r}")
        self.unet = copy.deepcopy(unet).requires_grad_(False)
        self.frames, self.motion_classes = frames, motion_classes
        self.warp = 0.0
        self._state = _ClipState(frames)
        self.motion_emb = nn.Embedding(motion_classes + 1, motion_dim) if motion_classes else None
        dim = motion_dim if motion_classes else None
        levels = self.unet.levels
        for way, blocks in (("down", self.unet.down), ("up", self.unet.up)):
            level = 0 if way == "down" else levels - 1
            for block in blocks:
                if isinstance(block, nn.ModuleList):                  # a (ResBlock, attention or None) pair
                    channels = block[0].conv2.out_channels
                    temporal = TemporalBlock(channels, num_heads, dim, conv, level in space_time_levels)
                    block[1] = _SpatialThenTemporal(block[1], temporal, self._state)
                else:                                                 # a down- or upsampling layer
                    level += 1 if way == "down" else -1
        mid = TemporalBlock(self.unet.mid_channels, num_heads, dim, conv, levels - 1 in space_time_levels)
        self.unet.mid_attn = _SpatialThenTemporal(self.unet.mid_attn, mid, self._state)

    @property
    def null_motion(self) -> int:
        """The motion label meaning "no motion given"."""
        if self.motion_classes is None:
            raise ValueError("this VideoUNet has no motion input (motion_classes=None)")
        return self.motion_classes

    def temporal_parameters(self) -> list[nn.Parameter]:
        """The new weights, the only ones that train: temporal blocks and the motion embedding.

        Found by module type, not by ``requires_grad``, so a frozen copy (an EMA) names the same ones.
        """
        new = [m for m in self.modules() if isinstance(m, TemporalBlock)]
        if self.motion_emb is not None:
            new.append(self.motion_emb)
        return [p for m in new for p in m.parameters()]

    def temporal_state_dict(self) -> dict[str, Tensor]:
        """Only the new weights (what AnimateDiff ships as a "motion module"), detached."""
        names = {id(p) for p in self.temporal_parameters()}
        return {k: v.detach() for k, v in self.state_dict(keep_vars=True).items() if id(v) in names}

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                motion: Tensor | None = None, temporal: bool = True) -> Tensor:
        """x: (B*T, C, H, W); t: (B*T,) steps (frames may differ); context (B*T, L, D); motion (B*T,) or (B,)
        labels (per clip; for (B*T,) the first frame's is used) -> eps (B*T, C_out, H, W).

        temporal=False skips every temporal block: the frozen image model, frame by frame.
        """
        if x.shape[0] % self.frames:
            raise ValueError(f"x holds {x.shape[0]} frames, not a whole number of {self.frames}-frame clips")
        B = x.shape[0] // self.frames
        emb = None
        if self.motion_emb is not None:
            if motion is None:
                motion = torch.full((B,), self.null_motion, device=x.device)
            motion = torch.as_tensor(motion, device=x.device).long()
            if motion.shape == (B * self.frames,):
                motion = motion[:: self.frames]
            if motion.shape != (B,):
                raise ValueError(f"motion must be (B,) = ({B},) or (B*T,) labels, got {tuple(motion.shape)}")
            emb = self.motion_emb(motion)
        self._state.motion, self._state.enabled = emb, temporal
        try:
            return self.unet(x, t, context=context, context_mask=context_mask)
        finally:
            self._state.motion, self._state.enabled = None, True
