"""Load a dataset from ``.npz``, an image folder, MNIST IDX or CIFAR-10 binary batches.

Safety rules, whatever the format:

* nothing is ever unpickled: ``.npz`` files are read with ``allow_pickle=False`` and object
  arrays are refused; CIFAR-10 *python* batches are refused in favour of the binary ones;
* sizes are checked from headers before anything big is allocated (zip member sizes and
  ``.npy`` headers, IDX dimensions against the payload, CIFAR record counts, image pixel
  counts via ``Image.MAX_IMAGE_PIXELS``), against ``max_bytes``;
* every conversion made (scaling, layout, channels, skipped files) is written to ``notes``.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable
from os import PathLike
from pathlib import Path

import numpy as np

from robaudit.data._cifar import load_cifar
from robaudit.data._common import DEFAULT_MAX_BYTES, Options, Raw, manifest_sha256, sha256_file
from robaudit.data._folder import IMAGE_SUFFIXES, load_folder
from robaudit.data._idx import IDX_IMAGES, IDX_LABELS, load_idx, open_maybe_gzip
from robaudit.data._npz import load_npz
from robaudit.data.interface import DataFormat, Dataset, Layout
from robaudit.data.layout import resolve_layout, to_nchw
from robaudit.errors import ConfigError, DataLoadError

__all__ = ["DEFAULT_MAX_BYTES", "load_dataset", "manifest_sha256", "sha256_file"]

RANGE_TOLERANCE = 1e-6
"""Float pixels may stray this far (times the range's width, if above 1) outside the input
range; such values are clipped."""
_CIFAR_PICKLE = re.compile(r"(data_batch_\d+|test_batch)(\.(pkl|pickle|py))?$", re.IGNORECASE)


def _check_options(
    channels: int | None, input_range: tuple[float, float], max_bytes: int
) -> tuple[float, float]:
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3, 4)):
        raise ConfigError(f"channels must be 1, 3 or 4, got {channels!r}; pass the model's channel count")
    try:
        lo, hi = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise ConfigError(
            f"input range must be two numbers (low, high), got {input_range!r}; pass e.g. 0 1"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"input range ({lo}, {hi}) must be finite with low < high; pass e.g. 0 1")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ConfigError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    return lo, hi


# --------------------------------------------------------------------------- detection


def _is_pickle(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _refuse_cifar_pickle(path: Path) -> DataLoadError:
    return DataLoadError(
        f"{path} is a CIFAR-10 python (pickle) batch, which robaudit never unpickles; "
        "download the binary version (cifar-10-binary.tar.gz) and pass data_batch_N.bin or test_batch.bin"
    )


def _detect(path: Path) -> DataFormat:
    if not path.exists():
        raise DataLoadError(f"no such file or folder: {path}; check the data path")
    if path.is_dir():
        return _detect_folder(path)
    name = path.name
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return DataFormat.NPZ
    if IDX_IMAGES.search(name):
        return DataFormat.IDX
    if IDX_LABELS.search(name):
        raise DataLoadError(
            f"{path} is an IDX labels file; pass the images file (*-idx3-ubyte[.gz]) instead, "
            "the labels are found next to it"
        )
    if suffix == ".bin":
        return DataFormat.CIFAR_BINARY
    if _CIFAR_PICKLE.fullmatch(name):
        raise _refuse_cifar_pickle(path)
    if suffix in (".pkl", ".pickle", ".pt", ".pth") or _is_pickle(path):
        raise DataLoadError(
            f"{path} is a Python pickle, which robaudit never loads (it can run code); "
            "save the data with numpy.savez(path, x=images, y=labels)"
        )
    if suffix == ".npy":
        raise DataLoadError(
            f"{path} holds a single array; save images and labels together with "
            "numpy.savez(path, x=images, y=labels)"
        )
    if suffix in IMAGE_SUFFIXES:
        raise DataLoadError(f"{path} is a single image; pass a folder with one subfolder of images per class")
    if _sniff_idx_images(path):
        return DataFormat.IDX
    raise DataLoadError(
        f"unrecognised data file {path}; pass a .npz, an image folder, MNIST IDX "
        "(*-idx3-ubyte[.gz]) or CIFAR-10 binary batches (*.bin)"
    )


def _sniff_idx_images(path: Path) -> bool:
    try:
        with open_maybe_gzip(path) as f:
            return bool(f.read(4) == b"\x00\x00\x08\x03")
    except (OSError, EOFError, zlib.error):
        return False


def _detect_folder(path: Path) -> DataFormat:
    try:
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    except OSError as e:
        raise DataLoadError(
            f"cannot list {path}: {e.strerror or e}; check the path and permissions"
        ) from None
    files = [p for p in entries if p.is_file()]
    if any(p.suffix.lower() == ".bin" for p in files):
        return DataFormat.CIFAR_BINARY
    if any(IDX_IMAGES.search(p.name) for p in files):
        return DataFormat.IDX
    pickles = [p for p in files if _CIFAR_PICKLE.fullmatch(p.name)]
    if pickles:
        raise _refuse_cifar_pickle(sorted(pickles)[0])
    if any(p.is_dir() for p in entries):
        return DataFormat.FOLDER
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
        raise DataLoadError(
            f"{path} holds images directly; put them in one subfolder per class (the subfolder name is the class)"
        )
    raise DataLoadError(
        f"no dataset found in folder {path}; expected class subfolders of images, "
        "MNIST IDX files or CIFAR-10 *.bin batches"
    )


# --------------------------------------------------------------------------- shared checks


def _to_float(x: np.ndarray, lo: float, hi: float, notes: list[str]) -> np.ndarray:
    """Pixels as float32 inside [lo, hi]: integers are scaled, floats are checked."""
    kind = x.dtype.kind
    if x.dtype == np.uint8 or x.dtype == np.uint16:
        top = 255.0 if x.dtype == np.uint8 else 65535.0
        out = x.astype(np.float32)
        out /= np.float32(top)
        notes.append(f"scaled {x.dtype.name} [0,{int(top)}] to [{lo:g},{hi:g}]")
        if (lo, hi) != (0.0, 1.0):
            out *= np.float32(hi - lo)
            out += np.float32(lo)
            np.clip(out, lo, hi, out=out)
        return out
    if kind in "biu":
        raise DataLoadError(
            f"images have dtype {x.dtype.name}; save them as uint8 (0-255), uint16 or float32 in [{lo:g},{hi:g}]"
        )
    if kind != "f":
        raise DataLoadError(f"images have dtype {x.dtype.name}, not numbers; save uint8 or float32 pixels")
    out = x.astype(np.float32, copy=x.dtype != np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        n_nan = int(np.isnan(out).sum())
        n_inf = int(out.size - finite.sum()) - n_nan
        bad = np.flatnonzero(~finite.reshape(finite.shape[0], -1).all(axis=1)) if out.ndim > 1 else np.array([])
        which = (f" in {bad.size} image(s), at indices {', '.join(str(int(i)) for i in bad[:8])}"
                 + (", ..." if bad.size > 8 else "")) if bad.size else ""
        raise DataLoadError(
            f"images contain {n_nan} NaN and {n_inf} infinite values{which}; fix or drop those images"
        )
    del finite
    mn, mx = float(out.min()), float(out.max())
    tol = RANGE_TOLERANCE * max(1.0, hi - lo)
    if mn < lo - tol:
        if mn < 0.0 <= lo:
            raise DataLoadError(
                f"images have negative values (min {mn:.4g}), so they look normalised; "
                "pass raw pixels in [0,1] and give the model's normalisation as --mean/--std"
            )
        raise DataLoadError(
            f"images range over [{mn:.4g}, {mx:.4g}], outside the input range [{lo:g}, {hi:g}]; "
            "rescale the data or set the input range"
        )
    if mx > hi + tol:
        if hi <= 1.0 and mx <= 255.0 + tol:
            raise DataLoadError(
                f"images go up to {mx:.4g}, above the input range [{lo:g}, {hi:g}], so they look like "
                "unscaled 8-bit pixels; divide by 255 or save as uint8"
            )
        raise DataLoadError(
            f"images range over [{mn:.4g}, {mx:.4g}], outside the input range [{lo:g}, {hi:g}]; "
            "rescale the data or set the input range"
        )
    if mn < lo or mx > hi:
        np.clip(out, lo, hi, out=out)
    return out


def _to_labels(y: np.ndarray, n: int, notes: list[str]) -> np.ndarray:
    """Labels as int64 class indices of shape (n,)."""
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise DataLoadError(f"labels have dtype {y.dtype.name}; save integer class indices")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
        notes.append("flattened labels of shape (N, 1)")
    elif y.ndim == 2:
        if y.size and bool(((y == 0) | (y == 1)).all()) and bool((y.sum(axis=1) == 1).all()):
            notes.append(f"converted one-hot labels of shape {tuple(y.shape)} to class indices")
            y = np.argmax(y, axis=1)
        else:
            raise DataLoadError(
                f"labels have shape {tuple(y.shape)} but are not one-hot; save class indices of shape (N,)"
            )
    elif y.ndim != 1:
        raise DataLoadError(f"labels have shape {tuple(y.shape)}; save class indices of shape (N,)")
    if y.dtype.kind == "b" and y.ndim == 1:  # e.g. an attack file's success_ mask given as --y-key
        raise DataLoadError("labels are booleans (True/False), not class indices; save integer class indices "
                            "(a boolean one-hot array of shape (N, classes) is read as one-hot)")
    if y.shape[0] != n:
        raise DataLoadError(f"there are {n} images but {y.shape[0]} labels; give one label per image")
    if y.dtype.kind == "f":
        if not bool(np.isfinite(y).all()) or not bool((y == np.round(y)).all()):
            raise DataLoadError("labels have non-integral values; save integer class indices")
        notes.append(f"cast {y.dtype.name} labels to integers")
    if y.size and y.dtype.kind != "b" and float(y.min()) < 0:
        raise DataLoadError(f"labels include negative values (min {y.min()}); class indices start at 0")
    return y.astype(np.int64)


def _match_channels(x: np.ndarray, channels: int | None, notes: list[str]) -> np.ndarray:
    c = x.shape[1]
    if channels is None or c == channels:
        return x
    if c == 1:
        notes.append(f"repeated the single channel over {channels} channels")
        return np.ascontiguousarray(np.repeat(x, channels, axis=1))
    raise DataLoadError(
        f"images have {c} channels but the model expects {channels}; convert the data or check the model"
    )


# --------------------------------------------------------------------------- entry point

_READERS: dict[DataFormat, Callable[[Path, Options], Raw]] = {
    DataFormat.NPZ: load_npz,
    DataFormat.FOLDER: load_folder,
    DataFormat.IDX: load_idx,
    DataFormat.CIFAR_BINARY: load_cifar,
}


def load_dataset(
    path: str | PathLike[str],
    *,
    layout: str | Layout | None = None,
    channels: int | None = None,
    x_key: str | None = None,
    y_key: str | None = None,
    input_range: tuple[float, float] = (0.0, 1.0),
    max_bytes: int = DEFAULT_MAX_BYTES,
    labels_optional: bool = False,
) -> Dataset:
    """Load images and labels from ``path`` as a validated :class:`Dataset`.

    ``path`` may be a ``.npz`` file (arrays ``x``/``y`` or ``x_test``/``y_test``, or the
    ones named by ``x_key``/``y_key``), a folder with one subfolder of PNG/JPEG/BMP images per
    class, an MNIST ``*-idx3-ubyte[.gz]`` images file (labels are the matching
    ``*-idx1-ubyte[.gz]`` beside it), or CIFAR-10 binary batches (a ``.bin`` file or a folder
    of them). ``layout`` forces the axis order of ``.npz`` images; ``channels`` is the model's
    channel count (decides ambiguous layouts, converts image folders, widens grayscale).
    ``labels_optional``: an ``.npz`` without labels loads with placeholder labels 0 (a note says so).
    Raises DataLoadError (bad data) or ConfigError (bad option).
    """
    lo, hi = _check_options(channels, input_range, max_bytes)
    lay = Layout.parse(layout) if layout is not None else None
    opts = Options(lay, channels, x_key, y_key, (lo, hi), max_bytes, labels_optional)
    p = Path(path)
    fmt = _detect(p)
    if (x_key is not None or y_key is not None) and fmt is not DataFormat.NPZ:
        raise ConfigError(f"--x-key/--y-key name arrays in an .npz file; {p} is {fmt.value} data: drop them")
    raw = _READERS[fmt](p, opts)
    notes = list(raw.notes)
    n = int(raw.x.shape[0]) if raw.x.ndim else 0
    if raw.x.ndim == 0 or n == 0:
        raise DataLoadError(f"{p} holds no images; pass a non-empty dataset")
    y = _to_labels(raw.y, n, notes)
    if raw.x_layout is not None and lay is not None and lay is not raw.layout_in:
        raise ConfigError(
            f"--layout {lay.value} does not apply to {p}: {fmt.value} data is always "
            f"{raw.layout_in.value}; drop --layout"
        )
    if raw.x_unit:
        x = raw.x
        if (lo, hi) != (0.0, 1.0):
            x *= np.float32(hi - lo)
            x += np.float32(lo)
            np.clip(x, lo, hi, out=x)
            notes.append(f"mapped pixels to [{lo:g},{hi:g}]")
        layout_in = raw.layout_in
    else:
        if raw.x.size == 0:
            raise DataLoadError(
                f"images in {p} have shape {tuple(raw.x.shape)} with a zero-size axis; pass real images"
            )
        layout_in = raw.x_layout or resolve_layout(raw.x.shape, lay, channels=channels)
        if raw.x_layout is None and layout_in is Layout.NHWC:
            notes.append("converted NHWC to NCHW")
        x = _to_float(to_nchw(raw.x, layout_in), lo, hi, notes)
    x = _match_channels(x, channels, notes)
    return Dataset(
        x=x,
        y=y,
        source=str(path),
        format=fmt,
        sha256=raw.sha256,
        layout_in=layout_in,
        notes=tuple(notes),
        value_range=(lo, hi),
        class_names=raw.class_names,
    )
