"""Normalizing flows: RealNVP coupling layers, Glow's ActNorm and invertible 1x1 convolution.

**Direction convention (used everywhere in this file).** A flow maps *data to latent*:

    forward(x)  -> (z, log_det)     z = f(x),  log_det = log |det df/dx|,  one number per sample
    inverse(z)  -> x                x = f^{-1}(z)

so that, with a standard normal base density, the change of variables formula reads

    log p(x) = log N(f(x); 0, I) + log |det df/dx(x)|.

Sampling runs the other way: z ~ N(0, I), x = f^{-1}(z). A :class:`FlowSequence` of layers
f = f_K o ... o f_1 has log |det df/dx| = sum_k log |det df_k/dh_{k-1}| (the chain rule and
det(AB) = det(A) det(B)).

    >>> flow = Flow([ActNorm(2), AffineCoupling(alternating_mask(2, 0)),
    ...              AffineCoupling(alternating_mask(2, 1))], event_shape=(2,))
    >>> log_p = flow.log_prob(torch.randn(5, 2))       # (5,)
    >>> x = flow.sample(5)                             # (5, 2)

Discrete data (images with 256 grey levels) are handled by **uniform dequantization** and
reported in **bits per dimension**; see :func:`dequantize` and :func:`bits_per_dim`.

References: Dinh, Sohl-Dickstein, Bengio (2016), Density estimation using Real NVP,
arXiv:1605.08803; Kingma, Dhariwal (2018), Glow, arXiv:1807.03039; Theis, van den Oord,
Bethge (2015), A note on the evaluation of generative models, arXiv:1511.01844.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.device import no_autocast, upcast
from course_lib.nn.layers import MLP, ConvBlock

__all__ = ["FlowLayer", "FlowSequence", "Flow", "AffineCoupling", "ActNorm",
           "Invertible1x1Conv", "Squeeze", "LogitTransform", "alternating_mask",
           "checkerboard_mask", "channel_mask", "standard_normal_log_prob", "quantize",
           "dequantize", "bits_per_dim"]

_LOG_2PI = math.log(2 * math.pi)


def _check_tensor(x: object, name: str, dims: Sequence[int]) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in dims:
        shapes = " or ".join({2: "(B, D)", 4: "(B, C, H, W)"}[d] for d in dims)
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(x.shape)}")


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over all but the batch axis. z: (B, ...) -> (B,).

        log N(z; 0, I) = -1/2 sum_i (z_i^2 + log 2 pi)
    """
    return -0.5 * (z ** 2 + _LOG_2PI).flatten(1).sum(1)


# ---------------------------------------------------------------------------------------------
# the interface
# ---------------------------------------------------------------------------------------------

class FlowLayer(nn.Module):
    """One invertible layer. Subclasses implement

    forward(x) -> (y, log_det): y = f(x) with the shape :meth:`output_shape` gives,
                                log_det = log |det df/dx|, shape (B,)
    inverse(y) -> x:            x = f^{-1}(y)

    in the data -> latent direction (see the module docstring).
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of one output item for one input item of ``shape`` (no batch axis)."""
        return tuple(shape)


class FlowSequence(FlowLayer):
    """f = f_K o ... o f_1: forward runs the layers in order, inverse in reverse order.

        log |det df/dx| = sum_k log |det df_k/dh_{k-1}|,   h_0 = x, h_k = f_k(h_{k-1})
    """

    def __init__(self, layers: Iterable[FlowLayer]):
        super().__init__()
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, FlowLayer):
                raise TypeError(f"layer {i} is a {type(layer).__name__}, not a FlowLayer; "
                                "every layer needs forward(x) -> (y, log_det) and inverse(y)")
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld                          # sum of the layers' log-dets
        return x, log_det

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return tuple(shape)


class Flow(FlowSequence):
    """A density model: the layers map data x (B, *event_shape) to latent z, and z ~ N(0, I).

    log_prob(x) -> (B,)              log p(x) = log N(f(x); 0, I) + log |det df/dx|
    sample(n, temperature=1.0)       z ~ N(0, T^2 I), x = f^{-1}(z): (n, *event_shape) on the CPU
                                     (z drawn on the CPU from ``generator``, then moved)
    trajectory(z)                    [z, h_{K-1}, ..., x]: the latent pushed back layer by layer
    """

    def __init__(self, layers: Iterable[FlowLayer], event_shape: Sequence[int]):
        super().__init__(layers)
        self.event_shape = tuple(int(s) for s in event_shape)
        self.latent_shape = self.output_shape(self.event_shape)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"this flow models items of shape {self.event_shape}; got a batch "
                             f"of shape {tuple(x.shape)} (expected (B, *{self.event_shape}))")
        with no_autocast(x):                            # float32 by design: log_det sums many logs,
            z, log_det = self(upcast(x))                 # which bf16/fp16 autocast would round away
        return standard_normal_log_prob(z) + log_det    # change of variables

    def sample(self, n: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        params = list(self.parameters())
        device = params[0].device if params else torch.device("cpu")
        z = torch.randn((n, *self.latent_shape), generator=generator).to(device)  # drawn on the CPU
        return self.inverse(temperature * z).cpu()         # z ~ N(0, T^2 I)

    def trajectory(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The latent ``z`` (B, *latent_shape) pushed back through the layers one at a time:
        [z, f_K^{-1}(z), f_{K-1}^{-1}(f_K^{-1}(z)), ..., x]  (K + 1 tensors)."""
        out = [z]
        for layer in reversed(self.layers):
            out.append(layer.inverse(out[-1]))
        return out


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------

def alternating_mask(dim: int, parity: int = 0) -> torch.Tensor:
    """(dim,) float mask 1, 0, 1, 0 ... (parity 0) or 0, 1, 0, 1 ... (parity 1).
    In 2-D: [1, 0] keeps x_1 and transforms x_2; [0, 1] the other way round."""
    if not isinstance(dim, int) or dim < 2:
        raise ValueError(f"a coupling needs at least 2 dimensions, got dim={dim!r}")
    return ((torch.arange(dim) + parity) % 2 == 0).float()


def checkerboard_mask(height: int, width: int, parity: int = 0) -> torch.Tensor:
    """(1, H, W) float mask, 1 where (row + col + parity) is even (RealNVP's checkerboard)."""
    rows, cols = torch.arange(height)[:, None], torch.arange(width)[None, :]
    return ((rows + cols + parity) % 2 == 0).float()[None]


def channel_mask(channels: int, parity: int = 0) -> torch.Tensor:
    """(C, 1, 1) float mask: 1 on the first half of the channels (parity 0) or the second half
    (parity 1) (RealNVP's channel-wise mask, used after a squeeze)."""
    if not isinstance(channels, int) or channels < 2:
        raise ValueError(f"a channel mask needs at least 2 channels, got {channels!r}; "
                         "squeeze the image first (Squeeze turns C channels into 4C)")
    m = (torch.arange(channels) < channels // 2).float()
    return (m if parity == 0 else 1 - m)[:, None, None]


# ---------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------

class AffineCoupling(FlowLayer):
    """RealNVP's affine coupling layer (Dinh et al., 2016).

    mask m: (D,) for vectors x (B, D), or (C or 1, H, W) / (C, 1, 1) for images x (B, C, H, W);
    1 marks the entries that pass through unchanged and condition the others:

        (s, t) = net(m * x),   s <- (1 - m) * scale * tanh(s),   t <- (1 - m) * t
        y = x * exp(s) + t          (so y = x where m = 1)
        log |det dy/dx| = sum_i s_i (the Jacobian is triangular with diagonal exp(s))
        x = (y - t) * exp(-s)       (s, t depend only on m * y = m * x)

    net: default an MLP (vectors) or three "same" convolutions (images) with ``hidden`` units;
    it maps (B, D) -> (B, 2D) or (B, C, H, W) -> (B, 2C, H, W). The last layer starts at zero,
    so a new coupling is the identity. ``channels`` is needed for images only when the mask
    has one channel (a checkerboard) but the images have more.
    """

    def __init__(self, mask: torch.Tensor, hidden: int = 64, net: nn.Module | None = None,
                 channels: int | None = None):
        super().__init__()
        if not isinstance(mask, torch.Tensor) or mask.dim() not in (1, 3):
            raise ValueError("mask must be a tensor of shape (D,) for vectors or (C, H, W) for "
                             "images; make one with alternating_mask, checkerboard_mask or "
                             "channel_mask")
        mask = mask.float()
        if not ((mask == 0) | (mask == 1)).all() or mask.all() or not mask.any():
            raise ValueError("mask must hold 0s and 1s, with at least one of each")
        self.register_buffer("mask", mask)
        self.image = mask.dim() == 3
        c = (channels or mask.shape[0]) if self.image else mask.numel()
        self.channels = c
        if net is None:
            if self.image:
                net = nn.Sequential(ConvBlock(c, hidden, 3, norm=None),
                                    ConvBlock(hidden, hidden, 1, norm=None),
                                    nn.Conv2d(hidden, 2 * c, 3, padding=1))
            else:
                net = MLP(c, [hidden, hidden], 2 * c)
            last = net[-1]
            nn.init.zeros_(last.weight)                    # identity at initialisation
            nn.init.zeros_(last.bias)
        self.net = net
        self.scale = nn.Parameter(torch.ones(c, 1, 1) if self.image else torch.ones(c))

    def _s_t(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(kept)
        s, t = h.chunk(2, dim=1)                           # (B, C, ...) each
        free = 1 - self.mask                               # the entries that are transformed
        return free * self.scale * torch.tanh(s), free * t

    def _check(self, x: torch.Tensor, name: str) -> None:
        _check_tensor(x, name, (4,) if self.image else (2,))
        if self.image and x.shape[1] != self.channels:
            raise ValueError(f"this coupling was built for {self.channels} channels, got "
                             f"{tuple(x.shape)}")
        if not self.image and x.shape[1] != self.channels:
            raise ValueError(f"this coupling was built for D = {self.channels}, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x, "x")
        s, t = self._s_t(self.mask * x)
        y = x * torch.exp(s) + t                           # y = x on the kept entries
        return y, s.flatten(1).sum(1)                      # log|det| = sum of s

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, "y")
        s, t = self._s_t(self.mask * y)                    # m * y = m * x: same s, t
        return (y - t) * torch.exp(-s)


class ActNorm(FlowLayer):
    """Glow's activation normalisation: a per-channel affine map (Kingma & Dhariwal, 2018).

    x: (B, C) or (B, C, H, W) -> y of the same shape:

        y = x * exp(log_s) + b,        log |det dy/dx| = H * W * sum_c log_s_c
        x = (y - b) * exp(-log_s)

    Data-dependent initialisation: the first call of forward sets log_s = -log std(x) and
    b = -mean(x) * exp(log_s) per channel, so that *that* batch comes out with zero mean and
    unit variance in every channel; afterwards log_s and b are ordinary trainable parameters.
    The flag ``initialized`` is a buffer, so it is saved and loaded with the weights.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps

    def _view(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))       # (1, C) or (1, C, 1, 1)

    def _check(self, x: torch.Tensor, name: str) -> None:
        _check_tensor(x, name, (2, 4))
        if x.shape[1] != self.log_scale.numel():
            raise ValueError(f"ActNorm({self.log_scale.numel()}) got {name} with "
                             f"{x.shape[1]} channels: {tuple(x.shape)}")

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set log_s, b so that this batch x has zero mean, unit variance per channel."""
        per_channel = x.transpose(0, 1).flatten(1)         # (C, B * H * W)
        mean, std = per_channel.mean(1), per_channel.std(1, unbiased=False)
        self.log_scale.copy_(-torch.log(std + self.eps))   # s = 1 / std
        self.bias.copy_(-mean * torch.exp(self.log_scale))  # b = -mean / std
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x, "x")
        if not bool(self.initialized):
            self.initialize(x)
        y = x * torch.exp(self._view(self.log_scale, x)) + self._view(self.bias, x)
        pixels = x[0, 0].numel()                           # H * W (1 for vectors)
        log_det = pixels * self.log_scale.sum()
        return y, log_det.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, "y")
        return (y - self._view(self.bias, y)) * torch.exp(-self._view(self.log_scale, y))


class Invertible1x1Conv(FlowLayer):
    """Glow's invertible 1x1 convolution: the same C x C matrix W mixes the channels of every
    pixel (Kingma & Dhariwal, 2018). x: (B, C, H, W) (or (B, C), a plain linear map).

        y[:, :, i, j] = W x[:, :, i, j],     log |det dy/dx| = H * W * log |det W|

    ``lu=False``: W is a free parameter and log |det W| comes from ``torch.linalg.slogdet``
    (O(C^3) per call). ``lu=True`` (default): W = P L (U + diag(sign(s) exp(log|s|))) with P a
    fixed permutation, L unit lower triangular and U strictly upper triangular, so
    log |det W| = sum log|s| costs O(C). W starts as a random rotation (log |det W| = 0).
    """

    def __init__(self, num_channels: int, lu: bool = True):
        super().__init__()
        if not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
        c = num_channels
        w0 = torch.linalg.qr(torch.randn(c, c))[0]          # a random orthogonal matrix
        self.lu = lu
        if lu:
            p, l, u = torch.linalg.lu(w0)
            s = torch.diagonal(u)
            self.register_buffer("perm", p)
            self.register_buffer("sign_s", torch.sign(s))
            self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
            self.lower = nn.Parameter(l * self.lower_mask)
            self.upper = nn.Parameter(torch.triu(u, 1))
            self.log_s = nn.Parameter(torch.log(s.abs()))
        else:
            self.weight = nn.Parameter(w0)

    def weight_matrix(self) -> torch.Tensor:
        """W: (C, C)."""
        if not self.lu:
            return self.weight
        eye = torch.eye(self.lower.shape[0], device=self.lower.device, dtype=self.lower.dtype)
        lower = self.lower * self.lower_mask + eye                              # unit lower
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper                                         # W = P L U

    def log_abs_det(self) -> torch.Tensor:
        """log |det W| (a scalar)."""
        if self.lu:
            return self.log_s.sum()                        # det P = ±1, det L = 1, det U = prod s
        return torch.linalg.slogdet(self.weight)[1]

    def _mix(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x @ w.T
        return F.conv2d(x, w[:, :, None, None])

    def _check(self, x: torch.Tensor, name: str) -> None:
        _check_tensor(x, name, (2, 4))
        c = self.lower.shape[0] if self.lu else self.weight.shape[0]
        if x.shape[1] != c:
            raise ValueError(f"Invertible1x1Conv({c}) got {name} with {x.shape[1]} channels")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x, "x")
        pixels = x[0, 0].numel()                           # H * W
        log_det = pixels * self.log_abs_det()
        return self._mix(x, self.weight_matrix()), log_det.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, "y")
        return self._mix(y, torch.linalg.inv(self.weight_matrix()))


class Squeeze(FlowLayer):
    """Trade space for channels: (B, C, H, W) -> (B, 4C, H/2, W/2); each 2 x 2 block of a
    channel becomes 4 channels of one pixel. A permutation, so log |det| = 0."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_tensor(x, "x", (4,))
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs an even height and width, got {tuple(x.shape)}; "
                             "resize or pad the images (e.g. 28 -> 14 -> 7 squeezes twice)")
        y = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        _check_tensor(y, "y", (4,))
        b, c4, h, w = y.shape
        if c4 % 4:
            raise ValueError(f"Squeeze.inverse needs a multiple of 4 channels, got {tuple(y.shape)}")
        x = y.view(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c4 // 4, 2 * h, 2 * w)

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        c, h, w = shape
        return (4 * c, h // 2, w // 2)


class LogitTransform(FlowLayer):
    """Map data in [0, 1] to the whole real line, as RealNVP does before its couplings:

        p = alpha + (1 - 2 alpha) x,        y = logit(p) = log p - log(1 - p)
        log |det dy/dx| = sum_i [log(1 - 2 alpha) - log p_i - log(1 - p_i)]
        x = (sigmoid(y) - alpha) / (1 - 2 alpha)

    alpha keeps p away from 0 and 1, where the logit is infinite. Any shape (B, ...).
    The inverse of an arbitrary y lands in (-alpha, 1 - alpha) / (1 - 2 alpha), slightly
    wider than [0, 1]: clamp samples before showing them.
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.min() < 0 or x.max() > 1:
            raise ValueError("LogitTransform expects data in [0, 1] (dequantize images first); "
                             f"got values from {x.min().item():.3g} to {x.max().item():.3g}")
        p = self.alpha + (1 - 2 * self.alpha) * x
        y = torch.log(p) - torch.log1p(-p)
        log_det = (math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        return y, log_det

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)


# ---------------------------------------------------------------------------------------------
# discrete data: dequantization and bits per dimension
# ---------------------------------------------------------------------------------------------

def quantize(x: torch.Tensor, num_bins: int = 256) -> torch.Tensor:
    """Images in [0, 1] -> integer levels k = round(x (K - 1)) in {0, ..., K-1}, K = num_bins
    (int64, same shape). 8-bit images: K = 256."""
    if not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins must be an int >= 2, got {num_bins!r}")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"quantize expects values in [0, 1], got {x.min().item():.3g} to "
                         f"{x.max().item():.3g}")
    return torch.round(x * (num_bins - 1)).long()


def dequantize(levels: torch.Tensor, num_bins: int = 256,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization: integer levels k in {0, ..., K-1} -> y = (k + u) / K in [0, 1),
    u ~ U[0, 1) independently per entry. Same shape, float32.

    A density p on [0, 1)^D then gives every discrete image k a probability
    P(k) = integral of p over the cube [k/K, (k+1)/K)^D of volume K^{-D}, and by Jensen
    log P(k) >= E_u[log p((k + u)/K)] - D log K: maximising the continuous likelihood of
    dequantized data maximises a lower bound on the discrete one (Theis et al., 2015).
    """
    if levels.dtype.is_floating_point:
        raise TypeError("dequantize expects integer levels (use quantize(x) first), "
                        f"got {levels.dtype}")
    if levels.min() < 0 or levels.max() >= num_bins:
        raise ValueError(f"levels must lie in 0..{num_bins - 1}, got {levels.min().item()} to "
                         f"{levels.max().item()}")
    u = torch.rand(levels.shape, generator=generator).to(levels.device)  # drawn on the CPU, then moved
    return (levels.float() + u) / num_bins


def bits_per_dim(log_prob: torch.Tensor | float, num_dims: int, num_bins: int = 256,
                 data_range: float = 1.0) -> torch.Tensor:
    """Negative log-likelihood of discrete data in bits per dimension.

    log_prob: log p(y) in nats of the continuous model at dequantized data y (one per image,
        or a mean); num_dims: D, the numbers per item (C * H * W); num_bins: K levels
        (256 for 8-bit data); data_range: the width of the interval the model sees the data
        in: 1.0 for y = (k + u) / K in [0, 1) (as from :func:`dequantize`), 2.0 for [-1, 1),
        K for raw k + u in [0, K).

    Each discrete value owns a bin of width delta = data_range / K, so
    log P(k) ~ log p(y) + D log delta (a lower bound in expectation over u), and

        bits/dim = -(log p(y) + D log delta) / (D log 2)
                 = -log p(y) / (D log 2) + log2(K / data_range)

    A uniform density on [0, 1)^D (log p = 0) scores exactly log2 K = 8 bits/dim for K = 256.
    """
    if not isinstance(num_dims, int) or num_dims < 1:
        raise ValueError(f"num_dims must be a positive int (C * H * W), got {num_dims!r}")
    if num_bins < 2 or data_range <= 0:
        raise ValueError(f"num_bins must be >= 2 and data_range > 0, got {num_bins}, {data_range}")
    if not isinstance(log_prob, torch.Tensor):
        log_prob = torch.tensor(float(log_prob), dtype=torch.float64)
    log_delta = math.log(data_range / num_bins)            # log of one bin's width
    return -(log_prob + num_dims * log_delta) / (num_dims * math.log(2))
