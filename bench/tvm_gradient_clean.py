"""Clean accuracy under every defence stack with TVM following ART's gradient (the default) and the
exact gradient (``tvm.gradient=exact``, the default until December 2026), on the study grids' slices.

For each model it runs ``robaudit defend eval`` (all combinations, a one-step FGSM under transfer
only, since only the ``defences`` section is read) once per gradient, with the grids' ``-n`` and
``--seed``, and ART's own ``TotalVarMin`` (fed channels-last) on the same sampled inputs, ``--art-draws``
times, as the reference for the ``tvm`` stack.

    python bench/tvm_gradient_clean.py | tee bench/results/defend/tvm-gradient-clean-accuracy.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robaudit.data import select  # noqa: E402
from robaudit.engine.session import InputOptions, load_inputs  # noqa: E402

ART = ROOT / "artifacts"
MODELS = {  # name: (model, data, samples, seed, eps) as in profiles/defend-study-{mnist,cifar10}.yaml
    "lenet5-clean": (ART / "mnist_lenet5_clean.pt", ART / "mnist_test.npz", 200, 0, "0.3"),
    "lenet5-adv": (ART / "mnist_lenet5_adv.pt", ART / "mnist_test.npz", 200, 0, "0.3"),
    "resnet20": (ART / "cifar10_resnet20.pt", ART / "cifar10_exact761.npz", 200, 0, "0.0313725"),
}


def stack_accuracies(model: Path, data: Path, n: int, seed: int, eps: str, gradient: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "robaudit", "defend", "eval", str(model), "--data", str(data),
               "--defences", "all-combinations", "--threat-model", "transfer", "--attack", "fgsm", "--eps", eps,
               "-n", str(n), "--seed", str(seed), "--defence-param", f"tvm.gradient={gradient}",
               "--format", "none", "-q", "--out", tmp]
        subprocess.run(cmd, check=True, cwd=ROOT)
        report = json.loads((Path(tmp) / "report.json").read_text())
    return {"+".join(e["defences"]) or "none": e["clean_accuracy"] for e in report["defences"]}


def art_tvm_accuracy(model: Path, data: Path, n: int, seed: int, draws: int) -> list[float]:
    from art.defences.preprocessor import TotalVarMin as ArtTVM

    inputs = load_inputs(InputOptions(model=str(model), data=str(data), device="cpu"))
    idx = select(inputs.data, n, seed)
    x = torch.from_numpy(inputs.data.x[idx]).float()
    y = torch.from_numpy(inputs.data.y[idx]).long()
    lo, hi = inputs.model.clip
    x_nhwc = ((x - lo) / (hi - lo)).permute(0, 2, 3, 1).numpy()
    np.random.seed(seed)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tvm = ArtTVM(clip_values=(0.0, 1.0))
        for _ in range(draws):
            z = torch.from_numpy(tvm(x_nhwc)[0]).permute(0, 3, 1, 2) * (hi - lo) + lo
            out.append((inputs.model.predict(z).argmax(1) == y).float().mean().item())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--art-draws", type=int, default=3)
    args = ap.parse_args()
    print("# TVM's gradient and the clean accuracy it costs\n")
    print("From `python bench/tvm_gradient_clean.py`: clean accuracy of each stack on the study grids' "
          "samples (`defend eval`, the same `-n` and `--seed` as `profiles/defend-study-*.yaml`), with TVM "
          "following ART's gradient (`art`, the default) and the exact one (`exact`, the default until "
          "December 2026, which the grids in `docs/defend.md` used). `ART` is ART's own TotalVarMin on "
          f"the same inputs (mean of {args.art_draws} mask draws, range in brackets).\n")
    for name in args.models.split(","):
        model, data, n, seed, eps = MODELS[name]
        if not (model.exists() and data.exists()):
            print(f"{name}: skipped ({model.name} or {data.name} not in artifacts/; run scripts/export_shared.py)\n")
            continue
        acc = {g: stack_accuracies(model, data, n, seed, eps, g) for g in ("art", "exact")}
        art = art_tvm_accuracy(model, data, n, seed, args.art_draws)
        print(f"## {name} ({model.name}, {n} inputs, seed {seed})\n")
        print("| stack | art (default) | exact | ART's TotalVarMin |")
        print("|---|---|---|---|")
        for stack in acc["art"]:
            ref = (f"{100 * np.mean(art):.1f}% [{100 * min(art):.1f}..{100 * max(art):.1f}]"
                   if stack == "tvm" else "")
            print(f"| {stack} | {100 * acc['art'][stack]:.1f}% | {100 * acc['exact'][stack]:.1f}% | {ref} |")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
