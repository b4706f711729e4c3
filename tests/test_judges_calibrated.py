"""The calibrated shapes judges (issue 14): shipped, not retrained here.

Issue 14's bars: agreement with the person's labels on the eye-read set (tests/data/eye_read)
>= 90 % on shape at the judge's own ``min_confidence`` (abstaining agrees with "unreadable"
only), >= 97 % on colour and position; real renders of an unseen seed >= 99 % right on every
attribute, abstaining counted as wrong. The shipped judges do NOT reach the eye-read shape and
colour bars: these tests hold them to what they do reach (floors a point or so below the measured
numbers, so a retrained judge that got worse fails) and say where the issue's bar is. The gap is
in docs/judges.md. What does hold: eye-read position, every attribute of real renders at the
judge's bar, and abstaining on morphs, blank and noise images far more than the old judge.
"""
from __future__ import annotations

import json

import pytest
import torch

from course_lib.data import render_shapes
from course_lib.data.shapes import COLOURS, HALF_EXTENT, SHAPE_KINDS, _sdf, cell_size
from course_lib.eval import attribute_accuracy
from course_lib.eval.agreement import agreement_table, judge_verdicts, read_eye_read, shape_agreement
from course_lib.eval.judges import CHECKPOINT_DIR, load_judge
from course_lib.eval.shapes_eval import shapes_eval

NEW_JUDGES = ("shapes_calibrated", "shapes_second")
UNSEEN_SEED = 987_654
ISSUE_BARS = {"shape": 0.90, "colour": 0.97, "position": 0.97}        # not all reached yet
# floors on the eye-read set (all 400: 240 + 40 text-to-image samples of 4 . 07, 60 latent and 60 pixel
# samples of 4 . 05): measured 61.0 / 96.9 / 98.7 % and 59.5 / 97.7 / 99.7 %; the old judge: 53.5 % (at 0.9)
# / 97.4 / 99.2 % (on the first 240: 65.4 / 94.8 / 97.8 %, 61.3 / 96.1 / 99.6 %, 57.5 / 95.6 / 98.7 %)
EYE_READ_FLOORS = {"shapes_calibrated": {"shape": 0.60, "colour": 0.96, "position": 0.97},
                   "shapes_second": {"shape": 0.58, "colour": 0.97, "position": 0.97}}


@pytest.fixture(scope="module", params=NEW_JUDGES)
def name(request):
    return request.param


@pytest.fixture(scope="module")
def real():
    return render_shapes(2000, seed=UNSEEN_SEED)


def test_min_confidence_is_stored_in_the_checkpoint(name):
    judge = load_judge(name, device="cpu")
    report = json.loads((CHECKPOINT_DIR / f"judge_{name}.json").read_text())
    assert 0.2 <= judge.min_confidence < 1
    assert report["judge_config"]["min_confidence"] == judge.min_confidence
    assert load_judge("shapes", device="cpu").min_confidence is None     # the old judge is unchanged


def test_eye_read_agreement_holds_its_floors(name):
    table = agreement_table(name)
    assert table["min_confidence"] == load_judge(name, device="cpu").min_confidence
    for key, floor in EYE_READ_FLOORS[name].items():
        assert table["all"][key] >= floor, (key, table)
    assert table["all"]["position"] >= ISSUE_BARS["position"]          # this bar is reached


def test_calibrated_judge_agrees_on_shape_more_often_than_the_old_one():
    old = agreement_table("shapes", min_confidence=0.9)["all"]["shape"]
    assert agreement_table("shapes_calibrated")["all"]["shape"] > old


def test_real_renders_are_read_right_at_the_bar(name, real):
    """Every attribute reaches the issue's 99 % (shape: measured 99.1 % and 99.6 % of 3000)."""
    judge = load_judge(name, device="cpu")
    labels, confidences = judge.predict(real.images)
    readable = confidences["shape"] >= judge.min_confidence
    assert ((labels["shape"] == real.attrs["shape"]) & readable).float().mean() >= 0.99
    for key in ("colour", "size", "position"):
        assert (labels[key] == real.attrs[key]).float().mean() >= 0.99, key
    assert labels["shape"].max() < len(SHAPE_KINDS)          # "unreadable" is never a verdict


def _off_grammar(n: int = 300, seed: int = 5) -> torch.Tensor:
    """Morphs (half one shape, half another), blank and pure-noise images, (n, 3, 32, 32)."""
    g = torch.Generator().manual_seed(seed)
    base = render_shapes(n, seed=seed)
    c = torch.arange(32) + 0.5
    x = c.view(1, 1, 32) - base.centers[:, 0, :1, None]
    y = c.view(1, 32, 1) - base.centers[:, 0, 1:, None]
    x, y = torch.broadcast_tensors(x, y)
    r = (torch.tensor(HALF_EXTENT)[base.attrs["size"]] * cell_size(32)).view(n, 1, 1).expand_as(x)
    pairs = [("circle", "square"), ("cross", "diamond"), ("triangle", "circle"), ("square", "diamond")]
    sdf = torch.stack([0.5 * _sdf(pairs[i % 4][0], x[i], y[i], r[i]) + 0.5 * _sdf(pairs[i % 4][1], x[i], y[i], r[i])
                       for i in range(n)])
    rgb = torch.tensor(list(COLOURS.values()))[base.attrs["colour"]].view(n, 3, 1, 1)
    images = rgb * (0.5 - sdf).clamp(0, 1).unsqueeze(1)
    third = n // 3
    images[:third] = 0                                                  # blank
    images[third:2 * third] = torch.rand(third, 3, 32, 32, generator=g)  # pure noise
    return images


def test_abstains_on_morphs_blank_and_noise_more_than_the_old_judge(name):
    """At the same bar (0.9) the old judge abstains on 5 % of pure-noise images and 27 % of
    half-and-half morphs; the new ones on 100 % / 76 % of noise and 72 % / 58 % of morphs. At
    their own bars: blank 100 %; noise 99 % (calibrated, 0.3) but only 27 % (second, 0.5); morphs
    24 % and 13 % (a gap, docs/judges.md)."""
    x = _off_grammar()
    third = len(x) // 3
    old = load_judge("shapes", device="cpu").predict(x)[1]["shape"]
    new_judge = load_judge(name, device="cpu")
    new = new_judge.predict(x)[1]["shape"]
    empty, noise, morph = slice(0, third), slice(third, 2 * third), slice(2 * third, None)
    abstains = lambda c, bar, part: (c[part] < bar).float().mean().item()  # noqa: E731
    assert abstains(new, new_judge.min_confidence, empty) >= 0.95
    assert abstains(new, 0.9, noise) >= 0.7 > abstains(old, 0.9, noise) + 0.5
    assert abstains(new, 0.9, morph) >= abstains(old, 0.9, morph) + 0.25
    if name == "shapes_calibrated":
        assert abstains(new, new_judge.min_confidence, noise) >= 0.95
        assert abstains(new, new_judge.min_confidence, slice(None)) >= abstains(old, 0.9, slice(None)) + 0.15


def test_shapes_eval_takes_the_judges_own_min_confidence(name, real):
    judge = load_judge(name, device="cpu")
    images, captions = real.images[:40], real.captions[:40]
    assert shapes_eval(images, captions, judge=name) == shapes_eval(images, captions, judge=name,
                                                                     min_confidence=judge.min_confidence)
    assert shapes_eval(images, captions, judge=name, min_confidence=1.0)["unreadable"] == 40
    assert shapes_eval(images, captions)["single_object"] == 1.0       # the old judge, 0.5 as before


def test_shape_agreement_counts_abstentions_as_unreadable_only():
    rows = [{"shape": "circle"}, {"shape": "unreadable"}, {"shape": "square"}, {"shape": "unreadable"},
            {"shape": "triangle"}]
    verdicts = [{"shape": "circle", "confidence": 0.95}, {"shape": "circle", "confidence": 0.4},
                {"shape": "square", "confidence": 0.6}, {"shape": "cross", "confidence": 0.99},
                {"shape": "triangle", "confidence": 0.8}]
    assert shape_agreement(verdicts, rows, 0.0) == 3 / 5   # verdicts everywhere: 1st, 3rd, 5th agree
    assert shape_agreement(verdicts, rows, 0.7) == 3 / 5   # 2nd abstains (agrees), 3rd abstains (not)
    assert shape_agreement(verdicts, rows, 1.0) == 2 / 5   # all abstain: the two unreadables agree


def test_the_old_judge_numbers_are_reproduced():
    """The numbers the eye-read set was committed with (scripts/judge_agreement.py): its first 240
    images, and all 400 since samples of 4 . 05 and 4 . 07 (eta 1) were added."""
    images, rows = read_eye_read()
    verdicts = judge_verdicts("shapes", images)
    assert shape_agreement(verdicts[:240], rows[:240], 0.0) == pytest.approx(119 / 240)    # 49.6 %
    assert shape_agreement(verdicts[:240], rows[:240], 0.9) == pytest.approx(138 / 240)    # 57.5 %
    assert shape_agreement(verdicts, rows, 0.0) == pytest.approx(178 / 400)              # 44.5 %
    assert shape_agreement(verdicts, rows, 0.9) == pytest.approx(214 / 400)              # 53.5 %


def test_attribute_accuracy_counts_a_shape_only_at_the_judges_bar(name):
    # on generated images the calibrated judges abstain often: an abstained shape is not right
    images, rows = read_eye_read()
    x = images.float() / 255
    judge = load_judge(name, device="cpu")
    verdicts = judge_verdicts(name, images)
    want = {"shape": torch.tensor([SHAPE_KINDS.index(v["shape"]) for v in verdicts])}   # the judge's own argmax
    at_bar = sum(v["confidence"] >= judge.min_confidence for v in verdicts) / len(verdicts)
    assert at_bar < 0.9                                               # the bar matters on this set
    assert attribute_accuracy(x, want, keys=("shape",), judge=name)["shape"] == pytest.approx(at_bar)
    assert attribute_accuracy(x, want, keys=("shape",), judge=name, min_confidence=0.0)["shape"] == 1.0
    assert attribute_accuracy(x, want, keys=("shape",))["shape"] < 1.0   # the old judge: another argmax, no bar


def test_the_second_reading_covers_the_set_and_agrees_with_the_first_as_recorded():
    """labels_reader2.csv: every image once, words of the rule, and the 88.7 % reader agreement
    that docs/judges.md quotes (a re-labelled file must update the docs)."""
    import csv

    from course_lib.eval.agreement import EYE_READ_DIR
    _, rows = read_eye_read()
    with open(EYE_READ_DIR / "labels_reader2.csv", newline="") as f:
        second = list(csv.DictReader(f))
    words = set(SHAPE_KINDS) | {"unreadable"}
    assert sorted(int(r["id"]) for r in second) == sorted(int(r["id"]) for r in rows)
    assert all(r["shape"] in words and r["alt"] in words | {""} and r["alt"] != r["shape"] for r in second)
    by_id = {r["id"]: r["shape"] for r in second}
    same = sum(by_id[r["id"]] == r["shape"] for r in rows)
    assert same == 355, f"the readers agree on {same} of {len(rows)} images; docs/judges.md says 355"
