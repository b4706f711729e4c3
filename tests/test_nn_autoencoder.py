"""course_lib.models.autoencoder: shapes, value ranges, clear errors, and that it can learn."""
import pytest
import torch
import torch.nn.functional as F

from course_lib.models.autoencoder import ConvAutoencoder, ConvDecoder, ConvEncoder, MLPAutoencoder, add_noise


@pytest.mark.parametrize("in_ch, latent_dim, image_size, levels", [(1, 2, 16, 2), (3, 32, 32, 2),
                                                                    (3, 8, 32, 3), (1, 4, 8, 1)])
def test_shapes_round_trip(in_ch, latent_dim, image_size, levels):
    model = ConvAutoencoder(in_ch, latent_dim, image_size, width=8, levels=levels)
    x = torch.rand(5, in_ch, image_size, image_size)
    z = model.encode(x)
    assert z.shape == (5, latent_dim)
    x_hat = model.decode(z)
    assert x_hat.shape == x.shape
    torch.testing.assert_close(model(x), x_hat)


def test_encoder_halves_the_side_per_level():
    enc = ConvEncoder(3, 16, 32, width=8, levels=3)
    h = enc.features(torch.rand(2, 3, 32, 32))
    assert h.shape == (2, 32, 4, 4) == (2, *enc.feature_shape)   # 8 -> 16 -> 32 channels, 32 -> 4
    dec = ConvDecoder(16, 3, 32, width=8, levels=3)
    assert dec.feature_shape == enc.feature_shape                  # the decoder mirrors it


@pytest.mark.parametrize("output, lo, hi", [("sigmoid", 0.0, 1.0), ("tanh", -1.0, 1.0)])
def test_output_range(output, lo, hi):
    model = ConvAutoencoder(1, 4, 16, width=8, output=output)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20)                                             # push the outputs to the extremes
        y = model(torch.rand(4, 1, 16, 16))
    assert y.min() >= lo and y.max() <= hi
    assert y.min() < lo + 0.5 * (hi - lo) < y.max()                # and actually spread over the range


def test_none_output_is_unbounded():
    model = ConvAutoencoder(1, 4, 16, width=8, output="none")
    with torch.no_grad():
        model.decoder.net[-2].bias.fill_(5.0)
        assert model(torch.rand(2, 1, 16, 16)).min() > 1.0


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels"):
        ConvAutoencoder(1, 4, image_size=20, levels=3)
    with pytest.raises(ValueError, match="latent_dim must be a positive int"):
        ConvAutoencoder(1, 0, 16)
    with pytest.raises(ValueError, match="output must be one of"):
        ConvAutoencoder(1, 4, 16, output="relu")
    model = ConvAutoencoder(1, 4, 16, width=8)
    with pytest.raises(ValueError, match=r"expects images \(B, 1, 16, 16\)"):
        model(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"expects codes \(B, 4\)"):
        model.decode(torch.rand(2, 5))
    with pytest.raises(ValueError, match="expected images"):
        MLPAutoencoder((1, 16, 16), 4).encode(torch.rand(2, 1, 8, 8))


def test_mlp_autoencoder_shapes():
    model = MLPAutoencoder((3, 8, 8), latent_dim=5, hidden=32)
    x = torch.rand(4, 3, 8, 8)
    assert model.encode(x).shape == (4, 5)
    assert model(x).shape == x.shape


def test_add_noise():
    x = torch.full((2000,), 0.5)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = add_noise(x, 0.1, generator=g1), add_noise(x, 0.1, generator=g2)
    assert torch.equal(a, b)                                       # reproducible from the generator
    assert abs((a - x).std().item() - 0.1) < 0.01                  # x̃ = x + σ ε
    assert abs((a - x).mean().item()) < 0.01
    assert add_noise(torch.zeros(100), 1.0).min() >= 0.0           # clipped to [0, 1] by default
    assert add_noise(torch.zeros(1000), 1.0, clip=None).min() < -1.0
    assert torch.equal(add_noise(x, 0.0), x)
    with pytest.raises(ValueError, match="std must be >= 0"):
        add_noise(x, -0.1)


def test_learns_to_reconstruct():
    """150 steps on 64 blobs must beat the best code-free answer (the mean image) by 2x,
    which only a model that passes information through its 4-number code can do."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    centres = torch.rand(64, 2) * 10 + 3
    x = torch.exp(-((xx - centres[:, 0, None, None]) ** 2 + (yy - centres[:, 1, None, None]) ** 2)
                  / 8).unsqueeze(1)                                # (64, 1, 16, 16) blobs: 2 numbers each
    model = ConvAutoencoder(1, 4, 16, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mean_image_mse = x.var(dim=0, unbiased=False).mean().item()    # MSE of predicting x.mean(0)
    for _ in range(150):
        loss = F.mse_loss(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * mean_image_mse, (mean_image_mse, loss.item())
