"""Building blocks for Phase 2 · 03 (CNNs) and 07 (training recipes), and every later model.

- :func:`conv2d`: a 2-D convolution written out with im2col (``F.unfold``) and one matrix
  product; it equals ``F.conv2d``. The CNN notebook builds it from loops first.
- :func:`conv_output_size` and :func:`receptive_field`: the arithmetic of sizes, strides and
  what each output pixel can see.
- :func:`activation` and :func:`norm_layer`: names -> modules (``"relu"``, ``"batch"`` ...).
- :class:`MLP`: Linear -> activation (-> dropout) stacks on the last dimension.
- :class:`ConvBlock`: conv -> norm -> activation, with "same" padding.
- :class:`ResBlock`: the basic residual block of He et al. (2015), with a projection
  shortcut when the shape changes.
- :class:`SmallCNN`: a small residual classifier for the offline world (digits, shapes),
  with one output or one head per attribute.

    >>> model = SmallCNN(3, {"shape": 5, "colour": 6}, width=16)
    >>> logits = model(torch.rand(8, 3, 32, 32))      # {"shape": (8, 5), "colour": (8, 6)}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conv2d", "conv_output_size", "receptive_field", "RF", "activation", "norm_layer",
           "MLP", "ConvBlock", "ResBlock", "SmallCNN", "ACTIVATIONS", "NORMS"]

ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "identity")
NORMS = ("batch", "group", None)


# ---------------------------------------------------------------------------------------------
# convolution arithmetic
# ---------------------------------------------------------------------------------------------

def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints -> (vertical, horizontal), each at least ``minimum``."""
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return pair


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling along one axis:

        out = floor((size + 2·padding − kernel_size) / stride) + 1

    Raises ``ValueError`` when the kernel does not fit into the padded input.
    """
    if size + 2 * padding < kernel_size:
        raise ValueError(f"a kernel of {kernel_size} does not fit into an input of {size} "
                         f"with padding {padding} (padded size {size + 2 * padding})")
    return (size + 2 * padding - kernel_size) // stride + 1


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0) -> torch.Tensor:
    """2-D convolution (cross-correlation, as in every deep-learning library) via im2col.

    x: (B, C_in, H, W); weight: (C_out, C_in, kH, kW); bias: (C_out,) or None
    -> (B, C_out, H_out, W_out), with H_out = floor((H + 2·p − kH) / s) + 1 (likewise W_out).

        y[b, o, i, j] = bias[o] + Σ_{c, u, v} weight[o, c, u, v] · x_pad[b, c, s·i + u, s·j + v]

    im2col copies every kH x kW patch of every channel into one column, so the whole
    convolution becomes a single matrix product: (C_out, C_in·kH·kW) @ (C_in·kH·kW, L),
    L = H_out · W_out patches. Equal to ``F.conv2d(x, weight, bias, stride, padding)``.
    """
    if x.dim() != 4:
        raise ValueError(f"conv2d expects x of shape (B, C_in, H, W), got {tuple(x.shape)}; "
                         "add a batch dimension with x.unsqueeze(0) for one image")
    if weight.dim() != 4:
        raise ValueError(f"conv2d expects weight of shape (C_out, C_in, kH, kW), got {tuple(weight.shape)}")
    (sh, sw), (ph, pw) = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    batch, c_in, h, w = x.shape
    c_out, c_w, kh, kw = weight.shape
    if c_w != c_in:
        raise ValueError(f"x has {c_in} channels but weight expects {c_w} (weight is "
                         f"(C_out, C_in, kH, kW) = {tuple(weight.shape)})")
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"bias must have shape ({c_out},), one per output channel, got {tuple(bias.shape)}")
    h_out = conv_output_size(h, kh, sh, ph)
    w_out = conv_output_size(w, kw, sw, pw)

    cols = F.unfold(x, (kh, kw), padding=(ph, pw), stride=(sh, sw))  # (B, C_in·kH·kW, L)
    out = weight.reshape(c_out, -1) @ cols                            # (B, C_out, L): Σ_{c,u,v} w·x
    if bias is not None:
        out = out + bias.view(1, c_out, 1)                             # + bias[o]
    return out.view(batch, c_out, h_out, w_out)


@dataclass(frozen=True)
class RF:
    """Receptive field after a layer, in input pixels.

    size: how many input pixels (along one axis) one output pixel can see;
    jump: the distance in input pixels between two neighbouring output pixels;
    start: the input coordinate of the centre of output pixel 0's field (pixel centres at
           0, 1, 2 ...; negative when padding makes it hang over the edge).
    """

    size: int
    jump: int
    start: float


def _kernel_stride_padding(layer) -> tuple[int, int, int]:
    if isinstance(layer, (tuple, list)):
        if len(layer) not in (2, 3):
            raise ValueError(f"a layer is (kernel_size, stride) or (kernel_size, stride, padding), "
                             f"got {layer!r}")
        k, s, p = (*layer, 0) if len(layer) == 2 else layer
    elif hasattr(layer, "kernel_size") and hasattr(layer, "stride"):
        def first(v):
            return v[0] if isinstance(v, (tuple, list)) else v

        k, s, p = first(layer.kernel_size), first(layer.stride), first(getattr(layer, "padding", 0))
        if getattr(layer, "dilation", 1) not in (1, (1, 1)):
            raise ValueError(f"receptive_field does not handle dilation: {layer}")
    else:
        raise TypeError(f"receptive_field takes (kernel, stride[, padding]) tuples or conv/pool "
                        f"modules, got {type(layer).__name__}")
    if not isinstance(p, int):
        raise ValueError(f"padding must be an int here, got {p!r} in {layer!r}")
    if k < 1 or s < 1 or p < 0:
        raise ValueError(f"kernel_size and stride must be >= 1 and padding >= 0, got {layer!r}")
    return int(k), int(s), int(p)


def receptive_field(layers: Iterable) -> list[RF]:
    """The receptive field after each layer of a chain of convolutions and poolings.

    layers: (kernel_size, stride) or (kernel_size, stride, padding) tuples, or modules with
    ``kernel_size``/``stride``/``padding`` (``nn.Conv2d``, ``nn.MaxPool2d`` ...), applied one
    after the other (square kernels; for a residual block give its longest path).

        size_out  = size_in + (k − 1) · jump_in
        jump_out  = jump_in · s
        start_out = start_in + ((k − 1) / 2 − p) · jump_in

    Returns one :class:`RF` per layer (before any layer: size 1, jump 1, start 0).
    """
    out, size, jump, start = [], 1, 1, 0.0
    for layer in layers:
        k, s, p = _kernel_stride_padding(layer)
        size, start = size + (k - 1) * jump, start + ((k - 1) / 2 - p) * jump
        jump *= s
        out.append(RF(size, jump, start))
    return out


# ---------------------------------------------------------------------------------------------
# names -> modules
# ---------------------------------------------------------------------------------------------

def activation(name: str | None) -> nn.Module:
    """The activation called ``name`` (one of ACTIVATIONS; None means identity)."""
    table = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
             "sigmoid": nn.Sigmoid, "leaky_relu": lambda: nn.LeakyReLU(0.1),
             "identity": nn.Identity, None: nn.Identity}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")
    return table[name]()


def _groups(channels: int, most: int = 8) -> int:
    """The largest number of groups <= ``most`` that divides ``channels``."""
    return max(g for g in range(1, min(most, channels) + 1) if channels % g == 0)


def norm_layer(kind: str | None, channels: int) -> nn.Module:
    """A normalisation over feature maps (N, C, H, W) with ``channels`` channels.

    "batch": BatchNorm2d, statistics per channel over (N, H, W) of the batch (running averages
             at eval time); "group": GroupNorm, statistics per sample over (C/G, H, W) of each of
             G groups (G = the largest divisor of C up to 8); None: no normalisation.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(_groups(channels), channels)
    if kind is None:
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


def _positive_int(value, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------------------------

class MLP(nn.Sequential):
    """A multilayer perceptron on the last dimension: (..., in_dim) -> (..., out_dim).

        h_0 = x,   h_{l+1} = dropout(act(h_l W_l + b_l)),   out = h_L W_L + b_L

    hidden_dims: the widths of the hidden layers (empty: a single linear layer).
    Images must be flattened first, e.g. ``nn.Sequential(nn.Flatten(), MLP(256, [128], 10))``.
    (The feed-forward network inside a transformer block is :class:`course_lib.nn.attention.FeedForward`.)
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, act: str = "relu",
                 dropout: float = 0.0):
        dims = [_positive_int(in_dim, "in_dim"),
                *(_positive_int(d, "each hidden dim") for d in hidden_dims),
                _positive_int(out_dim, "out_dim")]
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout is a probability in [0, 1), got {dropout!r}")
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-2], dims[1:-1]):
            layers += [nn.Linear(d_in, d_out), activation(act)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(dims[-2], dims[-1]))
        super().__init__(*layers)
        self.in_dim, self.out_dim = dims[0], dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"MLP expects inputs (..., {self.in_dim}), got {tuple(x.shape)}"
                             + ("; flatten images first with nn.Flatten()" if x.dim() == 4 else ""))
        return super().forward(x)


class ConvBlock(nn.Sequential):
    """conv (k x k, "same" padding k // 2) -> norm -> activation.

    x: (B, in_ch, H, W) -> (B, out_ch, H', W') with H' = ceil(H / stride) for odd k.
    The convolution has no bias when a norm follows (the norm's shift β does its job).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 norm: str | None = "batch", act: str | None = "relu"):
        for value, name in ((in_ch, "in_ch"), (out_ch, "out_ch"), (kernel_size, "kernel_size"),
                            (stride, "stride")):
            _positive_int(value, name)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
        conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=kernel_size // 2,
                         bias=norm is None)
        super().__init__(conv, norm_layer(norm, out_ch), activation(act))


class ResBlock(nn.Module):
    """The basic residual block of He et al. (2015):

        out = relu( F(x) + shortcut(x) ),   F = conv3x3 -> norm -> relu -> conv3x3 -> norm

    x: (B, in_ch, H, W) -> (B, out_ch, H / stride, W / stride) (rounded up).
    shortcut(x) = x when the shape is unchanged (stride 1, in_ch == out_ch), otherwise a
    projection: a 1x1 convolution with the block's stride, followed by a norm.
    zero_init=True starts the last norm's scale γ (or, without a norm, the last conv) at 0,
    so F(x) = 0 and the block begins as relu(shortcut(x)): the identity for inputs ≥ 0
    (Goyal et al., 2017).
    """

    def __init__(self, in_ch: int, out_ch: int | None = None, stride: int = 1,
                 norm: str | None = "batch", zero_init: bool = False):
        super().__init__()
        out_ch = in_ch if out_ch is None else out_ch
        for value, name in ((in_ch, "in_ch"), (out_ch, "out_ch"), (stride, "stride")):
            _positive_int(value, name)
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, padding=1, bias=norm is None)
        self.norm1 = norm_layer(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, padding=1, bias=norm is None)
        self.norm2 = norm_layer(norm, out_ch)
        if stride == 1 and in_ch == out_ch:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=norm is None),
                                          norm_layer(norm, out_ch))
        if zero_init:
            last = self.norm2 if norm is not None else self.conv2
            nn.init.zeros_(last.weight)
            if norm is None:
                nn.init.zeros_(self.conv2.bias)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """F(x): the branch that learns the change, (B, in_ch, H, W) -> (B, out_ch, H', W')."""
        h = F.relu(self.norm1(self.conv1(x)))
        return self.norm2(self.conv2(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_ch:
            raise ValueError(f"ResBlock expects (B, {self.in_ch}, H, W), got {tuple(x.shape)}")
        return F.relu(self.residual(x) + self.shortcut(x))   # relu(F(x) + x)

    def main_path(self) -> list[nn.Conv2d]:
        """The convolutions on the longest path, for :func:`receptive_field`."""
        return [self.conv1, self.conv2]


class SmallCNN(nn.Module):
    """A small residual CNN classifier for the offline world (digits, shapes).

        stem:   ConvBlock(in_ch, w)                         (B, in_ch, H, W) -> (B, w, H, W)
        stages: ResBlock(w, 2w, stride 2), ResBlock(2w, 4w, stride 2) ...
                                                            -> (B, w·2^S, H / 2^S, W / 2^S)
        pool:   adaptive average pool to pool x pool, flatten -> (B, feature_dim) features
        heads:  one Linear per output

    heads: an int (one output, ``forward`` returns logits (B, heads)) or a dict
    {name: classes} (``forward`` returns {name: (B, classes)}), e.g.
    {"shape": 5, "colour": 6, "size": 2, "position": 9}.
    stages: S, the number of residual stages, each halving the resolution and doubling the width.
    pool=1 averages over the whole image (what is there, wherever it is); pool=3 keeps a coarse
    3 x 3 map, which "where is it" questions (position) need.
    """

    def __init__(self, in_ch: int, heads: int | Mapping[str, int], width: int = 16,
                 stages: int = 2, norm: str | None = "batch", pool: int = 3, dropout: float = 0.0):
        super().__init__()
        for value, name in ((in_ch, "in_ch"), (width, "width"), (stages, "stages"), (pool, "pool")):
            _positive_int(value, name)
        if isinstance(heads, Mapping):
            if not heads:
                raise ValueError("heads is an empty dict; give at least one, e.g. {'shape': 5}")
            self.head_sizes = {str(k): _positive_int(v, f"heads[{k!r}]") for k, v in heads.items()}
        else:
            self.head_sizes = {"out": _positive_int(heads, "heads (the number of classes)")}
        self.single = not isinstance(heads, Mapping)
        self.in_ch, self.width, self.pool_size = in_ch, width, pool
        self.stem = ConvBlock(in_ch, width, 3, norm=norm)
        widths = [width * 2 ** i for i in range(stages + 1)]
        self.stages = nn.Sequential(*(ResBlock(c_in, c_out, 2, norm)
                                      for c_in, c_out in zip(widths[:-1], widths[1:])))
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.dropout = nn.Dropout(dropout)
        self.feature_dim = widths[-1] * pool * pool
        self.heads = nn.ModuleDict({k: nn.Linear(self.feature_dim, n) for k, n in self.head_sizes.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_ch, H, W) -> (B, feature_dim), what the heads read."""
        if x.dim() != 4 or x.shape[1] != self.in_ch:
            raise ValueError(f"SmallCNN expects images (B, {self.in_ch}, H, W), got {tuple(x.shape)}")
        return self.pool(self.stages(self.stem(x))).flatten(1)

    def feature_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The activations after the stem and after each stage, {name: (B, C, H', W')}."""
        maps = {"stem": self.stem(x)}
        h = maps["stem"]
        for i, stage in enumerate(self.stages):
            h = stage(h)
            maps[f"stage{i + 1}"] = h
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        h = self.dropout(self.features(x))
        out = {k: head(h) for k, head in self.heads.items()}
        return out["out"] if self.single else out

    def main_path(self) -> list[nn.Module]:
        """The convolutions on the longest path from input to the last feature map, for
        :func:`receptive_field` (the stem's, then conv1 and conv2 of each block)."""
        return [self.stem[0]] + [conv for block in self.stages for conv in block.main_path()]
