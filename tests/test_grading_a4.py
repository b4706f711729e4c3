"""A4 (the loss of a VAE): the graded checks accept right answers, reject the classic mistakes
with a specific hint, refuse answers that call course_lib.models.vae, and the grader's sandboxed
re-check catches a reference call too."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib.models import vae as ref
from course_lib.checks import CheckFailure, RemoteCallable
from course_lib.grading import a4
from grading import (assert_check_fails, assert_stub_not_attempted,
                     call_with_references_off, grade_edited_solution)


# ----------------------------------------------------------------------------- answers
def reparameterize(mu, logvar, eps):
    return mu + torch.exp(0.5 * logvar) * eps


def reparameterize_variance(mu, logvar, eps):          # forgets the ½
    return mu + torch.exp(logvar) * eps


def reparameterize_logvar_as_std(mu, logvar, eps):
    return mu + logvar * eps


def reparameterize_own_noise(mu, logvar, eps):
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def reparameterize_calls_reference(mu, logvar, eps):
    return ref.reparameterize(mu, logvar, eps)


def kl(mu, logvar):
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def kl_mean_over_dims(mu, logvar):
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def kl_summed_over_batch(mu, logvar):
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def kl_wrong_sign(mu, logvar):
    return 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def kl_std_for_variance(mu, logvar):
    return 0.5 * torch.sum(mu ** 2 + torch.exp(0.5 * logvar) - logvar - 1, dim=1)


def kl_through_per_dim_reference(mu, logvar):
    return ref.gaussian_kl_per_dim(mu, logvar).sum(dim=1)


def nll(logits, x):
    # log(1 + e^l) - x l, written stably
    return (logits.clamp(min=0) - logits * x + torch.log1p(torch.exp(-logits.abs()))).flatten(1).sum(1)


def nll_mean_over_pixels(logits, x):
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).mean(1)


def nll_sigmoid_twice(logits, x):
    p = torch.sigmoid(logits)
    return F.binary_cross_entropy_with_logits(p, x, reduction="none").flatten(1).sum(1)


def nll_bce_on_logits(logits, x):                  # F.binary_cross_entropy wants probabilities
    return F.binary_cross_entropy(logits, x, reduction="none").flatten(1).sum(1)


def nll_unstable(logits, x):                       # right for small logits, inf/NaN for large ones
    p = torch.sigmoid(logits)
    return (-(x * torch.log(p) + (1 - x) * torch.log(1 - p))).flatten(1).sum(1)


def nll_last_dim_only(logits, x):                  # right for (B, D), wrong for images
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def elbo(recon_logits, x, mu, logvar, beta=1.0):
    n, k = nll(recon_logits, x), kl(mu, logvar)
    return {"loss": (n + beta * k).mean(), "nll": n, "kl": k}


def elbo_sum_over_batch(recon_logits, x, mu, logvar, beta=1.0):
    n, k = nll(recon_logits, x), kl(mu, logvar)
    return {"loss": (n + beta * k).sum(), "nll": n, "kl": k}


def elbo_beta_on_nll(recon_logits, x, mu, logvar, beta=1.0):
    n, k = nll(recon_logits, x), kl(mu, logvar)
    return {"loss": (beta * n + k).mean(), "nll": n, "kl": k}


def elbo_minus_kl(recon_logits, x, mu, logvar, beta=1.0):
    n, k = nll(recon_logits, x), kl(mu, logvar)
    return {"loss": (n - beta * k).mean(), "nll": n, "kl": k}


def elbo_batch_means(recon_logits, x, mu, logvar, beta=1.0):
    n, k = nll(recon_logits, x), kl(mu, logvar)
    return {"loss": (n + beta * k).mean(), "nll": n.mean(), "kl": k.mean()}


def elbo_calls_reference(recon_logits, x, mu, logvar, beta=1.0):
    return ref.elbo_loss(recon_logits, x, mu, logvar, beta)


# ----------------------------------------------------------------------------- checks
def test_right_answers_pass_visible_and_hidden_settings(capsys):
    a4.check_reparameterize(reparameterize)
    a4.check_reparameterize(reparameterize, sizes=[(1, 5), (7, 1)], spread=3.0, dtype=torch.float64)
    a4.check_gaussian_kl(kl)
    a4.check_gaussian_kl(kl, sizes=[(1, 8), (6, 1)], spread=2.5, dtype=torch.float64)
    a4.check_gaussian_kl(kl, zero=True, trials=1)
    a4.check_bernoulli_nll(nll)
    a4.check_bernoulli_nll(nll, shapes=[(2, 3, 5, 5), (5, 12)], binary=True, dtype=torch.float64)
    a4.check_bernoulli_nll(nll, shapes=[(4, 1, 8, 8)], scale=40.0, binary=True, trials=2)
    a4.check_elbo_loss(elbo)
    a4.check_elbo_loss(elbo, shapes=[(1, 1, 8, 8), (3, 20)], latent=5, betas=[0.0, 8.0],
                       dtype=torch.float64)
    assert capsys.readouterr().out.count("✅") == 10


@pytest.mark.parametrize("check, fn, kwargs, words", [
    (a4.check_reparameterize, reparameterize_variance, {}, ["differ", "exp(0.5 * logvar)", "variance"]),
    (a4.check_reparameterize, reparameterize_logvar_as_std, {}, ["not the standard deviation"]),
    (a4.check_reparameterize, reparameterize_own_noise, {}, ["use the eps you are given"]),
    (a4.check_gaussian_kl, kl_mean_over_dims, {}, ["gaussian_kl", "sum over the latent dimensions"]),
    (a4.check_gaussian_kl, kl_summed_over_batch, {}, ["has shape ()", "one KL per sample"]),
    (a4.check_gaussian_kl, kl_wrong_sign, {}, ["sign is flipped"]),
    (a4.check_gaussian_kl, kl_std_for_variance, {}, ["not the standard deviation exp(0.5 * logvar)"]),
    (a4.check_bernoulli_nll, nll_mean_over_pixels, {}, ["bernoulli_nll", "sum over the pixels"]),
    (a4.check_bernoulli_nll, nll_sigmoid_twice, {}, ["sigmoid is applied twice"]),
    (a4.check_bernoulli_nll, nll_bce_on_logits, {}, ["raised", "wants probabilities; you have logits"]),
    (a4.check_bernoulli_nll, nll_unstable, {"scale": 40.0, "binary": True},
     ["NaN/inf", "sigmoid then log is unstable"]),
    (a4.check_bernoulli_nll, nll_last_dim_only, {}, ["has shape (4, 1, 6)"]),
    (a4.check_elbo_loss, elbo_sum_over_batch, {}, ["output['loss']", "MEAN over the batch"]),
    (a4.check_elbo_loss, elbo_beta_on_nll, {}, ["beta weighs the KL term"]),
    (a4.check_elbo_loss, elbo_minus_kl, {}, ["add the KL"]),
    (a4.check_elbo_loss, elbo_batch_means, {}, ["output['nll'] has shape ()", "per image, shape (B,)"]),
    (a4.check_reparameterize, reparameterize_calls_reference, {},
     ["earns nothing", "course_lib.models.vae.reparameterize"]),
    (a4.check_gaussian_kl, kl_through_per_dim_reference, {},
     ["earns nothing", "course_lib.models.vae.gaussian_kl_per_dim"]),
    (a4.check_elbo_loss, elbo_calls_reference, {}, ["earns nothing", "course_lib.models.vae.elbo_loss"]),
])
def test_wrong_answers_fail_with_a_specific_message(check, fn, kwargs, words):
    assert_check_fails(check, fn, words, **kwargs)


def test_the_hint_is_printed_as_well_as_raised(capsys):
    with pytest.raises(CheckFailure) as info:
        a4.check_reparameterize(reparameterize_variance)
    out = capsys.readouterr().out
    assert out.startswith("❌ reparameterize") and "💡 Hint: exp(logvar) is the variance" in out, out
    assert str(info.value).endswith(out.splitlines()[-1]), (str(info.value), out)


def test_an_unrecognised_mistake_fails_without_a_hint():
    def kl_off_by_a_bit(mu, logvar):
        return kl(mu, logvar) + 0.01
    with pytest.raises(CheckFailure) as info:
        a4.check_gaussian_kl(kl_off_by_a_bit)
    assert "differ" in str(info.value) and "Hint" not in str(info.value)


def test_a_stub_is_not_attempted_and_scores_nothing():
    assert_stub_not_attempted(a4.check_elbo_loss)


def test_hints_also_reach_the_graders_proxies():
    """In the re-check the learner's function is a proxy into the sandbox: the hint is found by
    calling it through ``call_forbidding`` (which watches for references), never directly."""
    class Proxy(RemoteCallable):
        __name__ = "gaussian_kl"
        calls = 0

        def call_forbidding(self, args, forbid):
            assert ref.gaussian_kl in forbid
            Proxy.calls += 1
            return kl_mean_over_dims(*args)

        def __call__(self, *args):
            raise AssertionError("the grader called the learner's function without watching it")

    with pytest.raises(CheckFailure, match="sum over the latent dimensions"):
        a4.check_gaussian_kl(Proxy())
    assert Proxy.calls == 2                 # the failed trial, then once more to diagnose it


# ----------------------------------------------------------------------------- the grader's re-check
def test_sandbox_side_knows_the_vae_references():
    """In the re-check job course_lib.models.vae's references are switched off: an answer that reaches
    one is stopped, a right answer is not."""
    from course_lib.grading import zygote
    assert "course_lib.grading.a4" in zygote.PRELOAD
    mu, logvar = torch.randn(3, 2), torch.randn(3, 2)
    assert call_with_references_off(a4.REFERENCES, kl_through_per_dim_reference, (mu, logvar)) \
        == "course_lib.models.vae.gaussian_kl_per_dim"
    assert call_with_references_off(a4.REFERENCES, kl, (mu, logvar)) is None


def test_static_audit_flags_importing_course_lib_vae():
    from course_lib.grading import audit
    findings = audit.inspect_cells([("p2_answer", "from course_lib.models.vae import gaussian_kl")], set())
    assert any(f.kind == "reference" for f in findings), findings


def test_sandboxed_recheck_catches_a_call_to_the_vae_reference(tmp_path, monkeypatch):
    """Part 2 calls the reference through an alias: the re-check (a separate, sandboxed process)
    must notice, so Part 2 scores 0 and the submission is flagged; Part 4 calls the learner's
    gaussian_kl, so it scores 0 too; Parts 1 and 3 keep their points."""
    from course_lib.grading.pipeline import REVIEW

    source = ("import course_lib.models.vae as helpers\n\n"
              "def gaussian_kl(mu, logvar):\n"
              "    return helpers.gaussian_kl(mu, logvar)\n")
    outcome = grade_edited_solution("a4_vae", "p2_answer", source, tmp_path, monkeypatch)
    assert outcome.parts["p2_visible"] == 0 and outcome.parts["p2_hidden"] == 0, outcome.parts
    assert outcome.parts["p4_visible"] == 0 and outcome.parts["p4_hidden"] == 0, outcome.parts
    assert outcome.score == outcome.max_score - 3 - 4, outcome.parts
    assert outcome.status == REVIEW
    assert any("gaussian_kl calls the course reference course_lib.models.vae.gaussian_kl" in r
               for r in outcome.reasons), outcome.reasons
    assert not any("passes when re-checked" in r for r in outcome.reasons), outcome.reasons
