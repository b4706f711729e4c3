"""Which judge reads the frames of generated clips the way people do? (the clip-frame set)

    python scripts/clip_judge_agreement.py [tests/data/eye_read_clips] [--judges shapes_calibrated shapes_silhouette]

The set (``scripts/sample_clips_for_labelling.py``) holds 112 clips of 8 frames, shuffled and read
frame by frame by two blind readers (``labels.csv``, ``labels_reader2.csv``: id, shape, colour,
size, note). For each judge this prints

- per frame: shape agreement with each reader and where they agree (an abstention agrees with
  "unreadable" only, as ``course_lib.eval.agreement.shape_agreement``), colour and size agreement
  over the frames where the reader named one, per source;
- per clip, the video metrics' own rules (``course_lib.eval.video``) applied to the judge's reading
  and to each reader's: image-to-video "kept" (every frame shows the caption's shape and colour),
  identity flicker, and how often the judge's clip verdict equals the reader's.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_shapes import read_set  # noqa: E402

from course_lib.data.shapes import COLOURS, SHAPE_KINDS, SIZES  # noqa: E402
from course_lib.eval.video import frame_objects, identity_flicker, kept_identity  # noqa: E402

READERS = {"A": "labels.csv", "B": "labels_reader2.csv"}
SOURCES = {"i2v": "image-to-video", "t2v": "text-to-video", "blurred": "render blurred"}


def load_clips(folder: Path) -> tuple[torch.Tensor, list[str], list[str], torch.Tensor]:
    """Clips (N, T, 3, H, W) in [0, 1], each clip's caption and source, and the frame ids (N, T)."""
    images, meta = read_set(folder)
    with open(folder / "clips.csv", newline="") as f:
        where = [(int(r["id"]), int(r["clip"]), int(r["frame"])) for r in csv.DictReader(f)]
    n, t = max(c for _, c, _ in where) + 1, max(k for _, _, k in where) + 1
    ids = torch.full((n, t), -1, dtype=torch.long)
    for i, c, k in where:
        ids[c, k] = i
    if (ids < 0).any():
        raise ValueError(f"{folder}/clips.csv does not place a frame at every (clip, frame)")
    captions = [meta[int(ids[c, 0])]["caption"] for c in range(n)]
    sources = [meta[int(ids[c, 0])]["source"] for c in range(n)]
    return images[ids.flatten()].view(n, t, *images.shape[1:]).float() / 255, captions, sources, ids


def reader_objects(folder: Path, name: str, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """A reader's labels as ``frame_objects``' (N, T) dict: shape, colour, size (-1: unreadable / none)."""
    with open(folder / name, newline="") as f:
        rows = {int(r["id"]): r for r in csv.DictReader(f)}
    if set(rows) != set(range(ids.numel())):
        raise ValueError(f"{folder}/{name} must label ids 0..{ids.numel() - 1} once each")
    index = {"shape": list(SHAPE_KINDS), "colour": list(COLOURS), "size": list(SIZES)}
    out = {}
    for key, words in index.items():
        values = [words.index(rows[i][key]) if rows[i][key] in words else -1 for i in ids.flatten().tolist()]
        out[key] = torch.tensor(values).view(ids.shape)
    return out


def compare(judged: dict, readers: dict, captions: list[str], sources: list[str]) -> dict:
    """Frame and clip agreement of one judge's reading with each reader's (and where they agree)."""
    both = (readers["A"]["shape"] == readers["B"]["shape"])
    src = {k: torch.tensor([s.startswith(v) for s in sources]) for k, v in SOURCES.items()}
    out = {}

    # image-to-video's "kept" (every frame shows the caption's shape and colour) and flicker, once per reading
    kept = {r: kept_identity(lab, captions) for r, lab in readers.items()}
    flicker = {r: identity_flicker(lab) for r, lab in readers.items()}
    j_kept, j_flicker = kept_identity(judged, captions), identity_flicker(judged)
    for part, clips in (("all", torch.ones(len(captions), dtype=torch.bool)), *src.items()):
        for r, lab in readers.items():
            frames = clips[:, None].expand_as(lab["shape"])
            out[f"{part}/shape_vs_{r}"] = (judged["shape"] == lab["shape"])[frames].float().mean().item()
            named = frames & (lab["colour"] >= 0)
            out[f"{part}/colour_vs_{r}"] = (judged["colour"] == lab["colour"])[named].float().mean().item()
            named = frames & (lab["size"] >= 0) & (judged["size"] >= 0)
            out[f"{part}/size_vs_{r}"] = (judged["size"] == lab["size"])[named].float().mean().item()
            out[f"{part}/kept_{r}"] = kept[r][clips].float().mean().item()
            out[f"{part}/kept_same_as_{r}"] = (j_kept == kept[r])[clips].float().mean().item()
            out[f"{part}/flicker_{r}"] = flicker[r][clips].float().mean().item()
            out[f"{part}/flicker_same_as_{r}"] = (j_flicker == flicker[r])[clips].float().mean().item()
        agree = clips[:, None] & both
        same = judged["shape"] == readers["A"]["shape"]
        out[f"{part}/shape_where_readers_agree"] = same[agree].float().mean().item()
        out[f"{part}/kept_judge"] = j_kept[clips].float().mean().item()
        out[f"{part}/flicker_judge"] = j_flicker[clips].float().mean().item()
        out[f"{part}/unreadable_judge"] = (judged["shape"] < 0)[clips].float().mean().item()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", default=Path("tests/data/eye_read_clips"))
    parser.add_argument("--judges", nargs="*", default=["shapes_calibrated", "shapes_silhouette", "shapes",
                                                         "shapes_second"])
    args = parser.parse_args()
    videos, captions, sources, ids = load_clips(args.folder)
    readers = {r: reader_objects(args.folder, name, ids) for r, name in READERS.items()}
    both = readers["A"]["shape"] == readers["B"]["shape"]
    print(f"{len(captions)} clips, {ids.numel()} frames; readers give the same shape to {both.float().mean():.1%}")
    results = {judge: compare(frame_objects(videos, judge), readers, captions, sources) for judge in args.judges}
    keys = list(next(iter(results.values())))
    print(f"{'':34s}" + "".join(f"{j:>19s}" for j in args.judges))
    for key in keys:
        print(f"{key:34s}" + "".join(f"{results[j][key]:19.3f}" for j in args.judges))
    return 0


if __name__ == "__main__":
    sys.exit(main())
