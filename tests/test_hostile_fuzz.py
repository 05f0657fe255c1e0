"""Loader fuzzing: random and mutated files thrown at every loader.

The only exceptions allowed out of a loader are the documented ones, the :class:`RobauditError`
family, each with a one-line message: never a traceback of another type, never a hang. Seeds are
small valid files of each format (``.npz``, MNIST IDX, CIFAR-10 ``.bin``, image folders,
TorchScript ``.pt``, ``.onnx``, YAML profiles); hypothesis mutates their bytes (flips, cuts,
insertions, deletions, header integers set to extremes) or builds structurally odd ones.

``test_*_fast``: a few hundred examples in all, deterministic, in the default suite.
``test_*_slow``: thousands (``pytest -m slow tests/test_hostile_fuzz.py``).
"""

from __future__ import annotations

import gzip
import io
import struct
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robaudit.config import load_profile
from robaudit.data import load_dataset
from robaudit.errors import RobauditError
from robaudit.models import load_model

pytestmark = pytest.mark.filterwarnings("ignore")

MAX_BYTES = 8 << 20
"""Data size limit in the fuzz runs (the loaders' own guard; keeps every example small)."""

_COMMON = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
FAST = settings(max_examples=30, derandomize=True, **_COMMON)
SLOW = settings(max_examples=600, **_COMMON)


# ----------------------------------------------------------------------------- seeds


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _idx(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    return bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


_RNG = np.random.default_rng(0)
SEED_X = _RNG.integers(0, 256, (4, 8, 8), dtype=np.uint8)
SEED_Y = np.array([0, 1, 2, 1], dtype=np.uint8)
NPZ_SEED = _npz_bytes(x=SEED_X, y=SEED_Y.astype(np.int64))
IDX_IMAGES_SEED = _idx(SEED_X)
IDX_LABELS_SEED = _idx(SEED_Y)
CIFAR_SEED = np.concatenate([np.array([[3], [7]], np.uint8), _RNG.integers(0, 256, (2, 3072), dtype=np.uint8)],
                            axis=1).tobytes()
PROFILE_SEED = b"""\
name: fuzz
seed: 1
samples: 10
batch_size: 4
attacks:
  fgsm: {eps: 0.1}
  pgd-strong: {attack: pgd, eps: 0.3, steps: 40, norm: linf}
  cw: {attack: cw-l2, max_iter: 10}
targets: [untargeted, next-class]
gates:
  - clean_accuracy >= 0.9
  - fgsm untargeted success_rate <= 0.5
"""


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


PNG_SEED = _png(_RNG.integers(0, 256, (6, 6, 3), dtype=np.uint8))


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(x.shape[0], -1))


def _model_seeds() -> tuple[bytes, bytes]:
    torch.manual_seed(0)
    net = _Tiny().eval()
    with tempfile.TemporaryDirectory() as tmp:
        pt, onnx_path = Path(tmp) / "m.pt", Path(tmp) / "m.onnx"
        torch.jit.save(torch.jit.trace(net, torch.zeros(2, 1, 8, 8)), str(pt))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(onnx_path), dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
        return pt.read_bytes(), onnx_path.read_bytes()


_MODELS: dict[str, bytes] = {}


def model_seed(kind: str) -> bytes:
    if not _MODELS:
        _MODELS["pt"], _MODELS["onnx"] = _model_seeds()
    return _MODELS[kind]


# ----------------------------------------------------------------------------- mutations

_INTS = [0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@st.composite
def mutated(draw: st.DrawFn, seed: bytes, max_ops: int = 4) -> bytes:
    """``seed`` after 1..``max_ops`` random edits (some keep the length, some do not)."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "int", "dup", "zero"]))
        pos = draw(st.integers(0, max(len(data), 1) - 1)) if data else 0
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "int":
            value = draw(st.sampled_from(_INTS))
            data[pos:pos + 4] = struct.pack(draw(st.sampled_from([">I", "<I"])), value)
        elif op == "dup" and data:
            end = min(len(data), pos + draw(st.integers(1, 256)))
            data[pos:pos] = data[pos:end]
        elif op == "zero":
            data[pos:pos + draw(st.integers(1, 64))] = bytes(min(64, max(0, len(data) - pos)))
    return bytes(data)


def file_bytes(seed: bytes) -> st.SearchStrategy[bytes]:
    """Mutations of ``seed`` mostly, random bytes and the empty file sometimes."""
    return st.one_of(mutated(seed), mutated(seed), mutated(seed), st.binary(max_size=512), st.just(b""))


def only_documented_errors(call: Callable[[], Any]) -> None:
    """Run ``call``; a RobauditError with a one-line message is fine, anything else fails the test."""
    try:
        call()
    except RobauditError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, repr(msg)


# ----------------------------------------------------------------------------- the fuzz bodies


def _data_file(name: str, content: bytes, **kw: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        only_documented_errors(lambda: load_dataset(path, max_bytes=MAX_BYTES, **kw))


def fuzz_npz(content: bytes, channels: int | None) -> None:
    _data_file("d.npz", content, channels=channels)


_DTYPES = ["uint8", "uint16", "int8", "int64", "float16", "float32", "float64", "bool", "complex64", "U3", "S2",
           "object", "V4", "datetime64[s]"]


@st.composite
def odd_array(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from(_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=5)))
    n = int(np.prod(shape)) if shape else 1
    if dtype == "object":
        return np.array([draw(st.sampled_from([1, "a", None, 2.5]))] * n, dtype=object).reshape(shape)
    raw = draw(st.binary(min_size=n * np.dtype(dtype).itemsize, max_size=n * np.dtype(dtype).itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def fuzz_npz_arrays(arrays: dict[str, np.ndarray], layout: str | None, x_key: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.npz"
        np.savez(path, **arrays)  # type: ignore[arg-type]
        only_documented_errors(lambda: load_dataset(path, layout=layout, x_key=x_key, max_bytes=MAX_BYTES))


def fuzz_idx(images: bytes, labels: bytes, gz: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ext = ".gz" if gz else ""
        img = Path(tmp) / f"t10k-images-idx3-ubyte{ext}"
        img.write_bytes(gzip.compress(images, mtime=0) if gz else images)
        (Path(tmp) / f"t10k-labels-idx1-ubyte{ext}").write_bytes(gzip.compress(labels, mtime=0) if gz else labels)
        only_documented_errors(lambda: load_dataset(img, max_bytes=MAX_BYTES))
        only_documented_errors(lambda: load_dataset(Path(tmp), max_bytes=MAX_BYTES))


def fuzz_cifar(content: bytes, name: str) -> None:
    _data_file(name, content)


def fuzz_folder(files: list[tuple[str, bytes]], channels: int | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        for rel, content in files:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        root.mkdir(exist_ok=True)
        only_documented_errors(lambda: load_dataset(root, channels=channels, max_bytes=MAX_BYTES))


def fuzz_model(name: str, content: bytes, with_shape: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        shape = (1, 8, 8) if with_shape else None
        only_documented_errors(lambda: load_model(path, device="cpu", data_shape=shape))


_OPS = ["Relu", "Softmax", "Shrink", "NoSuchOp", "Identity", "Gemm", "Reshape", "Loop", "If", "Scan", "Gather"]


@st.composite
def onnx_edited(draw: st.DrawFn) -> bytes:
    """The seed ONNX model after 1..3 structural edits that keep it parseable (deeper than byte flips)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(model_seed("onnx"))
    g = model.graph
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["dim", "op", "drop_node", "drop_init", "init_dims", "opset", "dtype", "domain",
                                   "ir", "external", "output", "rename"]))
        if op == "dim":
            dims = g.input[0].type.tensor_type.shape.dim
            d = dims[draw(st.integers(0, len(dims) - 1))]
            value = draw(st.sampled_from([0, 1, 2, 7, 2**31 - 1, -1, None]))
            if value is None:
                d.dim_param = "sym"
            else:
                d.dim_value = value
        elif op == "op" and g.node:
            g.node[draw(st.integers(0, len(g.node) - 1))].op_type = draw(st.sampled_from(_OPS))
        elif op == "drop_node" and g.node:
            del g.node[draw(st.integers(0, len(g.node) - 1))]
        elif op == "drop_init" and g.initializer:
            del g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        elif op == "init_dims" and g.initializer:
            t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
            t.dims[:] = draw(st.lists(st.integers(0, 2**20), max_size=3))
        elif op == "opset":
            model.opset_import[0].version = draw(st.sampled_from([1, 7, 13, 17, 21, 99]))
        elif op == "dtype" and g.output:
            g.output[0].type.tensor_type.elem_type = draw(st.sampled_from(
                [TensorProto.INT64, TensorProto.STRING, TensorProto.BOOL, TensorProto.DOUBLE, 0]))
        elif op == "domain":
            g.node.append(helper.make_node("Evil", [g.input[0].name], ["evil_out"], domain="com.evil"))
        elif op == "ir":
            model.ir_version = draw(st.sampled_from([0, 1, 3, 8, 10, 99]))
        elif op == "external" and g.initializer:
            t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
            t.data_location = TensorProto.EXTERNAL
            del t.external_data[:]
            entry = t.external_data.add()
            entry.key, entry.value = "location", draw(st.sampled_from(
                ["/etc/passwd", "../w.bin", "a/../../w.bin", "", "C:\\w.bin", "w.bin", "."]))
            t.ClearField("raw_data")
        elif op == "output" and g.output:
            del g.output[:]
        elif op == "rename":
            g.input[0].name = draw(st.sampled_from(["", "y", "logits", "x" * 300]))
    return model.SerializeToString()


def fuzz_profile(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.yaml"
        path.write_bytes(content)
        only_documented_errors(lambda: load_profile(str(path)))


_WORDS = ["attacks", "targets", "defences", "samples", "seed", "batch_size", "eps", "steps", "norm", "attack",
          "fgsm", "pgd", "cw-l2", "hopskipjump", "linf", "l2", "untargeted", "all", "gates", "detect", "clever",
          "examples", "backend", "torch", "name", "max_iter", "loss", "jpeg", "ss", "!!python/object:os.system",
          "fgsm success_rate <= 0.5", "clean_accuracy >= 2"]
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.sampled_from(_WORDS), st.text(max_size=8))
_DOCS = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(_WORDS) | st.text(max_size=4),
                                                                       inner, max_size=5)), max_leaves=25)


_TOP = ["name", "description", "seed", "samples", "batch_size", "examples", "backend", "attacks", "targets",
        "defences", "threat_models", "defence_params", "eot_samples", "clever", "detect", "gates"]
_PARAMS = ["attack", "eps", "norm", "backend", "steps", "max_iter", "n_iter", "loss", "restarts", "random_start",
           "binary_search_steps", "confidence", "rel_stepsize", "early_stop", "max_eval", "nb_steps", "theta"]
_ATTACK_SPECS = st.dictionaries(st.sampled_from(["fgsm", "pgd", "bim", "apgd", "cw-l2", "cw-linf", "deepfool", "jsma",
                                                 "hopskipjump", "universal", "shadow", "x", "pgd strong", "a/b"]),
                                st.one_of(st.none(), st.dictionaries(st.sampled_from(_PARAMS), _SCALARS, max_size=4),
                                          _SCALARS), max_size=3)
_PROFILE_LIKE = st.fixed_dictionaries({"attacks": _ATTACK_SPECS},
                                      optional={k: st.one_of(_SCALARS, _DOCS) for k in _TOP if k != "attacks"})


def fuzz_profile_doc(doc: Any) -> None:
    import yaml

    fuzz_profile(yaml.safe_dump(doc).encode("utf-8"))


# ----------------------------------------------------------------------------- strategies

NPZ = dict(content=file_bytes(NPZ_SEED), channels=st.sampled_from([None, 1, 3]))
NPZ_ARRAYS = dict(arrays=st.dictionaries(st.sampled_from(["x", "y", "x_test", "y_test", "images", "a"]), odd_array(),
                                         max_size=3),
                  layout=st.sampled_from([None, "NCHW", "NHWC"]), x_key=st.sampled_from([None, "images", "y"]))
IDX = dict(images=file_bytes(IDX_IMAGES_SEED), labels=st.one_of(st.just(IDX_LABELS_SEED), file_bytes(IDX_LABELS_SEED)),
           gz=st.booleans())
CIFAR = dict(content=file_bytes(CIFAR_SEED), name=st.sampled_from(["test_batch.bin", "data_batch_1.bin", "test_batch"]))
_IMAGE = st.one_of(file_bytes(PNG_SEED), st.sampled_from([
    _png(np.zeros((6, 6), np.uint8)), _png(np.zeros((6, 6, 4), np.uint8)), _png(np.zeros((6, 6), np.uint16)),
    _png(np.zeros((6, 6, 3), np.uint8), "BMP"), _png(np.zeros((6, 6, 3), np.uint8), "JPEG"),
    _png(np.zeros((7, 5, 3), np.uint8)), _png(np.zeros((6, 6, 3), np.uint8), "GIF"),
]))
FOLDER = dict(files=st.lists(st.tuples(st.sampled_from(["a/1.png", "a/2.png", "b/1.png", "b/2.jpg", "b/3.bmp",
                                                         "c/x.png", "top.png", "a/notes.txt"]), _IMAGE),
                             min_size=1, max_size=6),
              channels=st.sampled_from([None, 1, 3]))
PT = dict(name=st.sampled_from(["m.pt", "m.pth", "m.ts"]), content=st.deferred(lambda: file_bytes(model_seed("pt"))),
          with_shape=st.booleans())
ONNX = dict(name=st.just("m.onnx"), content=st.deferred(lambda: file_bytes(model_seed("onnx"))),
            with_shape=st.booleans())
ONNX_EDITED = dict(name=st.just("m.onnx"), content=st.deferred(onnx_edited), with_shape=st.booleans())
HOSTILE_YAML = [
    b"!!python/object/apply:os.system ['echo pwned']\n",
    b"attacks: !!python/object/new:subprocess.Popen [['true']]\n",
    b"[" * 5000 + b"]" * 5000,
    b"seed: 1" + b"0" * 5000 + b"\nattacks: [fgsm]\n",
    b"a: &a [x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\n"
    b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c]\nattacks: {fgsm: {}}\ndescription: *d\n",
    b"attacks: &a {fgsm: *a}\n",
    b"\xff\xfe\x00a",
]
PROFILE = dict(content=st.one_of(file_bytes(PROFILE_SEED), st.text(max_size=200).map(str.encode),
                                 st.sampled_from(HOSTILE_YAML), st.sampled_from(HOSTILE_YAML).flatmap(mutated)))
PROFILE_DOC = dict(doc=st.one_of(_DOCS, _PROFILE_LIKE, _PROFILE_LIKE))


# ----------------------------------------------------------------------------- tests: fast (default suite)


@FAST
@given(**NPZ)
def test_npz_bytes_fast(content, channels):
    fuzz_npz(content, channels)


@FAST
@given(**NPZ_ARRAYS)
def test_npz_arrays_fast(arrays, layout, x_key):
    fuzz_npz_arrays(arrays, layout, x_key)


@FAST
@given(**IDX)
def test_idx_fast(images, labels, gz):
    fuzz_idx(images, labels, gz)


@FAST
@given(**CIFAR)
def test_cifar_fast(content, name):
    fuzz_cifar(content, name)


@FAST
@given(**FOLDER)
def test_image_folder_fast(files, channels):
    fuzz_folder(files, channels)


@FAST
@given(**PT)
def test_torchscript_fast(name, content, with_shape):
    fuzz_model(name, content, with_shape)


@FAST
@given(**ONNX)
def test_onnx_fast(name, content, with_shape):
    fuzz_model(name, content, with_shape)


@FAST
@given(**ONNX_EDITED)
def test_onnx_structure_fast(name, content, with_shape):
    fuzz_model(name, content, with_shape)


@FAST
@given(**PROFILE)
def test_profile_bytes_fast(content):
    fuzz_profile(content)


@FAST
@given(**PROFILE_DOC)
def test_profile_documents_fast(doc):
    fuzz_profile_doc(doc)


# ----------------------------------------------------------------------------- tests: slow (thousands)


@pytest.mark.slow
@SLOW
@given(**NPZ)
def test_npz_bytes_slow(content, channels):
    fuzz_npz(content, channels)


@pytest.mark.slow
@SLOW
@given(**NPZ_ARRAYS)
def test_npz_arrays_slow(arrays, layout, x_key):
    fuzz_npz_arrays(arrays, layout, x_key)


@pytest.mark.slow
@SLOW
@given(**IDX)
def test_idx_slow(images, labels, gz):
    fuzz_idx(images, labels, gz)


@pytest.mark.slow
@SLOW
@given(**CIFAR)
def test_cifar_slow(content, name):
    fuzz_cifar(content, name)


@pytest.mark.slow
@SLOW
@given(**FOLDER)
def test_image_folder_slow(files, channels):
    fuzz_folder(files, channels)


@pytest.mark.slow
@SLOW
@given(**PT)
def test_torchscript_slow(name, content, with_shape):
    fuzz_model(name, content, with_shape)


@pytest.mark.slow
@SLOW
@given(**ONNX)
def test_onnx_slow(name, content, with_shape):
    fuzz_model(name, content, with_shape)


@pytest.mark.slow
@SLOW
@given(**ONNX_EDITED)
def test_onnx_structure_slow(name, content, with_shape):
    fuzz_model(name, content, with_shape)


@pytest.mark.slow
@SLOW
@given(**PROFILE)
def test_profile_bytes_slow(content):
    fuzz_profile(content)


@pytest.mark.slow
@SLOW
@given(**PROFILE_DOC)
def test_profile_documents_slow(doc):
    fuzz_profile_doc(doc)
