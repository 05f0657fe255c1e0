"""The adversarial examples of an ``attack`` run as one ``.npz`` (``attack --save-adv``).

Exact floating-point examples, unlike the report's 8-bit PNG grids, so they can be re-checked,
fed to another model or to another tool. No pickled objects: every member is a plain array and
the cell index is a JSON string, so ``numpy.load(path)`` with its default ``allow_pickle=False``
reads it. The arrays are in the order of the evaluation set (the correctly classified inputs);
``x``/``y`` and one ``adv_<cell>`` make a dataset robaudit reads back with ``--x-key adv_<cell>
--y-key y``, e.g. to measure how the examples transfer to another model.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robaudit.report.writer import write_atomic

FORMAT = "robaudit-adversarial/1"


def cell_key(attack: str, target: str) -> str:
    """Array-name part for a cell: ``cw-l2`` / ``least-likely`` -> ``cw_l2_least_likely``."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", f"{attack}_{target}").strip("_").lower()


def adversarial_arrays(x: Any, y: Any, indices: Any, sets: Sequence[Any], clip: tuple[float, float],
                       meta: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The members of the file: ``x``, ``y``, ``index`` (positions in the dataset), and per cell
    ``adv_<key>`` (float32, NCHW, in the model's input range), ``pred_<key>``, ``success_<key>`` and,
    for targeted cells, ``target_<key>``; ``cells`` (JSON) lists the cells with their rows' setup."""
    arrays: dict[str, np.ndarray] = {
        "x": x.detach().float().cpu().numpy(), "y": y.detach().cpu().numpy().astype(np.int64),
        "index": np.asarray(indices, dtype=np.int64)}
    cells = []
    for s in sets:
        row = s.row
        key = cell_key(str(row["attack"]), str(row["target"]))
        arrays[f"adv_{key}"] = s.x_adv.numpy().astype(np.float32, copy=False)
        arrays[f"pred_{key}"] = s.pred.numpy().astype(np.int64)
        arrays[f"success_{key}"] = s.success.numpy().astype(bool)
        if s.targets is not None:
            arrays[f"target_{key}"] = s.targets.numpy().astype(np.int64)
        cells.append({"key": key, "attack": row["attack"], "target": row["target"], "backend": row.get("backend"),
                      "norm": row.get("norm"), "eps": row.get("eps"), "params": row.get("params", {}),
                      "n": row.get("n"), "n_success": row.get("n_success")})
    index = {"format": FORMAT, "layout": "NCHW", "clip": list(clip), "cells": cells, **(meta or {})}
    arrays["cells"] = np.array(json.dumps(index))
    return arrays


def write_adversarial_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` (uncompressed) atomically: the file is the old one or the complete new one."""
    return write_atomic(path, lambda fh: np.savez(fh, **arrays), option="--save-adv")


def read_index(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``cells`` index of a file written by :func:`write_adversarial_npz`."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["cells"]))
