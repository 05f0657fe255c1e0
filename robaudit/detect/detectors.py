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


class ZScoreDetector(Detector):
    """Flags an input when its (transformed) cost lies below ``mean - z * std`` of benign costs.

    Fitted on benign costs only. ``z`` is the normal quantile for the target false-positive rate.
    If the benign costs fail a Shapiro-Wilk normality check (p < 0.05) and are skewed, a log
    transform ``log(1 + cost)`` is used when it makes them more normal. Score: ``(mean - t(cost)) / std``
    (larger = cheaper to attack = more suspicious); flag when score > z.
    """

    kind: ClassVar[DetectorKind] = DetectorKind.ZSCORE

    def __init__(self, cost: str, mean: float, std: float, z: float, transform: str = "none",
                 fit_info: Mapping[str, Any] | None = None) -> None:
        if transform not in ("none", "log"):
            raise ConfigError(f"unknown transform {transform!r}")
        self.cost, self.mean, self.std, self.z, self.transform = cost, float(mean), float(std), float(z), transform
        self.fit_info = dict(fit_info or {})

    @property
    def features(self) -> tuple[str, ...]:
        return (self.cost,)

    @staticmethod
    def _t(values: np.ndarray, transform: str) -> np.ndarray:
        return np.log1p(np.maximum(values, 0.0)) if transform == "log" else values

    @classmethod
    def fit(cls, cost: str, benign: np.ndarray, fpr: float = 0.05) -> "ZScoreDetector":
        _check_fpr(fpr)
        b = np.asarray(benign, dtype=np.float64)
        if b.size < 2:
            raise ConfigError(f"the z-score detector needs at least 2 benign inputs, got {b.size}")
        p_raw = normality_pvalue(b)
        skew = float(stats.skew(b)) if np.ptp(b) > 0 else 0.0
        transform = "none"
        p_log = normality_pvalue(cls._t(b, "log"))
        if p_raw < 0.05 and abs(skew) > 0.5 and p_log > p_raw:
            transform = "log"
        t = cls._t(b, transform)
        std = float(t.std(ddof=1)) or 1e-12
        z = float(stats.norm.ppf(1.0 - fpr))
        det = cls(cost, float(t.mean()), std, z, transform)
        det.fit_info = {"n_benign": int(b.size), "target_fpr": fpr, "skew": skew, "shapiro_p_raw": p_raw,
                        "shapiro_p_log": p_log, "fit_fpr": float(det.flag({cost: b}).mean()),
                        "threshold_cost": det.threshold_cost()}
        return det

    def threshold_cost(self) -> float:
        """The cost below which an input is flagged (in iterations)."""
        t = self.mean - self.z * self.std
        return float(np.expm1(t)) if self.transform == "log" else float(t)

    def score(self, features: Features) -> np.ndarray:
        return (self.mean - self._t(feature(features, self.cost), self.transform)) / self.std

    def flag(self, features: Features) -> np.ndarray:
        return self.score(features) > self.z

    def margin(self, features: Features) -> np.ndarray:
        return self.score(features) - self.z

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "cost": self.cost, "mean": self.mean, "std": self.std, "z": self.z,
                "transform": self.transform, "fit_info": self.fit_info}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ZScoreDetector":
        return cls(str(d["cost"]), float(d["mean"]), float(d["std"]), float(d["z"]), str(d.get("transform", "none")),
                   d.get("fit_info"))


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

    Persisted as its training vectors and ``k`` (no pickle); the scikit-learn model is rebuilt on
    load. Score: the fraction of adversarial neighbours; flag when it exceeds one half.
    """

    kind: ClassVar[DetectorKind] = DetectorKind.KNN

    def __init__(self, costs: Sequence[str], train: np.ndarray, labels: np.ndarray, k: int = 5,
                 fit_info: Mapping[str, Any] | None = None) -> None:
        from sklearn.neighbors import KNeighborsClassifier

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
        self.fit_info = dict(fit_info or {})
        self._model = KNeighborsClassifier(n_neighbors=self.k).fit(self.train, self.labels)

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
        det = cls(costs, np.concatenate([xb, xa]), np.r_[np.zeros(len(xb), np.int64), np.ones(len(xa), np.int64)], k)
        det.fit_info = {"n_benign": int(len(xb)), "n_adversarial": int(len(xa))}
        return det

    def score(self, features: Features) -> np.ndarray:
        x = self._x(features)
        if x.shape[0] == 0:
            return np.zeros(0)
        return self._model.predict_proba(x)[:, list(self._model.classes_).index(1)]

    def flag(self, features: Features) -> np.ndarray:
        return self.score(features) > 0.5

    def margin(self, features: Features) -> np.ndarray:
        return self.score(features) - 0.5

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "costs": list(self.costs), "k": self.k, "train": self.train.tolist(),
                "labels": self.labels.tolist(), "transform": "log1p", "fit_info": self.fit_info}

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
