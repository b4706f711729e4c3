"""course_lib.models.vit: patches, the patch embedding, the ViT's outputs and attention maps."""
import pytest
import torch
import torch.nn.functional as F

from course_lib.models.vit import PatchEmbed, ViT, attention_rollout, cls_attention, patchify, unpatchify
from course_lib.nn.attention import TransformerBlock


def small_vit(**kw):
    torch.manual_seed(0)
    args = dict(image_size=16, patch_size=4, in_ch=3, dim=16, depth=2, num_heads=2, num_classes=5)
    return ViT(**{**args, **kw}).eval()


def test_patchify_order_and_inverse():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 3 * 4 * 4)
    # patch n sits at row n // 2, column n % 2, flattened as (channel, row, column)
    torch.testing.assert_close(p[1, 1], x[1, :, 0:4, 4:8].reshape(-1))
    torch.testing.assert_close(p[0, 2], x[0, :, 4:8, 0:4].reshape(-1))
    torch.testing.assert_close(unpatchify(p, 4, 8), x)
    with pytest.raises(ValueError, match="does not divide"):
        patchify(x, 3)
    with pytest.raises(ValueError, match="do not make"):
        unpatchify(p, 4, 16)


def test_patch_embed_conv_equals_unfold_linear():
    torch.manual_seed(0)
    embed = PatchEmbed(image_size=16, patch_size=4, in_ch=3, dim=8)
    x = torch.randn(3, 3, 16, 16)
    conv = embed(x)
    assert conv.shape == (3, 16, 8) and embed.num_patches == 16 and embed.grid == 4
    embed.method = "unfold"
    torch.testing.assert_close(embed(x), conv)
    by_hand = patchify(x, 4) @ embed.proj.weight.reshape(8, -1).T + embed.proj.bias
    torch.testing.assert_close(by_hand, conv)
    with pytest.raises(ValueError, match=r"expects images \(B, 3, 16, 16\)"):
        embed(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="method must be"):
        PatchEmbed(16, 4, 3, 8, method="fft")


def test_single_and_multi_head_outputs():
    x = torch.rand(4, 3, 16, 16)
    assert small_vit()(x).shape == (4, 5)
    model = small_vit(num_classes=None, heads={"shape": 5, "colour": 6})
    out = model(x)
    assert isinstance(out, dict) and set(out) == {"shape", "colour"}
    assert out["shape"].shape == (4, 5) and out["colour"].shape == (4, 6)


def test_structure_uses_the_course_block():
    model = small_vit()
    assert len(model.blocks) == 2 and all(isinstance(b, TransformerBlock) for b in model.blocks)
    assert model.pos_embed.shape == (1, 1 + 16, 16) and model.cls_token.shape == (1, 1, 16)
    z = model.embed(torch.rand(2, 3, 16, 16))
    assert z.shape == (2, 17, 16)
    torch.testing.assert_close(z[:, 0], (model.cls_token + model.pos_embed[:, :1]).expand(2, 1, 16)[:, 0])


def test_forward_matches_manual_pipeline():
    model = small_vit()
    x = torch.rand(2, 3, 16, 16)
    tokens = torch.cat([model.cls_token.expand(2, -1, -1), model.patch_embed(x)], 1) + model.pos_embed
    for block in model.blocks:
        tokens = block(tokens)
    torch.testing.assert_close(model(x), model.head(model.norm(tokens)[:, 0]))


def test_positions_matter():
    """Without positions a transformer cannot tell where a patch was: moving patches around
    changes the output only because of pos_embed."""
    model = small_vit()
    with torch.no_grad():
        model.pos_embed.normal_(std=1.0)
    x = torch.rand(1, 3, 16, 16)
    shuffled = unpatchify(patchify(x, 4)[:, torch.randperm(16, generator=torch.Generator().manual_seed(1))], 4, 16)
    assert not torch.allclose(model(x), model(shuffled), atol=1e-4)
    with torch.no_grad():
        model.pos_embed.zero_()
    torch.testing.assert_close(model(x), model(shuffled), atol=1e-5, rtol=1e-4)


def test_attention_maps():
    model = small_vit()
    x = torch.rand(3, 3, 16, 16)
    maps = model.attention_maps(x)
    assert len(maps) == 2
    for w in maps:
        assert w.shape == (3, 2, 17, 17)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 17))
    # the weights are those of the block's own attention on its LayerNormed input
    z = model.embed(x)
    _, w0 = model.blocks[0].attn(model.blocks[0].ln1(z), return_weights=True)
    torch.testing.assert_close(maps[0], w0)


def test_rollout_and_cls_attention():
    torch.manual_seed(0)
    maps = [torch.rand(2, 3, 5, 5).softmax(-1) for _ in range(3)]
    r = attention_rollout(maps, residual=0.5)
    assert r.shape == (2, 5, 5)
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 5))
    # one layer by hand
    a = 0.5 * maps[0].mean(1) + 0.5 * torch.eye(5)
    a1 = a / a.sum(-1, keepdim=True)
    torch.testing.assert_close(attention_rollout(maps[:1]), a1)
    # two layers: the later layer's mixing is applied after the earlier one's, R = Â₂ Â₁
    b = 0.5 * maps[1].mean(1) + 0.5 * torch.eye(5)
    torch.testing.assert_close(attention_rollout(maps[:2]), (b / b.sum(-1, keepdim=True)) @ a1)
    # with residual=1 nothing flows between tokens
    torch.testing.assert_close(attention_rollout(maps, residual=1.0), torch.eye(5).expand(2, 5, 5))
    grid = cls_attention(maps[0])
    assert grid.shape == (2, 2, 2)
    torch.testing.assert_close(grid.sum((1, 2)), torch.ones(2))
    row = maps[0].mean(1)[:, 0, 1:]
    torch.testing.assert_close(grid.reshape(2, 4), row / row.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match="square grid"):
        cls_attention(torch.rand(1, 6, 6))


def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one of num_classes"):
        ViT(num_classes=5, heads={"a": 2})
    with pytest.raises(ValueError, match="exactly one of num_classes"):
        ViT()
    with pytest.raises(ValueError, match="heads must be"):
        ViT(heads={"a": 0})
    with pytest.raises(ValueError, match="does not divide"):
        ViT(image_size=30, patch_size=4, num_classes=3)


def test_learns_a_position_task():
    """A tiny ViT learns which quadrant holds the bright patch (needs the positions)."""
    torch.manual_seed(0)
    n = 256
    y = torch.randint(0, 4, (n,))
    x = torch.zeros(n, 1, 8, 8)
    for i, q in enumerate(y.tolist()):
        r, c = divmod(q, 2)
        x[i, 0, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = 1.0
    model = ViT(image_size=8, patch_size=4, in_ch=1, dim=16, depth=1, num_heads=2, num_classes=4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() > 0.95
