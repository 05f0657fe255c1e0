"""Gates, diff, HTML, JUnit and schema compatibility, on small synthetic reports (fast)."""

from __future__ import annotations

import copy
import json
from xml.etree import ElementTree as ET

import pytest

from robaudit.cli_audit import ReportFormat, render
from robaudit.engine.cells import example_record
from robaudit.errors import ConfigError
from robaudit.report.diff import diff_reports, regressions
from robaudit.report.gates import evaluate_gate, parse_gate
from robaudit.report.schema import validation_errors

from .conftest import robaudit_cli


def _row(label, target, rate, l2, status="ok", attack=None):
    ok = status == "ok"
    return {"attack": attack or label, "label": label, "cell_id": f"m0/attack/{label}/{target}/none",
            "backend": "torch", "target": target, "norm": "linf", "eps": 0.1, "defences": [], "params": {},
            "status": status, "reason": None if ok else "no", "n": 10 if ok else 0, "n_success": int(10 * rate) if ok else 0,
            "success_rate": rate if ok else None, "l2_mean": l2, "l2_median": l2, "linf_mean": 0.1,
            "linf_median": 0.1, "linf_max": 0.1, "l2_mean_all": l2, "l2_median_all": l2, "linf_mean_all": 0.1,
            "linf_median_all": 0.1, "l0_mean": 5.0, "seconds": 1.0, "seconds_per_image": 0.1,
            "forward_passes_per_image": 1.0, "backward_passes_per_image": 1.0}


def _report(rows, clean=0.98):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 28, 28, generator=g)
    adv = (x + 0.1 * torch.sign(torch.randn(1, 28, 28, generator=g))).clamp(0, 1)
    sample = example_record(x, adv, (0.0, 1.0), 0, 17, 3, 5, None, True)
    return {
        "schema_version": "1.1", "robaudit_version": "0.1.0", "created": "2025-01-01T00:00:00+00:00",
        "libraries": {"python": "3.11", "torch": "2"}, "command": ["robaudit"], "seed": 0, "device": "cpu",
        "model": {"path": "m.pt", "format": "torchscript", "sha256": "0" * 64, "input_shape": [1, 28, 28],
                  "classes": 10, "white_box": True, "runtime": "runs from a faster copy"},
        "data": {"path": "d.npz", "sha256": "x", "n_total": 100, "n_selected": 10, "n_evaluated": 10,
                 "n_dropped_misclassified": 0, "clean_accuracy": clean},
        "config": {}, "results": rows, "warnings": [], "kind": "audit",
        "examples": [{"cell_id": rows[0]["cell_id"], "label": rows[0]["label"], "attack": rows[0]["attack"],
                      "target": rows[0]["target"], "defences": [], "samples": [sample, sample]}],
    }


ROWS = [_row("fgsm", "untargeted", 0.2, 1.5), _row("pgd", "untargeted", 0.4, 1.8),
        _row("pgd", "next-class", 0.1, 2.5), _row("deepfool", "next-class", 0.0, None, status="unsupported")]


def test_synthetic_report_is_schema_valid_and_10_reports_stay_valid():
    report = _report(copy.deepcopy(ROWS))
    assert validation_errors(report) == []
    old = copy.deepcopy(report)
    old["schema_version"] = "1.0"
    for key in ("examples", "kind"):
        old.pop(key)
    for row in old["results"]:
        for key in ("cell_id", "label"):
            row.pop(key)
    assert validation_errors(old) == []


@pytest.mark.parametrize(
    ("expr", "passed", "value", "cell"),
    [
        ("pgd untargeted success_rate <= 0.3", False, 0.4, "m0/attack/pgd/untargeted/none"),
        ("pgd success_rate <= 0.5", True, 0.4, "m0/attack/pgd/untargeted/none"),  # group: worst = max
        ("success_rate <= 0.3", False, 0.4, "m0/attack/pgd/untargeted/none"),
        ("next-class l2_mean >= 2", True, 2.5, "m0/attack/pgd/next-class/none"),  # deepfool did not run
        ("clean_accuracy >= 0.95", True, 0.98, None),
        ("clean_accuracy >= 99%", False, 0.98, None),
        ("fgsm robust_accuracy >= 0.75", True, pytest.approx(0.98 * 0.8), "m0/attack/fgsm/untargeted/none"),
    ],
)
def test_gates(expr, passed, value, cell):
    result = evaluate_gate(parse_gate(expr), _report(copy.deepcopy(ROWS)))
    assert result.passed is passed and result.value == value and result.cell == cell
    assert parse_gate(expr).metric in result.detail


def test_gate_on_cell_that_never_ran_fails_with_reason():
    result = evaluate_gate(parse_gate("deepfool success_rate <= 0.5"), _report(copy.deepcopy(ROWS)))
    assert not result.passed and "no cell ran" in result.detail


def test_gate_matching_nothing_is_a_config_error():
    with pytest.raises(ConfigError, match="selector 'cw-l2'"):
        evaluate_gate(parse_gate("cw-l2 success_rate <= 0.5"), _report(copy.deepcopy(ROWS)))


def test_every_format_renders():
    report = _report(copy.deepcopy(ROWS))
    from robaudit.cli_audit import apply_gates

    apply_gates(report, [parse_gate("pgd untargeted success_rate <= 0.3"), parse_gate("clean_accuracy >= 0.9")])
    for fmt in ReportFormat:
        assert render(report, fmt).strip()
    html = render(report, ReportFormat.html)
    assert html.count("<svg") == 2 and "data:image/png;base64," in html and "<script" not in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained
    assert "Model runtime: runs from a faster copy." in html
    md = render(report, ReportFormat.markdown)
    assert "Model runtime: runs from a faster copy." in md
    assert "**Gates: 1 of 2 FAILED**" in md and "| FAIL | `pgd untargeted success_rate <= 0.3` | 0.4 |" in md
    root = ET.fromstring(render(report, ReportFormat.junit).split("\n", 1)[1])
    suite = root.find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    assert suite.find("testcase/failure") is not None
    assert json.loads(render(report, ReportFormat.json))["gates"][0]["passed"] is False


def test_diff_finds_regressions():
    old = _report(copy.deepcopy(ROWS))
    new = _report(copy.deepcopy(ROWS), clean=0.97)
    new["results"][1]["success_rate"] = 0.6
    new["results"][2]["l2_mean"] = 3.0
    changes = diff_reports(old, new)
    worse = {(c.cell, c.metric) for c in regressions(changes, 0.0)}
    assert ("m0/attack/pgd/untargeted/none", "success_rate") in worse
    assert ("m0/attack/pgd/untargeted/none", "robust_accuracy") in worse
    assert ("(report)", "clean_accuracy") in worse
    assert ("m0/attack/pgd/next-class/none", "l2_mean") not in worse  # larger distance: better
    assert regressions(changes, 0.5) == []


def test_report_cli_gate_and_diff(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report(copy.deepcopy(ROWS))))
    worse = _report(copy.deepcopy(ROWS))
    worse["results"][0]["success_rate"] = 0.9
    b.write_text(json.dumps(worse))
    proc = robaudit_cli("report", str(a), "--format", "markdown", "--gate", "pgd untargeted success_rate <= 0.3")
    assert proc.returncode == 1
    assert "gate failed: pgd untargeted success_rate <= 0.3: success_rate = 0.4" in proc.stderr
    assert "FAILED" in proc.stdout
    proc = robaudit_cli("report", str(a), "--gate", "pgd success_rate <= 0.5", "--format", "junit",
                        "--out", str(tmp_path / "j.xml"))
    assert proc.returncode == 0, proc.stderr
    assert 'failures="0"' in (tmp_path / "j.xml").read_text()
    proc = robaudit_cli("report", str(a), "--gate", "nonsense <= 0.5")
    assert proc.returncode == 2 and "unknown metric 'nonsense'" in proc.stderr
    proc = robaudit_cli("report", "diff", str(a), str(b), "--fail-on-regression")
    assert proc.returncode == 1 and "regression: m0/attack/fgsm/untargeted/none success_rate" in proc.stderr
    assert "| m0/attack/fgsm/untargeted/none | success_rate | 0.2 | 0.9 | +0.7 | worse |" in proc.stdout
    assert robaudit_cli("report", "diff", str(a), str(a), "--fail-on-regression").returncode == 0


def _detection(aurocs):
    """A detection entry: ``aurocs`` maps (attack, cost) to AUROC (None: the attack found nothing)."""
    rows, roc = [], []
    for (attack, cost), a in aurocs.items():
        ok = a is not None
        rows.append({"attack": attack, "attack_name": attack, "cost": cost, "n_benign": 20,
                     "n_adversarial": 18 if ok else 0, "status": "ok" if ok else "no-adversarial",
                     "reason": None if ok else "none", "auroc": a, "detection_rate": 0.9 if ok else None,
                     "fpr": 0.05 if ok else None, "accuracy": 0.92 if ok else None})
        if ok:
            roc.append({"attack": attack, "cost": cost, "fpr": [0.0, 0.1, 1.0], "tpr": [0.0, 0.9, 1.0]})
    return {"cell_id": "m0/detect/detect/-/none", "kind": "detect", "status": "ok", "reason": None, "seed": 1,
            "n_benign": 20, "craft": "early", "target_fpr": 0.05, "costs": [], "squeeze": None,
            "attacks": {}, "rows": rows, "roc": roc, "seconds": 1.0}


DET = {("fgsm", "bim-linf"): 0.97, ("jsma", "bim-linf"): 0.91, ("fgsm", "jsma"): 0.8, ("jsma", "jsma"): 0.7,
       ("deepfool", "bim-linf"): None}


@pytest.mark.parametrize(
    ("expr", "passed", "value", "where"),
    [
        ("detect auroc >= 0.75", False, 0.7, "jsma/jsma"),  # worst of every row that has examples
        ("detect bim-linf auroc >= 0.9", True, 0.91, "jsma/bim-linf"),
        ("detect bim-linf fgsm auroc >= 0.95", True, 0.97, "fgsm/bim-linf"),
        ("auroc >= 0.5", True, 0.7, "jsma/jsma"),  # the word detect is optional
        ("detect jsma auroc >= 0.75", False, 0.7, "jsma/jsma"),  # jsma: the attack or the cost
        ("detect attack=jsma auroc >= 0.75", False, 0.7, "jsma/jsma"),
        ("detect cost=jsma fgsm auroc >= 0.75", True, 0.8, "fgsm/jsma"),
        ("detect fpr <= 0.1", True, 0.05, "fgsm/bim-linf"),
        ("detect detection_rate >= 95%", False, 0.9, "fgsm/bim-linf"),
    ],
)
def test_detection_gates(expr, passed, value, where):
    report = _report(copy.deepcopy(ROWS))
    report["detection"] = [_detection(DET)]
    result = evaluate_gate(parse_gate(expr), report)
    assert result.passed is passed and result.value == pytest.approx(value)
    assert result.cell == f"m0/detect/detect/-/none {where}"


def test_detection_gate_errors():
    report = _report(copy.deepcopy(ROWS))
    with pytest.raises(ConfigError, match="no detection cells"):
        evaluate_gate(parse_gate("detect auroc >= 0.9"), report)
    report["detection"] = [_detection(DET)]
    with pytest.raises(ConfigError, match="selector 'pgd' is not a detection attack or score"):
        evaluate_gate(parse_gate("detect pgd auroc >= 0.9"), report)
    result = evaluate_gate(parse_gate("detect deepfool auroc >= 0.9"), report)
    assert not result.passed and "no detection row has a value" in result.detail
    with pytest.raises(ConfigError, match="'detect' selects detection rows"):
        parse_gate("detect success_rate <= 0.5")


def test_detection_report_is_schema_valid_renders_and_diffs():
    report = _report(copy.deepcopy(ROWS))
    report["schema_version"] = "1.2"
    report["detection"] = [_detection(DET)]
    assert validation_errors(report) == []
    bad = copy.deepcopy(report)
    bad["detection"][0]["rows"][0]["auroc"] = 1.5
    assert validation_errors(bad)
    html = render(report, ReportFormat.html)
    assert "<h2>Detection</h2>" in html and html.count("<polyline") == 4 and "ROC: fgsm" in html
    assert "AUROC 0.970" in html and "<script" not in html
    md = render(report, ReportFormat.markdown)
    assert "**Detection** `m0/detect/detect/-/none`" in md and "| fgsm | bim-linf | 20 | 18 | 0.970 |" in md
    assert "AUROC" in render(report, ReportFormat.table)
    junit = render(report, ReportFormat.junit)
    assert "m0/detect/detect/-/none fgsm/bim-linf" in junit and "<skipped" in junit
    new = copy.deepcopy(report)
    new["detection"][0]["rows"][0]["auroc"] = 0.9
    worse = {(c.cell, c.metric) for c in regressions(diff_reports(report, new), 0.0)}
    assert worse == {("m0/detect/detect/-/none fgsm/bim-linf", "auroc")}
