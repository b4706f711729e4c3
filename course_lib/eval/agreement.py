"""Does a shapes judge agree with a person? Agreement with the eye-read set (issue 14).

    images, rows = read_eye_read()                     # uint8 (N, 3, 32, 32), label rows
    verdicts = judge_verdicts("shapes_calibrated", images)
    shape_agreement(verdicts, rows, min_confidence=0.9)    # 0.93
    attribute_agreement(verdicts, rows, "colour")          # over the images with one colour named

The labels in ``tests/data/eye_read/labels.csv`` were written by looking at generated images
(the rule is in its README). A shape verdict counts only when the judge's shape confidence is
``>= min_confidence``; below it the judge abstains. Agreement on shape: a verdict equal to the
person's shape, or an abstention where the person wrote "unreadable" (an abstention anywhere
else disagrees; a verdict on an "unreadable" image disagrees). Colour and position: over the
images where the person named one (``-`` means no single object).
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import Tensor

from course_lib.data.shapes import COLOURS, POSITIONS, SHAPE_KINDS, SIZES
from course_lib.eval.judges import _batches, _get_judge

__all__ = ["EYE_READ_DIR", "read_eye_read", "judge_verdicts", "shape_agreement", "attribute_agreement",
           "agreement_table", "reliability"]

EYE_READ_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "eye_read"
_NAMES = {"shape": SHAPE_KINDS, "colour": tuple(COLOURS), "size": SIZES, "position": POSITIONS}


def read_eye_read(folder: str | Path = EYE_READ_DIR) -> tuple[Tensor, list[dict]]:
    """(images (N, 3, H, W) uint8, label rows) of the labelled images, in the order of labels.csv."""
    from safetensors.torch import load_file

    folder = Path(folder)
    images = load_file(str(folder / "images.safetensors"))["images"]
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return images[[int(r["id"]) for r in rows]], rows


@torch.no_grad()
def judge_verdicts(judge, images: Tensor, batch_size: int = 256) -> list[dict]:
    """One dict per image: the judge's names for shape, colour, size, position and its shape
    confidence. ``images``: (N, 3, H, W), uint8 or floats in [0, 1]."""
    j = _get_judge(judge)
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    out = []
    for part in _batches(x, batch_size):
        labels, confidences = j.predict(part)
        for i in range(part.shape[0]):
            v = {k: _NAMES[k][int(labels[k][i])] for k in _NAMES if k in labels}
            out.append({**v, "confidence": float(confidences["shape"][i])})
    return out


def shape_agreement(verdicts: list[dict], rows: list[dict], min_confidence: float = 0.0) -> float:
    """Fraction of images where judge and person agree on the shape (abstaining below
    ``min_confidence`` agrees with "unreadable" only)."""
    agree = 0
    for v, row in zip(verdicts, rows, strict=True):
        abstains = v["confidence"] < min_confidence
        agree += (row["shape"] == "unreadable") if abstains else (row["shape"] == v["shape"])
    return agree / len(rows)


def attribute_agreement(verdicts: list[dict], rows: list[dict], key: str) -> float:
    """Fraction agreeing on ``key`` ("colour", "size", "position") over the images where the
    person named one."""
    named = [(v, r) for v, r in zip(verdicts, rows, strict=True) if r[key] != "-"]
    return sum(v[key] == r[key] for v, r in named) / len(named)


def agreement_table(judge, min_confidence: float | None = None, folder: str | Path = EYE_READ_DIR) -> dict:
    """{"even"|"odd"|"all": {"n", "shape", "colour", "position"}} at ``min_confidence`` (default:
    the judge's own, else 0). Decisions are made on the even ids; the odd ids are held out."""
    j = _get_judge(judge)
    if min_confidence is None:
        min_confidence = getattr(j, "min_confidence", None) or 0.0
    images, rows = read_eye_read(folder)
    verdicts = judge_verdicts(j, images)
    table = {}
    for part, keep in (("even", 0), ("odd", 1), ("all", None)):
        idx = [i for i, r in enumerate(rows) if keep is None or int(r["id"]) % 2 == keep]
        v, r = [verdicts[i] for i in idx], [rows[i] for i in idx]
        table[part] = {"n": len(idx), "shape": shape_agreement(v, r, min_confidence),
                       "colour": attribute_agreement(v, r, "colour"),
                       "position": attribute_agreement(v, r, "position")}
    table["min_confidence"] = min_confidence
    return table


def reliability(confidences: Tensor, correct: Tensor, edges=(0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)) -> list[dict]:
    """Reliability diagram as rows: for each confidence bin [lo, hi), how many, their mean
    confidence and their accuracy (a calibrated judge has accuracy ~ confidence)."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (confidences >= lo) & ((confidences < hi) if hi < 1 else (confidences <= hi))
        n = int(m.sum())
        out.append({"bin": (lo, hi), "n": n,
                    "confidence": float(confidences[m].mean()) if n else None,
                    "accuracy": float(correct[m].float().mean()) if n else None})
    return out
