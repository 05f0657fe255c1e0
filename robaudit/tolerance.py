"""How far a float32 example may sit past a bound and still count as inside it.

Attacks compute ``x + delta`` in float32, so an example projected exactly onto its eps-ball (or the
clip range) can measure a hair outside it: each coordinate is rounded to float32 at the magnitude of
the pixel values, not of ``delta``. On [0, 1] data that is about 1e-7 per coordinate; on [0, 255]
data about 3e-5. The engine's bound check (exit 3 on a violation) and the report's distance gates
use this one rule, so a report the engine accepted never fails a gate on rounding alone.

Pure Python (no torch): ``robaudit report``, which CI gating runs, imports it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

RELATIVE = 1e-6
"""Relative slack on the bound itself, and the least absolute slack."""

_FLOAT32_EPS = 2.0 ** -23


def rounding_unit(clip: Sequence[float] | None) -> float:
    """Worst rounding of one coordinate of ``x + delta`` in float32 (twice the spacing of float32
    numbers at the largest magnitude of the clip range; the projection rounds once more)."""
    lo, hi = (0.0, 1.0) if clip is None else (float(clip[0]), float(clip[1]))
    scale = max(1.0, abs(lo), abs(hi)) if math.isfinite(lo) and math.isfinite(hi) else 1.0
    return 2.0 * _FLOAT32_EPS * scale


def bound_slack(bound: float, norm: str, clip: Sequence[float] | None, numel: int) -> float:
    """Slack above ``bound`` for a distance in ``norm`` ("linf", "l2", "l1"; anything else, e.g. L0
    counts, gets the relative slack only) over examples of ``numel`` values in ``clip``. Rounding
    errors of all coordinates add up in the worst case: ``sqrt(numel)`` units for L2, ``numel`` for L1."""
    unit = rounding_unit(clip)
    n = max(1, int(numel))
    per_norm = {"linf": unit, "l2": unit * math.sqrt(n), "l1": unit * n}.get(norm, 0.0)
    return RELATIVE * abs(bound) + max(RELATIVE, per_norm)


def clip_slack(clip: Sequence[float] | None) -> float:
    """Slack outside the clip range itself."""
    return max(RELATIVE, rounding_unit(clip))
