"""The detect layer's small interface: cost-attack and detector names (exhaustive enums), the
frozen parameter dataclass of a cost attack, the :class:`Detector` base and the layer's errors.

A detector works on *features*: a mapping from a feature name to one value per input. The cost
attacks give the features ``bim-linf``, ``bim-l2``, ``jsma`` and ``boundary`` (iterations until the
prediction first changes; smaller means "easier to attack", i.e. more suspicious); the
feature-squeezing detector adds ``squeeze`` (L1 distance between predictions; larger is more
suspicious). Every detector returns a score where **larger means more adversarial** and flags an
input when its score reaches the detector's threshold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Mapping

import numpy as np

from robaudit.errors import ConfigError, InputError

Features = Mapping[str, np.ndarray]
"""Feature name -> one float per input (all arrays the same length)."""

SQUEEZE_FEATURE = "squeeze"


class DetectorMismatch(InputError):
    """A detector file does not fit the model or inputs it is asked to score."""


class DetectorFileError(InputError):
    """A detector file is unreadable, of another version, or malformed."""


class CostName(str, Enum):
    """Cost attacks: each measures how many iterations an input needs before its prediction flips."""

    BIM_LINF = "bim-linf"
    BIM_L2 = "bim-l2"
    JSMA = "jsma"
    BOUNDARY = "boundary"

    @classmethod
    def parse_list(cls, spec: str) -> list["CostName"]:
        out: list[CostName] = []
        for raw in spec.split(","):
            v = raw.strip().lower()
            if not v:
                continue
            try:
                out.append(cls(v))
            except ValueError:
                known = ", ".join(c.value for c in cls)
                raise ConfigError(f"unknown cost attack {v!r} (known: {known})") from None
        if not out:
            raise ConfigError("no cost attack given: use --cost NAME[,NAME...]")
        return list(dict.fromkeys(out))


class DetectorKind(str, Enum):
    """Detectors that ``detect fit`` can build; :func:`robaudit.detect.detectors.detector_class` is exhaustive."""

    ZSCORE = "zscore"
    KNN = "knn"
    ENSEMBLE = "ensemble"
    SQUEEZE = "squeeze"

    @classmethod
    def parse(cls, value: str) -> "DetectorKind":
        try:
            return cls(value.strip().lower())
        except ValueError:
            known = ", ".join(c.value for c in cls)
            raise ConfigError(f"unknown detector {value!r} (known: {known})") from None


@dataclass(frozen=True)
class CostParams:
    """One cost attack and its settings. Stored in the detector file: scoring reuses them exactly."""

    name: CostName
    """Which cost attack."""
    max_iter: int
    """Cap on iterations; an input whose prediction never flips costs ``max_iter``."""
    eps: float = 0.0
    """Budget of the BIM ball (pixel space); unused by JSMA and the boundary attack."""
    step: float = 0.0
    """BIM step size; JSMA's change per selected feature (fraction of the clip range);
    the boundary attack's initial orthogonal step (relative to the current distance)."""
    threshold: float = 0.0
    """Boundary attack only: the L2 distance to the input below which the attack counts as done."""

    def __post_init__(self) -> None:
        if self.max_iter < 1:
            raise ConfigError(f"{self.name.value}: max_iter must be >= 1, got {self.max_iter}")
        if self.name in (CostName.BIM_LINF, CostName.BIM_L2) and (self.eps <= 0 or self.step <= 0):
            raise ConfigError(f"{self.name.value}: eps and step must be > 0, got eps={self.eps} step={self.step}")
        if self.name is CostName.JSMA and not 0 < abs(self.step) <= 1:
            raise ConfigError(f"jsma: step (theta) must be in (0, 1], got {self.step}")
        if self.name is CostName.BOUNDARY and (self.threshold <= 0 or self.step <= 0):
            raise ConfigError(f"boundary: threshold and step must be > 0, got {self.threshold}, {self.step}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name.value, "max_iter": self.max_iter, "eps": self.eps, "step": self.step,
                "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CostParams":
        try:
            return cls(name=CostName(d["name"]), max_iter=int(d["max_iter"]), eps=float(d["eps"]),
                       step=float(d["step"]), threshold=float(d["threshold"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DetectorFileError(f"malformed cost attack entry {dict(d)!r}: {exc}") from None


class Detector(ABC):
    """Base of every detector: fit on features, score (larger = more adversarial), flag, persist as JSON."""

    kind: ClassVar[DetectorKind]

    @property
    @abstractmethod
    def features(self) -> tuple[str, ...]:
        """Feature names the detector reads."""

    @abstractmethod
    def score(self, features: Features) -> np.ndarray:
        """One float per input; larger means more likely adversarial."""

    @abstractmethod
    def flag(self, features: Features) -> np.ndarray:
        """Boolean verdict per input: True when the input is judged adversarial."""

    @abstractmethod
    def margin(self, features: Features) -> np.ndarray:
        """How far each input is past the flagging point (> 0 flagged), on the detector's own scale."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description, including ``kind``; :func:`detector_from_dict` reverses it."""


def feature(features: Features, name: str) -> np.ndarray:
    """``features[name]`` as float64, with a one-line error when it is missing."""
    if name not in features:
        raise DetectorMismatch(f"the detector needs feature {name!r}, which was not measured "
                               f"(have: {', '.join(sorted(features)) or 'none'})")
    return np.asarray(features[name], dtype=np.float64)
