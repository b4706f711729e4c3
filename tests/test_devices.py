"""Device bugs caught without a GPU, and mixed precision tested where the CPU allows it.

The rule under test (``course_lib.device``): helpers return CPU results, noise is drawn on the
CPU and moved, float64 runs on the CPU only, and the training precision follows the hardware.
``fake_device.fake_cuda`` puts the code on a ``cuda:0`` that holds no data, so a CPU/GPU mix,
a ``.numpy()`` of a GPU tensor, a CPU generator used for a GPU tensor or a float64 op on the GPU
fails here as it would on a GPU (or on a Mac, for float64). Those tests run in a forked process
(``in_a_fork``) so that the fake GPU leaves nothing behind in the test process.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from course_lib import device as dev
from course_lib.train import fit
from fake_device import Float64OnDevice, fake_cuda, in_a_fork


def _tiny_t2i():
    from course_lib.diffusion.schedule import NoiseSchedule
    from course_lib.diffusion.text2image import TextToImage, make_tokenizer
    from course_lib.models.autoencoder import LatentAutoencoder
    from course_lib.models.clip import TextEncoder
    from course_lib.models.unet import UNet

    torch.manual_seed(0)
    tok = make_tokenizer()
    te = TextEncoder(tok.vocab_size, tok.context_length, dim=16, depth=1, num_heads=2, embed_dim=16)
    unet = UNet(4, base=16, mults=(1, 2), attn_levels=(1,), context_dim=16, num_heads=2)
    ae = LatentAutoencoder(3, 4, width=8, levels=2)
    return TextToImage(tok, te, unet, ae, NoiseSchedule.make("linear", 20), latent_scale=2.0)


def _toy_flow():
    from course_lib.models.flows import AffineCoupling, Flow, alternating_mask
    torch.manual_seed(0)
    return Flow([AffineCoupling(alternating_mask(2, i % 2), hidden=16) for i in range(4)], event_shape=(2,))


# --------------------------------------------------------------------------- the harness itself
@in_a_fork
def test_the_fake_gpu_catches_what_a_real_one_would():
    with fake_cuda() as cuda:
        x = torch.randn(2, 3).to(cuda)
        with pytest.raises(Exception, match="device"):
            x + torch.randn(2, 3)                                    # CPU + GPU
        with pytest.raises(RuntimeError, match="numpy"):
            x.numpy()
        with pytest.raises(Float64OnDevice):
            x.double()
        with pytest.raises(RuntimeError, match="generator"):
            torch.randn(2, generator=torch.Generator(), device=cuda)
        assert x.cpu().double().numpy().shape == (2, 3)             # the right way round is fine


# --------------------------------------------------------------------------- the precision policy
@pytest.mark.parametrize("capability, dtype, scaler", [((7, 5), torch.float16, True),     # T4
                                                       ((7, 0), torch.float16, True),     # V100
                                                       ((8, 0), torch.bfloat16, False),   # A100
                                                       ((8, 9), torch.bfloat16, False),   # L4
                                                       ((9, 0), torch.bfloat16, False)])  # H100
def test_training_precision_follows_compute_capability(monkeypatch, capability, dtype, scaler):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)   # a T4 says so: emulated
    assert dev.autocast_dtype("cuda") == dtype
    with pytest.warns(UserWarning) if scaler else _nothing():      # (GradScaler: "CUDA is not available")
        policy = dev.amp("cuda")
    assert policy.dtype == dtype and (policy.scaler is not None) == scaler
    assert policy.describe() == f"{'fp16' if scaler else 'bf16'} autocast{' + grad scaler' if scaler else ''} (cuda)"
    assert dev.amp("cuda", enabled=False).dtype is None


def _nothing():
    import contextlib
    return contextlib.nullcontext()


@pytest.mark.parametrize("name", ["cpu", "mps"])
def test_cpu_and_mps_train_in_float32(name):
    policy = dev.amp(name)
    assert dev.autocast_dtype(name) is None and policy.scaler is None and policy.describe() == "float32"


# --------------------------------------------------------------------------- float32 by design, under autocast
def test_unsafe_ops_run_in_float32_under_bf16_autocast():
    from course_lib.models import vae
    from course_lib.models.clip import clip_loss

    g = torch.Generator().manual_seed(0)
    logits, x = torch.randn(4, 1, 8, 8, generator=g), torch.rand(4, 1, 8, 8, generator=g)
    mu, logvar = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    img, txt = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    flow, points = _toy_flow(), torch.randn(64, 2, generator=g)
    want = {"bce": vae.bernoulli_nll(logits, x), "gauss": vae.gaussian_nll(logits, x),
            "kl": vae.gaussian_kl(mu, logvar), "clip": clip_loss(img, txt, 100.0),
            "flow": flow.log_prob(points)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = lambda t: t.bfloat16()                                # noqa: E731  what autocast hands a loss
        got = {"bce": vae.bernoulli_nll(half(logits), x), "gauss": vae.gaussian_nll(half(logits), x),
               "kl": vae.gaussian_kl(half(mu), half(logvar)), "clip": clip_loss(img, txt, 100.0),
               "flow": flow.log_prob(points)}
        with dev.no_autocast(x):
            assert (img @ txt.T).dtype == torch.float32
    for key, value in got.items():
        assert value.dtype == torch.float32, key
    # bf16 *inputs* keep their rounding; the float32 computation adds none of its own:
    torch.testing.assert_close(got["clip"], want["clip"], rtol=1e-6, atol=1e-6)     # bf16 matmul: ~1e-1 off
    torch.testing.assert_close(got["flow"], want["flow"], rtol=1e-5, atol=1e-5)     # bf16 MLPs: ~1e-2 off
    torch.testing.assert_close(got["kl"], vae.gaussian_kl(half(mu).float(), half(logvar).float()))


# --------------------------------------------------------------------------- fit under mixed precision, on the CPU
def _regression(seed=0):
    torch.manual_seed(seed)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)), TensorDataset(x, y)


def test_fit_trains_under_cpu_bf16_autocast(monkeypatch):
    monkeypatch.setattr(dev, "autocast_dtype", lambda device: torch.bfloat16)   # what an A100 gets
    model, data = _regression()
    seen = []

    def loss_fn(m, batch):
        x, y = batch
        out = m(x)
        seen.append(out.dtype)
        return F.mse_loss(out.float(), y)

    result = fit(model, loss_fn, data, steps=60, batch_size=32, lr=1e-2, progress=False)
    assert set(seen) == {torch.bfloat16}                          # the forward ran in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())   # the weights stay float32
    first, last = result.history["loss"][:5], result.history["loss"][-5:]
    assert sum(last) < 0.2 * sum(first)


def test_grad_scaler_skips_a_non_finite_step_and_training_goes_on(monkeypatch):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    monkeypatch.setattr("course_lib.train.amp",
                        lambda device, enabled=True: dev.Amp(torch.device("cpu"), None, scaler))
    model, data = _regression()
    weights = []

    def loss_fn(m, batch):
        x, y = batch
        weights.append(m[0].weight.detach().clone())
        loss = F.mse_loss(m(x), y)
        return loss * math.inf if len(weights) == 3 else loss     # step 3: an overflow

    result = fit(model, loss_fn, data, steps=6, batch_size=32, lr=1e-2, grad_clip=1.0, progress=False)
    losses = result.history["loss"]
    assert result.steps == 6 and not math.isfinite(losses[2]) and all(map(math.isfinite, losses[3:]))
    assert torch.equal(weights[3], weights[2])                    # step 3 was skipped ...
    assert not torch.equal(weights[4], weights[3])                # ... and training went on
    assert scaler.get_scale() == 2.0 ** 9                         # the scale was halved once


def test_a_loss_that_stays_non_finite_still_stops_fit(monkeypatch):
    monkeypatch.setattr("course_lib.train.amp", lambda device, enabled=True: dev.Amp(
        torch.device("cpu"), None, torch.amp.GradScaler("cpu")))
    model, data = _regression()
    with pytest.raises(FloatingPointError, match="scaler skipped the last 10 steps"):
        fit(model, lambda m, b: F.mse_loss(m(b[0]), b[1]) * math.nan, data, steps=30, batch_size=32,
            progress=False)


def test_without_a_scaler_a_non_finite_loss_stops_at_once():
    model, data = _regression()
    with pytest.raises(FloatingPointError, match="at step 1: training diverged"):
        fit(model, lambda m, b: F.mse_loss(m(b[0]), b[1]) * math.nan, data, steps=3, batch_size=32,
            progress=False)


# --------------------------------------------------------------------------- the library on a (fake) GPU
@pytest.mark.parametrize("capability", [(7, 5), (8, 0)])
@in_a_fork
def test_fit_runs_on_a_gpu(capability):
    from course_lib.diffusion.ddpm import ddpm_loss
    from course_lib.diffusion.schedule import NoiseSchedule
    from course_lib.models.unet import UNet

    torch.manual_seed(0)
    unet, schedule = UNet(1, base=8, mults=(1, 2), attn_levels=(1,), num_heads=2), NoiseSchedule.make("linear", 20)
    data = TensorDataset(torch.rand(8, 1, 8, 8) * 2 - 1, torch.zeros(8))
    with fake_cuda(capability) as cuda:
        result = fit(unet, lambda m, b: ddpm_loss(m, b[0], schedule), data, steps=2, batch_size=4,
                     grad_clip=1.0, ema_decay=0.9, device=cuda, progress=False)
        assert next(result.model.parameters()).device == cuda
        assert next(result.ema_model.parameters()).device == cuda


@in_a_fork
def test_text_to_image_notebook_path_on_a_gpu():
    """4 · 07: train the autoencoder and the text-to-image model, generate, attention maps, decode."""
    from course_lib.diffusion.text2image import training_captions, word_attention_maps
    from course_lib.diffusion.latent import encode_dataset

    t2i = _tiny_t2i()
    images = torch.rand(8, 3, 16, 16)
    attrs = torch.zeros(8, 4, dtype=torch.long)
    with fake_cuda() as cuda:
        ae = t2i.autoencoder
        fit(ae, lambda m, b: m.loss(b[0] * 2 - 1)[0], TensorDataset(images), steps=1, batch_size=4,
            device=cuda, progress=False)
        z = encode_dataset(ae, images * 2 - 1)
        assert z.device.type == "cpu"
        fit(t2i, lambda m, b: m.loss(b[0], training_captions(b[1])), TensorDataset(z, attrs), steps=1,
            batch_size=4, device=cuda, progress=False)
        g = torch.Generator().manual_seed(0)
        out = t2i.generate(["a red circle", "a blue square"], steps=3, image_size=16, generator=g)
        z0 = t2i.generate("a red circle", steps=3, image_size=16, generator=g, return_latents=True)
        assert out.device.type == "cpu" and z0.device.type == "cpu"              # helpers return CPU
        z_t = t2i.schedule.q_sample(z0, torch.tensor([10]), torch.randn(z0.shape, generator=g))
        words, maps = word_attention_maps(t2i, "a red circle", z_t, t=10, image_size=16)
        maps.numpy(), t2i.decode_latents(z0).numpy()                              # what the notebook plots


@in_a_fork
def test_samplers_and_guidance_on_a_gpu():
    from course_lib.diffusion import solver
    from course_lib.diffusion.guidance import cfg_sample
    from course_lib.diffusion.schedule import NoiseSchedule
    from course_lib.models.unet import UNet

    torch.manual_seed(0)
    schedule = NoiseSchedule.make("linear", 20)
    unet = UNet(1, base=8, mults=(1, 2), attn_levels=(1,), num_heads=2)
    cond = UNet(1, base=8, mults=(1, 2), attn_levels=(1,), num_heads=2, num_classes=3)
    with fake_cuda() as cuda:
        unet.to(cuda), cond.to(cuda)
        g = torch.Generator().manual_seed(0)
        for rule in (schedule, solver.DDIMRule(schedule, 4, eta=1.0), solver.DDIMRule(schedule, 4)):
            x, frames = solver.sample(unet, (2, 1, 8, 8), rule, generator=g, trajectory_every=2, progress=False)
            assert x.device == cuda and all(f.device.type == "cpu" for f in frames)
        assert cfg_sample(cond, torch.tensor([0, 2]), schedule, 3.0, steps=3, shape=(1, 8, 8),
                          generator=g).device.type == "cpu"


@in_a_fork
def test_probability_flow_ode_keeps_float64_on_the_cpu():
    """4 · 04 on a Mac: the ODE is integrated in float64, which MPS does not have."""
    from course_lib.diffusion.schedule import NoiseSchedule
    from course_lib.diffusion.score import probability_flow_ode
    from course_lib.models.unet import UNet

    torch.manual_seed(0)
    unet, schedule = UNet(1, base=8, mults=(1, 2), attn_levels=(1,), num_heads=2), NoiseSchedule.make("linear", 20)
    with fake_cuda() as cuda:
        unet.to(cuda)
        x = torch.randn(2, 1, 8, 8).to(cuda)
        with torch.no_grad():
            for method in ("euler", "heun"):
                out = probability_flow_ode(unet, x, schedule, 3, method=method)
                assert out.device == cuda and out.dtype == torch.float32


@in_a_fork
def test_flows_and_models_draw_their_noise_on_the_cpu():
    from course_lib.models import gan, vae
    from course_lib.models.flows import dequantize

    flow = _toy_flow()
    with fake_cuda() as cuda:
        flow.to(cuda)
        g = torch.Generator().manual_seed(0)
        assert flow.sample(5, generator=g).device.type == "cpu"
        flow.log_prob(torch.randn(5, 2).to(cuda))
        y = dequantize(torch.randint(0, 256, (2, 3)).to(cuda), generator=g)
        assert y.device == cuda
        mu = torch.zeros(2, 3).to(cuda)
        assert vae.reparameterize(mu, mu).device == cuda
        gan.random_translate(torch.randn(2, 1, 8, 8).to(cuda))


@in_a_fork
def test_metrics_and_checks_on_gpu_tensors():
    from course_lib.checks import compare_outputs
    from course_lib.diffusion.score import energy_distance
    from course_lib.eval.distances import fid_from_features, frechet_distance

    with fake_cuda() as cuda:
        a, b = torch.randn(32, 4).to(cuda), torch.randn(32, 4).to(cuda)
        energy_distance(a, b)
        frechet_distance(a.mean(0), torch.eye(4).to(cuda), b.mean(0), torch.eye(4).to(cuda))
        fid_from_features(a, b)
        compare_outputs(a, b)                                 # a learner's answer on the GPU
