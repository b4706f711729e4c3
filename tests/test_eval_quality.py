"""Tests of course_lib.eval.accuracy and course_lib.eval.coverage (Inception Score, k-NN precision / recall)
and of FID against the sample size."""
import math

import numpy as np
import pytest
import torch

from course_lib.eval import (class_probabilities, fid_vs_sample_size, inception_score, inception_score_from_probs,
                             kl_to_marginal, knn_radii, precision_recall)
from course_lib.eval.judges import load_judge


def _one_hot(labels, k):
    return torch.nn.functional.one_hot(torch.as_tensor(labels), k).double()


# --------------------------------------------------------------------------- Inception Score
def test_is_equals_number_of_classes_for_confident_uniform_predictions():
    probs = _one_hot(torch.arange(40) % 10, 10)             # each class 4 times, with certainty
    mean, std = inception_score_from_probs(probs)
    assert mean == pytest.approx(10.0, rel=1e-9) and std == 0.0


def test_is_is_one_for_identical_predictions():
    p = torch.softmax(torch.tensor([2.0, -1.0, 0.5, 0.0]), dim=0)
    mean, _ = inception_score_from_probs(p.repeat(25, 1))
    assert mean == pytest.approx(1.0, abs=1e-9)


def test_is_of_confident_predictions_on_m_classes_is_m():
    probs = _one_hot(torch.arange(30) % 3, 10)              # mode dropping: 3 of 10 classes used
    assert inception_score_from_probs(probs)[0] == pytest.approx(3.0, rel=1e-9)


def test_is_matches_a_hand_computed_value():
    # two images: p1 = (1, 0), p2 = (0.5, 0.5); marginal (0.75, 0.25)
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    kl1 = math.log(1 / 0.75)
    kl2 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    torch.testing.assert_close(kl_to_marginal(probs), torch.tensor([kl1, kl2], dtype=torch.float64))
    assert inception_score_from_probs(probs)[0] == pytest.approx(math.exp((kl1 + kl2) / 2), rel=1e-9)


def test_is_splits_use_each_part_own_marginal():
    # first half all class 0, second half all class 1: each split alone has IS 1, the whole set 2
    probs = _one_hot([0] * 10 + [1] * 10, 2)
    assert inception_score_from_probs(probs, splits=1)[0] == pytest.approx(2.0)
    mean, std = inception_score_from_probs(probs, splits=2)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0)


def test_is_rejects_logits_and_bad_splits():
    with pytest.raises(ValueError, match="softmax"):
        inception_score_from_probs(torch.randn(8, 10))
    with pytest.raises(ValueError, match="splits"):
        inception_score_from_probs(_one_hot([0, 1, 2], 3), splits=5)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        inception_score_from_probs(torch.ones(10) / 10)


def test_inception_score_on_the_digits_judge():
    from course_lib.data import DigitsDataset

    x = DigitsDataset("test").images[:200]
    probs = class_probabilities(x, "digits")
    assert probs.shape == (200, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(200))
    mean, std = inception_score(x, "digits", splits=4)
    assert 7.0 < mean <= 10.0 and std >= 0
    # one digit repeated: the judge says the same thing every time -> IS 1
    assert inception_score(x[:1].repeat(50, 1, 1, 1), "digits", splits=1)[0] == pytest.approx(1.0, abs=1e-5)
    # only the digits 0 and 1: the score drops to about 2
    zeros_ones = x[DigitsDataset("test").labels[:200] < 2]
    assert inception_score(zeros_ones, "digits", splits=1)[0] < 2.1


def test_class_probabilities_picks_a_head_of_the_shapes_judge():
    judge = load_judge("shapes", "cpu")
    x = torch.rand(6, 3, 32, 32)
    assert class_probabilities(x, judge, key="colour").shape == (6, judge.heads["colour"].out_features)
    with pytest.raises(ValueError, match="key"):
        class_probabilities(x, judge, key="texture")


# --------------------------------------------------------------------------- precision / recall
def test_knn_radii_known_answer():
    f = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    torch.testing.assert_close(knn_radii(f, k=1), torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(knn_radii(f, k=2), torch.tensor([3.0, 2.0, 3.0, 6.0], dtype=torch.float64))


def test_precision_recall_of_identical_sets_is_one():
    f = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    out = precision_recall(f, f.clone(), k=3)
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["coverage"] == 1.0
    # every fake sits at the centre of its own real ball, plus the balls of neighbours: density >= 1/k ... >= 1
    assert out["density"] >= 1.0


def _two_modes(n, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-6.0, 0.0], [6.0, 0.0]])
    labels = torch.arange(n) % 2
    return centres[labels] + torch.randn(n, 2, generator=g), labels


def test_one_mode_gives_high_precision_and_low_recall():
    real, labels = _two_modes(400, 0)
    fake_all, fake_labels = _two_modes(400, 1)
    fake = fake_all[fake_labels == 0]                       # the generator only draws one mode
    out = precision_recall(real, fake, k=3)
    assert out["precision"] > 0.9
    assert 0.3 < out["recall"] < 0.6                        # about half the real data is covered
    assert 0.3 < out["coverage"] < 0.6


def test_spread_out_fakes_give_low_precision_and_high_recall():
    real, _ = _two_modes(400, 0)
    g = torch.Generator().manual_seed(2)
    fake = torch.randn(400, 2, generator=g) * torch.tensor([10.0, 6.0])   # a wide blob over both modes
    out = precision_recall(real, fake, k=3)
    assert out["precision"] < 0.5 and out["recall"] > 0.8


def test_precision_recall_swap_roles():
    real, _ = _two_modes(200, 0)
    fake = real[:100] + 0.05
    a, b = precision_recall(real, fake, k=3), precision_recall(fake, real, k=3)
    assert a["precision"] == b["recall"] and a["recall"] == b["precision"]


def test_density_counts_balls():
    # three real points far apart, each with radius (k=1) = distance to its neighbour
    real = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    fake = torch.tensor([[0.5, 0.0], [10.0, 0.0]])          # first is inside 2 balls, second in 1
    out = precision_recall(real, fake, k=1)
    assert out["density"] == pytest.approx(3 / 2)
    assert out["precision"] == 1.0 and out["coverage"] == pytest.approx(1.0)


def test_points_on_a_ball_boundary_count_as_inside():
    real = torch.tensor([[0.0], [1.0], [3.0], [7.0]])      # k=1 radii: 1, 1, 2, 4
    fake = torch.tensor([[2.0], [11.0], [12.0]])           # 2.0 is exactly 1 from the real point 1.0
    out = precision_recall(real, fake, k=1)
    assert out["precision"] == pytest.approx(2 / 3)        # 2.0 (boundary) and 11.0 (7 + 4, boundary)


def test_density_and_coverage_known_answers_with_k_2():
    real = torch.tensor([[0.0], [1.0], [3.0], [7.0]])      # k=2 radii: 3, 2, 3, 6
    fake = torch.tensor([[2.0], [2.5], [20.0]])
    # 2.0 lies in the balls of 0 (3), 1 (2), 3 (3), 7 (6 -> 5 <= 6): 4 balls; 2.5 in 0, 1, 3, 7: 4; 20.0 in none
    out = precision_recall(real, fake, k=2)
    assert out["density"] == pytest.approx(8 / (2 * 3))
    assert out["precision"] == pytest.approx(2 / 3)
    # coverage: real balls holding a fake: all four (nearest fakes 2, 1, 0.5, 4.5 vs radii 3, 2, 3, 6)
    assert out["coverage"] == 1.0
    far = precision_recall(real, torch.tensor([[6.0], [6.5], [6.9]]), k=2)
    assert far["coverage"] == pytest.approx(2 / 4)           # balls of 3 (radius 3) and 7 (radius 6)


def test_precision_recall_errors():
    with pytest.raises(ValueError, match="feature sizes differ"):
        precision_recall(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(torch.randn(10, 3), torch.randn(4, 3), k=4)
    with pytest.raises(TypeError):
        precision_recall([[0.0, 1.0]], torch.randn(4, 2))


# --------------------------------------------------------------------------- FID vs sample size
def test_fid_vs_sample_size_is_biased_upwards_at_small_n_and_kid_is_not():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(1000, 16, generator=g), torch.randn(1000, 16, generator=g)
    sizes = [20, 80, 500]
    f = fid_vs_sample_size(real, fake, sizes, repeats=6, metric="fid")
    assert f["sizes"] == sizes and len(f["values"]) == 3 and all(len(v) == 6 for v in f["values"])
    assert f["mean"][0] > f["mean"][1] > f["mean"][2] > 0             # same distribution, FID falls with n
    k = fid_vs_sample_size(real, fake, sizes, repeats=6, metric="kid")
    assert all(abs(m) < 3 * s + 0.05 for m, s in zip(k["mean"], k["std"]))   # unbiased: ~0 at every n
    assert f["std"][0] > f["std"][2]


def test_fid_vs_sample_size_at_full_size_equals_the_plain_metrics():
    from course_lib.eval import fid_from_features, kid_from_features

    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(60, 4, generator=g), torch.randn(60, 4, generator=g) + 0.3
    # with n = N the subsets are the whole sets (only permuted), and both metrics ignore the order
    f = fid_vs_sample_size(real, fake, [60], repeats=2, metric="fid")
    assert f["mean"][0] == pytest.approx(fid_from_features(real, fake), rel=1e-9) and f["std"][0] < 1e-9
    k = fid_vs_sample_size(real, fake, [60], repeats=2, metric="kid")
    want = kid_from_features(real, fake, subsets=1, subset_size=60)[0]
    assert k["mean"][0] == pytest.approx(want, rel=1e-9)


def test_fid_vs_sample_size_on_images_uses_the_judge():
    from course_lib.data import DigitsDataset

    x = DigitsDataset("test").images
    out = fid_vs_sample_size(x[:150], x[150:300], [50, 100], repeats=2)
    assert len(out["mean"]) == 2 and all(np.isfinite(out["mean"]))
    with pytest.raises(ValueError, match="every size"):
        fid_vs_sample_size(x[:50], x[50:100], [60])
    with pytest.raises(ValueError, match="metric"):
        fid_vs_sample_size(x[:50], x[50:100], [20], metric="is")
