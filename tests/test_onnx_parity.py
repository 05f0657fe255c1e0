"""The ONNX path gives the same clean accuracy and the same FGSM result as TorchScript for the same model."""

import pytest
import torch

from robaudit.attacks.fgsm import FGSM
from robaudit.attacks.base import Criterion, Norm
from robaudit.data import load_dataset
from robaudit.models.loader import load_model

from .conftest import DEMO

pytestmark = pytest.mark.skipif(not (DEMO / "mnist_cnn.onnx").exists(), reason="bundled demo ONNX model missing")


@pytest.fixture(scope="module")
def pair():
    data = load_dataset(str(DEMO / "mnist_demo.npz"))
    shape = tuple(data.x.shape[1:])
    ts = load_model(str(DEMO / "mnist_cnn.pt"), device="cpu", data_shape=shape)
    ox = load_model(str(DEMO / "mnist_cnn.onnx"), device="cpu", data_shape=shape)
    return ts, ox, torch.from_numpy(data.x[:300]), torch.from_numpy(data.y[:300]).long()


def test_onnx_is_white_box_and_matches_logits(pair):
    ts, ox, x, _ = pair
    assert ts.info.format == "torchscript" and ox.info.format == "onnx"
    assert ox.white_box, ox.info.notes
    assert ox.num_classes == ts.num_classes == 10
    assert torch.allclose(ts.predict(x), ox.predict(x), atol=1e-4)


def test_same_clean_accuracy_and_fgsm_result(pair):
    ts, ox, x, y = pair
    acc_ts = (ts.predict(x).argmax(1) == y).float().mean().item()
    acc_ox = (ox.predict(x).argmax(1) == y).float().mean().item()
    assert acc_ts == acc_ox
    assert acc_ts > 0.97
    keep = ts.predict(x).argmax(1) == y
    xs, ys = x[keep][:128], y[keep][:128]
    outs = [FGSM(norm=Norm.LINF, eps=0.2).generate(m, xs, ys, seed=0) for m in (ts, ox)]
    # sign gradients agree except where a gradient component is ~0 in float32
    differ = (outs[0].x_adv - outs[1].x_adv).abs().gt(1e-5).float().mean().item()
    assert differ < 1e-3
    succ = [Criterion(ys).is_adversarial(m.predict(o.x_adv)).float().mean().item() for m, o in zip((ts, ox), outs)]
    assert abs(succ[0] - succ[1]) <= 1 / 128
