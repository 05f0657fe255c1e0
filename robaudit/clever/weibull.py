"""Reverse Weibull fits of batch maxima (the extreme-value step of CLEVER).

The maximum of a bounded quantity over many random points follows, in the limit, a reverse Weibull
distribution whose *location* is the quantity's supremum. :func:`fit_reverse_weibull` fits one by
maximum likelihood (Nelder-Mead, ``scipy.optimize.fmin``) from several initial shapes and
keeps the fit with the smallest Kolmogorov-Smirnov statistic (ties: the larger log-likelihood).
The maxima are standardised first (the family is closed under affine maps), which keeps the
optimiser in a well-scaled region whatever the model's logit scale.

Batch maxima that have not yet reached their extreme-value limit often look Gumbel-like, and the
Weibull family approaches the Gumbel law as the shape goes to infinity with the location running
off with it: an unpenalised fit then "finds" a Lipschitz constant orders of magnitude above every
observed gradient (seen on the shared LeNet-5: shape 2e7, location 4e6 for maxima around 12). As
the CLEVER authors observed, a small quadratic penalty on the shape (``SHAPE_PENALTY * c**2``
added to the negative log-likelihood) keeps the fit finite; it hardly moves well-posed fits.

Degenerate cases are handled explicitly: maxima that are all equal (a margin that is linear over
the ball: the location is that value, exactly; ``constant``), and no fit, or only fits whose KS
p-value is below ``ILL_CONDITIONED_P`` (the location falls back to the largest observed maximum;
``max-observed``, always flagged as a poor fit).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from robaudit.clever.interface import WEIBULL_SHAPES, WeibullFit

CONSTANT_RTOL = 1e-6
"""Maxima whose spread is below this fraction of their magnitude are treated as constant."""
SHAPE_PENALTY = 0.01
"""Weight of the quadratic shape penalty added to the negative log-likelihood."""
ILL_CONDITIONED_P = 1e-3
"""Below this KS p-value even the best fit is not used: the location is the largest observed maximum."""


def fit_reverse_weibull(maxima: np.ndarray | Sequence[float], shapes: Sequence[float] = WEIBULL_SHAPES) -> WeibullFit:
    """Fit a reverse Weibull to ``maxima`` (one value per batch); see the module docstring."""
    m = np.asarray(maxima, dtype=np.float64).ravel()
    if m.size == 0 or not np.isfinite(m).all():
        top = float(np.nanmax(m)) if m.size and np.isfinite(m).any() else 0.0
        return WeibullFit(location=top, method="max-observed", max_observed=top)
    top = float(m.max())
    spread = top - float(m.min())
    if spread <= CONSTANT_RTOL * max(abs(top), 1e-30):
        return WeibullFit(location=top, method="constant", max_observed=top)
    if m.size < 3:  # three parameters cannot be fitted to fewer points
        return WeibullFit(location=top, method="max-observed", max_observed=top)
    mu, sd = float(m.mean()), float(m.std())
    z = (m - mu) / sd
    z_top = float(z.max())
    best: _Candidate | None = None
    for c0 in shapes:
        cand = _fit_from(z, float(c0), z_top)
        if cand is not None and (best is None or cand.key < best.key):
            best = cand
    if best is None:
        return WeibullFit(location=top, method="max-observed", max_observed=top)
    if best.p < ILL_CONDITIONED_P:
        return WeibullFit(location=top, method="max-observed", max_observed=top, shape=best.c,
                          scale=best.scale * sd, ks_statistic=best.ks, p_value=best.p,
                          log_likelihood=best.ll - m.size * math.log(sd), initial_shape=best.c0)
    return WeibullFit(
        location=max(best.loc * sd + mu, top), method="weibull", max_observed=top, shape=best.c,
        scale=best.scale * sd, ks_statistic=best.ks, p_value=best.p,
        log_likelihood=best.ll - m.size * math.log(sd), initial_shape=best.c0)


@dataclass(frozen=True)
class _Candidate:
    c0: float
    c: float
    loc: float
    scale: float
    ks: float
    p: float
    ll: float

    @property
    def key(self) -> tuple[float, float]:
        """Smaller is better: KS statistic, then negative log-likelihood."""
        return (self.ks, -self.ll if math.isfinite(self.ll) else math.inf)


def _nll(theta: np.ndarray, z: np.ndarray, z_top: float) -> float:
    """Penalised negative log-likelihood of a reverse Weibull ``(shape, loc, scale)`` on ``z``
    (``z_top = max(z)``).

    Points outside the support cost a large finite amount each (as scipy's fit does), so the
    simplex is pushed back instead of stalling on infinities.
    """
    c, loc, scale = float(theta[0]), float(theta[1]), float(theta[2])
    if c <= 0 or scale <= 0:
        return _OUTSIDE * z.size
    n_bad = 0
    if loc <= z_top:  # some maxima outside the support (rare: keep the fast path cheap)
        inside = z < loc
        n_bad = int(z.size - inside.sum())
        z = z[inside]
        if z.size == 0:
            return _OUTSIDE * (n_bad + 1)
    log_t = np.log((loc - z) * (1.0 / scale))
    with np.errstate(over="ignore"):
        tc_sum = float(np.exp(c * log_t).sum())
    nll = z.size * (math.log(scale) - math.log(c)) - (c - 1.0) * float(log_t.sum()) + tc_sum
    if not math.isfinite(nll):
        return _OUTSIDE * (z.size + n_bad)
    return nll + _OUTSIDE * n_bad + SHAPE_PENALTY * c * c


_OUTSIDE = 100.0 * math.log(np.finfo(np.float64).max)


def _start(z: np.ndarray, c0: float) -> np.ndarray:
    """Initial ``(shape, loc, scale)``: the moments of ``z`` matched for shape ``c0``, support covering ``z``."""
    g1 = math.gamma(1.0 + 1.0 / c0)
    g2 = math.gamma(1.0 + 2.0 / c0)
    spread = math.sqrt(max(g2 - g1 * g1, 1e-12))
    scale = float(z.std()) / spread
    loc = float(z.mean()) + scale * g1
    top = float(z.max())
    if loc <= top:
        loc = top + 0.1 * float(z.std())
    return np.array([c0, loc, scale], dtype=np.float64)


def _ks_statistic(z_sorted: np.ndarray, c: float, loc: float, scale: float) -> float:
    """Two-sided KS statistic of sorted ``z`` against the reverse Weibull CDF ``exp(-((loc - z) / scale)^c)``."""
    n = z_sorted.size
    t = np.clip((loc - z_sorted) / scale, 0.0, None)
    with np.errstate(over="ignore", divide="ignore"):
        cdf = np.exp(-np.power(t, c))
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(max(np.max(i / n - cdf), np.max(cdf - (i - 1) / n)))


def _fit_from(z: np.ndarray, c0: float, z_top: float) -> _Candidate | None:
    """One penalised maximum-likelihood fit of standardised maxima from initial shape ``c0``."""
    from scipy import optimize, stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            theta = optimize.fmin(_nll, _start(z, c0), args=(z, z_top), disp=0)
        except Exception:  # noqa: BLE001 - an initial shape that does not converge is just skipped
            return None
    c, loc, scale = (float(v) for v in theta)
    if not (math.isfinite(c) and math.isfinite(loc) and math.isfinite(scale)) or c <= 0 or scale <= 0:
        return None
    if loc < z_top - 1e-9:  # the maxima lie outside the fitted support: not a fit
        return None
    ll = -(_nll(theta, z, z_top) - SHAPE_PENALTY * c * c)
    ks = _ks_statistic(np.sort(z), c, loc, scale)
    if not math.isfinite(ks):
        return None
    p = float(stats.kstwo.sf(ks, z.size))
    return _Candidate(c0=c0, c=c, loc=loc, scale=scale, ks=ks, p=p, ll=ll)


def clever_score(g0: float, location: float, radius: float) -> float:
    """``min(g0 / location, radius)``, 0 for a misclassified input (``g0 <= 0``), ``radius`` for a flat margin."""
    if not math.isfinite(g0) or g0 <= 0:
        return 0.0
    if not math.isfinite(location) or location <= 0:
        return float(radius)
    return float(min(g0 / location, radius))
