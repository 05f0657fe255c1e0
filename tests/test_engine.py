"""The attack job end to end in-process: validity flags, bounds verification, report content."""

import pytest
import torch

from robaudit.attacks.base import AttackKind, Norm, TargetMode
from robaudit.attacks.registry import AttackName
from robaudit.engine.attack_job import AttackJob, run_attack_job
from robaudit.engine.attack_run import AttackPlan, verify_bounds
from robaudit.engine.session import InputOptions
from robaudit.errors import AttackFailure
from robaudit.metrics import perturbation_norms
from robaudit.report.schema import validation_errors

from .conftest import DEMO

pytestmark = pytest.mark.skipif(not (DEMO / "mnist_cnn.pt").exists(), reason="bundled demo model missing")


class _Softmax(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)


class _Noisy(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x + 0.05 * torch.randn_like(x))


def _job(model_path, attacks=(AttackName.FGSM,), n=16):
    plan = AttackPlan(attacks=tuple(attacks), targets=(TargetMode.UNTARGETED,), eps=0.2, batch_size=64)
    return AttackJob(inputs=InputOptions(model=str(model_path), data="demo:mnist", device="cpu"), plan=plan, n=n)


@pytest.mark.parametrize(("wrapper", "needle"), [(_Softmax, "probabilities"), (_Noisy, "randomised")])
def test_validity_flags_reach_the_report(tmp_path, wrapper, needle):
    net = torch.jit.load(str(DEMO / "mnist_cnn.pt")).eval()
    path = tmp_path / "m.pt"
    torch.jit.script(wrapper(net)).save(str(path))
    report = run_attack_job(_job(path), ["test"])
    assert any(needle in w for w in report["warnings"]), report["warnings"]
    assert validation_errors(report) == []


def test_clean_model_has_no_flags_and_rows_are_consistent():
    report = run_attack_job(_job("demo:mnist", (AttackName.FGSM, AttackName.DEEPFOOL), n=32), ["test"])
    assert report["warnings"] == []
    assert validation_errors(report) == []
    for row in report["results"]:
        assert row["n"] == report["data"]["n_evaluated"]
        assert row["n_success"] == round(row["success_rate"] * row["n"])
    fgsm = report["results"][0]
    assert fgsm["eps"] == 0.2 and fgsm["linf_max"] <= 0.2 + 1e-6
    assert report["results"][1]["eps"] is None  # deepfool is a minimisation attack


def test_bound_violations_are_internal_errors():
    class _Fake:
        name, kind, norm, eps = "fake", AttackKind.FIXED_EPS, Norm.LINF, 0.1

    x = torch.rand(4, 1, 8, 8) * 0.5
    too_far = x + 0.2
    with pytest.raises(AttackFailure, match="exceeded its linf budget"):
        verify_bounds(_Fake(), x, too_far, perturbation_norms(x, too_far), (0.0, 1.0))
    outside = x.clone()
    outside[0, 0, 0, 0] = 1.5
    with pytest.raises(AttackFailure, match="clip range"):
        verify_bounds(_Fake(), x, outside, perturbation_norms(x, outside), (0.0, 1.0))
    nan = x.clone()
    nan[1, 0, 0, 0] = float("nan")
    with pytest.raises(AttackFailure, match="non-finite"):
        verify_bounds(_Fake(), x, nan, perturbation_norms(x, nan), (0.0, 1.0))


def test_partial_reports_after_every_cell_are_valid():
    partials = []
    plan = AttackPlan(attacks=(AttackName.FGSM, AttackName.DEEPFOOL), targets=(TargetMode.UNTARGETED,
                      TargetMode.NEXT_CLASS), eps=0.2, batch_size=64)
    job = AttackJob(inputs=InputOptions(model="demo:mnist", data="demo:mnist", device="cpu"), plan=plan, n=16)
    final = run_attack_job(job, ["test"], checkpoint=partials.append)
    assert [len(p["results"]) for p in partials] == [1, 2, 3]  # the last cell completes the final report
    assert all(p["partial"] is True and validation_errors(p) == [] for p in partials)
    assert "partial" not in final and len(final["results"]) == 4
    assert partials[-1]["results"] == final["results"][:3]
