"""Bundled demo models and data, addressable as ``demo:mnist`` and ``demo:cifar10``.

The files live in ``robaudit/demo/`` and are built by ``scripts/build_demo.py`` from real
MNIST and CIFAR-10 images (see ``robaudit/demo/README.md``).
"""

from __future__ import annotations

from pathlib import Path

from robaudit.errors import ConfigError

DEMO_DIR = Path(__file__).resolve().parent / "demo"

_MODELS = {"mnist": "mnist_cnn.pt", "mnist-onnx": "mnist_cnn.onnx", "cifar10": "cifar10_cnn.pt"}
_DATA = {"mnist": "mnist_demo.npz", "cifar10": "cifar10_demo.npz"}


def _resolve(spec: str, table: dict[str, str], what: str) -> str:
    if not spec.startswith("demo:"):
        return spec
    key = spec[len("demo:"):].strip().lower()
    if key not in table:
        raise ConfigError(f"unknown demo {what} {spec!r} (known: {', '.join('demo:' + k for k in table)})")
    path = DEMO_DIR / table[key]
    if not path.exists():
        raise ConfigError(f"demo {what} {spec!r} is missing from this installation ({path})")
    return str(path)


def resolve_model(spec: str) -> str:
    return _resolve(spec, _MODELS, "model")


def resolve_data(spec: str) -> str:
    return _resolve(spec, _DATA, "data")
