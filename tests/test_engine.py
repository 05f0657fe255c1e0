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


class _Scaled(torch.nn.Module):
    """The demo network on [0, 255] pixels."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x / 255.0)


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


@pytest.mark.parametrize("norm", [Norm.L2, Norm.LINF])
def test_budgets_hold_on_a_0_255_pixel_range(tmp_path, norm):
    """float32 rounds x + delta at the pixels' magnitude (3e-5 near 255): examples on their eps-ball
    measure a hair outside it, which the bound check allowed on [0, 1] only (exit 3 here before)."""
    import numpy as np

    net = torch.jit.load(str(DEMO / "mnist_cnn.pt")).eval()
    model = tmp_path / "m255.pt"
    torch.jit.script(_Scaled(net)).save(str(model))
    with np.load(DEMO / "mnist_demo.npz", allow_pickle=False) as d:
        x, y = d["x"][:100].astype(np.float32), d["y"][:100]
    data = tmp_path / "d255.npz"
    np.savez(data, x=x, y=y)
    eps = 1.0 if norm is Norm.L2 else 0.3
    plan = AttackPlan(attacks=(AttackName.FGSM, AttackName.PGD), targets=(TargetMode.UNTARGETED,), norm=norm,
                      eps=eps, batch_size=100, params={AttackName.PGD: {"steps": "5"}})
    inputs = InputOptions(model=str(model), data=str(data), device="cpu", clip=(0.0, 255.0))
    report = run_attack_job(AttackJob(inputs=inputs, plan=plan, n=100), ["test"])
    key = "l2_mean_all" if norm is Norm.L2 else "linf_mean_all"
    for row in report["results"]:
        assert row["status"] == "ok"
        assert 0.9 * eps < row[key] <= eps * (1 + 1e-4)  # at (L2: near) the ball's surface


class _AlwaysZero(torch.nn.Module):
    def forward(self, x):
        logits = torch.zeros(x.shape[0], 10) + x.flatten(1).mean(1, keepdim=True) * 0
        logits[:, 0] = 1.0
        return logits


def test_clean_accuracy_at_chance_is_flagged(tmp_path):
    """Data that does not belong to the model (digits through a CIFAR network run without an error when the
    network broadcasts the channels) gives chance-level accuracy: say so instead of reporting silently."""
    import numpy as np

    model = tmp_path / "zero.pt"
    torch.jit.script(_AlwaysZero()).save(str(model))
    with np.load(DEMO / "mnist_demo.npz", allow_pickle=False) as d:
        x, y = d["x"], d["y"]
    pick = np.concatenate([np.flatnonzero(y == 0)[:5], np.flatnonzero(y != 0)[:95]])
    data = tmp_path / "d.npz"
    np.savez(data, x=x[pick], y=y[pick])
    plan = AttackPlan(attacks=(AttackName.FGSM,), targets=(TargetMode.UNTARGETED,), eps=0.1, batch_size=100)
    report = run_attack_job(AttackJob(inputs=InputOptions(model=str(model), data=str(data), device="cpu"), plan=plan),
                            ["test"])
    assert report["data"]["clean_accuracy"] == 0.05
    assert any("no better than chance (1/10 = 10.0%)" in w for w in report["warnings"]), report["warnings"]
    # a real model on its own data is not flagged
    report = run_attack_job(_job(DEMO / "mnist_cnn.pt", n=32), ["test"])
    assert not any("chance" in w for w in report["warnings"])


def test_default_eps_on_another_clip_range_is_flagged():
    from robaudit.engine.attack_job import plan_warnings

    plan = AttackPlan(attacks=(AttackName.FGSM, AttackName.DEEPFOOL), targets=(TargetMode.UNTARGETED,))
    assert plan_warnings(plan, (0.0, 1.0)) == []
    (w,) = plan_warnings(plan, (0.0, 255.0))
    assert w.startswith("fgsm ran at default eps meant for pixels in [0, 1]") and "--eps 8 " in w
    assert plan_warnings(AttackPlan(attacks=(AttackName.DEEPFOOL,), targets=(TargetMode.UNTARGETED,)),
                         (0.0, 255.0)) == []  # a minimisation attack has no budget to get wrong


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
    class _Fake255(_Fake):
        eps = 25.5

    x255 = x * 255
    past = x255 + 25.5 + 0.05  # past the ball by far more than float32 rounding at 255 (3e-5)
    with pytest.raises(AttackFailure, match="exceeded its linf budget"):
        verify_bounds(_Fake255(), x255, past, perturbation_norms(x255, past), (0.0, 255.0))
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
    assert partials[0]["unfinished"] == ["fgsm/next-class", "deepfool/untargeted", "deepfool/next-class"]
    from robaudit.report.render import report_warnings

    assert "(not finished: deepfool/next-class)" in report_warnings(partials[-1])[0]
    assert "partial" not in final and len(final["results"]) == 4
    assert partials[-1]["results"] == final["results"][:3]


def test_attack_reports_keep_example_grids_for_the_html_report():
    """`attack` reports had no examples, so their HTML had no grids (only audits kept them)."""
    from robaudit.report.html import report_html

    plan = AttackPlan(attacks=(AttackName.FGSM, AttackName.DEEPFOOL), targets=(TargetMode.UNTARGETED,
                      TargetMode.NEXT_CLASS), eps=0.2, batch_size=64, examples=3)
    report = run_attack_job(AttackJob(inputs=InputOptions(model="demo:mnist", data="demo:mnist", device="cpu"),
                                      plan=plan, n=16), ["test"])
    assert validation_errors(report) == []
    # one entry per cell that ran (DeepFool has no next-class setting), the first inputs, as judged
    assert [(e["attack"], e["target"]) for e in report["examples"]] == [
        ("fgsm", "untargeted"), ("fgsm", "next-class"), ("deepfool", "untargeted")]
    rows = {(r["attack"], r["target"]): r for r in report["results"]}
    for entry in report["examples"]:
        assert [s["position"] for s in entry["samples"]] == [0, 1, 2]
        assert all(s["adv_png"] and s["label"] != s["pred_adv"] or not s["success"] for s in entry["samples"])
        assert rows[(entry["attack"], entry["target"])]["n_success"] >= sum(s["success"] for s in entry["samples"])
    assert all(s["target"] is not None for s in report["examples"][1]["samples"])
    html = report_html(report)
    assert "<h2>Examples</h2>" in html and html.count("data:image/png;base64,") == 3 * 3 * 3
    none = run_attack_job(AttackJob(inputs=InputOptions(model="demo:mnist", data="demo:mnist", device="cpu"),
                                    plan=AttackPlan(attacks=(AttackName.FGSM,), targets=(TargetMode.UNTARGETED,),
                                                    eps=0.2, examples=0), n=8), ["test"])
    assert "examples" not in none


def test_class_folders_named_by_word_get_a_labelling_hint(tmp_path):
    """Folders named zero/ .. nine/ are numbered in sorted name order (eight=0, five=1, ...), which is
    not the digit model's order: the low-accuracy error and warning say how the labels were made."""
    import numpy as np
    from PIL import Image

    from robaudit.engine.attack_job import model_warnings
    from robaudit.engine.evaluation import build_evaluation_set
    from robaudit.engine.session import load_inputs
    from robaudit.errors import DataLoadError

    demo = load_inputs(InputOptions(model="demo:mnist", data="demo:mnist", device="cpu")).data
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    root = tmp_path / "digits"
    for label, word in enumerate(words):
        (root / word).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(demo.y == label)[:6]):
            Image.fromarray((demo.x[i, 0] * 255).round().astype(np.uint8), mode="L").save(root / word / f"{k}.png")
    inputs = load_inputs(InputOptions(model="demo:mnist", data=str(root), device="cpu"))
    evalset = build_evaluation_set(inputs.model, inputs.data, None, 0, 64)  # only six/ sorts to its own label
    assert 0 < evalset.clean_accuracy <= 0.1
    hint = [w for w in model_warnings(inputs.model, evalset) if "no better than chance" in w]
    assert len(hint) == 1 and "labels by sorted folder name: eight=0, five=1" in hint[0]
    assert "name the class folders by their label" in hint[0]
    for k in range(6):
        (root / "six" / f"{k}.png").unlink()
    (root / "six").rmdir()
    inputs = load_inputs(InputOptions(model="demo:mnist", data=str(root), device="cpu"))
    with pytest.raises(DataLoadError, match="classifies none of .* name the class folders by their label"):
        build_evaluation_set(inputs.model, inputs.data, None, 0, 64)
    for label, word in enumerate(words):  # folders named by their label: no hint, accuracy as usual
        if (root / word).exists():
            (root / word).rename(root / str(label))
    inputs = load_inputs(InputOptions(model="demo:mnist", data=str(root), device="cpu"))
    evalset = build_evaluation_set(inputs.model, inputs.data, None, 0, 64)
    assert evalset.clean_accuracy > 0.9 and evalset.label_hint == ""


@pytest.mark.parametrize("rgb", [2, 12])
def test_a_digit_folder_with_rgb_files_loads_for_a_gray_model(tmp_path, rgb):
    """QA 12: one RGB file among gray PNGs made the folder 3 channels, and the gray model failed on it
    with a generic shape error. The folder is now read again with the model's channels (a note says
    how many colour images became gray); all-RGB digit PNGs (rgb=12) load the same way."""
    import numpy as np
    from PIL import Image

    from robaudit.engine.evaluation import build_evaluation_set
    from robaudit.engine.session import load_inputs

    demo = load_inputs(InputOptions(model="demo:mnist", data="demo:mnist", device="cpu")).data
    root = tmp_path / "digits"
    k = 0
    for label in range(3):
        (root / str(label)).mkdir(parents=True)
        for i in np.flatnonzero(demo.y == label)[:4]:
            im = Image.fromarray((demo.x[i, 0] * 255).round().astype(np.uint8), mode="L")
            (im.convert("RGB") if k < rgb else im).save(root / str(label) / f"{i}.png")
            k += 1
    inputs = load_inputs(InputOptions(model="demo:mnist", data=str(root), device="cpu"))
    assert inputs.data.x.shape[1:] == (1, 28, 28)
    assert f"converted {rgb} colour images to grayscale" in inputs.data.notes
    gray = np.stack([demo.x[i] for label in range(3) for i in np.flatnonzero(demo.y == label)[:4]])
    assert np.abs(np.sort(inputs.data.x.ravel()) - np.sort(gray.ravel())).max() <= 1 / 255  # the same pixels
    assert build_evaluation_set(inputs.model, inputs.data, None, 0, 64).clean_accuracy >= 0.9
