"""`robaudit audit` end to end: reports, gates and exit codes, journal, lock, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robaudit.engine.audit import strip_timing
from robaudit.engine.journal import JOURNAL_NAME, Journal
from robaudit.report.schema import validation_errors

from .conftest import DEMO

EXE = Path(sys.executable).parent / "robaudit"
ENV = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}  # 2 threads on 2 busy cores: 10x slower


def robaudit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=600, env=ENV)

pytestmark = pytest.mark.skipif(not (DEMO / "mnist_cnn.pt").exists(), reason="bundled demo model missing")

PROFILE = """\
seed: 5
samples: 24
batch_size: 8
examples: 3
attacks:
  fgsm: {eps: 0.1}
  pgd: {eps: 0.1, steps: 10}
  cw: {attack: cw-l2, max_iter: 10, binary_search_steps: 3}
  bim: {eps: 0.1, steps: 10}
targets: [untargeted]
gates:
  - clean_accuracy >= 0.9
  - fgsm untargeted success_rate <= 0.05
"""


@pytest.fixture()
def profile(baseline) -> str:
    """The baseline's profile file (its path is part of the report, so runs compared must share it)."""
    return str(baseline[1].parent / "p.yaml")


def _audit(profile: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return robaudit_cli("audit", "demo:mnist", "--data", "demo:mnist", "--profile", profile, "--out", str(out),
                        "-q", *extra)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("baseline")
    path = tmp / "p.yaml"
    path.write_text(PROFILE)
    proc = _audit(str(path), tmp / "out", "--format", "markdown")
    return proc, tmp / "out"


def test_gate_failure_exits_1_after_writing_everything(baseline):
    proc, out = baseline
    assert proc.returncode == 1, proc.stderr
    assert "gate failed: fgsm untargeted success_rate <= 0.05: success_rate = " in proc.stderr
    assert "(needs <= 0.05)" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert validation_errors(report) == []
    assert report["schema_version"] == "1.3" and report["kind"] == "audit"
    assert [g["passed"] for g in report["gates"]] == [True, False]
    assert [r["cell_id"] for r in report["results"]] == [f"m0/attack/{a}/untargeted/none"
                                                         for a in ("fgsm", "pgd", "cw", "bim")]
    cw = report["results"][2]
    assert cw["attack"] == "cw-l2" and cw["label"] == "cw" and cw["success_rate"] > 0.5
    assert len(report["examples"]) == 4 and all(len(e["samples"]) == 3 for e in report["examples"])
    summary = (out / "summary.md").read_text()
    assert "**Gates: 1 of 2 FAILED**" in summary and summary in proc.stdout


def test_same_folder_without_resume_is_refused(baseline, profile):
    _, out = baseline
    proc = _audit(profile, out)
    assert proc.returncode == 2 and "pass --resume" in proc.stderr


def test_resume_refuses_changed_seed_and_data(baseline, tmp_path):
    _, out = baseline
    changed = tmp_path / "seed.yaml"
    changed.write_text(PROFILE.replace("seed: 5", "seed: 6"))
    proc = _audit(str(changed), out, "--resume")
    assert proc.returncode == 2 and "the seed changed (5 -> 6)" in proc.stderr
    changed.write_text(PROFILE.replace("steps: 10", "steps: 11"))
    proc = _audit(str(changed), out, "--resume")
    assert proc.returncode == 2 and "the profile changed (name 'p' -> 'seed', attacks)" in proc.stderr, proc.stderr
    assert "defaults changed" not in proc.stderr  # the profile's change explains the parameters' change
    proc = _audit(str(out.parent / "p.yaml"), out, "--resume", "-n", "5")  # the baseline's own profile file
    assert proc.returncode == 2 and "the profile changed (samples 24 -> 5)" in proc.stderr, proc.stderr
    proc = robaudit_cli("audit", "demo:mnist-onnx", "--data", "demo:mnist", "--profile", str(changed),
                        "--out", str(out), "--resume", "-q")
    assert proc.returncode == 2 and "model 0 (demo:mnist-onnx) changed" in proc.stderr


def test_resume_refuses_a_journal_written_under_other_attack_defaults(baseline, profile, tmp_path):
    """A journal from an older robaudit (no resolved-parameter digest) or with other defaults must
    not be continued: its finished rows would mix with rows computed under the new defaults."""
    import shutil

    _, out = baseline
    for mutate in ("drop", "change"):
        copy = tmp_path / mutate
        shutil.copytree(out, copy)
        (copy / "report.json").unlink()
        journal = copy / "journal.jsonl"
        lines = journal.read_text().splitlines()
        header = json.loads(lines[0])
        assert len(header["fingerprint"]["attack_params"]) == 64
        if mutate == "drop":
            del header["fingerprint"]["attack_params"]
        else:
            header["fingerprint"]["attack_params"] = "0" * 64
        journal.write_text("\n".join([json.dumps(header), *lines[1:3]]) + "\n")
        proc = _audit(profile, copy, "--resume")
        assert proc.returncode == 2, proc.stderr
        assert "the attacks' parameters with robaudit's defaults filled in differ" in proc.stderr


def test_second_run_on_a_locked_folder_is_refused(tmp_path, profile):
    holder = Journal(tmp_path / "out")
    holder.lock()
    try:
        proc = _audit(profile, tmp_path / "out")
    finally:
        holder.close()
    assert proc.returncode == 2 and "another robaudit audit is running" in proc.stderr
    assert f"(pid {os.getpid()})" in proc.stderr


def test_resume_after_torn_write_matches(baseline, tmp_path, profile):
    _, out = baseline
    full = (out / JOURNAL_NAME).read_bytes()
    lines = full.splitlines(keepends=True)
    cut = tmp_path / "cut"
    cut.mkdir()
    # keep the header and two records, then half a line, as if killed mid-write
    (cut / JOURNAL_NAME).write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    proc = _audit(profile, cut, "--resume")
    assert proc.returncode == 1, proc.stderr
    a = strip_timing(json.loads((out / "report.json").read_text()))
    b = strip_timing(json.loads((cut / "report.json").read_text()))
    assert a == b


def test_resume_refuses_a_damaged_journal_instead_of_cutting_finished_records(baseline, tmp_path, profile):
    _, out = baseline
    lines = (out / JOURNAL_NAME).read_bytes().splitlines(keepends=True)
    for name, body, needle in (
        ("middle", b"".join(lines[:2]) + b"\x00garbage\n" + b"".join(lines[2:]), "line 3 is not a journal record"),
        ("garbage", b"not a journal at all\nstill not\n", "line 1 is not a journal record"),
        ("headless", b"".join(lines[1:3]), "does not start with a robaudit journal header"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / JOURNAL_NAME).write_bytes(body)
        proc = _audit(profile, folder, "--resume")
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
        assert (folder / JOURNAL_NAME).read_bytes() == body  # left as it was, for the user to inspect
        assert not (folder / "report.json").exists()


def test_sigkill_midway_then_resume_gives_the_same_report(baseline, tmp_path, profile):
    _, reference = baseline
    out = tmp_path / "killed"
    cmd = [str(EXE), "audit", "demo:mnist", "--data", "demo:mnist", "--profile", profile, "--out", str(out), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    journal = out / JOURNAL_NAME
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and b'"type":"cell"' in journal.read_bytes():
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the audit finished before it could be killed"
    assert not (out / "report.json").exists()
    text = journal.read_text()
    n_cells = text.count('"type":"cell"')
    assert 1 <= n_cells < 4
    resumed = _audit(profile, out, "--resume")
    assert resumed.returncode == 1, resumed.stderr  # the same gate fails
    a = strip_timing(json.loads((reference / "report.json").read_text()))
    b = strip_timing(json.loads((out / "report.json").read_text()))
    assert a == b
    # the resumed run ran only what was missing
    after = (out / JOURNAL_NAME).read_text()
    assert after.count('"type":"cell"') == 4 and after.count('"type":"header"') == 1


def test_workers_give_the_same_report_and_resume_a_serial_journal(baseline, tmp_path, profile):
    _, reference = baseline
    ref = strip_timing(json.loads((reference / "report.json").read_text()))
    out = tmp_path / "w2"
    proc = _audit(profile, out, "--workers", "2")
    assert proc.returncode == 1, proc.stderr  # the same gate fails
    assert strip_timing(json.loads((out / "report.json").read_text())) == ref
    journal = (out / JOURNAL_NAME).read_text()
    assert journal.count('"type":"cell"') == 4 and journal.count('"type":"header"') == 1
    # a journal a single process left half done resumes with workers, running only what is missing
    lines = (reference / JOURNAL_NAME).read_bytes().splitlines(keepends=True)
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / JOURNAL_NAME).write_bytes(b"".join(lines[:4]))
    resumed = _audit(profile, cut, "--resume", "--workers", "2")
    assert resumed.returncode == 1, resumed.stderr
    assert strip_timing(json.loads((cut / "report.json").read_text())) == ref
    after = (cut / JOURNAL_NAME).read_text()
    assert after.count('"type":"cell"') == 4 and after.count('"type":"header"') == 1
    bad = _audit(profile, tmp_path / "w0", "--workers", "0")
    assert bad.returncode == 2 and "--workers must be between 1 and 64" in bad.stderr
    assert bad.stderr.strip().count("\n") == 0


def test_a_worker_error_reaches_the_parent_as_the_same_error(tmp_path):
    from robaudit.config.profile import parse_profile
    from robaudit.engine.cells import expand
    from robaudit.engine.parallel import plan_tasks, run_cells_parallel, threads_per_worker
    from robaudit.engine.session import InputOptions
    from robaudit.errors import ModelLoadError

    prof = parse_profile({"attacks": {"fgsm": {}}, "targets": ["untargeted", "next-class"],
                          "defences": [[], ["ss"], ["jpeg"]], "threat_models": "both"}, source="t.yaml")
    cells = expand(prof, 1)
    # transfer cells of one attack and target go to one worker together, the rest one by one
    tasks = plan_tasks(cells, {})
    assert len(tasks) == 2 + 2 * 2 + 2 and sorted(len(t) for t in tasks)[-2:] == [2, 2]
    assert threads_per_worker(2, limit=1) == 1 and threads_per_worker(1) >= 1

    class Sink:
        def __getattr__(self, name):  # the journal and the observer: nothing must reach them
            raise AssertionError(f"unexpected call {name}")

    missing = InputOptions(model=str(tmp_path / "missing.pt"), data="demo:mnist", device="cpu")
    with pytest.raises(ModelLoadError, match="missing.pt"):
        run_cells_parallel(missing, prof, cells[:2], {}, 2, Sink(), Sink(), lambda *a: None)


DETECT_PROFILE = """\
seed: 3
samples: 16
batch_size: 8
examples: 0
attacks:
  fgsm: {eps: 0.1}
detect:
  costs: [bim-linf]
  attacks: {fgsm: {}, bim: {steps: 50}, deepfool: {}}
  max_iter: 100
gates:
  - detect auroc >= 0.5
  - detect attack=fgsm cost=bim-linf auroc > 1.0
"""


@pytest.fixture(scope="module")
def detect_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("detect")
    path = tmp / "d.yaml"
    path.write_text(DETECT_PROFILE)
    start = time.monotonic()
    proc = _audit(str(path), tmp / "out", "--format", "markdown")
    return proc, tmp / "out", str(path), time.monotonic() - start


def test_audit_with_detect_section_reports_auroc_rows_and_gates(detect_run):
    proc, out, _, seconds = detect_run
    assert proc.returncode == 1, proc.stderr  # the impossible gate fails, after everything is written
    assert "gate failed: detect attack=fgsm cost=bim-linf auroc > 1.0: auroc = 1 at m0/detect/detect/-/none " \
           "fgsm/bim-linf (needs > 1)" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert validation_errors(report) == []
    assert [r["cell_id"] for r in report["results"]] == ["m0/attack/fgsm/untargeted/none"]
    (det,) = report["detection"]
    assert det["cell_id"] == "m0/detect/detect/-/none" and det["status"] == "ok"
    assert det["n_benign"] == report["data"]["n_evaluated"] > 8
    assert [(r["attack"], r["cost"]) for r in det["rows"]] == [("fgsm", "bim-linf"), ("bim", "bim-linf"),
                                                               ("deepfool", "bim-linf")]
    for row in det["rows"]:
        assert row["status"] == "ok" and row["n_adversarial"] > 8 and row["auroc"] >= 0.9
        assert 0 <= row["fpr"] <= 1 and 0 <= row["detection_rate"] <= 1
    assert len(det["roc"]) == 3 and all(c["fpr"][0] == 0 and c["tpr"][-1] == 1 for c in det["roc"])
    assert [g["passed"] for g in report["gates"]] == [True, False]
    assert "**Detection** `m0/detect/detect/-/none`" in (out / "summary.md").read_text()
    journal = (out / JOURNAL_NAME).read_text()
    assert journal.count('"cell":"m0/detect/detect/-/none"') == 3  # two chunks and the finished cell
    assert seconds < 40


def test_detect_cell_resumes_from_its_journaled_chunks(detect_run, tmp_path):
    _, out, profile, _ = detect_run
    lines = (out / JOURNAL_NAME).read_bytes().splitlines(keepends=True)
    first_detect_chunk = next(i for i, ln in enumerate(lines) if b'"type":"chunk","cell":"m0/detect' in ln)
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / JOURNAL_NAME).write_bytes(b"".join(lines[: first_detect_chunk + 1]))
    proc = _audit(profile, cut, "--resume")
    assert proc.returncode == 1, proc.stderr
    a = strip_timing(json.loads((out / "report.json").read_text()))
    b = strip_timing(json.loads((cut / "report.json").read_text()))
    assert a == b


def test_json_summary_of_two_models_is_one_json_document(tmp_path):
    """``--format json`` printed one document per model back to back, which no JSON reader accepts."""
    path = tmp_path / "p.yaml"
    path.write_text("samples: 8\nattacks:\n  fgsm: {eps: 0.1}\ntargets: [untargeted]\n")
    proc = robaudit_cli("audit", "demo:mnist", str(DEMO / "mnist_cnn.onnx"), "--data", "demo:mnist", "--profile",
                        str(path), "--out", str(tmp_path / "out"), "-q", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    reports = json.loads(proc.stdout)
    assert isinstance(reports, list) and len(reports) == 2
    assert [r["model"]["format"] for r in reports] == ["torchscript", "onnx"]


def test_a_fresh_audit_refuses_outputs_it_could_not_write_or_did_not_write(tmp_path):
    """QA 14: an audit folder holding someone else's report.json was overwritten without a word, and
    a folder standing where summary.md goes was found only after every cell had run."""
    from robaudit.config import parse_profile
    from robaudit.engine.audit import AuditJob, run_audit
    from robaudit.engine.session import InputOptions
    from robaudit.errors import ConfigError

    profile = parse_profile({"samples": 4, "batch_size": 4, "examples": 0, "attacks": {"fgsm": {"eps": 0.1}}},
                            source="test")
    inputs = InputOptions(model="", data="demo:mnist", device="cpu")
    out = tmp_path / "a"
    out.mkdir()
    (out / "report.json").write_text('{"important": "not robaudit"}')
    with pytest.raises(ConfigError, match="is not a robaudit report: the audit would replace it"):
        run_audit(AuditJob(models=("demo:mnist",), inputs=inputs, profile=profile, out=out), ["robaudit"])
    assert (out / "report.json").read_text() == '{"important": "not robaudit"}'
    (out / "report.json").unlink()
    (out / "summary.md").mkdir()
    with pytest.raises(ConfigError, match="is a folder, where the audit writes its summary.md"):
        run_audit(AuditJob(models=("demo:mnist",), inputs=inputs, profile=profile, out=out), ["robaudit"])
    (out / "summary.md").rmdir()
    (out / "summary.md").write_text("### robaudit: `old run`\n")  # robaudit's own: replaced
    (_, rep), = run_audit(AuditJob(models=("demo:mnist",), inputs=inputs, profile=profile, out=out),
                          ["robaudit"]).reports
    assert rep["results"]
