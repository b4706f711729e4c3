"""Attention and the transformer block, the reference for Phase 2 · 04 (attention and transformers).

- :func:`attention`: scaled dot-product attention written out in three lines, returning the
  attention weights as well as the output so you can look at them.
- :func:`causal_mask`: the lower-triangular "no peeking at the future" mask.
- :func:`padding_mask`: hide the filler tokens of sequences padded to a common length.
- :func:`split_heads` / :func:`merge_heads`: ``(B, T, H*d) <-> (B, H, T, d)``.
- :class:`MultiHeadAttention`: self- or cross-attention with ``H`` heads; a fast path through
  :func:`torch.nn.functional.scaled_dot_product_attention` and a readable path through
  :func:`attention` that give the same numbers.
- :class:`TransformerBlock`: a pre-LayerNorm block, ``x + attn(LN(x))`` then ``x + MLP(LN(x))``.

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

__all__ = ["attention", "causal_mask", "padding_mask", "split_heads", "merge_heads", "MultiHeadAttention",
           "MLP", "TransformerBlock"]


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


# ----------------------------------------------------------------------------- multi-head attention
class MultiHeadAttention(nn.Module):
    """Multi-head attention: ``H`` attentions of width ``d = dim / H`` side by side, then a linear mix.

    ``q = x W_q``, ``k = c W_k``, ``v = c W_v`` (``c = context`` for cross-attention, ``c = x`` for
    self-attention); each head attends on its own slice of the features; the heads are put side
    by side again and mixed by ``W_o``.

    Args:
        dim: model width (input and output feature size); must be divisible by ``num_heads``.
        num_heads: number of heads ``H``.
        dropout: dropout on the attention weights while training.
        causal: self-attention where token ``i`` only sees tokens ``<= i`` (language models).
        use_sdpa: use PyTorch's fused ``scaled_dot_product_attention`` when weights are not requested.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, causal: bool = False,
                 use_sdpa: bool = True):
        super().__init__()
        if dim <= 0 or num_heads <= 0:
            raise ValueError(f"dim and num_heads must be positive, got dim={dim}, num_heads={num_heads}")
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}: each head gets dim / num_heads "
                             f"features, e.g. use dim={num_heads * max(1, round(dim / num_heads))}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.causal, self.use_sdpa, self.dropout = causal, use_sdpa, dropout
        self.q_proj = nn.Linear(dim, dim)   # W_q
        self.k_proj = nn.Linear(dim, dim)   # W_k
        self.v_proj = nn.Linear(dim, dim)   # W_v
        self.out_proj = nn.Linear(dim, dim)  # W_o
        self.attn_drop = nn.Dropout(dropout)

    def _full_mask(self, T: int, S: int, mask: torch.Tensor | None, device) -> torch.Tensor | None:
        """The user's mask combined with the causal mask (if any)."""
        if not self.causal:
            return mask
        cm = causal_mask(T, device=device)
        if mask is None:
            return cm
        if mask.dtype != torch.bool:                          # additive mask: add -inf above the diagonal
            return mask + torch.zeros(T, S, dtype=mask.dtype, device=device).masked_fill(~cm, float("-inf"))
        return mask & cm

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                return_weights: bool = False):
        """x: ``(B, T, dim)``; context: ``(B, S, dim)`` or None (self-attention, S = T).

        mask: bool, broadcastable to ``(B, H, T, S)``, True = keep (see the module docstring).
        Returns ``out (B, T, dim)``, or ``(out, weights (B, H, T, S))`` with ``return_weights=True``.
        """
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, T, dim={self.dim}), got {tuple(x.shape)}")
        src = x if context is None else context
        if context is not None:
            if self.causal:
                raise ValueError("causal=True is for self-attention; "
                                 "for cross-attention pass context with causal=False")
            if context.ndim != 3 or context.shape[-1] != self.dim or context.shape[0] != x.shape[0]:
                raise ValueError(f"context must be (B={x.shape[0]}, S, dim={self.dim}), got {tuple(context.shape)}")
        B, T, _ = x.shape
        S = src.shape[1]
        q = split_heads(self.q_proj(x), self.num_heads)      # (B, H, T, d)
        k = split_heads(self.k_proj(src), self.num_heads)    # (B, H, S, d)
        v = split_heads(self.v_proj(src), self.num_heads)    # (B, H, S, d)
        p = self.dropout if self.training else 0.0

        if self.use_sdpa and not return_weights:              # fast path: one fused kernel
            if mask is not None:
                _check_mask(mask, torch.Size((B, self.num_heads, T, S)))
            if self.causal and mask is None:
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._full_mask(T, S, mask, x.device),
                                                     dropout_p=p)
            return self.out_proj(merge_heads(out))

        out, weights = attention(q, k, v, self._full_mask(T, S, mask, x.device))  # readable path
        if p > 0:
            out = self.attn_drop(weights) @ v                 # dropout on the weights, as in the fast path
        out = self.out_proj(merge_heads(out))                 # (B, T, dim)
        return (out, weights) if return_weights else out

    @torch.no_grad()
    def load_from_torch(self, mha: nn.MultiheadAttention) -> "MultiHeadAttention":
        """Copy the weights of a ``torch.nn.MultiheadAttention(dim, num_heads)`` (with biases) into this module.

        PyTorch stacks ``W_q, W_k, W_v`` into one ``in_proj_weight`` of shape ``(3*dim, dim)``.
        """
        if mha.embed_dim != self.dim or mha.num_heads != self.num_heads:
            raise ValueError(f"shapes differ: torch module has dim={mha.embed_dim}, heads={mha.num_heads}; "
                             f"this one has dim={self.dim}, heads={self.num_heads}")
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
        return f"dim={self.dim}, num_heads={self.num_heads}, causal={self.causal}, use_sdpa={self.use_sdpa}"


# ----------------------------------------------------------------------------- positions
# ----------------------------------------------------------------------------- the block
class MLP(nn.Module):
    """Position-wise feed-forward network: ``Linear(dim, hidden) -> GELU -> Linear(hidden, dim) -> Dropout``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(..., dim) -> (..., dim)``, applied to every token on its own."""
        return self.drop(self.fc2(self.act(self.fc1(x))))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block.

    ``x = x + Dropout(MHA(LN₁(x)))`` (tokens talk to each other), then
    ``x = x + MLP(LN₂(x))`` (each token thinks on its own). The residual path ``x`` is never
    normalised, which is what makes deep pre-LN stacks easy to train.

    Args:
        dim: model width; num_heads: attention heads (dim must be divisible by it);
        mlp_ratio: hidden width of the MLP as a multiple of ``dim``; dropout: on attention weights,
        after attention and inside the MLP; causal: causal self-attention.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 causal: bool = False):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, dropout=dropout, causal=causal)
        self.drop = nn.Dropout(dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(round(dim * mlp_ratio)), dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_weights: bool = False):
        """x: ``(B, T, dim)`` -> ``(B, T, dim)``, or ``(x, weights (B, H, T, T))`` with ``return_weights=True``."""
        if return_weights:
            a, weights = self.attn(self.ln1(x), mask=mask, return_weights=True)
        else:
            a, weights = self.attn(self.ln1(x), mask=mask), None
        x = x + self.drop(a)                 # x ← x + attn(LN(x))
        x = x + self.mlp(self.ln2(x))        # x ← x + MLP(LN(x))
        return (x, weights) if return_weights else x
