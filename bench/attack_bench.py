"""robaudit's torch attacks against plain ART on the same model, images and parameters.

For each model: the same correctly classified images (seeded), each attack run by robaudit
(``backend=torch``) and by ART (``backend=art``). Prints seconds, the speed ratio, success rate
and median L2/Linf of successful examples for both, and PGD's efficiency against the model's raw
forward+backward throughput (measured right before and after robaudit's PGD, since a shared
machine's load drifts); PGD and APGD run twice, at the fixed budget and with ``early_stop``. Attacks whose ART version is very slow can run ART on a prefix of
the images (``--art-subset cw-l2=20``): then both are compared on that prefix and the ratio is
per image. Results are also written as JSON.

Needs the shared models exported by ``scripts/export_shared.py`` (``artifacts/``).

    python bench/attack_bench.py --models lenet5-clean,lenet5-adv,resnet20 -n 200
    python bench/attack_bench.py --attacks deepfool,hopskipjump --out bench/results/attack_bench_rerun.json
    python bench/attack_bench.py --attacks cw-l2,cw-linf --out bench/results/attack_bench_rerun_cw.json
    python bench/attack_bench.py --attacks cw-l2 --out bench/results/attack_bench_rerun_cw2.json
    python bench/attack_bench.py markdown bench/results/attack_bench.json \
        bench/results/attack_bench_rerun.json bench/results/attack_bench_rerun_cw.json \
        bench/results/attack_bench_rerun_cw2.json > bench/results/attack_bench.md

C&W-L2 runs three ways: both at their defaults (``cw-l2``; ours searches 9 rounds x 50 steps, ART
10 x 10), ours at ART's budget (``cw-l2-art-budget``) and ART at ours (``cw-l2-ours-budget``: the
same rounds, steps and starting constant; the same parameters, as far as the two share them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robaudit.attacks.base import AttackKind, Criterion, Norm, module_device, params_from_overrides  # noqa: E402
from robaudit.attacks.registry import AttackName, get_attack_class  # noqa: E402
from robaudit.data import load_dataset  # noqa: E402
from robaudit.engine.evaluation import build_evaluation_set  # noqa: E402
from robaudit.metrics import perturbation_norms, summarize  # noqa: E402
from robaudit.models.loader import load_model  # noqa: E402

ART = ROOT / "artifacts"
MODELS = {
    "lenet5-clean": ("mnist_lenet5_clean.pt", "mnist_test.npz", 0.3),
    "lenet5-adv": ("mnist_lenet5_adv.pt", "mnist_test.npz", 0.3),
    "resnet20": ("cifar10_resnet20.pt", "cifar10_exact761.npz", 8 / 255),
}
DEFAULT_ATTACKS = "fgsm,bim,pgd,apgd,cw-l2,cw-linf,deepfool,hopskipjump,shadow"


def art_params(name: AttackName, ours: object, cls: type) -> object:
    """ART parameters matching ours where the algorithms share them."""
    if cls.Params is type(ours):
        return ours
    if name is AttackName.DEEPFOOL:
        return cls.Params(max_iter=ours.max_iter, epsilon=ours.overshoot, nb_grads=ours.nb_candidate)
    return cls.Params()  # CW: ART's own defaults (its algorithm and parameters differ from ours)


def art_at_our_budget(name: AttackName, ours: object, cls: type) -> object:
    """ART's C&W-L2 with our search budget (rounds, steps per round, starting constant); ART's own
    learning rate, which its line search rescales every step anyway."""
    assert name is AttackName.CW_L2
    return cls.Params(binary_search_steps=ours.binary_search_steps, max_iter=ours.max_iter,
                      initial_const=ours.initial_const, confidence=ours.confidence)


def measure(attack, model, judge, x, y, batch_size, seed):
    out = attack.generate(model, x, y, None, clip=model.clip, batch_size=batch_size, seed=seed)
    logits = judge.predict(out.x_adv, batch_size=batch_size)
    ok = Criterion(y).is_adversarial(logits)
    d = perturbation_norms(x, out.x_adv)
    return {"seconds": out.seconds, "n": int(x.shape[0]), "success": float(ok.float().mean()),
            "l2_median": summarize(d.l2[ok])["median"], "linf_median": summarize(d.linf[ok])["median"],
            "fwd_per_img": out.forward_passes / x.shape[0], "bwd_per_img": out.backward_passes / x.shape[0]}


def raw_throughput(model, x, batch_size, steps=20):
    """Images x steps per second of plain forward+backward (input gradient) at ``batch_size``."""
    dev = module_device(model)
    xb = x[:batch_size].to(dev)
    yb = model.predict(xb).argmax(1).to(dev)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(2):  # warm-up
        xi = xb.clone().requires_grad_(True)
        torch.autograd.grad(loss_fn(model(xi), yb), xi)
    sync(dev)
    t = time.perf_counter()
    for _ in range(steps):
        xi = xb.clone().requires_grad_(True)
        torch.autograd.grad(loss_fn(model(xi), yb), xi)
    sync(dev)
    return xb.shape[0] * steps / (time.perf_counter() - t)


def sync(dev: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures it."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def markdown(paths: list[str]) -> str:
    """The JSON results as one Markdown table per model; a later file's (model, attack) rows
    replace an earlier file's (a rerun of some attacks after a fix)."""
    merged: dict[tuple[str, str], dict] = {}
    for path in paths:
        for r in json.loads(Path(path).read_text()):
            merged[(r["model"], r["attack"])] = r
    rows = sorted(merged.values(), key=lambda r: list(MODELS).index(r["model"]))
    out = ["# robaudit's torch attacks vs plain ART", "",
           "From `python bench/attack_bench.py` (same images, same parameters unless the row says; "
           "ratio = ART seconds per image / ours on the same images, also against ours per image on all "
           "images where ART ran on a prefix; passes per image as counted "
           "by robaudit's model wrapper, ART's included). ART runs on the plain TorchScript network, "
           "robaudit on its checked faster copies (robaudit/models/fast.py); the plain network judges both. "
           "C&W-L2 runs three ways: both at their own defaults (`cw-l2`: ours 9 rounds x 50 steps from c = 0.1, "
           "ART 10 x 10 from c = 0.01), ours at ART's budget (`cw-l2-art-budget`) and ART at ours "
           "(`cw-l2-ours-budget`: the same rounds, steps and starting constant).", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        sel = [r for r in rows if r["model"] == model]
        plain = sel[0].get("raw_fwd_bwd_throughput_plain")
        plain_txt = f"; the plain network: {plain:.0f}" if plain else ""
        on = f" on {sel[0]['device']}" if sel[0].get("device", "cpu") != "cpu" else ""
        out += [f"## {model}{on} (raw forward+backward: {sel[0]['raw_fwd_bwd_throughput']:.0f} images x steps / s{plain_txt})",
                "",
                "| attack | images (ART) | ours s | ART s | ratio | ratio, ours on all | ours succ | ART succ | ours L2 med | ART L2 med "
                "| ours Linf med | ART Linf med | ours fwd/bwd per img | ART fwd/bwd per img |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sel:
            o, a = r["ours_on_subset"], r["art"]
            out.append(f"| {r['attack']} | {a['n']} | {o['seconds']:.2f} | {a['seconds']:.2f} | {r['ratio_per_image']:.1f}x "
                       f"| {r['ratio_per_image_ours_on_all']:.1f}x ({r['ours']['n']}) | {o['success']:.3f} | {a['success']:.3f} | {fmt(o['l2_median'])} | {fmt(a['l2_median'])} "
                       f"| {fmt(o['linf_median'])} | {fmt(a['linf_median'])} | {o['fwd_per_img']:.0f}/{o['bwd_per_img']:.0f} "
                       f"| {a['fwd_per_img']:.0f}/{a['bwd_per_img']:.0f} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    if sys.argv[1:2] == ["markdown"]:
        print(markdown(sys.argv[2:] or [str(ROOT / "bench" / "results" / "attack_bench.json")]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5-clean,lenet5-adv,resnet20")
    ap.add_argument("--attacks", default=DEFAULT_ATTACKS)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both sides run there; ART as device_type gpu)")
    ap.add_argument("--art-subset", default="cw-l2=10,cw-l2-ours-budget=5,cw-linf=30,shadow=20",
                    help="attack=N (or row label=N): run ART (and the comparison) on the first N images only")
    ap.add_argument("--subset", default="hopskipjump=20",
                    help="attack=N: run both (ours and ART) on the first N images only")
    ap.add_argument("--param", action="append", default=["hopskipjump.max_iter=10"],
                    help="ATTACK.NAME=VALUE for both backends (repeatable; default: hopskipjump.max_iter=10)")
    ap.add_argument("--out", default=None,
                    help="JSON results (default bench/results/attack_bench.json, attack_bench_cuda.json on cuda)")
    args = ap.parse_args()
    if args.out is None:
        suffix = "" if args.device == "cpu" else f"_{args.device.split(':')[0]}"
        args.out = str(ROOT / "bench" / "results" / f"attack_bench{suffix}.json")
    torch.set_num_threads(args.threads)
    subsets = {k: int(v) for k, v in (kv.split("=") for kv in args.art_subset.split(",") if kv)}
    both = {k: int(v) for k, v in (kv.split("=") for kv in args.subset.split(",") if kv)}
    overrides: dict[str, dict[str, str]] = {}
    for raw in args.param:
        key, _, val = raw.partition("=")
        attack, _, pname = key.partition(".")
        overrides.setdefault(attack, {})[pname] = val
    results = []
    for model_key in args.models.split(","):
        mfile, dfile, eps = MODELS[model_key]
        if not (ART / mfile).exists():
            print(f"missing {ART / mfile}: run python scripts/export_shared.py first", file=sys.stderr)
            return 2
        data = load_dataset(str(ART / dfile))
        model = load_model(str(ART / mfile), device=args.device, data_shape=tuple(data.x.shape[1:]))
        # plain ART gets the network as the user gives it; it also judges both sides
        plain = load_model(str(ART / mfile), device=args.device, data_shape=tuple(data.x.shape[1:]), fast_copies=False)
        ev = build_evaluation_set(model, data, min(len(data.x), int(args.n * 1.3) + 20), args.seed, 256)
        x, y = ev.x[: args.n], ev.y[: args.n]
        print(f"\n== {model_key}: {x.shape[0]} correctly classified images, eps {eps:.4g} (Linf), "
              f"{args.threads} threads, batch {args.batch_size}")
        raw = raw_throughput(model, x, args.batch_size)
        raw_plain = raw_throughput(plain, x, args.batch_size)
        print(f"raw forward+backward throughput: {raw:.0f} images x steps / s "
              f"(the plain network: {raw_plain:.0f}; {model.info.runtime or 'no prepared copies'})")
        header = (f"{'attack':12} {'ours s':>8} {'ART s':>8} {'ratio':>7} {'ours succ':>9} {'ART succ':>9} "
                  f"{'ours L2':>8} {'ART L2':>8} {'ours Linf':>9} {'ART Linf':>9}  note")
        print(header)
        rows = []
        for a in args.attacks.split(","):
            name = AttackName(a)
            rows.append((name, ""))
            if name in (AttackName.PGD, AttackName.APGD):  # the study's fixed budget and the early exit
                rows.append((name, "es"))
            if name is AttackName.CW_L2:  # ours at ART's budget (10 rounds x 10 steps) and ART at ours
                rows += [(name, "art-budget"), (name, "ours-budget")]
        for name, variant in rows:
            early = variant == "es"
            ours_cls, art_cls = get_attack_class(name, "torch"), get_attack_class(name, "art")
            ours_p = params_from_overrides(ours_cls.Params, overrides.get(name.value, {}))
            if early:
                ours_p = dataclasses.replace(ours_p, early_stop=True)
            if variant == "art-budget":
                ours_p = dataclasses.replace(ours_p, binary_search_steps=10, max_iter=10)
            ours_eps = eps if ours_cls.kind is AttackKind.FIXED_EPS else None
            norm = Norm.LINF if Norm.LINF in ours_cls.norms and ours_cls.kind is AttackKind.FIXED_EPS else ours_cls.norms[0]
            ours = ours_cls(ours_p, norm=norm, eps=ours_eps)
            label = f"{name.value}-{variant}" if variant else name.value
            art_p = (art_at_our_budget if variant == "ours-budget" else art_params)(name, ours_p, art_cls)
            art = art_cls(art_p, norm=norm, eps=ours_eps)
            m = subsets.get(label, subsets.get(name.value))
            xa, ya = (x[: both[name.value]], y[: both[name.value]]) if name.value in both else (x, y)
            raw_before = raw_throughput(model, x, args.batch_size) if name is AttackName.PGD and not early else None
            r_ours = measure(ours, model, plain, xa, ya, args.batch_size, args.seed)
            if raw_before is not None:  # raw throughput right before and after: the load may change
                raw = (raw_before + raw_throughput(model, x, args.batch_size)) / 2
            xs, ys = (xa[:m], ya[:m]) if m else (xa, ya)
            r_ours_sub = measure(ours, model, plain, xs, ys, args.batch_size, args.seed) if m else r_ours
            r_art = measure(art, plain, plain, xs, ys, args.batch_size, args.seed)
            ratio = (r_art["seconds"] / r_art["n"]) / max(r_ours_sub["seconds"] / r_ours_sub["n"], 1e-12)
            ratio_all = (r_art["seconds"] / r_art["n"]) / max(r_ours["seconds"] / r_ours["n"], 1e-12)
            note = (f"ART on first {m} (ours on all {xa.shape[0]}: succ {r_ours['success']:.3f}, "
                    f"L2 {fmt(r_ours['l2_median'])}, {ratio_all:.1f}x per image) " if m else "")
            if early:
                note += "early stop (ART has none)"
            elif name is AttackName.PGD:
                eff = xa.shape[0] * ours_p.steps * ours_p.restarts / r_ours["seconds"] / raw
                note += f"efficiency {eff:.2f} of raw fwd+bwd ({raw:.0f} images x steps / s around it)"
            if name.value in both:
                note += f"both on the first {xa.shape[0]} images "
            print(f"{label:12} {r_ours_sub['seconds']:8.2f} {r_art['seconds']:8.2f} {ratio:6.1f}x "
                  f"{r_ours_sub['success']:9.3f} {r_art['success']:9.3f} {fmt(r_ours_sub['l2_median']):>8} "
                  f"{fmt(r_art['l2_median']):>8} {fmt(r_ours_sub['linf_median']):>9} {fmt(r_art['linf_median']):>9}  {note}",
                  flush=True)
            results.append({"model": model_key, "attack": label, "eps": ours_eps, "norm": norm.value,
                            "ours_params": dataclasses.asdict(ours_p), "art_params": dataclasses.asdict(art.params),
                            "art_subset": m, "ours": r_ours, "ours_on_subset": r_ours_sub, "art": r_art,
                            "ratio_per_image": ratio, "ratio_per_image_ours_on_all": ratio_all, "raw_fwd_bwd_throughput": raw,
                            "raw_fwd_bwd_throughput_plain": raw_plain, "runtime": model.info.runtime,
                            "device": args.device})
            write(args.out, results)  # after every attack: a stopped run keeps what it measured
    print(f"\nwritten {args.out}")
    return 0


def write(path: str, results: list) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out)


if __name__ == "__main__":
    raise SystemExit(main())
