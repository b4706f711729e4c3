"""How often does a shapes judge agree with the person who labelled the eye-read set?

    python scripts/judge_agreement.py [tests/data/eye_read] [--judge shapes] [--min-confidence 0.9 ...]

For each confidence bar c, a verdict counts only when the judge's shape confidence is >= c;
below it the judge abstains. Agreement on shape: a verdict equal to the person's shape, or an
abstention where the person wrote "unreadable" (an abstention anywhere else disagrees; a verdict
on an "unreadable" image disagrees). Colour and position: over the images where the person named
one. Also ShapesEval's per-image verdict against the person's "the image shows the caption"
(shape, colour and position as asked; clean background where ShapesEval asks for it).
The agreement itself is computed by course_lib.eval.agreement (which the tests use too).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_shapes import read_set  # noqa: E402

from course_lib.data.shapes import COLOURS, POSITIONS, SHAPE_KINDS, parse_caption  # noqa: E402

COLOUR_NAMES = tuple(COLOURS)
from course_lib.eval.agreement import (agreement_table, attribute_agreement, judge_verdicts,  # noqa: E402
                                       read_eye_read, shape_agreement)
from course_lib.eval.judges import load_judge  # noqa: E402
from course_lib.eval.shapes_eval import shapes_eval_verdicts  # noqa: E402


def agreement(folder: Path, judge: str = "shapes", bars: tuple[float, ...] = (0.0, 0.9, 0.99)) -> dict:
    _, meta = read_set(folder)
    images, rows = read_eye_read(folder)          # the labelled images, in the order of labels.csv
    ids = [int(r["id"]) for r in rows]
    x = images.float() / 255
    j = load_judge(judge)
    own = getattr(j, "min_confidence", None)
    if own is not None and own not in bars:
        bars = (*bars, own)
    verdicts = judge_verdicts(j, x)
    out = {"n": len(ids)}
    for bar in bars:
        out[f"shape@{bar}"] = shape_agreement(verdicts, rows, bar)
    if (folder / SECOND_READER).exists():
        out.update(second_reader(verdicts, rows, folder, own if own is not None else 0.9))
    out["colour"] = attribute_agreement(verdicts, rows, "colour")
    out["position"] = attribute_agreement(verdicts, rows, "position")
    table = agreement_table(j, folder=folder)   # at the judge's own bar (decisions: even ids only)
    for part in ("even", "odd", "all"):
        for key, value in table[part].items():
            out[f"{part}_{key}"] = value

    # ShapesEval reads grammar captions only (05's "a red circle" prompts name no position)
    graded = [k for k, i in enumerate(ids) if parse_caption(meta[i]["caption"]) is not None]
    captions = [meta[ids[k]]["caption"] for k in graded]
    rows = [rows[k] for k in graded]
    verdicts = shapes_eval_verdicts(x[graded], captions, judge=judge)   # at the judge's own min_confidence
    out["shapes_eval_n"] = len(graded)
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


SECOND_READER = "labels_reader2.csv"   # a second, independent blind reading of every image's shape


def second_reader(verdicts: list[dict], rows: list[dict], folder: Path, bar: float) -> dict:
    """Shape agreement against the second reader (at ``bar``), on the images where both readers
    give the same shape, and with either reader; and how often the two readers agree."""
    with open(folder / SECOND_READER, newline="") as f:
        second = {r["id"]: r for r in csv.DictReader(f)}
    rows2 = [{**r, "shape": second[r["id"]]["shape"]} for r in rows]
    both = [k for k, (a, b) in enumerate(zip(rows, rows2)) if a["shape"] == b["shape"]]
    said = ["unreadable" if v["confidence"] < bar else v["shape"] for v in verdicts]
    return {"readers_agree_on_shape": len(both) / len(rows),
            f"shape@{bar}_vs_reader2": shape_agreement(verdicts, rows2, bar),
            f"shape@{bar}_where_readers_agree": shape_agreement([verdicts[k] for k in both],
                                                                [rows[k] for k in both], bar),
            f"shape@{bar}_vs_either_reader": sum(s in (a["shape"], b["shape"])
                                                 for s, a, b in zip(said, rows, rows2)) / len(rows)}


def reliability_tables(judges: list[str], folder: Path) -> str:
    """Markdown reliability diagrams (shape confidence vs accuracy in bins) of each judge on the
    eye-read set (a verdict on an "unreadable" image is wrong) and on degraded renders
    (render_shapes(3000, seed=2), degraded as the calibrated judges' training degrades, seed 7)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_judges import CALIBRATED, augment_calibrated

    from course_lib.data import render_shapes
    from course_lib.eval.agreement import reliability

    images, rows = read_eye_read(folder)
    real = render_shapes(3000, seed=2)
    g = torch.Generator().manual_seed(7)
    worse = augment_calibrated(real.images, g, {**CALIBRATED, "p_degrade": 1.0})
    out = []
    for name in judges:
        v = judge_verdicts(name, images)
        eye = reliability(torch.tensor([x["confidence"] for x in v]),
                          torch.tensor([x["shape"] == r["shape"] for x, r in zip(v, rows)]))
        labels, conf = load_judge(name).predict(worse)
        deg = reliability(conf["shape"], labels["shape"] == real.attrs["shape"])
        out += [f"**{name}** (min_confidence {getattr(load_judge(name), 'min_confidence', None)})", "",
                "| confidence bin | eye-read n | mean conf. | accuracy | degraded renders n | mean conf. | accuracy |",
                "|---|---|---|---|---|---|---|"]
        for a, b in zip(eye, deg):
            f = lambda z: "-" if z is None else f"{z:.2f}"  # noqa: E731
            out.append(f"| [{a['bin'][0]:.2f}, {a['bin'][1]:.2f}) | {a['n']} | {f(a['confidence'])} | "
                       f"{f(a['accuracy'])} | {b['n']} | {f(b['confidence'])} | {f(b['accuracy'])} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", default=Path("tests/data/eye_read"))
    parser.add_argument("--judge", default="shapes")
    parser.add_argument("--min-confidence", type=float, nargs="*", default=[0.0, 0.9, 0.99])
    parser.add_argument("--reliability", nargs="*", metavar="JUDGE",
                        help="print markdown reliability tables of these judges instead")
    args = parser.parse_args()
    if args.reliability:
        print(reliability_tables(args.reliability, args.folder))
        return 0
    for key, value in agreement(args.folder, args.judge, tuple(args.min_confidence)).items():
        print(f"{key:30s} {value:.3f}" if isinstance(value, float) else f"{key:30s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
