"""A ``robaudit detect eval`` report read as an audit report with one detection cell.

``report`` renders, gates and diffs audit reports; a ``detect eval`` report holds the same numbers
in its own layout (AUROC and rates per crafting attack and score, per-input costs). Rewritten here
as one detection cell, it gets the audit's tables, Markdown, self-contained HTML with ROC curves,
detection gates (``detect auroc >= 0.9``) and ``report diff``. Nothing is recomputed but the ROC
curves of the raw scores (cost attacks and feature squeezing), drawn from the per-input costs the
report stores; a curve is kept only if its AUROC equals the report's.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

CELL_ID = "detect-eval"
"""The one detection cell's id (for gates' ``where`` and ``report diff``)."""
_DEFAULT_SPLIT = "z-score fitted on the even-indexed half of the benign inputs"


def is_detect_eval(report: Any) -> bool:
    return isinstance(report, dict) and report.get("kind") == "detect" and report.get("mode") == "eval"


def _setup(settings: dict[str, Any]) -> str:
    """The crafting attack's budget and the parameters it ran with that differ from its defaults (so
    that a high-confidence C&W does not read as plain C&W), as the audit's detection rows show them."""
    import dataclasses

    from robaudit.attacks.registry import AttackName, get_attack_class

    parts = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in settings.items()
             if k not in ("attack", "rule", "params") and v is not None]
    params = settings.get("params") or {}
    try:
        defaults = dataclasses.asdict(get_attack_class(AttackName(str(settings.get("attack"))), "torch").Params())
    except (ValueError, KeyError, TypeError):
        defaults = {}
    parts += [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(params.items())
              if k not in defaults or defaults[k] != v]
    return ", ".join(parts)


def _roc(report: dict[str, Any], attack: str, score: str, auc: float | None) -> dict[str, Any] | None:
    """The ROC curve of a raw score from the per-input costs, if they reproduce the report's AUROC."""
    from robaudit.detect.interface import SQUEEZE_FEATURE
    from robaudit.detect.metrics import auroc, roc_curve
    from robaudit.engine.detect_cell import ROC_POINTS

    benign = [r[score] for r in report["benign"].get("inputs", []) if isinstance(r.get(score), (int, float))]
    adv = [r[score] for r in (report["attacks"].get(attack) or {}).get("inputs", [])
           if isinstance(r.get(score), (int, float))]
    if auc is None or not benign or not adv:
        return None
    sign = 1.0 if score == SQUEEZE_FEATURE else -1.0  # a cheap cost (or a large squeeze score) is suspicious
    b, a = sign * np.asarray(benign, np.float64), sign * np.asarray(adv, np.float64)
    if abs(auroc(b, a) - float(auc)) > 1e-9:
        return None
    fpr, tpr = roc_curve(b, a, ROC_POINTS)
    return {"attack": attack, "cost": score, "fpr": fpr, "tpr": tpr}


def as_audit_report(ev: dict[str, Any]) -> dict[str, Any]:
    """``ev`` (a ``detect eval`` report) as an audit report: no attack rows, one detection cell."""
    cfg = ev.get("config") or {}
    benign = ev.get("benign") or {}
    n, n_test = int(benign.get("n", 0)), benign.get("n_test")
    own_split = cfg.get("thresholds_from", _DEFAULT_SPLIT) == _DEFAULT_SPLIT
    rows: list[dict[str, Any]] = []
    roc: list[dict[str, Any]] = []
    scores = list(dict.fromkeys([str(c.get("name")) for c in cfg.get("costs", [])]
                                + [s for a in (ev.get("auroc") or {}).values() for s in a]))
    for attack in cfg.get("attacks", []):
        info = (ev.get("attacks") or {}).get(attack) or {}
        settings = info.get("settings") or {}
        n_adv = int(info.get("n_adversarial", 0))
        aucs = (ev.get("auroc") or {}).get(attack) or {}
        rates = (ev.get("detection") or {}).get(attack) or {}
        for score in scores:
            row: dict[str, Any] = {"attack": attack, "attack_name": str(settings.get("attack", attack)),
                                   "setup": _setup(settings), "cost": score, "n_benign": n,
                                   **({"n_benign_test": int(n_test)} if own_split and n_test is not None else {}),
                                   "n_adversarial": n_adv}
            if n_adv == 0 or score not in aucs:
                row.update({"status": "no-adversarial", "reason": f"{attack} produced no adversarial example",
                            "auroc": None, "detection_rate": None, "fpr": None, "accuracy": None,
                            "balanced_accuracy": None})
                rows.append(row)
                continue
            r = rates.get(score) or {}
            row.update({"status": "ok", "reason": None, "auroc": aucs[score], "detection_rate": r.get("tpr"),
                        "fpr": r.get("fpr"), "accuracy": r.get("accuracy"),
                        "balanced_accuracy": r.get("balanced_accuracy")})
            rows.append(row)
            curve = _roc(ev, attack, score, aucs[score])
            if curve is not None:
                roc.append(curve)
    entry = {
        "cell_id": CELL_ID, "kind": "detect", "status": "ok", "reason": None, "seed": int(cfg.get("seed", 0)),
        "n_benign": n, **({"n_benign_test": int(n_test)} if own_split and n_test is not None else {}),
        "craft": cfg.get("craft_mode", "early"), "target_fpr": cfg.get("target_fpr"),
        "costs": list(cfg.get("costs", [])), "squeeze": cfg.get("squeeze"),
        "thresholds_from": str(cfg.get("thresholds_from", _DEFAULT_SPLIT)),
        "thresholds": copy.deepcopy(ev.get("thresholds") or {}),
        "benign_costs": copy.deepcopy(benign.get("costs") or {}),
        "attacks": {a: {k: v for k, v in info.items() if k != "inputs"} for a, info in (ev.get("attacks") or {}).items()},
        "rows": rows, "roc": roc,
    }
    if entry["target_fpr"] is None:
        del entry["target_fpr"]
    if benign.get("n_misclassified") and benign.get("flag_rate_misclassified"):
        entry["misclassified"] = {"n": int(benign["n_misclassified"]),
                                  "flag_rate": dict(benign["flag_rate_misclassified"])}
    data = dict(ev.get("data") or {})
    selected = int(data.get("n_selected", 0))
    data.setdefault("n_total", selected)
    data.setdefault("n_dropped_misclassified", max(0, selected - int(data.get("n_evaluated", 0))))
    warnings = list(ev.get("warnings") or [])
    if not own_split:
        warnings.append(f"thresholds from {cfg.get('thresholds_from')}: rates are over all benign inputs")
    return {
        "schema_version": ev.get("schema_version"), "robaudit_version": ev.get("robaudit_version"),
        "created": ev.get("created"), "libraries": ev.get("libraries") or {}, "command": ev.get("command") or [],
        "seed": int(cfg.get("seed", 0)), "device": ev.get("device"), "model": ev.get("model"), "data": data,
        "config": {"detect_eval": cfg}, "results": [], "warnings": warnings, "kind": "detect-eval",
        "detection": [entry],
    }
