"""Render a report's ``clever`` section: rich tables, Markdown and HTML (empty when there is none)."""

from __future__ import annotations

from html import escape
from typing import Any

from rich.table import Table

from robaudit.report.markdown import md_text

ROW_COLUMNS = (("defences", "defence"), ("norm", "norm"), ("target", "target"), ("radius", "radius"), ("n", "n"),
               ("mean", "mean"), ("median", "median"), ("min", "min"), ("n_at_radius", "at radius"),
               ("n_poor_fit", "poor fits"), ("median_p_value", "median p"), ("seconds_per_image", "s/img"))
"""(key, header) of the CLEVER score rows."""

COMPARE_COLUMNS = (("defences", "defence"), ("norm", "norm"), ("target", "target"), ("attack", "attack"),
                   ("clever_median", "CLEVER med"), ("success_rate", "success"), ("distortion_median", "found med"),
                   ("violations", "violations"), ("spearman_inputs", "rank corr"))
"""(key, header) of the comparison rows (one per attack and one for the best of them)."""


def _stack(v: Any) -> str:
    return "+".join(v or []) or "none"


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def row_cells(row: dict[str, Any]) -> list[str]:
    out = []
    for key, _ in ROW_COLUMNS:
        v = row.get(key)
        if key == "defences":
            out.append(_stack(v))
        elif key == "n_poor_fit" and row.get("status") == "ok":
            out.append(f"{v}/{row.get('n')}")
        elif key == "seconds_per_image":
            out.append("-" if v is None else f"{v:.2f}")
        else:
            out.append(_f(v))
    if row.get("status") != "ok":
        out[4:] = [f"{row.get('status')}: {row.get('reason')}"] + [""] * (len(ROW_COLUMNS) - 5)
    return out


def compare_rows(section: dict[str, Any]) -> list[list[str]]:
    """One line per (entry, attack) plus the best-of-attacks line of each entry."""
    lines = []
    for e in section.get("comparison") or []:
        head = [_stack(e.get("defences")), str(e.get("norm")), str(e.get("target"))]
        parts = [(a["attack"], a) for a in e.get("attacks", [])]
        if e.get("best") is not None and len(parts) > 1:
            parts.append(("best", e["best"]))
        for name, a in parts:
            viol = "-" if a.get("violation_rate") is None else \
                f"{a.get('n_violations')}/{a.get('n_success')} ({100 * a['violation_rate']:.0f}%)"
            succ = "-" if a.get("success_rate") is None else f"{100 * a['success_rate']:.1f}%"
            lines.append([*head, name, _f(e.get("clever_median")), succ, _f(a.get("distortion_median")), viol,
                          _f(a.get("spearman_inputs"), 2)])
    return lines


def correlation_lines(section: dict[str, Any]) -> list[str]:
    out = []
    for c in section.get("correlation") or []:
        out.append(f"{c['norm']} / {c['target']} vs {c['attack']}"
                   + (f" ({c.get('attack_norm')})" if c.get("cross_norm") else "")
                   + f" over {len(c['stacks'])} stacks: Spearman(mean CLEVER, success rate) = "
                   f"{_f(c.get('spearman_success'), 2)}, Spearman(mean CLEVER, median distortion) = "
                   f"{_f(c.get('spearman_distortion'), 2)}")
    return out


def clever_tables(report: dict[str, Any]) -> list[Table]:
    """The score table and, when attacks were compared, the comparison table."""
    section = report.get("clever")
    if not section:
        return []
    cfg = section.get("config") or {}
    title = (f"CLEVER scores ({cfg.get('nb_batches')} batches x {cfg.get('batch_size')} points per input; "
             f"poor fit: KS p < {cfg.get('poor_fit_p')})")
    table = Table(title=title, title_justify="left")
    for key, header in ROW_COLUMNS:
        text = key in ("defences", "norm", "target")
        table.add_column(header, justify="left" if text else "right", no_wrap=text)
    for row in section.get("rows") or []:
        table.add_row(*row_cells(row), style=None if row.get("status") == "ok" else "dim")
    tables = [table]
    lines = compare_rows(section)
    if lines:
        comp = Table(title="CLEVER vs minimal distortion found by attacks (violation: CLEVER > found distortion)",
                     title_justify="left", caption="\n".join(correlation_lines(section)) or None,
                     caption_justify="left")
        for key, header in COMPARE_COLUMNS:
            text = key in ("defences", "norm", "target", "attack")
            comp.add_column(header, justify="left" if text else "right", no_wrap=text)
        for line in lines:
            comp.add_row(*line)
        tables.append(comp)
    return tables


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(md_text(c) for c in r) + " |" for r in rows]
    return out


def clever_markdown(report: dict[str, Any]) -> str:
    """Markdown of the ``clever`` section (empty string without one)."""
    section = report.get("clever")
    if not section:
        return ""
    cfg = section.get("config") or {}
    radius = ", ".join(f"{k} {v:g}" for k, v in (cfg.get("radius") or {}).items())
    lines = ["", f"**CLEVER** ({cfg.get('nb_batches')} batches x {cfg.get('batch_size')} points per input, "
             f"radius {radius}; poor fit: KS p < {cfg.get('poor_fit_p')})", ""]
    lines += _md_table([h for _, h in ROW_COLUMNS], [row_cells(r) for r in section.get("rows") or []])
    comp = compare_rows(section)
    if comp:
        lines += ["", "**CLEVER vs attacks** (violation: CLEVER score above a distortion an attack found)", ""]
        lines += _md_table([h for _, h in COMPARE_COLUMNS], comp)
    corr = correlation_lines(section)
    if corr:
        lines += [""] + [f"- {c}" for c in corr]
    return "\n".join(lines) + "\n"


def clever_html(report: dict[str, Any]) -> str:
    """HTML of the ``clever`` section: the score table, the comparison table, the correlations."""
    section = report.get("clever")
    if not section:
        return ""

    def table(headers: list[str], rows: list[list[str]], n_text: int) -> str:
        head = "".join(f'<th class="{"l" if i < n_text else ""}">{escape(h)}</th>' for i, h in enumerate(headers))
        body = "".join("<tr>" + "".join(f'<td class="{"l" if i < n_text else ""}">{escape(c)}</td>'
                                        for i, c in enumerate(r)) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    parts = ["<h2>CLEVER</h2>",
             "<p>CLEVER estimates a lower bound on the minimal adversarial distortion from the local Lipschitz "
             "constant (reverse Weibull fit of sampled gradient-norm maxima). Inputs whose fit is poor are "
             "counted, not hidden.</p>",
             table([h for _, h in ROW_COLUMNS], [row_cells(r) for r in section.get("rows") or []], 3)]
    comp = compare_rows(section)
    if comp:
        parts += ["<h3>CLEVER vs minimal distortion found by attacks</h3>",
                  table([h for _, h in COMPARE_COLUMNS], comp, 4)]
    corr = correlation_lines(section)
    if corr:
        parts.append("<ul>" + "".join(f"<li>{escape(c)}</li>" for c in corr) + "</ul>")
    return "".join(parts)
