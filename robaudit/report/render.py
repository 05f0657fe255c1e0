"""Render report rows for people: rich tables for the terminal, Markdown for CI summaries."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from robaudit.report.clever_render import clever_markdown
from robaudit.report.markdown import md_text

COLUMNS = (
    ("attack", "attack"), ("target", "target"), ("budget", "budget"), ("n", "n"),
    ("success_rate", "success"), ("robust_accuracy", "robust acc"), ("l2_mean", "L2 mean"), ("l2_median", "L2 med"),
    ("linf_mean", "Linf mean"), ("linf_max", "Linf max"), ("seconds", "sec"),
    ("seconds_per_image", "s/img"), ("passes", "fwd/bwd per img"),
)
"""(key, header) of the rendered columns; distances are over successful examples, robust accuracy
is shown for untargeted fixed-budget rows (see :func:`shown_rows`)."""
RATES_NOTE = ("success: share of the correctly classified inputs the attack fooled (targeted: into the target "
              "class); robust acc (untargeted, fixed eps only): clean accuracy x (1 - success), the clean accuracy "
              "being the defence stack's own behind a stack")
"""How the two rates are defined, under the Markdown and HTML tables."""
L0_COLUMN = ("l0_mean", "L0 mean")
"""Mean number of input values changed (successful examples): shown when an L0 attack (JSMA) ran."""


def attack_columns(report: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """:data:`COLUMNS`, with :data:`L0_COLUMN` after Linf max when a row minimised L0 (JSMA)."""
    if any(r.get("norm") == "l0" for r in report.get("results", [])):
        i = [k for k, _ in COLUMNS].index("linf_max") + 1
        return COLUMNS[:i] + (L0_COLUMN,) + COLUMNS[i:]
    return COLUMNS


def fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("success_rate", "robust_accuracy"):
        return f"{100 * value:.1f}%"
    if key == "seconds":
        return f"{value:.1f}"
    if key == "seconds_per_image":
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def shown_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's result rows for display, each with ``robust_accuracy`` as the gates compute it
    (:func:`~robaudit.report.gates.row_metric`) on untargeted rows of fixed-budget attacks; ``None``
    on targeted rows and on minimisation attacks (no eps: their success rate is the measure)."""
    from robaudit.report.gates import row_metric

    out = []
    for row in report.get("results", []):
        fixed = row.get("eps") is not None and row.get("status") == "ok"
        out.append({**row, "robust_accuracy": row_metric(report, row, "robust_accuracy") if fixed else None})
    return out


def _derived(row: dict[str, Any], key: str) -> Any:
    if key == "attack":  # a profile's label (fgsm-b: {attack: fgsm}) names the cell, as gates do
        label, name = row.get("label"), row.get("attack")
        return f"{label} ({name})" if label and label != name else name
    if key == "budget":
        eps = row.get("eps")
        return f"{row.get('norm')}<={eps:.3g}" if eps is not None else f"min {row.get('norm')}"
    if key == "passes":
        fwd, bwd = row.get("forward_passes_per_image"), row.get("backward_passes_per_image")
        return "-" if fwd is None else f"{fwd:.0f}/{bwd:.0f}"
    if key == "defence":
        return stack_label(row.get("defences") or [], row.get("threat_model"))
    return row.get(key)


def stack_label(stack: list[str], threat: str | None = None) -> str:
    """``ss+jpeg (adaptive)``; ``none`` for the undefended model."""
    if not stack:
        return "none"
    return "+".join(stack) + (f" ({threat})" if threat and threat != "none" else "")


PARTIAL_WARNING = ("PARTIAL REPORT: its run was interrupted before every cell finished; the missing cells may be "
                   "the ones that matter, and every gate fails on it")


def split_warnings(report: dict[str, Any]) -> tuple[str | None, list[str]]:
    """:func:`report_warnings` as (the PARTIAL warning, shown above the table it qualifies, or None;
    the others)."""
    warnings = report_warnings(report)
    if report.get("partial") and warnings:
        return warnings[0], warnings[1:]
    return None, warnings


def report_warnings(report: dict[str, Any]) -> list[str]:
    """The report's warnings for display, led by :data:`PARTIAL_WARNING` when it is partial."""
    partial = []
    if report.get("partial"):
        missing = report.get("unfinished") or []
        partial = [PARTIAL_WARNING + (f" (not finished: {', '.join(map(str, missing))})" if missing else "")]
    return partial + [str(w) for w in report.get("warnings", [])]


def has_defences(report: dict[str, Any]) -> bool:
    return any(r.get("defences") for r in report.get("results", []))


def _columns(report: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The rendered columns: a defence column first when any row ran behind a defence stack."""
    columns = attack_columns(report)
    return ((("defence", "defence"),) + columns) if has_defences(report) else columns


def _cells(row: dict[str, Any], columns: tuple[tuple[str, str], ...] = COLUMNS) -> list[str]:
    n_head = 4 if columns[0][0] == "defence" else 3
    if row.get("status") != "ok":
        head = [fmt(k, _derived(row, k)) for k, _ in columns[:n_head]]
        # n is "-" (nothing was attacked); status and reason go where the success rate would be
        return head + ["-", f"{row.get('status')}: {row.get('reason')}"] + [""] * (len(columns) - n_head - 2)
    return [fmt(k, _derived(row, k)) for k, _ in columns]


WIDE_ONLY = ("l2_mean", "linf_max", "seconds", "passes")
"""Columns left out of the terminal table when it is narrower than ``WIDE_WIDTH``."""
WIDE_WIDTH = 120


def results_title(report: dict[str, Any]) -> str:
    """Model, data and clean accuracy: the title of the results table."""
    data = report.get("data", {})
    model = report.get("model", {})
    return (f"{model.get('path', '?')} on {data.get('path', '?')}: clean accuracy "
            f"{100 * float(data.get('clean_accuracy', 0.0)):.1f}%, {data.get('n_evaluated', '?')} correctly "
            f"classified inputs attacked ({data.get('n_dropped_misclassified', 0)} dropped)")


def results_table(report: dict[str, Any], width: int = 200) -> Table:
    title = results_title(report)
    reasons = dict.fromkeys(str(r.get("reason")) for r in report.get("results", []) if r.get("status") != "ok")
    table = Table(title=title, title_justify="left", caption="; ".join(reasons) or None, caption_justify="left")
    columns = _columns(report)
    n_head = 4 if columns[0][0] == "defence" else 3
    keep = [i for i, (key, _) in enumerate(columns) if width >= WIDE_WIDTH or key not in WIDE_ONLY]
    for i in keep:
        key, header = columns[i]
        text = key in ("defence", "attack", "target", "budget")
        table.add_column(header, justify="left" if text else "right", no_wrap=text)
    for row in shown_rows(report):
        cells = _cells(row, columns)
        if row.get("status") != "ok":  # a narrow column cannot hold the reason: status here, reason below
            table.add_row(*cells[:n_head], "-", str(row.get("status")), *[""] * (len(keep) - n_head - 2),
                          style="dim")
        else:
            table.add_row(*[cells[i] for i in keep])
    return table


def defences_table(report: dict[str, Any]) -> Table | None:
    """Clean accuracy under each defence stack and what it costs (``None`` without defences)."""
    entries = report.get("defences") or []
    if not entries:
        return None
    table = Table(title="Defence stacks: clean accuracy on the sampled inputs", title_justify="left")
    for header in DEFENCE_HEADERS:
        table.add_column(header, justify="left" if header == "defence" else "right")
    for e in entries:
        table.add_row(*_defence_cells(e))
    return table


DEFENCE_HEADERS = ("defence", "clean accuracy", "change", "correct / sampled", "randomised", "adaptive gradient")


def _defence_cells(e: dict[str, Any]) -> list[str]:
    change = e.get("clean_accuracy_change")
    return [stack_label(e.get("defences") or []), f"{100 * float(e.get('clean_accuracy', 0.0)):.1f}%",
            "-" if not e.get("defences") else f"{100 * float(change or 0.0):+.1f} pts",
            f"{e.get('n_correct')} / {e.get('n_selected')}",
            "yes" if e.get("randomized") else "no",
            e.get("adaptive_gradient") or ("-" if not e.get("defences") else "")]


def defences_markdown(report: dict[str, Any]) -> str:
    entries = report.get("defences") or []
    if not entries:
        return ""
    lines = ["", "**Defence stacks**: clean accuracy on the sampled inputs", "",
             "| " + " | ".join(DEFENCE_HEADERS) + " |", "|" + "---|" * len(DEFENCE_HEADERS)]
    lines += ["| " + " | ".join(md_text(c) for c in _defence_cells(e)) + " |" for e in entries]
    return "\n".join(lines) + "\n"


def _behind_stacks(report: dict[str, Any]) -> str:
    """The header's caveat when defended rows ran on fewer inputs than the undefended ones."""
    return (" (behind a defence stack, on those the stack still classifies correctly; see its clean accuracy)"
            if has_defences(report) else "")


def results_markdown(report: dict[str, Any]) -> str:
    data = report.get("data", {})
    model = report.get("model", {})
    lines = [
        f"### robaudit: `{model.get('path', '?')}`",
        "",
        f"Clean accuracy {100 * float(data.get('clean_accuracy', 0.0)):.1f}% on {data.get('n_selected', '?')} inputs; "
        + (f"attacks ran on the {data.get('n_evaluated', '?')} classified correctly{_behind_stacks(report)}. "
           if report.get("results") else f"{data.get('n_evaluated', '?')} classified correctly. ")
        + f"Seed {report.get('seed')}, "
        f"device {report.get('device')}." + (f" Model runtime: {model['runtime']}." if model.get("runtime") else ""),
        "",
    ]
    partial, warnings = split_warnings(report)
    if partial:  # above the numbers it qualifies, not below them
        lines += [f"> warning: {md_text(partial, cell=False)}", ""]
    if report.get("results"):  # a detect- or CLEVER-only audit has no attack rows: no empty table
        lines += ["| " + " | ".join(h for _, h in _columns(report)) + " |",
                  "|" + "|".join("---" for _ in _columns(report)) + "|"]
    for row in shown_rows(report):
        lines.append("| " + " | ".join(md_text(c) for c in _cells(row, _columns(report))) + " |")
    if report.get("results"):
        lines += ["", md_text(RATES_NOTE.capitalize(), cell=False) + "."]
    clever = clever_markdown(report)  # the clever section (robaudit clever, audit CLEVER cells), if any
    if clever:
        lines.append(clever.rstrip("\n"))
    for w in warnings:
        lines.append(f"\n> warning: {md_text(w, cell=False)}")
    return "\n".join(lines) + "\n"


DETECT_COLUMNS = (("attack", "attack"), ("cost", "score"), ("n_benign", "benign (held out)"), ("n_adversarial", "adversarial"),
                  ("auroc", "AUROC"), ("detection_rate", "detection rate"), ("fpr", "FPR"),
                  ("balanced_accuracy", "balanced accuracy"))
"""(key, header) of the detection rows' columns."""


def _detect_cells(row: dict[str, Any]) -> list[str]:
    out = []
    for key, _ in DETECT_COLUMNS:
        v = row.get(key)
        if key == "balanced_accuracy" and v is None and row.get("detection_rate") is not None \
                and row.get("fpr") is not None:  # a report from before it was stored
            v = (float(row["detection_rate"]) + 1.0 - float(row["fpr"])) / 2.0
        if key == "attack":
            text = f"{v} ({row.get('attack_name')})" if row.get("attack_name") not in (None, v) else str(v)
            out.append(f"{text} [{row['setup']}]" if row.get("setup") else text)
        elif key == "n_benign" and row.get("n_benign_test") is not None:
            out.append(f"{v} ({row['n_benign_test']})")
        elif key in ("detection_rate", "fpr", "accuracy", "balanced_accuracy") and v is not None:
            out.append(f"{100 * v:.1f}%")
        elif key == "auroc" and v is not None:
            out.append(f"{v:.3f}")
        else:
            out.append("-" if v is None else str(v))
    return out


def detection_caption(entry: dict[str, Any]) -> str:
    """What a detection cell's numbers are computed on (one sentence)."""
    if entry.get("status") != "ok":
        return f"{entry.get('status')}: {entry.get('reason')}"
    n = entry.get("n_benign")
    held = entry.get("n_benign_test")
    split = (f"thresholds fitted for {100 * float(entry.get('target_fpr') or 0):.0f}% FPR on {int(n) - int(held)} "
             f"even-indexed benign inputs, FPR measured on the other {held}, balanced accuracy the mean of the "
             "detection rate and 1 - FPR" if n is not None and held is not None else
             f"thresholds at {100 * float(entry.get('target_fpr') or 0):.0f}% target FPR")
    mis = entry.get("misclassified") or {}
    wrong = ("; the {} sampled benign input{} the model misclassifies (not in the FPR) flagged at: {}".format(
        mis["n"], "s" if mis["n"] != 1 else "", ", ".join(f"{k} {v:.3f}" for k, v in mis["flag_rate"].items()))
        if mis.get("n") and mis.get("flag_rate") else "")
    return (f"{n} benign inputs (AUROC over all of them); {split}; craft {entry.get('craft')} "
            f"(FGSM and BIM; other attacks run as configured){wrong}")


def detection_markdown(report: dict[str, Any]) -> str:
    """Markdown tables of the report's detection cells (empty when it has none)."""
    lines: list[str] = []
    for entry in report.get("detection") or []:
        lines += ["", f"**Detection** `{entry.get('cell_id')}`: {md_text(detection_caption(entry), cell=False)}", ""]
        if not entry.get("rows"):
            continue
        lines.append("| " + " | ".join(h for _, h in DETECT_COLUMNS) + " |")
        lines.append("|" + "|".join("---" for _ in DETECT_COLUMNS) + "|")
        for row in entry["rows"]:
            lines.append("| " + " | ".join(md_text(c) for c in _detect_cells(row)) + " |")
    return "\n".join(lines) + ("\n" if lines else "")


def detection_table(report: dict[str, Any]) -> Table | None:
    rows = [(e, r) for e in report.get("detection") or [] for r in e.get("rows", [])]
    if not rows:
        return None
    captions = [detection_caption(e) for e in report.get("detection") or [] if e.get("rows")]
    table = Table(title="Detection (A2D attack costs): AUROC, and rates at the fitted thresholds", title_justify="left",
                  caption="\n".join(captions), caption_justify="left")
    for key, header in DETECT_COLUMNS:
        table.add_column(header, justify="left" if key in ("attack", "cost") else "right")
    for _, row in rows:
        table.add_row(*_detect_cells(row), style=None if row.get("status") == "ok" else "dim")
    return table
