"""Text for the course's language models: tokenizers and an offline caption corpus.

A language model reads integers, so text must first be cut into *tokens* and each token
given an id. This module holds three ways of doing it, from the coarsest to the finest
alphabet, and the corpus the course trains them on:

- :class:`WordTokenizer`: one token per whitespace-separated word (tiny vocabulary for a
  closed grammar such as the shapes captions; unknown words become ``<unk>``).
- :class:`CaptionTokenizer`: the word tokenizer of the shapes captions, with the fixed
  vocabulary :data:`GRAMMAR_WORDS` (plus any extra words); strings -> padded id tensors. CLIP
  (3 · 05), the captioner (3 · 06, with the question words) and text-to-image (4 · 07) share it.
- :class:`CharTokenizer`: one token per character (never unknown inside its alphabet,
  but sequences are long).
- :func:`train_bpe` -> :class:`BPETokenizer`: byte-pair encoding, learned from data.
- :func:`caption_corpus`: captions of rendered shapes images, made offline from a seed.
- :func:`lm_pairs`: padded (input, target) tensors for next-token training.

    >>> corpus = caption_corpus(2000, seed=0)
    >>> bpe = train_bpe(corpus, vocab_size=300)
    >>> ids = bpe.encode("a small red circle at the top")
    >>> bpe.decode(ids)
    'a small red circle at the top'

**Byte-pair encoding, byte level.** The base alphabet is the 256 byte values, so any string
(any language, emoji, typos) can be encoded and there is never an unknown token. Text is
first cut into *chunks*, a word together with the whitespace in front of it
(``"a small cat"`` -> ``"a"``, ``" small"``, ``" cat"``), and merges never cross a chunk
boundary. Training repeats, ``vocab_size - 256`` times:

1. count every pair of adjacent tokens in the corpus (each distinct chunk weighted by how
   often it occurs);
2. take the most frequent pair ``(a, b)`` (ties: the smallest pair of ids);
3. give it the next free id ``n`` and replace every ``a, b`` by ``n``.

The merges, in order, *are* the tokenizer. Encoding a new chunk replays them: of the pairs
present, merge the one learned earliest, until no learned pair is left. Decoding looks up
the bytes of every id and joins them. Training stops early when no pair occurs twice or
more (merging a pair seen once saves nothing across the corpus), so ``len(tok.vocab)`` may be
smaller than ``vocab_size`` on a tiny corpus.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from course_lib.data.shapes import COLOURS, POSITIONS, RELATIONS, SHAPE_KINDS, SIZES

__all__ = ["caption_corpus", "chunks", "count_pairs", "merge_pair", "train_bpe", "BPETokenizer",
           "CharTokenizer", "WordTokenizer", "GRAMMAR_WORDS", "CaptionTokenizer", "SPECIAL_TOKENS",
           "pad_sequences", "lm_pairs"]

NUM_BYTES = 256
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3 of Char/WordTokenizer
_CHUNK = re.compile(r"\s?\S+|\s+(?!\S)")  # a word with one whitespace before it, or a gap

#: Every word a caption of :mod:`course_lib.data.shapes` can contain, sorted: "a", "at", "the", the
#: sizes, colours and shape kinds, and the words of the positions and relations ("top", "left", "of" ...).
GRAMMAR_WORDS = tuple(sorted({"a", "at", "the", *SIZES, *COLOURS, *SHAPE_KINDS,
                              *(w for phrase in POSITIONS + RELATIONS for w in phrase.split())}))


# ----------------------------------------------------------------------------- corpus
def caption_corpus(n: int, seed: int = 0, two_objects: float = 0.5) -> list[str]:
    """``n`` captions of randomly rendered shapes images (see :mod:`course_lib.data.shapes`).

    A fraction ``two_objects`` (on average) describe two objects ("a small red circle left of a
    large blue square"), the rest one object and its position ("a large cyan cross at the top").
    The same ``seed`` gives the same list. The images are drawn at the smallest size (16 x 16)
    and thrown away: only the captions, whose statistics do not depend on the image size, are
    kept. Every attribute is uniform, so the grammar has 2·6·5·9 = 540 one-object and
    (2·6·5)²·4 = 14,400 two-object captions.
    """
    from course_lib.data import render_shapes

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int (how many captions), got {n!r}")
    return render_shapes(n, size=16, seed=seed, two_objects=two_objects).captions


# ----------------------------------------------------------------------------- BPE pieces
def chunks(text: str) -> list[str]:
    """Cut ``text`` into the pieces BPE works inside: each word keeps the whitespace before it.

    ``"a big  dog"`` -> ``["a", " big", " ", " dog"]``: in a run of whitespace the last one goes
    with the next word and the rest form a chunk of their own. Joining the chunks gives the
    text back exactly.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _CHUNK.findall(text)


def count_pairs(words: dict[tuple[int, ...], int]) -> Counter:
    """How often each adjacent pair of ids occurs, over ``{token sequence: count}``.

    ``{(1, 2, 3): 2, (2, 3): 1}`` -> ``{(1, 2): 2, (2, 3): 3}``.
    """
    pairs: Counter = Counter()
    for ids, count in words.items():
        for pair in zip(ids, ids[1:]):          # (ids[0], ids[1]), (ids[1], ids[2]), ...
            pairs[pair] += count
    return pairs


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, scanning left to right.

    ``merge_pair([5, 6, 5, 6, 6], (5, 6), 9)`` -> ``[9, 9, 6]``; overlapping occurrences are
    merged from the left: ``merge_pair([7, 7, 7], (7, 7), 9)`` -> ``[9, 7]``.
    """
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)                  # the pair becomes one token
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# ----------------------------------------------------------------------------- BPE tokenizer
@dataclass
class BPETokenizer:
    """A byte-level BPE tokenizer: ids 0..255 are bytes, id ``256 + i`` is ``merges[i]``.

    merges: the learned pairs in order; ``merges[i] = (a, b)`` made token ``256 + i`` from
    tokens ``a`` and ``b``. Build one with :func:`train_bpe`.
    """

    merges: list[tuple[int, int]]
    vocab: dict[int, bytes] = field(init=False, repr=False, compare=False)  # id -> its bytes
    ranks: dict[tuple[int, int], int] = field(init=False, repr=False, compare=False)  # pair -> order
    _cache: dict[str, list[int]] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.merges = [(int(a), int(b)) for a, b in self.merges]
        self.vocab = {i: bytes([i]) for i in range(NUM_BYTES)}
        self.ranks = {}
        for i, (a, b) in enumerate(self.merges):
            new_id = NUM_BYTES + i
            if not (0 <= a < new_id and 0 <= b < new_id):
                raise ValueError(f"merge {i} = {(a, b)} uses an id not defined before it (< {new_id})")
            self.vocab[new_id] = self.vocab[a] + self.vocab[b]   # the new token's bytes
            self.ranks.setdefault((a, b), i)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _encode_chunk(self, chunk: str) -> list[int]:
        if chunk in self._cache:
            return self._cache[chunk]
        ids = list(chunk.encode("utf-8"))
        while len(ids) > 1:
            # of the adjacent pairs, the one learned first (lowest rank) is merged first
            pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, float("inf")))
            if pair not in self.ranks:
                break                           # no learned pair left in this chunk
            ids = merge_pair(ids, pair, NUM_BYTES + self.ranks[pair])
        self._cache[chunk] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """``text`` -> token ids, chunk by chunk."""
        return [i for chunk in chunks(text) for i in self._encode_chunk(chunk)]

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text (bytes that are not valid UTF-8 become "�")."""
        try:
            data = b"".join(self.vocab[int(i)] for i in ids)
        except KeyError as exc:
            raise ValueError(f"id {exc.args[0]} is not in this tokenizer's vocabulary "
                             f"(0..{self.vocab_size - 1})") from None
        return data.decode("utf-8", errors="replace")

    def tokens(self, text: str) -> list[str]:
        """The pieces ``text`` is cut into, as strings: ``["a", " small", " red", ...]``."""
        return [self.token_str(i) for i in self.encode(text)]

    def token_str(self, i: int) -> str:
        """Token ``i`` as text (a lone byte of a multi-byte character shows as "�")."""
        return self.vocab[int(i)].decode("utf-8", errors="replace")


def train_bpe(texts: Iterable[str], vocab_size: int, verbose: bool = False) -> BPETokenizer:
    """Learn ``vocab_size - 256`` byte-level merges from ``texts`` (see the module docstring).

    texts: the training corpus (an iterable of strings). Ties between equally frequent pairs
    go to the smallest pair of ids, so training is deterministic. Stops early when no pair
    occurs at least twice. ``verbose`` prints each merge.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list (or iterable) of strings, not one string")
    if not isinstance(vocab_size, int) or vocab_size < NUM_BYTES:
        raise ValueError(f"vocab_size must be an int >= {NUM_BYTES} (the byte alphabet), got {vocab_size!r}")
    chunk_counts = Counter(c for text in texts for c in chunks(text))
    words = {tuple(c.encode("utf-8")): n for c, n in chunk_counts.items()}  # {bytes of a chunk: count}
    vocab = {i: bytes([i]) for i in range(NUM_BYTES)}
    merges: list[tuple[int, int]] = []
    for new_id in range(NUM_BYTES, vocab_size):
        pairs = count_pairs(words)                                       # step 1
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))                  # step 2: most frequent
        if pairs[best] < 2:
            break
        words = {tuple(merge_pair(w, best, new_id)): n for w, n in words.items()}  # step 3
        merges.append(best)
        vocab[new_id] = vocab[best[0]] + vocab[best[1]]
        if verbose:
            print(f"merge {len(merges):3d}: {vocab[best[0]]!r} + {vocab[best[1]]!r} -> "
                  f"{vocab[new_id]!r} (seen {pairs[best]} times)")
    return BPETokenizer(merges)


# ----------------------------------------------------------------------------- table tokenizers
class _TableTokenizer:
    """A fixed vocabulary ``itos`` (id -> symbol) with the special tokens first.

    ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, then the symbols in sorted order.
    Subclasses say how text is cut into symbols (:meth:`split`) and glued back (:meth:`join`).
    """

    def __init__(self, symbols: Iterable[str]):
        symbols = sorted(set(symbols) - set(SPECIAL_TOKENS))
        self.itos: list[str] = list(SPECIAL_TOKENS) + symbols
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(len(SPECIAL_TOKENS))

    @classmethod
    def fit(cls, texts: Iterable[str]):
        """A tokenizer whose vocabulary is every symbol in ``texts``."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list (or iterable) of strings, not one string")
        return cls(s for text in texts for s in cls.split(text))

    @staticmethod
    def split(text: str) -> list[str]:
        raise NotImplementedError

    @staticmethod
    def join(symbols: list[str]) -> str:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """``text`` -> ids; unknown symbols become ``<unk>``; optionally ``<bos>`` ... ``<eos>``."""
        ids = [self.stoi.get(s, self.unk_id) for s in self.split(text)]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: Iterable[int], stop_at_eos: bool = True) -> str:
        """ids -> text, leaving out ``<pad>`` and ``<bos>`` and stopping at the first ``<eos>``
        (``stop_at_eos=False`` keeps going and shows it). ``<unk>`` is kept as "<unk>"."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
            if i == self.eos_id and stop_at_eos:
                break
            if i not in (self.pad_id, self.bos_id):
                out.append(self.itos[i])
        return self.join(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class WordTokenizer(_TableTokenizer):
    """One token per whitespace-separated word: ``"a red circle"`` -> ``[a, red, circle]``.

    Decoding joins words with one space, so runs of whitespace do not survive a round trip.
    """

    @staticmethod
    def split(text: str) -> list[str]:
        return text.split()

    @staticmethod
    def join(symbols: list[str]) -> str:
        return " ".join(symbols)


class CaptionTokenizer(WordTokenizer):
    """Word tokens for shapes captions: ``"a red circle"`` -> ``<bos> a red circle <eos> <pad> ...``.

    The vocabulary is fixed: the special tokens, then :data:`GRAMMAR_WORDS` and any
    ``extra_words`` in one sorted list, so every run gives every word the same id (the
    captioner adds its question words, text-to-image a placeholder word). Text is lower-cased and
    cut at whitespace; a word outside the vocabulary becomes ``<unk>``.

    Calling the tokenizer on a list of ``N`` strings returns ``(N, context_length)`` int64 ids:
    ``<bos>``, the words, ``<eos>``, then ``<pad>`` (id 0). A text too long for ``context_length``
    is an error, not cut silently.
    """

    def __init__(self, extra_words: Sequence[str] = (), context_length: int = 16):
        if isinstance(extra_words, str):
            raise TypeError("extra_words must be a list of words, not one string")
        if not isinstance(context_length, int) or context_length < 3:
            raise ValueError(f"context_length must be an int >= 3 (<bos>, a word, <eos>), got {context_length!r}")
        super().__init__([*GRAMMAR_WORDS, *(w.lower() for w in extra_words)])
        self.context_length = context_length

    @staticmethod
    def split(text: str) -> list[str]:
        return text.lower().split()

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """texts: one string or ``N`` strings -> ids ``(N, context_length)`` (``(1, T)`` for one string)."""
        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("the tokenizer takes a string or a list of strings")
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text, bos=True, eos=True)
            if len(ids) > self.context_length:
                raise ValueError(f"{text!r} is {len(ids)} tokens with <bos> and <eos>, more than "
                                 f"context_length={self.context_length}; make a tokenizer with a larger one")
            out[row, :len(ids)] = torch.tensor(ids)
        return out

    def decode_batch(self, tokens: torch.Tensor) -> list[str]:
        """ids ``(N, T)`` -> ``N`` strings (the inverse of calling the tokenizer, up to case and spacing)."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (N, T), got {tuple(tokens.shape)}")
        return [self.decode(row.tolist()) for row in tokens]

    def __repr__(self) -> str:
        return f"CaptionTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"


class CharTokenizer(_TableTokenizer):
    """One token per character: ``"a red"`` -> ``[a, ' ', r, e, d]`` (exact round trip)."""

    @staticmethod
    def split(text: str) -> list[str]:
        return list(text)

    @staticmethod
    def join(symbols: list[str]) -> str:
        return "".join(symbols)


# ----------------------------------------------------------------------------- training tensors
def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, length: int | None = None) -> torch.Tensor:
    """Lists of ids -> a ``(N, length)`` int64 tensor, padded on the right with ``pad_id``.

    ``length`` defaults to the longest sequence; a longer sequence is an error (not cut).
    """
    longest = max((len(s) for s in seqs), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a sequence has {longest} ids, more than length={length}")
    out = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    for row, s in enumerate(seqs):
        out[row, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def lm_pairs(texts: Sequence[str], tokenizer: _TableTokenizer, ignore_index: int = -100
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token training pairs from ``texts``: ``(inputs (N, T), targets (N, T))``.

    Each text becomes ``<bos> w1 ... wn <eos>``, padded with ``<pad>``; the model reads
    ``inputs = seq[:, :-1]`` and must predict ``targets = seq[:, 1:]``, the same sequence
    shifted by one. Targets at padding are ``ignore_index``, which ``cross_entropy`` skips, so
    the loss is the mean over real tokens (including the ``<eos>`` that ends each text).
    T is the longest text's length + 1.
    """
    seq = pad_sequences([tokenizer.encode(t, bos=True, eos=True) for t in texts], tokenizer.pad_id)
    inputs, targets = seq[:, :-1], seq[:, 1:].clone()
    targets[targets == tokenizer.pad_id] = ignore_index
    return inputs.contiguous(), targets
