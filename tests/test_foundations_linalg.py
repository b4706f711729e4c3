"""Unit tests of course_lib.foundations.linalg (PCA, low-rank approximation, cosine similarity)."""
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from course_lib.foundations.linalg import (PCAResult, cosine_similarity, low_rank_approx, pca, pca_project,
                                           pca_reconstruct)


def _rank_r(m, n, r, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(m, r, generator=g, dtype=dtype)
    A = torch.randn(r, n, generator=g, dtype=dtype)
    return B @ A


# ----------------------------------------------------------------------------- low rank
@pytest.mark.parametrize("m,n,r", [(20, 12, 3), (7, 30, 1), (10, 10, 10)])
def test_rank_r_matrix_is_reproduced_exactly(m, n, r):
    A = _rank_r(m, n, r)
    torch.testing.assert_close(low_rank_approx(A, r), A, atol=1e-10, rtol=1e-10)


def test_eckart_young_error_is_root_sum_square_of_dropped_singular_values():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(25, 15, generator=g, dtype=torch.float64)
    S = torch.linalg.svdvals(A)
    for r in range(1, 15):
        err = torch.linalg.norm(A - low_rank_approx(A, r))           # Frobenius
        torch.testing.assert_close(err, S[r:].pow(2).sum().sqrt())
        assert torch.linalg.matrix_rank(low_rank_approx(A, r)) == r


def test_low_rank_beats_a_random_rank_r_matrix():
    g = torch.Generator().manual_seed(2)
    A = torch.randn(12, 9, generator=g, dtype=torch.float64)
    best = torch.linalg.norm(A - low_rank_approx(A, 2))
    for seed in range(5):
        assert torch.linalg.norm(A - _rank_r(12, 9, 2, seed=seed)) > best


def test_low_rank_numpy_in_numpy_out():
    A = _rank_r(8, 6, 2).numpy()
    out = low_rank_approx(A, 2)
    assert isinstance(out, np.ndarray) and out.shape == (8, 6) and out.dtype == np.float64
    np.testing.assert_allclose(out, A, atol=1e-10)


# ----------------------------------------------------------------------------- PCA
@pytest.fixture(scope="module")
def digits():
    return load_digits().data  # (1797, 64) float64


def test_pca_matches_sklearn_on_digits(digits):
    k = 10
    ref = PCA(n_components=k, svd_solver="full").fit(digits)
    res = pca(digits, k)
    assert isinstance(res, PCAResult) and res.k == k
    assert isinstance(res.components, np.ndarray) and res.components.shape == (k, 64)
    np.testing.assert_allclose(res.mean, ref.mean_, atol=1e-10)
    np.testing.assert_allclose(res.explained_variance, ref.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(res.explained_variance_ratio, ref.explained_variance_ratio_,
                               rtol=1e-8)
    # same sign convention as sklearn, so even the components agree
    np.testing.assert_allclose(res.components, ref.components_, atol=1e-8)
    np.testing.assert_allclose(pca_project(digits, res), ref.transform(digits), atol=1e-7)


def test_pca_torch_in_torch_out_and_agrees_with_numpy(digits):
    X = torch.from_numpy(digits).float()
    res = pca(X, 5)
    assert isinstance(res.components, torch.Tensor) and res.components.dtype == torch.float32
    ref = pca(digits, 5)
    np.testing.assert_allclose(res.explained_variance_ratio.numpy(), ref.explained_variance_ratio,
                               rtol=1e-4)
    np.testing.assert_allclose(res.components.numpy(), ref.components, atol=1e-4)
    Z = pca_project(X, res)
    assert isinstance(Z, torch.Tensor) and Z.shape == (1797, 5)


def test_pca_components_orthonormal_sign_fixed_and_sorted():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(200, 6, generator=g, dtype=torch.float64) * torch.tensor(
        [5.0, 3, 2, 1, 0.5, 0.1], dtype=torch.float64)
    res = pca(X, 6)
    W = res.components
    torch.testing.assert_close(W @ W.T, torch.eye(6, dtype=torch.float64))
    rows = torch.arange(6)
    assert (W[rows, W.abs().argmax(dim=1)] > 0).all()
    assert (res.explained_variance[:-1] >= res.explained_variance[1:]).all()
    torch.testing.assert_close(res.explained_variance_ratio.sum(),
                               torch.tensor(1.0, dtype=torch.float64))
    # deterministic: -X has the same axes, and the sign convention picks the same signs
    again = pca(-X, 6)
    torch.testing.assert_close(again.components, W)


def test_pca_full_rank_reconstruction_is_exact_and_k_smaller_loses_the_right_amount():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(50, 8, generator=g, dtype=torch.float64)
    full = pca(X, 8)
    torch.testing.assert_close(pca_reconstruct(pca_project(X, full), full), X)
    res = pca(X, 3)
    X_hat = pca_reconstruct(pca_project(X, res), res)
    # the squared error per point equals the variance left in the dropped components
    dropped = full.explained_variance[3:].sum() * (50 - 1)
    torch.testing.assert_close(((X - X_hat) ** 2).sum(), dropped)


def test_pca_integer_input_becomes_float():
    X = np.arange(24).reshape(6, 4) % 5
    res = pca(X, 2)
    assert res.components.dtype == np.float64


# ----------------------------------------------------------------------------- cosine
def test_cosine_similarity_known_values_and_torch_reference():
    a = torch.tensor([1.0, 0.0])
    assert cosine_similarity(a, torch.tensor([0.0, 3.0])).item() == pytest.approx(0.0)
    assert cosine_similarity(a, torch.tensor([2.0, 0.0])).item() == pytest.approx(1.0)
    assert cosine_similarity(a, torch.tensor([-1.0, 0.0])).item() == pytest.approx(-1.0)
    assert cosine_similarity(a, torch.tensor([1.0, 1.0])).item() == pytest.approx(2 ** -0.5)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(7, 16, generator=g), torch.randn(7, 16, generator=g)
    torch.testing.assert_close(cosine_similarity(x, y),
                               torch.nn.functional.cosine_similarity(x, y, dim=-1))
    assert cosine_similarity(x, y[0]).shape == (7,)              # broadcasting
    assert cosine_similarity(torch.zeros(3), torch.ones(3)).item() == 0.0


def test_cosine_similarity_numpy():
    out = cosine_similarity(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0]))
    assert isinstance(out, np.ndarray) and out.shape == ()
    assert float(out) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("k", [0, -1, 65, 2.0, True])
def test_pca_bad_k(k, digits):
    with pytest.raises((ValueError, TypeError), match="k"):
        pca(digits, k)


def test_pca_bad_shapes():
    with pytest.raises(ValueError, match="2-D"):
        pca(torch.randn(10), 1)
    with pytest.raises(ValueError, match="at least 2"):
        pca(torch.randn(1, 5), 1)
    with pytest.raises(ValueError, match="NaN"):
        pca(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1)
    with pytest.raises(TypeError, match="torch.Tensor or a numpy"):
        pca([[1.0, 2.0], [3.0, 4.0]], 1)
    res = pca(torch.randn(10, 4), 2)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        pca_project(torch.randn(3, 5), res)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        pca_reconstruct(torch.randn(3, 3), res)


@pytest.mark.parametrize("r", [0, 7, 1.5])
def test_low_rank_bad_r(r):
    with pytest.raises((ValueError, TypeError), match="r"):
        low_rank_approx(torch.randn(6, 9), r)


def test_cosine_bad_shapes():
    with pytest.raises(ValueError, match="last axis"):
        cosine_similarity(torch.randn(3), torch.randn(4))
