"""Draw a fresh set of generated shapes images for labelling by eye (issue 14's held-out set).

    python scripts/sample_for_labelling.py tests/data/eye_read_fresh [--per-setting 40] [--seed 20261207]
    python scripts/sample_for_labelling.py SET --model PIPELINE_FOLDER --name "4.07 pipeline"

The images come from the course's shipped base model (``course_lib/checkpoints/shapes_sd``), or from
any exported text-to-image pipeline folder (``--model``, e.g. the one notebook 4 · 07 exports), under
six sampler settings, from crisp (20 DDIM steps, eta 1, guidance 2: the setting of notebooks 07-09)
to blurred and lumpy (3 or 4 steps, no guidance) and over-guided, so that the set holds good, bad
and ambiguous shapes. Captions are one-object grammar captions of ``render_shapes(n, seed)``, which
no model trained on. The images are shuffled (seeded) before they are numbered, so a reader cannot
tell the setting from an id; ``meta.csv`` keeps the setting and the caption of each.
Writes ``images.safetensors`` and ``meta.csv`` (the format of ``label_shapes.py``), then the sheets.
About a minute on one CPU thread.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_shapes import sheets, write_set  # noqa: E402

from course_lib.data.shapes import caption_for, render_shapes  # noqa: E402

# (DDIM steps, eta, guidance scale)
SETTINGS = ((20, 1.0, 2.0), (20, 0.0, 5.0), (6, 0.0, 2.0), (4, 1.0, 2.0), (3, 0.0, 1.0), (10, 1.0, 8.0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--per-setting", type=int, default=40)
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--model", type=Path, default=None, help="a pipeline folder (default: shapes_sd)")
    parser.add_argument("--name", default="shapes_sd", help="what meta.csv calls the model")
    args = parser.parse_args()
    if (args.folder / "meta.csv").exists():
        raise SystemExit(f"{args.folder} already holds a set; choose another folder")
    from course_lib.diffusion.export import BASE_MODEL_DIR, CourseTextToImagePipeline

    torch.manual_seed(args.seed)
    pipe = CourseTextToImagePipeline.from_pretrained(args.model or BASE_MODEL_DIR)
    pipe.set_progress_bar_config(disable=True)
    n = args.per_setting * len(SETTINGS)
    batch = render_shapes(n, seed=args.seed)
    captions = [caption_for({k: v[i] for k, v in batch.attrs.items()}) for i in range(n)]
    images, sources = [], []
    for k, (steps, eta, scale) in enumerate(SETTINGS):
        part = captions[k * args.per_setting:(k + 1) * args.per_setting]
        out = pipe(part, guidance_scale=scale, num_inference_steps=steps, eta=eta, output_type="pt",
                   generator=torch.Generator().manual_seed(args.seed + k))
        images.append(out.images)
        sources += [f"{args.name}, {steps} DDIM steps, eta {eta:g}, guidance {scale:g}"] * len(part)
        print(f"setting {k}: {steps} steps, eta {eta:g}, guidance {scale:g}: {len(part)} images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
    x = (torch.cat(images).clamp(0, 1) * 255).round().to(torch.uint8)[order]
    write_set(args.folder, x, [{"id": str(i), "source": sources[j], "caption": captions[j]}
                               for i, j in enumerate(order.tolist())])
    written = sheets(args.folder, 0, n)
    print(f"{n} images in {args.folder}; sheets: {', '.join(p.name for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
