"""Model loading: formats, refusals, ONNX white-box/black-box, normalisation, shape checks."""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper, version_converter

from robaudit.errors import ConfigError, ModelLoadError
from robaudit.models import (
    Classifier,
    is_stochastic,
    load_model,
    looks_like_probabilities,
    sniff_format,
)

SHAPE = (1, 12, 12)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


class TinyNet(torch.nn.Module):
    def __init__(self, classes: int = 5, dropout: float = 0.0, channels: int = 1) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 4, 3, stride=2)
        self.drop = torch.nn.Dropout(dropout)
        self.fc = torch.nn.Linear(4 * 5 * 5, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        # reshape (not flatten) so the ONNX graph holds Shape/Constant/Reshape, which
        # onnx2torch only converts up to opset 17
        return self.fc(self.drop(h.reshape(h.shape[0], -1)))


class FeatureMap(torch.nn.Module):
    """Returns (N, C, H, W): not logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Payload:
    """Unpickling this creates ``marker``: proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _net(seed: int = 0, **kw: object) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(**kw).eval()  # type: ignore[arg-type]


def _save_ts(model: torch.nn.Module, path: Path, shape: tuple[int, ...] = SHAPE) -> Path:
    torch.jit.save(torch.jit.trace(model, torch.zeros(2, *shape)), str(path))
    return path


def _export_onnx(model: torch.nn.Module, path: Path, opset: int = 17) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, *SHAPE),),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
        )
    return path


def _x(n: int = 4, shape: tuple[int, ...] = SHAPE, seed: int = 1) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- TorchScript


def test_torchscript_loads_in_eval_mode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.jit.script(TinyNet(dropout=0.5))
    model.train()
    path = tmp_path / "drop.pt"
    torch.jit.save(model, str(path))
    clf = load_model(path, device="cpu", data_shape=SHAPE)
    assert isinstance(clf, Classifier)
    assert clf.info.format == "torchscript" and clf.white_box
    assert clf.info.input_shape == SHAPE and clf.num_classes == 5
    x = _x()
    assert torch.equal(clf(x), clf(x))
    assert not is_stochastic(clf, x)
    assert len(clf.info.sha256) == 64


def test_torchscript_shape_inferred_without_data(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4)).eval()
    path = _save_ts(model, tmp_path / "lin.ts", shape=(3, 32, 32))
    clf = load_model(path, device="cpu")
    assert clf.info.input_shape == (3, 32, 32) and clf.num_classes == 4


def test_input_gradient_flows(tmp_path: Path) -> None:
    clf = load_model(_save_ts(_net(), tmp_path / "m.pt"), device="cpu", data_shape=SHAPE)
    x = _x().requires_grad_(True)
    (g,) = torch.autograd.grad(clf(x).sum(), x)
    assert g.abs().sum() > 0


def test_non_logit_output_refused(tmp_path: Path) -> None:
    path = _save_ts(FeatureMap().eval(), tmp_path / "fm.pt")
    with pytest.raises(ModelLoadError, match=r"expected \(N, K\) logits"):
        load_model(path, device="cpu", data_shape=SHAPE)
    one = _save_ts(_net(classes=1), tmp_path / "one.pt")
    with pytest.raises(ModelLoadError, match=r"K >= 2"):
        load_model(one, device="cpu", data_shape=SHAPE)


def test_fewer_logits_than_labels_refused(tmp_path: Path) -> None:
    path = _save_ts(_net(), tmp_path / "m.pt")
    with pytest.raises(ModelLoadError, match="5 logits"):
        load_model(path, device="cpu", data_shape=SHAPE, num_classes_hint=10)


def test_wrong_data_shape_refused(tmp_path: Path) -> None:
    path = _save_ts(_net(), tmp_path / "m.pt")
    with pytest.raises(ModelLoadError, match="shape"):
        load_model(path, device="cpu", data_shape=(3, 32, 32))


class RgbWithNorm(torch.nn.Module):
    """An RGB network with its normalisation inside: a 1-channel input broadcasts through it."""

    def __init__(self, widen: bool = False, groups: int = 1) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))
        self.widen = widen
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2, groups=groups)
        self.fc = torch.nn.Linear(6 * 5 * 5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.widen:  # a model meant for gray images: it copies them to RGB itself
            x = x.expand(-1, 3, -1, -1)
        h = torch.relu(self.conv(x - self.mean))
        return self.fc(h.reshape(h.shape[0], -1))


def test_first_conv_channels_reads_the_graph() -> None:
    from robaudit.models.loader import first_conv_channels

    assert first_conv_channels(torch.jit.script(_net().eval())) == 1
    assert first_conv_channels(torch.jit.trace(_net().eval(), torch.zeros(2, *SHAPE))) == 1
    assert first_conv_channels(torch.jit.script(RgbWithNorm().eval())) == 3
    assert first_conv_channels(torch.jit.freeze(torch.jit.script(RgbWithNorm().eval()))) == 3
    assert first_conv_channels(torch.jit.script(RgbWithNorm(groups=3).eval())) == 3  # weight (6, 1, 3, 3) x 3 groups
    assert first_conv_channels(torch.jit.script(RgbWithNorm(widen=True).eval())) is None  # widens on purpose
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    assert first_conv_channels(torch.jit.script(linear)) is None


def test_gray_data_through_an_rgb_network_is_named_and_refused_at_chance(tmp_path: Path) -> None:
    from robaudit.data.interface import Dataset
    from robaudit.engine.evaluation import build_evaluation_set
    from robaudit.errors import DataLoadError

    path = tmp_path / "rgb.pt"
    torch.jit.save(torch.jit.script(RgbWithNorm().eval()), str(path))
    rgb = load_model(path, device="cpu", data_shape=(3, 12, 12))
    assert rgb.info.first_conv_channels is None and not rgb.info.notes
    gray = load_model(path, device="cpu", data_shape=(1, 12, 12))  # runs: the mean broadcasts
    assert gray.info.first_conv_channels == 3
    assert any("first convolution takes 3 channels but the images have 1" in n for n in gray.info.notes)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 12, 12, generator=g)
    pred = gray.predict(x).argmax(1)
    wrong = ((pred + 1) % 5).numpy()  # labels the model never gives: accuracy 0
    chance = np.where(np.arange(40) < 8, pred.numpy(), wrong)  # 8 of 40 right: 20%, chance is 1/5
    for labels, match in ((wrong, "none of the 40 .* first convolution takes 3 channels"),
                          (chance, "does not fit the model: .* 8 of the 40 .* chance")):
        data = Dataset(x=x.numpy(), y=labels.astype(np.int64), source="t", format="npz", sha256="0",
                       layout_in="NCHW")
        with pytest.raises(DataLoadError, match=match):
            build_evaluation_set(gray, data, None, 0, 64)
    better = np.where(np.arange(40) < 20, pred.numpy(), wrong)  # 50%: the model may be meant for gray images
    ev = build_evaluation_set(gray, Dataset(x=x.numpy(), y=better.astype(np.int64), source="t", format="npz",
                                            sha256="0", layout_in="NCHW"), None, 0, 64)
    assert ev.n == 20


# ----------------------------------------------------------------------------- refusals


def test_pickled_checkpoint_refused_and_payload_never_runs(tmp_path: Path) -> None:
    # Control: the payload really does create its marker when unpickled.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()

    marker = tmp_path / "pwned"
    zipped = tmp_path / "ckpt.pt"
    torch.save({"state": Payload(marker)}, str(zipped))
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps({"state": Payload(marker)}, protocol=2))
    for path in (zipped, raw):
        assert sniff_format(path) == "pickle"
        with pytest.raises(ModelLoadError, match="will not unpickle") as err:
            load_model(path, device="cpu", data_shape=SHAPE)
        msg = str(err.value)
        assert "\n" not in msg and "torch.jit.save" in msg and "onnx" in msg and "state_dict" in msg
    assert not marker.exists()


def test_state_dict_refused(tmp_path: Path) -> None:
    path = tmp_path / "sd.pth"
    torch.save(_net().state_dict(), str(path))
    with pytest.raises(ModelLoadError, match="pickled torch.save"):
        load_model(path, device="cpu")


def test_pt2_refused_without_unpickling(tmp_path: Path) -> None:
    net = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(net, (torch.zeros(2, *SHAPE),))
    good = tmp_path / "m.pt2"
    torch.export.save(ep, str(good))
    assert sniff_format(good) == "torch-export"
    with pytest.raises(ModelLoadError, match="torch.export"):
        load_model(good, device="cpu", data_shape=SHAPE)

    # Same archive with a booby-trapped sample-inputs pickle (torch.export.load would fall back
    # to weights_only=False on it).
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt2"
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = buf.getvalue() if item.filename.endswith("sample_inputs/model.pt") else src.read(item)
            dst.writestr(item, data)
    with pytest.raises(ModelLoadError, match="torch.export"):
        load_model(evil, device="cpu", data_shape=SHAPE)
    assert not marker.exists()


def test_truncated_and_garbage_refused(tmp_path: Path) -> None:
    whole = _save_ts(_net(), tmp_path / "m.pt").read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_model(trunc, device="cpu", data_shape=SHAPE)

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes())
    with pytest.raises(ModelLoadError) as err:
        load_model(junk, device="cpu", data_shape=SHAPE)
    assert "\n" not in str(err.value)

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path in (text, tmp_path / "missing.pt"):
        with pytest.raises(ModelLoadError):
            load_model(path, device="cpu")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load_model(empty, device="cpu")


# ----------------------------------------------------------------------------- ONNX


def test_onnx_white_box_matches_runtime_and_torchscript(tmp_path: Path) -> None:
    net = _net()
    onnx_path = _export_onnx(net, tmp_path / "m.onnx")
    ts = load_model(_save_ts(net, tmp_path / "m.pt"), device="cpu", data_shape=SHAPE)
    ox = load_model(onnx_path, device="cpu")  # shape comes from the graph
    assert ox.info.format == "onnx" and ox.white_box and ox.info.input_shape == SHAPE
    assert ox.num_classes == 5 and ox.info.notes == ()
    x = _x(6)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x.numpy()})
    assert np.abs(ox(x).detach().numpy() - ref).max() <= 1e-4
    assert torch.allclose(ox(x), ts(x), atol=1e-4)
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(ox(x).sum(), x)
    assert g.abs().sum() > 0


class _TwoOutputs(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, torch.softmax(logits, dim=1)


def test_onnx_with_several_outputs_reads_the_first_white_box(tmp_path: Path) -> None:
    """onnx2torch returns a tuple for such a graph: the model used to fall back to black-box use."""
    net = _net()
    path = tmp_path / "two.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_TwoOutputs(net), (torch.zeros(1, *SHAPE),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits", "probs"],
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}, "probs": {0: "n"}})
    ox = load_model(path, device="cpu")
    assert ox.white_box and ox.num_classes == 5
    assert any("the first ('logits') is read as the logits" in n for n in ox.info.notes)
    x = _x(6)
    with torch.no_grad():
        assert torch.allclose(ox(x), net(x), atol=1e-4)


class _ChannelsLast(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))


def test_onnx_channels_last_input_is_named_as_such(tmp_path: Path) -> None:
    """The error blamed the data ('expects (12, 12, 1) but the data has (1, 12, 12)')."""
    path = tmp_path / "nhwc.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_ChannelsLast(_net()), (torch.zeros(1, 12, 12, 1),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    with pytest.raises(ModelLoadError, match=r"channels-last input \(12, 12, 1\) \(NHWC\).*re-export"):
        load_model(path, device="cpu", data_shape=SHAPE)


def test_onnx_newer_opset_repaired(tmp_path: Path) -> None:
    path17 = _export_onnx(_net(), tmp_path / "m17.onnx")
    model20 = version_converter.convert_version(onnx.load(str(path17)), 20)
    path20 = tmp_path / "m20.onnx"
    onnx.save(model20, str(path20))
    clf = load_model(path20, device="cpu")
    assert clf.white_box
    assert any("opset 20 -> 17" in n for n in clf.info.notes)
    x = _x()
    sess = ort.InferenceSession(str(path20), providers=["CPUExecutionProvider"])
    assert np.abs(clf(x).detach().numpy() - sess.run(None, {"x": x.numpy()})[0]).max() <= 1e-4


def _shrink_model(path: Path) -> Path:
    """Flatten -> Gemm -> Shrink(lambd=0): Shrink has no onnx2torch converter."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["g"]),
        helper.make_node("Shrink", ["g"], ["y"], lambd=0.0, bias=0.0),
    ]
    graph = helper.make_graph(
        nodes,
        "shrink",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_unconvertible_falls_back_to_black_box(tmp_path: Path) -> None:
    path = _shrink_model(tmp_path / "shrink.onnx")
    clf = load_model(path, device="cpu", mean=[0.5], std=[0.25])
    assert not clf.white_box and clf.info.format == "onnx"
    assert clf.info.input_shape == (1, 4, 4) and clf.num_classes == 3
    assert any("onnx2torch could not convert" in n and "Shrink" in n for n in clf.info.notes)
    x = _x(3, (1, 4, 4)).requires_grad_(True)
    out = clf(x)
    assert out.shape == (3, 3) and not out.requires_grad
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": ((x.detach() - 0.5) / 0.25).numpy()})
    assert np.allclose(out.numpy(), ref, atol=1e-6)
    assert clf.predict(x.detach()).shape == (3, 3)
    with pytest.raises(ModelLoadError, match="onnx2torch could not convert"):
        load_model(path, device="cpu", allow_black_box=False)


def test_onnx_external_data_outside_folder_refused(tmp_path: Path) -> None:
    src = onnx.load(str(_export_onnx(_net(), tmp_path / "m.onnx")))
    good_dir = tmp_path / "good"
    good_dir.mkdir()
    onnx.save_model(
        src, str(good_dir / "m.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0
    )
    assert load_model(good_dir / "m.onnx", device="cpu").white_box

    outside = tmp_path / "w.bin"
    (good_dir / "w.bin").rename(outside)
    model = onnx.load(str(good_dir / "m.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../w.bin"
    bad = good_dir / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        load_model(bad, device="cpu")

    (good_dir / "w.bin").symlink_to(outside)
    with pytest.raises(ModelLoadError, match="symlink"):
        load_model(good_dir / "m.onnx", device="cpu")


def test_onnx_fixed_input_shape_checked_against_data(tmp_path: Path) -> None:
    path = _shrink_model(tmp_path / "s.onnx")
    with pytest.raises(ModelLoadError, match="data has shape"):
        load_model(path, device="cpu", data_shape=(3, 4, 4))


def test_onnx_fixed_batch_refusal_names_the_graph_input(tmp_path: Path) -> None:
    """QA: the re-export hint named an input 'input' whatever the graph's input was called."""
    path = tmp_path / "fixed8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyNet().eval(), (torch.zeros(8, *SHAPE),), str(path), dynamo=False, opset_version=17,
                          input_names=["pixels"], output_names=["logits"])
    with pytest.raises(ModelLoadError, match=r"fixed batch size of 8; .*input_names=\['pixels'\], "
                                             r"dynamic_axes=\{'pixels': \{0: 'batch'\}\}"):
        load_model(path, device="cpu")


# ----------------------------------------------------------------------------- normalisation, options


def test_normalisation_wrapper(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinyNet(channels=3).eval()
    shape = (3, 12, 12)
    path = _save_ts(net, tmp_path / "rgb.pt", shape=shape)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    clf = load_model(path, device="cpu", mean=mean, std=std, data_shape=shape)
    assert clf.info.mean == tuple(mean) and clf.info.std == tuple(std)
    x = _x(3, shape)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(clf(x), net((x - m) / s), atol=1e-6)
    # scalar mean/std broadcast to every channel
    clf1 = load_model(path, device="cpu", mean=[0.5], std=[0.5], data_shape=shape)
    assert clf1.info.mean == (0.5, 0.5, 0.5)
    with torch.no_grad():
        assert torch.allclose(clf1(x), net((x - 0.5) / 0.5), atol=1e-6)
    with pytest.raises(ConfigError):
        load_model(path, device="cpu", mean=[0.1, 0.2], std=[0.3, 0.3], data_shape=shape)
    with pytest.raises(ConfigError):
        load_model(path, device="cpu", mean=[0.1], std=[0.0], data_shape=shape)


def test_device_and_option_errors(tmp_path: Path) -> None:
    path = _save_ts(_net(), tmp_path / "m.pt")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            load_model(path, device="cuda", data_shape=SHAPE)
    with pytest.raises(ConfigError):
        load_model(path, device="tpu", data_shape=SHAPE)
    with pytest.raises(ConfigError):
        load_model(path, device="cpu", clip=(1.0, 0.0), data_shape=SHAPE)
    assert load_model(path, device="auto", data_shape=SHAPE).num_classes == 5


# ----------------------------------------------------------------------------- checks


def test_checks() -> None:
    assert looks_like_probabilities(torch.softmax(torch.randn(4, 5), dim=1))
    assert not looks_like_probabilities(torch.randn(4, 5))
    assert not looks_like_probabilities(torch.full((2, 4), 0.5))

    class Noisy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1) + torch.randn(x.shape[0], x[0].numel())

    x = _x(2)
    assert is_stochastic(Noisy(), x)
    assert not is_stochastic(_net(dropout=0.5), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_placement(tmp_path: Path) -> None:
    net = _net()
    ts_path = _save_ts(net, tmp_path / "m.pt")
    ts = load_model(ts_path, device="cuda", mean=[0.5], std=[0.5], data_shape=SHAPE)
    ox = load_model(_export_onnx(net, tmp_path / "m.onnx"), device="cuda", mean=[0.5], std=[0.5])
    bb = load_model(_shrink_model(tmp_path / "s.onnx"), device="cuda")
    assert ts.device.type == "cuda" and ox.device.type == "cuda"
    x = _x().cuda()
    assert torch.allclose(ts(x), ox(x), atol=1e-4)
    assert bb(_x(2, (1, 4, 4)).cuda()).device.type == "cuda"
    assert any("CPU" in n for n in bb.info.notes)


# ----------------------------------------------------------------------------- faster copies (models/fast.py)


class BnNet(torch.nn.Module):
    """Three channels, batch norm and max pooling: what the copies change (layout, folding, pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(h.flatten(1))


class Spy(torch.nn.Module):
    def __init__(self, name: str, net: torch.nn.Module | None, calls: list[str]) -> None:
        super().__init__()
        self.name, self.net, self.calls = name, net, calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(self.name)
        assert self.net is not None
        return self.net(x)


def _bn_model(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = BnNet()
    with torch.no_grad():  # non-trivial running statistics, so folding them into the conv matters
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return _save_ts(net.eval(), tmp_path / "bn.pt", shape=(3, 12, 12))


def test_fast_copies_serve_forward_and_match_the_original(tmp_path: Path) -> None:
    clf = load_model(_bn_model(tmp_path), device="cpu", data_shape=(3, 12, 12))
    assert clf.grad_copy is not None and clf.infer_copy is not None
    assert "channels-last frozen copy" in clf.info.runtime and "inference copy" in clf.info.runtime
    assert clf.info.notes == ()  # how the model runs is not a warning
    assert clf.info.to_dict()["runtime"] == clf.info.runtime
    x = _x(16, (3, 12, 12), seed=3)
    with torch.no_grad():
        ref = clf.net(x)
    calls: list[str] = []
    clf.use_copies(Spy("grad", clf.grad_copy, calls), Spy("infer", clf.infer_copy, calls))
    with torch.no_grad():
        fast = clf(x)
    assert calls == ["infer"]  # no gradient wanted: the inference copy
    assert torch.allclose(fast, ref, atol=1e-4, rtol=0)
    assert torch.equal(clf.predict(x).argmax(1), ref.argmax(1))
    xg = x.clone().requires_grad_(True)
    out = clf(xg)
    assert calls == ["infer", "infer", "grad"]
    (g,) = torch.autograd.grad(out.logsumexp(1).sum(), xg)
    xr = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(clf.net(xr).logsumexp(1).sum(), xr)
    assert g.is_contiguous()  # the channels-last copy hands back NCHW gradients: attacks view them
    assert float((g - g_ref).norm() / g_ref.norm()) < 1e-4
    with torch.no_grad():
        clf(xg)
    assert calls[-1] == "infer"  # autograd off: the inference copy even for an input that requires grad


def test_fast_copies_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBAUDIT_FAST_MODEL", "0")
    clf = load_model(_bn_model(tmp_path), device="cpu", data_shape=(3, 12, 12))
    assert clf.grad_copy is None and clf.infer_copy is None
    assert "turned off" in clf.info.runtime
    monkeypatch.delenv("ROBAUDIT_FAST_MODEL")
    plain = load_model(_bn_model(tmp_path), device="cpu", data_shape=(3, 12, 12), fast_copies=False)
    assert plain.grad_copy is None and plain.infer_copy is None
    assert plain.info.runtime == "the original network runs (no prepared copies asked for)"


class Noisy(torch.nn.Module):
    """A randomised network: no copy can reproduce its outputs, so none may serve."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + 0.05 * torch.randn_like(x))


def test_a_copy_that_disagrees_with_the_original_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "noisy.pt"
    torch.jit.save(torch.jit.script(Noisy().eval()), str(path))
    clf = load_model(path, device="cpu", data_shape=SHAPE)
    assert clf.grad_copy is None and clf.infer_copy is None
    assert "gradient passes run the original: its copy differs" in clf.info.runtime
    assert "predictions run the original: their copy differs" in clf.info.runtime


def test_training_and_moving_drop_the_copies(tmp_path: Path) -> None:
    from robaudit.defences.adv_training import trainable_network

    clf = load_model(_bn_model(tmp_path), device="cpu", data_shape=(3, 12, 12))
    net = trainable_network(clf)
    assert clf.grad_copy is None and clf.infer_copy is None
    x = _x(4, (3, 12, 12))
    before = clf.predict(x)
    with torch.no_grad():
        net.fc.bias.add_(1.0)  # the frozen copies would not see this
    assert torch.allclose(clf.predict(x), before + 1.0, atol=1e-5)
    clf2 = load_model(_bn_model(tmp_path), device="cpu", data_shape=(3, 12, 12))
    assert clf2.infer_copy is not None
    clf2.to("cpu")
    assert clf2.grad_copy is None and clf2.infer_copy is None


def test_onnx_models_get_copies_only_when_their_trace_holds_at_other_batch_sizes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    flat = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 2 * 2, 5)).eval()
    ok = load_model(_export_onnx(flat, tmp_path / "flat.onnx"), device="cpu")
    assert ok.white_box and ok.grad_copy is not None and ok.infer_copy is not None
    x = _x(7)
    assert torch.allclose(ok(x), ok.net(x), atol=1e-5)
    # TinyNet reshapes by its batch dimension: a trace bakes in the probe's batch of 3, which the
    # checks at 10 and 1 catch, so the converted module itself serves
    baked = load_model(_export_onnx(_net(), tmp_path / "baked.onnx"), device="cpu")
    assert baked.white_box and baked.grad_copy is None and baked.infer_copy is None
    assert "run the original" in baked.info.runtime
    assert torch.equal(baked(x), baked.net(x))
