"""Autoencoders: squeeze an image through a small code and rebuild it.

    model = ConvAutoencoder(in_ch=1, latent_dim=8, image_size=16, width=32)
    z = model.encode(x)            # x: (B, 1, 16, 16) in [0, 1]  ->  z: (B, 8)
    x_hat = model.decode(z)        # (B, 1, 16, 16) in [0, 1]
    loss = F.mse_loss(model(x), x)

The encoder and the decoder are separate modules (:class:`ConvEncoder`, :class:`ConvDecoder`)
so that later models can reuse them: a VAE asks the encoder for ``2 * latent_dim`` numbers
(a mean and a log-variance), and a latent diffusion model trains on the codes ``z``.

Shapes, with ``levels`` = L halvings of the image side (default 2) and ``width`` = W; every
"conv" is a 3x3 convolution followed by GroupNorm and SiLU:

    encoder  x (B, C, S, S) -> [conv s2 -> conv] x L -> (B, W·2^(L-1), S/2^L, S/2^L)
                            -> flatten -> linear -> z (B, latent_dim)
    decoder  z (B, latent_dim) -> linear -> (B, W·2^(L-1), S/2^L, S/2^L)
                            -> [upsample x2 -> conv -> conv] x L -> conv -> x_hat (B, C, S, S)

A denoising autoencoder is the same model trained on ``(add_noise(x), x)`` pairs: it must
rebuild the clean image from a corrupted one.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from course_lib.nn.layers import _groups

__all__ = ["ConvEncoder", "ConvDecoder", "ConvAutoencoder", "MLPAutoencoder", "add_noise",
           "OUTPUTS",
           "LatentAutoencoder"]

OUTPUTS = ("sigmoid", "tanh", "none")  # the decoder's last activation: images in [0, 1], [-1, 1], any


def _check_sizes(in_ch: int, latent_dim: int, image_size: int, width: int, levels: int) -> None:
    for name, value in (("in_ch", in_ch), ("latent_dim", latent_dim), ("image_size", image_size),
                        ("width", width), ("levels", levels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if image_size % 2 ** levels:
        raise ValueError(f"image_size={image_size} must be divisible by 2**levels = {2 ** levels} "
                         f"(each of the {levels} levels halves the side); pick levels="
                         f"{_max_levels(image_size)} or fewer, or resize the images")


def _max_levels(image_size: int) -> int:
    return (image_size & -image_size).bit_length() - 1  # how many times 2 divides image_size


def _output_layer(output: str) -> nn.Module:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    return {"sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "none": nn.Identity()}[output]


def _conv(in_ch: int, out_ch: int, stride: int = 1) -> list[nn.Module]:
    """3x3 convolution -> GroupNorm -> SiLU. The normalisation keeps the activations at a steady
    scale, so training cannot blow them up (images are mostly black background, and without it
    the decoder is easily pushed into a saturated sigmoid that outputs 0 everywhere)."""
    return [nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1),
            nn.GroupNorm(math.gcd(8, out_ch), out_ch), nn.SiLU()]


def _channels(width: int, level: int) -> int:
    """Channels after ``level`` + 1 halvings: width, 2·width, 4·width, ... (at most 8·width)."""
    return width * 2 ** min(level, 3)


class ConvEncoder(nn.Module):
    """Images to codes: ``(B, in_ch, S, S) -> (B, latent_dim)``.

    Each level halves the side with a stride-2 3x3 convolution and refines with a 3x3
    convolution (each followed by GroupNorm and SiLU); a linear layer maps the flattened
    feature map to the code.
    """

    def __init__(self, in_ch: int, latent_dim: int, image_size: int, width: int = 32,
                 levels: int = 2):
        super().__init__()
        _check_sizes(in_ch, latent_dim, image_size, width, levels)
        self.in_ch, self.image_size = in_ch, image_size
        layers, ch = [], in_ch
        for level in range(levels):
            out = _channels(width, level)
            layers += _conv(ch, out, stride=2) + _conv(out, out)                 # S -> S/2
            ch = out
        self.features = nn.Sequential(*layers)
        self.feature_shape = (ch, image_size // 2 ** levels, image_size // 2 ** levels)
        self.to_latent = nn.Linear(math.prod(self.feature_shape), latent_dim)    # z = W·vec(h) + b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, S, S) -> z: (B, latent_dim)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.in_ch, self.image_size, self.image_size):
            raise ValueError(f"the encoder expects images (B, {self.in_ch}, {self.image_size}, "
                             f"{self.image_size}), got {tuple(x.shape)}")
        return self.to_latent(self.features(x).flatten(1))


class ConvDecoder(nn.Module):
    """Codes to images: ``(B, latent_dim) -> (B, out_ch, S, S)``, the encoder in reverse.

    A linear layer makes a small feature map; each level doubles the side (nearest-neighbour
    upsampling, then two 3x3 convolutions with GroupNorm and SiLU); a last 3x3 convolution
    gives the ``out_ch`` channels, squashed by ``output`` ("sigmoid": [0, 1], "tanh": [-1, 1],
    "none").
    """

    def __init__(self, latent_dim: int, out_ch: int, image_size: int, width: int = 32,
                 levels: int = 2, output: str = "sigmoid"):
        super().__init__()
        _check_sizes(out_ch, latent_dim, image_size, width, levels)
        self.latent_dim = latent_dim
        side = image_size // 2 ** levels
        self.feature_shape = (_channels(width, levels - 1), side, side)
        self.from_latent = nn.Linear(latent_dim, math.prod(self.feature_shape))
        layers = []
        for level in reversed(range(levels)):
            ch, out = _channels(width, level), _channels(width, max(level - 1, 0))
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),                # s -> 2s
                       *_conv(ch, out), *_conv(out, out)]
        layers += [nn.Conv2d(_channels(width, 0), out_ch, 3, padding=1), _output_layer(output)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_dim) -> x_hat: (B, out_ch, S, S)."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"the decoder expects codes (B, {self.latent_dim}), got {tuple(z.shape)}")
        h = self.from_latent(z).view(len(z), *self.feature_shape)
        return self.net(h)


class ConvAutoencoder(nn.Module):
    """A convolutional autoencoder: ``decode(encode(x)) ≈ x`` through a ``latent_dim`` code.

    in_ch: image channels (1 digits, 3 shapes); latent_dim: size of the bottleneck;
    image_size: side S of the square images (divisible by 2**levels); width: channels of the
    first level (doubling per level); output: the decoder's squashing, "sigmoid" for images
    in [0, 1] (the course's default), "tanh" for [-1, 1], "none" for anything.
    """

    def __init__(self, in_ch: int = 1, latent_dim: int = 16, image_size: int = 16,
                 width: int = 32, levels: int = 2, output: str = "sigmoid"):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(in_ch, latent_dim, image_size, width, levels)
        self.decoder = ConvDecoder(latent_dim, in_ch, image_size, width, levels, output)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, S, S) -> z: (B, latent_dim)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_dim) -> x_hat: (B, C, S, S)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction x_hat = decode(encode(x)), same shape as x."""
        return self.decode(self.encode(x))


class MLPAutoencoder(nn.Module):
    """The simplest autoencoder: flatten, two linear layers down, two up.

    x (B, *image_shape) -> z (B, latent_dim) -> x_hat (B, *image_shape). No notion of
    neighbouring pixels: the baseline the convolutional version is compared with.
    """

    def __init__(self, image_shape: tuple[int, ...] = (1, 16, 16), latent_dim: int = 16,
                 hidden: int = 256, output: str = "sigmoid"):
        super().__init__()
        if not image_shape or not all(isinstance(s, int) and s > 0 for s in image_shape):
            raise ValueError(f"image_shape must be positive ints such as (1, 16, 16), got {image_shape!r}")
        self.image_shape, self.latent_dim = tuple(image_shape), latent_dim
        d = math.prod(image_shape)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.SiLU(),
                                     nn.Linear(hidden, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, d),
                                     _output_layer(output))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, *image_shape) -> z: (B, latent_dim)."""
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"expected images (B, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(x.shape)}")
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_dim) -> x_hat: (B, *image_shape)."""
        return self.decoder(z).view(len(z), *self.image_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def add_noise(x: torch.Tensor, std: float = 0.3, generator: torch.Generator | None = None,
              clip: tuple[float, float] | None = (0.0, 1.0)) -> torch.Tensor:
    """The corruption of a denoising autoencoder: x̃ = x + std · ε, ε ~ N(0, I).

    x: any shape; returns the same shape. ``clip`` keeps the result in a value range (default
    [0, 1], the course's images; None: no clipping). ``generator`` makes the noise reproducible.
    """
    if not std >= 0:
        raise ValueError(f"std must be >= 0, got {std!r}")
    device = generator.device if generator is not None else x.device
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)
    noisy = x + std * eps                                                        # x̃ = x + σ ε
    return noisy.clamp(*clip) if clip is not None else noisy


# ----------------------------------------------------------------------------- latent diffusion's autoencoder
# A KL-autoencoder with *spatial* latents, as in Stable Diffusion (notebook 4 · 05):
#     x (B, C, S, S) in [-1, 1] --encode--> z (B, latent_ch, S/f, S/f), f = 2^levels --decode--> x_hat
# Its KL weight is tiny: the KL term only keeps the latents from drifting to huge values;
# reconstruction is what it is trained for.
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
            dec += [nn.Upsample(scale_factor=2, mode="nearest"),
                    _block(chans[i + 1], chans[i]), _block(chans[i], chans[i])]
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
        z = mean + torch.randn(mean.shape, dtype=mean.dtype).to(mean.device) * (0.5 * logvar).exp()  # CPU draw
        w = 1 + foreground_weight * (x.amax(dim=1, keepdim=True) > -0.9).to(x)   # (B, 1, S, S); 1 when w = 0
        rec = (w * (self.decode(z) - x) ** 2).mean()
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).mean()   # KL(N(m, s^2) || N(0, 1)) per number
        return rec + self.kl_weight * kl, {"recon": rec.item(), "kl": kl.item()}
