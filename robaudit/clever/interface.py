"""The CLEVER layer's small interface: the norm enum, the estimator's parameters and its results.

CLEVER (Weng et al., "Evaluating the Robustness of Neural Networks: An Extreme Value Theory
Approach", ICLR 2018, https://arxiv.org/abs/1801.10578) estimates a lower bound on the minimal
adversarial distortion of an input ``x0`` of class ``c``: for each other class ``j`` the margin
``g = f_c - f_j`` can only reach zero once the perturbation has size ``g(x0) / L``, where ``L``
is the Lipschitz constant of ``g`` in the dual norm. ``L`` is estimated as the location of a
reverse Weibull distribution fitted to maxima of the dual-norm gradient of ``g`` at points drawn
uniformly from the Lp ball of radius ``R`` around ``x0``. The score is ``min(g(x0) / L, R)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from robaudit.errors import ConfigError


class CleverNorm(str, Enum):
    """Norm of the perturbation ball (the gradient is measured in its dual norm)."""

    L1 = "l1"
    L2 = "l2"
    LINF = "linf"

    @property
    def dual_ord(self) -> float:
        """``ord`` of the dual norm for ``torch.linalg.vector_norm``: 1 <-> inf, 2 <-> 2."""
        return {CleverNorm.L1: float("inf"), CleverNorm.L2: 2.0, CleverNorm.LINF: 1.0}[self]

    @property
    def default_radius(self) -> float:
        """Default ball radius for inputs in [0, 1] (scaled by the clip range's span)."""
        return DEFAULT_RADIUS[self]

    @classmethod
    def parse(cls, value: str) -> "CleverNorm":
        v = value.strip().lower().replace("-", "").replace("_", "")
        aliases = {"1": cls.L1, "l1": cls.L1, "2": cls.L2, "l2": cls.L2, "inf": cls.LINF, "linf": cls.LINF}
        if v not in aliases:
            raise ConfigError(f"unknown CLEVER norm {value!r} (known: l1, l2, linf)")
        return aliases[v]

    @classmethod
    def parse_list(cls, spec: str) -> list["CleverNorm"]:
        """``l1,l2,linf`` or ``all``."""
        if spec.strip().lower() == "all":
            return list(cls)
        out = [cls.parse(v) for v in spec.split(",") if v.strip()]
        if not out:
            raise ConfigError("no norm given: use --norm l1,l2,linf (or all)")
        return list(dict.fromkeys(out))


DEFAULT_RADIUS: dict[CleverNorm, float] = {CleverNorm.L1: 10.0, CleverNorm.L2: 5.0, CleverNorm.LINF: 0.3}
"""Ball radius per norm when none is given, for inputs in [0, 1] (Weng et al. use R = 5 for L2)."""

WEIBULL_SHAPES: tuple[float, ...] = (0.1, 1.0, 5.0, 10.0, 20.0, 50.0, 100.0)
"""Initial shape parameters of the reverse Weibull fits; the best fit by KS statistic is kept."""


@dataclass(frozen=True)
class CleverParams:
    """Budget and fitting options of one CLEVER estimate (shared by every input and class)."""

    nb_batches: int = 50
    """Number of batches, i.e. of batch maxima the reverse Weibull is fitted to."""
    batch_size: int = 100
    """Points sampled per batch; each batch contributes the maximum of their gradient norms."""
    shapes: tuple[float, ...] = WEIBULL_SHAPES
    """Initial shape parameters tried by the fit."""
    poor_fit_p: float = 0.05
    """A fit whose KS p-value is below this is flagged as poor (the score is still reported)."""
    point_batch: int | None = None
    """Sample points per forward/backward pass; ``None``: about 2**23 input elements (at most 8192
    points) on a GPU, 65536 on CPU (small passes stay in cache). Only speed and memory depend on
    it, never the scores."""

    def __post_init__(self) -> None:
        if self.nb_batches < 2:
            raise ConfigError(f"--nb-batches must be >= 2 (a Weibull fit needs several maxima), got {self.nb_batches}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.shapes or any(s <= 0 for s in self.shapes):
            raise ConfigError("Weibull initial shapes must be > 0")
        if not 0.0 <= self.poor_fit_p < 1.0:
            raise ConfigError(f"the poor-fit p-value threshold must be in [0, 1), got {self.poor_fit_p}")
        if self.point_batch is not None and self.point_batch < 1:
            raise ConfigError(f"--point-batch must be >= 1, got {self.point_batch}")

    @property
    def points_per_input(self) -> int:
        return self.nb_batches * self.batch_size


@dataclass(frozen=True)
class WeibullFit:
    """A reverse Weibull fitted to the batch maxima of one (input, class)."""

    location: float
    """Estimated maximum of the gradient norm (the local Lipschitz constant)."""
    method: str
    """``weibull`` (a fit), ``constant`` (all maxima equal: a locally linear margin, no fit needed)
    or ``max-observed`` (no usable fit: the location is the largest observed maximum)."""
    max_observed: float
    """Largest batch maximum actually observed."""
    shape: float | None = None
    scale: float | None = None
    ks_statistic: float | None = None
    p_value: float | None = None
    """KS goodness-of-fit p-value of the best fit (``None`` for ``constant``). The parameters are
    fitted to the same maxima, so it is optimistic: a low value is a real warning."""
    log_likelihood: float | None = None
    initial_shape: float | None = None
    """The initial shape the kept fit started from."""

    def poor(self, threshold: float) -> bool:
        """Whether the fit should be flagged: no usable fit, or its KS p-value is below ``threshold``."""
        if self.method == "max-observed":
            return True
        return self.p_value is not None and self.p_value < threshold


@dataclass(frozen=True)
class ClassEstimate:
    """CLEVER for one input against one other class ``cls``."""

    cls: int
    g0: float
    """Margin ``f_c(x0) - f_cls(x0)`` (<= 0: the input is not classified as ``c``; the score is 0)."""
    fit: WeibullFit
    score: float
    maxima: tuple[float, ...] | None = None
    """The batch maxima the fit used (kept only when asked: ``estimate(..., keep_maxima=True)``)."""


@dataclass(frozen=True)
class InputEstimate:
    """CLEVER of one input against every class it was estimated for."""

    position: int
    """Position of the input in the evaluation set."""
    index: int
    """Index of the input in the dataset."""
    label: int
    classes: tuple[ClassEstimate, ...]

    def for_class(self, cls: int) -> ClassEstimate:
        for c in self.classes:
            if c.cls == cls:
                return c
        raise KeyError(f"class {cls} was not estimated for input {self.index}")

    def untargeted(self) -> ClassEstimate:
        """The class with the lowest score (ties: the lowest class index)."""
        return min(self.classes, key=lambda c: (c.score, c.cls))


@dataclass(frozen=True)
class CleverRun:
    """Estimates of one norm for a set of inputs, with what they cost."""

    norm: CleverNorm
    radius: float
    params: CleverParams
    inputs: tuple[InputEstimate, ...]
    seconds: float
    gradient_seconds: float
    fit_seconds: float
    forward_points: int
    """Sample points passed forward through the model (all inputs)."""
    backward_passes: int
    """Per-point backward passes (points x classes)."""
    notes: tuple[str, ...] = field(default_factory=tuple)
