"""Real datasets (MNIST, Fashion-MNIST, CIFAR-10) through torchvision, into ``data_dir()``.

    >>> train = load_real("mnist", "train")        # item: (image (1, 28, 28) in [0, 1], label)
    >>> test = load_real("cifar10", "test", size=64)

Files already on disk are used as they are. Otherwise the loader downloads them, but only
after a quick check (a few seconds) that the server answers: offline it fails fast with a
:class:`DatasetUnavailableError` that names the offline stand-in ("digits" for the MNISTs,
"shapes" for CIFAR-10) and the folder where the files belong.

For tests, :func:`write_mnist_format` and :func:`write_cifar10_format` write small files in
the exact on-disk formats that torchvision reads, and :func:`write_standin` fills both splits
of a dataset with offline images. Stand-in CIFAR-10 files cannot match the official MD5 sums,
so load them with ``verify=False``.
"""
from __future__ import annotations

import contextlib
import pickle
import socket
import threading
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
from torch.utils.data import Dataset

from course_lib.config import data_dir
from course_lib.data._names import unknown_name

__all__ = ["REAL_DATASETS", "OFFLINE_ALTERNATIVE", "DatasetUnavailableError", "load_real",
           "write_mnist_format", "write_cifar10_format", "write_standin"]

REAL_DATASETS = ("mnist", "fashion_mnist", "cifar10")
OFFLINE_ALTERNATIVE = {"mnist": "digits", "fashion_mnist": "digits", "cifar10": "shapes"}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
_FOLDER = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw",
           "cifar10": "cifar-10-batches-py"}
PROBE_TIMEOUT_S = 3.0      # how long to wait for the download server to answer
DOWNLOAD_TIMEOUT_S = 60.0  # the most a stalled download may sit without receiving data


class DatasetUnavailableError(RuntimeError):
    """A real dataset is neither on disk nor downloadable (offline, or the server is down)."""


@lru_cache(maxsize=1)
def _unchecked_cifar10() -> type:
    from torchvision.datasets import CIFAR10

    class UncheckedCIFAR10(CIFAR10):
        """torchvision's CIFAR-10, checking that its files exist but not their MD5 sums."""

        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [[name, None] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    return UncheckedCIFAR10


def _torchvision_class(name: str, verify: bool) -> type:
    """The torchvision dataset class for ``name`` (torchvision is imported only when needed)."""
    if name not in REAL_DATASETS:
        raise unknown_name("real dataset", name, REAL_DATASETS)
    from torchvision import datasets

    classes = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST,
               "cifar10": datasets.CIFAR10 if verify else _unchecked_cifar10()}
    return classes[name]


def _download_url(cls: type) -> str:
    return getattr(cls, "url", None) or cls.mirrors[0]


def _reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the host of ``url`` accepts a connection within ``timeout`` seconds.

    The connection runs in a daemon thread so that a hanging DNS lookup cannot block us."""
    parts = urlsplit(url)
    address = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    answered = threading.Event()

    def connect() -> None:
        with contextlib.suppress(OSError), socket.create_connection(address, timeout=timeout):
            answered.set()

    attempt = threading.Thread(target=connect, daemon=True)
    attempt.start()
    attempt.join(timeout)  # returns early when the connection succeeds or is refused
    return answered.is_set()


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """Make a stalled download raise instead of hang (torchvision's urlopen has no timeout)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _unavailable(name: str, root: Path, reason: str) -> DatasetUnavailableError:
    alternative = OFFLINE_ALTERNATIVE[name]
    return DatasetUnavailableError(
        f"{name} is not available: {reason}. Offline, use the built-in stand-in instead: "
        f"load_dataset({alternative!r}). Or download it on a machine with internet "
        f"(load_real({name!r}) there) and copy the files into {root / _FOLDER[name]} "
        f"(set COURSE_DATA_DIR to move the data folder).")


def _transform(size: int | None):
    """PIL image -> (C, H, W) float32 in [0, 1], resized to size x size if asked."""
    from torchvision import transforms

    if size is None:
        return transforms.ToTensor()
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    return transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])


def load_real(name: str, split: str = "train", root: str | Path | None = None,
              download: bool = True, size: int | None = None, verify: bool = True) -> Dataset:
    """torchvision's dataset ``name`` (one of REAL_DATASETS) with items ``(x, label)``,
    x: (C, H, W) float32 in [0, 1] (``size`` x ``size`` when given).

    ``root`` defaults to ``course_lib.config.data_dir()``. ``verify=False`` skips CIFAR-10's
    MD5 checks (for stand-in files). Raises :class:`DatasetUnavailableError` within a few
    seconds when the files are missing and cannot be downloaded.
    """
    cls = _torchvision_class(name, verify)
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r} for {name}; valid: 'train', 'test'")
    root = Path(root) if root is not None else data_dir()
    kwargs = {"train": split == "train", "transform": _transform(size)}
    try:
        return cls(root, download=False, **kwargs)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        pass
    missing = f"no intact copy of its files is in {root / _FOLDER[name]}"
    if not download:
        raise _unavailable(name, root, f"{missing} and download=False")
    url = _download_url(cls)
    if not _reachable(url):
        raise _unavailable(name, root, f"{missing} and the download server "
                           f"{urlsplit(url).hostname} did not answer within {PROBE_TIMEOUT_S:g} s")
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return cls(root, download=True, **kwargs)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise _unavailable(name, root, f"the download failed ({exc})") from exc


# ----------------------------------------------------------------------------- writers
def _as_uint8(images, channels_last: bool) -> np.ndarray:
    """uint8 array from uint8 or float-in-[0, 1] images (tensor or array)."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.dtype != np.uint8:
        if x.min() < 0 or x.max() > 1:
            raise ValueError("float images must lie in [0, 1] (or pass uint8 in 0..255)")
        x = np.round(x * 255).astype(np.uint8)
    return x.transpose(0, 3, 1, 2) if channels_last else x


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX format: zero, zero, type 0x08 (uint8), rank; big-endian int32 dims; the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist_format(root: str | Path, images, labels, split: str, name: str = "mnist") -> Path:
    """Write ``split`` ("train" or "test") of an MNIST-style dataset as torchvision reads it:
    root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (FashionMNIST/ for
    ``name="fashion_mnist"``). images: (N, H, W) or (N, 1, H, W), uint8 or float in [0, 1];
    labels: (N,) ints in 0..9. torchvision needs both splits on disk. Returns the folder."""
    if name not in ("mnist", "fashion_mnist"):
        raise ValueError(f"name must be 'mnist' or 'fashion_mnist', got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    x = _as_uint8(images, channels_last=False)
    x = x[:, 0] if x.ndim == 4 else x                                    # (N, H, W)
    y = np.asarray(labels, dtype=np.uint8)
    if x.ndim != 3 or len(x) != len(y):
        raise ValueError(f"need images (N, H, W) and labels (N,), got {x.shape} and {y.shape}")
    folder = Path(root) / _FOLDER[name]
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(x))
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(y))
    return folder


def write_cifar10_format(root: str | Path, images, labels, split: str) -> Path:
    """Write ``split`` of a CIFAR-10-style dataset as torchvision reads it: pickled dicts in
    root/cifar-10-batches-py (data_batch_1..5 for "train", test_batch for "test", and
    batches.meta). images: (N, 3, 32, 32) or (N, 32, 32, 3), uint8 or float in [0, 1]."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    x = _as_uint8(images, channels_last=np.shape(images)[-1] == 3)       # (N, 3, 32, 32)
    y = [int(v) for v in labels]
    if x.shape[1:] != (3, 32, 32) or len(x) != len(y):
        raise ValueError(f"need images (N, 3, 32, 32) and N labels, got {x.shape} and {len(y)}")
    folder = Path(root) / _FOLDER["cifar10"]
    folder.mkdir(parents=True, exist_ok=True)
    rows = x.reshape(len(x), -1)                  # (N, 3072): the red plane, green, then blue
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    for file, part in zip(names, np.array_split(np.arange(len(x)), len(names))):
        batch = {"batch_label": file, "data": rows[part], "labels": [y[i] for i in part]}
        (folder / file).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR10_CLASSES}))
    return folder


def write_standin(name: str, root: str | Path, n_train: int = 200, n_test: int = 50,
                  seed: int = 0) -> Path:
    """Fill both splits of real dataset ``name`` under ``root`` with offline images (digits
    at 28 x 28 for the MNISTs, shapes for CIFAR-10, labelled by shape kind), so code written
    for the real dataset runs in tests. Returns ``root``."""
    from course_lib.data.digits import DigitsDataset
    from course_lib.data.shapes import render_shapes

    if name not in REAL_DATASETS:
        raise unknown_name("real dataset", name, REAL_DATASETS)
    for split, n in (("train", n_train), ("test", n_test)):
        split_seed = seed if split == "train" else seed + 1
        if name == "cifar10":
            batch = render_shapes(n, size=32, seed=split_seed)
            write_cifar10_format(root, batch.images, batch.attrs["shape"], split)
        else:
            digits = DigitsDataset("all", size=28, seed=seed)
            order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(split_seed))
            pick = order[:n]
            write_mnist_format(root, digits.images[pick], digits.labels[pick], split, name)
    return Path(root)
