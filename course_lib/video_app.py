"""The course's text-to-video app (project P07): a motion caption in, a clip out, its temporal-coherence
numbers beside it.

    >>> app = build_video_app(text_model, video_unet)     # a gradio.Blocks
    >>> app.launch()                                       # then open http://127.0.0.1:7860

``text_model`` is the :class:`~course_lib.diffusion.text2image.TextToImage` the video model was built
from and ``video_unet`` the :class:`~course_lib.models.temporal.VideoUNet` (e.g. the one you trained in
P07). The page takes a caption of the moving-shapes grammar ("a large red circle moves right"), a
seed, the number of steps and the guidance scale; it shows the clip as an animated GIF, its frames
side by side, and what the video metrics (``course_lib.eval.video``) read in it: the direction it
moves, how straight its track is (R²), whether the object's identity flickers, the shape and colour
in its frames and how alike neighbouring frames are.

All the work is in two plain functions you can call from a notebook:

    >>> clip, gif, reading = generate_clip(text_model, video_unet, "a large red circle moves right", seed=0)
    >>> clip.shape                                         # (T, 3, 32, 32) in [0, 1]; gif: bytes
    >>> real = render_moving_shapes(1, frames=8, size=32)                 # course_lib.data.moving
    >>> read_clip(real.videos[0], real.captions[0]).direction_ok          # True: a clip with a known answer

Bad input raises ``ValueError`` with one sentence meant for the person at the page; the app shows it
as an error box, never a stack trace. One clip is generated at a time (a lock: the video model keeps
per-call state in its temporal blocks).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# nothing leaves the machine: no Gradio analytics, no hub look-ups (set before gradio is imported)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from course_lib.data.moving import DIRECTIONS, parse_moving_caption  # noqa: E402
from course_lib.data.shapes import COLOURS, SHAPE_KINDS, SIZES  # noqa: E402
from course_lib.diffusion.video import generate_video  # noqa: E402
from course_lib.eval.video import identity_name, video_verdicts  # noqa: E402
from course_lib.viz import frames_to_gif_bytes  # noqa: E402

__all__ = ["EXAMPLE_CAPTION", "MAX_STEPS", "MAX_GUIDANCE", "ClipReading", "check_caption", "check_inputs",
           "read_clip", "clip_to_gif", "generate_clip", "build_video_app"]

EXAMPLE_CAPTION = "a large red circle moves right"
MAX_STEPS = 200             # DDIM steps; 20 are plenty
MAX_GUIDANCE = 20.0
GIF_SCALE = 8               # 32 x 32 frames are shown 256 x 256, nearest neighbour (every pixel stays exact)
GIF_FPS = 4
STRIP_SCALE = 4
_COLOUR_NAMES = tuple(COLOURS)
_GRAMMAR = "a [size] [colour] [shape] moves [direction]"   # no <...>: the page renders HTML
_WORDS = {"size": SIZES, "colour": _COLOUR_NAMES, "shape": SHAPE_KINDS, "direction": DIRECTIONS}
_KNOWN = {*SIZES, *_COLOUR_NAMES, *SHAPE_KINDS, *DIRECTIONS, "a", "moves"}
_PUNCTUATION = re.compile(r"[.,;:!?\"']")
_LOCK = threading.Lock()    # one generation at a time
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- checking the input
def _known_words() -> str:
    return (f"sizes {', '.join(SIZES)}; colours {', '.join(_COLOUR_NAMES)}; shapes {', '.join(SHAPE_KINDS)}; "
            f"directions {', '.join(DIRECTIONS)}; and a, moves")


def check_caption(caption) -> str:
    """The caption cleaned (lower case, punctuation dropped, single spaces), or ``ValueError``.

    A caption must read "a [size] [colour] [shape] moves [direction]" with the words of the
    moving-shapes world (``course_lib.data.moving``).
    """
    if caption is None:
        caption = ""
    if not isinstance(caption, str):
        raise ValueError(f"The caption must be text, got {type(caption).__name__}.")
    text = " ".join(_PUNCTUATION.sub(" ", caption).lower().split())
    if not text:
        raise ValueError(f"The caption is empty. Describe one moving shape, e.g. '{EXAMPLE_CAPTION}'.")
    unknown = list(dict.fromkeys(w for w in text.split() if w not in _KNOWN))
    if unknown:
        raise ValueError(
            f"The caption has words the video model does not know: {', '.join(repr(w) for w in unknown)}. "
            f"It was trained on the moving-shapes world only; its words: {_known_words()}.")
    words = set(text.split())
    if not words & set(DIRECTIONS):
        raise ValueError(f"The caption says no direction: end it with 'moves left', 'moves right', 'moves up' "
                         f"or 'moves down', e.g. '{EXAMPLE_CAPTION}'.")
    for what, options in _WORDS.items():
        if not words & set(options):
            raise ValueError(f"The caption names no {what}: use one of {', '.join(options)}, "
                             f"e.g. '{EXAMPLE_CAPTION}'.")
    if parse_moving_caption(text) is None:
        raise ValueError(f"The caption must read '{_GRAMMAR}' (one shape, one word of each), "
                         f"e.g. '{EXAMPLE_CAPTION}'; got '{text}'.")
    return text


def _whole_number(value, what: str, low: int, high: int) -> int:
    message = f"The {what} must be a whole number from {low} to {high}, got {value!r}."
    if isinstance(value, bool):
        raise ValueError(message)
    if isinstance(value, int):          # exact, also for seeds beyond a float's 2 ** 53
        number = value
    else:
        try:
            real = float(value)
        except (TypeError, ValueError):
            raise ValueError(message) from None
        if not real.is_integer():       # 2.5, NaN and inf
            raise ValueError(message)
        number = int(real)
    if not low <= number <= high:
        raise ValueError(message)
    return number


def check_inputs(caption, seed, steps, guidance_scale) -> tuple[str, int, int, float]:
    """The page's values, cleaned: (caption, seed, steps, guidance_scale), or ``ValueError`` with one
    sentence for the person at the page. Numbers may come as floats from the page (4.0 is 4)."""
    caption = check_caption(caption)
    seed = _whole_number(seed, "seed", 0, 2 ** 63 - 1)
    steps = _whole_number(steps, "number of steps", 1, MAX_STEPS)
    try:
        guidance = float(guidance_scale)
    except (TypeError, ValueError):
        raise ValueError(f"The guidance scale must be a number, got {guidance_scale!r}.") from None
    if not 0 <= guidance <= MAX_GUIDANCE:       # NaN fails too
        raise ValueError(f"The guidance scale must be from 0 to {MAX_GUIDANCE:g} (1: no guidance; 2 is a good "
                         f"start), got {guidance:g}.")
    return caption, seed, steps, guidance


# ----------------------------------------------------------------------------- reading a clip
@dataclass
class ClipReading:
    """What the video metrics read in one clip against its caption.

    ``direction``: the word the centroid track moves in (None: no direction, i.e. a frame without an
    object or under 1 px of travel); ``track_r2``: R² of a straight line at constant speed;
    ``flicker``: the main object's identity (shape, colour, size) is not the same in every frame;
    ``seen``: the identity read in most frames ("large red circle", "no object", "unreadable red")
    and ``seen_frames`` in how many; ``shape_ok`` / ``colour_ok`` / ``size_ok``: fraction of frames
    showing the caption's attribute; ``frame_similarity``: mean cosine of the judge features of
    neighbouring frames; ``why``: what is wrong, in words (empty when the clip is as asked).
    """
    caption: str
    direction: str | None
    direction_ok: bool
    track_r2: float
    flicker: bool
    seen: str
    seen_frames: int
    frames: int
    shape_ok: float
    colour_ok: float
    size_ok: float
    frame_similarity: float
    why: list[str] = field(default_factory=list)

    @property
    def as_asked(self) -> bool:
        return not self.why

    @property
    def markdown(self) -> str:
        """One sentence and a small table, for the page."""
        want = parse_moving_caption(self.caption)
        asked = DIRECTIONS[want["direction"]]
        moved = "no direction" if self.direction is None else self.direction
        if self.as_asked:
            head = f"**As asked:** a {self.seen} moving {moved}, in every frame."
        else:
            head = f"**Not as asked:** {'; '.join(self.why)}."
        flicker = (f"yes: the identity changes across frames ({self.seen} in {self.seen_frames} of {self.frames})"
                   if self.flicker else f"no: {self.seen} in all {self.frames} frames")
        if self.direction is None:
            moved = "none (a frame without an object, or under 1 px of travel)"
        rows = [("direction", f"{moved}, as asked" if self.direction_ok else f"{moved}, asked {asked}"),
                ("track R² (1: a straight line at constant speed)", f"{self.track_r2:.2f}"),
                ("identity flicker", flicker),
                ("shape / colour / size as captioned", f"{self.shape_ok:.0%} / {self.colour_ok:.0%} / "
                                                       f"{self.size_ok:.0%} of frames"),
                ("frame similarity (neighbouring frames, judge features)", f"{self.frame_similarity:.3f}")]
        table = "| reading | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
        return f"{head}\n\n{table}"


def read_clip(clip: Tensor, caption: str) -> ClipReading:
    """Read one clip (T, 3, S, S) in [0, 1] against its motion caption with ``video_verdicts``."""
    caption = check_caption(caption)
    if not isinstance(clip, Tensor) or clip.dim() != 4:
        raise ValueError(f"read_clip: clip must be a tensor (T, 3, S, S); got "
                         f"{tuple(clip.shape) if isinstance(clip, Tensor) else type(clip).__name__}")
    v = video_verdicts(clip[None], [caption])
    frames = v["frames"]
    names = [identity_name(*row) for row in zip(*(frames[k][0].tolist() for k in ("shape", "colour", "size")))]
    seen, seen_frames = Counter(names).most_common(1)[0]
    direction = int(v["direction"][0])
    return ClipReading(caption=caption, direction=None if direction < 0 else DIRECTIONS[direction],
                       direction_ok=bool(v["direction_ok"][0]), track_r2=float(v["track_r2"][0]),
                       flicker=bool(v["flicker"][0]), seen=seen, seen_frames=seen_frames, frames=len(names),
                       shape_ok=float(v["shape_ok"][0]), colour_ok=float(v["colour_ok"][0]),
                       size_ok=float(v["size_ok"][0]), frame_similarity=float(v["frame_similarity"][0]),
                       why=list(v["why"][0]))


# ----------------------------------------------------------------------------- pictures
def _pil(frame: Tensor, scale: int):
    """(3, S, S) in [0, 1] -> a PIL image ``scale`` times larger, nearest neighbour."""
    from PIL import Image
    array = (frame.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(array)
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def clip_to_gif(clip: Tensor, scale: int = GIF_SCALE, fps: float = GIF_FPS) -> bytes:
    """(T, 3, S, S) in [0, 1] -> an animated GIF that loops, frames ``scale`` times larger.

    (Pillow merges identical neighbouring frames into one longer frame; a generated clip has none.)
    """
    return frames_to_gif_bytes([_pil(f, scale) for f in clip], fps=fps)


def _strip(clip: Tensor, scale: int = STRIP_SCALE, gap: int = 2):
    """The frames side by side, left to right, on a grey background."""
    from PIL import Image
    pictures = [_pil(f, scale) for f in clip]
    w, h = pictures[0].size
    strip = Image.new("RGB", (len(pictures) * (w + gap) - gap, h), (128, 128, 128))
    for i, p in enumerate(pictures):
        strip.paste(p, (i * (w + gap), 0))
    return strip


# ----------------------------------------------------------------------------- generating
def generate_clip(text_model, video_unet, caption: str, seed: int = 0, steps: int = 20,
                  guidance_scale: float = 2.0) -> tuple[Tensor, bytes, str]:
    """One clip of ``caption``: (clip (T, 3, S, S) in [0, 1], its animated GIF, the reading in Markdown).

    DDIM (eta = 1) with ``steps`` steps and classifier-free guidance ``guidance_scale``, noise from
    ``torch.Generator().manual_seed(seed)``: the same seed gives the same clip. Raises ``ValueError``
    with a plain-words message on bad input.
    """
    caption, seed, steps, guidance_scale = check_inputs(caption, seed, steps, guidance_scale)
    with _LOCK:
        clip = generate_video(text_model, video_unet, [caption], guidance_scale=guidance_scale, steps=steps,
                              generator=torch.Generator().manual_seed(seed))[0]
    return clip, clip_to_gif(clip), read_clip(clip, caption).markdown


# ----------------------------------------------------------------------------- the page
def _gif_file(gif: bytes, folder: Path) -> str:
    """The GIF in ``folder``, named by its content (the same clip is the same file)."""
    path = folder / f"clip-{hashlib.sha256(gif).hexdigest()[:16]}.gif"
    if not path.exists():
        path.write_bytes(gif)
    return str(path)


def build_video_app(text_model, video_unet):
    """The Gradio page (a ``gradio.Blocks``) for a text model and the video U-Net built from it."""
    import gradio as gr

    folder = Path(tempfile.mkdtemp(prefix="course_video_app_"))

    def on_generate(caption, seed, steps, guidance):
        try:
            clip, gif, reading = generate_clip(text_model, video_unet, caption, seed, steps, guidance)
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception as error:       # a bug, not the person's input: log it, show one line
            log.exception("generation failed")
            raise gr.Error(f"Generation failed ({type(error).__name__}: {error}).", print_exception=False) from None
        return _gif_file(gif, folder), _strip(clip), reading

    with gr.Blocks(title="Course text-to-video") as app:
        gr.Markdown("# Text to video on the moving-shapes world\nA frozen image model with temporal layers "
                    f"(`VideoUNet`, P07). Captions read `{_GRAMMAR}`, e.g. `{EXAMPLE_CAPTION}` or "
                    "`a small blue triangle moves up`. Beside the clip: what the video metrics read in it.")
        with gr.Row():
            with gr.Column():
                caption = gr.Textbox(label="Caption", value=EXAMPLE_CAPTION, elem_id="caption")
                # plain numbers, no bounds of Gradio's own: every bad value gets check_inputs' sentence
                seed = gr.Number(value=0, label="Seed (a whole number, 0 or more)")
                steps = gr.Number(value=20, label=f"Steps (1 to {MAX_STEPS}; 20 are plenty)")
                guidance = gr.Number(value=2.0, step=0.5, label=f"Guidance scale (0 to {MAX_GUIDANCE:g}; 1: none)")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                gif = gr.Image(label="Clip (animated GIF)", type="filepath", elem_id="clip")
                readings = gr.Markdown(label="Temporal coherence", elem_id="readings")
        strip = gr.Image(label="Frames, left to right", type="pil", format="png", elem_id="frames")
        button.click(on_generate, [caption, seed, steps, guidance], [gif, strip, readings], api_name="generate",
                     concurrency_limit=1)
    return app
