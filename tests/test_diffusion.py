"""course_lib.diffusion: schedules, q_sample, the DDPM loss, reverse/DDIM steps, guidance, the U-Net.

Known answers where there are some (schedule end points, the cosine formula, the posterior of
q(x_{t-1} | x_t, x0), DDIM = diffusers' DDIM); each test fails when the thing it names breaks.
"""
from __future__ import annotations

import math

import pytest
import torch

from course_lib.diffusion.ddpm import (classifier_guided_eps, ddim_step, ddim_timesteps, ddpm_loss, guided_eps,
                                       predict_x0, reverse_step)
from course_lib.diffusion.solver import sample
from course_lib.diffusion.guidance import ClassifierFreeGuidance
from course_lib.diffusion.objectives import EpsFromV, eps_from_v, v_target
from course_lib.diffusion.path import DiffusionPath
from course_lib.diffusion.schedule import (NoiseSchedule, cosine_betas, linear_betas, q_sample, to_image_range,
                                           to_model_range)
from course_lib.diffusion.solver import DDIMRule
from course_lib.models.unet import UNet, count_parameters
from course_lib.nn.embeddings import timestep_embedding

torch.set_num_threads(1)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- schedules
def test_linear_betas_end_points_scale_with_T():
    b = linear_betas(1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    assert bool((b.diff() > 0).all())
    b = linear_betas(250)                                   # 1000 / T times larger
    assert b[0].item() == pytest.approx(4e-4) and b[-1].item() == pytest.approx(0.08)


def test_cosine_alpha_bar_follows_the_formula():
    T, s = 200, 0.008
    sched = NoiseSchedule.make("cosine", T)
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    want = torch.tensor([f((t + 1) / T) / f(0) for t in range(T - 1)])
    torch.testing.assert_close(sched.alphas_cumprod[:-1].double(), want.double(), atol=1e-6, rtol=1e-5)
    assert float(cosine_betas(T).max()) <= 0.999


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_bar_boundaries_and_snr(kind):
    sched = NoiseSchedule.make(kind, 300)
    a = sched.alphas_cumprod
    assert a[0].item() == pytest.approx(1 - sched.betas[0].item())     # t = 0: one step of noise
    assert a[0].item() > 0.99 and a[-1].item() < 1e-3                  # almost data ... almost noise
    assert bool((a.diff() < 0).all())
    torch.testing.assert_close(a, torch.cumprod(sched.alphas.double(), 0).float())
    torch.testing.assert_close(sched.snr(), a / (1 - a))
    torch.testing.assert_close(sched.snr(torch.tensor([0, 5])), (a / (1 - a))[[0, 5]])
    prev = torch.cat([torch.ones(1), a[:-1]])
    torch.testing.assert_close(sched.posterior_variance, (1 - prev) / (1 - a) * sched.betas)
    assert sched.posterior_variance[0].item() == 0.0


def test_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown schedule"):
        NoiseSchedule.make("quadratic", 10)
    with pytest.raises(ValueError, match="T"):
        NoiseSchedule.make("linear", 1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        NoiseSchedule(torch.tensor([0.1, 1.5]))
    sched = NoiseSchedule.make("linear", 10)
    with pytest.raises(TypeError, match="integer"):
        sched.check_t(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        sched.check_t(torch.tensor([10]))


# --------------------------------------------------------------------------- forward process
def test_q_sample_closed_form_and_statistics():
    sched = NoiseSchedule.make("linear", 100)
    x0 = torch.full((20000, 1), 0.7)
    t = torch.full((20000,), 40)
    xt = q_sample(x0, t, torch.randn(20000, 1, generator=_gen()), sched)
    a = sched.alphas_cumprod[40]
    assert xt.mean().item() == pytest.approx(a.sqrt().item() * 0.7, abs=0.02)
    assert xt.std().item() == pytest.approx((1 - a).sqrt().item(), abs=0.02)
    # the same as iterating x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps: mean factor and variance
    mean, var = 1.0, 0.0
    for s in range(41):
        mean, var = mean * (1 - sched.betas[s]).sqrt(), var * (1 - sched.betas[s]) + sched.betas[s]
    assert float(mean) == pytest.approx(a.sqrt().item(), rel=1e-5)
    assert float(var) == pytest.approx(1 - a.item(), rel=1e-5)
    torch.testing.assert_close(sched.q_sample(x0[:3], t[:3], x0[:3]), q_sample(x0[:3], t[:3], x0[:3], sched))


def test_q_sample_error_messages():
    sched = NoiseSchedule.make("cosine", 50)
    x0 = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match="noise has shape"):
        q_sample(x0, torch.zeros(4, dtype=torch.long), torch.zeros(4, 1, 8, 7), sched)
    with pytest.raises(ValueError, match="one step per sample"):
        q_sample(x0, torch.zeros(3, dtype=torch.long), x0, sched)
    with pytest.raises(ValueError, match=r"\[0, 49\]"):
        q_sample(x0, torch.full((4,), 50), x0, sched)


def test_ranges_and_predict_x0_inverts_q_sample():
    x = torch.rand(3, 1, 4, 4, generator=_gen())
    assert to_model_range(x).min() >= -1 and to_model_range(x).max() <= 1
    torch.testing.assert_close(to_image_range(to_model_range(x)), x)
    sched = NoiseSchedule.make("cosine", 100)
    x0, eps, t = to_model_range(x), torch.randn(3, 1, 4, 4, generator=_gen(1)), torch.tensor([0, 50, 99])
    torch.testing.assert_close(predict_x0(eps, q_sample(x0, t, eps, sched), t, sched), x0, atol=1e-3, rtol=0)


def test_ddpm_loss_is_zero_for_the_oracle_and_uses_every_t():
    sched = NoiseSchedule.make("linear", 100)
    x0, noise = torch.rand(8, 1, 4, 4, generator=_gen()) * 2 - 1, torch.randn(8, 1, 4, 4, generator=_gen(1))
    t = torch.arange(8) * 12
    assert ddpm_loss(lambda xt, tt: noise, x0, sched, t=t, noise=noise).item() == 0.0
    zero = ddpm_loss(lambda xt, tt: torch.zeros_like(xt), x0, sched, t=t, noise=noise)
    assert zero.item() == pytest.approx(noise.pow(2).mean().item())
    seen = []
    ddpm_loss(lambda xt, tt: seen.append(tt) or xt, x0.repeat(100, 1, 1, 1), sched, generator=_gen())
    assert seen[0].min() >= 0 and seen[0].max() < 100 and seen[0].unique().numel() > 50


def test_v_prediction_target_conversion_and_loss_weights():
    sched = NoiseSchedule.make("cosine", 100)
    x0, noise = torch.rand(6, 1, 4, 4, generator=_gen()) * 2 - 1, torch.randn(6, 1, 4, 4, generator=_gen(1))
    t = torch.tensor([0, 10, 40, 70, 90, 99])
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = v_target(x0, noise, t, sched)
    torch.testing.assert_close(v, a.sqrt() * noise - (1 - a).sqrt() * x0)          # the definition
    xt = q_sample(x0, t, noise, sched)
    torch.testing.assert_close(eps_from_v(v, xt, t, sched), noise, atol=1e-5, rtol=0)  # exact v gives exact eps
    # the oracle has zero loss; an eps-predicting oracle does not under prediction="v"
    assert ddpm_loss(lambda x, tt: v, x0, sched, t=t, noise=noise, prediction="v").item() < 1e-12
    assert ddpm_loss(lambda x, tt: noise, x0, sched, t=t, noise=noise, prediction="v").item() > 0.1
    # through x0_hat: |v_hat - v|^2 = (1 + SNR) |x0_hat - x0|^2 while |eps_hat - eps|^2 = SNR |x0_hat - x0|^2
    err = torch.randn(6, 1, 4, 4, generator=_gen(2)) * 0.1
    x0_from_v = a.sqrt() * xt - (1 - a).sqrt() * (v + err)
    snr = (a / (1 - a)).flatten()
    ratio = (err ** 2).flatten(1).sum(1) / ((x0_from_v - x0) ** 2).flatten(1).sum(1)
    torch.testing.assert_close(ratio, 1 + snr, rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match="prediction"):
        ddpm_loss(lambda x, tt: x, x0, sched, prediction="x0")


def test_sample_with_v_prediction_equals_the_eps_model():
    sched = NoiseSchedule.make("linear", 50)
    eps_model = _ToyEps(50)

    def v_model(x, t, y=None):   # the same denoiser written as a v-predictor: v = (eps - sqrt(1 - a) x_t) / sqrt(a)
        a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (eps_model(x, t, y) - (1 - a).sqrt() * x) / a.sqrt()

    x_T, y = torch.randn(4, 1, 4, 4, generator=_gen()), torch.tensor([0, 1, 2, 3])
    guided = lambda m: ClassifierFreeGuidance(m, {"y": y}, {"y": torch.zeros_like(y)}, 2.0)  # noqa: E731
    run = lambda fn: sample(fn, (4, 1, 4, 4), DDIMRule(sched, 10), x_T=x_T, progress=False)  # noqa: E731
    want = run(guided(eps_model))
    torch.testing.assert_close(run(EpsFromV(guided(v_model), sched)), want, atol=1e-4, rtol=0)
    assert (run(guided(v_model)) - want).abs().max() > 1e-2     # v read as eps is wrong
    with pytest.raises(ValueError, match="prediction"):
        DiffusionPath(sched, prediction="x")


# --------------------------------------------------------------------------- reverse process
def _posterior(sched, x0, xt, t):
    a, ap, b = sched.alphas_cumprod[t], sched.alphas_cumprod_prev[t], sched.betas[t]
    mean = ap.sqrt() * b / (1 - a) * x0 + (1 - b).sqrt() * (1 - ap) / (1 - a) * xt
    return mean, (1 - ap) / (1 - a) * b


@pytest.mark.parametrize("clip_x0", [False, True])
def test_reverse_step_mean_and_variance_match_the_posterior(clip_x0):
    sched = NoiseSchedule.make("linear", 200)
    x0 = torch.rand(4, 1, 3, 3, generator=_gen()) * 1.8 - 0.9                # inside [-1, 1]
    eps = torch.randn(4, 1, 3, 3, generator=_gen(1))
    t = torch.tensor([1, 30, 120, 199])
    xt = q_sample(x0, t, eps, sched)
    mean = reverse_step(eps, xt, t, sched, torch.zeros_like(xt), clip_x0=clip_x0)   # the true eps
    for i in range(4):
        want, _ = _posterior(sched, x0[i], xt[i], int(t[i]))
        torch.testing.assert_close(mean[i], want, atol=2e-4, rtol=1e-4)
    ones = torch.ones_like(xt)
    for variance, want in (("beta", sched.betas[t]), ("posterior", sched.posterior_variance[t])):
        sigma = reverse_step(eps, xt, t, sched, ones, variance=variance, clip_x0=clip_x0) - mean
        torch.testing.assert_close(sigma[:, 0, 0, 0], want.sqrt())
    with pytest.raises(ValueError, match="variance"):
        reverse_step(eps, xt, t, sched, ones, variance="sigma")


def test_reverse_step_adds_no_noise_at_t0():
    sched = NoiseSchedule.make("cosine", 50)
    xt, eps = torch.randn(2, 1, 4, 4, generator=_gen()), torch.randn(2, 1, 4, 4, generator=_gen(1))
    t = torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(reverse_step(eps, xt, t, sched, 100 * torch.ones_like(xt)),
                               reverse_step(eps, xt, t, sched, torch.zeros_like(xt)))


def test_ddim_step_known_answers():
    sched = NoiseSchedule.make("linear", 100)
    x0 = torch.rand(3, 1, 4, 4, generator=_gen()) * 2 - 1
    eps = torch.randn(3, 1, 4, 4, generator=_gen(1))
    t = torch.tensor([99, 50, 10])
    xt = q_sample(x0, t, eps, sched)
    # the true eps and t_prev = -1 lands exactly on the data; t_prev = s lands on q_sample at s
    torch.testing.assert_close(ddim_step(eps, xt, t, -1, sched), x0, atol=2e-4, rtol=0)
    torch.testing.assert_close(ddim_step(eps, xt, t, torch.tensor([40, 20, 3]), sched),
                               q_sample(x0, torch.tensor([40, 20, 3]), eps, sched), atol=2e-4, rtol=0)
    # eta = 0 ignores the noise; eta = 1 with t_prev = t - 1 has DDPM's posterior variance
    noise = torch.ones_like(xt)
    torch.testing.assert_close(ddim_step(eps, xt, t, t - 1, sched, 0.0, noise), ddim_step(eps, xt, t, t - 1, sched))
    sigma = ddim_step(eps, xt, t, t - 1, sched, 1.0, noise) - ddim_step(eps, xt, t, t - 1, sched, 1.0, 0 * noise)
    torch.testing.assert_close(sigma[:, 0, 0, 0], sched.posterior_variance[t].sqrt())
    with pytest.raises(ValueError, match="backwards"):
        ddim_step(eps, xt, t, t, sched)
    with pytest.raises(ValueError, match="needs noise"):
        ddim_step(eps, xt, t, t - 1, sched, eta=0.5)


def test_ddim_timesteps_trailing():
    assert ddim_timesteps(10, 1000) == list(range(999, 0, -100))
    assert ddim_timesteps(4, 100) == [99, 74, 49, 24]
    assert ddim_timesteps(100, 100) == list(range(99, -1, -1))
    for bad in (0, 101, 2.5):
        with pytest.raises(ValueError, match="steps"):
            ddim_timesteps(bad, 100)


class _ToyEps(torch.nn.Module):
    """A fixed 'denoiser' that depends on x and t (and a label y when given)."""

    def __init__(self, T):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))
        self.T = T

    def forward(self, x, t, y=None):
        out = self.w * x * torch.cos(t.float() / self.T * 3)[:, None, None, None]
        return out if y is None else out + y.float()[:, None, None, None] / 10


def test_sample_ddim_eta0_is_deterministic_and_full_chain_uses_noise():
    sched = NoiseSchedule.make("cosine", 40)
    model, x_T = _ToyEps(40), torch.randn(2, 1, 4, 4, generator=_gen())
    ddim = DDIMRule(sched, 8)
    a = sample(model, (2, 1, 4, 4), ddim, x_T=x_T, generator=_gen(1), progress=False)
    b = sample(model, (2, 1, 4, 4), ddim, x_T=x_T, generator=_gen(2), progress=False)
    torch.testing.assert_close(a, b)
    c = sample(model, (2, 1, 4, 4), sched, x_T=x_T, generator=_gen(1), progress=False)
    d = sample(model, (2, 1, 4, 4), sched, x_T=x_T, generator=_gen(2), progress=False)
    assert (c - d).abs().max() > 1e-3 and c.abs().max() <= 1.5
    x, frames = sample(model, (2, 1, 4, 4), ddim, x_T=x_T, trajectory_every=2, progress=False)
    assert len(frames) == 5 and torch.equal(frames[0], x_T) and torch.equal(frames[-1], x)
    with pytest.raises(ValueError, match="x_T has shape"):
        sample(model, (3, 1, 4, 4), DDIMRule(sched, 2), x_T=x_T, progress=False)


def test_our_ddim_equals_diffusers_ddim():
    from course_lib.diffusion.schedulers import diffusers_scheduler, sample_with_scheduler

    sched = NoiseSchedule.make("linear", 200)
    model = _ToyEps(200)
    ours = sample(model, (3, 1, 4, 4), DDIMRule(sched, 10, eta=0.0, clip_x0=False), generator=_gen(5),
                  progress=False)
    scheduler = diffusers_scheduler("ddim", sched, clip_sample=False)
    torch.testing.assert_close(scheduler.betas.float(), sched.betas)
    theirs = sample_with_scheduler(model, scheduler, (3, 1, 4, 4), 10, generator=_gen(5), progress=False)
    assert [int(t) for t in scheduler.timesteps] == ddim_timesteps(10, 200)
    torch.testing.assert_close(ours, theirs, atol=3e-4, rtol=0)
    with pytest.raises(ValueError, match="unknown scheduler"):
        diffusers_scheduler("heun2", sched)


# --------------------------------------------------------------------------- guidance
def test_guided_eps_scale_convention_and_one_batched_call():
    calls = []

    def model(x, t, y):
        calls.append(len(x))
        return x * 0 + y.float()[:, None, None, None]          # eps = the label

    x, t = torch.zeros(2, 1, 2, 2), torch.tensor([3, 4])
    cond, uncond = {"y": torch.tensor([5, 5])}, {"y": torch.tensor([1, 1])}
    assert guided_eps(model, x, t, cond, uncond, 1.0).unique().tolist() == [5.0]      # s = 1: conditional
    assert guided_eps(model, x, t, cond, uncond, 0.0).unique().tolist() == [1.0]      # s = 0: unconditional
    calls.clear()
    assert guided_eps(model, x, t, cond, uncond, 3.0).unique().tolist() == [13.0]     # 1 + 3 (5 - 1)
    assert calls == [4]
    with pytest.raises(ValueError, match="same inputs"):
        guided_eps(model, x, t, cond, {"context": x}, 2.0)


def test_classifier_guided_eps_uses_the_gradient():
    sched = NoiseSchedule.make("linear", 10)
    x, t, eps = torch.randn(2, 1, 2, 2, generator=_gen()), torch.tensor([2, 9]), torch.zeros(2, 1, 2, 2)
    log_p = lambda xx, tt: -0.5 * xx.pow(2).flatten(1).sum(1)      # noqa: E731  grad = -x
    out = classifier_guided_eps(eps, x, t, sched, log_p, scale=2.0)
    want = 2.0 * (1 - sched.alphas_cumprod[t]).sqrt()[:, None, None, None] * x
    torch.testing.assert_close(out, want)


# --------------------------------------------------------------------------- U-Net
def test_timestep_embedding_known_values():
    t = torch.tensor([0, 3])
    e = timestep_embedding(t, 8)
    assert e.shape == (2, 8)
    torch.testing.assert_close(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = 10000.0 ** (-torch.arange(4) / 4)
    torch.testing.assert_close(e[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]))
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(t, 7)


def _randomise_output(model):
    torch.manual_seed(0)
    for p in model.parameters():           # undo the zero-init so every path shows in the output
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def test_unet_shapes_and_zero_initialised_output():
    torch.manual_seed(0)
    m = UNet(3, base=8, mults=(1, 2), attn_levels=(1,))
    x = torch.randn(2, 3, 8, 12)
    assert torch.equal(m(x, torch.tensor([0, 5])), torch.zeros(2, 3, 8, 12))     # starts at eps = 0
    m2 = _randomise_output(UNet(1, out_ch=2, base=8, mults=(1, 2, 2), num_res_blocks=2, attn_levels=(0, 2)))
    assert m2(torch.randn(3, 1, 16, 16), torch.tensor(4)).shape == (3, 2, 16, 16)
    assert count_parameters(m) == sum(p.numel() for p in m.parameters()) > 0


def test_unet_uses_t_labels_and_context():
    m = _randomise_output(UNet(1, base=8, mults=(1, 2), attn_levels=(1,), num_classes=3, context_dim=6))
    x = torch.randn(2, 1, 8, 8, generator=_gen())
    ctx = torch.randn(2, 5, 6, generator=_gen(1))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    t, y = torch.tensor([3, 3]), torch.tensor([0, 0])
    with torch.no_grad():
        base = m(x, t, y=y, context=ctx, context_mask=mask)
        assert (m(x, torch.tensor([90, 90]), y=y, context=ctx, context_mask=mask) - base).abs().max() > 1e-4
        assert (m(x, t, y=torch.tensor([2, 2]), context=ctx, context_mask=mask) - base).abs().max() > 1e-4
        assert (m(x, t, y=y, context=ctx + 1, context_mask=mask) - base).abs().max() > 1e-4
        padded = ctx.clone()
        padded[0, 3:] = 100.0                         # masked-out tokens must not matter
        torch.testing.assert_close(m(x, t, y=y, context=padded, context_mask=mask)[0], base[0])
        assert m.null_label == 3
        assert m(x, t, y=torch.tensor([3, 3]), context=ctx).shape == x.shape


def test_unet_error_messages():
    m = UNet(1, base=8, mults=(1, 2), attn_levels=())
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        m(torch.zeros(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="divisible by 2"):
        m(torch.zeros(2, 1, 7, 8), torch.zeros(2))
    with pytest.raises(ValueError, match=r"t must be \(B,\)"):
        m(x, torch.zeros(3))
    with pytest.raises(ValueError, match="without num_classes"):
        m(x, torch.zeros(2), y=torch.zeros(2))
    with pytest.raises(ValueError, match="without context_dim"):
        m(x, torch.zeros(2), context=torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="needs labels"):
        UNet(1, base=8, mults=(1, 2), attn_levels=(), num_classes=3)(x, torch.zeros(2))
    with pytest.raises(ValueError, match="needs a text"):
        UNet(1, base=8, mults=(1, 2), attn_levels=(1,), context_dim=4)(x, torch.zeros(2))
    with pytest.raises(ValueError, match="attn_levels"):
        UNet(1, base=8, mults=(1, 2), attn_levels=(2,))
    with pytest.raises(ValueError, match="no labels"):
        m.null_label
