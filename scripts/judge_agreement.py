"""How often does a shapes judge agree with the person who labelled the eye-read set?

    python scripts/judge_agreement.py [tests/data/eye_read] [--judge shapes] [--min-confidence 0.9 ...]

For each confidence bar c, a verdict counts only when the judge's shape confidence is >= c;
below it the judge abstains. Agreement on shape: a verdict equal to the person's shape, or an
abstention where the person wrote "unreadable" (an abstention anywhere else disagrees; a verdict
on an "unreadable" image disagrees). Colour and position: over the images where the person named
one. Also ShapesEval's per-image verdict against the person's "the image shows the caption"
(shape, colour and position as asked; clean background where ShapesEval asks for it).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_shapes import read_labels, read_set  # noqa: E402

from course_lib.data.shapes import COLOURS, POSITIONS, SHAPE_KINDS, parse_caption  # noqa: E402

COLOUR_NAMES = tuple(COLOURS)
from course_lib.eval.judges import load_judge  # noqa: E402
from course_lib.eval.shapes_eval import shapes_eval_verdicts  # noqa: E402


def agreement(folder: Path, judge: str = "shapes", bars: tuple[float, ...] = (0.0, 0.9, 0.99)) -> dict:
    images, meta = read_set(folder)
    labels = {int(r["id"]): r for r in read_labels(folder)}
    ids = sorted(labels)
    x = images[ids].float() / 255
    j = load_judge(judge)
    with torch.no_grad():
        predicted, confidence = j.predict(x)
    rows = [labels[i] for i in ids]
    out = {"n": len(ids)}
    for bar in bars:
        agree = 0
        for k, row in enumerate(rows):
            abstains = confidence["shape"][k].item() < bar
            said = SHAPE_KINDS[int(predicted["shape"][k])]
            agree += (row["shape"] == "unreadable") if abstains else (row["shape"] == said)
        out[f"shape@{bar}"] = agree / len(rows)
    named = [k for k, r in enumerate(rows) if r["colour"] != "-"]
    out["colour"] = sum(COLOUR_NAMES[int(predicted["colour"][k])] == rows[k]["colour"] for k in named) / len(named)
    placed = [k for k, r in enumerate(rows) if r["position"] != "-"]
    out["position"] = sum(POSITIONS[int(predicted["position"][k])] == rows[k]["position"] for k in placed) / len(placed)

    captions = [meta[i]["caption"] for i in ids]
    verdicts = shapes_eval_verdicts(x, captions, judge=judge)
    person, person_clean, machine = [], [], []
    for row, cap, v in zip(rows, captions, verdicts):
        asked = parse_caption(cap)
        shows = (row["shape"] == SHAPE_KINDS[asked["shape"]] and row["colour"] == COLOUR_NAMES[asked["colour"]]
                 and row["position"] == POSITIONS[asked["position"]])
        person.append(shows)
        person_clean.append(shows and row["clean"] == "yes")
        machine.append(bool(v["passed"]))
    out["shapes_eval_vs_person"] = sum(a == b for a, b in zip(person, machine)) / len(rows)
    out["shapes_eval_vs_person_clean"] = sum(a == b for a, b in zip(person_clean, machine)) / len(rows)
    out["person_shows_caption"] = sum(person) / len(rows)
    out["person_shows_caption_clean"] = sum(person_clean) / len(rows)
    out["shapes_eval_passed"] = sum(machine) / len(rows)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", default=Path("tests/data/eye_read"))
    parser.add_argument("--judge", default="shapes")
    parser.add_argument("--min-confidence", type=float, nargs="*", default=[0.0, 0.9, 0.99])
    args = parser.parse_args()
    for key, value in agreement(args.folder, args.judge, tuple(args.min_confidence)).items():
        print(f"{key:30s} {value:.3f}" if isinstance(value, float) else f"{key:30s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
