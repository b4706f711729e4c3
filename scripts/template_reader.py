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
The silhouettes, template fits and features are ``course_lib.eval.silhouette``'s: the silhouette
judge (a softmax regression on the same numbers) grew out of this script (docs/judges.md).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch

from course_lib.data.shapes import SHAPE_KINDS, render_shapes
from course_lib.eval.agreement import read_eye_read
from course_lib.eval.silhouette import silhouette_features, silhouettes, template_fits


def fits_and_counts(images: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """(N, 3, 32, 32) -> ((N, 5) each shape's best soft IoU, the number of objects per image)."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    maps, _, counts = silhouettes(x)
    return template_fits(maps)[0], counts


def features(images: torch.Tensor) -> np.ndarray:
    """One row per image for the learned reader: the silhouette judge's 35 numbers."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    return silhouette_features(x)[0].numpy()


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
    fits, counts = fits_and_counts(images)
    grid = [(np.mean(verdicts(fits, counts, t, d)[even] == first[even]), t, d)
            for t in np.arange(0.5, 0.86, 0.02) for d in np.arange(0.0, 0.16, 0.01)]
    _, tau, delta = max(grid)
    said = verdicts(fits, counts, tau, delta)
    real = render_shapes(500, seed=5150)
    real_said = verdicts(*fits_and_counts(real.images), tau, delta)
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
        x_train = np.vstack([features(images)[even], features(extra.images)])
        y_train = np.concatenate([first[even], [SHAPE_KINDS[i] for i in extra.attrs["shape"].tolist()]])
        reader = GradientBoostingClassifier(n_estimators=150, max_depth=2, random_state=0).fit(x_train, y_train)
        said = reader.predict(features(images))
        odd = ~even
        print(f"learned reader, odd ids (held out): reader 1 {np.mean(said[odd] == first[odd]):.3f}, "
              f"reader 2 {np.mean(said[odd] == other[odd]):.3f}, where the readers agree "
              f"{np.mean(said[odd & both] == first[odd & both]):.3f}; real renders (500): "
              f"{np.mean(reader.predict(features(real.images)) == truth):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
