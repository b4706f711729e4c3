"""The course's shipped motion module (course_lib/checkpoints/shapes_video), its loader, and the script
that makes it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from course_lib.diffusion.video import MOTION_MODULE_DIR, load_frame_unet, load_video_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers

DRAW = """
import os, sys, torch
from course_lib.diffusion.export import BASE_MODEL_DIR, CourseTextToImagePipeline, model_from_pipeline
from course_lib.diffusion.video import generate_video, load_video_model
assert os.environ["HF_HUB_OFFLINE"] == "1"
base = model_from_pipeline(CourseTextToImagePipeline.from_pretrained(BASE_MODEL_DIR))
video_unet = load_video_model(base, sys.argv[2])
clips = generate_video(base, video_unet, ["a large red circle moves right", "a small blue square moves up"],
                       guidance_scale=2.0, steps=3, generator=torch.Generator().manual_seed(int(sys.argv[3])))
torch.save(clips, sys.argv[1])
"""


def _draw(path: Path, folder: Path, seed: int = 0) -> torch.Tensor:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", DRAW, str(path), str(folder), str(seed)], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=300)
    return torch.load(path)


@pytest.fixture(scope="module")
def base():
    from course_lib.diffusion.export import BASE_MODEL_DIR, CourseTextToImagePipeline, model_from_pipeline
    return model_from_pipeline(CourseTextToImagePipeline.from_pretrained(BASE_MODEL_DIR)).eval()


def test_shipped_folder_is_small_and_complete():
    names = {f.name for f in MOTION_MODULE_DIR.iterdir()}
    assert {"config.json", "frame_unet.safetensors", "motion_module.safetensors", "metrics.json", "README.md",
            "samples.gif"} <= names
    weights = sum((MOTION_MODULE_DIR / f).stat().st_size
                  for f in ("frame_unet.safetensors", "motion_module.safetensors"))
    assert weights < 8 * 2 ** 20, "the shipped motion module must stay small"
    record = json.loads((MOTION_MODULE_DIR / "metrics.json").read_text())
    assert not record["smoke"] and record["results"]["real"]["direction_accuracy"] == 1.0


def test_loader_builds_the_frame_model_and_the_motion_module(base):
    video = load_video_model(base)
    shipped = load_file(str(MOTION_MODULE_DIR / "motion_module.safetensors"))
    ours = video.temporal_state_dict()
    assert set(ours) == set(shipped) and all(torch.equal(ours[k], shipped[k]) for k in ours)
    frame = load_frame_unet(base)
    assert not torch.equal(frame.state_dict()["conv_out.weight"], base.unet.state_dict()["conv_out.weight"])  # adapted
    x = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.full((8,), 500)
    context, mask = base.encode_prompt(["a large red circle"] * 8)
    with torch.no_grad():                    # temporal layers off: exactly the frame model, frame by frame
        assert torch.equal(video(x, t, context, mask, temporal=False), frame(x, t, context=context, context_mask=mask))
        assert not torch.equal(video(x, t, context, mask, motion=torch.tensor([1])),
                               frame(x, t, context=context, context_mask=mask))


def test_reload_in_fresh_offline_processes_is_bit_identical(tmp_path):
    a, b = _draw(tmp_path / "a.pt", MOTION_MODULE_DIR), _draw(tmp_path / "b.pt", MOTION_MODULE_DIR)
    assert a.shape == (2, 8, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, _draw(tmp_path / "c.pt", MOTION_MODULE_DIR, seed=1))


def test_loader_says_what_is_wrong(base, tmp_path):
    with pytest.raises(FileNotFoundError, match="train_motion_module"):
        load_video_model(base, tmp_path)
    for f in ("config.json", "frame_unet.safetensors"):
        (tmp_path / f).write_bytes((MOTION_MODULE_DIR / f).read_bytes())
    motion = load_file(str(MOTION_MODULE_DIR / "motion_module.safetensors"))
    motion.pop(next(iter(motion)))
    save_file(motion, str(tmp_path / "motion_module.safetensors"))
    with pytest.raises(ValueError, match="does not fit"):
        load_video_model(base, tmp_path)


def test_script_recreates_a_motion_module_in_smoke_mode(tmp_path):
    out = tmp_path / "mm"
    subprocess.run([sys.executable, "scripts/train_motion_module.py", "--smoke", "--out", str(out),
                    "--work", str(tmp_path / "work")], check=True, cwd=ROOT, capture_output=True, timeout=600,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    record = json.loads((out / "metrics.json").read_text())
    assert record["smoke"] and set(record["results"]) == {"real", "per_frame", "t2v", "i2v", "interp", "size_open"}
    assert record["results"]["real"]["direction_accuracy"] == 1.0     # the scorer reads real clips right
    assert set(record["times"]) >= {"frame_stage_s", "motion_stage_s", "warp_stage_s"}    # all three stages ran
    card = (out / "README.md").read_text()
    assert "## Measured" in card and "Stage 3" in card and "size left open" in card and (out / "samples.gif").exists()
    made, shipped = (json.loads((f / "config.json").read_text()) for f in (out, MOTION_MODULE_DIR))
    architecture = ("frames", "motion_classes", "motion_dim", "num_heads", "conv", "warp")
    assert {k: made[k] for k in architecture} == {k: shipped[k] for k in architecture}
    # scoring the module again (after a change to the metrics) keeps the record and gives the same numbers
    subprocess.run([sys.executable, "scripts/train_motion_module.py", "--eval-only", "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    again = json.loads((out / "metrics.json").read_text())
    assert again["results"] == record["results"] and again["times"] == record["times"] and "evaluated" in again
    assert "scored again on" in (out / "README.md").read_text()
    # a second training seed's results go into the card beside the first's
    subprocess.run([sys.executable, "scripts/train_motion_module.py", "--second-seed", str(out), "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    card = (out / "README.md").read_text()
    assert json.loads((out / "metrics.json").read_text())["second_seed"]["results"] == record["results"]
    assert "A second training seed" in card and "image-to-video kept" in card


def test_shipped_card_reports_the_second_training_seed():
    record = json.loads((MOTION_MODULE_DIR / "metrics.json").read_text())
    assert record["second_seed"]["config"]["seed"] == 1 and not record["second_seed"]["config"].get("smoke")
    card = (MOTION_MODULE_DIR / "README.md").read_text()
    kept = record["second_seed"]["results"]["i2v"]["kept_shape_colour"]
    assert f"image-to-video kept {100 * kept:.1f} %" in card


def test_failure_script_counts_the_failing_clips_by_what_they_show():
    run = subprocess.run([sys.executable, "scripts/video_failures.py", "--clips", "12", "--tasks", "first_last",
                          "--threads", "1"], check=True, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    head, result, failing = [line for line in run.stdout.splitlines() if line.strip()][-3:]
    kinds = dict(reversed(part.split(" ", 1)) for part in head.split(": ", 1)[1].split(", "))
    assert sum(int(n) for n in kinds.values()) == 12 and head.startswith("12 clips (render seed 2024")
    assert result.startswith("guidance 2, interpolation: direction ")
    flicker, kept = (float(result.split(f"{key} ")[1].split("%")[0]) / 100 for key in ("flicker", "kept"))
    parts = [] if failing.endswith("none") else failing.split(": ", 1)[1].split(", ")
    counted = {part.split(" of ")[1].split(" ", 1)[1]: int(part.split(" of ")[0]) for part in parts}
    assert all(n <= int(kinds[k]) for k, n in counted.items())
    # a failing clip flickers or loses the first frame's identity, so the count lies between these
    total = sum(counted.values())
    assert round(12 * max(flicker, 1 - kept)) <= total <= round(12 * (flicker + 1 - kept))
