"""Sweeps over a sampler's knobs, measured with a judge (Phase 4 · 04, 06).

- :func:`compare_samplers` (4 · 04): the same model under several step rules (ancestral, DDIM at
  several step counts and eta's, `diffusers` solvers), every rule from the same x_T per seed;
  model calls, time per image, and with real features FID and the judge's recognition rate.
- :func:`guidance_sweep` (4 · 06): accuracy and diversity for each guidance scale;
  :func:`within_class_spread` measures the diversity.

Images are (N, C, H, W) in [0, 1]; the samplers produce [-1, 1] and are mapped with
``to_image_range``.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from course_lib.diffusion.schedule import to_image_range
from course_lib.diffusion.solver import StepRule, sample
from course_lib.eval.accuracy import class_report
from course_lib.eval.distances import fid_from_features
from course_lib.eval.judges import extract_features


# --------------------------------------------------------------------------- samplers (4 · 04)
class CountCalls(nn.Module):
    """Wraps a model and counts its calls (network function evaluations, NFE) in ``.calls``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.model(x, t)


def run_sampler(model: nn.Module, rule: StepRule, shape: Sequence[int], seed: int, device=None) -> dict:
    """One sampling run from the noise of ``seed``.

    Returns {"images": (B, C, H, W) in [0, 1], "seconds_per_image": wall time, "calls": model calls}.
    """
    counted = CountCalls(model)
    start = time.perf_counter()
    x = sample(counted, shape, rule, generator=torch.Generator().manual_seed(seed), device=device, progress=False)
    seconds = time.perf_counter() - start
    return {"images": to_image_range(x.cpu()), "seconds_per_image": seconds / shape[0], "calls": counted.calls}


def compare_samplers(model: nn.Module, rules: Mapping[str, StepRule], shape: Sequence[int], seeds: Sequence[int],
                     real_features: Tensor | None = None, judge="digits", device=None) -> tuple[dict, dict, dict]:
    """Run every rule once per seed (seed i: the same x_T for every rule) and tabulate.

    rules: name -> step rule (a rule is re-started by every run). real_features: judge features of
    held-out real images; None skips FID and recognition (times and calls are still measured).
    Returns (table, images, fids): table[name] = {"model calls", "ms / image"} plus, with
    real_features, the mean "FID", its "FID sd" over the seeds and the mean "recognised";
    images[name] = the first seed's samples; fids[name] = the FID of each seed.
    """
    table, images, fids = {}, {}, {}
    for name, rule in rules.items():
        per_seed = []
        for seed in seeds:
            run = run_sampler(model, rule, shape, seed, device)
            row = {"ms / image": 1000 * run["seconds_per_image"]}
            if real_features is not None:
                row["FID"] = fid_from_features(extract_features(run["images"], judge=judge), real_features)
                row["recognised"] = class_report(run["images"], judge=judge)["recognised"]
            per_seed.append(row)
            images.setdefault(name, run["images"])                    # pictures use the first seed
        table[name] = {"model calls": run["calls"], "ms / image": float(np.mean([r["ms / image"] for r in per_seed]))}
        if real_features is None:
            print(f"{name:28s} ms / image {table[name]['ms / image']:.1f}")
            continue
        fids[name] = [r["FID"] for r in per_seed]
        table[name].update({"FID": float(np.mean(fids[name])), "FID sd": float(np.std(fids[name], ddof=1)),
                            "recognised": float(np.mean([r["recognised"] for r in per_seed]))})
        print(f"{name:28s} FID per seed " + ", ".join(f"{v:.3f}" for v in fids[name])
              + f"  -> {table[name]['FID']:.3f} +- {table[name]['FID sd']:.3f}")
    return table, images, fids


# --------------------------------------------------------------------------- guidance (4 · 06)
def within_class_spread(features: Tensor, labels: Tensor) -> dict:
    """Diversity among samples that asked for the same class: mean pairwise distance of their features.

    features: (N, D); labels: (N,) the *requested* classes. For each class c with at least two
    samples, spread_c = mean over pairs i != j of ||f_i - f_j||. Returns {"per_class": {c: spread_c},
    "mean": average over classes}. Identical samples give 0; more varied ones a larger number.
    """
    features, labels = torch.as_tensor(features).float(), torch.as_tensor(labels).long().flatten()
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features must be (N, D) with N = len(labels) = {labels.shape[0]}, "
                         f"got {tuple(features.shape)}")
    per_class = {}
    for c in labels.unique().tolist():
        f = features[labels == c]
        n = f.shape[0]
        if n < 2:
            continue
        d = torch.cdist(f, f)                                           # (n, n), zero diagonal
        per_class[c] = (d.sum() / (n * (n - 1))).item()                 # mean over the n(n-1) pairs
    if not per_class:
        raise ValueError("within_class_spread needs at least two samples of some class")
    return {"per_class": per_class, "mean": sum(per_class.values()) / len(per_class)}


def guidance_sweep(generate: Callable[[float], Tensor], scales: Sequence[float], labels: Tensor,
                   judge="digits", real_spread: float | None = None, progress: bool = True) -> tuple[list, dict]:
    """Sample at every scale and measure accuracy and diversity with a judge.

    generate(scale) -> images (N, C, H, W) in [0, 1], image i requested ``labels[i]``.
    Returns (rows, images): rows[k] = {"scale", "accuracy", "recognised", "spread" (and
    "relative_spread" = spread / real_spread when given)}; images[scale] = the samples.
    judge=None: no measurements (rows hold only the scale), for data no judge knows.
    """
    rows, images = [], {}
    for s in tqdm(list(scales), desc="guidance sweep", disable=not progress):
        x = generate(s)
        images[s] = x
        if judge is None:
            rows.append({"scale": s})
            continue
        report = class_report(x, labels, judge=judge)
        spread = within_class_spread(extract_features(x, judge), labels)["mean"]
        row = {"scale": s, "accuracy": report["accuracy"], "recognised": report["recognised"], "spread": spread}
        if real_spread:
            row["relative_spread"] = spread / real_spread
        rows.append(row)
    return rows, images
