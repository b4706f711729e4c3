"""course_lib.models.clip: the tokenizer, the encoders, the CLIP loss, zero-shot classification, recall@k."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.data import COLOURS, POSITIONS, SHAPE_KINDS, SIZES, parse_caption, render_shapes
from course_lib.models.clip import (MAX_LOGIT_SCALE, CaptionTokenizer, CLIPModel, class_embeddings, clip_loss,
                                    recall_at_k, similarity, zero_shot_classify)


def _hand_loss(a, b, s):
    """The symmetric InfoNCE loss with Python loops and math.log/exp only."""
    a = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in a]
    b = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in b]
    B = len(a)
    L = [[s * sum(x * y for x, y in zip(a[i], b[j])) for j in range(B)] for i in range(B)]
    rows = sum(-L[i][i] + math.log(sum(math.exp(L[i][j]) for j in range(B))) for i in range(B)) / B
    cols = sum(-L[j][j] + math.log(sum(math.exp(L[i][j]) for i in range(B))) for j in range(B)) / B
    return (rows + cols) / 2


# ----------------------------------------------------------------------------- loss
def test_clip_loss_equals_hand_written_cross_entropy():
    a = [[1.0, 0.0, 0.5], [0.2, 1.0, -0.3], [-0.5, 0.4, 1.0]]
    b = [[0.9, 0.1, 0.0], [0.0, -1.0, 0.2], [0.3, 0.3, 0.8]]   # row 1 points away: rows != columns
    got = clip_loss(torch.tensor(a), torch.tensor(b), 5.0).item()
    assert got == pytest.approx(_hand_loss(a, b, 5.0), rel=1e-5)


def test_clip_loss_is_the_mean_of_both_directions():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    L = 3.0 * F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    t = torch.arange(6)
    rows, cols = F.cross_entropy(L, t), F.cross_entropy(L.T, t)
    assert abs(rows - cols) > 1e-3                                  # the example tells them apart
    torch.testing.assert_close(clip_loss(a, b, 3.0), (rows + cols) / 2)


def test_clip_loss_is_symmetric_in_images_and_texts():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(10, 16, generator=g), torch.randn(10, 16, generator=g)
    torch.testing.assert_close(clip_loss(a, b, 7.0), clip_loss(b, a, 7.0))


def test_clip_loss_is_about_log_batch_for_random_and_low_for_matched():
    g = torch.Generator().manual_seed(2)
    B, E = 64, 512
    a, b = torch.randn(B, E, generator=g), torch.randn(B, E, generator=g)
    assert clip_loss(a, b, 1.0).item() == pytest.approx(math.log(B), abs=0.02)
    matched = a + 0.1 * torch.randn(B, E, generator=g)
    assert clip_loss(a, matched, 1 / 0.07).item() < 0.01
    assert clip_loss(a, b, 1 / 0.07).item() > math.log(B)           # random pairs at a sharp scale: worse than chance


def test_clip_loss_gradient_reaches_the_temperature():
    tok = CaptionTokenizer()
    torch.manual_seed(0)
    model = CLIPModel(tok, embed_dim=16, image_width=8, image_levels=2, text_dim=16, text_depth=1)
    x = torch.rand(4, 3, 32, 32)
    t = tok(["a small red circle at the top", "a large blue square at the left",
             "a small green cross at the center", "a large cyan diamond at the bottom"])
    loss = clip_loss(model.encode_image(x), model.encode_text(t), model.scale)
    loss.backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0
    logits, logits_t = model(x, t)
    torch.testing.assert_close(F.cross_entropy(logits, torch.arange(4)) / 2
                               + F.cross_entropy(logits_t, torch.arange(4)) / 2,
                               loss.detach(), rtol=1e-5, atol=1e-6)


def test_clip_loss_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="same"):
        clip_loss(torch.randn(4, 8), torch.randn(5, 8))
    with pytest.raises(ValueError, match=r"\(B, E\)"):
        clip_loss(torch.randn(4), torch.randn(4))


def test_scale_starts_at_one_over_007_and_is_clamped_at_100():
    model = CLIPModel(CaptionTokenizer(), embed_dim=8, image_width=8, image_levels=2, text_dim=16, text_depth=1)
    assert model.scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale.item() == pytest.approx(MAX_LOGIT_SCALE)


def test_similarity_is_cosine():
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, -2.0]])
    torch.testing.assert_close(similarity(a, b), torch.tensor([[0.6, -0.8]]))


# ----------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trips_every_caption_of_the_grammar():
    tok = CaptionTokenizer()
    one = [f"a {z} {c} {s} at the {p}" for z in SIZES for c in COLOURS for s in SHAPE_KINDS for p in POSITIONS]
    two = render_shapes(50, size=16, seed=0, two_objects=1.0).captions
    for captions in (one, two):
        ids = tok(captions)
        assert ids.shape == (len(captions), tok.context_length) and ids.dtype == torch.long
        assert (ids != tok.unk_id).all()
        decoded = tok.decode_batch(ids)
        assert decoded == captions
        assert all(parse_caption(c) is not None for c in decoded)
    assert tok(one[0])[0, 0] == tok.bos_id and (tok(one[0])[0] == tok.eos_id).sum() == 1


def test_tokenizer_marks_unknown_words_and_refuses_long_texts():
    tok = CaptionTokenizer()
    ids = tok("A photo of a Red circle")[0]
    assert tok.decode(ids.tolist()) == "a <unk> of a red circle"
    tok = CaptionTokenizer(extra_words=["photo"])
    assert tok.decode(tok("a photo")[0].tolist()) == "a photo"
    with pytest.raises(ValueError, match="context_length"):
        tok(" ".join(["red"] * 20))


# ----------------------------------------------------------------------------- encoders
def _small_model(**kw):
    torch.manual_seed(0)
    return CLIPModel(CaptionTokenizer(), embed_dim=24, image_width=8, image_levels=3, text_dim=32,
                     text_depth=2, **kw)


@pytest.mark.parametrize("pool", ["mean", "eos"])
def test_shapes_and_unit_length(pool):
    model = _small_model(pool=pool).eval()
    tok = model.tokenizer
    tokens = tok(["a small red circle at the top", "red circle", "a large blue square left of a small green cross"])
    feats = model.text_encoder.encode_tokens(tokens)
    assert feats.shape == (3, tok.context_length, 32)
    assert model.text_encoder(tokens).shape == (3, 24)
    assert model.text_encoder.padding_mask(tokens).sum(1).tolist() == [9, 4, 12]
    assert model.encode_image(torch.rand(5, 3, 32, 32)).shape == (5, 24)
    emb = model.encode_text(tokens)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    logits, logits_t = model(torch.rand(3, 3, 32, 32), tokens)
    assert logits.shape == (3, 3) and torch.equal(logits, logits_t.T)


@pytest.mark.parametrize("pool", ["mean", "eos"])
def test_padding_does_not_change_the_text_embedding(pool):
    model = _small_model(pool=pool).eval()
    tokens = model.tokenizer(["a small red circle at the top", "red circle"])
    with torch.no_grad():
        full = model.encode_text(tokens)
        trimmed = model.encode_text(tokens[1:, :4])                   # "red circle" without padding
        features = model.text_encoder.encode_tokens(tokens)
    torch.testing.assert_close(full[1:], trimmed, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(features[0, 1], features[1, 1])       # the words see their context
    assert not torch.allclose(full[0], full[1])


def test_encoder_rejects_bad_tokens():
    model = _small_model()
    with pytest.raises(ValueError, match="integer"):
        model.text_encoder.encode_tokens(torch.rand(2, 5))
    with pytest.raises(ValueError, match="positions"):
        model.text_encoder.encode_tokens(torch.ones(2, 40, dtype=torch.long))


def test_a_few_steps_of_training_lower_the_loss():
    model = _small_model()
    batch = render_shapes(16, size=32, seed=0)
    tokens = model.tokenizer(batch.captions)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = clip_loss(model.encode_image(batch.images), model.encode_text(tokens), model.scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 2.0 and losses[-1] < 0.5 * losses[0]


# ----------------------------------------------------------------------------- zero-shot
class _Stub:
    """A fake model: fixed image embeddings, and a text embedding per prompt string."""

    def __init__(self, images, texts):
        self.images, self.texts, self.scale = images, texts, torch.tensor(10.0)

    def embed_images(self, x):
        return self.images[: len(x)]

    def embed_texts(self, prompts):
        return torch.stack([self.texts[p] for p in prompts])


def test_class_embeddings_average_then_normalise():
    e = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0]), "c": torch.tensor([0.0, -1.0])}
    got = class_embeddings(_Stub(None, e), [["a", "b"], "c"])
    torch.testing.assert_close(got, torch.tensor([[0.5 ** 0.5, 0.5 ** 0.5], [0.0, -1.0]]))


def test_zero_shot_known_answer_and_ensembles():
    e = {"cat1": torch.tensor([1.0, 0.0]), "cat2": torch.tensor([0.0, 1.0]),
         "dog1": F.normalize(torch.tensor([1.0, 1.0]), dim=0), "dog2": torch.tensor([-1.0, 0.0])}
    images = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]])
    stub = _Stub(images, e)
    pred, probs = zero_shot_classify(stub, torch.zeros(3, 1, 2, 2), ["cat1", "dog1"])
    assert pred.tolist() == [0, 1, 1] and probs.shape == (3, 2)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    mean_pred, _ = zero_shot_classify(stub, torch.zeros(3, 1, 2, 2), [["cat1", "cat2"], ["dog1", "dog2"]], "mean")
    sum_pred, sum_probs = zero_shot_classify(stub, torch.zeros(3, 1, 2, 2), [["cat1", "cat2"], ["dog1", "dog2"]], "sum")
    # means: cat -> (0.71, 0.71), dog -> (-0.38, 0.92); image 1 (0.6, 0.8) is nearer the cat mean
    assert mean_pred.tolist() == [0, 0, 1]
    logits = 10.0 * images @ torch.stack(list(e.values())).T
    want = logits.softmax(1).view(3, 2, 2).sum(2)                  # Σ over each class's two prompts
    torch.testing.assert_close(sum_probs, want)
    assert sum_pred.tolist() == want.argmax(1).tolist()
    one_mean, _ = zero_shot_classify(stub, torch.zeros(3, 1, 2, 2), ["cat1", "dog1"], "mean")
    one_sum, p_sum = zero_shot_classify(stub, torch.zeros(3, 1, 2, 2), ["cat1", "dog1"], "sum")
    torch.testing.assert_close(p_sum, probs)
    assert torch.equal(one_mean, one_sum)


# ----------------------------------------------------------------------------- recall@k
def test_recall_at_k_known_answer():
    sim = torch.tensor([[0.9, 0.1, 0.5, 0.0],
                        [0.2, 0.3, 0.8, 0.1],
                        [0.1, 0.7, 0.6, 0.5]])
    target = torch.tensor([0, 1, 3])
    assert recall_at_k(sim, target, 1) == pytest.approx(1 / 3)      # only query 0 is right at once
    assert recall_at_k(sim, target, 2) == pytest.approx(2 / 3)      # query 1's answer is 2nd
    assert recall_at_k(sim, target, 3) == pytest.approx(3 / 3)      # query 2's answer is 3rd
    relevant = torch.zeros(3, 4, dtype=torch.bool)
    relevant[0, 2] = relevant[1, 2] = relevant[2, [0, 3]] = True    # several right answers
    assert recall_at_k(sim, relevant, 1) == pytest.approx(1 / 3)
    assert recall_at_k(sim, relevant, 3) == pytest.approx(1.0)


def test_recall_at_k_ties_and_errors():
    sim = torch.zeros(2, 3)                                          # all tied: the lowest index wins
    assert recall_at_k(sim, torch.tensor([0, 2]), 1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(sim, torch.tensor([0, 1]), 4)
    with pytest.raises(ValueError, match="relevant"):
        recall_at_k(sim, torch.tensor([0.0, 1.0]), 1)


def test_every_colour_shape_pair_is_a_distinct_prompt():
    tok = CaptionTokenizer()
    prompts = [f"a {c} {s}" for c, s in itertools.product(COLOURS, SHAPE_KINDS)]
    assert len({tuple(r.tolist()) for r in tok(prompts)}) == len(prompts)
