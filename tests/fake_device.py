"""A CUDA GPU that is not there: run library code on ``cuda:0`` tensors on a CPU-only machine.

    with fake_cuda() as device:          # device == torch.device("cuda", 0)
        model = build()                  # build modules *before* or inside; .to(device) works
        out = fit(model, loss_fn, data, steps=2, device=device)

Inside, torch's ``FakeTensorMode`` gives every tensor a device and a dtype but no data, so
what goes wrong on a real GPU goes wrong here too:

- a CPU tensor meeting a ``cuda:0`` tensor raises ``FakeTensorDeviceMismatchError``;
- ``.numpy()`` of a ``cuda:0`` tensor raises (on a GPU: "can't convert cuda:0 device type tensor");
- any float64 op on ``cuda:0`` raises (``mps_float64=True``, the default): Apple's MPS has no
  float64, so a float64 op on any GPU tensor is a bug on a Mac;
- ``torch.randn / rand / randint / randperm / multinomial`` with a CPU generator making a ``cuda``
  tensor raise, as on a GPU ("Expected a 'cuda' device type for generator"): fake mode alone lets
  it pass.

Fake tensors hold no numbers, so the values that code reads back are stand-ins: ``.item()`` /
``float()`` give 1.0, ``bool()`` gives True for the result of ``all()`` and False otherwise (so
checks such as "all finite" and "any NaN" pass), ``.numpy()`` / ``.tolist()`` of a CPU tensor give
zeros. Tests here check devices and dtypes, never values. ``course_lib.device`` sees a GPU
(``_cuda_available``) whose ``get_device_capability()`` is ``capability``. The gaps, stated: the autograd engine
needs a real GPU, so ``backward()`` sets every reachable leaf's gradient to zeros of its own
shape, device and dtype (a device bug inside a backward formula is not seen; the forward graph
it mirrors is checked); and CUDA autocast is off without a GPU, so the autocast dtypes are
tested by ``test_devices.py`` on CPU instead; the GradScaler disables itself without CUDA,
so its skip logic is tested on the CPU (``GradScaler("cpu")``). Ops whose output *shape* depends
on the data (``nonzero``, boolean indexing, ``torch.autograd.grad``'s engine) cannot run here.
"""
from __future__ import annotations

import contextlib
import functools
import os
import traceback
import warnings
from unittest import mock

import numpy as np
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map


class Float64OnDevice(AssertionError):
    """A float64 op ran on a GPU tensor (MPS cannot run it)."""


class _Watch(TorchDispatchMode):
    """Turns real tensors into fake ones, marks the results of ``all()`` (so that ``bool()`` of them
    says True: "all finite", "all in range" checks pass), and with ``no_float64`` fails on the first
    op whose output is float64 on a device other than the CPU."""

    def __init__(self, fake_mode: FakeTensorMode, no_float64: bool):
        super().__init__()
        self.fake_mode, self.no_float64 = fake_mode, no_float64

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        fake = lambda t: (self.fake_mode.from_tensor(t)  # noqa: E731  real tensors (e.g. a module's
                          if isinstance(t, torch.Tensor) and not isinstance(t, FakeTensor) else t)  # weights)
        args, kwargs = tree_map(fake, args), tree_map(fake, kwargs or {})
        out = func(*args, **kwargs)
        if func.overloadpacket is torch.ops.aten.all and isinstance(out, FakeTensor):
            out._stand_in_true = True
        for t in tree_leaves(out) if self.no_float64 else ():
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.device.type != "cpu":
                raise Float64OnDevice(f"{func} made a float64 tensor on {t.device}: Apple's MPS has no "
                                      "float64; compute in float64 on the CPU only (course_lib.device)")
        return out


def _leaves(grad_fn) -> list[torch.Tensor]:
    """Every leaf tensor (AccumulateGrad node) reachable from ``grad_fn``."""
    seen, stack, leaves = set(), [grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return leaves


def _fake_backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
    for leaf in _leaves(self.grad_fn):
        if leaf.requires_grad:
            grad = torch.zeros_like(leaf)
            leaf.grad = grad if leaf.grad is None else leaf.grad + grad


_NUMPY = {torch.float64: np.float64, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32,
          torch.uint8: np.uint8, torch.bool: np.bool_}


def _stand_in(name, real):
    def method(self, *args, **kwargs):
        if not isinstance(self, FakeTensor):
            return real(self, *args, **kwargs)
        if name == "numpy":
            if self.device.type != "cpu":
                raise RuntimeError(f"can't convert {self.device} device type tensor to numpy. "
                                   "Use Tensor.cpu() to copy the tensor to host memory first.")
            return np.zeros(tuple(self.shape), dtype=_NUMPY.get(self.dtype, np.float32))
        if name == "tolist":
            return np.zeros(tuple(self.shape)).tolist()
        if name == "__bool__":
            return getattr(self, "_stand_in_true", False)   # all(...) -> True; any(...), x < y -> False
        if name == "__int__":
            return 1
        return 1.0 if self.dtype.is_floating_point else 1  # item, __float__
    return method


_real_autocast = torch.autocast
_real_swap = torch.utils.swap_tensors


def _swap_tensors(t1, t2):
    """``module.to(device)`` swaps a fake parameter even when it is already there, which fake mode's
    weak references refuse; a parameter already on the right device and dtype is simply kept."""
    try:
        _real_swap(t1, t2)
    except RuntimeError:
        if not (isinstance(t1, FakeTensor) and t1.device == t2.device and t1.dtype == t2.dtype):
            raise


def _checks_generator(name, real):
    """``torch.<name>`` that refuses a generator on another device than the tensor it makes."""
    def fn(*args, generator=None, device=None, **kwargs):
        made_on = args[0].device if name == "multinomial" else torch.device(device or "cpu")
        if generator is not None and generator.device.type != made_on.type:
            raise RuntimeError(f"Expected a '{made_on.type}' device type for generator but found "
                               f"'{generator.device.type}' (torch.{name}): draw on the CPU, then move")
        if name != "multinomial":
            kwargs["device"] = device
        return real(*args, generator=generator, **kwargs)
    return fn


def _autocast(device_type, *args, **kwargs):
    """CUDA autocast needs a GPU: on fake ``cuda`` it changes nothing (the ops stay float32)."""
    return contextlib.nullcontext() if device_type == "cuda" else _real_autocast(device_type, *args, **kwargs)


@contextlib.contextmanager
def fake_cuda(capability: tuple[int, int] = (8, 0), mps_float64: bool = True):
    """Run the ``with`` body as if a CUDA GPU of ``capability`` were here; yields ``cuda:0``."""
    patches = [mock.patch("course_lib.device._cuda_available", return_value=True),
               mock.patch("torch.cuda.get_device_capability", return_value=capability),
               mock.patch("torch.autocast", _autocast),
               mock.patch("torch.utils.swap_tensors", _swap_tensors),
               mock.patch.object(torch.Tensor, "backward", _fake_backward)]
    for name in ("randn", "rand", "randint", "randperm", "multinomial"):
        patches.append(mock.patch(f"torch.{name}", _checks_generator(name, getattr(torch, name))))
    for name in ("item", "numpy", "tolist", "__bool__", "__float__", "__int__"):
        patches.append(mock.patch.object(torch.Tensor, name, _stand_in(name, getattr(torch.Tensor, name))))
    with contextlib.ExitStack() as stack, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*data pointer of FakeTensor")
        for p in patches:
            stack.enter_context(p)
        fake_mode = stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        stack.enter_context(_Watch(fake_mode, no_float64=mps_float64))
        yield torch.device("cuda", 0)


def in_a_fork(test):
    """Run a test in a forked child process and report its failure here. Fake CUDA tensors leave
    the autograd engine set up for a GPU; a later fork-based pool in the same process (the
    grading sandbox) then refuses to run backward. The child takes that state with it."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:                                                  # the child
            os.close(read)
            status, report = 0, b""
            try:
                test(*args, **kwargs)
            except BaseException:                                     # noqa: B036 (report everything)
                status, report = 1, traceback.format_exc().encode()
            with os.fdopen(write, "wb") as out:
                out.write(report)
            os._exit(status)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            report = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise AssertionError(f"in the forked test process:\n{report or f'exit status {status}'}")
    return run
