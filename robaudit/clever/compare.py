"""CLEVER against measured robustness: minimal distortions found by real attacks, and correlations.

CLEVER estimates a *lower bound* on the minimal adversarial distortion. Minimisation attacks
measure an *upper bound*: a distortion that provably suffices. On an input where an attack
succeeded with distortion ``d`` in the same norm and target setting, a CLEVER score above ``d`` is
a **violation**: the estimate claimed more robustness than the input has. The attacks run per
CLEVER norm that has one (L1 has none):

* L2: DeepFool (untargeted only) and C&W-L2;
* Linf: C&W-Linf.

Success is measured by robaudit on the (defended) model's predictions, as in ``robaudit attack``.
Across defence stacks, the rank correlation (Spearman) between the stacks' mean CLEVER score and
each attack's success rate (and median distortion) says whether CLEVER ranks the stacks as the
attacks do.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robaudit.attacks.base import Criterion, Norm, TargetMode
from robaudit.attacks.registry import AttackName
from robaudit.clever.interface import CleverNorm

COMPARE_ATTACKS: dict[CleverNorm, tuple[AttackName, ...]] = {
    CleverNorm.L2: (AttackName.DEEPFOOL, AttackName.CW_L2),
    CleverNorm.LINF: (AttackName.CW_LINF,),
}
"""Minimisation attacks run against each CLEVER norm (in that norm)."""

VIOLATION_RTOL = 1e-6
"""A score counts as a violation when it exceeds the found distortion by more than this fraction."""


def attack_norm(norm: CleverNorm) -> Norm | None:
    return {CleverNorm.L2: Norm.L2, CleverNorm.LINF: Norm.LINF}.get(norm)


@dataclass(frozen=True)
class AttackMeasurement:
    """Per-input outcome of one minimisation attack in one norm and target setting."""

    attack: str
    norm: CleverNorm
    target: TargetMode
    success: np.ndarray
    """Bool per input: the model's prediction on the example is adversarial."""
    distance: np.ndarray
    """Distortion per input in ``norm`` (pixel space), successful or not."""
    row: dict[str, Any]
    """The attack's result row (the same keys as ``robaudit attack`` rows)."""


def measure_attack(model: Any, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None, name: AttackName,
                   norm: CleverNorm, mode: TargetMode, *, seed: int, batch_size: int,
                   defences: Sequence[str] = (), device: str | None = None) -> AttackMeasurement | None:
    """Run attack ``name`` in ``norm`` on ``x``; ``None`` when it does not support the setting."""
    from robaudit.attacks.registry import get_attack_class
    from robaudit.engine.attack_run import verify_bounds
    from robaudit.engine.session import seed_everything
    from robaudit.metrics import perturbation_norms, summarize

    a_norm = attack_norm(norm)
    cls = get_attack_class(name, "torch")
    if a_norm is None or a_norm not in cls.norms:
        return None
    attack = cls(norm=a_norm)
    if not attack.supports(mode):
        return None
    seed_everything(seed)
    with torch.enable_grad():
        out = attack.generate(model, x, y, targets, clip=model.clip, batch_size=batch_size, seed=seed, device=device)
    dist = perturbation_norms(x, out.x_adv)
    verify_bounds(attack, x, out.x_adv, dist, model.clip)
    logits = model.predict(out.x_adv, batch_size=batch_size)
    success = Criterion(y, targets).is_adversarial(logits)
    n = int(x.shape[0])
    n_success = int(success.sum())
    l2_s, linf_s, l2_a, linf_a = summarize(dist.l2[success]), summarize(dist.linf[success]), summarize(dist.l2), \
        summarize(dist.linf)
    row = {
        "attack": name.value, "backend": "torch", "target": mode.value, "norm": a_norm.value, "eps": None,
        "defences": list(defences), "params": dataclasses.asdict(attack.params), "status": "ok", "reason": None,
        "n": n, "n_success": n_success, "success_rate": n_success / n if n else None,
        "l2_mean": l2_s["mean"], "l2_median": l2_s["median"], "linf_mean": linf_s["mean"],
        "linf_median": linf_s["median"], "linf_max": linf_s["max"], "l2_mean_all": l2_a["mean"],
        "l2_median_all": l2_a["median"], "linf_mean_all": linf_a["mean"], "linf_median_all": linf_a["median"],
        "l0_mean": summarize(dist.l0[success])["mean"], "seconds": out.seconds,
        "seconds_per_image": out.seconds / n if n else None,
        "forward_passes_per_image": out.forward_passes / n if n else None,
        "backward_passes_per_image": out.backward_passes / n if n else None,
    }
    d = (dist.l2 if a_norm is Norm.L2 else dist.linf).numpy().astype(np.float64)
    return AttackMeasurement(attack=name.value, norm=norm, target=mode, success=success.numpy().astype(bool),
                             distance=d, row=row)


def spearman(a: Sequence[float | None], b: Sequence[float | None]) -> float | None:
    """Spearman rank correlation over the pairs where both are known; ``None`` if undefined
    (fewer than two pairs, or a constant side)."""
    pairs = [(float(u), float(v)) for u, v in zip(a, b)
             if u is not None and v is not None and math.isfinite(float(u)) and math.isfinite(float(v))]
    if len(pairs) < 2:
        return None
    u = np.array([p[0] for p in pairs])
    v = np.array([p[1] for p in pairs])
    if np.ptp(u) == 0 or np.ptp(v) == 0:
        return None
    from scipy import stats

    rho = float(stats.spearmanr(u, v).statistic)
    return rho if math.isfinite(rho) else None


def _stats(scores: np.ndarray, success: np.ndarray, distance: np.ndarray) -> dict[str, Any]:
    ok = success.astype(bool)
    n_ok = int(ok.sum())
    viol = ok & (scores > distance * (1 + VIOLATION_RTOL) + 1e-12)
    n_viol = int(viol.sum())
    return {
        "n": int(scores.size), "n_success": n_ok, "success_rate": n_ok / scores.size if scores.size else None,
        "distortion_median": float(np.median(distance[ok])) if n_ok else None,
        "distortion_mean": float(np.mean(distance[ok])) if n_ok else None,
        "distortion_min": float(np.min(distance[ok])) if n_ok else None,
        "n_violations": n_viol, "violation_rate": n_viol / n_ok if n_ok else None,
        "spearman_inputs": spearman(scores[ok].tolist(), distance[ok].tolist()),
    }


def comparison_entry(defences: Sequence[str], norm: CleverNorm, mode: TargetMode, indices: Sequence[int],
                     scores: Sequence[float], radius: float, measurements: Sequence[AttackMeasurement],
                     seconds: float) -> dict[str, Any]:
    """The report's comparison entry of one (stack, norm, target): per attack and best of attacks."""
    s = np.asarray(scores, dtype=np.float64)
    attacks = []
    for m in measurements:
        attacks.append({"attack": m.attack, **_stats(s, m.success, m.distance)})
    inputs = []
    if measurements:
        dist = np.stack([np.where(m.success, m.distance, np.inf) for m in measurements])
        best_i = dist.argmin(axis=0)
        best = dist.min(axis=0)
        found = np.isfinite(best)
        best_stats = _stats(s, found, np.where(found, best, 0.0))
        for k, idx in enumerate(indices):
            d = float(best[k]) if found[k] else None
            inputs.append({"index": int(idx), "clever": float(s[k]), "distortion": d,
                           "attack": measurements[int(best_i[k])].attack if found[k] else None,
                           "violation": bool(found[k] and s[k] > best[k] * (1 + VIOLATION_RTOL) + 1e-12)})
    else:
        best_stats = None
    return {
        "defences": list(defences), "norm": norm.value, "target": mode.value, "radius": radius, "n": int(s.size),
        "clever_mean": float(s.mean()) if s.size else None, "clever_median": float(np.median(s)) if s.size else None,
        "attacks": attacks, "best": best_stats, "inputs": inputs, "seconds": seconds,
    }


def correlations(clever_rows: Sequence[dict[str, Any]], attack_rows: Sequence[dict[str, Any]],
                 comparison: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Across defence stacks: Spearman between mean CLEVER and attack success rate / median distortion.

    One entry per (CLEVER norm, target, attack row label) present on at least two stacks. Attack
    rows are matched on target and defence stack; a CLEVER norm is compared with attacks in the
    same norm when there are any, else with every attack of the target (noted as ``cross-norm``).
    The ``best`` entries of ``comparison`` add the best-of-attacks distortion per stack.
    """
    out: list[dict[str, Any]] = []
    groups: dict[tuple[str, str], dict[str, float]] = {}
    for r in clever_rows:
        if r.get("status") == "ok" and r.get("mean") is not None:
            groups.setdefault((r["norm"], r["target"]), {})["+".join(r.get("defences") or []) or "none"] = r["mean"]
    for (norm, target), means in groups.items():
        if len(means) < 2:
            continue
        rows = [a for a in attack_rows if a.get("status") == "ok" and a.get("target") == target
                and a.get("threat_model") in (None, "none", "adaptive")]  # transfer rows measure another threat
        same = [a for a in rows if a.get("norm") == norm]
        chosen = same or rows
        labels = list(dict.fromkeys(str(a.get("label", a.get("attack"))) for a in chosen))
        for label in labels:
            per_stack = {"+".join(a.get("defences") or []) or "none": a for a in chosen
                         if str(a.get("label", a.get("attack"))) == label}
            stacks = [s for s in means if s in per_stack]
            if len(stacks) < 2:
                continue
            dist_key = "l2_median" if per_stack[stacks[0]].get("norm") == "l2" else "linf_median"
            c = [means[s] for s in stacks]
            succ = [per_stack[s].get("success_rate") for s in stacks]
            dist = [per_stack[s].get(dist_key) for s in stacks]
            out.append({"norm": norm, "target": target, "attack": label,
                        "attack_norm": per_stack[stacks[0]].get("norm"), "cross_norm": not same,
                        "stacks": stacks, "clever_mean": c, "success_rate": succ, "distortion_median": dist,
                        "spearman_success": spearman(c, succ), "spearman_distortion": spearman(c, dist)})
        best = {"+".join(e.get("defences") or []) or "none": e for e in comparison
                if e.get("norm") == norm and e.get("target") == target and e.get("best")}
        stacks = [s for s in means if s in best]
        if len(stacks) >= 2:
            c = [means[s] for s in stacks]
            succ = [best[s]["best"].get("success_rate") for s in stacks]
            dist = [best[s]["best"].get("distortion_median") for s in stacks]
            out.append({"norm": norm, "target": target, "attack": "best", "attack_norm": norm, "cross_norm": False,
                        "stacks": stacks, "clever_mean": c, "success_rate": succ, "distortion_median": dist,
                        "spearman_success": spearman(c, succ), "spearman_distortion": spearman(c, dist)})
    return out
