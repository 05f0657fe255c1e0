"""``robaudit clever``: CLEVER scores per norm, target setting and defence stack, compared with the
minimal distortions real attacks find. Registered in :mod:`robaudit.cli` with ``register(app)``.

Exit codes as everywhere: 0 success, 2 usage/input/config error, 3 internal failure.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import Progress

from robaudit.cli_audit import input_options, progress_bars
from robaudit.consoles import echo, stderr_console, stdout_console
from robaudit.data.sampling import MAX_SEED
from robaudit.errors import ConfigError

_out = stdout_console()
_err = stderr_console()


class CleverFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"
    none = "none"


class _Progress:
    """Renders a :class:`~robaudit.engine.clever_job.CleverObserver` as one rich progress bar."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def plan_started(self, total_units: int) -> None:
        self.task = self.progress.add_task("clever", total=total_units)

    def step_started(self, label: str) -> None:
        self.progress.update(self.task, description=label)

    def advance(self, units: int) -> None:
        self.progress.advance(self.task, units)

    def warn(self, text: str) -> None:
        self.progress.console.print(f"warning: {text}", markup=False, highlight=False)


def parse_radius(value: str | None) -> dict[Any, float]:
    """``5`` (every norm) or ``l2=2,linf=0.1`` -> radius per norm (missing norms keep their default)."""
    from robaudit.clever.interface import CleverNorm

    if value is None:
        return {}
    out: dict[Any, float] = {}
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, num = part.partition("=")
        try:
            r = float(num if sep else key)
        except ValueError:
            raise ConfigError(f"--radius expects R or NORM=R[,NORM=R] (e.g. l2=2,linf=0.1), got {value!r}") from None
        if not 0 < r < float("inf"):
            raise ConfigError(f"--radius must be finite and > 0, got {r:g}")
        if sep:
            n = CleverNorm.parse(key)
            if n in out:
                raise ConfigError(f"--radius gives the {n.value} radius twice ({value!r}); give it once")
            out[n] = r
        else:
            if len(value.split(",")) > 1:
                raise ConfigError(f"--radius takes one R for every norm or NORM=R pairs (e.g. l2=2,linf=0.1), "
                                  f"not both: got {value!r}")
            out.update({n: r for n in CleverNorm})
    return out


def register(app: typer.Typer) -> None:
    """Add the ``clever`` command to ``app``."""
    app.command("clever")(clever_cmd)


def clever_cmd(
    model: Annotated[str, typer.Argument(help="Model file (.pt TorchScript, .onnx) or demo:mnist / demo:cifar10.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Data: .npz, image folder, MNIST IDX, CIFAR-10 .bin, or demo:mnist.")],
    norm: Annotated[str, typer.Option(help="Perturbation norms: l1, l2, linf (comma-separated) or all.")] = "l2",
    target: Annotated[str, typer.Option("--target", "-t", help="untargeted, least-likely, next-class (comma-separated) or all.")] = "untargeted",
    defences: Annotated[Optional[list[str]], typer.Option("--defences", help="A defence stack to score besides the undefended model, e.g. ss,jpeg (repeatable).")] = None,
    nb_batches: Annotated[int, typer.Option("--nb-batches", help="Batches per input: the number of maxima the reverse Weibull is fitted to.")] = 50,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Sample points per batch.")] = 100,
    radius: Annotated[Optional[str], typer.Option(help="Ball radius in pixel space: R for every norm or l2=R,linf=R (default l1 10, l2 5, linf 0.3 for [0,1] inputs).")] = None,
    num: Annotated[Optional[int], typer.Option("-n", "--num", help="Number of inputs to sample (default: all).")] = None,
    seed: Annotated[int, typer.Option(max=MAX_SEED, help="Seed for sampling inputs, the CLEVER sample points and the attacks.")] = 0,
    compare: Annotated[bool, typer.Option("--compare/--no-compare", help="Run DeepFool and C&W-L2 (L2) and C&W-Linf (Linf) and compare CLEVER with the distortions they find.")] = True,
    poor_fit_p: Annotated[float, typer.Option("--poor-fit-p", help="Flag inputs whose Weibull fit has a KS p-value below this.")] = 0.05,
    point_batch: Annotated[Optional[int], typer.Option("--point-batch", help="Sample points per forward/backward pass (speed/memory only; default: 8192 MNIST / 2730 CIFAR-10 points on GPU, 83 / 21 on CPU).")] = None,
    attack_batch_size: Annotated[int, typer.Option("--attack-batch-size", help="Batch size of the comparison attacks.")] = 128,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean applied inside the model.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std applied inside the model.")] = None,
    clip: Annotated[str, typer.Option(help="Valid input range lo,hi of the model's pixel space.")] = "0,1",
    layout: Annotated[Optional[str], typer.Option(help="NCHW or NHWC when the data layout is ambiguous.")] = None,
    x_key: Annotated[Optional[str], typer.Option("--x-key", help="Array name of images in an .npz.")] = None,
    y_key: Annotated[Optional[str], typer.Option("--y-key", help="Array name of labels in an .npz.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the JSON report.")] = Path("robaudit-clever.json"),
    fmt: Annotated[CleverFormat, typer.Option("--format", help="What to print: table, markdown, json or none (the report file only).")] = CleverFormat.table,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """CLEVER robustness scores per input, norm, target and defence stack (Weng et al., ICLR 2018)."""
    from robaudit.attacks.targets import parse_targets
    from robaudit.clever.interface import CleverNorm, CleverParams
    from robaudit.defences import parse_stacks
    from robaudit.engine.clever_job import CleverJob, run_clever_job
    from robaudit.report.writer import check_writable, write_json_atomic

    if num is not None and num < 1:
        raise ConfigError(f"-n must be >= 1, got {num}")
    if attack_batch_size < 1:
        raise ConfigError(f"--attack-batch-size must be >= 1, got {attack_batch_size}")
    inputs = input_options(data, device, mean, std, clip, layout, x_key, y_key, model)
    params = CleverParams(nb_batches=nb_batches, batch_size=batch_size, poor_fit_p=poor_fit_p, point_batch=point_batch)
    norms, radii = tuple(CleverNorm.parse_list(norm)), parse_radius(radius)
    unused = [n.value for n in radii if n not in norms]
    if radius is not None and "=" in radius and unused:  # a bare R applies to every norm run
        raise ConfigError(f"--radius gives a radius for {', '.join(unused)}, which --norm "
                          f"({', '.join(n.value for n in norms)}) does not run")
    job = CleverJob(inputs=inputs, norms=norms, targets=tuple(parse_targets(target)),
                    stacks=tuple(parse_stacks(defences)), radius=radii, params=params, n=num, seed=seed,
                    compare=compare, attack_batch_size=attack_batch_size)
    check_writable(out)  # before the work, not after it
    progress = progress_bars(_err, quiet)
    with progress:
        report = run_clever_job(job, ["robaudit", *sys.argv[1:]], _Progress(progress))
    path = write_json_atomic(out, report)
    print_clever(report, fmt)
    if fmt is not CleverFormat.json:
        _err.print(f"report written to {path}", highlight=False)


def print_clever(report: dict[str, Any], fmt: CleverFormat) -> None:
    from robaudit.report.clever_render import clever_markdown, clever_tables

    if fmt is CleverFormat.json:
        import json

        from robaudit.report.writer import _clean

        echo(json.dumps(_clean(report), indent=2))
        return
    if fmt is CleverFormat.markdown:
        echo(clever_markdown(report))
        return
    if fmt is CleverFormat.none:  # the report file only (warnings still reach stderr)
        for w in report.get("warnings", []):
            _err.print(f"warning: {w}", highlight=False)
        return
    data = report.get("data", {})
    if data.get("n_selected"):
        _out.print(f"{data['n_evaluated']} of {data['n_selected']} sampled inputs classified correctly "
                   f"({data['n_dropped_misclassified']} dropped); scores are for those", highlight=False)
    for table in clever_tables(report):
        _out.print(table)
    for w in report.get("warnings", []):
        _err.print(f"warning: {w}", highlight=False)
