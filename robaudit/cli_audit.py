"""``robaudit audit`` and ``robaudit report`` (table, Markdown, HTML, JUnit, JSON, diff, gates).

Registered in :mod:`robaudit.cli` with ``register(app)``. Exit codes: 0 every gate passes, 1 a
gate failed (each failure printed with metric, threshold and value; reports are written first),
2 usage/input/config error, 3 internal failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Collection
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from robaudit.consoles import echo, stderr_console, stdout_console
from robaudit.data.sampling import MAX_SEED
from robaudit.errors import EXIT_GATE, ConfigError

_out = stdout_console()
_err = stderr_console()


class ReportFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    html = "html"
    junit = "junit"
    json = "json"


class SummaryFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"
    none = "none"


def render(report: dict[str, Any], fmt: ReportFormat, width: int = 160, shown: Collection[str] = ()) -> str:
    """The report as text in ``fmt`` (exhaustive over :class:`ReportFormat`). ``shown``: warnings the
    user has already seen on the same terminal; the table counts them instead of repeating them."""
    from robaudit.report.gates import gates_markdown
    from robaudit.report.render import (defences_markdown, defences_table, detection_markdown, detection_table,
                                        results_markdown, results_table, results_title, split_warnings)

    if fmt is ReportFormat.json:
        from robaudit.report.writer import _clean

        return json.dumps(_clean(report), indent=2) + "\n"
    if fmt is ReportFormat.markdown:
        return (results_markdown(report) + defences_markdown(report) + detection_markdown(report)
                + gates_markdown(report.get("gates") or []))
    if fmt is ReportFormat.html:
        from robaudit.report.html import report_html

        return report_html(report)
    if fmt is ReportFormat.junit:
        from robaudit.report.junit import report_junit

        return report_junit(report)
    if fmt is ReportFormat.table:
        console = Console(record=True, width=width, file=io.StringIO())
        partial, warnings = split_warnings(report)
        if partial:  # above the table it qualifies
            console.print(f"warning: {partial}", markup=False, highlight=False)
        if report.get("results"):
            console.print(results_table(report, width=width))
        else:  # a detect- or CLEVER-only audit: no empty attack table, only what it ran on
            console.print(results_title(report), markup=False, highlight=False)
        dt = defences_table(report)
        if dt is not None:
            console.print(dt)
        from robaudit.report.clever_render import clever_tables

        for ct in clever_tables(report):
            console.print(ct)
        det = detection_table(report)
        if det is not None:
            console.print(det)
        for g in report.get("gates") or []:
            console.print(f"gate {'pass' if g['passed'] else 'FAIL'}: {g['gate']}  [{g.get('detail')}]",
                          markup=False, highlight=False)
        repeated = 0
        for w in warnings:
            if w in shown:
                repeated += 1
            else:
                console.print(f"warning: {w}", markup=False, highlight=False)
        if repeated:
            console.print(f"({repeated} warning{'s' if repeated > 1 else ''} printed above during the run; "
                          "the report's `warnings` holds them all)", markup=False, highlight=False)
        return console.export_text()
    raise AssertionError(f"unhandled format {fmt}")


def parse_gate_options(values: list[str] | None) -> list[Any]:
    """``--gate`` values: an expression (has an operator), or a profile name/path whose gates to use."""
    from robaudit.config import load_profile
    from robaudit.report.gates import parse_gate

    gates = []
    for v in values or []:
        if _names_profile(v):
            found = load_profile(v, clip_span=None).gates
            if not found:  # judging by no gates would pass whatever the report says
                raise ConfigError(f"--gate {v}: the profile has no gates; give a profile with a `gates:` list or a "
                                  "gate expression such as --gate 'pgd robust_accuracy >= 0.4'")
            gates.extend(parse_gate(g) for g in found)
        else:  # parse_gate says what is wrong with an expression (an empty one, `==`, a missing value)
            gates.append(parse_gate(v))
    return gates


def _names_profile(value: str) -> bool:
    """Whether a ``--gate`` value is a profile (a shipped name, a YAML path, an existing file)."""
    from robaudit.config.profile import profile_names

    v = value.strip()
    if not v or any(c in v for c in "<>=!"):
        return False
    if Path(v).exists():
        return True
    return len(v.split()) == 1 and (v in profile_names() or v.lower().endswith((".yaml", ".yml")) or "/" in v)


def apply_gates(report: dict[str, Any], gates: list[Any]) -> list[Any]:
    from robaudit.report.gates import evaluate_gates

    results = evaluate_gates(gates, report)
    report["gates"] = [r.to_dict() for r in results]
    return results


def _print_failures(results: list[Any], prefix: str = "") -> int:
    failed = [r for r in results if not r.passed]
    for r in failed:
        _err.print(f"robaudit: gate failed: {prefix}{r.gate.text}: {r.detail}", markup=False, highlight=False,
                   soft_wrap=True)
    return len(failed)


class _AuditProgress:
    """Overall and per-cell progress bars with ETA on stderr."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.overall: Any = None
        self.warned: set[str] = set()
        """Warnings printed during the run."""
        self.cells: dict[str, Any] = {}
        """A bar per cell in progress (several with ``--workers``)."""

    def plan_started(self, total_cells: int, finished_cells: int) -> None:
        self.overall = self.progress.add_task("audit", total=total_cells, completed=finished_cells, eta=False)
        if finished_cells:
            self.progress.console.print(f"resuming: {finished_cells} of {total_cells} cells already done",
                                        highlight=False)

    def cell_started(self, cell_id: str, total_chunks: int, finished_chunks: int) -> None:
        self.cells[cell_id] = self.progress.add_task(f"  {cell_id}", total=total_chunks, completed=finished_chunks)

    def chunk_finished(self, cell_id: str) -> None:
        if cell_id in self.cells:
            self.progress.advance(self.cells[cell_id])

    def cell_finished(self, cell_id: str, row: dict[str, Any]) -> None:
        task = self.cells.pop(cell_id, None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.advance(self.overall)

    def warn(self, text: str) -> None:
        self.warned.add(text)
        self.progress.console.print(f"warning: {text}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``audit`` and ``report`` commands to ``app``."""
    app.command("audit")(audit_cmd)
    app.command("report")(report_cmd)


WORKERS_HELP = ("Processes that run cells in parallel, each with cores/N torch threads (same report as 1; "
                "on a CPU with a small model, 2 on 2 cores beats 1 process with 2 threads).")
MAX_WORKERS = 64


def audit_cmd(
    models: Annotated[list[str], typer.Argument(help="Model files (.pt TorchScript or .onnx) or demo:mnist / demo:cifar10.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Data: .npz, image folder, MNIST IDX, CIFAR-10 .bin, or demo:mnist.")],
    profile: Annotated[str, typer.Option("--profile", "-P", help="Profile name (quick, ci-gate, ...) or path to a YAML file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: journal, report(s), summary.md.")] = Path("robaudit-audit"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the audit journaled in --out (refused if model, data, profile, seed or version changed).")] = False,
    num: Annotated[Optional[int], typer.Option("-n", "--num", help="Override the profile's sample size.")] = None,
    seed: Annotated[Optional[int], typer.Option(max=MAX_SEED, help="Override the profile's seed.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Override the profile's batch size.")] = None,
    gate: Annotated[Optional[list[str]], typer.Option("--gate", "-g", help="Extra gate EXPR, or a profile whose gates to add (repeatable).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean applied inside the model.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std applied inside the model.")] = None,
    clip: Annotated[str, typer.Option(help="Valid input range lo,hi of the model's pixel space.")] = "0,1",
    layout: Annotated[Optional[str], typer.Option(help="NCHW or NHWC when the data layout is ambiguous.")] = None,
    x_key: Annotated[Optional[str], typer.Option("--x-key", help="Array name of images in an .npz.")] = None,
    y_key: Annotated[Optional[str], typer.Option("--y-key", help="Array name of labels in an .npz.")] = None,
    fmt: Annotated[SummaryFormat, typer.Option("--format", help="What to print: table, markdown, json (an array of reports for several models) or none.")] = SummaryFormat.table,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    workers: Annotated[int, typer.Option("--workers", "-w", help=WORKERS_HELP)] = 1,
) -> None:
    """Run a profile's plan of cells (model x attack x target x defences) with a crash-safe journal."""
    from robaudit.config import load_profile

    inputs = input_options(data, device, mean, std, clip, layout, x_key, y_key)
    prof = load_profile(profile, clip_span=inputs.clip[1] - inputs.clip[0]).with_overrides(
        samples=num if num is not None else "keep", seed=seed, batch_size=batch_size)
    execute_audit(tuple(models), inputs, prof, out, resume, gate, fmt, quiet, workers)


def progress_bars(console: Console, quiet: bool) -> Any:
    """Transient rich progress bars with elapsed time and ETA on a terminal. Off a terminal (a CI log)
    rich cannot redraw them: there a :class:`~robaudit.progress_log.LogProgress` prints a plain line
    every ``ROBAUDIT_PROGRESS_SECONDS`` (30) instead. ``--quiet`` turns both off."""
    if not quiet and not console.is_terminal:
        from robaudit.progress_log import LogProgress

        return LogProgress(console)
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                    disable=quiet or not console.is_terminal, transient=True)


class _Steps:
    """An engine observer that names a job's current step (and how many of its steps are done) on
    the spinner of :func:`busy`, or in its log lines."""

    def __init__(self, show: Any) -> None:
        self._show, self._total, self._done, self._label = show, None, 0, ""

    def plan_started(self, total_cells: int) -> None:
        self._total = total_cells
        self._show(self._label, self._done, self._total)

    def cell_started(self, label: str) -> None:
        self._label = label
        self._show(self._label, self._done, self._total)

    def inputs_done(self, label: str, done: int, total: int) -> None:
        return None

    def cell_finished(self, label: str, row: dict[str, Any]) -> None:
        self._done += 1
        self._show(self._label, self._done, self._total)

    def warn(self, text: str) -> None:
        return None


@contextlib.contextmanager
def busy(console: Console, text: str, quiet: bool) -> Any:
    """A spinner with ``text`` on a terminal for work that reports steps, not input counts; in a
    log, a line every ``ROBAUDIT_PROGRESS_SECONDS``; nothing with ``--quiet``. Yields an engine
    observer that shows the current step, e.g. ``evaluating: crafting cw-l2 (step 4 of 11)``."""
    from robaudit.engine.observer import NullObserver

    if quiet:
        yield NullObserver()
        return
    if not console.is_terminal:
        from robaudit.progress_log import LogProgress

        log = LogProgress(console)
        task = log.add_task(text, total=None, eta=False)  # steps differ too much in length for an ETA
        with log:
            yield _Steps(lambda label, done, total: log.update(task, description=f"{text}: {label}" if label else text,
                                                               total=total, completed=done))
        return
    with console.status(text, spinner="dots") as status:
        yield _Steps(lambda label, done, total: status.update(
            f"{text}: {label}" + (f" (step {min(done + 1, total)} of {total})" if total else "")))


def input_options(data: str, device: str, mean: str | None, std: str | None, clip: str, layout: str | None,
                  x_key: str | None, y_key: str | None, model: str = "") -> Any:
    """Checked :class:`InputOptions` from the shared CLI options (``model`` empty where a command
    names several models or gives them to the engine itself)."""
    from robaudit.cli import _floats
    from robaudit.engine.session import InputOptions

    clip_range = _floats(clip, "--clip", 2)
    assert clip_range is not None
    if clip_range[0] >= clip_range[1]:
        raise ConfigError(f"--clip lo must be below hi, got {clip}")
    if layout is not None and layout.upper() not in ("NCHW", "NHWC"):
        raise ConfigError(f"--layout must be NCHW or NHWC, got {layout!r}")
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    return InputOptions(model=model, data=data, device=device, mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
                        clip=(clip_range[0], clip_range[1]), layout=layout.upper() if layout else None,
                        x_key=x_key, y_key=y_key)


def execute_audit(models: tuple[str, ...], inputs: Any, prof: Any, out: Path, resume: bool, gate: list[str] | None,
                  fmt: SummaryFormat, quiet: bool, workers: int = 1) -> None:
    """Run ``prof`` on ``models`` with progress bars, write reports and summary, apply gates (exit 1)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be between 1 and {MAX_WORKERS}, got {workers}")
    from robaudit.engine.audit import SUMMARY_NAME, AuditJob, run_audit
    from robaudit.report.gates import check_selectors, parse_gate
    from robaudit.report.writer import write_json_atomic, write_text_atomic

    gates = [parse_gate(g) for g in prof.gates] + parse_gate_options(gate)
    labels, names = {a.label for a in prof.attacks}, {a.name for a in prof.attacks}
    detect_words = prof.detect.selector_words() if prof.detect is not None else None
    for g in gates:
        check_selectors(g, labels, names, set(prof.targets), detect_words=detect_words)
    if len(set(models)) != len(models):
        raise ConfigError("the same model is listed twice")
    job = AuditJob(models=models, inputs=inputs, profile=prof, out=out, resume=resume, workers=workers)
    progress = progress_bars(_err, quiet)
    observer = _AuditProgress(progress)
    with progress:
        result = run_audit(job, ["robaudit", *sys.argv[1:]], observer)
    # on one terminal the run's warnings are on screen already; in files or pipes each stream keeps all
    seen = observer.warned if (_out.is_terminal and _err.is_terminal) else set()

    failed = 0
    summaries = []
    judged = []
    for path, report in result.reports:
        gate_results = apply_gates(report, gates)
        write_json_atomic(path, report)
        summaries.append(render(report, ReportFormat.markdown))
        judged.append((f"{report['model']['path']}: " if len(result.reports) > 1 else "", gate_results))
    write_text_atomic(out / SUMMARY_NAME, "\n".join(summaries))
    if fmt is SummaryFormat.json and len(result.reports) > 1:  # one JSON document: an array of the reports
        from robaudit.report.writer import _clean

        echo(json.dumps([_clean(report) for _, report in result.reports], indent=2))
    for path, report in result.reports:
        if fmt is SummaryFormat.json:
            if len(result.reports) == 1:
                echo(render(report, ReportFormat.json), nl=False)
        elif fmt is SummaryFormat.markdown:
            echo(render(report, ReportFormat.markdown), nl=False)
        elif fmt is SummaryFormat.table:
            echo(render(report, ReportFormat.table, width=max(_out.width, 100), shown=seen), nl=False)
        if fmt is not SummaryFormat.json:
            _err.print(f"report written to {path}", highlight=False)
    for prefix, gate_results in judged:  # after the reports are written, as the README says
        failed += _print_failures(gate_results, prefix)
    if failed:
        _err.print(f"robaudit: {failed} gate(s) failed", highlight=False)
        raise typer.Exit(EXIT_GATE)


def report_cmd(
    paths: Annotated[list[str], typer.Argument(help="REPORT.json, or: diff OLD.json NEW.json", metavar="REPORT.json | diff OLD NEW")],
    fmt: Annotated[ReportFormat, typer.Option("--format", help="table, markdown, html, junit or json.")] = ReportFormat.table,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the rendering to this file (atomically) instead of stdout.")] = None,
    gate: Annotated[Optional[list[str]], typer.Option("--gate", "-g", help="Gate EXPR or profile (repeatable): judge the report by these gates instead of the ones stored in it; exit 1 if one fails.")] = None,
    tolerance: Annotated[float, typer.Option(help="diff: changes up to this size count as unchanged (changes within float32 rounding, a relative 1e-6, always do).")] = 0.0,
    fail_on_regression: Annotated[bool, typer.Option("--fail-on-regression", help="diff: exit 1 if any metric got worse.")] = False,
) -> None:
    """Render a report (table, Markdown, self-contained HTML, JUnit XML, JSON), gate it, or diff two reports."""
    from robaudit.report import read_report
    from robaudit.report.writer import write_text_atomic

    if out is not None:
        for src in (paths[1:] if paths and paths[0] == "diff" else paths):
            if Path(src).exists() and Path(src).resolve() == out.resolve():
                raise ConfigError(f"--out {out} is the report being read: writing there would replace it; "
                                  "give another --out path")
    if paths and paths[0] == "diff":
        if gate:
            raise ConfigError("--gate applies to `report REPORT.json`, not to `report diff`: gate the new report with "
                              "`robaudit report NEW.json --gate ...` (and use --fail-on-regression to fail on what got worse)")
        _diff(paths[1:], fmt, out, tolerance, fail_on_regression)
        return
    if len(paths) != 1:
        raise ConfigError("report takes one REPORT.json (or: report diff OLD.json NEW.json)")
    if tolerance != 0.0 or fail_on_regression:
        raise ConfigError("--tolerance and --fail-on-regression apply to `report diff` only")
    report = read_report(paths[0])
    stored_failures = sum(not g.get("passed", True) for g in report.get("gates") or [])
    results = apply_gates(report, parse_gate_options(gate)) if gate else []
    if not gate and stored_failures:  # rendering is not judging: say so, since the rendering shows FAIL
        _err.print(f"robaudit: note: {stored_failures} of the {len(report['gates'])} gates stored in this report "
                   "failed when it was made; `report` exits 0 unless given --gate (e.g. --gate PROFILE)",
                   markup=False, highlight=False, soft_wrap=True)
    text = render(report, fmt, width=max(_out.width, 100) if out is None else 160)
    if out is None:
        echo(text, nl=False)
    else:
        write_text_atomic(out, text)
        _err.print(f"{fmt.value} written to {out}", highlight=False)
    if _print_failures(results):
        raise typer.Exit(EXIT_GATE)


def _diff(paths: list[str], fmt: ReportFormat, out: Path | None, tolerance: float, fail: bool) -> None:
    from robaudit.report import read_report
    from robaudit.report.diff import diff_dict, diff_markdown, diff_reports, diff_warnings, regressions
    from robaudit.report.writer import write_text_atomic

    if len(paths) != 2:
        raise ConfigError("report diff takes two reports: OLD.json NEW.json")
    if not (0 <= tolerance < float("inf")):  # NaN would count every change, inf none
        raise ConfigError(f"--tolerance must be a finite number >= 0, got {tolerance}")
    old, new = read_report(paths[0]), read_report(paths[1])
    changes = diff_reports(old, new)
    warnings = diff_warnings(old, new)
    changed = [c for c in changes if c.metric == "setup"]
    if changed:
        warnings.append(f"{len(changed)} cells changed their attack setup and are not compared, e.g. "
                        f"{changed[0].cell}: {changed[0].note}")
    if fmt is ReportFormat.json:
        text = json.dumps({"old": paths[0], "new": paths[1], "tolerance": tolerance, "warnings": warnings,
                           "changes": diff_dict(changes, tolerance)}, indent=2) + "\n"
    elif fmt is ReportFormat.markdown:
        text = diff_markdown(changes, tolerance, paths[0], paths[1], warnings)
    elif fmt is ReportFormat.table:
        from robaudit.report.diff import diff_table

        width = max(_out.width, 100) if out is None else 160
        console = Console(record=True, width=width, file=io.StringIO())
        console.print(diff_table(changes, tolerance, paths[0], paths[1]))
        text = console.export_text()
    else:
        raise ConfigError(f"report diff writes table, markdown or json, not {fmt.value}")
    if out is None:
        echo(text, nl=False)
    else:
        write_text_atomic(out, text)
    for w in warnings:
        _err.print(f"robaudit: warning: {w}", markup=False, highlight=False, soft_wrap=True)
    worse = regressions(changes, tolerance)
    if fail and worse:
        for c in worse:
            digits = 4 if c.new is None or f"{c.old:.4g}" != f"{c.new:.4g}" else 8  # show the change
            what = "gone (in the old report only)" if c.new is None else f"{c.old:.{digits}g} -> {c.new:.{digits}g}"
            _err.print(f"robaudit: regression: {c.cell} {c.metric}: {what}", markup=False,
                       highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_GATE)
