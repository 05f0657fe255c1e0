"""Data layer: load images and labels from .npz, image folders, MNIST IDX or CIFAR-10 binary
batches into one validated :class:`Dataset` (float32 NCHW in the input range, int64 labels)."""

from robaudit.data.interface import DataFormat, Dataset, Layout
from robaudit.data.layout import check_layout, detect_layout, from_nchw, resolve_layout, to_nchw
from robaudit.data.loader import DEFAULT_MAX_BYTES, load_dataset, manifest_sha256, sha256_file
from robaudit.data.sampling import check_labels, sample, select, selection_note

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DataFormat",
    "Dataset",
    "Layout",
    "check_labels",
    "check_layout",
    "detect_layout",
    "from_nchw",
    "load_dataset",
    "manifest_sha256",
    "resolve_layout",
    "sample",
    "select",
    "selection_note",
    "sha256_file",
    "to_nchw",
]
