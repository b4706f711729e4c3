"""course_lib.diffusion.score: known scores, Langevin, denoising score matching, the PF-ODE."""
from __future__ import annotations

import math

import pytest
import torch

from course_lib.data import sample_toy
from course_lib.diffusion.solver import sample
from course_lib.diffusion.schedule import NoiseSchedule
from course_lib.diffusion.score import (GaussianMixture, ScoreMLP, annealed_langevin, checkerboard_fraction, dsm_loss,
                                        energy_distance, eps_from_score, geometric_sigmas, langevin, mode_share,
                                        probability_flow_ode, score_from_eps)
from course_lib.diffusion.solver import DDIMRule


def _mixture(seed=0):
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture(torch.randn(3, 2, generator=g), torch.rand(3, generator=g) + 0.3,
                           torch.tensor([0.5, 0.3, 0.2]))


def test_mixture_score_is_the_gradient_of_log_prob():
    gm = _mixture()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    grad, = torch.autograd.grad(gm.log_prob(x).sum(), x)
    torch.testing.assert_close(gm.score(x.detach()), grad, atol=1e-5, rtol=1e-4)


def test_single_gaussian_score_and_density_known_answer():
    gm = GaussianMixture(torch.tensor([[1.0, -2.0]]), torch.tensor(0.5))
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    torch.testing.assert_close(gm.score(x), -(x - gm.means) / 0.25)
    torch.testing.assert_close(gm.log_prob(x[1:]), torch.tensor([-math.log(2 * math.pi * 0.25)]))


def test_noised_and_diffused_mixtures():
    gm = GaussianMixture.eight_gaussians()
    torch.testing.assert_close(gm.noised(0.3).stds, torch.full((8,), math.sqrt(0.01 + 0.09)))
    d = gm.diffused(0.64)
    torch.testing.assert_close(d.means, 0.8 * gm.means)
    torch.testing.assert_close(d.stds, torch.full((8,), math.sqrt(0.64 * 0.01 + 0.36)))
    # the toy in course_lib.data is this mixture: its points sit near the means
    assert mode_share(sample_toy("8gaussians", 2000), gm.means, 0.4) > 0.99


def test_mixture_rejects_bad_input():
    with pytest.raises(ValueError):
        GaussianMixture(torch.zeros(2, 2), torch.ones(2), torch.tensor([0.5, 0.6]))
    with pytest.raises(ValueError):
        GaussianMixture(torch.zeros(2, 2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError):
        _mixture().score(torch.zeros(5, 3))


def test_langevin_samples_a_standard_gaussian():
    g = torch.Generator().manual_seed(0)
    x = langevin(lambda x: -x, torch.full((4000, 2), 3.0), step_size=0.05, n_steps=300, generator=g)
    assert x.mean().abs() < 0.05
    assert abs(float(x.var()) - 1.0) < 0.06          # ULA's bias is 1 / (1 - step / 4) - 1 = 0.013


def test_annealing_recovers_mixture_weights_that_plain_langevin_misses():
    gm = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), torch.tensor(0.2), torch.tensor([0.8, 0.2]))
    g = torch.Generator().manual_seed(0)
    start = torch.rand(3000, 2, generator=g) * 8 - 4
    plain = langevin(gm.score, start, 1e-2, 300, generator=g)
    annealed = annealed_langevin(lambda x, s: gm.noised(float(s[0])).score(x), start,
                                 geometric_sigmas(4.0, 0.05, 10), 2e-4, 60, generator=g)
    assert abs(float((plain[:, 0] > 0).float().mean()) - 0.5) < 0.06     # stuck where it started
    assert abs(float((annealed[:, 0] > 0).float().mean()) - 0.2) < 0.04   # the right weights


def test_dsm_loss_known_value_and_minimiser():
    x0, noise = torch.randn(5, 2), torch.randn(5, 2)
    sigmas, idx = torch.tensor([1.0, 0.5]), torch.tensor([0, 1, 1, 0, 1])
    model = lambda x, s: -2 * x  # noqa: E731
    s = sigmas[idx][:, None]
    want = 0.5 * ((s * -2 * (x0 + s * noise) + noise) ** 2).sum(1).mean()
    torch.testing.assert_close(dsm_loss(model, x0, sigmas, idx, noise), want)
    # data N(0, I), one level sigma: the true score of p_sigma is -x / (1 + sigma^2); DSM's gradient vanishes there
    sigma = 0.7
    x0 = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(0))
    a = torch.tensor(1 / (1 + sigma ** 2), requires_grad=True)
    loss = dsm_loss(lambda x, s: -a * x, x0, torch.tensor([sigma]), generator=torch.Generator().manual_seed(1))
    grad, = torch.autograd.grad(loss, a)
    assert abs(float(grad)) < 0.02
    worse = dsm_loss(lambda x, s: -(a.detach() + 0.2) * x, x0, torch.tensor([sigma]),
                     generator=torch.Generator().manual_seed(1))
    assert float(worse) > float(loss.detach()) + 0.01


def test_score_mlp_shapes_and_sigma_parameterisation():
    torch.manual_seed(0)
    m = ScoreMLP(cond="step")
    assert m(torch.randn(7, 2), torch.randint(0, 100, (7,))).shape == (7, 2)
    ms = ScoreMLP(cond="sigma")
    x = torch.randn(7, 2)
    out = ms(x, torch.full((7,), 0.5))
    torch.testing.assert_close(out, ms.out(torch.nn.functional.silu(_hidden(ms, x, 0.5))) / 0.5)
    # the condition matters: different levels give different outputs
    assert not torch.allclose(ms(x, torch.full((7,), 0.1)) * 0.1, ms(x, torch.full((7,), 1.0)))
    with pytest.raises(ValueError):
        ms(x, torch.zeros(7))
    with pytest.raises(ValueError):
        m(torch.randn(7, 3), torch.zeros(7, dtype=torch.long))


def _hidden(m, x, sigma):
    e = m.emb(m.embed(torch.full((x.shape[0],), sigma)))
    h = m.inp(x)
    for b in m.blocks:
        h = h + b(torch.nn.functional.silu(h + e))
    return h


def test_score_from_eps_for_gaussian_data():
    # data N(0, I): x_t ~ N(0, I) for every t, the best eps-guess is sqrt(1 - a_bar) x_t and the score is -x_t
    sched = NoiseSchedule.make("linear", 50)
    t = torch.randint(0, 50, (16,))
    xt = torch.randn(16, 2)
    eps = (1 - sched.alphas_cumprod[t])[:, None].sqrt() * xt
    torch.testing.assert_close(score_from_eps(eps, t, sched), -xt)
    torch.testing.assert_close(eps_from_score(score_from_eps(eps, t, sched), t, sched), eps)


def _gaussian_eps_model(sched, s0):
    """The exact eps-model for data N(0, s0^2 I): E[eps | x_t] = sqrt(1 - a) x_t / (a s0^2 + 1 - a)."""
    def model(x, t):
        a = sched.alphas_cumprod[t][:, None].to(x)
        return (1 - a).sqrt() * x / (a * s0 ** 2 + 1 - a)
    return model


def test_pf_ode_euler_is_ddim_and_heun_is_accurate():
    sched, s0 = NoiseSchedule.make("linear", 100), 0.5
    model = _gaussian_eps_model(sched, s0)
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    euler = probability_flow_ode(model, z, sched, 10, method="euler")
    ddim = sample(model, (256, 2), DDIMRule(sched, 10, eta=0.0, clip_x0=False), x_T=z, progress=False,
                  device="cpu")
    torch.testing.assert_close(euler, ddim, atol=1e-4, rtol=1e-4)
    # exact solution: y = x / sqrt(a_bar) grows like sqrt(s0^2 + sigma^2)
    a_T = float(sched.alphas_cumprod[-1])
    sigma_T = math.sqrt((1 - a_T) / a_T)
    exact = z / math.sqrt(a_T) * s0 / math.sqrt(s0 ** 2 + sigma_T ** 2)
    err = lambda x: float((x - exact).abs().max())  # noqa: E731
    heun20, euler20 = (probability_flow_ode(model, z, sched, 20, method=m) for m in ("heun", "euler"))
    assert err(heun20) < 0.25 * err(euler20)                  # second order beats first order
    assert err(probability_flow_ode(model, z, sched, 50, method="heun")) < 0.01


def test_pf_ode_encode_decode_round_trip():
    sched = NoiseSchedule.make("linear", 100)
    model = _gaussian_eps_model(sched, 0.5)
    x0 = 0.5 * torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    z = probability_flow_ode(model, x0, sched, 100, direction="encode")
    assert abs(float(z.std()) - 1.0) < 0.1                      # data -> the standard normal
    back = probability_flow_ode(model, z, sched, 100, direction="decode")
    assert float((back - x0).abs().max()) < 0.02
    frames = probability_flow_ode(model, x0, sched, 5, direction="encode", trajectory=True)[1]
    assert len(frames) == 6
    with pytest.raises(ValueError):
        probability_flow_ode(model, x0, sched, 5, direction="sideways")


def test_two_d_measures_known_answers():
    zeros, shifted = torch.zeros(4, 2), torch.tensor([[3.0, 4.0]]).repeat(4, 1)
    assert energy_distance(zeros, shifted) == pytest.approx(2 * 5.0)
    a = sample_toy("moons", 1000, seed=0)
    assert abs(energy_distance(a, sample_toy("moons", 1000, seed=1))) < 0.01
    assert energy_distance(a, a + 0.5) > 0.1
    board = sample_toy("checkerboard", 2000, seed=0)
    assert checkerboard_fraction(board) == 1.0
    uniform = torch.rand(20000, 2, generator=torch.Generator().manual_seed(0)) * 4 - 2
    assert abs(checkerboard_fraction(uniform) - 0.5) < 0.02
    assert checkerboard_fraction(torch.full((3, 2), 2.5)) == 0.0
    assert mode_share(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 0.1]]), 0.5) == 0.5
