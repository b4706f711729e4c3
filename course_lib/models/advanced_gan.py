"""Advanced GANs: conditioning, style-based generators and image-to-image translation.

The reference code behind Phase 3 · 03. Conventions are those of :mod:`course_lib.models.gan`:
images live in [-1, 1] (generators end with tanh), discriminators return **logits**, and the
losses of :mod:`course_lib.models.gan` (e.g. ``d_loss_nonsaturating``) apply unchanged.

Conditioning (Mirza & Osindero, 2014; Miyato & Koyama, 2018)
    :class:`ConditionalGenerator`   G(z, y): the class embedding is concatenated to the noise
    :class:`ProjectionDiscriminator` D(x, y) = ψ(φ(x)) + ⟨e(y), φ(x)⟩

Style (Karras et al., StyleGAN 2019 and StyleGAN2 2020)
    :func:`pixel_norm`, :class:`MappingNetwork`   z -> w, an MLP after normalising z
    :func:`adain`                                 AdaIN: normalise each channel, then scale and shift by the style
    :func:`modulate_weights`, :func:`modulated_conv2d`, :class:`ModulatedConv2d`
                                                  StyleGAN2's weight (de)modulation
    :class:`StyleGenerator`                       learned constant -> styled blocks -> RGB;
                                                  :func:`mix_styles`, :func:`truncate`

Image-to-image (Isola et al., pix2pix 2017; Zhu et al., CycleGAN 2017)
    :class:`UNetGenerator`       encoder-decoder with skip connections (edge map -> image)
    :class:`PatchDiscriminator`  one logit per overlapping patch: (B, 1, S / 2^n, S / 2^n)
    :func:`cycle_consistency_loss`, :func:`identity_loss`

    >>> G = StyleGenerator(z_dim=32, w_dim=32, out_ch=3, image_size=32)
    >>> x = G(torch.randn(4, 32))                          # (4, 3, 32, 32) in [-1, 1]
    >>> ws = mix_styles(G.mapping(torch.randn(4, 32)), G.mapping(torch.randn(4, 32)),
    ...                 crossover=3, num_ws=G.num_ws)      # coarse styles of one, fine of the other
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.nn.layers import RF, ConvBlock, receptive_field

__all__ = ["ConditionalGenerator", "ProjectionDiscriminator",
           "pixel_norm", "MappingNetwork", "adain", "modulate_weights", "modulated_conv2d",
           "ModulatedConv2d", "StyleBlock", "ToRGB", "StyleGenerator", "mix_styles", "truncate",
           "UNetGenerator", "PatchDiscriminator", "cycle_consistency_loss", "identity_loss"]


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------

def _check_positive(value, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_images(x, name: str, channels: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}"
                         + ("; add a batch dimension with x[None]" if x.dim() == 3 else ""))
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channel(s), got shape {tuple(x.shape)}")
    return x


def _check_labels(y, batch: int, num_classes: int) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"class labels must be an integer tensor of shape ({batch},), got "
                        f"{getattr(y, 'dtype', type(y).__name__)}; use torch.tensor(labels)")
    if y.shape != (batch,):
        raise ValueError(f"class labels must have shape ({batch},), one per sample; got {tuple(y.shape)}")
    if batch and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"class labels must lie in 0..{num_classes - 1}; got "
                         f"{int(y.min())}..{int(y.max())}")
    return y.long()


def _check_vectors(v, name: str, dim: int) -> torch.Tensor:
    if not isinstance(v, torch.Tensor) or v.dim() != 2 or v.shape[1] != dim:
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"{name} must have shape (B, {dim}), got {shape}")
    return v


def _halvings(image_size: int, smallest: int = 4, largest: int = 7) -> int:
    """How many times ``image_size`` halves evenly down to a start size in [smallest, largest]:
    16 -> 2 (4 x 4 start), 28 -> 2 (7 x 7), 32 -> 3 (4 x 4), 24 -> 2 (6 x 6)."""
    levels, size = 0, image_size
    while size > largest and size % 2 == 0:
        size, levels = size // 2, levels + 1
    if not smallest <= size <= largest:
        raise ValueError(f"image_size {image_size} does not halve down to a start size of "
                         f"{smallest}..{largest}; use e.g. 16, 24, 28 or 32")
    return levels


# ---------------------------------------------------------------------------------------------
# 1. conditional GAN
# ---------------------------------------------------------------------------------------------

class ConditionalGenerator(nn.Module):
    """A DCGAN-style generator told which class to draw.

    z: (B, z_dim), y: (B,) int64 in 0..num_classes-1 -> (B, out_ch, S, S) in [-1, 1], S = image_size.

        h = Linear([z, e(y)]) -> (B, 2·width, S/4, S/4)      e: a learned class embedding
        2 x (upsample x2 -> conv 3x3 -> BatchNorm -> ReLU), then conv 3x3 -> tanh

    The class enters once, at the input, concatenated to the noise (Mirza & Osindero, 2014).
    """

    def __init__(self, num_classes: int, z_dim: int = 32, out_ch: int = 1, image_size: int = 16,
                 width: int = 32, embed_dim: int = 16):
        super().__init__()
        for value, name in ((num_classes, "num_classes"), (z_dim, "z_dim"), (out_ch, "out_ch"),
                            (image_size, "image_size"), (width, "width"), (embed_dim, "embed_dim")):
            _check_positive(value, name)
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 (two x2 upsamplings), got {image_size}")
        self.num_classes, self.z_dim, self.start = num_classes, z_dim, image_size // 4
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.project = nn.Linear(z_dim + embed_dim, 2 * width * self.start ** 2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Upsample(scale_factor=2), ConvBlock(2 * width, width, 3),          # S/4 -> S/2
            nn.Upsample(scale_factor=2), ConvBlock(width, width // 2, 3),         # S/2 -> S
            nn.Conv2d(width // 2, out_ch, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = _check_vectors(z, "z", self.z_dim)
        y = _check_labels(y, z.shape[0], self.num_classes)
        h = self.project(torch.cat([z, self.embed(y)], dim=1))                    # (B, 2w·s·s)
        return self.body(h.view(z.shape[0], -1, self.start, self.start))


class ProjectionDiscriminator(nn.Module):
    """A class-conditional discriminator with a projection head (Miyato & Koyama, 2018).

    x: (B, in_ch, S, S) in [-1, 1], y: (B,) int64 -> logits (B,)

        φ(x) = Σ_positions convs(x)                   (B, F), F = 4·width
        D(x, y) = ψ(φ(x)) + ⟨e(y), φ(x)⟩              ψ: Linear(F, 1), e: Embedding(num_classes, F)

    The inner product asks "do these features look like class y?"; ψ asks "do they look real
    at all?". Spectral normalisation (Miyato et al., 2018) keeps D smooth (``spectral=True``).
    Any S that survives two stride-2 convolutions works (the sum pools whatever is left).
    """

    def __init__(self, num_classes: int, in_ch: int = 1, width: int = 32, spectral: bool = True):
        super().__init__()
        for value, name in ((num_classes, "num_classes"), (in_ch, "in_ch"), (width, "width")):
            _check_positive(value, name)
        sn = nn.utils.spectral_norm if spectral else (lambda m: m)
        self.num_classes, self.in_ch = num_classes, in_ch
        self.features = nn.Sequential(
            sn(nn.Conv2d(in_ch, width, 3, 1, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, 2 * width, 4, 2, 1)), nn.LeakyReLU(0.2),       # S -> S/2
            sn(nn.Conv2d(2 * width, 4 * width, 4, 2, 1)), nn.LeakyReLU(0.2))   # S/2 -> S/4
        self.psi = sn(nn.Linear(4 * width, 1))
        self.embed = sn(nn.Embedding(num_classes, 4 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = _check_images(x, "x", self.in_ch)
        y = _check_labels(y, x.shape[0], self.num_classes)
        h = self.features(x).sum(dim=(2, 3))                                      # φ(x): (B, F)
        return self.psi(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)            # ψ(φ) + ⟨e(y), φ⟩


# ---------------------------------------------------------------------------------------------
# 2. style: mapping network, AdaIN, weight (de)modulation
# ---------------------------------------------------------------------------------------------

def pixel_norm(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit root-mean-square along ``dim`` (Karras et al., 2018):

        x / sqrt(mean_i x_i² + eps)          z: (B, D) -> (B, D), every row of RMS 1
    """
    return x * torch.rsqrt(x.pow(2).mean(dim=dim, keepdim=True) + eps)


class MappingNetwork(nn.Module):
    """StyleGAN's mapping network f: Z -> W.

    z: (B, z_dim) -> w: (B, w_dim)

        w = MLP(pixel_norm(z)),   MLP = num_layers x (Linear -> LeakyReLU(0.2))

    Z is a fixed Gaussian; W is whatever shape the MLP makes of it, so the generator is free
    to "unwarp" the factors of variation instead of inheriting the Gaussian's geometry.
    """

    def __init__(self, z_dim: int = 64, w_dim: int = 64, num_layers: int = 4):
        super().__init__()
        for value, name in ((z_dim, "z_dim"), (w_dim, "w_dim"), (num_layers, "num_layers")):
            _check_positive(value, name)
        self.z_dim, self.w_dim = z_dim, w_dim
        layers: list[nn.Module] = []
        for i in range(num_layers):
            linear = nn.Linear(z_dim if i == 0 else w_dim, w_dim)
            nn.init.kaiming_normal_(linear.weight, a=0.2)    # He init for LeakyReLU: w keeps scale ~1
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_norm(_check_vectors(z, "z", self.z_dim)))


def adain(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Adaptive instance normalisation (Huang & Belongie, 2017; StyleGAN v1).

    x: (B, C, H, W); scale, bias: (B, C) (the style) -> (B, C, H, W)

        AdaIN(x, s, b)_c = s_c · (x_c − μ_c(x)) / σ_c(x) + b_c

    with μ_c, σ_c the mean and standard deviation of channel c of each sample over (H, W).
    The content's per-channel statistics are wiped out and replaced by the style's.
    """
    x = _check_images(x, "x")
    for t, name in ((scale, "scale"), (bias, "bias")):
        if not isinstance(t, torch.Tensor) or t.shape != x.shape[:2]:
            raise ValueError(f"adain: {name} must have shape {tuple(x.shape[:2])} (B, C), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    mu = x.mean(dim=(2, 3), keepdim=True)                                         # μ_c: (B, C, 1, 1)
    sigma = (x.var(dim=(2, 3), keepdim=True, unbiased=False) + eps).sqrt()        # σ_c
    return scale[..., None, None] * (x - mu) / sigma + bias[..., None, None]


def modulate_weights(weight: torch.Tensor, style: torch.Tensor, demodulate: bool = True,
                     eps: float = 1e-8) -> torch.Tensor:
    """StyleGAN2's per-sample convolution weights.

    weight: (C_out, C_in, k, k); style: (B, C_in) -> (B, C_out, C_in, k, k)

        modulate:    w'_{b,o,i,u,v}  = s_{b,i} · w_{o,i,u,v}
        demodulate:  w''_{b,o,i,u,v} = w'_{b,o,i,u,v} / sqrt(Σ_{i,u,v} w'²_{b,o,i,u,v} + eps)

    Scaling input channel i by s_i is what AdaIN's scale did to the activations; doing it to
    the weights instead gives the same product. Demodulation rescales each output channel's
    weights to unit L2 norm, so unit-variance inputs give (about) unit-variance outputs: the
    normalisation AdaIN did on the data, done on the weights (no droplet artefacts).
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError(f"weight must have shape (C_out, C_in, k, k), got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    style = _check_vectors(style, "style", weight.shape[1])
    w = style[:, None, :, None, None] * weight[None]                              # w': (B, O, I, k, k)
    if demodulate:
        w = w * torch.rsqrt(w.pow(2).sum(dim=(2, 3, 4), keepdim=True) + eps)      # w'' = w' / ||w'||
    return w


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, style: torch.Tensor,
                     demodulate: bool = True, padding: int | None = None,
                     eps: float = 1e-8) -> torch.Tensor:
    """A convolution whose weights are modulated by a per-sample style (StyleGAN2).

    x: (B, C_in, H, W); weight: (C_out, C_in, k, k); style: (B, C_in) -> (B, C_out, H', W')
    (H' = H with the default "same" padding k // 2).

    Each sample gets its own weights (:func:`modulate_weights`); one grouped convolution
    applies them all at once: the batch is folded into the channels, (1, B·C_in, H, W), and
    ``groups=B`` keeps sample b's channels with sample b's weights. With ``style`` all ones
    and ``demodulate=False`` this is exactly ``F.conv2d(x, weight, padding=k // 2)``.
    """
    x = _check_images(x, "x", weight.shape[1] if isinstance(weight, torch.Tensor) and weight.dim() == 4 else None)
    b, c_in, h, w_ = x.shape
    if not isinstance(style, torch.Tensor) or style.shape[0] != b:
        raise ValueError(f"style must have shape ({b}, {c_in}), one style per sample; got "
                         f"{tuple(style.shape) if isinstance(style, torch.Tensor) else type(style).__name__}")
    weights = modulate_weights(weight, style, demodulate, eps)                    # (B, O, I, k, k)
    c_out, k = weight.shape[0], weight.shape[-1]
    padding = k // 2 if padding is None else padding
    out = F.conv2d(x.reshape(1, b * c_in, h, w_), weights.reshape(b * c_out, c_in, k, k),
                   padding=padding, groups=b)                                     # (1, B·O, H', W')
    return out.view(b, c_out, out.shape[-2], out.shape[-1])


class ModulatedConv2d(nn.Module):
    """A k x k convolution styled by w.

    x: (B, in_ch, H, W), w: (B, w_dim) -> (B, out_ch, H, W)

        s = A(w)                 A: Linear(w_dim, in_ch), bias initialised to 1, weights N(0, 1/w_dim)
        y = modulated_conv2d(x, weight, s, demodulate)

    The weight starts as N(0, 1/(in_ch·k²)), the scale of a plain conv's He-style init.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, w_dim: int,
                 demodulate: bool = True):
        super().__init__()
        for value, name in ((in_ch, "in_ch"), (out_ch, "out_ch"), (kernel_size, "kernel_size"),
                            (w_dim, "w_dim")):
            _check_positive(value, name)
        self.demodulate = demodulate
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size)
                                   / math.sqrt(in_ch * kernel_size ** 2))
        self.affine = nn.Linear(w_dim, in_ch)
        nn.init.normal_(self.affine.weight, std=1 / math.sqrt(w_dim))  # s = 1 + O(1): styles matter from step 0
        nn.init.ones_(self.affine.bias)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return modulated_conv2d(x, self.weight, self.affine(w), self.demodulate)


class StyleBlock(nn.Module):
    """(upsample x2) -> modulated conv 3x3 -> + noise -> + bias -> LeakyReLU(0.2).

    x: (B, in_ch, H, W), w: (B, w_dim) -> (B, out_ch, H, W) (2H x 2W with ``upsample``)

    The noise is one fresh N(0, 1) map per sample, added to every channel c with a learned
    strength λ_c (zero at the start): it is where the generator gets its stochastic detail.
    """

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, upsample: bool = False):
        super().__init__()
        self.upsample = upsample
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, w_dim)
        self.noise_strength = nn.Parameter(torch.zeros(1, out_ch, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: bool = True) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.conv(x, w)
        if noise:
            x = x + self.noise_strength * torch.randn(x.shape[0], 1, *x.shape[2:]).to(x.device)  # CPU draw
        return F.leaky_relu(x + self.bias, 0.2)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to image channels, without demodulation (the colour scale matters).

    x: (B, in_ch, H, W), w: (B, w_dim) -> (B, out_ch, H, W)
    """

    def __init__(self, in_ch: int, out_ch: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias


class StyleGenerator(nn.Module):
    """A small style-based generator in the manner of StyleGAN2 (Karras et al., 2020).

    z: (B, z_dim) -> images (B, out_ch, S, S), trained towards [-1, 1], S = image_size (16, 24, 28, 32 ...)

        w = mapping(z)                                   (B, w_dim)
        ws = w repeated for every styled layer           (B, num_ws, w_dim)
        x = constant (1, C, s0, s0), the same for every sample (s0 = S / 2^L, 4..7)
        level 0:  x = block_0(x, ws[:, 0])
        level l:  x = block_2l-1(up(x), ws[:, 2l-1]);  x = block_2l(x, ws[:, 2l])
        rgb = Σ_levels upsample(ToRGB_l(x_l, w of that level's last block))  ("skip" outputs)
        image = rgb   (no tanh, as in StyleGAN2: a saturated tanh stops the gradient when most
                       pixels are background; clamp to [-1, 1] before showing)

    Nothing but the styles and the noise varies between samples: the start is a learned
    constant. ``num_ws`` = 1 + 2L styles; early ones act on coarse resolutions (layout,
    shape), late ones on fine resolutions (colour, texture). ``channels`` gives the width at
    each level (one int: the same everywhere).
    """

    def __init__(self, z_dim: int = 64, w_dim: int = 64, out_ch: int = 3, image_size: int = 32,
                 channels: int | tuple[int, ...] = 64, mapping_layers: int = 4):
        super().__init__()
        for value, name in ((z_dim, "z_dim"), (w_dim, "w_dim"), (out_ch, "out_ch"),
                            (image_size, "image_size")):
            _check_positive(value, name)
        levels = _halvings(image_size)
        widths = (channels,) * (levels + 1) if isinstance(channels, int) else tuple(channels)
        if len(widths) != levels + 1 or not all(isinstance(c, int) and c > 0 for c in widths):
            raise ValueError(f"channels must be an int or {levels + 1} positive ints (one per level "
                             f"{[image_size >> (levels - i) for i in range(levels + 1)]}), got {channels!r}")
        self.z_dim, self.w_dim, self.image_size = z_dim, w_dim, image_size
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers)
        start = image_size >> levels
        self.const = nn.Parameter(torch.randn(1, widths[0], start, start))
        self.blocks = nn.ModuleList([StyleBlock(widths[0], widths[0], w_dim)])
        self.to_rgb = nn.ModuleList([ToRGB(widths[0], out_ch, w_dim)])
        for lvl in range(1, levels + 1):
            self.blocks.append(StyleBlock(widths[lvl - 1], widths[lvl], w_dim, upsample=True))
            self.blocks.append(StyleBlock(widths[lvl], widths[lvl], w_dim))
            self.to_rgb.append(ToRGB(widths[lvl], out_ch, w_dim))
        self.num_ws = len(self.blocks)

    def layer_resolutions(self) -> list[int]:
        """The resolution each of the ``num_ws`` styles acts on, e.g. [4, 8, 8, 16, 16] for S = 16."""
        start = self.const.shape[-1]
        return [start] + [start << (1 + i // 2) for i in range(self.num_ws - 1)]

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        """w: (B, w_dim) -> ws: (B, num_ws, w_dim), the same style for every layer."""
        return _check_vectors(w, "w", self.w_dim)[:, None].expand(-1, self.num_ws, -1)

    def synthesis(self, ws: torch.Tensor, noise: bool = True) -> torch.Tensor:
        """ws: (B, num_ws, w_dim) (or (B, w_dim), used for every layer) -> (B, out_ch, S, S)."""
        if isinstance(ws, torch.Tensor) and ws.dim() == 2:
            ws = self.broadcast(ws)
        if not isinstance(ws, torch.Tensor) or ws.dim() != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must have shape (B, {self.num_ws}, {self.w_dim}) (one style per "
                             f"layer) or (B, {self.w_dim}); got "
                             f"{tuple(ws.shape) if isinstance(ws, torch.Tensor) else type(ws).__name__}")
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        x = self.blocks[0](x, ws[:, 0], noise)
        rgb = self.to_rgb[0](x, ws[:, 0])
        for lvl in range(1, len(self.to_rgb)):
            x = self.blocks[2 * lvl - 1](x, ws[:, 2 * lvl - 1], noise)
            x = self.blocks[2 * lvl](x, ws[:, 2 * lvl], noise)
            rgb = F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False)
            rgb = rgb + self.to_rgb[lvl](x, ws[:, 2 * lvl])                       # skip: sum of all levels
        return rgb

    def forward(self, z: torch.Tensor, noise: bool = True, psi: float = 1.0,
                w_avg: torch.Tensor | None = None) -> torch.Tensor:
        """z: (B, z_dim) -> (B, out_ch, S, S). With ``psi < 1`` and ``w_avg``: the truncation trick."""
        w = self.mapping(z)
        if psi != 1.0:
            if w_avg is None:
                raise ValueError("the truncation trick needs w_avg (e.g. G.mapping(torch.randn(10000, "
                                 "z_dim)).mean(0)); pass psi=1.0 to switch it off")
            w = truncate(w, w_avg, psi)
        return self.synthesis(w, noise)


def mix_styles(w_a: torch.Tensor, w_b: torch.Tensor, crossover: int, num_ws: int) -> torch.Tensor:
    """Style mixing: layers ``0 .. crossover-1`` get w_a, layers ``crossover .. num_ws-1`` get w_b.

    w_a, w_b: (B, w_dim) -> ws: (B, num_ws, w_dim). crossover = 0 is all w_b, num_ws all w_a.
    """
    if w_a.shape != w_b.shape or w_a.dim() != 2:
        raise ValueError(f"w_a and w_b must both have shape (B, w_dim); got {tuple(w_a.shape)} "
                         f"and {tuple(w_b.shape)}")
    if not isinstance(crossover, int) or not 0 <= crossover <= num_ws:
        raise ValueError(f"crossover must be an int in 0..{num_ws}, got {crossover!r}")
    take_a = (torch.arange(num_ws, device=w_a.device) < crossover).view(1, num_ws, 1)
    return torch.where(take_a, w_a[:, None], w_b[:, None])


def truncate(w: torch.Tensor, w_avg: torch.Tensor, psi: float) -> torch.Tensor:
    """The truncation trick in W: w' = w_avg + ψ (w − w_avg). w: (B, w_dim), w_avg: (w_dim,).

    ψ = 1 leaves w alone; ψ = 0 gives every sample the average style; in between trades
    variety for typical-looking samples.
    """
    return w_avg + psi * (w - w_avg)


# ---------------------------------------------------------------------------------------------
# 3. image-to-image: U-Net, PatchGAN, cycle consistency
# ---------------------------------------------------------------------------------------------

class UNetGenerator(nn.Module):
    """pix2pix's generator: an encoder-decoder with skip connections (Ronneberger et al., 2015).

    x: (B, in_ch, S, S) -> (B, out_ch, S, S) in [-1, 1]; S divisible by 2^depth.

        e_0 = ConvBlock(x)                               (B, c_0, S, S)
        e_i = ConvBlock(e_{i-1}, stride 2)               (B, c_i, S/2^i, S/2^i),  c_i = width·2^min(i, 3)
        d_depth = e_depth
        d_{i-1} = ConvBlock([upsample(d_i), e_{i-1}])    the skip: concatenate the encoder's map
        out = tanh(conv1x1(d_0))

    The skips hand the input's fine detail (here: where the edges are) straight to the decoder,
    so the bottleneck only has to carry what the whole image needs to agree on.
    """

    def __init__(self, in_ch: int = 1, out_ch: int = 3, width: int = 32, depth: int = 3,
                 norm: str | None = "batch"):
        super().__init__()
        for value, name in ((in_ch, "in_ch"), (out_ch, "out_ch"), (width, "width"), (depth, "depth")):
            _check_positive(value, name)
        self.in_ch, self.depth = in_ch, depth
        ch = [width * 2 ** min(i, 3) for i in range(depth + 1)]
        self.down = nn.ModuleList([ConvBlock(in_ch, ch[0], 3, norm=None, act="leaky_relu")])
        self.down.extend(ConvBlock(ch[i - 1], ch[i], 3, stride=2, norm=norm, act="leaky_relu")
                         for i in range(1, depth + 1))
        self.up = nn.ModuleList(ConvBlock(ch[i] + ch[i - 1], ch[i - 1], 3, norm=norm, act="relu")
                                for i in range(depth, 0, -1))
        self.out = nn.Conv2d(ch[0], out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_images(x, "x", self.in_ch)
        if x.shape[-1] % 2 ** self.depth or x.shape[-2] % 2 ** self.depth:
            raise ValueError(f"UNetGenerator with depth {self.depth} needs H and W divisible by "
                             f"{2 ** self.depth}; got {tuple(x.shape[-2:])}")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)                                                       # e_0 ... e_depth
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(torch.cat([x, skip], dim=1))                                # [up(d_i), e_{i-1}]
        return torch.tanh(self.out(x))


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al., 2017): one real/fake logit per overlapping image patch.

    x: (B, in_ch, S, S) -> logits (B, 1, S / 2^num_down, S / 2^num_down)

        num_down x ConvBlock(3x3, stride 2, LeakyReLU), then conv 3x3 -> 1 channel

    Each logit sees only a ``receptive_field().size``-pixel square of the input, so D judges
    local texture and sharpness and leaves the global layout to the L1 (or cycle) loss. For
    pix2pix give it the condition and the image stacked: ``D(torch.cat([edges, image], 1))``.
    Flatten the logits (``.flatten()``) to use them with the losses of :mod:`course_lib.models.gan`.
    """

    def __init__(self, in_ch: int = 4, width: int = 32, num_down: int = 2, norm: str | None = "batch"):
        super().__init__()
        for value, name in ((in_ch, "in_ch"), (width, "width"), (num_down, "num_down")):
            _check_positive(value, name)
        self.in_ch = in_ch
        layers, c = [], in_ch
        for i in range(num_down):
            out = width * 2 ** min(i, 3)
            layers.append(ConvBlock(c, out, 3, stride=2, norm=None if i == 0 else norm, act="leaky_relu"))
            c = out
        layers.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def receptive_field(self) -> RF:
        """How many input pixels one output logit sees (and the spacing of the patches)."""
        convs = [m for m in self.net.modules() if isinstance(m, nn.Conv2d)]
        return receptive_field(convs)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_check_images(x, "x", self.in_ch))


def cycle_consistency_loss(g_ab: Callable, g_ba: Callable, real_a: torch.Tensor,
                           real_b: torch.Tensor, fake_b: torch.Tensor | None = None,
                           fake_a: torch.Tensor | None = None) -> torch.Tensor:
    """CycleGAN's cycle-consistency loss (Zhu et al., 2017), a scalar:

        L_cyc = E_a |G_BA(G_AB(a)) − a|₁ + E_b |G_AB(G_BA(b)) − b|₁      (mean absolute error)

    g_ab: A -> B and g_ba: B -> A (callables on (B, C, H, W) batches); real_a, real_b:
    (N, C, H, W) batches of each domain. If you already computed ``fake_b = g_ab(real_a)`` and
    ``fake_a = g_ba(real_b)`` pass them to save two forward passes. Zero exactly when the two
    maps undo each other on the given images.
    """
    real_a, real_b = _check_images(real_a, "real_a"), _check_images(real_b, "real_b")
    fake_b = g_ab(real_a) if fake_b is None else fake_b
    fake_a = g_ba(real_b) if fake_a is None else fake_a
    return (g_ba(fake_b) - real_a).abs().mean() + (g_ab(fake_a) - real_b).abs().mean()


def identity_loss(g_ab: Callable, g_ba: Callable, real_a: torch.Tensor,
                  real_b: torch.Tensor) -> torch.Tensor:
    """CycleGAN's identity loss, a scalar: a map into B should leave images already in B alone,

        L_id = E_b |G_AB(b) − b|₁ + E_a |G_BA(a) − a|₁

    It discourages changes the translation does not need (e.g. a shift of colours it was not
    asked for). real_a, real_b: (N, C, H, W); g_ab, g_ba as in :func:`cycle_consistency_loss`.
    """
    real_a, real_b = _check_images(real_a, "real_a"), _check_images(real_b, "real_b")
    return (g_ab(real_b) - real_b).abs().mean() + (g_ba(real_a) - real_a).abs().mean()
