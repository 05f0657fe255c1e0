"""End-to-end CLI tests through the real entry point: exit codes, one-line errors, schema-valid reports."""

import json

import numpy as np
import pytest

from robaudit.report.schema import validation_errors

from .conftest import DEMO, robaudit_cli

pytestmark = pytest.mark.skipif(not (DEMO / "mnist_cnn.pt").exists(), reason="bundled demo model missing")


def _one_line_error(proc):
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines, "expected an error message"
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("robaudit: error: "), proc.stderr
    return lines[0]


def test_attack_demo_writes_valid_report(tmp_path):
    out = tmp_path / "r.json"
    proc = robaudit_cli("attack", "demo:mnist", "--data", "demo:mnist", "--attack", "fgsm,pgd,deepfool",
                        "--target", "all", "--eps", "0.3", "-n", "40", "--seed", "3", "-q", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert validation_errors(report) == []
    rows = {(r["attack"], r["target"]): r for r in report["results"]}
    assert len(rows) == 9
    assert rows[("deepfool", "least-likely")]["status"] == "unsupported"
    pgd = rows[("pgd", "untargeted")]
    assert pgd["status"] == "ok" and pgd["success_rate"] >= 0.95
    assert pgd["linf_max"] <= 0.3 + 1e-6
    assert report["data"]["n_selected"] == 40
    assert report["data"]["n_evaluated"] + report["data"]["n_dropped_misclassified"] == 40
    assert report["model"]["format"] == "torchscript" and report["model"]["classes"] == 10
    assert "pgd" in proc.stdout  # the table


def test_same_seed_same_report(tmp_path):
    args = ["attack", "demo:mnist", "--data", "demo:mnist", "--attack", "pgd", "--eps", "0.1", "-n", "24", "-q"]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert robaudit_cli(*args, "--out", str(a)).returncode == 0
    assert robaudit_cli(*args, "--out", str(b)).returncode == 0
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    for key in ("success_rate", "l2_mean", "linf_max", "n_success"):
        assert ra["results"][0][key] == rb["results"][0][key]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--attack", "nope"], "unknown attack 'nope'"),
        (["--target", "sideways"], "unknown target 'sideways'"),
        (["--target", "all,untargeted"], "'all' stands alone"),
        (["--batch-size", "0"], "batch"),
        (["--eps", "-1"], "eps"),
        (["--norm", "l7"], "unknown norm"),
        (["--param", "pgd.nonsense=3"], "unknown parameter 'nonsense' for pgd"),
        (["--param", "pgd.stepz=3"], "unknown parameter 'stepz' for pgd (known: "),
        (["--param", "pgd.stepz=3"], "; did you mean 'steps'?"),
        (["--attack", "fgsm", "--param", "fgsm.epss=1"], "unknown parameter 'epss' for fgsm (known: none); eps is "
                                                         "not a parameter: set it with --eps"),
        (["--param", "pgd-steps"], "ATTACK.NAME=VALUE"),
        (["--param", "apgd.n_iter=abc"], "--param names apgd, which is not in --attack (fgsm, pgd)"),
        (["--seed", "100000000000000"], "less than or equal to 2147483647"),
        (["--out", "{tmp}/r.json/x.json"], "r.json is a file, not a folder"),
        # Click's own usage errors were four lines (usage, "Try ...", blank, "Error: ...")
        (["--bogus"], "No such option: --bogus"),
        (["-n", "abc"], "Invalid value for '-n' / '--num'"),
        (["--data"], "Option '--data' requires an argument."),
        # every cell unsupported: exit 0 with no result read as a pass to a gate
        (["--attack", "cw-l2", "--norm", "linf"], "nothing to run: cw-l2 does not support norm linf (supported: l2)"),
        (["--attack", "deepfool", "--target", "next-class"], "nothing to run: deepfool does not support next-class"),
    ],
)
def test_config_errors_exit_2_with_one_line(args, needle, tmp_path):
    if "{tmp}/r.json/x.json" in args:
        (tmp_path / "r.json").write_text("{}")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = robaudit_cli("attack", "demo:mnist", "--data", "demo:mnist", "-n", "5", "-q",
                        "--out", str(tmp_path / "r.json"), *args)
    assert proc.returncode == 2, proc.stderr
    assert needle in _one_line_error(proc)
    assert not (tmp_path / "r.json").exists() or (tmp_path / "r.json").read_text() == "{}"


def test_errors_stay_one_line_in_a_pipe(tmp_path):
    """Off a terminal (CI logs) with no COLUMNS, a long message is not wrapped at 80 columns."""
    import os
    import subprocess
    import sys

    data = tmp_path / "neg.npz"
    np.savez_compressed(data, x=np.zeros((4, 28, 28, 1), np.uint8), y=np.array([0, 1, -1, 3]))
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run([sys.executable, "-m", "robaudit", "attack", "demo:mnist", "--data", str(data), "-q",
                           "--out", str(tmp_path / "r.json")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) > 80 and "negative" in lines[0], proc.stderr


def test_an_error_after_the_progress_bars_started_is_one_line_without_q(tmp_path):
    """Without -q and off a terminal, the progress display left a blank line before the message."""
    proc = robaudit_cli("attack", "demo:mnist", "--data", "demo:mnist", "-n", "5", "--attack", "cw-l2",
                        "--param", "cw-l2.max_iter=0", "--out", str(tmp_path / "r.json"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("robaudit: error: cw-l2 needs") and proc.stderr.count("\n") == 1, repr(proc.stderr)


def test_labels_of_one_class_only_are_fine(tmp_path):
    """The number of classes comes from the model; a data set of zeros alone is not 'one class'."""
    from robaudit.data import load_dataset

    mnist = load_dataset(str(DEMO / "mnist_demo.npz"))
    keep = mnist.y == 0
    data = tmp_path / "zeros.npz"
    np.savez_compressed(data, x=mnist.x[keep][:8], y=mnist.y[keep][:8])
    out = tmp_path / "r.json"
    proc = robaudit_cli("attack", "demo:mnist", "--data", str(data), "--attack", "fgsm", "--eps", "0.2", "-q",
                        "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["model"]["classes"] == 10 and report["data"]["n_selected"] == 8


def test_missing_and_bad_files_exit_2(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a model at all")
    proc = robaudit_cli("attack", str(bad), "--data", "demo:mnist", "-q", "--out", str(tmp_path / "r.json"))
    assert proc.returncode == 2
    _one_line_error(proc)
    proc = robaudit_cli("attack", "demo:mnist", "--data", str(tmp_path / "absent.npz"), "-q")
    assert proc.returncode == 2
    _one_line_error(proc)


def test_mismatched_labels_exit_2(tmp_path):
    data = tmp_path / "d.npz"
    np.savez_compressed(data, x=np.zeros((4, 28, 28, 1), np.uint8), y=np.array([0, 1, 2, 42]))
    proc = robaudit_cli("attack", "demo:mnist", "--data", str(data), "-q", "--out", str(tmp_path / "r.json"))
    assert proc.returncode == 2
    assert "42" in _one_line_error(proc)


def test_nothing_correct_is_an_error_not_robust(tmp_path):
    import torch

    model = torch.jit.load(str(DEMO / "mnist_cnn.pt")).eval()
    x = np.zeros((6, 28, 28, 1), np.uint8)
    with torch.no_grad():
        pred = int(model(torch.zeros(1, 1, 28, 28)).argmax())
    data = tmp_path / "d.npz"
    np.savez_compressed(data, x=x, y=np.full(6, (pred + 1) % 10))  # every label wrong
    proc = robaudit_cli("attack", "demo:mnist", "--data", str(data), "-q", "--out", str(tmp_path / "r.json"))
    assert proc.returncode == 2
    assert "none of the" in _one_line_error(proc)
    assert not (tmp_path / "r.json").exists()


def test_report_renders_markdown(tmp_path):
    out = tmp_path / "r.json"
    assert robaudit_cli("attack", "demo:mnist", "--data", "demo:mnist", "--attack", "fgsm", "--eps", "0.2",
                        "-n", "16", "-q", "--out", str(out)).returncode == 0
    md = tmp_path / "r.md"
    proc = robaudit_cli("report", str(out), "--format", "markdown", "--out", str(md))
    assert proc.returncode == 0, proc.stderr
    text = md.read_text()
    assert "| fgsm | untargeted | linf<=0.2 |" in text
    proc = robaudit_cli("report", str(tmp_path / "missing.json"))
    assert proc.returncode == 2


def test_version_and_attack_list():
    proc = robaudit_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("robaudit ")
    proc = robaudit_cli("attacks")
    assert proc.returncode == 0
    for name in ("cw-l2", "hopskipjump", "universal", "shadow"):
        assert name in proc.stdout
    proc = robaudit_cli("profiles")  # the shipped profiles, with what each runs
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("│ ") and line.split("│")[1].strip()}
    assert {"quick", "ci-gate", "defend-study-mnist", "a2d-mnist"} <= set(rows)
    assert rows["quick"][1:] == ["fgsm, pgd, cw-l2", "untargeted", "1", "200", "3", "0"]
    assert rows["defend-study-mnist"][5] == "225" and rows["a2d-mnist"][5] == "0 +detect"


def test_black_box_onnx_runs_only_query_attacks(tmp_path):
    """An ONNX graph onnx2torch cannot convert is audited through onnxruntime, query attacks only."""
    import onnx
    from onnx import helper

    model = onnx.load(str(DEMO / "mnist_cnn.onnx"))
    out = model.graph.output[0]
    raw = out.name + "_pre_shrink"
    for node in model.graph.node:
        node.output[:] = [raw if o == out.name else o for o in node.output]
    model.graph.node.append(helper.make_node("Shrink", [raw], [out.name], lambd=0.0, bias=0.0))
    path = tmp_path / "bb.onnx"
    onnx.save(model, str(path))
    report_path = tmp_path / "r.json"
    proc = robaudit_cli("attack", str(path), "--data", "demo:mnist", "--attack", "fgsm,hopskipjump", "-n", "6",
                        "--param", "hopskipjump.max_iter=2", "-q", "--out", str(report_path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(report_path.read_text())
    assert validation_errors(report) == []
    assert report["model"]["white_box"] is False
    assert any("only query-based attacks" in w for w in report["warnings"])
    rows = {r["attack"]: r for r in report["results"]}
    assert rows["fgsm"]["status"] == "skipped" and "black-box" in rows["fgsm"]["reason"]
    assert rows["hopskipjump"]["status"] == "ok" and rows["hopskipjump"]["backward_passes_per_image"] == 0
    assert rows["hopskipjump"]["success_rate"] > 0.5


def test_the_stop_message_says_what_each_command_kept():
    """An interrupted `attack` was told to continue with --resume, which only audits have."""
    from robaudit.cli import _stopped_hint

    assert "marked partial" in _stopped_hint(["robaudit", "--debug", "attack", "m.pt"])
    assert "--resume" in _stopped_hint(["robaudit", "audit", "m.pt"]) and "partial" not in \
        _stopped_hint(["robaudit", "defend", "eval"])


def test_a_warning_is_logged_once_and_too_large_n_is_one(tmp_path):
    """`-n` above the data's size used all of it without a word; and off a terminal (a CI log) every
    warning of `attack` was printed twice (live, then again under the table)."""
    proc = robaudit_cli("attack", "demo:mnist", "--data", "demo:mnist", "-n", "5000", "--attack", "fgsm", "-q",
                        "--out", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    text = "5000 inputs were asked for (-n or samples) but the data holds 1000: all of them were used"
    assert proc.stderr.count(text) == 1, proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["warnings"] == [text]


def test_attack_prints_the_evaluation_warnings_that_come_at_the_end(tmp_path):
    """QA: `attack` printed the report's warnings only on a terminal, and those computed from the whole
    evaluation (not during a cell) never: a shell or CI user did not see them."""
    proc = robaudit_cli("attack", "demo:mnist", "--data", "demo:mnist", "--attack", "hopskipjump", "--target",
                        "next-class", "-n", "5", "-p", "hopskipjump.max_iter=2", "--out", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    (w,) = [w for w in report["warnings"] if w.startswith("unattacked inputs")]
    assert proc.stderr.count(f"warning: {w}") == 1 and "attack more inputs (-n)" in w, proc.stderr


@pytest.mark.parametrize("command", [["clever"], ["detect", "fit"], ["detect", "eval"], ["detect", "score"]])
def test_an_unwritable_out_is_refused_before_the_work(command, tmp_path):
    """clever and detect checked --out only when writing it, after all the work (a paper-size CLEVER
    run lost). A model that cannot load would fail the work: the --out error has to come first."""
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a model at all")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    proc = robaudit_cli(*command, str(bad), "--data", "demo:mnist", "-q", "--out", str(folder))
    assert proc.returncode == 2
    assert "it is a folder; give a file name for --out" in _one_line_error(proc)


def test_report_refuses_to_overwrite_the_report_it_reads(tmp_path):
    report = tmp_path / "r.json"
    proc = robaudit_cli("attack", "demo:mnist", "--data", "demo:mnist", "-n", "8", "--attack", "fgsm", "-q",
                        "--out", str(report))
    assert proc.returncode == 0, proc.stderr
    before = report.read_bytes()
    for args in (["report", str(report)], ["report", "diff", str(report), str(report)]):
        proc = robaudit_cli(*args, "--format", "markdown", "--out", str(report))
        assert proc.returncode == 2 and "is the report being read" in _one_line_error(proc)
    assert report.read_bytes() == before
