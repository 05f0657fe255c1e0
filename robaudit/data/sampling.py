"""Choose which samples to attack, and check labels against the model."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from robaudit.data.interface import Dataset
from robaudit.errors import ConfigError, DataLoadError


MAX_SEED = 2**31 - 1
"""Largest seed (profiles, ``--seed``): derived per-batch and per-cell seeds must fit torch's int64."""


def stream_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (joined by ``|``, hashed with sha256): the key of one random
    stream that must not depend on what else runs beside it (an input's CLEVER sample points, its
    A2D boundary-attack noise)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def select(dataset: Dataset, n: int | None, seed: int) -> np.ndarray:
    """Sorted int64 indices of ``n`` distinct samples drawn with ``default_rng(seed)``.

    ``n`` None, or at least the dataset's size, selects every sample (in order).
    The same (size, n, seed) always gives the same indices.
    """
    total = len(dataset)
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ConfigError(f"the number of samples must be a positive integer, got {n!r}; pass e.g. -n 100")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"the seed must be an integer from 0 to {MAX_SEED}, got {seed!r}; pass e.g. --seed 0")
    if n is None or n >= total:
        return np.arange(total, dtype=np.int64)
    rng = np.random.default_rng(int(seed))
    idx = rng.choice(total, size=int(n), replace=False).astype(np.int64)
    idx.sort()
    return idx


def selection_note(total: int, n: int | None, seed: int) -> str | None:
    """The note describing what :func:`select` did, or None when it kept everything as asked."""
    if n is None or n == total:
        return None
    if n > total:
        return f"asked for {n} samples but the data has {total}; using all {total}"
    return f"sampled {n} of {total} with seed {seed}"


def sample(dataset: Dataset, n: int | None, seed: int) -> Dataset:
    """The dataset restricted to :func:`select`'s indices, with a note saying what was kept."""
    idx = select(dataset, n, seed)
    note = selection_note(len(dataset), n, seed)
    if len(idx) == len(dataset):
        if note is None:
            return dataset
        return dataclasses.replace(dataset, notes=dataset.notes + (note,))
    return dataset.subset(idx, note)


def check_labels(dataset: Dataset, num_classes: int) -> None:
    """Raise DataLoadError when a label is not a class of a model with ``num_classes`` logits."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ConfigError(f"the number of classes must be a positive integer, got {num_classes!r}")
    if len(dataset) == 0:
        return
    top = int(dataset.y.max())
    if top >= num_classes:
        bad = int((dataset.y >= num_classes).sum())
        raise DataLoadError(
            f"{bad} labels in {dataset.source} are >= {num_classes} (max {top}) but the model has "
            f"{num_classes} classes (0-{num_classes - 1}); check that the data matches the model"
        )
