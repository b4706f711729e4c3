"""course_lib.nn.attention: the formula, masks, multi-head attention against PyTorch's, positions, the block."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from course_lib.nn.attention import (FeedForward, MultiHeadAttention, TransformerBlock, attend_heads, attention,
                                     causal_mask, merge_heads, padding_mask, split_heads)
from course_lib.nn.embeddings import sinusoidal_positions
from course_lib.nn.layers import MLP


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------------------- attention()
def test_attention_matches_the_formula_written_with_loops():
    q, k, v = torch.randn(5, 4), torch.randn(7, 4), torch.randn(7, 3)
    out, w = attention(q, k, v)
    for i in range(5):
        s = torch.stack([q[i] @ k[j] / math.sqrt(4) for j in range(7)])
        a = torch.exp(s) / torch.exp(s).sum()
        torch.testing.assert_close(w[i], a)
        torch.testing.assert_close(out[i], (a[:, None] * v).sum(0))


def test_attention_matches_torch_sdpa_with_bool_and_float_masks():
    q, k, v = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 8)
    mask = torch.rand(2, 1, 6, 9) > 0.3
    mask[..., 0] = True   # every query keeps at least one key
    out, w = attention(q, k, v, mask)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert (w[~mask.expand_as(w)] == 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 6))
    additive = torch.zeros(6, 9).masked_fill(~mask[0, 0], float("-inf"))
    torch.testing.assert_close(attention(q[:1], k[:1], v[:1], additive)[0], out[:1])


def test_attention_errors_are_clear():
    with pytest.raises(ValueError, match="same feature size"):
        attention(torch.randn(2, 3, 4), torch.randn(2, 3, 5), torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="same number of tokens"):
        attention(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        attention(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be"):
        attention(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4), [[True] * 3] * 3)


def test_causal_mask_is_lower_triangular():
    m = causal_mask(4)
    assert m.dtype == torch.bool and m.shape == (4, 4)
    assert m.tolist() == [[True, False, False, False], [True, True, False, False],
                          [True, True, True, False], [True, True, True, True]]
    with pytest.raises(ValueError):
        causal_mask(0)


def test_padding_mask_keeps_the_real_tokens():
    m = padding_mask(torch.tensor([2, 0, 4]), 4)
    assert m.dtype == torch.bool and m.shape == (3, 1, 1, 4)
    assert m[:, 0, 0].tolist() == [[True, True, False, False], [False] * 4, [True] * 4]
    with pytest.raises(ValueError, match="1-D integer"):
        padding_mask(torch.tensor([1.5]), 3)


def test_split_and_merge_heads_are_inverses():
    x = torch.randn(2, 5, 12)
    h = split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4)
    torch.testing.assert_close(h[:, 1], x[..., 4:8])    # head 1 owns features 4..7
    torch.testing.assert_close(merge_heads(h), x)


# ----------------------------------------------------------------------------- MultiHeadAttention
@pytest.mark.parametrize("causal", [False, True])
def test_mha_equals_torch_multiheadattention_with_copied_weights(causal):
    dim, heads, T = 24, 4, 7
    ref = nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    ours = MultiHeadAttention(dim, heads, causal=causal).load_from_torch(ref).eval()
    x = torch.randn(3, T, dim)
    blocked = ~causal_mask(T) if causal else None       # torch: True = blocked (the opposite convention)
    want, want_w = ref(x, x, x, attn_mask=blocked, average_attn_weights=False)
    torch.testing.assert_close(ours(x), want, atol=1e-5, rtol=1e-5)
    got, got_w = ours(x, return_weights=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=1e-5)


def test_cross_attention_equals_torch_and_has_context_shaped_weights():
    dim, heads = 16, 2
    ref = nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    ours = MultiHeadAttention(dim, heads).load_from_torch(ref).eval()
    x, ctx = torch.randn(2, 5, dim), torch.randn(2, 9, dim)
    out, w = ours(x, context=ctx, return_weights=True)
    assert out.shape == (2, 5, dim) and w.shape == (2, heads, 5, 9)
    torch.testing.assert_close(out, ref(x, ctx, ctx)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_and_readable_paths_agree_with_a_padding_mask(causal):
    mha = MultiHeadAttention(32, 4, causal=causal).eval()
    x = torch.randn(3, 6, 32)
    keep = torch.ones(3, 6, dtype=torch.bool)
    keep[0, 4:] = False                                   # sequence 0 is 4 tokens long, then padding
    mask = keep[:, None, None, :]                         # (B, 1, 1, S)
    fast = mha(x, mask=mask)
    slow, w = mha(x, mask=mask, return_weights=True)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert (w[0, :, :, 4:] == 0).all()                    # nobody looks at padding
    additive = torch.zeros(3, 1, 1, 6).masked_fill(~mask, float("-inf"))   # the same mask, as -inf scores
    torch.testing.assert_close(mha(x, mask=additive), fast, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mha(x, mask=additive, return_weights=True)[0], fast, atol=1e-5, rtol=1e-5)
    readable = MultiHeadAttention(32, 4, causal=causal, use_sdpa=False).eval()
    readable.load_state_dict(mha.state_dict())
    torch.testing.assert_close(readable(x, mask=mask), fast, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_causal_attention_cannot_see_the_future(use_sdpa):
    mha = MultiHeadAttention(16, 2, causal=True, use_sdpa=use_sdpa).eval()
    x = torch.randn(1, 8, 16, requires_grad=True)
    out = mha(x)
    out[0, 3].sum().backward()                            # output at position 3 ...
    assert (x.grad[0, 4:] == 0).all()                     # ... gets no gradient from positions 4..7
    assert (x.grad[0, :4].abs().sum(-1) > 0).all()        # ... but does from 0..3
    x2 = x.detach().clone()
    x2[0, 5:] += 10 * torch.randn(3, 16)                  # change the future
    torch.testing.assert_close(mha(x2)[0, :5], out.detach()[0, :5])
    assert not torch.allclose(mha(x2)[0, 5:], out.detach()[0, 5:])


def test_non_causal_attention_does_see_the_future():
    mha = MultiHeadAttention(16, 2).eval()
    x = torch.randn(1, 8, 16, requires_grad=True)
    mha(x)[0, 3].sum().backward()
    assert (x.grad[0, 4:].abs().sum(-1) > 0).all()


def test_mha_errors_are_clear():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        MultiHeadAttention(30, 4)
    mha = MultiHeadAttention(16, 4)
    with pytest.raises(ValueError, match=r"\(B, T, dim=16\)"):
        mha(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="context must be"):
        mha(torch.randn(2, 5, 16), context=torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="does not broadcast"):
        mha(torch.randn(2, 5, 16), mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="cross-attention"):
        MultiHeadAttention(16, 4, causal=True)(torch.randn(2, 5, 16), context=torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="shapes differ"):
        mha.load_from_torch(nn.MultiheadAttention(16, 2))


def test_dropout_only_acts_in_training():
    mha = MultiHeadAttention(16, 2, dropout=0.5)
    x = torch.randn(2, 6, 16)
    mha.eval()
    torch.testing.assert_close(mha(x), mha(x, return_weights=True)[0])
    mha.train()
    assert not torch.allclose(mha(x, return_weights=True)[0], mha(x, return_weights=True)[0])


# ----------------------------------------------------------------------------- attend_heads, cross-attention
@pytest.mark.parametrize("use_sdpa", [True, False])
def test_attend_heads_is_one_attention_per_slice_of_features(use_sdpa):
    q, k, v = torch.randn(2, 5, 12), torch.randn(2, 7, 12), torch.randn(2, 7, 6)
    mask = padding_mask(torch.tensor([7, 3]), 7)
    out = attend_heads(q, k, v, 3, mask=mask, use_sdpa=use_sdpa)
    assert out.shape == (2, 5, 6)
    for h in range(3):                                    # head h: features 4h..4h+3 of q, k; 2h..2h+1 of v
        want, _ = attention(q[..., 4 * h:4 * h + 4], k[..., 4 * h:4 * h + 4], v[..., 2 * h:2 * h + 2], mask[:, 0])
        torch.testing.assert_close(out[..., 2 * h:2 * h + 2], want, atol=1e-6, rtol=1e-5)
    out2, w = attend_heads(q, k, v, 3, mask=mask, use_sdpa=use_sdpa, return_weights=True)
    torch.testing.assert_close(out2, out, atol=1e-6, rtol=1e-5)
    assert w.shape == (2, 3, 5, 7) and (w[1, :, :, 3:] == 0).all()


def test_cross_attention_to_a_context_of_another_width():
    mha = MultiHeadAttention(16, 2, context_dim=6).eval()
    assert mha.k_proj.in_features == mha.v_proj.in_features == 6 and "context_dim=6" in repr(mha)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 4, 6)
    keep = padding_mask(torch.tensor([4, 2]), 4)
    out, w = mha(x, context=ctx, mask=keep, return_weights=True)
    q = mha.q_proj(x).view(2, 5, 2, 8).transpose(1, 2)                # the formula, by hand
    k = mha.k_proj(ctx).view(2, 4, 2, 8).transpose(1, 2)
    v = mha.v_proj(ctx).view(2, 4, 2, 8).transpose(1, 2)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~keep, float("-inf"))
    want = mha.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mha(x, context=ctx, mask=keep), want, atol=1e-6, rtol=1e-5)   # the fast path
    assert (w[1, :, :, 2:] == 0).all()
    with pytest.raises(ValueError, match="pass context"):
        mha(x)
    with pytest.raises(ValueError, match="context_dim=6"):
        mha(x, context=torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match="self-attention"):
        MultiHeadAttention(16, 2, causal=True, context_dim=6)


def test_block_with_cross_attention_is_self_then_cross_then_feed_forward():
    blk = TransformerBlock(16, 2, mlp_ratio=2.0, causal=True, context_dim=6).eval()
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 4, 6)
    keep = padding_mask(torch.tensor([4, 1]), 4)
    h = x + blk.attn(blk.ln1(x))                                        # causal self-attention
    h = h + blk.cross_attn(blk.ln_cross(h), context=ctx, mask=keep)     # then read the context
    want = h + blk.mlp(blk.ln2(h))
    torch.testing.assert_close(blk(x, context=ctx, context_mask=keep), want)
    out, w = blk(x, context=ctx, context_mask=keep, return_weights=True)
    torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-5)
    assert w.shape == (2, 2, 5, 4) and (w[1, :, :, 1:] == 0).all()      # the cross-attention's weights
    changed = ctx.clone()
    changed[1, 1:] += 5.0                                               # padding of the context: no effect
    changed[0, 0] += 5.0                                                # a real word of the context: an effect
    torch.testing.assert_close(blk(x, context=changed, context_mask=keep)[1], want[1])
    assert not torch.allclose(blk(x, context=changed, context_mask=keep)[0], want[0])
    with pytest.raises(ValueError, match="pass context"):
        blk(x)
    with pytest.raises(ValueError, match="takes no context"):
        TransformerBlock(16, 2)(x, context=torch.randn(2, 4, 16))
    assert "cross_attn.k_proj.weight" in blk.state_dict()
    assert not any("cross" in key for key in TransformerBlock(16, 2).state_dict())


def test_feed_forward_and_the_generic_mlp_have_distinct_names():
    ff = FeedForward(8, 32)
    assert [name for name, _ in ff.named_children()] == ["fc1", "act", "fc2", "drop"]
    assert ff(torch.randn(3, 4, 8)).shape == (3, 4, 8)
    assert FeedForward is not MLP and isinstance(TransformerBlock(8, 2).mlp, FeedForward)


# ----------------------------------------------------------------------------- positions and the block
def test_sinusoidal_positions_values_and_shape():
    pe = sinusoidal_positions(50, 16)
    assert pe.shape == (50, 16)
    torch.testing.assert_close(pe[0, 0::2], torch.zeros(8))
    torch.testing.assert_close(pe[0, 1::2], torch.ones(8))
    t, i = 7, 3
    assert pe[t, 2 * i].item() == pytest.approx(math.sin(t / 10000 ** (2 * i / 16)), abs=1e-6)
    assert pe[t, 2 * i + 1].item() == pytest.approx(math.cos(t / 10000 ** (2 * i / 16)), abs=1e-6)
    assert len({tuple(r) for r in pe.round(decimals=4).tolist()}) == 50   # every position has its own code
    with pytest.raises(ValueError, match="even dim"):
        sinusoidal_positions(10, 7)


def test_transformer_block_is_pre_layernorm_with_residuals():
    blk = TransformerBlock(16, 2, mlp_ratio=2.0).eval()
    assert blk.mlp.fc1.out_features == 32
    x = torch.randn(2, 5, 16)
    h = x + blk.attn(blk.ln1(x))
    want = h + blk.mlp.fc2(torch.nn.functional.gelu(blk.mlp.fc1(blk.ln2(h))))
    torch.testing.assert_close(blk(x), want)
    out, w = blk(x, return_weights=True)
    torch.testing.assert_close(out, want)
    assert w.shape == (2, 2, 5, 5)
    for p in blk.parameters():                            # zero every weight: the block is the identity
        nn.init.zeros_(p)
    torch.testing.assert_close(blk(x), x)


def test_causal_transformer_block_and_mask_argument():
    blk = TransformerBlock(16, 4, causal=True).eval()
    x = torch.randn(1, 6, 16, requires_grad=True)
    blk(x)[0, 2].sum().backward()
    assert (x.grad[0, 3:] == 0).all()
    blk2 = TransformerBlock(16, 4).eval()
    blk2.load_state_dict(blk.state_dict())
    torch.testing.assert_close(blk2(x, mask=causal_mask(6)), blk(x))
