"""Progress lines for logs (stderr not a terminal): timing, ETA, heartbeat, the env setting, the CLI."""

from __future__ import annotations

import io
import json
import time

import pytest
from rich.console import Console

from robaudit.errors import ConfigError
from robaudit.progress_log import LogProgress, duration, interval_from_env

from .conftest import robaudit_cli


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _log(interval: float, clock: FakeClock) -> tuple[LogProgress, io.StringIO]:
    buf = io.StringIO()
    return LogProgress(Console(file=buf, width=300), interval=interval, clock=clock), buf


def test_a_line_at_most_every_interval_with_counts_and_eta() -> None:
    clock = FakeClock()
    prog, buf = _log(10, clock)
    overall = prog.add_task("audit", total=4)
    cell = prog.add_task("  m0/attack/pgd/untargeted/none", total=5)
    clock.now = 5
    prog.advance(cell)
    assert buf.getvalue() == ""  # within the interval: nothing
    clock.now = 12
    prog.advance(cell)  # 2 of 5 in 12 s: 18 s left
    assert buf.getvalue() == "progress 12s: audit 0/4; m0/attack/pgd/untargeted/none 2/5 (eta 18s)\n"
    clock.now = 15
    prog.advance(overall)
    assert buf.getvalue().count("\n") == 1  # 3 s since the last line
    prog.remove_task(cell)
    clock.now = 75
    prog.update(overall, description="audit (2 workers)")
    assert buf.getvalue().splitlines()[-1] == "progress 1m15s: audit (2 workers) 1/4 (eta 3m45s)"


def test_a_resumed_task_counts_only_new_work_in_its_eta() -> None:
    clock = FakeClock()
    prog, buf = _log(0, clock)
    task = prog.add_task("audit", total=10, completed=4)  # 4 cells done before the resume
    clock.now = 10
    prog.advance(task, 2)  # 2 cells in 10 s, 4 left: 20 s
    assert buf.getvalue() == "progress 10s: audit 6/10 (eta 20s)\n"
    prog.update(task, completed=10)
    assert buf.getvalue().splitlines()[-1] == "progress 10s: audit 10/10"  # done: no eta


def test_a_count_of_unlike_steps_has_no_eta_and_unknown_totals_say_running() -> None:
    clock = FakeClock()
    prog, buf = _log(0, clock)
    cells = prog.add_task("attack cells", total=4, eta=False)
    cell = prog.add_task("  cw-l2 / untargeted", total=None)
    clock.now = 10
    prog.advance(cells)
    assert buf.getvalue() == "progress 10s: attack cells 1/4; cw-l2 / untargeted (running)\n"
    prog.update(cell, total=50, completed=10)
    assert buf.getvalue().splitlines()[-1] == "progress 10s: attack cells 1/4; cw-l2 / untargeted 10/50 (eta 40s)"


def test_no_tasks_no_line_and_unknown_tasks_are_ignored() -> None:
    clock = FakeClock()
    prog, buf = _log(0, clock)
    prog.advance(7)
    prog.remove_task(7)
    assert buf.getvalue() == ""


def test_the_heartbeat_prints_while_a_long_step_runs() -> None:
    """No update for a while (one long chunk): the background thread still prints."""
    buf = io.StringIO()
    with LogProgress(Console(file=buf, width=300), interval=0.05) as prog:
        prog.add_task("cw-l2 / untargeted", total=3)
        time.sleep(1.3)  # the thread wakes at most every second
    lines = buf.getvalue().splitlines()
    assert lines and all(line.startswith("progress ") and line.endswith("cw-l2 / untargeted 0/3") for line in lines)
    n = len(lines)
    time.sleep(0.2)
    assert len(buf.getvalue().splitlines()) == n  # stopped on exit


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (42.4, "42s"), (75.2, "1m15s"), (3700, "1h01m40s")])
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_interval_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROBAUDIT_PROGRESS_SECONDS", raising=False)
    assert interval_from_env() == 30.0
    monkeypatch.setenv("ROBAUDIT_PROGRESS_SECONDS", "2.5")
    assert interval_from_env() == 2.5
    for bad in ("x", "-1", "inf", "nan"):
        monkeypatch.setenv("ROBAUDIT_PROGRESS_SECONDS", bad)
        with pytest.raises(ConfigError, match="ROBAUDIT_PROGRESS_SECONDS"):
            interval_from_env()


def test_cli_in_a_log_prints_progress_lines_and_q_silences_them(tmp_path) -> None:
    args = ("attack", "demo:mnist", "--data", "demo:mnist", "--attack", "fgsm,pgd", "-n", "20",
            "--out", str(tmp_path / "r.json"), "--format", "json")
    proc = robaudit_cli(*args, env={"ROBAUDIT_PROGRESS_SECONDS": "0"})
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("progress ")]
    n = json.loads(proc.stdout)["data"]["n_evaluated"]
    # the cell's inputs after each batch, and the cells done (no ETA: FGSM's time says nothing of PGD's)
    assert any(ln.endswith(f"attack cells 1/2; pgd / untargeted {n}/{n}") for ln in lines), proc.stderr
    assert lines[-1].endswith("attack cells 2/2"), proc.stderr
    quiet = robaudit_cli(*args, "-q", env={"ROBAUDIT_PROGRESS_SECONDS": "0"})
    assert quiet.returncode == 0 and "progress" not in quiet.stderr, quiet.stderr
    bad = robaudit_cli(*args, env={"ROBAUDIT_PROGRESS_SECONDS": "soon"})
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "ROBAUDIT_PROGRESS_SECONDS must be a number of seconds" in bad.stderr


def test_detect_eval_in_a_log_names_its_steps(tmp_path) -> None:
    """QA 12: `detect eval` printed only 'evaluating (running)' for minutes; it now names the step it
    is on and how many of its steps are done (no ETA: crafting C&W says nothing of the costs)."""
    proc = robaudit_cli("detect", "eval", "demo:mnist", "--data", "demo:mnist", "-n", "16", "--attack", "fgsm",
                        "--out", str(tmp_path / "e.json"), env={"ROBAUDIT_PROGRESS_SECONDS": "0"})
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("progress ")]
    assert any(": evaluating: crafting fgsm 1/3" in ln for ln in lines), proc.stderr
    assert lines[-1].endswith(" inputs 3/3") and "eta" not in proc.stderr, proc.stderr
