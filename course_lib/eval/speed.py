"""Training-step speed: the course U-Net against ``diffusers.UNet2DModel`` at the same size (Phase 4 · 02).

Both networks get the same architecture (channels 32/64/64, one ResBlock per level on the way
down, two on the way up, self-attention at the 4 x 4 level and in the middle, GroupNorm with
8 groups at 32 channels, sinusoidal time embedding -> MLP of width 128), so they have exactly the
same parameter count (1,112,801 for one channel). One training step = forward, MSE to a noise
target, backward and an AdamW step, on a batch of noisy 16 x 16 images with random steps t.
The two models alternate step by step in one process and each step is timed with the process's
CPU time (``time.process_time``), so other programs on a busy machine do not count.
Notebook 4 · 02 and ``benchmarks/unet_speed.py`` both call :func:`unet_training_speed`.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.models.unet import UNet, count_parameters


def course_unet(in_ch: int = 1) -> UNet:
    """The course U-Net of the comparison: base 32, mults (1, 2, 2), attention at the coarsest level."""
    return UNet(in_ch, base=32, mults=(1, 2, 2), num_res_blocks=1, attn_levels=(2,))


def diffusers_unet(in_ch: int = 1, size: int = 16) -> nn.Module:
    """``diffusers.UNet2DModel`` with the same layout and parameter count as :func:`course_unet`."""
    from diffusers import UNet2DModel
    return UNet2DModel(sample_size=size, in_channels=in_ch, out_channels=in_ch,
                       block_out_channels=(32, 64, 64), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, attention_head_dim=16)


def unet_training_speed(steps: int = 20, warmup: int = 3, batch: int = 128, size: int = 16, in_ch: int = 1,
                        seed: int = 0) -> dict:
    """Median CPU milliseconds per training step of each model, measured alternately in this process.

    Returns {"course": {"params", "ms"}, "diffusers": {...}, "ratio": diffusers_ms / course_ms}
    (ratio >= 1 means the course U-Net is at least as fast). The first ``warmup`` rounds are not timed.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    torch.manual_seed(seed)
    models = {"course": course_unet(in_ch), "diffusers": diffusers_unet(in_ch, size)}
    calls = {"course": lambda m, x, t: m(x, t), "diffusers": lambda m, x, t: m(x, t).sample}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_ch, size, size, generator=g)
    noise = torch.randn(batch, in_ch, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    times = {k: [] for k in models}
    for i in range(warmup + steps):
        for name, model in models.items():
            model.train()
            start = time.process_time()
            loss = F.mse_loss(calls[name](model, x, t), noise)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            if i >= warmup:
                times[name].append(time.process_time() - start)
    out = {k: {"params": count_parameters(m), "ms": 1000 * statistics.median(times[k])} for k, m in models.items()}
    out["ratio"] = out["diffusers"]["ms"] / out["course"]["ms"]
    return out
