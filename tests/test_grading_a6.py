"""A6 (DDPM: data range, q_sample, the loss, one reverse step): the graded checks accept right
answers, reject the classic mistakes with a specific hint, refuse answers that call
course_lib.diffusion, and the grader's sandboxed re-check catches a reference call too."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

from course_lib.checks import CheckFailure
from course_lib.diffusion import ddpm as ref_ddpm
from course_lib.diffusion import schedule as ref_schedule
from course_lib.diffusion.schedule import NoiseSchedule
from course_lib.grading import a6
from grading import (assert_check_fails, assert_stub_not_attempted,
                     call_with_references_off, grade_edited_solution)


def _shaped(values, like):
    return values.to(like.dtype).view(-1, *[1] * (like.dim() - 1))


# ----------------------------------------------------------------------------- answers
def to_model_range(x):
    return (x - 0.5) / 0.5


def to_model_range_left_alone(x):
    return x


def to_model_range_half(x):
    return x - 0.5


def to_model_range_standardised(x):
    return (x - x.mean()) / x.std()


def q_sample(x0, t, noise, schedule):
    a = _shaped(schedule.alphas_cumprod[t], x0)
    return torch.sqrt(a) * x0 + torch.sqrt(1 - a) * noise


def q_sample_no_sqrt(x0, t, noise, schedule):
    a = _shaped(schedule.alphas_cumprod[t], x0)
    return a * x0 + (1 - a) * noise


def q_sample_alpha_not_bar(x0, t, noise, schedule):
    a = _shaped(schedule.alphas[t], x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def q_sample_off_by_one(x0, t, noise, schedule):
    a = _shaped(schedule.alphas_cumprod[t - 1], x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def q_sample_unshaped(x0, t, noise, schedule):
    a = schedule.alphas_cumprod[t]
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def q_sample_calls_reference(x0, t, noise, schedule):
    return schedule.q_sample(x0, t, noise)


def training_loss(model, images, t, noise, schedule):
    x_t = q_sample(to_model_range(images), t, noise, schedule)
    return ((model(x_t, t) - noise) ** 2).mean()


def training_loss_on_raw_images(model, images, t, noise, schedule):   # data left in [0, 1]
    x_t = q_sample(images, t, noise, schedule)
    return F.mse_loss(model(x_t, t), noise)


def training_loss_without_t(model, images, t, noise, schedule):
    x_t = q_sample(to_model_range(images), t, noise, schedule)
    return F.mse_loss(model(x_t), noise)


def training_loss_float_t(model, images, t, noise, schedule):
    x_t = q_sample(to_model_range(images), t, noise, schedule)
    return F.mse_loss(model(x_t, t / schedule.T), noise)


def training_loss_predicts_x0(model, images, t, noise, schedule):
    x0 = to_model_range(images)
    return F.mse_loss(model(q_sample(x0, t, noise, schedule), t), x0)


def training_loss_own_noise(model, images, t, noise, schedule):
    return training_loss(model, images, t, torch.randn_like(noise), schedule)


def training_loss_calls_reference(model, images, t, noise, schedule):
    return ref_ddpm.ddpm_loss(model, to_model_range(images), schedule, t=t, noise=noise)


def reverse_step(eps, x_t, t, noise, schedule):
    beta = _shaped(schedule.betas[t], x_t)
    alpha = _shaped(schedule.alphas[t], x_t)
    a_bar = _shaped(schedule.alphas_cumprod[t], x_t)
    mean = (x_t - beta / torch.sqrt(1 - a_bar) * eps) / torch.sqrt(alpha)
    return torch.where(_shaped(t, x_t) > 0, mean + beta.sqrt() * noise, mean)


def _reverse(eps, x_t, t, noise, schedule, *, variance="beta", std=True, always_noise=False,
             alpha_name="alphas", shift=0):
    beta = _shaped(schedule.betas[t + shift], x_t)
    alpha = _shaped(getattr(schedule, alpha_name)[t + shift], x_t)
    a_bar = _shaped(schedule.alphas_cumprod[t + shift], x_t)
    mean = (x_t - beta / torch.sqrt(1 - a_bar) * eps) / torch.sqrt(alpha)
    var = beta if variance == "beta" else _shaped(schedule.posterior_variance[t + shift], x_t)
    sigma = var.sqrt() if std else var
    keep = torch.ones_like(t) if always_noise else (t > 0)
    return mean + _shaped(keep, x_t) * sigma * noise


def reverse_step_noise_at_zero(*a):
    return _reverse(*a, always_noise=True)


def reverse_step_posterior(*a):
    return _reverse(*a, variance="posterior")


def reverse_step_variance_as_std(*a):
    return _reverse(*a, std=False)


def reverse_step_alpha_bar_in_mean(*a):
    return _reverse(*a, alpha_name="alphas_cumprod")


def reverse_step_off_by_one(*a):
    return _reverse(*a, shift=-1)


def reverse_step_if_t_is_zero(eps, x_t, t, noise, schedule):
    out = _reverse(eps, x_t, t, noise * 0, schedule)
    return out if t == 0 else out + _shaped(schedule.betas[t], x_t).sqrt() * noise


def reverse_step_calls_reference(eps, x_t, t, noise, schedule):
    return ref_ddpm.reverse_step(eps, x_t, t, schedule, noise)


# ----------------------------------------------------------------------------- checks
def test_right_answers_pass_visible_and_hidden_settings(capsys):
    a6.check_to_model_range(to_model_range)
    a6.check_to_model_range(to_model_range, shapes=[(1, 1, 1, 1), (5, 7)], dtype=torch.float64)
    a6.check_q_sample(q_sample)
    a6.check_q_sample(q_sample, shapes=[(1, 1, 3, 3), (6, 5)], schedules=[("linear", 1000), ("cosine", 1000)],
                      dtype=torch.float64)
    a6.check_training_loss(training_loss)
    a6.check_training_loss(training_loss, shapes=[(1, 1, 4, 4), (5, 3, 3, 3)],
                           schedules=[("cosine", 1000)], dtype=torch.float64)
    a6.check_reverse_step(reverse_step)
    a6.check_reverse_step(reverse_step, shapes=[(1, 1, 3, 3), (6, 5)], schedules=[("linear", 1000)],
                          dtype=torch.float64)
    assert capsys.readouterr().out.count("✅") == 8


@pytest.mark.parametrize("check, fn, kwargs, words", [
    (a6.check_to_model_range, to_model_range_left_alone, {}, ["to_model_range", "still in [0, 1]"]),
    (a6.check_to_model_range, to_model_range_half, {}, ["[-0.5, 0.5]"]),
    (a6.check_to_model_range, to_model_range_standardised, {}, ["standardising"]),
    (a6.check_q_sample, q_sample_no_sqrt, {}, ["q_sample", "their square roots"]),
    (a6.check_q_sample, q_sample_alpha_not_bar, {}, ["alphas_cumprod[t], the product"]),
    (a6.check_q_sample, q_sample_off_by_one, {}, ["0-based index", "not t - 1"]),
    (a6.check_q_sample, q_sample_unshaped, {"shapes": [(4, 1, 4, 4)]}, ["differ", "LAST dimension"]),
    (a6.check_q_sample, q_sample_unshaped, {"shapes": [(3, 2, 5, 5)]}, ["raised", "reshape it to (B, 1, ..., 1)"]),
    (a6.check_training_loss, training_loss_on_raw_images, {}, ["training_loss", "must be in [-1, 1]"]),
    (a6.check_training_loss, training_loss_without_t, {}, ["raised", "the model needs the step too"]),
    (a6.check_training_loss, training_loss_float_t, {}, ["pass the integer steps t as they are"]),
    (a6.check_training_loss, training_loss_predicts_x0, {}, ["predicts the noise"]),
    (a6.check_training_loss, training_loss_own_noise, {}, ["use the t and the noise you are given"]),
    (a6.check_reverse_step, reverse_step_noise_at_zero, {}, ["reverse_step", "no noise at t = 0"]),
    (a6.check_reverse_step, reverse_step_posterior, {}, ["posterior variance"]),
    (a6.check_reverse_step, reverse_step_variance_as_std, {}, ["is the variance", "sqrt(beta_t)"]),
    (a6.check_reverse_step, reverse_step_alpha_bar_in_mean, {}, ["divide by sqrt(alpha_t)"]),
    (a6.check_reverse_step, reverse_step_off_by_one, {}, ["0-based index of this step"]),
    (a6.check_reverse_step, reverse_step_if_t_is_zero, {}, ["raised", "mask the noise per sample"]),
    (a6.check_q_sample, q_sample_calls_reference, {},
     ["earns nothing", "course_lib.diffusion.schedule.NoiseSchedule.q_sample"]),
    (a6.check_training_loss, training_loss_calls_reference, {},
     ["earns nothing", "course_lib.diffusion.ddpm.ddpm_loss"]),
    (a6.check_reverse_step, reverse_step_calls_reference, {},
     ["earns nothing", "course_lib.diffusion.ddpm.reverse_step"]),
])
def test_wrong_answers_fail_with_a_specific_message(check, fn, kwargs, words):
    assert_check_fails(check, fn, words, **kwargs)


def test_the_hint_is_printed_as_well_as_raised(capsys):
    with pytest.raises(CheckFailure) as info:
        a6.check_reverse_step(reverse_step_noise_at_zero)
    out = capsys.readouterr().out
    assert out.startswith("❌ reverse_step") and "💡 Hint: no noise at t = 0" in out, out
    assert str(info.value).endswith(out.splitlines()[-1]), (str(info.value), out)


def test_an_unrecognised_mistake_fails_without_a_hint():
    def q_sample_off_by_a_bit(x0, t, noise, schedule):
        return q_sample(x0, t, noise, schedule) + 0.01
    with pytest.raises(CheckFailure) as info:
        a6.check_q_sample(q_sample_off_by_a_bit)
    assert "differ" in str(info.value) and "Hint" not in str(info.value)


@pytest.mark.parametrize("check", [a6.check_to_model_range, a6.check_q_sample,
                                   a6.check_training_loss, a6.check_reverse_step])
def test_a_stub_is_not_attempted_and_scores_nothing(check):
    assert_stub_not_attempted(check)


def test_every_batch_holds_the_ends_of_the_chain():
    """t = 0 (no noise), t = 1 and t = T - 1 are where the classic mistakes show."""
    t = a6._steps(torch.Generator().manual_seed(0), 5, 50)
    assert t[0] == 0 and t[1] == 1 and t[-1] == 49 and t.dtype == torch.long
    assert a6._steps(torch.Generator().manual_seed(0), 1, 50).tolist() == [0]


def test_the_test_model_needs_integer_steps_and_survives_pickling():
    gen = torch.Generator().manual_seed(0)
    model = pickle.loads(pickle.dumps(a6.EpsModel(10, gen)))
    x, t = torch.randn(3, 1, 2, 2), torch.tensor([0, 4, 9])
    out = model(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, model(x, torch.tensor([1, 4, 9])))       # it depends on t
    with pytest.raises(TypeError, match="integer steps"):
        model(x, t / 10)
    with pytest.raises(TypeError, match="missing 1 required positional argument: 't'"):
        model(x)
    schedule = pickle.loads(pickle.dumps(NoiseSchedule.make("cosine", 40)))   # the re-check pickles it
    torch.testing.assert_close(schedule.alphas_cumprod, NoiseSchedule.make("cosine", 40).alphas_cumprod)


def test_the_reference_of_the_loss_maps_images_to_model_range():
    gen = torch.Generator().manual_seed(3)
    model, images, t, noise, schedule = a6.EpsModel(20, gen), torch.rand(4, 1, 3, 3), \
        torch.tensor([0, 3, 7, 19]), torch.randn(4, 1, 3, 3), NoiseSchedule.make("linear", 20)
    want = F.mse_loss(model(ref_schedule.q_sample(images * 2 - 1, t, noise, schedule), t), noise)
    torch.testing.assert_close(a6._ref_training_loss(model, images, t, noise, schedule), want)


# ----------------------------------------------------------------------------- the grader's re-check
def test_sandbox_side_knows_the_diffusion_references():
    """In the re-check job the diffusion references are switched off before any learner code
    runs (loaded by the job's warm parent): an answer that reaches one, here through the
    schedule's method, is stopped; a right answer is not."""
    from course_lib.grading import zygote
    assert "course_lib.grading.a6" in zygote.PRELOAD
    x0, t, noise, schedule = a6._diffusion_inputs(torch.Generator().manual_seed(1), (3, 2), torch.float32,
                                                  ("linear", 20))
    assert call_with_references_off(a6.REFERENCES, q_sample_calls_reference, (x0, t, noise, schedule)) \
        == "course_lib.diffusion.schedule.NoiseSchedule.q_sample"
    assert call_with_references_off(a6.REFERENCES, q_sample, (x0, t, noise, schedule)) is None


def test_static_audit_flags_importing_course_lib_diffusion():
    from course_lib.grading import audit
    findings = audit.inspect_cells([("p2_answer", "from course_lib.diffusion.schedule import q_sample")], set())
    assert any(f.kind == "reference" for f in findings), findings


def test_sandboxed_recheck_catches_a_call_to_the_diffusion_reference(tmp_path, monkeypatch):
    """Part 2 calls the reference through an alias: the re-check (a separate, sandboxed process,
    which gets the schedule by pickle) must notice, so Part 2 scores 0 and the submission is
    flagged; Part 3 uses the learner's q_sample, so it scores 0 too; Parts 1 and 4 keep theirs."""
    from course_lib.grading.pipeline import REVIEW

    source = ("import course_lib.diffusion.schedule as helpers\n\n"
              "def q_sample(x0, t, noise, schedule):\n"
              "    return helpers.q_sample(x0, t, noise, schedule)\n")
    outcome = grade_edited_solution("a6_ddpm", "p2_answer", source, tmp_path, monkeypatch)
    assert outcome.parts["p2_visible"] == 0 and outcome.parts["p2_hidden"] == 0, outcome.parts
    assert outcome.parts["p3_visible"] == 0 and outcome.parts["p3_hidden"] == 0, outcome.parts
    assert outcome.score == outcome.max_score - 3 - 3, outcome.parts
    assert outcome.status == REVIEW
    assert any("q_sample calls the course reference course_lib.diffusion.schedule.q_sample" in r
               for r in outcome.reasons), outcome.reasons
    assert not any("passes when re-checked" in r for r in outcome.reasons), outcome.reasons
