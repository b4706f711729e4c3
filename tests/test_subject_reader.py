"""The DreamBooth subject (a ring the base model never saw) and the reader that scores it, on known answers."""
import pytest
import torch
import torchvision.transforms.functional as TF

from course_lib.data import render_shapes, render_subject
from course_lib.data.shapes import NOVEL_KINDS, POSITIONS, SHAPE_KINDS
from course_lib.eval.masks import object_mask
from course_lib.eval.subject import hole_area, read_subject

POS = list(range(9)) * 12


def test_render_subject_places_one_ring_per_cell_and_is_deterministic():
    a, b = render_subject(POS, seed=3), render_subject(POS, seed=3)
    assert torch.equal(a.images, b.images) and a.images.shape == (len(POS), 3, 32, 32)
    assert torch.equal(object_mask(a.images), a.masks.bool())            # the exact mask reader still holds
    assert a.attrs["shape"].eq(len(SHAPE_KINDS) + NOVEL_KINDS.index("ring")).all()
    assert a.captions[1] == f"a large magenta ring at the {POSITIONS[1]}"
    with pytest.raises(ValueError, match="kind"):
        render_subject([0], kind="star")
    with pytest.raises(ValueError, match="positions"):
        render_subject([9])


def test_rings_enclose_a_hole_and_filled_shapes_none():
    rings = render_subject(POS, seed=3)
    assert min(hole_area(m[0].bool()) for m in rings.masks) >= 14     # about 16 px at 32 x 32
    discs = render_subject(POS, kind="circle", seed=3)
    assert max(hole_area(m[0].bool()) for m in discs.masks) == 0


def test_read_subject_on_known_answers():
    rings = render_subject(POS, seed=3)
    r = read_subject(rings.images)
    assert r["subject"].all() and torch.equal(r["cell"], torch.tensor(POS)) and r["clean"].all()
    assert read_subject(TF.gaussian_blur(rings.images, 5, 1.0))["subject"].all()   # blurred: still read
    assert not read_subject(render_subject(POS, colour="cyan", seed=3).images)["subject"].any()
    assert not read_subject(render_subject(POS, kind="circle", seed=3).images)["subject"].any()
    assert not read_subject(render_shapes(500, seed=4, two_objects=0.3).images)["subject"].any()
    assert not read_subject(torch.zeros(2, 3, 32, 32))["subject"].any()
    two = rings.images[:2].clone()
    two[0] = torch.maximum(two[0], two[1])                                    # two rings: not one subject
    assert read_subject(two[:1])["objects"].item() == 2 and not read_subject(two[:1])["subject"].item()
    with pytest.raises(ValueError, match="colour"):
        read_subject(rings.images, colour="pink")
