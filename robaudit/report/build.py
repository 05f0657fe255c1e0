"""Assemble the JSON audit report (see ``schema.json`` beside this file)."""

from __future__ import annotations

import datetime as _dt
import platform
from importlib import metadata
from typing import Any

import torch

from robaudit import __version__

SCHEMA_VERSION = "1.3"

_LIBRARIES = ("torch", "torchvision", "numpy", "adversarial-robustness-toolbox", "onnx", "onnxruntime", "onnx2torch")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for lib in _LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def provenance(device: torch.device) -> dict[str, Any]:
    """What made a result: robaudit's version, when, the libraries and the device."""
    return {"robaudit_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "libraries": library_versions(), "device": device_description(device)}


def build_report(*, command: list[str], seed: int, device: torch.device, model: dict[str, Any],
                 data: dict[str, Any], config: dict[str, Any], results: list[dict[str, Any]],
                 warnings: list[str]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        **{k: v for k, v in provenance(device).items() if k != "device"},
        "command": command,
        "seed": seed,
        "device": device_description(device),
        "model": model,
        "data": data,
        "config": config,
        "results": results,
        "warnings": warnings,
    }
