"""course_lib.diffusion.latent: the latent autoencoder, the scale factor, the scaled round trip."""
from __future__ import annotations

import math

import pytest
import torch

from course_lib.diffusion.latent import encode_dataset, latent_scale_factor, scale_latents, unscale_latents
from course_lib.models.autoencoder import LatentAutoencoder


@pytest.fixture
def ae():
    torch.manual_seed(0)
    return LatentAutoencoder(in_ch=3, latent_ch=4, width=8, levels=2)


def test_shapes_and_factor(ae):
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mean, logvar = ae.moments(x)
    assert mean.shape == logvar.shape == (2, 4, 4, 4)
    assert ae.factor == 4 and ae.latent_shape(32) == (4, 8, 8)
    assert ae.encode(x).shape == (2, 4, 4, 4)
    assert ae.decode(ae.encode(x)).shape == x.shape
    # 3 x 32 x 32 pixels -> 4 x 8 x 8 latents: 12x fewer numbers
    assert 3 * 32 * 32 / math.prod(ae.latent_shape(32)) == 12


def test_encoder_starts_with_little_posterior_noise(ae):
    assert torch.equal(ae.encoder[-1].bias[4:], torch.full((4,), -6.0))
    _, logvar = ae.moments(torch.rand(2, 3, 8, 8) * 2 - 1)
    assert -7.5 < logvar.mean().item() < -4.5          # sigma about e^-3, not 1


def test_scale_factor_gives_unit_variance():
    g = torch.Generator().manual_seed(0)
    z = 5.5 * torch.randn(64, 4, 8, 8, generator=g) + 2.0     # std 5.5 like SD's latents (1 / 0.18215)
    s = latent_scale_factor(z)
    assert s == pytest.approx(1 / z.std().item(), rel=1e-6)
    assert s == pytest.approx(1 / 5.5, rel=0.02)
    assert scale_latents(z, s).std().item() == pytest.approx(1.0, abs=1e-5)


def test_scaled_round_trip_is_the_identity(ae):
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    z = ae.encode(x)
    s = latent_scale_factor(z)
    z0 = scale_latents(z, s)
    torch.testing.assert_close(z0, z * s)
    torch.testing.assert_close(unscale_latents(z0, s), z)
    torch.testing.assert_close(ae.decode(unscale_latents(z0, s)), ae.decode(z))


def test_encode_dataset_matches_encode_in_batches(ae):
    x = torch.rand(5, 3, 8, 8) * 2 - 1
    ae.eval()
    torch.testing.assert_close(encode_dataset(ae, x, batch_size=2), ae.encode(x).detach())


def test_loss_terms(ae):
    torch.manual_seed(1)
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    loss, logs = ae.loss(x)
    assert loss.ndim == 0 and set(logs) == {"recon", "kl"}
    assert loss.item() == pytest.approx(logs["recon"] + ae.kl_weight * logs["kl"], rel=1e-5)
    # the KL term is the closed form 0.5 * mean(m^2 + s^2 - 1 - log s^2) of the encoder's output
    mean, logvar = ae.moments(x)
    kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).mean().item()
    assert logs["kl"] == pytest.approx(kl, rel=1e-5)
    # KL(N(0, 1) || N(0, 1)) = 0: an encoder that outputs the prior costs nothing
    with torch.no_grad():
        ae.encoder[-1].weight.zero_()
        ae.encoder[-1].bias.zero_()
    assert ae.loss(x)[1]["kl"] == pytest.approx(0.0, abs=1e-7)


def test_foreground_weight_counts_object_pixels_more(ae):
    x = -torch.ones(2, 3, 8, 8)
    x[:, 0, 2:4, 2:4] = 0.5                                        # a 2x2 red object on black
    torch.manual_seed(0)
    plain = ae.loss(x)[1]["recon"]
    torch.manual_seed(0)
    mean, logvar = ae.moments(x)
    err = (ae.decode(mean + torch.randn_like(mean) * (0.5 * logvar).exp()) - x) ** 2
    assert plain == pytest.approx(err.mean().item(), rel=1e-5)
    w = torch.ones(2, 1, 8, 8)
    w[:, :, 2:4, 2:4] = 11
    torch.manual_seed(0)
    assert ae.loss(x, foreground_weight=10.0)[1]["recon"] == pytest.approx((w * err).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="foreground_weight"):
        ae.loss(x, foreground_weight=-1.0)


def test_gradients_reach_encoder_and_decoder(ae):
    ae.loss(torch.rand(2, 3, 8, 8) * 2 - 1)[0].backward()
    assert ae.encoder[0][0].weight.grad.abs().sum() > 0
    assert ae.decoder[-1].weight.grad.abs().sum() > 0


def test_error_messages(ae):
    with pytest.raises(ValueError, match="divisible by 4"):
        ae.encode(torch.zeros(1, 3, 10, 10))
    with pytest.raises(ValueError, match=r"\(B, 3, S, S\)"):
        ae.encode(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="latents must be"):
        ae.decode(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="divisible"):
        ae.latent_shape(30)
    with pytest.raises(ValueError, match="levels"):
        LatentAutoencoder(levels=0)
    with pytest.raises(ValueError, match="zero"):
        latent_scale_factor(torch.ones(2, 4, 2, 2))
    with pytest.raises(TypeError, match="torch.Tensor"):
        latent_scale_factor([1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        scale_latents(torch.ones(1), 0.0)
    with pytest.raises(ValueError, match="positive"):
        unscale_latents(torch.ones(1), -1.0)
    with pytest.raises(ValueError, match=r"\(N, C, S, S\)"):
        encode_dataset(ae, torch.zeros(3, 8, 8))
