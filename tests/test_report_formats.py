"""Gates, diff, HTML, JUnit and schema compatibility, on small synthetic reports (fast)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from robaudit.cli_audit import ReportFormat, render
from robaudit.engine.cells import example_record
from robaudit.errors import ConfigError
from robaudit.report.diff import diff_markdown, diff_reports, regressions
from robaudit.report.gates import check_selectors, evaluate_gate, parse_gate
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
    # QA: the classname held the model path, which CI tools split at its last dot ("pt")
    report["model"]["path"] = "/work/models/lenet.v2.pt"
    suite = ET.fromstring(render(report, ReportFormat.junit).split("\n", 1)[1]).find("testsuite")
    assert suite.get("name") == "robaudit /work/models/lenet.v2.pt"
    assert {c.get("classname") for c in suite.findall("testcase")} == {"robaudit.gates.lenet_v2_pt"}
    assert json.loads(render(report, ReportFormat.json))["gates"][0]["passed"] is False


def test_label_selectors_match_attack_reports_whose_rows_have_no_label():
    """QA: `robaudit attack` rows carry no label (the attack name is the cell's name), and a gate with
    `label=pgd` (as a profile writes it) matched nothing there."""
    rows = copy.deepcopy(ROWS)
    for r in rows:
        del r["label"]
    report = _report(copy.deepcopy(ROWS))
    report["results"] = rows
    result = evaluate_gate(parse_gate("label=pgd untargeted success_rate <= 0.5"), report)
    assert result.passed and result.value == pytest.approx(0.4)
    assert evaluate_gate(parse_gate("pgd next-class success_rate <= 0.5"), report).value == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="names no attack label here"):
        evaluate_gate(parse_gate("label=apgd success_rate <= 0.5"), report)


def test_l0_column_appears_when_an_l0_attack_ran():
    """QA: JSMA's L0 (the distance it minimises) was only in the JSON."""
    plain = _report(copy.deepcopy(ROWS))
    jsma = _row("jsma", "untargeted", 0.9, 3.2)
    jsma.update(norm="l0", eps=None, l0_mean=18.6)
    with_l0 = _report(copy.deepcopy(ROWS) + [jsma])
    for fmt in (ReportFormat.table, ReportFormat.markdown, ReportFormat.html):
        assert "L0 mean" not in render(plain, fmt)
        assert "L0 mean" in render(with_l0, fmt)
    md = render(with_l0, ReportFormat.markdown)
    assert "| jsma | untargeted | min l0 | 10 | 90.0% | - | 3.2 | 3.2 | 0.1 | 0.1 | 18.6 | 1.0 |" in md
    assert "| fgsm | untargeted | linf<=0.1 | 10 | 20.0% | 78.4% | 1.5 | 1.5 | 0.1 | 0.1 | 5 | 1.0 |" in md
    row = [ln for ln in render(with_l0, ReportFormat.table, width=100).splitlines() if "jsma" in ln][0]
    assert "18.6" in row  # kept in a narrow terminal too
    html = render(with_l0, ReportFormat.html)
    assert ">L0 mean</th>" in html and ">18.6</td>" in html


def test_table_counts_warnings_already_shown_instead_of_repeating_them():
    """QA: on a terminal every warning was printed twice, once during the run and once under the table."""
    report = _report(copy.deepcopy(ROWS))
    report["warnings"] = ["first thing", "second thing"]
    full = render(report, ReportFormat.table)
    assert "warning: first thing" in full and "warning: second thing" in full and "printed above" not in full
    seen = render(report, ReportFormat.table, shown={"first thing"})
    assert "warning: first thing" not in seen and "warning: second thing" in seen
    assert "(1 warning printed above during the run; the report's `warnings` holds them all)" in seen


def test_example_grids_name_the_classes_where_the_data_does():
    """QA: a folder of cat/dog/zebra images showed `label 0`, `pred 2` in the HTML grids."""
    from robaudit.report.html import example_grid

    sample = {"index": 7, "label": 0, "pred_adv": 2, "target": 2, "success": True, "delta_linf": 0.1,
              "clean_png": "AA==", "adv_png": "AA==", "delta_png": "AA=="}
    entry = {"label": "pgd", "target": "next-class", "samples": [sample]}
    named = example_grid(entry, ["cat", "dog", "zebra"])
    assert "label 0 (cat)" in named and "pred 2 (zebra) (target 2 (zebra)) ✓" in named
    assert "label 0<" in example_grid(entry) and "(cat)" not in example_grid(entry)


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


def test_diff_compares_l0_and_only_distances_over_comparable_successes():
    """QA: a PGD-trained model was called `worse` on JSMA's L2 mean (5.37 -> 4.52), a mean over 28 of 30
    broken inputs against 2 of 30; and JSMA's own distance, L0, was not compared at all."""
    def jsma(rate, l2, l0):
        row = _row("jsma", "next-class", rate, l2)
        row.update(norm="l0", eps=None, l0_mean=l0)
        return row

    old, new = _report([jsma(0.93, 5.37, 20.0)]), _report([jsma(0.07, 4.52, 8.0)])
    by = {c.metric: c for c in diff_reports(old, new)}
    assert by["success_rate"].verdict(0.0) == "better"
    for metric in ("l2_mean", "l2_median", "l0_mean"):
        assert by[metric].verdict(0.0) == "n/a" and "over different inputs" in by[metric].note
    assert regressions(diff_reports(old, new), 0.0) == []
    close = {c.metric: c for c in diff_reports(old, _report([jsma(0.95, 5.0, 15.0)]))}
    assert close["l0_mean"].verdict(0.0) == "worse" and close["l2_mean"].verdict(0.0) == "worse"
    plain = {c.metric for c in diff_reports(_report(copy.deepcopy(ROWS)), _report(copy.deepcopy(ROWS)))}
    assert "l0_mean" not in plain  # L0 only for L0 attacks


def test_diff_matches_cells_across_model_slots():
    """A multi-model audit writes one report per model with ids m0/..., m1/...; the same model
    audited alone is m0/. Its cells were all "gone" and "new", and --fail-on-regression failed."""
    alone = _report(copy.deepcopy(ROWS))
    second = copy.deepcopy(alone)
    for row in second["results"]:
        row["cell_id"] = row["cell_id"].replace("m0/", "m1/", 1)
    changes = diff_reports(second, alone)
    assert {c.verdict(0.0) for c in changes} == {"same"} and regressions(changes, 0.0) == []
    assert {c.cell for c in changes} >= {r["cell_id"] for r in alone["results"] if r["status"] == "ok"}
    second["results"][1]["success_rate"] = 0.3  # the baseline from the multi-model audit was more robust
    worse = {(c.cell, c.metric) for c in regressions(diff_reports(second, alone), 0.0)}
    assert worse == {("m0/attack/pgd/untargeted/none", "success_rate"), ("m0/attack/pgd/untargeted/none", "robust_accuracy")}


def test_diff_does_not_call_float32_rounding_a_regression():
    """A rerun with another batch size moved a C&W median by 3e-8 (0.6241 -> 0.6241), and
    --fail-on-regression failed the build on it."""
    rows = [_row("cw", "untargeted", 0.5, 0.6241), _row("fgsm", "untargeted", 0.2, 1.5)]
    for r in rows:
        r["eps"] = None if r["attack"] == "cw" else 0.1
    old = _report(rows)
    new = copy.deepcopy(old)
    new["results"][0]["l2_median"] = 0.6241 - 2.98e-8
    assert regressions(diff_reports(old, new), 0.0) == []
    new["results"][0]["l2_median"] = 0.6241 - 1e-4  # a real change is still one
    worse = regressions(diff_reports(old, new), 0.0)
    assert [(c.cell, c.metric) for c in worse] == [("m0/attack/cw/untargeted/none", "l2_median")]


def test_diff_matches_an_attack_report_against_an_audit_of_the_same_cells():
    """`robaudit attack` rows carry no cell id; an audit's are m0/attack/label/target/stack. Diffing
    the two reported every cell gone and new, and exited 1."""
    audit = _report(copy.deepcopy(ROWS))
    audit["results"].append({**_row("fgsm", "untargeted", 0.5, 1.5), "defences": ["ss"], "threat_model": "transfer",
                             "cell_id": "m0/attack/fgsm/untargeted/ss@transfer"})
    attack = copy.deepcopy(audit)
    for row in attack["results"]:
        del row["cell_id"]
    changes = diff_reports(attack, audit)
    assert {c.verdict(0.0) for c in changes} == {"same"} and regressions(changes, 0.0) == []
    attack["results"][-1]["threat_model"] = "adaptive"  # the same stack, another threat model: another cell
    verdicts = {c.verdict(0.0) for c in diff_reports(attack, audit) if c.cell.endswith("/ss@transfer")}
    assert verdicts == {"new"}


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
    proc = robaudit_cli("report", str(a), "--gate", "pgd untargeted success_rate <= 0.3", "--format", "json",
                        "--out", str(tmp_path / "gated.json"))
    assert proc.returncode == 1
    proc = robaudit_cli("report", str(tmp_path / "gated.json"), "--format", "markdown")  # renders: exit 0, says so
    assert proc.returncode == 0 and "note: 1 of the 1 gates stored in this report failed" in proc.stderr
    proc = robaudit_cli("report", str(a), "--gate", "nonsense <= 0.5")
    assert proc.returncode == 2 and "unknown metric 'nonsense'" in proc.stderr
    (tmp_path / "afile").write_text("in the way")
    for out, why in ((tmp_path, "it is a folder; give a file name for --out"),
                     (tmp_path / "afile" / "r.md", f"{tmp_path / 'afile'} is a file, not a folder")):
        proc = robaudit_cli("report", str(a), "--format", "markdown", "--out", str(out))
        assert proc.returncode == 2 and f"cannot write {out}: {why}" in proc.stderr
    proc = robaudit_cli("report", "diff", str(a), str(b), "--fail-on-regression", "--format", "markdown")
    assert proc.returncode == 1 and "regression: m0/attack/fgsm/untargeted/none success_rate" in proc.stderr
    assert "| m0/attack/fgsm/untargeted/none | success_rate | 0.2 | 0.9 | +0.7 | worse |" in proc.stdout
    table = robaudit_cli("report", "diff", str(a), str(b)).stdout  # the default, table, was Markdown too
    assert "| m0/attack" not in table and "robaudit diff:" in table
    assert any(line.split()[1:] == ["m0/attack/fgsm/untargeted/none", "│", "success_rate", "│", "0.2", "│", "0.9",
                                    "│", "+0.7", "│", "worse", "│"] for line in table.splitlines()), table
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


def test_detection_rows_say_what_they_are_measured_on_and_diff_skips_changed_setups():
    """The benign count hid the held-out half that FPR and accuracy use; a high-confidence C&W row
    read as plain C&W; and `report diff` called a lower AUROC under another craft mode a regression."""
    report = _report(copy.deepcopy(ROWS))
    report["schema_version"] = "1.2"
    det = _detection({("fgsm", "bim-linf"): 0.97, ("cw", "bim-linf"): 0.81})
    det["n_benign_test"] = 10
    det["attacks"] = {"fgsm": {"attack": "fgsm", "eps": None, "params": {}},
                      "cw": {"attack": "cw-l2", "eps": None, "params": {"confidence": 8}}}
    for row in det["rows"]:
        row["n_benign_test"] = 10
    det["rows"][1].update(attack_name="cw-l2", setup="confidence 8")
    report["detection"] = [det]
    assert validation_errors(report) == []
    md = render(report, ReportFormat.markdown)
    assert "| benign (held out) |" in md and "| fgsm | bim-linf | 20 (10) | 18 | 0.970 |" in md
    assert "| cw (cw-l2) [confidence 8] | bim-linf |" in md
    assert "thresholds fitted for 5% FPR on 10 even-indexed benign inputs, FPR measured on the other 10" in md
    assert "craft early (FGSM and BIM; other attacks run as configured)" in render(report, ReportFormat.html)
    # the craft mode moves FGSM's row only; a changed C&W confidence moves C&W's
    new = copy.deepcopy(report)
    new["detection"][0]["craft"] = "full"
    new["detection"][0]["attacks"]["cw"]["params"] = {"confidence": 0}
    for row in new["detection"][0]["rows"]:
        row["auroc"] = 0.6
    changes = diff_reports(report, new)
    assert not regressions(changes, 0.0)
    notes = {c.cell: c.note for c in changes if c.metric == "setup"}
    assert notes == {"m0/detect/detect/-/none fgsm/bim-linf": "craft early -> full",
                     "m0/detect/detect/-/none cw/bim-linf": "params.confidence 8 -> 0"}
    new = copy.deepcopy(report)
    new["detection"][0]["rows"][1]["auroc"] = 0.6  # same setup: a real regression
    assert [c.cell for c in regressions(diff_reports(report, new), 0.0)] == ["m0/detect/detect/-/none cw/bim-linf"]
    # a cell only the old report has is a regression, and the headline counts it apart from "worse"
    gone = copy.deepcopy(report)
    gone["results"] = gone["results"][1:]
    text = diff_markdown(diff_reports(report, gone), 0.0, "a", "b")
    assert "0 worse," in text and "gone (in the old report only; they count as regressions)" in text


def test_partial_report_fails_every_gate(tmp_path):
    report = _report(copy.deepcopy(ROWS))
    report["partial"] = True  # an attack run killed after its first cells: the rest may break the gate
    for expr in ("success_rate <= 0.9", "clean_accuracy >= 0.5", "fgsm l2_mean >= 0"):
        result = evaluate_gate(parse_gate(expr), report)
        assert not result.passed and result.value is None and "partial" in result.detail
    path = tmp_path / "part.json"
    path.write_text(json.dumps(report))
    proc = robaudit_cli("report", str(path), "--gate", "success_rate <= 0.9")
    assert proc.returncode == 1 and "the report is partial" in proc.stderr
    for fmt in (ReportFormat.markdown, ReportFormat.table, ReportFormat.html):
        text = render(report, fmt)
        assert "PARTIAL REPORT" in text
        if fmt is not ReportFormat.html:  # QA 14: it came after the table it qualifies
            assert text.index("PARTIAL REPORT") < text.index("fgsm") and text.count("PARTIAL REPORT") == 1
    assert 'failures="1"' in render(report, ReportFormat.junit)  # without gates too
    report["partial"] = False
    assert evaluate_gate(parse_gate("success_rate <= 0.9"), report).passed
    assert "PARTIAL" not in render(report, ReportFormat.markdown)
    assert 'failures="0"' in render(report, ReportFormat.junit)


def test_robust_accuracy_gate_groups_the_untargeted_cells():
    report = _report(copy.deepcopy(ROWS))
    # "fail the build if PGD robust accuracy drops below 40%" on an audit that also ran targeted cells
    result = evaluate_gate(parse_gate("pgd robust_accuracy >= 0.4"), report)
    assert result.passed and result.value == pytest.approx(0.98 * 0.6) and result.cell.endswith("pgd/untargeted/none")
    result = evaluate_gate(parse_gate("robust_accuracy >= 0.7"), report)  # worst untargeted cell: pgd
    assert not result.passed and result.value == pytest.approx(0.98 * 0.6)
    # a selection without untargeted cells is a mis-written gate (exit 2), like a selector matching nothing
    with pytest.raises(ConfigError, match="robust_accuracy is defined on untargeted cells only"):
        evaluate_gate(parse_gate("next-class robust_accuracy >= 0.1"), report)
    with pytest.raises(ConfigError, match="untargeted cells only"):
        check_selectors(parse_gate("ll robust_accuracy >= 0.1"), {"pgd"}, {"pgd"}, {"untargeted", "least-likely"})
    with pytest.raises(ConfigError, match="untargeted cells only"):
        check_selectors(parse_gate("pgd robust_accuracy >= 0.1"), {"pgd"}, {"pgd"}, {"next-class"})
    check_selectors(parse_gate("pgd robust_accuracy >= 0.1"), {"pgd"}, {"pgd"}, {"untargeted", "next-class"})


def test_robust_accuracy_behind_a_defence_uses_the_stack_clean_accuracy():
    """QA: ss+jpeg kept 12 of 24 inputs (undefended 20), adaptive PGD broke 7 of the 12: robust
    accuracy is 5/24 = 0.208, not the undefended 20/24 x 5/12 = 0.347 the gate used to pass."""
    from robaudit.report.diff import diff_reports

    row = _row("pgd", "untargeted", 7 / 12, 1.0)
    row.update(cell_id="m0/attack/pgd/untargeted/ss+jpeg", defences=["ss", "jpeg"], threat_model="adaptive",
               n=12, n_success=7)
    report = _report([_row("pgd", "untargeted", 0.5, 1.0), row], clean=20 / 24)
    report["data"]["n_selected"] = 24
    report["defences"] = [{"defences": [], "clean_accuracy": 20 / 24}, {"defences": ["ss", "jpeg"], "clean_accuracy": 0.5}]
    result = evaluate_gate(parse_gate("defences=ss+jpeg pgd robust_accuracy >= 0.3"), report)
    assert not result.passed and result.value == pytest.approx(5 / 24)
    assert evaluate_gate(parse_gate("defences=none pgd robust_accuracy >= 0.4"), report).value == pytest.approx(10 / 24)
    del report["defences"]  # a report without the section: the row's own count of correct inputs
    assert evaluate_gate(parse_gate("defences=ss+jpeg robust_accuracy >= 0.3"), report).value == pytest.approx(5 / 24)
    # a stack that loses clean accuracy between two runs is a robust-accuracy regression
    old, new = copy.deepcopy(report), copy.deepcopy(report)
    new["results"][1].update(n=10, n_success=7, success_rate=0.7)
    worse = {(c.cell, c.metric) for c in diff_reports(old, new) if c.verdict(1e-9) == "worse"}
    assert ("m0/attack/pgd/untargeted/ss+jpeg", "robust_accuracy") in worse


def test_gates_select_the_threat_model_and_take_stacks_with_commas():
    """QA: a gate could not tell adaptive from transfer rows of a stack, and `defences=ss,jpeg` (the
    CLI's spelling of a stack) matched nothing."""
    rows = [_row("pgd", "untargeted", 0.5, 1.0)]
    rows[0]["threat_model"] = "none"  # as the engine writes undefended rows
    for threat, rate in (("adaptive", 0.9), ("transfer", 0.2)):
        row = _row("pgd", "untargeted", rate, 1.0)
        row.update(cell_id=f"m0/attack/pgd/untargeted/ss+jpeg/{threat}", defences=["ss", "jpeg"], threat_model=threat)
        rows.append(row)
    report = _report(rows)
    assert evaluate_gate(parse_gate("transfer pgd success_rate <= 0.3"), report).passed
    assert evaluate_gate(parse_gate("threat=transfer success_rate <= 0.3"), report).value == pytest.approx(0.2)
    adaptive = evaluate_gate(parse_gate("adaptive defences=ss,jpeg success_rate <= 0.3"), report)
    assert not adaptive.passed and adaptive.value == pytest.approx(0.9)
    assert evaluate_gate(parse_gate("adaptive success_rate <= 0.95"), report).value == pytest.approx(0.9)
    with pytest.raises(ConfigError, match="matches no cell"):  # the undefended cells have no threat model
        evaluate_gate(parse_gate("adaptive defences=none success_rate <= 0.5"), report)
    with pytest.raises(ConfigError, match=r"matches no cell of the report \(its cells: pgd/untargeted; stacks: "
                                          r"none, ss\+jpeg; threat models of the defended cells: adaptive, "
                                          r"transfer\)"):
        evaluate_gate(parse_gate("defences=jpeg success_rate <= 0.5"), report)
    with pytest.raises(ConfigError, match="adaptive or transfer"):
        check_selectors(parse_gate("threat=blackbox success_rate <= 0.5"), {"pgd"}, {"pgd"}, {"untargeted"})
    check_selectors(parse_gate("transfer pgd success_rate <= 0.5"), {"pgd"}, {"pgd"}, {"untargeted"})


def test_distance_gates_hold_where_the_attack_found_nothing():
    rows = copy.deepcopy(ROWS)
    rows.append(_row("cw-l2", "untargeted", 0.0, None))  # a minimisation attack that never succeeded
    rows[-1]["eps"] = None
    report = _report(rows)
    result = evaluate_gate(parse_gate("cw-l2 l2_median >= 1.0"), report)
    assert result.passed and result.value is None and "no successful example" in result.detail
    result = evaluate_gate(parse_gate("untargeted l2_median >= 1.6"), report)  # fgsm 1.5 decides
    assert not result.passed and result.value == 1.5 and "1 cell(s) without a successful example" in result.detail
    assert evaluate_gate(parse_gate("untargeted l2_median >= 1.4"), report).passed


def test_markdown_escapes_markup_in_labels_and_has_no_empty_attack_table():
    rows = copy.deepcopy(ROWS)
    rows[0]["label"] = '<b>fg"sm&amp;'
    md = render(_report(rows), ReportFormat.markdown)
    assert "<b>" not in md and "&lt;b>fg\"sm&amp;amp;" in md  # shown as typed, not rendered as markup
    assert "linf<=0.1" in md  # a plain '<=' stays readable
    empty = _report(copy.deepcopy(ROWS))
    empty["results"] = []
    for fmt in (ReportFormat.markdown, ReportFormat.table):
        text = render(empty, fmt)
        assert "success" not in text and "clean accuracy" in text.lower(), text


def test_chart_has_one_bar_per_threat_model_and_one_colour_per_series():
    import re

    from robaudit.report.html import charts

    rows = []
    for threat, rate in (("adaptive", 0.61), ("transfer", 0.125)):  # one stack under both threat models
        row = _row("fgsm", "untargeted", rate, 1.0)
        row.update(defences=["ss"], threat_model=threat, cell_id=f"m0/attack/fgsm/untargeted/ss/{threat}")
        rows.append(row)
    svg = charts(_report(rows))[0]
    # bar labels as the tables print them: 12.5% (a half-even 12% disagreed with the table beside it)
    assert "fgsm / untargeted / ss (adaptive): 61%" in svg and "fgsm / untargeted / ss (transfer): 12.5%" in svg
    many = []
    for i in range(21):  # more series than the palette has colours
        row = _row("fgsm", "untargeted", 0.5, 1.0)
        row.update(defences=[f"d{i}"], threat_model="adaptive", cell_id=f"m0/attack/fgsm/untargeted/d{i}")
        many.append(row)
    svg = charts(_report(many))[0]
    bars = re.findall(r'<rect x="[^"]+" y="[^"]+" width="[^"]+" height="[^"]+" fill="([^"]+)"><title>', svg)
    assert len(bars) == 21 and len(set(bars)) == 21


def test_distance_gate_allows_float32_rounding_at_the_budget():
    report = _report(copy.deepcopy(ROWS))
    for row in report["results"]:
        row["linf_max"] = 0.30000004172325134  # float32 eps 0.3, as attacks measure it
    assert evaluate_gate(parse_gate("linf_max <= 0.3"), report).passed
    report["results"][0]["linf_max"] = 0.3001
    result = evaluate_gate(parse_gate("linf_max <= 0.3"), report)
    assert not result.passed and "linf_max = 0.3001" in result.detail
    report["results"][0]["linf_max"] = 0.30002
    result = evaluate_gate(parse_gate("linf_max <= 0.3"), report)  # shown with the digits that fail it
    assert not result.passed and "linf_max = 0.30002 at" in result.detail
    assert not evaluate_gate(parse_gate("success_rate <= 0.39999"), report).passed  # rates stay exact
    # on [0, 255] pixels float32 rounds at 255, not at 1: the engine accepted 0.300003 for eps 0.3, so must a gate
    for row in report["results"]:
        row["linf_max"] = 0.300003
    assert not evaluate_gate(parse_gate("linf_max <= 0.3"), report).passed  # [0, 1]: 3e-6 is past rounding
    report["model"]["clip"] = [0.0, 255.0]
    assert evaluate_gate(parse_gate("linf_max <= 0.3"), report).passed
    report["results"][0]["linf_max"] = 0.3002
    assert not evaluate_gate(parse_gate("linf_max <= 0.3"), report).passed
    for row in report["results"]:  # L2 rounding adds up over the 784 values of an image
        row["l2_median"] = 1.00005
    assert evaluate_gate(parse_gate("l2_median <= 1"), report).passed
    report["model"]["clip"] = [0.0, 1.0]
    assert not evaluate_gate(parse_gate("l2_median <= 1"), report).passed


def test_diff_compares_like_with_like(tmp_path):
    old = _report(copy.deepcopy(ROWS))
    new = _report(copy.deepcopy(ROWS))
    for row in new["results"]:
        if row["label"] == "fgsm":
            row["eps"], row["success_rate"], row["l2_median"] = 0.01, 0.1, 0.2  # a smaller budget
        if row["label"] == "pgd":
            row["l2_median"] = 0.5  # fixed eps: distances sit at the budget, not a robustness direction
    changes = diff_reports(old, new)
    setup = [c for c in changes if c.metric == "setup"]
    assert [(c.cell, c.note) for c in setup] == [("m0/attack/fgsm/untargeted/none", "eps 0.1 -> 0.01")]
    assert not [c for c in changes if c.cell == "m0/attack/fgsm/untargeted/none" and c.metric != "setup"]
    assert not [c for c in changes if c.metric in ("l2_median", "l2_mean", "linf_median")]
    assert regressions(changes, 0.0) == []
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(old))
    new["data"]["sha256"] = "y"
    b.write_text(json.dumps(new))
    proc = robaudit_cli("report", "diff", str(a), str(b), "--fail-on-regression", "--format", "markdown")
    assert proc.returncode == 0, proc.stderr
    assert "different data" in proc.stderr and "changed their attack setup" in proc.stderr
    assert "| m0/attack/fgsm/untargeted/none | setup | | | eps 0.1 -> 0.01 | changed |" in proc.stdout
    # a minimisation attack's distances still compare: smaller is worse
    old["results"][2]["eps"] = new["results"][2]["eps"] = None
    new["data"]["sha256"] = "x"
    new["results"][2]["l2_median"] = 1.0
    worse = {(c.cell, c.metric) for c in regressions(diff_reports(old, new), 0.0)}
    assert ("m0/attack/pgd/next-class/none", "l2_median") in worse


def test_report_refuses_a_malformed_report_and_explains_bad_gates(tmp_path):
    report = _report(copy.deepcopy(ROWS))
    report["results"][0]["success_rate"] = "x"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(report))
    for fmt in ("table", "html"):
        proc = robaudit_cli("report", str(bad), "--format", fmt)
        assert proc.returncode == 2 and "is not a valid robaudit report: results/0/success_rate" in proc.stderr
    report = _report(copy.deepcopy(ROWS))
    report["schema_version"] = "9.0"
    bad.write_text(json.dumps(report))
    proc = robaudit_cli("report", str(bad))
    assert proc.returncode == 2 and "schema_version" in proc.stderr
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_report(copy.deepcopy(ROWS))))
    proc = robaudit_cli("report", str(good), "--gate", "pgd success_rate == 1")
    assert proc.returncode == 2 and "cannot parse gate 'pgd success_rate == 1'" in proc.stderr
    proc = robaudit_cli("report", str(good), "--gate", "")
    assert proc.returncode == 2 and "a gate must be a non-empty string" in proc.stderr


def test_tables_name_cells_by_their_profile_label():
    rows = copy.deepcopy(ROWS)
    rows.append(_row("fgsm-b", "untargeted", 0.5, 2.0, attack="fgsm"))
    report = _report(rows)
    for fmt in (ReportFormat.markdown, ReportFormat.table, ReportFormat.html):
        assert "fgsm-b (fgsm)" in render(report, fmt)


def test_label_selector_gates_one_label_of_an_attack_run_twice():
    """`pgd` selects every cell that runs PGD (the README's example gate judged its `pgd-l2` cell);
    `label=pgd` selects the cells labelled pgd only."""
    report = _report([_row("pgd", "untargeted", 0.2, 1.0), _row("pgd-l2", "untargeted", 1.0, 2.0, attack="pgd")])
    by_name = evaluate_gate(parse_gate("pgd untargeted success_rate <= 0.3"), report)
    assert not by_name.passed and by_name.cell == "m0/attack/pgd-l2/untargeted/none"
    by_label = evaluate_gate(parse_gate("label=pgd untargeted success_rate <= 0.3"), report)
    assert by_label.passed and by_label.value == pytest.approx(0.2) and by_label.cell == "m0/attack/pgd/untargeted/none"
    from robaudit.report.gates import check_selectors

    with pytest.raises(ConfigError, match="'label=fgsm' names no attack label here"):
        check_selectors(parse_gate("label=fgsm success_rate <= 0.3"), {"pgd", "pgd-l2"}, {"pgd"}, {"untargeted"})


def test_folder_class_names_reach_the_report_and_its_example_grids(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from .conftest import DEMO

    with np.load(DEMO / "mnist_demo.npz", allow_pickle=False) as d:
        pick = np.concatenate([np.flatnonzero(d["y"] == k)[:3] for k in range(10)])
        x, y = d["x"][pick], d["y"][pick]
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for i, (img, label) in enumerate(zip(x, y)):
        folder = tmp_path / "digits" / f"{int(label)}_{names[int(label)]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(img).reshape(28, 28).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "r.json"
    res = robaudit_cli("attack", "demo:mnist", "--data", str(tmp_path / "digits"), "--attack", "fgsm", "--eps", "0.3",
                       "-q", "--format", "json", "--out", str(out))
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert sorted(set(y.tolist())) == list(range(10))  # every class present: label k is folder k_name
    assert report["data"]["class_names"] == [f"{k}_{n}" for k, n in enumerate(names)]
    html = robaudit_cli("report", str(out), "--format", "html")
    first = report["examples"][0]["samples"][0]["label"]
    assert html.returncode == 0 and f"label {first} ({first}_{names[first]})" in html.stdout


def test_robust_accuracy_is_shown_where_gates_compute_it():
    """Tables show robust accuracy (clean x (1 - success)) for untargeted fixed-eps rows only, the
    value a `robust_accuracy` gate reads; targeted rows and minimisation attacks show '-'."""
    dfool = _row("deepfool", "untargeted", 1.0, 1.2)
    dfool["eps"] = None
    report = _report(copy.deepcopy(ROWS[:3]) + [dfool])
    gate = evaluate_gate(parse_gate("label=pgd robust_accuracy >= 0.1"), report)
    assert gate.value == pytest.approx(0.98 * 0.6)
    md = render(report, ReportFormat.markdown)
    assert "| pgd | untargeted | linf<=0.1 | 10 | 40.0% | 58.8% |" in md
    assert "| pgd | next-class | linf<=0.1 | 10 | 10.0% | - |" in md
    assert "| deepfool | untargeted | min linf | 10 | 100.0% | - |" in md
    assert "robust acc (untargeted, fixed eps only): clean accuracy x (1 - success)" in md
    html = render(report, ReportFormat.html)
    assert "<th class=\"\">robust acc</th>" in html and ">58.8%</td>" in html and ">78.4%</td>" in html
    table = render(report, ReportFormat.table, width=200)
    assert "robust acc" in table and "58.8%" in table and "78.4%" in table


def test_report_refuses_gates_it_would_not_apply(tmp_path):
    """`--gate` on `report diff`, a `--gate PROFILE` without gates and a NaN/inf tolerance used to pass
    silently (exit 0) whatever the reports said."""
    a = tmp_path / "a.json"
    a.write_text(json.dumps(_report(copy.deepcopy(ROWS))))
    proc = robaudit_cli("report", "diff", str(a), str(a), "--gate", "clean_accuracy >= 0.99")
    assert proc.returncode == 2 and "--gate applies to `report REPORT.json`, not to `report diff`" in proc.stderr
    proc = robaudit_cli("report", str(a), "--gate", "quick", "--format", "markdown")
    assert proc.returncode == 2 and "--gate quick: the profile has no gates" in proc.stderr
    assert robaudit_cli("report", str(a), "--gate", "ci-gate", "--format", "markdown").returncode in (0, 1)
    for bad in ("nan", "inf"):
        proc = robaudit_cli("report", "diff", str(a), str(a), "--tolerance", bad)
        assert proc.returncode == 2 and "--tolerance must be a finite number >= 0" in proc.stderr


def test_a_row_that_did_not_run_shows_dash_for_n_and_its_reason_under_success():
    """The reason of an unsupported row used to sit in the "n" column of the Markdown table."""
    report = _report(copy.deepcopy(ROWS))
    md = render(report, ReportFormat.markdown)
    header = next(line for line in md.splitlines() if line.startswith("| attack"))
    row = next(line for line in md.splitlines() if line.startswith("| deepfool"))
    heads = [c.strip() for c in header.strip("|").split("|")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == len(heads)
    assert cells[heads.index("n")] == "-" and cells[heads.index("success")] == "unsupported: no"
    html = render(report, ReportFormat.html)
    assert '<td class="l">-</td><td class="l" colspan=' in html and ">unsupported: no</td>" in html


def test_diff_matches_a_detect_eval_report_against_an_audits_detection_cell():
    """`detect eval` names its one cell `detect-eval`, an audit `m0/detect/detect/-/none`: their
    rows were listed as two removed/added cells instead of compared."""
    audit = _report(copy.deepcopy(ROWS))
    audit["detection"] = [_detection(DET)]
    evaluated = copy.deepcopy(audit)
    evaluated["detection"][0]["cell_id"] = "detect-eval"
    evaluated["detection"][0]["rows"][0]["auroc"] = 0.9
    det = [c for c in diff_reports(audit, evaluated) if c.metric == "auroc"]
    assert len(det) == 4 and all(c.old is not None and c.new is not None for c in det)
    assert [(c.cell, c.old, c.new) for c in regressions(det, 0.0)] == [("detect-eval fgsm/bim-linf", 0.97, 0.9)]


def test_diff_compares_clever_rows_and_skips_a_changed_radius():
    """QA 14: `report diff` ignored the CLEVER section (an L2 mean falling from 0.905 to 0.3 read
    as "no change")."""
    def clever(mean, radius=5.0, batches=50):
        rows = [{"defences": [], "norm": "l2", "target": "untargeted", "radius": radius, "status": "ok",
                 "n": 8, "mean": mean, "median": mean},
                {"defences": ["ss"], "norm": "l2", "target": "untargeted", "radius": radius, "status": "ok",
                 "n": 8, "mean": 1.0, "median": 1.0}]
        return {"config": {"nb_batches": batches, "batch_size": 100, "weibull_shapes": [1.0]}, "rows": rows}

    old, new = _report(copy.deepcopy(ROWS)), _report(copy.deepcopy(ROWS))
    old["clever"], new["clever"] = clever(0.905), clever(0.3)
    worse = {(c.cell, c.metric, c.old, c.new) for c in regressions(diff_reports(old, new), 0.0)}
    assert worse == {("clever/l2/untargeted/none", "clever_mean", 0.905, 0.3),
                     ("clever/l2/untargeted/none", "clever_median", 0.905, 0.3)}
    assert all(c.verdict(0.0) == "same" for c in diff_reports(old, new) if c.cell == "clever/l2/untargeted/ss")
    for changed in (clever(0.3, radius=0.3), clever(0.3, batches=20)):
        new["clever"] = changed
        changes = [c for c in diff_reports(old, new) if c.cell.startswith("clever/")]
        assert not regressions(changes, 0.0) and {c.metric for c in changes} == {"setup"}
