"""The silhouette judge (issue 14): shipped, tested as shipped, on three eye-read sets it was not fitted on.

``tests/data/eye_read_fresh`` (240 crisp images of the base model) and ``tests/data/eye_read_third``
(180 hard images of notebook 4 · 07's pipeline) were each drawn and read blind by two readers after
the judge was committed; nothing was fitted on them. They were read again after the judge was refitted
with blurred and autoencoded renders (changes decided on renders and the eye-read set's odd ids, not on
these sets; docs/judges.md, "Sixth round"), so they are no longer unseen. The judge reaches the issue's
90 % shape bar on the fresh set (90.4 / 90.0 % against the two readers) but not on the hard one (82.2 /
79.4 %); these tests hold it to what it measured and fail if a change makes it worse. Numbers and their
reading: docs/judges.md. ``tests/data/eye_read_fourth`` (220 images) was drawn and read after the
refitted judge was committed: 88.6 / 91.8 % against its two readers.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_lib.data import render_shapes
from course_lib.data.shapes import SHAPE_KINDS
from course_lib.eval.agreement import agreement_table, judge_verdicts, read_eye_read, shape_agreement
from course_lib.eval.judges import CHECKPOINT_DIR, SHAPES_JUDGE, load_judge, load_judge_file
from course_lib.eval.shapes_eval import shapes_eval
from course_lib.eval.silhouette import FEATURES, silhouette_features
from images import gaussian_blur

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
ISSUE_BARS = {"shape": 0.90, "colour": 0.97, "position": 0.97}
# per held-out set: images, shapes the two readers agree on, and the judge's shape agreement at its bar
# (0.5) with reader A, reader B and where they agree, as measured (fresh: 90.4 / 90.0 / 91.4 %; third:
# 82.2 / 79.4 / 84.9 %); colour and position measured 99.2 / 100 % and 100 / 99.4 %
# fourth (read after this judge was committed): 88.6 / 91.8 / 92.0 %, colour 98.2 %, position 100 %
HELD_OUT = {"eye_read_fresh": {"n": 240, "agree": 233, "reader_a": 0.90, "reader_b": 0.895, "agreed": 0.91},
            "eye_read_third": {"n": 180, "agree": 159, "reader_a": 0.82, "reader_b": 0.79, "agreed": 0.845},
            "eye_read_fourth": {"n": 220, "agree": 212, "reader_a": 0.88, "reader_b": 0.915, "agreed": 0.915}}


@pytest.fixture(scope="module")
def judge():
    return load_judge("shapes_silhouette", device="cpu")


def both_readers(name):
    """(images, reader A's rows, the same rows with reader B's shapes) of a held-out set."""
    folder = DATA / name
    images, rows = read_eye_read(folder)
    with open(folder / "labels_reader2.csv", newline="") as f:
        second = {r["id"]: r for r in csv.DictReader(f)}
    return images, rows, [{**r, "shape": second[r["id"]]["shape"]} for r in rows]


@pytest.fixture(scope="module", params=sorted(HELD_OUT))
def held_out(request):
    return request.param, *both_readers(request.param)


def test_the_held_out_sets_are_complete_and_blind(held_out):
    name, images, rows, rows_b = held_out
    n = HELD_OUT[name]["n"]
    assert images.shape == (n, 3, 32, 32) and images.dtype == torch.uint8
    assert [int(r["id"]) for r in rows] == list(range(n))
    words = set(SHAPE_KINDS) | {"unreadable"}
    assert all(r["shape"] in words for r in rows) and all(r["shape"] in words for r in rows_b)
    assert {r["labeller"] for r in rows} == {"agent-A"}
    agree = sum(a["shape"] == b["shape"] for a, b in zip(rows, rows_b))
    assert agree == HELD_OUT[name]["agree"]                    # the two readers, as docs/judges.md quotes


def test_held_out_agreement_holds_its_floors(judge, held_out):
    name, images, rows, rows_b = held_out
    floors = HELD_OUT[name]
    verdicts = judge_verdicts(judge, images)
    bar = judge.min_confidence
    agreed = [k for k, (a, b) in enumerate(zip(rows, rows_b)) if a["shape"] == b["shape"]]
    assert shape_agreement(verdicts, rows, bar) >= floors["reader_a"]
    assert shape_agreement(verdicts, rows_b, bar) >= floors["reader_b"]
    assert shape_agreement([verdicts[k] for k in agreed], [rows[k] for k in agreed], bar) >= floors["agreed"]
    table = agreement_table(judge, folder=DATA / name)
    assert table["all"]["colour"] >= ISSUE_BARS["colour"] and table["all"]["position"] >= ISSUE_BARS["position"]


def test_on_the_hard_set_it_agrees_more_often_than_the_network_judges():
    images, rows = read_eye_read(DATA / "eye_read_third")
    ours = shape_agreement(judge_verdicts("shapes_silhouette", images), rows, 0.5)
    for name in ("shapes_calibrated", "shapes_second"):               # 65.0 % and 61.1 % at their bars
        theirs = shape_agreement(judge_verdicts(name, images), rows, load_judge(name, device="cpu").min_confidence)
        assert ours > theirs + 0.1, (name, ours, theirs)


def test_the_course_reads_images_with_the_judge_closest_to_the_readers():
    # the fourth set decided SHAPES_JUDGE: 88.6 / 91.8 % against readers A / B; the old judge (at 0.9)
    # 86.4 / 89.5, the calibrated 86.8 / 90.0, the second 85.9 / 89.1 (docs/judges.md, sixth round)
    images, rows, rows_b = both_readers("eye_read_fourth")

    def agreement(name):
        verdicts, bar = judge_verdicts(name, images), load_judge(name, device="cpu").min_confidence or 0.9
        return shape_agreement(verdicts, rows, bar), shape_agreement(verdicts, rows_b, bar)

    assert SHAPES_JUDGE == "shapes_silhouette"
    ours = agreement(SHAPES_JUDGE)
    for name in ("shapes", "shapes_calibrated", "shapes_second"):
        theirs = agreement(name)
        assert ours[0] > theirs[0] + 0.01 and ours[1] > theirs[1] + 0.01, (name, ours, theirs)


def test_real_renders_are_read_right_at_the_bar(judge):
    real = render_shapes(600, seed=987_654)                     # a seed nothing was fitted on
    labels, conf = judge.predict(real.images)
    for key in ("colour", "size", "position"):
        assert (labels[key] == real.attrs[key]).float().mean() >= 0.99, key
    right = (labels["shape"] == real.attrs["shape"]) & (conf["shape"] >= judge.min_confidence)
    assert right.float().mean() >= 0.99


@pytest.mark.parametrize("sigma, floor", [(0.5, 0.99), (0.8, 0.95)])    # measured 100 % and 95.8 %
def test_blurred_renders_are_still_read(judge, sigma, floor):
    # a person reads a blurred cross as a cross; fitted without blurred renders the judge read 93.7 %
    # and 53.7 % (it abstained on the soft outlines)
    real = render_shapes(600, seed=987_654)
    labels, conf = judge.predict(gaussian_blur(real.images, sigma).clamp(0, 1))
    right = (labels["shape"] == real.attrs["shape"]) & (conf["shape"] >= judge.min_confidence)
    assert right.float().mean() >= floor


def test_other_sizes_are_resized_and_read(judge):
    # resized to 32 x 32 first: from 64 x 64 the resize blurs (measured 200 of 200 right; 176 before
    # the blurred renders were added); from 16 x 16 it reads only 65 %, a known limit (docs/judges.md)
    big = render_shapes(200, size=64, seed=3)
    assert judge.predict(big.images)[0]["shape"].eq(big.attrs["shape"]).float().mean() >= 0.98


def test_nothing_to_read_gives_no_confidence(judge):
    blank = torch.zeros(2, 3, 32, 32)
    labels, conf = judge.predict(blank)
    assert set(labels) == {"shape", "colour", "size", "position"}
    assert (conf["shape"] == 0).all() and (conf["colour"] == 0).all()
    with pytest.raises(TypeError, match="uint8"):
        judge.predict(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_features_have_their_names_and_the_checkpoint_its_bar(judge):
    f, mains, radius = silhouette_features(render_shapes(4, seed=0).images)
    assert f.shape == (4, len(FEATURES)) and len(mains) == 4 and radius.shape == (4,)
    report = json.loads((CHECKPOINT_DIR / "judge_shapes_silhouette.json").read_text())
    assert report["min_confidence"] == judge.min_confidence == 0.5
    assert judge.features(render_shapes(4, seed=0).images).shape == (4, len(FEATURES))


def test_shapes_eval_reads_with_it(judge):
    real = render_shapes(60, seed=11, two_objects=0.5)
    report = shapes_eval(real.images, real.captions, judge="shapes_silhouette")
    assert report["overall"] >= 0.97


def test_the_script_recreates_the_shipped_judge(tmp_path):
    out = tmp_path / "judge.safetensors"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "train_silhouette_judge.py"), "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True, timeout=600)
    made, shipped = load_judge_file(out), load_judge_file(CHECKPOINT_DIR / "judge_shapes_silhouette.safetensors")
    for (k, a), (_, b) in zip(made.state_dict().items(), shipped.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
