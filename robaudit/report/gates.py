"""Gates: thresholds on report metrics that decide a CI pass or fail.

A gate is one line, ``[SELECTOR ...] METRIC OP VALUE``, for example::

    pgd untargeted success_rate <= 0.3     # one cell
    untargeted success_rate <= 0.5         # a group: every attack's untargeted cell
    success_rate <= 0.9                    # every cell
    clean_accuracy >= 0.95                 # a report-level metric (no selectors)
    cw-l2 l2_median >= 1.0%                # a trailing % divides by 100

Selectors are attack labels or names (``pgd``: every cell that runs PGD, whatever its label;
``label=pgd``: the cells labelled ``pgd`` only), target settings (``untargeted``, ``least-likely``,
``next-class``), ``defences=none`` / ``defences=ss+jpeg`` (or ``ss,jpeg``) and the threat model
of the defended cells (``adaptive`` or ``transfer``, also ``threat=...``; the undefended cells have
none: ``defences=none`` picks them). A gate on a group holds when it holds
for every matching cell; the reported value is the worst one. Cells that did not run (status
``unsupported`` or ``skipped``) are left out of groups.

Detection gates use a detection metric (``auroc``, ``detection_rate``, ``fpr``, ``accuracy``) and
address the (crafting attack, score) rows of detection cells::

    detect auroc >= 0.9                      # every attack x every score
    detect bim-linf fgsm auroc >= 0.95       # FGSM examples, scored by the BIM-Linf cost
    detect attack=jsma cost=bim-l2 fpr <= 0.1   # attack=/cost= when a name is both (jsma)

The word ``detect`` is optional; other selectors are crafting-attack labels or names and score
names (cost attacks, ``squeeze``, ``COST+squeeze``). Rows without adversarial examples (the attack
never succeeded) are left out of groups.

Groups and missing values: ``robust_accuracy`` is defined on untargeted cells, so a group is decided
by its untargeted cells (``pgd robust_accuracy >= 0.4`` on an audit with targeted cells too), and a
gate whose selection holds no untargeted cell is refused as mis-written (exit 2, as for a selector
that matches nothing); a
distance over successful examples has no value in a cell whose attack found none, and that cell
holds (there is no example to break the bound). Distance thresholds allow float32 rounding at the
model's clip range, as the engine's own eps-ball check does (:func:`robaudit.tolerance.bound_slack`).
A partial report fails every gate.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from robaudit.config.profile import THREAT_MODELS
from robaudit.errors import ConfigError
from robaudit.report.markdown import md_text
from robaudit.tolerance import bound_slack

ROW_METRICS = (
    "success_rate", "robust_accuracy", "l2_mean", "l2_median", "linf_mean", "linf_median", "linf_max",
    "l2_mean_all", "l2_median_all", "linf_mean_all", "linf_median_all", "l0_mean",
)
"""Metrics of one result row. ``robust_accuracy`` (untargeted rows only) is
``clean_accuracy * (1 - success_rate)``: the share of the sampled inputs still classified correctly,
with the clean accuracy of the model the row attacked (behind a defence stack, the stack's own)."""
DETECT_METRICS = ("auroc", "detection_rate", "fpr", "accuracy", "balanced_accuracy")
"""Metrics of detection rows (``report["detection"][*]["rows"]``): AUROC of the score against the
attack's examples, and detection rate (TPR) / false-positive rate / accuracy / balanced accuracy
(``(TPR + 1 - FPR) / 2``) at the fitted threshold."""
REPORT_METRICS = ("clean_accuracy",)
"""Metrics of the whole report (no selectors)."""
OPS = ("<=", ">=", "<", ">")

_TARGET_ALIASES = {"untargeted": "untargeted", "least-likely": "least-likely", "ll": "least-likely",
                   "next-class": "next-class", "next": "next-class"}
TARGET_WORDS = tuple(_TARGET_ALIASES)
"""Selector words that pick a target setting."""
_GATE_RE = re.compile(r"^\s*(?P<sel>(?:\S+\s+)*?)(?P<metric>[a-z][a-z0-9_]*)\s*(?P<op><=|>=|<|>)\s*"
                      r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?%?)\s*$")


@dataclass(frozen=True)
class Gate:
    """One parsed gate."""

    text: str
    """The expression as written."""
    selectors: tuple[str, ...]
    """Words that pick the cells (empty: every cell, or the report for report-level metrics)."""
    metric: str
    op: str
    threshold: float

    def holds(self, value: float) -> bool:
        if self.op == "<=":
            return value <= self.threshold
        if self.op == ">=":
            return value >= self.threshold
        if self.op == "<":
            return value < self.threshold
        return value > self.threshold

    def worst(self, values: list[float]) -> float:
        """The value that decides a group: the largest for upper bounds, the smallest for lower bounds."""
        return max(values) if self.op in ("<=", "<") else min(values)


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    passed: bool
    value: float | None
    """The deciding (worst) value; ``None`` when the metric has no value."""
    cell: str | None
    """Cell id of the deciding row (``None`` for report-level metrics)."""
    detail: str
    """One line a person can read: metric, threshold, value and where."""

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate.text, "metric": self.gate.metric, "op": self.gate.op,
                "threshold": self.gate.threshold, "value": self.value, "cell": self.cell,
                "passed": self.passed, "detail": self.detail}


def parse_gate(text: str) -> Gate:
    """Parse ``[SELECTOR ...] METRIC OP VALUE``; a :class:`ConfigError` says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"a gate must be a non-empty string like 'pgd untargeted success_rate <= 0.3', got {text!r}")
    m = _GATE_RE.match(text)
    if m is None:
        raise ConfigError(f"cannot parse gate {text!r}: expected '[SELECTOR ...] METRIC OP VALUE' with OP one of "
                          f"{' '.join(OPS)}, e.g. 'pgd untargeted success_rate <= 0.3'")
    metric = m["metric"]
    if metric not in ROW_METRICS and metric not in REPORT_METRICS and metric not in DETECT_METRICS:
        raise ConfigError(f"gate {text!r}: unknown metric {metric!r} "
                          f"(known: {', '.join(REPORT_METRICS + ROW_METRICS + DETECT_METRICS)})")
    raw = m["value"]
    value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    selectors = tuple(m["sel"].split())
    if metric in REPORT_METRICS and selectors:
        raise ConfigError(f"gate {text!r}: {metric} is a report-level metric and takes no selectors")
    if metric in ("success_rate", "robust_accuracy", "clean_accuracy", *DETECT_METRICS) and not 0.0 <= value <= 1.0:
        raise ConfigError(f"gate {text!r}: {metric} is a fraction in [0, 1], got {value:g} (write 30% or 0.3)")
    if metric not in DETECT_METRICS and any(s.lower() == "detect" for s in selectors):
        raise ConfigError(f"gate {text!r}: 'detect' selects detection rows, whose metrics are "
                          f"{', '.join(DETECT_METRICS)}")
    if metric in DETECT_METRICS and any(s.lower().startswith(("defences=", "defence=", "defenses=", "defense="))
                                        for s in selectors):
        raise ConfigError(f"gate {text!r}: detection rows have no defence stack to select")
    return Gate(text=" ".join(text.split()), selectors=selectors, metric=metric, op=m["op"], threshold=value)


def detection_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (attack, score) row of the report's detection cells, with its ``cell_id``."""
    out = []
    for entry in report.get("detection") or []:
        for row in entry.get("rows", []):
            out.append({**row, "cell_id": entry.get("cell_id"), "cell_status": entry.get("status")})
    return out


def detect_selector_matches(selector: str, row: dict[str, Any]) -> bool:
    s = selector.lower()
    if s == "detect":
        return True
    if s.startswith("attack="):
        s = s.split("=", 1)[1]
        return s in (str(row.get("attack", "")).lower(), str(row.get("attack_name", "")).lower())
    if s.startswith("cost="):
        return s.split("=", 1)[1] == str(row.get("cost", "")).lower()
    return s in (str(row.get("attack", "")).lower(), str(row.get("attack_name", "")).lower(),
                 str(row.get("cost", "")).lower())


def _check_detect_selectors(gate: Gate, words: set[str] | None) -> None:
    if words is None:
        raise ConfigError(f"gate {gate.text!r}: {gate.metric} is a detection metric, and this audit has no "
                          "detect section")
    known = {w.lower() for w in words}
    for s in gate.selectors:
        low = s.lower()
        if low == "detect":
            continue
        word = low.split("=", 1)[1] if low.startswith(("attack=", "cost=")) else low
        if word not in known:
            raise ConfigError(f"gate {gate.text!r}: selector {s!r} is not a detection attack or score here "
                              f"(known: {', '.join(sorted(words)) or 'none'})")


def _defence_key(row: dict[str, Any]) -> str:
    return "+".join(row.get("defences") or []) or "none"


THREAT_WORDS = THREAT_MODELS
"""Selector words that pick a threat model (``threat=adaptive`` too)."""


def _stack_key(text: str) -> str:
    """A ``defences=`` selector's stack as ``_defence_key`` writes it: ``ss,jpeg`` -> ``ss+jpeg``."""
    return "+".join(p.strip() for p in text.replace(",", "+").split("+") if p.strip()) or "none"


def _threat(selector: str) -> str | None:
    s = selector.lower()
    s = s.split("=", 1)[1] if s.startswith("threat=") else s
    return s if s in THREAT_WORDS else None


def selector_matches(selector: str, row: dict[str, Any]) -> bool:
    s = selector.lower()
    if s.startswith(("defences=", "defence=", "defenses=", "defense=")):
        return _stack_key(s.split("=", 1)[1]) == _defence_key(row)
    if _threat(s) is not None:
        return row.get("threat_model") == _threat(s)
    if s in _TARGET_ALIASES:
        return row.get("target") == _TARGET_ALIASES[s]
    label = str(row.get("label") or row.get("attack") or "").lower()  # `attack` reports: the name is the label
    if s.startswith("label="):  # the label alone: `pgd` also selects every other label that runs PGD
        return s.split("=", 1)[1] == label
    return s in (label, str(row.get("attack", "")).lower())


def check_selectors(gate: Gate, labels: set[str], attacks: set[str], targets: set[str],
                    detect_words: set[str] | None = None) -> None:
    """Refuse selectors that can never match (a typo would otherwise silently gate nothing).

    ``detect_words``: selector words of detection rows (``None``: the audit has no detection cells)."""
    if gate.metric in DETECT_METRICS:
        _check_detect_selectors(gate, detect_words)
        return
    known_words = {w.lower() for w in labels | attacks} | set(_TARGET_ALIASES)
    for s in gate.selectors:
        low = s.lower()
        if low.startswith(("defences=", "defence=", "defenses=", "defense=")) or _threat(low) is not None:
            continue
        if low.startswith("threat="):
            raise ConfigError(f"gate {gate.text!r}: {s!r}: the threat model is adaptive or transfer")
        if low.startswith("label="):
            if low.split("=", 1)[1] not in {w.lower() for w in labels}:
                raise ConfigError(f"gate {gate.text!r}: {s!r} names no attack label here "
                                  f"(labels: {', '.join(sorted(labels)) or 'none'})")
            continue
        if low not in known_words:
            raise ConfigError(f"gate {gate.text!r}: selector {s!r} is not an attack or a target setting here "
                              f"(attacks: {', '.join(sorted(labels | attacks)) or 'none'}; "
                              f"targets: {', '.join(sorted(targets)) or 'none'})")
        if low in _TARGET_ALIASES and _TARGET_ALIASES[low] not in targets:
            raise ConfigError(f"gate {gate.text!r}: target setting {s!r} is not part of this audit "
                              f"(targets: {', '.join(sorted(targets))})")
    if gate.metric == "robust_accuracy":
        picked = {_TARGET_ALIASES[s.lower()] for s in gate.selectors if s.lower() in _TARGET_ALIASES}
        if "untargeted" not in (picked or targets) or len(picked) > 1:
            raise _no_untargeted(gate)


def _no_untargeted(gate: Gate) -> ConfigError:
    return ConfigError(f"gate {gate.text!r}: robust_accuracy is defined on untargeted cells only, and it selects "
                       "none: select untargeted cells, or gate success_rate")


def clean_accuracy_of(report: dict[str, Any], row: dict[str, Any]) -> float | None:
    """Clean accuracy of the model a row attacked: the report's for an undefended row, the
    stack's own (from the report's ``defences`` section) for a defended one, whose success rate is
    over the inputs the stack still classifies correctly."""
    stack = list(row.get("defences") or [])
    if not stack:
        acc = report.get("data", {}).get("clean_accuracy")
        return None if acc is None else float(acc)
    for entry in report.get("defences") or []:
        if list(entry.get("defences") or []) == stack and entry.get("clean_accuracy") is not None:
            return float(entry["clean_accuracy"])
    n_selected = report.get("data", {}).get("n_selected")  # a report without the section: the row's own count
    return row["n"] / n_selected if row.get("n") is not None and n_selected else None


def row_metric(report: dict[str, Any], row: dict[str, Any], metric: str) -> float | None:
    if metric == "robust_accuracy":
        rate = row.get("success_rate")
        if row.get("target") != "untargeted" or rate is None:
            return None
        clean = clean_accuracy_of(report, row)
        return None if clean is None else clean * (1.0 - float(rate))
    value = row.get(metric)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _cell_name(row: dict[str, Any]) -> str:
    if "cost" in row and "auroc" in row:
        return f"{row.get('cell_id')} {row.get('attack')}/{row.get('cost')}"
    return str(row.get("cell_id") or f"{row.get('label', row.get('attack'))}/{row.get('target')}/{_defence_key(row)}")


def _holds(gate: Gate, value: float, report: dict[str, Any]) -> bool:
    """``gate`` on ``value``; distances get the engine's float32 slack (an example on its eps-ball's
    surface measures 0.30000004 for eps 0.3 on [0, 1] data, 0.300003 on [0, 255] data)."""
    if gate.metric in ROW_METRICS and gate.metric not in ("success_rate", "robust_accuracy"):
        model = report.get("model") or {}
        shape = model.get("input_shape") or [1]
        norm = gate.metric.split("_", 1)[0]
        slack = bound_slack(gate.threshold, norm, model.get("clip"), math.prod(int(d) for d in shape))
        return gate.holds(value - slack) if gate.op in ("<=", "<") else gate.holds(value + slack)
    return gate.holds(value)


def _show(value: float, gate: Gate) -> str:
    """``value`` with enough digits that a failure at the threshold does not read as equal to it."""
    text = f"{value:.4g}"
    return repr(float(value)) if float(text) == gate.threshold != value else text


def evaluate_gate(gate: Gate, report: dict[str, Any]) -> GateResult:
    """Evaluate one gate on a report. A selector that matches no cell is a :class:`ConfigError`.

    A partial report (a run that was interrupted before every cell finished) fails every gate:
    the cells that would decide it may be the ones missing."""
    thr = f"{gate.op} {gate.threshold:g}"
    if report.get("partial"):
        return GateResult(gate, False, None, None, "the report is partial (its run was interrupted before every "
                                                   f"cell finished); finish the run to gate it (needs {thr})")
    if gate.metric in REPORT_METRICS:
        value = report.get("data", {}).get(gate.metric)
        if value is None:
            return GateResult(gate, False, None, None, f"{gate.metric}: no value in the report (needs {thr})")
        value = float(value)
        ok = gate.holds(value)
        return GateResult(gate, ok, value, None, f"{gate.metric} = {_show(value, gate)} (needs {thr})")
    if gate.metric in DETECT_METRICS:
        return _evaluate_detect_gate(gate, report, thr)
    rows = report.get("results", [])
    matched = [r for r in rows if all(selector_matches(s, r) for s in gate.selectors)]
    if not matched:
        labels = {str(r.get("label") or r.get("attack")) for r in rows} | {str(r.get("attack")) for r in rows}
        targets = {str(r.get("target")) for r in rows}
        check_selectors(gate, labels, set(), targets)
        stacks = sorted({_defence_key(r) for r in rows})
        threats = sorted({str(r.get("threat_model")) for r in rows if r.get("defences")})
        cells = sorted({f"{r.get('label') or r.get('attack')}/{r.get('target')}" for r in rows})
        shown = ", ".join(cells[:12]) + (f" and {len(cells) - 12} more" if len(cells) > 12 else "")
        raise ConfigError(f"gate {gate.text!r} matches no cell of the report (its cells: {shown or 'none'}; "
                          f"stacks: {', '.join(stacks)}"
                          + (f"; threat models of the defended cells: {', '.join(threats)})" if threats else ")"))
    if gate.metric == "robust_accuracy" and not any(r.get("target") == "untargeted" for r in matched):
        raise _no_untargeted(gate)  # a mis-written gate, like a selector that matches nothing
    ran = [r for r in matched if r.get("status") == "ok"]
    if not ran:
        reasons = "; ".join(f"{_cell_name(r)}: {r.get('status')} ({r.get('reason')})" for r in matched[:3])
        return GateResult(gate, False, None, None, f"{gate.metric}: no cell ran ({reasons}) (needs {thr})")
    if gate.metric == "robust_accuracy":  # defined on untargeted cells only: a group means its untargeted cells
        untargeted = [r for r in ran if r.get("target") == "untargeted"]
        if not untargeted:
            return GateResult(gate, False, None, _cell_name(ran[0]),
                              f"robust_accuracy: no untargeted cell ran among the {len(ran)} selected (needs {thr})")
        ran = untargeted
    values = [(row_metric(report, r, gate.metric), r) for r in ran]
    missing = [r for v, r in values if v is None]
    present = [(v, r) for v, r in values if v is not None]
    if missing and gate.metric.endswith(("_mean", "_median", "_max")):
        # distances over successful examples: a cell whose attack found none has no distance to break
        # either bound (its minimal distortion is beyond the attack's reach); it holds and is named
        if not present:
            return GateResult(gate, True, None, _cell_name(missing[0]),
                              f"{gate.metric}: no successful example in {len(missing)} cell(s), e.g. "
                              f"{_cell_name(missing[0])}, so no distance to test (needs {thr})")
    elif missing:
        return GateResult(gate, False, None, _cell_name(missing[0]),
                          f"{gate.metric} has no value for {_cell_name(missing[0])} (not defined) (needs {thr})")
    worst = gate.worst([v for v, _ in present])  # type: ignore[misc]
    cell = next(r for v, r in present if v == worst)
    ok = _holds(gate, worst, report)
    where = _cell_name(cell) + (f" (worst of {len(present)} cells)" if len(present) > 1 else "")
    if missing:
        where += f"; {len(missing)} cell(s) without a successful example"
    return GateResult(gate, ok, worst, _cell_name(cell),
                      f"{gate.metric} = {_show(worst, gate)} at {where} (needs {thr})")


def _evaluate_detect_gate(gate: Gate, report: dict[str, Any], thr: str) -> GateResult:
    rows = detection_rows(report)
    if not rows:
        raise ConfigError(f"gate {gate.text!r}: the report has no detection cells")
    matched = [r for r in rows if all(detect_selector_matches(s, r) for s in gate.selectors)]
    if not matched:
        words = {str(r.get(k)) for r in rows for k in ("attack", "attack_name", "cost")}
        _check_detect_selectors(gate, words)
        raise ConfigError(f"gate {gate.text!r} matches no detection row of the report")
    ran = [r for r in matched if r.get("status") == "ok"]
    if not ran:
        reasons = "; ".join(f"{_cell_name(r)}: {r.get('status')} ({r.get('reason')})" for r in matched[:3])
        return GateResult(gate, False, None, None, f"{gate.metric}: no detection row has a value ({reasons}) "
                                                   f"(needs {thr})")
    present = [(row_metric(report, r, gate.metric), r) for r in ran]
    missing = [r for v, r in present if v is None]
    if missing:
        return GateResult(gate, False, None, _cell_name(missing[0]),
                          f"{gate.metric} has no value for {_cell_name(missing[0])} (needs {thr})")
    worst = gate.worst([v for v, _ in present])  # type: ignore[misc]
    row = next(r for v, r in present if v == worst)
    where = _cell_name(row) + (f" (worst of {len(present)} rows)" if len(present) > 1 else "")
    return GateResult(gate, gate.holds(worst), worst, _cell_name(row),
                      f"{gate.metric} = {_show(worst, gate)} at {where} (needs {thr})")


def evaluate_gates(gates: list[Gate], report: dict[str, Any]) -> list[GateResult]:
    return [evaluate_gate(g, report) for g in gates]


def gates_markdown(gates: list[dict[str, Any]]) -> str:
    """A Markdown table of evaluated gates (``GateResult.to_dict()`` entries, as stored in reports)."""
    if not gates:
        return ""
    failed = sum(not g["passed"] for g in gates)
    head = f"**Gates: all {len(gates)} passed**" if not failed else f"**Gates: {failed} of {len(gates)} FAILED**"
    lines = ["", head, "", "| | gate | value | where |", "|---|---|---|---|"]
    for g in gates:
        value = "-" if g.get("value") is None else f"{g['value']:.4g}"
        lines.append(f"| {'pass' if g['passed'] else 'FAIL'} | `{g['gate']}` | {value} | "
                     f"{md_text(str(g.get('cell') or '-'))} |")
    return "\n".join(lines) + "\n"
