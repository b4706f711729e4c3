"""The text-to-video app (course_lib.video_app, project P07, issue 17): the caption checks, the
reading of clips with a known answer (rendered moving shapes), generation, then the page launched on
127.0.0.1 (analytics off) and driven through ``gradio_client``.

The video model is the shipped base image model with untrained temporal layers (they start at zero:
the per-frame image model), enough for the plumbing; what a trained one reads is P07's business."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"
torch.set_num_threads(1)

from course_lib.data.moving import DIRECTIONS, render_moving_shapes  # noqa: E402
from course_lib.video_app import EXAMPLE_CAPTION, build_video_app, clip_to_gif, generate_clip, read_clip  # noqa: E402
from served import launched  # noqa: E402

T, S = 8, 32
STEPS = 4
_clock: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def module_clock():
    """Starts when the first test of this module starts (not at collection, which xdist does early)."""
    _clock.setdefault("start", time.monotonic())
    yield


@pytest.fixture(scope="module")
def models():
    """The shipped base model and a VideoUNet on its U-Net with untrained (zero) temporal layers."""
    from course_lib.diffusion.export import BASE_MODEL_DIR, CourseTextToImagePipeline, model_from_pipeline
    from course_lib.models.temporal import VideoUNet
    m = model_from_pipeline(CourseTextToImagePipeline.from_pretrained(BASE_MODEL_DIR))
    return m, VideoUNet(m.unet, frames=T, motion_classes=len(DIRECTIONS))


def _gif(data: bytes):
    from PIL import Image
    return Image.open(io.BytesIO(data))


# ----------------------------------------------------------------------------- the checks
@pytest.mark.parametrize("kwargs, words", [
    (dict(caption=""), "caption is empty"),
    (dict(caption="   "), "caption is empty"),
    (dict(caption=None), "caption is empty"),
    (dict(caption="a purple cat moves left"), "does not know: 'purple', 'cat'"),
    (dict(caption="a large red circle"), "says no direction: end it with 'moves left'"),
    (dict(caption="a red circle moves left"), "names no size: use one of small, large"),
    (dict(caption="a large red moves left"), "names no shape"),
    (dict(caption="a large red circle left moves"), r"must read 'a \[size\] \[colour\] \[shape\] moves \[direction\]'"),
    (dict(caption="a large red circle moves left right"), r"must read 'a \[size\]"),
    (dict(steps=0), "steps must be a whole number from 1 to 200, got 0"),
    (dict(steps=10_000), "steps must be a whole number from 1 to 200, got 10000"),
    (dict(steps=2.5), "steps must be a whole number"),
    (dict(guidance_scale=-1), "guidance scale must be from 0 to 20 .*got -1"),
    (dict(guidance_scale=1e6), "guidance scale must be from 0 to 20"),
    (dict(guidance_scale=float("nan")), "guidance scale must be from 0 to 20"),
    (dict(guidance_scale="lots"), "guidance scale must be a number"),
    (dict(seed=2.5), "seed must be a whole number"),
    (dict(seed=-1), "seed must be a whole number from 0"),
    (dict(seed="seven"), "seed must be a whole number"),
])
def test_bad_input_gets_a_clear_message(models, kwargs, words):
    args = dict(caption=EXAMPLE_CAPTION, seed=0, steps=STEPS, guidance_scale=2.0) | kwargs
    with pytest.raises(ValueError, match=words) as caught:
        generate_clip(*models, **args)
    message = str(caught.value)
    assert message.endswith(".") and "\n" not in message, message
    if "does not know" in words:   # and it says which words it does know
        assert "sizes small, large; colours red, green" in message and "directions left, right, up, down" in message


def test_good_input_is_cleaned_and_accepted():
    from course_lib.video_app import check_inputs
    assert check_inputs("  A Large RED circle moves right. ", 3.0, 20.0, "2") == (EXAMPLE_CAPTION, 3, 20, 2.0)
    assert check_inputs(EXAMPLE_CAPTION, 2 ** 63 - 1, 200, 0)[1] == 2 ** 63 - 1    # exact, not via a float


# ----------------------------------------------------------------------------- reading clips with a known answer
@pytest.fixture(scope="module")
def rendered():
    """One rendered clip per direction (8 frames of 32 x 32), with their true captions."""
    batch = render_moving_shapes(16, frames=T, size=S, seed=3)
    picked = [next(i for i in range(len(batch)) if int(batch.attrs["direction"][i]) == d) for d in range(4)]
    return [(batch.videos[i], batch.captions[i]) for i in picked]


def test_read_rendered_clips_right_direction_straight_no_flicker(rendered):
    for clip, caption in rendered:
        r = read_clip(clip, caption)
        appearance, direction = caption[2:].split(" moves ")
        print(f"{caption}: moves {r.direction}, R² {r.track_r2:.4f}, flicker {r.flicker}, "
              f"seen {r.seen} ({r.seen_frames}/{r.frames}), similarity {r.frame_similarity:.3f}")
        assert r.direction == direction and r.direction_ok, r
        assert r.track_r2 > 0.99 and not r.flicker and r.seen == appearance and r.seen_frames == T, r
        assert (r.shape_ok, r.colour_ok, r.size_ok) == (1.0, 1.0, 1.0) and r.as_asked, r
        assert r.markdown.startswith(f"**As asked:** a {appearance} moving {direction}"), r.markdown
        assert f"| direction | {direction}, as asked |" in r.markdown
        assert f"| identity flicker | no: {appearance} in all {T} frames |" in r.markdown


def test_read_a_reversed_clip_says_it_moves_the_other_way(rendered):
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
    clip, caption = rendered[0]
    appearance, direction = caption[2:].split(" moves ")
    r = read_clip(clip.flip(0), caption)                          # the frames backwards
    assert r.direction == opposite[direction] and not r.direction_ok and not r.flicker, r
    assert r.markdown.startswith(f"**Not as asked:** moves {opposite[direction]}, asked {direction}"), r.markdown
    assert f"| direction | {opposite[direction]}, asked {direction} |" in r.markdown


def test_read_a_clip_whose_colour_flickers(rendered):
    (clip, caption), (other, other_caption) = rendered[0], rendered[1]
    assert caption.split()[2] != other_caption.split()[2], "pick clips of two colours"
    broken = clip.clone()
    broken[3] = other[3]                                          # one frame of another clip
    r = read_clip(broken, caption)
    assert r.flicker and not r.as_asked and r.seen_frames == T - 1, r
    assert "| identity flicker | yes: the identity changes" in r.markdown and "identity changes" in r.markdown


# ----------------------------------------------------------------------------- generating
def test_generate_clip_same_seed_same_clip_and_gif(models):
    clip, gif, reading = generate_clip(*models, EXAMPLE_CAPTION, seed=1, steps=STEPS)
    again, gif_again, reading_again = generate_clip(*models, EXAMPLE_CAPTION, seed=1, steps=STEPS)
    other, gif_other, _ = generate_clip(*models, EXAMPLE_CAPTION, seed=2, steps=STEPS)
    assert clip.shape == (T, 3, S, S) and 0 <= clip.min() and clip.max() <= 1
    assert torch.equal(clip, again) and gif == gif_again and reading == reading_again
    assert (clip - other).abs().max() > 0.1 and gif != gif_other
    assert reading == read_clip(clip, EXAMPLE_CAPTION).markdown           # the reading is of this clip
    picture = _gif(gif)
    assert picture.is_animated and picture.n_frames == T and picture.size == (8 * S, 8 * S)
    print(reading)


def test_the_gif_shows_the_clip(rendered):
    """Frame t of the GIF, shrunk back, is frame t of the clip (up to the GIF's 256-colour palette)."""
    import numpy as np
    from PIL import ImageSequence
    clip, _ = rendered[2]
    picture = _gif(clip_to_gif(clip))
    assert picture.info["loop"] == 0 and picture.info["duration"] == 250          # loops, 4 frames a second
    for t, frame in enumerate(ImageSequence.Iterator(picture)):
        small = frame.convert("RGB").resize((S, S), 0)                              # 0: nearest
        pixels = torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1).float() / 255
        assert (pixels - clip[t]).abs().max() < 0.02, t


def test_generation_holds_the_lock(models, monkeypatch):
    import course_lib.video_app as video_app
    held = []

    def spy(*args, **kwargs):
        held.append(video_app._LOCK.locked())
        return torch.zeros(1, T, 3, S, S)
    monkeypatch.setattr(video_app, "generate_video", spy)
    generate_clip(*models, EXAMPLE_CAPTION, steps=STEPS)
    assert held == [True]


def test_module_imports_without_gradio_and_keeps_everything_offline():
    code = ("import os, sys; sys.modules['gradio'] = None; import course_lib.video_app; "
            "print(os.environ['GRADIO_ANALYTICS_ENABLED'], os.environ['HF_HUB_OFFLINE'])")
    env = {k: v for k, v in os.environ.items() if k not in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "1"]


# ----------------------------------------------------------------------------- the page, through its client
@pytest.fixture(scope="module")
def served(models):
    """The app on a free 127.0.0.1 port (one launch for this module)."""
    pytest.importorskip("gradio", reason="gradio is not installed (it is a dependency of course_lib)")
    app = build_video_app(*models)
    with launched(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client
    return Client(served, verbose=False)


def _ask(client, caption=EXAMPLE_CAPTION, seed=0, steps=STEPS, guidance=2.0):
    gif, strip, readings = client.predict(caption, seed, steps, guidance, api_name="/generate")
    return Path(gif), Path(strip), readings


def test_client_gif_is_an_animation_of_the_clip_with_its_readings(client, models):
    from PIL import Image
    gif, strip, readings = _ask(client, seed=4)
    picture = Image.open(gif)
    assert picture.format == "GIF" and picture.is_animated and picture.n_frames == T
    assert picture.size == (8 * S, 8 * S)
    assert Image.open(strip).size == (T * 4 * S + (T - 1) * 2, 4 * S)               # the frames side by side
    _, same_gif, same_reading = generate_clip(*models, EXAMPLE_CAPTION, seed=4, steps=STEPS)
    assert gif.read_bytes() == same_gif and readings == same_reading                # what the function makes
    for words in ("| direction |", "right", "track R²", "identity flicker", "frame similarity"):
        assert words in readings, readings
    print(readings)


def test_client_same_seed_same_gif_other_seed_other_gif(client):
    first, _, _ = _ask(client, seed=7)
    again, _, _ = _ask(client, seed=7)
    other, _, _ = _ask(client, seed=8)
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()


@pytest.mark.parametrize("args, words", [
    (dict(caption=""), "caption is empty"),
    (dict(caption="a purple cat moves left"), "does not know: 'purple', 'cat'"),
    (dict(caption="a large red circle"), "says no direction"),
    (dict(caption="a large red circle left moves"), "must read 'a [size] [colour] [shape] moves [direction]'"),
    (dict(steps=0), "from 1 to 200, got 0"),
    (dict(steps=10_000), "from 1 to 200, got 10000"),
    (dict(guidance=-1.0), "guidance scale must be from 0 to 20 (1: no guidance; 2 is a good start), got -1."),
    (dict(seed=2.5), "seed must be a whole number from 0 to 9223372036854775807, got 2.5."),
])
def test_client_bad_input_gets_the_message_not_a_traceback(client, args, words):
    with pytest.raises(Exception) as caught:
        _ask(client, **args)
    text = str(caught.value)
    assert words in text and "Traceback" not in text and 'File "' not in text, text


@pytest.mark.skipif(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1,
                    reason="a time bar for this module alone: run `pytest tests/test_video_app.py` on an idle "
                           "machine (beside other workers the 2-core machine is shared)")
def test_the_whole_module_took_at_most_30_s():
    took = time.monotonic() - _clock["start"]
    print(f"tests/test_video_app.py took {took:.1f} s")
    assert took <= 30, f"this module took {took:.1f} s (bar: 30 s)"
