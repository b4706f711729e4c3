"""Latent diffusion's autoencoder: images <-> small spatial latents, and the latent scale factor.

    x (B, C, S, S) in [-1, 1] --encode--> z (B, latent_ch, S/f, S/f), f = 2^levels
    z --decode--> x_hat (B, C, S, S)

Like Stable Diffusion's autoencoder it is a VAE with a very small KL weight: the KL term only
keeps the latents from drifting to huge values; reconstruction is what it is trained for.
The diffusion then runs on ``scale * z`` where ``scale = 1 / std(z)`` over the training set
(SD's 0.18215 is this number for its autoencoder), so the latents have unit variance like
the noise they are mixed with; decode with ``z / scale``:

    scale = latent_scale_factor(encode_dataset(ae, x_train))        # once, after training ae
    z0 = scale_latents(ae.encode(x), scale)                          # what the diffusion sees
    x_hat = ae.decode(unscale_latents(z0, scale))                    # back to pixels
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from course_lib.nn.layers import _groups


INITIAL_LOGVAR = -6.0   # the encoder's log-variance output at initialisation


def _block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.GroupNorm(_groups(out_ch), out_ch), nn.SiLU())


class LatentAutoencoder(nn.Module):
    """A small KL-autoencoder with spatial latents.

    Args:
        in_ch: image channels; latent_ch: latent channels; width: channels of the first level
        (doubling per level); levels: number of halvings f = 2^levels of the image side;
        kl_weight: weight of KL(q(z|x) || N(0, I)) in :meth:`loss`.
    """

    def __init__(self, in_ch: int = 3, latent_ch: int = 4, width: int = 32, levels: int = 2,
                 kl_weight: float = 1e-4):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.in_ch, self.latent_ch, self.levels, self.kl_weight = in_ch, latent_ch, levels, kl_weight
        self.config = dict(in_ch=in_ch, latent_ch=latent_ch, width=width, levels=levels, kl_weight=kl_weight)
        chans = [width * 2 ** i for i in range(levels + 1)]
        enc = [_block(in_ch, chans[0])]
        for i in range(levels):
            enc += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1), _block(chans[i + 1], chans[i + 1])]
        self.encoder = nn.Sequential(*enc, nn.Conv2d(chans[-1], 2 * latent_ch, 1))   # -> mean, log-variance
        dec = [nn.Conv2d(latent_ch, chans[-1], 3, padding=1), _block(chans[-1], chans[-1])]
        for i in reversed(range(levels)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), _block(chans[i + 1], chans[i]), _block(chans[i], chans[i])]
        self.decoder = nn.Sequential(*dec, nn.Conv2d(chans[0], in_ch, 3, padding=1))
        # Start with little posterior noise (sigma = e^-3 ~ 0.05 instead of 1): otherwise the
        # decoder first sees codes drowned in unit noise and learns colours and shapes far slower.
        with torch.no_grad():
            self.encoder[-1].bias[latent_ch:].fill_(INITIAL_LOGVAR)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(latent_ch, s, s) of the latent of a (C, image_size, image_size) image, s = image_size / f."""
        if image_size % self.factor:
            raise ValueError(f"image_size {image_size} must be divisible by {self.factor} (= 2^levels)")
        return (self.latent_ch, image_size // self.factor, image_size // self.factor)

    @property
    def factor(self) -> int:
        """How much smaller each side of the latent is than the image's."""
        return 2 ** self.levels

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, C, S, S) in [-1, 1] -> mean, log-variance, each (B, latent_ch, S/f, S/f)."""
        if x.ndim != 4 or x.shape[1] != self.in_ch or x.shape[-1] % self.factor:
            raise ValueError(f"images must be (B, {self.in_ch}, S, S) with S divisible by {self.factor}, "
                             f"got {tuple(x.shape)}")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20)

    def encode(self, x: Tensor) -> Tensor:
        """The latent of x (its mean; no sampling): (B, C, S, S) -> (B, latent_ch, S/f, S/f)."""
        return self.moments(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        """(B, latent_ch, s, s) -> images (B, C, s*f, s*f), roughly in [-1, 1]."""
        if z.ndim != 4 or z.shape[1] != self.latent_ch:
            raise ValueError(f"latents must be (B, {self.latent_ch}, s, s), got {tuple(z.shape)}")
        return self.decoder(z)

    def loss(self, x: Tensor, foreground_weight: float = 0.0) -> tuple[Tensor, dict[str, float]]:
        """Reconstruction (mean squared error) + kl_weight * KL per latent number, for ``course_lib.train.fit``.

        foreground_weight w: the squared error of every pixel where some channel is brighter
        than the black background (x > -0.9, i.e. 0.05 in [0, 1]) counts 1 + w times. A small
        object on a black image is a few percent of the pixels; without the weight the
        autoencoder learns the background first and blurs the object's shape.
        """
        if foreground_weight < 0:
            raise ValueError(f"foreground_weight must be >= 0, got {foreground_weight}")
        mean, logvar = self.moments(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        w = 1 + foreground_weight * (x.amax(dim=1, keepdim=True) > -0.9).to(x)   # (B, 1, S, S); 1 when w = 0
        rec = (w * (self.decode(z) - x) ** 2).mean()
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).mean()   # KL(N(m, s^2) || N(0, 1)) per number
        return rec + self.kl_weight * kl, {"recon": rec.item(), "kl": kl.item()}


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
