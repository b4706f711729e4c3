"""course_lib.diffusion.guidance: condition dropout, CFG sampling, the noise-aware classifier,
classifier guidance and the sweep measurements."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.diffusion import guidance as G
from course_lib.diffusion.solver import sample
from course_lib.diffusion.schedule import NoiseSchedule, q_sample
from course_lib.diffusion.solver import DDIMRule
from course_lib.eval.sweeps import guidance_sweep, within_class_spread
from course_lib.models.noisy_classifier import NoiseAwareClassifier


class ToyEps(nn.Module):
    """eps(x, t, y) = a x + b_y, with label null = num_classes (a model simple enough to predict)."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.in_ch, self.num_classes = 1, num_classes
        self.a = nn.Parameter(torch.tensor(0.1))
        self.b = nn.Parameter(torch.linspace(-0.5, 0.5, num_classes + 1))
        self.seen = []

    @property
    def null_label(self):
        return self.num_classes

    def forward(self, x, t, y):
        self.seen.append(y.clone())
        return self.a * x + self.b[y].reshape(-1, 1, 1, 1)


# ----------------------------------------------------------------------------- condition dropout
def test_drop_condition_known_answer_and_input_untouched():
    y = torch.tensor([3, 1, 4, 1, 5])
    u = torch.tensor([0.05, 0.5, 0.1, 0.99, 0.0])
    out = G.drop_condition(y, 0.1, null_label=10, u=u)
    assert out.tolist() == [10, 1, 4, 1, 10]                 # dropped where u < p (0.1 is not < 0.1)
    assert y.tolist() == [3, 1, 4, 1, 5]


def test_drop_condition_rate_and_extremes():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (20000,), generator=g)
    out = G.drop_condition(y, 0.2, 10, generator=g)
    assert abs((out == 10).float().mean().item() - 0.2) < 0.01
    assert torch.equal(out[out != 10], y[out != 10])         # kept labels are unchanged
    assert torch.equal(G.drop_condition(y, 0.0, 10, generator=g), y)
    assert (G.drop_condition(y, 1.0, 10, generator=g) == 10).all()


def test_drop_condition_errors():
    with pytest.raises(ValueError, match="p"):
        G.drop_condition(torch.tensor([1]), 1.5, 10)
    with pytest.raises(TypeError, match="integer"):
        G.drop_condition(torch.tensor([1.0]), 0.1, 10)


def test_cfg_loss_drops_labels_at_the_rate_and_rejects_the_null_label():
    model, s = ToyEps(3), NoiseSchedule.make("linear", 50)
    g = torch.Generator().manual_seed(0)
    x0, y = torch.rand(4000, 1, 2, 2) * 2 - 1, torch.randint(0, 3, (4000,), generator=g)
    loss = G.cfg_loss(model, x0, y, s, p_uncond=0.25, generator=g)
    assert loss.ndim == 0 and torch.isfinite(loss)
    seen = model.seen[-1]
    assert abs((seen == 3).float().mean().item() - 0.25) < 0.03
    assert torch.equal(seen[seen != 3], y[seen != 3])
    loss.backward()
    assert model.b.grad[3] != 0                                # the null embedding is trained too
    with pytest.raises(ValueError, match="null label"):
        G.cfg_loss(model, x0[:2], torch.tensor([0, 3]), s)
    # prediction="v" reaches the DDPM loss: the same draws give a different target
    losses = [G.cfg_loss(model, x0[:64], y[:64], s, generator=torch.Generator().manual_seed(1), prediction=p).item()
              for p in ("eps", "v")]
    assert abs(losses[0] - losses[1]) > 1e-3


# ----------------------------------------------------------------------------- classifier-free guidance
def test_cfg_combine_and_convention_report():
    eu, ec = torch.randn(2, 5), torch.randn(2, 5)
    torch.testing.assert_close(G.cfg_combine(eu, ec, 1.0), ec)
    torch.testing.assert_close(G.cfg_combine(eu, ec, 0.0), eu)
    torch.testing.assert_close(G.cfg_combine(eu, ec, 3.0), 3 * ec - 2 * eu)
    assert G.guidance_convention_report(G.cfg_combine).startswith("✅")
    paper = G.guidance_convention_report(lambda u, c, s: (1 + s) * c - s * u)
    assert paper.startswith("❌") and "paper" in paper
    swapped = G.guidance_convention_report(lambda u, c, s: c + s * (u - c))
    assert swapped.startswith("❌") and "swapped" in swapped

    def stub(u, c, s):
        raise NotImplementedError
    assert G.guidance_convention_report(stub).startswith("⏳")
    assert G.guidance_convention_report(lambda u, c, s: None).startswith("❌")


def test_cfg_sample_scales_mean_unconditional_conditional_and_mix():
    model, s = ToyEps(3), NoiseSchedule.make("linear", 40)
    labels = torch.tensor([0, 1, 2, 2])
    run = lambda scale: G.cfg_sample(model, labels, s, scale, steps=5, shape=(1, 2, 2),  # noqa: E731
                                     generator=torch.Generator().manual_seed(1))
    plain = lambda y: sample(G.ClassifierFreeGuidance(model, {"y": y}), (4, 1, 2, 2), DDIMRule(s, 5),  # noqa: E731
                             progress=False, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(run(1.0), plain(labels))                        # s = 1: conditional
    torch.testing.assert_close(run(0.0), plain(torch.full_like(labels, 3)))    # s = 0: null label only
    # s = 2 on this linear model: eps = a x + b_u + 2 (b_y - b_u) = a x + b_{2y - u} in label space
    mixed = ToyEps(3)
    with torch.no_grad():
        mixed.b.copy_(2 * model.b - model.b[3])
    torch.testing.assert_close(run(2.0), sample(G.ClassifierFreeGuidance(mixed, {"y": labels}), (4, 1, 2, 2),
                                                DDIMRule(s, 5), progress=False,
                                                generator=torch.Generator().manual_seed(1)))


# ----------------------------------------------------------------------------- noise-aware classifier
def _randomised(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in module.parameters():
        nn.init.normal_(p, std=0.3)
    return module


def test_classifier_shapes_errors_and_time_dependence():
    clf = NoiseAwareClassifier(1, 10, base=8)
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([0, 10, 99])
    assert clf(x, t).shape == (3, 10)
    _randomised(clf)        # the zero-initialised ResBlock convs would hide t at initialisation
    same_x = x[:1].expand(2, -1, -1, -1)
    out = clf(same_x, torch.tensor([0, 99]))
    assert not torch.allclose(out[0], out[1], atol=1e-4), "the classifier ignores t"
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        clf(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        clf(x, torch.tensor([0.5, 1.0, 2.0]))


def test_noisy_classifier_loss_sees_q_sample_of_the_batch():
    seen = {}

    def fake(xt, t):
        seen["xt"], seen["t"] = xt, t
        return torch.stack([-xt.mean((1, 2, 3)), xt.mean((1, 2, 3))], dim=1)

    s = NoiseSchedule.make("linear", 30)
    x0, y = torch.rand(6, 1, 4, 4) * 2 - 1, torch.tensor([0, 1, 0, 1, 1, 0])
    loss, logs = G.noisy_classifier_loss(fake, x0, y, s, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 30, (6,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(seen["t"], t)
    torch.testing.assert_close(seen["xt"], q_sample(x0, t, noise, s))
    logits = fake(seen["xt"], t)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y))
    assert logs["acc"] == (logits.argmax(1) == y).float().mean().item()


def test_classifier_learns_a_noisy_two_class_problem():
    """Bright vs dark images, seen through noise: a few steps must beat chance clearly."""
    torch.manual_seed(0)
    s = NoiseSchedule.make("linear", 100)
    clf = NoiseAwareClassifier(1, 2, base=8, mults=(1, 2))
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        y = torch.randint(0, 2, (32,), generator=g)
        x0 = (y.float() * 2 - 1).reshape(-1, 1, 1, 1).expand(-1, 1, 4, 4) * 0.8
        loss, _ = G.noisy_classifier_loss(clf, x0, y, s, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    y = torch.arange(2).repeat(100)
    x0 = (y.float() * 2 - 1).reshape(-1, 1, 1, 1).expand(-1, 1, 4, 4) * 0.8
    t = torch.full((200,), 20)
    xt = q_sample(x0, t, torch.randn(x0.shape, generator=g), s)
    acc = (clf(xt, t).argmax(1) == y).float().mean().item()
    assert acc > 0.9, acc


# ----------------------------------------------------------------------------- classifier guidance
def test_classifier_log_prob_is_the_log_softmax_of_the_wanted_class():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    fn = G.classifier_log_prob(lambda x, t: logits, torch.tensor([2, 0]))
    want = torch.log_softmax(logits, 1)[[0, 1], [2, 0]]
    torch.testing.assert_close(fn(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)), want)


def test_classifier_guidance_fn_moves_eps_against_the_gradient():
    s = NoiseSchedule.make("cosine", 50)
    target = torch.randn(3, 1, 4, 4)
    log_prob = lambda x, t: -0.5 * ((x - target) ** 2).sum((1, 2, 3))   # noqa: E731  grad = target - x
    model = lambda x, t, y: 0.3 * x + y.reshape(-1, 1, 1, 1)            # noqa: E731
    y = torch.tensor([1.0, 2.0, 3.0])
    fn = G.classifier_guidance_fn(model, log_prob, s, scale=2.5, model_kwargs={"y": y})
    x, t = torch.randn(3, 1, 4, 4), torch.tensor([0, 20, 49])
    a = s.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    want = model(x, t, y) - 2.5 * (1 - a).sqrt() * (target - x)
    with torch.no_grad():                                               # sample() calls it under no_grad
        got = fn(x, t)
    torch.testing.assert_close(got, want)
    late = G.classifier_guidance_fn(model, log_prob, s, scale=2.5, model_kwargs={"y": y}, t_min=20)
    with torch.no_grad():
        got = late(x, t)
    torch.testing.assert_close(got[1:], want[1:])                       # t = 20, 49: guided
    torch.testing.assert_close(got[:1], model(x, t, y)[:1])             # t = 0 < t_min: the model alone


# ----------------------------------------------------------------------------- measuring a sweep
def test_class_labels_and_within_class_spread_known_answers():
    assert G.class_labels(2, 3).tolist() == [0, 0, 1, 1, 2, 2]
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0], [9.0, 9.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])                               # class 2 has one sample: skipped
    out = within_class_spread(f, labels)
    assert out["per_class"] == pytest.approx({0: 5.0, 1: 0.0})
    assert out["mean"] == pytest.approx(2.5)
    three = within_class_spread(torch.tensor([[0.0], [1.0], [3.0]]), torch.zeros(3))
    assert three["mean"] == pytest.approx((1 + 3 + 2) / 3)               # mean over the 3 pairs
    with pytest.raises(ValueError):
        within_class_spread(torch.zeros(3, 2), torch.zeros(4))


def test_guidance_sweep_on_real_digits_reads_high_accuracy_and_relative_spread_one():
    from course_lib.data import load_dataset
    from course_lib.eval import extract_features

    ds = load_dataset("digits", "test")
    x = torch.stack([ds[i][0] for i in range(200)])
    y = torch.tensor([ds[i][1] for i in range(200)])
    real = within_class_spread(extract_features(x), y)["mean"]
    rows, images = guidance_sweep(lambda s: x, [0.0, 2.0], y, real_spread=real, progress=False)
    assert [r["scale"] for r in rows] == [0.0, 2.0] and set(images) == {0.0, 2.0}
    assert rows[0]["accuracy"] > 0.9
    assert rows[0]["relative_spread"] == pytest.approx(1.0)
    wrong = guidance_sweep(lambda s: x, [1.0], (y + 1) % 10, progress=False)[0]
    assert wrong[0]["accuracy"] < 0.1
    assert not math.isnan(wrong[0]["spread"])
