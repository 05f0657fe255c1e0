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
from robaudit.detect.costs import CostResult, default_cost_params, measure_costs
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
                seed: int = 0, batch: int = 128, checkpoint: "Path | None" = None, reuse: dict | None = None) -> dict:
    """AUROC per (crafting row, cost); z-score TPR/FPR fitted on the even-indexed benign half, FPR on
    the odd half. Raw costs are kept in the result (``benign_costs``, per row ``adv_costs``) so the
    detection columns can be recomputed; with ``checkpoint`` the partial result is written after each row."""
    inp = load_inputs(opts)
    model = inp.model
    ev = build_evaluation_set(model, inp.data, n, seed, batch)
    params = [default_cost_params(c, model.info.input_shape, model.clip) for c in costs]
    t = time.perf_counter()
    if reuse is not None and reuse.get("n_benign") == ev.n and reuse.get("params") == [p.to_dict() for p in params]:
        # benign costs of the same inputs and parameters from an earlier (partial) run: BIM costs are deterministic
        bres = CostResult({k: np.asarray(v, dtype=np.int64) for k, v in reuse["benign_costs"].items()},
                          np.zeros(ev.n, np.int64), {k: float("nan") for k in reuse["benign_costs"]},
                          {k: 0 for k in reuse["benign_costs"]}, {k: 0 for k in reuse["benign_costs"]})
        log("  benign costs reused from an earlier run")
    else:
        bres = measure_costs(model, ev.x, params, clip=model.clip, batch_size=batch, seed=seed)
    log(f"  benign: n={ev.n}, costs in {time.perf_counter() - t:.0f}s; "
        + ", ".join(f"{k} median {np.median(v):.0f}" for k, v in bres.costs.items()))
    out = {"n_benign": ev.n, "params": [p.to_dict() for p in params], "rows": {},
           "benign_costs": {k: v.tolist() for k, v in bres.costs.items()},
           "benign_latency": {k: {"ms_per_input": 1000 * bres.seconds[k] / ev.n,
                                  "fwd_per_input": bres.forward_passes[k] / ev.n,
                                  "bwd_per_input": bres.backward_passes[k] / ev.n} for k in bres.costs}}
    half = np.arange(ev.n) % 2 == 0
    for label, attack, mode in rows:
        t = time.perf_counter()
        cr = craft(model, ev.x, ev.y, attack, mode=mode, seed=seed, batch_size=batch)
        ares = measure_costs(model, cr.x, params, clip=model.clip, batch_size=batch, seed=seed)
        row = {"n_adv": int(cr.x.shape[0]), "mean_l2": float(cr.l2.mean()), "mean_linf": float(cr.linf.mean()),
               "auroc": {}, "tpr_at_5pct": {}, "adv_costs": {k: v.tolist() for k, v in ares.costs.items()},
               "seconds": 0.0}
        for c in bres.costs:
            row["auroc"][c] = auroc(-bres.costs[c], -ares.costs[c])
            det = ZScoreDetector.fit(c, bres.costs[c][half].astype(float), 0.05)
            r = rates(det.flag({c: bres.costs[c][~half].astype(float)}), det.flag({c: ares.costs[c].astype(float)}))
            row["tpr_at_5pct"][c] = r
        row["zscore_rule"] = {c: ZScoreDetector.fit(c, bres.costs[c][half].astype(float), 0.05).fit_info.get("rule")
                              for c in bres.costs}
        row["seconds"] = time.perf_counter() - t
        out["rows"][label] = row
        if checkpoint is not None:
            checkpoint.write_text(json.dumps(out, default=float))
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
    log("z-score TPR / FPR per cost (fit on even benign half, FPR on odd half, target 0.05): "
        + "; ".join(f"{label}: " + ", ".join(f"{c} {row['tpr_at_5pct'][c]['tpr']:.2f}/{row['tpr_at_5pct'][c]['fpr']:.2f}"
                                              for c in cols) for label, row in res["rows"].items()))


class ClassPCA:
    """Class-conditional reconstruction distance (a cheap, non-gradient partner for A2D): per class,
    the mean and the top ``k`` principal components of benign images of that class (true labels).
    Score of an input: the L2 distance between the input and its reconstruction in the subspace
    of the class the *model predicts* (larger = more suspicious). An adversarial example still
    looks like its source class, so the wrong class's subspace reconstructs it poorly. ``k`` is
    fixed a priori (never tuned on adversarial examples)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, k: int = 20) -> None:
        x = x.reshape(x.shape[0], -1).astype(np.float64)
        self.k, self.means, self.bases = k, {}, {}
        for c in np.unique(y):
            xc = x[y == c]
            mu = xc.mean(0)
            _, _, vt = np.linalg.svd(xc - mu, full_matrices=False)
            self.means[int(c)], self.bases[int(c)] = mu, vt[:k]

    def score(self, x: torch.Tensor, pred: np.ndarray) -> np.ndarray:
        xf = x.reshape(x.shape[0], -1).double().numpy()
        out = np.zeros(xf.shape[0])
        for c, mu in self.means.items():
            m = pred == c
            if m.any():
                r = xf[m] - mu
                out[m] = np.linalg.norm(r - (r @ self.bases[c].T) @ self.bases[c], axis=1)
        return out


def kappa_sweep(opts: InputOptions, n: int, kappas: list[float], seed: int = 0, batch: int = 128,
                pca_pool: int = 5000, pca_k: int = 20) -> dict:
    """Adaptive high-confidence CW-L2 against A2D (bim-linf z-score), feature squeezing and the
    class-conditional PCA partner. Benign inputs: ``n`` correctly classified; every threshold is
    fitted on the even-indexed half (benign only) and its FPR measured on the odd half; the CW
    examples are crafted from the odd half. The PCA partner is fitted on ``pca_pool`` other test
    images (disjoint from the ``n``). "union" = A2D OR partner, each at half the 5 % target."""
    inp = load_inputs(opts)
    model = inp.model
    ev = build_evaluation_set(model, inp.data, n, seed + 1, batch)
    rest = np.setdiff1d(np.arange(len(inp.data.y)), ev.indices)
    pool = np.random.default_rng(seed + 123).choice(rest, size=min(pca_pool, rest.size), replace=False)
    pca = ClassPCA(np.asarray(inp.data.x[pool]), np.asarray(inp.data.y[pool]), pca_k)
    p = default_cost_params(CostName.BIM_LINF, model.info.input_shape, model.clip)
    sq = SqueezeParams.default_for(model.info.input_shape)
    bres = measure_costs(model, ev.x, [p], clip=model.clip, batch_size=batch)
    bcost = bres.costs[p.name.value].astype(float)
    bsq = squeeze_scores(model, ev.x, sq, clip=model.clip)
    bpca = pca.score(ev.x, bres.predictions)
    half = np.arange(ev.n) % 2 == 0
    c = p.name.value
    benign = {c: bcost, SQUEEZE_FEATURE: bsq, "pca": bpca}
    bfit = {k: v[half] for k, v in benign.items()}
    btest = {k: v[~half] for k, v in benign.items()}
    a2d = ZScoreDetector.fit(c, bfit[c], 0.05)
    fs = ThresholdDetector.fit(bfit[SQUEEZE_FEATURE], 0.05)
    pc = ThresholdDetector.fit(bfit["pca"], 0.05, feature_name="pca")
    union = EnsembleDetector([ZScoreDetector.fit(c, bfit[c], 0.025), ThresholdDetector.fit(bfit["pca"], 0.025, feature_name="pca")], 1)
    union_sq = EnsembleDetector([ZScoreDetector.fit(c, bfit[c], 0.025), ThresholdDetector.fit(bfit[SQUEEZE_FEATURE], 0.025)], 1)
    out = {"n_benign": ev.n, "n_benign_fit": int(half.sum()), "n_benign_test": int((~half).sum()),
           "pca": {"pool": int(pool.size), "k": pca_k}, "a2d_fit": a2d.fit_info, "rows": []}
    log(f"\nadaptive CW-L2 sweep (benign n = {ev.n}: thresholds fitted on {int(half.sum())}, FPR on {int((~half).sum())}; "
        f"CW crafted from the {int((~half).sum())} test inputs; class-PCA k={pca_k} fitted on {pool.size} other test images)")
    log("| kappa | n adv | mean L2 | median BIM cost | AUROC A2D | AUROC PCA | AUROC A2D∪PCA | AUROC squeeze | "
        "TPR A2D | TPR PCA | TPR A2D∪PCA | TPR squeeze | TPR A2D∪squeeze |")
    log("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    xs, ys = ev.x[~half], ev.y[~half]
    for k in kappas:
        cr = craft(model, xs, ys, AttackName.CW_L2, seed=seed, batch_size=batch, params={"confidence": float(k)})
        ares = measure_costs(model, cr.x, [p], clip=model.clip, batch_size=batch)
        adv = {c: ares.costs[c].astype(float), SQUEEZE_FEATURE: squeeze_scores(model, cr.x, sq, clip=model.clip),
               "pca": pca.score(cr.x, ares.predictions)}
        row = {"kappa": k, "n_adv": int(cr.x.shape[0]), "mean_l2": float(cr.l2.mean()),
               "median_cost": float(np.median(adv[c])),
               "auroc_a2d": auroc(-btest[c], -adv[c]), "auroc_pca": auroc(btest["pca"], adv["pca"]),
               "auroc_union": auroc(union.score(btest), union.score(adv)),
               "auroc_squeeze": auroc(btest[SQUEEZE_FEATURE], adv[SQUEEZE_FEATURE]),
               "auroc_union_squeeze": auroc(union_sq.score(btest), union_sq.score(adv)),
               "a2d": rates(a2d.flag(btest), a2d.flag(adv)), "pca": rates(pc.flag(btest), pc.flag(adv)),
               "union": rates(union.flag(btest), union.flag(adv)), "squeeze": rates(fs.flag(btest), fs.flag(adv)),
               "union_squeeze": rates(union_sq.flag(btest), union_sq.flag(adv))}
        out["rows"].append(row)
        log(f"| {k:g} | {row['n_adv']} | {row['mean_l2']:.3f} | {row['median_cost']:.0f} | {row['auroc_a2d']:.3f} | "
            f"{row['auroc_pca']:.3f} | {row['auroc_union']:.3f} | {row['auroc_squeeze']:.3f} | "
            f"{row['a2d']['tpr']:.3f} | {row['pca']['tpr']:.3f} | {row['union']['tpr']:.3f} | {row['squeeze']['tpr']:.3f} | "
            f"{row['union_squeeze']['tpr']:.3f} |")
    log("benign test FPR: " + ", ".join(f"{name} {rates(d.flag(btest), d.flag(btest))['fpr']:.3f}" for name, d in
                                        (("A2D", a2d), ("PCA", pc), ("A2D∪PCA", union), ("squeeze", fs), ("A2D∪squeeze", union_sq))))
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
    ap.add_argument("--kappa", type=int, default=200, help="Benign inputs of the kappa sweep (half fit, half test).")
    ap.add_argument("--sections", default="mnist,cifar,kappa,latency")
    ap.add_argument("--cifar-costs", default="bim-linf,bim-l2",
                    help="Cost attacks for the CIFAR table (jsma on 3072 features is slow on CPU).")
    ap.add_argument("--rows", default=None, help="Semicolon-separated row label prefixes to run, in order (default: all).")
    ap.add_argument("--reuse-benign", default=None, help="A (partial) --json result whose benign costs to reuse.")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="Also write all results to this JSON file.")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sections = a.sections.split(",")
    results: dict = {}
    rows = [("FGSM (early)", AttackName.FGSM, "early"), ("FGSM (full eps)", AttackName.FGSM, "full"),
            ("BIM (early, BIM-A)", AttackName.BIM, "early"), ("BIM (full budget)", AttackName.BIM, "full"),
            ("CW-L2 (kappa 0)", AttackName.CW_L2, "early"), ("DeepFool", AttackName.DEEPFOOL, "early"),
            ("JSMA", AttackName.JSMA, "early")]  # JSMA last: its crafting is the slowest on CIFAR
    if a.rows:
        keep = [r.strip() for r in a.rows.split(";")]
        rows = [r for k in keep for r in rows if r[0].startswith(k)]  # in the order given
    ckpt = Path(a.json + ".partial") if a.json else None
    if "mnist" in sections:
        log("MNIST LeNet-5 (eps 0.3 for FGSM/BIM)")
        results["mnist"] = auroc_table(MNIST, a.mnist, [CostName.BIM_LINF, CostName.BIM_L2, CostName.JSMA,
                                                        CostName.BOUNDARY], rows, checkpoint=ckpt)
        print_table("MNIST LeNet-5 AUROC", results["mnist"])
    if "cifar" in sections:
        log("CIFAR-10 ResNet-20 (eps 8/255 for FGSM/BIM)")
        reuse = json.loads(Path(a.reuse_benign).read_text()) if a.reuse_benign else None
        reuse = reuse.get("cifar", reuse) if reuse else None
        results["cifar"] = auroc_table(CIFAR, a.cifar, CostName.parse_list(a.cifar_costs), rows, checkpoint=ckpt,
                                       reuse=reuse)
        print_table("CIFAR-10 ResNet-20 AUROC", results["cifar"])
    if "kappa" in sections:
        results["kappa"] = kappa_sweep(MNIST, a.kappa, [0, 2, 4, 8, 16])
        if ckpt is not None:
            ckpt.write_text(json.dumps(results, default=float))
    if "latency" in sections:
        log("\nlatency (CPU, torch threads = %d)" % a.threads)
        results["latency"] = {"mnist": latency(MNIST, 64), "cifar": latency(CIFAR, 32)}
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
