"""Detection metrics: AUROC (own implementation, rank based) and rates at a threshold."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from robaudit.errors import ConfigError


def auroc(benign_scores: np.ndarray, adversarial_scores: np.ndarray) -> float:
    """Area under the ROC curve with adversarial as the positive class (larger score = adversarial).

    Equals the probability that a random adversarial input scores above a random benign one, ties
    counting one half (the Mann-Whitney U statistic over ``n_pos * n_neg``), which is exactly the
    trapezoidal area under the ROC curve. NaN when either side is empty.
    """
    neg = np.asarray(benign_scores, dtype=np.float64).ravel()
    pos = np.asarray(adversarial_scores, dtype=np.float64).ravel()
    if neg.size == 0 or pos.size == 0:
        return float("nan")
    if not (np.isfinite(neg).all() and np.isfinite(pos).all()):
        raise ConfigError("AUROC needs finite scores")
    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks for ties
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def rates(benign_flags: np.ndarray, adversarial_flags: np.ndarray) -> dict[str, float]:
    """Rates of boolean verdicts on both sets, with the class counts they rest on.

    ``tpr`` (detection rate) and ``fpr``; ``balanced_accuracy`` = ``(tpr + 1 - fpr) / 2``, the mean
    of the per-class accuracies, which does not depend on how many inputs each side has; and
    ``accuracy`` = ``(TP + TN) / (n_adversarial + n_benign)``, kept for old readers: over unbalanced
    sets it mostly tracks the larger side (e.g. ``detect eval``'s adversarial examples of every
    benign input against half the benign inputs), so tables show the balanced one. NaN when a side
    is empty (``accuracy`` only when both are)."""
    b = np.asarray(benign_flags, dtype=bool)
    a = np.asarray(adversarial_flags, dtype=bool)
    tpr = float(a.mean()) if a.size else float("nan")
    fpr = float(b.mean()) if b.size else float("nan")
    total = a.size + b.size
    acc = float((a.sum() + (~b).sum()) / total) if total else float("nan")
    balanced = (tpr + 1.0 - fpr) / 2.0 if a.size and b.size else float("nan")
    return {"tpr": tpr, "fpr": fpr, "accuracy": acc, "balanced_accuracy": balanced, "n_adversarial": int(a.size),
            "n_benign": int(b.size)}


def roc_curve(benign_scores: np.ndarray, adversarial_scores: np.ndarray,
              max_points: int = 64) -> tuple[list[float], list[float]]:
    """ROC points ``(fpr, tpr)`` from (0, 0) to (1, 1), one per distinct threshold (larger score =
    adversarial), thinned to at most ``max_points`` (first and last kept). Empty when a side is empty."""
    neg = np.asarray(benign_scores, dtype=np.float64).ravel()
    pos = np.asarray(adversarial_scores, dtype=np.float64).ravel()
    if neg.size == 0 or pos.size == 0:
        return [], []
    thresholds = np.unique(np.concatenate([neg, pos]))[::-1]  # descending
    neg_s, pos_s = np.sort(neg), np.sort(pos)
    fpr = [0.0] + [float(neg.size - np.searchsorted(neg_s, t, side="left")) / neg.size for t in thresholds]
    tpr = [0.0] + [float(pos.size - np.searchsorted(pos_s, t, side="left")) / pos.size for t in thresholds]
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = [fpr[i] for i in keep], [tpr[i] for i in keep]
    return fpr, tpr
