"""The course's text-to-image app (project P04): the shipped base model behind a Gradio page.

    $ course-app                      # then open http://127.0.0.1:7860
    $ course-app --port 8000          # --host 0.0.0.0 to serve a network, --share for a public link

The page takes a prompt, a negative prompt, the guidance scale, a sampler, the number of steps, a
seed and how many images to make; it shows the images in a gallery and, under them, what
ShapesEval (the course's GenEval, read by the course's shapes judge) sees in each one.

All the work is in :func:`generate_images`, a plain function you can call from a notebook:

    >>> result = generate_images("a large red circle at the center", seed=0, num_images=4)
    >>> result.images.shape, result.readings[0]      # (4, 3, 32, 32) in [0, 1], "seed 0: right ..."

Image ``i`` of a call with seed ``s`` is drawn with its own generator seeded ``s + i``, so any image
of a gallery can be made again alone. Bad input raises ``ValueError`` with a message meant for the
person at the page; the app shows it as an error box, never a stack trace.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import threading
from dataclasses import dataclass
from functools import lru_cache

# nothing leaves the machine: no Gradio analytics, no hub look-ups (set before gradio is imported)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from course_lib.data.shapes import COLOURS, POSITIONS, RELATIONS, SHAPE_KINDS, SIZES, parse_caption  # noqa: E402

__all__ = ["SAMPLERS", "EXAMPLE_PROMPT", "Generation", "load_pipeline", "check_inputs", "generate_images", "build_app",
           "main"]

SAMPLERS = ("DDIM", "Euler", "DPM-Solver++")   # DDIM with eta = 1, as on the model card
EXAMPLE_PROMPT = "a large red circle at the center"
MAX_STEPS = 1000            # the model has T = 1000 noise levels; 20 to 50 steps are plenty
MAX_IMAGES = 20
MAX_GUIDANCE = 20.0
_PUNCTUATION = re.compile(r"[.,;:!?\"']")
_COLOUR_NAMES = tuple(COLOURS)
_LOCK = threading.Lock()    # one generation at a time: the pipeline's scheduler is swapped per call
log = logging.getLogger(__name__)


@dataclass
class Generation:
    """What :func:`generate_images` returns: ``images`` (N, 3, S, S) in [0, 1], the seed of each image,
    the ShapesEval ``verdicts`` (dicts, or None when the prompt is not a caption of the grammar) and
    one ``readings`` sentence per image: what was asked against what the judge reads."""
    images: Tensor
    seeds: list[int]
    verdicts: list[dict | None]
    readings: list[str]


# ----------------------------------------------------------------------------- the model
@lru_cache(maxsize=1)
def load_pipeline():
    """The shipped base model (``course_lib/checkpoints/shapes_sd``) on the CPU, loaded once."""
    from course_lib.diffusion.export import BASE_MODEL_DIR, CourseTextToImagePipeline
    pipe = CourseTextToImagePipeline.from_pretrained(BASE_MODEL_DIR)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@lru_cache(maxsize=len(SAMPLERS))
def _scheduler(name: str):
    """A fresh `diffusers` scheduler from the base model's config (which carries its betas)."""
    import diffusers
    config = load_pipeline().scheduler.config
    cls = {"DDIM": diffusers.DDIMScheduler, "Euler": diffusers.EulerDiscreteScheduler,
           "DPM-Solver++": diffusers.DPMSolverMultistepScheduler}[name]
    return cls.from_config(config)


def vocabulary() -> list[str]:
    """The words the model's tokenizer knows (without its four special tokens)."""
    return list(load_pipeline().text_encoder.tokenizer.itos[4:])


# ----------------------------------------------------------------------------- checking the input
def _clean(text, what: str, required: bool) -> str:
    """Lower-case, punctuation dropped, single spaces; unknown words and over-long text are errors."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ValueError(f"The {what} must be text, got {type(text).__name__}.")
    text = " ".join(_PUNCTUATION.sub(" ", text).lower().split())
    if required and not text:
        raise ValueError(f"The {what} is empty. Describe one or two shapes, e.g. '{EXAMPLE_PROMPT}'.")
    known = set(vocabulary())
    unknown = list(dict.fromkeys(w for w in text.split() if w not in known))
    if unknown:
        raise ValueError(
            f"The {what} has words the model does not know: {', '.join(repr(w) for w in unknown)}. "
            f"It was trained on captions of the shapes world only. Its words: sizes {', '.join(SIZES)}; "
            f"colours {', '.join(_COLOUR_NAMES)}; shapes {', '.join(SHAPE_KINDS)}; positions "
            f"{', '.join(POSITIONS)}; relations {', '.join(RELATIONS)}; and a, at, the.")
    longest = load_pipeline().text_encoder.tokenizer.context_length - 2     # <bos> ... <eos>
    if len(text.split()) > longest:
        raise ValueError(f"The {what} has {len(text.split())} words; the model reads at most {longest}.")
    return text


def _whole_number(value, what: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"The {what} must be a whole number from {low} to {high}, got {value!r}.") from None
    if not number.is_integer() or not low <= number <= high:
        raise ValueError(f"The {what} must be a whole number from {low} to {high}, got {value!r}.")
    return int(number)


def check_inputs(prompt, negative_prompt, guidance_scale, sampler, steps, seed, num_images):
    """The page's values, cleaned: (prompt, negative_prompt, guidance_scale, sampler, steps, seed, num_images).

    Raises ``ValueError`` with one sentence for the person at the page when a value is wrong (an
    empty prompt, a word the model does not know, steps outside 1..1000, ...). Numbers may come as
    floats from sliders (4.0 is 4).
    """
    prompt = _clean(prompt, "prompt", required=True)
    negative_prompt = _clean(negative_prompt, "negative prompt", required=False)
    try:
        guidance_scale = float(guidance_scale)
    except (TypeError, ValueError):
        raise ValueError(f"The guidance scale must be a number, got {guidance_scale!r}.") from None
    if not 0 <= guidance_scale <= MAX_GUIDANCE:
        raise ValueError(f"The guidance scale must be from 0 to {MAX_GUIDANCE:g} (1: no guidance; the model "
                         f"card uses 2), got {guidance_scale:g}.")
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    steps = _whole_number(steps, "number of steps", 1, MAX_STEPS)
    seed = _whole_number(seed, "seed", 0, 2 ** 63 - MAX_IMAGES)
    num_images = _whole_number(num_images, "number of images", 1, MAX_IMAGES)
    return prompt, negative_prompt, guidance_scale, sampler, steps, seed, num_images



# ----------------------------------------------------------------------------- generating and reading
def _describe(objects: list[dict]) -> str:
    """What the judge read, in words: "a red circle at the center (judge 0.97)"."""
    if not objects:
        return "nothing (an empty picture)"
    words = []
    for o in objects:
        shape = "shape it could not read" if o["shape"] is None or not o["readable"] else SHAPE_KINDS[o["shape"]]
        sure = "" if o["confidence"] is None else f" (judge {o['confidence']:.2f})"
        words.append(f"a {_COLOUR_NAMES[o['colour']]} {shape} at the {POSITIONS[o['cell']]}{sure}")
    return "; ".join(words)


def _reading(seed: int, verdict: dict | None) -> str:
    if verdict is None:
        return (f"seed {seed}: no ShapesEval reading (it reads full captions of the grammar, "
                f"e.g. '{EXAMPLE_PROMPT}')")
    outcome = "right" if verdict["passed"] else "wrong: " + "; ".join(verdict["why"])
    background = "" if verdict["clean"] else ", background not clean"
    return f"seed {seed}: {outcome}. Read: {_describe(verdict['objects'])}{background}."


def generate_images(prompt: str, negative_prompt: str = "", guidance_scale: float = 2.0, sampler: str = "DDIM",
                    steps: int = 20, seed: int = 0, num_images: int = 1) -> Generation:
    """Draw ``num_images`` images of ``prompt`` with the base model and read each with ShapesEval.

    guidance: eps = eps_neg + s (eps_text - eps_neg), eps_neg from ``negative_prompt`` (the empty
    caption when it is empty); s = ``guidance_scale``. Image i uses a generator seeded ``seed + i``.
    Raises ``ValueError`` with a plain-words message on bad input.
    """
    prompt, negative_prompt, guidance_scale, sampler, steps, seed, num_images = check_inputs(
        prompt, negative_prompt, guidance_scale, sampler, steps, seed, num_images)
    pipe = load_pipeline()
    seeds = [seed + i for i in range(num_images)]
    with _LOCK:
        pipe.scheduler = _scheduler(sampler)
        images = torch.cat([pipe(prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale,
                                 num_inference_steps=steps, eta=1.0 if sampler == "DDIM" else 0.0,
                                 generator=torch.Generator().manual_seed(s), output_type="pt").images
                            for s in seeds])
    if parse_caption(prompt) is None:
        verdicts = [None] * num_images
    else:
        from course_lib.eval.judges import SHAPES_JUDGE
        from course_lib.eval.shapes_eval import shapes_eval_verdicts
        verdicts = shapes_eval_verdicts(images, [prompt] * num_images, judge=SHAPES_JUDGE)
    return Generation(images, seeds, verdicts, [_reading(s, v) for s, v in zip(seeds, verdicts)])


# ----------------------------------------------------------------------------- the page
def _to_pil(image: Tensor, scale: int = 8):
    """(3, S, S) in [0, 1] -> a PIL image scale times larger, nearest neighbour (every pixel stays exact)."""
    from PIL import Image
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(array)
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def _on_generate(prompt, negative_prompt, guidance_scale, sampler, steps, seed, num_images):
    """The Generate button: a gallery and the readings, or an error box with a plain message."""
    import gradio as gr
    try:
        result = generate_images(prompt, negative_prompt, guidance_scale, sampler, steps, seed, num_images)
    except ValueError as error:
        raise gr.Error(str(error), print_exception=False) from None
    except Exception as error:       # a bug, not the person's input: log it, show one line
        log.exception("generation failed")
        raise gr.Error(f"Generation failed ({type(error).__name__}: {error}).", print_exception=False) from None
    right = [v["passed"] for v in result.verdicts if v is not None]
    head = f"**ShapesEval:** {sum(right)} of {len(right)} right.\n\n" if right else ""
    gallery = [(_to_pil(x), f"seed {s}") for x, s in zip(result.images, result.seeds)]
    return gallery, head + "\n".join(f"- {line}" for line in result.readings)


def build_app():
    """The Gradio page (a ``gradio.Blocks``); the pipeline loads on the first Generate."""
    import gradio as gr
    with gr.Blocks(title="Course text-to-image") as app:
        gr.Markdown("# Text to image on the shapes world\nThe course's small Stable Diffusion "
                    "(`course_lib/checkpoints/shapes_sd`), read by ShapesEval. Try "
                    f"'{EXAMPLE_PROMPT}' or 'a small blue square left of a large green triangle'.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", value=EXAMPLE_PROMPT, elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", placeholder="e.g. a large blue square",
                                      elem_id="negative")
                guidance = gr.Slider(0, MAX_GUIDANCE, value=2.0, step=0.5, label="Guidance scale")
                sampler = gr.Dropdown(list(SAMPLERS), value="DDIM", label="Sampler")
                steps = gr.Number(value=20, precision=0, label=f"Steps (1 to {MAX_STEPS}; 20 to 50 are plenty)")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                count = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Number of images")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                gallery = gr.Gallery(label="Images", columns=4, format="png", elem_id="gallery")
                readings = gr.Markdown(label="Readings", elem_id="readings")
        button.click(_on_generate, [prompt, negative, guidance, sampler, steps, seed, count],
                     [gallery, readings], api_name="generate")
    return app


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="course-app", description="The course's text-to-image app (Gradio).")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``course-app``: serve the page until Ctrl-C."""
    args = _parser().parse_args(argv)
    build_app().launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
