"""course_lib.models.lora: LoRA from scratch on the course U-Net, against `peft`, saved and reloaded."""
import copy

import peft
import pytest
import torch
from torch import nn

from course_lib.models.lora import (LoRALinear, inject_lora, load_lora, lora_layers, merge_lora, save_lora,
                                    unmerge_lora)
from course_lib.models.unet import UNet


def base_unet(seed=0):
    torch.manual_seed(seed)
    unet = UNet(4, base=16, mults=(1, 2), attn_levels=(1,), context_dim=16, num_heads=2)
    for p in unet.parameters():           # wake the zero-initialised output layers
        p.data.add_(torch.randn_like(p) * 0.05)
    return unet.eval()


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(3, 4, 16, 16, generator=g), torch.randint(0, 1000, (3,), generator=g),
            torch.randn(3, 5, 16, generator=g))


def run(unet, x, t, c):
    return unet(x, t, context=c)


def randomise_b(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.B.copy_(torch.randn(layer.B.shape, generator=g) * 0.1)


def test_at_init_the_adapted_model_is_the_base_and_only_a_b_train():
    base = base_unet()
    x, t, c = inputs()
    want = run(base, x, t, c)
    adapted = copy.deepcopy(base)
    names = inject_lora(adapted, rank=4, alpha=8)
    assert names and all(isinstance(adapted.get_submodule(n), LoRALinear) for n in names)
    assert torch.equal(run(adapted, x, t, c), want)                        # B = 0: exactly the base
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".A", ".B")) for n in trainable)
    share = sum(p.numel() for p in adapted.parameters() if p.requires_grad) / sum(p.numel() for p in base.parameters())
    assert share <= 0.05, f"rank 4 adapters are {share:.1%} of the U-Net"
    run(adapted, x, t, c).pow(2).mean().backward()
    layer = adapted.get_submodule(names[0])
    assert layer.B.grad.abs().max() > 0 and layer.A.grad.abs().max() == 0  # B = 0: only B learns on step 1


def test_merge_equals_unmerged_and_unmerge_restores_the_weights():
    base = base_unet()
    x, t, c = inputs()
    adapted = copy.deepcopy(base)
    inject_lora(adapted, rank=4)
    randomise_b(adapted)
    unmerged = run(adapted, x, t, c)
    assert (unmerged - run(base, x, t, c)).abs().max() > 1e-3             # the adapters do something
    before = {n: m.base.weight.clone() for n, m in lora_layers(adapted).items()}
    merge_lora(adapted)
    torch.testing.assert_close(run(adapted, x, t, c), unmerged, atol=1e-5, rtol=0)
    unmerge_lora(adapted)
    for n, m in lora_layers(adapted).items():
        torch.testing.assert_close(m.base.weight, before[n], atol=1e-6, rtol=0)


def test_same_a_and_b_in_peft_give_the_same_model():
    base = base_unet()
    x, t, c = inputs()
    ours = copy.deepcopy(base)
    names = inject_lora(ours, rank=4, alpha=8)
    randomise_b(ours)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=names, lora_dropout=0.0)
    theirs = peft.inject_adapter_in_model(config, copy.deepcopy(base))
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            module = theirs.get_submodule(name)
            module.lora_A["default"].weight.copy_(layer.A)
            module.lora_B["default"].weight.copy_(layer.B)
    torch.testing.assert_close(run(theirs, x, t, c), run(ours, x, t, c), atol=1e-6, rtol=0)


def test_adapter_file_round_trip_and_size(tmp_path):
    base = base_unet()
    x, t, c = inputs()
    adapted = copy.deepcopy(base)
    inject_lora(adapted, rank=2, alpha=4)
    randomise_b(adapted)
    path = save_lora(adapted, tmp_path / "adapter.safetensors")
    fresh = copy.deepcopy(base)
    load_lora(fresh, path)
    torch.testing.assert_close(run(fresh, x, t, c), run(adapted, x, t, c), atol=0, rtol=0)
    full = tmp_path / "full.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(full))
    assert path.stat().st_size * 20 <= full.stat().st_size


def test_errors():
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv2d(2, 2, 1))
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 3), rank=4)
    with pytest.raises(ValueError, match="picked no layer"):
        inject_lora(base_unet(), target=lambda n, m: False)
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_lora(base_unet(), "x.safetensors")
