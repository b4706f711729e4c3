"""A7 (a DDIM step and classifier-free guidance): the graded checks accept right answers, reject
the classic mistakes with a specific hint, insist on one batched model call, refuse answers that
call course_lib.diffusion, and the grader's sandboxed re-check catches a reference call too."""
from __future__ import annotations

import math
import pickle

import pytest
import torch

from course_lib.checks import CheckFailure
from course_lib.diffusion import ddpm as ref
from course_lib.grading import a7
from grading import (assert_check_fails, assert_stub_not_attempted,
                     call_with_references_off, grade_edited_solution)


# ----------------------------------------------------------------------------- answers
def predict_x0(eps, x_t, t, schedule):
    a = float(schedule.alphas_cumprod[t])
    return (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)


def predict_x0_no_sqrt(eps, x_t, t, schedule):
    a = float(schedule.alphas_cumprod[t])
    return (x_t - (1 - a) * eps) / a


def predict_x0_alpha_not_bar(eps, x_t, t, schedule):
    a = float(schedule.alphas[t])
    return (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)


def predict_x0_calls_reference(eps, x_t, t, schedule):
    return ref.predict_x0(eps, x_t, torch.full((len(x_t),), t), schedule)


def _ddim(eps, x_t, t, t_prev, schedule, eta, noise, *, a_prev=None, sigma_form="full", room=True,
          use_x0=True):
    a = schedule.alphas_cumprod[t]
    if a_prev is None:
        a_prev = schedule.alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0)
    x0 = predict_x0(eps, x_t, t, schedule) if use_x0 else x_t
    first, second = (1 - a_prev) / (1 - a), 1 - a / a_prev
    sigma = {"full": eta * (first * second).sqrt(), "no_first": eta * second.sqrt(),
             "no_second": eta * first.sqrt(), "squared": eta * first * second}[sigma_form]
    direction = (1 - a_prev - (sigma ** 2 if room else 0)).clamp(min=0).sqrt()
    return a_prev.sqrt() * x0 + direction * eps + sigma * noise


def ddim_step(*a):
    return _ddim(*a)


def ddim_step_last_index_wraps(eps, x_t, t, t_prev, schedule, eta, noise):   # alphas_cumprod[-1]
    return _ddim(eps, x_t, t, t_prev, schedule, eta, noise, a_prev=schedule.alphas_cumprod[t_prev])


def ddim_step_sigma_missing_factor(*a):
    return _ddim(*a, sigma_form="no_first")


def ddim_step_sigma_squared(*a):
    return _ddim(*a, sigma_form="squared")


def ddim_step_no_room_for_noise(*a):
    return _ddim(*a, room=False)


def ddim_step_without_x0_hat(*a):
    return _ddim(*a, use_x0=False)


def ddim_step_own_noise(eps, x_t, t, t_prev, schedule, eta, noise):
    return _ddim(eps, x_t, t, t_prev, schedule, eta, torch.randn_like(noise))


def ddim_step_calls_reference(eps, x_t, t, t_prev, schedule, eta, noise):
    return ref.ddim_step(eps, x_t, torch.full((len(x_t),), t), t_prev, schedule, eta, noise)


def cfg_combine(eps_u, eps_c, s):
    return s * eps_c + (1 - s) * eps_u


def cfg_combine_w_convention(eps_u, eps_c, s):
    return (1 + s) * eps_c - s * eps_u


def cfg_combine_swapped(eps_u, eps_c, s):
    return eps_c + s * (eps_u - eps_c)


def guided_eps(model, x_t, t, y, y_null, s):
    out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), y=torch.cat([y, y_null]))
    eps_c, eps_u = out.chunk(2)                # the other order, consistently: fine
    return cfg_combine(eps_u, eps_c, s)


def guided_eps_two_calls(model, x_t, t, y, y_null, s):
    return cfg_combine(model(x_t, t, y_null), model(x_t, t, y), s)


def guided_eps_swapped_halves(model, x_t, t, y, y_null, s):
    eps_u, eps_c = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, y_null])).chunk(2)
    return cfg_combine(eps_u, eps_c, s)


def guided_eps_t_not_repeated(model, x_t, t, y, y_null, s):
    eps_u, eps_c = model(torch.cat([x_t, x_t]), t, torch.cat([y_null, y])).chunk(2)
    return cfg_combine(eps_u, eps_c, s)


def guided_eps_w_convention(model, x_t, t, y, y_null, s):
    eps_u, eps_c = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y_null, y])).chunk(2)
    return cfg_combine_w_convention(eps_u, eps_c, s)


def guided_eps_calls_reference(model, x_t, t, y, y_null, s):
    return ref.guided_eps(model, x_t, t, {"y": y}, {"y": y_null}, s)


# ----------------------------------------------------------------------------- checks
def test_right_answers_pass_visible_and_hidden_settings(capsys):
    a7.check_predict_x0(predict_x0)
    a7.check_predict_x0(predict_x0, shapes=[(1, 1, 3, 3), (5, 6)], schedules=[("cosine", 1000)],
                        steps=[999, 0], dtype=torch.float64)
    a7.check_ddim_step(ddim_step)
    a7.check_ddim_step(ddim_step, shapes=[(1, 1, 3, 3), (5, 6)], schedules=[("linear", 1000), ("cosine", 1000)],
                       steps=[(999, 899, 1.0), (19, -1, 1.0), (1, 0, 1.0)], dtype=torch.float64)
    a7.check_cfg_combine(cfg_combine)
    a7.check_cfg_combine(cfg_combine, scales=[7.5, -1.0], dtype=torch.float64)
    a7.check_guided_eps(guided_eps)
    a7.check_guided_eps(guided_eps, shapes=[(1, 1, 3, 3), (5, 6)], scales=[1.0, 4.0], num_classes=3, T=1000,
                        dtype=torch.float64)
    assert capsys.readouterr().out.count("✅") == 8


@pytest.mark.parametrize("check, fn, kwargs, words", [
    (a7.check_predict_x0, predict_x0_no_sqrt, {}, ["predict_x0", "with square roots"]),
    (a7.check_predict_x0, predict_x0_alpha_not_bar, {}, ["alphas_cumprod[t] (the product up to t)"]),
    (a7.check_ddim_step, ddim_step_last_index_wraps, {}, ["ddim_step", "alpha_bar_prev = 1", "LAST entry"]),
    (a7.check_ddim_step, ddim_step_sigma_missing_factor, {}, ["sigma is missing a factor"]),
    (a7.check_ddim_step, ddim_step_sigma_squared, {}, ["that is sigma^2"]),
    (a7.check_ddim_step, ddim_step_no_room_for_noise, {}, ["leave room for the noise"]),
    (a7.check_ddim_step, ddim_step_without_x0_hat, {}, ["sqrt(alpha_bar_prev) * x0_hat", "not x_t"]),
    (a7.check_ddim_step, ddim_step_own_noise, {}, ["use the noise you are given"]),
    (a7.check_cfg_combine, cfg_combine_w_convention, {}, ["cfg_combine", "w convention", "w = s - 1"]),
    (a7.check_cfg_combine, cfg_combine_swapped, {}, ["eps_u and eps_c are swapped"]),
    (a7.check_guided_eps, guided_eps_two_calls, {}, ["raised", "call the model once, on the doubled batch"]),
    (a7.check_guided_eps, guided_eps_swapped_halves, {}, ["eps_u and eps_c are swapped", "null labels"]),
    (a7.check_guided_eps, guided_eps_t_not_repeated, {}, ["raised", "repeat t as well"]),
    (a7.check_guided_eps, guided_eps_w_convention, {}, ["w convention"]),
    (a7.check_predict_x0, predict_x0_calls_reference, {}, ["earns nothing", "course_lib.diffusion.ddpm.predict_x0"]),
    (a7.check_ddim_step, ddim_step_calls_reference, {}, ["earns nothing", "course_lib.diffusion.ddpm.ddim_step"]),
    (a7.check_guided_eps, guided_eps_calls_reference, {}, ["earns nothing", "course_lib.diffusion.ddpm.guided_eps"]),
])
def test_wrong_answers_fail_with_a_specific_message(check, fn, kwargs, words):
    assert_check_fails(check, fn, words, **kwargs)


def test_the_hint_is_printed_as_well_as_raised(capsys):
    with pytest.raises(CheckFailure) as info:
        a7.check_cfg_combine(cfg_combine_w_convention)
    out = capsys.readouterr().out
    assert out.startswith("❌ cfg_combine") and "💡 Hint: that is the w convention" in out, out
    assert str(info.value).endswith(out.splitlines()[-1]), (str(info.value), out)


def test_an_unrecognised_mistake_fails_without_a_hint():
    def ddim_step_off_by_a_bit(*a):
        return ddim_step(*a) * 1.01
    with pytest.raises(CheckFailure) as info:
        a7.check_ddim_step(ddim_step_off_by_a_bit)
    assert "differ" in str(info.value) and "Hint" not in str(info.value)


@pytest.mark.parametrize("check", [a7.check_predict_x0, a7.check_ddim_step, a7.check_cfg_combine,
                                   a7.check_guided_eps])
def test_a_stub_is_not_attempted_and_scores_nothing(check):
    assert_stub_not_attempted(check)


def test_the_visible_ddim_tests_cover_eta_and_the_last_step():
    steps = a7.check_ddim_step.__kwdefaults__["steps"]
    assert any(tp == -1 for _, tp, _ in steps) and any(eta > 0 and tp >= 0 for _, tp, eta in steps)


def test_the_test_model_counts_its_calls_and_survives_pickling():
    """One call on the doubled batch is allowed, a second is refused; the re-check pickles the
    model into the learner's sandbox, where it must arrive with its count at zero."""
    gen = torch.Generator().manual_seed(0)
    model = a7.LabelEpsModel(20, 4, gen)
    x, t, y = torch.randn(2, 1, 3, 3), torch.tensor([3, 19]), torch.tensor([0, 4])
    want = model.eps(x, t, y)
    model = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(model(x, t, y=y), want)
    assert not torch.allclose(want, model.eps(x, t, torch.tensor([1, 4])))      # it depends on y
    assert not torch.allclose(want, model.eps(x, torch.tensor([4, 19]), y))     # and on t
    with pytest.raises(RuntimeError, match="called 2 times"):
        model(x, t, y)
    with pytest.raises(ValueError, match="t must be an integer tensor of shape"):
        model.eps(torch.cat([x, x]), t, torch.cat([y, y]))


def test_the_reference_of_guidance_is_the_convention_of_diffusers():
    """s = 1 is the conditional model, s = 0 the unconditional one."""
    gen = torch.Generator().manual_seed(2)
    model = a7.LabelEpsModel(10, 3, gen)
    x, t, y, null = torch.randn(3, 2), torch.tensor([0, 5, 9]), torch.tensor([0, 1, 2]), torch.full((3,), 3)
    torch.testing.assert_close(a7._ref_guided_eps(model, x, t, y, null, 1.0), model.eps(x, t, y))
    torch.testing.assert_close(a7._ref_guided_eps(model, x, t, y, null, 0.0), model.eps(x, t, null))


# ----------------------------------------------------------------------------- the grader's re-check
def test_sandbox_side_knows_the_diffusion_references():
    from course_lib.grading import zygote
    assert "course_lib.grading.a7" in zygote.PRELOAD
    gen = torch.Generator().manual_seed(1)
    args = (a7.LabelEpsModel(10, 3, gen), torch.randn(2, 3), torch.tensor([1, 2]), torch.tensor([0, 1]),
            torch.tensor([3, 3]), 2.0)
    assert call_with_references_off(a7.REFERENCES, guided_eps_calls_reference, args) \
        == "course_lib.diffusion.ddpm.guided_eps"
    args[0].calls = 0
    assert call_with_references_off(a7.REFERENCES, guided_eps, args) is None


def test_sandboxed_recheck_catches_a_call_to_the_diffusion_reference(tmp_path, monkeypatch):
    """Part 1 calls the reference through an alias: the re-check must notice, so Part 1 scores 0
    and the submission is flagged; Part 2 uses the learner's predict_x0, so it scores 0 too;
    Parts 3 and 4 (which get the test model by pickle) keep their points."""
    from course_lib.grading.pipeline import REVIEW

    source = ("import torch\n"
              "from course_lib.diffusion import ddpm as helpers\n\n"
              "def predict_x0(eps, x_t, t, schedule):\n"
              "    return helpers.predict_x0(eps, x_t, torch.full((len(x_t),), t), schedule)\n")
    outcome = grade_edited_solution("a7_ddim_cfg", "p1_answer", source, tmp_path, monkeypatch)
    assert outcome.parts["p1_visible"] == 0 and outcome.parts["p1_hidden"] == 0, outcome.parts
    assert outcome.parts["p2_visible"] == 0 and outcome.parts["p2_hidden"] == 0, outcome.parts
    assert outcome.score == outcome.max_score - 2 - 4, outcome.parts
    assert outcome.status == REVIEW
    assert any("predict_x0 calls the course reference course_lib.diffusion.ddpm.predict_x0" in r
               for r in outcome.reasons), outcome.reasons
    assert not any("passes when re-checked" in r for r in outcome.reasons), outcome.reasons
