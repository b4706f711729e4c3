"""A classifier that reads noisy images, p_phi(y | x_t, t), for classifier guidance (Phase 4 · 06).

The encoder half of the diffusion U-Net with a pooled linear head, as in Dhariwal & Nichol (2021).
How it is trained (``noisy_classifier_loss``) and how it steers a sampler
(``ClassifierGuidance``) live in :mod:`course_lib.diffusion.guidance`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.models.unet import ResBlock
from course_lib.nn.embeddings import timestep_embedding


class NoiseAwareClassifier(nn.Module):
    """p_phi(y | x_t, t): a small time-conditioned CNN that reads *noisy* images.

    x_t (B, C, H, W) in the model range, t (B,) integer steps -> logits (B, num_classes).
    conv -> [ResBlock(+t), downsample] per level -> GroupNorm, SiLU, global average pool -> linear.
    The step enters every ResBlock the way it enters the U-Net (sinusoidal embedding + MLP), so
    the classifier knows how much noise to see through: the encoder half of a U-Net, as in
    Dhariwal & Nichol.
    """

    def __init__(self, in_ch: int = 1, num_classes: int = 10, base: int = 16,
                 mults: Sequence[int] = (1, 2, 2)):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.in_ch, self.num_classes, self.base = in_ch, num_classes, base
        temb_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(in_ch, base, 3, padding=1)
        self.blocks, self.downs = nn.ModuleList(), nn.ModuleList()
        ch = base
        for i, m in enumerate(mults):
            self.blocks.append(ResBlock(ch, base * m, temb_dim))
            ch = base * m
            last = i == len(mults) - 1
            self.downs.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.norm = nn.GroupNorm(min(8, ch), ch)
        self.head = nn.Linear(ch, num_classes)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: (B, C, H, W); t: (B,) steps -> (B, num_classes) logits."""
        if x.ndim != 4 or x.shape[1] != self.in_ch:
            raise ValueError(f"x must be (B, {self.in_ch}, H, W), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],) or t.is_floating_point():
            raise ValueError(f"t must be ({x.shape[0]},) integer steps, got {tuple(t.shape)} {t.dtype}")
        temb = self.time_mlp(timestep_embedding(t, self.base))
        h = self.conv_in(x)
        for block, down in zip(self.blocks, self.downs):
            h = down(block(h, temb))
        return self.head(F.silu(self.norm(h)).mean(dim=(2, 3)))        # global average pool
