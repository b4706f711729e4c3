"""CLIP: an image encoder and a text encoder trained so that matching pairs agree.

The reference for Phase 3 · 05 (CLIP), after Radford et al. (2021). A batch holds ``B`` images and
their ``B`` captions. Both encoders map their input to an embedding of ``E`` numbers, normalised to
length 1; the ``B x B`` matrix of cosine similarities, multiplied by a learned scale ``s``, is read
twice as logits of a classification: every image must pick its own caption among the ``B``
captions (rows), and every caption its own image among the ``B`` images (columns).

    >>> tok = CaptionTokenizer()
    >>> model = CLIPModel(tok, image_size=32, embed_dim=64)
    >>> tokens = tok(["a small red circle at the top", "a large blue square at the center"])  # (2, T)
    >>> images = torch.rand(2, 3, 32, 32)
    >>> loss = clip_loss(model.encode_image(images), model.encode_text(tokens), model.scale)

Pieces:

- :class:`~course_lib.data.text.CaptionTokenizer`: the word tokenizer with the fixed vocabulary of
  the shapes caption grammar (:func:`course_lib.data.caption_for`); strings -> padded ids. It lives
  in :mod:`course_lib.data.text`, beside ``GRAMMAR_WORDS``, and is shared with captioning and text-to-image.
- :class:`TextEncoder`: token embedding + learned positions + :class:`TransformerBlock` s.
  ``encode_tokens`` gives one feature vector per token ``(B, T, D)`` (what a text-to-image model
  cross-attends to in Phase 4); ``forward`` pools the ``<eos>`` token into one embedding ``(B, E)``.
- :class:`ImageEncoder`: the convolutional encoder of :mod:`course_lib.models.autoencoder`, ``(B, E)``.
- :class:`CLIPModel`: both encoders and the learnable temperature.
- :func:`clip_loss`: the symmetric InfoNCE loss; :func:`similarity`: the cosine matrix.
- :func:`zero_shot_classify`: classify images by the text of their class names (prompt ensembles).
- :func:`recall_at_k`: retrieval quality, with one or several right answers per query.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.data.text import CaptionTokenizer
from course_lib.device import no_autocast, upcast
from course_lib.models.autoencoder import ConvEncoder
from course_lib.nn.attention import TransformerBlock

__all__ = ["TextEncoder", "ImageEncoder", "CLIPModel",
           "similarity", "clip_loss", "class_embeddings", "zero_shot_classify", "recall_at_k",
           "MAX_LOGIT_SCALE", "INIT_TEMPERATURE"]

INIT_TEMPERATURE = 0.07          # CLIP starts at τ = 0.07, i.e. a logit scale s = 1/τ ≈ 14.3
MAX_LOGIT_SCALE = 100.0          # ... and clips s at 100 "to prevent training instability"


# ----------------------------------------------------------------------------- encoders
class TextEncoder(nn.Module):
    """Token ids ``(B, T)`` -> per-token features ``(B, T, dim)`` and one embedding ``(B, embed_dim)``.

    ``h = TokenEmbedding(ids) + PositionEmbedding[:T]``, then ``depth`` pre-LN transformer blocks
    in which no token looks at padding, then a LayerNorm: that is :meth:`encode_tokens`, the
    per-token features a text-to-image model cross-attends to (Phase 4). :meth:`forward` pools
    them into one vector per text and maps it linearly to ``embed_dim``:

    - ``pool="mean"`` (default): the mean over the real tokens, ``(1/n) Σ_t h_t``. On the shapes
      captions it generalises better to colour-shape pairs never seen in training.
    - ``pool="eos"``: the feature of the ``<eos>`` token, which has attended to every word
      (CLIP's choice; CLIP also makes the attention causal).

    Args:
        vocab_size: number of token ids; context_length: the most tokens per text;
        dim: width of the transformer; depth: number of blocks; num_heads: attention heads;
        embed_dim: size of the shared image-text embedding; pad_id / eos_id: the special ids;
        pool: "mean" or "eos".
    """

    def __init__(self, vocab_size: int, context_length: int = 16, dim: int = 64, depth: int = 2,
                 num_heads: int = 4, embed_dim: int = 64, pad_id: int = 0, eos_id: int = 2,
                 pool: str = "mean"):
        super().__init__()
        if pool not in ("mean", "eos"):
            raise ValueError(f"pool must be 'mean' or 'eos', got {pool!r}")
        self.context_length, self.pad_id, self.eos_id, self.dim = context_length, pad_id, eos_id, dim
        self.pool_mode = pool
        self.token_emb = nn.Embedding(vocab_size, dim)
        self.pos_emb = nn.Parameter(torch.randn(context_length, dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, embed_dim, bias=False)

    def padding_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` bool, True at real tokens (not ``<pad>``): the mask a cross-attention needs."""
        return tokens != self.pad_id

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: ``(B, T)`` int64 -> features ``(B, T, dim)``, one per token (padding included;
        ignore it with :meth:`padding_mask`)."""
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype.is_floating_point:
            raise ValueError("tokens must be a (B, T) integer tensor of ids, e.g. from CaptionTokenizer; got "
                             + (f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, torch.Tensor)
                                else type(tokens).__name__))
        T = tokens.shape[1]
        if T > self.context_length:
            raise ValueError(f"{T} tokens per text, but the encoder knows only {self.context_length} positions")
        if not self.padding_mask(tokens).any(1).all():
            raise ValueError("a text has no tokens at all (a row of only <pad>); give every text at least <bos>")
        h = self.token_emb(tokens) + self.pos_emb[:T]                    # (B, T, dim)
        keep = self.padding_mask(tokens)[:, None, None, :]               # (B, 1, 1, T): no one looks at <pad>
        for block in self.blocks:
            h = block(h, mask=keep)
        return self.ln(h)

    def pool(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """One vector per text, ``(B, T, dim) -> (B, dim)`` (see ``pool`` in the class docstring)."""
        real = self.padding_mask(tokens)                                  # (B, T)
        if self.pool_mode == "mean":
            w = real.unsqueeze(-1).to(features.dtype)                     # (B, T, 1): 1 at real tokens
            return (features * w).sum(1) / w.sum(1)                       # (1/n) Σ_t h_t over real tokens
        is_eos = tokens == self.eos_id
        last_real = real.sum(1) - 1                                       # the last real token if no <eos>
        where = torch.where(is_eos.any(1), is_eos.float().argmax(1), last_real)
        return features[torch.arange(len(tokens), device=tokens.device), where]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: ``(B, T)`` -> text embedding ``(B, embed_dim)`` (not normalised)."""
        return self.proj(self.pool(self.encode_tokens(tokens), tokens))


class ImageEncoder(nn.Module):
    """Images ``(B, C, S, S)`` -> embedding ``(B, embed_dim)`` (not normalised).

    The :class:`~course_lib.models.autoencoder.ConvEncoder` of the autoencoder notebook: ``levels``
    stride-2 stages (3x3 convolutions, GroupNorm, SiLU), then a linear map of the flattened features.
    """

    def __init__(self, in_ch: int = 3, image_size: int = 32, embed_dim: int = 64, width: int = 32,
                 levels: int = 3):
        super().__init__()
        self.net = ConvEncoder(in_ch, embed_dim, image_size, width=width, levels=levels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class CLIPModel(nn.Module):
    """An :class:`ImageEncoder`, a :class:`TextEncoder` and a learned temperature.

    ``logit_scale`` is the learnable parameter ``t``; the scale used on the similarities is
    ``s = exp(t)``, at most MAX_LOGIT_SCALE = 100 (the temperature is ``τ = 1/s``), and starts at
    ``1 / 0.07`` as in the paper. The tokenizer travels with the model so that it can read strings.

    Args:
        tokenizer: a :class:`CaptionTokenizer` (its vocabulary and context length size the text encoder).
        in_ch, image_size, image_width, image_levels: the image encoder.
        text_dim, text_depth, num_heads, pool: the text transformer. embed_dim: the shared embedding size E.
    """

    def __init__(self, tokenizer: CaptionTokenizer, in_ch: int = 3, image_size: int = 32,
                 embed_dim: int = 64, image_width: int = 32, image_levels: int = 3,
                 text_dim: int = 64, text_depth: int = 2, num_heads: int = 4, pool: str = "mean"):
        super().__init__()
        if not isinstance(tokenizer, CaptionTokenizer):
            raise TypeError(f"tokenizer must be a CaptionTokenizer, got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        self.image_encoder = ImageEncoder(in_ch, image_size, embed_dim, image_width, image_levels)
        self.text_encoder = TextEncoder(tokenizer.vocab_size, tokenizer.context_length, text_dim,
                                        text_depth, num_heads, embed_dim, tokenizer.pad_id, tokenizer.eos_id, pool)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / INIT_TEMPERATURE)))   # t, s = exp(t)

    @property
    def scale(self) -> torch.Tensor:
        """``s = exp(t)``, clamped to ``[1, 100]`` (0-d tensor; gradients flow inside the range)."""
        return self.logit_scale.clamp(0.0, math.log(MAX_LOGIT_SCALE)).exp()

    def _device(self) -> torch.device:
        return self.logit_scale.device

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images: ``(B, C, S, S)`` -> unit-length embeddings ``(B, E)``."""
        return F.normalize(self.image_encoder(images), dim=-1)

    def encode_text(self, text: torch.Tensor | str | Sequence[str]) -> torch.Tensor:
        """token ids ``(B, T)`` or ``B`` strings -> unit-length embeddings ``(B, E)``."""
        tokens = text if isinstance(text, torch.Tensor) else self.tokenizer(text).to(self._device())
        return F.normalize(self.text_encoder(tokens), dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images ``(B, C, S, S)``, tokens ``(B, T)`` -> ``(logits_per_image (B, B), logits_per_text (B, B))``,
        ``logits_per_image[i, j] = s · cos(image i, text j)``."""
        logits = self.scale * self.encode_image(images) @ self.encode_text(tokens).T
        return logits, logits.T

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Embeddings of many images ``(N, C, S, S) -> (N, E)`` on the CPU, in eval mode, in chunks."""
        was_training = self.training
        self.eval()
        out = torch.cat([self.encode_image(images[i:i + batch_size].to(self._device())).cpu()
                         for i in range(0, len(images), batch_size)])
        self.train(was_training)
        return out

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 512) -> torch.Tensor:
        """Embeddings of many strings ``N -> (N, E)`` on the CPU, in eval mode, in chunks."""
        if isinstance(texts, str):
            texts = [texts]
        was_training = self.training
        self.eval()
        out = torch.cat([self.encode_text(list(texts[i:i + batch_size])).cpu()
                         for i in range(0, len(texts), batch_size)])
        self.train(was_training)
        return out


# ----------------------------------------------------------------------------- the loss
def _check_pair(image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
    for name, x in (("image_emb", image_emb), ("text_emb", text_emb)):
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            raise ValueError(f"{name} must be a (B, E) tensor, got "
                             + (str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__))
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} must both be "
                         "(B, E): row i of each belongs to the same (image, caption) pair")


def similarity(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``(N, E), (M, E) -> (N, M)``: entry ``[i, j] = cos(image i, text j)``."""
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"need (N, E) and (M, E) with the same E, got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    return F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T   # x̂ ŷᵀ, x̂ = x / ||x||


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor,
              logit_scale: float | torch.Tensor = 1 / INIT_TEMPERATURE) -> torch.Tensor:
    """The symmetric InfoNCE loss of CLIP for a batch of ``B`` matching pairs.

    image_emb, text_emb: ``(B, E)``, row ``i`` of each from the same pair (normalised here, so
    any length works). logit_scale: the multiplier ``s = 1/τ`` (a number or a 0-d tensor, already
    exponentiated, e.g. ``model.scale``). With ``L_ij = s · cos(x_i, y_j)``:

        loss = ½ [ (1/B) Σ_i −log softmax_j(L)_ii  +  (1/B) Σ_j −log softmax_i(L)_jj ]
                   image -> text (rows)                 text -> image (columns)

    Returns a scalar. Random embeddings give about ``log B``; a perfect match gives about 0.
    """
    _check_pair(image_emb, text_emb)
    with no_autocast(image_emb):  # float32 by design: s up to 100 times a bf16 cosine (3 digits) blurs the logits
        logits = logit_scale * similarity(*upcast(image_emb, text_emb))   # L_ij = s · cos(x_i, y_j): (B, B)
        targets = torch.arange(len(logits), device=logits.device)     # pair i is on the diagonal
        loss_images = F.cross_entropy(logits, targets)                # each image picks its caption
        loss_texts = F.cross_entropy(logits.T, targets)               # each caption picks its image
    return (loss_images + loss_texts) / 2


# ----------------------------------------------------------------------------- using the model
def _prompt_groups(class_prompts) -> list[list[str]]:
    if isinstance(class_prompts, str) or len(class_prompts) == 0:
        raise TypeError("class_prompts must be a non-empty list: one prompt (or a list of prompts) per class")
    groups = [[p] if isinstance(p, str) else list(p) for p in class_prompts]
    if any(len(g) == 0 for g in groups):
        raise ValueError("every class needs at least one prompt")
    return groups


@torch.no_grad()
def class_embeddings(model: CLIPModel, class_prompts: Sequence[str | Sequence[str]]) -> torch.Tensor:
    """One unit-length text embedding per class: ``K`` classes -> ``(K, E)``.

    class_prompts[k] is one prompt (``"a red circle"``) or a list of prompts for class ``k``
    (``["a small red circle at the top", "a large red circle at the top", ...]``): a *prompt
    ensemble*, whose embeddings are averaged and normalised again (Radford et al., 2021, §3.1.4).
    """
    groups = _prompt_groups(class_prompts)
    flat = model.embed_texts([p for g in groups for p in g])              # (Σ prompts, E)
    sizes = torch.tensor([len(g) for g in groups])
    owner = torch.repeat_interleave(torch.arange(len(groups)), sizes)    # which class each prompt is for
    mean = torch.zeros(len(groups), flat.shape[1]).index_add_(0, owner, flat) / sizes[:, None]
    return F.normalize(mean, dim=-1)                                      # ê_k = mean_p e_kp / ||mean_p e_kp||


@torch.no_grad()
def zero_shot_classify(model: CLIPModel, images: torch.Tensor, class_prompts: Sequence[str | Sequence[str]],
                       ensemble: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Classify images into ``K`` classes described only by text.

    images: ``(N, C, S, S)``; class_prompts: ``K`` entries, each a prompt or a list of prompts.
    ensemble: how several prompts of a class are combined (one prompt per class: no difference):

    - ``"mean"``: average the prompts' embeddings (:func:`class_embeddings`), then
      ``p(k | x) = softmax_k(s · cos(x, ê_k))`` (CLIP's prompt ensembling);
    - ``"sum"``: a softmax over *all* prompts of all classes, then add up each class's share,
      ``p(k | x) = Σ_{p ∈ prompts of k} softmax(s · cos(x, e_p))`` (the prompts are the possible
      full descriptions; summing marginalises over what the class name leaves open).

    Returns ``(predictions (N,), probabilities (N, K))``.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a (N, C, S, S) tensor")
    if ensemble not in ("mean", "sum"):
        raise ValueError(f"ensemble must be 'mean' or 'sum', got {ensemble!r}")
    scale = model.scale.detach().cpu()
    image_emb = model.embed_images(images)                                  # (N, E)
    if ensemble == "mean":
        probs = (scale * image_emb @ class_embeddings(model, class_prompts).T).softmax(dim=-1)   # (N, K)
    else:
        groups = _prompt_groups(class_prompts)
        prompt_probs = (scale * image_emb @ model.embed_texts([p for g in groups for p in g]).T).softmax(dim=-1)
        owner = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor([len(g) for g in groups]))
        probs = torch.zeros(len(images), len(groups)).index_add_(1, owner, prompt_probs)  # Σ over each class's prompts
    return probs.argmax(dim=-1), probs


def recall_at_k(sim: torch.Tensor, relevant: torch.Tensor, k: int = 1) -> float:
    """The fraction of queries with a right answer among their ``k`` most similar items.

    sim: ``(Q, G)`` similarities of Q queries to G gallery items (higher = closer).
    relevant: ``(Q,)`` int64, the index of the one right item per query, or ``(Q, G)`` bool, True
    where item ``g`` is a right answer for query ``q`` (several images may fit one caption).
    Ties are broken by the lower gallery index (``torch.topk`` order is not relied on).
    """
    if sim.ndim != 2:
        raise ValueError(f"sim must be (queries, gallery), got {tuple(sim.shape)}")
    Q, G = sim.shape
    if not isinstance(k, int) or not 1 <= k <= G:
        raise ValueError(f"k must be an int in 1..{G} (the gallery size), got {k!r}")
    if relevant.dtype == torch.bool:
        if relevant.shape != sim.shape:
            raise ValueError(f"a bool relevant must have the shape of sim {tuple(sim.shape)}, "
                             f"got {tuple(relevant.shape)}")
    else:
        if relevant.shape != (Q,) or relevant.dtype.is_floating_point:
            raise ValueError(f"relevant must be (Q,) = ({Q},) integer indices or a (Q, G) bool matrix, "
                             f"got {tuple(relevant.shape)} {relevant.dtype}")
        relevant = F.one_hot(relevant.long(), G).bool()
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]   # the k best items per query
    hits = relevant.gather(1, order).any(dim=1)                                   # a right one among them?
    return hits.float().mean().item()
