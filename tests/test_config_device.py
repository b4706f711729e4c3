"""course_lib.config and course_lib.device on CPU; GPU-only paths skip cleanly without a GPU."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import course_lib
from course_lib import config, device

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_mps = pytest.mark.skipif(not device._mps_available(), reason="needs Apple MPS")


@pytest.mark.parametrize("raw, expected", [("1", True), ("true", True), ("0", False), ("", False)])
def test_smoke_switch_follows_env(monkeypatch, raw, expected):
    monkeypatch.setenv("COURSE_SMOKE", raw)
    assert config.is_smoke() is expected


def test_smoke_switch_override_beats_env(monkeypatch):
    monkeypatch.setenv("COURSE_SMOKE", "1")
    assert config.is_smoke(False) is False
    monkeypatch.setenv("COURSE_SMOKE", "0")
    assert config.is_smoke(True) is True


def test_smoke_switch_rejects_garbage(monkeypatch):
    monkeypatch.setenv("COURSE_SMOKE", "maybe")
    with pytest.raises(ValueError, match="COURSE_SMOKE"):
        config.is_smoke()


def test_folders_are_env_overridable(monkeypatch, tmp_path):
    for env, fn in [("COURSE_DATA_DIR", config.data_dir), ("COURSE_CACHE_DIR", config.cache_dir),
                    ("COURSE_OUTPUT_DIR", config.output_dir)]:
        target = tmp_path / env.lower()
        monkeypatch.setenv(env, str(target))
        assert fn() == target and target.is_dir()


def test_folders_default_under_user_cache(monkeypatch):
    monkeypatch.delenv("COURSE_OUTPUT_DIR", raising=False)
    assert config.output_dir().parent.name == "course_lib"


def test_setup_picks_sizes_and_seeds(monkeypatch):
    monkeypatch.setenv("COURSE_SMOKE", "1")
    cfg = course_lib.setup(seed=7, verbose=False)
    assert cfg.smoke and cfg.pick(smoke=3, full=300) == 3
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    course_lib.setup(seed=7, verbose=False)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())
    full = course_lib.setup(smoke=False, seed=7, verbose=False)
    assert full.pick(smoke=3, full=300) == 300 and "full" in str(full)


def test_setup_rejects_bad_seed():
    with pytest.raises(TypeError, match="seed"):
        course_lib.setup(seed="0", verbose=False)


def test_get_device_default_and_override(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "mps" if device._mps_available() else "cpu"
    assert device.get_device().type == expected
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert device.get_device() == torch.device("cpu")
    assert device.get_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_missing_cuda_says_so():
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        device.get_device("cuda")


def test_unsupported_device_rejected():
    with pytest.raises(ValueError, match="unsupported device"):
        device.get_device("meta")


def test_cpu_has_no_autocast_and_no_scaler():
    assert device.autocast_dtype("cpu") is None
    policy = device.amp("cpu")
    assert not policy.enabled and policy.scaler is None
    with policy.autocast():
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


def test_memory_throughput_and_description_on_cpu():
    mem = device.memory_report("cpu")
    assert mem["process_peak_rss_mib"] > 10
    x = torch.randn(64, 64)
    rate = device.throughput(lambda: x @ x, items=64, device="cpu")
    assert rate > 0
    info = device.describe_hardware()
    assert info["torch"] == torch.__version__ and info["cpu_threads"] >= 1
    with pytest.raises(ValueError):
        device.throughput(lambda: None, items=0, device="cpu")


def test_maybe_compile_is_identity_on_cpu():
    model = torch.nn.Linear(2, 2)
    assert device.maybe_compile(model, enabled=True) is model


@needs_cuda
def test_cuda_autocast_dtype_and_scaler():
    dtype = device.autocast_dtype("cuda")
    policy = device.amp("cuda")
    assert dtype in (torch.bfloat16, torch.float16)
    assert (policy.scaler is not None) == (dtype == torch.float16)
    with policy.autocast():
        y = torch.ones(8, 8, device="cuda") @ torch.ones(8, 8, device="cuda")
    assert y.dtype == dtype
    assert "allocated_mib" in device.memory_report("cuda")


@needs_mps
def test_mps_memory_report():
    assert "allocated_mib" in device.memory_report("mps")


def test_submodules_load_on_first_use():
    assert callable(course_lib.viz.show_images) and callable(course_lib.eval.distances.fid)
    with pytest.raises(AttributeError, match="no attribute 'vizz'"):
        course_lib.vizz
