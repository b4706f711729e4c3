"""Reading a DreamBooth subject back out of generated images: the magenta ring (Phase 4b, LoRA and DreamBooth).

The subject is a shape the base model never saw, a ring (``render_subject``: outer radius r,
inner radius r / 2, in one colour). A picture shows the subject when it holds exactly one object
(``find_objects``: a connected region of one palette colour), of the subject's colour, and that
object **encloses a hole**: background pixels that no path through the background connects to the
picture's border. A filled circle encloses nothing, a ring drawn open (a horseshoe) neither::

    hole = fill_holes(mask) and not mask          (scipy.ndimage.binary_fill_holes)

A large ring at 32 x 32 encloses 16 px; ``min_hole`` (4 px) leaves room for a ring drawn a little
thick, and none for the one-pixel gaps of a blurry filled disc. DreamBooth (Ruiz et al. 2022,
https://arxiv.org/abs/2208.12242) measures subject fidelity with DINO and CLIP-I similarities to the
instance photos; the course's world can ask the exact question instead.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from course_lib.data.shapes import COLOURS
from course_lib.eval.judges import check_images
from course_lib.eval.shapes_eval import find_objects

__all__ = ["hole_area", "read_subject"]


def hole_area(mask) -> int:
    """Pixels that the boolean (H, W) ``mask`` encloses without covering them."""
    m = np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"hole_area: mask must be (H, W), got shape {m.shape}")
    return int((ndimage.binary_fill_holes(m) & ~m).sum())


@torch.no_grad()
def read_subject(images: Tensor, colour: str = "magenta", min_hole: int = 4) -> dict[str, Tensor]:
    """Per image of (N, 3, H, W) in [0, 1], what the subject reader sees; every value is (N,):

    ``objects`` how many objects; ``colour`` the palette index of the only object (-1 unless one);
    ``hole`` px it encloses; ``cell`` its grid position 0..8 (-1 unless one); ``clean`` no specks;
    ``subject`` one object, of ``colour``, enclosing at least ``min_hole`` px.
    """
    if colour not in COLOURS:
        raise ValueError(f"read_subject: colour must be one of {tuple(COLOURS)}, got {colour!r}")
    images = check_images(images, 3, who="read_subject: images")
    rows = []
    for image in images:
        objs, clean = find_objects(image)
        one = objs[0] if len(objs) == 1 else None
        rows.append((len(objs), one["colour"] if one else -1, hole_area(one["mask"]) if one else 0,
                     one["cell"] if one else -1, clean))
    out = {key: torch.tensor([r[i] for r in rows], dtype=torch.int64).reshape(-1)
           for i, key in enumerate(("objects", "colour", "hole", "cell"))}
    out["clean"] = torch.tensor([r[4] for r in rows], dtype=torch.bool).reshape(-1)
    out["subject"] = (out["objects"] == 1) & (out["colour"] == list(COLOURS).index(colour)) & (out["hole"] >= min_hole)
    return out
