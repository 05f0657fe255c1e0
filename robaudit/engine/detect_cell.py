"""The detection cell of an audit: A2D attack costs against the profile's adversarial examples.

One cell per model (``m0/detect/detect/-/none``). It runs in chunks of ``batch_size`` benign inputs
(the first ``detect.samples`` of the evaluation set): a chunk measures the benign inputs' costs
(and squeeze scores), crafts each ``detect.attacks`` attack on them (untargeted, Linf, keeping the
successful examples) and measures the examples' costs. Each chunk is seeded from the cell seed and
its index and yields a self-contained record, which the journal stores, so a killed audit resumes
at the chunk in flight. The cell entry (``report["detection"]``) then has, per (attack, score):
AUROC, and detection rate / FPR / balanced accuracy (and plain accuracy) at thresholds fitted on
the even-indexed half of the benign inputs (FPR measured on the other half), plus a thinned ROC
curve for the HTML report. The AUROC of a score that depends on those thresholds (A2D+squeeze) is
over the held-out half only; raw costs and the squeeze score use every benign input.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from robaudit.config import Profile
from robaudit.engine.cells import Cell, CellContext, ChunkRecord

ROC_POINTS = 64


def detect_n(evalset_n: int, profile: Profile) -> int:
    """Benign inputs of the detection cell."""
    spec = profile.detect
    assert spec is not None
    return evalset_n if spec.samples is None else min(spec.samples, evalset_n)


def _cost_params(model: Any, profile: Profile) -> list[Any]:
    from robaudit.detect.interface import CostName
    from robaudit.engine.detect_job import cost_params_for

    spec = profile.detect
    assert spec is not None
    return cost_params_for(model, [CostName(c) for c in spec.costs], spec.max_iter)


def _squeeze(model: Any, profile: Profile) -> Any:
    from robaudit.detect.squeeze import SqueezeParams

    assert profile.detect is not None
    return SqueezeParams.default_for(model.info.input_shape) if profile.detect.squeeze else None


def run_detect_chunk(model: Any, evalset: Any, cell: Cell, profile: Profile, chunk: int,
                     device: str | None) -> dict[str, Any]:
    """Costs of benign inputs ``[chunk * batch_size, ...)`` and of the examples crafted from them."""
    from robaudit.attacks.registry import AttackName
    from robaudit.engine.detect_job import craft, features_for
    from robaudit.engine.session import seed_everything

    spec = profile.detect
    assert spec is not None
    bs = profile.batch_size
    n = detect_n(evalset.n, profile)
    lo, hi = chunk * bs, min((chunk + 1) * bs, n)
    x, y = evalset.x[lo:hi], evalset.y[lo:hi]
    seed = cell.chunk_seed(profile.seed, chunk)
    # the cost attacks' random streams: the cell seed and each input's dataset index (or content), so
    # a cost does not depend on the chunking (batch_size)
    cost_seed = cell.seed(profile.seed)
    costs, sq = _cost_params(model, profile), _squeeze(model, profile)
    seed_everything(seed)
    with torch.enable_grad():
        benign, bres, bsec = features_for(model, x, costs, sq, batch_size=bs, seed=cost_seed,
                                          indices=np.asarray(evalset.indices)[lo:hi])
    rec: dict[str, Any] = {
        "chunk": chunk, "n": hi - lo, "benign": {k: v.tolist() for k, v in benign.items()},
        "seconds": bsec, "forward": int(sum(bres.forward_passes.values())),
        "backward": int(sum(bres.backward_passes.values())), "attacks": {},
    }
    for a in spec.attacks:
        seed_everything(seed)
        with torch.enable_grad():
            cr = craft(model, x, y, AttackName(a.name), mode=spec.craft, eps=a.eps, seed=seed, batch_size=bs,
                       params=dict(a.params) or None)
        entry: dict[str, Any] = {"n_attempted": cr.n_attempted, "index": [int(i) + lo for i in cr.source_index],
                                 "l2": cr.l2.tolist(), "linf": cr.linf.tolist(), "craft_seconds": cr.seconds,
                                 "features": {}, "seconds": 0.0}
        if cr.x.shape[0]:
            with torch.enable_grad():
                adv, _, asec = features_for(model, cr.x, costs, sq, batch_size=bs, seed=cost_seed)
            entry["features"] = {k: v.tolist() for k, v in adv.items()}
            entry["seconds"] = asec
        rec["attacks"][a.label] = entry
    return rec


def _stats(v: np.ndarray) -> dict[str, float]:
    from robaudit.engine.detect_job import _stats as stats

    return stats(v)


def detect_cell_entry(cell: Cell, profile: Profile, n: int, model: Any,
                      chunks: list[ChunkRecord]) -> dict[str, Any]:
    """Combine the chunk records of a detection cell into its report entry."""
    from robaudit.detect.detectors import EnsembleDetector, ThresholdDetector, ZScoreDetector, fit_warnings
    from robaudit.detect.interface import SQUEEZE_FEATURE, Detector
    from robaudit.detect.metrics import auroc, rates, roc_curve

    spec = profile.detect
    assert spec is not None
    costs = _cost_params(model, profile)
    sq = _squeeze(model, profile)
    bases = [c.name.value for c in costs] + ([SQUEEZE_FEATURE] if sq is not None else [])
    benign = {f: np.asarray([v for c in chunks for v in c["benign"][f]], dtype=np.float64) for f in bases}
    if any(v.size != n for v in benign.values()):
        raise AssertionError(f"cell {cell.id}: benign features do not cover its {n} inputs")
    fit_half = np.arange(n) % 2 == 0
    test = ~fit_half
    n_test = int(test.sum())
    detectors: dict[str, Detector] = {}
    for c in spec.costs:
        detectors[c] = ZScoreDetector.fit(c, benign[c][fit_half], spec.fpr)
    if sq is not None:
        detectors[SQUEEZE_FEATURE] = ThresholdDetector.fit(benign[SQUEEZE_FEATURE][fit_half], spec.fpr)
        for c in spec.costs:
            members: list[Detector] = [ZScoreDetector.fit(c, benign[c][fit_half], spec.fpr / 2),
                                       ThresholdDetector.fit(benign[SQUEEZE_FEATURE][fit_half], spec.fpr / 2)]
            detectors[f"{c}+squeeze"] = EnsembleDetector(members, 1)
    b_test = {k: v[test] for k, v in benign.items()}
    rows: list[dict[str, Any]] = []
    roc: list[dict[str, Any]] = []
    attacks_out: dict[str, Any] = {}
    seconds = float(sum(c["seconds"] for c in chunks))
    for a in spec.attacks:
        parts = [c["attacks"][a.label] for c in chunks]
        n_att = sum(p["n_attempted"] for p in parts)
        adv = {f: np.asarray([v for p in parts for v in p["features"].get(f, [])], dtype=np.float64) for f in bases}
        n_adv = int(sum(len(p["index"]) for p in parts))
        l2 = np.asarray([v for p in parts for v in p["l2"]], dtype=np.float64)
        linf = np.asarray([v for p in parts for v in p["linf"]], dtype=np.float64)
        seconds += float(sum(p["craft_seconds"] + p["seconds"] for p in parts))
        attacks_out[a.label] = {
            "attack": a.name, "eps": a.eps, "params": dict(a.params), "n_attempted": n_att, "n_adversarial": n_adv,
            "success_rate": n_adv / n_att if n_att else None,
            "l2_mean": float(l2.mean()) if l2.size else None, "linf_mean": float(linf.mean()) if linf.size else None,
            "costs": {c: _stats(adv[c]) for c in spec.costs} if n_adv else None,
        }
        for f in spec.feature_names():
            row: dict[str, Any] = {"attack": a.label, "attack_name": a.name, "setup": _setup_text(a),
                                   "cost": f, "n_benign": n, "n_benign_test": n_test, "n_adversarial": n_adv}
            if n_adv == 0:
                row.update({"status": "no-adversarial", "reason": f"{a.label} produced no adversarial example",
                            "auroc": None, "detection_rate": None, "fpr": None, "accuracy": None,
                            "balanced_accuracy": None})
                rows.append(row)
                continue
            det = detectors[f]
            if f in bases:  # a raw feature: cheap cost (or a large squeeze score) is suspicious
                sign = 1.0 if f == SQUEEZE_FEATURE else -1.0
                b_score, a_score = sign * benign[f], sign * adv[f]
            else:  # an ensemble's score depends on its fitted thresholds: held-out benign inputs only
                b_score, a_score = det.score(b_test), det.score(adv)
            r = rates(det.flag(b_test), det.flag(adv))
            row.update({"status": "ok", "reason": None, "auroc": auroc(b_score, a_score),
                        "detection_rate": r["tpr"], "fpr": r["fpr"], "accuracy": r["accuracy"],
                        "balanced_accuracy": r["balanced_accuracy"]})
            rows.append(row)
            fpr_pts, tpr_pts = roc_curve(b_score, a_score, ROC_POINTS)
            roc.append({"attack": a.label, "cost": f, "fpr": fpr_pts, "tpr": tpr_pts})
    fwd = sum(c["forward"] for c in chunks)
    bwd = sum(c["backward"] for c in chunks)
    notes = [f"{cell.id}: {w}" for w in dict.fromkeys(w for c in spec.costs for w in fit_warnings(detectors[c]))]
    notes += [f"{cell.id}: {w}" for w in small_test_warning(n_test)]
    return {
        "cell_id": cell.id, "kind": "detect", "status": "ok", "reason": None, "seed": cell.seed(profile.seed),
        "n_benign": n, "n_benign_test": n_test, "craft": spec.craft, "target_fpr": spec.fpr,
        "costs": [p.to_dict() for p in costs], "squeeze": sq.to_dict() if sq is not None else None,
        "thresholds_from": "fitted on the even-indexed half of the benign inputs; FPR on the other half",
        "thresholds": {k: d.to_dict() for k, d in detectors.items()},
        "benign_costs": {c: _stats(benign[c]) for c in spec.costs},
        "attacks": attacks_out, "rows": rows, "roc": roc,
        "benign_forward_passes_per_input": fwd / n if n else None,
        "benign_backward_passes_per_input": bwd / n if n else None,
        "seconds": seconds, "notes": notes,
    }


SMALL_TEST = 20
"""Held-out benign inputs below which detection rates come with a warning."""


def small_test_warning(n_test: int) -> list[str]:
    """A caution when FPR and accuracy rest on few held-out benign inputs."""
    if n_test >= SMALL_TEST:
        return []
    return [f"FPR and accuracy rest on {n_test} held-out benign input{'s' if n_test != 1 else ''}: one input moves "
            f"the FPR by {100 / max(n_test, 1):.0f} points; use more inputs"]


def _setup_text(a: Any) -> str:
    """The crafting attack's eps and parameter overrides as the tables show them (``""``: defaults), so
    that e.g. a high-confidence C&W row does not read as plain C&W."""
    parts = ([f"eps {a.eps:g}"] if a.eps is not None else []) + [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                                                 for k, v in sorted(a.params.items())]
    return ", ".join(parts)


def run_detect_cell(ctx: CellContext, cell: Cell, finished: dict[int, ChunkRecord],
                    on_chunk: Callable[[ChunkRecord], None]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The :data:`~robaudit.engine.cells.CellRunner` of detection cells (the row is the report entry)."""
    from robaudit.engine.cells import n_chunks

    n = detect_n(ctx.evalset.n, ctx.profile)
    if n < 4 or not ctx.model.white_box:
        why = (f"only {n} correctly classified inputs (detection needs at least 4)" if n < 4
               else "black-box model: the cost attacks need gradients")
        return {"cell_id": cell.id, "kind": "detect", "status": "skipped", "reason": why,
                "seed": cell.seed(ctx.profile.seed), "n_benign": n, "rows": [], "roc": [], "attacks": {},
                "seconds": 0.0}, None
    records = []
    for k in range(n_chunks(n, ctx.profile.batch_size)):
        rec = finished.get(k)
        if rec is None:
            rec = run_detect_chunk(ctx.model, ctx.evalset, cell, ctx.profile, k, ctx.device)
            on_chunk(rec)
        records.append(rec)
    return detect_cell_entry(cell, ctx.profile, n, ctx.model, records), None
