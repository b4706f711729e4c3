"""course_lib.models.flows: invertibility, log-determinants against autograd Jacobians, ActNorm's
data-dependent init, normalisation of the density, dequantization and bits per dimension."""
from __future__ import annotations

import math

import pytest
import torch

from course_lib.models.flows import (ActNorm, AffineCoupling, Flow, FlowSequence, Invertible1x1Conv, LogitTransform,
                                     Squeeze, alternating_mask, bits_per_dim, channel_mask, checkerboard_mask,
                                     dequantize, quantize, standard_normal_log_prob)


def randomized(layer, scale=0.3, seed=0):
    """The layer in float64 with every parameter moved off its (often identity) start, and
    ActNorm marked as initialised, so that nothing is trivially zero."""
    g = torch.Generator().manual_seed(seed)
    layer = layer.double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    for m in layer.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)
    return layer


def vector_layers():
    torch.manual_seed(0)
    return {
        "coupling-2d-even": AffineCoupling(alternating_mask(2, 0), hidden=16),
        "coupling-2d-odd": AffineCoupling(alternating_mask(2, 1), hidden=16),
        "coupling-5d": AffineCoupling(alternating_mask(5, 1), hidden=16),
        "actnorm": ActNorm(3),
        "linear-lu": Invertible1x1Conv(3, lu=True),
    }


def image_layers():
    torch.manual_seed(0)
    return {
        "coupling-checkerboard": AffineCoupling(checkerboard_mask(4, 4, 1), hidden=8, channels=2),
        "coupling-channel": AffineCoupling(channel_mask(2, 0), hidden=8),
        "actnorm": ActNorm(2),
        "conv1x1-lu": Invertible1x1Conv(2, lu=True),
        "conv1x1-plain": Invertible1x1Conv(2, lu=False),
        "squeeze": Squeeze(),
    }


def small_flow(image=False):
    torch.manual_seed(1)
    if image:   # (1, 4, 4) -> checkerboard coupling -> squeeze -> Glow step on (4, 2, 2)
        layers = [LogitTransform(0.05), AffineCoupling(checkerboard_mask(4, 4, 0), hidden=8),
                  Squeeze(), ActNorm(4), Invertible1x1Conv(4), AffineCoupling(channel_mask(4, 1), hidden=8)]
        return randomized(Flow(layers, event_shape=(1, 4, 4)), scale=0.2)
    layers = [ActNorm(2)]
    for i in range(4):
        layers += [AffineCoupling(alternating_mask(2, i % 2), hidden=16), Invertible1x1Conv(2)]
    return randomized(Flow(layers, event_shape=(2,)), scale=0.3)


def inputs_for(name, image, batch=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    if image:
        return torch.randn(batch, 2, 4, 4, generator=g, dtype=torch.float64)
    d = 5 if name == "coupling-5d" else (2 if name.startswith("coupling-2d") else 3)
    return torch.randn(batch, d, generator=g, dtype=torch.float64)


def jacobian_log_det(fn, x):
    """log |det J| of fn at one item x (shape (1, ...)), from torch.autograd."""
    flat = lambda v: fn(v.view_as(x)).flatten()  # noqa: E731
    jac = torch.autograd.functional.jacobian(flat, x.flatten())
    return torch.linalg.slogdet(jac)[1]


ALL = [(n, False) for n in vector_layers()] + [(n, True) for n in image_layers()]


@pytest.mark.parametrize("name,image", ALL, ids=[f"{'img' if i else 'vec'}-{n}" for n, i in ALL])
def test_inverse_undoes_forward(name, image):
    layer = randomized((image_layers() if image else vector_layers())[name])
    x = inputs_for(name, image)
    y, log_det = layer(x)
    assert log_det.shape == (x.shape[0],)
    assert not torch.allclose(y.reshape(-1)[: x.numel()], x.reshape(-1)) or name == "squeeze"
    torch.testing.assert_close(layer.inverse(y), x, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name,image", ALL, ids=[f"{'img' if i else 'vec'}-{n}" for n, i in ALL])
def test_log_det_equals_autograd_jacobian(name, image):
    layer = randomized((image_layers() if image else vector_layers())[name])
    x = inputs_for(name, image, batch=3, seed=1)
    _, log_det = layer(x)
    for i in range(3):
        want = jacobian_log_det(lambda v: layer(v)[0], x[i:i + 1])
        torch.testing.assert_close(log_det[i], want, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("image", [False, True], ids=["2d-flow", "image-flow"])
def test_whole_flow_inverts_and_its_log_det_is_the_jacobians(image):
    flow = small_flow(image)
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64) * 0.9 + 0.05 if image
         else torch.randn(3, 2, generator=g, dtype=torch.float64))
    z, log_det = flow(x)
    assert z.shape == (3, *flow.latent_shape)
    torch.testing.assert_close(flow.inverse(z), x, atol=1e-9, rtol=1e-9)
    for i in range(3):
        want = jacobian_log_det(lambda v: flow(v)[0], x[i:i + 1])
        torch.testing.assert_close(log_det[i], want, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(flow.log_prob(x), standard_normal_log_prob(z) + log_det)


def test_coupling_keeps_the_masked_part_and_starts_as_identity():
    torch.manual_seed(0)
    layer = AffineCoupling(checkerboard_mask(4, 4, 0), hidden=8)
    x = torch.randn(2, 1, 4, 4)
    y, log_det = layer(x)                                   # zero-initialised last layer
    torch.testing.assert_close(y, x)
    assert torch.all(log_det == 0)
    layer = randomized(layer)
    y, _ = layer(x.double())
    kept = layer.mask.bool().expand_as(x)
    assert torch.equal(y[kept], x.double()[kept])
    assert not torch.allclose(y[~kept], x.double()[~kept])


def test_actnorm_data_dependent_init_gives_zero_mean_unit_variance():
    torch.manual_seed(0)
    for shape in [(64, 3), (16, 3, 5, 5)]:
        x = 4.0 + 2.5 * torch.randn(*shape) * torch.tensor([1.0, 0.2, 3.0]).view(1, 3, *[1] * (len(shape) - 2))
        layer = ActNorm(3)
        y, log_det = layer(x)
        per_channel = y.transpose(0, 1).flatten(1)
        torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(per_channel.std(1, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
        pixels = 1 if len(shape) == 2 else 25
        std = x.transpose(0, 1).flatten(1).std(1, unbiased=False)
        torch.testing.assert_close(log_det, (-pixels * torch.log(std).sum()).expand(shape[0]),
                                   atol=1e-4, rtol=1e-5)
        assert bool(layer.initialized)
        before = layer.log_scale.detach().clone()
        layer(x * 10)                                       # a later batch does not re-initialise
        torch.testing.assert_close(layer.log_scale.detach(), before)


def test_lu_conv_matches_its_matrix_and_slogdet():
    conv = randomized(Invertible1x1Conv(4, lu=True))
    w = conv.weight_matrix()
    torch.testing.assert_close(conv.log_abs_det(), torch.linalg.slogdet(w)[1])
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    y, log_det = conv(x)
    torch.testing.assert_close(y, torch.einsum("oc,bchw->bohw", w, x))
    torch.testing.assert_close(log_det, (9 * torch.linalg.slogdet(w)[1]).expand(2))


def test_squeeze_moves_each_2x2_block_into_channels():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y, log_det = Squeeze()(x)
    assert y.shape == (1, 4, 2, 2) and torch.all(log_det == 0)
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]   # the top-left 2 x 2 block
    assert Squeeze().output_shape((1, 4, 4)) == (4, 2, 2)


def test_log_prob_integrates_to_one_on_a_grid():
    flow = small_flow(image=False)
    n, lim = 400, 8.0
    side = torch.linspace(-lim, lim, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(side, side, indexing="xy"), -1).view(-1, 2)
    with torch.no_grad():
        p = flow.log_prob(grid).exp()
    cell = (side[1] - side[0]) ** 2
    total = (p.sum() * cell).item()
    assert abs(total - 1) < 0.02, total
    # the density is not trivially the standard normal
    assert not torch.allclose(p, standard_normal_log_prob(grid).exp(), atol=1e-3)


def test_samples_have_the_data_shape_and_follow_the_temperature():
    flow = small_flow(image=True).float()
    x = flow.sample(6, generator=torch.Generator().manual_seed(0))
    assert x.shape == (6, 1, 4, 4) and torch.isfinite(x).all()
    a = 0.05                                                # the logit transform's alpha
    assert ((x > -a / (1 - 2 * a)) & (x < (1 - a) / (1 - 2 * a))).all()
    z0 = flow.inverse(torch.zeros(1, *flow.latent_shape))
    torch.testing.assert_close(flow.sample(3, temperature=0.0), z0.expand(3, 1, 4, 4))
    traj = flow.trajectory(torch.zeros(2, *flow.latent_shape))
    assert len(traj) == len(flow.layers) + 1 and traj[-1].shape == (2, 1, 4, 4)


def test_bits_per_dim_known_answers():
    d = 64
    # a uniform density on [0, 1)^D assigns each of the 256^D images probability 256^-D: 8 bits
    torch.testing.assert_close(bits_per_dim(0.0, d), torch.tensor(8.0, dtype=torch.float64))
    # the same model in the raw [0, 256) coordinates: log p = -D log 256, bins of width 1
    torch.testing.assert_close(bits_per_dim(-d * math.log(256), d, data_range=256.0),
                               torch.tensor(8.0, dtype=torch.float64))
    # a density of 2^-1 per dimension on [0, 1) costs one more bit per dimension; batches work
    lp = torch.tensor([-d * math.log(2), 0.0])
    torch.testing.assert_close(bits_per_dim(lp, d), torch.tensor([9.0, 8.0]))
    # [-1, 1) data, 4 levels: bins of width 0.5
    torch.testing.assert_close(bits_per_dim(0.0, d, num_bins=4, data_range=2.0),
                               torch.tensor(1.0, dtype=torch.float64))


def test_quantize_and_dequantize():
    x = torch.tensor([[0.0, 0.5, 1.0, 0.2]])
    k = quantize(x)
    assert k.tolist() == [[0, 128, 255, 51]]
    y = dequantize(k, generator=torch.Generator().manual_seed(0))
    assert y.dtype == torch.float32 and ((y >= 0) & (y < 1)).all()
    assert torch.equal(torch.floor(y * 256).long(), k)      # each value stays inside its bin
    with pytest.raises(TypeError):
        dequantize(x)
    with pytest.raises(ValueError):
        quantize(x + 1)


def test_logit_transform_round_trip_and_bad_input():
    layer = LogitTransform(0.05)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    y, _ = layer(x)
    torch.testing.assert_close(layer.inverse(y), x)
    with pytest.raises(ValueError, match="dequantize"):
        layer(x + 2)


def test_clear_errors():
    with pytest.raises(ValueError, match="0s and 1s"):
        AffineCoupling(torch.ones(2))
    with pytest.raises(ValueError, match="D = 2"):
        AffineCoupling(alternating_mask(2))(torch.randn(4, 3))
    with pytest.raises(ValueError, match="even"):
        Squeeze()(torch.randn(1, 1, 5, 4))
    with pytest.raises(ValueError, match="channels"):
        ActNorm(3)(torch.randn(2, 4, 2, 2))
    with pytest.raises(TypeError, match="FlowLayer"):
        FlowSequence([torch.nn.Linear(2, 2)])
    flow = Flow([ActNorm(2)], event_shape=(2,))
    with pytest.raises(ValueError, match="shape"):
        flow.log_prob(torch.randn(4, 3))
    with pytest.raises(ValueError, match="squeeze"):
        channel_mask(1)
