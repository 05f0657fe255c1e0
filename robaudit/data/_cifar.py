"""Reader for CIFAR-10 binary batches (records of 1 label byte + 3072 pixel bytes, CHW)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from robaudit.data._common import Options, Raw, check_bytes, check_float_size, manifest_sha256
from robaudit.data.interface import Layout
from robaudit.errors import DataLoadError

CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def load_cifar(path: Path, opts: Options) -> Raw:
    files = [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".bin")
    counts = []
    for f in files:
        size = f.stat().st_size
        if size == 0 or size % CIFAR_RECORD_BYTES:
            hint = " (it looks like CIFAR-100, which is not supported)" if size and size % 3074 == 0 else ""
            raise DataLoadError(
                f"{f} is {size} bytes, not a whole number of {CIFAR_RECORD_BYTES}-byte CIFAR-10 records{hint}; "
                "pass CIFAR-10 binary batches (data_batch_N.bin, test_batch.bin)"
            )
        counts.append(size // CIFAR_RECORD_BYTES)
    total = sum(counts)
    check_bytes(total * CIFAR_RECORD_BYTES, f"CIFAR-10 batches in {path}", opts.max_bytes)
    check_float_size((total, 3, 32, 32), opts.channels, opts.max_bytes, f"CIFAR-10 batches in {path}")
    buf = np.empty((total, CIFAR_RECORD_BYTES), dtype=np.uint8)
    start = 0
    entries = []
    for f, n in zip(files, counts, strict=True):
        h = hashlib.sha256()
        view = memoryview(buf[start : start + n].data).cast("B")
        try:
            with open(f, "rb") as fh:
                got = fh.readinto(view)
        except OSError as e:
            raise DataLoadError(f"cannot read {f}: {e.strerror or e}; check the file") from None
        if got != n * CIFAR_RECORD_BYTES:
            raise DataLoadError(f"{f} changed while reading; try again")
        h.update(view)
        entries.append((f.name, h.hexdigest()))
        start += n
    y = buf[:, 0]
    bad = np.flatnonzero(y > 9)
    if bad.size:
        raise DataLoadError(
            f"record {int(bad[0])} of {path} has label byte {int(y[bad[0]])}, not a CIFAR-10 class (0-9); "
            "pass CIFAR-10 binary batches"
        )
    x = buf[:, 1:].reshape(total, 3, 32, 32)
    notes: list[str] = []
    if path.is_dir():
        notes.append(f"read {len(files)} batches: {', '.join(f.name for f in files)}")
        names = [f.name.lower() for f in files]
        if any(n.startswith("test") for n in names) and any(n.startswith("data") for n in names):
            notes.append("the folder mixes training and test batches")
    digest = entries[0][1] if not path.is_dir() else manifest_sha256(entries)
    return Raw(
        x=x, y=y.copy(), sha256=digest, layout_in=Layout.NCHW, x_layout=Layout.NCHW,
        notes=notes, class_names=CIFAR10_CLASSES,
    )  # fmt: skip
