"""Draw clip frames for labelling by eye: which judge should read the frames of generated clips?

    python scripts/sample_clips_for_labelling.py tests/data/eye_read_clips     # about 5 min on 2 CPU cores

(The committed set was drawn with one torch thread, as ``torch.set_num_threads(1)``; another thread
count can change the generated clips in their last bits.)

The video metrics (``course_lib.eval.video``) read every frame of a clip with ``VIDEO_JUDGE``. This
set asks readers to name the shape, colour and size in single frames, so that each judge's reading
of clip frames, and what it makes of whole clips (image-to-video "kept", identity flicker), can be
set against theirs. It holds 112 clips of 8 frames, 896 frames in all:

- 64 image-to-video clips of the shipped video model, exactly those notebook 4 · 10 scores in full
  mode with seed 0 (held-out clips ``render_moving_shapes(64, frames=8, seed=999)``, their first
  frame given, DDIM 20 steps, eta 1, the base model's guidance, generator seeded 7);
- 24 text-to-video clips of the shipped video model (the first 24 of the notebook's 64, same seed);
- 24 rendered clips ``render_moving_shapes(24, frames=8, seed=20261213)``, each clip blurred with
  one sigma ~ U(0.5, 1) px (``train_judges.random_blur``, the case where the silhouette judge
  wobbled: docs/judges.md, sixth round).

The frames are shuffled (seeded) before they are numbered, so a reader sees single frames, as the
judge does, and cannot tell a clip, a frame number or a source from an id. ``meta.csv`` keeps each
frame's source and caption, ``clips.csv`` its clip and frame number.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_shapes import sheets, write_set  # noqa: E402
from train_judges import random_blur  # noqa: E402

SEED = 20261213


def draw(seed: int = 0) -> tuple[torch.Tensor, list[str], list[str]]:
    """Clips (112, 8, 3, 32, 32) in [0, 1], their sources and captions."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from train_motion_module import load_base

    from course_lib.data.moving import render_moving_shapes
    from course_lib.diffusion.export import BASE_MODEL_DIR
    from course_lib.diffusion.video import generate_clips, load_frame_unet, load_video_model

    base = load_base("cpu")
    guidance = json.loads((BASE_MODEL_DIR / "metrics.json").read_text())["guidance_scale"]
    base.unet = load_frame_unet(base)                     # as notebook 4 · 10 builds it
    shipped = load_video_model(base)
    test = render_moving_shapes(64, frames=8, size=32, seed=seed + 999)

    def clips(mode):                                      # the notebook's make_clips: generator seeded seed + 7
        return generate_clips(base, shipped, test, mode, seed=seed + 7, guidance_scale=guidance, steps=20, eta=1.0)

    i2v, t2v = clips("first"), clips("none")[:24]
    rendered = render_moving_shapes(24, frames=8, size=32, seed=SEED)
    sigmas = 0.5 + 0.5 * torch.rand(24, generator=torch.Generator().manual_seed(SEED))   # one per clip
    blurred = torch.stack([random_blur(v, torch.Generator(), float(s), float(s))           # sigma fixed: no draw
                           for v, s in zip(rendered.videos, sigmas)]).clamp(0, 1)
    sources = (["image-to-video, shipped module"] * 64 + ["text-to-video, shipped module"] * 24
               + [f"render blurred sigma {float(s):.2f}" for s in sigmas])
    captions = list(test.captions) + list(test.captions[:24]) + list(rendered.captions)
    return torch.cat([i2v, t2v, blurred]), sources, captions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    if (args.folder / "meta.csv").exists():
        raise SystemExit(f"{args.folder} already holds a set; choose another folder")
    videos, sources, captions = draw()
    n, t = videos.shape[:2]
    frames = (videos.flatten(0, 1).clamp(0, 1) * 255).round().to(torch.uint8)
    order = torch.randperm(n * t, generator=torch.Generator().manual_seed(SEED))
    write_set(args.folder, frames[order], [{"id": str(i), "source": sources[j // t], "caption": captions[j // t]}
                                           for i, j in enumerate(order.tolist())])
    with open(args.folder / "clips.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "clip", "frame"])
        writer.writerows([i, j // t, j % t] for i, j in enumerate(order.tolist()))
    written = sheets(args.folder, 0, n * t)
    print(f"{n} clips, {n * t} frames in {args.folder}; {len(written)} sheets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
