"""course_lib.models.controlnet: zero convolutions, the trainable copy, and the residuals into the frozen U-Net."""
import pytest
import torch

from course_lib.diffusion.ddpm import ddpm_loss
from course_lib.diffusion.text2image import controlled_generate
from course_lib.models.controlnet import ControlledUNet, ControlNet, zero_conv
from tiny_models import tiny_text_to_image


def tiny_model(seed=0):
    return tiny_text_to_image(seed, levels=1, latent_scale=1.5).requires_grad_(False)


def inputs(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    context, mask = model.encode_prompt(["a red shape", "a blue circle at the top", ""][:n])
    control = (torch.rand(n, 1, 32, 32, generator=g) > 0.7).float()
    return torch.randn(n, 4, 16, 16, generator=g), torch.randint(0, 100, (n,), generator=g), context, mask, control


def test_residual_shapes_follow_the_unet_skips():
    model = tiny_model()
    z, t, context, mask, control = inputs(model)
    down, mid = ControlNet(model.unet, downsample=1)(z, t, control, context, mask)
    _, skips, _ = model.unet.encode(z, t, context=context, context_mask=mask)
    assert [d.shape for d in down] == [s.shape for s in skips]
    assert [d.shape[1] for d in down] == list(model.unet.skip_channels) and mid.shape[1] == model.unet.mid_channels


def test_unet_with_zero_residuals_and_split_forward_equal_the_plain_unet():
    model = tiny_model()
    z, t, context, mask, _ = inputs(model)
    plain = model.unet(z, t, context=context, context_mask=mask)
    h, skips, temb = model.unet.encode(z, t, context=context, context_mask=mask)
    assert torch.equal(model.unet.decode(h, skips, temb, context, mask), plain)
    zeros = [torch.zeros_like(s) for s in skips]
    assert torch.equal(model.unet(z, t, context=context, context_mask=mask, down_residuals=zeros,
                                  mid_residual=torch.zeros_like(h)), plain)
    with pytest.raises(ValueError, match="skips"):
        model.unet(z, t, context=context, context_mask=mask, down_residuals=zeros[:-1])


def test_at_step_zero_the_controlled_model_is_the_base_exactly():
    model = tiny_model()
    z, t, context, mask, control = inputs(model)
    controlled = ControlledUNet(model.unet, ControlNet(model.unet, downsample=1))
    base = model.unet(z, t, context=context, context_mask=mask)
    assert (controlled(z, t, context=context, context_mask=mask, control=control) - base).abs().max() == 0
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    prompts = ["a red shape", "a blue circle at the top", ""]
    a = model.generate(prompts, guidance_scale=2.0, steps=3, eta=1.0, generator=g())
    b = controlled_generate(model, controlled.controlnet, prompts, control, guidance_scale=2.0, steps=3, generator=g())
    assert (a - b).abs().max() == 0
    gauss = ControlledUNet(model.unet, ControlNet(model.unet, downsample=1, zero_init=False))
    assert (gauss(z, t, context=context, context_mask=mask, control=control) - base).abs().max() > 1e-3


def test_zero_convs_learn_from_the_first_step_and_the_base_stays_frozen():
    model = tiny_model()
    z, t, context, mask, control = inputs(model)
    net = ControlNet(model.unet, downsample=1)
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    controlled = ControlledUNet(model.unet, net)
    loss = ddpm_loss(controlled, z, model.schedule, cond={"context": context, "context_mask": mask, "control": control})
    loss.backward()
    assert all(p.grad is None for p in model.unet.parameters())             # nothing flows into the frozen base
    assert net.zero_convs[0].weight.grad.abs().max() > 0                   # zero weights, non-zero gradient
    assert net.zero_mid.weight.grad.abs().max() > 0
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    assert (controlled(z, t, context=context, context_mask=mask, control=control)
            - model.unet(z, t, context=context, context_mask=mask)).abs().max() > 0
    for k, v in model.unet.state_dict().items():                           # the copy trained, not the base
        assert torch.equal(v, before[k]), k


def test_zero_conv_and_errors():
    conv = zero_conv(8)
    assert conv.weight.abs().sum() == 0 and conv.bias.abs().sum() == 0
    assert zero_conv(8, zero=False).weight.std() > 0.1
    model = tiny_model()
    with pytest.raises(ValueError, match="control images"):
        controlled_generate(model, ControlNet(model.unet), ["a shape"], torch.zeros(2, 1, 32, 32))
