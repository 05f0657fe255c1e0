"""ONNX export that both onnxruntime and onnx2torch accept (see ``scripts/ONNX_NOTES.md``).

Torch 2.14 defaults to the dynamo exporter at opset 20 (and writes weights to a separate
``.onnx.data`` file); onnx2torch 1.5 cannot convert that graph (no converters for
``Constant``/``Reshape``/``Pad`` at opset >= 18/19, and dynamo's ``Reshape(allowzero=1)``).
The legacy TorchScript-based exporter (``dynamo=False``) at opset 17 produces a single
self-contained file that onnxruntime runs and onnx2torch converts.

Usage::

    from onnx_export import export_onnx, verify_onnx
    export_onnx(model, torch.rand(2, 3, 32, 32), "model.onnx")
    verify_onnx(model, "model.onnx", torch.rand(8, 3, 32, 32))  # raises on mismatch
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model: torch.nn.Module, example_input: torch.Tensor, path: str | Path) -> Path:
    """Export ``model`` (eval mode, NCHW float32 in -> logits out) to ``path``.

    Legacy exporter (``dynamo=False``), opset 17, dynamic batch dimension, weights embedded
    in the file (no external data). Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with warnings.catch_warnings():
        # The legacy exporter emits a deprecation warning in torch >= 2.9; it still works.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                model,
                (example_input,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
                export_params=True,
            )
    return path


def verify_onnx(
    model: torch.nn.Module,
    path: str | Path,
    x: torch.Tensor,
    atol: float = 1e-4,
    check_onnx2torch: bool = True,
) -> dict[str, float]:
    """Check the ONNX file against ``model`` on ``x`` (batch size may differ from export).

    Returns the max abs logit differences ``{"ort_vs_torch", "onnx2torch_vs_ort"}`` and
    raises ``AssertionError`` if any exceeds ``atol``.
    """
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    diffs = {"ort_vs_torch": float(np.abs(out - ref).max())}
    if check_onnx2torch:
        from onnx2torch import convert

        conv = convert(str(path)).eval()
        with torch.no_grad():
            out2 = conv(x).numpy()
        diffs["onnx2torch_vs_ort"] = float(np.abs(out2 - out).max())
    for k, v in diffs.items():
        if not v <= atol:
            raise AssertionError(f"{path}: {k} max abs diff {v:.3g} > {atol}")
    return diffs
