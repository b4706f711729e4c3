"""course_lib.nn.layers: the from-scratch convolution equals PyTorch's, the blocks have the
shapes and properties their docstrings promise, and bad input gets a clear error."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.nn.layers import (MLP, RF, ConvBlock, ResBlock, SmallCNN, activation, conv2d, conv_output_size,
                                  norm_layer, receptive_field)


@pytest.mark.parametrize("kernel", [(1, 1), (3, 3), (2, 3), (5, 4)])
def test_conv2d_equals_torch(kernel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 10, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, *kernel, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    for stride in [1, 2, 3, (2, 1)]:
        for padding in [0, 1, 2, (0, 2)]:
            torch.testing.assert_close(conv2d(x, w, b, stride, padding), F.conv2d(x, w, b, stride, padding))
            torch.testing.assert_close(conv2d(x, w, None, stride, padding), F.conv2d(x, w, None, stride, padding))


def test_conv2d_gradients_match_torch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 7, 7, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ours = torch.autograd.grad(conv2d(x, w, stride=2, padding=1).square().sum(), (x, w))
    theirs = torch.autograd.grad(F.conv2d(x, w, stride=2, padding=1).square().sum(), (x, w))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_conv2d_matches_the_equation_at_one_output():
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(1, 2, 6, 6, generator=g), torch.randn(3, 2, 3, 3, generator=g), torch.randn(3, generator=g)
    y = conv2d(x, w, b, stride=2, padding=1)
    xp = F.pad(x, (1, 1, 1, 1))
    i, j, o = 1, 2, 2
    want = b[o] + (w[o] * xp[0, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]).sum()
    torch.testing.assert_close(y[0, o, i, j], want)


@pytest.mark.parametrize("x_shape, w_shape, kwargs, message", [
    ((3, 8, 8), (4, 3, 3, 3), {}, "batch dimension"),
    ((1, 3, 8, 8), (4, 3, 3), {}, "C_out, C_in, kH, kW"),
    ((1, 2, 8, 8), (4, 3, 3, 3), {}, "2 channels but weight expects 3"),
    ((1, 3, 2, 2), (4, 3, 3, 3), {}, "does not fit"),
    ((1, 3, 8, 8), (4, 3, 3, 3), {"stride": 0}, "stride must be at least 1"),
    ((1, 3, 8, 8), (4, 3, 3, 3), {"padding": -1}, "padding must be at least 0"),
    ((1, 3, 8, 8), (4, 3, 3, 3), {"stride": 1.5}, "int or a pair"),
])
def test_conv2d_errors(x_shape, w_shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        conv2d(torch.zeros(x_shape), torch.zeros(w_shape), **kwargs)


def test_conv2d_bias_shape_error():
    with pytest.raises(ValueError, match="one per output channel"):
        conv2d(torch.zeros(1, 3, 8, 8), torch.zeros(4, 3, 3, 3), torch.zeros(3))


def test_conv_output_size():
    assert conv_output_size(32, 3, 1, 1) == 32
    assert conv_output_size(32, 3, 2, 1) == 16
    assert conv_output_size(7, 3, 2, 0) == 3
    for size, k, s, p in [(9, 3, 2, 1), (10, 4, 3, 2), (5, 5, 1, 0)]:
        assert conv_output_size(size, k, s, p) == F.conv2d(torch.zeros(1, 1, size, size),
                                                           torch.zeros(1, 1, k, k), stride=s, padding=p).shape[-1]


def test_receptive_field_by_hand_and_by_gradient():
    layers = [nn.Conv2d(1, 1, 3, 1, 1), nn.Conv2d(1, 1, 3, 2, 1), nn.Conv2d(1, 1, 3, 1, 1),
              nn.AvgPool2d(2), nn.Conv2d(1, 1, 3, 1, 1)]
    rf = receptive_field(layers)
    assert rf[0] == RF(3, 1, 0.0) and rf[1] == RF(5, 2, 0.0)
    assert [r.size for r in rf] == [3, 5, 9, 11, 19] and rf[-1].jump == 4
    assert rf[3].start == 1.0    # the pool's first window covers map pixels 0 and 1, centred at input 0 and 2
    # the gradient of one output pixel reaches exactly `size` input pixels along an axis
    net = nn.Sequential(*layers)
    for m in net:
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 1.0)
    x = torch.zeros(1, 1, 64, 64, requires_grad=True)
    net(x)[0, 0, 8, 8].backward()
    rows = (x.grad[0, 0].abs().sum(1) > 0).nonzero().squeeze(1)
    assert len(rows) == rf[-1].size
    assert rows.float().mean().item() == pytest.approx(rf[-1].start + 8 * rf[-1].jump)  # its centre
    assert receptive_field([(3, 1), (3, 1)]) == [RF(3, 1, 1.0), RF(5, 1, 2.0)]


def test_receptive_field_errors():
    with pytest.raises(TypeError, match="tuples or conv/pool"):
        receptive_field([nn.ReLU()])
    with pytest.raises(ValueError, match="kernel_size and stride"):
        receptive_field([(3, 0)])
    with pytest.raises(ValueError, match="dilation"):
        receptive_field([nn.Conv2d(1, 1, 3, dilation=2)])


def test_mlp_shapes_layers_and_errors():
    mlp = MLP(10, [32, 16], 3, act="gelu", dropout=0.1)
    assert mlp(torch.randn(4, 10)).shape == (4, 3)
    assert mlp(torch.randn(2, 5, 10)).shape == (2, 5, 3)          # acts on the last dimension
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "GELU", "Dropout", "Linear", "GELU", "Dropout", "Linear"]
    assert [type(m).__name__ for m in MLP(4, [], 2)] == ["Linear"]
    with pytest.raises(ValueError, match="flatten images first"):
        mlp(torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match="dropout"):
        MLP(4, [8], 2, dropout=1.0)
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(4, [8], 2, act="swish2")
    with pytest.raises(ValueError, match="hidden dim"):
        MLP(4, [0], 2)


def test_activation_and_norm_layer():
    assert isinstance(activation("silu"), nn.SiLU) and isinstance(activation(None), nn.Identity)
    assert isinstance(norm_layer("batch", 8), nn.BatchNorm2d)
    gn = norm_layer("group", 24)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 8
    assert norm_layer("group", 6).num_groups == 6 and norm_layer("group", 7).num_groups == 7
    assert isinstance(norm_layer(None, 8), nn.Identity)
    with pytest.raises(ValueError, match="unknown norm"):
        norm_layer("layer", 8)


@pytest.mark.parametrize("norm", ["batch", "group", None])
def test_conv_block(norm):
    block = ConvBlock(3, 8, kernel_size=5, stride=2, norm=norm, act="relu")
    y = block(torch.randn(2, 3, 15, 15))
    assert y.shape == (2, 8, 8, 8) and (y >= 0).all()
    assert (block[0].bias is None) == (norm is not None)
    with pytest.raises(ValueError, match="odd"):
        ConvBlock(3, 8, kernel_size=4)


@pytest.mark.parametrize("norm", ["batch", "group", None])
@pytest.mark.parametrize("in_ch, out_ch, stride, hw_out", [(8, None, 1, 9), (8, 16, 1, 9), (8, 8, 2, 5), (8, 16, 2, 5)])
def test_resblock_shapes_and_shortcut(norm, in_ch, out_ch, stride, hw_out):
    block = ResBlock(in_ch, out_ch, stride=stride, norm=norm)
    y = block(torch.randn(2, in_ch, 9, 9))
    assert y.shape == (2, out_ch or in_ch, hw_out, hw_out) and (y >= 0).all()
    projects = stride != 1 or (out_ch or in_ch) != in_ch
    assert isinstance(block.shortcut, nn.Identity) != projects


@pytest.mark.parametrize("norm", ["batch", "group", None])
def test_resblock_zero_init_starts_as_identity(norm):
    block = ResBlock(8, norm=norm, zero_init=True).train()
    x = torch.rand(4, 8, 6, 6)                     # >= 0, like the output of a previous ReLU
    torch.testing.assert_close(block(x), x)
    assert block.residual(x).abs().max() == 0
    # with a projection shortcut it starts as relu(projection(x))
    down = ResBlock(8, 16, stride=2, norm=norm, zero_init=True)
    torch.testing.assert_close(down(x), F.relu(down.shortcut(x)))
    # and without zero_init the residual branch is not zero
    assert ResBlock(8, norm=norm).residual(x).abs().max() > 0


def test_resblock_errors():
    with pytest.raises(ValueError, match=r"expects \(B, 8, H, W\)"):
        ResBlock(8)(torch.randn(2, 4, 6, 6))
    with pytest.raises(ValueError, match="stride"):
        ResBlock(8, stride=0)


def test_small_cnn_heads_features_and_receptive_field():
    torch.manual_seed(0)
    model = SmallCNN(3, {"shape": 5, "colour": 6}, width=8, pool=3)
    x = torch.rand(4, 3, 32, 32)
    out = model(x)
    assert set(out) == {"shape", "colour"} and out["shape"].shape == (4, 5) and out["colour"].shape == (4, 6)
    assert model.features(x).shape == (4, model.feature_dim) and model.feature_dim == 32 * 9
    maps = model.feature_maps(x)
    assert [tuple(m.shape[1:]) for m in maps.values()] == [(8, 32, 32), (16, 16, 16), (32, 8, 8)]
    single = SmallCNN(1, 10, width=8, stages=3, pool=1)
    assert single(torch.rand(2, 1, 16, 16)).shape == (2, 10) and single.feature_dim == 64
    assert tuple(single.feature_maps(torch.rand(2, 1, 16, 16))["stage3"].shape) == (2, 64, 2, 2)
    rf = receptive_field(model.main_path())
    assert [r.size for r in rf] == [3, 5, 9, 13, 21] and rf[-1].jump == 4
    with pytest.raises(ValueError, match=r"expects images \(B, 3, H, W\)"):
        model(torch.rand(4, 1, 32, 32))
    with pytest.raises(ValueError, match="empty dict"):
        SmallCNN(3, {})


def test_small_cnn_learns_a_tiny_task():
    """Bright-left vs bright-right images: a few steps of Adam separate them."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 12, 12, generator=g) * 0.2
    y = torch.arange(64) % 2
    x[y == 0, :, :, :6] += 0.8
    x[y == 1, :, :, 6:] += 0.8
    torch.manual_seed(0)
    model = SmallCNN(1, 2, width=4, pool=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() == 1.0
