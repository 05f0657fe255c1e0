"""The report's ``clever`` section: per-(stack, norm, target) rows with per-input scores, the
comparison with attacks, and correlations across stacks. Also the JSON form of estimates (the
audit journal stores them).

Section shape (validated by ``robaudit/report/schema.json``)::

    "clever": {
      "config": {...},                     # norms, targets, radius per norm, budget, fit options
      "rows": [{"defences", "norm", "target", "radius", "status", "n", "mean", "median", "min",
                "max", "n_poor_fit", "n_at_radius", "n_misclassified", "seconds", ...,
                "inputs": [{"index", "position", "label", "class", "score", "g0", "location",
                            "max_observed", "shape", "scale", "ks_statistic", "p_value", "fit",
                            "poor_fit", "at_radius"}]}],
      "comparison": [{"defences", "norm", "target", "clever_mean", "clever_median",
                      "attacks": [{"attack", "n_success", "success_rate", "distortion_median",
                                   "n_violations", "violation_rate", ...}],
                      "best": {...}, "inputs": [{"index", "clever", "distortion", "attack", "violation"}]}],
      "correlation": [{"norm", "target", "attack", "stacks", "clever_mean", "success_rate",
                       "distortion_median", "spearman_success", "spearman_distortion"}]
    }
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from robaudit.attacks.base import TargetMode
from robaudit.clever.interface import ClassEstimate, CleverRun, InputEstimate, WeibullFit


def fit_to_dict(fit: WeibullFit) -> dict[str, Any]:
    return {"location": fit.location, "method": fit.method, "max_observed": fit.max_observed, "shape": fit.shape,
            "scale": fit.scale, "ks_statistic": fit.ks_statistic, "p_value": fit.p_value,
            "log_likelihood": fit.log_likelihood, "initial_shape": fit.initial_shape}


def fit_from_dict(d: dict[str, Any]) -> WeibullFit:
    return WeibullFit(**d)


def estimate_to_dict(est: InputEstimate) -> dict[str, Any]:
    """JSON form of an input's estimates (what the audit journal stores per input)."""
    return {"position": est.position, "index": est.index, "label": est.label,
            "classes": [{"cls": c.cls, "g0": c.g0, "score": c.score, "fit": fit_to_dict(c.fit)} for c in est.classes]}


def estimate_from_dict(d: dict[str, Any]) -> InputEstimate:
    return InputEstimate(position=int(d["position"]), index=int(d["index"]), label=int(d["label"]),
                         classes=tuple(ClassEstimate(cls=int(c["cls"]), g0=float(c["g0"]), score=float(c["score"]),
                                                     fit=fit_from_dict(c["fit"])) for c in d["classes"]))


def selected(est: InputEstimate, mode: TargetMode, target: int | None) -> ClassEstimate:
    """The class estimate that gives the input's score in ``mode`` (``target``: its target class)."""
    if mode is TargetMode.UNTARGETED:
        return est.untargeted()
    assert target is not None
    return est.for_class(int(target))


def input_record(est: InputEstimate, mode: TargetMode, target: int | None, radius: float,
                 poor_fit_p: float) -> dict[str, Any]:
    c = selected(est, mode, target)
    rec: dict[str, Any] = {
        "index": est.index, "position": est.position, "label": est.label, "class": c.cls, "score": c.score,
        "g0": c.g0, "location": c.fit.location, "max_observed": c.fit.max_observed, "shape": c.fit.shape,
        "scale": c.fit.scale, "ks_statistic": c.fit.ks_statistic, "p_value": c.fit.p_value, "fit": c.fit.method,
        "poor_fit": c.fit.poor(poor_fit_p), "at_radius": c.score >= radius * (1 - 1e-12),
    }
    if mode is TargetMode.UNTARGETED:
        rec["n_poor_class_fits"] = sum(x.fit.poor(poor_fit_p) for x in est.classes)
    return rec


def _summary(values: Sequence[float]) -> dict[str, float | None]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}


def summary_row(run: CleverRun, mode: TargetMode, targets: Sequence[int] | None, defences: Sequence[str],
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``clever.rows`` entry: the inputs' scores in ``mode`` and their summaries.

    ``seconds`` is the time of the whole estimate (shared by the target settings computed from
    the same sample points).
    """
    p = run.params
    inputs = [input_record(e, mode, None if targets is None else targets[k], run.radius, p.poor_fit_p)
              for k, e in enumerate(run.inputs)]
    n = len(inputs)
    scores = [r["score"] for r in inputs]
    row: dict[str, Any] = {
        **(extra or {}), "defences": list(defences), "norm": run.norm.value, "target": mode.value,
        "radius": run.radius, "status": "ok", "reason": None, "n": n, **_summary(scores),
        "n_poor_fit": sum(r["poor_fit"] for r in inputs),
        "n_max_observed": sum(r["fit"] == "max-observed" for r in inputs),
        "n_at_radius": sum(r["at_radius"] for r in inputs),
        "n_misclassified": sum(r["g0"] <= 0 for r in inputs),
        "median_p_value": _median([r["p_value"] for r in inputs]),
        "seconds": run.seconds, "seconds_per_image": run.seconds / n if n else None,
        "gradient_points_per_image": p.points_per_input,
        "backward_passes_per_image": run.backward_passes / n if n else None,
        "inputs": inputs,
    }
    if run.notes:
        row["notes"] = list(run.notes)
    return row


def skipped_row(defences: Sequence[str], norm: str, mode: TargetMode, radius: float, reason: str,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**(extra or {}), "defences": list(defences), "norm": norm, "target": mode.value, "radius": radius,
            "status": "skipped", "reason": reason, "n": 0, "mean": None, "median": None, "min": None, "max": None,
            "n_poor_fit": 0, "n_max_observed": 0, "n_at_radius": 0, "n_misclassified": 0, "median_p_value": None,
            "seconds": 0.0, "seconds_per_image": None, "gradient_points_per_image": 0,
            "backward_passes_per_image": None, "inputs": []}


def _median(values: Sequence[float | None]) -> float | None:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return float(np.median(v)) if v else None


def classes_needed(label: int, num_classes: int, modes: Sequence[TargetMode],
                   targets: dict[TargetMode, int]) -> list[int]:
    """Classes an input needs estimates for: every other class when untargeted is asked, else the targets."""
    if TargetMode.UNTARGETED in modes:
        return [j for j in range(num_classes) if j != label]
    return sorted({int(targets[m]) for m in modes if m is not TargetMode.UNTARGETED})
