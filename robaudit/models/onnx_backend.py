"""ONNX loading: safe external data, checker, onnx2torch conversion verified against onnxruntime.

Order of work in :func:`load_onnx`:

1. ``onnx.load`` without external data; every external-data reference must be a relative path
   that stays inside the model's folder (no ``..``, no absolute path, no symlink, file exists).
2. ``onnx.checker.check_model`` on the file.
3. An onnxruntime session (CPUExecutionProvider only; no custom-op library is ever registered).
4. ``onnx2torch.convert``. If that fails, one cheap repair is tried: ``onnx.version_converter``
   down to opset 17 (onnx2torch registers few converters past opset 17, e.g. ``Constant``,
   ``Shape`` and ``Reshape`` at opset 19+; onnx 1.23's converter does step 19/20/21 -> 17 for
   common graphs), and ``Reshape(allowzero=1)`` rewritten to ``allowzero=0`` where the target
   shape is a constant with no zero entry (the two mean the same thing then; the torch.onnx
   dynamo exporter always writes ``allowzero=1``).
5. The converted module and onnxruntime see the same random sample; their logits must agree
   within ``ONNX_ATOL`` (scaled by the logit magnitude when that exceeds 1). If conversion
   fails or disagrees, the model is served black-box through onnxruntime (``white_box=False``)
   with a note saying why, or refused when black-box use is not allowed.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robaudit.errors import ModelLoadError

ONNX_ATOL = 1e-4
"""Largest |converted - onnxruntime| logit difference accepted for white-box use."""

_TARGET_OPSET = 17


@dataclass
class OnnxGraphInfo:
    input_name: str
    output_name: str
    dims: list[int | None]
    """Input dims (N, C, H, W); None where the graph leaves a dim symbolic."""


_NO_CONVERTER = re.compile(r"operation_type='(\w+)', version=(\d+)")


def _one_line(exc: BaseException, limit: int = 160) -> str:
    raw = str(exc)
    if raw.startswith("The following operation failed in the TorchScript interpreter"):
        # a TorchScript traceback: the error itself is its last line ("RuntimeError: ...")
        raw = next((ln for ln in reversed(raw.splitlines()) if ln.strip()), raw)
    text = " ".join(raw.split()) or type(exc).__name__
    m = _NO_CONVERTER.search(text)
    if m and "not implemented" in text:
        text = f"no converter for {m.group(1)} opset {m.group(2)}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_external_data(model: Any, path: Path) -> None:
    """Refuse external-data references that leave the model's folder or go through symlinks."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    base = path.parent.resolve()
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        bad = (
            not location
            or os.path.isabs(location)
            or location.startswith(("/", "\\"))
            or ".." in Path(location.replace("\\", "/")).parts
            or ":" in location
        )
        if bad:
            raise ModelLoadError(
                f"{path}: tensor {tensor.name!r} points to external data {location!r} outside the "
                "model's folder; keep external data files next to the .onnx file and reference them "
                "by plain relative names"
            )
        target = base / location
        # Every component between the folder and the file must be a real directory/file.
        cur = base
        for part in Path(location).parts:
            cur = cur / part
            if cur.is_symlink():
                raise ModelLoadError(
                    f"{path}: external data {location!r} of tensor {tensor.name!r} is a symlink; "
                    "replace it with the real file inside the model's folder"
                )
        if not target.resolve().is_relative_to(base):
            raise ModelLoadError(
                f"{path}: external data {location!r} of tensor {tensor.name!r} resolves outside "
                "the model's folder; keep external data files next to the .onnx file"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"{path}: external data file {location!r} for tensor {tensor.name!r} is missing; "
                "copy it next to the .onnx file"
            )


def read_onnx(path: Path) -> Any:
    """Parse, vet external data, load it, and run the checker. Returns the ModelProto."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelLoadError(
            f"{path} is not a readable ONNX model ({_one_line(exc, 80)}); check that the file is "
            "complete and was written by torch.onnx.export or another ONNX exporter"
        ) from None
    if not model.graph.node and not model.graph.input:
        raise ModelLoadError(
            f"{path} parsed as ONNX but holds no graph; check that the file is a complete ONNX model"
        )
    check_external_data(model, path)
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ModelLoadError(
            f"{path} fails the ONNX checker ({_one_line(exc, 100)}); re-export the model"
        ) from None
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: external data could not be read ({_one_line(exc, 80)}); "
            "keep external data files next to the .onnx file"
        ) from None
    return model


def graph_info(model: Any, path: Path) -> OnnxGraphInfo:
    import onnx

    init_names = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise ModelLoadError(
            f"{path} has {len(inputs)} graph inputs, expected one image batch input; "
            "export the model with a single NCHW input"
        )
    inp = inputs[0]
    ttype = inp.type.tensor_type
    if ttype.elem_type != onnx.TensorProto.FLOAT:
        raise ModelLoadError(
            f"{path}: input {inp.name!r} has element type "
            f"{onnx.TensorProto.DataType.Name(ttype.elem_type)}, expected FLOAT; "
            "export the model with a float32 input"
        )
    if not ttype.HasField("shape") or len(ttype.shape.dim) != 4:
        rank = len(ttype.shape.dim) if ttype.HasField("shape") else "unknown"
        raise ModelLoadError(
            f"{path}: input {inp.name!r} has rank {rank}, expected an NCHW batch (rank 4); "
            "export the model with input shape (N, C, H, W)"
        )
    dims: list[int | None] = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in ttype.shape.dim
    ]
    if not model.graph.output:
        raise ModelLoadError(f"{path} has no graph output; export the model with a logits output")
    return OnnxGraphInfo(inp.name, model.graph.output[0].name, dims)


def make_session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(
            f"onnxruntime cannot run {path} ({_one_line(exc, 100)}); custom-op libraries are not "
            "loaded, so re-export the model with standard ONNX operators"
        ) from None


def _constant_values(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
                elif attr.name == "value_ints":
                    values[node.output[0]] = np.asarray(list(attr.ints), dtype=np.int64)
    return values


def _repair_for_onnx2torch(model: Any) -> tuple[Any, list[str]]:
    """Cheap, meaning-preserving rewrites that let onnx2torch take newer exports."""
    import onnx
    from onnx import version_converter

    done: list[str] = []
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    opset = next((o.version for o in fixed.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > _TARGET_OPSET:
        fixed = version_converter.convert_version(fixed, _TARGET_OPSET)
        done.append(f"opset {opset} -> {_TARGET_OPSET}")
    consts = _constant_values(fixed)
    for node in fixed.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        shape = consts.get(node.input[1])
        for attr in node.attribute:
            if attr.name == "allowzero" and attr.i == 1 and shape is not None and not (shape == 0).any():
                attr.i = 0
                if "Reshape allowzero" not in done:
                    done.append("Reshape allowzero")
    return fixed, done


class FirstOutput(torch.nn.Module):
    """onnx2torch returns a tuple for a graph with several outputs; robaudit reads the first one as the
    logits, as it does from onnxruntime."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def convert_onnx(model: Any) -> tuple[torch.nn.Module | None, str, list[str]]:
    """Try onnx2torch, then the repair. Returns (module or None, failure reason, repairs used)."""
    from onnx2torch import convert

    # onnx2torch's converted modules warn from their forward passes too (e.g. on every Slice), and the
    # user can do nothing about it: silence warnings raised from its code for the whole run
    warnings.filterwarnings("ignore", module=r"onnx2torch(\.|$)")
    several = len(model.graph.output) > 1

    def first(module: torch.nn.Module) -> torch.nn.Module:
        return (FirstOutput(module) if several else module).eval()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return first(convert(model)), "", []
        except Exception as exc:
            first_error = _one_line(exc)
        try:
            fixed, done = _repair_for_onnx2torch(model)
        except Exception as exc:
            return None, f"{first_error}; opset down-conversion also failed: {_one_line(exc, 80)}", []
        if not done:
            return None, first_error, []
        try:
            return first(convert(fixed)), "", done
        except Exception as exc:
            return None, f"{first_error}; after {', '.join(done)}: {_one_line(exc, 80)}", done


def compare_with_runtime(
    module: torch.nn.Module, session: Any, g: OnnxGraphInfo, sample: torch.Tensor
) -> float:
    """Max |module - onnxruntime| over the logits of ``sample`` (scaled by magnitude when > 1)."""
    with torch.no_grad():
        got = module(sample).float()
    (ref_np,) = session.run([g.output_name], {g.input_name: sample.numpy()})
    ref = torch.from_numpy(np.asarray(ref_np, dtype=np.float32))
    if got.shape != ref.shape:
        return float("inf")
    scale = max(1.0, float(ref.abs().max()))
    return float((got - ref).abs().max()) / scale
