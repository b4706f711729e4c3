"""Linear algebra references for Phase 1 · 02 (linear algebra): PCA, low-rank approximation and
cosine similarity.

Every function accepts a ``torch.Tensor`` or a ``numpy.ndarray`` and gives back the same kind
it was given (NumPy in, NumPy out; torch in, torch out, on the same device). Integer inputs are
turned into floating point first (torch's default dtype, or float64 for NumPy).

    >>> res = pca(X, k=2)                 # X: (N, D)
    >>> Z = pca_project(X, res)           # (N, 2)   coordinates along the two main axes
    >>> X_hat = pca_reconstruct(Z, res)   # (N, D)   the best rank-2 (affine) fit of X
    >>> A_2 = low_rank_approx(A, r=2)     # (M, N)   the best rank-2 fit of A (Eckart–Young)

Everything rests on the singular value decomposition ``A = U diag(S) Vᵀ`` with
``S[0] >= S[1] >= ... >= 0``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch

__all__ = ["PCAResult", "pca", "pca_project", "pca_reconstruct", "low_rank_approx",
           "cosine_similarity"]

ArrayLike = Union[torch.Tensor, np.ndarray]


# ----------------------------------------------------------------------------- helpers
def _to_torch(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    """``(tensor, came_from_numpy)``; integer/bool inputs become floating point."""
    if isinstance(x, torch.Tensor):
        t, from_numpy = x, False
    elif isinstance(x, np.ndarray):
        t, from_numpy = torch.from_numpy(np.ascontiguousarray(x)), True
    else:
        raise TypeError(f"{name} must be a torch.Tensor or a numpy.ndarray, "
                        f"got {type(x).__name__}")
    if not t.dtype.is_floating_point:
        if t.is_complex():
            raise TypeError(f"{name} is complex ({t.dtype}); only real matrices are supported")
        t = t.to(torch.float64 if from_numpy else torch.get_default_dtype())
    return t, from_numpy


def _back(t: torch.Tensor, to_numpy: bool) -> ArrayLike:
    return t.detach().cpu().numpy() if to_numpy else t


def _svd(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``A = U diag(S) Vh``: U (M, K), S (K,), Vh (K, N) with K = min(M, N).

    Apple's MPS backend has no SVD kernel, so there the work happens on the CPU."""
    if A.device.type == "mps":
        U, S, Vh = torch.linalg.svd(A.cpu(), full_matrices=False)
        return U.to(A.device), S.to(A.device), Vh.to(A.device)
    return torch.linalg.svd(A, full_matrices=False)


def _check_matrix(A: torch.Tensor, name: str) -> None:
    if A.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(A.shape)}")
    if A.shape[0] == 0 or A.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(A.shape)})")
    if not torch.isfinite(A).all():
        raise ValueError(f"{name} contains NaN or inf values")


def _check_rank(r: Any, largest: int, name: str, shape: tuple) -> None:
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {r!r}")
    if not 1 <= r <= largest:
        raise ValueError(f"{name}={r} is out of range: for shape {shape} it must be between "
                         f"1 and {largest}")


# ----------------------------------------------------------------------------- PCA
@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays has no single truth value
class PCAResult:
    """What :func:`pca` learns from data ``X: (N, D)`` with ``k`` components.

    mean:                     (D,)    the average data point, subtracted before projecting
    components:               (k, D)  orthonormal rows, the directions of largest variance first
    explained_variance:       (k,)    variance of the data along each component (ddof = 1)
    explained_variance_ratio: (k,)    that variance as a fraction of the total variance
    """

    mean: ArrayLike
    components: ArrayLike
    explained_variance: ArrayLike
    explained_variance_ratio: ArrayLike

    @property
    def k(self) -> int:
        return int(self.components.shape[0])


def pca(X: ArrayLike, k: int) -> PCAResult:
    """Principal component analysis of ``X: (N, D)`` keeping ``k`` components (1 <= k <= min(N, D)).

    Centre the data, ``Xc = X - mean``, and take its SVD ``Xc = U diag(S) Vᵀ``. The rows of
    ``Vᵀ`` are the eigenvectors of the covariance ``C = Xcᵀ Xc / (N - 1)``, with eigenvalues
    ``S² / (N - 1)``. Each component's sign is fixed so that its entry of largest absolute value
    is positive (the same convention as scikit-learn), so the result is deterministic.
    """
    Xt, from_numpy = _to_torch(X, "X")
    _check_matrix(Xt, "X")
    N, D = Xt.shape
    if N < 2:
        raise ValueError(f"PCA needs at least 2 data points to measure variance, got N={N}")
    _check_rank(k, min(N, D), "k", (N, D))

    mean = Xt.mean(dim=0)                                  # (D,)
    Xc = Xt - mean                                         # (N, D)  centred data
    _, S, Vh = _svd(Xc)                                    # S: (K,), Vh: (K, D)
    components = Vh[:k]                                    # (k, D)
    # sign convention: the largest-|value| entry of every component is positive
    biggest = components.abs().argmax(dim=1)               # (k,)
    signs = torch.sign(components[torch.arange(k, device=components.device), biggest])
    components = components * signs[:, None]
    variances = S ** 2 / (N - 1)                           # λ_i = σ_i² / (N - 1)
    total = variances.sum()
    ratio = variances[:k] / total if total > 0 else torch.zeros_like(variances[:k])
    return PCAResult(mean=_back(mean, from_numpy),
                     components=_back(components, from_numpy),
                     explained_variance=_back(variances[:k], from_numpy),
                     explained_variance_ratio=_back(ratio, from_numpy))


def _result_like(result: PCAResult, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean (D,) and components (k, D) of ``result`` as tensors matching ``like``."""
    if not isinstance(result, PCAResult):
        raise TypeError(f"result must be the PCAResult returned by pca(), got {type(result).__name__}")
    mean = torch.as_tensor(result.mean).to(device=like.device, dtype=like.dtype)
    comps = torch.as_tensor(result.components).to(device=like.device, dtype=like.dtype)
    return mean, comps


def pca_project(X: ArrayLike, result: PCAResult) -> ArrayLike:
    """Coordinates of ``X: (N, D)`` along the components: ``Z = (X - mean) Wᵀ``, shape (N, k),
    where ``W = result.components: (k, D)``."""
    Xt, from_numpy = _to_torch(X, "X")
    mean, W = _result_like(result, Xt)
    if Xt.dim() != 2 or Xt.shape[1] != W.shape[1]:
        raise ValueError(f"X must have shape (N, {W.shape[1]}) to match the PCA it is projected "
                         f"with, got {tuple(Xt.shape)}")
    return _back((Xt - mean) @ W.T, from_numpy)            # (N, k)


def pca_reconstruct(Z: ArrayLike, result: PCAResult) -> ArrayLike:
    """Back from coordinates ``Z: (N, k)`` to data space: ``X̂ = Z W + mean``, shape (N, D)."""
    Zt, from_numpy = _to_torch(Z, "Z")
    mean, W = _result_like(result, Zt)
    if Zt.dim() != 2 or Zt.shape[1] != W.shape[0]:
        raise ValueError(f"Z must have shape (N, {W.shape[0]}) (one column per component), "
                         f"got {tuple(Zt.shape)}")
    return _back(Zt @ W + mean, from_numpy)                # (N, D)


# ----------------------------------------------------------------------------- low rank
def low_rank_approx(A: ArrayLike, r: int) -> ArrayLike:
    """The best rank-``r`` approximation of ``A: (M, N)``, shape (M, N), for 1 <= r <= min(M, N).

    Keep the ``r`` largest singular values: ``A_r = U[:, :r] diag(S[:r]) Vᵀ[:r]``. By the
    Eckart–Young theorem no other rank-``r`` matrix is closer to ``A``, and the error is
    ``‖A - A_r‖_F = sqrt(S[r]² + S[r+1]² + ...)``, the root-sum-square of what was dropped.
    """
    At, from_numpy = _to_torch(A, "A")
    _check_matrix(At, "A")
    _check_rank(r, min(At.shape), "r", tuple(At.shape))
    U, S, Vh = _svd(At)
    A_r = (U[:, :r] * S[:r]) @ Vh[:r]                      # Σ_{i<r} σ_i u_i v_iᵀ
    return _back(A_r, from_numpy)


# ----------------------------------------------------------------------------- similarity
def cosine_similarity(a: ArrayLike, b: ArrayLike, eps: float = 1e-8) -> ArrayLike:
    """Cosine of the angle between vectors along the last axis: ``a·b / (‖a‖ ‖b‖)``.

    a: (..., D), b: (..., D) (broadcast against each other) -> (...). Values lie in [-1, 1];
    a zero vector gives 0 (the denominator is clamped at ``eps``). Returns NumPy only when
    both inputs are NumPy arrays.
    """
    at, a_np = _to_torch(a, "a")
    bt, b_np = _to_torch(b, "b")
    if at.dim() == 0 or bt.dim() == 0:
        raise ValueError("a and b must be vectors (or batches of vectors), not scalars")
    if at.shape[-1] != bt.shape[-1]:
        raise ValueError(f"a and b must have the same length along the last axis, got "
                         f"{tuple(at.shape)} and {tuple(bt.shape)}")
    dtype = torch.promote_types(at.dtype, bt.dtype)
    at, bt = at.to(dtype), bt.to(device=at.device, dtype=dtype)
    dot = (at * bt).sum(dim=-1)                            # a·b
    norms = at.norm(dim=-1) * bt.norm(dim=-1)              # ‖a‖ ‖b‖
    return _back(dot / norms.clamp_min(eps), a_np and b_np)
