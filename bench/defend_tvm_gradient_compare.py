"""The TVM rows of a study grid (exact-gradient TVM) against their rerun with ART's gradient.

    python bench/defend_tvm_gradient_compare.py > bench/results/defend/tvm-gradient-rerun.md

Reads ``bench/results/defend/study-lenet5-{clean,adv}-rerun/report.json`` (the grids in
``docs/defend.md``) and ``tvm-gradient-rerun-lenet5-{clean,adv}/report.json``
(``bench/defend_tvm_gradient_rerun.yaml``: the same seed, samples, EOT and attack budgets) and prints,
per cell present in both, the success rate on each side with its number of inputs, and per stack the
clean accuracy. Untargeted robust accuracy = clean accuracy x (1 - success rate).
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "defend"
PAIRS = {"lenet5-clean": ("study-lenet5-clean-rerun", "tvm-gradient-rerun-lenet5-clean"),
         "lenet5-adv": ("study-lenet5-adv-rerun", "tvm-gradient-rerun-lenet5-adv")}


def key(row: dict) -> tuple[str, str, str, str]:
    return (row["attack"], row["target"], "+".join(row.get("defences") or []) or "none", row.get("threat_model") or "")


def main() -> int:
    print("# TVM rows with ART's gradient (the default) against the exact gradient of the study grids\n")
    print(__doc__.split("\n\n", 2)[2].strip().replace("\n", " ") + "\n")
    for name, (old_dir, new_dir) in PAIRS.items():
        old_path, new_path = RESULTS / old_dir / "report.json", RESULTS / new_dir / "report.json"
        if not (old_path.exists() and new_path.exists()):
            print(f"{name}: skipped ({old_path.name} or the rerun is missing)\n")
            continue
        old, new = json.loads(old_path.read_text()), json.loads(new_path.read_text())
        clean_old = {"+".join(e["defences"]) or "none": e["clean_accuracy"] for e in old.get("defences", [])}
        clean_new = {"+".join(e["defences"]) or "none": e["clean_accuracy"] for e in new.get("defences", [])}
        print(f"## {name}\n")
        print("| stack | clean accuracy, exact | clean accuracy, ART's gradient |")
        print("|---|---|---|")
        for stack in clean_new:
            print(f"| {stack} | {100 * clean_old.get(stack, float('nan')):.1f}% | {100 * clean_new[stack]:.1f}% |")
        print()
        old_rows = {key(r): r for r in old["results"] if r.get("status") == "ok"}
        print("| attack | target | stack | threat | success, exact (n) | success, ART's gradient (n) | "
              "robust acc., exact | robust acc., ART's gradient |")
        print("|---|---|---|---|---|---|---|---|")
        for r in new["results"]:
            k = key(r)
            o = old_rows.get(k)
            if o is None or r.get("status") != "ok":
                continue
            robust = ("", "")
            if k[1] == "untargeted":
                robust = (f"{100 * clean_old[k[2]] * (1 - o['success_rate']):.1f}%",
                          f"{100 * clean_new[k[2]] * (1 - r['success_rate']):.1f}%")
            print(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {100 * o['success_rate']:.1f}% ({o['n']}) | "
                  f"{100 * r['success_rate']:.1f}% ({r['n']}) | {robust[0]} | {robust[1]} |")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
