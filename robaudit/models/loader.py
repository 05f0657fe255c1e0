"""Load a model file into a :class:`Classifier`, refusing formats that would run untrusted code.

Formats, recognised by content first and suffix second:

``torchscript``
    A zip archive with ``code/`` and ``constants.pkl`` entries (``torch.jit.save``). Loaded with
    ``torch.jit.load``, whose unpickler only rebuilds TorchScript types and tensors. Put in eval
    mode.
``onnx``
    A protobuf ``.onnx`` file; see :mod:`robaudit.models.onnx_backend`. White-box through
    onnx2torch when the converted module matches onnxruntime, black-box through onnxruntime
    otherwise.
pickled ``torch.save`` checkpoints
    (a zip with ``data.pkl`` but no ``code/``, or a legacy raw pickle): refused without reading
    the pickle, since unpickling can run arbitrary code. ``torch.load`` is never called.
``torch-export`` (``.pt2``)
    Refused. Finding from the torch 2.14 source (``torch/export/__init__.py``,
    ``torch/export/pt2_archive/_package.py``, ``torch/_export/serde/serialize.py``): the graph
    itself is JSON and plain weights are raw bytes, but ``torch.export.load`` also

    * unpickles the archive's sample inputs (``data/sample_inputs/<model>.pt``) through
      ``deserialize_torch_artifact``, which tries ``torch.load(weights_only=True)`` and on *any*
      failure retries with ``weights_only=False`` -- a crafted file reaches full pickle;
    * loads weights/constants flagged ``use_pickle`` with ``torch.load(weights_only=False)``,
      and opaque constants with ``pickle.loads``;
    * reads legacy ``weights/<model>.pt`` / pre-2.7 ``serialized_*.pt`` entries the same way;
    * loads AOTInductor shared libraries (native code) from ``data/aotinductor/``;
    * resolves each graph node's target by walking attributes from a module named in the JSON
      (``ExportedProgramDeserializer.deserialize_operator``: any ``torch.*`` path, so
      ``torch.os.system`` is reachable and would run when the model is called), and parses
      symbolic shape expressions with sympy. Checking the pickled parts first would therefore
      not be enough: the graph itself is code.

    Its own docstring says: "uses pickle under the hood to load models. Never load data from an
    untrusted source." So ``.pt2`` files are refused with a message pointing to TorchScript or
    ONNX; ``FORMATS`` still lists ``torch-export`` so reports and configs can name it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import lzma
import math
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from robaudit.errors import ConfigError, ModelLoadError
from robaudit.models import fast
from robaudit.models import onnx_backend as ob
from robaudit.models.interface import Classifier, ModelInfo
from robaudit.models.wrappers import Normalize, OnnxRuntimeClassifier, TorchClassifier

FORMATS = ("torchscript", "onnx", "torch-export")
"""Format names that appear in :attr:`ModelInfo.format`."""

COMMON_SHAPES: tuple[tuple[int, int, int], ...] = ((1, 28, 28), (3, 32, 32), (3, 224, 224))
"""Input shapes probed for a TorchScript model when no data shape is known."""

_PROBE_BATCH = 2

_CONVERT_HINT = (
    "save a TorchScript model (torch.jit.save(torch.jit.trace(model.eval(), example), 'model.pt')) "
    "or export ONNX (torch.onnx.export(model, example, 'model.onnx', dynamo=False, opset_version=17)); "
    "for a state_dict, build the model in your own code, load_state_dict(torch.load(path, "
    "weights_only=True)) there, then save it one of those ways"
)


# --------------------------------------------------------------------------- helpers


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_device(device: str) -> torch.device:
    d = device.strip().lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d == "cpu":
        return torch.device("cpu")
    if d == "cuda" or d.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                "device 'cuda' requested but no CUDA device is available; use --device cpu or auto"
            )
        return torch.device(d)
    raise ConfigError(f"unknown device {device!r}: use auto, cpu or cuda")


def _check_options(
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    clip: tuple[float, float],
    data_shape: tuple[int, int, int] | None,
    num_classes_hint: int | None,
) -> None:
    lo, hi = (float(v) for v in clip)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"clip range {clip} is invalid; give two finite numbers low < high, e.g. 0 1")
    if (mean is None) != (std is None):
        raise ConfigError("mean and std must be given together; pass both or neither")
    if mean is not None and std is not None:
        if len(mean) == 0 or len(std) == 0:
            raise ConfigError("mean/std are empty; give one value or one per channel")
        if not all(math.isfinite(float(v)) for v in mean):
            raise ConfigError(f"mean {tuple(mean)} has a non-finite value; give finite numbers")
        if not all(math.isfinite(float(v)) and float(v) > 0 for v in std):
            raise ConfigError(f"std {tuple(std)} must be finite and > 0; fix the std values")
    if data_shape is not None:
        if len(data_shape) != 3 or not all(isinstance(v, int) and v > 0 for v in data_shape):
            raise ConfigError(f"data shape {data_shape} is invalid; expected (channels, height, width)")
    if num_classes_hint is not None and num_classes_hint < 1:  # the largest label + 1 (all-0 labels: 1)
        raise ConfigError(f"largest label + 1 = {num_classes_hint} is invalid; labels start at 0")


def _normalizer(
    mean: Sequence[float] | None, std: Sequence[float] | None, channels: int, path: Path
) -> Normalize | None:
    if mean is None or std is None:
        return None
    for name, vals in (("mean", mean), ("std", std)):
        if len(vals) not in (1, channels):
            plural = "channel" if channels == 1 else "channels"
            raise ConfigError(
                f"{name} has {len(vals)} values but {path.name} takes {channels} {plural}; "
                + ("give 1 value" if channels == 1 else f"give 1 or {channels} values")
            )
    return Normalize(mean, std, channels)


def _expand(vals: Sequence[float] | None, channels: int) -> tuple[float, ...] | None:
    if vals is None:
        return None
    v = tuple(float(x) for x in vals)
    return v * channels if len(v) == 1 else v


def _check_logits(out: object, path: Path, num_classes_hint: int | None, batch: int) -> int:
    """Validate a probe output and return K."""
    if not isinstance(out, torch.Tensor):
        raise ModelLoadError(
            f"{path} returns {type(out).__name__}, expected a (N, K) logits tensor; "
            "export a model whose forward returns one tensor"
        )
    shape = tuple(out.shape)
    if out.ndim != 2 or shape[0] != batch or shape[1] < 2:
        raise ModelLoadError(
            f"model output has shape {shape} for a batch of {batch}, "
            "expected (N, K) logits with K >= 2; "
            "export the classifier head that returns one logit per class"
        )
    if not out.is_floating_point():
        raise ModelLoadError(
            f"model output has dtype {out.dtype}, expected float logits; export the logits"
        )
    k = int(shape[1])
    if num_classes_hint is not None and k < num_classes_hint:
        raise ModelLoadError(
            f"model returns {k} logits but the data has labels up to class {num_classes_hint - 1}; "
            "check that the model and the data set belong together"
        )
    return k


def _sample(shape: tuple[int, int, int], clip: tuple[float, float], batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    lo, hi = clip
    return lo + (hi - lo) * torch.rand((batch, *shape), generator=g)


# --------------------------------------------------------------------------- sniffing


def _zip_kind(path: Path) -> str:
    """``torchscript``, ``pickle``, ``torch-export`` or ``zip`` (unknown) for a zip archive."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError, EOFError) as exc:
        # NotImplementedError: a damaged central directory claiming an unknown zip version
        raise ModelLoadError(
            f"{path} starts like a zip archive but cannot be read ({ob._one_line(exc, 60)}); "
            "the file is truncated or corrupt, copy it again"
        ) from None
    rel = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if any(r.startswith("code/") for r in rel) and "constants.pkl" in rel:
        return "torchscript"
    if (
        "archive_format" in rel
        or any(r.startswith("models/") and r.endswith(".json") for r in rel)
        or "serialized_exported_program.json" in rel
        or any(n.endswith("serialized_exported_program.json") for n in names)
    ):
        return "torch-export"
    if "data.pkl" in rel:
        return "pickle"
    return "zip"


def sniff_format(path: Path) -> str:
    """What the file holds: ``torchscript``, ``onnx``, ``torch-export``, ``pickle``.

    Raises :class:`ModelLoadError` for files that are none of these.
    """
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist; check the path")
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a file; pass the path of a .pt/.onnx model file")
    with path.open("rb") as f:
        head = f.read(8)
    if not head:
        raise ModelLoadError(f"{path} is empty; copy the model file again")
    suffix = path.suffix.lower()
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        kind = _zip_kind(path)
        if kind == "zip":
            raise ModelLoadError(
                f"{path} is a zip archive but not a TorchScript or torch.export model; {_CONVERT_HINT}"
            )
        return kind
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):
        # pickle protocol 2+ starts with PROTO (0x80); protocol 0/1 pickles of dicts/lists/tuples.
        if head[:1] == b"\x80" or suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt"):
            return "pickle"
    if suffix in (".pt", ".pth", ".ts", ".pt2"):
        raise ModelLoadError(
            f"{path} is not a TorchScript archive (no zip header); the file is truncated or "
            f"in another format: {_CONVERT_HINT}"
        )
    if suffix == ".onnx" or head[:1] == b"\x08":  # ModelProto starts with field 1 (ir_version)
        return "onnx"
    raise ModelLoadError(
        f"{path} is not a recognised model file (TorchScript .pt or ONNX .onnx); {_CONVERT_HINT}"
    )


# --------------------------------------------------------------------------- public API


def load_model(
    path: str | Path,
    *,
    device: str = "auto",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    clip: tuple[float, float] = (0.0, 1.0),
    data_shape: tuple[int, int, int] | None = None,
    num_classes_hint: int | None = None,
    allow_black_box: bool = True,
    fast_copies: bool = True,
) -> Classifier:
    """Load ``path`` as a pixel-space :class:`Classifier` returning ``(N, K)`` logits.

    ``mean``/``std`` (one value or one per channel) are applied inside the model, so inputs and
    eps stay in pixel space within ``clip``. ``data_shape`` is the (C, H, W) of the data; it fills
    symbolic ONNX dims and picks the TorchScript probe shape. ``num_classes_hint`` (largest
    label + 1) must not exceed the model's number of logits. With ``allow_black_box=False`` an
    ONNX model that cannot be converted to torch is refused instead of served through onnxruntime.
    ``fast_copies=False`` skips the faster copies of :mod:`robaudit.models.fast` (a probe load, or
    the plain network for a benchmark).

    Raises:
        ModelLoadError: unreadable, unsafe or unsuitable model file.
        ConfigError: invalid option values (device, clip, mean/std, shape).
    """
    p = Path(path)
    clip = (float(clip[0]), float(clip[1]))
    if data_shape is not None:
        data_shape = tuple(int(v) for v in data_shape)  # type: ignore[assignment]
    _check_options(mean, std, clip, data_shape, num_classes_hint)
    dev = resolve_device(device)
    kind = sniff_format(p)
    if kind == "pickle":
        raise ModelLoadError(
            f"{p} is a pickled torch.save checkpoint, which robaudit will not unpickle because that "
            f"can run arbitrary code; {_CONVERT_HINT}"
        )
    if kind == "torch-export":
        raise ModelLoadError(
            f"{p} is a torch.export .pt2 archive, which torch.export.load may unpickle with "
            f"weights_only=False (unsafe for untrusted files); {_CONVERT_HINT}"
        )
    digest = file_sha256(p)
    if kind == "torchscript":
        return _load_torchscript(p, digest, dev, mean, std, clip, data_shape, num_classes_hint, fast_copies)
    return _load_onnx(p, digest, dev, mean, std, clip, data_shape, num_classes_hint, allow_black_box, fast_copies)


# --------------------------------------------------------------------------- TorchScript

_CONV_GROUPS_ARG = {"aten::_convolution": 8, "aten::convolution": 8, "aten::conv1d": 6, "aten::conv2d": 6,
                    "aten::conv3d": 6}
"""Convolution ops in a TorchScript graph and the position of their ``groups`` argument."""
_CHANNEL_COPIES = frozenset({"aten::expand", "aten::expand_as", "aten::repeat", "aten::tile", "aten::cat",
                             "aten::repeat_interleave", "aten::stack"})
"""Ops that can widen an input's channels on purpose: before the first convolution they make its
channel count say nothing about the input's."""


def first_conv_channels(net: torch.nn.Module) -> int | None:
    """Input channels of the first convolution in ``net``'s inlined TorchScript graph (weight
    ``shape[1]`` x ``groups``), or ``None`` when there is none, its weight is not a plain attribute
    or constant, or an op that can copy channels (expand, repeat, cat, ...) comes before it. A
    TorchScript model declares no input shape; this is the closest thing it has."""
    try:
        graph = net.inlined_graph  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        return None

    def resolve(value: Any) -> Any:
        node = value.node()
        kind = node.kind()
        if kind == "prim::Param":
            return net
        if kind == "prim::GetAttr":
            parent = resolve(node.input())
            return None if parent is None else getattr(parent, node.s("name"), None)
        if kind == "prim::Constant" and node.hasAttribute("value"):
            tag = node.kindOf("value")
            return node.t("value") if tag == "t" else node.i("value") if tag == "i" else None
        return None

    def walk(nodes: Any) -> Any:  # in program order, into the blocks of if/loop nodes
        for node in nodes:
            yield node
            blocks = list(node.blocks())
            if node.kind() == "prim::If" and len(blocks) == 2:
                cond = resolve(node.input())  # a module flag (``if self.widen:``) decides the branch
                if isinstance(cond, (bool, int)):
                    blocks = [blocks[0] if cond else blocks[1]]
            for block in blocks:
                yield from walk(block.nodes())

    for node in walk(graph.nodes()):
        if node.kind() in _CHANNEL_COPIES:  # a model that widens its own input (gray to RGB, say)
            return None
        pos = _CONV_GROUPS_ARG.get(node.kind())
        if pos is None:
            continue
        args = list(node.inputs())
        weight = resolve(args[1])
        groups = resolve(args[pos]) if len(args) > pos else 1
        if not isinstance(weight, torch.Tensor) or weight.dim() < 3 or not isinstance(groups, int):
            return None
        return int(weight.shape[1]) * groups
    return None


def _check_zip_crc(path: Path) -> None:
    """Refuse an archive whose members fail their CRC-32: ``torch.jit.load`` does not check them, so
    a flipped bit in the weights would otherwise load silently as a different model."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError, NotImplementedError, EOFError, zlib.error,
            lzma.LZMAError) as exc:
        raise ModelLoadError(
            f"{path} cannot be read as a zip archive ({ob._one_line(exc, 80)}); the file is truncated or "
            "corrupt, copy it again"
        ) from None
    if bad is not None:
        raise ModelLoadError(
            f"{path}: archive member {bad!r} fails its CRC check; the file is corrupt, copy it again"
        )


def _load_torchscript(
    path: Path,
    digest: str,
    dev: torch.device,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    clip: tuple[float, float],
    data_shape: tuple[int, int, int] | None,
    num_classes_hint: int | None,
    fast_copies: bool,
) -> Classifier:
    _check_zip_crc(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            net = torch.jit.load(str(path), map_location=dev)
    except Exception as exc:
        raise ModelLoadError(
            f"{path} could not be loaded as TorchScript ({ob._one_line(exc, 100)}); "
            "re-save it with torch.jit.save"
        ) from None
    net.eval()
    candidates = [data_shape] if data_shape is not None else list(COMMON_SHAPES)
    last_err = ""
    for shape in candidates:
        probe = torch.zeros((_PROBE_BATCH, *shape), device=dev)
        try:
            with torch.no_grad():
                out = net(probe)
        except Exception as exc:
            last_err = ob._one_line(exc, 100)
            continue
        k = _check_logits(out, path, num_classes_hint, _PROBE_BATCH)
        try:  # attacks and out-of-memory retries may send a single input: (1, K), not (K,)
            with torch.no_grad():
                one = net(probe[:1])
        except Exception as exc:
            raise ModelLoadError(
                f"{path} runs on a batch of {_PROBE_BATCH} but fails on a batch of 1 ({ob._one_line(exc, 100)}); "
                "export the model with a dynamic batch axis, in eval mode"
            ) from None
        if _check_logits(one, path, num_classes_hint, 1) != k:
            raise ModelLoadError(f"{path} returns a different number of logits for a batch of 1 than for a batch "
                                 f"of {_PROBE_BATCH}; export the classifier head that returns one logit per class")
        norm = _normalizer(mean, std, shape[0], path)
        if norm is not None:
            norm = norm.to(dev)
        copies = fast.prepare(net, shape, clip, dev) if fast_copies else fast.no_copies("no prepared copies asked for")
        conv_c = first_conv_channels(net)
        info = ModelInfo(
            path=str(path),
            format="torchscript",
            sha256=digest,
            input_shape=shape,
            num_classes=k,
            white_box=True,
            clip=clip,
            mean=_expand(mean, shape[0]),
            std=_expand(std, shape[0]),
            runtime=copies.note,
            first_conv_channels=conv_c if conv_c != shape[0] else None,
        )
        note = info.channel_mismatch()
        if note:
            info = dataclasses.replace(info, notes=(*info.notes, note))
        model = TorchClassifier(info, net, norm)
        model.use_copies(copies.grad, copies.infer)
        return model
    if data_shape is not None:
        raise ModelLoadError(
            f"{path} fails on an input of shape {data_shape} taken from the data ({last_err}); "
            "check that the model and the data belong together"
        )
    raise ModelLoadError(
        f"{path} runs on none of the shapes {', '.join(str(s) for s in COMMON_SHAPES)}; "
        "pass data so robaudit knows the input shape"
    )


# --------------------------------------------------------------------------- ONNX


def _onnx_input_shape(
    g: ob.OnnxGraphInfo, path: Path, data_shape: tuple[int, int, int] | None
) -> tuple[tuple[int, int, int], int | None]:
    """(C, H, W) for the model and the batch limit (1 for graphs with a fixed batch of 1)."""
    n, *chw = g.dims
    if n is not None and n != 1:
        raise ModelLoadError(
            f"{path} has a fixed batch size of {n}; re-export it with a dynamic batch axis "
            f"(torch.onnx.export(..., input_names=[{g.input_name!r}], dynamic_axes={{{g.input_name!r}: {{0: 'batch'}}}}))"
        )
    shape: list[int] = []
    for i, d in enumerate(chw):
        if d is not None:
            if data_shape is not None and data_shape[i] != d:
                if tuple(chw) == (data_shape[1], data_shape[2], data_shape[0]):
                    raise ModelLoadError(
                        f"{path} takes channels-last input {tuple(chw)} (NHWC); robaudit feeds NCHW batches "
                        f"{data_shape}: re-export the model with an NCHW input (e.g. transpose inside the model)"
                    )
                raise ModelLoadError(
                    f"{path} expects inputs of shape {tuple(chw)} but the data has shape {data_shape}; "
                    "check that the model and the data belong together"
                )
            shape.append(d)
        elif data_shape is not None:
            shape.append(data_shape[i])
        else:
            raise ModelLoadError(
                f"{path} leaves input dimension {i + 1} symbolic and no data shape is known; "
                "pass data so robaudit knows the input shape"
            )
    return (shape[0], shape[1], shape[2]), (1 if n == 1 else None)


def _load_onnx(
    path: Path,
    digest: str,
    dev: torch.device,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    clip: tuple[float, float],
    data_shape: tuple[int, int, int] | None,
    num_classes_hint: int | None,
    allow_black_box: bool,
    fast_copies: bool,
) -> Classifier:
    model = ob.read_onnx(path)
    g = ob.graph_info(model, path)
    shape, batch_limit = _onnx_input_shape(g, path, data_shape)
    session = ob.make_session(path)
    probe_batch = 1 if batch_limit == 1 else _PROBE_BATCH
    sample = _sample(shape, clip, probe_batch)
    try:
        (ref,) = session.run([g.output_name], {g.input_name: sample.numpy()})
    except Exception as exc:
        raise ModelLoadError(
            f"onnxruntime fails on an input of shape {tuple(sample.shape)} ({ob._one_line(exc, 100)}); "
            "check the model's input shape against the data"
        ) from None
    ref_t = torch.as_tensor(ref)
    k = _check_logits(ref_t, path, num_classes_hint, probe_batch)
    norm = _normalizer(mean, std, shape[0], path)

    module, reason, repairs = ob.convert_onnx(model)
    if module is None:
        reason = f"onnx2torch could not convert ({reason})"
    if module is not None:
        try:
            diff = ob.compare_with_runtime(module, session, g, sample)
        except Exception as exc:
            module, reason = None, f"the onnx2torch module fails ({ob._one_line(exc, 100)})"
        else:
            if not diff <= ob.ONNX_ATOL:
                reason = f"the onnx2torch module disagrees with onnxruntime (max |diff| {diff:.1e})"
                module = None

    base = dict(
        path=str(path),
        format="onnx",
        sha256=digest,
        input_shape=shape,
        num_classes=k,
        clip=clip,
        mean=_expand(mean, shape[0]),
        std=_expand(std, shape[0]),
    )
    notes: list[str] = []
    if len(model.graph.output) > 1:
        notes.append(f"graph has {len(model.graph.output)} outputs: the first ({g.output_name!r}) is read as the logits")
    if batch_limit == 1:
        notes.append("graph has a fixed batch size of 1: inputs are run one at a time")
    if module is not None:
        if repairs:
            notes.append(f"converted with onnx2torch after {', '.join(repairs)}; matches onnxruntime")
        module = module.to(dev).eval()
        copies = (fast.prepare(module, shape, clip, dev) if fast_copies and batch_limit is None else
                  fast.no_copies("no prepared copies asked for" if not fast_copies else
                                 "the graph's fixed batch size leaves no room for prepared copies"))
        info = ModelInfo(white_box=True, notes=tuple(notes), runtime=copies.note, **base)  # type: ignore[arg-type]
        if norm is not None:
            norm = norm.to(dev)
        clf = TorchClassifier(info, module, norm, batch_limit=batch_limit)
        clf.use_copies(copies.grad, copies.infer)
        return clf

    if not allow_black_box:
        raise ModelLoadError(
            f"{path} cannot be used white-box: {reason}; "
            "allow black-box use (query-based attacks only) or re-export with opset 17"
        )
    notes.insert(0, f"{reason}: only query-based attacks run")
    if dev.type != "cpu":
        notes.append("black-box model runs on the CPU through onnxruntime")
    info = ModelInfo(white_box=False, notes=tuple(notes), runtime="onnxruntime (black-box)",
                     **base)  # type: ignore[arg-type]
    return OnnxRuntimeClassifier(info, session, g.input_name, g.output_name, norm, batch_limit)
