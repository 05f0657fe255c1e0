"""Self-contained HTML report: one file, inline SVG charts, base64 PNG example images, no scripts."""

from __future__ import annotations

from html import escape
from typing import Any

from robaudit.report.clever_render import clever_html
from robaudit.report.render import (DEFENCE_HEADERS, RATES_NOTE, _behind_stacks, _cells, _defence_cells, attack_columns,
                                    report_warnings, shown_rows, stack_label)
from robaudit.report.svg import grouped_bars, roc_chart

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1300px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}.pass{color:#1a7f37;font-weight:bold}.fail{color:#cf222e;font-weight:bold}
.dim{color:#888}.charts{display:flex;flex-wrap:wrap;gap:24px}
.grid td{text-align:center;vertical-align:top;font-size:11px}
.grid img{width:84px;height:84px;image-rendering:pixelated;border:1px solid #ccc}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;margin:6px 0}
"""


def _series_name(row: dict[str, Any], multi_defence: bool) -> str:
    stack = stack_label(row.get("defences") or [], row.get("threat_model"))
    return f"{row.get('target')}" + (f" / {stack}" if multi_defence else "")


def charts(report: dict[str, Any]) -> list[str]:
    """Success-rate and L2 bars per attack, one bar per target setting (and defence stack)."""
    rows = [r for r in report.get("results", []) if r.get("status") == "ok"]
    if not rows:
        return []
    # one series per stack and threat model: a single stack under both threat models is two bars
    multi = len({stack_label(r.get("defences") or [], r.get("threat_model")) for r in report.get("results", [])}) > 1
    groups = list(dict.fromkeys(str(r.get("label", r.get("attack"))) for r in report["results"]))
    series = list(dict.fromkeys(_series_name(r, multi) for r in report["results"]))
    success = {(str(r.get("label", r.get("attack"))), _series_name(r, multi)): r.get("success_rate") for r in rows}
    l2 = {(str(r.get("label", r.get("attack"))), _series_name(r, multi)): r.get("l2_mean") for r in rows}
    return [grouped_bars("Attack success rate", groups, series, success, y_max=1.0, percent=True,
                         y_label="success rate"),
            grouped_bars("Mean L2 distance of successful examples", groups, series, l2, y_label="L2 (pixel space)")]


def _img(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{b64}" alt="{escape(alt)}">'


def example_grid(entry: dict[str, Any], class_names: list[str] | None = None) -> str:
    samples = entry.get("samples", [])
    head = "".join(f"<th>#{s.get('index')}</th>" for s in samples)

    def cls(k: Any) -> str:  # "3", or "3 (cat)" where the data names its classes
        names = class_names or []
        return f"{k} ({names[k]})" if isinstance(k, int) and 0 <= k < len(names) else str(k)

    kinds = (("clean", "clean_png", lambda s: f"label {cls(s.get('label'))}"),
             ("adversarial", "adv_png",
              lambda s: f"pred {cls(s.get('pred_adv'))}"
              + (f" (target {cls(s['target'])})" if s.get("target") is not None else "")
              + (" ✓" if s.get("success") else " ✗")
              + (" (the judging draw misclassified the clean input: not counted)"
                 if s.get("clean_misclassified_on_draw") else "")),
             ("perturbation", "delta_png", lambda s: f"Linf {s.get('delta_linf', 0):.3g}"))
    body = []
    for name, key, caption in kinds:
        cells = "".join(f"<td>{_img(s[key], name + ' ' + str(s.get('index')))}"
                        f"<br>{escape(caption(s))}</td>" for s in samples)
        body.append(f'<tr><th class="l">{name}</th>{cells}</tr>')
    defences = stack_label(entry.get("defences") or [], entry.get("threat_model"))
    title = f"{entry.get('label', entry.get('attack'))} / {entry.get('target')}" + \
        (f" / {defences}" if defences != "none" else "")
    return (f"<h3>{escape(title)}</h3><table class=\"grid\"><tr><th></th>{head}</tr>{''.join(body)}</table>")


def results_html_table(report: dict[str, Any]) -> str:
    columns = attack_columns(report)
    head = "".join(f'<th class="{"l" if k in ("attack", "target", "budget") else ""}">{escape(h)}</th>'
                   for k, h in columns)
    lines = [f"<table><tr><th class=\"l\">defences</th>{head}</tr>"]
    for row in shown_rows(report):
        cells = _cells(row, columns)
        stack = escape(stack_label(row.get("defences") or [], row.get("threat_model")))
        if row.get("status") != "ok":
            lines.append(f'<tr class="dim"><td class="l">{stack}</td>'
                         + "".join(f'<td class="l">{escape(c)}</td>' for c in cells[:4])
                         + f'<td class="l" colspan="{len(columns) - 4}">{escape(cells[4])}</td></tr>')
            continue
        tds = "".join(f'<td class="{"l" if i < 3 else ""}">{escape(c)}</td>' for i, c in enumerate(cells))
        lines.append(f'<tr><td class="l">{stack}</td>{tds}</tr>')
    lines.append(f'</table><p class="dim">{escape(RATES_NOTE.capitalize())}.</p>')
    return "".join(lines)


def defences_html(report: dict[str, Any]) -> str:
    """Clean accuracy under each defence stack: a bar chart and a table (empty without defences)."""
    entries = report.get("defences") or []
    if not entries:
        return ""
    labels = [stack_label(e.get("defences") or []) for e in entries]
    chart = grouped_bars("Clean accuracy under each defence stack", labels, ["clean accuracy"],
                         {(lab, "clean accuracy"): e.get("clean_accuracy") for lab, e in zip(labels, entries)},
                         y_max=1.0, percent=True, y_label="clean accuracy")
    head = "".join(f'<th class="{"l" if i == 0 else ""}">{h}</th>' for i, h in enumerate(
        DEFENCE_HEADERS))
    rows = "".join("<tr>" + "".join(f'<td class="{"l" if i == 0 else ""}">{escape(c)}</td>'
                                    for i, c in enumerate(_defence_cells(e))) + "</tr>" for e in entries)
    return (f'<h2>Defence stacks</h2><div class="charts">{chart}</div><table><tr>{head}</tr>{rows}</table>')


def _value(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


def gates_html(report: dict[str, Any]) -> str:
    gates = report.get("gates") or []
    if not gates:
        return ""
    failed = sum(not g["passed"] for g in gates)
    head = (f'<p class="pass">All {len(gates)} gates passed.</p>' if not failed
            else f'<p class="fail">{failed} of {len(gates)} gates failed.</p>')
    rows = "".join(
        f'<tr><td class="l {"pass" if g["passed"] else "fail"}">{"pass" if g["passed"] else "FAIL"}</td>'
        f'<td class="l"><code>{escape(g["gate"])}</code></td>'
        f'<td>{_value(g.get("value"))}</td>'
        f'<td class="l">{escape(g.get("cell") or "-")}</td></tr>' for g in gates)
    return (f"<h2>Gates</h2>{head}<table><tr><th></th><th class=\"l\">gate</th><th>value</th>"
            f"<th class=\"l\">where</th></tr>{rows}</table>")


def detection_html(report: dict[str, Any]) -> str:
    """Detection cells: ROC curves (one chart per crafting attack, one curve per score) and the rows."""
    from robaudit.report.render import DETECT_COLUMNS, _detect_cells, detection_caption

    parts = []
    for entry in report.get("detection") or []:
        parts.append(f"<h3>{escape(str(entry.get('cell_id')))}</h3>")
        if entry.get("status") != "ok":
            parts.append(f'<p class="dim">{escape(str(entry.get("status")))}: {escape(str(entry.get("reason")))}</p>')
            continue
        parts.append(f"<p>{escape(detection_caption(entry))}.</p>")
        by_attack: dict[str, list[tuple[str, list[float], list[float]]]] = {}
        auc = {(r.get("attack"), r.get("cost")): r.get("auroc") for r in entry.get("rows", [])}
        for c in entry.get("roc", []):
            a = auc.get((c.get("attack"), c.get("cost")))
            name = f"{c.get('cost')}" + (f" (AUROC {a:.3f})" if a is not None else "")
            by_attack.setdefault(str(c.get("attack")), []).append((name, c.get("fpr", []), c.get("tpr", [])))
        if by_attack:
            parts.append('<div class="charts">' + "".join(roc_chart(f"ROC: {a}", curves)
                                                          for a, curves in by_attack.items()) + "</div>")
        head = "".join(f'<th class="{"l" if k in ("attack", "cost") else ""}">{escape(h)}</th>'
                       for k, h in DETECT_COLUMNS)
        body = "".join(
            f'<tr class="{"" if r.get("status") == "ok" else "dim"}">'
            + "".join(f'<td class="{"l" if i < 2 else ""}">{escape(c)}</td>' for i, c in enumerate(_detect_cells(r)))
            + "</tr>" for r in entry.get("rows", []))
        parts.append(f"<table><tr>{head}</tr>{body}</table>")
    return ("<h2>Detection</h2>" + "".join(parts)) if parts else ""


def report_html(report: dict[str, Any]) -> str:
    model, data = report.get("model", {}), report.get("data", {})
    profile = (report.get("config") or {}).get("profile") or {}
    title = f"robaudit report: {model.get('path', '?')}"
    summary = (f"Data <code>{escape(str(data.get('path', '?')))}</code>: clean accuracy "
               f"<b>{100 * float(data.get('clean_accuracy', 0.0)):.1f}%</b> on {data.get('n_selected', '?')} sampled "
               f"inputs; attacks ran on the {data.get('n_evaluated', '?')} classified correctly"
               f"{escape(_behind_stacks(report))}. "
               f"Seed {report.get('seed')}, device {escape(str(report.get('device')))}, robaudit "
               f"{escape(str(report.get('robaudit_version')))}, created {escape(str(report.get('created')))}"
               + (f", profile <code>{escape(str(profile.get('name')))}</code>" if profile else "") + "."
               + (f" Model runtime: {escape(str(model['runtime']))}." if model.get("runtime") else ""))
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1><p>{summary}</p>"]
    for w in report_warnings(report):
        parts.append(f'<div class="warn">warning: {escape(w)}</div>')
    parts.append(gates_html(report))
    svgs = charts(report)
    if svgs:
        parts.append('<h2>Success and distance per attack</h2><div class="charts">' + "".join(svgs) + "</div>")
    if report.get("results"):
        parts.append("<h2>Results</h2>" + results_html_table(report))
    parts.append(defences_html(report))
    parts.append(detection_html(report))
    parts.append(clever_html(report))
    examples = report.get("examples") or []
    if examples:
        parts.append("<h2>Examples</h2><p>The first correctly classified inputs of the evaluation set; the "
                     "perturbation is scaled to its own Linf (grey = 0). Images are 8-bit PNGs for viewing; "
                     "predictions and ✓/✗ are for the floating-point examples the attack returned, and an "
                     "example within half a grey level of the boundary can classify differently once "
                     "rounded to 8 bits.</p>")
        names = (report.get("data") or {}).get("class_names")
        parts.extend(example_grid(e, names) for e in examples)
    parts.append("</body></html>\n")
    return "".join(parts)
