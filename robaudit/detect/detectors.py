"""Detectors over attack-cost features: z-score (benign only), k-NN (benign + adversarial),
threshold on the feature-squeezing distance, and a k-of-n ensemble. All persist as plain JSON.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
from scipy import stats

from robaudit.detect.interface import (SQUEEZE_FEATURE, Detector, DetectorFileError, DetectorKind, Features,
                                       feature)
from robaudit.errors import ConfigError


def _check_fpr(fpr: float) -> None:
    if not 0.0 < fpr < 0.5:
        raise ConfigError(f"target false-positive rate must be in (0, 0.5), got {fpr}")


def normality_pvalue(values: np.ndarray) -> float:
    """Shapiro-Wilk p-value (on at most 5000 values); 1.0 for constant or tiny samples."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 3 or np.ptp(v) == 0:
        return 1.0
    return float(stats.shapiro(v[:5000]).pvalue)


TRANSFORMS = ("none", "log", "yeo-johnson")
NORMALITY_ALPHA = 0.05
"""Normality is rejected (and the empirical rule used) when the Shapiro-Wilk p-value is below this."""


def _point_mass_at_max(v: np.ndarray) -> bool:
    """True when the largest value repeats in at least 1 % of the sample (e.g. costs capped at ``max_iter``)."""
    return v.size >= 3 and int((v == v.max()).sum()) >= max(2, int(np.ceil(0.01 * v.size)))


def _empirical_threshold(t: np.ndarray, fpr: float) -> float:
    """A threshold ``thr`` (flag when ``t < thr``) at a midpoint between distinct sorted values,
    chosen so that the fraction of ``t`` below it is closest to ``fpr`` (the lower one on a tie).
    The lowest candidate sits just below the smallest value: when every benign cost is the same
    (all capped at ``max_iter``), any cheaper input is flagged and the fitted FPR is 0."""
    u, counts = np.unique(t, return_counts=True)
    below = np.concatenate([[0], np.cumsum(counts)]) / t.size  # fraction below each candidate
    # the lowest candidate hugs the smallest value (not half-way to the next one, which after a
    # transform can sit below every possible cost and flag nothing): anything cheaper is flagged
    below_min = u[0] - 1e-9 * max(1.0, abs(u[0]))
    cand = np.concatenate([[below_min], (u[:-1] + u[1:]) / 2, [u[-1] + max(1.0, abs(u[-1]))]])
    j = int(np.argmin(np.abs(below - fpr) + 1e-12 * below))
    return float(cand[j])


class ZScoreDetector(Detector):
    """Flags an input when its (transformed) cost lies below ``mean - z * std`` of benign costs.

    Fitted on benign costs only:

    1. transform: none when the raw costs pass a Shapiro-Wilk normality check; otherwise the more
       normal (higher p-value) of ``log(1 + cost)`` and a Yeo-Johnson transform whose lambda is
       fitted by maximum likelihood on the benign costs (leaving out a point mass at the maximum,
       i.e. inputs that never flipped within ``max_iter``);
    2. ``z``: the normal quantile of the target false-positive rate (rule ``normal``) when the
       transformed costs pass the normality check *and* that ``z`` flags a fraction of the benign
       costs within binomial noise of the target; otherwise (rule ``empirical``) the threshold is
       the empirical ``fpr`` quantile of the transformed benign costs and ``z = (mean - q) / std``.

    ``fit_info`` records the rule, the p-values and the fitted (training) false-positive rate.
    Score: ``(mean - t(cost)) / std`` (larger = cheaper to attack = more suspicious); flag when score > z.
    """

    kind: ClassVar[DetectorKind] = DetectorKind.ZSCORE

    def __init__(self, cost: str, mean: float, std: float, z: float, transform: str = "none",
                 fit_info: Mapping[str, Any] | None = None, lmbda: float = 0.0) -> None:
        if transform not in TRANSFORMS:
            raise ConfigError(f"unknown transform {transform!r} (known: {', '.join(TRANSFORMS)})")
        self.cost, self.mean, self.std, self.z, self.transform = cost, float(mean), float(std), float(z), transform
        self.lmbda = float(lmbda)
        self.fit_info = dict(fit_info or {})

    @property
    def features(self) -> tuple[str, ...]:
        return (self.cost,)

    @staticmethod
    def _t(values: np.ndarray, transform: str, lmbda: float = 0.0) -> np.ndarray:
        v = np.maximum(np.asarray(values, dtype=np.float64), 0.0)
        if transform == "log":
            return np.log1p(v)
        if transform == "yeo-johnson":  # costs are >= 0: only the non-negative branch applies
            return np.log1p(v) if abs(lmbda) < 1e-12 else ((v + 1.0) ** lmbda - 1.0) / lmbda
        return np.asarray(values, dtype=np.float64)

    def _inverse(self, t: float) -> float:
        if self.transform == "log":
            return float(np.expm1(t))
        if self.transform == "yeo-johnson":
            if abs(self.lmbda) < 1e-12:
                return float(np.expm1(t))
            base = t * self.lmbda + 1.0
            return float(base ** (1.0 / self.lmbda) - 1.0) if base > 0 else (-1.0 if self.lmbda > 0 else float("inf"))
        return float(t)

    @classmethod
    def fit(cls, cost: str, benign: np.ndarray, fpr: float = 0.05) -> "ZScoreDetector":
        _check_fpr(fpr)
        b = np.asarray(benign, dtype=np.float64)
        if b.size < 2:
            raise ConfigError(f"the z-score detector needs at least 2 benign inputs, got {b.size}")
        if not np.isfinite(b).all():
            raise ConfigError("the z-score detector needs finite benign costs")
        constant = bool(np.ptp(b) == 0)
        capped = _point_mass_at_max(b)
        body = b[b < b.max()] if capped else b
        p = {"none": normality_pvalue(b), "log": normality_pvalue(cls._t(b, "log"))}
        lmbda = 0.0
        if body.size >= 3 and np.ptp(body) > 0:
            _, lmbda = stats.yeojohnson(np.maximum(body, 0.0))
            lmbda = float(np.clip(lmbda, -5.0, 5.0))
            p["yeo-johnson"] = normality_pvalue(cls._t(b, "yeo-johnson", lmbda))
        if p["none"] >= NORMALITY_ALPHA:
            transform = "none"
        else:
            transform = max((k for k in p if k != "none"), key=lambda k: p[k], default="none")
            if p.get(transform, 0.0) <= p["none"]:
                transform = "none"
        t = cls._t(b, transform, lmbda)
        mean = float(t.mean())
        std = float(t.std(ddof=1)) or 1e-12
        z_normal = float(stats.norm.ppf(1.0 - fpr))
        normal_fpr = float((t < mean - z_normal * std).mean())
        # binomial tolerance on the fitted rate (and at least 1.5 points)
        tol = max(0.015, 2.0 * np.sqrt(fpr * (1.0 - fpr) / b.size))
        if constant:  # no spread to fit: anything that flips sooner than every benign input is flagged
            rule, z = "constant", z_normal
        elif p[transform] >= NORMALITY_ALPHA and abs(normal_fpr - fpr) <= tol:
            rule, z = "normal", z_normal
        else:
            rule = "empirical"
            z = (mean - _empirical_threshold(t, fpr)) / std
        det = cls(cost, mean, std, z, transform, lmbda=lmbda if transform == "yeo-johnson" else 0.0)
        skew = float(stats.skew(b)) if np.ptp(b) > 0 else 0.0
        det.fit_info = {"n_benign": int(b.size), "target_fpr": fpr, "rule": rule, "transform": transform,
                        "lambda": lmbda if transform == "yeo-johnson" else None, "skew": skew,
                        "point_mass_at_max": {"value": float(b.max()), "fraction": float((b == b.max()).mean())}
                        if capped else None,
                        "shapiro_p": None if constant else {k: float(v) for k, v in p.items()},
                        "normality_alpha": NORMALITY_ALPHA,
                        "normal_rule_fit_fpr": normal_fpr, "fit_fpr": float(det.flag({cost: b}).mean()),
                        "threshold_cost": det.threshold_cost()}
        if constant:
            det.fit_info["warning"] = (
                f"every one of the {b.size} benign {cost} costs is {b[0]:g} (the cost attack's cap, if no benign "
                "input flipped): the threshold has no spread to fit and flags any input that flips sooner, and "
                f"none of {b.size} flagged bounds its false-positive rate only below about {min(1.0, 3.0 / b.size):.0%} "
                "(95%); fit on more inputs (a larger --max-iter helps only if the cost attack's eps lets benign "
                "inputs flip at all)")
        return det

    def threshold_cost(self) -> float:
        """The cost below which an input is flagged (in iterations)."""
        return self._inverse(self.mean - self.z * self.std)

    def score(self, features: Features) -> np.ndarray:
        return (self.mean - self._t(feature(features, self.cost), self.transform, self.lmbda)) / self.std

    def flag(self, features: Features) -> np.ndarray:
        return self.score(features) > self.z

    def margin(self, features: Features) -> np.ndarray:
        return self.score(features) - self.z

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "cost": self.cost, "mean": self.mean, "std": self.std, "z": self.z,
                "transform": self.transform, "lambda": self.lmbda if self.transform == "yeo-johnson" else None,
                "fit_info": self.fit_info}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ZScoreDetector":
        return cls(str(d["cost"]), float(d["mean"]), float(d["std"]), float(d["z"]), str(d.get("transform", "none")),
                   d.get("fit_info"), float(d.get("lambda") or 0.0))


def fit_warnings(det: Detector) -> list[str]:
    """The fit warnings of ``det`` and of its members (an ensemble)."""
    members = getattr(det, "members", None)
    if members is not None:
        return [w for m in members for w in fit_warnings(m)]
    w = getattr(det, "fit_info", {}).get("warning")
    return [w] if w else []


class ThresholdDetector(Detector):
    """Flags an input when one feature exceeds a threshold fitted as the benign ``1 - fpr`` quantile
    (used for the feature-squeezing distance, where larger means more suspicious)."""

    kind: ClassVar[DetectorKind] = DetectorKind.SQUEEZE

    def __init__(self, feature_name: str, threshold: float, fit_info: Mapping[str, Any] | None = None) -> None:
        self.feature_name, self.threshold = feature_name, float(threshold)
        self.fit_info = dict(fit_info or {})

    @property
    def features(self) -> tuple[str, ...]:
        return (self.feature_name,)

    @classmethod
    def fit(cls, benign: np.ndarray, fpr: float = 0.05, feature_name: str = SQUEEZE_FEATURE) -> "ThresholdDetector":
        _check_fpr(fpr)
        b = np.asarray(benign, dtype=np.float64)
        if b.size < 2:
            raise ConfigError(f"the threshold detector needs at least 2 benign inputs, got {b.size}")
        thr = float(np.quantile(b, 1.0 - fpr))
        det = cls(feature_name, thr)
        det.fit_info = {"n_benign": int(b.size), "target_fpr": fpr, "fit_fpr": float((b > thr).mean())}
        return det

    def score(self, features: Features) -> np.ndarray:
        return feature(features, self.feature_name)

    def flag(self, features: Features) -> np.ndarray:
        return self.score(features) > self.threshold

    def margin(self, features: Features) -> np.ndarray:
        return (self.score(features) - self.threshold) / max(abs(self.threshold), 1e-12)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "feature": self.feature_name, "threshold": self.threshold,
                "fit_info": self.fit_info}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ThresholdDetector":
        return cls(str(d["feature"]), float(d["threshold"]), d.get("fit_info"))


class KNNDetector(Detector):
    """k-nearest neighbours on ``log(1 + cost)`` vectors of benign (0) and adversarial (1) inputs.

    Persisted as its training vectors and ``k`` (no pickle). Score: the fraction of adversarial
    training points among the neighbours; flag when it exceeds one half. Neighbours are *every*
    training point at most as far (Euclidean) as the ``k``-th nearest one, ties included, so there
    may be more than ``k``: integer costs tie often, and picking ``k`` of the tied points (as
    scikit-learn does, by training order, benign first) made the verdict depend on the order of the
    training data. With this rule it depends on the training set only.
    """

    kind: ClassVar[DetectorKind] = DetectorKind.KNN
    TIE_RULE: ClassVar[str] = "all training points within the k-th neighbour's distance vote"
    _BLOCK = 1 << 22
    """Query-training pairs per distance block (``pairs x n_features`` floats at once)."""

    def __init__(self, costs: Sequence[str], train: np.ndarray, labels: np.ndarray, k: int = 5,
                 fit_info: Mapping[str, Any] | None = None) -> None:
        self.costs = tuple(costs)
        self.train = np.asarray(train, dtype=np.float64).reshape(-1, len(self.costs))
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.train.shape[0] != self.labels.size or self.labels.size == 0:
            raise DetectorFileError("k-NN training vectors and labels disagree")
        if set(np.unique(self.labels)) != {0, 1}:
            raise ConfigError("the k-NN detector needs both benign and adversarial training costs")
        self.k = int(min(k, self.labels.size))
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if not np.isfinite(self.train).all():
            raise DetectorFileError("k-NN training vectors must be finite")
        self.fit_info = dict(fit_info or {})

    @property
    def features(self) -> tuple[str, ...]:
        return self.costs

    def _x(self, features: Features) -> np.ndarray:
        return np.log1p(np.maximum(np.stack([feature(features, c) for c in self.costs], axis=1), 0.0))

    @classmethod
    def fit(cls, costs: Sequence[str], benign: Features, adversarial: Features, k: int = 5) -> "KNNDetector":
        probe = cls.__new__(cls)
        probe.costs = tuple(costs)
        xb, xa = probe._x(benign), probe._x(adversarial)
        if k < 1:
            raise ConfigError(f"-k must be >= 1, got {k}")
        fewest = min(len(xb), len(xa))
        if fewest and k > 2 * fewest - 1:  # a vote needs more than k/2 neighbours of one kind
            kind = "adversarial" if len(xa) <= len(xb) else "benign"
            raise ConfigError(
                f"-k {k} is too large for {len(xb)} benign and {len(xa)} adversarial training inputs: the vote of {k} "
                f"neighbours needs more than {k // 2} {kind} ones, and there are only {fewest}; use -k {2 * fewest - 1} "
                f"or less (or more {kind} training inputs)")
        det = cls(costs, np.concatenate([xb, xa]), np.r_[np.zeros(len(xb), np.int64), np.ones(len(xa), np.int64)], k)
        det.fit_info = {"n_benign": int(len(xb)), "n_adversarial": int(len(xa))}
        return det

    def score(self, features: Features) -> np.ndarray:
        x = self._x(features)
        out = np.zeros(x.shape[0])
        adv = self.labels == 1
        chunk = max(1, self._BLOCK // max(1, self.labels.size))
        for i in range(0, x.shape[0], chunk):
            q = x[i:i + chunk]
            # each distance from its own differences: a pair's distance never depends on the others
            d = np.sqrt(((q[:, None, :] - self.train[None, :, :]) ** 2).sum(axis=2))
            kth = np.partition(d, self.k - 1, axis=1)[:, self.k - 1:self.k]
            near = d <= kth + 1e-9 * np.maximum(kth, 1.0)  # ties at the k-th distance all vote
            out[i:i + chunk] = (near & adv).sum(axis=1) / near.sum(axis=1)
        return out

    def flag(self, features: Features) -> np.ndarray:
        return self.score(features) > 0.5

    def margin(self, features: Features) -> np.ndarray:
        return self.score(features) - 0.5

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "costs": list(self.costs), "k": self.k, "train": self.train.tolist(),
                "labels": self.labels.tolist(), "transform": "log1p", "ties": self.TIE_RULE, "fit_info": self.fit_info}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "KNNDetector":
        return cls(list(d["costs"]), np.asarray(d["train"], dtype=np.float64), np.asarray(d["labels"]), int(d["k"]),
                   d.get("fit_info"))


class EnsembleDetector(Detector):
    """Flags an input when at least ``k`` of its ``n`` member detectors do. Score: the number of
    votes plus a tie-breaker in [0, 0.5): the mean of the members' ``tanh(margin)`` (how far past
    their own flagging points they are), so that ranking (AUROC) stays informative."""

    kind: ClassVar[DetectorKind] = DetectorKind.ENSEMBLE

    def __init__(self, members: Sequence[Detector], k: int = 1) -> None:
        if not members:
            raise ConfigError("an ensemble needs at least one detector")
        if not 1 <= k <= len(members):
            raise ConfigError(f"ensemble k must be in 1..{len(members)}, got {k}")
        self.members, self.k = list(members), int(k)

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for m in self.members for f in m.features))

    def votes(self, features: Features) -> np.ndarray:
        return np.sum([m.flag(features) for m in self.members], axis=0)

    def score(self, features: Features) -> np.ndarray:
        tie = np.mean([np.tanh(m.margin(features)) for m in self.members], axis=0)
        return self.votes(features) + 0.2499 * (tie + 1.0)

    def margin(self, features: Features) -> np.ndarray:
        return self.score(features) - self.k

    def flag(self, features: Features) -> np.ndarray:
        return self.votes(features) >= self.k

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "k": self.k, "members": [m.to_dict() for m in self.members]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EnsembleDetector":
        return cls([detector_from_dict(m) for m in d["members"]], int(d["k"]))


_CLASSES: dict[DetectorKind, type[Detector]] = {
    DetectorKind.ZSCORE: ZScoreDetector,
    DetectorKind.KNN: KNNDetector,
    DetectorKind.ENSEMBLE: EnsembleDetector,
    DetectorKind.SQUEEZE: ThresholdDetector,
}


def detector_class(kind: DetectorKind) -> type[Detector]:
    """The class for ``kind`` (a test walks every member)."""
    return _CLASSES[kind]


def detector_from_dict(d: Mapping[str, Any]) -> Detector:
    """Rebuild a detector from :meth:`Detector.to_dict` output."""
    try:
        kind = DetectorKind(d["kind"])
        return detector_class(kind).from_dict(d)  # type: ignore[attr-defined, no-any-return]
    except (KeyError, TypeError, ValueError) as exc:
        raise DetectorFileError(f"malformed detector entry: {type(exc).__name__}: {exc}") from None
