"""CLEVER: robaudit against plain ART, and CLEVER against the distortions real attacks find.

``speed``: the same model, images, norm, radius and sampling budget (``nb_batches`` x
``batch_size`` gradient points per input and class) for robaudit's estimator and ART's
``clever_u`` (untargeted) and ``clever_t`` (next-class target). ART's ``pool_factor`` is set to
``nb_batches`` so that ART also computes ``nb_batches * batch_size`` distinct gradient points per
class (its default, 10, computes fewer and resamples them more). Prints CPU seconds per image for both (the machine is shared: wall time is noisy),
the speed ratio, and the median relative difference of the scores (``|a - b| / max(|a|, |b|)``); to attribute differences it
also scores robaudit's own batch maxima with ART's fitting rule (one unregularised ``weibull_min``
fit from shape 1), and reports how many ART fits diverged. ART is slow: it can run on the first
``--art-images`` images only (robaudit runs on them too, and the ratio is per image).

``compare``: ``robaudit clever`` (via the engine) with the comparison attacks on each model and
defence stack; writes each report as JSON and a Markdown summary with CLEVER against the minimal
distortions found (DeepFool and C&W-L2 for L2, C&W-Linf for Linf), violations, and Spearman
correlations across defence stacks (per model, and pooled over the MNIST models' stacks).

Needs the shared models exported by ``scripts/export_shared.py`` (``artifacts/``).

    python bench/clever_bench.py speed --models lenet5-clean,resnet20 --images 20 --art-images 5
    python bench/clever_bench.py compare --models lenet5-clean,lenet5-adv -n 50 --stacks none,ss,jpeg
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robaudit.attacks.base import TargetMode  # noqa: E402
from robaudit.attacks.targets import compute_targets  # noqa: E402
from robaudit.clever import CleverNorm, CleverParams, estimate  # noqa: E402
from robaudit.data import load_dataset  # noqa: E402
from robaudit.engine.evaluation import build_evaluation_set  # noqa: E402
from robaudit.models.loader import load_model  # noqa: E402

ART = ROOT / "artifacts"
RESULTS = ROOT / "bench" / "results"
MODELS = {
    "lenet5-clean": ("mnist_lenet5_clean.pt", "mnist_test.npz"),
    "lenet5-adv": ("mnist_lenet5_adv.pt", "mnist_test.npz"),
    "resnet20": ("cifar10_resnet20.pt", "cifar10_exact761.npz"),
}
ART_NORM = {CleverNorm.L1: 1, CleverNorm.L2: 2, CleverNorm.LINF: np.inf}


def _load(name: str, n: int, seed: int, device: str = "cpu"):
    model_file, data_file = MODELS[name]
    model = load_model(str(ART / model_file), device=device)
    data = load_dataset(str(ART / data_file))
    return model, build_evaluation_set(model, data, n, seed, 128)


def _rel(a: float, b: float) -> float:
    """Symmetric relative difference ``|a - b| / max(|a|, |b|)`` (in [0, 1]; a diverged score of 0 gives 1)."""
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def art_fit_score(maxima: tuple[float, ...], g0: float, radius: float) -> float:
    """Our batch maxima scored by ART's rule: one unregularised weibull_min fit of the negated maxima."""
    import warnings

    from scipy import optimize, stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, loc, _ = stats.weibull_min.fit(-np.asarray(maxima), 1.0, optimizer=optimize.fmin)
    return float(min(-g0 / loc, radius)) if loc < 0 else float(radius)


def speed(args: argparse.Namespace) -> dict:
    from art.estimators.classification import PyTorchClassifier
    from art.metrics import clever_t, clever_u

    torch.set_num_threads(args.threads)
    norm = CleverNorm.parse(args.norm)
    # CPU seconds on a shared CPU; wall seconds on a GPU (its work is not this process's CPU time)
    clock = time.process_time if args.device == "cpu" else time.perf_counter
    out: dict = {"norm": norm.value, "threads": args.threads, "device": args.device,
                 "clock": "process CPU s" if args.device == "cpu" else "wall s", "models": {}}
    for name in args.models.split(","):
        nb, bs = (args.nb_batches, args.batch_size) if name != "resnet20" else (args.resnet_nb_batches,
                                                                                  args.resnet_batch_size)
        model, ev = _load(name, args.resnet_images if name == "resnet20" and args.resnet_images else args.images,
                          args.seed, args.device)
        radius = args.radius
        k = min(args.art_images if name != "resnet20" else args.resnet_art_images, ev.n)
        x, y = ev.x, ev.y
        nt = compute_targets(TargetMode.NEXT_CLASS, ev.clean_logits, y)
        params = CleverParams(nb_batches=nb, batch_size=bs)
        idx = [int(i) for i in ev.indices]
        unt = [[j for j in range(model.num_classes) if j != int(c)] for c in y]
        # ours, untargeted, on the ART images (timed), then on all images
        t = clock()
        ours_k = estimate(model, x[:k], y[:k], unt[:k], idx[:k], norm, radius, params, seed=args.seed,
                          clip=model.clip, keep_maxima=True)
        ours_u_s = (clock() - t) / k
        t = clock()
        ours_all = estimate(model, x, y, unt, idx, norm, radius, params, seed=args.seed, clip=model.clip)
        ours_all_s = (clock() - t) / ev.n
        t = clock()
        ours_t = estimate(model, x[:k], y[:k], [[int(nt[i])] for i in range(k)], idx[:k], norm, radius, params,
                          seed=args.seed, clip=model.clip, keep_maxima=True)
        ours_t_s = (clock() - t) / k
        # ART on the same images, budget and radius
        # plain ART: the network as the user gives it, not robaudit's prepared copies
        plain = load_model(str(ART / MODELS[name][0]), device=args.device, fast_copies=False)
        clf = PyTorchClassifier(plain, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(model.info.input_shape),
                                nb_classes=model.num_classes, clip_values=model.clip,
                                device_type="cpu" if args.device == "cpu" else "gpu")
        np.random.seed(args.seed)
        art_u, art_t = [], []
        t = clock()
        for i in range(k):
            art_u.append(float(clever_u(clf, x[i].numpy(), nb_batches=nb, batch_size=bs, radius=radius,
                                        norm=ART_NORM[norm], pool_factor=nb, verbose=False)))
        art_u_s = (clock() - t) / k
        t = clock()
        for i in range(k):
            art_t.append(float(clever_t(clf, x[i].numpy(), int(nt[i]), nb_batches=nb, batch_size=bs, radius=radius,
                                        norm=ART_NORM[norm], pool_factor=nb)))
        art_t_s = (clock() - t) / k
        ou = [e.untargeted().score for e in ours_k.inputs]
        ot = [e.classes[0].score for e in ours_t.inputs]
        # our maxima scored with ART's fitting rule (per class, then the minimum), to separate fit from sampling
        ou_artfit = [min(art_fit_score(c.maxima or (), c.g0, radius) for c in e.classes) for e in ours_k.inputs]
        ot_artfit = [art_fit_score(e.classes[0].maxima or (), e.classes[0].g0, radius) for e in ours_t.inputs]
        diverged_u = sum(a < 0.5 * o for a, o in zip(art_u, ou))
        res = {
            "images": ev.n, "art_images": k, "nb_batches": nb, "batch_size": bs, "radius": radius,
            "pool_factor": nb,
            "untargeted": {"ours_s_per_image": ours_u_s, "art_s_per_image": art_u_s, "speedup": art_u_s / ours_u_s,
                           "ours": ou, "art": art_u, "ours_scored_with_art_fit": ou_artfit,
                           "median_rel_diff": float(np.median([_rel(o, a) for o, a in zip(ou, art_u)])),
                           "median_rel_diff_art_fit_on_our_maxima": float(np.median(
                               [_rel(o, a) for o, a in zip(ou_artfit, art_u)])),
                           "art_diverged": diverged_u},
            "next_class": {"ours_s_per_image": ours_t_s, "art_s_per_image": art_t_s, "speedup": art_t_s / ours_t_s,
                           "ours": ot, "art": art_t, "ours_scored_with_art_fit": ot_artfit,
                           "median_rel_diff": float(np.median([_rel(o, a) for o, a in zip(ot, art_t)])),
                           "median_rel_diff_art_fit_on_our_maxima": float(np.median(
                               [_rel(o, a) for o, a in zip(ot_artfit, art_t)]))},
            "ours_all": {"n": ev.n, "s_per_image": ours_all_s,
                         "mean": float(np.mean([e.untargeted().score for e in ours_all.inputs])),
                         "median": float(np.median([e.untargeted().score for e in ours_all.inputs])),
                         "n_poor_fit": sum(e.untargeted().fit.poor(0.05) for e in ours_all.inputs)},
        }
        out["models"][name] = res
        print(f"{name}: {k} images, {nb}x{bs} points/class, {norm.value} radius {radius}", flush=True)
        for key in ("untargeted", "next_class"):
            r = res[key]
            print(f"  {key:10s} ours {r['ours_s_per_image']:.2f} s/img  ART {r['art_s_per_image']:.2f} s/img  "
                  f"speedup {r['speedup']:.1f}x  median rel diff {100 * r['median_rel_diff']:.1f}% "
                  f"(ART fit on our maxima vs ART: {100 * r['median_rel_diff_art_fit_on_our_maxima']:.1f}%)",
                  flush=True)
    return out


def speed_markdown(res: dict, command: str) -> str:
    device = res.get("device", "cpu")
    where = "CPU" if device == "cpu" else f"{device} (both sides; seconds are wall seconds, not the CPU seconds said below)"
    lines = ["# CLEVER: robaudit vs ART (`clever_u`, `clever_t`)", "", f"Command: `{command}`", "",
             f"{where}, {res['threads']} thread(s), norm {res['norm']}; ART's `pool_factor` = `nb_batches`, so both "
             "compute the same number of distinct gradient points per class and input, on the same model file "
             "(ART on the plain TorchScript network, robaudit on its checked faster copies, robaudit/models/fast.py; "
             "parameters frozen, so neither side computes weight gradients). Seconds are CPU seconds of this "
             "process (`time.process_time`), because the machine was shared with other jobs and wall time "
             "measured the neighbours as much as the code; both sides are single-threaded.", ""]
    lines += ["| model | setting | images | budget | ours s/img | ART s/img | speedup | median rel. diff | "
              "ART fit on our maxima vs ART |", "|---|---|---|---|---|---|---|---|---|"]
    for name, m in res["models"].items():
        for key in ("untargeted", "next_class"):
            r = m[key]
            lines.append(f"| {name} | {key} | {m['art_images']} | {m['nb_batches']}x{m['batch_size']} | "
                         f"{r['ours_s_per_image']:.2f} | {r['art_s_per_image']:.2f} | {r['speedup']:.1f}x | "
                         f"{100 * r['median_rel_diff']:.1f}% | "
                         f"{100 * r['median_rel_diff_art_fit_on_our_maxima']:.1f}% |")
    lines += ["", "Per-image scores (untargeted):", ""]
    for name, m in res["models"].items():
        r = m["untargeted"]
        lines.append(f"- {name}: ours {[round(v, 4) for v in r['ours']]}, ART {[round(v, 4) for v in r['art']]}, "
                     f"our maxima with ART's fit {[round(v, 4) for v in r['ours_scored_with_art_fit']]}; "
                     f"ART scores below half of ours (a diverged fit): {r['art_diverged']}")
        a = m["ours_all"]
        lines.append(f"  - ours on all {a['n']} images: mean {a['mean']:.4f}, median {a['median']:.4f}, "
                     f"{a['s_per_image']:.2f} s/img, poor fits {a['n_poor_fit']}")
    return "\n".join(lines) + "\n"


def compare(args: argparse.Namespace) -> dict:
    from robaudit.engine.clever_job import CleverJob, parse_stacks, run_clever_job
    from robaudit.engine.session import InputOptions
    from robaudit.report.writer import write_json_atomic

    torch.set_num_threads(args.threads)
    norms = tuple(CleverNorm.parse_list(args.norms))
    stacks = parse_stacks([s for s in args.stacks.split(",") if s])
    summary: dict = {"models": {}}
    for name in args.models.split(","):
        model_file, data_file = MODELS[name]
        resnet = name == "resnet20"
        params = CleverParams(nb_batches=args.resnet_nb_batches if resnet else args.nb_batches,
                              batch_size=args.resnet_batch_size if resnet else args.batch_size)
        n = args.resnet_n if resnet and args.resnet_n else args.n
        job = CleverJob(inputs=InputOptions(model=str(ART / model_file), data=str(ART / data_file), device="cpu"),
                        norms=norms, targets=(TargetMode.UNTARGETED,), stacks=stacks,
                        radius={CleverNorm.L2: args.radius_l2, CleverNorm.LINF: args.radius_linf}, params=params,
                        n=n, seed=args.seed, compare=True)
        t = time.process_time()
        report = run_clever_job(job, ["python", "bench/clever_bench.py", *sys.argv[1:]])
        report["bench_seconds"] = time.process_time() - t
        path = write_json_atomic(RESULTS / f"clever_compare_{name}.json", report)
        summary["models"][name] = {"report": str(path.relative_to(ROOT)), "seconds": time.process_time() - t,
                                   "clever": report["clever"], "data": report["data"]}
        print(f"{name}: {time.process_time() - t:.0f} s -> {path}", flush=True)
    return summary


def _pooled(summary: dict, prefix: str) -> list[str]:
    """Spearman across every (model, stack) whose model name starts with ``prefix``."""
    from robaudit.clever.compare import spearman

    lines = []
    pts: dict[tuple[str, str], list[tuple[float, float | None, float | None]]] = {}
    for name, m in summary["models"].items():
        if not name.startswith(prefix):
            continue
        means = {("+".join(r["defences"]) or "none", r["norm"]): r["mean"] for r in m["clever"]["rows"]}
        for c in m["clever"]["comparison"]:
            for a in [*c["attacks"], {"attack": "best", **(c["best"] or {})}]:
                key = ("+".join(c["defences"]) or "none", c["norm"])
                pts.setdefault((c["norm"], a["attack"]), []).append((means[key], a.get("success_rate"),
                                                                      a.get("distortion_median")))
    for (norm, attack), v in pts.items():
        if len(v) < 3:
            continue
        lines.append(f"- {prefix}* pooled, {norm}, {attack}: {len(v)} (model, stack) pairs, "
                     f"Spearman(mean CLEVER, success rate) = {_fmt(spearman([p[0] for p in v], [p[1] for p in v]))}, "
                     f"Spearman(mean CLEVER, median distortion) = "
                     f"{_fmt(spearman([p[0] for p in v], [p[2] for p in v]))}")
    return lines


def _fmt(v, spec=".3g"):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def compare_markdown(summary: dict, command: str) -> str:
    lines = ["# CLEVER vs minimal distortions found by attacks", "", f"Command: `{command}`", "",
             "Untargeted. L2: DeepFool and C&W-L2; Linf: C&W-Linf (robaudit's attacks at their documented "
             "defaults; defended stacks attacked adaptively with BPDA). A violation is an input where the attack "
             "succeeded with a distortion below the CLEVER score (CLEVER claims a lower bound). `best` is the "
             "smallest successful distortion of the attacks per input. Per-input rank correlation: Spearman "
             "between CLEVER and the found distortion over successful inputs.", ""]
    for name, m in summary["models"].items():
        sec = m["clever"]
        cfg = sec["config"]
        lines += [f"## {name}", "",
                  f"{m['data']['n_evaluated']} correctly classified of {m['data']['n_selected']} sampled inputs; "
                  f"{cfg['nb_batches']}x{cfg['batch_size']} gradient points per input and class; radius "
                  f"{cfg['radius']}; {m['seconds']:.0f} CPU seconds. Report: `{m['report']}`"
                  + (f" (`{m['command']}`)" if m.get("command") else "") + ".", "",
                  "| defence | norm | n | CLEVER mean | CLEVER median | poor fits | attack | success | "
                  "found median | violations | rank corr (inputs) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        rows = {("+".join(r["defences"]) or "none", r["norm"]): r for r in sec["rows"]}
        for c in sec["comparison"]:
            stack = "+".join(c["defences"]) or "none"
            r = rows[(stack, c["norm"])]
            for a in [*c["attacks"], {"attack": "best", **(c["best"] or {})}]:
                viol = "-" if a.get("violation_rate") is None else \
                    f"{a['n_violations']}/{a['n_success']} ({100 * a['violation_rate']:.1f}%)"
                succ = "-" if a.get("success_rate") is None else f"{100 * a['success_rate']:.1f}%"
                lines.append(f"| {stack} | {c['norm']} | {r['n']} | {_fmt(r['mean'])} | {_fmt(r['median'])} | "
                             f"{r['n_poor_fit']} | {a['attack']} | {succ} | {_fmt(a.get('distortion_median'))} | "
                             f"{viol} | {_fmt(a.get('spearman_inputs'), '.2f')} |")
        if sec["correlation"]:
            lines += ["", "Across defence stacks:", ""]
            for c in sec["correlation"]:
                lines.append(f"- {c['norm']} vs {c['attack']} over {', '.join(c['stacks'])}: mean CLEVER "
                             f"{[round(v, 4) for v in c['clever_mean']]}, success "
                             f"{[None if v is None else round(v, 3) for v in c['success_rate']]}, median distortion "
                             f"{[None if v is None else round(v, 4) for v in c['distortion_median']]}; Spearman "
                             f"(CLEVER, success) = {_fmt(c['spearman_success'])}, (CLEVER, distortion) = "
                             f"{_fmt(c['spearman_distortion'])}")
        lines.append("")
    pooled = _pooled(summary, "lenet5")
    if pooled:
        lines += ["## Pooled over the MNIST models", ""] + pooled + [""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--models", default="lenet5-clean,resnet20")
    sp.add_argument("--images", type=int, default=20)
    sp.add_argument("--art-images", type=int, default=5)
    sp.add_argument("--resnet-art-images", type=int, default=3)
    sp.add_argument("--resnet-images", type=int, default=0, help="images for ResNet-20 (default: --images)")
    sp.add_argument("--nb-batches", type=int, default=50)
    sp.add_argument("--batch-size", type=int, default=100)
    sp.add_argument("--resnet-nb-batches", type=int, default=20)
    sp.add_argument("--resnet-batch-size", type=int, default=50)
    sp.add_argument("--norm", default="l2")
    sp.add_argument("--radius", type=float, default=5.0)
    sp.add_argument("--device", default="cpu", help="cpu or cuda (both sides; on cuda seconds are wall seconds)")
    cp = sub.add_parser("compare")
    cp.add_argument("--models", default="lenet5-clean,lenet5-adv,resnet20")
    cp.add_argument("-n", type=int, default=50)
    cp.add_argument("--resnet-n", type=int, default=0)
    cp.add_argument("--norms", default="l2,linf")
    cp.add_argument("--stacks", default="none")
    cp.add_argument("--nb-batches", type=int, default=20)
    cp.add_argument("--batch-size", type=int, default=50)
    cp.add_argument("--resnet-nb-batches", type=int, default=10)
    cp.add_argument("--resnet-batch-size", type=int, default=25)
    cp.add_argument("--radius-l2", type=float, default=5.0)
    cp.add_argument("--radius-linf", type=float, default=0.3)
    for p in (sp, cp):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--tag", default="")
    sm = sub.add_parser("summarize", help="Markdown of the clever_compare_<model>.json reports of compare runs")
    sm.add_argument("--models", default="lenet5-clean,lenet5-adv,resnet20")
    sm.add_argument("--tag", default="")
    args = ap.parse_args()
    command = "python bench/clever_bench.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = f"_{args.tag}" if args.tag else ""
    if args.cmd == "speed":
        if args.device != "cpu" and not tag:
            tag = f"_{args.device.split(':')[0]}"  # keep the CPU results
        res = speed(args)
        (RESULTS / f"clever_bench{tag}.json").write_text(json.dumps(res, indent=2) + "\n")
        (RESULTS / f"clever_bench{tag}.md").write_text(speed_markdown(res, command))
    elif args.cmd == "compare":
        res = compare(args)
        (RESULTS / f"clever_compare{tag}.md").write_text(compare_markdown(res, command))
    else:
        res = {"models": {}}
        for name in args.models.split(","):
            path = RESULTS / f"clever_compare_{name}.json"
            if not path.exists():
                continue
            report = json.loads(path.read_text())
            res["models"][name] = {"report": str(path.relative_to(ROOT)), "seconds": report.get("bench_seconds", 0.0),
                                   "clever": report["clever"], "data": report["data"],
                                   "command": " ".join(report.get("command", []))}
        (RESULTS / f"clever_compare{tag}.md").write_text(compare_markdown(res, command))


if __name__ == "__main__":
    main()
