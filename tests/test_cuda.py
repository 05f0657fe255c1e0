"""The CUDA path, end to end: every torch attack, CLEVER, A2D costs, the CLI and adversarial training
on a GPU, each checked against the same work on the CPU. Skipped where there is no CUDA device (CI,
this project's CPU machines); ``bench/gpu_check.sh`` runs it on a lent GPU machine.

Without a GPU the CPU stands in for it and the module counts among the ``slow`` tests (run with
``-m slow``), which keeps the tests themselves checked where no GPU is lent;
``ROBAUDIT_TEST_GPU=cpu`` runs it that way in any run, ``ROBAUDIT_TEST_GPU=cuda`` insists on CUDA."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from robaudit.attacks.base import AttackKind, Norm
from robaudit.attacks.registry import AttackName, get_attack_class
from robaudit.attacks.targets import TargetMode, compute_targets
from robaudit.clever.estimate import CleverNorm, CleverParams, estimate
from robaudit.data import load_dataset
from robaudit.detect.costs import CostName, default_cost_params, measure_costs
from robaudit.metrics import perturbation_norms
from robaudit.models import load_model
from tests.conftest import DEMO, robaudit_cli

_ASKED = os.environ.get("ROBAUDIT_TEST_GPU")
GPU = _ASKED or ("cuda" if torch.cuda.is_available() else "cpu")
if GPU == "cuda" and not torch.cuda.is_available():
    pytestmark = pytest.mark.skip(reason="ROBAUDIT_TEST_GPU=cuda, but there is no CUDA device")
elif _ASKED is None and GPU == "cpu":
    # no GPU and none asked for: the CPU stands in, among the slow tests (about 100 s on 2 cores)
    pytestmark = pytest.mark.slow

N = 32
EPS = {Norm.LINF: 0.3, Norm.L2: 2.0}
# small budgets where the defaults take long; the same on both devices
PARAMS = {
    AttackName.HOPSKIPJUMP: {"max_iter": 5},
    AttackName.UNIVERSAL: {"max_iter": 5},
    AttackName.CW_L2: {"binary_search_steps": 3, "max_iter": 30},
    AttackName.FAB: {"steps": 20},
}
# attacks whose random draws come from the device's generator: a CUDA stream differs from the CPU's
RANDOM = {AttackName.PGD, AttackName.APGD, AttackName.HOPSKIPJUMP, AttackName.SHADOW, AttackName.UNIVERSAL}


@pytest.fixture(scope="module")
def demo():
    data = load_dataset(str(DEMO / "mnist_demo.npz"))
    cpu = load_model(str(DEMO / "mnist_cnn.pt"), device="cpu", data_shape=tuple(data.x.shape[1:]))
    gpu = load_model(str(DEMO / "mnist_cnn.pt"), device=GPU, data_shape=tuple(data.x.shape[1:]))
    x = torch.from_numpy(np.ascontiguousarray(data.x[:200]))
    y = torch.from_numpy(data.y[:200]).long()
    ok = cpu.predict(x).argmax(1) == y
    return cpu, gpu, x[ok][:N], y[ok][:N]


def _success(model, x_adv: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    pred = model.predict(x_adv).argmax(1)
    return pred == targets if targets is not None else pred != y


def test_models_live_on_the_gpu_and_agree_with_the_cpu(demo) -> None:
    cpu, gpu, x, _ = demo
    assert gpu.device.type == GPU and cpu.device.type == "cpu"
    a, b = cpu.predict(x), gpu.predict(x)
    assert b.device.type == "cpu"  # predict returns CPU logits whatever the device
    assert torch.allclose(a, b, atol=1e-3 * float(a.abs().max()))


@pytest.mark.parametrize("name", list(AttackName))
@pytest.mark.parametrize("mode", [TargetMode.UNTARGETED, TargetMode.NEXT_CLASS])
def test_every_attack_runs_on_cuda_like_on_the_cpu(demo, name: AttackName, mode: TargetMode) -> None:
    cpu, gpu, x, y = demo
    cls = get_attack_class(name, "torch")
    if (mode is TargetMode.UNTARGETED and not cls.supports_untargeted) or \
            (mode is not TargetMode.UNTARGETED and not cls.supports_targeted):
        pytest.skip(f"{name.value} does not support {mode.value}")
    norm = cls.norms[0]
    eps = EPS[norm] if cls.kind is AttackKind.FIXED_EPS and norm in EPS else None
    targets = compute_targets(mode, cpu.predict(x), y)
    results = {}
    for model in (cpu, gpu):
        attack = cls(cls.Params(**PARAMS.get(name, {})), norm=norm, eps=eps)
        out = attack.generate(model, x, y, targets, clip=model.clip, batch_size=16, seed=0)
        assert out.x_adv.device.type == "cpu" and out.x_adv.shape == x.shape
        assert float(out.x_adv.min()) >= 0.0 and float(out.x_adv.max()) <= 1.0
        if eps is not None:
            d = perturbation_norms(x, out.x_adv)
            assert float((d.linf if norm is Norm.LINF else d.l2).max()) <= eps * (1 + 1e-5) + 1e-6
        results["cpu" if model is cpu else "gpu"] = (out, _success(cpu, out.x_adv, y, targets))
    (_, ok_cpu), (out_gpu, ok_gpu) = results["cpu"], results["gpu"]
    again = cls(cls.Params(**PARAMS.get(name, {})), norm=norm, eps=eps).generate(
        gpu, x, y, targets, clip=gpu.clip, batch_size=16, seed=0)
    # seeded and reproducible on the GPU too (cuDNN picks deterministic kernels for these small nets
    # only approximately: allow float noise, not a different result)
    assert torch.allclose(again.x_adv, out_gpu.x_adv, atol=1e-4) or \
        int((_success(cpu, again.x_adv, y, targets) != ok_gpu).sum()) <= 1
    slack = 0.2 if name in RANDOM else 0.1
    assert abs(float(ok_gpu.float().mean()) - float(ok_cpu.float().mean())) <= slack, \
        f"{name.value} {mode.value}: GPU success {ok_gpu.float().mean():.2f} vs CPU {ok_cpu.float().mean():.2f}"


def test_clever_on_cuda_matches_the_cpu(demo) -> None:
    cpu, gpu, x, y = demo
    k = 6
    classes = [[int((c + 1) % 10)] for c in y[:k]]
    params = CleverParams(nb_batches=10, batch_size=50)
    runs = [estimate(m, x[:k], y[:k], classes, list(range(k)), CleverNorm.L2, 2.0, params, seed=0, clip=m.clip)
            for m in (cpu, gpu)]
    a = np.array([e.classes[0].score for e in runs[0].inputs])
    b = np.array([e.classes[0].score for e in runs[1].inputs])
    assert (b <= 2.0 + 1e-9).all() and (b > 0).all()
    # different random streams on the two devices: the estimates agree statistically, not exactly
    assert float(np.median(np.abs(a - b) / np.maximum(a, b))) < 0.15


def test_a2d_costs_on_cuda_match_the_cpu(demo) -> None:
    cpu, gpu, x, _ = demo
    params = [default_cost_params(CostName.BIM_LINF, tuple(x.shape[1:]))]
    a = measure_costs(cpu, x, params, batch_size=16, seed=0)
    b = measure_costs(gpu, x, params, batch_size=16, seed=0)
    ca, cb = a.costs[CostName.BIM_LINF.value], b.costs[CostName.BIM_LINF.value]
    assert (ca == cb).mean() >= 0.9  # deterministic BIM: only float noise at a step's edge may differ


def test_cli_attack_and_clever_on_cuda(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = robaudit_cli("attack", "demo:mnist", "--data", "demo:mnist", "--attack", "fgsm,pgd,deepfool",
                     "--target", "untargeted", "-n", "40", "--device", GPU, "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert str(report["device"]).startswith(GPU)
    assert all(row["status"] == "ok" for row in report["results"])
    c = robaudit_cli("clever", "demo:mnist", "--data", "demo:mnist", "-n", "4", "--nb-batches", "5",
                     "--batch-size", "20", "--device", GPU, "--out", str(tmp_path / "c.json"), "-q")
    assert c.returncode == 0, c.stderr


def test_defend_train_on_cuda_writes_a_loadable_model(tmp_path: Path) -> None:
    out = tmp_path / "adv.pt"
    r = robaudit_cli("defend", "train", str(DEMO / "mnist_cnn.pt"), "--data", "demo:mnist", "--eps", "0.3",
                     "--epochs", "1", "--val-size", "200", "--device", GPU, "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    m = load_model(str(out), device=GPU, data_shape=(1, 28, 28))
    assert m.device.type == GPU
