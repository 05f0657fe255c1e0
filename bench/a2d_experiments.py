"""Reproduce Attack-as-Defense (Zhao et al., ISSTA 2021) with robaudit's detect layer.

Prints: the AUROC tables (rows: crafting attacks, columns: cost attacks) on the shared MNIST
LeNet-5 and CIFAR-10 ResNet-20, for early-stopped crafting (A2D's "BIM-A": each input stops as soon
as it is adversarial; FGSM at the smallest eps of a grid) and full-budget crafting; the adaptive
high-confidence CW-L2 sweep (AUROC and L2 per kappa, A2D alone, feature squeezing alone, and the
two combined); and the per-input latency and pass count of scoring with one cost attack.

Usage: python bench/a2d_experiments.py [--mnist N] [--cifar N] [--kappa N] [--sections mnist,cifar,kappa,latency]
CPU only by default; ``--device cuda`` when one is there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from robaudit.attacks.registry import AttackName
from robaudit.detect.costs import default_cost_params, measure_costs
from robaudit.detect.detectors import EnsembleDetector, ThresholdDetector, ZScoreDetector
from robaudit.detect.interface import SQUEEZE_FEATURE, CostName
from robaudit.detect.metrics import auroc, rates
from robaudit.detect.squeeze import SqueezeParams, squeeze_scores
from robaudit.engine.detect_job import craft
from robaudit.engine.evaluation import build_evaluation_set
from robaudit.engine.session import InputOptions, load_inputs

ART = Path(__file__).resolve().parents[1] / "artifacts"
MNIST = InputOptions(model=str(ART / "mnist_lenet5_clean.pt"), data=str(ART / "mnist_test.npz"), device="cpu")
# the TorchScript file normalises inside (the manifest's mean/std are already applied by the model)
CIFAR = InputOptions(model=str(ART / "cifar10_resnet20.pt"), data=str(ART / "cifar10_exact761.npz"), device="cpu")


def log(*a: object) -> None:
    print(*a, flush=True)


def auroc_table(opts: InputOptions, n: int, costs: list[CostName], rows: list[tuple[str, AttackName, str]],
                seed: int = 0, batch: int = 128) -> dict:
    inp = load_inputs(opts)
    model = inp.model
    ev = build_evaluation_set(model, inp.data, n, seed, batch)
    params = [default_cost_params(c, model.info.input_shape, model.clip) for c in costs]
    t = time.perf_counter()
    bres = measure_costs(model, ev.x, params, clip=model.clip, batch_size=batch, seed=seed)
    log(f"  benign: n={ev.n}, costs in {time.perf_counter() - t:.0f}s; "
        + ", ".join(f"{k} median {np.median(v):.0f}" for k, v in bres.costs.items()))
    out = {"n_benign": ev.n, "params": [p.to_dict() for p in params], "rows": {},
           "benign_latency": {k: {"ms_per_input": 1000 * bres.seconds[k] / ev.n,
                                  "fwd_per_input": bres.forward_passes[k] / ev.n,
                                  "bwd_per_input": bres.backward_passes[k] / ev.n} for k in bres.costs}}
    half = np.arange(ev.n) % 2 == 0
    for label, attack, mode in rows:
        t = time.perf_counter()
        cr = craft(model, ev.x, ev.y, attack, mode=mode, seed=seed, batch_size=batch)
        ares = measure_costs(model, cr.x, params, clip=model.clip, batch_size=batch, seed=seed)
        row = {"n_adv": int(cr.x.shape[0]), "mean_l2": float(cr.l2.mean()), "mean_linf": float(cr.linf.mean()),
               "auroc": {}, "tpr_at_5pct": {}}
        for c in bres.costs:
            row["auroc"][c] = auroc(-bres.costs[c], -ares.costs[c])
            det = ZScoreDetector.fit(c, bres.costs[c][half].astype(float), 0.05)
            r = rates(det.flag({c: bres.costs[c][~half].astype(float)}), det.flag({c: ares.costs[c].astype(float)}))
            row["tpr_at_5pct"][c] = r
        out["rows"][label] = row
        log(f"  {label:<16} n_adv={row['n_adv']:>3} L2={row['mean_l2']:.3f} Linf={row['mean_linf']:.3f} "
            + " ".join(f"{c}={v:.3f}" for c, v in row["auroc"].items())
            + f"  ({time.perf_counter() - t:.0f}s)")
    return out


def print_table(title: str, res: dict) -> None:
    cols = list(next(iter(res["rows"].values()))["auroc"])
    log(f"\n{title} (n benign = {res['n_benign']})")
    log("| attack (crafting) | n adv | mean L2 | " + " | ".join(cols) + " | TPR / FPR at z (5 % target), " + cols[0] + " |")
    log("|---|---|---|" + "---|" * len(cols) + "---|")
    for label, row in res["rows"].items():
        r = row["tpr_at_5pct"][cols[0]]
        log(f"| {label} | {row['n_adv']} | {row['mean_l2']:.2f} | " + " | ".join(f"{row['auroc'][c]:.3f}" for c in cols)
            + f" | {r['tpr']:.3f} / {r['fpr']:.3f} |")


def kappa_sweep(opts: InputOptions, n: int, kappas: list[float], seed: int = 0, batch: int = 128) -> dict:
    inp = load_inputs(opts)
    model = inp.model
    ev = build_evaluation_set(model, inp.data, n, seed + 1, batch)
    p = default_cost_params(CostName.BIM_LINF, model.info.input_shape, model.clip)
    sq = SqueezeParams.default_for(model.info.input_shape)
    bcost = measure_costs(model, ev.x, [p], clip=model.clip, batch_size=batch).costs[p.name.value].astype(float)
    bsq = squeeze_scores(model, ev.x, sq, clip=model.clip)
    half = np.arange(ev.n) % 2 == 0
    benign = {p.name.value: bcost, SQUEEZE_FEATURE: bsq}
    btest = {k: v[~half] for k, v in benign.items()}
    a2d = ZScoreDetector.fit(p.name.value, bcost[half], 0.05)
    fs = ThresholdDetector.fit(bsq[half], 0.05)
    combo = EnsembleDetector([ZScoreDetector.fit(p.name.value, bcost[half], 0.025), ThresholdDetector.fit(bsq[half], 0.025)], 1)
    out = {"n_benign": ev.n, "rows": []}
    log(f"\nadaptive CW-L2 sweep (n benign = {ev.n}; thresholds fitted on half the benign inputs, FPR on the other half)")
    log("| kappa | n adv | mean L2 | median BIM cost | AUROC A2D | AUROC squeeze | AUROC A2D+squeeze | TPR A2D | TPR squeeze | TPR A2D+squeeze (FPR) |")
    log("|---|---|---|---|---|---|---|---|---|---|")
    for k in kappas:
        cr = craft(model, ev.x, ev.y, AttackName.CW_L2, seed=seed, batch_size=batch, params={"confidence": float(k)})
        ac = measure_costs(model, cr.x, [p], clip=model.clip, batch_size=batch).costs[p.name.value].astype(float)
        asq = squeeze_scores(model, cr.x, sq, clip=model.clip)
        adv = {p.name.value: ac, SQUEEZE_FEATURE: asq}
        row = {"kappa": k, "n_adv": int(cr.x.shape[0]), "mean_l2": float(cr.l2.mean()), "median_cost": float(np.median(ac)),
               "auroc_a2d": auroc(-bcost, -ac), "auroc_squeeze": auroc(bsq, asq),
               "auroc_combo": auroc(combo.score(benign), combo.score(adv)),
               "a2d": rates(a2d.flag(btest), a2d.flag(adv)), "squeeze": rates(fs.flag(btest), fs.flag(adv)),
               "combo": rates(combo.flag(btest), combo.flag(adv))}
        out["rows"].append(row)
        log(f"| {k:g} | {row['n_adv']} | {row['mean_l2']:.3f} | {row['median_cost']:.0f} | {row['auroc_a2d']:.3f} | "
            f"{row['auroc_squeeze']:.3f} | {row['auroc_combo']:.3f} | {row['a2d']['tpr']:.3f} | {row['squeeze']['tpr']:.3f} | "
            f"{row['combo']['tpr']:.3f} ({row['combo']['fpr']:.3f}) |")
    return out


def latency(opts: InputOptions, n: int, seed: int = 0) -> dict:
    inp = load_inputs(opts)
    model = inp.model
    ev = build_evaluation_set(model, inp.data, n, seed + 2, 128)
    p = default_cost_params(CostName.BIM_LINF, model.info.input_shape, model.clip)
    out = {}
    for bs in (1, 64):
        t = time.perf_counter()
        r = measure_costs(model, ev.x, [p], clip=model.clip, batch_size=bs)
        sec = time.perf_counter() - t
        out[bs] = {"ms_per_input": 1000 * sec / ev.n, "fwd_per_input": r.forward_passes[p.name.value] / ev.n,
                   "bwd_per_input": r.backward_passes[p.name.value] / ev.n, "median_cost": float(np.median(r.costs[p.name.value]))}
        log(f"  {Path(opts.model).name} bim-linf, batch {bs}: {out[bs]['ms_per_input']:.1f} ms per benign input, "
            f"{out[bs]['fwd_per_input']:.0f} fwd + {out[bs]['bwd_per_input']:.0f} bwd passes per input "
            f"(median cost {out[bs]['median_cost']:.0f})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnist", type=int, default=200)
    ap.add_argument("--cifar", type=int, default=100)
    ap.add_argument("--kappa", type=int, default=100)
    ap.add_argument("--sections", default="mnist,cifar,kappa,latency")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="Also write all results to this JSON file.")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sections = a.sections.split(",")
    results: dict = {}
    rows = [("FGSM (early)", AttackName.FGSM, "early"), ("FGSM (full eps)", AttackName.FGSM, "full"),
            ("BIM (early, BIM-A)", AttackName.BIM, "early"), ("BIM (full budget)", AttackName.BIM, "full"),
            ("JSMA", AttackName.JSMA, "early"), ("CW-L2 (kappa 0)", AttackName.CW_L2, "early"),
            ("DeepFool", AttackName.DEEPFOOL, "early")]
    if "mnist" in sections:
        log("MNIST LeNet-5 (eps 0.3 for FGSM/BIM)")
        results["mnist"] = auroc_table(MNIST, a.mnist, [CostName.BIM_LINF, CostName.BIM_L2, CostName.JSMA,
                                                        CostName.BOUNDARY], rows)
        print_table("MNIST LeNet-5 AUROC", results["mnist"])
    if "cifar" in sections:
        log("CIFAR-10 ResNet-20 (eps 8/255 for FGSM/BIM)")
        results["cifar"] = auroc_table(CIFAR, a.cifar, [CostName.BIM_LINF], rows)
        print_table("CIFAR-10 ResNet-20 AUROC", results["cifar"])
    if "kappa" in sections:
        results["kappa"] = kappa_sweep(MNIST, a.kappa, [0, 2, 4, 8, 16])
    if "latency" in sections:
        log("\nlatency (CPU, torch threads = %d)" % a.threads)
        results["latency"] = {"mnist": latency(MNIST, 64), "cifar": latency(CIFAR, 32)}
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
