"""``robaudit defend``: evaluate pre-processing defence stacks, and adversarially train a model.

Registered in :mod:`robaudit.cli` with ``app.add_typer(defend_app, name="defend")``.

``defend eval`` is an audit (same journal, ``--resume``, reports, gates and exit codes as
``robaudit audit``) whose profile is built from the options: the undefended model plus every
requested stack, under the adaptive and/or transfer threat model.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import Progress

from robaudit.cli_audit import WORKERS_HELP, SummaryFormat, execute_audit, input_options, progress_bars
from robaudit.config.profile import DEFAULT_EOT_SAMPLES
from robaudit.consoles import echo, stderr_console, stdout_console
from robaudit.data.sampling import MAX_SEED
from robaudit.errors import ConfigError, DataLoadError

defend_app = typer.Typer(
    name="defend",
    help="Pre-processing defences (spatial smoothing, JPEG, TVM and their stacks) and adversarial training.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

_out = stdout_console()
_err = stderr_console()

def _value(raw: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _defence_params(values: list[str] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for raw in values or []:
        key, sep, val = raw.partition("=")
        name, dot, pname = key.partition(".")
        if not sep or not dot or not pname.strip():
            raise ConfigError(f"--defence-param expects DEFENCE.NAME=VALUE (e.g. jpeg.quality=50), got {raw!r}")
        out.setdefault(name.strip(), {})[pname.strip()] = _value(val.strip())
    return out


def _attacks(attack: str, eps: float | None, norm: str | None, params: list[str] | None) -> dict[str, dict[str, Any]]:
    from robaudit.attacks.registry import parse_attack_names

    names = [n.value for n in parse_attack_names(attack)]
    specs: dict[str, dict[str, Any]] = {n: {} for n in names}
    for raw in params or []:
        key, sep, val = raw.partition("=")
        a, dot, pname = key.partition(".")
        if not sep or not dot or not pname:
            raise ConfigError(f"--param expects ATTACK.NAME=VALUE (e.g. pgd.steps=100), got {raw!r}")
        (name,) = [n.value for n in parse_attack_names(a)][:1]
        if name not in specs:
            raise ConfigError(f"--param {raw}: attack {name} is not in --attack")
        specs[name][pname.strip()] = _value(val.strip())
    from robaudit.attacks.base import AttackKind
    from robaudit.attacks.registry import AttackName, get_attack_class

    for name, spec in specs.items():
        kind = get_attack_class(AttackName(name), "torch").kind
        if eps is not None and kind is AttackKind.FIXED_EPS:
            spec["eps"] = eps
        if norm is not None:
            spec["norm"] = norm
    return specs


@defend_app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(help="Model file (.pt TorchScript, .onnx) or demo:mnist / demo:cifar10.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Data: .npz, image folder, MNIST IDX, CIFAR-10 .bin, or demo:mnist.")],
    defences: Annotated[list[str], typer.Option("--defences", "-D", help="Stack ss,jpeg,tvm (in order); several separated by ';' or the option repeated; or all-combinations (none + 7 stacks).")],
    threat_model: Annotated[str, typer.Option("--threat-model", help="adaptive (attack the defended model: BPDA, EOT), transfer (craft on the undefended model), or both.")] = "adaptive",
    attack: Annotated[str, typer.Option("--attack", "-a", help="Comma-separated attack names, or all.")] = "fgsm,pgd",
    target: Annotated[str, typer.Option("--target", "-t", help="untargeted, least-likely, next-class (comma-separated) or all.")] = "untargeted",
    eps: Annotated[Optional[float], typer.Option(help="Budget of fixed-eps attacks in pixel space (default: per attack).")] = None,
    norm: Annotated[Optional[str], typer.Option(help="linf or l2 (default: each attack's own norm).")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="Attack parameter ATTACK.NAME=VALUE (repeatable).")] = None,
    defence_param: Annotated[Optional[list[str]], typer.Option("--defence-param", help="Defence parameter DEFENCE.NAME=VALUE, e.g. jpeg.quality=50 (repeatable).")] = None,
    eot_samples: Annotated[Optional[int], typer.Option("--eot-samples", help=f"Draws averaged per gradient against randomised stacks (TVM; default {DEFAULT_EOT_SAMPLES}).")] = None,
    num: Annotated[Optional[int], typer.Option("-n", "--num", help="Number of inputs to sample (default: 100).")] = 100,
    seed: Annotated[int, typer.Option(max=MAX_SEED, help="Seed for sampling, defences and attacks.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Batch size (also the journal granularity).")] = 64,
    examples: Annotated[int, typer.Option(help="Adversarial examples kept per cell for the HTML report.")] = 4,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: journal, report.json, summary.md.")] = Path("robaudit-defend"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the evaluation journaled in --out.")] = False,
    gate: Annotated[Optional[list[str]], typer.Option("--gate", "-g", help="Gate EXPR (repeatable): exit 1 if one fails.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean applied inside the model.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std applied inside the model.")] = None,
    clip: Annotated[str, typer.Option(help="Valid input range lo,hi of the model's pixel space.")] = "0,1",
    layout: Annotated[Optional[str], typer.Option(help="NCHW or NHWC when the data layout is ambiguous.")] = None,
    x_key: Annotated[Optional[str], typer.Option("--x-key", help="Array name of images in an .npz.")] = None,
    y_key: Annotated[Optional[str], typer.Option("--y-key", help="Array name of labels in an .npz.")] = None,
    fmt: Annotated[SummaryFormat, typer.Option("--format", help="What to print: table, markdown, json or none.")] = SummaryFormat.table,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    workers: Annotated[int, typer.Option("--workers", "-w", help=WORKERS_HELP)] = 1,
) -> None:
    """Attack the model behind each defence stack; report success, distances and the clean-accuracy cost."""
    from robaudit.attacks.targets import parse_targets
    from robaudit.config.profile import parse_profile
    from robaudit.defences import parse_stacks

    stacks = parse_stacks(defences)
    if len(stacks) == 1:
        raise ConfigError("--defences names no defence: give e.g. ss,jpeg or all-combinations")
    threats = {"adaptive": ["adaptive"], "transfer": ["transfer"], "both": ["adaptive", "transfer"]}.get(threat_model)
    if threats is None:
        raise ConfigError(f"--threat-model must be adaptive, transfer or both, got {threat_model!r}")
    raw = {
        "name": "defend-eval", "seed": seed, "samples": num, "batch_size": batch_size, "examples": examples,
        "attacks": _attacks(attack, eps, norm, param),
        "targets": [t.value for t in parse_targets(target)],
        "defences": [list(s) for s in stacks], "threat_models": threats,
        "defence_params": _defence_params(defence_param),
    }
    if eot_samples is not None:  # given: a no-op value is warned about; not given: the default, quietly
        raw["eot_samples"] = eot_samples
    inputs = input_options(data, device, mean, std, clip, layout, x_key, y_key)
    prof = parse_profile(raw, source="defend eval", clip_span=inputs.clip[1] - inputs.clip[0])
    execute_audit((model,), inputs, prof, out, resume, gate, fmt, quiet, workers)


def _val_text(rec: Any, pgd: str) -> str:
    if rec.val_clean_accuracy is None:
        return "no validation (--val-size 0)"
    return f"val clean {100 * rec.val_clean_accuracy:.1f}%, {pgd} {100 * rec.val_pgd_accuracy:.1f}%"


class _TrainProgress:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def epoch_started(self, epoch: int, epochs: int, batches: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=batches)

    def batch_finished(self) -> None:
        self.progress.advance(self.task)

    def epoch_finished(self, rec: Any) -> None:
        self.progress.console.print(
            f"epoch {rec.epoch}: loss {rec.train_loss:.3f}, FGSM train acc {100 * rec.train_adv_accuracy:.1f}%, "
            f"{_val_text(rec, 'val PGD')} ({rec.seconds:.0f} s)", highlight=False)

    def warn(self, text: str) -> None:
        self.progress.console.print(f"warning: {text}", markup=False, highlight=False)


@defend_app.command("train")
def train_cmd(
    model: Annotated[str, typer.Argument(help="TorchScript model (.pt) whose network is trained.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Training data: .npz, image folder, MNIST IDX, CIFAR-10 .bin.")],
    eps: Annotated[float, typer.Option(help="Linf budget to train against, in pixel space (e.g. 0.3 MNIST, 8/255 CIFAR).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the trained TorchScript model.")],
    epochs: Annotated[int, typer.Option(help="Epochs (the cyclic learning rate spans all of them).")] = 10,
    alpha: Annotated[Optional[float], typer.Option(help="FGSM step from the random start (default 1.25 * eps).")] = None,
    lr_max: Annotated[float, typer.Option("--lr-max", help="Peak of the cyclic learning rate.")] = 5e-3,
    eps_warmup: Annotated[float, typer.Option("--eps-warmup", help="Fraction of the run over which eps ramps up from 0 (0: off, as in the paper).")] = 0.3,
    optimizer: Annotated[str, typer.Option(help="adam (MNIST setting) or sgd (momentum 0.9, CIFAR setting).")] = "adam",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Training batch size.")] = 100,
    val_size: Annotated[int, typer.Option("--val-size", help="Training images held out to watch PGD accuracy (early stop).")] = 1000,
    reset: Annotated[bool, typer.Option("--reset/--fine-tune", help="Re-initialise the weights, or fine-tune the given ones.")] = False,
    num: Annotated[Optional[int], typer.Option("-n", "--num", help="Train on this many sampled images (default: all).")] = None,
    seed: Annotated[int, typer.Option(max=MAX_SEED, help="Seed for sampling, initialisation and perturbations.")] = 0,
    restart: Annotated[bool, typer.Option("--restart", help="Ignore a checkpoint from an earlier run and start over.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean applied inside the model (not saved in it).")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std applied inside the model (not saved in it).")] = None,
    clip: Annotated[str, typer.Option(help="Valid input range lo,hi of the model's pixel space.")] = "0,1",
    layout: Annotated[Optional[str], typer.Option(help="NCHW or NHWC when the data layout is ambiguous.")] = None,
    x_key: Annotated[Optional[str], typer.Option("--x-key", help="Array name of images in an .npz.")] = None,
    y_key: Annotated[Optional[str], typer.Option("--y-key", help="Array name of labels in an .npz.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """"Fast is better than free" adversarial training (FGSM + random start, cyclic LR, PGD early stop)."""
    import json

    import numpy as np
    import torch

    from robaudit.data import select
    from robaudit.defences.adv_training import FastAtConfig, checkpoint_path, train_fast_at
    from robaudit.engine.session import load_inputs, seed_everything

    cfg = FastAtConfig(eps=eps, alpha=alpha, epochs=epochs, batch_size=batch_size, lr_max=lr_max, eps_warmup=eps_warmup,
                       optimizer=optimizer, val_size=val_size, reset=reset, seed=seed)
    if out.suffix.lower() != ".pt":
        raise ConfigError(f"--out must name a TorchScript .pt file, got {out}")
    from robaudit.report.writer import check_writable

    check_writable(out)
    if num is not None and num < 1:
        raise ConfigError(f"-n must be >= 1, got {num}")
    opts = input_options(data, device, mean, std, clip, layout, x_key, y_key)
    import dataclasses

    seed_everything(seed)
    inputs = load_inputs(dataclasses.replace(opts, model=model))
    if inputs.model.info.format != "torchscript":
        raise ConfigError(f"defend train needs a TorchScript (.pt) model, got {inputs.model.info.format}")
    misfit = inputs.model.info.channel_misfit()
    if misfit:  # training would fit the network to copies of the images
        raise DataLoadError(f"the data does not fit the model: {misfit}; to train it on these images, give them "
                            f"{inputs.model.info.first_conv_channels} channels in the data")
    idx = select(inputs.data, num, seed)
    x = torch.from_numpy(np.ascontiguousarray(inputs.data.x[idx]))
    y = torch.from_numpy(np.ascontiguousarray(inputs.data.y[idx])).long()
    if restart:
        checkpoint_path(out).unlink(missing_ok=True)
    progress = progress_bars(_err, quiet)
    with progress:
        result = train_fast_at(inputs.model, x, y, cfg, out, _TrainProgress(progress))
    summary = {"out": str(out), "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
               "resumed_from_epoch": result.resumed_from, "config": dataclasses.asdict(cfg),
               "history": [dataclasses.asdict(h) for h in result.history],
               "command": ["robaudit", *sys.argv[1:]]}
    from robaudit.report.writer import write_json_atomic

    write_json_atomic(out.with_name(out.name + ".json"), summary)
    best = next((h for h in result.history if h.epoch == result.best_epoch), None)
    if best is not None:
        resumed = (f"; resumed from {checkpoint_path(out).name} after epoch {result.resumed_from}"
                   if result.resumed_from else "")
        _err.print(f"wrote {out} (epoch {best.epoch}: {_val_text(best, f'val PGD-{cfg.val_pgd_steps}')} at eps "
                   f"{eps:g}); training log {out.name}.json{resumed}", highlight=False)
    if not quiet:
        echo(json.dumps({k: summary[k] for k in ("out", "best_epoch", "stopped_early")}))
