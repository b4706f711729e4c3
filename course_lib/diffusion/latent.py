"""Latent diffusion's latent space: the scale factor between an autoencoder and the diffusion.

The autoencoder is :class:`course_lib.models.autoencoder.LatentAutoencoder`. The diffusion
runs on ``scale * z`` where ``scale = 1 / std(z)`` over the training set (SD's 0.18215 is this
number for its autoencoder), so the latents have unit variance like the
noise they are mixed with; decode with ``z / scale``:

    scale = latent_scale_factor(encode_dataset(ae, x_train))        # once, after training ae
    z0 = scale_latents(ae.encode(x), scale)                          # what the diffusion sees
    x_hat = ae.decode(unscale_latents(z0, scale))                    # back to pixels
"""
from __future__ import annotations

import torch
from torch import Tensor

from course_lib.models.autoencoder import LatentAutoencoder


@torch.no_grad()
def latent_scale_factor(latents: Tensor) -> float:
    """1 / std of a batch of (unscaled) latents (B, C, s, s): the factor that gives them unit variance.

        scale = 1 / sqrt( sum((z - mean(z))^2) / (n - 1) )   over all n numbers of the batch
                                                               (one scalar, like SD's 0.18215)
    """
    if not isinstance(latents, Tensor):
        raise TypeError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
    if latents.numel() < 2:
        raise ValueError(f"need at least 2 latent numbers to measure a spread, got shape {tuple(latents.shape)}")
    std = latents.float().std().item()
    if not std > 0:   # also catches NaN
        raise ValueError("the latents have zero (or NaN) spread; is the autoencoder trained?")
    return 1.0 / std


def _check_scale(scale) -> float:
    if isinstance(scale, Tensor):
        scale = scale.item()
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
        raise ValueError(f"scale must be a positive number (from latent_scale_factor), got {scale!r}")
    return float(scale)


def scale_latents(z: Tensor, scale: float) -> Tensor:
    """Autoencoder latents -> the diffusion's space:  z0 = scale * z  (unit variance)."""
    return z * _check_scale(scale)


def unscale_latents(z0: Tensor, scale: float) -> Tensor:
    """The diffusion's space -> autoencoder latents, before decoding:  z = z0 / scale."""
    return z0 / _check_scale(scale)


@torch.no_grad()
def encode_dataset(autoencoder: LatentAutoencoder, images: Tensor, batch_size: int = 256) -> Tensor:
    """Encode a whole (N, C, S, S) tensor in [-1, 1] (in batches, eval mode) -> (N, latent_ch, s, s)."""
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (N, C, S, S) tensor, got {getattr(images, 'shape', type(images).__name__)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    autoencoder.eval()
    device = next(autoencoder.parameters()).device
    return torch.cat([autoencoder.encode(images[i:i + batch_size].to(device)).cpu()
                      for i in range(0, len(images), batch_size)])
