"""A small GPT: a decoder-only transformer language model, and the ways to decode from it.

    >>> model = GPT(vocab_size=40, block_size=16, dim=64, depth=2, num_heads=4)
    >>> logits = model(idx)                      # idx: (B, T) ids -> logits: (B, T, 40)
    >>> loss = model.loss(inputs, targets)       # mean next-token cross-entropy
    >>> out = model.generate(bos, 12, strategy="sample", top_p=0.9, stop_token=eos)
    >>> best = model.beam_search(bos, beam_width=4, max_new_tokens=12, stop_token=eos)

The model (Radford et al. 2018/2019), from ids to next-token scores:

    x₀ = E[idx] + P[0..T-1]                     token + learned position embeddings
    x_l = Block_l(x_{l-1})                      causal pre-LN transformer blocks
    logits = LN(x_L) W_headᵀ                    W_head = E when the weights are tied

Causal self-attention makes position ``t`` depend on tokens ``0..t`` only, so one forward pass
scores every next token of a sequence at once (training) and the logits at the last position
give the distribution of the next token (generation).

**Decoding.** ``generate`` picks one token at a time from the last position's logits:
``strategy="greedy"`` takes the argmax; ``strategy="sample"`` draws from
:func:`sample_logits`, which divides by a temperature and can keep only the top-k tokens or
the smallest "nucleus" of tokens holding probability ``top_p``. ``beam_search`` keeps the
``beam_width`` most probable partial sequences instead of one. There is no key/value cache:
every step re-reads the whole context, which is simple and fast enough for short sequences.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.nn.attention import TransformerBlock

__all__ = ["GPT", "sample_logits", "top_k_filter", "top_p_filter"]


# ----------------------------------------------------------------------------- filtering and sampling
def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, set the rest to ``-inf``.

    logits: ``(..., V)``. Ties with the k-th largest value are all kept. ``k >= V`` keeps all.
    After a softmax the kept tokens share all the probability, in the same ratios as before:
    ``p'_i = p_i / Σ_{j ∈ top-k} p_j`` for i in the top k, 0 otherwise.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"top_k must be a positive int, got {k!r}")
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]          # (..., 1): the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most probable tokens whose probability adds
    up to at least ``p``; set the other logits to ``-inf``.

    logits: ``(..., V)``. Sort the probabilities in decreasing order, p₍₁₎ ≥ p₍₂₎ ≥ ...; token
    (i) is kept when the probability *before* it, Σ_{j<i} p₍ⱼ₎, is still below ``p``. So the most
    probable token is always kept, and the token that carries the sum past ``p`` is kept too.
    ``p = 1`` keeps everything.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs                       # Σ_{j<i} p₍ⱼ₎ (exclusive cumsum)
    drop_sorted = before >= p                                   # the nucleus is already full
    drop = drop_sorted.scatter(-1, order, drop_sorted)          # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row from ``softmax(logits / temperature)``, optionally filtered.

    logits: ``(B, V)``; returns ``(B,)`` int64 ids.
    temperature: ``p_i ∝ exp(z_i / τ)``; τ < 1 sharpens the distribution (towards greedy),
        τ > 1 flattens it (towards uniform); τ = 0 means greedy (the argmax).
    top_k: keep only the k most probable tokens (:func:`top_k_filter`).
    top_p: keep only the nucleus holding probability ``top_p`` (:func:`top_p_filter`),
        computed after the temperature and the top-k filter.
    generator: a CPU ``torch.Generator``, for reproducible draws: the draw is made on the CPU and
        the tokens moved to the logits' device, so a seed picks the same tokens on any device.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, V), got shape {tuple(logits.shape)}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature                      # z / τ
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)                              # filtered tokens get exp(-inf) = 0
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


# ----------------------------------------------------------------------------- the model
class GPT(nn.Module):
    """A decoder-only transformer language model.

    Args:
        vocab_size: number of token ids V.
        block_size: the longest context T_max the position table covers.
        dim: model width D; depth: number of transformer blocks; num_heads: heads per block.
        dropout: on the embeddings and inside the blocks (training only).
        tie_weights: use the token-embedding matrix as the output head (fewer parameters; the
            score of token v is the dot product of the final state with v's own embedding).
    """

    def __init__(self, vocab_size: int, block_size: int, dim: int, depth: int, num_heads: int,
                 dropout: float = 0.0, tie_weights: bool = True):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("block_size", block_size), ("dim", dim),
                            ("depth", depth), ("num_heads", num_heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.vocab_size, self.block_size, self.tie_weights = vocab_size, block_size, tie_weights
        self.tok_emb = nn.Embedding(vocab_size, dim)            # E: (V, D)
        self.pos_emb = nn.Embedding(block_size, dim)            # P: (T_max, D)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, mlp_ratio=4.0, dropout=dropout,
                                                     causal=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)      # W_head: (V, D)
        nn.init.normal_(self.tok_emb.weight, std=0.02)          # small: the first logits are near 0
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        if tie_weights:
            self.head.weight = self.tok_emb.weight

    def forward(self, idx: torch.Tensor, return_weights: bool = False):
        """idx: ``(B, T)`` int64 with T <= block_size -> logits ``(B, T, V)``.

        With ``return_weights=True`` returns ``(logits, weights)``, ``weights`` a list with one
        ``(B, H, T, T)`` attention tensor per block (row t: how much position t reads from each
        position <= t).
        """
        if idx.ndim != 2 or idx.dtype != torch.long:
            raise ValueError(f"idx must be a (B, T) int64 tensor of token ids, got {idx.dtype} "
                             f"of shape {tuple(idx.shape)}")
        T = idx.shape[1]
        if not 1 <= T <= self.block_size:
            raise ValueError(f"sequence length {T} is outside 1..block_size={self.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))   # x₀ = E[idx] + P[t]: (B, T, D)
        weights = []
        for block in self.blocks:
            if return_weights:
                x, w = block(x, return_weights=True)
                weights.append(w)
            else:
                x = block(x)                                    # causal: t sees 0..t
        logits = self.head(self.norm(x))                        # LN(x_L) W_headᵀ: (B, T, V)
        return (logits, weights) if return_weights else logits

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Mean next-token cross-entropy ``−log p(targets | idx)`` over the targets that are not
        ``ignore_index``. idx, targets: ``(B, T)``; ``targets[:, t]`` is the token after
        ``idx[:, :t+1]`` (the input shifted left by one). ``exp(loss)`` is the perplexity."""
        if targets.shape != idx.shape:
            raise ValueError(f"targets {tuple(targets.shape)} must have the shape of idx {tuple(idx.shape)}")
        logits = self(idx)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index)

    def num_parameters(self) -> int:
        """Trainable parameters (a tied head is counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------------- decoding
    def _next_logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits of the token after ``idx`` (B, T): ``(B, V)``, reading at most block_size tokens."""
        return self(idx[:, -self.block_size:])[:, -1]

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, strategy: str = "greedy",
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, stop_token: int | None = None) -> torch.Tensor:
        """Continue the prompts ``idx`` ``(B, T0)`` by up to ``max_new_tokens`` tokens.

        strategy: "greedy" (argmax at every step; temperature/top_k/top_p are ignored) or
            "sample" (:func:`sample_logits` with ``temperature``, ``top_k``, ``top_p``, ``generator``).
        stop_token: a row that produced it is finished: its later positions are filled with
            ``stop_token``, and generation ends early once every row is finished.
        Returns ``(B, T0 + n)`` with n <= max_new_tokens. Runs in eval mode, then restores the mode.
        """
        if strategy not in ("greedy", "sample"):
            raise ValueError(f"strategy must be 'greedy' or 'sample', got {strategy!r} "
                             "(beam search is model.beam_search)")
        if idx.ndim != 2:
            raise ValueError(f"idx must be (B, T0), got shape {tuple(idx.shape)}")
        was_training = self.training
        self.eval()
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            logits = self._next_logits(idx)                                   # (B, V)
            if strategy == "greedy":
                nxt = logits.argmax(dim=-1)                                   # argmax_v p(v | idx)
            else:
                nxt = sample_logits(logits, temperature, top_k, top_p, generator)
            if stop_token is not None:
                nxt = nxt.masked_fill(done, stop_token)                       # finished rows stay put
                done = done | (nxt == stop_token)
            idx = torch.cat([idx, nxt[:, None]], dim=1)
            if stop_token is not None and bool(done.all()):
                break
        self.train(was_training)
        return idx

    @torch.no_grad()
    def beam_search(self, idx: torch.Tensor, beam_width: int, max_new_tokens: int,
                    stop_token: int | None = None, length_penalty: float = 0.0,
                    return_scores: bool = False):
        """The most probable continuation of each prompt found by keeping ``beam_width``
        candidates per step.

        idx: ``(B, T0)`` prompts (each row is searched on its own). At every step each live
        beam is extended by every token, scored by its total log-probability
        ``Σ log p(y_t | y_<t)``, and the best ``beam_width`` extensions stay alive; one that
        ends with ``stop_token`` is set aside as a finished hypothesis. The answer is the best
        hypothesis (finished, or still alive after ``max_new_tokens``) by
        ``score / n^length_penalty`` (n: tokens generated); ``length_penalty = 0`` ranks by
        total log-probability, which favours short sequences, and with it the search stops as
        soon as no live beam can beat the best finished one.

        Returns ``(B, T0 + n)`` (rows padded with ``stop_token`` after their end, so the
        layout matches :meth:`generate`), and the ``(B,)`` ranking scores with
        ``return_scores=True``. ``beam_width=1`` is greedy decoding.
        """
        if not isinstance(beam_width, int) or beam_width < 1:
            raise ValueError(f"beam_width must be a positive int, got {beam_width!r}")
        if idx.ndim != 2:
            raise ValueError(f"idx must be (B, T0), got shape {tuple(idx.shape)}")
        was_training = self.training
        self.eval()
        rows, scores = [], []
        for prompt in idx:
            seq, score = self._beam_one(prompt, beam_width, max_new_tokens, stop_token, length_penalty)
            rows.append(seq)
            scores.append(score)
        self.train(was_training)
        length = max(len(r) for r in rows)
        pad = stop_token if stop_token is not None else 0
        out = torch.full((len(rows), length), pad, dtype=torch.long, device=idx.device)
        for i, r in enumerate(rows):
            out[i, :len(r)] = r
        return (out, torch.tensor(scores)) if return_scores else out

    def _beam_one(self, prompt: torch.Tensor, width: int, max_new: int, stop: int | None,
                  alpha: float) -> tuple[torch.Tensor, float]:
        """Beam search for one prompt (T0,) -> (best sequence, its ranking score)."""
        def rank(score: float, n: int) -> float:
            return score / max(n, 1) ** alpha                    # length-normalised log-probability

        alive = [(prompt, 0.0)]                                  # (sequence, Σ log p)
        finished: list[tuple[torch.Tensor, float]] = []
        for step in range(1, max_new + 1):
            seqs = torch.stack([s for s, _ in alive])            # (beams, T): all the same length
            logp = self._next_logits(seqs).float().log_softmax(dim=-1)       # (beams, V)
            total = torch.tensor([sc for _, sc in alive], device=logp.device)[:, None] + logp
            flat = total.flatten()
            order = torch.argsort(flat, descending=True, stable=True)[:2 * width]  # enough to refill
            new_alive = []
            for j in order.tolist():
                beam, token = divmod(j, logp.shape[1])
                seq = torch.cat([alive[beam][0], prompt.new_tensor([token])])
                if stop is not None and token == stop:
                    finished.append((seq, float(flat[j])))
                else:
                    new_alive.append((seq, float(flat[j])))
                if len(new_alive) == width:
                    break
            finished = sorted(finished, key=lambda h: rank(h[1], len(h[0]) - len(prompt)),
                              reverse=True)[:width]
            alive = new_alive
            if not alive:
                break
            if finished and alpha == 0 and finished[0][1] >= max(sc for _, sc in alive):
                break                                            # log-probs only go down from here
        pool = finished + alive
        best = max(pool, key=lambda h: rank(h[1], len(h[0]) - len(prompt)))
        return best[0], rank(best[1], len(best[0]) - len(prompt))

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, tie_weights={self.tie_weights}"
