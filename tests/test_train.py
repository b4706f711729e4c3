"""course_lib.train: the training loop, its schedule, EMA, and exact checkpoint/resume."""
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course_lib.train import EMA, fit, load_weights, scheduled_lr
from course_lib.viz import plot_training


@pytest.fixture(autouse=True)
def _on_the_cpu(monkeypatch):
    """These tests compare numbers with CPU tensors made here: fit picks the CPU even on a GPU host
    (tests/test_devices.py runs the same code on a GPU's device)."""
    monkeypatch.setenv("COURSE_DEVICE", "cpu")


# 100 samples, batch 16 -> 7 batches per epoch (the last one has 4), so 23 steps span
# three epochs and the interruptions below land in the middle of an epoch.
RUN = dict(steps=23, batch_size=16, lr=1e-2, weight_decay=0.01, warmup_steps=5,
           schedule="cosine", grad_clip=0.5, ema_decay=0.9, seed=3, checkpoint_every=4,
           progress=False)


def make_model(init_seed=0):
    torch.manual_seed(init_seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))


def make_data(n=100):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g))


def loss_fn(model, batch):
    """Draws from every RNG fit must restore: torch (dropout, noise), NumPy and Python."""
    x, y = batch
    jitter = 1 + 0.01 * np.random.rand() + 0.01 * random.random()
    loss = F.mse_loss(model(x) * jitter, y + 0.01 * torch.randn_like(y))
    return loss, {"mae": (model(x) - y).abs().mean()}


def failing_at(call, exc):
    """loss_fn that raises ``exc`` on its ``call``-th call (i.e. during step ``call``)."""
    calls = []

    def fn(model, batch):
        calls.append(1)
        if len(calls) == call:
            raise exc
        return loss_fn(model, batch)
    return fn


def assert_same_run(a, b):
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), f"weights differ at {ka}"
    for (ka, va), (kb, vb) in zip(a.ema_model.state_dict().items(), b.ema_model.state_dict().items()):
        assert torch.equal(va, vb), f"EMA weights differ at {ka}"
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        for key, value in sa["state"][i].items():
            assert torch.equal(value, sb["state"][i][key]), f"optimizer state {i}.{key} differs"
    assert a.history == b.history and list(a.history) == list(b.history)
    assert a.steps == b.steps == RUN["steps"]


@pytest.fixture(scope="module")
def uninterrupted():
    return fit(make_model(), loss_fn, make_data(), **RUN)


# A crash resumes from the last periodic checkpoint (step 8, mid-epoch); an interrupt is saved
# at once (step 14, the end of epoch 2, so the run resumes at the start of the next epoch).
@pytest.mark.parametrize("exc, stop_in_step, resumes_at", [
    (RuntimeError("the kernel died"), 11, 8),
    (KeyboardInterrupt(), 15, 14),
])
def test_resume_is_bit_identical(uninterrupted, tmp_path, exc, stop_in_step, resumes_at):
    path = tmp_path / "run.safetensors"
    with pytest.raises(type(exc)):
        fit(make_model(), failing_at(stop_in_step, exc), make_data(), checkpoint=path, **RUN)
    # A new model object with other initial weights, as after a kernel restart.
    resumed = fit(make_model(init_seed=99), loss_fn, make_data(), checkpoint=path, **RUN)
    assert resumed.resumed_from == resumes_at
    assert_same_run(uninterrupted, resumed)
    # Re-running the finished cell just loads the result.
    again = fit(make_model(init_seed=5), loss_fn, make_data(), checkpoint=path, **RUN)
    assert again.resumed_from == RUN["steps"]
    assert_same_run(uninterrupted, again)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.safetensors"]  # no temp files left


def test_training_reduces_the_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    result = fit(model, lambda m, b: F.mse_loss(m(b[0]), b[1]), make_data(256), steps=150,
                 batch_size=32, lr=1e-2, warmup_steps=10, progress=False)
    first = np.mean(result.history["loss"][:10])
    assert result.final_loss < first / 10, (first, result.final_loss)
    assert len(result.history["loss"]) == len(result.history["lr"]) == 150
    assert not result.model.training
    assert len(plot_training(result).axes[0].lines) == 2  # raw and smoothed loss


def total_grad_norm(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()


def test_grad_clip_bounds_the_global_norm():
    def big_loss(m, b):
        return 1000 * F.mse_loss(m(b[0]), b[1])

    clipped = fit(make_model(), big_loss, make_data(), steps=1, grad_clip=0.01, progress=False)
    assert clipped.history["grad_norm"][0] > 0.01  # the norm before clipping was larger
    assert total_grad_norm(clipped.model) <= 0.01 * (1 + 1e-4)
    free = fit(make_model(), big_loss, make_data(), steps=1, progress=False)
    assert total_grad_norm(free.model) > 0.01


def test_lr_schedule_shape():
    lrs = [scheduled_lr(s, 100, 1.0, warmup_steps=10) for s in range(100)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warm-up
    assert lrs[10] == pytest.approx(1.0)                                   # peak
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))                 # then decreasing
    assert lrs[55] == pytest.approx(0.5)                                   # cosine midpoint
    assert lrs[-1] < 1e-3                                                  # ends at ~0
    assert [scheduled_lr(s, 100, 1.0, 10, "constant") for s in (10, 99)] == [1.0, 1.0]
    # fit follows it
    result = fit(make_model(), loss_fn, make_data(), steps=12, lr=0.1, warmup_steps=4,
                 progress=False)
    assert result.history["lr"] == pytest.approx([scheduled_lr(s, 12, 0.1, 4) for s in range(12)])


def test_ema_math():
    model = make_model()
    ema = EMA(model, decay=0.9, warmup=False)
    before = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    ema.update(model)
    for e, old, w in zip(ema.model.parameters(), before, model.parameters()):
        assert torch.allclose(e, 0.9 * old + 0.1 * w)  # ema = d·ema + (1 − d)·w
    warm = EMA(model, decay=0.999)
    assert [warm.current_decay()] == [pytest.approx(0.1)]  # (1 + 0) / (10 + 0)
    target = make_model(init_seed=7)
    ema.copy_to(target)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), ema.model.parameters()))
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())
    restored = EMA(make_model(init_seed=3), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1
    assert all(torch.equal(a, b) for a, b in zip(restored.model.parameters(), ema.model.parameters()))


def test_epochs_with_a_dataloader_and_logged_values():
    loader = DataLoader(make_data(), batch_size=25)
    result = fit(make_model(), loss_fn, loader, epochs=2, progress=False)
    assert result.steps == 8 and len(result.history["mae"]) == 8


def test_clear_errors(tmp_path):
    model, data = make_model(), make_data()
    with pytest.raises(ValueError, match="exactly one of steps= or epochs="):
        fit(model, loss_fn, data)
    with pytest.raises(ValueError, match="exactly one of steps= or epochs="):
        fit(model, loss_fn, data, steps=3, epochs=1)
    with pytest.raises(ValueError, match="scalar tensor"):
        fit(model, lambda m, b: (m(b[0]) - b[1]) ** 2, data, steps=1, progress=False)
    with pytest.raises(ValueError, match=".safetensors"):
        fit(model, loss_fn, data, steps=1, checkpoint=tmp_path / "run.pt")
    with pytest.raises(FloatingPointError, match="diverged"):
        fit(model, lambda m, b: m(b[0]).mean() * float("nan"), data, steps=1, progress=False)
    with pytest.raises(ValueError, match="no batches"):
        fit(model, loss_fn, (b for b in [data[:10]]), steps=3, progress=False)


def test_a_changed_run_does_not_resume_silently(tmp_path):
    path = tmp_path / "run.safetensors"
    fit(make_model(), loss_fn, make_data(), steps=3, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match=r"different run:\n  optimizer_settings\[0\]\.initial_lr: "
                                         r"0\.001 in the checkpoint, 0\.5 now\n[A-Z]"):
        fit(make_model(), loss_fn, make_data(), steps=3, lr=0.5, checkpoint=path, progress=False)
    fresh = fit(make_model(), loss_fn, make_data(), steps=3, lr=0.5, checkpoint=path,
                resume=False, progress=False)
    assert fresh.resumed_from is None


def test_a_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "run.safetensors"
    fit(make_model(), loss_fn, make_data(), steps=3, checkpoint=path, progress=False)
    good = path.read_bytes()

    def killed_mid_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", killed_mid_save)
    with pytest.raises(OSError):
        fit(make_model(), loss_fn, make_data(), steps=3, checkpoint=path, resume=False,
            progress=False)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["run.safetensors"]


def test_load_weights_prefers_the_ema(tmp_path, uninterrupted):
    path = tmp_path / "run.safetensors"
    result = fit(make_model(), loss_fn, make_data(), checkpoint=path, **RUN)
    model = load_weights(path, make_model(init_seed=4))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), result.ema_model.parameters()))
    raw = load_weights(path, make_model(init_seed=4), ema=False)
    assert all(torch.equal(a, b) for a, b in zip(raw.parameters(), result.model.parameters()))
    assert not math.isnan(result.final_loss)
