"""Strength against ART over several seeds: robust accuracy left by PGD-40 and APGD-100.

A single run compares two random draws, and on a robust model a handful of images decide the
gap, so this runs robaudit's attacks (``backend=torch``) and ART's (``backend=art``) with several
seeds on the same images and reports each seed, the mean and the range. Robust accuracy is over
the whole sampled test slice (misclassified inputs count as broken), as in the issue's strength
cross-check; success is over the correctly classified ones. The plain TorchScript network judges
both sides; ART runs on it, robaudit on its checked faster copies. Fixed budgets, no early stop.

Needs the shared models exported by ``scripts/export_shared.py`` (``artifacts/``).

    python bench/strength_parity.py --model lenet5-adv -n 1000 --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robaudit.attacks.base import Criterion, Norm  # noqa: E402
from robaudit.attacks.registry import AttackName, get_attack_class  # noqa: E402
from robaudit.data import load_dataset  # noqa: E402
from robaudit.engine.evaluation import build_evaluation_set  # noqa: E402
from robaudit.models.loader import load_model  # noqa: E402

ART = ROOT / "artifacts"
MODELS = {"lenet5-adv": ("mnist_lenet5_adv.pt", "mnist_test.npz", 0.3),
          "lenet5-clean": ("mnist_lenet5_clean.pt", "mnist_test.npz", 0.3)}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    mfile, dfile, eps = MODELS[args.model]
    data = load_dataset(str(ART / dfile))
    model = load_model(str(ART / mfile), device="cpu")
    plain = load_model(str(ART / mfile), device="cpu", fast_copies=False)
    ev = build_evaluation_set(plain, data, args.n, args.sample_seed, 256)
    x, y = ev.x, ev.y
    print(f"{args.model}: {ev.n_selected} sampled test images, {ev.n} correctly classified "
          f"(clean accuracy {ev.clean_accuracy:.3f}); eps {eps} Linf; {args.threads} threads", flush=True)
    out: dict = {"model": args.model, "n_sampled": ev.n_selected, "n_correct": ev.n,
                 "clean_accuracy": ev.clean_accuracy, "eps": eps, "threads": args.threads, "attacks": {}}
    for attack in args.attacks.split(","):
        rows: dict = {}
        for backend, net in (("torch", model), ("art", plain)):
            cls = get_attack_class(AttackName(attack), backend)
            succ, secs = [], []
            for seed in [int(s) for s in args.seeds.split(",")]:
                a = cls(cls.Params(), norm=Norm.LINF, eps=eps)
                t = time.perf_counter()
                res = a.generate(net, x, y, None, clip=model.clip, batch_size=args.batch_size, seed=seed)
                secs.append(time.perf_counter() - t)
                broken = Criterion(y).is_adversarial(plain.predict(res.x_adv, batch_size=args.batch_size))
                succ.append(int(broken.sum()))
                robust = (ev.n - succ[-1]) / ev.n_selected
                print(f"  {attack:5s} {backend:5s} seed {seed}: broken {succ[-1]:4d} of {ev.n} "
                      f"(success {succ[-1] / ev.n:.4f}), robust accuracy {robust:.4f}, {secs[-1]:.1f} s", flush=True)
            rows[backend] = {"broken": succ, "seconds": secs,
                             "robust_accuracy": [(ev.n - s) / ev.n_selected for s in succ]}
        out["attacks"][attack] = rows
    return out


def markdown(res: dict, command: str) -> str:
    lines = [f"# Strength against ART over seeds: {res['model']}", "", f"Command: `{command}`", "",
             f"{res['n_sampled']} sampled MNIST test images, {res['n_correct']} correctly classified "
             f"(clean accuracy {100 * res['clean_accuracy']:.1f}%); Linf eps {res['eps']}; fixed budgets "
             "(PGD-40 with eps/16 steps, APGD-100 CE); the plain network judges both; "
             f"{res['threads']} threads. Robust accuracy is over all sampled images.", "",
             "| attack | backend | broken per seed | mean broken | robust accuracy (mean, range) | s per run (mean) |",
             "|---|---|---|---|---|---|"]
    for attack, rows in res["attacks"].items():
        for backend, r in rows.items():
            ra = r["robust_accuracy"]
            lines.append(f"| {attack} | {'robaudit' if backend == 'torch' else 'ART'} | "
                         f"{', '.join(str(b) for b in r['broken'])} | {statistics.mean(r['broken']):.1f} | "
                         f"{100 * statistics.mean(ra):.2f}% ({100 * min(ra):.2f}-{100 * max(ra):.2f}%) | "
                         f"{statistics.mean(r['seconds']):.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5-adv", choices=sorted(MODELS))
    ap.add_argument("--attacks", default="pgd,apgd")
    ap.add_argument("-n", type=int, default=1000, help="test images sampled (misclassified ones count as broken)")
    ap.add_argument("--sample-seed", type=int, default=0)
    ap.add_argument("--seeds", default="0,1,2,3,4", help="attack seeds, each run by both backends")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "strength_parity"))
    args = ap.parse_args()
    if not (ART / MODELS[args.model][0]).exists():
        print(f"missing {ART / MODELS[args.model][0]}: run python scripts/export_shared.py first", file=sys.stderr)
        return 2
    res = run(args)
    command = "python bench/strength_parity.py " + " ".join(sys.argv[1:])
    Path(args.out + ".json").write_text(json.dumps(res, indent=1))
    Path(args.out + ".md").write_text(markdown(res, command))
    print(markdown(res, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
