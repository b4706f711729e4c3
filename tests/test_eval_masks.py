"""Masks and edges read back from images (course_lib.eval.masks): exact on real renders, IoU by hand."""
from __future__ import annotations

import pytest
import torch

from course_lib.data.shapes import render_shapes
from course_lib.eval.masks import PALETTE, edges_of, mask_iou, object_mask, pixel_colours


@pytest.mark.parametrize("size", [16, 32, 64])
def test_the_extracted_mask_and_edges_of_a_real_render_are_the_rendered_ones(size):
    batch = render_shapes(300, size=size, seed=size, two_objects=0.5)
    mask = object_mask(batch.images)
    assert mask.dtype == torch.bool and mask.shape == (300, 1, size, size)
    assert torch.equal(mask, batch.masks.bool())          # pixel for pixel, anti-aliased rim included
    assert torch.equal(edges_of(batch.images), batch.edges.bool())
    assert torch.equal(mask_iou(mask, batch.masks), torch.ones(300))


def test_the_brightest_channel_alone_cannot_give_the_rendered_mask():
    """Why the coverage is read by projecting onto the palette colour: colours differ in brightness."""
    batch = render_shapes(200, seed=5, two_objects=0.5)
    brightest = batch.images.amax(dim=1, keepdim=True)
    for t in (0.4, 0.425, 0.45, 0.475, 0.5):
        assert not torch.equal(brightest >= t, batch.masks.bool())


def test_the_threshold_is_a_coverage():
    batch = render_shapes(50, seed=6)
    loose, strict = object_mask(batch.images, threshold=0.1), object_mask(batch.images, threshold=0.9)
    assert (strict <= object_mask(batch.images)).all() and (object_mask(batch.images) <= loose).all()
    assert loose.sum() > batch.masks.sum() > strict.sum()


def test_pixel_colours_names_the_palette_colour_whatever_its_brightness():
    brightness = torch.tensor([1.0, 0.5, 0.2])
    x = (PALETTE.view(6, 1, 3, 1) * brightness.view(1, 3, 1, 1)).permute(0, 2, 1, 3)   # (6, 3, 3, 1)
    colour, coverage = pixel_colours(x)
    assert torch.equal(colour, torch.arange(6).view(6, 1, 1).expand(6, 3, 1))
    assert torch.allclose(coverage, brightness.view(1, 3, 1).expand(6, 3, 1))


def test_iou_of_tiny_masks_by_hand():
    a = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)   # 3 pixels
    b = torch.tensor([[0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)   # 4 pixels, 2 shared
    c = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 1]], dtype=torch.bool)   # disjoint from a
    pred, target = torch.stack([a, a, a, c]), torch.stack([b, a, c, b])
    expected = torch.tensor([2 / 5, 1.0, 0.0, 1 / 6])                        # |a&b| / |a|b| ...
    assert torch.allclose(mask_iou(pred, target), expected)
    assert torch.allclose(mask_iou(pred.unsqueeze(1).float(), target.unsqueeze(1).float()), expected)


def test_two_empty_masks_agree_and_one_empty_mask_does_not():
    empty, full = torch.zeros(1, 1, 4, 4, dtype=torch.bool), torch.ones(1, 1, 4, 4, dtype=torch.bool)
    assert mask_iou(empty, empty).item() == 1.0
    assert mask_iou(empty, empty, empty=0.0).item() == 0.0
    assert mask_iou(empty, full).item() == 0.0 and mask_iou(full, empty).item() == 0.0


def test_disjoint_objects_have_iou_near_zero():
    batch = render_shapes(400, seed=7)
    left = batch.attrs["position"] % 3 == 0                                  # objects in the left column
    mask = object_mask(batch.images[left])
    moved = torch.roll(mask, shifts=20, dims=-1)                             # two cells to the right
    assert mask.flatten(1).any(1).all()
    assert mask_iou(mask, moved).max().item() == 0.0


def test_bad_input_gets_a_clear_error():
    x = render_shapes(2, seed=0).images
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        object_mask(x * 2 - 1)
    with pytest.raises(ValueError, match="RGB"):
        object_mask(x[:, :1])
    with pytest.raises(ValueError, match="threshold"):
        object_mask(x, threshold=0.0)
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="binary"):
        mask_iou(torch.full((1, 1, 2, 2), 0.7), torch.zeros(1, 1, 2, 2))
    with pytest.raises(TypeError, match="torch.Tensor"):
        mask_iou([[1, 0]], torch.zeros(1, 1, 2, 2))
