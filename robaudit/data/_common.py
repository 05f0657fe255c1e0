"""Shared pieces of the format readers: options, the raw result, size limits, hashing."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robaudit.data.interface import Layout
from robaudit.errors import DataLoadError

DEFAULT_MAX_BYTES = 4 * 1024**3
"""Largest decompressed input (and float32 output) accepted by default: 4 GiB."""


@dataclass(frozen=True)
class Options:
    layout: Layout | None
    channels: int | None
    x_key: str | None
    y_key: str | None
    input_range: tuple[float, float]
    max_bytes: int
    labels_optional: bool = False
    """An ``.npz`` without a labels array loads with placeholder labels 0 (for jobs that never read
    labels, e.g. scoring inputs with a detector); every other format has labels anyway."""


@dataclass
class Raw:
    """What a format reader hands to the shared validation step."""

    x: np.ndarray
    """Images as stored (any dtype) in layout ``x_layout``; or float32 NCHW in [0, 1]
    when ``x_unit`` is set (image folders convert while decoding)."""
    y: np.ndarray
    sha256: str
    layout_in: Layout
    x_layout: Layout | None = None
    """Layout of ``x``; None means: detect it (or use the user's ``--layout``)."""
    x_unit: bool = False
    notes: list[str] = field(default_factory=list)
    class_names: tuple[str, ...] = ()


def gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"


def check_bytes(nbytes: int, what: str, max_bytes: int) -> None:
    if nbytes > max_bytes:
        raise DataLoadError(
            f"{what} would take {gib(nbytes)}, more than the {gib(max_bytes)} limit; "
            "use a smaller file or a subset of the data"
        )


def check_float_size(shape: tuple[int, ...], channels: int | None, max_bytes: int, what: str) -> None:
    n = math.prod(int(d) for d in shape) * 4
    if channels is not None and len(shape) == 3:
        n *= channels  # grayscale images will be widened to the model's channels
    check_bytes(n, f"{what} as float32", max_bytes)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise DataLoadError(
            f"cannot read {path}: {e.strerror or e}; check the path and permissions"
        ) from None


def manifest_sha256(entries: list[tuple[str, str]]) -> str:
    """Hash of several files: SHA-256 of ``<hex>  <relative path>`` lines sorted by path
    (the text ``sha256sum`` prints), so it is stable and independent of listing order."""
    text = "".join(f"{digest}  {rel}\n" for rel, digest in sorted(entries))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def keys_text(keys: list[str]) -> str:
    shown = ", ".join(keys[:12]) if keys else "nothing"
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
