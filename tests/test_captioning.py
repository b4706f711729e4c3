"""Tests of course_lib.models.captioning: the captioner's masks, its use of the image, generation, data and scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.data import parse_caption, render_shapes
from course_lib.models.captioning import (PAIR_QUESTIONS, QUESTION_TYPES, SINGLE_QUESTIONS, Captioner,
                                          CrossAttentionBlock, ImageEncoder, ImageTextDataset, answer_accuracy,
                                          answer_questions, ask, caption_accuracy, caption_tokenizer, decode_ids,
                                          prefix_sequences, vqa_examples)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    return caption_tokenizer()


def small_model(tok, **kw):
    torch.manual_seed(0)
    args = dict(dim=32, depth=2, num_heads=4, width=8, enc_depth=1, block_size=16)
    args.update(kw)
    return Captioner(tok.vocab_size, **args).eval()


# ----------------------------------------------------------------------------- shapes
def test_shapes(tok):
    model = small_model(tok)
    images, tokens = torch.rand(3, 3, 32, 32), torch.randint(0, tok.vocab_size, (3, 7))
    assert model.encode(images).shape == (3, 64, 32)                    # (B, (32/4)², dim)
    assert model(images, tokens).shape == (3, 7, tok.vocab_size)       # (B, T, V)
    weights = model.cross_attention(images, tokens)
    assert len(weights) == 2 and weights[0].shape == (3, 4, 7, 64)     # (B, H, T, N) per block
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(3, 4, 7))  # each row is a distribution
    enc = ImageEncoder(in_ch=1, image_size=16, dim=16, width=4, depth=0, num_heads=2)
    assert enc(torch.rand(2, 1, 16, 16)).shape == (2, 16, 16) and enc.grid == 4


def test_block_readable_path_equals_fast_path():
    torch.manual_seed(1)
    block = CrossAttentionBlock(dim=16, num_heads=2).eval()
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    out_fast = block(x, memory)
    out_slow, w = block(x, memory, return_weights=True)
    torch.testing.assert_close(out_fast, out_slow)
    assert w.shape == (2, 2, 5, 9)


def test_bad_inputs_raise_clear_errors(tok):
    model = small_model(tok)
    with pytest.raises(ValueError, match="expects images"):
        model(torch.rand(2, 1, 32, 32), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="int64"):
        model(torch.rand(2, 3, 32, 32), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="block_size"):
        model.generate(torch.rand(1, 3, 32, 32), max_len=40)
    with pytest.raises(ValueError, match="images but"):
        model(torch.rand(2, 3, 32, 32), torch.zeros(3, 3, dtype=torch.long))


# ----------------------------------------------------------------------------- the causal mask
def test_future_tokens_do_not_change_earlier_logits(tok):
    model = small_model(tok)
    images = torch.rand(2, 3, 32, 32)
    tokens = torch.randint(4, tok.vocab_size, (2, 8))
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1 - 4) % (tok.vocab_size - 4) + 4  # another word at position 5
    a, b = model(images, tokens), model(images, changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])                     # positions 0..4 cannot see it
    assert (a[:, 5:] - b[:, 5:]).abs().amax() > 1e-4                   # positions 5.. do


def test_causal_test_would_catch_a_decoder_that_peeks(tok):
    model = small_model(tok)
    for block in model.decoder.blocks:
        block.attn.causal = False                                      # break it on purpose
    images, tokens = torch.rand(1, 3, 32, 32), torch.randint(4, tok.vocab_size, (1, 8))
    changed = tokens.clone()
    changed[:, 5] = 4 if int(tokens[0, 5]) != 4 else 5
    assert (model(images, tokens)[:, :5] - model(images, changed)[:, :5]).abs().amax() > 1e-4


# ----------------------------------------------------------------------------- the image is used
def test_different_images_give_different_logits(tok):
    model = small_model(tok)
    shapes = render_shapes(2, size=32, seed=3)
    tokens = torch.tensor([tok.encode("a small red", bos=True)] * 2)
    logits = model(shapes.images, tokens)
    assert (logits[0] - logits[1]).abs().amax(-1).min() > 1e-4         # at every position
    same = model(shapes.images[:1].repeat(2, 1, 1, 1), tokens)
    torch.testing.assert_close(same[0], same[1])                       # same image: same logits


def test_image_test_would_catch_a_decoder_that_ignores_the_image(tok):
    model = small_model(tok)
    for block in model.decoder.blocks:
        nn.init.zeros_(block.cross_attn.out_proj.weight)               # cross-attention switched off
        nn.init.zeros_(block.cross_attn.out_proj.bias)
    shapes = render_shapes(2, size=32, seed=3)
    tokens = torch.tensor([tok.encode("a small red", bos=True)] * 2)
    logits = model(shapes.images, tokens)
    torch.testing.assert_close(logits[0], logits[1])


# ----------------------------------------------------------------------------- generation
class _ScriptedDecoder(nn.Module):
    """Stands in for the text decoder: row b says word 5 until its sequence has stop[b]
    tokens, then <eos>, then (if still asked) word 6."""

    def __init__(self, stop, vocab_size, eos_id=2, block_size=24):
        super().__init__()
        self.stop, self.vocab_size, self.eos_id, self.block_size = stop, vocab_size, eos_id, block_size
        self.calls = 0

    def forward(self, tokens, memory):
        self.calls += 1
        B, T = tokens.shape
        logits = torch.zeros(B, T, self.vocab_size)
        for b in range(B):
            word = 5 if T < self.stop[b] else (self.eos_id if T == self.stop[b] else 6)
            logits[b, -1, word] = 10.0
        return logits


def test_generate_stops_at_the_end_token(tok):
    model = small_model(tok)
    model.decoder = _ScriptedDecoder([3, 5], tok.vocab_size)
    ids = model.generate(torch.rand(2, 3, 32, 32), max_len=10)
    assert ids.shape == (2, 6)                                          # stopped once both rows ended
    assert model.decoder.calls == 5                                     # not 10 steps
    assert ids[0].tolist() == [tok.bos_id, 5, 5, tok.eos_id, tok.pad_id, tok.pad_id]
    assert ids[1].tolist() == [tok.bos_id, 5, 5, 5, 5, tok.eos_id]
    assert decode_ids(tok, ids) == [tok.itos[5] + " " + tok.itos[5], " ".join([tok.itos[5]] * 4)]


def test_generate_keeps_the_prompt_and_can_sample(tok):
    model = small_model(tok)
    images = torch.rand(2, 3, 32, 32)
    prompt = torch.tensor([tok.encode("where is it ?")] * 2)
    ids = model.generate(images, max_len=3, prompt=prompt)
    assert ids.shape[1] <= 1 + prompt.shape[1] + 3
    assert ids[:, 0].eq(tok.bos_id).all() and ids[:, 1:1 + prompt.shape[1]].equal(prompt)
    a = model.generate(images, 5, strategy="sample", generator=torch.Generator().manual_seed(0))
    b = model.generate(images, 5, strategy="sample", generator=torch.Generator().manual_seed(0))
    assert a.equal(b)
    greedy = model(images, ids[:, :1])[:, -1].argmax(-1)
    assert model.generate(images, 1)[:, 1].equal(greedy)               # greedy = argmax of the logits


def test_a_tiny_captioner_learns_captions_by_heart(tok):
    shapes = render_shapes(6, size=32, seed=0)
    inputs, targets = prefix_sequences([""] * 6, shapes.captions, tok)
    model = small_model(tok).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(120):
        loss = model.loss(shapes.images, inputs, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert decode_ids(tok, model.generate(shapes.images, 12)) == shapes.captions


# ----------------------------------------------------------------------------- data
def test_prefix_sequences_mask_the_prompt(tok):
    inputs, targets = prefix_sequences(["", "what shape is it ?"], ["a small red circle at the top", "circle"], tok)
    assert inputs.shape == targets.shape == (2, 8)
    assert inputs[0].tolist() == tok.encode("a small red circle at the top", bos=True)
    assert targets[0].tolist() == tok.encode("a small red circle at the top", eos=True)
    q = tok.encode("what shape is it ?")
    assert inputs[1, :6].tolist() == [tok.bos_id] + q
    assert targets[1].tolist() == [-100] * 5 + [tok.stoi["circle"], tok.eos_id, -100]
    with pytest.raises(ValueError, match="prompts"):
        prefix_sequences(["a"], ["b", "c"], tok)


def test_questions_and_answers():
    row = render_shapes(1, seed=0).attr_row(0)
    assert set(SINGLE_QUESTIONS) | set(PAIR_QUESTIONS) == set(QUESTION_TYPES)
    q, a = ask(row, "position")
    assert q == "where is it ?" and parse_caption(f"a small red circle at the {a}") is not None
    with pytest.raises(ValueError, match="two objects|one object"):
        ask(row, "relation")
    pairs = render_shapes(40, seed=1, two_objects=1.0)
    rng = np.random.default_rng(0)
    answers = []
    for i in range(40):
        row = pairs.attr_row(i)
        q, a = ask(row, "relation", rng)
        rel_words = q[len("is the "):-2].split(" the ")[0].split()[2:]  # words between the objects
        truth = pairs.captions[i]
        answers.append(a)
        assert (a == "yes") == (" " + " ".join(rel_words) + " a " in truth)
    assert {"yes", "no"} <= set(answers)
    index, questions, answers, types = vqa_examples(render_shapes(5, seed=2).attrs, per_image=4)
    assert len(index) == 20 and sorted(set(types)) == sorted(SINGLE_QUESTIONS)
    tok = caption_tokenizer()
    assert all(tok.unk_id not in tok.encode(t) for t in questions + answers)


def test_image_text_dataset():
    images = torch.rand(3, 3, 32, 32)
    ds = ImageTextDataset(images, [2, 0], torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))
    x, i, t = ds[0]
    assert len(ds) == 2 and x.equal(images[2]) and i.shape == t.shape == (4,)
    with pytest.raises(ValueError, match="outside"):
        ImageTextDataset(images, [3], torch.zeros(1, 4), torch.zeros(1, 4))


# ----------------------------------------------------------------------------- scores
def test_caption_accuracy_known_answers():
    shapes = render_shapes(4, seed=5)
    assert caption_accuracy(shapes.captions, shapes.attrs)["all_correct"] == 1.0
    wrong = list(shapes.captions)
    wrong[0] = "the the the"                                            # not a sentence of the grammar
    row = shapes.attr_row(1)
    other = "red" if row["colour"] != 0 else "green"
    words = wrong[1].split()
    words[2] = other                                                    # a wrong colour
    wrong[1] = " ".join(words)
    acc = caption_accuracy(wrong, shapes.attrs)
    assert acc["well_formed"] == 0.75 and acc["colour"] == 0.5 and acc["shape"] == 0.75
    assert acc["all_correct"] == 0.5 and "relation" not in acc
    two = render_shapes(3, seed=5, two_objects=1.0)
    assert caption_accuracy(two.captions, two.attrs)["relation"] == 1.0
    first, rest = two.captions[0][2:].split(" a ", 1)                        # "S C K rel", "S C K"
    words = first.split()
    relation = " ".join(words[3:])
    other = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[relation]
    converse = f"a {rest} {other} a {' '.join(words[:3])}"                  # the same scene, told from B
    assert caption_accuracy([converse], {k: v[:1] for k, v in two.attrs.items()})["all_correct"] == 1.0
    swapped_only = f"a {rest} {relation} a {' '.join(words[:3])}"           # objects swapped, relation not
    assert caption_accuracy([swapped_only], {k: v[:1] for k, v in two.attrs.items()})["relation"] == 0.0


def test_answer_accuracy_and_answering(tok):
    acc = answer_accuracy(["red", "top  left", "no"], ["red", "top left", "yes"], ["colour", "position", "relation"])
    assert acc == {"colour": 1.0, "position": 1.0, "relation": 0.0, "overall": 2 / 3}
    model = small_model(tok)
    shapes = render_shapes(3, seed=0)
    out = answer_questions(model, tok, shapes.images, ["where is it ?", "what shape is it ?", "where is it ?"],
                           max_len=2)
    assert len(out) == 3 and all(isinstance(a, str) for a in out)
