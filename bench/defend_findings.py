"""Summarise a defence-grid audit (e.g. profiles/defend-study-*.yaml) into the study's five findings.

    python bench/defend_findings.py OUT/report.json [OTHER/report.json ...]

Reads finished reports (or, for a run still going, the rows in ``OUT/journal.jsonl``) and prints, as
Markdown:

1. success per target setting (untargeted should be the easiest);
2. the drop in success each stack gives small-perturbation attacks (CW-L2, CW-Linf) and large ones
   (FGSM, PGD, Auto-PGD), under the transfer threat model (the study's setting) and the adaptive one;
3. the median L2 of successful examples per stack size (combinations widen the distance);
4. the lowest success of any stack, per model (adversarial training + pre-processing should be lowest);
5. how much of the transfer-setting gain the adaptive attack undoes.

Given several finished reports (e.g. a model and its adversarially trained copy), it ends with finding 4
across them: every (model, stack, threat model) ranked by mean success, with its clean accuracy and its
untargeted robust accuracy against the strongest fixed-budget attack (clean accuracy under the stack x
(1 - the highest success of FGSM, PGD and Auto-PGD)), since success counts only the inputs each
defended model classifies correctly and both adversarial training and pre-processing cost clean accuracy.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

SMALL = ("cw-l2", "cw-linf")
LARGE = ("fgsm", "pgd", "apgd")


def clean_by_stack(path: Path) -> dict[str, float]:
    """Clean accuracy per defence stack (``none`` included) of a finished report; empty for a journal."""
    if path.is_dir():
        path = path / "report.json"
    if not path.exists() or path.suffix != ".json":
        return {}
    report = json.loads(path.read_text())
    out = {"none": float(report["data"]["clean_accuracy"])}
    for e in report.get("defences") or []:
        out["+".join(e.get("defences") or []) or "none"] = float(e["clean_accuracy"])
    return out


def across_models(reports: list[tuple[str, list[dict[str, Any]], dict[str, float]]]) -> list[str]:
    """Finding 4 over several models: (model, stack, threat) by mean success, with robust accuracy."""
    entries = []
    for name, rows, clean in reports:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            if r.get("status") == "ok":
                groups[("+".join(r["defences"]) or "none", r.get("threat_model", "none"))].append(r)
        for (stack, threat), rs in groups.items():
            unt = [r["success_rate"] for r in rs if r["target"] == "untargeted" and r["attack"] in LARGE]
            robust = clean[stack] * (1 - max(unt)) if stack in clean and unt else None
            entries.append((_mean([r["success_rate"] for r in rs]) or 0.0, clean.get(stack), robust, name, stack,
                            threat))
    out = ["## Finding 4 across models", "",
           "| model | stack | threat model | mean success (all attacks, targets) | clean accuracy | "
           "untargeted robust accuracy (worst of FGSM, PGD, APGD) |", "|---|---|---|---|---|---|"]
    for success, clean_acc, robust, name, stack, threat in sorted(entries, key=lambda e: e[0]):
        out.append(f"| {name} | {stack} | {threat} | {_pct(success)} | {_pct(clean_acc)} | {_pct(robust)} |")
    return out + [""]


def load_rows(path: Path) -> tuple[str, list[dict[str, Any]]]:
    if path.is_dir():
        path = path / "report.json" if (path / "report.json").exists() else path / "journal.jsonl"
    if path.suffix == ".jsonl":
        rows = []
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if isinstance(rec, dict) and isinstance(rec.get("row"), dict):
                rows.append(rec["row"])
        return f"{path.parent.name} (journal, {len(rows)} cells so far)", rows
    report = json.loads(path.read_text())
    return str(report["model"]["path"]), report["results"]


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def summarise(name: str, rows: list[dict[str, Any]]) -> list[str]:
    ok = [r for r in rows if r.get("status") == "ok"]
    key = lambda r: ("+".join(r["defences"]) or "none", r.get("threat_model", "none"))  # noqa: E731
    out = [f"## {name}", ""]

    # 1. target settings
    per_target: dict[str, list[float]] = defaultdict(list)
    for r in ok:
        per_target[r["target"]].append(r["success_rate"])
    out.append("1. mean success per target setting over all attacks and stacks: "
               + ", ".join(f"{t} {_pct(_mean(v))}" for t, v in per_target.items()))

    # 2. small vs large perturbation attacks
    base = {(r["attack"], r["target"]): r["success_rate"] for r in ok if not r["defences"]}
    for threat in ("transfer", "adaptive"):
        drops: dict[str, list[float]] = {"small (cw-l2, cw-linf)": [], "large (fgsm, pgd, apgd)": []}
        for r in ok:
            if not r["defences"] or r.get("threat_model") != threat or (r["attack"], r["target"]) not in base:
                continue
            group = "small (cw-l2, cw-linf)" if r["attack"] in SMALL else "large (fgsm, pgd, apgd)" \
                if r["attack"] in LARGE else None
            if group:
                drops[group].append(base[(r["attack"], r["target"])] - r["success_rate"])
        out.append(f"2. {threat}: mean drop in success from pre-processing: "
                   + ", ".join(f"{g} {_pct(_mean(v))}" for g, v in drops.items()))

    # 3. distance vs number of stacked defences
    by_size: dict[int, list[float]] = defaultdict(list)
    for r in ok:
        if r.get("l2_median") is not None and r.get("threat_model") in ("none", "adaptive") and r["attack"] in SMALL:
            by_size[len(r["defences"])].append(r["l2_median"])
    out.append("3. median L2 of successful CW examples (adaptive) by number of stacked defences: "
               + ", ".join(f"{k}: {statistics.median(v):.3f}" for k, v in sorted(by_size.items())))

    # 4. per stack mean success
    per_stack: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in ok:
        per_stack[key(r)].append(r["success_rate"])
    ranked = sorted(((_mean(v) or 0.0, k) for k, v in per_stack.items()))
    out.append("4. mean success per stack (lowest first): "
               + "; ".join(f"{k[0]} ({k[1]}) {_pct(m)}" for m, k in ranked))

    # 5. adaptive vs transfer gain
    gains = []
    for r in ok:
        if r["defences"] and r.get("threat_model") == "transfer" and (r["attack"], r["target"]) in base:
            twin = next((a for a in ok if a["defences"] == r["defences"] and a.get("threat_model") == "adaptive"
                         and a["attack"] == r["attack"] and a["target"] == r["target"]), None)
            gain = base[(r["attack"], r["target"])] - r["success_rate"]
            if twin is not None and gain > 0.05:
                gains.append((gain, base[(r["attack"], r["target"])] - twin["success_rate"]))
    if gains:
        undone = [1 - (adaptive / transfer) for transfer, adaptive in gains]
        out.append(f"5. over {len(gains)} (stack, attack, target) cells where pre-processing cut transfer success "
                   f"by > 5 points: mean cut {_pct(_mean([g for g, _ in gains]))} under transfer, "
                   f"{_pct(_mean([a for _, a in gains]))} under adaptive; median share of the gain undone by the "
                   f"adaptive attack {_pct(statistics.median(undone))}")
    else:
        out.append("5. no cell where pre-processing cut transfer success by more than 5 points")
    out.append("")
    return out


def main(argv: list[str]) -> None:
    loaded = []
    for arg in argv:
        name, rows = load_rows(Path(arg))
        print("\n".join(summarise(name, rows)))
        loaded.append((name, rows, clean_by_stack(Path(arg))))
    if len(loaded) > 1:
        print("\n".join(across_models(loaded)))


if __name__ == "__main__":
    main(sys.argv[1:])
