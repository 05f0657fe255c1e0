"""Tests for robaudit.data: every format, every refusal, layout/scaling/sampling properties.

All fixtures are written to tmp_path at run time; the real-MNIST test needs ../shared.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from robaudit.data import (
    DataFormat,
    Dataset,
    Layout,
    check_labels,
    detect_layout,
    from_nchw,
    load_dataset,
    manifest_sha256,
    sample,
    select,
    to_nchw,
)
from robaudit.data import _folder as folder_mod
from robaudit.data import loader as loader_mod
from robaudit.errors import ConfigError, DataLoadError, InputError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MNIST_T10K = SHARED / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"

RNG = np.random.default_rng(1234)


# ----------------------------------------------------------------------------- fixture writers


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = False, dims: tuple[int, ...] | None = None,
              type_code: int = 0x08) -> Path:  # fmt: skip
    dims = arr.shape if dims is None else dims
    data = bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + arr.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist_pair(
    folder: Path, n: int = 12, *, gz: bool = True, prefix: str = "t10k"
) -> tuple[Path, np.ndarray, np.ndarray]:
    x = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    y = RNG.integers(0, 10, size=n, dtype=np.uint8)
    ext = ".gz" if gz else ""
    images = write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", x, gz=gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", y, gz=gz)
    return images, x, y


def write_cifar(path: Path, n: int, *, label_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = RNG.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    y = ((np.arange(n) + label_offset) % 10).astype(np.uint8)
    records = np.concatenate([y[:, None], x.reshape(n, -1)], axis=1)
    path.write_bytes(records.tobytes())
    return x, y


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def labels(n: int, k: int = 10) -> np.ndarray:
    return RNG.integers(0, k, size=n).astype(np.int64)


def save_img(path: Path, arr: np.ndarray, mode: str | None = None, **kw: object) -> np.ndarray:
    im = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    im.save(path, **kw)
    return arr


def make_dataset(n: int) -> Dataset:
    return Dataset(
        x=np.zeros((n, 1, 1, 1), np.float32), y=np.arange(n, dtype=np.int64) % 10,
        source="mem", format=DataFormat.NPZ, sha256="0" * 64, layout_in="NCHW",
    )  # fmt: skip


# ----------------------------------------------------------------------------- interface


def test_every_format_has_a_reader() -> None:
    assert set(loader_mod._READERS) == set(DataFormat)


def test_layout_parse() -> None:
    assert Layout.parse("nhwc") is Layout.NHWC
    assert Layout.parse(Layout.NCHW) is Layout.NCHW
    with pytest.raises(ConfigError, match="--layout NCHW"):
        Layout.parse("CHWN")


def test_dataset_is_frozen_and_validated() -> None:
    d = make_dataset(3)
    assert len(d) == 3 and d.n_total == 3 and d.image_shape == (1, 1, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.source = "other"  # type: ignore[misc]
    with pytest.raises(DataLoadError, match="float32 NCHW"):
        dataclasses.replace(d, x=np.zeros((3, 1, 1, 1), np.float64))
    with pytest.raises(DataLoadError, match="int64"):
        dataclasses.replace(d, y=np.zeros(2, np.int64))
    assert set(d.to_dict()) == {"path", "format", "sha256", "n_total", "notes"}


# ----------------------------------------------------------------------------- npz


def test_npz_nhwc_uint8(tmp_path: Path) -> None:
    x, y = u8(5, 8, 6, 3), labels(5)
    p = write_npz(tmp_path / "d.npz", x=x, y=y)
    d = load_dataset(p)
    assert d.x.shape == (5, 3, 8, 6) and d.x.dtype == np.float32 and d.y.dtype == np.int64
    np.testing.assert_allclose(d.x, x.transpose(0, 3, 1, 2) / 255.0, atol=1e-7)
    np.testing.assert_array_equal(d.y, y)
    assert d.format == "npz" and d.layout_in == "NHWC" and d.sha256 == sha(p)
    assert "scaled uint8 [0,255] to [0,1]" in d.notes
    assert d.to_dict() == {
        "path": str(p),
        "format": "npz",
        "sha256": sha(p),
        "n_total": 5,
        "notes": list(d.notes),
    }


def test_npz_keys_x_test_and_explicit(tmp_path: Path) -> None:
    x = RNG.random((4, 1, 5, 5), dtype=np.float32)
    p = write_npz(tmp_path / "d.npz", x_test=x, y_test=labels(4), names=np.array(["a", "b"]))
    d = load_dataset(p)
    assert d.layout_in == "NCHW" and np.array_equal(d.x, x)
    p2 = write_npz(tmp_path / "e.npz", imgs=x, labs=labels(4), class_names=np.array(["cat", "dog"]))
    d2 = load_dataset(p2, x_key="imgs", y_key="labs")
    assert d2.x.shape == (4, 1, 5, 5) and d2.class_names == ("cat", "dog")


def test_npz_nhw_and_channel_widening(tmp_path: Path) -> None:
    x = u8(3, 7, 7)
    p = write_npz(tmp_path / "d.npz", x=x, y=labels(3))
    d = load_dataset(p)
    assert d.x.shape == (3, 1, 7, 7) and d.layout_in == "NHW"
    d3 = load_dataset(p, channels=3)
    assert d3.x.shape == (3, 3, 7, 7) and np.array_equal(d3.x[:, 0], d3.x[:, 2])
    assert any("repeated" in n for n in d3.notes)


def test_npz_float_tolerance_uint16_and_range(tmp_path: Path) -> None:
    x = np.full((2, 1, 3, 5), 1.0 + 5e-7, np.float32)
    x[0] = -5e-7
    d = load_dataset(write_npz(tmp_path / "a.npz", x=x, y=labels(2)))
    assert d.x.min() == 0.0 and d.x.max() == 1.0
    x16 = np.array([0, 65535, 32768], np.uint16).reshape(1, 1, 1, 3).repeat(2, 0)
    d16 = load_dataset(write_npz(tmp_path / "b.npz", x=x16, y=labels(2)), layout="NCHW")
    np.testing.assert_allclose(d16.x[0, 0, 0], [0.0, 1.0, 32768 / 65535], rtol=1e-6)
    d255 = load_dataset(write_npz(tmp_path / "c.npz", x=u8(2, 1, 4, 5), y=labels(2)), input_range=(0, 255))
    assert d255.value_range == (0.0, 255.0) and d255.x.max() <= 255.0
    df = load_dataset(write_npz(tmp_path / "f.npz", x=x * 255, y=labels(2)), input_range=(0, 255))
    assert df.x.max() == 255.0


def test_npz_label_variants(tmp_path: Path) -> None:
    x = u8(4, 1, 2, 2)
    onehot = np.eye(5, dtype=np.float32)[[3, 0, 4, 1]]
    assert load_dataset(write_npz(tmp_path / "a.npz", x=x, y=onehot)).y.tolist() == [3, 0, 4, 1]
    d = load_dataset(write_npz(tmp_path / "b.npz", x=x, y=np.array([1.0, 2.0, 0.0, 9.0])))
    assert d.y.tolist() == [1, 2, 0, 9] and d.y.dtype == np.int64
    assert load_dataset(write_npz(tmp_path / "c.npz", x=x, y=np.array([[1], [2], [3], [4]]))).y.tolist() == [
        1,
        2,
        3,
        4,
    ]


def test_layout_explicit_and_channels_disambiguate(tmp_path: Path) -> None:
    x = u8(2, 4, 5, 3)  # axis 1 (4) and axis 3 (3) both look like channels
    p = write_npz(tmp_path / "d.npz", x=x, y=labels(2))
    with pytest.raises(DataLoadError, match=r"pass --layout NCHW\|NHWC"):
        load_dataset(p)
    assert load_dataset(p, channels=3).x.shape == (2, 3, 4, 5)
    assert load_dataset(p, layout="NHWC").x.shape == (2, 3, 4, 5)
    assert load_dataset(p, layout="NCHW").x.shape == (2, 4, 5, 3)  # explicit wins


# (file maker, options, error class, message substring)
NPZ_REFUSALS = [
    (
        lambda: {"x": np.array([object(), 1], dtype=object), "y": labels(2)},
        {},
        DataLoadError,
        "never unpickles",
    ),
    (lambda: {"a": u8(2, 4, 4), "b": labels(2)}, {}, DataLoadError, "(it has: a, b)"),
    (lambda: {"x": u8(2, 4, 4), "y": labels(2)}, {"x_key": "imgs"}, DataLoadError, "no array 'imgs'"),
    (lambda: {"x": u8(2, 4, 4), "z": labels(2)}, {}, DataLoadError, "--y-key"),
    (
        lambda: {"x": np.full((2, 4, 4), 200.0, np.float32), "y": labels(2)},
        {},
        DataLoadError,
        "divide by 255 or save as uint8",
    ),
    (lambda: {"x": np.full((2, 4, 4), -0.4, np.float32), "y": labels(2)}, {}, DataLoadError, "--mean/--std"),
    (
        lambda: {"x": np.full((2, 4, 4), 1e6, np.float32), "y": labels(2)},
        {},
        DataLoadError,
        "outside the input range",
    ),
    (lambda: {"x": np.full((2, 4, 4), np.nan, np.float32), "y": labels(2)}, {}, DataLoadError, "32 NaN"),
    (lambda: {"x": np.full((2, 4, 4), np.inf, np.float32), "y": labels(2)}, {}, DataLoadError, "32 infinite"),
    (lambda: {"x": np.where(np.arange(12)[:, None, None] % 5 == 3, np.nan, 0.5).repeat(4, 1).repeat(4, 2).astype(
        np.float32), "y": labels(12)}, {}, DataLoadError, "in 2 image(s), at indices 3, 8; fix or drop"),
    (lambda: {"x": u8(2, 4, 4), "y": np.array([0.5, 1.0])}, {}, DataLoadError, "non-integral"),
    (lambda: {"x": u8(2, 4, 4), "y": np.array([0, -1])}, {}, DataLoadError, "negative"),
    (lambda: {"x": u8(3, 4, 4), "y": labels(2)}, {}, DataLoadError, "3 images but 2 labels"),
    (lambda: {"x": u8(0, 4, 4), "y": labels(0)}, {}, DataLoadError, "holds no images"),
    (lambda: {"x": u8(2, 4, 4), "y": np.array([[1, 1], [0, 1]])}, {}, DataLoadError, "not one-hot"),
    (lambda: {"x": u8(2, 4, 4), "y": np.array(["a", "b"])}, {}, DataLoadError, "integer class indices"),
    (lambda: {"x": u8(2, 4, 4), "y": labels(2).reshape(2, 1, 1)}, {}, DataLoadError, "shape (N,)"),
    (
        lambda: {"x": RNG.integers(0, 255, (2, 4, 4)).astype(np.int32), "y": labels(2)},
        {},
        DataLoadError,
        "uint8",
    ),
    (lambda: {"x": np.zeros((2, 4, 4), np.complex64), "y": labels(2)}, {}, DataLoadError, "not numbers"),
    (lambda: {"x": u8(2, 784), "y": labels(2)}, {}, DataLoadError, "flattened"),
    (lambda: {"x": u8(2, 1, 2, 3, 3), "y": labels(2)}, {}, DataLoadError, "expected (N, H, W)"),
    (lambda: {"x": u8(2, 8, 8, 8), "y": labels(2)}, {}, DataLoadError, "--layout NCHW|NHWC"),
    (lambda: {"x": u8(2, 3, 8, 3), "y": labels(2)}, {"channels": 3}, DataLoadError, "--layout NCHW|NHWC"),
    (lambda: {"x": u8(2, 8, 8), "y": labels(2)}, {"layout": "NCHW"}, ConfigError, "needs a 4-D"),
    (
        lambda: {"x": u8(2, 8, 8, 3), "y": labels(2)},
        {"layout": "NCHW", "channels": 3},
        ConfigError,
        "check --layout",
    ),
    (lambda: {"x": u8(2, 8, 8, 3), "y": labels(2)}, {"layout": "HWC"}, ConfigError, "unknown layout"),
    (lambda: {"x": u8(2, 3, 8, 8), "y": labels(2)}, {"channels": 1}, DataLoadError, "the model expects 1"),
    (
        lambda: {"x": u8(2, 3, 8, 8), "y": labels(2)},
        {"channels": 2},
        ConfigError,
        "channels must be 1, 3 or 4",
    ),
    (lambda: {"x": u8(2, 3, 8, 8), "y": labels(2)}, {"input_range": (1, 0)}, ConfigError, "low < high"),
    (lambda: {"x": u8(2, 3, 8, 8), "y": labels(2)}, {"max_bytes": 100}, DataLoadError, "limit"),
]


@pytest.mark.parametrize(("arrays", "opts", "err", "msg"), NPZ_REFUSALS)
def test_npz_refusals(tmp_path: Path, arrays, opts, err, msg) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "d.npz"
    np.savez(p, **arrays())
    with pytest.raises(err) as info:
        load_dataset(p, **opts)
    assert msg in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, InputError) and info.value.exit_code == 2


def test_npz_not_a_zip(tmp_path: Path) -> None:
    p = tmp_path / "bad.npz"
    p.write_bytes(b"not a zip at all")
    with pytest.raises(DataLoadError, match=r"not a valid \.npz"):
        load_dataset(p)


def test_npz_forged_header_refused_before_allocation(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 100, 100)}
    )
    p = tmp_path / "forged.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("x.npy", buf.getvalue())
        yb = io.BytesIO()
        np.save(yb, labels(2))
        zf.writestr("y.npy", yb.getvalue())
    with pytest.raises(DataLoadError, match="declares shape"):
        load_dataset(p)


def test_npz_member_size_from_zip_header(tmp_path: Path) -> None:
    p = write_npz(tmp_path / "d.npz", x=np.zeros((50, 1, 16, 16), np.uint8), y=labels(50))
    with pytest.raises(DataLoadError, match="more than the 0.00 GiB limit"):
        load_dataset(p, max_bytes=4096)  # the x member alone is 12.8 kB decompressed


# ----------------------------------------------------------------------------- MNIST IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_pair(tmp_path: Path, gz: bool) -> None:
    images, x, y = write_mnist_pair(tmp_path, gz=gz)
    d = load_dataset(images)
    assert d.x.shape == (12, 1, 28, 28) and d.format == "idx" and d.layout_in == "NHW"
    np.testing.assert_allclose(d.x[:, 0], x / 255.0, atol=1e-7)
    np.testing.assert_array_equal(d.y, y)
    labels_path = tmp_path / f"t10k-labels-idx1-ubyte{'.gz' if gz else ''}"
    assert d.sha256 == manifest_sha256([(images.name, sha(images)), (labels_path.name, sha(labels_path))])
    # a folder holding exactly one images file works too
    assert load_dataset(tmp_path).sha256 == d.sha256
    with pytest.raises(ConfigError, match="--x-key/--y-key name arrays in an .npz file"):
        load_dataset(images, x_key="images")  # was silently ignored


def test_idx_folder_with_two_image_files(tmp_path: Path) -> None:
    write_mnist_pair(tmp_path, prefix="t10k")
    train, _, _ = write_mnist_pair(tmp_path, prefix="train", n=5)
    with pytest.raises(DataLoadError, match="several IDX image files"):
        load_dataset(tmp_path)
    assert len(load_dataset(train)) == 5


def _idx_case(tmp_path: Path, case: str) -> Path:
    img = tmp_path / "t10k-images-idx3-ubyte"
    lab = tmp_path / "t10k-labels-idx1-ubyte"
    write_idx(lab, np.zeros(4, np.uint8))
    if case == "magic":
        img.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 100)
    elif case == "type":
        write_idx(img, u8(4, 2, 2), type_code=0x0D)
    elif case == "ndim":
        write_idx(img, u8(4, 4))
    elif case == "huge":
        write_idx(img, u8(4, 2, 2), dims=(4_000_000_000, 1000, 1000))
    elif case == "short":
        write_idx(img, u8(3, 2, 2), dims=(4, 2, 2))
    elif case == "short_gz":
        img = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", u8(3, 2, 2), dims=(4, 2, 2), gz=True)
    elif case == "long_gz":
        img = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", u8(5, 2, 2), dims=(4, 2, 2), gz=True)
    elif case == "truncated_gz":
        img = tmp_path / "t10k-images-idx3-ubyte.gz"
        img.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 4, 2, 2) + bytes(16))[:-12])
    elif case == "no_labels":
        write_idx(img, u8(4, 2, 2))
        lab.unlink()
    elif case == "labels_file":
        img = lab
    elif case == "count":
        write_idx(img, u8(5, 2, 2))
    return img


@pytest.mark.parametrize(
    ("case", "msg"),
    [
        ("magic", "bad magic"),
        ("type", "element type 0x0d"),
        ("ndim", "need 3"),
        ("huge", "limit"),
        ("short", "payload is 12 bytes"),
        ("short_gz", "payload is 12 bytes"),
        ("long_gz", "more than 16"),
        ("truncated_gz", "corrupt"),
        ("no_labels", "no labels file"),
        ("labels_file", "pass the images file"),
        ("count", "5 images but 4 labels"),
    ],
)
def test_idx_refusals(tmp_path: Path, case: str, msg: str) -> None:
    with pytest.raises(DataLoadError) as info:
        load_dataset(_idx_case(tmp_path, case))
    assert msg in str(info.value)


# ----------------------------------------------------------------------------- CIFAR-10 binary


def test_cifar_single_batch(tmp_path: Path) -> None:
    p = tmp_path / "test_batch.bin"
    x, y = write_cifar(p, 7)
    d = load_dataset(p)
    assert d.x.shape == (7, 3, 32, 32) and d.format == "cifar-binary" and d.layout_in == "NCHW"
    np.testing.assert_allclose(d.x, x / 255.0, atol=1e-7)
    np.testing.assert_array_equal(d.y, y)
    assert d.sha256 == sha(p) and d.class_names[0] == "airplane"


def test_cifar_folder_sorted(tmp_path: Path) -> None:
    x2, y2 = write_cifar(tmp_path / "data_batch_2.bin", 3, label_offset=5)
    x1, y1 = write_cifar(tmp_path / "data_batch_1.bin", 4)
    (tmp_path / "batches.meta.txt").write_text("airplane\n")
    d = load_dataset(tmp_path)
    np.testing.assert_array_equal(d.y, np.concatenate([y1, y2]))
    np.testing.assert_allclose(d.x[4:], x2 / 255.0, atol=1e-7)
    assert any("data_batch_1.bin, data_batch_2.bin" in n for n in d.notes)


@pytest.mark.parametrize(
    ("name", "content", "msg"),
    [
        ("data_batch_1.bin", b"\x00" * 3000, "3073-byte"),
        ("data_batch_1.bin", b"\x00" * 3074 * 2, "CIFAR-100"),
        ("test_batch.bin", b"\x0c" + b"\x00" * 3072, "not a CIFAR-10 class"),
        ("data_batch_1", pickle.dumps({"data": [1, 2]}), "use the binary version"),
        ("test_batch", b"whatever", "cifar-10-binary.tar.gz"),
        ("stuff.pkl", pickle.dumps([1]), "never loads"),
        ("mystery", pickle.dumps([1]), "never loads"),
    ],
)
def test_cifar_and_pickle_refusals(tmp_path: Path, name: str, content: bytes, msg: str) -> None:
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataLoadError) as info:
        load_dataset(p)
    assert msg in str(info.value) or msg.replace("use the ", "download the ") in str(info.value)


def test_cifar_pickle_folder_refused(tmp_path: Path) -> None:
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"data": 1}))
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({}))
    with pytest.raises(DataLoadError, match="binary version"):
        load_dataset(tmp_path)


# ----------------------------------------------------------------------------- image folders


def _mixed_folder(root: Path) -> dict[str, np.ndarray]:
    """Eleven 8x6 images over three classes, one of them corrupt (1/11 <= 10%)."""
    (root / "b_cat").mkdir(parents=True)
    (root / "a_ant").mkdir()
    (root / "c_dog").mkdir()
    want: dict[str, np.ndarray] = {}
    want["a_ant/1.png"] = save_img(root / "a_ant/1.png", u8(6, 8, 3))
    want["a_ant/2.bmp"] = save_img(root / "a_ant/2.bmp", u8(6, 8, 3))
    gray = u8(6, 8)
    save_img(root / "a_ant/3.png", gray)
    want["a_ant/3.png"] = np.repeat(gray[:, :, None], 3, axis=2)
    rgba = u8(6, 8, 4)
    save_img(root / "b_cat/1.png", rgba)
    want["b_cat/1.png"] = rgba[:, :, :3]
    sixteen = (RNG.integers(0, 65536, size=(6, 8))).astype(np.uint16)
    save_img(root / "b_cat/2.png", sixteen)
    want["b_cat/2.png"] = sixteen  # checked separately (scale 65535)
    flat = np.full((6, 8, 3), 120, np.uint8)
    save_img(root / "b_cat/3.jpg", flat, quality=95)
    want["b_cat/3.jpg"] = flat
    for i in range(4):
        want[f"c_dog/{i}.png"] = save_img(root / f"c_dog/{i}.png", u8(6, 8, 3))
    (root / "c_dog/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "c_dog/readme.txt").write_text("not an image")
    return want


def test_folder_mixed_modes(tmp_path: Path) -> None:
    want = _mixed_folder(tmp_path)
    (tmp_path / "README.md").write_text("not data")
    (tmp_path / ".DS_Store").write_bytes(b"hidden: skipped without a word")
    d = load_dataset(tmp_path)
    assert d.format == "folder" and d.layout_in == "NHWC"
    assert d.x.shape == (10, 3, 6, 8) and d.class_names == ("a_ant", "b_cat", "c_dog")
    assert d.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    order = sorted(k for k in want)  # rows follow sorted class folders then sorted files
    for i, key in enumerate(order):
        got = d.x[i]
        if key == "b_cat/2.png":
            np.testing.assert_allclose(got[1], want[key] / 65535.0, atol=1e-6)
        elif key.endswith(".jpg"):
            assert np.abs(got * 255 - 120).max() <= 3
        else:
            np.testing.assert_allclose(got, want[key].transpose(2, 0, 1) / 255.0, atol=1e-6)
    notes = " | ".join(d.notes)
    assert "skipped 1 unreadable images (first: c_dog/broken.png" in notes
    assert "dropped the alpha channel of 1 images" in notes
    assert "scaled 1 16-bit images" in notes and "ignored 1 non-image entries in the class folders" in notes
    assert "ignored 1 file beside the class folders" in notes  # QA: the README was skipped silently
    assert len(d.sha256) == 64 and load_dataset(tmp_path).sha256 == d.sha256


def test_folder_grayscale_default_and_conversions(tmp_path: Path) -> None:
    for cls in ("0", "1"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            save_img(tmp_path / cls / f"{i}.png", u8(5, 5))
    d = load_dataset(tmp_path)
    assert d.x.shape == (4, 1, 5, 5)
    assert load_dataset(tmp_path, channels=3).x.shape == (4, 3, 5, 5)
    save_img(tmp_path / "1" / "2.png", u8(5, 5, 3))
    d1 = load_dataset(tmp_path, channels=1)
    assert d1.x.shape == (5, 1, 5, 5) and any("colour images to grayscale" in n for n in d1.notes)
    assert load_dataset(tmp_path).x.shape == (5, 3, 5, 5)  # one colour image: default is RGB
    old = d.sha256
    (tmp_path / "1").rename(tmp_path / "2")
    assert load_dataset(tmp_path).sha256 != old  # the class names are part of the hash


def _folder_case(root: Path, case: str) -> None:
    if case == "empty":
        return
    if case == "flat":
        save_img(root / "a.png", u8(4, 4))
        return
    (root / "a").mkdir()
    (root / "b").mkdir()
    if case == "no_images":
        (root / "a" / "x.txt").write_text("x")
        return
    for i in range(5):
        save_img(root / "a" / f"{i}.png", u8(4, 4, 3))
    if case == "sizes":
        save_img(root / "b" / "big.png", u8(5, 4, 3))
    elif case == "corrupt":
        (root / "b" / "bad.png").write_bytes(b"nope")
    elif case == "bomb":
        save_img(root / "b" / "big.png", u8(16, 16, 3))


@pytest.mark.parametrize(
    ("case", "opts", "err", "msg"),
    [
        ("empty", {}, DataLoadError, "no dataset found"),
        ("flat", {}, DataLoadError, "one subfolder per class"),
        ("no_images", {}, DataLoadError, "no PNG/JPEG/BMP"),
        ("sizes", {}, DataLoadError, "images differ in size"),
        ("corrupt", {}, DataLoadError, "1 of 6 images"),
        ("bomb", {}, DataLoadError, "larger than 64 pixels"),
        ("ok", {"layout": "NCHW"}, ConfigError, "drop --layout"),
    ],
)
def test_folder_refusals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, opts: dict, err: type, msg: str
) -> None:  # type: ignore[type-arg]
    if case == "bomb":
        monkeypatch.setattr(folder_mod, "MAX_IMAGE_PIXELS", 64)
    _folder_case(tmp_path, case)
    with pytest.raises(err) as info:
        load_dataset(tmp_path, **opts)
    assert msg in str(info.value)


def test_pillow_guard_between_limit_and_twice_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folder_mod, "MAX_IMAGE_PIXELS", 64)
    (tmp_path / "a").mkdir()
    save_img(tmp_path / "a" / "x.png", u8(10, 10, 3))  # 100 pixels: Pillow only warns, we refuse
    with pytest.raises(DataLoadError, match="larger than 64 pixels"):
        load_dataset(tmp_path)
    assert Image.MAX_IMAGE_PIXELS != 64  # the global is restored


# ----------------------------------------------------------------------------- misc refusals


@pytest.mark.parametrize(
    ("name", "content", "msg"),
    [
        ("missing.npz", None, "no such file or folder"),
        ("arr.npy", b"\x93NUMPY", "numpy.savez"),
        ("pic.png", b"x", "single image"),
        ("data.csv", b"1,2,3", "unrecognised data file"),
    ],
)
def test_path_refusals(tmp_path: Path, name: str, content: bytes | None, msg: str) -> None:
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataLoadError, match=msg):
        load_dataset(p)


# ----------------------------------------------------------------------------- sampling


def test_sample_notes_and_check_labels() -> None:
    d = make_dataset(20)
    s = sample(d, 5, seed=3)
    assert len(s) == 5 and s.n_total == 20 and s.notes[-1] == "sampled 5 of 20 with seed 3"
    s_all = sample(d, 50, seed=3)
    assert len(s_all) == 20 and "asked for 50 samples" in s_all.notes[-1]
    assert sample(d, None, seed=0) is d
    with pytest.raises(ConfigError, match="positive integer"):
        select(d, 0, 1)
    with pytest.raises(ConfigError, match="seed"):
        select(d, 3, -1)
    check_labels(d, 10)
    with pytest.raises(DataLoadError, match="model has 9 classes"):
        check_labels(d, 9)


# ----------------------------------------------------------------------------- properties

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(
    n=st.integers(1, 3), c=st.sampled_from([1, 3, 4]), h=st.integers(1, 6), w=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)  # fmt: skip
def test_layout_round_trip(n: int, c: int, h: int, w: int, seed: int) -> None:
    x = np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32)
    nhwc = from_nchw(x, Layout.NHWC)
    assert nhwc.shape == (n, h, w, c)
    np.testing.assert_array_equal(to_nchw(nhwc, Layout.NHWC), x)
    np.testing.assert_array_equal(from_nchw(to_nchw(nhwc, "NHWC"), "NHWC"), nhwc)
    if c == 1:
        np.testing.assert_array_equal(to_nchw(from_nchw(x, "NHW"), "NHW"), x)
    if h not in (1, 3, 4) and w not in (1, 3, 4):
        assert detect_layout(nhwc.shape) is Layout.NHWC and detect_layout(x.shape) is Layout.NCHW


@SETTINGS
@given(data=st.binary(min_size=1, max_size=300), layout=st.sampled_from(["NCHW", "NHWC"]))
def test_uint8_scaling_stays_in_unit_range(tmp_path: Path, data: bytes, layout: str) -> None:
    x = np.frombuffer(data, np.uint8).reshape(len(data), 1, 1, 1)
    p = tmp_path / "p.npz"
    np.savez(p, x=x, y=np.zeros(len(data), np.int64))
    d = load_dataset(p, layout=layout)
    assert d.x.min() >= 0.0 and d.x.max() <= 1.0
    np.testing.assert_array_equal(np.rint(d.x.ravel() * 255).astype(np.uint8), x.ravel())


@SETTINGS
@given(total=st.integers(1, 400), n=st.integers(1, 500), seed=st.integers(0, 2**31 - 1))
def test_select_deterministic_without_duplicates(total: int, n: int, seed: int) -> None:
    d = make_dataset(total)
    a, b = select(d, n, seed), select(d, n, seed)
    np.testing.assert_array_equal(a, b)
    assert len(a) == min(n, total) and len(np.unique(a)) == len(a)
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < total and a.dtype == np.int64


def test_select_refuses_seeds_beyond_the_documented_range() -> None:
    with pytest.raises(ConfigError, match="from 0 to 2147483647"):
        select(make_dataset(4), 2, 2**31)


# ----------------------------------------------------------------------------- real data


@pytest.mark.shared
@pytest.mark.skipif(not MNIST_T10K.exists(), reason=f"needs the real MNIST files in {MNIST_T10K.parent}")
def test_real_mnist_t10k() -> None:
    d = load_dataset(MNIST_T10K, channels=1)
    assert d.x.shape == (10000, 1, 28, 28) and d.y.shape == (10000,)
    # 0.1325 is the t10k mean (0.1307, the usual constant, is the training set's)
    assert abs(float(d.x.mean(dtype=np.float64)) - 0.1325) < 5e-4
    assert d.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(d.y).tolist()[:2] == [980, 1135]


def _digit_folders(root: Path, names: list[str]) -> None:
    """One 4x4 grayscale PNG per class folder, its pixels all equal to the folder's position."""
    for i, name in enumerate(names):
        (root / name).mkdir()
        Image.fromarray(np.full((4, 4), 10 * i, np.uint8), mode="L").save(root / name / "a.png")


@pytest.mark.parametrize(
    ("names", "labels", "class_names"),
    [
        (["0", "1", "2", "3", "4", "5", "6", "7", "9"], [0, 1, 2, 3, 4, 5, 6, 7, 9],  # no 8: 9 stays 9
         ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")),
        (["7"], [7], tuple(str(i) for i in range(8))),  # one class folder keeps its label
        (["0", "1", "2", "10", "11"], [0, 1, 2, 10, 11], tuple(str(i) for i in range(12))),  # not text order
        (["cat", "ant", "dog"], [1, 0, 2], ("ant", "cat", "dog")),  # names: sorted order, as ImageFolder
        (["1", "dog"], [0, 1], ("1", "dog")),  # mixed: sorted names
    ],
)
def test_folder_labels_come_from_numeric_names(tmp_path: Path, names, labels, class_names) -> None:
    _digit_folders(tmp_path, names)
    d = load_dataset(tmp_path)
    by_pixel = {int(round(float(x.max()) * 255)) // 10: int(y) for x, y in zip(d.x, d.y, strict=True)}
    assert [by_pixel[i] for i in range(len(names))] == labels
    assert d.class_names == class_names
    note = next(n for n in d.notes if n.startswith("labels "))
    assert ("from the folder names" in note) == all(n.isdigit() for n in names)


def test_folder_labels_named_twice_are_refused(tmp_path: Path) -> None:
    _digit_folders(tmp_path, ["7", "07"])
    with pytest.raises(DataLoadError, match="name the same label twice"):
        load_dataset(tmp_path)


def test_named_class_folders_that_miss_a_model_class_are_flagged(tmp_path: Path) -> None:
    """QA: a CIFAR-10 folder without `bird` and `deer` numbered `cat` 2 (the model's 3) and ran with
    no warning; the audit's numbers meant nothing."""
    from robaudit.engine.attack_job import class_count_warning

    names = ["airplane", "automobile", "cat", "dog", "frog", "horse", "ship", "truck"]
    _digit_folders(tmp_path, names)
    d = load_dataset(tmp_path)
    w = class_count_warning(d, 10)
    assert w is not None and w.startswith("the image folder has 8 class folders but the model has 10 classes")
    assert "(airplane=0, automobile=1, cat=2, dog=3," in w
    assert class_count_warning(d, 8) is None  # one folder per class: nothing to say
    numeric = tmp_path / "numeric"
    numeric.mkdir()
    _digit_folders(numeric, ["0", "1", "3"])  # labels come from the names: a missing class shifts nothing
    assert class_count_warning(load_dataset(numeric), 10) is None


def test_boolean_label_vectors_are_refused_but_boolean_one_hot_is_read(tmp_path: Path) -> None:
    """A success_ mask given as labels used to become classes 0/1 without a word."""
    x = u8(4, 1, 2, 2)
    for y in (np.array([True, False, True, True]), np.array([[True], [False], [True], [True]])):
        with pytest.raises(DataLoadError, match="labels are booleans"):
            load_dataset(write_npz(tmp_path / "b.npz", x=x, y=y))
    onehot = np.eye(3, dtype=bool)[[2, 0, 1, 2]]
    assert load_dataset(write_npz(tmp_path / "o.npz", x=x, y=onehot)).y.tolist() == [2, 0, 1, 2]


def test_images_using_a_sliver_of_the_range_are_warned_about() -> None:
    """12-bit pixels in uint16 and floats divided by 255 twice load as near-black images."""
    from types import SimpleNamespace

    from robaudit.engine.attack_job import range_warning

    rng = np.random.default_rng(0)
    twelve_bit = (rng.integers(0, 4096, (8, 1, 4, 4)) / 65535.0).astype(np.float32)
    twice = (rng.integers(0, 256, (8, 1, 4, 4)) / 255.0 / 255.0).astype(np.float32)
    full = (rng.integers(0, 256, (8, 1, 4, 4)) / 255.0).astype(np.float32)
    for x in (twelve_bit, twice):
        w = range_warning(SimpleNamespace(x=x), (0.0, 1.0))
        assert w is not None and "of the input range [0, 1]" in w and "scaled twice" in w
    assert range_warning(SimpleNamespace(x=full), (0.0, 1.0)) is None
    assert range_warning(SimpleNamespace(x=full * 255), (0.0, 255.0)) is None
    assert range_warning(SimpleNamespace(x=twice * 255), (0.0, 255.0)) is not None
