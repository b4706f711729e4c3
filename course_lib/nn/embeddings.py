"""Position and time embeddings: how a network is told *where* a token is and *when* a step is.

- :func:`sinusoidal_positions`: the fixed sine/cosine code of token positions (Vaswani et al.,
  2017), used by the transformers of Phase 2 (notebook 2 · 04).
- :func:`timestep_embedding`: the same idea for the diffusion step t (Ho et al., 2020), which a
  U-Net or DiT adds to its features (notebook 4 · 02).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["sinusoidal_positions", "timestep_embedding"]


def sinusoidal_positions(T: int, dim: int) -> torch.Tensor:
    """``(T, dim)`` sine/cosine position code (Vaswani et al., 2017).

    ``PE[t, 2i] = sin(t / 10000^(2i/dim))`` and ``PE[t, 2i+1] = cos(t / 10000^(2i/dim))``: each pair of
    columns is a clock with its own speed, from one turn every 2π tokens down to very slow ones.
    """
    if T < 1 or dim < 2 or dim % 2:
        raise ValueError(f"need T >= 1 and an even dim >= 2, got T={T}, dim={dim}")
    t = torch.arange(T, dtype=torch.float32)[:, None]                       # (T, 1)
    freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # 1 / 10000^(2i/dim): (dim/2,)
    pe = torch.zeros(T, dim)
    pe[:, 0::2] = torch.sin(t * freq)
    pe[:, 1::2] = torch.cos(t * freq)
    return pe


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of the step, (B,) -> (B, dim):  [cos(t w_k), sin(t w_k)], w_k = max_period^(-k / (dim/2))."""
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)
