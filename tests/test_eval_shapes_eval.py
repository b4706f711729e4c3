"""ShapesEval (course_lib.eval.shapes_eval) on known answers: real renders pass, blank and noise
fail, a wrong caption fails exactly the category it is wrong in, swapped colours fail attribution."""
from __future__ import annotations


import pytest
import torch
from torch import nn

from course_lib.data.shapes import COLOURS, POSITIONS, SHAPE_KINDS, caption_for, render_shapes
from course_lib.eval.masks import PALETTE, pixel_colours
from course_lib.eval.shapes_eval import CATEGORIES, find_objects, shapes_eval, shapes_eval_verdicts
from images import gaussian_blur

ONE_OBJECT = ("single_object", "colours", "position")
TWO_OBJECTS = ("two_objects", "colour_attribution", "position", "relation")


@pytest.fixture(scope="module")
def one():
    return render_shapes(200, seed=101)


@pytest.fixture(scope="module")
def two():
    return render_shapes(200, seed=102, two_objects=1.0)


def _recaption(batch, i: int, **change) -> str:
    return caption_for({**batch.attr_row(i), **change})


def test_real_renders_pass_every_category(one, two):
    report = shapes_eval(torch.cat([one.images, two.images]), one.captions + two.captions)
    for category in CATEGORIES:
        assert report[category] >= 0.99, (category, report)
    assert report["overall"] >= 0.99 and report["clean"] == 1.0 and report["unreadable"] == 0
    assert report["counts"]["single_object"][1] == report["counts"]["colours"][1] == 200
    assert report["counts"]["two_objects"][1] == report["counts"]["relation"][1] == 200
    assert report["counts"]["position"][1] == 400


def test_objects_are_found_where_they_were_drawn(two):
    objects, clean = find_objects(two.images[0])
    assert clean and len(objects) == 2
    cells = sorted(o["cell"] for o in objects)
    assert cells == sorted([int(two.attrs["position"][0]), int(two.attrs["position2"][0])])
    assert sum(o["area"] for o in objects) == two.masks[0].sum().item()
    for o in objects:                                    # the judge sees it alone, at the centre
        ys, xs = torch.nonzero(o["crop"].amax(0) >= 0.5 * o["crop"].amax(), as_tuple=True)
        assert o["crop"].shape == (3, 32, 32) and len(ys) == o["area"]
        assert abs((xs.min() + xs.max() + 1) / 2 - 16) <= 0.5 and abs((ys.min() + ys.max() + 1) / 2 - 16) <= 0.5


def test_pixels_that_touch_at_a_corner_are_one_object():
    image = torch.zeros(3, 32, 32)
    for i in range(10):                                  # a one-pixel diagonal stroke, 10 px
        image[:, 5 + i, 5 + i] = PALETTE[0]
    objects, clean = find_objects(image)
    assert clean and len(objects) == 1 and objects[0]["area"] == 10


@pytest.mark.parametrize("size", [24, 64])
def test_other_resolutions_pass_too(size):
    batch = render_shapes(60, size=size, seed=size, two_objects=0.5)
    report = shapes_eval(batch.images, batch.captions)
    assert report["overall"] >= 0.98, report


def test_slightly_blurred_renders_still_pass(one, two):
    images = gaussian_blur(torch.cat([one.images, two.images]), sigma=0.8).clamp(0, 1)
    report = shapes_eval(images, one.captions + two.captions)
    assert report["overall"] >= 0.99 and report["clean"] >= 0.99, report   # a 1 px rim: 0.97, 0.96


def test_blank_images_score_zero_and_are_clean(one, two):
    report = shapes_eval(torch.zeros(400, 3, 32, 32), one.captions + two.captions)
    assert all(report[c] == 0.0 for c in CATEGORIES) and report["overall"] == 0.0
    assert report["clean"] == 1.0
    assert "found 0 objects, asked for 1" in shapes_eval_verdicts(torch.zeros(1, 3, 32, 32), one.captions[:1])[0]["why"]


def test_noise_scores_about_zero_and_is_not_clean(one, two):
    noise = torch.rand(400, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    report = shapes_eval(noise, one.captions + two.captions)
    assert all(report[c] <= 0.01 for c in CATEGORIES), report
    assert report["clean"] == 0.0


def test_a_noisy_background_is_not_clean_and_a_faint_one_is(one):
    g = torch.Generator().manual_seed(1)
    for sigma, clean in ((0.02, 1.0), (0.1, 0.0)):                        # Gaussian noise added
        noisy = (one.images + sigma * torch.randn(one.images.shape, generator=g)).clamp(0, 1)
        report = shapes_eval(noisy, one.captions)
        assert report["clean"] == clean and report["single_object"] == clean, (sigma, report)
        assert report["colours"] >= 0.99 and report["position"] >= 0.99, (sigma, report)


def test_a_wrong_caption_fails_the_category_it_is_wrong_in(one):
    for key, other, failing in (("shape", len(SHAPE_KINDS), "single_object"),
                                ("colour", len(COLOURS), "colours"),
                                ("position", len(POSITIONS), "position")):
        wrong = [_recaption(one, i, **{key: (int(one.attrs[key][i]) + 1) % other}) for i in range(40)]
        verdicts = shapes_eval_verdicts(one.images[:40], wrong)
        for v in verdicts:
            assert v[failing] is False and not v["passed"], (key, v["caption"], v["why"])
            assert all(v[c] for c in ONE_OBJECT if c != failing), (key, v["caption"], v["why"])
            assert any(w.startswith({"shape": "shape", "colour": "colour", "position": "at the"}[key])
                       for w in v["why"])


def _distinct(two) -> list[int]:
    """Two-object images whose objects differ in shape and in colour."""
    a = two.attrs
    return [i for i in range(len(two)) if a["shape"][i] != a["shape2"][i] and a["colour"][i] != a["colour2"][i]]


def test_a_wrong_relation_fails_position_and_relation_only(two):
    idx = _distinct(two)[:40]
    flipped = {0: 1, 1: 0, 2: 3, 3: 2}                                      # left of <-> right of, ...
    wrong = [_recaption(two, i, relation=flipped[int(two.attrs["relation"][i])]) for i in idx]
    for v in shapes_eval_verdicts(two.images[idx], wrong):
        assert not v["relation"] and not v["position"], v["caption"]
        assert v["two_objects"] and v["colour_attribution"], (v["caption"], v["why"])
        assert any(w.startswith("not ") and w.split(":")[0][4:] in v["caption"] for w in v["why"]), v["why"]


def _swap_colours(image: torch.Tensor, k1: int, k2: int) -> torch.Tensor:
    """Repaint colour k1 as k2 and k2 as k1, keeping each pixel's coverage (anti-aliasing)."""
    colour, coverage = pixel_colours(image[None])
    swapped = colour[0].clone()
    swapped[colour[0] == k1], swapped[colour[0] == k2] = k2, k1
    repainted = PALETTE[swapped].permute(2, 0, 1) * coverage[0]
    return torch.where(image.sum(0) > 0, repainted, image)


def test_swapped_colours_fail_colour_attribution_but_not_two_objects(two):
    idx = _distinct(two)[:40]
    a = two.attrs
    images = torch.stack([_swap_colours(two.images[i], int(a["colour"][i]), int(a["colour2"][i])) for i in idx])
    report = shapes_eval(images, [two.captions[i] for i in idx])
    assert report["colour_attribution"] == 0.0
    assert report["two_objects"] == 1.0 and report["relation"] == 1.0, report


class _UnsureJudge(nn.Module):
    """A stand-in judge (e.g. a calibrated one) that reads every shape right but is never sure."""

    def __init__(self, shapes: torch.Tensor):
        super().__init__()
        self.heads = nn.ModuleDict({"shape": nn.Linear(1, 5)})
        self.shapes, self.seen = shapes, 0

    def features(self, x):
        return x.flatten(1)

    def predict(self, x):
        labels = self.shapes[self.seen:self.seen + len(x)]
        self.seen += len(x)
        return {"shape": labels}, {"shape": torch.full((len(x),), 0.4)}


def test_a_verdict_below_min_confidence_is_unreadable(one):
    judge = _UnsureJudge(one.attrs["shape"][:10])
    report = shapes_eval(one.images[:10], one.captions[:10], judge=judge, min_confidence=0.3)
    assert report["single_object"] == 1.0
    judge.seen = 0
    verdicts = shapes_eval_verdicts(one.images[:10], one.captions[:10], judge=judge, min_confidence=0.5)
    assert not any(v["single_object"] for v in verdicts) and all(v["colours"] and v["position"] for v in verdicts)
    assert all("unreadable" in v["why"][0] for v in verdicts)
    judge.seen = 0
    assert shapes_eval(one.images[:10], one.captions[:10], judge=judge, min_confidence=0.5)["unreadable"] == 10


@pytest.mark.parametrize("size", [32, 64])
def test_specks_make_the_background_unclean_but_are_not_objects(size):
    batch = render_shapes(1, size=size, seed=3)
    side = size // 16                                    # 2 x 2 px at 32, 4 x 4 at 64: 1/256 of the image
    corner = slice(size - 2 - side, size - 2) if int(batch.attrs["position"][0]) != 8 else slice(2, 2 + side)
    image = batch.images[0].clone()
    image[:, corner, corner] = PALETTE[(int(batch.attrs["colour"][0]) + 1) % 6].view(3, 1, 1)
    v = shapes_eval_verdicts(image[None], batch.captions)[0]
    assert len(v["objects"]) == 1 and not v["clean"]
    assert not v["single_object"] and v["colours"] and v["position"]
    assert "background not clean (specks or noise)" in v["why"]


def test_one_object_asked_two_drawn_fails(two):
    caption = caption_for({**two.attr_row(0), "relation": -1})
    v = shapes_eval_verdicts(two.images[:1], [caption])[0]
    assert not v["passed"] and "found 2 objects, asked for 1" in v["why"]


def test_overall_is_the_mean_of_the_geneval_categories_that_have_images(one):
    report = shapes_eval(one.images[:20], [_recaption(one, i, colour=(int(one.attrs["colour"][i]) + 1) % 6)
                                           for i in range(20)])
    assert report["two_objects"] is None and report["counts"]["two_objects"] == (0, 0)
    assert report["overall"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)


def test_bad_input_gets_a_clear_error(one):
    x, captions = one.images[:2], one.captions[:2]
    with pytest.raises(ValueError, match="not a sentence of the shapes grammar"):
        shapes_eval(x, ["a dog", captions[1]])
    with pytest.raises(ValueError, match="N = len\\(captions\\) = 1"):
        shapes_eval(x, captions[:1])
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        shapes_eval(x * 2 - 1, captions)
    with pytest.raises(ValueError, match="min_confidence"):
        shapes_eval(x, captions, min_confidence=1.5)
    with pytest.raises(TypeError, match="list of strings"):
        shapes_eval(x, "a small red circle at the top")
    with pytest.raises(TypeError, match="'shape' head"):
        shapes_eval(x, captions, judge="digits")
