"""Train the course's small Stable Diffusion and ship it as a `diffusers` pipeline folder.

    python scripts/train_base_model.py                      # about an hour on 2 CPU cores
    python scripts/train_base_model.py --smoke --out /tmp/sd   # about a minute: checks the script
    python scripts/train_base_model.py --seed 1 --out /tmp/sd1 --work /tmp/sd1_work   # a second seed

Writes ``course_lib/checkpoints/shapes_sd/`` (``--out``): the pipeline (``model_index.json``,
``unet/``, ``vae/``, ``text_encoder/``, ``scheduler/``, safetensors + JSON), ``metrics.json``
(the numbers below, the config, versions, wall times) and ``README.md`` (the model card). Load it
the way a learner loads Stable Diffusion::

    pipe = CourseTextToImagePipeline.from_pretrained(course_lib.diffusion.export.BASE_MODEL_DIR)

What it trains (Phase 4 · 07's model, larger, longer, and on one *and* two objects):
- the world: ``render_shapes(n, seed=0, two_objects=0.5)``, minus every image whose caption
  ``is_held_out`` (about 1 in 10 of the captions, one-object and two-object alike);
- a latent autoencoder (32 x 32 x 3 -> 16 x 16 x 4, object pixels weighted 11x in the loss);
- a text encoder and a cross-attention U-Net trained together on the scaled latents (eps
  prediction), with classifier-free dropout: the empty caption 10 % of the time, and for one-object
  images a partial caption ("a red shape") 20 % of the time. The tokenizer knows RESERVED_WORDS
  (``sks`` ...), which no training caption contains: DreamBooth binds one of them to a new subject.

What it measures, read by the course's shapes judge (``SHAPES_JUDGE``) through ShapesEval (docs/judges.md):
the guidance scale is chosen on captions it trained on; the reported numbers are on held-out
captions, sampled with DDIM (eta = 1, 20 steps). The reconstruction ceiling is ShapesEval on the
autoencoder's reconstructions of real renders of the same held-out captions.

Interrupted? Run the same command again: both trainings resume from their checkpoints in ``--work``.
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
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from course_lib.data import render_shapes  # noqa: E402
from course_lib.diffusion.export import (BASE_MODEL_DIR, CourseTextToImagePipeline, export_pipeline,  # noqa: E402
                                         model_from_pipeline)
from course_lib.diffusion.latent import encode_dataset, latent_scale_factor  # noqa: E402
from course_lib.diffusion.schedule import NoiseSchedule, to_model_range  # noqa: E402
from course_lib.diffusion.text2image import (RESERVED_WORDS, TextToImage, is_held_out, make_tokenizer,  # noqa: E402
                                             training_captions)
from course_lib.eval import attribute_accuracy  # noqa: E402
from course_lib.eval.judges import SHAPES_JUDGE  # noqa: E402
from course_lib.eval.shapes_eval import find_objects, shapes_eval  # noqa: E402
from course_lib.models.autoencoder import LatentAutoencoder  # noqa: E402
from course_lib.models.clip import TextEncoder  # noqa: E402
from course_lib.models.unet import UNet, count_parameters  # noqa: E402
from course_lib.train import fit  # noqa: E402

JUDGE = SHAPES_JUDGE                # the course's shapes judge (docs/judges.md)
FULL = dict(seed=0, n_train=40000, two_objects=0.5, image_size=32,
            ae_width=16, ae_levels=1, ae_steps=1500, ae_lr=3e-3, foreground_weight=10.0,
            unet_base=32, mults=[1, 2, 3], attn_levels=[1, 2], text_dim=64, text_depth=2, context_length=12,
            T=1000, steps=6000, batch_size=128, lr=1e-3, warmup_steps=200, ema_decay=0.999,
            p_empty=0.1, p_partial=0.2,
            ddim_steps=20, eta=1.0, scales=[2.0, 3.0, 5.0], n_sweep=100, n_eval=500)
SMOKE = dict(FULL, n_train=600, ae_steps=20, unet_base=16, steps=20, batch_size=32, warmup_steps=5,
             ddim_steps=4, scales=[2.0], n_sweep=16, n_eval=24)


def base_captions(attrs: torch.Tensor, captions: list[str], p_empty: float, p_partial: float) -> list[str]:
    """Training captions of a mixed batch: one-object rows (``captions[i]`` has no relation) get
    ``training_captions``' dropout (empty / partial / full); two-object rows the empty caption
    with probability ``p_empty``, else their full caption."""
    one = training_captions(attrs, p_empty=p_empty, p_partial=p_partial)
    empty = (torch.rand(len(captions)) < p_empty).tolist()
    return [o if " at the " in c else ("" if e else c) for o, c, e in zip(one, captions, empty)]


def eval_captions(n: int, held_out: bool, two: bool, seed: int) -> list[str]:
    """``n`` grammar captions, one- or two-object, all held out (or all seen in training), drawn
    from fresh renders of the world."""
    out: list[str] = []
    s = seed
    while len(out) < n:
        world = render_shapes(max(4 * n, 200), seed=s, two_objects=1.0 if two else 0.0)
        out += [c for c in world.captions if is_held_out(c) == held_out]
        s += 1
    return out[:n]


def generate(model: TextToImage, prompts: list[str], scale: float, cfg: dict, seed: int, chunk: int = 250):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([model.generate(prompts[i:i + chunk], guidance_scale=scale, steps=cfg["ddim_steps"],
                                     eta=cfg["eta"], generator=g) for i in range(0, len(prompts), chunk)])


def single_object_scores(images: torch.Tensor, captions: list[str]) -> dict:
    """One-object captions: the judge's shape, colour, position and all three at once; clean backgrounds."""
    from course_lib.data.shapes import parse_caption
    wanted = [parse_caption(c) for c in captions]
    attrs = {k: torch.tensor([w[k] for w in wanted]) for k in ("shape", "colour", "position")}
    acc = attribute_accuracy(images, attrs, judge=JUDGE)
    acc["clean"] = sum(find_objects(x)[1] for x in images) / len(images)
    return acc


def evaluate(model: TextToImage, cfg: dict, ae: LatentAutoencoder, scale: float | None = None) -> dict:
    """The card's numbers; the guidance scale is the sweep's best unless ``scale`` is given (the shipped one)."""
    out: dict = {}
    start = time.perf_counter()
    seen = eval_captions(cfg["n_sweep"], False, False, 101) + eval_captions(cfg["n_sweep"], False, True, 201)
    sweep = {}
    for s in cfg["scales"]:
        sweep[s] = shapes_eval(generate(model, seen, s, cfg, seed=1), seen, judge=JUDGE)
        print(f"  sweep, seen captions, s = {s:g}: overall {sweep[s]['overall']:.1%}, "
              f"single {sweep[s]['single_object']:.1%}, two {sweep[s]['two_objects']:.1%}", flush=True)
    best = max(cfg["scales"], key=lambda s: sweep[s]["overall"])
    if scale is None:
        scale = best
    elif best != scale:
        print(f"  the sweep now prefers s = {best:g}; the shipped scale s = {scale:g} is kept", flush=True)
    out["sweep"] = {f"{s:g}": {k: v for k, v in r.items() if k != "counts"} for s, r in sweep.items()}
    out["guidance_scale"] = scale

    one = eval_captions(cfg["n_eval"], True, False, 301)
    two = eval_captions(cfg["n_eval"], True, True, 401)
    images = generate(model, one + two, scale, cfg, seed=2)
    report = shapes_eval(images, one + two, judge=JUDGE)
    single = single_object_scores(images[:len(one)], one)
    out["held_out"] = {"shapes_eval": {k: v for k, v in report.items() if k != "counts"},
                       "counts": {k: list(v) for k, v in report["counts"].items()},
                       "single_object_attributes": single,
                       "n_one_object": len(one), "n_two_objects": len(two)}

    real = render_shapes(4 * cfg["n_eval"], seed=501, two_objects=0.5)
    keep = [i for i, c in enumerate(real.captions) if is_held_out(c)][:2 * cfg["n_eval"]]
    x = real.images[keep]
    with torch.no_grad():
        recon = torch.cat([(ae.decode(ae.encode(to_model_range(x[i:i + 256]))).clamp(-1, 1) + 1) / 2
                           for i in range(0, len(x), 256)])
    caps = [real.captions[i] for i in keep]
    out["ceiling"] = {"real": _brief(shapes_eval(x, caps, judge=JUDGE)),
                      "reconstructions": _brief(shapes_eval(recon, caps, judge=JUDGE))}
    out["eval_seconds"] = round(time.perf_counter() - start, 1)
    return out, images, one + two


def _brief(report: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in report.items() if k != "counts"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BASE_MODEL_DIR)
    parser.add_argument("--work", type=Path, default=Path("outputs/base_model"),
                        help="checkpoints while training (resumable)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run that checks the script")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None,
                        help="another training seed (world and weights; the evaluation stays the same); "
                             "give it its own --out and --work")
    parser.add_argument("--card-only", action="store_true", help="rewrite README.md from metrics.json")
    parser.add_argument("--eval-only", action="store_true",
                        help="score the shipped model again with today's judge (its guidance scale kept)")
    args = parser.parse_args()
    if args.eval_only:
        return evaluate_shipped(args.out, args.threads)
    if args.card_only:
        record = json.loads((args.out / "metrics.json").read_text())
        pipe = CourseTextToImagePipeline.from_pretrained(args.out)
        draw_samples(model_from_pipeline(pipe), args.out, record["guidance_scale"], record["config"])
        write_model_card(args.out, record)
        return 0
    cfg = dict(SMOKE if args.smoke else FULL)
    if args.seed is not None:
        cfg["seed"] = args.seed
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work / ("smoke" if args.smoke else "full")
    work.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    times = {}

    world = render_shapes(int(cfg["n_train"] * 1.25), cfg["image_size"], seed=cfg["seed"],
                          two_objects=cfg["two_objects"])
    keep = [i for i, c in enumerate(world.captions) if not is_held_out(c)][:cfg["n_train"]]
    images = world.images[keep]
    captions = [world.captions[i] for i in keep]
    attrs = torch.stack([world.attrs[k][keep] for k in ("shape", "colour", "size", "position")], dim=1)
    n_two = sum(" at the " not in c for c in captions)
    print(f"{len(images)} training images ({n_two} with two objects), {len(set(captions))} distinct captions",
          flush=True)

    torch.manual_seed(cfg["seed"])
    ae = LatentAutoencoder(in_ch=3, latent_ch=4, width=cfg["ae_width"], levels=cfg["ae_levels"])
    start = time.perf_counter()
    fit(ae, lambda m, b: m.loss(to_model_range(b[0]), foreground_weight=cfg["foreground_weight"]),
        TensorDataset(images), steps=cfg["ae_steps"], batch_size=64, lr=cfg["ae_lr"], warmup_steps=30,
        seed=cfg["seed"], checkpoint=work / "autoencoder.safetensors", checkpoint_every=200)
    ae.eval().requires_grad_(False)
    times["autoencoder_s"] = round(time.perf_counter() - start, 1)
    z = encode_dataset(ae, to_model_range(images))
    scale = latent_scale_factor(z)
    print(f"autoencoder: {sum(q.numel() for q in ae.parameters()):,} parameters; latents {tuple(z.shape[1:])}, "
          f"scale {scale:.3f}", flush=True)

    torch.manual_seed(cfg["seed"])
    tokenizer = make_tokenizer(cfg["context_length"], reserved=RESERVED_WORDS)
    text_encoder = TextEncoder(tokenizer.vocab_size, tokenizer.context_length, dim=cfg["text_dim"],
                               depth=cfg["text_depth"], num_heads=4)
    unet = UNet(in_ch=4, base=cfg["unet_base"], mults=tuple(cfg["mults"]), attn_levels=tuple(cfg["attn_levels"]),
                context_dim=cfg["text_dim"])
    model = TextToImage(tokenizer, text_encoder, unet, ae, NoiseSchedule.make("linear", cfg["T"]), scale)
    print(f"U-Net {count_parameters(unet):,} parameters, text encoder {count_parameters(text_encoder):,}",
          flush=True)

    def loss_fn(m, batch):
        latents, a, idx = batch
        return m.loss(latents, base_captions(a, [captions[i] for i in idx.tolist()], cfg["p_empty"],
                                             cfg["p_partial"]))

    start = time.perf_counter()
    run = fit(model, loss_fn, TensorDataset(z * scale, attrs, torch.arange(len(z))), steps=cfg["steps"],
              batch_size=cfg["batch_size"], lr=cfg["lr"], warmup_steps=cfg["warmup_steps"], grad_clip=1.0,
              ema_decay=cfg["ema_decay"], seed=cfg["seed"], checkpoint=work / "text_to_image.safetensors",
              checkpoint_every=250, log_every=50)
    times["text_to_image_s"] = round(time.perf_counter() - start, 1)
    t2i = run.ema_model.eval()

    results, samples, prompts = evaluate(t2i, cfg, ae)
    args.out.mkdir(parents=True, exist_ok=True)
    export_pipeline(t2i, args.out)
    reloaded = CourseTextToImagePipeline.from_pretrained(args.out)
    check = reloaded(prompts[:4], guidance_scale=results["guidance_scale"], num_inference_steps=cfg["ddim_steps"],
                     generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert check.shape == (4, 3, cfg["image_size"], cfg["image_size"])
    draw_samples(t2i, args.out, results["guidance_scale"], cfg)
    times["total_s"] = round(time.perf_counter() - wall, 1)
    record = {"config": cfg, "judge": JUDGE, **results, "times": times,
              "final_loss": run.history["loss"][-1] if run.history.get("loss") else None,
              "parameters": {"unet": count_parameters(unet), "text_encoder": count_parameters(text_encoder),
                             "autoencoder": sum(q.numel() for q in ae.parameters())},
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "python": platform.python_version(),
              "threads": torch.get_num_threads(), "device": "cpu", "smoke": args.smoke}
    (args.out / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")
    write_model_card(args.out, record)
    print(json.dumps({k: record[k] for k in ("guidance_scale", "held_out", "ceiling", "times")}, indent=1))
    return 0


def evaluate_shipped(folder: Path, threads: int | None) -> int:
    """Re-run the evaluation of the pipeline in ``folder`` with its recorded settings; keep the rest of the record."""
    if threads:
        torch.set_num_threads(threads)
    record = json.loads((folder / "metrics.json").read_text())
    pipe = CourseTextToImagePipeline.from_pretrained(folder)
    results, _, _ = evaluate(model_from_pipeline(pipe), record["config"], pipe.vae.net, scale=record["guidance_scale"])
    record.update(results, judge=JUDGE)
    record["evaluated"] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "torch": torch.__version__, "threads": torch.get_num_threads()}
    (folder / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")
    write_model_card(folder, record)
    print(json.dumps({k: record[k] for k in ("held_out", "ceiling")}, indent=1))
    return 0


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _count(sub: Path) -> int:
    """Numbers in the safetensors files of one component folder (what ships, counted from the files)."""
    from safetensors import safe_open
    n = 0
    for f in sub.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            n += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return n


def write_model_card(folder: Path, record: dict) -> None:
    """README.md of the pipeline folder, from its metrics.json record."""
    cfg, held, times = record["config"], record["held_out"], record["times"]
    se, one = held["shapes_eval"], held["single_object_attributes"]
    rec, real = record["ceiling"]["reconstructions"], record["ceiling"]["real"]
    rows = [("single object (one object, clean, right shape)", "single_object"),
            ("two objects (both shapes right, clean)", "two_objects"), ("colours", "colours"),
            ("position (one object's cell, or the relation of two)", "position"),
            ("colour attribution", "colour_attribution"), ("**overall** (GenEval's mean of the five)", "overall"),
            ("relation (two objects only; inside position)", "relation"), ("clean background", "clean")]
    table = "\n".join(f"| {name} | {_pct(se[k])} | {_pct(rec[k])} | {_pct(real[k])} |" for name, k in rows)
    p = {sub: _count(folder / sub) for sub in ("unet", "text_encoder", "vae")}
    size_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2 ** 20
    sweep = ", ".join(f"s = {s}: {_pct(r['overall'])}" for s, r in record["sweep"].items())
    reserved = ", ".join(f"`{w}`" for w in RESERVED_WORDS)
    unet = f"base {cfg['unet_base']} channels, mults {cfg['mults']}, attention at levels {cfg['attn_levels']}"
    world = f"render_shapes({int(cfg['n_train'] * 1.25)}, seed={cfg['seed']}, two_objects={cfg['two_objects']})"
    call = (f"guidance_scale={record['guidance_scale']:g}, num_inference_steps={cfg['ddim_steps']}, "
            f"eta={cfg['eta']:g},")
    dropout = (f"empty caption {cfg['p_empty']:.0%}; partial one-object captions such as \"a red shape\" "
               f"{cfg['p_partial']:.0%}")
    wall = (f"autoencoder {times['autoencoder_s']:.0f} s, text-to-image {times['text_to_image_s']:.0f} s, "
            f"all with evaluation {times['total_s'] / 60:.0f} min")
    n_eval = f"{held['n_one_object']} one-object and {held['n_two_objects']} two-object captions"
    scored = (f" (scored again on {record['evaluated']['date'][:10]} with `--eval-only`)"
              if "evaluated" in record else "")
    text = f"""# shapes_sd: the course's small Stable Diffusion

A text-to-image latent diffusion model of the course's shapes world (one and two objects), made by
`scripts/train_base_model.py` and loaded offline the way Stable Diffusion is:

```python
from course_lib.diffusion.export import BASE_MODEL_DIR, CourseTextToImagePipeline
pipe = CourseTextToImagePipeline.from_pretrained(BASE_MODEL_DIR)
images = pipe(["a large red circle at the top left", "a small blue square left of a large green triangle"],
              {call}
              generator=torch.Generator().manual_seed(0), output_type="pt").images
```

| part | what | parameters |
|---|---|---|
| `vae` | latent autoencoder, 32 x 32 x 3 -> 16 x 16 x 4, scaling factor in its config | {p['vae']:,} |
| `text_encoder` | word tokenizer (vocabulary in config; reserved: {reserved}) + transformer | {p["text_encoder"]:,} |
| `unet` | cross-attention U-Net, {unet}, eps-prediction | {p['unet']:,} |
| `scheduler` | DDIM, the course's linear betas (T = {cfg['T']}); any `diffusers` scheduler `from_config` it | |

{size_mb:.1f} MB in all (float32 safetensors).

## Training

`{world}` minus every image whose
caption `is_held_out` (`course_lib.diffusion.text2image`; about one caption in ten), first {cfg['n_train']} kept.
Autoencoder {cfg['ae_steps']} steps; U-Net and text encoder together {cfg['steps']} steps of batch {cfg['batch_size']}
(AdamW, lr {cfg['lr']:g}, cosine, EMA {cfg['ema_decay']}), classifier-free dropout ({dropout}).
The reserved words appear in no training caption.
Wall time on {record['threads']} CPU threads: {wall} ({record['date']}, torch {record['torch']}).

## ShapesEval on held-out captions

Read by the course's shapes judge (`{record['judge']}`, docs/judges.md) through ShapesEval, the course's
GenEval{scored}.
{n_eval} the model never trained on, DDIM eta = {cfg['eta']:g},
{cfg['ddim_steps']} steps, guidance s = {record['guidance_scale']:g} (chosen on trained captions: {sweep}).
The ceiling: ShapesEval on the autoencoder's reconstructions of real renders of held-out captions.

| category | samples | reconstructions (ceiling) | real renders |
|---|---|---|---|
{table}

One-object captions, judge per attribute: shape {_pct(one['shape'])}, colour {_pct(one['colour'])}, position
{_pct(one['position'])}, all three {_pct(one['all'])}; clean background {_pct(one['clean'])}.
For scale, GenEval overall: SD3 0.68 at 512 x 512, DALL-E 3 0.67 (their papers); ShapesEval is not GenEval
(an exact detector, a 32 x 32 world), so only the direction compares.

The judge is not a person: how often it agrees with people on generated images it never saw is in
docs/judges.md, so read the shape numbers as the judge's.

![samples](samples.png)
"""
    (folder / "README.md").write_text(text)


def draw_samples(model: TextToImage, folder: Path, guidance: float, cfg: dict) -> None:
    """samples.png: the first 8 held-out one-object and two-object captions of the evaluation, seed 0."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    prompts = eval_captions(8, True, False, 301) + eval_captions(8, True, True, 401)
    images = generate(model, prompts, guidance, cfg, seed=0)
    fig, axes = plt.subplots(2, 8, figsize=(16, 4.9))
    for ax, x, c in zip(axes.flat, images, prompts):
        ax.imshow(x.permute(1, 2, 0).numpy(), interpolation="nearest")
        words = c.split()
        cut = 5 if " at the " in c else 4
        ax.set_title(" ".join(words[:cut]) + "\n" + " ".join(words[cut:]), fontsize=7)
        ax.axis("off")
    fig.suptitle(f"held-out captions, one object (top) and two objects (bottom); DDIM eta = {cfg['eta']:g}, "
                 f"{cfg['ddim_steps']} steps, s = {guidance:g}, seed 0")
    fig.tight_layout()
    fig.savefig(folder / "samples.png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
