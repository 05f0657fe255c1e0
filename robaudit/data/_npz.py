"""Reader for ``.npz`` files: never unpickles, checks zip and .npy headers before loading."""

from __future__ import annotations

import lzma
import math
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from robaudit.data._common import (
    Options,
    Raw,
    check_bytes,
    check_float_size,
    keys_text,
    one_line,
    sha256_file,
)
from robaudit.data.interface import Layout
from robaudit.errors import DataLoadError

_DEFAULT_KEYS = (("x", "y"), ("x_test", "y_test"))
_READ_ERRORS = (ValueError, OSError, EOFError, RuntimeError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error,
                lzma.LZMAError, struct.error)
"""What reading a damaged zip member can raise: besides the obvious, ``RuntimeError`` for an
"encrypted" flag and ``NotImplementedError`` (a RuntimeError) for an unknown compression method."""
_CLASS_NAME_KEYS = ("class_names", "label_names")


def _npy_header(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, path: Path
) -> tuple[tuple[int, ...], np.dtype]:
    """Read one member's .npy header (shape, dtype) without reading its data."""
    try:
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:  # 2.0 and 3.0 share the 4-byte header length; 3.0 only allows utf-8 names
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except _READ_ERRORS as e:
        raise DataLoadError(
            f"array {key!r} in {path} is not a valid .npy member ({one_line(e)}); re-save the file with numpy.savez"
        ) from None
    if dtype.hasobject:
        raise DataLoadError(
            f"array {key!r} in {path} holds Python objects, which robaudit never unpickles; "
            "save numeric arrays (uint8 or float32 images, integer labels)"
        )
    expected = math.prod(shape) * dtype.itemsize
    if expected != info.file_size - offset:
        raise DataLoadError(
            f"array {key!r} in {path} declares shape {tuple(shape)} ({expected} bytes) but holds "
            f"{info.file_size - offset} bytes; the file is corrupt, re-save it"
        )
    return tuple(int(d) for d in shape), dtype


def _pick_key(keys: list[str], given: str | None, defaults: list[str], role: str, path: Path) -> str:
    option = "--x-key" if role == "images" else "--y-key"
    if given is not None:
        if given not in keys:
            raise DataLoadError(
                f"{path} has no array {given!r} (it has: {keys_text(keys)}); pass an existing {option}"
            )
        return given
    for k in defaults:
        if k in keys:
            return k
    wanted = " or ".join(repr(k) for k in defaults)
    raise DataLoadError(
        f"{path} has no {role} array {wanted} (it has: {keys_text(keys)}); name it with {option}"
    )


def load_npz(path: Path, opts: Options) -> Raw:
    digest = sha256_file(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError, ValueError, EOFError) as e:
        # NotImplementedError: a damaged central directory claiming an unknown zip version
        raise DataLoadError(
            f"{path} is not a valid .npz (zip) file ({one_line(e)}); re-save it with numpy.savez"
        ) from None
    with zf:
        members = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
        keys = sorted(members)
        if opts.x_key is None and opts.y_key is None:
            pair = next(((xk, yk) for xk, yk in _DEFAULT_KEYS if xk in keys and yk in keys), None)
        else:
            pair = None
        if pair is None:
            x_pick = _pick_key(keys, opts.x_key, [k for k, _ in _DEFAULT_KEYS], "images", path)
            unlabelled = opts.labels_optional and opts.y_key is None and not any(
                k in keys for _, k in _DEFAULT_KEYS)
            pair = (x_pick, None if unlabelled else
                    _pick_key(keys, opts.y_key, [k for _, k in _DEFAULT_KEYS], "labels", path))
        x_key, y_key = pair
        total = 0
        for key in (x_key,) if y_key is None else (x_key, y_key):
            size = members[key].file_size
            total += size
            check_bytes(size, f"array {key!r} in {path}", opts.max_bytes)
        if y_key is not None:
            check_bytes(total, f"the arrays {x_key!r} and {y_key!r} in {path}", opts.max_bytes)
        x_shape, _ = _npy_header(zf, members[x_key], x_key, path)
        if y_key is not None:
            _npy_header(zf, members[y_key], y_key, path)
        check_float_size(x_shape, opts.channels, opts.max_bytes, f"array {x_key!r}")
        class_names = _npz_class_names(zf, members, path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            x = npz[x_key]
            y = np.zeros(x.shape[:1], np.int64) if y_key is None else npz[y_key]
    except ValueError as e:
        raise DataLoadError(
            f"cannot load arrays from {path} ({one_line(e)}); save plain numeric arrays"
        ) from None
    except _READ_ERRORS as e:
        raise DataLoadError(f"{path} is corrupt ({one_line(e)}); re-save it with numpy.savez") from None
    if y_key is None:
        notes = [f"read array {x_key!r}; no labels (not needed here)"]
    else:
        notes = [] if (x_key, y_key) == ("x", "y") else [f"read arrays {x_key!r} and {y_key!r}"]
    return Raw(x=x, y=y, sha256=digest, layout_in=Layout.NCHW, notes=notes, class_names=class_names)


def _npz_class_names(zf: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], path: Path) -> tuple[str, ...]:
    """Optional class names stored beside the arrays (string arrays only; never objects)."""
    for key in _CLASS_NAME_KEYS:
        info = members.get(key)
        if info is None or info.file_size > 1024 * 1024:
            continue
        try:
            shape, dtype = _npy_header(zf, info, key, path)
            if len(shape) != 1 or dtype.kind not in "US":
                continue
            with zf.open(info) as f:
                arr = np.lib.format.read_array(f, allow_pickle=False)
        except (DataLoadError, *_READ_ERRORS):
            continue
        return tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.tolist())
    return ()
