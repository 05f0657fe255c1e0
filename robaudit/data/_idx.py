"""Reader for MNIST-style IDX files (images ``*-idx3-ubyte[.gz]`` plus the matching labels)."""

from __future__ import annotations

import gzip
import io
import math
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from robaudit.data._common import (
    Options,
    Raw,
    check_bytes,
    check_float_size,
    manifest_sha256,
    one_line,
    sha256_file,
)
from robaudit.data.interface import Layout
from robaudit.errors import DataLoadError

IDX_IMAGES = re.compile(r"idx3[-_.]ubyte(\.gz)?$", re.IGNORECASE)
IDX_LABELS = re.compile(r"idx1[-_.]ubyte(\.gz)?$", re.IGNORECASE)


def open_maybe_gzip(path: Path) -> gzip.GzipFile | io.BufferedReader:
    """Open ``path`` for reading bytes, gunzipping when it starts with the gzip magic."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _read_idx(path: Path, ndim: int, what: str, max_bytes: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file, validating the header before allocating."""
    try:
        with open_maybe_gzip(path) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00":
                raise DataLoadError(
                    f"{path} is not an IDX file (bad magic number); pass an MNIST-style *-idx3-ubyte file"
                )
            if head[2] != 0x08:
                raise DataLoadError(
                    f"{path} holds IDX element type 0x{head[2]:02x}; "
                    "only unsigned bytes (0x08, as in MNIST) are supported"
                )
            if head[3] != ndim:
                raise DataLoadError(
                    f"{path} has {head[3]} dimensions but IDX {what} need {ndim}; pass the matching "
                    f"{'*-idx3-ubyte' if ndim == 3 else '*-idx1-ubyte'} file"
                )
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) != 4 * ndim:
                raise DataLoadError(f"{path} is truncated inside its header; download it again")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            expected = math.prod(dims)
            check_bytes(expected, f"IDX {what} {path} (header says {'x'.join(map(str, dims))})", max_bytes)
            if not isinstance(f, gzip.GzipFile):
                actual = path.stat().st_size - 4 - 4 * ndim
                if actual != expected:
                    raise DataLoadError(
                        f"{path} header says {'x'.join(map(str, dims))} = {expected} bytes but the payload is "
                        f"{actual} bytes; the file is corrupt, download it again"
                    )
            payload = f.read(expected + 1)  # bounded even when the gzip stream is larger
    except (OSError, EOFError, zlib.error) as e:
        raise DataLoadError(
            f"cannot read {path} ({one_line(e)}); the file is corrupt, download it again"
        ) from None
    if len(payload) != expected:
        size = f"{len(payload)}" if len(payload) <= expected else f"more than {expected}"
        raise DataLoadError(
            f"{path} header says {'x'.join(map(str, dims))} = {expected} bytes but the payload is "
            f"{size} bytes; the file is corrupt, download it again"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _idx_labels_path(images: Path) -> Path:
    name = images.name
    base = re.sub(r"\.gz$", "", name, flags=re.IGNORECASE)
    base = re.sub("idx3", "idx1", base, flags=re.IGNORECASE)
    base = re.sub("images", "labels", base, flags=re.IGNORECASE)
    candidates = [base + ".gz", base] if name.lower().endswith(".gz") else [base, base + ".gz"]
    for c in candidates:
        p = images.with_name(c)
        if p.is_file():
            return p
    raise DataLoadError(
        f"no labels file for {images}: expected {images.with_name(candidates[0])}; put it beside the images file"
    )


def _idx_images_in(folder: Path) -> Path:
    found = sorted(p for p in folder.iterdir() if p.is_file() and IDX_IMAGES.search(p.name))
    if len(found) != 1:
        names = ", ".join(p.name for p in found)
        raise DataLoadError(f"{folder} holds several IDX image files ({names}); pass the one to use")
    return found[0]


def load_idx(path: Path, opts: Options) -> Raw:
    images = _idx_images_in(path) if path.is_dir() else path
    labels = _idx_labels_path(images)
    x = _read_idx(images, 3, "images", opts.max_bytes)
    check_float_size(x.shape, opts.channels, opts.max_bytes, f"IDX images {images}")
    y = _read_idx(labels, 1, "labels", opts.max_bytes)
    digest = manifest_sha256([(images.name, sha256_file(images)), (labels.name, sha256_file(labels))])
    notes = [f"labels from {labels.name}"]
    if path.is_dir():
        notes.insert(0, f"images from {images.name}")
    return Raw(x=x, y=y, sha256=digest, layout_in=Layout.NHW, x_layout=Layout.NHW, notes=notes)
