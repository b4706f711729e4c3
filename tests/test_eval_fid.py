"""Tests of course_lib.eval.distances and course_lib.eval.accuracy: FID / KID known answers, agreement with
torchmetrics,
and the image-level facades on the shipped judges."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg

from course_lib.eval import (attribute_accuracy, class_report, extract_features, feature_stats, fid, fid_from_features,
                             frechet_distance, kid, kid_from_features, real_vs_real_baseline)


def _random_cov(d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# --------------------------------------------------------------------------- FID, exact statistics
def test_fid_of_shifted_identity_gaussians_is_squared_mean_distance():
    mu = torch.tensor([3.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64)
    assert frechet_distance(torch.zeros(4), eye, mu, eye) == pytest.approx(mu.square().sum().item(), rel=1e-12)


def test_fid_of_diagonal_gaussians_matches_closed_form():
    # for diagonal covariances: FID = |mu1 - mu2|² + sum_i (sqrt(a_i) - sqrt(b_i))²
    a = torch.tensor([1.0, 4.0, 9.0, 0.25], dtype=torch.float64)
    b = torch.tensor([4.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    mu1, mu2 = torch.zeros(4), torch.tensor([1.0, 0.0, 2.0, 0.0])
    expected = 5.0 + (a.sqrt() - b.sqrt()).square().sum().item()
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_fid_matches_scipy_sqrtm_reference_on_full_covariances():
    s1, s2 = _random_cov(12, 1), _random_cov(12, 2)
    mu1, mu2 = torch.randn(12, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    covmean = linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = ((mu1 - mu2) ** 2).sum().item() + np.trace(s1.numpy() + s2.numpy() - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fid_is_symmetric_and_zero_for_equal_statistics():
    s1, s2 = _random_cov(6, 3), _random_cov(6, 4)
    mu1, mu2 = torch.zeros(6), torch.ones(6)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-10)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_fid_accepts_singular_covariances():
    f = torch.randn(5, 16, dtype=torch.float64)  # 5 samples in 16-d: rank-4 covariance
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
    value = fid_from_features(f, f + 1.0)
    assert np.isfinite(value) and value == pytest.approx(16.0, rel=1e-6)


# --------------------------------------------------------------------------- FID, from samples
def test_fid_from_large_samples_approaches_exact_value():
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([1.0, -2.0, 0.5])
    a = torch.randn(40000, 3, generator=g)
    b = torch.randn(40000, 3, generator=g) + mu
    assert fid_from_features(a, b) == pytest.approx(mu.square().sum().item(), rel=0.02)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-9)
    assert fid_from_features(a, b) == pytest.approx(fid_from_features(b, a), rel=1e-9)


def test_feature_stats_are_unbiased_mean_and_covariance():
    f = torch.randn(50, 4, dtype=torch.float64)
    mu, sigma = feature_stats(f)
    assert torch.allclose(mu, f.mean(0))
    assert torch.allclose(sigma, torch.from_numpy(np.cov(f.numpy(), rowvar=False)))


def test_fid_bad_inputs_give_clear_messages():
    with pytest.raises(ValueError, match=r"shape \(N, D\) with N >= 2; got \(3,\)"):
        fid_from_features(torch.zeros(3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"got \(1, 3\)"):
        fid_from_features(torch.zeros(1, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid_from_features(torch.zeros(4, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(torch.full((4, 3), float("nan")), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"\(D, D\)"):
        frechet_distance(torch.zeros(3), torch.eye(2), torch.zeros(3), torch.eye(3))


# --------------------------------------------------------------------------- KID
def _kid_by_loops(x, y):
    """The unbiased MMD² written out with explicit sums over pairs."""
    d = x.shape[1]
    k = lambda a, b: (float(a @ b) / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_the_formula_written_out():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    y = torch.randn(7, 3, generator=g, dtype=torch.float64) + 0.5
    mean, std = kid_from_features(x, y, subsets=3, subset_size=7)  # the whole set: same each round
    assert mean == pytest.approx(_kid_by_loops(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_is_about_zero_for_one_distribution_and_positive_for_shifted():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2000, 8, generator=g), torch.randn(2000, 8, generator=g)
    same_mean, same_std = kid_from_features(a, b, subsets=20, subset_size=500)
    shifted_mean, _ = kid_from_features(a, b + 0.5, subsets=20, subset_size=500)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert shifted_mean > 0.1 and shifted_mean > 20 * abs(same_mean)


def test_kid_is_seeded_and_checks_subset_size():
    a, b = torch.randn(100, 4), torch.randn(80, 4) + 1
    assert kid_from_features(a, b, subsets=5, subset_size=50, seed=3) == \
        kid_from_features(a, b, subsets=5, subset_size=50, seed=3)
    assert kid_from_features(a, b, subsets=5)[1] > 0  # default subsets (40 of 80) differ
    with pytest.raises(ValueError, match="subset_size must be between 2 and min"):
        kid_from_features(a, b, subset_size=81)


# --------------------------------------------------------------------------- agreement with torchmetrics
class _Identity(torch.nn.Module):
    """Hands pre-computed features straight through, so torchmetrics sees what we see."""

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def _two_feature_sets(d=16, n=400):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).relu()
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    y = (torch.randn(n, d, generator=g, dtype=torch.float64) @ mix * 0.3 + 0.2).relu()
    return x, y


def test_fid_agrees_with_torchmetrics():
    tm_fid = pytest.importorskip("torchmetrics.image.fid")
    x, y = _two_feature_sets()
    metric = tm_fid.FrechetInceptionDistance(feature=_Identity(x.shape[1]))
    metric.update(x, real=True)
    metric.update(y, real=False)
    theirs = metric.compute().item()
    assert fid_from_features(x, y) == pytest.approx(theirs, rel=1e-3)
    assert theirs > 0.1


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance`")
def test_kid_agrees_with_torchmetrics():
    tm_kid = pytest.importorskip("torchmetrics.image.kid")
    x, y = _two_feature_sets()
    # subset_size = N: every random subset is the whole set, so both sides draw the same thing
    metric = tm_kid.KernelInceptionDistance(feature=_Identity(x.shape[1]), subsets=2,
                                            subset_size=x.shape[0])
    metric.update(x, real=True)
    metric.update(y, real=False)
    theirs = metric.compute()[0].item()
    assert kid_from_features(x, y, subsets=2, subset_size=x.shape[0])[0] == pytest.approx(theirs, rel=1e-3)
    assert theirs > 0.01


# --------------------------------------------------------------------------- image-level facades
class _FlattenJudge(torch.nn.Module):
    """A stand-in judge whose features are the raw pixels, to test the facades alone."""

    in_channels = 1

    def features(self, x):
        return x.flatten(1)


def test_fid_and_kid_facades_equal_the_feature_functions():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(30, 1, 4, 4, generator=g)
    b = torch.rand(40, 1, 4, 4, generator=g) ** 2
    judge = _FlattenJudge()
    assert fid(a, b, judge=judge, batch_size=7) == pytest.approx(
        fid_from_features(a.flatten(1), b.flatten(1)), rel=1e-9)
    assert kid(a, b, judge=judge, subsets=3) == pytest.approx(
        kid_from_features(a.flatten(1), b.flatten(1), subsets=3), rel=1e-6)
    assert torch.equal(extract_features(a, judge, batch_size=4), a.flatten(1))


def test_fid_facade_rejects_bad_images_clearly():
    judge = _FlattenJudge()
    ok = torch.rand(4, 1, 4, 4)
    with pytest.raises(ValueError, match=r"fid expects images of shape \(N, C, H, W\) with N >= 2; got \(3, 32\)"):
        fid(torch.rand(3, 32), ok, judge=judge)
    with pytest.raises(ValueError, match=r"N >= 2; got \(1, 1, 4, 4\)"):
        fid(ok[:1], ok, judge=judge)
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        fid(ok * 2 - 1, ok, judge=judge)
    with pytest.raises(ValueError, match="1 channel"):
        fid(torch.rand(4, 3, 4, 4), ok, judge=judge)
    with pytest.raises(ValueError, match="valid names: digits, shapes"):
        fid(ok, ok, judge="faces")


# --------------------------------------------------------------------------- with the shipped judges
@pytest.fixture(scope="module")
def digits():
    from course_lib.data import DigitsDataset
    return DigitsDataset("all", size=16)


@pytest.fixture(scope="module")
def shapes():
    from course_lib.data import render_shapes
    return render_shapes(800, size=32, seed=4242)


def test_real_vs_real_baseline_is_small_and_degraded_images_score_clearly_worse(digits):
    x = digits.images
    base = real_vs_real_baseline(x, n=300, judge="digits", repeats=3, seed=0)
    assert base["n"] == 300 and len(base["values"]) == 3
    assert 0 < base["mean"] < 3 and base["std"] >= 0
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    real, other = x[perm[:300]], x[perm[300:600]]
    g = torch.Generator().manual_seed(2)
    noisy = (other + 0.15 * torch.randn(other.shape, generator=g)).clamp(0, 1)
    blurred = F.avg_pool2d(other, 3, stride=1, padding=1)
    assert fid(real, noisy, judge="digits") > 2 * base["mean"]
    assert fid(real, blurred, judge="digits") > 2 * base["mean"]
    assert fid(real, other, judge="digits") < 2 * base["mean"]  # a fresh real subset: near the floor


def test_real_vs_real_baseline_needs_two_disjoint_subsets(digits):
    with pytest.raises(ValueError, match=r"2 \* n = 2000 real images.*got only 1797"):
        real_vs_real_baseline(digits.images, n=1000)


def test_kid_on_judge_features_separates_real_from_noisy(digits):
    x = digits.images[torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))]
    same = kid(x[:600], x[600:1200], judge="digits", subsets=10, subset_size=300)[0]
    noisy = (x[600:1200] + 0.2 * torch.randn(x[600:1200].shape,
                                             generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    worse = kid(x[:600], noisy, judge="digits", subsets=10, subset_size=300)[0]
    assert worse > 0 and worse > 10 * abs(same)


def test_extract_features_batches_agree_with_one_pass(digits):
    x = digits.images[:50]
    assert extract_features(x, "digits", batch_size=7).shape == (50, 64)
    torch.testing.assert_close(extract_features(x, "digits", batch_size=7),
                               extract_features(x, "digits", batch_size=256), atol=1e-5, rtol=1e-5)


def test_attribute_accuracy_of_real_shapes_is_perfect_and_of_wrong_requests_low(shapes):
    acc = attribute_accuracy(shapes.images, shapes.attrs, judge="shapes")
    assert set(acc) == {"shape", "colour", "position", "all"}
    assert min(acc.values()) >= 0.99
    wrong = {k: v.roll(1) for k, v in shapes.attrs.items()}  # someone else's request
    acc_wrong = attribute_accuracy(shapes.images, wrong, keys=("shape", "colour", "size", "position"))
    assert acc_wrong["all"] < 0.05
    assert acc_wrong["colour"] < 0.4 and acc_wrong["all"] <= min(acc_wrong["shape"], acc_wrong["colour"])


def test_attribute_accuracy_takes_a_list_of_dicts_and_checks_keys(shapes):
    rows = [shapes.attr_row(i) for i in range(20)]
    as_list = attribute_accuracy(shapes.images[:20], rows, keys=("colour", "size"))
    as_dict = attribute_accuracy(shapes.images[:20], {k: v[:20] for k, v in shapes.attrs.items()},
                                 keys=("colour", "size"))
    assert as_list == as_dict
    with pytest.raises(ValueError, match=r"attributes \['shape', 'colour', 'size', 'position'\]"):
        attribute_accuracy(shapes.images[:20], rows, keys=("relation",))
    with pytest.raises(ValueError, match="20 images"):
        attribute_accuracy(shapes.images[:20], {k: v[:10] for k, v in shapes.attrs.items()})
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        attribute_accuracy(shapes.images[:20] * 2 - 1, rows)


def test_class_report_on_real_digits_and_on_a_collapsed_generator():
    from course_lib.data import DigitsDataset
    test = DigitsDataset("test", size=16)
    report = class_report(test.images, test.labels, judge="digits")
    assert report["n"] == len(test)
    assert report["recognised"] >= 0.8 and report["min_class_fraction"] >= 0.05
    assert report["accuracy"] >= 0.97 and len(report["per_class_accuracy"]) == 10
    assert sum(report["class_counts"]) == len(test)
    only_sevens = test.images[test.labels == 7]  # mode collapse: every sample is a 7
    collapsed = class_report(only_sevens, judge="digits")
    assert collapsed["min_class_fraction"] == 0 and collapsed["class_fraction"][7] > 0.9
    assert "accuracy" not in collapsed
    with pytest.raises(ValueError, match=r"labels must have shape \(36,\)"):
        class_report(only_sevens, torch.zeros(5, dtype=torch.long))


def test_class_report_uses_a_head_of_the_shapes_judge(shapes):
    report = class_report(shapes.images, shapes.attrs["colour"], judge="shapes", key="colour")
    assert len(report["class_counts"]) == 6 and report["accuracy"] >= 0.99
