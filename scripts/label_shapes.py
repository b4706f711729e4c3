"""Label generated shapes images by eye: enlarged, numbered sheets to look at, and a check of the labels.

The eye-read set (``tests/data/eye_read/``) is how the course knows whether its shapes judge agrees
with a person. A set folder holds

    images.safetensors   "images": (N, 3, H, W) uint8, the pictures exactly as they were judged
    meta.csv             id, source (which model made it), caption (what was asked, or empty)
    labels.csv           id, shape, colour, size, position, clean, labeller, note

``labels.csv`` uses the words of the shapes grammar (``course_lib.data.shapes``); ``shape`` may be
``unreadable`` and ``colour`` / ``size`` / ``position`` may be ``-`` when there is no object to
speak of; ``clean`` is ``yes`` or ``no``. The labelling rule is in the set's README.md.

    python scripts/label_shapes.py add SET images.safetensors --source t2i --captions caps.txt
    python scripts/label_shapes.py sheets SET --from 0 --to 80     # PNGs to look at, 40 per sheet
    python scripts/label_shapes.py check SET                        # every label valid, counts

Look at each sheet (the number above an image is its id), write one row per image into
labels.csv, then run ``check``.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from course_lib.data.shapes import COLOURS, POSITIONS, SHAPE_KINDS, SIZES

LABEL_FIELDS = ("id", "shape", "colour", "size", "position", "clean", "labeller", "note")
ALLOWED = {"shape": set(SHAPE_KINDS) | {"unreadable"}, "colour": set(COLOURS) | {"-"},
           "size": set(SIZES) | {"-"}, "position": set(POSITIONS) | {"-"}, "clean": {"yes", "no"}}


def read_set(folder: Path) -> tuple[torch.Tensor, list[dict]]:
    """(images (N, 3, H, W) uint8, meta rows) of a set folder."""
    images = load_file(str(folder / "images.safetensors"))["images"]
    with open(folder / "meta.csv", newline="") as f:
        meta = list(csv.DictReader(f))
    if len(meta) != len(images):
        raise ValueError(f"{folder}: {len(images)} images but {len(meta)} rows in meta.csv")
    return images, meta


def read_labels(folder: Path) -> list[dict]:
    path = folder / "labels.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def add(folder: Path, new_file: Path, source: str, captions: Path | None) -> None:
    """Append the images of ``new_file`` ("images": (n, 3, H, W) in [0, 1] float, or uint8)."""
    new = load_file(str(new_file))["images"]
    if new.dtype != torch.uint8:
        new = (new.float().clamp(0, 1) * 255).round().to(torch.uint8)
    caps = captions.read_text().splitlines() if captions else [""] * len(new)
    if len(caps) != len(new):
        raise ValueError(f"{len(new)} images but {len(caps)} captions")
    images, meta = read_set(folder) if (folder / "meta.csv").exists() else (new[:0], [])
    start = len(meta)
    meta += [{"id": str(start + i), "source": source, "caption": c} for i, c in enumerate(caps)]
    write_set(folder, torch.cat([images, new]), meta)
    print(f"added ids {start}..{len(meta) - 1} from {source}")


def write_set(folder: Path, images: torch.Tensor, meta: list[dict]) -> None:
    """Write a set folder's images.safetensors (uint8 (N, 3, H, W)) and meta.csv (id, source, caption)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"images": images.contiguous()}, str(folder / "images.safetensors"))
    with open(folder / "meta.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "source", "caption"])
        writer.writeheader()
        writer.writerows(meta)


def sheets(folder: Path, first: int, last: int, per_sheet: int = 40, out: Path | None = None) -> list[Path]:
    """Write numbered sheets of images first..last-1, 8 per row, each about 6x enlarged."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, meta = read_set(folder)
    out = out or folder / "sheets"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for s in range(first, min(last, len(images)), per_sheet):
        ids = list(range(s, min(s + per_sheet, last, len(images))))
        rows = (len(ids) + 7) // 8
        fig, axes = plt.subplots(rows, 8, figsize=(16, 2.2 * rows))
        for ax in np.atleast_1d(axes).ravel():
            ax.axis("off")
        for ax, i in zip(np.atleast_1d(axes).ravel(), ids):
            ax.imshow(images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(str(i), fontsize=12)
        fig.tight_layout()
        path = out / f"sheet_{ids[0]:04d}.png"
        fig.savefig(path, dpi=80, facecolor="white")
        plt.close(fig)
        written.append(path)
    return written


def check(folder: Path) -> list[str]:
    """Problems with labels.csv (empty when every row is valid); prints label counts."""
    images, meta = read_set(folder)
    labels = read_labels(folder)
    problems = []
    seen = set()
    for row in labels:
        if set(row) != set(LABEL_FIELDS):
            problems.append(f"row {row}: columns must be {LABEL_FIELDS}")
            continue
        if not row["id"].isdigit() or not 0 <= int(row["id"]) < len(images):
            problems.append(f"id {row['id']!r} is not an image of the set (0..{len(images) - 1})")
        if row["id"] in seen:
            problems.append(f"id {row['id']} is labelled twice")
        seen.add(row["id"])
        for key, allowed in ALLOWED.items():
            if row[key] not in allowed:
                problems.append(f"id {row['id']}: {key}={row[key]!r} is not one of {sorted(allowed)}")
    counts = {key: {} for key in ALLOWED}
    for row in labels:
        for key in ALLOWED:
            counts[key][row[key]] = counts[key].get(row[key], 0) + 1
    print(f"{len(labels)} of {len(images)} images labelled")
    for key, c in counts.items():
        print(f"  {key:8s} " + ", ".join(f"{k}: {v}" for k, v in sorted(c.items())))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add")
    a.add_argument("folder", type=Path)
    a.add_argument("file", type=Path)
    a.add_argument("--source", required=True)
    a.add_argument("--captions", type=Path)
    s = sub.add_parser("sheets")
    s.add_argument("folder", type=Path)
    s.add_argument("--from", dest="first", type=int, default=0)
    s.add_argument("--to", dest="last", type=int, default=10 ** 9)
    s.add_argument("--out", type=Path)
    c = sub.add_parser("check")
    c.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "add":
        add(args.folder, args.file, args.source, args.captions)
    elif args.cmd == "sheets":
        for path in sheets(args.folder, args.first, args.last, out=args.out):
            print(path)
    else:
        problems = check(args.folder)
        print("\n".join(problems) or "all labels valid")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
