"""A shape reader without learning, as a baseline for the shapes judges: does the main object's
silhouette fit one grammar shape well, and clearly better than the other four?

    python scripts/template_reader.py [tests/data/eye_read]

For each image: the largest object (ShapesEval's objects: connected components of one palette
colour) as a soft coverage map, centred on its centroid; every grammar shape rendered by the
course's own renderer over a grid of centres (+-1.5 px, step 0.5) and half-extents (1.5-9 px, step
0.25); per shape the best soft IoU, sum(min(a, b)) / sum(max(a, b)). The verdict is the best shape
when its IoU >= tau and it beats the runner-up by >= delta; otherwise "unreadable" (also when
there is not exactly one object). tau and delta are chosen on the even ids of the eye-read set
against the first reader; the odd ids are held out. Prints the agreement with both readers and
the accuracy on 500 real renders.

``--learned`` adds a second reader: gradient-boosted trees (scikit-learn) on the five best IoUs,
the best shape's margin, the silhouette's area, and its outline as a radial profile (the distance
from the centroid to the 0.5 contour at 16 angles, over its mean) with the profile's first six
Fourier magnitudes and the phase of the 3rd and 4th (three corners; four corners upright or on
their points); trained on the even ids (the first reader's labels) plus 300 real renders
(seed 77), read on the odd ids. About 15 s (30 s with ``--learned``) on one CPU thread.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from course_lib.data.shapes import SHAPE_KINDS, render_shapes, shape_coverage
from course_lib.eval.agreement import read_eye_read
from course_lib.eval.masks import pixel_colours
from course_lib.eval.shapes_eval import find_objects

W = 20                                                  # px: the window the silhouettes are compared in


def silhouettes(images: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """(N, 3, H, W) -> (N, W, W) the largest object's coverage, centred; and the object counts."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    colour, coverage = pixel_colours(x)
    out, counts = [], []
    for i in range(len(x)):
        objects, _ = find_objects(x[i])
        counts.append(len(objects))
        if not objects:
            out.append(torch.zeros(W, W))
            continue
        o = max(objects, key=lambda o: o["area"])
        region = ndimage.binary_dilation(o["mask"].numpy(), np.ones((3, 3), bool), iterations=2)
        c = coverage[i].clamp(0, 1) * torch.from_numpy(region & (colour[i].numpy() == o["colour"]))
        ys, xs = torch.nonzero(c > 0, as_tuple=True)
        w = c[ys, xs]
        cx, cy = float((xs + 0.5) @ w / w.sum()), float((ys + 0.5) @ w / w.sum())
        ox, oy = int(round(cx - W / 2)), int(round(cy - W / 2))
        padded = torch.nn.functional.pad(c, (W, W, W, W))
        out.append(padded[oy + W:oy + 2 * W, ox + W:ox + 2 * W])
    return torch.stack(out), counts


def template_bank() -> tuple[torch.Tensor, torch.Tensor]:
    """(M, W * W) rendered templates and (M,) their shape index."""
    offsets, radii = np.arange(-1.5, 1.51, 0.5), np.arange(1.5, 9.01, 0.25)
    rows = torch.tensor([(k, W / 2 + dx, W / 2 + dy, r) for k in range(len(SHAPE_KINDS))
                         for dx, dy, r in itertools.product(offsets, offsets, radii)], dtype=torch.float32)
    kinds = rows[:, 0].long()
    bank = shape_coverage(kinds, rows[:, 1:3], rows[:, 3], W)
    return bank.flatten(1), kinds


def best_fits(maps: torch.Tensor, bank: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """(N, W, W) -> (N, 5): each shape's best soft IoU with the silhouette."""
    m, out = maps.flatten(1), torch.zeros(len(maps), len(SHAPE_KINDS))
    for s in range(0, len(m), 16):
        a = m[s:s + 16, None]
        iou = torch.minimum(a, bank).sum(-1) / torch.maximum(a, bank).sum(-1).clamp(min=1e-6)
        for k in range(len(SHAPE_KINDS)):
            out[s:s + 16, k] = iou[:, kinds == k].max(1).values
    return out


def radial_profile(maps: torch.Tensor, angles: int = 16, steps: int = 40, r_max: float = 9.0):
    """(N, W, W) -> ((N, angles) distance from the centroid to where coverage falls below 0.5,
    over its mean; (N,) the mean distance in pixels)."""
    ys, xs = torch.meshgrid(torch.arange(W) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    m = maps.clamp(0, 1)
    total = m.flatten(1).sum(1).clamp(min=1e-6)
    cx, cy = (m * xs).flatten(1).sum(1) / total, (m * ys).flatten(1).sum(1) / total
    theta, r = torch.arange(angles) * 2 * math.pi / angles, torch.linspace(0, r_max, steps)
    px = cx[:, None, None] + r * torch.cos(theta)[:, None]                    # (N, angles, steps)
    py = cy[:, None, None] + r * torch.sin(theta)[:, None]
    grid = torch.stack([px / W * 2 - 1, py / W * 2 - 1], -1)
    inside = (torch.nn.functional.grid_sample(m[:, None], grid, align_corners=False)[:, 0] >= 0.5).float()
    reach = inside.cumprod(-1).sum(-1).clamp(min=1) * (r_max / (steps - 1))  # first step outside
    return (reach / reach.mean(1, keepdim=True)).numpy(), reach.mean(1).numpy()


def features(images: torch.Tensor, bank: torch.Tensor, kinds: torch.Tensor) -> np.ndarray:
    """One row per image for the learned reader (see the module's docstring)."""
    maps, counts = silhouettes(images)
    fits = best_fits(maps, bank, kinds).numpy()
    top = np.sort(fits, 1)[:, ::-1]
    profile, reach = radial_profile(maps)
    spectrum = np.fft.rfft(profile, axis=1)
    mag = np.abs(spectrum[:, 1:7]) / profile.shape[1]
    phase3, phase4 = np.angle(spectrum[:, 3]), np.angle(spectrum[:, 4])
    return np.hstack([fits, top[:, :1] - top[:, 1:2], maps.flatten(1).sum(1).numpy()[:, None], reach[:, None],
                      profile.std(1, keepdims=True), (np.array(counts) == 1)[:, None], mag,
                      (np.cos(phase4) * mag[:, 3])[:, None], (np.sin(phase4) * mag[:, 3])[:, None],
                      (np.cos(phase3) * mag[:, 2])[:, None], profile])


def verdicts(fits: torch.Tensor, counts: list[int], tau: float, delta: float) -> np.ndarray:
    v, k = fits.sort(1, descending=True)
    said = np.array([SHAPE_KINDS[i] for i in k[:, 0].tolist()], dtype=object)
    said[((v[:, 0] < tau) | (v[:, 0] - v[:, 1] < delta)).numpy() | (np.array(counts) != 1)] = "unreadable"
    return said


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", default=Path("tests/data/eye_read"))
    parser.add_argument("--learned", action="store_true", help="also train and read the learned reader")
    args = parser.parse_args()
    images, rows = read_eye_read(args.folder)
    with open(args.folder / "labels_reader2.csv", newline="") as f:
        second = {r["id"]: r["shape"] for r in csv.DictReader(f)}
    first = np.array([r["shape"] for r in rows])
    other = np.array([second[r["id"]] for r in rows])
    even = np.array([int(r["id"]) % 2 == 0 for r in rows])
    bank, kinds = template_bank()
    maps, counts = silhouettes(images)
    fits = best_fits(maps, bank, kinds)
    grid = [(np.mean(verdicts(fits, counts, t, d)[even] == first[even]), t, d)
            for t in np.arange(0.5, 0.86, 0.02) for d in np.arange(0.0, 0.16, 0.01)]
    _, tau, delta = max(grid)
    said = verdicts(fits, counts, tau, delta)
    real = render_shapes(500, seed=5150)
    real_maps, real_counts = silhouettes(real.images)
    real_said = verdicts(best_fits(real_maps, bank, kinds), real_counts, tau, delta)
    truth = np.array([SHAPE_KINDS[i] for i in real.attrs["shape"].tolist()])
    both = first == other
    print(f"tau {tau:.2f}, delta {delta:.2f} (chosen on the {even.sum()} even ids)")
    print(f"shape agreement, odd ids (held out): reader 1 {np.mean(said[~even] == first[~even]):.3f}, "
          f"reader 2 {np.mean(said[~even] == other[~even]):.3f}")
    print(f"all {len(rows)}: reader 1 {np.mean(said == first):.3f}, reader 2 {np.mean(said == other):.3f}, "
          f"where the readers agree ({both.sum()}) {np.mean(said[both] == first[both]):.3f}")
    print(f"real renders (500): {np.mean(real_said == truth):.3f}")
    if args.learned:
        from sklearn.ensemble import GradientBoostingClassifier

        extra = render_shapes(300, seed=77)
        x_train = np.vstack([features(images, bank, kinds)[even], features(extra.images, bank, kinds)])
        y_train = np.concatenate([first[even], [SHAPE_KINDS[i] for i in extra.attrs["shape"].tolist()]])
        reader = GradientBoostingClassifier(n_estimators=150, max_depth=2, random_state=0).fit(x_train, y_train)
        said = reader.predict(features(images, bank, kinds))
        odd = ~even
        print(f"learned reader, odd ids (held out): reader 1 {np.mean(said[odd] == first[odd]):.3f}, "
              f"reader 2 {np.mean(said[odd] == other[odd]):.3f}, where the readers agree "
              f"{np.mean(said[odd & both] == first[odd & both]):.3f}; real renders (500): "
              f"{np.mean(reader.predict(features(real.images, bank, kinds)) == truth):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
