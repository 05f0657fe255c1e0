"""Compare two reports cell by cell: what got better or worse.

Cells are matched by ``cell_id`` without its model slot (``m1/`` in a multi-model audit's
per-model report: the same model audited alone is ``m0/``) and without the ``attack/`` kind of
attack cells, so they match the rows of ``robaudit attack`` reports, which have no id and are matched
by (attack label, target, defence stack and threat model). "Better" means more robust: lower success rate, higher robust accuracy, larger
distances of successful examples of minimisation attacks (a fixed-eps attack's distances sit at its
budget, so they say nothing about robustness and are not compared; L0 attacks also compare
``l0_mean``). Distances over successes are compared only where the two success rates are within
5 points: otherwise they are over different inputs, and the success rate carries the change.
Detection rows (matched by cell id, attack and score; a ``detect eval`` report's rows match an
audit's detection cell) compare their AUROC (higher is better). CLEVER rows (matched by norm,
target and defence stack) compare their mean and median score (higher is better), unless the
radius or the sampling budget changed.
A change within float32 rounding (relative 1e-6, the slack gates allow) is ``same`` whatever the
tolerance: reruns with another batch size or thread count move distances in their last digits.

A matched cell whose attack setup changed (backend, norm, eps or parameters) is not compared at all:
its numbers measure a different attack. It is listed with the verdict ``changed`` and never counts
as a regression; :func:`diff_warnings` also says when the two reports ran on different data. The
same holds for a detection row whose crafting attack (eps, parameters, craft mode) or cost attacks
(their caps and step sizes, feature squeezing) changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from robaudit.report.detect_eval import CELL_ID as DETECT_EVAL_CELL
from robaudit.report.markdown import md_text
from robaudit.tolerance import RELATIVE

DIFF_METRICS: tuple[tuple[str, int], ...] = (
    ("robust_accuracy", +1), ("success_rate", -1), ("l2_median", +1), ("l2_mean", +1), ("linf_median", +1),
    ("l0_mean", +1), ("auroc", +1), ("clever_mean", +1), ("clever_median", +1),
)
"""(metric, direction): +1 when a larger value is more robust, -1 when a smaller one is."""


SETUP_KEYS = ("attack", "backend", "norm", "eps", "params")
"""Row keys that define the attack a cell ran: cells that differ in any of them are not compared."""
DISTANCES = ("l2_median", "l2_mean", "linf_median", "l0_mean")
"""Distances over successful examples (``l0_mean`` only for L0 attacks such as JSMA)."""
DISTANCE_SUCCESS_GAP = 0.05
"""Distances over successes are compared only when the two success rates are within this: otherwise
they are over different inputs (a model that resists more keeps only its easiest inputs broken, and
their distances are smaller), and the success rate carries the change."""


@dataclass(frozen=True)
class Change:
    cell: str
    metric: str
    """A metric of :data:`DIFF_METRICS`, ``clean_accuracy``, or ``setup`` (the attack setup changed)."""
    old: float | None
    new: float | None
    note: str = ""
    """For ``setup``: what changed, e.g. ``eps 0.3 -> 0.01``; for a distance not compared, why."""
    comparable: bool = True
    """False for a distance over successes whose success rates differ by more than
    :data:`DISTANCE_SUCCESS_GAP` (its verdict is ``n/a``)."""

    @property
    def delta(self) -> float | None:
        return None if self.old is None or self.new is None else self.new - self.old

    def verdict(self, tolerance: float) -> str:
        """``better``, ``worse``, ``same``, ``new``, ``gone``, ``changed`` (setup) or ``n/a``."""
        if self.metric == "setup":
            return "changed"
        if not self.comparable:
            return "n/a"
        if self.old is None and self.new is None or (self.metric == "clean_accuracy" and None in (self.old, self.new)):
            return "n/a"
        if self.old is None:
            return "new"
        if self.new is None:
            return "gone"
        d = self.new - self.old
        direction = +1 if self.metric == "clean_accuracy" else dict(DIFF_METRICS)[self.metric]
        if abs(d) <= tolerance or abs(d) <= RELATIVE * max(abs(self.old), abs(self.new)):
            return "same"  # float32 rounding (another batch size or thread count) is no change
        return "better" if d * direction > 0 else "worse"


_MODEL_SLOT = re.compile(r"^m\d+/")
_AUDIT_DETECT_CELL = "detect/detect/-/none"
"""An audit's detection cell, without its model slot (``engine.cells``: kind/label/target/stack)."""
_ATTACK_KIND = "attack/"


def _cell(cell_id: str) -> str:
    """A cell id without its model slot: every report holds one model, and its slot only says where
    the model stood on the audit's command line. A ``detect eval`` report's one cell is the
    audit's detection cell."""
    if cell_id == DETECT_EVAL_CELL:
        return _AUDIT_DETECT_CELL
    return _MODEL_SLOT.sub("", cell_id)


def _key(row: dict[str, Any]) -> str:
    """The cell a result row is matched by: ``label/target/stack`` (``stack@transfer`` for transfer rows).

    An audit's (or ``defend eval``'s) attack cell id is ``m0/attack/label/target/stack``; ``robaudit
    attack`` rows carry no id. Both come to the same key, so an attack report diffs against an audit
    of the same attacks."""
    if row.get("cell_id"):
        key = _cell(str(row["cell_id"]))
        return key[len(_ATTACK_KIND):] if key.startswith(_ATTACK_KIND) else key
    stack = "+".join(row.get("defences") or []) or "none"
    if row.get("defences") and row.get("threat_model") == "transfer":
        stack += "@transfer"
    return str(f"{row.get('label', row.get('attack'))}/{row.get('target')}/{stack}")


def diff_reports(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    from robaudit.report.gates import detection_rows, row_metric

    old_rows = {_key(r): r for r in old.get("results", [])}
    new_rows = {_key(r): r for r in new.get("results", [])}
    changes = [Change("(report)", "clean_accuracy", old.get("data", {}).get("clean_accuracy"),
                      new.get("data", {}).get("clean_accuracy"))]
    for key in list(dict.fromkeys([*old_rows, *new_rows])):
        o, n = old_rows.get(key), new_rows.get(key)
        shown = str((n or o or {}).get("cell_id") or key)  # the id as the new report has it
        if o is not None and n is not None:
            changed = _setup_changes({k: o.get(k) for k in SETUP_KEYS}, {k: n.get(k) for k in SETUP_KEYS})
            if changed:
                changes.append(Change(shown, "setup", None, None, changed))
                continue
        fixed_eps = any(r is not None and r.get("eps") is not None for r in (o, n))
        l0 = any(r is not None and r.get("norm") == "l0" for r in (o, n))
        rates = [row_metric(rep, r, "success_rate") if r is not None and r.get("status") == "ok" else None
                 for rep, r in ((old, o), (new, n))]
        apart = rates[0] is not None and rates[1] is not None and abs(rates[1] - rates[0]) > DISTANCE_SUCCESS_GAP
        for metric, _ in DIFF_METRICS:
            if metric in _SECTION_METRICS or (fixed_eps and metric in DISTANCES) or (metric == "l0_mean" and not l0):
                continue
            ov = row_metric(old, o, metric) if o is not None and o.get("status") == "ok" else None
            nv = row_metric(new, n, metric) if n is not None and n.get("status") == "ok" else None
            if ov is None and nv is None:
                continue
            if metric in DISTANCES and apart:
                changes.append(Change(shown, metric, ov, nv, f"not compared: success {100 * rates[0]:.1f}% -> "
                                      f"{100 * rates[1]:.1f}%, so the distances are over different inputs",
                                      comparable=False))
                continue
            changes.append(Change(shown, metric, ov, nv))
    old_det = {f"{_cell(r['cell_id'])} {r.get('attack')}/{r.get('cost')}": r for r in detection_rows(old)}
    new_det = {f"{_cell(r['cell_id'])} {r.get('attack')}/{r.get('cost')}": r for r in detection_rows(new)}
    old_setup, new_setup = _detection_setups(old), _detection_setups(new)
    for key in list(dict.fromkeys([*old_det, *new_det])):
        o, n = old_det.get(key), new_det.get(key)
        r = n or o or {}
        shown = f"{r.get('cell_id')} {r.get('attack')}/{r.get('cost')}"
        if o is not None and n is not None:
            changed = _setup_changes(old_setup.get((o["cell_id"], o.get("attack")), {}),
                                     new_setup.get((n["cell_id"], n.get("attack")), {}))
            if changed:
                changes.append(Change(shown, "setup", None, None, changed))
                continue
        ov = (o or {}).get("auroc")
        nv = (n or {}).get("auroc")
        if ov is not None or nv is not None:
            changes.append(Change(shown, "auroc", ov, nv))
    changes += _clever_changes(old, new)
    return changes


_SECTION_METRICS = ("auroc", "clever_mean", "clever_median")
"""Metrics of the detection and CLEVER sections, not of attack result rows."""
CLEVER_SETUP_KEYS = ("nb_batches", "batch_size", "weibull_shapes")
"""What, besides the radius, defines a CLEVER score: rows that differ in any of them are not compared."""


def _clever_rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``clever/norm/target/stack`` -> the CLEVER row (a ``robaudit clever`` report or an audit's cells)."""
    out = {}
    for row in (report.get("clever") or {}).get("rows", []):
        stack = "+".join(row.get("defences") or []) or "none"
        out[f"clever/{row.get('norm')}/{row.get('target')}/{stack}"] = row
    return out


def _clever_changes(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """CLEVER rows matched by norm, target and stack: their mean and median scores (higher is more
    robust), unless the radius or the sampling budget changed (then ``setup``)."""
    old_rows, new_rows = _clever_rows(old), _clever_rows(new)
    old_cfg, new_cfg = ((r.get("clever") or {}).get("config") or {} for r in (old, new))
    changes = []
    for key in list(dict.fromkeys([*old_rows, *new_rows])):
        o, n = old_rows.get(key), new_rows.get(key)
        if o is not None and n is not None:
            changed = _setup_changes({"radius": o.get("radius"), **{k: old_cfg.get(k) for k in CLEVER_SETUP_KEYS}},
                                     {"radius": n.get("radius"), **{k: new_cfg.get(k) for k in CLEVER_SETUP_KEYS}})
            if changed:
                changes.append(Change(key, "setup", None, None, changed))
                continue
        for metric in ("clever_mean", "clever_median"):
            field = metric.removeprefix("clever_")
            ov = o.get(field) if o is not None and o.get("status") == "ok" else None
            nv = n.get(field) if n is not None and n.get("status") == "ok" else None
            if ov is not None or nv is not None:
                changes.append(Change(key, metric, ov, nv))
    return changes


_CRAFT_MODE_ATTACKS = ("fgsm", "bim")
"""The crafting attacks that ``craft`` (early / full) applies to; the others run as configured."""


def _detection_setups(report: dict[str, Any]) -> dict[tuple[Any, Any], dict[str, Any]]:
    """(cell id, attack label) -> what defines a detection row's numbers besides the inputs: the
    crafting attack, its eps and parameters (and craft mode, for FGSM/BIM), the cost attacks and squeeze."""
    out = {}
    for entry in report.get("detection") or []:
        for label, a in (entry.get("attacks") or {}).items():
            out[(entry.get("cell_id"), label)] = {
                "attack": a.get("attack"), "eps": a.get("eps"), "params": a.get("params") or {},
                "craft": entry.get("craft") if a.get("attack") in _CRAFT_MODE_ATTACKS else None,
                "costs": entry.get("costs"), "squeeze": entry.get("squeeze")}
    return out


def _setup_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    """``eps 0.3 -> 0.01; params.steps 20 -> 40`` for every key whose value differs (``""``: the same
    setup); of two mappings (an attack's parameters) only the entries that differ."""
    out = []
    for k in dict.fromkeys([*old, *new]):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out.append(_setup_changes(a, b, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k} {_setup_value(a)} -> {_setup_value(b)}")
    return "; ".join(out)


def _setup_value(v: Any) -> str:
    return "-" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))


def diff_warnings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What makes the two reports less comparable than their cells say: different data or seed."""
    out = []
    od, nd = old.get("data", {}), new.get("data", {})
    if od.get("sha256") != nd.get("sha256"):
        out.append(f"the reports ran on different data ({od.get('path')} sha256 {str(od.get('sha256'))[:12]} vs "
                   f"{nd.get('path')} sha256 {str(nd.get('sha256'))[:12]})")
    elif od.get("n_selected") != nd.get("n_selected") or old.get("seed") != new.get("seed"):
        out.append(f"the reports sampled different inputs (n {od.get('n_selected')} seed {old.get('seed')} vs "
                   f"n {nd.get('n_selected')} seed {new.get('seed')})")
    return out


def regressions(changes: list[Change], tolerance: float) -> list[Change]:
    return [c for c in changes if c.verdict(tolerance) in ("worse", "gone")]


def diff_headline(changes: list[Change], tolerance: float) -> str:
    """``N better, M worse[, K gone] (tolerance T)[; S cells not compared ...].``"""
    verdicts = [c.verdict(tolerance) for c in changes]
    better, worse, gone = (verdicts.count(v) for v in ("better", "worse", "gone"))
    setup = sum(c.metric == "setup" for c in changes)
    return (f"{better} better, {worse} worse"
            + (f", {gone} gone (in the old report only; they count as regressions)" if gone else "")
            + f" (tolerance {tolerance:g})"
            + (f"; {setup} cells not compared because their setup changed." if setup else "."))


def diff_rows(changes: list[Change], tolerance: float) -> list[tuple[str, str, str, str, str, str]]:
    """(cell, metric, old, new, change, verdict) of every change that is not ``same`` or ``n/a``."""
    rows = []
    for c in changes:
        v = c.verdict(tolerance)
        if v in ("same", "n/a"):
            continue
        if c.metric == "setup":
            rows.append((c.cell, "setup", "", "", c.note, v))
            continue
        fmt = (lambda x: "-" if x is None else f"{x:.4g}")
        rows.append((c.cell, c.metric, fmt(c.old), fmt(c.new), "-" if c.delta is None else f"{c.delta:+.4g}", v))
    return rows


def diff_markdown(changes: list[Change], tolerance: float, old_name: str, new_name: str,
                  warnings: list[str] | None = None) -> str:
    lines = [f"### robaudit diff: `{old_name}` -> `{new_name}`", "", diff_headline(changes, tolerance), ""]
    lines += [f"> warning: {w}" for w in warnings or []] + ([""] if warnings else [])
    lines += ["| cell | metric | old | new | change | |", "|---|---|---|---|---|---|"]
    rows = diff_rows(changes, tolerance)
    lines += ["|" + "|".join(f" {md_text(x)} " if x else " " for x in row) + "|" for row in rows]
    if not rows:
        lines.append("| (no change) | | | | | |")
    return "\n".join(lines) + "\n"


def diff_table(changes: list[Change], tolerance: float, old_name: str, new_name: str) -> Any:
    """The diff as a rich table (``report diff --format table``); warnings go to stderr separately."""
    from rich.table import Table

    table = Table(title=f"robaudit diff: {old_name} -> {new_name}", title_justify="left",
                  caption=diff_headline(changes, tolerance), caption_justify="left")
    for header in ("cell", "metric", "old", "new", "change", "verdict"):
        table.add_column(header, justify="right" if header in ("old", "new", "change") else "left")
    styles = {"worse": "red", "gone": "red", "better": "green", "changed": "yellow"}
    for row in diff_rows(changes, tolerance):
        table.add_row(*row, style=styles.get(row[-1]))
    if not table.rows:
        table.add_row("(no change)", "", "", "", "", "")
    return table


def diff_dict(changes: list[Change], tolerance: float) -> list[dict[str, Any]]:
    return [{"cell": c.cell, "metric": c.metric, "old": c.old, "new": c.new, "delta": c.delta,
             "verdict": c.verdict(tolerance), **({"note": c.note} if c.note else {})} for c in changes]
