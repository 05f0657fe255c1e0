"""Thin command-line layer: options -> job -> engine -> renderers -> exit code.

Exit codes: 0 success, 1 a gate failed, 2 usage/input/config error, 3 internal or attack failure.
Errors are one line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import Progress

from robaudit import __version__
from robaudit.cli_audit import input_options, progress_bars
from robaudit.cli_audit import register as register_audit
from robaudit.cli_clever import register as register_clever
from robaudit.cli_defend import defend_app
from robaudit.cli_detect import detect_app
from robaudit.consoles import (echo, stderr_console, stdout_closed, stdout_console, stdout_gone,
                               typer_found_stdout_closed)
from robaudit.data.sampling import MAX_SEED
from robaudit.errors import EXIT_GATE, EXIT_INTERNAL, EXIT_STDOUT_CLOSED, EXIT_USAGE, ConfigError, RobauditError

app = typer.Typer(
    name="robaudit",
    help="Audit how robust an image classifier is against adversarial examples.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_state = {"debug": False}
out_console = stdout_console()
err_console = stderr_console()


class OutputFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"


def _version(value: bool) -> None:
    if value:
        echo(f"robaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """Audit how robust an image classifier is against adversarial examples."""
    _state["debug"] = debug


def _floats(value: str | None, name: str, count: int | None = None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated numbers, got {value!r}") from None
    if not out or (count is not None and len(out) != count):
        raise ConfigError(f"{name} needs {count or 'one or more'} comma-separated numbers, got {value!r}")
    return out


def _params(values: list[str] | None, attacks: tuple[Any, ...]) -> dict[Any, dict[str, str]]:
    """``--param ATTACK.NAME=VALUE`` options as ``{attack: {name: value}}``; every attack named must be
    in ``attacks`` (a typo, ``--attack apgd --param pgd.steps=100``, would otherwise run the defaults)."""
    from robaudit.attacks.registry import parse_attack_names

    out: dict[Any, dict[str, str]] = {}
    for raw in values or []:
        key, sep, val = raw.partition("=")
        attack, dot, pname = key.partition(".")
        if not sep or not dot or not pname:
            raise ConfigError(f"--param expects ATTACK.NAME=VALUE (e.g. pgd.steps=100), got {raw!r}")
        name = parse_attack_names(attack)[0]
        out.setdefault(name, {})[pname.strip()] = val.strip()
    stray = [a.value for a in out if a not in attacks]
    if stray:
        raise ConfigError(f"--param names {', '.join(stray)}, which is not in --attack "
                          f"({', '.join(a.value for a in attacks)}); add it to --attack or drop the --param")
    return out


class _ProgressObserver:
    """Renders engine progress with rich on stderr."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None
        self.cell: Any = None
        """The running cell's bar: inputs attacked of the cell's inputs."""
        self.warned: set[str] = set()
        """Warnings printed during the run (the report's others are printed after it)."""

    def plan_started(self, total_cells: int) -> None:
        self.task = self.progress.add_task("attack cells", total=total_cells, eta=False)

    def cell_started(self, label: str) -> None:
        self.cell = self.progress.add_task(f"  {label}", total=None)

    def inputs_done(self, label: str, done: int, total: int) -> None:
        if self.cell is not None:
            self.progress.update(self.cell, total=total, completed=done)

    def cell_finished(self, label: str, row: dict[str, Any]) -> None:
        if self.cell is not None:
            self.progress.remove_task(self.cell)
            self.cell = None
        self.progress.advance(self.task)

    def warn(self, text: str) -> None:
        self.warned.add(text)
        self.progress.console.print(f"[yellow]warning:[/yellow] {text}", markup=True, highlight=False)


@app.command()
def attack(
    model: Annotated[str, typer.Argument(help="Model file (.pt TorchScript or .onnx) or demo:mnist / demo:cifar10.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Data: .npz, image folder, MNIST IDX, CIFAR-10 .bin, or demo:mnist.")],
    attack: Annotated[str, typer.Option("--attack", "-a", help="Comma-separated attack names, or all.")] = "fgsm,pgd",
    target: Annotated[str, typer.Option("--target", "-t", help="untargeted, least-likely, next-class (comma-separated) or all.")] = "untargeted",
    eps: Annotated[Optional[float], typer.Option(help="Budget of fixed-eps attacks in pixel space (default: per attack, e.g. 8/255 Linf).")] = None,
    norm: Annotated[Optional[str], typer.Option(help="linf or l2 (default: each attack's own norm).")] = None,
    num: Annotated[Optional[int], typer.Option("-n", "--num", help="Number of inputs to sample (default: all).")] = None,
    seed: Annotated[int, typer.Option(max=MAX_SEED, help="Seed for sampling and attacks.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Batch size.")] = 128,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    backend: Annotated[str, typer.Option(help="torch (robaudit's batched attacks) or art (ART reference).")] = "torch",
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="Attack parameter ATTACK.NAME=VALUE (repeatable).")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean applied inside the model, e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std applied inside the model.")] = None,
    clip: Annotated[str, typer.Option(help="Valid input range lo,hi of the model's pixel space.")] = "0,1",
    layout: Annotated[Optional[str], typer.Option(help="NCHW or NHWC when the data layout is ambiguous.")] = None,
    x_key: Annotated[Optional[str], typer.Option("--x-key", help="Array name of images in an .npz.")] = None,
    y_key: Annotated[Optional[str], typer.Option("--y-key", help="Array name of labels in an .npz.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the JSON report.")] = Path("robaudit-report.json"),
    examples: Annotated[int, typer.Option(min=0, max=64, help="Adversarial examples kept per cell for the HTML report (robaudit report --format html).")] = 4,
    save_adv: Annotated[Optional[Path], typer.Option("--save-adv", help="Also write every adversarial example (exact float32, with predictions and success) to this .npz.")] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="What to print: table, markdown or json.")] = OutputFormat.table,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Run attacks x target settings on the correctly classified inputs and write a JSON report."""
    from robaudit.attacks.base import Norm
    from robaudit.attacks.registry import parse_attack_names
    from robaudit.attacks.targets import parse_targets
    from robaudit.engine.attack_job import AttackJob, run_attack_job
    from robaudit.engine.attack_run import AttackPlan
    from robaudit.report import write_json_atomic
    from robaudit.report.writer import check_writable

    if num is not None and num < 1:
        raise ConfigError(f"-n must be >= 1, got {num}")
    attacks = tuple(parse_attack_names(attack))
    params = _params(param, attacks)
    plan = AttackPlan(
        attacks=attacks, targets=tuple(parse_targets(target)),
        norm=Norm.parse(norm) if norm else None, eps=eps, backend=backend, params=params,
        batch_size=batch_size, seed=seed, examples=examples)
    inputs = input_options(data, device, mean, std, clip, layout, x_key, y_key, model)
    job = AttackJob(inputs=inputs, plan=plan, n=num)
    check_writable(out)  # before the attacks run, not after
    save = None
    if save_adv is not None:
        from robaudit.report.adversarial_npz import write_adversarial_npz

        if save_adv.suffix.lower() != ".npz":
            raise ConfigError(f"--save-adv writes a .npz file; give a name ending in .npz, got {save_adv}")
        if save_adv.resolve() == out.resolve():
            raise ConfigError(f"--save-adv and --out are the same file ({out}); give two paths")
        check_writable(save_adv, "--save-adv")
        save = lambda arrays: write_adversarial_npz(save_adv, arrays)  # noqa: E731
    command = ["robaudit", *sys.argv[1:]]
    progress = progress_bars(err_console, quiet)
    observer = _ProgressObserver(progress)
    with progress:
        report = run_attack_job(job, command, observer,
                                checkpoint=lambda partial: write_json_atomic(out, partial), save_adversarial=save)
    path = write_json_atomic(out, report)
    _print_report(report, fmt, observer.warned)
    if fmt is not OutputFormat.json:
        err_console.print(f"report written to {path}", highlight=False)
        if save_adv is not None:
            err_console.print(f"adversarial examples written to {save_adv}", highlight=False)


def _print_report(report: dict[str, Any], fmt: OutputFormat, shown: frozenset[str] | set[str] = frozenset()) -> None:
    """The report on stdout; with the table, the report's warnings not ``shown`` during the run go to
    stderr (those of the whole evaluation, e.g. a black-box attack beating the white-box ones, come
    only at the end)."""
    from robaudit.report.render import results_markdown, results_table, split_warnings

    if fmt is OutputFormat.json:
        import json

        echo(json.dumps(report, indent=2))
    elif fmt is OutputFormat.markdown:
        echo(results_markdown(report))
    else:
        partial, warnings = split_warnings(report)
        if partial:  # above the table it qualifies
            err_console.print(f"warning: {partial}", markup=False, highlight=False)
        out_console.print(results_table(report, width=out_console.width))
        for w in warnings:
            if w not in shown:
                err_console.print(f"warning: {w}", markup=False, highlight=False)


@app.command("attacks")
def list_attacks() -> None:
    """List the attacks, their kinds, norms, target support and documented defaults."""
    import dataclasses

    from rich.table import Table

    from robaudit.attacks.registry import AttackName, available_backends, get_attack_class

    table = Table(title="robaudit attacks")
    for col in ("name", "kind", "norms", "targeted", "untargeted", "gradients", "backends", "default eps", "defaults"):
        table.add_column(col)
    for name in AttackName:
        cls = get_attack_class(name, "torch")
        defaults = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cls.Params()).items())
        eps = ", ".join(f"{n.value} {e:.4g}" for n, e in cls.default_eps.items()) or "-"
        table.add_row(name.value, cls.kind.value, ",".join(n.value for n in cls.norms),
                      "yes" if cls.supports_targeted else "no", "yes" if cls.supports_untargeted else "no",
                      "yes" if cls.needs_gradients else "no", ",".join(available_backends(name)), eps, defaults)
    out_console.print(table)


@app.command("profiles")
def list_profiles() -> None:
    """List the shipped profiles (use one with `robaudit audit MODEL --data DATA --profile NAME`)."""
    from rich.table import Table

    from robaudit.config.profile import load_profile, profile_names
    from robaudit.engine.cells import expand

    table = Table(title="robaudit profiles (robaudit audit MODEL --data DATA --profile NAME)")
    for col in ("name", "description", "attacks", "targets", "stacks", "samples", "attack cells", "gates"):
        table.add_column(col, justify="right" if col in ("stacks", "samples", "attack cells", "gates") else "left")
    for name in profile_names():
        prof = load_profile(name)
        extras = [k for k in ("clever", "detect") if getattr(prof, k) is not None]
        table.add_row(name, prof.description, ", ".join(a.label for a in prof.attacks) or "-",
                      ", ".join(prof.targets), str(len(prof.defences)), "all" if prof.samples is None else str(prof.samples),
                      str(sum(c.kind.value == "attack" for c in expand(prof, 1)))
                      + (f" +{'+'.join(extras)}" if extras else ""), str(len(prof.gates)))
    out_console.print(table)


register_audit(app)  # `audit` and `report` (issue 7)
register_clever(app)  # `clever` (issue 5)
app.add_typer(detect_app, name="detect")
app.add_typer(defend_app, name="defend")


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that open files are closed on the way out."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


class _Interrupted(BaseException):
    """Ctrl-C (SIGINT). Not a KeyboardInterrupt: Typer turns that into a silent exit 130 before the
    message below could say that finished work is kept."""


def _on_sigint(signum: int, frame: object) -> None:
    raise _Interrupted()


_STOPPED_HINT = ("finished work is kept: audits and defend eval continue with --resume, defend train when "
                 "run again")
_STOPPED_HINTS = {
    "attack": "any cells it finished are in the --out report, marked partial, and their examples in the "
              "--save-adv file (attack starts over when run "
              "again; `robaudit audit` runs resume with --resume)",
    "clever": "nothing was written: clever starts over when run again (an audit profile's clever section "
              "resumes with `robaudit audit --resume`)",
    "detect": "nothing was written: detect starts over when run again",
    "report": "report only reads its input: any --out file is the previous one or the complete new one",
}
"""What a stopped command kept, for the commands where :data:`_STOPPED_HINT` does not hold."""


def _stopped_hint(argv: list[str]) -> str:
    command = next((a for a in argv[1:] if not a.startswith("-")), "")
    return _STOPPED_HINTS.get(command, _STOPPED_HINT)


def _click_error(name: str) -> type[Exception]:
    """Click's exception class ``name``, from whichever click this Typer uses (its own vendored copy
    or the click package): found through ``typer.BadParameter``, which is click's."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


def _usage_error_line(exc: Any) -> str:
    """Click's usage error (usage line, "Try ... --help", blank line, "Error: ...") as one line."""
    command = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "robaudit"
    message = " ".join(str(exc.format_message()).split())
    return f"robaudit: error: {message} (see '{command} --help')"


def main() -> None:
    """Console entry point: maps errors to one-line messages and exit codes."""
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigint)
    usage_error, click_exception = _click_error("UsageError"), _click_error("ClickException")
    try:
        # not standalone: Click's own errors come here, to be printed on one line like robaudit's
        code = app(standalone_mode=False)
        code = code if isinstance(code, int) else 0
        sys.exit(EXIT_STDOUT_CLOSED if code == 0 and stdout_closed() else code)  # a failed gate stays 1
    except click_exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `robaudit defend`: the help is the answer
            exc.show()  # type: ignore[attr-defined]
        elif isinstance(exc, usage_error):
            err_console.print(_usage_error_line(exc), highlight=False, markup=False, soft_wrap=True)
        else:
            err_console.print(f"robaudit: error: {exc.format_message()}",  # type: ignore[attr-defined]
                              highlight=False, markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except RobauditError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"robaudit: error: {exc}", highlight=False, markup=False)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, _Interrupted):
        err_console.print(f"robaudit: interrupted; {_stopped_hint(sys.argv)}", highlight=False)
        sys.exit(130)
    except _Terminated:
        err_console.print(f"robaudit: terminated (SIGTERM); {_stopped_hint(sys.argv)}", highlight=False)
        sys.exit(143)
    except SystemExit as exc:
        if exc.code == EXIT_GATE and typer_found_stdout_closed():  # e.g. --help | head: not a gate
            sys.exit(EXIT_STDOUT_CLOSED)
        raise
    except BrokenPipeError:  # a write to stdout outside the console and Typer's echo
        stdout_gone()
        sys.exit(EXIT_STDOUT_CLOSED)
    except MemoryError:
        err_console.print("robaudit: error: out of memory: lower the batch size (--batch-size, a profile's "
                          "batch_size or clever.batch_size) or the number of inputs (-n)", highlight=False)
        sys.exit(EXIT_INTERNAL)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback without --debug
        if _state["debug"]:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        err_console.print(f"robaudit: internal error: {type(exc).__name__}: {msg} (rerun with --debug for a traceback)",
                          highlight=False, markup=False)
        sys.exit(EXIT_INTERNAL)


__all__ = ["app", "main", "EXIT_USAGE"]
