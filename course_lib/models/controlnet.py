"""ControlNet (Zhang, Rao & Agrawala 2023, https://arxiv.org/abs/2302.05543): steer a frozen
text-to-image U-Net with a control image (a mask, an edge map), Phase 4b.

    control c (B, k, S, S) --hint encoder--> (B, base, s, s)             (pixels -> latent size)
    z_t --[trainable copy of the U-Net's way down + middle](+ hint)--> skips_i, mid
    residual_i = ZeroConv_i(skips_i),  residual_mid = ZeroConv_mid(mid)   (1 x 1 convs, weights 0 at start)
    eps = frozen U-Net(z_t, t, text) with skip_i += residual_i and mid += residual_mid

- The copy starts as the base's own weights, so it already knows how to read latents and text.
- Every zero convolution starts at weight 0 and bias 0: at step 0 every residual is exactly 0 and
  the controlled model *is* the base model (the paper's claim; the notebook checks max |delta| == 0).
  The gradient of a zero convolution's weight is its input times the upstream gradient, which is
  not 0, so the weights leave 0 on the first step.
- Only the ControlNet trains; the base U-Net, the text encoder and the autoencoder stay frozen.

`diffusers` names: ``ControlNetModel`` (our :class:`ControlNet`), its ``controlnet_cond`` (our
``control``), ``down_block_additional_residuals`` / ``mid_block_additional_residual`` (our U-Net's
``down_residuals`` / ``mid_residual``), ``controlnet_conditioning_scale`` (our ``scale``). Sampling with
a control: ``course_lib.diffusion.text2image.controlled_generate``.
"""
from __future__ import annotations

import copy
import math

from torch import Tensor, nn

from course_lib.models.unet import UNet

__all__ = ["zero_conv", "HintEncoder", "ControlNet", "ControlledUNet"]


def zero_conv(channels: int, zero: bool = True) -> nn.Conv2d:
    """A 1 x 1 convolution whose weight and bias start at 0 (``zero=False``: Gaussian weights,
    std 1 / sqrt(channels), the paper's ablation)."""
    conv = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.bias)
    if zero:
        nn.init.zeros_(conv.weight)
    else:
        nn.init.normal_(conv.weight, std=1 / math.sqrt(channels))
    return conv


class HintEncoder(nn.Module):
    """Control image (B, k, S, S) -> (B, out_ch, S / 2^downsample, S / 2^downsample).

        conv 3x3 (k -> w0), SiLU; downsample x [conv 3x3 stride 2 (-> w1), SiLU]; conv 3x3 (w1 -> w1), SiLU;
        zero conv 3x3 (w1 -> out_ch)

    The last convolution starts at 0 (3 x 3, as in the paper), so the hint starts at 0 too.
    """

    def __init__(self, in_ch: int, out_ch: int, downsample: int, widths: tuple[int, int] = (16, 32), zero: bool = True):
        super().__init__()
        w0, w1 = widths
        layers, ch = [nn.Conv2d(in_ch, w0, 3, padding=1), nn.SiLU()], w0
        for _ in range(downsample):
            layers += [nn.Conv2d(ch, w1, 3, padding=1, stride=2), nn.SiLU()]
            ch = w1
        last = nn.Conv2d(w1, out_ch, 3, padding=1)
        nn.init.zeros_(last.bias)
        if zero:
            nn.init.zeros_(last.weight)
        self.net = nn.Sequential(*layers, nn.Conv2d(ch, w1, 3, padding=1), nn.SiLU(), last)

    def forward(self, control: Tensor) -> Tensor:
        return self.net(control)


class ControlNet(nn.Module):
    """A trainable copy of ``unet``'s way down and middle block that reads a control image.

    Args:
        unet: the base U-Net (copied, weights and all; the original is not touched).
        control_ch: channels of the control image (1 for a mask or an edge map).
        downsample: halvings from the control image to the latents (1 for 32 x 32 images and 16 x 16 latents).
        zero_init: False gives the ablation: Gaussian-initialised "zero" convolutions.

    ``forward(z_t, t, control, context, context_mask)`` -> (down residuals, one per skip of the
    U-Net, shapes as ``unet.skip_channels``; the middle residual (B, mid_channels, ., .)).
    """

    def __init__(self, unet: UNet, control_ch: int = 1, downsample: int = 1, zero_init: bool = True):
        super().__init__()
        self.copy = copy.deepcopy(unet)
        self.copy.up, self.copy.norm_out, self.copy.conv_out = nn.ModuleList(), nn.Identity(), nn.Identity()
        self.copy.requires_grad_(True)
        self.hint = HintEncoder(control_ch, unet.base, downsample, zero=zero_init)
        self.zero_convs = nn.ModuleList(zero_conv(c, zero_init) for c in unet.skip_channels)
        self.zero_mid = zero_conv(unet.mid_channels, zero_init)

    def forward(self, z_t: Tensor, t: Tensor, control: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        h, skips, _ = self.copy.encode(z_t, t, context=context, context_mask=context_mask, hint=self.hint(control))
        return [zc(s) for zc, s in zip(self.zero_convs, skips)], self.zero_mid(h)


class ControlledUNet(nn.Module):
    """The frozen base U-Net steered by a ControlNet, as one network for the course's samplers and losses:

        eps = unet(z_t, t, text, down_residuals = scale * controlnet residuals, mid_residual = ...)

    ``forward(x, t, context=, context_mask=, control=)``; pass ``control`` in both the conditional
    and the unconditional inputs of classifier-free guidance (the control steers both, as in
    `diffusers` without guess mode). ``scale`` is ``controlnet_conditioning_scale``.
    """

    def __init__(self, unet: UNet, controlnet: ControlNet, scale: float = 1.0):
        super().__init__()
        self.unet, self.controlnet, self.scale = unet, controlnet, scale

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                control: Tensor | None = None) -> Tensor:
        if control is None:
            return self.unet(x, t, context=context, context_mask=context_mask)
        down, mid = self.controlnet(x, t, control.to(x), context, context_mask)
        return self.unet(x, t, context=context, context_mask=context_mask,
                         down_residuals=[self.scale * d for d in down], mid_residual=self.scale * mid)
