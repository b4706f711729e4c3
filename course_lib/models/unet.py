"""A small U-Net that predicts the noise: eps_theta(x_t, t, y or text).

    x (B, C, H, W) --conv--> [ResBlock(+t) x n, (Attention)] , downsample  ... (each level)
                              middle: ResBlock, Attention, ResBlock
                             [ResBlock(+t, skip) x (n + 1), (Attention)], upsample  ... (back up)
                      --GroupNorm, SiLU, conv (zero-initialised)--> eps (B, C_out, H, W)

- the step t enters every ResBlock through a sinusoidal embedding and an MLP;
- a class label y (optional) is added to that embedding; label ``num_classes`` is the "null"
  label used for classifier-free guidance;
- a text (optional) enters through cross-attention: the pixels of a level are queries, the
  text tokens (B, L, context_dim) are keys and values, padding masked out;
- every block ends in a zero-initialised layer, so it starts as the identity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.nn.attention import attend_heads
from course_lib.nn.embeddings import timestep_embedding
from course_lib.nn.layers import _groups


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with at least 4 channels per group (at most 32 groups, as in DDPM).

    Not one channel per group: the step embedding is added to h as one constant per channel,
    and a group of one channel would subtract that constant again, hiding t from the network.
    """
    return nn.GroupNorm(_groups(channels, max(1, min(32, channels // 4))), channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + Linear(temb); out = skip(x) + conv(dropout(SiLU(GN(h)))).

    (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = _norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.norm2, self.dropout = _norm(out_ch), nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Self-attention over the H*W pixels, then (if context_dim) cross-attention to a text.

    x: (B, C, H, W); context: (B, L, context_dim); context_mask: (B, L) bool, True at real tokens.

        h = x + W_out · attend(q, k, v from GN(x))                       pixels look at pixels
        h = h + W_cross_out · attend(q from LN(h); k, v from the text)   pixels read the words

    The attention itself is :func:`course_lib.nn.attention.attend_heads`, the one every transformer
    of the course uses. This block keeps the U-Net's own projections (their names are those of
    saved and exported U-Nets): one fused ``qkv`` Linear for self-attention, ``q`` and a fused
    ``kv`` Linear for cross-attention. Each part is residual and its output projection starts at
    zero, so the block starts as the identity. With ``record_cross = True`` the cross-attention
    runs the readable path and keeps its weights in ``last_cross_weights`` (B, heads, H*W, L).
    """

    def __init__(self, channels: int, num_heads: int = 4, context_dim: int | None = None):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels={channels} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = _norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)              # [W_q | W_k | W_v] in one matrix
        self.out = _zero(nn.Linear(channels, channels))
        self.context_dim = context_dim
        if context_dim is not None:
            self.norm_x = nn.LayerNorm(channels)
            self.q = nn.Linear(channels, channels)
            self.kv = nn.Linear(context_dim, 2 * channels)        # [W_k | W_v] of the text
            self.cross_out = _zero(nn.Linear(channels, channels))
        self.last_cross_weights: Tensor | None = None  # (B, heads, H*W, L) when record_cross=True
        self.record_cross = False

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)                        # (B, HW, C)
        q, k, v = self.qkv(h).chunk(3, dim=-1)                             # (B, HW, C) each
        h_seq = x.flatten(2).transpose(1, 2) + self.out(attend_heads(q, k, v, self.num_heads))
        if self.context_dim is not None:
            if context is None:
                raise ValueError("this U-Net cross-attends to a text: pass context=(B, L, context_dim)")
            q = self.q(self.norm_x(h_seq))                                 # (B, HW, C): queries from the pixels
            k, v = self.kv(context).chunk(2, dim=-1)                       # (B, L, C) each: from the words
            mask = None if context_mask is None else context_mask[:, None, None, :].bool()   # no one reads <pad>
            a = attend_heads(q, k, v, self.num_heads, mask, return_weights=self.record_cross)
            if self.record_cross:
                a, weights = a
                self.last_cross_weights = weights.detach()
            h_seq = h_seq + self.cross_out(a)
        return h_seq.transpose(1, 2).reshape(B, C, H, W)


class UNet(nn.Module):
    """eps_theta(x_t, t [, y] [, context]) for images (B, in_ch, H, W); H and W divisible by 2^(levels-1).

    Args:
        in_ch / out_ch: image channels (out_ch defaults to in_ch).
        base: channels of the first level; level i has base * mults[i].
        mults: one entry per resolution level.
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attn_levels: which levels (0 = full resolution) get attention; the middle always does.
        num_classes: add a label embedding (label ``num_classes`` = no label, for CFG).
        context_dim: add cross-attention to a text of that width (at the attention levels).
        num_heads, dropout: of the attention and the ResBlocks.
    """

    def __init__(self, in_ch: int = 1, out_ch: int | None = None, base: int = 32,
                 mults: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 1,
                 attn_levels: tuple[int, ...] = (2,), num_classes: int | None = None,
                 context_dim: int | None = None, num_heads: int = 4, dropout: float = 0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self.config = dict(in_ch=in_ch, out_ch=out_ch, base=base, mults=tuple(mults),
                           num_res_blocks=num_res_blocks, attn_levels=tuple(attn_levels),
                           num_classes=num_classes, context_dim=context_dim, num_heads=num_heads,
                           dropout=dropout)
        if any(not 0 <= a < len(mults) for a in attn_levels):
            raise ValueError(f"attn_levels {attn_levels} must be level indices 0..{len(mults) - 1}")
        self.in_ch, self.num_classes, self.context_dim = in_ch, num_classes, context_dim
        self.levels = len(mults)
        temb_dim = 4 * base
        self.base = base
        self.time_mlp = nn.Sequential(nn.Linear(base, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, temb_dim) if num_classes else None
        attn = lambda ch, level: (Attention(ch, num_heads, context_dim)  # noqa: E731
                                  if level in attn_levels else None)
        self.conv_in = nn.Conv2d(in_ch, base, 3, padding=1)
        self.down = nn.ModuleList()
        chans, ch = [base], base
        for i, m in enumerate(mults):
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([ResBlock(ch, base * m, temb_dim, dropout), attn(base * m, i)]))
                ch = base * m
                chans.append(ch)
            if i < len(mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                chans.append(ch)
        self.mid1 = ResBlock(ch, ch, temb_dim, dropout)
        self.mid_attn = Attention(ch, num_heads, context_dim)
        self.mid2 = ResBlock(ch, ch, temb_dim, dropout)
        self.skip_channels, self.mid_channels = tuple(chans), ch      # what encode() hands the way up
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(nn.ModuleList([ResBlock(ch + chans.pop(), base * m, temb_dim, dropout),
                                              attn(base * m, i)]))
                ch = base * m
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(ch, ch, 3, padding=1)))
        self.norm_out = _norm(ch)
        self.conv_out = _zero(nn.Conv2d(ch, out_ch, 3, padding=1))

    @property
    def null_label(self) -> int:
        """The label that means "no class" (classifier-free guidance's unconditional model)."""
        if self.num_classes is None:
            raise ValueError("this U-Net has no labels (num_classes=None)")
        return self.num_classes

    def _check(self, x: Tensor, t: Tensor, y, context) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_ch:
            raise ValueError(f"x must be (B, {self.in_ch}, H, W), got {tuple(x.shape)}")
        f = 2 ** (self.levels - 1)
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"H and W must be divisible by {f} for {self.levels} levels, got {tuple(x.shape[-2:])}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be (B,) = ({x.shape[0]},) steps, got {tuple(t.shape)}")
        if (y is None) != (self.label_emb is None):
            raise ValueError("this U-Net " + ("needs labels y (use null_label for none)" if y is None
                                              else "was built without num_classes: it takes no labels"))
        if (context is None) != (self.context_dim is None):
            raise ValueError("this U-Net " + ("needs a text context" if context is None
                                              else "was built without context_dim: it takes no text"))
        return t

    def encode(self, x: Tensor, t: Tensor, y: Tensor | None = None, context: Tensor | None = None,
               context_mask: Tensor | None = None, hint: Tensor | None = None) -> tuple[Tensor, list[Tensor], Tensor]:
        """The way down and the middle block -> (h (B, mid_channels, h, w), skips, temb).

        skips: one (B, skip_channels[i], ., .) tensor per entry of ``skip_channels``; temb (B, 4 base).
        hint: (B, base, H, W), added to the first convolution's output (ControlNet's control image).
        """
        t = self._check(x, t, y, context)
        temb = self.time_mlp(timestep_embedding(t, self.base))
        if self.label_emb is not None:
            temb = temb + self.label_emb(y.long())
        h = self.conv_in(x)
        if hint is not None:
            h = h + hint
        skips = [h]
        for block in self.down:
            if isinstance(block, nn.ModuleList):
                res, att = block
                h = res(h, temb)
                if att is not None:
                    h = att(h, context, context_mask)
            else:
                h = block(h)
            skips.append(h)
        return self.mid2(self.mid_attn(self.mid1(h, temb), context, context_mask), temb), skips, temb

    def decode(self, h: Tensor, skips: list[Tensor], temb: Tensor, context: Tensor | None = None,
               context_mask: Tensor | None = None) -> Tensor:
        """The way up, reading the skips from the last to the first -> (B, out_ch, H, W)."""
        skips = list(skips)
        for block in self.up:
            if isinstance(block, nn.ModuleList):
                res, att = block
                h = res(torch.cat([h, skips.pop()], dim=1), temb)
                if att is not None:
                    h = att(h, context, context_mask)
            else:
                h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, down_residuals: list[Tensor] | None = None,
                mid_residual: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W); t: (B,) steps; y: (B,) labels; context: (B, L, D); mask: (B, L) -> (B, C_out, H, W).

        down_residuals / mid_residual: added to the skips and to the middle block's output before the
        way up (what a ControlNet hands in; the names of `diffusers`' ``down_block_additional_residuals``).
        """
        h, skips, temb = self.encode(x, t, y, context, context_mask)
        if down_residuals is not None:
            if len(down_residuals) != len(skips):
                raise ValueError(f"{len(down_residuals)} down_residuals for {len(skips)} skips")
            skips = [s + r for s, r in zip(skips, down_residuals)]
        if mid_residual is not None:
            h = h + mid_residual
        return self.decode(h, skips, temb, context, context_mask)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
