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


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def detect_eval_errors(ev: dict[str, Any]) -> list[str]:
    """What makes ``ev`` (a ``detect eval`` report) unreadable before it is converted to an audit
    report, whose schema checks the values' ranges: missing sections, wrong types, and an attack
    with adversarial examples but no AUROC (rendered, it would read "produced no adversarial
    example"). Empty when it can be converted."""
    errs: list[str] = []
    sections = {k: ev.get(k) for k in ("config", "benign", "attacks", "auroc", "detection")}
    errs += [f"'{k}' is missing or not a mapping" for k, v in sections.items() if not isinstance(v, dict)]
    if errs:
        return errs
    cfg, benign, attacks = sections["config"], sections["benign"], sections["attacks"]
    auroc, detection = sections["auroc"], sections["detection"]
    names = cfg.get("attacks")
    if not isinstance(names, list) or not all(isinstance(a, str) for a in names):
        errs.append("'config.attacks' is not a list of attack labels")
        names = []
    costs = cfg.get("costs", [])
    if not isinstance(costs, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in costs):
        errs.append("'config.costs' is not a list of cost attacks with names")
    if not _count(benign.get("n")):
        errs.append("'benign.n' is not a count")
    if not isinstance(benign.get("inputs", []), list):
        errs.append("'benign.inputs' is not a list")
    for a in names:
        info = attacks.get(a)
        n_adv = info.get("n_adversarial") if isinstance(info, dict) else None
        if not _count(n_adv):
            errs.append(f"'attacks.{a}.n_adversarial' is missing or not a count")
            continue
        if not isinstance(info.get("inputs", []), list) or not isinstance(info.get("settings", {}), dict):
            errs.append(f"'attacks.{a}' has inputs or settings of the wrong type")
        aucs = auroc.get(a)
        if n_adv and not isinstance(aucs, dict):
            errs.append(f"'auroc.{a}' is missing although {a} produced {n_adv} adversarial examples")
            continue
        for score, v in (aucs or {}).items():
            if v is not None and not _number(v):
                errs.append(f"'auroc.{a}.{score}' is not a number: {v!r}")
        rates = detection.get(a, {})
        if not isinstance(rates, dict) or not all(
                isinstance(r, dict) and all(x is None or _number(x) for x in r.values()) for r in rates.values()):
            errs.append(f"'detection.{a}' is not a mapping of scores to numeric rates")
    return errs


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
