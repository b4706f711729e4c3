"""Attention and the transformer block: the one home of attention in the course.

The reference for Phase 2 · 04 (attention and transformers); every model that attends uses it:
the GPT (2 · 05), the ViT (2 · 06), CLIP's text encoder (3 · 05), the captioner (3 · 06, with
cross-attention) and the U-Net's self- and cross-attention (Phase 4).

- :func:`attention`: scaled dot-product attention written out in three lines, returning the
  attention weights as well as the output so you can look at them.
- :func:`causal_mask`: the lower-triangular "no peeking at the future" mask.
- :func:`padding_mask`: hide the filler tokens of sequences padded to a common length.
- :func:`split_heads` / :func:`merge_heads`: ``(B, T, H*d) <-> (B, H, T, d)``.
- :func:`attend_heads`: split projected queries, keys and values into heads, attend, merge; a
  fast path through :func:`torch.nn.functional.scaled_dot_product_attention` and a readable path
  through :func:`attention` that give the same numbers (up to float rounding).
- :class:`MultiHeadAttention`: the projections around :func:`attend_heads`; self-attention, or
  cross-attention to a context (of any width ``context_dim``).
- :class:`FeedForward`: the position-wise network of a transformer block (not the generic
  :class:`course_lib.nn.layers.MLP`).
- :class:`TransformerBlock`: a pre-LayerNorm block, ``x + attn(LN(x))``, optionally
  ``x + cross_attn(LN(x), context)``, then ``x + FeedForward(LN(x))``.

Masks follow one convention everywhere: a **boolean** tensor where ``True`` means *this query may
look at this key* (keep) and ``False`` means *blocked*. It must broadcast to the score matrix
``(B, H, Tq, Tk)``: a ``(Tq, Tk)`` mask is shared by every sequence and head, a padding mask for a
batch is ``(B, 1, 1, Tk)``. A floating-point mask is *added* to the scores instead (use ``-inf``
to block), exactly like PyTorch's ``attn_mask``.

    >>> mha = MultiHeadAttention(dim=32, num_heads=4, causal=True)
    >>> x = torch.randn(2, 10, 32)                    # (B, T, dim)
    >>> out, w = mha(x, return_weights=True)          # out: (2, 10, 32), w: (2, 4, 10, 10)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["attention", "causal_mask", "padding_mask", "split_heads", "merge_heads", "attend_heads",
           "MultiHeadAttention", "FeedForward", "TransformerBlock"]


# ----------------------------------------------------------------------------- the core formula
def _check_mask(mask: torch.Tensor, scores_shape: torch.Size) -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor (bool, True = keep) or None, got {type(mask).__name__}")
    try:
        torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the attention scores "
                         f"{tuple(scores_shape)} = (batch, heads, queries, keys); a padding mask for a batch "
                         f"is (B, 1, 1, Tk), a mask shared by all sequences is (Tq, Tk)") from None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, ``softmax(q kᵀ / √d + mask) v``.

    Args:
        q: queries ``(B, H, Tq, d)`` (any leading dims work, e.g. ``(Tq, d)``).
        k: keys ``(B, H, Tk, d)``.
        v: values ``(B, H, Tk, dv)``.
        mask: ``None``, a bool tensor broadcastable to ``(B, H, Tq, Tk)`` (True = keep), or a
            float tensor added to the scores.

    Returns:
        ``(out, weights)``: ``out`` is ``(B, H, Tq, dv)``, ``weights`` is ``(B, H, Tq, Tk)`` and each
        row of ``weights`` sums to 1 (a row whose keys are all blocked is NaN: nothing to attend to).
    """
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError("q, k, v need at least 2 dims (..., tokens, features); "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same feature size d: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of tokens: k {tuple(k.shape)}, v {tuple(v.shape)}")
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)           # s_ij = q_i · k_j / √d : (..., Tq, Tk)
    if mask is not None:
        _check_mask(mask, scores.shape)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))  # blocked pairs get weight exp(-inf) = 0
        else:
            scores = scores + mask                            # additive mask (0 = keep, -inf = block)
    weights = scores.softmax(dim=-1)                          # a_ij = exp(s_ij) / Σ_j' exp(s_ij')
    out = weights @ v                                         # out_i = Σ_j a_ij v_j : (..., Tq, dv)
    return out, weights


def causal_mask(T: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(T, T)`` bool mask, True on and below the diagonal: token ``i`` sees tokens ``0..i`` only."""
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive int, got {T!r}")
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def padding_mask(lengths: torch.Tensor, T: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(B, 1, 1, T)`` bool mask, True at positions ``t < lengths[b]`` (the real tokens of sequence b).

    It broadcasts against the scores ``(B, H, Tq, T)``: no query looks at padding."""
    lengths = torch.as_tensor(lengths)
    if lengths.ndim != 1 or lengths.dtype.is_floating_point:
        raise ValueError(f"lengths must be a 1-D integer tensor (B,), got {tuple(lengths.shape)} {lengths.dtype}")
    positions = torch.arange(T, device=device if device is not None else lengths.device)
    return (positions[None, :] < lengths.to(positions.device)[:, None])[:, None, None, :]


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, T, H*d) -> (B, H, T, d)``: cut the feature axis into ``num_heads`` chunks of size ``d``."""
    B, T, D = x.shape
    if D % num_heads:
        raise ValueError(f"feature size {D} is not divisible by num_heads={num_heads}")
    return x.view(B, T, num_heads, D // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, T, d) -> (B, T, H*d)``: the inverse of :func:`split_heads` (heads side by side)."""
    B, H, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d)



def _with_causal(mask: torch.Tensor | None, T: int, S: int, causal: bool, device) -> torch.Tensor | None:
    """The caller's mask combined with the causal mask (if ``causal``)."""
    if not causal:
        return mask
    cm = causal_mask(T, device=device)
    if mask is None:
        return cm
    if mask.dtype != torch.bool:                              # additive mask: add -inf above the diagonal
        return mask + torch.zeros(T, S, dtype=mask.dtype, device=device).masked_fill(~cm, float("-inf"))
    return mask & cm


def attend_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
                 mask: torch.Tensor | None = None, causal: bool = False, dropout: float = 0.0,
                 use_sdpa: bool = True, return_weights: bool = False):
    """Multi-head attention on projected inputs: split into ``num_heads`` heads, attend, merge.

        head_h = softmax(q_h k_hᵀ / √d + mask) v_h,      out = [head_1, ..., head_H]

    Args:
        q: queries ``(B, T, H*d)``; k: keys ``(B, S, H*d)``; v: values ``(B, S, H*dv)``
            (self-attention: all three made from the same x, S = T).
        mask: ``None``, a bool tensor broadcastable to ``(B, H, T, S)`` (True = keep), or a float
            tensor added to the scores (see the module docstring).
        causal: also block every key after its query (self-attention only, S = T).
        dropout: dropout probability on the attention weights (pass 0 when not training).
        use_sdpa: PyTorch's fused ``scaled_dot_product_attention`` when the weights are not
            needed; otherwise the readable :func:`attention`.

    Returns:
        ``out (B, T, H*dv)``, or ``(out, weights (B, H, T, S))`` with ``return_weights=True``.
    """
    B, T, S = q.shape[0], q.shape[1], k.shape[1]
    q, k, v = (split_heads(z, num_heads) for z in (q, k, v))          # (B, H, T, d), (B, H, S, d) x 2
    if use_sdpa and not return_weights:                                 # fast path: one fused kernel
        if mask is not None:
            _check_mask(mask, torch.Size((B, num_heads, T, S)))
        if causal and mask is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=_with_causal(mask, T, S, causal, q.device),
                                                 dropout_p=dropout)
        return merge_heads(out)                                         # (B, T, H*dv)
    out, weights = attention(q, k, v, _with_causal(mask, T, S, causal, q.device))   # readable path
    if dropout > 0:
        out = F.dropout(weights, dropout) @ v                           # dropout on the weights, as in the fast path
    out = merge_heads(out)                                              # (B, T, H*dv)
    return (out, weights) if return_weights else out


# ----------------------------------------------------------------------------- multi-head attention
class MultiHeadAttention(nn.Module):
    """Multi-head attention: ``H`` attentions of width ``d = dim / H`` side by side, then a linear mix.

    ``q = x W_q``, ``k = c W_k``, ``v = c W_v`` (``c = context`` for cross-attention, ``c = x`` for
    self-attention); each head attends on its own slice of the features (:func:`attend_heads`);
    the heads are put side by side again and mixed by ``W_o``.

    Args:
        dim: model width (input and output feature size); must be divisible by ``num_heads``.
        num_heads: number of heads ``H``.
        dropout: dropout on the attention weights while training.
        causal: self-attention where token ``i`` only sees tokens ``<= i`` (language models).
        use_sdpa: use PyTorch's fused ``scaled_dot_product_attention`` when weights are not requested.
        context_dim: width of the context for cross-attention (default ``dim``); with another
            width the module only cross-attends (e.g. image tokens reading a text encoder's features).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, causal: bool = False,
                 use_sdpa: bool = True, context_dim: int | None = None):
        super().__init__()
        if dim <= 0 or num_heads <= 0:
            raise ValueError(f"dim and num_heads must be positive, got dim={dim}, num_heads={num_heads}")
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}: each head gets dim / num_heads "
                             f"features, e.g. use dim={num_heads * max(1, round(dim / num_heads))}")
        context_dim = dim if context_dim is None else context_dim
        if context_dim <= 0:
            raise ValueError(f"context_dim must be positive, got {context_dim}")
        if causal and context_dim != dim:
            raise ValueError("causal=True is for self-attention; a module with its own context_dim cross-attends")
        self.dim, self.num_heads, self.head_dim, self.context_dim = dim, num_heads, dim // num_heads, context_dim
        self.causal, self.use_sdpa, self.dropout = causal, use_sdpa, dropout
        self.q_proj = nn.Linear(dim, dim)           # W_q
        self.k_proj = nn.Linear(context_dim, dim)   # W_k
        self.v_proj = nn.Linear(context_dim, dim)   # W_v
        self.out_proj = nn.Linear(dim, dim)         # W_o

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                return_weights: bool = False):
        """x: ``(B, T, dim)``; context: ``(B, S, context_dim)`` or None (self-attention, S = T).

        mask: bool, broadcastable to ``(B, H, T, S)``, True = keep (see the module docstring).
        Returns ``out (B, T, dim)``, or ``(out, weights (B, H, T, S))`` with ``return_weights=True``.
        """
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, T, dim={self.dim}), got {tuple(x.shape)}")
        if context is None and self.context_dim != self.dim:
            raise ValueError(f"this module cross-attends to a context of width {self.context_dim}: "
                             "pass context=(B, S, context_dim)")
        if context is not None:
            if self.causal:
                raise ValueError("causal=True is for self-attention; "
                                 "for cross-attention pass context with causal=False")
            if context.ndim != 3 or context.shape[-1] != self.context_dim or context.shape[0] != x.shape[0]:
                raise ValueError(f"context must be (B={x.shape[0]}, S, context_dim={self.context_dim}), "
                                 f"got {tuple(context.shape)}")
        src = x if context is None else context
        p = self.dropout if self.training else 0.0
        result = attend_heads(self.q_proj(x), self.k_proj(src), self.v_proj(src), self.num_heads,
                              mask, self.causal, p, self.use_sdpa, return_weights)
        if return_weights:
            out, weights = result
            return self.out_proj(out), weights                     # (B, T, dim), (B, H, T, S)
        return self.out_proj(result)                               # mix the heads with W_o: (B, T, dim)

    @torch.no_grad()
    def load_from_torch(self, mha: nn.MultiheadAttention) -> "MultiHeadAttention":
        """Copy the weights of a ``torch.nn.MultiheadAttention(dim, num_heads)`` (with biases) into this module.

        PyTorch stacks ``W_q, W_k, W_v`` into one ``in_proj_weight`` of shape ``(3*dim, dim)``.
        """
        if mha.embed_dim != self.dim or mha.num_heads != self.num_heads or self.context_dim != self.dim:
            raise ValueError(f"shapes differ: torch module has dim={mha.embed_dim}, heads={mha.num_heads}; "
                             f"this one has dim={self.dim}, heads={self.num_heads}, context_dim={self.context_dim}")
        if mha.in_proj_weight is None or mha.in_proj_bias is None:
            raise ValueError("only torch.nn.MultiheadAttention with bias=True and kdim = vdim = dim is supported")
        for proj, w, b in zip((self.q_proj, self.k_proj, self.v_proj),
                              mha.in_proj_weight.chunk(3), mha.in_proj_bias.chunk(3)):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        self.out_proj.weight.copy_(mha.out_proj.weight)
        self.out_proj.bias.copy_(mha.out_proj.bias)
        return self

    def extra_repr(self) -> str:
        cross = f", context_dim={self.context_dim}" if self.context_dim != self.dim else ""
        return f"dim={self.dim}, num_heads={self.num_heads}, causal={self.causal}, use_sdpa={self.use_sdpa}{cross}"


# ----------------------------------------------------------------------------- the block
class FeedForward(nn.Module):
    """The position-wise feed-forward network of a transformer block:
    ``Linear(dim, hidden) -> GELU -> Linear(hidden, dim) -> Dropout``, applied to every token on its own.

    (The generic multilayer perceptron of any widths is :class:`course_lib.nn.layers.MLP`.)
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(..., dim) -> (..., dim)``: ``Dropout(GELU(x W₁ + b₁) W₂ + b₂)``."""
        return self.drop(self.fc2(self.act(self.fc1(x))))


MLP = FeedForward   # the old name, kept while course_lib.grading.a3 still refers to it; use FeedForward


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block, with cross-attention when it is given a ``context_dim``.

    ``x = x + Dropout(MHA(LN₁(x)))`` (tokens talk to each other), then, with a context,
    ``x = x + Dropout(CrossAttn(LN(x), context))`` (tokens read the context: queries from x, keys
    and values from the context), then ``x = x + FeedForward(LN₂(x))`` (each token thinks on its
    own). The residual path ``x`` is never normalised, which is what makes deep pre-LN stacks easy
    to train. With a context and ``causal=True`` this is the decoder block of an encoder-decoder
    transformer (Vaswani et al., 2017), the captioner's block in Phase 3 · 06.

    Args:
        dim: model width; num_heads: attention heads (dim must be divisible by it);
        mlp_ratio: hidden width of the feed-forward network as a multiple of ``dim``; dropout: on
        attention weights, after attention and inside the feed-forward network; causal: causal
        self-attention; context_dim: width of the context to cross-attend to (None: no cross-attention).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 causal: bool = False, context_dim: int | None = None):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, dropout=dropout, causal=causal)
        self.cross_attn = None
        if context_dim is not None:
            self.ln_cross = nn.LayerNorm(dim)
            self.cross_attn = MultiHeadAttention(dim, num_heads, dropout=dropout, context_dim=context_dim)
        self.drop = nn.Dropout(dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, int(round(dim * mlp_ratio)), dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_weights: bool = False,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None):
        """x: ``(B, T, dim)`` -> ``(B, T, dim)``.

        mask: for the self-attention; context: ``(B, S, context_dim)``, required exactly when the
        block has cross-attention; context_mask: for the cross-attention, bool broadcastable to
        ``(B, H, T, S)`` (e.g. ``(B, 1, 1, S)``: no one reads the context's padding).
        With ``return_weights=True`` returns ``(x, weights)``: the self-attention's ``(B, H, T, T)``,
        or in a block with cross-attention the cross-attention's ``(B, H, T, S)`` (where each token read).
        """
        if (context is None) != (self.cross_attn is None):
            raise ValueError("this block " + ("cross-attends: pass context=(B, S, context_dim)" if context is None
                                              else "has no cross-attention (build it with context_dim) "
                                                   "and takes no context"))
        self_weights = return_weights and self.cross_attn is None
        a = self.attn(self.ln1(x), mask=mask, return_weights=self_weights)
        a, weights = a if self_weights else (a, None)
        x = x + self.drop(a)                                          # x ← x + attn(LN(x))
        if self.cross_attn is not None:
            c = self.cross_attn(self.ln_cross(x), context=context, mask=context_mask, return_weights=return_weights)
            c, weights = c if return_weights else (c, None)
            x = x + self.drop(c)                                      # x ← x + cross_attn(LN(x), context)
        x = x + self.mlp(self.ln2(x))                                 # x ← x + FeedForward(LN(x))
        return (x, weights) if return_weights else x
