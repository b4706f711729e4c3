"""The one attention module of course_lib gives the numbers of the modules it replaced (issue 13).

Below are frozen copies of the attention code as it was before (course_lib at commit 10dd8f7):
``nn/attention.py``'s MultiHeadAttention, MLP and TransformerBlock, the U-Net's ``Attention`` and
the captioner's ``CrossAttentionBlock``. Each model is built twice from one seed, once with the
old module swapped in. The two must create the same parameters in the same order (so the seeded
initialisation and the optimiser see the same tensors) and compute the same outputs and
gradients, so that every notebook's numbers stay what they were. The contract is agreement to
1e-5; today the new code is bit-identical, and the tests hold it to that (``max_diff`` is 0).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import course_lib.models.captioning as captioning
import course_lib.models.clip as clip
import course_lib.models.gpt as gpt
import course_lib.models.unet as unet
import course_lib.models.vit as vit
from course_lib.nn.attention import MultiHeadAttention, TransformerBlock, padding_mask

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- the old modules, frozen
def _old_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def _old_split(x, h):
    B, T, D = x.shape
    return x.view(B, T, h, D // h).transpose(1, 2)


def _old_merge(x):
    B, H, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d)


class OldMultiHeadAttention(nn.Module):
    def __init__(self, dim, num_heads, dropout=0.0, causal=False, use_sdpa=True):
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.causal, self.use_sdpa, self.dropout = causal, use_sdpa, dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(dropout)

    def _full_mask(self, T, S, mask, device):
        if not self.causal:
            return mask
        cm = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        if mask is None:
            return cm
        if mask.dtype != torch.bool:
            return mask + torch.zeros(T, S, dtype=mask.dtype, device=device).masked_fill(~cm, float("-inf"))
        return mask & cm

    def forward(self, x, context=None, mask=None, return_weights=False):
        src = x if context is None else context
        B, T, _ = x.shape
        S = src.shape[1]
        q = _old_split(self.q_proj(x), self.num_heads)
        k = _old_split(self.k_proj(src), self.num_heads)
        v = _old_split(self.v_proj(src), self.num_heads)
        p = self.dropout if self.training else 0.0
        if self.use_sdpa and not return_weights:
            if self.causal and mask is None:
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._full_mask(T, S, mask, x.device),
                                                     dropout_p=p)
            return self.out_proj(_old_merge(out))
        out, weights = _old_attention(q, k, v, self._full_mask(T, S, mask, x.device))
        if p > 0:
            out = self.attn_drop(weights) @ v
        out = self.out_proj(_old_merge(out))
        return (out, weights) if return_weights else out


class OldMLP(nn.Module):
    def __init__(self, dim, hidden, dropout=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc2(self.act(self.fc1(x))))


class OldTransformerBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, dropout=0.0, causal=False):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = OldMultiHeadAttention(dim, num_heads, dropout=dropout, causal=causal)
        self.drop = nn.Dropout(dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = OldMLP(dim, int(round(dim * mlp_ratio)), dropout)

    def forward(self, x, mask=None, return_weights=False):
        if return_weights:
            a, weights = self.attn(self.ln1(x), mask=mask, return_weights=True)
        else:
            a, weights = self.attn(self.ln1(x), mask=mask), None
        x = x + self.drop(a)
        x = x + self.mlp(self.ln2(x))
        return (x, weights) if return_weights else x


class OldCrossAttentionBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, dropout=0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.self_attn = OldMultiHeadAttention(dim, num_heads, dropout=dropout, causal=True)
        self.ln2 = nn.LayerNorm(dim)
        self.cross_attn = OldMultiHeadAttention(dim, num_heads, dropout=dropout, causal=False)
        self.ln3 = nn.LayerNorm(dim)
        self.mlp = OldMLP(dim, int(round(dim * mlp_ratio)), dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, memory, return_weights=False):
        x = x + self.drop(self.self_attn(self.ln1(x)))
        if return_weights:
            c, weights = self.cross_attn(self.ln2(x), context=memory, return_weights=True)
        else:
            c, weights = self.cross_attn(self.ln2(x), context=memory), None
        x = x + self.drop(c)
        x = x + self.mlp(self.ln3(x))
        return (x, weights) if return_weights else x


class OldUNetAttention(nn.Module):
    def __init__(self, channels, num_heads=4, context_dim=None):
        super().__init__()
        self.num_heads = num_heads
        self.norm = unet._norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = unet._zero(nn.Linear(channels, channels))
        self.context_dim = context_dim
        if context_dim is not None:
            self.norm_x = nn.LayerNorm(channels)
            self.q = nn.Linear(channels, channels)
            self.kv = nn.Linear(context_dim, 2 * channels)
            self.cross_out = unet._zero(nn.Linear(channels, channels))
        self.last_cross_weights = None
        self.record_cross = False

    def _heads(self, x):
        B, N, C = x.shape
        return x.reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, x, context=None, context_mask=None):
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        h_seq = x.flatten(2).transpose(1, 2) + self.out(a.transpose(1, 2).reshape(B, H * W, C))
        if self.context_dim is not None:
            q = self._heads(self.q(self.norm_x(h_seq)))
            k, v = (self._heads(z) for z in self.kv(context).chunk(2, dim=-1))
            mask = None if context_mask is None else context_mask[:, None, None, :].bool()
            if self.record_cross:
                scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
                if mask is not None:
                    scores = scores.masked_fill(~mask, float("-inf"))
                weights = scores.softmax(-1)
                self.last_cross_weights = weights.detach()
                a = weights @ v
            else:
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            h_seq = h_seq + self.cross_out(a.transpose(1, 2).reshape(B, H * W, C))
        return h_seq.transpose(1, 2).reshape(B, C, H, W)


# ----------------------------------------------------------------------------- helpers
def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_same(new: torch.Tensor, old: torch.Tensor, what: str) -> None:
    """Bit-identical (which is what keeps the notebooks' numbers); the contract would be 1e-5."""
    d = max_diff(new, old)
    assert torch.equal(new, old), f"{what}: the new module differs from the old one by up to {d:.3g}"


def build_twice(monkeypatch, module, swaps: dict, make, seed: int = 0):
    """``make()`` under ``seed`` with the new code, and again with ``module``'s names in ``swaps``
    replaced by the old classes. Returns ``(new, old)``."""
    torch.manual_seed(seed)
    new = make()
    with monkeypatch.context() as m:
        for name, old_cls in swaps.items():
            m.setattr(module, name, old_cls)
        torch.manual_seed(seed)
        old = make()
    return new, old


def assert_same_parameters(new: nn.Module, old: nn.Module) -> None:
    """The same tensors in the same order: the seeded initialisation and the optimiser agree."""
    pn, po = list(new.named_parameters()), list(old.named_parameters())
    assert [p.shape for _, p in pn] == [p.shape for _, p in po]
    for (name, a), (_, b) in zip(pn, po):
        assert_same(a, b, f"parameter {name}")


def assert_same_grads(new: nn.Module, old: nn.Module) -> None:
    for (name, a), (_, b) in zip(new.named_parameters(), old.named_parameters()):
        if a.grad is None or b.grad is None:
            assert a.grad is None and b.grad is None, f"gradient of {name}"
            continue
        assert_same(a.grad, b.grad, f"gradient of {name}")


def randomise(*modules: nn.Module, seed: int = 5) -> None:
    """The same random weights everywhere (zero-initialised layers too, so no path is trivially 0)."""
    for m in modules:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------------------- the building blocks
@pytest.mark.parametrize("use_sdpa", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_multi_head_attention_equals_the_old_module(use_sdpa, causal):
    torch.manual_seed(0)
    new = MultiHeadAttention(32, 4, causal=causal, use_sdpa=use_sdpa).eval()
    torch.manual_seed(0)
    old = OldMultiHeadAttention(32, 4, causal=causal, use_sdpa=use_sdpa).eval()
    assert_same_parameters(new, old)
    x, ctx = torch.randn(3, 7, 32), torch.randn(3, 5, 32)
    masks = [None, padding_mask(torch.tensor([7, 3, 1]), 7), torch.rand(3, 1, 7, 7) > 0.3,
             torch.zeros(7, 7).masked_fill(torch.eye(7, dtype=torch.bool).roll(1, 0), float("-inf"))]
    for mask in masks:
        if mask is not None and mask.dtype == torch.bool:
            mask = mask.clone()
            mask[..., 0] = True                                   # every query sees at least one key
        assert_same(new(x, mask=mask), old(x, mask=mask), "self-attention")
        out_n, w_n = new(x, mask=mask, return_weights=True)
        out_o, w_o = old(x, mask=mask, return_weights=True)
        assert_same(out_n, out_o, "self-attention, readable path")
        assert_same(w_n, w_o, "self-attention weights")
    if not causal:
        cmask = padding_mask(torch.tensor([5, 2, 4]), 5)
        assert_same(new(x, context=ctx, mask=cmask), old(x, context=ctx, mask=cmask), "cross-attention")
        assert_same(new(x, context=ctx, return_weights=True)[1], old(x, context=ctx, return_weights=True)[1],
                    "cross-attention weights")


@pytest.mark.parametrize("causal", [False, True])
def test_transformer_block_equals_the_old_block_in_eval_and_with_dropout(causal):
    torch.manual_seed(0)
    new = TransformerBlock(32, 4, mlp_ratio=2.0, dropout=0.2, causal=causal)
    torch.manual_seed(0)
    old = OldTransformerBlock(32, 4, mlp_ratio=2.0, dropout=0.2, causal=causal)
    assert list(new.state_dict()) == list(old.state_dict())          # same names: checkpoints still load
    assert_same_parameters(new, old)
    x = torch.randn(2, 9, 32)
    torch.manual_seed(1)
    y_new = new(x)                                                    # training mode: dropout draws
    torch.manual_seed(1)
    y_old = old(x)
    assert_same(y_new, y_old, "block with dropout")
    y_new.square().mean().backward()
    y_old.square().mean().backward()
    assert_same_grads(new, old)
    new.eval(), old.eval()
    assert_same(new(x, return_weights=True)[1], old(x, return_weights=True)[1], "block weights")


# ----------------------------------------------------------------------------- the models
def test_gpt_equals_the_gpt_built_with_the_old_block(monkeypatch):
    make = lambda: gpt.GPT(vocab_size=40, block_size=16, dim=32, depth=2, num_heads=4, dropout=0.1)  # noqa: E731
    new, old = build_twice(monkeypatch, gpt, {"TransformerBlock": OldTransformerBlock}, make)
    assert_same_parameters(new, old)
    idx = torch.randint(0, 40, (3, 12))
    torch.manual_seed(2)
    loss_new = new.loss(idx, idx.roll(-1, 1))                         # training mode, dropout on
    torch.manual_seed(2)
    loss_old = old.loss(idx, idx.roll(-1, 1))
    assert_same(loss_new, loss_old, "GPT loss with dropout")
    loss_new.backward(), loss_old.backward()
    assert_same_grads(new, old)
    new.eval(), old.eval()
    logits_n, w_n = new(idx, return_weights=True)
    logits_o, w_o = old(idx, return_weights=True)
    assert_same(logits_n, logits_o, "GPT logits")
    for a, b in zip(w_n, w_o):
        assert_same(a, b, "GPT attention weights")
    assert torch.equal(new.generate(idx[:, :2], 8), old.generate(idx[:, :2], 8))


def test_vit_equals_the_vit_built_with_the_old_block(monkeypatch):
    make = lambda: vit.ViT(image_size=16, patch_size=4, in_ch=3, dim=32, depth=2, num_heads=4,  # noqa: E731
                           heads={"shape": 5, "colour": 6})
    new, old = build_twice(monkeypatch, vit, {"TransformerBlock": OldTransformerBlock}, make)
    assert_same_parameters(new, old)
    x = torch.randn(4, 3, 16, 16)
    out_n, out_o = new(x), old(x)
    for key in out_n:
        assert_same(out_n[key], out_o[key], f"ViT head {key}")
    sum(v.logsumexp(-1).sum() for v in out_n.values()).backward()
    sum(v.logsumexp(-1).sum() for v in out_o.values()).backward()
    assert_same_grads(new, old)
    for a, b in zip(new.attention_maps(x), old.attention_maps(x)):
        assert_same(a, b, "ViT attention maps")


def test_clip_text_encoder_equals_the_one_built_with_the_old_block(monkeypatch):
    tok = clip.CaptionTokenizer()
    make = lambda: clip.CLIPModel(tok, image_size=16, embed_dim=32, image_width=8, image_levels=2,  # noqa: E731
                                  text_dim=32, text_depth=2, num_heads=4)
    new, old = build_twice(monkeypatch, clip, {"TransformerBlock": OldTransformerBlock}, make)
    assert_same_parameters(new, old)
    tokens = tok(["a small red circle at the top", "a large blue square", ""])   # padding masked out
    images = torch.rand(3, 3, 16, 16)
    assert_same(new.text_encoder.encode_tokens(tokens), old.text_encoder.encode_tokens(tokens), "CLIP features")
    logits_n, logits_o = new(images, tokens)[0], old(images, tokens)[0]
    assert_same(logits_n, logits_o, "CLIP logits")
    logits_n.logsumexp(-1).sum().backward()
    logits_o.logsumexp(-1).sum().backward()
    assert_same_grads(new, old)


def test_captioner_equals_the_one_built_with_the_old_blocks(monkeypatch):
    tok = captioning.caption_tokenizer()
    make = lambda: captioning.Captioner(tok.vocab_size, block_size=16, dim=32, depth=2,  # noqa: E731
                                        num_heads=4, width=8, enc_depth=1)
    swaps = {"CrossAttentionBlock": OldCrossAttentionBlock, "TransformerBlock": OldTransformerBlock}
    new, old = build_twice(monkeypatch, captioning, swaps, make)
    assert_same_parameters(new, old)            # same order: ln1, attn, ln_cross (was ln2), cross_attn, ln2, mlp
    images = torch.rand(3, 3, 32, 32)
    inputs, targets = captioning.prefix_sequences(["", "what colour is the shape ?", ""],
                                                  ["a large red circle at the top", "red", "a cyan cross"], tok)
    loss_n, loss_o = new.loss(images, inputs, targets), old.loss(images, inputs, targets)
    assert_same(loss_n, loss_o, "captioner loss")
    loss_n.backward(), loss_o.backward()
    assert_same_grads(new, old)
    new.eval(), old.eval()
    for a, b in zip(new.cross_attention(images, inputs), old.cross_attention(images, inputs)):
        assert_same(a, b, "captioner cross-attention weights")
    assert torch.equal(new.generate(images, max_len=8), old.generate(images, max_len=8))


@pytest.mark.parametrize("context_dim", [None, 6])
def test_unet_equals_the_unet_built_with_the_old_attention(monkeypatch, context_dim):
    make = lambda: unet.UNet(1, base=8, mults=(1, 2), attn_levels=(0, 1), num_classes=3,  # noqa: E731
                             context_dim=context_dim)
    new, old = build_twice(monkeypatch, unet, {"Attention": OldUNetAttention}, make)
    assert list(new.state_dict()) == list(old.state_dict())          # same names: checkpoints, exports
    assert_same_parameters(new, old)
    randomise(new, old)                                               # zero-initialised outputs too
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 700]), torch.tensor([0, 3])
    cond = {}
    if context_dim is not None:
        cond = dict(context=torch.randn(2, 5, context_dim),
                    context_mask=torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool))
    eps_n, eps_o = new(x, t, y, **cond), old(x, t, y, **cond)
    assert_same(eps_n, eps_o, "U-Net output")
    eps_n.square().mean().backward()
    eps_o.square().mean().backward()
    assert_same_grads(new, old)
    if context_dim is not None:                                       # the readable path that records weights
        layers_n = [m for m in new.modules() if isinstance(m, unet.Attention)]
        layers_o = [m for m in old.modules() if isinstance(m, OldUNetAttention)]
        for m in layers_n + layers_o:
            m.record_cross = True
        with torch.no_grad():
            assert_same(new(x, t, y, **cond), old(x, t, y, **cond), "U-Net output, recording path")
        for a, b in zip(layers_n, layers_o):
            assert_same(a.last_cross_weights, b.last_cross_weights, "U-Net cross-attention weights")
