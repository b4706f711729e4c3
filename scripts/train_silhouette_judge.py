"""Fit the silhouette judge (``course_lib.eval.silhouette``) and ship it.

    python scripts/train_silhouette_judge.py            # writes course_lib/checkpoints/judge_shapes_silhouette.*

The judge's shape reader is a softmax regression on 35 numbers that describe the main object's
outline (template IoUs, radial profile, its harmonics). It is fitted on
- the 400 generated images of the eye-read set (``tests/data/eye_read``), each twice: once with the
  first reader's shape label and once with the second reader's (``labels_reader2.csv``), so that
  where two people disagree the judge learns to be unsure;
- 300 real renders (``render_shapes(300, seed=77)``) with their true shapes;
- 300 more, blurred (``render_shapes(300, seed=78)``, sigma ~ U(0.3, 1) px) with their true shapes:
  a person reads a blurred cross as a cross, and generated images, and frames resized from 64 or 16
  px, are blurred. Without them the judge abstained on most renders blurred at sigma 0.8 (54 % read
  right; 96 % with them) and on 64 x 64 renders (88 %; 100 %);
- 300 more (``render_shapes(300, seed=79)``) passed through the shipped base model's autoencoder
  (``shapes_sd``'s ``vae``), with their true shapes: an autoencoder softens small crosses and diamonds
  in its own way, and a person still reads them (notebook 4 · 05's reconstructions: 81.7 % read right
  without these, 91.7 % with them; docs/judges.md, "Sixth round").

Choices (C = 0.3, both readers, the bar 0.5) were made by fitting on the even ids and reading the
odd ids (docs/judges.md, fifth round); the script prints that held-out check again, then fits on
everything and ships. The honest measure is a set no choice was made on, read after the judge was
committed: now ``tests/data/eye_read_fourth`` (``scripts/judge_agreement.py tests/data/eye_read_fourth
--judge shapes_silhouette``; the fresh and third sets were scored while this version was chosen).
Deterministic; about 10 s on one CPU thread.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from course_lib.data.shapes import SHAPE_KINDS, render_shapes
from course_lib.eval.agreement import EYE_READ_DIR, judge_verdicts, read_eye_read, shape_agreement
from course_lib.eval.judges import CHECKPOINT_DIR, save_judge
from course_lib.eval.silhouette import SilhouetteJudge, silhouette_features
from train_judges import random_blur  # noqa: E402  (scripts/ is on the path when a script runs)

C = 0.3                 # inverse L2 strength of the softmax regression
MIN_CONFIDENCE = 0.5    # the judge's bar: below it a shape verdict does not count
CLASSES = [*SHAPE_KINDS, "unreadable"]
BLUR = (0.3, 1.0)       # px: the range of sigma of the blurred renders it is fitted on


def read_labels(folder: Path = EYE_READ_DIR) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8, first reader's shapes, second reader's shapes, ids) of the eye-read set."""
    images, rows = read_eye_read(folder)
    with open(folder / "labels_reader2.csv", newline="") as f:
        second = {r["id"]: r["shape"] for r in csv.DictReader(f)}
    return (images, np.array([r["shape"] for r in rows]), np.array([second[r["id"]] for r in rows]),
            np.array([int(r["id"]) for r in rows]))


def fit(x: np.ndarray, y: np.ndarray) -> SilhouetteJudge:
    """A SilhouetteJudge whose mu, sigma, W, b are a softmax regression fitted on (x, y)."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=C, max_iter=10000).fit((x - mean) / scale, y)
    order = [list(model.classes_).index(c) for c in CLASSES]       # sklearn sorts the class names
    judge = SilhouetteJudge(min_confidence=MIN_CONFIDENCE)
    with torch.no_grad():
        judge.mean.copy_(torch.from_numpy(mean))
        judge.scale.copy_(torch.from_numpy(scale))
        judge.linear.weight.copy_(torch.from_numpy(model.coef_[order]))
        judge.linear.bias.copy_(torch.from_numpy(model.intercept_[order]))
    return judge.eval().requires_grad_(False)


def blurred_copy(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each image blurred with its own sigma ~ U(0.3, 1) px (``train_judges.random_blur``)."""
    return random_blur(images, torch.Generator().manual_seed(seed), BLUR[1], min_sigma=BLUR[0]).clamp(0, 1)


def reconstructed(images: torch.Tensor) -> torch.Tensor:
    """``images`` (N, 3, 32, 32) in [0, 1] encoded and decoded by the shipped base model's autoencoder."""
    from course_lib.diffusion.export import BASE_MODEL_DIR, CourseTextToImagePipeline
    from course_lib.diffusion.schedule import to_image_range, to_model_range

    ae = CourseTextToImagePipeline.from_pretrained(BASE_MODEL_DIR).vae.net.eval()
    with torch.no_grad():
        return to_image_range(ae.decode(ae.encode(to_model_range(images))))


def agreement(judge: SilhouetteJudge, images: torch.Tensor, *labels: np.ndarray) -> list[float]:
    """Shape agreement of the judge at its bar with each array of shape words (abstaining agrees
    with "unreadable" only: ``course_lib.eval.agreement.shape_agreement``)."""
    verdicts = judge_verdicts(judge, images)
    return [shape_agreement(verdicts, [{"shape": w} for w in words], judge.min_confidence) for words in labels]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=CHECKPOINT_DIR / "judge_shapes_silhouette.safetensors")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    images, first, second, ids = read_labels()
    extra = render_shapes(300, seed=77)
    f_eye = silhouette_features(images.float() / 255)[0].numpy().astype(np.float64)
    f_real = silhouette_features(extra.images)[0].numpy().astype(np.float64)
    blurred, rebuilt = render_shapes(300, seed=78), render_shapes(300, seed=79)
    f_real = np.vstack([f_real, *(silhouette_features(x)[0].numpy().astype(np.float64)
                                  for x in (blurred_copy(blurred.images), reconstructed(rebuilt.images)))])
    y_real = np.array([SHAPE_KINDS[i] for b in (extra, blurred, rebuilt) for i in b.attrs["shape"].tolist()])

    def training_set(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.vstack([f_eye[keep], f_eye[keep], f_real]),
                np.concatenate([first[keep], second[keep], y_real]))

    even, odd, agree = ids % 2 == 0, ids % 2 == 1, first == second
    held = fit(*training_set(even))
    r1, r2 = agreement(held, images[odd], first[odd], second[odd])
    (both,) = agreement(held, images[odd & agree], first[odd & agree])
    held_out = {"reader_1": r1, "reader_2": r2, "where_readers_agree": both}
    print("fitted on the even ids, read on the odd ids: " + ", ".join(f"{k} {v:.3f}" for k, v in held_out.items()))

    judge = fit(*training_set(np.ones(len(ids), bool)))
    real = render_shapes(500, seed=5150)
    labels, _ = judge.predict(real.images)
    on_real = {k: float((labels[k] == real.attrs[k]).float().mean()) for k in ("shape", "colour", "size", "position")}
    words = [SHAPE_KINDS[i] for i in real.attrs["shape"].tolist()]
    (on_real["shape_at_bar"],) = agreement(judge, real.images, words)
    (on_real["shape_at_bar_blurred"],) = agreement(judge, blurred_copy(real.images, seed=1), words)
    print("real renders (500, seed 5150): " + ", ".join(f"{k} {v:.3f}" for k, v in on_real.items()))
    save_judge(judge, args.out, dtype=torch.float32)
    seconds = round(time.time() - start, 1)
    report = {"judge": "shapes_silhouette", "C": C, "min_confidence": MIN_CONFIDENCE,
              "trained_on": "eye-read set (400 images, both readers' shape labels) + render_shapes(300, seed=77) "
                            "+ render_shapes(300, seed=78) blurred with sigma ~ U(0.3, 1) px "
                            "+ render_shapes(300, seed=79) through shapes_sd's autoencoder",
              "held_out_odd_ids_when_fitted_on_even_ids": held_out, "real_renders": on_real,
              "train_seconds": seconds, "parameters": sum(p.numel() for p in judge.parameters())}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} and its .json ({seconds} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
