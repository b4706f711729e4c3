"""ShapesEval: the course's GenEval. Did the generator draw the objects the caption asked for?

    report = shapes_eval(images, captions)          # images (N, 3, H, W) in [0, 1], N captions
    report["colour_attribution"], report["counts"]["colour_attribution"]   # 0.93, (93, 100)
    for v in shapes_eval_verdicts(images, captions):   # one dict per image: what was found, why
        if not v["passed"]: print(v["caption"], v["why"])

What GenEval does (Ghosh et al. 2023, https://arxiv.org/abs/2310.11513): prompts from templates
in six categories (single object, two objects, counting, colours, position, colour attribution);
an object detector (Mask2Former) finds the objects in each generated image, a CLIP model names
the colour of each object's masked crop, box centres give the relative position; an image is
right or wrong, each category's score is the fraction of right images, and the overall score
is the mean of the categories.

What the course does: the shapes grammar (``data.shapes``) is the template, and the detector is
exact. The background is black, so objects are the connected components (8-neighbour) of the
pixels of one palette colour covered at least 0.5 (``eval.masks.pixel_colours``), and an
object's colour is that palette colour, read from its pixels where GenEval asks CLIP. (The
judge's colour head is reported as ``judge_colour``: both were right on every object of 1000
real and 1000 blurred renders; under random colour shifts the pixels were right as often or more
often, 100 % vs 98.8 %, and they also decide where one object ends.) Components smaller than
``min_area`` are specks: not objects, but they make the background "not clean", as does noise
(more than ``_HAZE`` of the background pixels covered more than ``_DIRTY``). Each object is cut
out (its pixels and their same-coloured rim of ``_RIM`` px), moved to the centre of a black
canvas of the image's size and shown to the shapes judge, which was trained on single objects
like that: it names the shape. Its position is the grid cell (``data.shapes``' 3 x 3 grid) of
the centre of its bounding box, which is where ``render_shapes`` put the centre. A shape read
with confidence below ``min_confidence`` is "unreadable" and counts as wrong (0.5: the judge
reads real renders at >= 0.998 and renders blurred with sigma 0.8 px at >= 0.84).

Categories, each a fraction of the images it applies to:

- ``single_object``  one-object captions: exactly one object, clean background, right shape
- ``two_objects``    two-object captions: exactly two objects, clean background, both shapes right
- ``colours``        one-object captions: exactly one object, of the right colour
- ``position``       exactly one object in the right cell, or two in the right relation
- ``colour_attribution``  two-object captions: exactly two, each its own colour on the right shape
- ``relation``       two-object captions: exactly two, in the right relation (position's 2nd half)
- ``overall``        the mean of GenEval's five (all but ``relation``) over those that have images

Our grammar has no counting beyond one and two: that check is inside the first two. With two
objects, the caption's first object is matched to the found object that agrees with it on
shape first, then colour, then relation (as GenEval finds the objects by their class). Unlike
GenEval, ``colours`` and ``position`` do not also ask for the right shape, so a wrong caption
fails one category only, and relations are the grammar's strict ones (same row or column).
Used in notebook 4 · 07 (text-to-image) and later to compare every Phase 5 generator.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from course_lib.data.shapes import COLOURS, POSITIONS, RELATIONS, SHAPE_KINDS, grid_cell, parse_caption
from course_lib.eval.judges import _batches, _get_judge, _predict, check_images, reads_shapes
from course_lib.eval.masks import pixel_colours

__all__ = ["CATEGORIES", "default_min_area", "find_objects", "verdict_bar", "shapes_eval_verdicts", "shapes_eval"]

CATEGORIES = ("single_object", "two_objects", "colours", "position", "colour_attribution", "relation")
_GENEVAL = CATEGORIES[:5]        # averaged into "overall"
_COLOUR_NAMES = tuple(COLOURS)
_DIRTY = 0.2                     # a background pixel covered more than this is noise, not black,
_HAZE = 0.01                     # and more than this fraction of such pixels is a noisy background
_EIGHT = np.ones((3, 3), bool)   # 8-neighbour connectivity
_RIM = 2                         # px: an object's anti-aliased (or blurred) edge around its mask


def default_min_area(height: int, width: int) -> int:
    """Smallest component counted as an object: 6 px at 32 x 32, scaled with the image area.
    (The smallest object ``render_shapes`` draws covers 15 px at 32 x 32.)"""
    return max(2, round(6 * height * width / 32 ** 2))


def find_objects(image: Tensor, min_area: int | None = None, *, colour: np.ndarray | None = None,
                 coverage: np.ndarray | None = None) -> tuple[list[dict], bool]:
    """Split one image (3, H, W) in [0, 1] into objects; returns (objects, clean).

    Each object is a dict: ``colour`` (index into COLOURS), ``mask`` (H, W) bool, ``area`` (px),
    ``centre`` (x, y) of its bounding box in pixels, ``cell`` (0..8) and ``crop`` (3, H, W): what
    the judge is shown. ``clean`` is False when there are specks (components below
    ``min_area``) or faint noise on the background. ``colour`` and ``coverage``: the image's
    :func:`course_lib.eval.masks.pixel_colours` as (H, W) arrays, when a batch's are already computed.
    """
    if colour is None or coverage is None:
        c, v = pixel_colours(image[None])
        colour, coverage = c[0].numpy(), v[0].numpy()
    return _objects(image, colour, coverage, min_area)


def _objects(image: Tensor, colour: np.ndarray, coverage: np.ndarray, min_area: int | None):
    """:func:`find_objects` given the image's ``pixel_colours`` (H, W) arrays."""
    height, width = coverage.shape
    min_area = default_min_area(height, width) if min_area is None else int(min_area)
    objects, specks, covered = [], 0, coverage >= 0.5
    for k in np.unique(colour[covered]):
        labels, n = ndimage.label(covered & (colour == k), structure=_EIGHT)
        for i in range(1, n + 1):
            mask = labels == i
            if mask.sum() < min_area:
                specks += 1
                continue
            ys, xs = np.nonzero(mask)
            centre = ((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2)
            objects.append({"colour": int(k), "mask": torch.from_numpy(mask), "area": int(mask.sum()),
                            "centre": centre, "cell": grid_cell(*centre, height, width)})
    near = ndimage.binary_dilation(covered, _EIGHT, iterations=_RIM)      # objects and their rim
    clean = specks == 0 and (coverage[~near] > _DIRTY).sum() <= _HAZE * (~near).sum()
    if len(objects) <= 2:    # more can pass no category: spare the judge (noise has hundreds)
        for o in objects:
            rim = ndimage.binary_dilation(o["mask"].numpy(), _EIGHT, iterations=_RIM) & (colour == o["colour"])
            o["crop"] = _centred(image * torch.from_numpy(rim), o["centre"])
    return objects, bool(clean)


def _centred(alone: Tensor, centre: tuple[float, float]) -> Tensor:
    """(3, H, W) -> (3, H, W): shifted by whole pixels so that ``centre`` is the canvas centre."""
    h, w = alone.shape[-2:]
    dx, dy = int(round(w / 2 - centre[0])), int(round(h / 2 - centre[1]))
    p = max(abs(dx), abs(dy))
    padded = torch.nn.functional.pad(alone, (p, p, p, p))                  # black all round
    return padded[:, p - dy:p - dy + h, p - dx:p - dx + w]


def _shape_ok(o: dict, asked: int, why: list[str]) -> bool:
    """Did the judge read the shape ``asked`` in object ``o``, confidently enough?"""
    if not o["readable"]:
        why.append(f"unreadable shape (judge's confidence {o['confidence']:.2f})")
    elif o["shape"] != asked:
        why.append(f"shape {SHAPE_KINDS[o['shape']]}, asked {SHAPE_KINDS[asked]}")
    return o["readable"] and o["shape"] == asked


def _relation_holds(relation: int, cell_a: int, cell_b: int) -> bool:
    """The grammar's strict relations: same row and A further left/right, or same column."""
    (ra, ca), (rb, cb) = divmod(cell_a, 3), divmod(cell_b, 3)
    return {"left of": ra == rb and ca < cb, "right of": ra == rb and ca > cb,
            "above": ca == cb and ra < rb, "below": ca == cb and ra > rb}[RELATIONS[relation]]


def _judge_one(want: dict, objs: list[dict], clean: bool, why: list[str]) -> dict:
    n, o = len(objs), objs[0] if len(objs) == 1 else None
    if n != 1:
        why.append(f"found {n} object{'' if n == 1 else 's'}, asked for 1")
    if not clean:
        why.append("background not clean (specks or noise)")
    ok_shape = o is not None and _shape_ok(o, want["shape"], why)
    ok_colour = o is not None and o["colour"] == want["colour"]
    ok_cell = o is not None and o["cell"] == want["position"]
    if o is not None and not ok_colour:
        why.append(f"colour {_COLOUR_NAMES[o['colour']]}, asked {_COLOUR_NAMES[want['colour']]}")
    if o is not None and not ok_cell:
        why.append(f"at the {POSITIONS[o['cell']]}, asked {POSITIONS[want['position']]}")
    return {"single_object": ok_shape and clean, "colours": ok_colour, "position": ok_cell}


def _judge_two(want: dict, objs: list[dict], clean: bool, why: list[str]) -> dict:
    if len(objs) != 2:
        why.append(f"found {len(objs)} object{'' if len(objs) == 1 else 's'}, asked for 2")
        return dict.fromkeys(("two_objects", "colour_attribution", "position", "relation"), False)
    if not clean:
        why.append("background not clean (specks or noise)")

    def agreement(a, b):   # (shapes right, colours right, relation holds) with a as the 1st object
        shapes = (a["shape"] == want["shape"] and a["readable"]) + (b["shape"] == want["shape2"] and b["readable"])
        colours = (a["colour"] == want["colour"]) + (b["colour"] == want["colour2"])
        return shapes, colours, _relation_holds(want["relation"], a["cell"], b["cell"])

    a, b = max((objs, objs[::-1]), key=lambda pair: agreement(*pair))
    shapes_ok = _shape_ok(a, want["shape"], why) & _shape_ok(b, want["shape2"], why)   # both, to say why
    colours_ok = a["colour"] == want["colour"] and b["colour"] == want["colour2"]
    relation_ok = agreement(a, b)[2]
    if not colours_ok:
        why.append(f"colours {_COLOUR_NAMES[a['colour']]}/{_COLOUR_NAMES[b['colour']]}, asked "
                   f"{_COLOUR_NAMES[want['colour']]}/{_COLOUR_NAMES[want['colour2']]}")
    if not relation_ok:
        why.append(f"not {RELATIONS[want['relation']]}: at the {POSITIONS[a['cell']]} and {POSITIONS[b['cell']]}")
    return {"two_objects": shapes_ok and clean, "colour_attribution": shapes_ok and colours_ok,
            "position": relation_ok, "relation": relation_ok}


def verdict_bar(j, min_confidence: float | None = None) -> float:
    """The bar given, else the judge's own (``judge.min_confidence``), else 0.5."""
    if min_confidence is None:
        min_confidence = getattr(j, "min_confidence", None)
    return 0.5 if min_confidence is None else min_confidence


def _check_inputs(images, captions, min_confidence) -> list[dict]:
    if not isinstance(captions, (list, tuple)) or not all(isinstance(c, str) for c in captions):
        raise TypeError("shapes_eval: captions must be a list of strings, one per image")
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] != len(captions):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"shapes_eval: images must be (N, 3, H, W) with N = len(captions) = {len(captions)}; "
                         f"got {shape}")
    check_images(images, 3, who="shapes_eval: images")
    if not 0 <= min_confidence <= 1:
        raise ValueError(f"shapes_eval: min_confidence must be in [0, 1]; got {min_confidence!r}")
    wanted = [parse_caption(c) for c in captions]
    bad = [i for i, w in enumerate(wanted) if w is None]
    if bad:
        raise ValueError(f"shapes_eval: caption {bad[0]} ({captions[bad[0]]!r}) is not a sentence of the "
                         f"shapes grammar ({len(bad)} such); see course_lib.data.shapes.parse_caption")
    return wanted


def shapes_eval_verdicts(images: Tensor, captions: list[str], judge="shapes", min_confidence: float | None = None,
                         min_area: int | None = None, batch_size: int = 256) -> list[dict]:
    """One verdict per image: a dict with ``caption``, ``objects`` (each: colour, cell, area,
    centre, and the judge's ``shape``, ``confidence``, ``judge_colour``), ``clean``, a bool per
    category that applies (the others are absent), ``passed`` (all of them) and ``why`` (strings).
    ``min_confidence=None``: the judge's own ``min_confidence`` (the calibrated judges), else 0.5."""
    wanted = _check_inputs(images, captions, 0.5 if min_confidence is None else min_confidence)
    j = _get_judge(judge)
    min_confidence = verdict_bar(j, min_confidence)
    if not reads_shapes(j):
        raise TypeError("shapes_eval needs a judge with a 'shape' head, such as 'shapes'")
    images = images.detach().float().cpu()
    found = []
    for part in _batches(images, batch_size):
        colour, coverage = (t.numpy() for t in pixel_colours(part))
        found += [_objects(x, c, v, min_area) for x, c, v in zip(part, colour, coverage)]
    flat = [o for objs, _ in found for o in objs if "crop" in o]
    if flat:
        labels, confidences = _predict(j, torch.stack([o.pop("crop") for o in flat]), batch_size)
    for o in (o for objs, _ in found for o in objs):       # not judged: more than two objects
        o.update(shape=None, confidence=None, judge_colour=None, readable=None)
    for i, o in enumerate(flat):
        o.update(shape=int(labels["shape"][i]), confidence=float(confidences["shape"][i]),
                 judge_colour=int(labels["colour"][i]) if "colour" in labels else None,
                 readable=float(confidences["shape"][i]) >= min_confidence)
    verdicts = []
    for caption, want, (objs, clean) in zip(captions, wanted, found):
        why: list[str] = []
        result = (_judge_one if want["relation"] < 0 else _judge_two)(want, objs, clean, why)
        verdicts.append({"caption": caption, "objects": objs, "clean": clean, **result,
                         "passed": all(result.values()), "why": why})
    return verdicts


def shapes_eval(images: Tensor, captions: list[str], judge="shapes", min_confidence: float | None = None,
                min_area: int | None = None, batch_size: int = 256) -> dict:
    """ShapesEval of images (N, 3, H, W) in [0, 1] against their N captions.

    Returns ``{category: fraction of its images passed, or None without images}`` for CATEGORIES,
    ``"overall"`` (GenEval's mean), ``"counts": {category: (passed, n)}``, ``"clean"`` (fraction)
    and ``"unreadable"`` (objects whose shape the judge could not read confidently).
    """
    verdicts = shapes_eval_verdicts(images, captions, judge, min_confidence, min_area, batch_size)
    counts = {c: (sum(bool(v[c]) for v in verdicts if c in v), sum(c in v for v in verdicts))
              for c in CATEGORIES}
    report = {c: (k / n if n else None) for c, (k, n) in counts.items()}
    scored = [report[c] for c in _GENEVAL if report[c] is not None]
    report.update(overall=float(np.mean(scored)), counts=counts,
                  clean=float(np.mean([v["clean"] for v in verdicts])),
                  unreadable=sum(o["readable"] is False for v in verdicts for o in v["objects"]))
    return report
