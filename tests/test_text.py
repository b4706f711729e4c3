"""Tokenizers and the caption corpus (course_lib.data.text)."""
from __future__ import annotations

import pytest
import torch

from course_lib.data import parse_caption
from course_lib.data.text import (GRAMMAR_WORDS, BPETokenizer, CaptionTokenizer, CharTokenizer, WordTokenizer,
                                  caption_corpus, chunks, count_pairs, lm_pairs, merge_pair, pad_sequences, train_bpe)

ODD_TEXTS = ["a small red circle at the top", "  two  spaces\tand a tab\n", "", "x",
             "héllo wörld — ünïcode ✓ 日本語 🙂", "trailing space "]


@pytest.fixture(scope="module")
def corpus():
    return caption_corpus(600, seed=3)


@pytest.fixture(scope="module")
def bpe(corpus):
    return train_bpe(corpus, vocab_size=320)


def test_caption_corpus_is_deterministic_grammatical_and_mixed():
    a, b = caption_corpus(300, seed=1), caption_corpus(300, seed=1)
    assert a == b and a != caption_corpus(300, seed=2)
    parsed = [parse_caption(c) for c in a]
    assert all(p is not None for p in parsed)
    two = sum(p["relation"] >= 0 for p in parsed) / len(parsed)
    assert 0.35 < two < 0.65                                   # about half describe two objects
    assert all(parse_caption(c)["relation"] == -1 for c in caption_corpus(50, seed=0, two_objects=0.0))
    with pytest.raises(ValueError, match="positive int"):
        caption_corpus(0)


def test_chunks_are_lossless_and_attach_one_space_to_words():
    assert chunks("a big  dog") == ["a", " big", " ", " dog"]
    for text in ODD_TEXTS:
        assert "".join(chunks(text)) == text


def test_merge_pair_and_count_pairs():
    assert merge_pair([5, 6, 5, 6, 6], (5, 6), 9) == [9, 9, 6]
    assert merge_pair([7, 7, 7], (7, 7), 9) == [9, 7]        # left to right, no overlap
    assert merge_pair([1, 2], (3, 4), 9) == [1, 2]
    assert merge_pair([], (1, 2), 9) == []
    assert count_pairs({(1, 2, 3): 2, (2, 3): 1}) == {(1, 2): 2, (2, 3): 3}


def test_bpe_round_trips_any_text(bpe, corpus):
    for text in ODD_TEXTS + corpus[:50]:
        assert bpe.decode(bpe.encode(text)) == text


def test_bpe_merges_shorten_the_corpus_monotonically(corpus):
    lengths = []
    for vocab_size in (256, 270, 290, 320):
        tok = train_bpe(corpus, vocab_size)
        lengths.append(sum(len(tok.encode(t)) for t in corpus))
    assert lengths[0] == sum(len(t.encode()) for t in corpus)  # no merges: one token per byte
    assert all(a > b for a, b in zip(lengths, lengths[1:]))
    assert lengths[-1] < 0.35 * lengths[0]
    whole = train_bpe(corpus, 1000)                            # runs out of pairs long before 1000
    assert whole.vocab_size < 400
    assert sum(len(whole.encode(t)) for t in corpus) == sum(len(t.split()) for t in corpus)


def test_bpe_learns_the_most_frequent_pair_first_then_words(bpe, corpus):
    words = {tuple(c.encode()): n for c, n in __import__("collections").Counter(
        c for t in corpus for c in chunks(t)).items()}
    pairs = count_pairs(words)
    assert bpe.merges[0] == max(pairs, key=lambda p: (pairs[p], -p[0], -p[1]))
    assert bpe.tokens("a small red circle at the left") == ["a", " small", " red", " circle",
                                                            " at", " the", " left"]
    assert bpe.vocab_size == 320 and len(bpe.merges) == 64


def test_bpe_encoding_replays_merges_in_training_order():
    tok = BPETokenizer([(ord("a"), ord("b")), (ord("b"), ord("c")), (256, ord("c"))])
    assert tok.encode("abc") == [258]                          # ab first (rank 0), then ab+c
    assert tok.encode("bc") == [257]
    assert tok.token_str(258) == "abc"
    with pytest.raises(ValueError, match="not defined before"):
        BPETokenizer([(300, 1)])


def test_bpe_training_stops_when_nothing_repeats_and_checks_its_input():
    tok = train_bpe(["abcd"], vocab_size=1000)
    assert tok.merges == []                                    # every pair occurs once
    assert train_bpe(["abab abab"], vocab_size=1000).encode("abab") == [257]
    with pytest.raises(ValueError, match=">= 256"):
        train_bpe(["abc"], vocab_size=100)
    with pytest.raises(TypeError, match="not one string"):
        train_bpe("abc", vocab_size=300)
    with pytest.raises(ValueError, match="not in this tokenizer"):
        tok.decode([999])


def test_word_and_char_tokenizers(corpus):
    words = WordTokenizer.fit(corpus)
    assert words.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert words.vocab_size == 4 + len({w for c in corpus for w in c.split()}) < 45
    caption = corpus[0]
    ids = words.encode(caption, bos=True, eos=True)
    assert ids[0] == words.bos_id and ids[-1] == words.eos_id and len(ids) == len(caption.split()) + 2
    assert words.decode(ids) == caption
    assert words.decode(ids + [words.pad_id, 7], stop_at_eos=True) == caption
    assert words.encode("a purple circle") == [words.stoi["a"], words.unk_id, words.stoi["circle"]]
    chars = CharTokenizer.fit(corpus)
    assert chars.decode(chars.encode(caption)) == caption and len(chars.encode(caption)) == len(caption)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        chars.decode([10_000])


def test_lm_pairs_shift_by_one_and_ignore_padding():
    tok = WordTokenizer.fit(["a b c", "a b"])
    x, y = lm_pairs(["a b c", "a b"], tok)
    assert x.shape == y.shape == (2, 4) and x.dtype == y.dtype == torch.long
    a, b, c = (tok.stoi[w] for w in "abc")
    assert x.tolist() == [[tok.bos_id, a, b, c], [tok.bos_id, a, b, tok.eos_id]]
    assert y.tolist() == [[a, b, c, tok.eos_id], [a, b, tok.eos_id, -100]]
    assert pad_sequences([[1], [2, 3]], pad_id=0, length=3).tolist() == [[1, 0, 0], [2, 3, 0]]
    with pytest.raises(ValueError, match="more than length"):
        pad_sequences([[1, 2, 3]], pad_id=0, length=2)


# ----------------------------------------------------------------------------- the shapes vocabulary
# The ids of every word, as CLIP, the captioner and text-to-image have given them since Phase 3:
# trained models and exported pipelines depend on them, so they must never change.
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CLIP_IDS = SPECIALS + ["a", "above", "at", "below", "blue", "bottom", "center", "circle", "cross", "cyan",
                       "diamond", "green", "large", "left", "magenta", "of", "red", "right", "small", "square",
                       "the", "top", "triangle", "yellow"]
CAPTIONING_IDS = SPECIALS + ["?", "a", "above", "at", "below", "blue", "bottom", "center", "circle", "colour",
                             "cross", "cyan", "diamond", "green", "is", "it", "large", "left", "magenta", "no",
                             "of", "red", "right", "shape", "size", "small", "square", "the", "top", "triangle",
                             "what", "where", "yellow", "yes"]


def test_caption_vocabulary_ids_never_change():
    from course_lib.diffusion.text2image import make_tokenizer
    from course_lib.models import clip
    from course_lib.models.captioning import caption_tokenizer

    assert list(GRAMMAR_WORDS) == CLIP_IDS[4:]
    assert CaptionTokenizer().itos == CLIP_IDS
    assert caption_tokenizer().itos == CAPTIONING_IDS
    assert make_tokenizer().itos == SPECIALS + sorted(CLIP_IDS[4:] + ["shape"])
    assert clip.CaptionTokenizer is CaptionTokenizer   # CLIP's text encoder uses the one tokenizer


def test_every_caption_of_the_grammar_is_in_the_vocabulary():
    tok = CaptionTokenizer()
    for text in caption_corpus(300, seed=5):
        ids = tok.encode(text)
        assert tok.unk_id not in ids and tok.decode(ids) == text


def test_caption_tokenizer_pads_lowercases_and_refuses_long_texts():
    tok = CaptionTokenizer(extra_words=["Photo"], context_length=8)
    ids = tok(["A photo", "a red circle"])
    assert ids.shape == (2, 8) and ids.dtype == torch.long
    assert ids[0, :4].tolist() == [tok.bos_id, tok.stoi["a"], tok.stoi["photo"], tok.eos_id]
    assert (ids[0, 4:] == tok.pad_id).all() and tok.decode_batch(ids) == ["a photo", "a red circle"]
    assert tok("a dog")[0, 2].item() == tok.unk_id
    with pytest.raises(ValueError, match="context_length=8"):
        tok("a small red circle at the top left")
    with pytest.raises(TypeError, match="list of words"):
        CaptionTokenizer(extra_words="photo")
