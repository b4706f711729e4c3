"""A3 (attention and a transformer block): the graded checks accept right answers, reject the
usual mistakes with a specific message, refuse answers that call course_lib.nn, and the grader's
sandboxed re-check catches a reference call too."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from course_lib.grading import a3
from course_lib.nn import attention as ref
from grading import assert_check_fails, assert_stub_not_attempted, call_with_references_off

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- answers
def sdpa(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, dim=-1)
    return w @ v, w


def sdpa_no_sqrt(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, dim=-1)
    return w @ v, w


def sdpa_ignores_mask(q, k, v, mask=None):
    return sdpa(q, k, v)


def sdpa_naive_softmax(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    e = torch.exp(scores)
    w = e / e.sum(-1, keepdim=True)
    return w @ v, w


def sdpa_calls_reference(q, k, v, mask=None):
    return ref.attention(q, k, v, mask)


def split(x, num_heads):
    B, T, D = x.shape
    return x.reshape(B, T, num_heads, D // num_heads).transpose(1, 2)


def split_interleaved(x, num_heads):          # head h gets features h, h+H, ...: the wrong slices
    B, T, D = x.shape
    return x.reshape(B, T, D // num_heads, num_heads).permute(0, 3, 1, 2)


def merge(x):
    B, H, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d)


def merge_wrong_order(x):
    B, H, T, d = x.shape
    return x.reshape(B, T, H * d)


def mha(x, params, num_heads, mask=None, context=None):
    c = x if context is None else context
    q = split(x @ params["Wq"] + params["bq"], num_heads)
    k = split(c @ params["Wk"] + params["bk"], num_heads)
    v = split(c @ params["Wv"] + params["bv"], num_heads)
    return merge(sdpa(q, k, v, mask)[0]) @ params["Wo"] + params["bo"]


def mha_without_output_projection(x, params, num_heads, mask=None, context=None):
    c = x if context is None else context
    q = split(x @ params["Wq"] + params["bq"], num_heads)
    k = split(c @ params["Wk"] + params["bk"], num_heads)
    v = split(c @ params["Wv"] + params["bv"], num_heads)
    return merge(sdpa(q, k, v, mask)[0])


def _block(x, params, num_heads, causal, pre_ln=True):
    D, T = x.shape[-1], x.shape[1]
    mask = torch.ones(T, T, dtype=torch.bool).tril() if causal else None
    ln1 = lambda z: F.layer_norm(z, (D,), params["ln1_g"], params["ln1_b"])   # noqa: E731
    ln2 = lambda z: F.layer_norm(z, (D,), params["ln2_g"], params["ln2_b"])   # noqa: E731
    mlp = lambda z: F.gelu(z @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]  # noqa: E731
    if pre_ln:
        h = x + mha(ln1(x), params, num_heads, mask)
        return h + mlp(ln2(h))
    h = ln1(x + mha(x, params, num_heads, mask))
    return ln2(h + mlp(h))


def block(x, params, num_heads, causal=False):
    return _block(x, params, num_heads, causal)


def block_post_ln(x, params, num_heads, causal=False):
    return _block(x, params, num_heads, causal, pre_ln=False)


def block_never_causal(x, params, num_heads, causal=False):
    return _block(x, params, num_heads, False)


def block_uses_library(x, params, num_heads, causal=False):
    blk = ref.TransformerBlock(x.shape[-1], num_heads, mlp_ratio=params["W1"].shape[1] / x.shape[-1],
                               causal=causal)
    return blk(x)


# ----------------------------------------------------------------------------- checks
def test_right_answers_pass_visible_and_harder_settings(capsys):
    a3.check_attention(sdpa)
    a3.check_attention(sdpa, shapes=[(0, 0, 4, 6, 3, 5), (3, 1, 1, 1, 2, 2)], masks=["random", "padding"])
    a3.check_attention(sdpa, masks=["causal"], dtype=torch.float64, scale=30.0)
    a3.check_split_heads(split, shapes=[(1, 1, 1, 7), (3, 4, 8, 1)])
    a3.check_merge_heads(merge, shapes=[(1, 1, 1, 7), (3, 4, 8, 1)], dtype=torch.float64)
    a3.check_multi_head_attention(mha, masks=["causal"])
    a3.check_multi_head_attention(mha, cross=True, masks=["padding", "random"], shapes=[(2, 3, 7, 12, 3)])
    a3.check_transformer_block(block, causal=[True, False], shapes=[(2, 5, 8, 2, 32), (1, 1, 4, 1, 4)])
    a3.check_transformer_block(block, causal=[True], dtype=torch.float64)
    assert capsys.readouterr().out.count("✅") == 9


@pytest.mark.parametrize("check, fn, kwargs, words", [
    (a3.check_attention, sdpa_no_sqrt, {}, ["scaled_dot_product_attention", "differ"]),
    (a3.check_attention, sdpa_ignores_mask, {"masks": ["causal"]}, ["differ"]),
    (a3.check_attention, sdpa_naive_softmax, {"scale": 30.0}, ["NaN"]),
    (a3.check_split_heads, split_interleaved, {}, ["split_heads", "differ"]),
    (a3.check_merge_heads, merge_wrong_order, {}, ["merge_heads", "differ"]),
    (a3.check_multi_head_attention, mha_without_output_projection, {}, ["multi_head_attention", "differ"]),
    (a3.check_transformer_block, block_post_ln, {}, ["transformer_block", "differ"]),
    (a3.check_transformer_block, block_never_causal, {"causal": [True]}, ["differ"]),
    (a3.check_attention, sdpa_calls_reference, {}, ["earns nothing", "course_lib.nn.attention.attention"]),
    (a3.check_transformer_block, block_uses_library, {},
     ["earns nothing", "course_lib.nn.attention.TransformerBlock.forward"]),
])
def test_wrong_answers_fail_with_a_specific_message(check, fn, kwargs, words):
    assert_check_fails(check, fn, words, **kwargs)


def test_a_stub_is_not_attempted_and_scores_nothing():
    assert_stub_not_attempted(a3.check_multi_head_attention)


def test_bad_mask_kind_is_refused():
    with pytest.raises(ValueError, match="unknown mask kind"):
        a3.check_attention(sdpa, masks=["diagonal"])


# ----------------------------------------------------------------------------- the grader's re-check
def test_sandbox_side_knows_the_attention_references():
    """In the re-check job the references are switched off before any learner code runs:
    course_lib.nn's functions and the methods of its classes must be reachable there (loaded by
    the job's warm parent) and stop an answer that reaches them, however it does."""
    from course_lib.grading import zygote
    assert "course_lib.grading.a3" in zygote.PRELOAD
    x = torch.randn(2, 4, 8)
    params = a3._block_weights(8, 16, torch.Generator().manual_seed(0), torch.float32)
    off = lambda fn, *args: call_with_references_off(a3.REFERENCES, fn, args)  # noqa: E731
    assert off(block_uses_library, x, params, 2, False) == "course_lib.nn.attention.TransformerBlock.forward"
    assert off(sdpa_calls_reference, x, x, x) == "course_lib.nn.attention.attention"
    assert off(block, x, params, 2, True) is None


def test_static_audit_flags_importing_course_lib_nn():
    from course_lib.grading import audit
    findings = audit.inspect_cells([("p1_answer", "from course_lib.nn.attention import attention")], set())
    assert any(f.kind == "reference" for f in findings), findings
