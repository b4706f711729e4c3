"""course_lib.models.gan: the GAN losses against hand-computed values, the saturation argument,
the gradient penalty, the DCGAN/MLP networks, spectral norm and the training loop."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from course_lib.models.gan import (Discriminator, Generator, MLPDiscriminator, MLPGenerator, d_loss_minimax,
                                   d_loss_nonsaturating, g_loss_minimax, g_loss_nonsaturating, gan_loop,
                                   gradient_penalty, has_spectral_norm, mode_coverage, random_translate, slerp,
                                   train_gan, wgan_d_loss, wgan_g_loss)
from course_lib.train import EMA


@pytest.fixture(autouse=True)
def _on_the_cpu(monkeypatch):
    """These tests compare numbers with CPU tensors made here: fit picks the CPU even on a GPU host
    (tests/test_devices.py runs the same code on a GPU's device)."""
    monkeypatch.setenv("COURSE_DEVICE", "cpu")


LOG3 = math.log(3.0)


# --------------------------------------------------------------------------- losses
def test_discriminator_losses_match_hand_computed_values():
    # D = σ(ℓ): real logits 0, log 3 → D = 1/2, 3/4; fake logits 0, −log 3 → D = 1/2, 1/4
    real, fake = torch.tensor([0.0, LOG3]), torch.tensor([0.0, -LOG3])
    want = -(math.log(0.5) + math.log(0.75)) / 2 - (math.log(1 - 0.5) + math.log(1 - 0.25)) / 2
    assert d_loss_minimax(real, fake).item() == pytest.approx(want, rel=1e-6)
    assert d_loss_nonsaturating(real, fake).item() == pytest.approx(want, rel=1e-6)
    # swapping real and fake must make it worse: the loss is not symmetric
    assert d_loss_minimax(fake, real).item() > want + 0.5


def test_generator_losses_match_hand_computed_values():
    fake = torch.tensor([0.0, -LOG3])                             # D(G(z)) = 1/2, 1/4
    assert g_loss_minimax(fake).item() == pytest.approx((math.log(0.5) + math.log(0.75)) / 2, rel=1e-6)
    assert g_loss_nonsaturating(fake).item() == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2,
                                                              rel=1e-6)


def test_wasserstein_losses_match_hand_computed_values():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0, 5.0])
    assert wgan_d_loss(real, fake).item() == pytest.approx(1.0 - 2.0)    # mean f(fake) − mean f(real)
    assert wgan_g_loss(fake).item() == pytest.approx(-1.0)


def test_losses_accept_b1_and_reject_bad_shapes():
    x = torch.randn(5, 1)
    assert g_loss_nonsaturating(x).item() == pytest.approx(g_loss_nonsaturating(x[:, 0]).item())
    with pytest.raises(ValueError, match=r"\(B,\)"):
        d_loss_minimax(torch.randn(4, 2), torch.randn(4))
    with pytest.raises(TypeError):
        wgan_g_loss([1.0, 2.0])


def test_nonsaturating_gradient_does_not_vanish_when_d_rejects_the_fakes():
    # Early in training D(G(z)) ≈ 0: ℓ = −8 gives D = σ(−8) ≈ 3.4e-4.
    logits = torch.full((4,), -8.0, requires_grad=True)
    (grad_minimax,) = torch.autograd.grad(g_loss_minimax(logits), logits)
    (grad_ns,) = torch.autograd.grad(g_loss_nonsaturating(logits), logits)
    d = torch.sigmoid(torch.tensor(-8.0))
    # closed forms, per sample (the losses are means over B = 4): −σ(ℓ)/B and (σ(ℓ) − 1)/B
    torch.testing.assert_close(grad_minimax, torch.full((4,), -d / 4))
    torch.testing.assert_close(grad_ns, torch.full((4,), (d - 1) / 4))
    # both push ℓ up (negative gradient of a loss to minimise), but minimax only barely
    assert (grad_minimax < 0).all() and (grad_ns < 0).all()
    assert grad_ns.abs().min() > 1000 * grad_minimax.abs().max()


# --------------------------------------------------------------------------- gradient penalty
def _linear_critic(w: torch.Tensor):
    return lambda x: x.flatten(1) @ w                            # f(x) = w · x, ∇f = w everywhere


def test_gradient_penalty_is_zero_for_a_unit_norm_linear_critic():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, generator=g)
    real, fake = torch.randn(6, 3, 2, 2, generator=g), torch.randn(6, 3, 2, 2, generator=g)
    gp = gradient_penalty(_linear_critic(w / w.norm()), real, fake)
    assert gp.item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_is_positive_and_differentiable_otherwise():
    g = torch.Generator().manual_seed(1)
    w = (2.0 * torch.nn.functional.normalize(torch.randn(8, generator=g), dim=0)).requires_grad_(True)
    real, fake = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    gp = gradient_penalty(_linear_critic(w), real, fake)
    assert gp.item() == pytest.approx(1.0, rel=1e-5)             # (‖w‖ − 1)² = (2 − 1)²
    (grad_w,) = torch.autograd.grad(gp, w)                       # needs create_graph=True
    # d/dw (‖w‖ − 1)² = 2(‖w‖ − 1) w / ‖w‖ = w when ‖w‖ = 2
    torch.testing.assert_close(grad_w, w.detach())


def test_gradient_penalty_interpolates_with_alpha():
    # f(x) = ½‖x‖² has ∇f(x̂) = x̂, so GP = mean (‖x̂‖ − 1)² with x̂ = α·real + (1 − α)·fake
    real, fake = torch.full((2, 4), 2.0), torch.zeros(2, 4)
    alpha = torch.tensor([[0.25], [0.9]])
    gp = gradient_penalty(lambda x: 0.5 * (x ** 2).sum(1), real, fake, alpha=alpha)
    norms = 4.0 * alpha[:, 0]                                    # ‖α·2·1‖ over 4 numbers = 4α
    assert gp.item() == pytest.approx(((norms - 1) ** 2).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(lambda x: x.sum(1), real, fake[:1])


# --------------------------------------------------------------------------- networks
@pytest.mark.parametrize("size,channels", [(8, 1), (16, 1), (28, 1), (32, 3)])
def test_dcgan_shapes_and_ranges(size, channels):
    torch.manual_seed(0)
    G, D = Generator(16, channels, size, width=8), Discriminator(channels, size, width=8)
    x = G(G.sample_z(5))
    assert x.shape == (5, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1 and x.min() < 0 < x.max()  # tanh output in [-1, 1]
    assert D(x).shape == (5,)
    with pytest.raises(ValueError, match="expects"):
        D(torch.zeros(5, channels, size + 2, size + 2))


def test_dcgan_layers_follow_the_recipe():
    G, D = Generator(16, 1, 16, 8), Discriminator(1, 16, 8)
    g_types, d_types = {type(m) for m in G.modules()}, {type(m) for m in D.modules()}
    assert torch.nn.BatchNorm2d in g_types and torch.nn.ConvTranspose2d in g_types
    assert torch.nn.LeakyReLU in d_types and torch.nn.BatchNorm2d not in d_types
    assert all(m.stride == (2, 2) for m in D.modules() if isinstance(m, torch.nn.Conv2d))
    with pytest.raises(ValueError, match="image_size"):
        Generator(16, 1, 6, 8)


def test_mixture_prior_samples_around_fixed_means_and_travels_with_the_weights():
    plain = Generator(16, 1, 16, 8)
    want = torch.randn(6, 16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain.sample_z(6, generator=torch.Generator().manual_seed(3)), want)   # default: N(0, I)
    G = Generator(16, 1, 16, 8, prior_components=5, prior_std=0.1, prior_seed=7)
    means = torch.randn(5, 16, generator=torch.Generator().manual_seed(7))
    assert torch.equal(G.prior_means, means) and "prior_means" in G.state_dict()
    z = G.sample_z(2000, generator=torch.Generator().manual_seed(0))
    d = torch.cdist(z, means)                                    # (2000, 5)
    nearest = d.min(1)
    # each z sits at about prior_std * sqrt(16) = 0.4 from its own mean, far from the others (~ sqrt(32))
    assert nearest.values.mean().item() == pytest.approx(0.1 * math.sqrt(16), rel=0.1)
    assert torch.bincount(nearest.indices, minlength=5).min() > 300          # every component is used
    same = G.sample_z(4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(same, G.sample_z(4, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(copy.deepcopy(G).sample_z(4, generator=torch.Generator().manual_seed(1)), same)   # an EMA copy
    for bad in ({"prior_components": -1}, {"prior_components": 2.5}, {"prior_components": 3, "prior_std": 0.0}):
        with pytest.raises(ValueError, match="prior"):
            Generator(16, 1, 16, 8, **bad)


def test_mlp_networks_shapes():
    G, D = MLPGenerator(3, 2, 32), MLPDiscriminator(2, 32)
    z = G.sample_z(7)
    assert z.shape == (7, 3) and G(z).shape == (7, 2) and D(G(z)).shape == (7,)


@pytest.mark.parametrize("make", [lambda sn: MLPDiscriminator(2, 32, spectral_norm=sn),
                                  lambda sn: Discriminator(1, 16, 8, spectral_norm=sn)])
def test_spectral_norm_makes_the_discriminator_scale_invariant(make):
    torch.manual_seed(0)
    D = make(True)
    assert has_spectral_norm(D) and not has_spectral_norm(make(False))
    x = torch.randn(4, 2) if isinstance(D, MLPDiscriminator) else torch.randn(4, 1, 16, 16)
    D.train()
    for _ in range(30):                                          # power iteration converges
        D(x)
    D.eval()
    before = D(x)
    # W_SN = W / σ(W): multiplying every raw weight by 10 must not change the network
    with torch.no_grad():
        for m in D.modules():
            if hasattr(m, "parametrizations"):
                m.parametrizations.weight.original.mul_(10.0)
    torch.testing.assert_close(D(x), before, rtol=1e-3, atol=1e-4)
    for m in D.modules():                                        # every layer has σ(W_SN) ≈ 1
        if isinstance(m, torch.nn.Linear):
            assert torch.linalg.matrix_norm(m.weight, ord=2).item() == pytest.approx(1.0, rel=1e-2)


# --------------------------------------------------------------------------- training, modes
def test_mode_coverage_counts_modes():
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    all_modes = centres.repeat(10, 1) + 0.01
    one_mode = centres[:1].repeat(30, 1)
    assert mode_coverage(all_modes, centres, std=0.1)["modes"] == 3
    result = mode_coverage(one_mode, centres, std=0.1)
    assert result["modes"] == 1 and result["counts"] == [30, 0, 0]
    # a mode with 1 of 30 samples is below a quarter of its fair share (1/12): not covered
    stray = torch.cat([centres[:1].repeat(29, 1), centres[1:2]])
    assert mode_coverage(stray, centres, std=0.1)["modes"] == 1
    far = mode_coverage(all_modes + 2.0, centres, std=0.1)       # nowhere near any centre
    assert far["modes"] == 0 and far["high_quality"] == 0.0


@pytest.mark.parametrize("loss,n_critic", [("nonsaturating", 1), ("wgan-gp", 2), ("minimax", 1)])
def test_train_gan_runs_and_records(loss, n_critic):
    torch.set_num_threads(1)
    data = torch.randn(256, 2) * 0.1 + torch.tensor([2.0, -1.0])
    G, D = MLPGenerator(2, 2, 16, 2), MLPDiscriminator(2, 16, 2)
    initial = [p.detach().clone() for p in G.parameters()]
    h = train_gan(G, D, data, steps=6, loss=loss, batch_size=32, n_critic=n_critic, ema_decay=0.9,
                  snapshot_every=3, n_snapshot=10, progress=False)
    assert len(h.d_loss) == len(h.g_loss) == 6 and h.snapshot_steps == [1, 3, 6]
    assert h.snapshots.shape == (3, 10, 2)
    assert h.generator is not G and not h.generator.training     # the EMA copy ...
    ema_params, g_params = list(h.generator.parameters()), list(G.parameters())
    assert all(not torch.equal(e, i) for e, i in zip(ema_params, initial))   # ... was updated
    assert any(not torch.equal(e, p) for e, p in zip(ema_params, g_params))  # ... and lags G
    if loss == "nonsaturating":                                  # −log D > 0
        assert min(h.g_loss) > 0
    if loss == "minimax":                                        # log(1 − D) < 0
        assert max(h.g_loss) < 0
    assert (max(h.gp) > 0) == (loss == "wgan-gp")
    with pytest.raises(ValueError, match="loss"):
        train_gan(G, D, data, steps=1, loss="hinge")


def test_train_gan_learns_to_move_towards_the_data():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    target = torch.tensor([2.0, -1.0])
    data = torch.randn(2048, 2) * 0.2 + target
    G, D = MLPGenerator(2, 2, 32, 2), MLPDiscriminator(2, 32, 2)
    before = (G(G.sample_z(500)).mean(0) - target).norm().item()
    h = train_gan(G, D, data, steps=200, batch_size=128, lr_g=2e-3, lr_d=2e-3, seed=0, progress=False)
    with torch.no_grad():
        after = (h.generator(G.sample_z(500)).mean(0) - target).norm().item()
    assert after < 0.5 and after < before / 4


def test_random_translate_moves_whole_images_and_passes_gradients():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3, 4] = 1.0                                          # one bright pixel per image
    x.requires_grad_(True)
    y = random_translate(x, max_shift=2)
    assert y.shape == x.shape
    where = y[:, 0].detach().flatten(1).argmax(1)
    rows, cols = where // 8 - 3, where % 8 - 4                   # the shift of each image
    assert rows.abs().max() <= 2 and cols.abs().max() <= 2
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 5       # shifts differ per image
    assert torch.allclose(y.detach().sum((1, 2, 3)), torch.ones(64))   # the pixel is moved, not lost
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert grad[:, 0, 3, 4].eq(1).all()                          # d y / d x flows back
    torch.testing.assert_close(random_translate(x, max_shift=0), x)


def test_train_gan_augments_real_and_fake_before_d():
    seen = []

    def augment(x):
        seen.append(x.shape[0])
        return x + 0.0

    data = torch.randn(64, 2)
    train_gan(MLPGenerator(2, 2, 8, 1), MLPDiscriminator(2, 8, 1), data, steps=3, n_critic=2,
              batch_size=16, augment=augment, progress=False)
    assert len(seen) == 3 * (2 * 2 + 1)                          # real + fake per D step, fake per G step


# --------------------------------------------------------------------------- gan_loop
def _pair(seed=0):
    torch.manual_seed(seed)
    G, D = MLPGenerator(2, 2, 8, 1), MLPDiscriminator(2, 8, 1)
    return G, D, torch.optim.Adam(G.parameters(), 1e-2), torch.optim.Adam(D.parameters(), 1e-2)


def _stream(G, seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(16, 2, generator=g) + 3
        yield x, G(torch.randn(16, 2, generator=g))


def _d_loss(D):
    return lambda b: d_loss_nonsaturating(D(b[0]), D(b[1].detach()))


def _g_loss(D):
    return lambda b: (g_loss_nonsaturating(D(b[1])), {"fake mean": b[1].mean()})


def test_gan_loop_equals_the_hand_written_loop():
    G, D, opt_g, opt_d = _pair()                                  # by hand: D step, G step, EMA
    ema, stream, d_losses = EMA(G, 0.9), _stream(G), []
    for _ in range(5):
        batch = next(stream)
        loss_d = _d_loss(D)(batch)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g, _ = _g_loss(D)(batch)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        ema.update(G)
        d_losses.append(loss_d.item())
    G2, D2, opt_g2, opt_d2 = _pair()
    h = gan_loop(_d_loss(D2), _g_loss(D2), _stream(G2), opt_d2, opt_g2, steps=5, G=G2,
                 ema_decay=0.9, progress=False)
    for a, b in zip([*G.parameters(), *D.parameters(), *ema.model.parameters()],
                    [*G2.parameters(), *D2.parameters(), *h.generator.parameters()]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert h.curves["D loss"] == d_losses
    assert list(h.curves) == ["D loss", "G loss", "fake mean"] and len(h.curves["fake mean"]) == 5


def test_gan_loop_order_critic_steps_and_schedulers():
    calls = []
    G, D, opt_g, opt_d = _pair()
    batches = iter(range(100))

    def d_loss(b):
        calls.append(("D", b))
        return D(torch.full((1, 2), float(b))).mean() * 0 + b

    def g_loss(b):
        calls.append(("G", b))
        return G(torch.zeros(1, 2)).mean() * 0 + 10 * b

    sched = torch.optim.lr_scheduler.StepLR(opt_g, step_size=1, gamma=0.5)
    h = gan_loop(d_loss, g_loss, batches, opt_d, opt_g, steps=2, n_critic=3, schedulers=[sched],
                 progress=False)
    assert calls == [("D", 0), ("D", 1), ("D", 2), ("G", 2), ("D", 3), ("D", 4), ("D", 5), ("G", 5)]
    assert h.curves["D loss"] == [1.0, 4.0] and h.curves["G loss"] == [20.0, 50.0]  # critic mean
    assert opt_g.param_groups[0]["lr"] == pytest.approx(1e-2 / 4)
    calls.clear()
    gan_loop(d_loss, g_loss, iter(range(100)), opt_d, opt_g, steps=2, g_first=True, progress=False)
    assert calls == [("G", 0), ("D", 0), ("G", 1), ("D", 1)]


def test_gan_loop_clear_errors():
    G, D, opt_g, opt_d = _pair()
    with pytest.raises(TypeError, match="scalar tensor"):
        gan_loop(lambda b: D(b[0]), _g_loss(D), _stream(G), opt_d, opt_g, steps=1, progress=False)
    with pytest.raises(ValueError, match="n_critic must be 1"):
        gan_loop(_d_loss(D), _g_loss(D), _stream(G), opt_d, opt_g, steps=1, n_critic=2, g_first=True)
    with pytest.raises(ValueError, match="ran out at generator step 4 of 5"):
        gan_loop(lambda b: D(b).mean(), lambda b: G(b).mean(),
                 [torch.zeros(1, 2)] * 3, opt_d, opt_g,            # three batches: steps 1-3
                 steps=5, progress=False)
    with pytest.raises(ValueError, match="pass G="):
        gan_loop(_d_loss(D), _g_loss(D), _stream(G), opt_d, opt_g, steps=1, ema_decay=0.9)


def test_slerp_ends_norm_and_angle():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    torch.testing.assert_close(slerp(a, b, torch.zeros(5, 1)), a)              # t = 0: a
    torch.testing.assert_close(slerp(a, b, torch.ones(5, 1)), b)               # t = 1: b
    u, v = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    mid = slerp(u, v, torch.full((5, 1), 0.5))                                  # unit vectors stay unit
    torch.testing.assert_close(mid.norm(dim=1), torch.ones(5))
    angle = lambda x, y: torch.acos((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)))  # noqa: E731
    torch.testing.assert_close(angle(u, mid), angle(u, v) / 2)                 # halfway round the circle
    path = slerp(a[None], b[None], torch.linspace(0, 1, 7)[:, None, None])     # a whole path (T, B, D)
    assert path.shape == (7, 5, 16)
    torch.testing.assert_close(path[3], slerp(a, b, torch.full((5, 1), 0.5)))
    with pytest.raises(ValueError, match="last dimension"):
        slerp(a, b[:, :3], torch.zeros(5, 1))
