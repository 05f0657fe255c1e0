"""Tiny inline-SVG grouped bar charts (no plotting dependency)."""

from __future__ import annotations

from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")


def series_colour(index: int, count: int) -> str:
    """The colour of series ``index`` of ``count``: the palette while it lasts; beyond it (a defence
    grid has 45 series) hues a golden angle apart at three lightnesses, one colour per series."""
    if count <= len(PALETTE):
        return PALETTE[index]
    return f"hsl({index * 137.508 % 360:.1f},62%,{(38, 54, 70)[index % 3]}%)"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    import math

    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def grouped_bars(title: str, groups: list[str], series: list[str], values: dict[tuple[str, str], float | None],
                 *, y_max: float | None = None, percent: bool = False, y_label: str = "") -> str:
    """An SVG chart: one cluster of bars per group, one bar colour per series. ``None``: no bar, 'n/a'."""
    width_per_group = max(60, 26 * len(series) + 24)
    left, right, top, bottom = 56, 16, 40, 60
    plot_w = width_per_group * max(1, len(groups))
    plot_h = 220
    legend_h = 20 * ((len(series) + 2) // 3)
    width = max(left + plot_w + right, left + 200 * min(3, len(series)) + right, left + 8 * len(title))
    height = top + plot_h + bottom + legend_h
    present = [v for v in values.values() if v is not None]
    top_value = y_max if y_max is not None else _nice_max(max(present) if present else 1.0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
             'font-family="sans-serif" font-size="12">',
             f'<text x="{left}" y="20" font-size="14" font-weight="bold">{escape(title)}</text>']
    for i in range(5):
        frac = i / 4
        y = top + plot_h - frac * plot_h
        tick = frac * top_value
        label = f"{100 * tick:.0f}%" if percent else f"{tick:.3g}"
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{label}</text>')
    if y_label:
        parts.append(f'<text x="14" y="{top + plot_h / 2:.1f}" transform="rotate(-90 14 {top + plot_h / 2:.1f})" '
                     f'text-anchor="middle" fill="#555">{escape(y_label)}</text>')
    bar_w = 22
    for gi, group in enumerate(groups):
        gx = left + gi * width_per_group + (width_per_group - bar_w * len(series)) / 2
        for si, s in enumerate(series):
            v = values.get((group, s))
            x = gx + si * bar_w
            colour = series_colour(si, len(series))
            if v is None:
                parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h - 4}" text-anchor="middle" '
                             f'font-size="9" fill="#999">n/a</text>')
                continue
            h = max(0.0, min(1.0, v / top_value)) * plot_h if top_value > 0 else 0.0
            # one decimal, as the tables print it (12.5%, not a half-even 12%), dropped when it is 0
            shown = f"{f'{100 * v:.1f}'.removesuffix('.0')}%" if percent else f"{v:.3g}"
            parts.append(f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2}" height="{h:.1f}" '
                         f'fill="{colour}"><title>{escape(group)} / {escape(s)}: {shown}</title></rect>')
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h - h - 3:.1f}" text-anchor="middle" '
                         f'font-size="8">{shown}</text>')
        parts.append(f'<text x="{left + gi * width_per_group + width_per_group / 2:.1f}" y="{top + plot_h + 18}" '
                     f'text-anchor="middle">{escape(group)}</text>')
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>')
    for si, s in enumerate(series):
        lx = left + (si % 3) * 200
        ly = top + plot_h + 38 + 20 * (si // 3)
        parts.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{series_colour(si, len(series))}"/>')
        parts.append(f'<text x="{lx + 16}" y="{ly}">{escape(s)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def roc_chart(title: str, curves: list[tuple[str, list[float], list[float]]], *, size: int = 240) -> str:
    """An SVG ROC plot: one polyline per ``(name, fpr, tpr)`` curve, with the chance diagonal."""
    left, top, right, bottom = 48, 34, 12, 44
    legend_h = 16 * len(curves)
    width, height = left + size + right, top + size + bottom + legend_h
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
             'font-family="sans-serif" font-size="11">',
             f'<text x="{left}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="none" stroke="#333"/>']
    for i in range(5):
        frac = i / 4
        x = left + frac * size
        y = top + size - frac * size
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + size}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + size}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{frac:g}</text>')
        parts.append(f'<text x="{x:.1f}" y="{top + size + 14}" text-anchor="middle" fill="#555">{frac:g}</text>')
    parts.append(f'<line x1="{left}" y1="{top + size}" x2="{left + size}" y2="{top}" stroke="#bbb" '
                 'stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{left + size / 2:.1f}" y="{top + size + 30}" text-anchor="middle" fill="#555">'
                 'false-positive rate</text>')
    parts.append(f'<text x="12" y="{top + size / 2:.1f}" transform="rotate(-90 12 {top + size / 2:.1f})" '
                 'text-anchor="middle" fill="#555">detection rate</text>')
    for ci, (name, fpr, tpr) in enumerate(curves):
        colour = series_colour(ci, len(curves))
        pts = " ".join(f"{left + f * size:.1f},{top + size - t * size:.1f}" for f, t in zip(fpr, tpr))
        if pts:
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2">'
                         f'<title>{escape(name)}</title></polyline>')
        ly = top + size + bottom + 16 * ci
        parts.append(f'<rect x="{left}" y="{ly - 9}" width="12" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{left + 16}" y="{ly}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
