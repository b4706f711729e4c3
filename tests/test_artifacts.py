"""course_lib.artifacts: saving, loading and comparing the results of notebook runs."""
import json

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

matplotlib.use("Agg")

from course_lib.artifacts import compare_runs, list_runs, load_run, save_run  # noqa: E402
from course_lib.config import Config  # noqa: E402


@pytest.fixture(autouse=True)
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_OUTPUT_DIR", str(tmp_path))
    return tmp_path


def cfg(smoke=True, seed=0):
    return Config(smoke=smoke, seed=seed, device=torch.device("cpu"))


def test_save_and_load_a_run(outputs):
    samples = torch.rand(10, 1, 8, 8)
    metrics = {"fid": np.float32(12.5), "nll": torch.tensor(0.25), "steps": np.int64(100),
               "note": "ok", "per_class": [1, 2.5]}
    folder = save_run("ddpm", samples=samples, metrics=metrics, cfg=cfg())
    assert folder == outputs / "runs" / "ddpm" / "smoke-seed0"
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "samples.png",
                                                        "samples.safetensors"]
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["fid"] == 12.5 and saved["nll"] == 0.25 and saved["steps"] == 100
    run = saved["run"]
    assert (run["name"], run["tag"], run["smoke"], run["seed"], run["device"]) == \
        ("ddpm", "smoke-seed0", True, 0, "cpu")
    assert run["torch"] == torch.__version__ and run["timestamp"]
    assert Image.open(folder / "samples.png").size == (8 * 8 + 7, 2 * 8 + 1)  # 8 per row, 1 px gaps
    loaded, loaded_metrics = load_run("ddpm")
    assert torch.equal(loaded, samples) and loaded_metrics == saved


def test_tags_rerun_replaces_and_other_seeds_sit_beside(outputs):
    save_run("vae", samples=torch.rand(4, 3, 8, 8), metrics={"loss": 1.0}, cfg=cfg(seed=0))
    save_run("vae", metrics={"loss": 0.5}, cfg=cfg(seed=0))  # same settings: replaces all
    save_run("vae", metrics={"loss": 0.7}, cfg=cfg(smoke=False, seed=1))
    assert sorted(p.name for p in (outputs / "runs" / "vae").iterdir()) == ["full-seed1", "smoke-seed0"]
    samples, metrics = load_run("vae", tag="smoke-seed0")
    assert samples is None and metrics["loss"] == 0.5  # the old samples are gone
    assert load_run("vae")[1]["loss"] == 0.7  # most recent
    assert save_run("vae", metrics={}).name == "default"


def test_dict_samples_and_videos_get_previews(outputs):
    folder = save_run("multi", samples={"real": torch.rand(4, 1, 8, 8),
                                        "fake": np.random.rand(4, 3, 8, 8).astype(np.float32),
                                        "points": torch.randn(100, 2)})
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["metrics.json", "samples.safetensors", "samples_fake.png", "samples_real.png"]
    loaded, _ = load_run("multi")
    assert set(loaded) == {"real", "fake", "points"} and loaded["fake"].dtype == torch.float32
    video = save_run("video", samples=torch.rand(2, 5, 3, 8, 8))
    assert (video / "samples.gif").exists() and Image.open(video / "samples.gif").n_frames == 5


def test_extra_info_and_figures(outputs):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().plot([1, 2])
    folder = save_run("x", metrics={"a": 1}, extra={"lr": 1e-3, "curves": fig})
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["extra"] == {"lr": 1e-3, "figures": ["curves.png"]}
    assert (folder / "curves.png").exists()


def test_list_and_compare(outputs):
    assert list_runs() == [] and "no saved runs" in str(compare_runs())
    save_run("a", metrics={"fid": 3.14159, "kind": "ddpm"}, cfg=cfg(seed=0))
    save_run("a", metrics={"fid": 2.5}, cfg=cfg(seed=1))
    save_run("b", metrics={"acc": 0.9, "per_class": [0.8, 1.0]})
    runs = list_runs()
    assert [(r["name"], r["tag"]) for r in runs] == [("a", "smoke-seed0"), ("a", "smoke-seed1"),
                                                     ("b", "default")]
    assert runs[2]["metrics"] == {"acc": 0.9, "per_class": [0.8, 1.0]}
    assert len(list_runs("a")) == 2
    table = compare_runs()
    assert table.columns() == ["name", "tag", "time", "fid", "kind", "acc"]
    text = str(table).splitlines()
    assert text[0].split() == ["name", "tag", "time", "fid", "kind", "acc"]
    assert "3.142" in text[2] and "ddpm" in text[2] and text[4].split()[-1] == "0.9"
    assert text[3].split()[-2:] == ["-", "-"]  # missing values
    assert len(compare_runs("b")) == 1


def test_clear_errors(outputs):
    with pytest.raises(ValueError, match="nan"):
        save_run("r", metrics={"fid": float("nan")})
    with pytest.raises(TypeError, match=r"metrics\['img'\] is a tensor of shape \(2, 2\)"):
        save_run("r", metrics={"img": torch.zeros(2, 2)})
    with pytest.raises(TypeError, match=r"metrics\['f'\] is a function"):
        save_run("r", metrics={"f": lambda: 0})
    with pytest.raises(ValueError, match="may not be called"):
        save_run("r", metrics={"run": 1})
    with pytest.raises(ValueError, match="plain folder name"):
        save_run("../escape", metrics={})
    with pytest.raises(FileNotFoundError, match="no saved run named 'nothing'"):
        load_run("nothing")
    save_run("r", metrics={"a": 1})
    with pytest.raises(FileNotFoundError, match="no tag 'full-seed0'"):
        load_run("r", tag="full-seed0")
    assert not (outputs / "runs" / "r" / "default" / "samples.safetensors").exists()
    assert sorted(p.name for p in (outputs / "runs" / "r").iterdir()) == ["default"]  # no leftovers
