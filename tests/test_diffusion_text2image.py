"""course_lib.diffusion.text2image: captions with dropout, the TextToImage bundle, attention maps."""
import pytest
import torch

from course_lib.data.shapes import parse_caption, render_shapes
from course_lib.diffusion.schedule import NoiseSchedule
from course_lib.diffusion.text2image import (PLACEHOLDER, TextToImage, make_tokenizer, partial_caption,
                                             training_captions, word_attention_maps)
from course_lib.models.autoencoder import LatentAutoencoder
from course_lib.models.clip import TextEncoder
from course_lib.models.unet import UNet


def tiny_model(seed=0, context_dim=16):
    torch.manual_seed(seed)
    tok = make_tokenizer()
    te = TextEncoder(tok.vocab_size, tok.context_length, dim=16, depth=1, num_heads=2, embed_dim=16)
    unet = UNet(4, base=16, mults=(1, 2), attn_levels=(1,), context_dim=context_dim, num_heads=2)
    for p in unet.parameters():          # wake the zero-initialised layers so every weight matters
        p.data.add_(torch.randn_like(p) * 0.05)
    ae = LatentAutoencoder(3, 4, width=8, levels=2)
    return TextToImage(tok, te, unet, ae, NoiseSchedule.make("linear", 50), latent_scale=2.0).eval()


def test_partial_caption_known_answers():
    # shape 0 circle, colour 0 red, size 1 large, position 1 top
    assert partial_caption(0, 0, 1, 1) == "a large red circle at the top"
    assert partial_caption(0, 0, 1, 1, keep=(False, True, False, False)) == f"a red {PLACEHOLDER}"
    assert partial_caption(2, 1, 0, 8, keep=(True, False, False, True)) == "a triangle at the bottom right"
    assert partial_caption(0, 0, 0, 0, keep=(False,) * 4) == f"a {PLACEHOLDER}"


def test_training_captions_dropout_and_full_captions_parse():
    b = render_shapes(64, 32, seed=1)
    attrs = torch.stack([b.attrs[k] for k in ("shape", "colour", "size", "position")], 1)
    full = training_captions(attrs, p_empty=0.0, p_partial=0.0)
    assert full == b.captions                                     # the grammar's own captions
    assert all(parse_caption(c)["colour"] == int(b.attrs["colour"][i]) for i, c in enumerate(full))
    assert training_captions(attrs, p_empty=1.0, p_partial=0.0) == [""] * 64
    g = torch.Generator().manual_seed(0)
    mixed = training_captions(render_attrs(4000), p_empty=0.2, p_partial=0.3, generator=g)
    share_empty = sum(c == "" for c in mixed) / len(mixed)
    share_full = sum(parse_caption(c) is not None for c in mixed) / len(mixed)
    assert abs(share_empty - 0.2) < 0.03
    assert abs(share_full - (0.5 + 0.3 / 16)) < 0.03          # a partial caption keeps all 4 with p 1/16
    with pytest.raises(ValueError, match="columns"):
        training_captions(attrs[:, :3])


def render_attrs(n):
    g = torch.Generator().manual_seed(2)
    return torch.stack([torch.randint(0, k, (n,), generator=g) for k in (5, 6, 2, 9)], 1)


def test_mismatched_parts_are_clear_errors():
    tok = make_tokenizer()
    te = TextEncoder(tok.vocab_size, tok.context_length, dim=16, depth=1, num_heads=2)
    ae = LatentAutoencoder(3, 4, width=8, levels=2)
    sched = NoiseSchedule.make("linear", 50)
    with pytest.raises(ValueError, match="context_dim"):
        TextToImage(tok, te, UNet(4, base=16, mults=(1, 2), attn_levels=(1,), context_dim=32), ae, sched)
    with pytest.raises(ValueError, match="latent_ch"):
        TextToImage(tok, te, UNet(3, base=16, mults=(1, 2), attn_levels=(1,), context_dim=16), ae, sched)


def test_loss_trains_unet_and_text_encoder_not_autoencoder():
    m = tiny_model().train()
    z = torch.randn(4, 4, 8, 8)
    loss = m.loss(z, ["a red circle at the top", "", "a small blue square at the left", "a shape"])
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert m.text_encoder.token_emb.weight.grad.abs().sum() > 0   # the text encoder learns with the U-Net
    assert all(p.grad is None for p in m.autoencoder.parameters())
    with pytest.raises(ValueError, match="captions"):
        m.loss(z, ["a shape"])


def test_generate_shapes_determinism_and_guidance_convention():
    m = tiny_model()
    gen = lambda **kw: m.generate("a large red circle at the top", num_images=3, steps=4,  # noqa: E731
                                  generator=torch.Generator().manual_seed(0), **kw)
    x = gen(guidance_scale=3.0)
    assert x.shape == (3, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    torch.testing.assert_close(gen(guidance_scale=3.0), x)                        # same seed, same images
    torch.testing.assert_close(gen(guidance_scale=3.0, negative_prompt=""), x)    # no negative = empty caption
    # s = 1 is the plain conditional model: the negative prompt plays no part
    torch.testing.assert_close(gen(guidance_scale=1.0, negative_prompt="a red shape"), gen(guidance_scale=1.0))
    assert not torch.allclose(gen(guidance_scale=3.0, negative_prompt="a red shape"), x)
    z = gen(guidance_scale=3.0, return_latents=True)
    assert z.shape == (3, 4, 8, 8)
    torch.testing.assert_close(m.decode_latents(z), x)
    with pytest.raises(ValueError, match="negative prompts"):
        m.generate(["a shape", "a shape"], negative_prompt=["a red shape"] * 3, steps=2)


def test_guided_eps_formula_by_hand():
    """eps = eps_neg + s (eps_text - eps_neg), checked on one step against two separate calls."""
    m = tiny_model()
    cond, uncond = m._conditions("a blue square", "a red shape", 2)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([30, 30])
    from course_lib.diffusion.ddpm import guided_eps
    e = guided_eps(m.unet, x, t, cond, uncond, 2.5)
    e_c, e_u = m(x, t, **cond), m(x, t, **uncond)
    torch.testing.assert_close(e, e_u + 2.5 * (e_c - e_u), atol=1e-5, rtol=1e-4)


def test_word_attention_maps():
    m = tiny_model()
    words, maps = word_attention_maps(m, "a large red circle at the top", torch.randn(1, 4, 8, 8), t=20)
    assert words == ["a", "large", "red", "circle", "at", "the", "top"]
    assert maps.shape == (7, 32, 32)
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(7))
    assert all(a.record_cross is False for a in m.unet.modules() if hasattr(a, "record_cross"))


def test_v_prediction_loss_and_sampling():
    """prediction="v": the loss's target is v = sqrt(a_bar) eps - sqrt(1 - a_bar) z0, and sampling turns
    the guided v back into eps (one DDIM step checked by hand)."""
    from course_lib.diffusion.ddpm import ddpm_loss
    from course_lib.diffusion.objectives import EpsFromV
    from course_lib.diffusion.solver import DDIMRule, sample
    m_eps, m_v = tiny_model(), tiny_model()
    m_v.prediction = "v"
    z0, caps = torch.randn(2, 4, 8, 8), ["a blue square", "a red circle"]
    torch.manual_seed(1)
    loss = m_v.loss(z0, caps)
    context, mask = m_v.encode_prompt(caps)
    torch.manual_seed(1)
    expected = ddpm_loss(m_v.unet, z0, m_v.schedule, cond={"context": context, "context_mask": mask}, prediction="v")
    torch.manual_seed(1)
    assert torch.equal(loss, expected) and not torch.equal(m_eps.loss(z0, caps), loss)
    z = m_v.generate("a blue square", num_images=2, steps=3, guidance_scale=2.0,
                     generator=torch.Generator().manual_seed(0), return_latents=True)
    from course_lib.diffusion.guidance import ClassifierFreeGuidance
    cond, uncond = m_v._conditions("a blue square", None, 2)
    fn = EpsFromV(ClassifierFreeGuidance(m_v.unet, cond, uncond, 2.0), m_v.schedule)
    by_hand = sample(fn, (2, 4, 8, 8), DDIMRule(m_v.schedule, 3, clip_x0=False),
                     generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(z, by_hand)
    with pytest.raises(ValueError, match="eps"):
        TextToImage(m_v.tokenizer, m_v.text_encoder, m_v.unet, m_v.autoencoder, m_v.schedule, prediction="x0")


def test_generate_eta_is_the_ddim_rules_eta():
    from course_lib.diffusion.guidance import ClassifierFreeGuidance
    from course_lib.diffusion.solver import DDIMRule, sample
    m = tiny_model()
    gen = lambda eta: m.generate("a red circle", num_images=2, steps=4, eta=eta, return_latents=True,  # noqa: E731
                                 generator=torch.Generator().manual_seed(0))
    cond, uncond = m._conditions("a red circle", None, 2)
    by_hand = sample(ClassifierFreeGuidance(m.unet, cond, uncond, 3.0), (2, 4, 8, 8),
                     DDIMRule(m.schedule, 4, eta=1.0, clip_x0=False),
                     generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(gen(1.0), by_hand)
    assert (gen(1.0) - gen(0.0)).abs().max() > 1e-2
