"""One short training loop for the whole course.

    def loss_fn(model, batch):
        x, _ = batch
        return F.mse_loss(model(x), x)            # or (loss, {"mse": ..., "kl": ...})

    result = fit(model, loss_fn, dataset, steps=2000, batch_size=128, lr=1e-3,
                 warmup_steps=100, grad_clip=1.0, ema_decay=0.999,
                 checkpoint=output_dir() / "vae.safetensors")
    plot_training(result)                      # course_lib.viz draws the loss curve
    samples = sample(result.ema_model)

One optimizer step is: zero the gradients; forward and loss under autocast; backward
(scaled when fp16 needs it); clip the gradient's global norm; step with the scheduled
learning rate; update the EMA. Linear warm-up then cosine decay to zero (or constant).

**Precision** (``course_lib.device.amp``): float32 on CPU and MPS; on CUDA, bf16 autocast on
GPUs of compute capability >= 8.0 and fp16 autocast with a GradScaler on older ones (T4, V100).
A non-finite loss stops training with a ``FloatingPointError`` -- except under fp16, where the
scaler skips the step (and lowers its scale) as it is meant to; ten such losses in a row stop
training too. The model should be on ``device`` (``fit`` moves it there) and batches are moved
to it; anything ``loss_fn`` builds itself must be built on the batch's device.

**Checkpoint and resume.** With ``checkpoint=path`` the run is saved every
``checkpoint_every`` steps (default: every 5 minutes), at the end, and when you interrupt
the kernel. Re-running the same cell finds the file and carries on from where it stopped;
a finished run just loads. The resumed run is bit-for-bit the run that was never
interrupted (on the same machine), because the checkpoint holds everything that decides
what happens next: weights, optimizer state, EMA, loss scaler, the position in the data
and the random number generators (torch CPU/CUDA/MPS, NumPy, Python). Files are written
to a temporary name and then renamed, so a kill in the middle of saving never corrupts
the previous checkpoint.

Exact replay needs the batches to come in an order fixed by the seed: give ``fit`` a
Dataset, which it shuffles with an order that depends only on (seed, epoch). Any other
iterable (a DataLoader, a list of batches) is used as it is; on resume the batches of the
current epoch that were already used are skipped.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from course_lib.device import amp, get_device, seed_everything

__all__ = ["fit", "TrainResult", "EMA", "scheduled_lr", "load_weights"]

_FORMAT = 1
_META_KEY = "course_lib.train"
_RESERVED_LOGS = ("loss", "lr", "grad_norm")
_AUTOSAVE_SECONDS = 300
_MAX_SKIPPED_STEPS = 10  # fp16: non-finite losses in a row the grad scaler may skip before fit stops


# ---------------------------------------------------------------------------------------------
# learning-rate schedule and EMA
# ---------------------------------------------------------------------------------------------

def scheduled_lr(step: int, total_steps: int, lr: float, warmup_steps: int = 0,
                 schedule: str = "cosine") -> float:
    """The learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

        warm-up, step < W:  lr · (step + 1) / W
        cosine:             lr · ½ · (1 + cos(π · (step − W) / (total_steps − W)))
        constant:           lr
    """
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class EMA:
    """Exponential moving average of a model's weights, the weights to sample with.

        ema ← d · ema + (1 − d) · w        after every optimizer step

    ``ema.model`` is a frozen copy of the model (eval mode) that holds the averaged weights;
    buffers (e.g. BatchNorm statistics) are copied, not averaged. With ``warmup=True`` the
    decay grows as d_n = min(d, (1 + n) / (10 + n)) over the first updates n, so a short run
    is not dominated by the random initial weights; ``warmup=False`` uses d from the start.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r} (typical: 0.999)")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        for p in self.model.parameters():
            p.grad = None

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.mul_(d).add_(p.detach(), alpha=1 - d)  # ema = d·ema + (1 − d)·w
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
        self.updates += 1

    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s weights with the averaged ones."""
        model.load_state_dict(self.model.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "decay": self.decay, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["weights"])
        self.updates = int(state["updates"])


# ---------------------------------------------------------------------------------------------
# results and bookkeeping
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What :func:`fit` returns. ``history[key][i]`` is the value at step i + 1.

    ``course_lib.viz.plot_training(result)`` draws the curves (train sits below viz).
    """

    history: dict[str, list[float]]
    steps: int
    seconds: float
    model: nn.Module
    ema_model: nn.Module | None
    optimizer: torch.optim.Optimizer
    resumed_from: int | None = None  # the step a checkpoint was resumed from, if any

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 10 % of the steps (at least one)."""
        losses = self.history["loss"]
        tail = losses[-max(1, len(losses) // 10):]
        return float(np.mean(tail)) if tail else float("nan")


@dataclass
class _State:
    """Where the run is: steps done, position in the data, history."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches of the current epoch already used
    seconds: float = 0.0
    history: dict[str, list[float]] = field(default_factory=lambda: {"loss": [], "lr": []})

    def record(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed seed made from (seed, epoch), for the data order of that epoch."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class _Batches:
    """The batches of each epoch. A map-style Dataset is shuffled here in an order that
    depends only on (seed, epoch); any other iterable is used as it is."""

    def __init__(self, data: Any, batch_size: int, seed: int, num_workers: int):
        self.data, self.batch_size, self.seed, self.num_workers = data, batch_size, seed, num_workers
        self.is_dataset = isinstance(data, Dataset) and not isinstance(data, IterableDataset)
        if isinstance(data, IterableDataset):
            self.data = DataLoader(data, batch_size=batch_size, num_workers=num_workers)
        elif not self.is_dataset and not isinstance(data, Iterable):
            raise TypeError("data must be a torch Dataset, a DataLoader or an iterable of batches; "
                            f"got {type(data).__name__}")
        if self.is_dataset and len(data) == 0:
            raise ValueError("data is an empty Dataset")

    def __len__(self) -> int:
        if self.is_dataset:
            return math.ceil(len(self.data) / self.batch_size)
        try:
            return len(self.data)
        except TypeError:
            raise TypeError("epochs= needs data with a length; this iterable has none, "
                            "so give steps= instead") from None

    def epoch(self, epoch: int, skip: int) -> Iterator[Any]:
        """The batches of ``epoch``, without the first ``skip``."""
        if not self.is_dataset:
            return itertools.islice(iter(self.data), skip, None)
        order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(
            _epoch_seed(self.seed, epoch))).tolist()
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        loader = DataLoader(self.data, batch_sampler=batches[skip:], num_workers=self.num_workers,
                            generator=torch.Generator().manual_seed(_epoch_seed(self.seed, epoch)))
        return iter(loader)


def _to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) tuple / list / dict batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [_to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


# ---------------------------------------------------------------------------------------------
# one step
# ---------------------------------------------------------------------------------------------

def _unpack_loss(out: Any, step: int, allow_nonfinite: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """loss_fn's result -> (scalar loss tensor, {name: float} to log).

    A non-finite loss raises, unless ``allow_nonfinite`` (fp16 with a grad scaler: the scaler
    skips that step and lowers its scale; ``_loop`` raises if it keeps happening)."""
    loss, logs = out if isinstance(out, tuple) and len(out) == 2 else (out, {})
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError("loss_fn(model, batch) must return a scalar tensor, or (loss, dict of "
                         f"floats to log); got {got} (did you forget a .mean()?)")
    if not isinstance(logs, dict):
        raise TypeError(f"loss_fn's second output must be a dict of floats to log, got {type(logs).__name__}")
    if bad := [k for k in logs if k in _RESERVED_LOGS]:
        raise ValueError(f"loss_fn may not log {bad}: fit records {list(_RESERVED_LOGS)} itself")
    value = loss.item()
    if not math.isfinite(value) and not allow_nonfinite:
        raise _diverged(value, step)
    return loss.reshape(()), {k: float(v.detach() if isinstance(v, torch.Tensor) else v)
                             for k, v in logs.items()}


def _diverged(value: float, step: int, skipped: int = 0) -> FloatingPointError:
    scaler = (f" (the fp16 grad scaler skipped the last {skipped} steps: the loss itself is not finite)"
              if skipped else "")
    return FloatingPointError(f"the loss is {value} at step {step + 1}: training diverged{scaler}. Try a "
                              "lower lr, grad_clip=1.0, or check loss_fn for log(0) or x/0.")


def _backward(model: nn.Module, loss_fn: Callable, batch: Any, optimizer: torch.optim.Optimizer,
              policy: Any, grad_clip: float | None, step: int) -> dict[str, float]:
    """Forward, backward and clipping; returns the values to log (the update comes after)."""
    optimizer.zero_grad(set_to_none=True)
    with policy.autocast():
        loss, logs = _unpack_loss(loss_fn(model, batch), step, allow_nonfinite=policy.scaler is not None)
    if policy.scaler is not None:
        policy.scaler.scale(loss).backward()
        policy.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    else:
        loss.backward()
    logs["loss"] = loss.item()
    if grad_clip is not None:
        norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip)  # ‖g‖ ≤ grad_clip
        logs["grad_norm"] = float(norm)  # before clipping
    return logs


def _update(optimizer: torch.optim.Optimizer, policy: Any, ema: EMA | None,
            model: nn.Module) -> None:
    if policy.scaler is not None:
        policy.scaler.step(optimizer)  # skipped when the gradients hold inf/NaN
        policy.scaler.update()
    else:
        optimizer.step()
    if ema is not None:
        ema.update(model)


# ---------------------------------------------------------------------------------------------
# random number generators
# ---------------------------------------------------------------------------------------------

def _rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every RNG a training step may draw from: (tensors, JSON-able values)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    if device.type == "mps":
        tensors["rng.mps"] = torch.mps.get_rng_state()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    values = {"numpy": [name, int(pos), int(has_gauss), float(cached)], "python": random.getstate()}
    return tensors, values


def _set_rng_state(tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "rng.mps" in tensors and torch.backends.mps.is_available():
        torch.mps.set_rng_state(tensors["rng.mps"])
    name, pos, has_gauss, cached = values["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = values["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------

def _run_config(model: nn.Module, optimizer: torch.optim.Optimizer, total: int,
                batches: _Batches, **settings: Any) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: the model's parameter names and
    shapes, the optimizer and its hyper-parameters, and the training settings."""
    shapes = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    hyper = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in optimizer.param_groups]
    config = {"model": type(model).__name__,
              "architecture": hashlib.sha1(json.dumps(shapes).encode()).hexdigest()[:12],
              "optimizer": type(optimizer).__name__,
              "optimizer_settings": hyper,
              "steps": total,
              "batch_size": batches.batch_size if batches.is_dataset else None,
              **settings}
    return json.loads(_to_json(config, "the run's settings"))  # as it will read back


def _to_json(value: Any, what: str) -> str:
    def refuse(obj: Any) -> Any:
        raise TypeError(f"{what} holds {obj!r}, which a checkpoint cannot store as JSON")

    return json.dumps(value, default=refuse)


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy (safetensors refuses tensors that share memory, e.g. tied weights)."""
    return tensor.detach().to("cpu", copy=True).contiguous()


def _save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     ema: EMA | None, policy: Any, state: _State, config: dict[str, Any],
                     rng: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> None:
    """Write everything needed to resume into one .safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": _cpu_copy(v) for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": _cpu_copy(v) for k, v in ema.model.state_dict().items()})
    opt = optimizer.state_dict()
    extra_state: dict[str, dict[str, Any]] = {}
    for index, entries in opt["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = _cpu_copy(value)
            else:
                extra_state.setdefault(str(index), {})[key] = value
    tensors.update({f"history.{k}": torch.tensor(v, dtype=torch.float64)
                    for k, v in state.history.items()})
    rng_tensors, rng_values = rng
    tensors.update({k: _cpu_copy(v) for k, v in rng_tensors.items()})
    meta = {"format": _FORMAT, "config": config, "step": state.step, "epoch": state.epoch,
            "batch": state.batch, "seconds": state.seconds, "history_keys": list(state.history),
            "optimizer": {"param_groups": opt["param_groups"], "extra_state": extra_state},
            "ema_updates": ema.updates if ema is not None else None,
            "scaler": policy.scaler.state_dict() if policy.scaler is not None else None,
            "rng": rng_values}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={_META_KEY: _to_json(meta, "the training state")})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half
    finally:
        tmp.unlink(missing_ok=True)


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[_META_KEY])
    except Exception as exc:
        raise ValueError(f"{path} is not a readable course_lib training checkpoint ({exc}); "
                         "delete it to start over") from exc
    return tensors, meta


def _with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _config_mismatch(saved: Any, now: Any, where: str = "") -> list[str]:
    """Every setting that differs between two configs, e.g. "grad_clip: 0.5 in the
    checkpoint, None now" (nested dicts and lists are compared entry by entry)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [line for k in sorted(set(saved) | set(now))
                for line in _config_mismatch(saved.get(k), now.get(k), f"{where}.{k}" if where else k)]
    if isinstance(saved, list) and isinstance(now, list) and len(saved) == len(now):
        return [line for i, (a, b) in enumerate(zip(saved, now))
                for line in _config_mismatch(a, b, f"{where}[{i}]")]
    return [] if saved == now else [f"{where}: {saved!r} in the checkpoint, {now!r} now"]


def _restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None,
             policy: Any, config: dict[str, Any]) -> tuple[_State, tuple]:
    """Load a checkpoint into the training objects; returns the state and the RNG state."""
    tensors, meta = _read_checkpoint(path)
    if differences := _config_mismatch(meta["config"], config):
        raise ValueError(f"the checkpoint {path} was made by a different run:\n  "
                         + "\n  ".join(differences)
                         + "\nDelete it, choose another checkpoint path, or pass resume=False "
                           "to start over (the file is then overwritten).")
    model.load_state_dict(_with_prefix(tensors, "model."))
    if ema is not None:
        ema.model.load_state_dict(_with_prefix(tensors, "ema."))
        ema.updates = meta["ema_updates"]
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in _with_prefix(tensors, "optimizer.").items():
        index, name = key.split(".", 1)
        opt_state.setdefault(int(index), {})[name] = value
    for index, entries in meta["optimizer"]["extra_state"].items():
        opt_state.setdefault(int(index), {}).update(entries)
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]})
    if policy.scaler is not None and meta["scaler"] is not None:
        policy.scaler.load_state_dict(meta["scaler"])
    history = {k: tensors[f"history.{k}"].tolist() for k in meta["history_keys"]}
    state = _State(step=meta["step"], epoch=meta["epoch"], batch=meta["batch"],
                   seconds=meta["seconds"], history=history)
    rng_tensors = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    return state, (rng_tensors, meta["rng"])


def load_weights(path: str | os.PathLike, model: nn.Module, ema: bool = True) -> nn.Module:
    """Load the weights of a :func:`fit` checkpoint into ``model`` (the EMA weights when the
    run kept an EMA and ``ema=True``) and return the model in eval mode."""
    tensors, _ = _read_checkpoint(Path(path))
    weights = _with_prefix(tensors, "ema.") if ema else {}
    model.load_state_dict(weights or _with_prefix(tensors, "model."))
    return model.eval()


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------

def _check_args(steps, epochs, batch_size, lr, warmup_steps, schedule, grad_clip, ema_decay,
                checkpoint, checkpoint_every, log_every) -> None:
    def positive_int(name: str, v: Any) -> None:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")

    if (steps is None) == (epochs is None):
        raise ValueError("fit needs exactly one of steps= or epochs= (how long to train); "
                         f"got steps={steps!r}, epochs={epochs!r}")
    for name, v in (("steps", steps), ("epochs", epochs), ("checkpoint_every", checkpoint_every)):
        if v is not None:
            positive_int(name, v)
    positive_int("batch_size", batch_size)
    positive_int("log_every", log_every)
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be a non-negative int, got {warmup_steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be positive (or None), got {grad_clip!r}")
    if ema_decay is not None and not 0 < ema_decay < 1:
        raise ValueError(f"ema_decay must be in (0, 1) (typical: 0.999) or None, got {ema_decay!r}")
    if checkpoint is not None and Path(checkpoint).suffix != ".safetensors":
        raise ValueError(f"checkpoint must be a .safetensors path, got {str(checkpoint)!r}")


def fit(model: nn.Module, loss_fn: Callable[[nn.Module, Any], Any], data: Any, *,
        steps: int | None = None, epochs: int | None = None, batch_size: int = 64,
        lr: float = 1e-3, optimizer: torch.optim.Optimizer | None = None,
        weight_decay: float = 0.0, warmup_steps: int = 0, schedule: str = "cosine",
        grad_clip: float | None = None, ema_decay: float | None = None, use_amp: bool = True,
        device: str | torch.device | None = None, checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int | None = None, resume: bool = True, seed: int = 0,
        log_every: int = 10, progress: bool = True, num_workers: int = 0) -> TrainResult:
    """Train ``model`` to minimise ``loss_fn(model, batch)`` for ``steps`` optimizer steps
    (or ``epochs`` passes over ``data``).

    loss_fn: returns a scalar loss tensor, or ``(loss, {"name": float, ...})`` to log more.
    data: a Dataset (batched here with ``batch_size``, shuffled by ``seed``; exact resume),
          or a DataLoader / any iterable of batches. Batches are moved to ``device``.
    optimizer: default ``AdamW(lr=lr, weight_decay=weight_decay)``; a given optimizer's own
          lr is the peak of the schedule. The lr warms up linearly over ``warmup_steps``,
          then follows ``schedule`` ("cosine" to 0, or "constant").
    grad_clip: clip the global gradient norm to this (logged as "grad_norm", before clipping).
    ema_decay: keep an :class:`EMA` of the weights (``result.ema_model``).
    use_amp: mixed precision from :func:`course_lib.device.amp` (float32 on CPU and MPS; bf16, or
          fp16 + grad scaler, on CUDA); ``use_amp=False`` trains in float32 everywhere.
    checkpoint: a ``.safetensors`` path: resume from it if it exists (``resume=False`` starts
          over), save to it every ``checkpoint_every`` steps (None: every 5 minutes), at the
          end, and on KeyboardInterrupt.
    seed: seeds torch/NumPy/Python at the start and fixes the data order.
    Returns a :class:`TrainResult`; the model is left in eval mode.
    """
    _check_args(steps, epochs, batch_size, lr, warmup_steps, schedule, grad_clip, ema_decay,
                checkpoint, checkpoint_every, log_every)
    device = get_device(device)
    model.to(device).train()
    batches = _Batches(data, batch_size, seed, num_workers)
    total = steps if steps is not None else epochs * len(batches)
    if optimizer is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])  # the peak of the schedule
    policy = amp(device, enabled=use_amp)
    ema = EMA(model, ema_decay) if ema_decay is not None else None
    config = _run_config(model, optimizer, total, batches, warmup_steps=warmup_steps,
                         schedule=schedule, grad_clip=grad_clip, ema_decay=ema_decay, seed=seed)
    seed_everything(seed)
    state, resumed_from = _State(), None
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and resume and path.exists():
        state, rng = _restore(path, model, optimizer, ema, policy, config)
        _set_rng_state(*rng)
        resumed_from = state.step
        print(f"Resuming from {path} at step {state.step}/{total}." if state.step < total else
              f"{path} holds this finished run ({total} steps): loaded it, nothing left to train.")
    _loop(model, loss_fn, batches, optimizer, policy, ema, state, total, device,
          grad_clip=grad_clip, warmup_steps=warmup_steps, schedule=schedule, path=path,
          config=config, checkpoint_every=checkpoint_every, log_every=log_every,
          progress=progress)
    model.eval()
    return TrainResult(history=state.history, steps=state.step, seconds=state.seconds,
                       model=model, ema_model=ema.model if ema is not None else None,
                       optimizer=optimizer, resumed_from=resumed_from)


def _set_lr(optimizer: torch.optim.Optimizer, step: int, total: int, warmup_steps: int,
            schedule: str) -> float:
    """Set every parameter group's lr for ``step``; returns the first group's."""
    for group in optimizer.param_groups:
        group["lr"] = scheduled_lr(step, total, group["initial_lr"], warmup_steps, schedule)
    return optimizer.param_groups[0]["lr"]


def _loop(model, loss_fn, batches, optimizer, policy, ema, state, total, device, *, grad_clip,
          warmup_steps, schedule, path, config, checkpoint_every, log_every, progress) -> None:
    """Run steps until ``state.step == total``, saving checkpoints along the way."""
    from tqdm.auto import tqdm

    rng = _rng_state(device)  # the RNG state right after the last completed step

    def save() -> None:
        _save_checkpoint(path, model, optimizer, ema, policy, state, config, rng)

    start, last_save = time.perf_counter(), time.monotonic()
    first_step, seconds_before, in_update = state.step, state.seconds, False
    nonfinite_in_a_row = 0  # only with a grad scaler: its skipped steps
    bar = tqdm(total=total, initial=state.step, unit="step", disable=not progress, desc="train")
    try:
        while state.step < total:
            used = 0
            for batch in batches.epoch(state.epoch, skip=state.batch):
                used += 1
                lr_now = _set_lr(optimizer, state.step, total, warmup_steps, schedule)
                logs = _backward(model, loss_fn, _to_device(batch, device), optimizer, policy,
                                 grad_clip, state.step)
                nonfinite_in_a_row = 0 if math.isfinite(logs["loss"]) else nonfinite_in_a_row + 1
                if nonfinite_in_a_row > _MAX_SKIPPED_STEPS:
                    raise _diverged(logs["loss"], state.step, nonfinite_in_a_row - 1)
                in_update = True  # from here until the bookkeeping is done, state is in flux
                _update(optimizer, policy, ema, model)
                state.record({"lr": lr_now, **logs})
                state.step, state.batch = state.step + 1, state.batch + 1
                state.seconds = seconds_before + time.perf_counter() - start
                rng = _rng_state(device)
                in_update = False
                bar.update(1)
                if state.step % log_every == 0 or state.step == total:
                    recent = state.history["loss"][-log_every:]
                    bar.set_postfix(loss=f"{np.mean(recent):.4g}", lr=f"{lr_now:.2e}", refresh=False)
                due = (state.step % checkpoint_every == 0 if checkpoint_every
                       else time.monotonic() - last_save > _AUTOSAVE_SECONDS)
                if path is not None and due and state.step < total:
                    save()
                    last_save = time.monotonic()
                if state.step >= total:
                    break
            else:  # the epoch ran out
                if used == 0 and state.batch == 0:
                    raise ValueError(f"data gave no batches in epoch {state.epoch + 1}; a generator "
                                     "can be iterated only once: pass a Dataset, DataLoader or list")
                state.epoch, state.batch = state.epoch + 1, 0
        if path is not None and state.step > first_step:
            save()
    except KeyboardInterrupt:
        if path is None:
            tqdm.write(f"Interrupted at step {state.step}/{total}; nothing saved (no checkpoint= given).")
        elif in_update:
            tqdm.write(f"Interrupted during a weight update at step {state.step}; the last "
                       f"checkpoint in {path} is kept. Re-run the cell to resume from it.")
        else:
            save()
            tqdm.write(f"Interrupted: saved step {state.step}/{total} to {path}. "
                       "Re-run the cell to resume from there.")
        raise
    finally:
        bar.close()
