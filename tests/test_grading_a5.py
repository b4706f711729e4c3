"""A5 (GAN losses and the gradient penalty): the graded checks accept right answers, reject the
classic mistakes with a specific hint, make a penalty without ``create_graph`` visible in its
value, refuse answers that call course_lib.models.gan, and the grader's sandboxed re-check catches a
reference call too."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

from course_lib.models import gan as ref
from course_lib.grading import a5
from grading import (assert_check_fails, assert_stub_not_attempted,
                     call_with_references_off, grade_edited_solution)


# ----------------------------------------------------------------------------- answers
def d_loss(real, fake):                       # with logsigmoid, stable for any logit
    return -F.logsigmoid(real).mean() - F.logsigmoid(-fake).mean()


def d_loss_swapped_labels(real, fake):
    return -F.logsigmoid(-real).mean() - F.logsigmoid(fake).mean()


def d_loss_sigmoid_twice(real, fake):
    r, f = torch.sigmoid(real), torch.sigmoid(fake)
    return (F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
            + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)))


def d_loss_one_mean(real, fake):              # half the loss, and wrong weights when B != B'
    logits = torch.cat([real, fake])
    labels = torch.cat([torch.ones_like(real), torch.zeros_like(fake)])
    return F.binary_cross_entropy_with_logits(logits, labels)


def d_loss_unstable(real, fake):
    return -torch.log(torch.sigmoid(real)).mean() - torch.log(1 - torch.sigmoid(fake)).mean()


def d_loss_calls_reference(real, fake):
    return ref.d_loss_minimax(real, fake)


def g_loss(fake):
    return -F.logsigmoid(fake).mean()


def g_loss_minimax(fake):
    return F.logsigmoid(-fake).mean()


def g_loss_label_zero(fake):
    return F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))


def g_loss_sigmoid_twice(fake):
    return F.binary_cross_entropy_with_logits(torch.sigmoid(fake), torch.ones_like(fake))


def wgan_d(real, fake):
    return fake.mean() - real.mean()


def wgan_d_flipped(real, fake):
    return real.mean() - fake.mean()


def wgan_g(fake):
    return -fake.mean()


def wgan_g_flipped(fake):
    return fake.mean()


def wgan_g_calls_reference(fake):
    return ref.wgan_g_loss(fake)


def _x_hat(real, fake, alpha):
    a = alpha.view(-1, *[1] * (real.dim() - 1))
    return (a * real + (1 - a) * fake).detach().requires_grad_(True)


def gp(critic, real, fake, alpha):
    x_hat = _x_hat(real, fake, alpha)
    (g,) = torch.autograd.grad(critic(x_hat), x_hat, grad_outputs=torch.ones(len(real), dtype=real.dtype),
                               create_graph=True)
    return ((g.reshape(len(g), -1).pow(2).sum(1).sqrt() - 1) ** 2).mean()


def gp_without_create_graph(critic, real, fake, alpha):
    x_hat = _x_hat(real, fake, alpha)
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat)
    return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


def gp_via_backward(critic, real, fake, alpha):          # x_hat.grad: no graph either
    x_hat = _x_hat(real, fake, alpha)
    critic(x_hat).sum().backward()
    return ((x_hat.grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def gp_norm_over_channels(critic, real, fake, alpha):
    x_hat = _x_hat(real, fake, alpha)
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((g.norm(2, dim=1) - 1) ** 2).mean()


def gp_norm_of_batch(critic, real, fake, alpha):
    x_hat = _x_hat(real, fake, alpha)
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (g.norm(2) - 1) ** 2


def gp_no_minus_one(critic, real, fake, alpha):
    x_hat = _x_hat(real, fake, alpha)
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (g.flatten(1).norm(dim=1) ** 2).mean()


def gp_alpha_as_given(critic, real, fake, alpha):        # (B,) lines up with the last dim
    x_hat = (alpha * real + (1 - alpha) * fake).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


def gp_own_alpha(critic, real, fake, alpha):
    return gp(critic, real, fake, torch.rand_like(alpha))


def gp_calls_reference(critic, real, fake, alpha):
    return ref.gradient_penalty(critic, real, fake, alpha.view(-1, *[1] * (real.dim() - 1)))


def critic_grads(critic, real, fake, alpha, lam):
    loss = wgan_d(critic(real), critic(fake)) + lam * gp(critic, real, fake, alpha)
    critic.zero_grad()
    loss.backward()
    return [p.grad for p in critic.parameters()]


def critic_grads_detached_penalty(critic, real, fake, alpha, lam):
    loss = wgan_d(critic(real), critic(fake)) + lam * gp(critic, real, fake, alpha).detach()
    return torch.autograd.grad(loss, list(critic.parameters()))


def critic_grads_penalty_subtracted(critic, real, fake, alpha, lam):
    loss = wgan_d(critic(real), critic(fake)) - lam * gp(critic, real, fake, alpha)
    return torch.autograd.grad(loss, list(critic.parameters()))


# ----------------------------------------------------------------------------- checks
def test_right_answers_pass_visible_and_hidden_settings(capsys):
    a5.check_d_loss_nonsaturating(d_loss)
    a5.check_d_loss_nonsaturating(d_loss, sizes=[(1, 7), (16, 16)], scale=30.0, dtype=torch.float64)
    a5.check_g_loss_nonsaturating(g_loss)
    a5.check_g_loss_nonsaturating(g_loss, sizes=[1, 12], scale=30.0)
    a5.check_wgan_d_loss(wgan_d)
    a5.check_wgan_g_loss(wgan_g, sizes=[1, 7], dtype=torch.float64)
    a5.check_gradient_penalty(gp)
    a5.check_gradient_penalty(gp, shapes=[(5, 1, 5, 5), (1, 3, 2, 2), (6, 2, 3)], dtype=torch.float32)
    a5.check_critic_gradients(critic_grads)
    a5.check_critic_gradients(critic_grads, shapes=[(1, 6)], lams=[0.0, 25.0], trials=2)
    assert capsys.readouterr().out.count("✅") == 10


@pytest.mark.parametrize("check, fn, kwargs, words", [
    (a5.check_d_loss_nonsaturating, d_loss_swapped_labels, {}, ["d_loss_nonsaturating", "labels are swapped"]),
    (a5.check_d_loss_nonsaturating, d_loss_sigmoid_twice, {}, ["sigmoid is applied twice"]),
    (a5.check_d_loss_nonsaturating, d_loss_one_mean, {}, ["each averaged over its own batch", "no ½"]),
    (a5.check_d_loss_nonsaturating, d_loss_one_mean, {"sizes": [(4, 6)]},
     ["one mean over real and fakes together weighs them by their batch sizes"]),
    (a5.check_d_loss_nonsaturating, d_loss_unstable, {"scale": 30.0}, ["NaN/inf", "unstable"]),
    (a5.check_g_loss_nonsaturating, g_loss_minimax, {}, ["saturating minimax loss"]),
    (a5.check_g_loss_nonsaturating, g_loss_label_zero, {}, ["wrong label"]),
    (a5.check_g_loss_nonsaturating, g_loss_sigmoid_twice, {}, ["sigmoid is applied twice"]),
    (a5.check_wgan_d_loss, wgan_d_flipped, {}, ["wgan_d_loss", "sign is flipped"]),
    (a5.check_wgan_g_loss, wgan_g_flipped, {}, ["wgan_g_loss", "sign is flipped"]),
    (a5.check_gradient_penalty, gp_without_create_graph, {}, ["NaN", "create_graph=True"]),
    (a5.check_gradient_penalty, gp_via_backward, {}, ["NaN", "create_graph=True"]),
    (a5.check_gradient_penalty, gp_norm_over_channels, {}, ["differ", "over all its non-batch dimensions"]),
    (a5.check_gradient_penalty, gp_norm_of_batch, {}, ["one norm per sample"]),
    (a5.check_gradient_penalty, gp_no_minus_one, {}, ["left out the − 1"]),
    (a5.check_gradient_penalty, gp_alpha_as_given, {}, ["alpha has shape (B,)", "LAST dimension"]),
    (a5.check_gradient_penalty, gp_alpha_as_given, {"shapes": [(3, 5)]},
     ["raised", "alpha has shape (B,): reshape it"]),
    (a5.check_gradient_penalty, gp_own_alpha, {}, ["use the alpha you are given"]),
    (a5.check_critic_gradients, critic_grads_detached_penalty, {}, ["output[0]", "must stay differentiable"]),
    (a5.check_critic_gradients, critic_grads_penalty_subtracted, {}, ["penalty is ADDED"]),
    (a5.check_d_loss_nonsaturating, d_loss_calls_reference, {},
     ["earns nothing", "course_lib.models.gan.d_loss_minimax"]),
    (a5.check_wgan_g_loss, wgan_g_calls_reference, {}, ["earns nothing", "course_lib.models.gan.wgan_g_loss"]),
    (a5.check_gradient_penalty, gp_calls_reference, {}, ["earns nothing", "course_lib.models.gan.gradient_penalty"]),
])
def test_wrong_answers_fail_with_a_specific_message(check, fn, kwargs, words):
    assert_check_fails(check, fn, words, **kwargs)


def test_a_stub_is_not_attempted_and_scores_nothing():
    assert_stub_not_attempted(a5.check_gradient_penalty)


def test_the_test_critic_passes_gradients_only_with_create_graph():
    """The critic the checks hand out: its input gradient is exact with create_graph=True (the
    penalty is then differentiable w.r.t. its weights), NaN without, and it survives pickling
    (the re-check sends it to the learner's sandbox)."""
    gen = torch.Generator().manual_seed(0)
    critic, real, fake, alpha = a5._critic_inputs(gen, (3, 2, 2, 2), torch.float64)
    critic = pickle.loads(pickle.dumps(critic))
    penalty = gp(critic, real, fake, alpha)
    assert torch.isfinite(penalty) and penalty.requires_grad
    grads = torch.autograd.grad(penalty, [critic.W1, critic.b1, critic.w2])   # not b2: a constant
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    torch.testing.assert_close(penalty, ref.gradient_penalty(critic, real, fake, alpha.view(3, 1, 1, 1)))
    assert torch.isnan(gp_without_create_graph(critic, real, fake, alpha))
    # the critic really is the smooth function it says: compare its gradient with finite differences
    x = real[:1].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    e = torch.zeros_like(x)
    e[0, 1, 0, 1] = 1e-6
    fd = (critic(x + e) - critic(x - e)).item() / 2e-6
    assert abs(fd - g[0, 1, 0, 1].item()) < 1e-6


# ----------------------------------------------------------------------------- the grader's re-check
def test_sandbox_side_knows_the_gan_references():
    """In the re-check job course_lib.models.gan's losses are switched off: an answer that reaches one
    is stopped, a right answer is not."""
    from course_lib.grading import zygote
    assert "course_lib.grading.a5" in zygote.PRELOAD
    critic, real, fake, alpha = a5._critic_inputs(torch.Generator().manual_seed(1), (2, 3), torch.float64)
    assert call_with_references_off(a5.REFERENCES, gp_calls_reference, (critic, real, fake, alpha)) \
        == "course_lib.models.gan.gradient_penalty"
    assert call_with_references_off(a5.REFERENCES, gp, (critic, real, fake, alpha)) is None


def test_static_audit_flags_importing_course_lib_gan():
    from course_lib.grading import audit
    findings = audit.inspect_cells([("p4_answer", "from course_lib.models import gan")], set())
    assert any(f.kind == "reference" for f in findings), findings


def test_sandboxed_recheck_catches_a_call_to_the_gan_reference(tmp_path, monkeypatch):
    """Part 4 calls the reference through an alias: the re-check (a separate, sandboxed process,
    which gets the test critic by pickle) must notice, so Part 4 scores 0 and the submission is
    flagged; Part 5 uses the learner's gradient_penalty, so it scores 0 too."""
    from course_lib.grading.pipeline import REVIEW

    source = ("from course_lib.models import gan as helpers\n\n"
              "def gradient_penalty(critic, real, fake, alpha):\n"
              "    a = alpha.view(-1, *[1] * (real.dim() - 1))\n"
              "    return helpers.gradient_penalty(critic, real, fake, a)\n")
    outcome = grade_edited_solution("a5_gan_losses", "p4_answer", source, tmp_path, monkeypatch)
    assert outcome.parts["p4_visible"] == 0 and outcome.parts["p4_hidden"] == 0, outcome.parts
    assert outcome.parts["p5_visible"] == 0 and outcome.parts["p5_hidden"] == 0, outcome.parts
    assert outcome.score == outcome.max_score - 4 - 2, outcome.parts
    assert outcome.status == REVIEW
    assert any("gradient_penalty calls the course reference course_lib.models.gan.gradient_penalty" in r
               for r in outcome.reasons), outcome.reasons
    assert not any("passes when re-checked" in r for r in outcome.reasons), outcome.reasons
