"""Reader for image folders: one subfolder per class, PNG/JPEG/BMP decoded with Pillow."""

from __future__ import annotations

import contextlib
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from robaudit.data._common import Options, Raw, check_bytes, manifest_sha256, one_line, sha256_file
from robaudit.data.interface import Layout
from robaudit.errors import DataLoadError

MAX_IMAGE_PIXELS = 4096 * 4096
"""Largest image (width x height) read from an image folder."""
MAX_CORRUPT_FRACTION = 0.10
"""An image folder fails when more than this fraction of its images is unreadable."""
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


@contextlib.contextmanager
def _pillow_guard() -> Iterator[None]:
    """Make Pillow refuse decompression bombs above MAX_IMAGE_PIXELS (restored afterwards)."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _too_big(rel: str, detail: object) -> DataLoadError:
    return DataLoadError(
        f"image {rel} is larger than {MAX_IMAGE_PIXELS} pixels ({one_line(detail)}); "
        "resize the images to the model's input size"
    )


@dataclass
class _Counts:
    eight_bit: int = 0
    sixteen_bit: int = 0
    alpha_dropped: int = 0
    gray_widened: int = 0
    colour_to_gray: int = 0


def _decode(im: Image.Image, channels: int, counts: _Counts) -> np.ndarray:
    """One image as float32 (C, H, W) in [0, 1] with ``channels`` channels."""
    im.load()
    mode = im.mode
    w, h = im.size
    if mode in _SIXTEEN_BIT_MODES:
        a = np.asarray(im)
        if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise ValueError("32-bit integer pixels are not supported")
        gray = a.astype(np.float32) / np.float32(65535.0)
        out = np.empty((channels, h, w), dtype=np.float32)
        out[:] = gray
        if channels == 4:
            out[3] = 1.0
        counts.sixteen_bit += 1
        counts.gray_widened += channels > 1
        return out
    if mode == "F":
        raise ValueError("floating-point images are not supported")
    target = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info)
    if has_alpha and channels != 4:
        counts.alpha_dropped += 1
    if mode in _GRAY_MODES and channels > 1:
        counts.gray_widened += 1
    if mode not in _GRAY_MODES and channels == 1:
        counts.colour_to_gray += 1
    if mode != target:
        if has_alpha and mode == "P":
            im = im.convert("RGBA")
        im = im.convert(target)
    a = np.asarray(im, dtype=np.uint8).reshape(h, w, channels)
    counts.eight_bit += 1
    out = a.transpose(2, 0, 1).astype(np.float32)
    out /= np.float32(255.0)
    return out


def class_labels(names: list[str]) -> tuple[list[int], tuple[str, ...], str]:
    """Labels of class folders named ``names``, the class names by label, and a note saying how.

    Folders all named by a non-negative integer (``0`` .. ``9``, ``007``) carry their label in the
    name, so a missing class or an eleventh one (``10`` sorts before ``2`` as text) cannot shift the
    others. Any other names are numbered in sorted order, as torchvision's ``ImageFolder`` does."""
    if names and all(n.isascii() and n.isdigit() for n in names):
        labels = [int(n) for n in names]
        if len(set(labels)) != len(labels):
            raise DataLoadError(f"class folders {', '.join(names)} name the same label twice (e.g. 7 and 07)")
        by_label = dict(zip(labels, names, strict=True))
        return labels, tuple(by_label.get(i, str(i)) for i in range(max(labels) + 1)), "labels from the folder names"
    order = sorted(names)
    shown = ", ".join(f"{n}={i}" for i, n in enumerate(order[:12])) + (", ..." if len(order) > 12 else "")
    return [order.index(n) for n in names], tuple(order), f"labels by sorted folder name: {shown}"


def load_folder(root: Path, opts: Options) -> Raw:
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    # files beside the class folders (a README, say) are not data, but the notes say so
    loose = sum(1 for f in root.iterdir() if not f.is_dir() and not f.name.startswith("."))
    labels, class_names, label_note = class_labels([d.name for d in class_dirs])
    files: list[tuple[Path, int]] = []
    ignored = 0
    empty: list[str] = []
    for label, d in zip(labels, class_dirs, strict=True):
        n_before = len(files)
        for f in sorted(d.iterdir()):
            if f.name.startswith("."):
                continue
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                files.append((f, label))
            else:
                ignored += 1
        if len(files) == n_before:
            empty.append(d.name)
    if not files:
        raise DataLoadError(f"no PNG/JPEG/BMP images in the class subfolders of {root}; check the folder")

    def rel(f: Path) -> str:
        return f.relative_to(root).as_posix()

    corrupt: list[tuple[str, str]] = []
    good: list[tuple[Path, int, str, tuple[int, int]]] = []
    entries: list[tuple[str, str]] = []
    with _pillow_guard():
        for f, label in files:
            entries.append((rel(f), sha256_file(f)))
            try:
                with Image.open(f) as im:
                    mode, size = im.mode, im.size
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise _too_big(rel(f), e) from None
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
                corrupt.append((rel(f), one_line(e)))
                continue
            if size[0] * size[1] > MAX_IMAGE_PIXELS:
                raise _too_big(rel(f), f"{size[0]}x{size[1]}")
            good.append((f, label, mode, size))
        _check_corrupt(root, len(files), corrupt)
        sizes = {g[3] for g in good}
        if len(sizes) > 1:
            first = good[0]
            other = next(g for g in good if g[3] != first[3])
            raise DataLoadError(
                f"images differ in size: {rel(first[0])} is {first[3][0]}x{first[3][1]} but {rel(other[0])} is "
                f"{other[3][0]}x{other[3][1]} (width x height); resize all images to the model's input size"
            )
        w, h = good[0][3]
        all_gray = all(g[2] in _GRAY_MODES for g in good)
        channels = opts.channels if opts.channels is not None else (1 if all_gray else 3)
        check_bytes(len(good) * channels * h * w * 4, f"the images in {root} as float32", opts.max_bytes)
        x = np.empty((len(good), channels, h, w), dtype=np.float32)
        y = np.empty(len(good), dtype=np.int64)
        keep = np.ones(len(good), dtype=bool)
        counts = _Counts()
        for i, (f, label, _mode, _size) in enumerate(good):
            try:
                with Image.open(f) as im:
                    x[i] = _decode(im, channels, counts)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise _too_big(rel(f), e) from None
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - any decoder failure means an unreadable file
                corrupt.append((rel(f), one_line(e)))
                keep[i] = False
                continue
            y[i] = label
        _check_corrupt(root, len(files), corrupt)
    if not keep.all():
        x, y = x[keep], y[keep]
    notes = [label_note]
    if counts.eight_bit:
        notes.append("scaled 8-bit pixels to [0,1]")
    if counts.sixteen_bit:
        notes.append(f"scaled {counts.sixteen_bit} 16-bit images to [0,1]")
    if counts.alpha_dropped:
        notes.append(f"dropped the alpha channel of {counts.alpha_dropped} images")
    if counts.gray_widened:
        notes.append(f"repeated {counts.gray_widened} grayscale images over {channels} channels")
    if counts.colour_to_gray:
        notes.append(f"converted {counts.colour_to_gray} colour images to grayscale")
    if corrupt:
        notes.append(f"skipped {len(corrupt)} unreadable images (first: {corrupt[0][0]}: {corrupt[0][1]})")
    if ignored:
        notes.append(f"ignored {ignored} non-image entries in the class folders")
    if loose:
        notes.append(f"ignored {loose} file{'s' if loose > 1 else ''} beside the class folders (only images inside "
                     "a class folder are data)")
    if empty:
        notes.append(f"class folders without images: {', '.join(empty)}")
    return Raw(
        x=x, y=y, sha256=manifest_sha256(entries), layout_in=Layout.NHWC, x_layout=Layout.NCHW,
        x_unit=True, notes=notes, class_names=class_names,
    )  # fmt: skip


def _check_corrupt(root: Path, total: int, corrupt: list[tuple[str, str]]) -> None:
    if corrupt and len(corrupt) > MAX_CORRUPT_FRACTION * total:
        name, why = corrupt[0]
        raise DataLoadError(
            f"{len(corrupt)} of {total} images in {root} are unreadable (more than "
            f"{MAX_CORRUPT_FRACTION:.0%}), e.g. {name}: {why}; fix or remove them"
        )
