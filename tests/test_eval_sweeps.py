"""course_lib.eval.sweeps (sampler comparison, guidance sweep) and course_lib.eval.speed (U-Net speed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.diffusion.schedule import NoiseSchedule, to_image_range
from course_lib.diffusion.schedulers import SchedulerRule, diffusers_scheduler
from course_lib.diffusion.solver import DDIMRule, sample
from course_lib.eval.distances import fid_from_features
from course_lib.eval.judges import extract_features
from course_lib.eval.sweeps import CountCalls, compare_samplers, run_sampler

torch.set_num_threads(1)
SHAPE = (6, 1, 8, 8)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.3))

    def forward(self, x, t):
        return self.w * x


def test_run_sampler_counts_calls_and_returns_the_samples_of_its_seed():
    model, sched = Toy(), NoiseSchedule.make("linear", 20)
    run = run_sampler(model, DDIMRule(sched, 4), SHAPE, seed=7)
    assert run["calls"] == 4 and run["seconds_per_image"] > 0
    want = sample(model, SHAPE, DDIMRule(sched, 4), generator=torch.Generator().manual_seed(7), progress=False)
    assert torch.equal(run["images"], to_image_range(want))
    counted = CountCalls(model)
    counted(torch.zeros(1, 1, 8, 8), torch.zeros(1))
    assert counted.calls == 1


def test_compare_samplers_tabulates_every_rule_per_seed_with_and_without_a_judge():
    model, sched = Toy(), NoiseSchedule.make("linear", 20)
    rules = {"DDIM 20, eta 1": DDIMRule(sched, 20, eta=1.0), "DDIM 5": DDIMRule(sched, 5),
             "PNDM 4": SchedulerRule(diffusers_scheduler("pndm", sched), 4)}
    real = extract_features(torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0)), judge="digits")
    table, images, fids = compare_samplers(model, rules, SHAPE, seeds=[1, 2, 3], real_features=real)
    assert list(table) == list(rules) and table["DDIM 5"]["model calls"] == 5
    assert table["PNDM 4"]["model calls"] == 5                             # PLMS: one warm-up call more
    for name, rule in rules.items():
        per_seed = [run_sampler(model, rule, SHAPE, s) for s in (1, 2, 3)]
        assert torch.equal(images[name], per_seed[0]["images"])           # pictures: the first seed
        want = [fid_from_features(extract_features(r["images"], judge="digits"), real) for r in per_seed]
        assert fids[name] == pytest.approx(want)
        assert table[name]["FID"] == pytest.approx(np.mean(want))
        assert table[name]["FID sd"] == pytest.approx(np.std(want, ddof=1)) and table[name]["FID sd"] > 0
        assert 0 <= table[name]["recognised"] <= 1
    bare, _, no_fids = compare_samplers(model, {"DDIM 5": DDIMRule(sched, 5)}, SHAPE, seeds=[1])
    assert no_fids == {} and set(bare["DDIM 5"]) == {"model calls", "ms / image"}


def test_unet_training_speed_reports_both_models_with_equal_parameter_counts():
    from course_lib.eval.speed import unet_training_speed

    r = unet_training_speed(steps=1, warmup=0, batch=2)
    assert r["course"]["params"] == r["diffusers"]["params"] == 1_112_801
    assert r["course"]["ms"] > 0 and r["ratio"] == pytest.approx(r["diffusers"]["ms"] / r["course"]["ms"])
    with pytest.raises(ValueError, match="steps"):
        unet_training_speed(steps=0)
