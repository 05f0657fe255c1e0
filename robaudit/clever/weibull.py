"""Reverse Weibull fits of batch maxima (the extreme-value step of CLEVER).

The maximum of a bounded quantity over many random points follows, in the limit, a reverse Weibull
distribution whose *location* is the quantity's supremum. :func:`fit_reverse_weibull` fits one by
maximum likelihood (Nelder-Mead, vectorised over every fit of an input) from several initial shapes and
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
from collections.abc import Callable, Sequence

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
    return fit_reverse_weibull_many([maxima], shapes)[0]


def fit_reverse_weibull_many(sets: Sequence[np.ndarray | Sequence[float]],
                             shapes: Sequence[float] = WEIBULL_SHAPES) -> list[WeibullFit]:
    """:func:`fit_reverse_weibull` of every set of maxima, all fits (sets x initial shapes) run as
    one vectorised Nelder-Mead: the same algorithm and stopping rule as ``scipy.optimize.fmin``,
    without a Python call per likelihood evaluation."""
    out: list[WeibullFit | None] = [None] * len(sets)
    todo: dict[int, list[int]] = {}  # number of maxima -> sets to fit
    arrays = [np.asarray(m, dtype=np.float64).ravel() for m in sets]
    for k, m in enumerate(arrays):
        if m.size == 0 or not np.isfinite(m).all():
            top = float(np.nanmax(m)) if m.size and np.isfinite(m).any() else 0.0
            out[k] = WeibullFit(location=top, method="max-observed", max_observed=top)
            continue
        top = float(m.max())
        if top - float(m.min()) <= CONSTANT_RTOL * max(abs(top), 1e-30):
            out[k] = WeibullFit(location=top, method="constant", max_observed=top)
        elif m.size < 3:  # three parameters cannot be fitted to fewer points
            out[k] = WeibullFit(location=top, method="max-observed", max_observed=top)
        else:
            todo.setdefault(m.size, []).append(k)
    for ks in todo.values():
        for k, fit in zip(ks, _fit_standardised([arrays[k] for k in ks], [float(c) for c in shapes])):
            out[k] = fit
    return [f for f in out if f is not None]


def _fit_standardised(sets: list[np.ndarray], shapes: list[float]) -> list[WeibullFit]:
    """Fit sets of equally many maxima: standardise, fit from every initial shape, keep the best by KS."""
    from scipy import stats

    m = np.stack(sets)  # (n_sets, n)
    mu, sd = m.mean(axis=1), m.std(axis=1)
    z = (m - mu[:, None]) / sd[:, None]
    n_sets, n = z.shape
    n_shapes = len(shapes)
    zc = np.repeat(z, n_shapes, axis=0)  # candidates: every set x every initial shape
    top = zc.max(axis=1)
    c0 = np.tile(np.asarray(shapes, dtype=np.float64), n_sets)
    theta = _nelder_mead(lambda th, rows: _nll(th, zc[rows], top[rows]), _start(zc, c0))
    c, loc, scale = theta[:, 0], theta[:, 1], theta[:, 2]
    with np.errstate(all="ignore"):
        ll = -(_nll(theta, zc, top) - SHAPE_PENALTY * c * c)
        ks = _ks_statistic(np.sort(zc, axis=1), c, loc, scale)
    valid = np.isfinite(theta).all(axis=1) & (c > 0) & (scale > 0) & (loc >= top - 1e-9) & np.isfinite(ks)
    p = np.where(valid, stats.kstwo.sf(np.where(valid, ks, 1.0), n), 0.0)
    fits = []
    for k in range(n_sets):
        rows = [r for r in range(k * n_shapes, (k + 1) * n_shapes) if valid[r]]
        top_k = float(m[k].max())
        if not rows:
            fits.append(WeibullFit(location=top_k, method="max-observed", max_observed=top_k))
            continue
        b = min(rows, key=lambda r: (ks[r], -ll[r] if math.isfinite(ll[r]) else math.inf))
        common = {"max_observed": top_k, "shape": float(c[b]), "scale": float(scale[b] * sd[k]),
                  "ks_statistic": float(ks[b]), "p_value": float(p[b]),
                  "log_likelihood": float(ll[b] - n * math.log(sd[k])), "initial_shape": float(c0[b])}
        if p[b] < ILL_CONDITIONED_P:
            fits.append(WeibullFit(location=top_k, method="max-observed", **common))
        else:
            fits.append(WeibullFit(location=max(float(loc[b] * sd[k] + mu[k]), top_k), method="weibull", **common))
    return fits


def _nll(theta: np.ndarray, z: np.ndarray, z_top: np.ndarray) -> np.ndarray:
    """Penalised negative log-likelihood of reverse Weibulls ``theta[i] = (shape, loc, scale)`` on the
    rows ``z[i]`` (``z_top = z.max(axis=1)``).

    Points outside the support cost a large finite amount each (as scipy's fit does), so the
    simplex is pushed back instead of stalling on infinities.
    """
    c, loc, scale = theta[:, 0], theta[:, 1], theta[:, 2]
    ok = (c > 0) & (scale > 0)
    cs, ss = np.where(ok, c, 1.0), np.where(ok, scale, 1.0)
    with np.errstate(all="ignore"):
        t = (loc[:, None] - z) / ss[:, None]
        inside = t > 0
        log_t = np.log(np.where(inside, t, 1.0))
        w = np.where(inside, np.exp(cs[:, None] * log_t), 0.0)
        n_in = inside.sum(axis=1)
        nll = n_in * (np.log(ss) - np.log(cs)) - (cs - 1.0) * log_t.sum(axis=1) + w.sum(axis=1)
    n_bad = z.shape[1] - n_in
    nll = np.where(np.isfinite(nll), nll + _OUTSIDE * n_bad, _OUTSIDE * z.shape[1])
    nll = np.where(n_in == 0, _OUTSIDE * (n_bad + 1), nll)
    return np.where(ok, nll + SHAPE_PENALTY * cs * cs, _OUTSIDE * z.shape[1])


_OUTSIDE = 100.0 * math.log(np.finfo(np.float64).max)


def _start(z: np.ndarray, c0: np.ndarray) -> np.ndarray:
    """Initial ``(shape, loc, scale)`` per row: the moments of ``z[i]`` matched for shape ``c0[i]``,
    with a support covering ``z[i]``."""
    from scipy.special import gamma

    g1, g2 = gamma(1.0 + 1.0 / c0), gamma(1.0 + 2.0 / c0)
    std = z.std(axis=1)
    scale = std / np.sqrt(np.maximum(g2 - g1 * g1, 1e-12))
    loc = z.mean(axis=1) + scale * g1
    top = z.max(axis=1)
    loc = np.where(loc <= top, top + 0.1 * std, loc)
    return np.stack([c0, loc, scale], axis=1)


def _ks_statistic(z_sorted: np.ndarray, c: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Two-sided KS statistics of the sorted rows of ``z`` against reverse Weibull CDFs
    ``exp(-((loc - z) / scale)^c)``."""
    n = z_sorted.shape[1]
    t = np.clip((loc[:, None] - z_sorted) / scale[:, None], 0.0, None)
    cdf = np.exp(-np.power(t, c[:, None]))
    i = np.arange(1, n + 1, dtype=np.float64)
    return np.maximum(np.max(i / n - cdf, axis=1), np.max(cdf - (i - 1) / n, axis=1))


def _nelder_mead(f: Callable[[np.ndarray, np.ndarray], np.ndarray], x0: np.ndarray, xtol: float = 1e-4,
                 ftol: float = 1e-4, max_evals: int | None = None) -> np.ndarray:
    """Minimise ``f`` from each row of ``x0`` at once; ``f(points, rows)`` evaluates the objective of
    problems ``rows`` at ``points`` (one point per row). The downhill simplex of
    ``scipy.optimize.fmin`` (reflection 1, expansion 2, contraction 0.5, shrink 0.5; initial
    simplex +5% per coordinate, 0.00025 for a zero; stops when the simplex is within ``xtol`` and
    its values within ``ftol``, or after ``200 * dim`` evaluations), vectorised over the problems."""
    s_count, dim = x0.shape
    budget = max_evals if max_evals is not None else 200 * dim
    sim = np.repeat(x0[:, None, :], dim + 1, axis=1)
    for k in range(dim):
        sim[:, k + 1, k] = np.where(x0[:, k] != 0, 1.05 * x0[:, k], 0.00025)
    all_rows = np.arange(s_count)
    fsim = f(sim.reshape(-1, dim), np.repeat(all_rows, dim + 1)).reshape(s_count, dim + 1)
    evals = np.full(s_count, dim + 1)
    active = np.ones(s_count, dtype=bool)
    while True:
        order = np.argsort(fsim, axis=1, kind="stable")
        sim = np.take_along_axis(sim, order[:, :, None], axis=1)
        fsim = np.take_along_axis(fsim, order, axis=1)
        done = (np.max(np.abs(sim[:, 1:] - sim[:, :1]), axis=(1, 2)) <= xtol) & \
            (np.max(np.abs(fsim[:, 1:] - fsim[:, :1]), axis=1) <= ftol)
        active &= ~done & (evals < budget)
        rows = np.nonzero(active)[0]
        if rows.size == 0:
            return sim[:, 0]
        s, fs = sim[rows], fsim[rows]
        worst = s[:, -1]
        xbar = s[:, :-1].mean(axis=1)
        xr = 2.0 * xbar - worst
        fr = f(xr, rows)
        evals[rows] += 1
        new_x, new_f = xr.copy(), fr.copy()
        shrink = np.zeros(rows.size, dtype=bool)
        exp = fr < fs[:, 0]  # expansion
        if exp.any():
            xe = 3.0 * xbar[exp] - 2.0 * worst[exp]
            fe = f(xe, rows[exp])
            evals[rows[exp]] += 1
            better = fe < fr[exp]
            idx = np.nonzero(exp)[0]
            new_x[idx[better]], new_f[idx[better]] = xe[better], fe[better]
        contract = ~exp & (fr >= fs[:, -2])
        outside = contract & (fr < fs[:, -1])
        if outside.any():
            xc = 1.5 * xbar[outside] - 0.5 * worst[outside]
            fc = f(xc, rows[outside])
            evals[rows[outside]] += 1
            idx = np.nonzero(outside)[0]
            ok = fc <= fr[outside]
            new_x[idx[ok]], new_f[idx[ok]] = xc[ok], fc[ok]
            shrink[idx[~ok]] = True
        inside = contract & ~outside
        if inside.any():
            xcc = 0.5 * xbar[inside] + 0.5 * worst[inside]
            fcc = f(xcc, rows[inside])
            evals[rows[inside]] += 1
            idx = np.nonzero(inside)[0]
            ok = fcc < fs[inside, -1]
            new_x[idx[ok]], new_f[idx[ok]] = xcc[ok], fcc[ok]
            shrink[idx[~ok]] = True
        keep = ~shrink  # a shrink keeps the worst vertex and pulls every vertex towards the best
        s[keep, -1], fs[keep, -1] = new_x[keep], new_f[keep]
        if shrink.any():
            idx = np.nonzero(shrink)[0]
            pts = s[idx, :1] + 0.5 * (s[idx, 1:] - s[idx, :1])
            s[idx, 1:] = pts
            fs[idx, 1:] = f(pts.reshape(-1, dim), np.repeat(rows[idx], dim)).reshape(idx.size, dim)
            evals[rows[idx]] += dim
        sim[rows], fsim[rows] = s, fs


def clever_score(g0: float, location: float, radius: float) -> float:
    """``min(g0 / location, radius)``, 0 for a misclassified input (``g0 <= 0``), ``radius`` for a flat margin."""
    if not math.isfinite(g0) or g0 <= 0:
        return 0.0
    if not math.isfinite(location) or location <= 0:
        return float(radius)
    return float(min(g0 / location, radius))
