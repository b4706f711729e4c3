"""course_lib.models.vae: the ELBO's pieces against known answers, gradients, shapes and clear errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.models.vae import (VAE, ELBOLoss, bernoulli_nll, elbo_loss, gaussian_kl, gaussian_kl_per_dim,
                                   gaussian_nll, reparameterize)
from course_lib.train import fit


@pytest.fixture(autouse=True)
def _on_the_cpu(monkeypatch):
    """These tests compare numbers with CPU tensors made here: fit picks the CPU even on a GPU host
    (tests/test_devices.py runs the same code on a GPU's device)."""
    monkeypatch.setenv("COURSE_DEVICE", "cpu")


def _latents(b=4, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) * 0.5


# --------------------------------------------------------------------------- reparameterize
def test_reparameterize_with_given_eps_is_mu_plus_sigma_eps():
    mu = torch.tensor([[1.0, -2.0]])
    logvar = torch.tensor([[math.log(4.0), math.log(0.25)]])             # sigma = 2, 0.5
    eps = torch.tensor([[0.5, -1.0]])
    torch.testing.assert_close(reparameterize(mu, logvar, eps), torch.tensor([[2.0, -2.5]]))


def test_reparameterize_draws_from_the_right_gaussian():
    torch.manual_seed(0)
    mu = torch.full((20000, 2), 1.5)
    logvar = torch.full((20000, 2), math.log(0.09))                      # sigma = 0.3
    z = reparameterize(mu, logvar)
    assert z.shape == (20000, 2)
    torch.testing.assert_close(z.mean(0), torch.full((2,), 1.5), atol=0.01, rtol=0)
    torch.testing.assert_close(z.std(0), torch.full((2,), 0.3), atol=0.01, rtol=0)


def test_reparameterize_gradient_flows_to_mu_and_logvar():
    mu, logvar = _latents()
    mu.requires_grad_(True)
    logvar.requires_grad_(True)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(1))
    reparameterize(mu, logvar, eps).sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))                       # dz/dmu = 1
    torch.testing.assert_close(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps)


# --------------------------------------------------------------------------- KL
def test_kl_is_zero_at_the_prior():
    kl = gaussian_kl(torch.zeros(5, 7), torch.zeros(5, 7))
    assert kl.shape == (5,)
    torch.testing.assert_close(kl, torch.zeros(5))


def test_kl_known_values():
    # one dimension: KL(N(m, s²) || N(0, 1)) = ½ (m² + s² - log s² - 1)
    mu = torch.tensor([[1.0], [0.0]])
    logvar = torch.tensor([[0.0], [math.log(2.0)]])
    want = torch.tensor([0.5, 0.5 * (2.0 - math.log(2.0) - 1.0)])
    torch.testing.assert_close(gaussian_kl(mu, logvar), want)
    # summed over dimensions
    torch.testing.assert_close(gaussian_kl(mu.repeat(1, 3), logvar.repeat(1, 3)), 3 * want)


def test_kl_matches_torch_distributions_and_monte_carlo():
    mu, logvar = _latents(b=3, d=4)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p).sum(1))
    torch.manual_seed(0)
    z = q.sample((200000,))                                               # (S, B, D)
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)                  # E_q[log q - log p]
    torch.testing.assert_close(gaussian_kl(mu, logvar), mc, atol=0.02, rtol=0.01)


def test_kl_per_dim_sums_to_kl_and_is_nonnegative():
    mu, logvar = _latents(b=6, d=5, seed=3)
    per_dim = gaussian_kl_per_dim(mu, logvar)
    assert per_dim.shape == (6, 5) and (per_dim >= 0).all()
    torch.testing.assert_close(per_dim.sum(1), gaussian_kl(mu, logvar))


# --------------------------------------------------------------------------- likelihoods
def test_bernoulli_nll_matches_torch_bce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 4, 4, generator=g) * 3
    x = torch.rand(3, 1, 4, 4, generator=g)
    want = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum((1, 2, 3))
    got = bernoulli_nll(logits, x)
    assert got.shape == (3,)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_bernoulli_nll_known_value_and_stability():
    # logit 0 -> p = ½ -> every pixel costs log 2, whatever x
    torch.testing.assert_close(bernoulli_nll(torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2)),
                               torch.full((2,), 12 * math.log(2.0)))
    # huge correct logits: a finite, tiny loss (no log(0))
    x = torch.tensor([[[[1.0, 0.0]]]])
    nll = bernoulli_nll(torch.tensor([[[[200.0, -200.0]]]]), x)
    assert torch.isfinite(nll).all() and nll.item() < 1e-6


def test_gaussian_nll_matches_torch_normal_log_prob():
    g = torch.Generator().manual_seed(0)
    x_hat, x = torch.rand(2, 3, 4, 4, generator=g), torch.rand(2, 3, 4, 4, generator=g)
    for sigma in (0.1, 1.0):
        want = -torch.distributions.Normal(x_hat, sigma).log_prob(x).sum((1, 2, 3))
        torch.testing.assert_close(gaussian_nll(x_hat, x, sigma=sigma), want)


# --------------------------------------------------------------------------- ELBO
def test_elbo_loss_is_mean_of_nll_plus_beta_kl():
    g = torch.Generator().manual_seed(0)
    logits, x = torch.randn(4, 1, 8, 8, generator=g), torch.rand(4, 1, 8, 8, generator=g)
    mu, logvar = _latents(b=4, d=3)
    out = elbo_loss(logits, x, mu, logvar, beta=2.5)
    assert out["loss"].shape == () and out["nll"].shape == (4,) and out["kl"].shape == (4,)
    torch.testing.assert_close(out["nll"], bernoulli_nll(logits, x))
    torch.testing.assert_close(out["kl"], gaussian_kl(mu, logvar))
    torch.testing.assert_close(out["loss"], (out["nll"] + 2.5 * out["kl"]).mean())
    assert out["loss"] > elbo_loss(logits, x, mu, logvar, beta=1.0)["loss"]   # beta really weighs KL


def test_elbo_loss_upper_bounds_the_exact_log_likelihood_of_a_tiny_model():
    # A model small enough to integrate exactly: z in {a 1-D Gaussian}, one pixel, decoder
    # logit = w·z. The ELBO with the best q must lie below log p(x) (Jensen), here checked
    # for a q that is not the posterior: -loss <= log p(x).
    w, x = 3.0, torch.tensor([[[[1.0]]]])
    grid = torch.linspace(-8, 8, 20001)
    prior = torch.exp(-0.5 * grid ** 2) / math.sqrt(2 * math.pi)
    log_px = torch.log(torch.trapezoid(prior * torch.sigmoid(w * grid), grid))
    mu, logvar = torch.tensor([[0.7]]), torch.tensor([[-1.0]])
    torch.manual_seed(0)
    z = reparameterize(mu.expand(50000, 1), logvar.expand(50000, 1))
    nll = bernoulli_nll((w * z).view(-1, 1, 1, 1), x.expand(50000, 1, 1, 1))
    neg_elbo = nll.mean() + gaussian_kl(mu, logvar)[0]
    assert -neg_elbo < log_px < -neg_elbo + 1.0


# --------------------------------------------------------------------------- model
@pytest.mark.parametrize("in_ch, size, latent, levels", [(1, 16, 8, 2), (3, 32, 4, 3)])
def test_vae_shapes(in_ch, size, latent, levels):
    torch.manual_seed(0)
    model = VAE(in_ch, size, latent, width=8, levels=levels)
    x = torch.rand(5, in_ch, size, size)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, latent)
    h = model.encoder(x)                                                  # (5, 2 * latent)
    torch.testing.assert_close(mu, h[:, :latent])                         # first half: the means
    torch.testing.assert_close(logvar, h[:, latent:])                     # second half: log-variances
    out = model(x)
    assert set(out) == {"logits", "mu", "logvar", "z"}
    assert out["logits"].shape == x.shape and out["z"].shape == (5, latent)
    assert model.decode(out["z"]).shape == x.shape
    samples = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (6, in_ch, size, size)
    assert samples.min() >= 0 and samples.max() <= 1
    recon = model.reconstruct(x)
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1


def test_vae_forward_uses_the_given_noise_and_sample_is_reproducible():
    torch.manual_seed(0)
    model = VAE(1, 16, 4, width=8).eval()
    x = torch.rand(3, 1, 16, 16)
    out = model(x, eps=torch.zeros(3, 4))
    torch.testing.assert_close(out["z"], out["mu"])                       # eps = 0 -> z = mu
    torch.testing.assert_close(torch.sigmoid(out["logits"]), model.reconstruct(x))
    a = model.sample(4, generator=torch.Generator().manual_seed(1))
    b = model.sample(4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, torch.sigmoid(model.decode(z)))          # z ~ N(0, I), decoded
    torch.testing.assert_close(model.sample(4, generator=torch.Generator().manual_seed(1),
                                            temperature=0.5),
                               torch.sigmoid(model.decode(0.5 * z)))


def test_vae_loss_works_with_fit_and_lowers_the_loss():
    torch.manual_seed(0)
    x = (torch.rand(64, 1, 8, 8) > 0.5).float()
    data = torch.utils.data.TensorDataset(x, torch.zeros(64))
    model = VAE(1, 8, 2, width=8, levels=1)
    before = model.loss((x, None))[0].item()
    result = fit(model, VAE.loss, data, steps=40, batch_size=32, lr=1e-2, seed=0, progress=False)
    assert {"nll", "kl"} <= set(result.history)
    assert model.loss((x, None))[0].item() < before - 1.0


def test_elbo_loss_object_warms_up_beta():
    torch.manual_seed(0)
    model = VAE(1, 8, 2, width=8, levels=1)
    x = torch.rand(4, 1, 8, 8)
    loss_fn = ELBOLoss(beta=2.0, warmup_steps=4)
    betas = [loss_fn(model, x)[1]["beta"] for _ in range(6)]
    assert betas == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    model.eval()
    loss_fn(model, x)                                                     # eval calls do not count
    assert loss_fn.step == 6
    torch.manual_seed(0)
    loss, logs = ELBOLoss(beta=0.0)(model, x)                             # beta 0: only the nll
    torch.testing.assert_close(loss.item(), logs["nll"], rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    mu, logvar = _latents()
    with pytest.raises(ValueError, match="same shape"):
        gaussian_kl(mu, logvar[:, :2])
    with pytest.raises(ValueError, match="2 dimensions"):
        gaussian_kl(mu[0], logvar[0])
    with pytest.raises(TypeError, match="floating-point"):
        reparameterize(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2))
    with pytest.raises(TypeError, match="torch.Tensor"):
        gaussian_kl([[0.0]], torch.zeros(1, 1))
    with pytest.raises(ValueError, match="eps"):
        reparameterize(mu, logvar, eps=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="same shape"):
        bernoulli_nll(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bernoulli_nll(torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), -1.0))
    with pytest.raises(ValueError, match="sigma"):
        gaussian_nll(torch.zeros(2, 4), torch.zeros(2, 4), sigma=0.0)
    with pytest.raises(ValueError, match="beta"):
        elbo_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), torch.zeros(2, 3),
                  torch.zeros(2, 3), beta=-1.0)
    with pytest.raises(ValueError, match="batch sizes"):
        elbo_loss(torch.zeros(3, 1, 4, 4), torch.zeros(3, 1, 4, 4), torch.zeros(2, 3),
                  torch.zeros(2, 3))
    model = VAE(1, 16, 4, width=8)
    with pytest.raises(ValueError, match="expects images"):
        model.encode(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="positive int"):
        model.sample(0)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=0)
    with pytest.raises(ValueError, match="divisible"):
        VAE(1, 10, 4, width=8, levels=2)
    with pytest.raises(ValueError, match="beta"):
        VAE(1, 16, 4, beta=-0.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        ELBOLoss(warmup_steps=-1)
