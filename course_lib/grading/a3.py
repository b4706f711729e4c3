"""Graded checks of assignment A3 (Phase 2): attention and a transformer block.

Each ``check_*`` compares the learner's function with the course reference
(:mod:`course_lib.nn.attention`) on random inputs and raises
:class:`course_lib.checks.CheckFailure` with a specific message when they differ. The defaults
are the visible tests of the assignment; the hidden tests (in the instructor's source notebook
only) call the same functions with other seeds, shapes, masks, dtypes and edge cases.

Weights are plain tensors in a dict, used as ``x @ W + b`` (``W: (D_in, D_out)``):

- attention: ``Wq, bq, Wk, bk, Wv, bv, Wo, bo`` with ``W*: (D, D)``, ``b*: (D,)``;
- block: the attention weights plus ``ln1_g, ln1_b, ln2_g, ln2_b`` ``(D,)`` (LayerNorm gain and
  bias, eps 1e-5) and the MLP's ``W1 (D, F), b1 (F,), W2 (F, D), b2 (D,)`` (exact GELU between).

    >>> check_attention(scaled_dot_product_attention)
    ✅ scaled_dot_product_attention matches the reference on 3 random inputs
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from course_lib.grading.graded import graded_check
from course_lib.nn import attention as _ref

__all__ = ["check_attention", "check_split_heads", "check_merge_heads", "check_multi_head_attention",
           "check_transformer_block", "MASK_KINDS"]

# An A3 answer may call none of the attention references (however it reaches them).
REFERENCES = (_ref.attention, _ref.causal_mask, _ref.padding_mask, _ref.split_heads, _ref.merge_heads,
              _ref.MultiHeadAttention.forward, _ref.MLP.forward, _ref.TransformerBlock.forward)

MASK_KINDS = ("none", "causal", "padding", "random")


def _cycle(options: Sequence, i: int):
    return options[i % len(options)]


def _make_mask(kind: str, B: int, Tq: int, Tk: int, gen: torch.Generator) -> torch.Tensor | None:
    """A bool mask (True = keep) that leaves every query at least one key to look at."""
    if kind == "none":
        return None
    if kind == "causal":
        if Tq != Tk:
            raise ValueError("a causal mask needs as many queries as keys")
        return torch.ones(Tq, Tk, dtype=torch.bool).tril()                     # (Tq, Tk)
    if kind == "padding":
        lengths = torch.randint(1, Tk + 1, (B,), generator=gen)
        return (torch.arange(Tk)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, Tk)
    if kind == "random":
        keep = torch.rand(B, 1, Tq, Tk, generator=gen) > 0.4
        keep[..., 0] = True
        return keep                                                             # (B, 1, Tq, Tk)
    raise ValueError(f"unknown mask kind {kind!r}; use one of {MASK_KINDS}")


def _attention_weights(D: int, gen: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    params = {}
    for name in ("q", "k", "v", "o"):
        params[f"W{name}"] = torch.randn(D, D, generator=gen, dtype=dtype) / D ** 0.5
        params[f"b{name}"] = 0.1 * torch.randn(D, generator=gen, dtype=dtype)
    return params


def _block_weights(D: int, hidden: int, gen: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    params = _attention_weights(D, gen, dtype)
    for i in (1, 2):
        params[f"ln{i}_g"] = 1.0 + 0.2 * torch.randn(D, generator=gen, dtype=dtype)
        params[f"ln{i}_b"] = 0.1 * torch.randn(D, generator=gen, dtype=dtype)
    params["W1"] = torch.randn(D, hidden, generator=gen, dtype=dtype) / D ** 0.5
    params["b1"] = 0.1 * torch.randn(hidden, generator=gen, dtype=dtype)
    params["W2"] = torch.randn(hidden, D, generator=gen, dtype=dtype) / hidden ** 0.5
    params["b2"] = 0.1 * torch.randn(D, generator=gen, dtype=dtype)
    return params


# ----------------------------------------------------------------------------- references
# The library's modules, loaded with the given weights (nn.Linear computes x Wᵀ + b, hence .T).
@torch.no_grad()
def _load_attention(mha: _ref.MultiHeadAttention, params: dict) -> None:
    for name, proj in (("q", mha.q_proj), ("k", mha.k_proj), ("v", mha.v_proj), ("o", mha.out_proj)):
        proj.weight.copy_(params[f"W{name}"].T)
        proj.bias.copy_(params[f"b{name}"])


@torch.no_grad()
def _ref_multi_head_attention(x, params, num_heads, mask=None, context=None):
    D = x.shape[-1]
    mha = _ref.MultiHeadAttention(D, num_heads, use_sdpa=False).to(x.dtype).eval()
    _load_attention(mha, params)
    return mha(x, context=context, mask=mask)


@torch.no_grad()
def _ref_transformer_block(x, params, num_heads, causal=False):
    D, hidden = x.shape[-1], params["W1"].shape[1]
    block = _ref.TransformerBlock(D, num_heads, mlp_ratio=hidden / D, causal=causal).to(x.dtype).eval()
    _load_attention(block.attn, params)
    block.ln1.weight.copy_(params["ln1_g"]), block.ln1.bias.copy_(params["ln1_b"])
    block.ln2.weight.copy_(params["ln2_g"]), block.ln2.bias.copy_(params["ln2_b"])
    block.mlp.fc1.weight.copy_(params["W1"].T), block.mlp.fc1.bias.copy_(params["b1"])
    block.mlp.fc2.weight.copy_(params["W2"].T), block.mlp.fc2.bias.copy_(params["b2"])
    return block(x)


# ----------------------------------------------------------------------------- checks
def check_attention(fn: Callable, *, seed: int = 0,
                    shapes: Sequence[tuple[int, ...]] = ((2, 3, 5, 5, 4, 4),),
                    masks: Sequence[str] = ("none", "causal"), scale: float = 1.0,
                    dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(q, k, v[, mask])`` must return ``(out, weights)`` of scaled dot-product attention.

    ``shapes`` are ``(B, H, Tq, Tk, d, dv)``, with ``B = 0`` meaning plain 2-D ``(T, d)`` inputs;
    ``masks`` cycle through :data:`MASK_KINDS` ("none" calls ``fn(q, k, v)`` without a mask);
    ``scale`` multiplies q and k (large scores test a numerically stable softmax)."""
    calls = iter(range(10**6))

    def make_inputs(gen: torch.Generator):
        i = next(calls)
        B, H, Tq, Tk, d, dv = _cycle(shapes, i)
        lead = (B, H) if B else ()
        q = scale * torch.randn(*lead, Tq, d, generator=gen, dtype=dtype)
        k = scale * torch.randn(*lead, Tk, d, generator=gen, dtype=dtype)
        v = torch.randn(*lead, Tk, dv, generator=gen, dtype=dtype)
        mask = _make_mask(_cycle(masks, i), max(B, 1), Tq, Tk, gen)
        if mask is not None and not B:
            mask = mask[0, 0]
        return (q, k, v) if mask is None else (q, k, v, mask)

    tol = 1e-10 if dtype == torch.float64 else 1e-5
    graded_check(fn, _ref.attention, make_inputs, name="scaled_dot_product_attention", trials=trials,
                 seed=seed, forbid=REFERENCES, atol=tol, rtol=tol * 10)


def check_split_heads(fn: Callable, *, seed: int = 0, shapes: Sequence[tuple[int, int, int, int]] = ((2, 5, 4, 3),),
                      dtype: torch.dtype = torch.float32, trials: int = 2):
    """``fn(x, num_heads)``: ``(B, T, H*d) -> (B, H, T, d)``; ``shapes`` are ``(B, T, H, d)``."""
    calls = iter(range(10**6))

    def make_inputs(gen: torch.Generator):
        B, T, H, d = _cycle(shapes, next(calls))
        return torch.randn(B, T, H * d, generator=gen, dtype=dtype), H

    graded_check(fn, _ref.split_heads, make_inputs, name="split_heads", trials=trials, seed=seed,
                 forbid=REFERENCES, atol=0.0, rtol=0.0)


def check_merge_heads(fn: Callable, *, seed: int = 0, shapes: Sequence[tuple[int, int, int, int]] = ((2, 5, 4, 3),),
                      dtype: torch.dtype = torch.float32, trials: int = 2):
    """``fn(x)``: ``(B, H, T, d) -> (B, T, H*d)``; ``shapes`` are ``(B, T, H, d)``."""
    calls = iter(range(10**6))

    def make_inputs(gen: torch.Generator):
        B, T, H, d = _cycle(shapes, next(calls))
        return torch.randn(B, H, T, d, generator=gen, dtype=dtype)

    graded_check(fn, _ref.merge_heads, make_inputs, name="merge_heads", trials=trials, seed=seed,
                 forbid=REFERENCES, atol=0.0, rtol=0.0)


def check_multi_head_attention(fn: Callable, *, seed: int = 0,
                               shapes: Sequence[tuple[int, int, int, int, int]] = ((2, 5, 5, 8, 2),),
                               masks: Sequence[str] = ("none",), cross: bool = False,
                               dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(x, params, num_heads, mask, context)`` must give multi-head attention ``(B, T, D)``.

    ``shapes`` are ``(B, T, S, D, H)``; with ``cross=True`` the keys and values come from a
    ``context (B, S, D)``, otherwise ``context`` is None (self-attention, ``S = T``)."""
    calls = iter(range(10**6))

    def make_inputs(gen: torch.Generator):
        i = next(calls)
        B, T, S, D, H = _cycle(shapes, i)
        S = S if cross else T
        x = torch.randn(B, T, D, generator=gen, dtype=dtype)
        context = torch.randn(B, S, D, generator=gen, dtype=dtype) if cross else None
        params = _attention_weights(D, gen, dtype)
        mask = _make_mask(_cycle(masks, i), B, T, S, gen)
        return x, params, H, mask, context

    tol = 1e-10 if dtype == torch.float64 else 1e-5
    graded_check(fn, _ref_multi_head_attention, make_inputs, name="multi_head_attention",
                 trials=trials, seed=seed, forbid=REFERENCES, atol=tol, rtol=tol * 10)


def check_transformer_block(fn: Callable, *, seed: int = 0,
                            shapes: Sequence[tuple[int, int, int, int, int]] = ((2, 6, 8, 2, 16),),
                            causal: Sequence[bool | None] = (None, False),
                            dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(x, params, num_heads, causal=False)`` must give the pre-LN block's output
    ``(B, T, D)``; ``shapes`` are ``(B, T, D, H, hidden)``; ``causal`` cycles per trial, ``None``
    leaving it out (the default must be ``False``)."""
    calls = iter(range(10**6))

    def make_inputs(gen: torch.Generator):
        i = next(calls)
        B, T, D, H, hidden = _cycle(shapes, i)
        x = torch.randn(B, T, D, generator=gen, dtype=dtype)
        args = (x, _block_weights(D, hidden, gen, dtype), H)
        mask = _cycle(causal, i)
        return args if mask is None else args + (bool(mask),)

    tol = 1e-10 if dtype == torch.float64 else 1e-5
    graded_check(fn, _ref_transformer_block, make_inputs, name="transformer_block", trials=trials,
                 seed=seed, forbid=REFERENCES, atol=tol, rtol=tol * 10)
