"""Train the course's motion module (AnimateDiff's recipe) on the shipped base model and ship it.

    python scripts/train_motion_module.py                          # about 80 minutes on 2 CPU cores
    python scripts/train_motion_module.py --smoke --out /tmp/mm     # about a minute: checks the script
    python scripts/train_motion_module.py --seed 1 --out /tmp/mm1 --work /tmp/mm1_work   # a second seed

Writes ``course_lib/checkpoints/shapes_video/`` (``--out``; load it with
:func:`course_lib.diffusion.video.load_video_model`):

    frame_unet.safetensors     the base U-Net adapted to single video frames (float16; AnimateDiff v3
                               calls this stage its "domain adapter")
    motion_module.safetensors  the temporal layers and the motion embedding (``temporal_state_dict``)
    config.json                what ``VideoUNet`` is built with, and the sampling settings
    metrics.json, README.md    the numbers below, wall times, the model card; samples.gif

Three stages, all on moving-shapes clips with captions "a large red circle moves left" (the
appearance goes to the frozen text encoder, the direction to the temporal layers):
1. the base U-Net fine-tuned on single frames (the base only drew objects near its 3 x 3 grid
   centres; clip frames are anywhere), then rounded to float16 and frozen: what ships is what
   stage 2 was trained on;
2. zero-initialised temporal blocks (``VideoUNet``) trained with ``video_loss``: half the clips with
   no frame given, a quarter with the first frame (image-to-video), a quarter with the first and the
   last (interpolation); caption and motion each dropped 10 % (guidance); t = T u^(1/3) (noise shift).
   Notebook 4 · 10 trains the same recipe for 400 steps on 4,000 clips; this runs 8,000 on 16,000;
3. the temporal layers 2,000 more steps on noise that moves with each clip's object (``warped_noise``
   along its true path, rho ~ U(0, 1) per clip; "How I Warped Your Noise", Go-with-the-Flow), half the
   captions partial ("a large circle", "a red shape"): without it the module moves what the caption
   names but does not keep what the caption leaves open (notebook 4 · 10, section 8). The module
   samples with rho = ``warp`` of its config.json, the noise moving at a speed drawn from the world's
   prior (read off the given frames for interpolation).

Measured on 64 clips no stage trained on (render seed 999, as the notebook), DDIM 20 steps,
eta 1, guidance from the base's card: text-to-video, image-to-video and interpolation, read by the
course's clip judge (``course_lib.eval.video.VIDEO_JUDGE``, the silhouette judge; docs/judges.md).

Interrupted? Run the same command again: every stage resumes from its checkpoint in ``--work``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from course_lib.data.moving import DIRECTIONS, leave_open, render_moving_shapes  # noqa: E402
from course_lib.device import get_device  # noqa: E402
from course_lib.diffusion.ddpm import ddpm_loss  # noqa: E402
from course_lib.diffusion.export import BASE_MODEL_DIR, CourseTextToImagePipeline, model_from_pipeline  # noqa: E402
from course_lib.diffusion.video import (MOTION_MODULE_DIR, generate_clips, generate_video, given_mask,  # noqa: E402
                                        load_video_model, motion_shifts, split_motion_caption,
                                        video_loss)
from course_lib.eval.video import (VIDEO_JUDGE, centroid_error, clip_frechet_distance, frame_objects,  # noqa: E402
                                   video_report, video_verdicts)
from course_lib.models.temporal import VideoUNet  # noqa: E402
from course_lib.models.unet import count_parameters  # noqa: E402
from course_lib.train import fit  # noqa: E402

FULL = dict(seed=0, n_train=16000, frames=8, image_size=32,
            adapt_steps=1500, adapt_batch=64, adapt_lr=3e-4,
            video_steps=8000, video_batch=8, video_lr=1e-3, warmup_steps=100, ema_decay=0.999,
            motion_dim=64, num_heads=4, p_drop_caption=0.1, p_drop_motion=0.1, noise_shift=3.0,
            warp_steps=2000, warp_lr=1e-3, warp_ema_decay=0.995, p_partial=0.5, warp=1.0,
            n_eval=64, eval_seed=999, ddim_steps=20, eta=1.0)
SMOKE = dict(FULL, n_train=64, adapt_steps=4, adapt_batch=16, video_steps=4, video_batch=4, warmup_steps=1,
             warp_steps=4, n_eval=4, ddim_steps=3)


def encode_clips(base, clips, frames: int) -> tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor]:
    """Scaled latents (N, T, 4, 16, 16), the appearance vocabulary, and each clip's caption and direction ids."""
    appearance, directions = zip(*(split_motion_caption(c) for c in clips.captions))
    vocab = sorted(set(appearance))
    with torch.no_grad():
        z = torch.cat([base.encode_images(x * 2 - 1) for x in clips.videos.flatten(0, 1).split(1024)])
    z = z.view(len(clips.captions), frames, *z.shape[1:])
    ids = torch.tensor([vocab.index(a) for a in appearance], device=z.device)
    return z, vocab, ids, torch.tensor(directions, device=z.device)


def evaluate(base, video_unet: VideoUNet, cfg: dict, guidance: float) -> tuple[dict, dict]:
    """Text-to-video, image-to-video and interpolation on ``n_eval`` fresh clips, and the per-frame baseline."""
    clips = render_moving_shapes(cfg["n_eval"], frames=cfg["frames"], size=cfg["image_size"], seed=cfg["eval_seed"])

    def make(mode="none", temporal=True, captions=None):   # the per-frame baseline: independent noise per frame
        return generate_clips(base, video_unet, clips, mode, seed=cfg["eval_seed"] + 7, guidance_scale=guidance,
                              steps=cfg["ddim_steps"], eta=cfg["eta"], temporal=temporal, captions=captions)

    out, made = {}, {}
    made["per_frame"], made["t2v"] = make(temporal=False), make()
    made["i2v"], made["interp"] = make("first"), make("first_last")
    any_size = [leave_open(c, "size") for c in clips.captions]       # each frame may draw either size
    out["size_open"] = {"per_frame_flicker_rate": video_report(make(temporal=False, captions=any_size),
                                                               clips.captions)["flicker_rate"],
                        "t2v_flicker_rate": video_report(make(captions=any_size), clips.captions)["flicker_rate"]}
    out["real"] = video_report(clips.videos, clips.captions)
    out["per_frame"] = video_report(made["per_frame"], clips.captions)
    out["t2v"] = video_report(made["t2v"], clips.captions)
    fd_base = clip_frechet_distance(clips.videos, made["per_frame"])
    fd_video = clip_frechet_distance(clips.videos, made["t2v"])
    out["t2v"]["frechet_ratio_baseline_to_video"] = fd_base / fd_video
    out["i2v"] = video_report(made["i2v"], clips.captions)
    out["i2v"]["kept_shape_colour"] = video_verdicts(made["i2v"], clips.captions)["kept"].float().mean().item()
    true_track = frame_objects(clips.videos)["centroid"]
    out["interp"] = video_report(made["interp"], clips.captions, true_centers=true_track)
    inner = ~given_mask(cfg["n_eval"], cfg["frames"], "first_last")
    out["interp"]["inner_centroid_error"] = centroid_error(frame_objects(made["interp"])["centroid"], true_track,
                                                           frames=inner)
    rounded = {k: {m: round(x, 4) for m, x in r.items()} for k, r in out.items()}
    return rounded, {**made, "real": clips.videos, "captions": clips.captions}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=MOTION_MODULE_DIR)
    parser.add_argument("--work", type=Path, default=Path("outputs/motion_module"),
                        help="checkpoints while training (resumable)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run that checks the script")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None, help="another training seed (clips and weights)")
    parser.add_argument("--card-only", action="store_true", help="rewrite README.md from metrics.json")
    parser.add_argument("--eval-only", action="store_true",
                        help="score the shipped module again (after a change to the metrics): metrics.json, card")
    parser.add_argument("--second-seed", type=Path, metavar="FOLDER",
                        help="copy the results of another training seed's --out FOLDER into the card")
    args = parser.parse_args()
    if args.second_seed:
        other = json.loads((args.second_seed / "metrics.json").read_text())
        record = json.loads((args.out / "metrics.json").read_text())
        record["second_seed"] = {key: other[key] for key in ("config", "results", "times", "threads", "date")}
        (args.out / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")
        write_model_card(args.out, record)
        return 0
    if args.card_only:
        write_model_card(args.out, json.loads((args.out / "metrics.json").read_text()))
        return 0
    if args.eval_only:
        return evaluate_shipped(args.out, args.threads)
    cfg = dict(SMOKE if args.smoke else FULL)
    if args.seed is not None:
        cfg["seed"] = args.seed
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work / ("smoke" if args.smoke else "full")
    work.mkdir(parents=True, exist_ok=True)
    wall, times = time.perf_counter(), {}
    T = cfg["frames"]

    device = get_device()
    base = load_base(device)
    guidance = json.loads((BASE_MODEL_DIR / "metrics.json").read_text())["guidance_scale"]
    clips = render_moving_shapes(cfg["n_train"], frames=T, size=cfg["image_size"], seed=cfg["seed"] + 100)
    latents, vocab, caption_id, direction_id = encode_clips(base, clips, T)       # on the device
    with torch.no_grad():
        context_table, mask_table = base.encode_prompt(vocab + [""])     # the last row: the empty caption
    empty = len(vocab)
    print(f"{cfg['n_train']} training clips of {T} frames, {len(vocab)} appearance captions", flush=True)

    video_unet = train_frames_and_motion(base, cfg, work, latents, caption_id, direction_id, context_table,
                                         mask_table, empty, times)
    start = time.perf_counter()
    warp_stage(base, video_unet, clips, latents, caption_id, direction_id, vocab, cfg, work)
    times["warp_stage_s"] = round(time.perf_counter() - start, 1)
    frame_unet = base.unet
    video_unet.eval().warp = cfg["warp"]          # sampled as it was trained (load_video_model reads config.json)

    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in frame_unet.state_dict().items()},
              str(args.out / "frame_unet.safetensors"))
    save_file({k: v.detach().contiguous() for k, v in video_unet.temporal_state_dict().items()},
              str(args.out / "motion_module.safetensors"))
    config = {"frames": T, "motion_classes": len(DIRECTIONS), "motion_dim": cfg["motion_dim"],
              "num_heads": cfg["num_heads"], "conv": True, "image_size": cfg["image_size"],
              "guidance_scale": guidance, "ddim_steps": cfg["ddim_steps"], "eta": cfg["eta"],
              "warp": cfg["warp"]}
    (args.out / "config.json").write_text(json.dumps(config, indent=1) + "\n")

    reloaded = load_video_model(base, args.out)        # what a learner loads gives the same clips
    check = [generate_video(base, m, ["a large red circle moves right"], guidance_scale=guidance, steps=3,
                            generator=torch.Generator().manual_seed(0)) for m in (video_unet, reloaded)]
    assert torch.equal(*check), "the reloaded motion module differs from the trained one"

    start = time.perf_counter()
    results, made = evaluate(base, video_unet, cfg, guidance)
    times["eval_s"] = round(time.perf_counter() - start, 1)
    draw_samples(made, args.out)
    times["total_s"] = round(time.perf_counter() - wall, 1)
    record = {"config": cfg, "results": results, "times": times, "sampling": config,
              "trainable_weights": count_parameters(video_unet),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "python": platform.python_version(),
              "threads": torch.get_num_threads(), "device": "cpu", "smoke": args.smoke}
    (args.out / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")
    write_model_card(args.out, record)
    print(json.dumps({"results": results, "times": times}, indent=1))
    return 0


def partial_captions(appearance: str) -> list[str]:
    """The 7 captions that leave some of "a <size> <colour> <shape>" open: "a large circle", "a red shape", ...
    (``leave_open``; bit 0 of k opens the size, bit 1 the colour, bit 2 the shape)."""
    keys = ("size", "colour", "shape")
    return [leave_open(f"{appearance} moves left", *(key for i, key in enumerate(keys) if k >> i & 1))
            .removesuffix(" moves left") for k in range(1, 8)]


def random_given(batch: int, frames: int) -> torch.Tensor:
    """(B, T) bool, the frames handed in clean for one training batch: none for half the clips, the
    first for a quarter (image-to-video), the first and the last for a quarter (interpolation)."""
    u = torch.rand(batch)
    given = torch.zeros(batch, frames, dtype=torch.bool)
    given[u < 0.5, 0] = True
    given[u < 0.25, -1] = True
    return given


def warp_stage(base, video_unet: VideoUNet, clips, latents, caption_id, direction_id, vocab, cfg, work) -> None:
    """Stage 3: the temporal layers on noise warped along each clip's true path, half the captions partial."""
    T = cfg["frames"]
    table = vocab + [p for a in vocab for p in partial_captions(a)] + [""]
    with torch.no_grad():
        context, mask = base.encode_prompt(table)
    empty, n_vocab = len(table) - 1, len(vocab)
    scale = latents.shape[-1] / cfg["image_size"]
    shifts = motion_shifts(clips.attrs["direction"], clips.speeds, T, scale).to(latents.device)

    def loss(model, batch):
        z, cap, motion, path = batch
        B = len(z)
        u = torch.rand(B).to(z.device)
        partial = n_vocab + cap * 7 + torch.randint(0, 7, (B,)).to(z.device)
        cap = torch.where(u < cfg["p_drop_caption"], empty, torch.where(u < cfg["p_drop_caption"] + cfg["p_partial"],
                                                                        partial, cap))
        motion = torch.where(torch.rand(B).to(z.device) < cfg["p_drop_motion"], model.null_motion, motion)
        return video_loss(model, z, base.schedule, context[cap], mask[cap], motion, random_given(B, T),
                          noise_shift=cfg["noise_shift"], shifts=path.cpu(), rho=torch.rand(B))

    optimizer = torch.optim.AdamW(video_unet.temporal_parameters(), lr=cfg["warp_lr"], weight_decay=0.0)
    data = TensorDataset(latents, caption_id, direction_id, shifts)
    run = fit(video_unet, loss, data, steps=cfg["warp_steps"], batch_size=cfg["video_batch"], optimizer=optimizer,
              warmup_steps=cfg["warmup_steps"], grad_clip=1.0, ema_decay=cfg["warp_ema_decay"], seed=cfg["seed"],
              checkpoint=work / "warp.safetensors", checkpoint_every=250, log_every=50)
    video_unet.load_state_dict(run.ema_model.temporal_state_dict(), strict=False)


def train_frames_and_motion(base, cfg, work, latents, caption_id, direction_id, context_table, mask_table, empty,
                            times) -> VideoUNet:
    """Stages 1 and 2; leaves the frozen float16-rounded frame U-Net in ``base.unet``."""
    T = cfg["frames"]

    # Stage 1: the image U-Net on single frames, their appearance captions (10 % empty).
    def frame_loss(unet, batch):
        (idx,) = batch
        clip, frame = idx // T, idx % T
        drop = torch.rand(len(idx)).to(idx.device) < cfg["p_drop_caption"]
        cap = torch.where(drop, empty, caption_id[clip])
        return ddpm_loss(unet, latents[clip, frame], base.schedule,
                         cond={"context": context_table[cap], "context_mask": mask_table[cap]})

    unet = base.unet.requires_grad_(True)
    start = time.perf_counter()
    run = fit(unet, frame_loss, TensorDataset(torch.arange(cfg["n_train"] * T)), steps=cfg["adapt_steps"],
              batch_size=cfg["adapt_batch"], lr=cfg["adapt_lr"], warmup_steps=cfg["warmup_steps"], grad_clip=1.0,
              ema_decay=cfg["ema_decay"], seed=cfg["seed"], checkpoint=work / "frames.safetensors",
              checkpoint_every=250, log_every=50)
    times["frame_stage_s"] = round(time.perf_counter() - start, 1)
    frame_unet = run.ema_model.requires_grad_(False).eval()
    with torch.no_grad():                    # ship float16, and train stage 2 on exactly what ships
        for p in frame_unet.parameters():
            p.copy_(p.half().float())
    base.unet = frame_unet

    # Stage 2: the temporal layers only.
    torch.manual_seed(cfg["seed"])
    video_unet = VideoUNet(frame_unet, frames=T, motion_classes=len(DIRECTIONS), motion_dim=cfg["motion_dim"],
                           num_heads=cfg["num_heads"])
    print(f"motion module: {count_parameters(video_unet):,} trainable weights", flush=True)

    def clip_loss(model, batch):
        z, cap, motion = batch
        B = len(z)
        cap = torch.where(torch.rand(B).to(z.device) < cfg["p_drop_caption"], empty, cap)
        motion = torch.where(torch.rand(B).to(z.device) < cfg["p_drop_motion"], model.null_motion, motion)
        return video_loss(model, z, base.schedule, context_table[cap], mask_table[cap], motion, random_given(B, T),
                          noise_shift=cfg["noise_shift"])

    optimizer = torch.optim.AdamW(video_unet.temporal_parameters(), lr=cfg["video_lr"], weight_decay=0.0)
    start = time.perf_counter()
    run = fit(video_unet, clip_loss, TensorDataset(latents, caption_id, direction_id), steps=cfg["video_steps"],
              batch_size=cfg["video_batch"], optimizer=optimizer, warmup_steps=cfg["warmup_steps"], grad_clip=1.0,
              ema_decay=cfg["ema_decay"], seed=cfg["seed"], checkpoint=work / "motion.safetensors",
              checkpoint_every=250, log_every=50)
    times["motion_stage_s"] = round(time.perf_counter() - start, 1)
    # What ships: the frozen frame U-Net and the averaged temporal weights. (The EMA copy's frozen
    # weights went through d w + (1 - d) w at every step, which need not round back to w.)
    video_unet.load_state_dict(run.ema_model.temporal_state_dict(), strict=False)
    return video_unet


def load_base(device):
    """The frozen base model shapes_sd as a TextToImage, on ``device``."""
    base = model_from_pipeline(CourseTextToImagePipeline.from_pretrained(BASE_MODEL_DIR))
    return base.to(device).eval().requires_grad_(False)


def evaluate_shipped(folder: Path, threads: int | None) -> int:
    """Re-run the evaluation of the module in ``folder`` with its recorded settings; keep the rest of the record."""
    if threads:
        torch.set_num_threads(threads)
    record = json.loads((folder / "metrics.json").read_text())
    base = load_base(get_device())
    start = time.perf_counter()
    record["results"], _ = evaluate(base, load_video_model(base, folder), record["config"],
                                    record["sampling"]["guidance_scale"])
    record["evaluated"] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "torch": torch.__version__, "eval_s": round(time.perf_counter() - start, 1)}
    (folder / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")
    write_model_card(folder, record)
    print(json.dumps(record["results"], indent=1))
    return 0


def draw_samples(made: dict, folder: Path) -> None:
    """samples.gif: 8 real clips, then text-to-video, image-to-video and interpolation of the same captions."""
    from course_lib.viz import animate
    rows = [made[k][:8] for k in ("real", "t2v", "i2v", "interp")]
    grid = torch.cat(rows).transpose(0, 1)              # (T, 32, 3, S, S): one 4 x 8 grid per frame
    animate(grid, fps=6, save=folder / "samples.gif", nrow=8)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _second_seed(record: dict) -> str:
    """The card's paragraph on another training seed (``--second-seed``), or nothing."""
    if "second_seed" not in record:
        return ""
    other = record["second_seed"]
    r, t = other["results"], other["times"]
    cells = [("text-to-video direction", _pct(r["t2v"]["direction_accuracy"])), ("R²", f"{r['t2v']['track_r2']:.3f}"),
             ("flicker", _pct(r["t2v"]["flicker_rate"])),
             ("Fréchet ratio", f"{r['t2v']['frechet_ratio_baseline_to_video']:.2f}x"),
             ("image-to-video kept", _pct(r["i2v"]["kept_shape_colour"])),
             ("interpolation flicker", _pct(r["interp"]["flicker_rate"])),
             ("in-between error", f"{r['interp']['inner_centroid_error']:.2f} px")]
    threads = f"{other['threads']} thread" + ("s" if other["threads"] > 1 else "")
    recipe = "" if "warp_steps" in other["config"] else "stages 1 and 2 only, trained before stage 3 was added; "
    return (f"**A second training seed** (`--seed {other['config']['seed']}`, not shipped; {recipe}"
            f"{t['total_s'] / 60:.0f} min "
            f"on {threads} beside other work, {other['date'][:10]}), the same {other['config']['n_eval']} clips "
            "and judge: "
            + ", ".join(f"{name} {value}" for name, value in cells) + ".\n\n")


def _size_open(results: dict) -> str:
    """The card's sentence on captions that leave the size open, or nothing for an older record."""
    if "size_open" not in results:
        return ""
    r = results["size_open"]
    return ("With the size left open (\"a red circle moves left\": each frame may draw either size), the judged "
            f"identity changes within {_pct(r['t2v_flicker_rate'])} of text-to-video clips and "
            f"{_pct(r['per_frame_flicker_rate'])} of the per-frame image model's.\n\n")


def _warp_stage(record: dict) -> str:
    """The card's sentence on stage 3 (noise that moves with the object); a two-stage module has none."""
    cfg, times = record["config"], record["times"]
    if "warp_stage_s" not in times:
        return ""
    history = (f" Stages 1 and 2 of these weights were trained on {record['stages_1_2']['date'][:10]} (torch "
               f"{record['stages_1_2']['torch']}); stage 3 was added on {record['date'][:10]}, starting from them "
               "(a run from scratch does all three in one go)." if "stages_1_2" in record else "")
    return (f"Stage 3: {cfg['warp_steps']} more steps (lr {cfg['warp_lr']:g}, EMA {cfg['warp_ema_decay']}) on noise "
            f"warped along each clip's true path, rho ~ U(0, 1), {cfg['p_partial']:.0%} of captions partial; it "
            f"samples with rho = {cfg['warp']:g}, the noise moving at a speed drawn from the world's prior (read off "
            f"the given frames for interpolation).{history}\n")


def write_model_card(folder: Path, record: dict) -> None:
    """README.md of the motion module folder, from its metrics.json record."""
    cfg, r, times = record["config"], record["results"], record["times"]
    rows = [("direction accuracy (chance 25 %)", "direction_accuracy"), ("track R²", "track_r2"),
            ("identity flicker (clips)", "flicker_rate"), ("shape, every frame", "shape_accuracy"),
            ("colour, every frame", "colour_accuracy")]
    head = "| | real clips | per-frame image model | text-to-video | image-to-video | interpolation |"
    lines = [head, "|---" * 6 + "|"]
    for name, key in rows:
        cells = [r[k][key] for k in ("real", "per_frame", "t2v", "i2v", "interp")]
        fmt = (lambda x: f"{x:.3f}") if key == "track_r2" else _pct
        lines.append(f"| {name} | " + " | ".join(fmt(c) for c in cells) + " |")
    size_mb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2 ** 20
    s = record["sampling"]["guidance_scale"]
    frame_stage = (f"the base U-Net fine-tuned on single frames ({cfg['adapt_steps']} steps of {cfg['adapt_batch']} "
                   f"frames, lr {cfg['adapt_lr']:g}, EMA), float16")
    motion = (f"temporal attention + temporal convolution after every spatial block, motion embedding (adaLN): "
              f"{record['trainable_weights']:,} weights")
    world = f"render_moving_shapes({cfg['n_train']}, frames={cfg['frames']}, seed={cfg['seed'] + 100})"
    stages = [("frame stage", "frame_stage_s"), ("motion stage", "motion_stage_s"), ("warp stage", "warp_stage_s")]
    whole = "stage 3's run" if "stages_1_2" in record else "all"
    wall = ", ".join(f"{name} {times[key] / 60:.0f} min" for name, key in stages if key in times)
    wall += f", {whole} with evaluation {times['total_s'] / 60:.0f} min ({record['date']}, torch {record['torch']})"
    i2v, interp = r["i2v"]["kept_shape_colour"], r["interp"]["inner_centroid_error"]
    evaluated = (f", scored again on {record['evaluated']['date'][:10]} (torch {record['evaluated']['torch']}) "
                 "after a change to the metrics or to the judge" if "evaluated" in record else "")
    text = f"""# shapes_video: the course's motion module

Temporal layers for the course's base model (`shapes_sd`), trained the way AnimateDiff trains its
motion modules, by `scripts/train_motion_module.py`. Load it beside the base:

```python
import torch
from course_lib.diffusion.export import BASE_MODEL_DIR, CourseTextToImagePipeline, model_from_pipeline
from course_lib.diffusion.video import load_video_model, generate_video
base = model_from_pipeline(CourseTextToImagePipeline.from_pretrained(BASE_MODEL_DIR))
video_unet = load_video_model(base)        # frame-adapted U-Net + motion module
clips = generate_video(base, video_unet, ["a large red circle moves right"], guidance_scale={s:g},
                       steps={cfg['ddim_steps']}, generator=torch.Generator().manual_seed(0))   # (1, T, 3, 32, 32)
```

| file | what |
|---|---|
| `frame_unet.safetensors` | {frame_stage} |
| `motion_module.safetensors` | {motion} |
| `config.json` | how `VideoUNet` is built, and the sampling settings |

{size_mb:.1f} MB of weights. Trained on `{world}`:
{cfg['video_steps']} steps of {cfg['video_batch']} clips (AdamW, lr {cfg['video_lr']:g}, cosine, EMA
{cfg['ema_decay']}), noise shift t = T u^(1/{cfg['noise_shift']:g}), half the clips with no frame given, a quarter
with the first, a quarter with the first and last; caption and motion each dropped {cfg['p_drop_caption']:.0%}.
{_warp_stage(record)}Wall time on {record['threads']} CPU threads: {wall}.

## Measured

{cfg['n_eval']} clips no stage trained on (`render_moving_shapes(seed={cfg['eval_seed']})`), DDIM
{cfg['ddim_steps']} steps, eta {cfg['eta']:g}, guidance {s:g}, noise warp {cfg.get('warp', 0):g}, read by the course's
clip judge (`{VIDEO_JUDGE}`, `course_lib.eval.video.VIDEO_JUDGE`; docs/judges.md){evaluated}. The per-frame image model
samples every frame with its own noise (no warp).

{chr(10).join(lines)}

{_size_open(r)}Clip Fréchet distance on judge features (not FVD): the per-frame baseline's is
{r['t2v']['frechet_ratio_baseline_to_video']:.2f}x the text-to-video model's. Image-to-video keeps the given
object's shape and colour in every frame in {_pct(i2v)} of clips; interpolation's
in-between frames are {interp:.2f} px from the true path on average.

{_second_seed(record)}![samples: real clips, text-to-video, image-to-video, interpolation (rows of 8)](samples.gif)
"""
    (folder / "README.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
