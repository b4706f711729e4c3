"""course_lib.diffusion.solver, path, objectives: the one sampling loop, its step rules, the wrappers.

Each rule is checked against the hand-written loop it replaces (the same equations, the same
random numbers in the same order), so a change in either shows up here.
"""
from __future__ import annotations

import pytest
import torch

from course_lib.diffusion.ddpm import ddim_step, ddim_timesteps, reverse_step
from course_lib.diffusion.guidance import ClassifierFreeGuidance
from course_lib.diffusion.objectives import EpsFromV, v_target
from course_lib.diffusion.path import DiffusionPath, PathSample
from course_lib.diffusion.schedule import NoiseSchedule, q_sample
from course_lib.diffusion.schedulers import SchedulerRule, diffusers_scheduler
from course_lib.diffusion.solver import AncestralRule, DDIMRule, sample, solve

torch.set_num_threads(1)
SHAPE = (3, 1, 4, 4)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _eps(x, t, y=None):            # a toy eps-model that depends on x, t and (optionally) a label
    out = 0.3 * x * torch.cos(t.float() / 7)[:, None, None, None]
    return out if y is None else out + y.float()[:, None, None, None] / 10


def test_ancestral_rule_is_the_hand_written_ddpm_loop():
    sched = NoiseSchedule.make("cosine", 12)
    mine = _gen(3)
    got = sample(_eps, SHAPE, AncestralRule(sched, "posterior", clip_x0=True), generator=mine, progress=False)
    g = _gen(3)
    x = torch.randn(SHAPE, generator=g)                                  # x_T first ...
    for step in range(sched.T - 1, -1, -1):                              # ... then one noise per step
        t = torch.full((SHAPE[0],), step)
        x = reverse_step(_eps(x, t), x, t, sched, torch.randn(SHAPE, generator=g), "posterior", clip_x0=True)
    assert torch.equal(got, x)
    assert torch.equal(mine.get_state(), g.get_state())                  # no more and no fewer draws


@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_ddim_rule_is_the_hand_written_ddim_loop(eta):
    sched = NoiseSchedule.make("linear", 30)
    mine = _gen(4)
    got = sample(_eps, SHAPE, DDIMRule(sched, 6, eta=eta, clip_x0=False), generator=mine, progress=False)
    g = _gen(4)
    x = torch.randn(SHAPE, generator=g)
    ts = ddim_timesteps(6, 30)
    for i, step in enumerate(ts):
        t = torch.full((SHAPE[0],), step)
        noise = torch.randn(SHAPE, generator=g) if eta > 0 else None   # eta = 0 draws nothing
        x = ddim_step(_eps(x, t), x, t, ts[i + 1] if i + 1 < len(ts) else -1, sched, eta, noise)
    assert torch.equal(got, x)
    assert torch.equal(mine.get_state(), g.get_state())                  # later draws stay where they were


def test_solve_calls_the_model_once_per_step_with_the_rule_times_and_keeps_frames():
    sched = NoiseSchedule.make("linear", 20)
    seen = []

    def fn(x, t):
        seen.append(t.tolist())
        return _eps(x, t)

    rule = DDIMRule(sched, 5)
    x_T = torch.randn(SHAPE, generator=_gen())
    x, frames = solve(fn, x_T, rule, trajectory_every=2, progress=False)
    assert seen == [[s] * SHAPE[0] for s in ddim_timesteps(5, 20)]
    assert len(frames) == 4 and torch.equal(frames[0], x_T) and torch.equal(frames[-1], x)
    assert torch.equal(solve(_eps, x_T, rule, progress=False), x)


def test_cfg_wrapper_mixes_the_two_predictions_inside_any_rule():
    sched = NoiseSchedule.make("linear", 20)
    y, null = torch.tensor([1, 2, 3]), torch.zeros(3, dtype=torch.long)
    x_T = torch.randn(SHAPE, generator=_gen())
    cfg = ClassifierFreeGuidance(_eps, {"y": y}, {"y": null}, 3.0)
    # _eps is linear in y, so s = 3 on (null, y) equals the plain model on the label 3 y - 2 null = 3 y
    want = sample(ClassifierFreeGuidance(_eps, {"y": 3 * y}), SHAPE, DDIMRule(sched, 4), x_T=x_T, progress=False)
    torch.testing.assert_close(sample(cfg, SHAPE, DDIMRule(sched, 4), x_T=x_T, progress=False), want)
    one = cfg(x_T, torch.full((3,), 5))
    torch.testing.assert_close(one, _eps(x_T, torch.full((3,), 5), 3 * y))


def test_path_sample_is_q_sample_with_eps_or_v_target_and_eps_from_v_wrapper_inverts_it():
    sched = NoiseSchedule.make("cosine", 50)
    x0, x1 = torch.rand(SHAPE, generator=_gen(1)) * 2 - 1, torch.randn(SHAPE, generator=_gen(2))
    t = torch.tensor([0, 25, 49])
    ps = DiffusionPath(sched).sample(x0, x1, t)
    assert isinstance(ps, PathSample) and torch.equal(ps.x_t, q_sample(x0, t, x1, sched))
    assert torch.equal(ps.target, x1) and ps.x0 is x0 and ps.x1 is x1 and ps.t is t
    v_path = DiffusionPath(sched, prediction="v")
    pv = v_path.sample(x0, x1, t)
    assert torch.equal(pv.target, v_target(x0, x1, t, sched))
    # a perfect v-network, wrapped, gives back the noise
    torch.testing.assert_close(EpsFromV(lambda x, tt: pv.target, sched)(pv.x_t, t), x1, atol=1e-5, rtol=0)
    torch.testing.assert_close(v_path.eps_from_output(pv.target, pv.x_t, t), x1, atol=1e-5, rtol=0)
    steps = v_path.sample_t(1000, _gen())
    assert steps.dtype == torch.long and int(steps.min()) == 0 and int(steps.max()) == 49


def test_scheduler_rule_runs_in_the_same_loop_and_a_reused_rule_restarts():
    sched = NoiseSchedule.make("linear", 100)
    ours = sample(_eps, SHAPE, DDIMRule(sched, 10, clip_x0=False), generator=_gen(5), progress=False)
    rule = SchedulerRule(diffusers_scheduler("ddim", sched, clip_sample=False), 10)
    theirs = sample(_eps, SHAPE, rule, generator=_gen(5), progress=False)
    torch.testing.assert_close(ours, theirs, atol=3e-4, rtol=0)
    dpm = SchedulerRule(diffusers_scheduler("dpm", sched), 6)          # multistep: keeps a history
    a = sample(_eps, SHAPE, dpm, generator=_gen(6), progress=False)
    assert torch.equal(sample(_eps, SHAPE, dpm, generator=_gen(6), progress=False), a)


def test_rules_reject_bad_settings():
    sched = NoiseSchedule.make("linear", 10)
    with pytest.raises(ValueError, match="variance"):
        AncestralRule(sched, variance="large")
    with pytest.raises(ValueError, match="eta"):
        DDIMRule(sched, 5, eta=-1.0)
    with pytest.raises(ValueError, match="steps"):
        DDIMRule(sched, 11)
