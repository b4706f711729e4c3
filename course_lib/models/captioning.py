"""Image captioning and visual question answering: an image encoder, a text decoder, cross-attention.

The reference for Phase 3 · 06 (captioning and VQA). One model does both jobs::

    tok = caption_tokenizer()
    model = Captioner(vocab_size=tok.vocab_size)
    inputs, targets = prefix_sequences(["", "what colour is the shape ?"],
                                       ["a large red circle at the top", "red"], tok)
    logits = model(images, inputs)                  # images (2, 3, 32, 32) -> (2, T, V)
    ids = model.generate(images, max_len=12)        # greedy captions: (2, <= 1 + 12)
    print(decode_ids(tok, ids))                     # ['a large red circle at the top', ...]

The pipeline (an encoder–decoder transformer, as in Vaswani et al., 2017, with an image in
place of the source sentence):

1. **Image tokens.** :class:`ImageEncoder`: a small CNN turns the (3, S, S) image into a
   (dim, S/4, S/4) feature map; each cell of that grid becomes one token (a learned position
   vector is added, so a token knows *where* it is), and a transformer block lets the
   tokens talk to each other: ``memory`` of shape (B, N, dim), N = (S/4)².
2. **Text decoder.** :class:`TextDecoder`: token + position embeddings, then a stack of
   :class:`CrossAttentionBlock`\\ s, each ``causal self-attention -> cross-attention to the
   image tokens -> feed-forward`` (the course's pre-LayerNorm :class:`~course_lib.nn.attention.TransformerBlock`
   with cross-attention), and a linear head giving next-word scores.
3. **Teacher forcing.** Training feeds the true sequence ``<bos> w1 ... wn`` and asks for
   ``w1 ... wn <eos>`` at every position at once (:func:`prefix_sequences`); the causal mask
   keeps position t from seeing the word it must predict.
4. **Generation.** :meth:`Captioner.generate` starts from ``<bos>`` (plus a question, for VQA)
   and appends one word at a time (greedy or sampled) until ``<eos>``.

**VQA with the same decoder.** A question is a *prompt*: the sequence is
``<bos> what colour is the shape ? red <eos>``; the loss is taken only on the answer (and the
``<eos>``), the question words are given. A caption is the same thing with an empty prompt.
Questions about the shapes world come from :func:`ask` (types in :data:`QUESTION_TYPES`).

Cross-attention of decoder states ``X`` (B, T, dim) to image tokens ``M`` (B, N, dim), one head::

    CrossAttn(X, M) = softmax( (X W_q)(M W_k)ᵀ / √d ) (M W_v)         weights: (B, T, N)

Row t of the weights says where in the image the decoder looked while writing word t + 1;
:meth:`Captioner.cross_attention` returns them (reshape N to (S/4, S/4) to lay them over the image).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from course_lib.data.shapes import (ATTR_KEYS, COLOURS, POSITIONS, RELATIONS, SHAPE_KINDS, SIZES, caption_for,
                                    parse_caption)
from course_lib.data.text import CaptionTokenizer, WordTokenizer, pad_sequences
from course_lib.models.gpt import sample_logits
from course_lib.nn.attention import TransformerBlock
from course_lib.nn.layers import ConvBlock

__all__ = ["QUESTION_TYPES", "SINGLE_QUESTIONS", "PAIR_QUESTIONS", "question_words", "caption_tokenizer", "ask",
           "vqa_examples", "prefix_sequences", "decode_ids", "ImageTextDataset", "ImageEncoder", "CrossAttentionBlock",
           "TextDecoder", "Captioner", "answer_questions", "caption_accuracy", "answer_accuracy"]

_COLOUR_NAMES = tuple(COLOURS)

# ----------------------------------------------------------------------------- questions
#: question type -> the question's words ({...} filled in from the image's attributes).
QUESTION_TYPES = {
    "colour": "what colour is the shape ?",
    "shape": "what shape is it ?",
    "size": "what size is the shape ?",
    "position": "where is it ?",
    "relation": "is the {colour} {shape} {relation} the {colour2} {shape2} ?",
}
SINGLE_QUESTIONS = ("colour", "shape", "size", "position")   # for images with one object
PAIR_QUESTIONS = ("relation",)                                # for images with two objects


def question_words() -> list[str]:
    """The words the questions and answers add to the caption grammar: the words of
    :data:`QUESTION_TYPES` (without the ``{...}`` slots, which are filled with grammar words),
    "yes" and "no" (the answers to a relation question)."""
    words = {"yes", "no"}
    for question in QUESTION_TYPES.values():
        words.update(w for w in question.split() if not w.startswith("{"))
    return sorted(words)


def caption_tokenizer() -> CaptionTokenizer:
    """The caption tokenizer for the shapes captions, the questions and their answers.

    ids 0..3 are ``<pad> <bos> <eos> <unk>`` (see :class:`course_lib.data.text.WordTokenizer`), then
    the words of the grammar and of :func:`question_words` in one sorted list (34 in all).
    """
    return CaptionTokenizer(extra_words=question_words())


def ask(attrs_row: dict, qtype: str, rng: np.random.Generator | None = None) -> tuple[str, str]:
    """A question of type ``qtype`` about one image and its true answer.

    attrs_row: the image's attribute indices (``ShapesBatch.attr_row(i)``).
    qtype: one of :data:`QUESTION_TYPES`; the single-object types need an image with one
        object, "relation" one with two. For "relation" the question names the true relation
        or (with probability 1/2, drawn from ``rng``) a wrong one, so the answer is "yes" or "no".
    Returns ``(question, answer)``, e.g. ``("where is it ?", "top left")``.
    """
    if qtype not in QUESTION_TYPES:
        raise ValueError(f"unknown question type {qtype!r}; choose one of {tuple(QUESTION_TYPES)}")
    two = int(attrs_row.get("relation", -1)) >= 0
    if two != (qtype in PAIR_QUESTIONS):
        kind = "two objects" if two else "one object"
        fits = PAIR_QUESTIONS if two else SINGLE_QUESTIONS
        raise ValueError(f"a {qtype!r} question does not fit an image with {kind}; ask one of {fits}")
    question = QUESTION_TYPES[qtype]
    if qtype == "colour":
        return question, _COLOUR_NAMES[int(attrs_row["colour"])]
    if qtype == "shape":
        return question, SHAPE_KINDS[int(attrs_row["shape"])]
    if qtype == "size":
        return question, SIZES[int(attrs_row["size"])]
    if qtype == "position":
        return question, POSITIONS[int(attrs_row["position"])]
    rng = rng if rng is not None else np.random.default_rng(0)
    true_rel = int(attrs_row["relation"])
    asked = true_rel if rng.random() < 0.5 else int(rng.choice([r for r in range(len(RELATIONS)) if r != true_rel]))
    question = question.format(colour=_COLOUR_NAMES[int(attrs_row["colour"])],
                               shape=SHAPE_KINDS[int(attrs_row["shape"])], relation=RELATIONS[asked],
                               colour2=_COLOUR_NAMES[int(attrs_row["colour2"])],
                               shape2=SHAPE_KINDS[int(attrs_row["shape2"])])
    return question, "yes" if asked == true_rel else "no"


def vqa_examples(attrs: dict[str, torch.Tensor], seed: int = 0, per_image: int = 1,
                 qtypes: Sequence[str] | None = None) -> tuple[list[int], list[str], list[str], list[str]]:
    """Questions about a batch of images: ``per_image`` per image, types drawn at random.

    attrs: ``ShapesBatch.attrs`` (dict of (N,) int64). qtypes: the types to draw from (default:
    all that fit each image). With ``per_image`` >= the number of fitting types, every type is
    asked once per image instead (no draw).
    Returns lists ``(image_index, question, answer, qtype)``, all of one length.
    """
    rng = np.random.default_rng(seed)
    n = len(attrs["shape"])
    index, questions, answers, types = [], [], [], []
    for i in range(n):
        row = {key: int(value[i]) for key, value in attrs.items()}
        fitting = PAIR_QUESTIONS if row.get("relation", -1) >= 0 else SINGLE_QUESTIONS
        pool = [q for q in fitting if qtypes is None or q in qtypes]
        if not pool:
            continue
        chosen = pool if per_image >= len(pool) else list(rng.choice(pool, size=per_image, replace=False))
        for qtype in chosen:
            q, a = ask(row, str(qtype), rng)
            index.append(i)
            questions.append(q)
            answers.append(a)
            types.append(str(qtype))
    return index, questions, answers, types


# ----------------------------------------------------------------------------- sequences
def prefix_sequences(prompts: Sequence[str], answers: Sequence[str], tokenizer: WordTokenizer,
                     length: int | None = None, ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing pairs for "prompt, then answer" sequences: ``(inputs (N, T), targets (N, T))``.

    Each pair becomes ``seq = <bos> prompt answer <eos>`` (a caption is an answer with the empty
    prompt ""). The decoder reads ``inputs = seq[:-1]`` and must predict ``targets = seq[1:]``,
    the same sequence shifted left by one. Targets that are prompt words or padding are
    ``ignore_index`` (``cross_entropy`` skips them): the model is taught to answer, not to ask.
    Sequences are padded on the right with ``<pad>`` to ``length`` + 1 tokens (default: the
    longest), so ``T = length``.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers; give one prompt per answer "
                         "('' for a caption)")
    seqs, n_given = [], []
    for prompt, answer in zip(prompts, answers):
        p = tokenizer.encode(prompt, bos=True)                  # <bos> + prompt words
        seqs.append(p + tokenizer.encode(answer, eos=True))     # ... + answer words + <eos>
        n_given.append(len(p))
    seq = pad_sequences(seqs, tokenizer.pad_id, None if length is None else length + 1)
    inputs, targets = seq[:, :-1], seq[:, 1:].clone()
    targets[targets == tokenizer.pad_id] = ignore_index
    for row, k in enumerate(n_given):
        targets[row, :k - 1] = ignore_index                     # targets[t] = seq[t+1]: prompt words
    return inputs.contiguous(), targets


def decode_ids(tokenizer: WordTokenizer, ids: torch.Tensor, start: int = 0) -> list[str]:
    """Generated ids ``(B, T)`` -> one string per row, read from column ``start`` (skip a prompt)
    up to the first ``<eos>`` (``<bos>`` and ``<pad>`` are dropped)."""
    return [tokenizer.decode(row[start:].tolist()) for row in ids]


class ImageTextDataset(Dataset):
    """Sequences about images, each image stored once: item ``k`` is
    ``(images[image_index[k]] (C, S, S), inputs[k] (T,), targets[k] (T,))``.

    Several sequences (a caption, questions) can point at the same image, so a dataset of
    5 sequences per image costs the memory of the images once.
    """

    def __init__(self, images: torch.Tensor, image_index: Sequence[int] | torch.Tensor,
                 inputs: torch.Tensor, targets: torch.Tensor):
        self.image_index = torch.as_tensor(image_index, dtype=torch.long)
        if not len(self.image_index) == len(inputs) == len(targets):
            raise ValueError(f"image_index, inputs and targets must have one length, got "
                             f"{len(self.image_index)}, {len(inputs)}, {len(targets)}")
        if len(self.image_index) and not 0 <= int(self.image_index.min()) <= int(self.image_index.max()) < len(images):
            raise ValueError(f"image_index points outside the {len(images)} images")
        self.images, self.inputs, self.targets = images, inputs, targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.images[self.image_index[k]], self.inputs[k], self.targets[k]


# ----------------------------------------------------------------------------- image encoder
class ImageEncoder(nn.Module):
    """Images to a sequence of image tokens: ``(B, in_ch, S, S) -> (B, N, dim)``, N = (S / 4)².

        CNN:        ConvBlock(in_ch, w, stride 2) -> ConvBlock(w, 2w) -> ConvBlock(2w, dim, stride 2)
                                                    (B, in_ch, S, S) -> (B, dim, S/4, S/4)
        tokens:     flatten the grid row by row     -> (B, N, dim), token n at row n // g, col n % g
        positions:  + a learned vector per grid cell (a token must know where it is)
        mixing:     ``depth`` transformer blocks (bidirectional), then a LayerNorm

    Args: in_ch, image_size: the images'; dim: token width; width: channels of the first conv;
    depth: transformer blocks over the tokens (0: none); num_heads: their heads.
    """

    def __init__(self, in_ch: int = 3, image_size: int = 32, dim: int = 64, width: int = 32,
                 depth: int = 1, num_heads: int = 4):
        super().__init__()
        if not isinstance(image_size, int) or image_size < 4 or image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 (two stride-2 convolutions), got {image_size!r}")
        self.in_ch, self.image_size, self.dim = in_ch, image_size, dim
        self.grid = image_size // 4
        self.cnn = nn.Sequential(ConvBlock(in_ch, width, stride=2, norm="group", act="gelu"),      # S/2
                                 ConvBlock(width, 2 * width, norm="group", act="gelu"),
                                 ConvBlock(2 * width, dim, stride=2, norm="group", act="gelu"))    # S/4
        self.pos = nn.Parameter(torch.randn(1, self.grid * self.grid, dim) * 0.02)   # P: (1, N, dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, in_ch, S, S) -> memory: (B, N, dim)."""
        if images.ndim != 4 or tuple(images.shape[1:]) != (self.in_ch, self.image_size, self.image_size):
            raise ValueError(f"the image encoder expects images (B, {self.in_ch}, {self.image_size}, "
                             f"{self.image_size}), got {tuple(images.shape)}")
        h = self.cnn(images)                                    # (B, dim, g, g)
        x = h.flatten(2).transpose(1, 2) + self.pos             # (B, g·g, dim): one token per cell
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ----------------------------------------------------------------------------- decoder
class CrossAttentionBlock(TransformerBlock):
    """A transformer decoder block (pre-LayerNorm), the text reading the image:

        x = x + SelfAttn(LN₁(x))              causal: word t sees words 0..t only
        x = x + CrossAttn(LN(x), memory)      queries from the words, keys/values from the image
        x = x + FeedForward(LN₂(x))           each word thinks on its own

    It is the course's :class:`~course_lib.nn.attention.TransformerBlock` with ``causal=True`` and
    cross-attention to image tokens of the same width. x: (B, T, dim) text states; memory: (B, N, dim).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__(dim, num_heads, mlp_ratio, dropout, causal=True, context_dim=dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, return_weights: bool = False):
        """x: (B, T, dim), memory: (B, N, dim) -> (B, T, dim), or with ``return_weights=True``
        ``(x, cross_weights (B, H, T, N))``: how much word t reads from each image token."""
        if memory.ndim != 3 or memory.shape[0] != x.shape[0] or memory.shape[-1] != x.shape[-1]:
            raise ValueError(f"memory must be (B={x.shape[0]}, N, dim={x.shape[-1]}) image tokens, "
                             f"got {tuple(memory.shape)}")
        return super().forward(x, context=memory, return_weights=return_weights)


class TextDecoder(nn.Module):
    """Token ids and image tokens to next-word scores: ``(B, T), (B, N, dim) -> (B, T, V)``.

        x₀ = E[ids] + P[0..T-1]               token + learned position embeddings
        x_l = CrossAttentionBlock_l(x_{l-1}, memory)
        logits = LN(x_L) Eᵀ                   the output head shares the embedding matrix E
    """

    def __init__(self, vocab_size: int, block_size: int = 24, dim: int = 64, depth: int = 2,
                 num_heads: int = 4, dropout: float = 0.0):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("block_size", block_size), ("dim", dim),
                            ("depth", depth), ("num_heads", num_heads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.vocab_size, self.block_size = vocab_size, block_size
        self.tok_emb = nn.Embedding(vocab_size, dim)            # E: (V, dim)
        self.pos_emb = nn.Embedding(block_size, dim)            # P: (T_max, dim)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, num_heads, dropout=dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight                  # tied: score of v = ⟨state, E[v]⟩

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor, return_weights: bool = False):
        """tokens: (B, T) int64, memory: (B, N, dim) -> logits (B, T, V); with ``return_weights``
        also a list of the cross-attention weights of each block, (B, H, T, N) each."""
        if tokens.ndim != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be a (B, T) int64 tensor of ids, got {tokens.dtype} "
                             f"of shape {tuple(tokens.shape)}")
        T = tokens.shape[1]
        if not 1 <= T <= self.block_size:
            raise ValueError(f"sequence length {T} is outside 1..block_size={self.block_size}; "
                             "build the model with a larger block_size")
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(torch.arange(T, device=tokens.device)))
        weights = []
        for block in self.blocks:
            if return_weights:
                x, w = block(x, memory, return_weights=True)
                weights.append(w)
            else:
                x = block(x, memory)
        logits = self.head(self.norm(x))                        # (B, T, V)
        return (logits, weights) if return_weights else logits


class Captioner(nn.Module):
    """Image encoder + text decoder with cross-attention: captions and answers about images.

    Args:
        vocab_size: V (``caption_tokenizer().vocab_size``); block_size: longest token sequence.
        dim, depth, num_heads: decoder width, number of :class:`CrossAttentionBlock`\\ s, heads.
        in_ch, image_size, width, enc_depth: the :class:`ImageEncoder`'s.
        bos_id, eos_id, pad_id: the special ids (those of :class:`course_lib.data.text.WordTokenizer`).
    """

    def __init__(self, vocab_size: int, block_size: int = 24, dim: int = 64, depth: int = 2,
                 num_heads: int = 4, in_ch: int = 3, image_size: int = 32, width: int = 32,
                 enc_depth: int = 1, dropout: float = 0.0, bos_id: int = 1, eos_id: int = 2,
                 pad_id: int = 0):
        super().__init__()
        self.encoder = ImageEncoder(in_ch, image_size, dim, width, enc_depth, num_heads)
        self.decoder = TextDecoder(vocab_size, block_size, dim, depth, num_heads, dropout)
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, S, S) -> image tokens (B, N, dim)."""
        return self.encoder(images)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: images (B, C, S, S), tokens (B, T) -> logits (B, T, V), where
        ``logits[:, t]`` scores the token that follows ``tokens[:, :t+1]``."""
        if images.shape[0] != tokens.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {tokens.shape[0]} token sequences")
        return self.decoder(tokens, self.encode(images))

    def loss(self, images: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
             ignore_index: int = -100) -> torch.Tensor:
        """Mean next-token cross-entropy over the targets that are not ``ignore_index``.
        inputs, targets: (B, T) from :func:`prefix_sequences`."""
        logits = self(images, inputs)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index)

    def cross_attention(self, images: torch.Tensor, tokens: torch.Tensor) -> list[torch.Tensor]:
        """The cross-attention weights of every block, ``(B, H, T, N)`` each: row t is where the
        model looked in the image while predicting token t + 1. Reshape N to (g, g),
        ``g = self.encoder.grid``, to lay it over the image."""
        with torch.no_grad():
            _, weights = self.decoder(tokens, self.encode(images), return_weights=True)
        return weights

    @torch.no_grad()
    def generate(self, images: torch.Tensor, max_len: int, strategy: str = "greedy",
                 temperature: float = 1.0, prompt: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Write up to ``max_len`` tokens for each image, one at a time.

        images: (B, C, S, S). prompt: optional (B, T0) ids that follow ``<bos>`` (a question,
        the same length for every row); None for captions.
        strategy: "greedy" (``argmax_v p(v | image, tokens so far)``) or "sample" (draw from
        ``softmax(logits / temperature)`` with ``generator``).
        A row that wrote ``<eos>`` is finished: its later positions are ``<pad>``; the loop
        stops as soon as every row is finished.
        Returns ids (B, 1 + T0 + n), n <= max_len, starting with ``<bos>`` and the prompt.
        """
        if strategy not in ("greedy", "sample"):
            raise ValueError(f"strategy must be 'greedy' or 'sample', got {strategy!r}")
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        B = images.shape[0]
        seq = torch.full((B, 1), self.bos_id, dtype=torch.long, device=images.device)
        if prompt is not None:
            if prompt.ndim != 2 or prompt.shape[0] != B:
                raise ValueError(f"prompt must be (B={B}, T0) token ids, got {tuple(prompt.shape)}")
            seq = torch.cat([seq, prompt.to(images.device)], dim=1)
        if seq.shape[1] + max_len - 1 > self.decoder.block_size:
            raise ValueError(f"prompt ({seq.shape[1]} tokens with <bos>) + max_len={max_len} exceeds "
                             f"block_size={self.decoder.block_size}")
        was_training = self.training
        self.eval()
        memory = self.encode(images)                            # the image is read once
        done = torch.zeros(B, dtype=torch.bool, device=images.device)
        for _ in range(max_len):
            logits = self.decoder(seq, memory)[:, -1]           # (B, V): scores of the next token
            if strategy == "greedy":
                nxt = logits.argmax(dim=-1)
            else:
                nxt = sample_logits(logits, temperature, generator=generator)
            nxt = nxt.masked_fill(done, self.pad_id)            # finished rows only pad
            done = done | (nxt == self.eos_id)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            if bool(done.all()):
                break
        self.train(was_training)
        return seq


def answer_questions(model: Captioner, tokenizer: WordTokenizer, images: torch.Tensor,
                     questions: Sequence[str], max_len: int = 4, batch_size: int = 256) -> list[str]:
    """Greedy answers of ``model`` to one question per image.

    images: (N, C, S, S); questions: N strings. Questions of equal length (in tokens) are
    answered together, ``batch_size`` at a time (a prompt must have one length per batch).
    Returns N answer strings (the words after the question, up to ``<eos>``).
    """
    if len(questions) != len(images):
        raise ValueError(f"need one question per image: {len(questions)} questions, {len(images)} images")
    prompts = [tokenizer.encode(q) for q in questions]
    out: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    for length in sorted({len(p) for p in prompts}):
        rows = [i for i, p in enumerate(prompts) if len(p) == length]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            prompt = torch.tensor([prompts[i] for i in chunk], dtype=torch.long, device=device)
            ids = model.generate(images[chunk].to(device), max_len, prompt=prompt)
            for i, text in zip(chunk, decode_ids(tokenizer, ids, start=1 + length)):
                out[i] = text
    return out


# ----------------------------------------------------------------------------- scoring
_CONVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _converse(row: dict[str, int]) -> dict[str, int]:
    """The same two-object scene described from the other object: "B right of A" for "A left of B"."""
    out = dict(row)
    for key in ("shape", "colour", "size", "position"):
        out[key], out[key + "2"] = row[key + "2"], row[key]
    out["relation"] = RELATIONS.index(_CONVERSE[RELATIONS[row["relation"]]])
    return out


def caption_accuracy(captions: Sequence[str], attrs: dict[str, torch.Tensor]) -> dict[str, float]:
    """How many attributes the ``captions`` get right, read with :func:`parse_caption`.

    attrs: the true ``ShapesBatch.attrs`` of the captioned images (dict of (N,) int64).
    Returns fractions in [0, 1]: ``well_formed`` (the caption is a sentence of the grammar),
    one entry per attribute the true caption states (``shape``, ``colour``, ``size``, ``position``;
    ``shape2`` ... ``relation`` for two objects; over the images that have it), and
    ``all_correct`` (every stated attribute right). A caption that does not parse is wrong on all.
    A two-object scene has two true captions ("A left of B" = "B right of A"); a caption is
    scored against the one it matches best.
    """
    n = len(captions)
    if n == 0 or len(attrs["shape"]) != n:
        raise ValueError(f"need one caption per image and at least one: got {n} captions for "
                         f"{len(attrs['shape'])} images")
    right = {key: [] for key in ATTR_KEYS}
    well, allright = [], []
    for i, text in enumerate(captions):
        truth = parse_caption(caption_for({key: int(v[i]) for key, v in attrs.items()}))
        pred = parse_caption(text)
        well.append(pred is not None)
        stated = [key for key in ATTR_KEYS if truth[key] >= 0]
        # "A left of B" and "B right of A" say the same thing: score against the better reading
        readings = [truth] + ([_converse(truth)] if truth["relation"] >= 0 else [])
        hits = max(([pred is not None and pred[key] == t[key] for key in stated] for t in readings), key=sum)
        for key, hit in zip(stated, hits):
            right[key].append(hit)
        allright.append(all(hits))
    out = {"well_formed": float(np.mean(well))}
    out.update({key: float(np.mean(v)) for key, v in right.items() if v})
    out["all_correct"] = float(np.mean(allright))
    return out


def answer_accuracy(predicted: Sequence[str], answers: Sequence[str],
                    qtypes: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy of answers, per question type and ``overall`` (fractions in [0, 1])."""
    if not len(predicted) == len(answers) == len(qtypes):
        raise ValueError(f"predicted, answers and qtypes must have one length, got "
                         f"{len(predicted)}, {len(answers)}, {len(qtypes)}")
    hits = np.array([" ".join(p.split()) == " ".join(a.split()) for p, a in zip(predicted, answers)])
    types = np.array(qtypes)
    out = {str(q): float(hits[types == q].mean()) for q in dict.fromkeys(qtypes)}
    out["overall"] = float(hits.mean()) if len(hits) else float("nan")
    return out
