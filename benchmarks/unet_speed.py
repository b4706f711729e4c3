"""Training-step speed: the course U-Net against diffusers.UNet2DModel at the same size.

The measurement is ``course_lib.eval.speed.unet_training_speed`` (notebook 4 · 02 calls it too):
the same architecture and parameter count on both sides, one training step = forward, MSE,
backward, AdamW, the two models alternating in one process and timed with the process's CPU
time; we report the median over the timed steps.

    python benchmarks/unet_speed.py                 # CPU, 1 thread, batch 128, 20 timed steps
    python benchmarks/unet_speed.py --steps 5 --batch 32 --threads 2
"""
from __future__ import annotations

import argparse

import torch

from course_lib.eval.speed import unet_training_speed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    r = unet_training_speed(a.steps, a.warmup, a.batch)
    print(f"CPU time, {a.threads} thread(s), batch {a.batch} of 1 x 16 x 16, median of {a.steps} steps")
    for k in ("course", "diffusers"):
        print(f"{k:>10}: {r[k]['params']:,} parameters, {r[k]['ms']:.1f} ms per training step")
    print(f"ratio diffusers / course = {r['ratio']:.2f} (>= 1.0: the course U-Net is not slower)")


if __name__ == "__main__":
    main()
