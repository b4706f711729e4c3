"""Train the two judges that ship in ``course_lib/checkpoints/`` (CPU, deterministic, minutes).

    python scripts/train_judges.py                   # both judges
    python scripts/train_judges.py --which digits    # or: shapes

For each judge it writes ``judge_<name>.safetensors`` (float16 weights + config) and
``judge_<name>.json`` (held-out accuracies, the training config, the date, the wall time).
Accuracies are measured after re-reading the saved file, so they describe what ships.

- digits: the "train" split of DigitsDataset (about 1440 images), augmented with small
  rotations, shifts and scalings; held out: the "test" split. Target: >= 97 % accuracy.
- shapes: single-object render_shapes(seed=1); held out: render_shapes(seed=2).
  Target: >= 99 % on every attribute.

Generated images are blurrier and noisier than real ones, so both judges train on lightly
degraded copies too (noise, blur, contrast), which keeps their features meaningful there.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from course_lib.data import COLOURS, POSITIONS, SHAPE_KINDS, SIZES, DigitsDataset, render_shapes  # noqa: E402
from course_lib.device import seed_everything  # noqa: E402
from course_lib.eval.judges import CHECKPOINT_DIR, DigitsJudge, ShapesJudge, load_judge_file, save_judge  # noqa: E402

DIGITS = dict(seed=0, image_size=16, widths=[16, 32, 64], feature_dim=64, depth=1,
              epochs=40, batch_size=64, lr=3e-3, weight_decay=1e-4,
              max_degrees=12.0, max_shift=0.12, scale=(0.9, 1.1),
              max_noise=0.08, max_blur=0.8, p_degrade=0.5)
SHAPES = dict(seed=0, train_seed=1, test_seed=2, n_train=12000, n_test=3000, image_size=32,
              widths=[16, 32, 64, 64], feature_dim=128, depth=1,
              epochs=10, batch_size=64, lr=3e-3, weight_decay=1e-4,
              max_degrees=0.0, max_shift=0.04, scale=(0.95, 1.05),
              max_noise=0.08, max_blur=0.8, p_degrade=0.5)


# --------------------------------------------------------------------------- augmentation
def random_affine(x: torch.Tensor, g: torch.Generator, max_degrees: float, max_shift: float,
                  scale: tuple[float, float]) -> torch.Tensor:
    """Rotate by +-max_degrees, zoom by a factor in ``scale`` and shift by +-max_shift of
    the half-width, one draw per image. x: (N, C, H, W); background 0 fills the borders."""
    n = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)  # noqa: E731
    angle = u(-max_degrees, max_degrees) * math.pi / 180
    zoom = u(*scale)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, u(-max_shift, max_shift) * 2], 1),
                         torch.stack([sin, cos, u(-max_shift, max_shift) * 2], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_blur(x: torch.Tensor, g: torch.Generator, max_sigma: float) -> torch.Tensor:
    """Gaussian blur with sigma ~ U(0, max_sigma) pixels per image (5x5 kernel)."""
    n, c, h, w = x.shape
    sigma = (max_sigma * torch.rand(n, generator=g)).clamp(min=1e-3).view(n, 1, 1)
    d = torch.arange(-2, 3, dtype=x.dtype)
    k1 = torch.exp(-d.view(1, 5) ** 2 / (2 * sigma.view(n, 1) ** 2))       # (N, 5)
    k2 = k1[:, :, None] * k1[:, None, :]                                    # (N, 5, 5)
    k2 = (k2 / k2.sum(dim=(1, 2), keepdim=True)).repeat_interleave(c, 0)  # (N*C, 5, 5)
    out = F.conv2d(x.reshape(1, n * c, h, w), k2.unsqueeze(1), padding=2, groups=n * c)
    return out.view(n, c, h, w)


def degrade(x: torch.Tensor, g: torch.Generator, max_noise: float, max_blur: float,
            p: float) -> torch.Tensor:
    """With probability p per image: blur, contrast/brightness jitter and Gaussian noise."""
    n = x.shape[0]
    hit = (torch.rand(n, generator=g) < p).view(n, 1, 1, 1)
    y = random_blur(x, g, max_blur)
    contrast = 0.85 + 0.25 * torch.rand(n, 1, 1, 1, generator=g)
    brightness = 0.05 * (2 * torch.rand(n, 1, 1, 1, generator=g) - 1)
    noise = max_noise * torch.rand(n, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    y = y * contrast + brightness + noise
    return torch.where(hit, y, x).clamp(0, 1)


def augment(x: torch.Tensor, g: torch.Generator, cfg: dict) -> torch.Tensor:
    x = random_affine(x, g, cfg["max_degrees"], cfg["max_shift"], tuple(cfg["scale"]))
    return degrade(x, g, cfg["max_noise"], cfg["max_blur"], cfg["p_degrade"])


# --------------------------------------------------------------------------- training
def loss_fn(logits, targets) -> torch.Tensor:
    """Cross-entropy; summed over the heads of a multi-head judge."""
    if isinstance(logits, dict):
        return sum(F.cross_entropy(logits[k], targets[k]) for k in logits)
    return F.cross_entropy(logits, targets)


def _take(targets, idx):
    return {k: v[idx] for k, v in targets.items()} if isinstance(targets, dict) else targets[idx]


def train(judge, images: torch.Tensor, targets, cfg: dict) -> None:
    """AdamW with a one-cycle schedule over ``cfg["epochs"]`` augmented passes."""
    g = torch.Generator().manual_seed(cfg["seed"])
    n, bs = images.shape[0], cfg["batch_size"]
    steps = cfg["epochs"] * math.ceil(n / bs)
    opt = torch.optim.AdamW(judge.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=steps)
    judge.train()
    for epoch in range(cfg["epochs"]):
        perm, total = torch.randperm(n, generator=g), 0.0
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            loss = loss_fn(judge.logits(augment(images[idx], g, cfg)), _take(targets, idx))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"  epoch {epoch + 1:2d}/{cfg['epochs']}  loss {total / n:.4f}", flush=True)
    judge.eval()


@torch.no_grad()
def accuracy(judge, images: torch.Tensor, targets) -> dict[str, float]:
    """Held-out accuracy: {"accuracy": a} for digits, {head: a} for shapes."""
    if not isinstance(targets, dict):
        return {"accuracy": (judge.predict(images)[0] == targets).float().mean().item()}
    labels = judge.predict(images)[0]
    return {k: (labels[k] == targets[k]).float().mean().item() for k in targets}


def degraded(images: torch.Tensor, seed: int = 123) -> torch.Tensor:
    """A fixed mildly degraded copy of held-out images (noise 0.05, blur sigma 0.5)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.arange(-2, 3, dtype=images.dtype)
    k = torch.exp(-d ** 2 / (2 * 0.5 ** 2))
    k2 = (k[:, None] * k[None, :]) / k.sum() ** 2
    c = images.shape[1]
    x = F.conv2d(images, k2.expand(c, 1, 5, 5).contiguous(), padding=2, groups=c)
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)


@torch.no_grad()
def set_feature_scale(judge, images: torch.Tensor) -> None:
    """Make the features have root-mean-square 1 on the (un-augmented) training images."""
    h = torch.cat([judge.hidden(images[i:i + 512]) for i in range(0, len(images), 512)])
    judge.feature_scale.fill_(h.square().mean().sqrt().item())


def finish(name: str, judge, cfg: dict, test_images, test_targets, seconds: float, out: Path) -> dict:
    """Save the judge, re-read it, measure held-out accuracy and write the JSON report."""
    path = save_judge(judge, out / f"judge_{name}.safetensors")
    shipped = load_judge_file(path)
    report = {"judge": name,
              "held_out": accuracy(shipped, test_images, test_targets),
              "held_out_degraded": accuracy(shipped, degraded(test_images), test_targets),
              "train_seconds": round(seconds, 1),
              "file_kib": round(path.stat().st_size / 1024, 1),
              "parameters": sum(p.numel() for p in shipped.parameters()),
              "feature_scale": shipped.feature_scale.item(),
              "judge_config": shipped.config(),
              "training_config": cfg,
              "date": datetime.date.today().isoformat(),
              "torch": torch.__version__, "python": platform.python_version()}
    (out / f"judge_{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{name}: held-out {report['held_out']}, degraded {report['held_out_degraded']}, "
          f"{seconds:.0f} s, {report['file_kib']} KiB -> {path}")
    return report


def train_digits(out: Path, cfg: dict = DIGITS) -> dict:
    seed_everything(cfg["seed"])
    train_set = DigitsDataset("train", size=cfg["image_size"], seed=0)
    test_set = DigitsDataset("test", size=cfg["image_size"], seed=0)
    judge = DigitsJudge(native_size=cfg["image_size"], widths=tuple(cfg["widths"]),
                        feature_dim=cfg["feature_dim"], depth=cfg["depth"])
    start = time.perf_counter()
    train(judge, train_set.images, train_set.labels, cfg)
    set_feature_scale(judge, train_set.images)
    return finish("digits", judge, cfg, test_set.images, test_set.labels,
                  time.perf_counter() - start, out)


def train_shapes(out: Path, cfg: dict = SHAPES) -> dict:
    seed_everything(cfg["seed"])
    train_set = render_shapes(cfg["n_train"], size=cfg["image_size"], seed=cfg["train_seed"])
    test_set = render_shapes(cfg["n_test"], size=cfg["image_size"], seed=cfg["test_seed"])
    heads = {"shape": len(SHAPE_KINDS), "colour": len(COLOURS), "size": len(SIZES),
             "position": len(POSITIONS)}
    names = {"shape": list(SHAPE_KINDS), "colour": list(COLOURS), "size": list(SIZES),
             "position": list(POSITIONS)}
    judge = ShapesJudge(heads, native_size=cfg["image_size"], widths=tuple(cfg["widths"]),
                        feature_dim=cfg["feature_dim"], depth=cfg["depth"], class_names=names)
    targets = {k: train_set.attrs[k] for k in heads}
    start = time.perf_counter()
    train(judge, train_set.images, targets, cfg)
    set_feature_scale(judge, train_set.images)
    return finish("shapes", judge, cfg, test_set.images, {k: test_set.attrs[k] for k in heads},
                  time.perf_counter() - start, out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=["digits", "shapes", "all"], default="all")
    parser.add_argument("--out", type=Path, default=CHECKPOINT_DIR,
                        help="folder for the files (default: course_lib/checkpoints)")
    args = parser.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    if args.which in ("digits", "all"):
        train_digits(args.out)
    if args.which in ("shapes", "all"):
        train_shapes(args.out)


if __name__ == "__main__":
    main()
