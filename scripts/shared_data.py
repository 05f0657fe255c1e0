"""Readers for the real data in ``../shared/data`` (see ``../shared/DATA.md``). No pickle.

* MNIST: standard IDX gzip files, parsed with ``numpy.frombuffer``.
* CIFAR-10: ``cifar10_exact_partial.npz`` (exact pixels: the first 761 test images and the
  first 761 images of each of the five training batches) and ``cifar10_test_jpeg10k.npz``
  (all 10000 test images, rebuilt from lossy JPEGs).

All image arrays are uint8 NHWC; labels are int64.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SHARED = REPO_ROOT.parent / "shared"

CIFAR_EXACT_N = 761
CIFAR_BATCH_SIZE = 10000

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    path = Path(path)
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(dims)) if dims else 1
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=4 + 4 * ndim)
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def load_mnist(shared: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split`` ('train' or 't10k') as x uint8 (N,28,28,1), y int64 (N,)."""
    if split not in ("train", "t10k"):
        raise ValueError("split must be 'train' or 't10k'")
    d = Path(shared) / "data" / "mnist"
    x = read_idx(d / f"{split}-images-idx3-ubyte.gz")
    y = read_idx(d / f"{split}-labels-idx1-ubyte.gz")
    if x.shape[0] != y.shape[0] or x.shape[1:] != (28, 28):
        raise ValueError(f"unexpected MNIST shapes {x.shape} {y.shape}")
    return np.ascontiguousarray(x[..., None]), y.astype(np.int64)


def load_cifar_exact_test(shared: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The first 761 CIFAR-10 test images, exact pixels: x uint8 (761,32,32,3), y int64."""
    with np.load(Path(shared) / "data" / "cifar10" / "cifar10_exact_partial.npz") as d:
        x = d["x_test_first"]
        y = d["y_test_all"][: x.shape[0]].astype(np.int64)
    return x, y


def load_cifar_exact_train(shared: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The 5 x 761 exact CIFAR-10 training images with their labels.

    ``x_train_batch{k}_first`` holds the first 761 images of data_batch_k, i.e. training images
    ``10000*(k-1) .. 10000*(k-1)+760`` in official order, so their labels are
    ``y_train_all[10000*(k-1) : 10000*(k-1)+761]``.
    """
    xs, ys = [], []
    with np.load(Path(shared) / "data" / "cifar10" / "cifar10_exact_partial.npz") as d:
        y_all = d["y_train_all"]
        for k in range(1, 6):
            xk = d[f"x_train_batch{k}_first"]
            start = CIFAR_BATCH_SIZE * (k - 1)
            xs.append(xk)
            ys.append(y_all[start : start + xk.shape[0]])
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def load_cifar_jpeg_test(shared: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All 10000 CIFAR-10 test images rebuilt from lossy JPEGs: x uint8 (10000,32,32,3), y int64."""
    with np.load(Path(shared) / "data" / "cifar10" / "cifar10_test_jpeg10k.npz") as d:
        return d["x_test"], d["y_test"].astype(np.int64)


def cifar_label_names(shared: str | Path) -> list[str]:
    with np.load(Path(shared) / "data" / "cifar10" / "cifar10_exact_partial.npz") as d:
        return [str(s) for s in d["label_names"]]


def to_tensor_nchw(x: np.ndarray) -> "torch.Tensor":  # noqa: F821
    """uint8 NHWC -> float32 NCHW in [0, 1]."""
    import torch

    return torch.from_numpy(np.array(x.transpose(0, 3, 1, 2), dtype=np.float32, order="C")).div_(255.0)
