"""Validity checks over a report's result rows: signs that an evaluation is unreliable.

Pure functions of the rows (plain dicts as in ``results``); the text goes into the report's
``warnings``. After AutoAttack's ``checks.py`` and Carlini et al., "On Evaluating Adversarial
Robustness" (2019), section 5:

* **non-finite values**: the attack met NaN/inf logits or input gradients, or returned NaN/inf
  examples (counted in the row's ``nonfinite_*`` fields, never silently zeroed);
* **a black-box attack beats the white-box ones**: a decision-based attack (HopSkipJump) does
  better than every gradient attack at a comparable budget, the classic sign of gradient masking;
* **success not monotone in eps**: the same attack breaks fewer inputs with a larger budget;
* **more iterations do better**: the same attack with a larger iteration budget is noticeably
  stronger, so the smaller budget has not converged (and the larger one may not have either).

Rows are compared only within one setting: same target, defence stack and threat model (and, for
budgets, the same norm). Differences must exceed :func:`tolerance` so random-start noise is not
reported; the evaluation set is the same for every row of a setting, so no sampling noise enters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Row = Mapping[str, Any]

BUDGET_PARAMS = ("steps", "n_iter", "max_iter", "nb_steps", "restarts", "binary_search_steps", "search_steps",
                 "max_eval", "max_queries", "init_eval")
"""Attack parameters that set how much work an attack does (more is never meant to be weaker)."""

REL_DISTANCE = 0.1
"""A minimisation attack "does better" when its median distance is at least this much smaller."""

NONFINITE_FIELDS = ("nonfinite_logits", "nonfinite_grads", "nonfinite_examples")
"""Row fields counting NaN/inf met by an attack (see :class:`~robaudit.attacks.base.AttackOutput`)."""


def tolerance(n: int) -> float:
    """Smallest success-rate difference reported on ``n`` inputs: two inputs and two points."""
    return max(0.02, 2.0 / n) if n > 0 else 1.0


def evaluation_warnings(rows: Sequence[Row], black_box: Callable[[Row], bool] | None = None) -> list[str]:
    """Every validity warning for ``rows`` (finished rows only; others are ignored).

    ``black_box(row)`` says whether a row's attack needs no gradients; by default the attack
    registry decides (HopSkipJump).
    """
    ok = [r for r in rows if r.get("status") == "ok" and r.get("n") and r.get("success_rate") is not None]
    is_bb = black_box or registry_black_box
    return [*nonfinite_warnings(ok), *black_box_warnings(ok, is_bb), *eps_monotonicity_warnings(ok),
            *convergence_warnings(ok), *exhausted_search_warnings(ok), *no_start_warnings(ok)]


def exhausted_search_warnings(rows: Sequence[Row]) -> list[str]:
    """Rows whose attack gave up on inputs while its own search was still escalating (C&W-L2's
    constant ``c`` still growing when ``binary_search_steps`` ran out): their failures measure the
    budget, not the model."""
    out = []
    for r in rows:
        k = int(r.get("search_exhausted") or 0)
        if k:
            out.append(f"under-budgeted attack: {row_name(r)}: {k} of {r.get('n')} inputs got no adversarial "
                       "example while the search was still raising its constant c when the rounds ran out; "
                       "raise binary_search_steps or initial_const (the failures measure the budget, not the model)")
    return out


def no_start_warnings(rows: Sequence[Row]) -> list[str]:
    """Rows of a decision-based attack (HopSkipJump) that found no adversarial starting point for some
    inputs: those were never attacked, so their failures say nothing about the model."""
    out = []
    for r in rows:
        k = int(r.get("no_start") or 0)
        if k:
            targeted = r.get("target") not in (None, "untargeted")
            how = ("no input of the target class was in its batch and no noise draw was classified as the "
                   "target; each batch needs an input of every target class, so attack more inputs (-n) in "
                   "batches that hold them (--batch-size), or raise init_size"
                   if targeted else "no noise draw was misclassified; raise init_size")
            out.append(f"unattacked inputs: {row_name(r)}: {k} of {r.get('n')} inputs got no adversarial starting "
                       f"point and were returned unchanged, counted as failures ({how})")
    return out


# --------------------------------------------------------------------------- helpers


def row_name(row: Row) -> str:
    """``label / target`` plus the defence stack (and ``@transfer``) when there is one."""
    name = f"{row.get('label') or row.get('attack')} / {row.get('target')}"
    defences = row.get("defences") or []
    if defences:
        name += " / " + "+".join(defences)
        if row.get("threat_model") == "transfer":
            name += "@transfer"
    return name


def _setting(row: Row) -> tuple[Any, ...]:
    return (row.get("target"), tuple(row.get("defences") or ()), row.get("threat_model") or "none")


def _params(row: Row, drop: tuple[str, ...] = ()) -> str:
    params = {k: v for k, v in (row.get("params") or {}).items() if k not in drop}
    return json.dumps(params, sort_keys=True, default=str)


def _median(row: Row) -> float | None:
    key = {"l2": "l2_median", "linf": "linf_median"}.get(str(row.get("norm")))
    value = row.get(key) if key else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def registry_black_box(row: Row) -> bool:
    """Whether the row's attack runs without gradients, by the attack registry (unknown: False)."""
    from robaudit.attacks.registry import AttackName, get_attack_class
    from robaudit.errors import RobauditError

    try:
        cls = get_attack_class(AttackName(str(row.get("attack"))), str(row.get("backend") or "torch"))
    except (ValueError, RobauditError, ImportError):
        return False
    return not cls.needs_gradients


# --------------------------------------------------------------------------- non-finite values


def nonfinite_warnings(rows: Sequence[Row]) -> list[str]:
    out = []
    for r in rows:
        logits, grads, examples = (int(r.get(k) or 0) for k in NONFINITE_FIELDS)
        if not (logits or grads or examples):
            continue
        n = int(r["n"])
        fwd = round(float(r.get("forward_passes_per_image") or 0.0) * n) + n  # the attack's passes + the judgement
        bwd = round(float(r.get("backward_passes_per_image") or 0.0) * n)
        parts = []
        if logits:
            parts.append(f"NaN/inf logits in {logits} of {fwd} forward passes")
        if grads:
            parts.append(f"NaN/inf input gradients in {grads} of {bwd} backward passes")
        if examples:
            parts.append(f"{examples} of {n} adversarial examples came back NaN/inf and count as failures")
        out.append(f"non-finite values in {row_name(r)}: {'; '.join(parts)}: the model is numerically unstable "
                   "where the attack went, so this row's success rate is unreliable")
    return out


# --------------------------------------------------------------------------- black-box beats white-box


def success_within(row: Row, eps: float) -> float:
    """A lower bound on the fraction of inputs ``row`` broke with a perturbation of at most ``eps``.

    Fixed-eps rows: their success rate if their own eps is within ``eps``. Minimisation rows: all
    successes when their largest (Linf) distance is within ``eps``, half of them when their median
    distance over successes is, else nothing known.
    """
    n, k = int(row["n"]), int(row.get("n_success") or 0)
    rate = float(row["success_rate"])
    if row.get("eps") is not None:
        return rate if float(row["eps"]) <= eps * (1 + 1e-9) else 0.0
    top = row.get("linf_max") if row.get("norm") == "linf" else None
    if isinstance(top, (int, float)) and top <= eps * (1 + 1e-9):
        return rate
    median = _median(row)
    if median is not None and median <= eps * (1 + 1e-9):
        return math.ceil(k / 2) / n
    return 0.0


def black_box_warnings(rows: Sequence[Row], black_box: Callable[[Row], bool]) -> list[str]:
    out = []
    for b in rows:
        if not black_box(b):
            continue
        white = [w for w in rows if w is not b and not black_box(w) and _setting(w) == _setting(b)
                 and w.get("norm") == b.get("norm")]
        tol = tolerance(int(b["n"]))
        # fixed-eps white-box attacks: what the black-box attack provably did within their budget
        worst: tuple[float, float, float, float] | None = None  # (margin, eps, black-box, white-box)
        for e in sorted({float(w["eps"]) for w in white if w.get("eps") is not None}):
            best = max(float(w["success_rate"]) for w in white if w.get("eps") is not None and float(w["eps"]) <= e)
            lower = success_within(b, e)
            if lower > best + tol and (worst is None or lower - best > worst[0]):
                worst = (lower - best, e, lower, best)
        if worst is not None:
            _, e, lower, best = worst
            out.append(f"unreliable evaluation: the black-box attack {row_name(b)} beats every white-box attack at "
                       f"{b.get('norm')} eps {e:g} (it breaks at least {_pct(lower)} of the inputs within that budget, "
                       f"the best gradient attack {_pct(best)}): gradients are likely masked or the white-box attacks "
                       "misconfigured, so their success rates understate the model's vulnerability")
            continue
        # minimisation white-box attacks: fewer successes or larger distances than the black-box one
        mins = [w for w in white if w.get("eps") is None]
        d_b = _median(b)
        if not mins or d_b is None:
            continue
        beaten = []
        for w in mins:
            d_w = _median(w)
            if d_w is None:
                beaten.append(float(b["success_rate"]) > float(w["success_rate"]) + tol)
            else:
                # medians over successes compare like with like only when the black-box attack broke at
                # least as many inputs: one that broke fewer leaves out the hardest ones, and its median
                # is smaller even where the white-box attack found closer examples on every input both broke.
                # Breaking clearly more inputs beats it whatever the medians (a white-box attack that broke
                # only a few easy inputs has a small median and still failed on the rest)
                s_b, s_w = float(b["success_rate"]), float(w["success_rate"])
                beaten.append(s_b > s_w + tol or (s_b >= s_w and d_b < (1 - REL_DISTANCE) * d_w))
        if all(beaten):
            best_w = min((w for w in mins if _median(w) is not None), key=lambda w: _median(w) or 0.0, default=None)
            versus = (f", the best gradient attack {row_name(best_w)} {_median(best_w):.4g} over "
                      f"{_pct(float(best_w['success_rate']))}" if best_w is not None else "")
            out.append(f"unreliable evaluation: the black-box attack {row_name(b)} beats every white-box attack "
                       f"(median {b.get('norm')} distance {d_b:.4g} over the {_pct(float(b['success_rate']))} of "
                       f"inputs it broke{versus}): gradients are likely masked or the "
                       "white-box attacks misconfigured, so their distances overstate the model's robustness")
    return out


# --------------------------------------------------------------------------- monotone in eps


def eps_monotonicity_warnings(rows: Sequence[Row]) -> list[str]:
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for r in rows:
        if r.get("eps") is None:
            continue
        key = (r.get("attack"), r.get("backend"), r.get("norm"), _setting(r), _params(r))
        groups.setdefault(key, []).append(r)
    out = []
    for group in groups.values():
        group = sorted(group, key=lambda r: float(r["eps"]))
        worst: tuple[float, Row, Row] | None = None
        for i, small in enumerate(group):
            for big in group[i + 1:]:
                if float(big["eps"]) <= float(small["eps"]):
                    continue
                drop = float(small["success_rate"]) - float(big["success_rate"])
                if drop > tolerance(min(int(small["n"]), int(big["n"]))) and (worst is None or drop > worst[0]):
                    worst = (drop, small, big)
        if worst is not None:
            _, small, big = worst
            out.append(f"unreliable evaluation: success is not monotone in eps for {small.get('attack')} / "
                       f"{small.get('target')}: {_pct(float(small['success_rate']))} at {small.get('norm')} eps "
                       f"{float(small['eps']):g} ({row_name(small)}) but {_pct(float(big['success_rate']))} at eps "
                       f"{float(big['eps']):g} ({row_name(big)}); a larger budget must break at least as many inputs, "
                       "so the attack misses the worst case (too few iterations or restarts, or gradient masking)")
    return out


# --------------------------------------------------------------------------- more iterations do better


def _budget(row: Row) -> dict[str, float]:
    out = {}
    for k, v in (row.get("params") or {}).items():
        if k in BUDGET_PARAMS and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def _dominates(big: dict[str, float], small: dict[str, float]) -> bool:
    keys = set(big) | set(small)
    if not keys or set(big) != set(small):
        return False
    return all(big[k] >= small[k] for k in keys) and any(big[k] > small[k] for k in keys)


def _gain(small: Row, big: Row) -> float | None:
    """How much stronger ``big`` is than ``small`` (``None``: not noticeably)."""
    tol = tolerance(min(int(small["n"]), int(big["n"])))
    s_small, s_big = float(small["success_rate"]), float(big["success_rate"])
    if s_big - s_small > tol:
        return s_big - s_small
    if small.get("eps") is None:
        d_small, d_big = _median(small), _median(big)
        if d_small and d_big is not None and s_big >= s_small - tol and d_big < (1 - REL_DISTANCE) * d_small:
            return (d_small - d_big) / d_small
    return None


def convergence_warnings(rows: Sequence[Row]) -> list[str]:
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for r in rows:
        if not _budget(r):
            continue
        key = (r.get("attack"), r.get("backend"), r.get("norm"), r.get("eps"), _setting(r), _params(r, BUDGET_PARAMS))
        groups.setdefault(key, []).append(r)
    out = []
    for group in groups.values():
        worst: tuple[float, Row, Row] | None = None
        for small in group:
            for big in group:
                if big is small or not _dominates(_budget(big), _budget(small)):
                    continue
                gain = _gain(small, big)
                if gain is not None and (worst is None or gain > worst[0]):
                    worst = (gain, small, big)
        if worst is None:
            continue
        _, small, big = worst
        b_small, b_big = _budget(small), _budget(big)
        changed = ", ".join(f"{k} {b_small[k]:g} -> {b_big[k]:g}" for k in sorted(b_big) if b_big[k] != b_small[k])
        what = f"success {_pct(float(small['success_rate']))} -> {_pct(float(big['success_rate']))}"
        if small.get("eps") is None and _median(small) is not None and _median(big) is not None:
            what += f", median {small.get('norm')} distance {_median(small):.4g} -> {_median(big):.4g}"
        tail = "" if float(big["success_rate"]) >= 1.0 else (
            "; the larger budget may not have converged either: raise it until the results stop changing")
        out.append(f"unreliable evaluation: more iterations do better for {row_name(small)} -> {row_name(big)} "
                   f"({changed}: {what}): the attack has not converged at the smaller budget, so its results "
                   f"understate the model's vulnerability{tail}")
    return out


__all__ = ["BUDGET_PARAMS", "NONFINITE_FIELDS", "evaluation_warnings", "nonfinite_warnings", "black_box_warnings",
           "eps_monotonicity_warnings", "convergence_warnings", "success_within", "tolerance", "row_name",
           "registry_black_box"]
