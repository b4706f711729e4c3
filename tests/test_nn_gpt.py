"""The mini-GPT and its decoding strategies (course_lib.models.gpt)."""
from __future__ import annotations

import pytest
import torch

from course_lib.models.gpt import GPT, sample_logits, top_k_filter, top_p_filter


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are tiny: one thread is fastest, and it avoids threads spinning against
    # each other when several test workers share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_gpt(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(vocab_size=13, block_size=10, dim=32, depth=2, num_heads=4)
    args.update(kw)
    return GPT(**args).eval()


def test_shapes_weights_and_tying():
    model = small_gpt()
    idx = torch.randint(0, 13, (3, 7))
    assert model(idx).shape == (3, 7, 13)
    logits, weights = model(idx, return_weights=True)
    assert len(weights) == 2 and weights[0].shape == (3, 4, 7, 7)
    torch.testing.assert_close(weights[1].sum(-1), torch.ones(3, 4, 7))
    assert model.head.weight is model.tok_emb.weight
    untied = small_gpt(tie_weights=False)
    assert untied.head.weight is not untied.tok_emb.weight
    assert untied.num_parameters() == model.num_parameters() + 13 * 32
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 11, dtype=torch.long))
    with pytest.raises(ValueError, match="int64"):
        model(torch.zeros(1, 3))


def test_causality_future_tokens_do_not_change_earlier_logits():
    model = small_gpt()
    idx = torch.randint(0, 13, (2, 9), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 13               # new tokens from position 5 on
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    _, w = model(idx, return_weights=True)
    assert torch.all(w[0].triu(diagonal=1) == 0)            # nobody reads the future


def test_top_k_filter_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, -2.0, 4.0], [0.0, -1.0, 2.0, 1.0, 3.0]])
    out = top_k_filter(logits, 2)
    kept = torch.isfinite(out)
    assert kept.tolist() == [[False, True, False, False, True], [False, False, True, False, True]]
    assert torch.equal(out[kept], logits[kept])
    assert torch.equal(top_k_filter(logits, 5), logits)
    probs = out.softmax(-1)[0]
    p = logits.softmax(-1)[0]
    torch.testing.assert_close(probs[1] / probs[4], p[1] / p[4])  # same ratios among the kept
    with pytest.raises(ValueError):
        top_k_filter(logits, 0)


def test_top_p_filter_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.1, 0.5, 0.25, 0.15]])
    logits = probs.log()
    keep = lambda p: torch.isfinite(top_p_filter(logits, p)).tolist()[0]  # noqa: E731
    assert keep(0.5) == [False, True, False, False]           # 0.5 alone reaches 0.5
    assert keep(0.6) == [False, True, True, False]            # 0.5 < 0.6 so 0.25 joins
    assert keep(0.75) == [False, True, True, False]           # exactly 0.75: already full
    assert keep(0.8) == [False, True, True, True]
    assert keep(1.0) == [True, True, True, True]
    assert keep(0.01) == [False, True, False, False]           # the top token always stays
    x = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    nucleus = top_p_filter(x, 0.9).softmax(-1)
    mass = (x.softmax(-1) * (nucleus > 0)).sum(-1)
    assert torch.all(mass >= 0.9)
    smallest = x.softmax(-1).sort(-1, descending=True).values
    n_kept = (nucleus > 0).sum(-1)
    for row, n in enumerate(n_kept.tolist()):                  # one token fewer would not do
        assert smallest[row, :n - 1].sum() < 0.9
    with pytest.raises(ValueError):
        top_p_filter(x, 0.0)


def test_sample_logits_temperature_filters_and_generator():
    logits = torch.tensor([[0.0, 1.0, 2.0, 0.5]]).repeat(4000, 1)
    draws = sample_logits(logits, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, logits[0].softmax(-1), atol=0.03, rtol=0)
    assert set(sample_logits(logits, top_k=2).tolist()) == {1, 2}
    assert set(sample_logits(logits, temperature=0.01).tolist()) == {2}
    assert torch.equal(sample_logits(logits[:3], temperature=0), torch.tensor([2, 2, 2]))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(sample_logits(logits, 1.5, generator=g1), sample_logits(logits, 1.5, generator=g2))


def test_greedy_is_the_argmax_and_beam_width_one_is_greedy():
    model = small_gpt(seed=3)
    prompt = torch.tensor([[1], [4]])
    out = model.generate(prompt, 6, strategy="greedy")
    assert out.shape == (2, 7) and torch.equal(out[:, :1], prompt)
    for t in range(1, 7):                                      # each token is the argmax given the past
        torch.testing.assert_close(out[:, t], model(out[:, :t])[:, -1].argmax(-1))
    assert torch.equal(model.beam_search(prompt, beam_width=1, max_new_tokens=6), out)
    stop = int(out[0, 3])                                      # row 0 stops at step 3
    with_stop = model.generate(prompt, 6, stop_token=stop)
    assert torch.equal(model.beam_search(prompt, 1, 6, stop_token=stop), with_stop)


def test_beam_search_finds_a_sequence_at_least_as_probable_as_greedy():
    model = small_gpt(seed=4)
    prompt = torch.tensor([[2]])

    def logprob(seq):
        logp = model(seq[:, :-1]).log_softmax(-1)
        return logp.gather(-1, seq[:, 1:, None]).sum().item()

    greedy = model.generate(prompt, 5)
    beam, score = model.beam_search(prompt, beam_width=4, max_new_tokens=5, return_scores=True)
    assert beam.shape == (1, 6)
    assert logprob(beam) >= logprob(greedy) - 1e-5
    assert score.item() == pytest.approx(logprob(beam), abs=1e-4)


def test_generate_stops_and_pads_with_the_stop_token():
    model = small_gpt(seed=5)
    g = torch.Generator().manual_seed(0)
    out = model.generate(torch.ones(20, 1, dtype=torch.long), 9, strategy="sample",
                         temperature=2.0, generator=g, stop_token=0)
    for row in out.tolist():
        if 0 in row:
            first = row.index(0)
            assert all(t == 0 for t in row[first:])
    with pytest.raises(ValueError, match="strategy"):
        model.generate(torch.ones(1, 1, dtype=torch.long), 3, strategy="beam")


def test_a_tiny_sequence_is_overfitted_and_regenerated():
    torch.manual_seed(0)
    seq = torch.tensor([[1, 5, 3, 8, 8, 2, 7, 0]])            # 1 = start, 0 = stop
    model = GPT(vocab_size=10, block_size=8, dim=32, depth=1, num_heads=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model.loss(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    out = model.eval().generate(seq[:, :1], 10, stop_token=0)
    assert torch.equal(out, seq)
    assert model.training is False
