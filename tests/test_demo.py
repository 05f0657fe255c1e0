"""The bundled demo fixtures: integrity, layout handling and the clean accuracy the README states."""

import hashlib
import json

import pytest
import torch

from robaudit.attacks.base import Norm
from robaudit.attacks.pgd import PGD
from robaudit.engine.evaluation import build_evaluation_set
from robaudit.engine.session import InputOptions, load_inputs

from .conftest import DEMO

pytestmark = pytest.mark.skipif(not (DEMO / "manifest.json").exists(), reason="bundled demo files missing")


def test_files_match_manifest():
    manifest = json.loads((DEMO / "manifest.json").read_text())
    for name, meta in manifest["files"].items():
        if name.endswith(".md"):
            continue
        assert hashlib.sha256((DEMO / name).read_bytes()).hexdigest() == meta["sha256"], name


@pytest.mark.parametrize(("name", "accuracy", "shape"), [("mnist", 0.983, (1, 28, 28)), ("cifar10", 0.676, (3, 32, 32))])
def test_clean_accuracy_as_documented(name, accuracy, shape):
    inputs = load_inputs(InputOptions(model=f"demo:{name}", data=f"demo:{name}", device="cpu"))
    assert tuple(inputs.data.x.shape[1:]) == shape  # NHWC in the file, NCHW for the model
    assert inputs.data.layout_in == "NHWC"
    ev = build_evaluation_set(inputs.model, inputs.data, None, 0, 256)
    assert ev.clean_accuracy == pytest.approx(accuracy, abs=1e-9)


def test_cifar_demo_falls_to_pgd_at_8_over_255():
    inputs = load_inputs(InputOptions(model="demo:cifar10", data="demo:cifar10", device="cpu"))
    ev = build_evaluation_set(inputs.model, inputs.data, 64, 0, 64)
    out = PGD(PGD.Params(steps=10), norm=Norm.LINF, eps=8 / 255).generate(inputs.model, ev.x, ev.y, seed=0)
    robust = (inputs.model.predict(out.x_adv).argmax(1) == ev.y).float().mean().item()
    assert robust < 0.1  # an undefended CIFAR CNN keeps almost nothing at 8/255
    assert (out.x_adv - ev.x).abs().max().item() <= 8 / 255 + 1e-6
    assert torch.all((out.x_adv >= 0) & (out.x_adv <= 1))
