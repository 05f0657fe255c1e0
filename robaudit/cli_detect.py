"""``robaudit detect``: fit, score and evaluate Attack-as-Defense detectors (a Typer sub-app).

Registered in :mod:`robaudit.cli` with ``app.add_typer(detect_app, name="detect")``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from robaudit.cli_audit import busy
from robaudit.consoles import echo, stderr_console, stdout_console
from robaudit.data.sampling import MAX_SEED
from robaudit.errors import ConfigError

detect_app = typer.Typer(
    name="detect",
    help="Attack-as-Defense: detect adversarial inputs by how few attack iterations flip them.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

_out = stdout_console()
_err = stderr_console()

ModelArg = Annotated[str, typer.Argument(help="Model file (.pt TorchScript, .onnx) or demo:mnist / demo:cifar10.")]
DataOpt = Annotated[str, typer.Option("--data", "-d", help="Inputs: .npz, image folder, MNIST IDX, CIFAR-10 .bin, or demo:mnist.")]
CostOpt = Annotated[str, typer.Option("--cost", help="Cost attacks: bim-linf, bim-l2, jsma, boundary (comma-separated).")]
NumOpt = Annotated[Optional[int], typer.Option("-n", "--num", help="Number of inputs to sample (default: all).")]
SeedOpt = Annotated[int, typer.Option(max=MAX_SEED, help="Seed for sampling, crafting and cost attacks.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Batch size.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
MeanOpt = Annotated[Optional[str], typer.Option(help="Per-channel mean applied inside the model.")]
StdOpt = Annotated[Optional[str], typer.Option(help="Per-channel std applied inside the model.")]
ClipOpt = Annotated[str, typer.Option(help="Valid input range lo,hi.")]
MaxIterOpt = Annotated[Optional[int], typer.Option("--max-iter", help="Cap of every cost attack (default: 500 BIM, 100 JSMA, 200 boundary).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the path of the written file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the JSON report instead of a table.")]
XKeyOpt = Annotated[Optional[str], typer.Option("--x-key", help="Array name of images in an .npz.")]
YKeyOpt = Annotated[Optional[str], typer.Option("--y-key", help="Array name of labels in an .npz.")]


def _common(model: str, data: str, cost: str | None, num: int | None, seed: int, batch_size: int, device: str,
            mean: str | None, std: str | None, clip: str, max_iter: int | None, x_key: str | None = None,
            y_key: str | None = None, labels_optional: bool = False) -> Any:
    import dataclasses

    from robaudit.cli_audit import input_options
    from robaudit.detect.interface import CostName
    from robaudit.engine.detect_job import DetectCommon

    inputs = dataclasses.replace(input_options(data, device, mean, std, clip, None, x_key, y_key, model),
                                 labels_optional=labels_optional)
    return DetectCommon(inputs=inputs, n=num, seed=seed, batch_size=batch_size,
                        costs=None if cost is None else tuple(CostName.parse_list(cost)), max_iter=max_iter)


def _command() -> list[str]:
    return ["robaudit", *sys.argv[1:]]


@detect_app.command("fit")
def fit_cmd(
    model: ModelArg, data: DataOpt,
    cost: CostOpt = "bim-linf",
    detector: Annotated[str, typer.Option(help="zscore, knn, ensemble or squeeze.")] = "zscore",
    adversarial: Annotated[Optional[str], typer.Option("--adversarial", help="Adversarial inputs (.npz) to train k-NN on.")] = None,
    attack: Annotated[Optional[str], typer.Option("--attack", "-a", help="Attacks to craft k-NN training inputs with.")] = None,
    craft_mode: Annotated[str, typer.Option("--craft", help="early (stop at first success, A2D's BIM-A) or full budget.")] = "early",
    fpr: Annotated[float, typer.Option(help="Target false-positive rate of the thresholds.")] = 0.05,
    k: Annotated[Optional[int], typer.Option("-k", show_default=False, help="Neighbours (knn; default 5) or votes needed (ensemble; default 1).")] = None,
    squeeze: Annotated[bool, typer.Option("--squeeze", help="Add the feature-squeezing detector to an ensemble.")] = False,
    num: NumOpt = None, seed: SeedOpt = 0, batch_size: BatchOpt = 128, device: DeviceOpt = "auto",
    mean: MeanOpt = None, std: StdOpt = None, clip: ClipOpt = "0,1", max_iter: MaxIterOpt = None,
    x_key: XKeyOpt = None, y_key: YKeyOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the detector (JSON).")] = Path("detector.json"),
    quiet: QuietOpt = False,
) -> None:
    """Fit a detector on benign inputs (and adversarial ones for k-NN) and write it as JSON."""
    from robaudit.attacks.registry import parse_attack_names
    from robaudit.detect.interface import DetectorKind
    from robaudit.engine.detect_job import FitJob, run_fit_job
    from robaudit.report.writer import check_writable

    common = _common(model, data, cost, num, seed, batch_size, device, mean, std, clip, max_iter, x_key, y_key)
    kind = DetectorKind.parse(detector)
    if adversarial and attack:
        raise ConfigError("pass either --adversarial or --attack, not both")
    if k is not None and k < 1:
        raise ConfigError(f"-k must be >= 1, got {k}")
    if k is not None and kind not in (DetectorKind.KNN, DetectorKind.ENSEMBLE):
        raise ConfigError(f"-k applies to the knn and ensemble detectors, not {kind.value}")
    if (adversarial or attack) and kind is not DetectorKind.KNN:
        raise ConfigError(f"--adversarial and --attack give the knn detector its adversarial training inputs; "
                          f"{kind.value} is fitted on benign inputs only")
    job = FitJob(common=common, detector=kind, adversarial=adversarial,
                 attacks=tuple(parse_attack_names(attack)) if attack else (), craft_mode=craft_mode, fpr=fpr,
                 knn_k=5 if k is None else k, ensemble_k=1 if k is None else k, squeeze=squeeze)
    check_writable(out)  # before the work, not after it
    with busy(_err, "fitting detector", quiet) as steps:
        dfile, summary = run_fit_job(job, _command(), steps)
    path = dfile.save(out)
    for w in summary["fit"].get("warnings", []):
        _err.print(f"warning: {w}", highlight=False)
    if quiet:
        echo(str(path))
        return
    d = dfile.detector.to_dict()
    _out.print(f"{d['kind']} detector on {summary['n_benign']} benign inputs, costs "
               f"{', '.join(p.name.value for p in dfile.costs) or '-'}; false-positive rate on the fit data "
               f"{summary['fit']['fit_fpr']:.3f}"
               + (f", detection rate on its adversarial training inputs {summary['fit']['fit_tpr']:.3f}"
                  if "fit_tpr" in summary["fit"] else ""), highlight=False)
    for name, st in summary["fit"]["benign_costs"].items():
        _out.print(f"  benign {name}: mean {st['mean']:.1f}, median {st['median']:.0f}, min {st['min']:.0f}",
                   highlight=False)
    _err.print(f"detector written to {path}", highlight=False)


@detect_app.command("score")
def score_cmd(
    model: ModelArg, data: DataOpt,
    detector: Annotated[Path, typer.Option("--detector", help="Detector file written by `detect fit`.")] = Path("detector.json"),
    num: NumOpt = None, seed: SeedOpt = 0, batch_size: BatchOpt = 128, device: DeviceOpt = "auto",
    mean: MeanOpt = None, std: StdOpt = None, clip: ClipOpt = "0,1",
    x_key: XKeyOpt = None, y_key: YKeyOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the JSON report.")] = Path("robaudit-detect-score.json"),
    json_out: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Per-input attack cost, score and verdict (JSON report plus a table)."""
    from robaudit.engine.detect_job import ScoreJob, run_score_job
    from robaudit.report.writer import check_writable, write_json_atomic

    common = _common(model, data, None, num, seed, batch_size, device, mean, std, clip, None, x_key, y_key,
                     labels_optional=True)  # scoring reads images only: unlabelled inputs are fine
    check_writable(out)
    with busy(_err, "scoring", quiet):
        report = run_score_job(ScoreJob(common=common, detector_path=str(detector)), _command())
    path = write_json_atomic(out, report)
    if quiet:
        echo(str(path))
        return
    if json_out:
        import json

        echo(json.dumps(report, indent=2))
        return
    rows = report["inputs"]
    feats = [k for k in (rows[0] if rows else {}) if k not in ("index", "prediction", "score", "adversarial")]
    table = Table(title=f"detect score ({report['detector']['kind']})")
    for col in ("index", "pred", *feats, "score", "verdict"):
        table.add_column(col, justify="right" if col != "verdict" else "left")
    for r in rows[:200]:
        table.add_row(str(r["index"]), str(r["prediction"]), *[f"{r[f]:.4g}" for f in feats], f"{r['score']:.3f}",
                      "ADVERSARIAL" if r["adversarial"] else "benign")
    _out.print(table)
    s, lat = report["summary"], report["latency"]
    _out.print(f"{s['flagged']} of {s['n']} flagged; {1000 * (lat['seconds_per_input'] or 0):.1f} ms and "
               f"{lat['forward_passes_per_input']:.0f} forward / {lat['backward_passes_per_input']:.0f} backward "
               "passes per input", highlight=False)
    _err.print(f"report written to {path}", highlight=False)


@detect_app.command("eval")
def eval_cmd(
    model: ModelArg, data: DataOpt,
    attack: Annotated[str, typer.Option("--attack", "-a", help="Attacks whose adversarial examples to detect.")] = "fgsm,bim,jsma,cw-l2,deepfool",
    cost: Annotated[Optional[str], typer.Option("--cost", show_default=False, help="Cost attacks: bim-linf, bim-l2, jsma, boundary (comma-separated; default bim-linf; not with --detector, whose file names its own).")] = None,
    craft_mode: Annotated[str, typer.Option("--craft", help="early (stop at first success, A2D's BIM-A) or full budget.")] = "early",
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="Crafting-attack parameter ATTACK.NAME=VALUE (repeatable; e.g. cw-l2.confidence=8 for an adaptive high-confidence C&W).")] = None,
    detector: Annotated[Optional[Path], typer.Option("--detector", help="Use this detector's thresholds (default: fit z-scores on half the benign inputs).")] = None,
    squeeze: Annotated[bool, typer.Option("--squeeze", help="Also evaluate feature squeezing and A2D+squeeze.")] = False,
    fpr: Annotated[Optional[float], typer.Option(help="Target false-positive rate of the thresholds eval fits (default 0.05; not with --detector, whose file has its own).")] = None,
    num: NumOpt = None, seed: SeedOpt = 0, batch_size: BatchOpt = 128, device: DeviceOpt = "auto",
    mean: MeanOpt = None, std: StdOpt = None, clip: ClipOpt = "0,1",
    max_iter: Annotated[Optional[int], typer.Option("--max-iter", help="Cap of every cost attack (default: 500 BIM, 100 JSMA, 200 boundary; not with --detector).")] = None,
    x_key: XKeyOpt = None, y_key: YKeyOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the JSON report.")] = Path("robaudit-detect.json"),
    json_out: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """AUROC table (rows attacks, columns cost attacks), detection rates at the thresholds, latency."""
    from robaudit.attacks.registry import parse_attack_names
    from robaudit.cli import _params
    from robaudit.engine.detect_job import EvalJob, run_eval_job
    from robaudit.report.writer import check_writable, write_json_atomic

    common = _common(model, data, cost, num, seed, batch_size, device, mean, std, clip, max_iter, x_key, y_key)
    attacks = tuple(parse_attack_names(attack))
    job = EvalJob(common=common, attacks=attacks, craft_mode=craft_mode, fpr=fpr, attack_params=_params(param, attacks),
                  detector_path=str(detector) if detector else None, squeeze=squeeze)
    check_writable(out)
    with busy(_err, "evaluating", quiet) as steps:
        report = run_eval_job(job, _command(), steps)
    path = write_json_atomic(out, report)
    if quiet:
        for w in report.get("warnings", []):
            _err.print(f"warning: {w}", highlight=False)
        echo(str(path))
        return
    if json_out:
        import json

        echo(json.dumps(report, indent=2))
        return
    print_eval(report, _out)
    _err.print(f"report written to {path}", highlight=False)


def print_eval(report: dict[str, Any], console: Console) -> None:
    """Render an eval report: AUROC table, detection table, latency."""
    table = Table(title=f"AUROC (crafting: {report['config']['craft_mode']})")
    cols = list(next(iter(report["auroc"].values()), {}).keys())
    table.add_column("attack")
    table.add_column("n adv", justify="right")
    for c in cols:
        table.add_column(c, justify="right")
    for a, row in report["auroc"].items():
        table.add_row(a, str(report["attacks"][a]["n_adversarial"]),
                      *["-" if row[c] is None else f"{row[c]:.3f}" for c in cols])
    console.print(table)
    target = report["config"]["target_fpr"]
    benign = report.get("benign", {})
    held = (f"; FPR on {benign['n_test']} held-out benign inputs" if benign.get("n_test") is not None else "")
    det = Table(title=f"detection at the thresholds (target FPR {target}{held})" if target is not None
                else f"detection by the k-NN detector{held}")
    det.add_column("attack", no_wrap=True)  # names are never cut (`bim-linf…`); headers of numbers wrap instead
    det.add_column("detector", no_wrap=True)
    n_mis = int(benign.get("n_misclassified") or 0)
    mis = (benign.get("flag_rate_misclassified") or {}) if n_mis else {}
    cols = ["n adv", "n benign", "TPR", "FPR", "bal. acc."] + ([f"wrong ({n_mis})"] if mis else [])
    for c in cols:
        det.add_column(c, justify="right")

    def num(v: Any) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    for a, by in report["detection"].items():
        for name, r in by.items():
            counts = [str(r.get("n_adversarial", "-")), str(r.get("n_benign", "-"))]
            det.add_row(a, name, *counts, *(num(r.get(k)) for k in ("tpr", "fpr", "balanced_accuracy")),
                        *([num(mis.get(name))] if mis else []))
    console.print(det)
    if mis:
        console.print(f"FPR is over correctly classified benign inputs; the {n_mis} sampled benign input"
                      f"{'s' if n_mis != 1 else ''} the model misclassifies are flagged at the rate in the last column (wrong); "
                      "bal. acc. = (TPR + 1 - FPR) / 2",
                      highlight=False)
    for name, lat in report["latency"].items():
        console.print(f"latency {name}: {1000 * lat['benign_seconds_per_input']:.1f} ms per benign input, "
                      f"{lat['benign_forward_per_input']:.0f} forward / {lat['benign_backward_per_input']:.0f} "
                      "backward passes", highlight=False)
    for w in report.get("warnings", []):
        console.print(f"warning: {w}", highlight=False)
