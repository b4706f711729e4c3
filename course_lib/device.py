"""The one device helper of the course: every notebook and module goes through it.

- :func:`get_device` picks CUDA → MPS → CPU (env ``COURSE_DEVICE`` or an argument overrides).
- :func:`autocast_dtype` / :func:`amp` choose mixed precision for training (the table below);
  :func:`no_autocast` marks the few ops that must run in float32 whatever autocast says.
- :func:`seed_everything`, :func:`memory_report`, :func:`throughput`, :func:`describe_hardware`,
  :func:`free_memory` and :func:`maybe_compile` do what their names say.

No ``.cuda()`` anywhere else in the course: move things with ``.to(device)``.

**The device rule of the whole library** (tested without a GPU by ``tests/test_devices.py``):

1. *What comes back.* A helper that hands a learner a finished result (images, samples, features,
   metrics: ``TextToImage.generate``, ``Flow.sample``, the judges, ``eval``) returns **CPU**
   tensors or Python numbers, whatever device the model is on. Building blocks that run inside a
   loop (a model's forward, a loss, a step rule, ``diffusion.solver.sample`` / ``solve``) keep the
   device of their model and inputs, and accept inputs on the CPU only where they say so.
2. *Where noise comes from.* Random numbers are drawn on the CPU from a ``torch.Generator``
   (default: the global CPU generator) and then moved: ``torch.randn(shape, generator=g).to(device)``.
   A seed gives the same noise on every device; a generator on the GPU is never needed.
3. *Which dtype.* Models run in float32 (under autocast on CUDA when training, see below).
   float64 runs **on the CPU only** (MPS has no float64): move to the CPU first,
   ``x.detach().cpu().double()``, never ``x.double()`` on a device.
4. *Mixed precision* (:func:`autocast_dtype`, used by ``train.fit``):

       CUDA, compute capability >= 8.0 (A100, H100, L4, RTX 30/40): bf16 autocast, no scaler
       CUDA, compute capability <  8.0 (T4 = 7.5, V100 = 7.0):      fp16 autocast + GradScaler
       CPU, MPS:                                                    None (float32)

   Ops that autocast would ruin run in float32 by design, inside :func:`no_autocast` and/or on
   inputs made float32 by :func:`upcast`: binary cross-entropy, log-likelihoods (VAE, flows: the
   log-determinant), CLIP's logits. Not bit-identical across devices: GPU kernels (cuDNN's TF32
   convolutions, on by default on compute capability >= 8.0; nondeterministic atomics) differ from
   the CPU in the last digits; a seed fixes the *noise* everywhere, not every rounding.
"""
from __future__ import annotations

import contextlib
import gc
import os
import platform
import random
import resource
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

__all__ = ["get_device", "autocast_dtype", "amp", "Amp", "no_autocast", "upcast", "seed_everything", "memory_report",
           "throughput", "describe_hardware", "free_memory", "maybe_compile", "synchronize"]


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def get_device(prefer: str | torch.device | None = None) -> torch.device:
    """The device to use: ``prefer``, else env ``COURSE_DEVICE``, else CUDA → MPS → CPU.

    Asking for a device this machine does not have raises a ``RuntimeError`` that says so.
    """
    choice = prefer if prefer is not None else os.environ.get("COURSE_DEVICE") or None
    if choice is None:
        if _cuda_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not _cuda_available():
        raise RuntimeError(f"device {device} was asked for, but PyTorch sees no CUDA GPU here; "
                           "use 'cpu' (or unset COURSE_DEVICE to pick automatically)")
    if device.type == "mps" and not _mps_available():
        raise RuntimeError("device mps was asked for, but this is not an Apple-silicon Mac "
                           "with MPS; use 'cpu' (or unset COURSE_DEVICE)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device}; the course runs on cpu, cuda or mps")
    return device


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype ``fit`` trains in on ``device``:

        CUDA with compute capability (major, minor) >= (8, 0): torch.bfloat16 (native bf16)
        older CUDA GPUs (T4 7.5, V100 7.0):                    torch.float16 (with a GradScaler)
        CPU and MPS:                                           None (full float32)

    ``torch.cuda.is_bf16_supported()`` is not asked: it says True on a T4, which only emulates
    bf16 (slowly), so a T4 gets fp16 and a scaler instead.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


@dataclass
class Amp:
    """Mixed-precision policy: ``with policy.autocast(): loss = ...``; with fp16 the loss is
    scaled by ``policy.scaler`` before ``backward`` and the scaler skips a step whose
    gradients are not finite (inf/NaN), lowering its scale; ``train.fit`` does all of this."""

    device: torch.device
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def describe(self) -> str:
        """One line for a notebook: e.g. 'float32' or 'fp16 autocast + grad scaler (cuda)'."""
        if self.dtype is None:
            return "float32"
        name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, str(self.dtype))
        return f"{name} autocast{' + grad scaler' if self.scaler is not None else ''} ({self.device.type})"


def amp(device: torch.device | str, enabled: bool = True) -> Amp:
    """The mixed-precision policy for training on ``device`` (see :func:`autocast_dtype`);
    ``enabled=False`` gives full float32 everywhere."""
    device = torch.device(device)
    dtype = autocast_dtype(device) if enabled else None
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return Amp(device, dtype, scaler)


def upcast(*tensors: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Each tensor in float32 if autocast made it bf16 / fp16; float32 and float64 unchanged."""
    out = tuple(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors)
    return out[0] if len(out) == 1 else out


def no_autocast(like: torch.Tensor):
    """A context in which autocast is off on ``like``'s device: the ops inside run in the dtype
    of their inputs, so give them float32 inputs (``.float()``)::

        with no_autocast(x_hat):      # BCE in float32 by design (CUDA autocast refuses it)
            loss = F.binary_cross_entropy(*upcast(x_hat, x))
    """
    return torch.autocast(device_type=like.device.type, enabled=False)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so a run can be repeated exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so timings measure the work and not the queueing."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def memory_report(device: torch.device | str | None = None) -> dict[str, float]:
    """Memory in MiB: GPU allocated / reserved / peak on CUDA, process peak RSS otherwise."""
    device = torch.device(device) if device is not None else get_device()
    mib = 2 ** 20
    if device.type == "cuda":
        return {"allocated_mib": torch.cuda.memory_allocated(device) / mib,
                "reserved_mib": torch.cuda.memory_reserved(device) / mib,
                "peak_mib": torch.cuda.max_memory_allocated(device) / mib}
    if device.type == "mps":
        return {"allocated_mib": torch.mps.current_allocated_memory() / mib,
                "driver_mib": torch.mps.driver_allocated_memory() / mib}
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak = peak_kib / mib if sys.platform == "darwin" else peak_kib / 1024
    return {"process_peak_rss_mib": peak}


def throughput(fn: Callable[[], object], items: int, device: torch.device | str | None = None,
               warmup: int = 1, repeats: int = 3) -> float:
    """Items per second of ``fn()`` (which processes ``items`` items), best of ``repeats``."""
    if items <= 0 or repeats <= 0:
        raise ValueError("items and repeats must be positive")
    device = torch.device(device) if device is not None else get_device()
    for _ in range(warmup):
        fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return items / max(best, 1e-9)


def describe_hardware() -> dict[str, object]:
    """What this machine offers the course: versions, CPU threads, GPU name and memory."""
    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(get_device()),
        "cuda": torch.cuda.is_available(),
        "mps": _mps_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    info["autocast_dtype"] = str(autocast_dtype(get_device()))
    info["training_precision"] = amp(get_device()).describe()
    return info


def free_memory() -> None:
    """Collect garbage and hand cached GPU memory back to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if _mps_available():
        torch.mps.empty_cache()


def maybe_compile(model: torch.nn.Module, enabled: bool = False) -> torch.nn.Module:
    """``torch.compile(model)`` when asked and on CUDA (where it pays off); the model otherwise."""
    if enabled and next(model.parameters()).device.type == "cuda":
        return torch.compile(model)
    return model
