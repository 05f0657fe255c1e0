"""One table from the foundation audit's reports (``bench/foundation_audit.sh``).

Per model file and format: every (attack, target) row with its backend, images, success rate,
median L2/Linf of successful examples, seconds and seconds per image, and the parameters that
differ from the attack's documented defaults. Also checks each report against the JSON Schema.

    python bench/foundation_summary.py > bench/results/foundation_summary.md
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robaudit.attacks.registry import AttackName, get_attack_class  # noqa: E402
from robaudit.report.schema import validation_errors  # noqa: E402

RESULTS = ROOT / "bench" / "results"
REPORTS = ["lenet5_torchscript", "lenet5_hopskipjump", "lenet5_shadow_universal", "lenet5_universal_torch", "lenet5_onnx", "resnet20_gradient", "resnet20_onnx",
           "resnet20_cw", "resnet20_shadow_universal", "resnet20_universal_torch", "resnet20_jsma", "resnet20_hopskipjump"]


def changed_params(row: dict) -> str:
    cls = get_attack_class(AttackName(row["attack"]), row.get("backend", "torch"))
    defaults = dataclasses.asdict(cls.Params())
    diff = {k: v for k, v in (row.get("params") or {}).items() if k in defaults and defaults[k] != v}
    return ", ".join(f"{k}={v}" for k, v in sorted(diff.items()))


def fmt(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def main() -> int:
    print("# Foundation audit: every attack x target setting\n")
    print("Reports from `bench/foundation_audit.sh` (seed 0, 2-core CPU shared with other jobs, so "
          "seconds are upper bounds). Success is over the correctly classified inputs; distances are "
          "medians over successful examples.\n")
    for name in REPORTS:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            print(f"## {name}: not run\n")
            continue
        rep = json.loads(path.read_text())
        errors = validation_errors(rep)
        m, d = rep["model"], rep["data"]
        print(f"## {name}: `{m['path']}` ({m['format']}, white-box {m['white_box']})\n")
        print(f"Data `{d['path']}`: clean accuracy {d['clean_accuracy']:.1%} on {d['n_selected']} sampled inputs, "
              f"attacks on the {d['n_evaluated']} classified correctly; report schema "
              f"{'valid' if not errors else 'INVALID: ' + '; '.join(errors[:3])}.\n")
        print("| attack | backend | target | budget | n | success | L2 med | Linf med | s | s/img | non-default params |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rep["results"]:
            budget = f"{r['norm']}<={r['eps']:.4g}" if r.get("eps") is not None else f"min {r['norm']}"
            if r.get("status") != "ok":
                print(f"| {r['attack']} | {r.get('backend', '')} | {r['target']} | {budget} | - | {r.get('status')} | | | | | |")
                continue
            print(f"| {r['attack']} | {r.get('backend', '')} | {r['target']} | {budget} | {r['n']} | "
                  f"{r['success_rate']:.1%} | {fmt(r.get('l2_median'))} | {fmt(r.get('linf_median'))} | "
                  f"{r['seconds']:.1f} | {fmt(r.get('seconds_per_image'))} | {changed_params(r)} |")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
