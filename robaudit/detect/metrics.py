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
    """True-positive rate, false-positive rate and accuracy of boolean verdicts on both sets."""
    b = np.asarray(benign_flags, dtype=bool)
    a = np.asarray(adversarial_flags, dtype=bool)
    tpr = float(a.mean()) if a.size else float("nan")
    fpr = float(b.mean()) if b.size else float("nan")
    total = a.size + b.size
    acc = float((a.sum() + (~b).sum()) / total) if total else float("nan")
    return {"tpr": tpr, "fpr": fpr, "accuracy": acc}
