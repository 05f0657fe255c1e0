"""Strength cross-check of robaudit's torch attacks against torchattacks 3.5.1 on the same images.

For each model: the correctly classified images among ``--images`` sampled test images (seeded,
robaudit's own loaders and evaluation set), attacked by robaudit (``backend=torch``, on its
checked faster copies, as the CLI runs) and by torchattacks (on the plain TorchScript network in
a small ``nn.Module`` wrapper), at the same budgets wherever the two share a parameter. The plain
network judges both sides. Per attack and library: seconds, success rate over the correctly
classified inputs, median L2 and Linf of the successful examples, robust accuracy over all
sampled images for fixed-budget attacks, and how many outputs leave the valid range [0, 1] or
(fixed budget) the eps-ball, or hold NaN/inf. A ``paired`` column compares the two libraries image
by image (broken by one only; for minimisation attacks, which one found the smaller distance).

Rows (Linf eps 0.3 on MNIST, 8/255 on CIFAR-10):

* ``pgd``: PGD-40, step eps/16 (robaudit's default 2.5 * eps / steps), one random start each.
* ``apgd-ce``, ``apgd-dlr``: APGD, 100 iterations, one restart.
* ``apgd-t``: torchattacks ``APGDT`` (targeted DLR, the top-9 other classes in turn, 100
  iterations each) against robaudit's APGD with ``loss=dlr`` run targeted at the same 9 targets
  in the same order, each on the images no earlier target broke.
* ``cw-l2``: robaudit's C&W-L2 (per-sample binary search over c, 9 rounds x 50 steps) against
  torchattacks ``CW``, which has no binary search over c: it runs once per c in ``--cw-c`` and
  Adam step in ``--cw-lr`` (each ``--cw-steps`` steps; 8 x 100 by default, more than robaudit's
  450 at most), and a ``best of`` row keeps each image's smallest successful L2 over those runs
  (an oracle choice of c and lr per image, generous to torchattacks).
* ``deepfool``: L2 DeepFool, 50 iterations, overshoot 0.02, all classes as candidates.
* ``linf-min``: Linf minimal distortion, robaudit's CW-Linf (eps search around PGD on the CW
  margin) against torchattacks ``FAB`` (untargeted, Linf, ``--fab-steps`` iterations, eps 1 so
  that no success is discarded).
* ``fab``: robaudit's FAB (Linf, untargeted, its defaults) against the same torchattacks ``FAB``
  run as ``linf-min`` (reused when both rows are asked for, so torchattacks' FAB runs once).
* ``autoattack``: ``torchattacks.AutoAttack(version='standard', norm='Linf')``, the reference
  upper bound on robust accuracy, against the union of robaudit's fixed-budget Linf attacks
  above (an image counts as broken if any of them broke it). torchattacks' ``standard`` runs
  its sub-attacks at their own defaults (APGD-CE and APGD-T 10 iterations, FAB-T 10, Square
  5000 queries), not the paper's 100 iterations, so ``--aa-full`` (on by default) also runs
  the paper's budgets through ``torchattacks.MultiAttack`` (``autoattack-100``).

torchattacks is optional and not a robaudit dependency; this bench only calls it. Install it
into the venv without letting pip touch torch or the other pinned packages:

    pip install torchattacks==3.5.1 --no-deps

(Importing torchattacks 3.5.1 needs torch, numpy and scipy, all robaudit dependencies already;
``--no-deps`` keeps pip from resolving its other declared requirements, such as requests and
tqdm, which these attacks do not use.) Without torchattacks the script exits with a one-line
message. Needs the shared models exported by ``scripts/export_shared.py`` (``artifacts/``).

    python bench/reference_check.py --models lenet5-clean,lenet5-adv,resnet20 --images 200 \\
        --model-images resnet20=100 --out bench/results/reference_check.json
    python bench/reference_check.py markdown bench/results/reference_check.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from attack_bench import MODELS, fmt  # noqa: E402
from robaudit.attacks.apgd import APGDParams  # noqa: E402
from robaudit.attacks.base import Norm  # noqa: E402
from robaudit.attacks.cw_l2 import CWL2Params  # noqa: E402
from robaudit.attacks.cw_linf import CWLinfParams  # noqa: E402
from robaudit.attacks.deepfool import DeepFoolParams  # noqa: E402
from robaudit.attacks.fab import FABParams  # noqa: E402
from robaudit.attacks.pgd import PGDParams  # noqa: E402
from robaudit.attacks.registry import AttackName, get_attack_class  # noqa: E402
from robaudit.data import load_dataset  # noqa: E402
from robaudit.engine.evaluation import build_evaluation_set  # noqa: E402
from robaudit.metrics import perturbation_norms, summarize  # noqa: E402
from robaudit.models.loader import load_model  # noqa: E402

ART = ROOT / "artifacts"
ATTACKS = ("pgd", "apgd-ce", "apgd-dlr", "apgd-t", "cw-l2", "deepfool", "linf-min", "fab", "autoattack")
FIXED = ("pgd", "apgd-ce", "apgd-dlr", "apgd-t")
"""Fixed-budget Linf attacks: their union is robaudit's best fixed-budget robust accuracy."""
MIN_NORM = {"cw-l2": "l2", "deepfool": "l2", "linf-min": "linf", "fab": "linf"}
"""Minimisation attacks and the norm they minimise (the paired column compares that distance)."""
EPS_TOL = 1e-6
"""An output counts as outside the eps-ball when its Linf distance exceeds eps by more than this
(float32 rounding of x + delta can add about 6e-8)."""


class Logits(torch.nn.Module):
    """The plain network as torchattacks wants it: an ``nn.Module`` mapping [0, 1] images to logits."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --------------------------------------------------------------------------- running


def run_robaudit(name: AttackName, params: object, norm: Norm, eps: float | None, model, x, y, targets,
                 batch_size: int, seed: int):
    cls = get_attack_class(name, "torch")
    out = cls(params, norm=norm, eps=eps).generate(model, x, y, targets, clip=model.clip,
                                                   batch_size=batch_size, seed=seed)
    return out.x_adv, out.seconds


def run_ta(atk, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
    """torchattacks ``atk`` over ``x`` in batches; the global torch RNG seeded once (its PGD draws from it)."""
    torch.manual_seed(seed)
    outs = []
    t = time.perf_counter()
    for i in range(0, x.shape[0], batch_size):
        outs.append(atk(x[i : i + batch_size], y[i : i + batch_size]).detach().cpu().float())
    return torch.cat(outs), time.perf_counter() - t


def warm_up(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, rounds: int = 3) -> None:
    """A few forward+backward and forward-only passes, so that TorchScript's first-call optimisation
    is not billed to whichever attack runs first."""
    for _ in range(rounds):
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(net(xi), y), xi)
        with torch.no_grad():
            net(x)


def evaluate(judge, x, y, x_adv, eps: float | None, batch_size: int) -> dict:
    """Success (by the plain network), distances and range/ball violations of ``x_adv``."""
    finite = torch.isfinite(x_adv).flatten(1).all(dim=1)
    x_safe = torch.where(finite.view(-1, *([1] * (x.dim() - 1))), x_adv, x)
    pred = judge.predict(x_safe, batch_size=batch_size).argmax(1)
    broken = (pred != y) & finite
    d = perturbation_norms(x, x_safe)
    below = (0.0 - x_safe.double()).clamp_min(0).flatten(1).amax(1)
    above = (x_safe.double() - 1.0).clamp_min(0).flatten(1).amax(1)
    clip_excess = torch.maximum(below, above)
    v = {"nonfinite": int((~finite).sum()), "clip": int((clip_excess > 0).sum()),
         "max_clip_excess": float(clip_excess.max()) if clip_excess.numel() else 0.0}
    if eps is not None:
        excess = d.linf - eps
        v["eps"] = int((excess > EPS_TOL).sum())
        v["max_eps_excess"] = float(excess.max()) if excess.numel() else 0.0
    return {"n": int(x.shape[0]), "broken": int(broken.sum()), "success": float(broken.float().mean()),
            "l2_median": summarize(d.l2[broken])["median"], "linf_median": summarize(d.linf[broken])["median"],
            "violations": v,
            # per image, for the paired comparison: broken? and both distances (only meaningful when broken)
            "per_image": {"broken": [int(b) for b in broken],
                          "l2": [round(float(a), 6) for a in d.l2], "linf": [round(float(a), 6) for a in d.linf]}}


def write(path: str, res: dict) -> None:
    """``res`` as JSON, indented, but each list of numbers (the per-image columns) on one line; atomic."""
    text = re.sub(r"\[[^\[\]{}]*\]", lambda m: json.dumps(json.loads(m.group(0))), json.dumps(res, indent=1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(out)


def subset_size(spec: dict[str, int], model: str, attack: str, n: int) -> int:
    return min(n, spec.get(f"{model}.{attack}", spec.get(attack, n)))


def parse_kv(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (kv.split("=") for kv in text.split(",") if kv)}


def model_rows(args, model_key: str, ta) -> dict:
    mfile, dfile, eps = MODELS[model_key]
    data = load_dataset(str(ART / dfile))
    shape = tuple(data.x.shape[1:])
    model = load_model(str(ART / mfile), device="cpu", data_shape=shape, fast_copies=not args.robaudit_plain)
    plain = load_model(str(ART / mfile), device="cpu", data_shape=shape, fast_copies=False)
    n_images = parse_kv(args.model_images).get(model_key, args.images)
    ev = build_evaluation_set(plain, data, n_images, args.seed, 256)
    x, y, clean_logits = ev.x, ev.y, ev.clean_logits
    k = plain.num_classes
    net = Logits(plain).eval()
    subsets = parse_kv(args.subset)
    bs = args.batch_size
    rec = {"model": model_key, "model_file": mfile, "data_file": dfile, "eps": eps, "n_sampled": ev.n_selected,
           "n_correct": ev.n, "clean_accuracy": ev.clean_accuracy, "num_classes": k,
           "robaudit_runtime": model.info.runtime, "rows": []}
    print(f"\n== {model_key}: {ev.n_selected} sampled test images, {ev.n} correctly classified "
          f"(clean accuracy {ev.clean_accuracy:.3f}); Linf eps {eps:.4g}; {args.threads} threads, batch {bs}; "
          f"robaudit on {model.info.runtime or 'the plain network'}", flush=True)

    def add(attack: str, side: str, label: str, params: dict, xs, ys, x_adv, seconds: float, fixed: bool,
            note: str = "", primary: bool = True) -> dict:
        r = evaluate(plain, xs, ys, x_adv, eps if fixed else None, bs)
        r.update({"attack": attack, "side": side, "label": label, "params": params, "seconds": seconds,
                  "fixed_eps": fixed, "note": note, "primary": primary,
                  "robust_accuracy": ev.clean_accuracy * (1.0 - r["success"]) if fixed else None})
        rec["rows"].append(r)
        v = r["violations"]
        viol = f"clip {v['clip']}" + (f" eps {v['eps']}" if "eps" in v else "") + f" nonfinite {v['nonfinite']}"
        ra = f" robust {r['robust_accuracy']:.4f}" if fixed else ""
        print(f"  {attack:10} {side:12} {label[:38]:38} n {r['n']:4d} {seconds:8.2f} s  succ {r['success']:.4f}{ra}  "
              f"L2 {fmt(r['l2_median'])}  Linf {fmt(r['linf_median'], '.4f')}  [{viol}]", flush=True)
        write(args.out, args.meta | {"models": args.done + [rec]})
        return r

    warm_up(model, x[:bs], y[:bs])
    warm_up(net, x[:bs], y[:bs])
    ta_fab: dict[int, tuple[torch.Tensor, float]] = {}  # images -> torchattacks FAB's examples and seconds
    for attack in args.attacks.split(","):
        if attack not in ATTACKS:
            raise SystemExit(f"unknown attack {attack!r} (known: {', '.join(ATTACKS)})")
        m = subset_size(subsets, model_key, attack, ev.n)
        xs, ys, ls = x[:m], y[:m], clean_logits[:m]
        note = f"first {m} of {ev.n} correct images" if m < ev.n else ""
        if attack == "pgd":
            p = PGDParams(steps=args.pgd_steps, random_start=True)
            xa, s = run_robaudit(AttackName.PGD, p, Norm.LINF, eps, model, xs, ys, None, bs, args.seed)
            add(attack, "robaudit", f"PGD-{p.steps}, step eps*{p.step_fraction:.4g}", dataclasses.asdict(p),
                xs, ys, xa, s, True, note)
            alpha = p.step_fraction * eps
            atk = ta.PGD(net, eps=eps, alpha=alpha, steps=p.steps, random_start=True)
            xa, s = run_ta(atk, xs, ys, bs, args.seed)
            add(attack, "torchattacks", f"PGD(steps={p.steps}, alpha=eps*{p.step_fraction:.4g})",
                {"eps": eps, "alpha": alpha, "steps": p.steps, "random_start": True}, xs, ys, xa, s, True,
                note)
        elif attack in ("apgd-ce", "apgd-dlr"):
            loss = attack.split("-")[1]
            p = APGDParams(n_iter=args.apgd_iter, restarts=1, loss=loss)
            xa, s = run_robaudit(AttackName.APGD, p, Norm.LINF, eps, model, xs, ys, None, bs, args.seed)
            add(attack, "robaudit", f"APGD-{loss.upper()} {p.n_iter} it", dataclasses.asdict(p), xs, ys, xa, s,
                True, note)
            atk = ta.APGD(net, norm="Linf", eps=eps, steps=p.n_iter, n_restarts=1, seed=args.seed, loss=loss)
            xa, s = run_ta(atk, xs, ys, bs, args.seed)
            add(attack, "torchattacks", f"APGD(loss={loss}, steps={p.n_iter})",
                {"eps": eps, "steps": p.n_iter, "n_restarts": 1, "loss": loss, "seed": args.seed}, xs, ys, xa, s,
                True, note)
        elif attack == "apgd-t":
            n_t = min(args.apgdt_targets, k - 1)
            p = APGDParams(n_iter=args.apgd_iter, restarts=1, loss="dlr")
            order = ls.argsort(dim=1, descending=True)  # torchattacks: sort of the clean logits, from the 2nd
            out = xs.clone()
            todo = torch.ones(m, dtype=torch.bool)
            seconds = 0.0
            for j in range(n_t):
                idx = todo.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                tgt = order[idx, j + 1]
                xa, s = run_robaudit(AttackName.APGD, p, Norm.LINF, eps, model, xs[idx], ys[idx], tgt, bs,
                                     args.seed + j)
                seconds += s
                hit = plain.predict(xa, batch_size=bs).argmax(1) != ys[idx]
                out[idx] = xa  # the latest attempt; a broken image is attacked no further
                todo[idx[hit]] = False
            add(attack, "robaudit", f"APGD targeted DLR {p.n_iter} it x {n_t} targets",
                dataclasses.asdict(p) | {"targets": n_t}, xs, ys, out, seconds, True, note)
            atk = ta.APGDT(net, norm="Linf", eps=eps, steps=p.n_iter, n_restarts=1, seed=args.seed, n_classes=n_t + 1)
            xa, s = run_ta(atk, xs, ys, bs, args.seed)
            add(attack, "torchattacks", f"APGDT(steps={p.n_iter}, {n_t} targets)",
                {"eps": eps, "steps": p.n_iter, "n_restarts": 1, "n_classes": n_t + 1, "seed": args.seed},
                xs, ys, xa, s, True, note)
        elif attack == "cw-l2":
            p = CWL2Params()
            xa, s = run_robaudit(AttackName.CW_L2, p, Norm.L2, None, model, xs, ys, None, bs, args.seed)
            add(attack, "robaudit", f"CW-L2 {p.binary_search_steps} rounds x {p.max_iter} steps (binary search)",
                dataclasses.asdict(p), xs, ys, xa, s, False, note)
            best_l2 = torch.full((m,), float("inf"), dtype=torch.float64)
            best = xs.clone()
            total = 0.0
            cs = [float(c) for c in args.cw_c.split(",")]
            lrs = [float(v) for v in args.cw_lr.split(",")]
            for lr in lrs:
                for c in cs:
                    atk = ta.CW(net, c=c, kappa=0, steps=args.cw_steps, lr=lr)
                    xa, s = run_ta(atk, xs, ys, bs, args.seed)
                    total += s
                    r = add(attack, "torchattacks", f"CW(c={c:g}, steps={args.cw_steps}, lr={lr:g})",
                            {"c": c, "kappa": 0, "steps": args.cw_steps, "lr": lr}, xs, ys, xa, s, False, note,
                            primary=False)
                    ok = torch.tensor(r["per_image"]["broken"], dtype=torch.bool)
                    l2 = perturbation_norms(xs, xa).l2
                    take = ok & (l2 < best_l2)
                    best_l2[take] = l2[take]
                    best[take] = xa[take]
            add(attack, "torchattacks",
                f"CW best of {len(cs) * len(lrs)} runs (c in {{{', '.join(f'{c:g}' for c in cs)}}}, "
                f"lr in {{{', '.join(f'{v:g}' for v in lrs)}}}) per image",
                {"c": cs, "kappa": 0, "steps": args.cw_steps, "lr": lrs}, xs, ys, best, total, False,
                (note + "; " if note else "") + "torchattacks' CW has no binary search over c: each image's smallest "
                "successful L2 over the runs (an oracle choice of c and lr); seconds = their sum")
        elif attack == "deepfool":
            p = DeepFoolParams(max_iter=args.deepfool_iter, overshoot=0.02, nb_candidate=k)
            xa, s = run_robaudit(AttackName.DEEPFOOL, p, Norm.L2, None, model, xs, ys, None, bs, args.seed)
            add(attack, "robaudit", f"DeepFool-L2 {p.max_iter} it, overshoot {p.overshoot}", dataclasses.asdict(p),
                xs, ys, xa, s, False, note)
            atk = ta.DeepFool(net, steps=p.max_iter, overshoot=p.overshoot)
            xa, s = run_ta(atk, xs, ys, bs, args.seed)
            add(attack, "torchattacks", f"DeepFool(steps={p.max_iter}, overshoot={p.overshoot})",
                {"steps": p.max_iter, "overshoot": p.overshoot}, xs, ys, xa, s, False, note)
        elif attack in ("linf-min", "fab"):
            if attack == "linf-min":
                p = CWLinfParams()
                xa, s = run_robaudit(AttackName.CW_LINF, p, Norm.LINF, None, model, xs, ys, None, bs, args.seed)
                add(attack, "robaudit", f"CW-Linf {p.search_steps} rounds x {p.max_iter} steps (eps search)",
                    dataclasses.asdict(p), xs, ys, xa, s, False, note)
            else:
                fp = FABParams()
                xa, s = run_robaudit(AttackName.FAB, fp, Norm.LINF, None, model, xs, ys, None, bs, args.seed)
                add(attack, "robaudit", f"FAB-Linf {fp.steps} steps x {fp.restarts} runs", dataclasses.asdict(fp),
                    xs, ys, xa, s, False, note)
            if m not in ta_fab:
                atk = ta.FAB(net, norm="Linf", eps=1.0, steps=args.fab_steps, n_restarts=1, seed=args.seed, n_classes=k)
                ta_fab[m] = run_ta(atk, xs, ys, bs, args.seed)
            xa, s = ta_fab[m]
            add(attack, "torchattacks", f"FAB-Linf untargeted (steps={args.fab_steps}, eps=1)",
                {"norm": "Linf", "eps": 1.0, "steps": args.fab_steps, "n_restarts": 1, "seed": args.seed},
                xs, ys, xa, s, False, note)
        elif attack == "autoattack":
            atk = ta.AutoAttack(net, norm="Linf", eps=eps, version="standard", n_classes=k, seed=args.seed)
            xa, s = run_ta(atk, xs, ys, bs, args.seed)
            add(attack, "torchattacks", "AutoAttack(version='standard')",
                {"norm": "Linf", "eps": eps, "version": "standard", "seed": args.seed,
                 "sub_attacks": "APGD-CE 10 it, APGD-T 10 it x 9, FAB-T 10 it x 9, Square 5000 queries"},
                xs, ys, xa, s, True, note)
            if args.aa_full:
                atk = ta.MultiAttack([
                    ta.APGD(net, norm="Linf", eps=eps, steps=100, n_restarts=1, seed=args.seed, loss="ce"),
                    ta.APGDT(net, norm="Linf", eps=eps, steps=100, n_restarts=1, seed=args.seed, n_classes=k),
                    ta.FAB(net, norm="Linf", eps=eps, steps=100, n_restarts=1, seed=args.seed, multi_targeted=True,
                           n_classes=k),
                    ta.Square(net, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, seed=args.seed)])
                xa, s = run_ta(atk, xs, ys, bs, args.seed)
                add(attack, "torchattacks", "AutoAttack standard at the paper's budgets (MultiAttack)",
                    {"norm": "Linf", "eps": eps, "seed": args.seed,
                     "sub_attacks": "APGD-CE 100 it, APGD-T 100 it x 9, FAB-T 100 it x 9, Square 5000 queries"},
                    xs, ys, xa, s, True, note, primary=False)
    return rec


# --------------------------------------------------------------------------- report


def union_row(rows: list[dict], side: str, m: int) -> dict | None:
    """Broken by any of ``side``'s fixed-budget Linf attacks, over the first ``m`` images."""
    sel = [r for r in rows if r["side"] == side and r["attack"] in FIXED and r["n"] >= m]
    if not sel:
        return None
    broken = [any(r["per_image"]["broken"][i] for r in sel) for i in range(m)]
    return {"attacks": [r["attack"] for r in sel], "n": m, "broken": sum(broken), "success": sum(broken) / max(m, 1)}


def paired(ours: dict, theirs: dict) -> str:
    m = min(ours["n"], theirs["n"])
    bo, bt = ours["per_image"]["broken"][:m], theirs["per_image"]["broken"][:m]
    only_o = sum(1 for a, b in zip(bo, bt) if a and not b)
    only_t = sum(1 for a, b in zip(bo, bt) if b and not a)
    text = f"only robaudit {only_o}, only torchattacks {only_t}"
    norm = MIN_NORM.get(ours["attack"])
    if norm:
        do, dt = ours["per_image"][norm][:m], theirs["per_image"][norm][:m]
        both = [i for i in range(m) if bo[i] and bt[i]]
        if both:
            smaller = sum(1 for i in both if do[i] < dt[i] - 1e-6)
            larger = sum(1 for i in both if do[i] > dt[i] + 1e-6)
            ratios = sorted(do[i] / dt[i] for i in both if dt[i] > 0)
            med = ratios[len(ratios) // 2] if ratios else float("nan")
            text += (f"; both broke {len(both)}: robaudit {norm.upper()} smaller on {smaller}, larger on {larger}, "
                     f"median ratio robaudit/torchattacks {med:.4f}")
    return text


def markdown(res: dict) -> str:
    out = ["# robaudit vs torchattacks: strength cross-check", "",
           f"Command: `{res.get('command', '')}`", "",
           f"torch {res.get('torch')}, torchattacks {res.get('torchattacks')}, {res.get('threads')} CPU threads, "
           f"seed {res.get('seed')}, batch {res.get('batch_size')}. The plain TorchScript network judges both "
           "libraries; torchattacks runs on it, robaudit on its checked faster copies (as the CLI does). Success is "
           "over the correctly classified images; medians are over the successful examples; robust accuracy is over "
           "all sampled images (clean accuracy x (1 - success)). Violations: outputs outside [0, 1] / outside the "
           f"Linf eps-ball by more than {EPS_TOL:g} (fixed budget only) / holding NaN or inf. Paired: on the same "
           "images, how many only one library broke, and for minimisation attacks which found the smaller distance "
           "in the attack's norm where both succeeded.", ""]
    for mod in res["models"]:
        wall = f"; {mod['wall_seconds']:.0f} s wall for the model" if "wall_seconds" in mod else ""
        out += [f"## {mod['model']}: {mod['n_sampled']} sampled test images, {mod['n_correct']} correctly classified "
                f"(clean accuracy {100 * mod['clean_accuracy']:.1f}%), Linf eps {mod['eps']:.4g}{wall}", "",
                "| attack | library | setting | images | s | success | median L2 | median Linf | robust acc "
                "| violations clip/eps/nonfinite | paired with robaudit | note |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        rows = mod["rows"]
        for r in rows:
            v = r["violations"]
            viol = f"{v['clip']}/{v.get('eps', '-')}/{v['nonfinite']}"
            pair = ""
            if r["side"] == "torchattacks" and r["attack"] != "autoattack":
                ours = next((o for o in rows if o["attack"] == r["attack"] and o["side"] == "robaudit"), None)
                if ours is not None:
                    pair = paired(ours, r)
            ra = f"{100 * r['robust_accuracy']:.2f}%" if r["robust_accuracy"] is not None else "-"
            out.append(f"| {r['attack']} | {r['side']} | {r['label']} | {r['n']} | {r['seconds']:.1f} "
                       f"| {r['success']:.4f} | {fmt(r['l2_median'])} | {fmt(r['linf_median'], '.4f')} | {ra} "
                       f"| {viol} | {pair} | {r['note']} |")
        aa = [r for r in rows if r["attack"] == "autoattack"]
        if aa:
            m = min(r["n"] for r in aa)
            out += ["", f"Best fixed-budget Linf robust accuracy against the AutoAttack reference (first {m} correct "
                    "images; an image counts as broken if any listed attack broke it):", "",
                    "| attack set | images | broken | success | robust acc | only this set broke | only AutoAttack broke |",
                    "|---|---|---|---|---|---|---|"]
            ref = next((r for r in aa if r["primary"]), aa[0])
            for side in ("robaudit", "torchattacks"):
                u = union_row(rows, side, m)
                if u is None:
                    continue
                sel = [r for r in rows if r["side"] == side and r["attack"] in FIXED and r["n"] >= m]
                ub = [any(r["per_image"]["broken"][i] for r in sel) for i in range(m)]
                for a in aa:
                    ab = a["per_image"]["broken"][:m]
                    only_u = sum(1 for i in range(m) if ub[i] and not ab[i])
                    only_a = sum(1 for i in range(m) if ab[i] and not ub[i])
                    tag = "AutoAttack" if a is ref else "AutoAttack-100"
                    out.append(f"| {side} union of {', '.join(u['attacks'])} (vs {tag}) | {m} | {u['broken']} "
                               f"| {u['success']:.4f} | {100 * mod['clean_accuracy'] * (1 - u['success']):.2f}% "
                               f"| {only_u} | {only_a} |")
            for a in aa:
                ab = a["per_image"]["broken"][:m]
                out.append(f"| torchattacks {a['label']} | {m} | {sum(ab)} | {sum(ab) / m:.4f} "
                           f"| {100 * mod['clean_accuracy'] * (1 - sum(ab) / m):.2f}% | - | - |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    if sys.argv[1:2] == ["markdown"]:
        for path in sys.argv[2:] or [str(ROOT / "bench" / "results" / "reference_check.json")]:
            print(markdown(json.loads(Path(path).read_text())))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5-clean,lenet5-adv,resnet20")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--images", type=int, default=200, help="test images sampled per model (the correct ones are attacked)")
    ap.add_argument("--model-images", default="", help="MODEL=N overrides of --images, e.g. resnet20=100")
    ap.add_argument("--subset", default="",
                    help="ATTACK=N or MODEL.ATTACK=N: run both libraries on the first N correct images only")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed and both libraries' attack seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--pgd-steps", type=int, default=40)
    ap.add_argument("--apgd-iter", type=int, default=100)
    ap.add_argument("--apgdt-targets", type=int, default=9)
    ap.add_argument("--cw-c", default="0.1,1,10,100", help="torchattacks CW constants, one run each")
    ap.add_argument("--cw-steps", type=int, default=100)
    ap.add_argument("--cw-lr", default="0.01,0.1", help="torchattacks CW Adam step sizes, one run each with every c")
    ap.add_argument("--deepfool-iter", type=int, default=50)
    ap.add_argument("--fab-steps", type=int, default=100)
    ap.add_argument("--aa-full", action=argparse.BooleanOptionalAction, default=True,
                    help="also run AutoAttack's sub-attacks at the paper's budgets (100 iterations)")
    ap.add_argument("--robaudit-plain", action="store_true", help="run robaudit on the plain network too")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "reference_check.json"),
                    help="JSON results; the Markdown goes next to it (.md) and to stdout")
    args = ap.parse_args()
    try:
        import torchattacks as ta
    except ImportError:
        print("torchattacks is not installed (optional, not a robaudit dependency): "
              "pip install torchattacks==3.5.1 --no-deps", file=sys.stderr)
        return 2
    for key in args.models.split(","):
        if key not in MODELS:
            print(f"unknown model {key!r} (known: {', '.join(MODELS)})", file=sys.stderr)
            return 2
        if not (ART / MODELS[key][0]).exists():
            print(f"missing {ART / MODELS[key][0]}: run python scripts/export_shared.py first", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    args.meta = {"command": "python bench/reference_check.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
                 "torchattacks": getattr(ta, "__version__", "?"), "python": platform.python_version(),
                 "threads": args.threads, "seed": args.seed, "batch_size": args.batch_size}
    args.done = []
    t0 = time.perf_counter()
    for key in args.models.split(","):
        t = time.perf_counter()
        rec = model_rows(args, key, ta)
        rec["wall_seconds"] = time.perf_counter() - t
        args.done.append(rec)
        print(f"   {key}: {rec['wall_seconds']:.0f} s wall", flush=True)
    res = args.meta | {"models": args.done, "wall_seconds": time.perf_counter() - t0}
    write(args.out, res)
    md = markdown(res)
    Path(args.out).with_suffix(".md").write_text(md + "\n")
    print("\n" + md)
    print(f"written {args.out} and {Path(args.out).with_suffix('.md')} ({res['wall_seconds']:.0f} s wall)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
