"""course_lib.models.advanced_gan: conditioning, style modulation, U-Net/PatchGAN and cycle losses."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib.models.advanced_gan import (ConditionalGenerator, MappingNetwork, ModulatedConv2d, PatchDiscriminator,
                                            ProjectionDiscriminator, StyleGenerator, UNetGenerator, adain,
                                            cycle_consistency_loss, identity_loss, mix_styles, modulate_weights,
                                            modulated_conv2d, pixel_norm, truncate)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------------------- conditional GAN
def test_conditional_gan_shapes():
    G = ConditionalGenerator(10, z_dim=8, out_ch=1, image_size=16, width=8).eval()
    D = ProjectionDiscriminator(10, in_ch=1, width=8)
    z, y = torch.randn(5, 8), torch.arange(5)
    x = G(z, y)
    assert x.shape == (5, 1, 16, 16)
    assert x.abs().max() <= 1
    assert D(x, y).shape == (5,)
    G3 = ConditionalGenerator(4, z_dim=8, out_ch=3, image_size=28, width=8).eval()
    assert G3(torch.randn(2, 8), torch.tensor([0, 3])).shape == (2, 3, 28, 28)


def test_conditioning_changes_generator_and_discriminator():
    G = ConditionalGenerator(10, z_dim=8, image_size=16, width=8).eval()
    D = ProjectionDiscriminator(10, in_ch=1, width=8, spectral=False)
    z = torch.randn(1, 8).expand(10, -1)                 # one noise vector, ten classes
    with torch.no_grad():
        x = G(z, torch.arange(10))
        logits = D(x[:1].expand(10, -1, -1, -1), torch.arange(10))
    assert (x[1:] - x[0]).flatten(1).abs().amax(1).min() > 1e-4, "the class does not change G's output"
    assert (logits[1:] - logits[0]).abs().min() > 1e-5, "the class does not change D's logit"


def test_projection_discriminator_is_psi_plus_inner_product():
    D = ProjectionDiscriminator(3, in_ch=1, width=4, spectral=False)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 2])
    h = D.features(x).sum(dim=(2, 3))
    want = D.psi(h).squeeze(1) + (D.embed(y) * h).sum(1)
    torch.testing.assert_close(D(x, y), want)


def test_conditional_gan_rejects_bad_labels():
    G = ConditionalGenerator(10, z_dim=8, image_size=16, width=8)
    with pytest.raises(ValueError, match="0..9"):
        G(torch.randn(2, 8), torch.tensor([3, 10]))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        G(torch.randn(2, 8), torch.tensor([3]))
    with pytest.raises(TypeError):
        G(torch.randn(2, 8), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="multiple of 4"):
        ConditionalGenerator(10, image_size=18)


# ----------------------------------------------------------------------------- style
def test_pixel_norm_gives_unit_rms():
    z = 5 * torch.randn(6, 16) + 2
    rms = pixel_norm(z).pow(2).mean(1).sqrt()
    torch.testing.assert_close(rms, torch.ones(6))
    torch.testing.assert_close(pixel_norm(3 * z), pixel_norm(z))   # only the direction survives


def test_mapping_network_shape_and_scale_invariance():
    f = MappingNetwork(z_dim=8, w_dim=12, num_layers=3)
    z = torch.randn(4, 8)
    assert f(z).shape == (4, 12)
    torch.testing.assert_close(f(10 * z), f(z))


def test_adain_sets_channel_statistics():
    x = 3 * torch.randn(2, 4, 8, 8) + 1
    scale, bias = torch.rand(2, 4) + 0.5, torch.randn(2, 4)
    out = adain(x, scale, bias)
    torch.testing.assert_close(out.mean(dim=(2, 3)), bias, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.std(dim=(2, 3), unbiased=False), scale, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="scale"):
        adain(x, scale[:1], bias)


def test_modulated_conv_with_unit_style_and_no_demodulation_is_a_plain_conv():
    x, weight = torch.randn(3, 4, 8, 8), torch.randn(5, 4, 3, 3)
    out = modulated_conv2d(x, weight, torch.ones(3, 4), demodulate=False)
    torch.testing.assert_close(out, F.conv2d(x, weight, padding=1))


def test_modulated_conv_applies_each_samples_style_to_that_sample():
    x, weight, style = torch.randn(3, 4, 6, 6), torch.randn(5, 4, 3, 3), torch.rand(3, 4) + 0.5
    out = modulated_conv2d(x, weight, style, demodulate=False)
    for b in range(3):   # scaling input channel i of the weights = scaling input channel i of x
        torch.testing.assert_close(out[b:b + 1], F.conv2d(x[b:b + 1] * style[b].view(1, 4, 1, 1), weight, padding=1))
    demod = modulated_conv2d(x, weight, style, demodulate=True)
    w = modulate_weights(weight, style, demodulate=True)
    for b in range(3):
        torch.testing.assert_close(demod[b:b + 1], F.conv2d(x[b:b + 1], w[b], padding=1))


def test_demodulation_gives_unit_norm_output_weights():
    weight, style = torch.randn(6, 4, 3, 3), 3 * torch.rand(2, 4) + 0.1
    w = modulate_weights(weight, style, demodulate=True)
    assert w.shape == (2, 6, 4, 3, 3)
    torch.testing.assert_close(w.pow(2).sum(dim=(2, 3, 4)), torch.ones(2, 6))
    # and demodulated weights no longer depend on the overall size of the style
    torch.testing.assert_close(modulate_weights(weight, 7 * style), w)
    plain = modulate_weights(weight, style, demodulate=False)
    torch.testing.assert_close(plain, style[:, None, :, None, None] * weight)


def test_modulated_conv_module_and_bad_style():
    conv = ModulatedConv2d(4, 6, 3, w_dim=5)
    assert conv(torch.randn(2, 4, 8, 8), torch.randn(2, 5)).shape == (2, 6, 8, 8)
    with pytest.raises(ValueError, match="style"):
        modulated_conv2d(torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.ones(3, 4))


def test_style_generator_shapes_and_layer_count():
    G = StyleGenerator(z_dim=8, w_dim=8, out_ch=3, image_size=32, channels=(8, 8, 8, 4), mapping_layers=2)
    assert G.num_ws == 7 and G.layer_resolutions() == [4, 8, 8, 16, 16, 32, 32]
    assert G(torch.randn(3, 8)).shape == (3, 3, 32, 32)
    G16 = StyleGenerator(z_dim=8, w_dim=8, out_ch=1, image_size=16, channels=8, mapping_layers=1)
    assert G16.num_ws == 5 and G16(torch.randn(2, 8)).shape == (2, 1, 16, 16)
    assert StyleGenerator(8, 8, 1, 28, channels=4).const.shape[-1] == 7
    with pytest.raises(ValueError, match="ws must have shape"):
        G.synthesis(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="channels"):
        StyleGenerator(8, 8, 3, 32, channels=(8, 8))


def test_style_generator_every_layer_uses_its_own_style():
    G = StyleGenerator(z_dim=8, w_dim=8, out_ch=3, image_size=16, channels=8, mapping_layers=1)
    w = G.mapping(torch.randn(1, 8))
    ws = torch.randn(2, G.num_ws, 8)
    seen = {}
    hooks = [block.conv.affine.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, inp[0]))
             for i, block in enumerate(G.blocks)]
    with torch.no_grad():
        G.synthesis(ws)
    for h in hooks:
        h.remove()
    for i in range(G.num_ws):
        torch.testing.assert_close(seen[i], ws[:, i], msg=f"block {i} did not get style {i}")
    with torch.no_grad():
        base = G.synthesis(G.broadcast(w), noise=False)
        for layer in range(G.num_ws):
            ws = G.broadcast(w).clone()
            ws[:, layer] += torch.randn(8)
            assert (G.synthesis(ws, noise=False) - base).abs().max() > 1e-4, f"style {layer} is unused"


def test_style_mixing_and_truncation():
    w_a, w_b = torch.zeros(2, 3), torch.ones(2, 3)
    ws = mix_styles(w_a, w_b, crossover=2, num_ws=5)
    assert ws.shape == (2, 5, 3)
    assert (ws[:, :2] == 0).all() and (ws[:, 2:] == 1).all()
    assert (mix_styles(w_a, w_b, 0, 5) == 1).all() and (mix_styles(w_a, w_b, 5, 5) == 0).all()
    w, avg = torch.randn(4, 3), torch.randn(3)
    torch.testing.assert_close(truncate(w, avg, 0.0), avg.expand(4, 3))
    torch.testing.assert_close(truncate(w, avg, 1.0), w)
    torch.testing.assert_close(truncate(w, avg, 0.5), (w + avg) / 2)


# ----------------------------------------------------------------------------- pix2pix
def test_unet_shapes_and_skip_connections():
    U = UNetGenerator(in_ch=1, out_ch=3, width=4, depth=3).eval()
    x = torch.zeros(2, 1, 32, 32)
    assert U(x).shape == (2, 3, 32, 32)
    # a single lit pixel changes the output near it: the skips carry position at full resolution
    x[:, :, 5, 7] = 1
    diff = (U(x) - U(torch.zeros(2, 1, 32, 32))).abs().sum(dim=(0, 1))
    assert diff[5, 7] > 0
    with pytest.raises(ValueError, match="divisible by 8"):
        U(torch.zeros(1, 1, 20, 20))


def test_unet_skips_carry_the_input_past_a_dead_bottleneck():
    U = UNetGenerator(in_ch=1, out_ch=3, width=4, depth=2).eval()
    with torch.no_grad():
        for p in U.down[-1].parameters():      # the bottleneck now outputs a constant
            p.zero_()
        x1, x2 = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
        assert (U(x1) - U(x2)).abs().max() > 1e-3, "nothing but the bottleneck reaches the decoder"


@pytest.mark.parametrize("size,num_down,grid", [(32, 2, 8), (32, 3, 4), (24, 2, 6), (16, 1, 8)])
def test_patchgan_output_grid(size, num_down, grid):
    D = PatchDiscriminator(in_ch=4, width=4, num_down=num_down)
    assert D(torch.randn(2, 4, size, size)).shape == (2, 1, grid, grid)


def test_patchgan_receptive_field_is_local():
    D = PatchDiscriminator(in_ch=3, width=4, num_down=2)
    rf = D.receptive_field()
    assert (rf.size, rf.jump) == (15, 4)          # 3x3 s2, 3x3 s2, 3x3 s1: 1 + 2 + 4 + 8
    # pixels outside one logit's field do not change it
    x = torch.randn(1, 3, 32, 32)
    y = x.clone()
    y[..., 20:, 20:] = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(D.eval()(x)[..., 0, 0], D(y)[..., 0, 0])
        assert not torch.equal(D(x)[..., -1, -1], D(y)[..., -1, -1])


# ----------------------------------------------------------------------------- CycleGAN
def test_cycle_loss_is_zero_for_inverse_maps_and_positive_otherwise():
    a, b = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    g_ab = lambda x: 2 * x.flip(-1) + 1           # noqa: E731  an invertible map A -> B
    g_ba = lambda x: ((x - 1) / 2).flip(-1)       # noqa: E731  its inverse
    assert cycle_consistency_loss(g_ab, g_ba, a, b).item() == pytest.approx(0, abs=1e-6)
    bad = lambda x: (x - 1) / 2                   # noqa: E731  forgets to flip back
    loss = cycle_consistency_loss(g_ab, bad, a, b)
    want = ((bad(g_ab(a)) - a).abs().mean() + (g_ab(bad(b)) - b).abs().mean())
    torch.testing.assert_close(loss, want)
    assert loss > 0.1
    # passing precomputed translations gives the same number
    torch.testing.assert_close(cycle_consistency_loss(g_ab, bad, a, b, fake_b=g_ab(a), fake_a=bad(b)), loss)


def test_cycle_loss_counts_both_directions():
    a, b = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    only_a_breaks = cycle_consistency_loss(lambda x: x, lambda x: x + 0.5, a, b)
    # both cycles pass through the broken map once: |0.5| each
    assert only_a_breaks.item() == pytest.approx(1.0, abs=1e-6)


def test_identity_loss():
    a, b = torch.randn(2, 3, 4, 4), 10 * torch.randn(2, 3, 4, 4)
    assert identity_loss(lambda x: x, lambda x: x, a, b).item() == 0
    loss = identity_loss(lambda x: x + 1, lambda x: x - 3, a, b)   # |+1| on b, |-3| on a
    assert loss.item() == pytest.approx(4.0)
    # G_AB is applied to B's images (and G_BA to A's), not the other way round
    doubling = identity_loss(lambda x: 2 * x, lambda x: x, a, b)
    torch.testing.assert_close(doubling, b.abs().mean())
