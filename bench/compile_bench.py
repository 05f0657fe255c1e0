"""Would ``torch.compile`` make attacks faster? Input-gradient throughput of one network three ways.

TorchScript models (robaudit's main input) cannot be compiled: torch refuses ScriptModules. The
ONNX path gives an eager ``torch.fx`` module (onnx2torch), which can. This script measures, on
the same images and batch:

- ``eager``: the onnx2torch module as converted;
- ``robaudit``: the model as robaudit runs it (``load_model``: the checked faster copies of
  ``robaudit.models.fast`` on a CPU);
- ``compiled``: ``torch.compile`` of the eager module (inductor, default mode), after its
  compilation, whose time is printed separately;
- ``bf16``: robaudit's model under ``torch.autocast`` in bfloat16 (mixed precision), with the
  share of gradient entries whose sign matches float32's (what a Linf step uses);

each as images x (forward + input backward) per second, best of interleaved rounds, and the
largest gradient difference against ``eager`` (the results must not change).

    python bench/compile_bench.py [--models lenet5-clean,resnet20] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attack_bench import sync  # noqa: E402  (bench/ is this script's folder)
from robaudit.data import load_dataset  # noqa: E402
from robaudit.models.loader import load_model  # noqa: E402

ART = ROOT / "artifacts"
MODELS = {
    "lenet5-clean": ("mnist_lenet5_clean.onnx", "mnist_test.npz"),
    "resnet20": ("cifar10_resnet20.onnx", "cifar10_exact761.npz"),
}


def grad_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xi), y), xi)
    return g


class Autocast(torch.nn.Module):
    """``model`` run under bfloat16 autocast, logits back in float32."""

    def __init__(self, model: torch.nn.Module, device: str) -> None:
        super().__init__()
        self.model, self.device_type = model, torch.device(device).type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.model(x).float()


def rate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    sync(x.device)
    t = time.perf_counter()
    for _ in range(steps):
        grad_pass(model, x, y)
    sync(x.device)
    return x.shape[0] * steps / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5-clean,resnet20")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    import onnx
    from onnx2torch import convert

    print(f"torch {torch.__version__}, device {args.device}, {args.threads} thread(s), batch {args.batch_size}, "
          f"images x (forward + input backward) / s, best of {args.rounds} interleaved rounds of {args.steps} steps")
    for key in args.models.split(","):
        mfile, dfile = MODELS[key]
        if not (ART / mfile).exists():
            print(f"missing {ART / mfile}: run python scripts/export_shared.py first", file=sys.stderr)
            return 2
        data = load_dataset(str(ART / dfile))
        x = torch.as_tensor(data.x[: args.batch_size]).float().to(args.device)
        eager = convert(onnx.load(str(ART / mfile))).eval().to(args.device)
        for p in eager.parameters():
            p.requires_grad_(False)
        ours = load_model(str(ART / mfile), device=args.device, data_shape=tuple(x.shape[1:]))
        with torch.no_grad():
            y = eager(x).argmax(1)
        t = time.perf_counter()
        compiled = torch.compile(eager)
        try:
            g_c = grad_pass(compiled, x, y)  # compiles forward and backward
            grad_pass(compiled, x, y)
        except Exception as exc:  # dynamo cannot trace every converted graph
            print(f"\n{key} ({mfile}): torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            continue
        compile_s = time.perf_counter() - t
        bf16 = Autocast(ours, args.device)
        g_e, g_o, g_b = grad_pass(eager, x, y), grad_pass(ours, x, y), grad_pass(bf16, x, y)
        best = {"eager": 0.0, "robaudit": 0.0, "compiled": 0.0, "bf16": 0.0}
        grads = {"eager": g_e, "robaudit": g_o, "compiled": g_c, "bf16": g_b}
        for _ in range(args.rounds):
            for name, model in (("eager", eager), ("robaudit", ours), ("compiled", compiled), ("bf16", bf16)):
                grad_pass(model, x, y)
                best[name] = max(best[name], rate(model, x, y, args.steps))
        scale = float(g_e.abs().max())
        print(f"\n{key} ({mfile}; robaudit runs: {ours.info.runtime or 'the converted module'})")
        print(f"  compile + first two passes: {compile_s:.1f} s")
        for name, r in best.items():
            g = grads[name]
            diff = float((g - g_e).abs().max()) / max(scale, 1e-30)
            sign = float((g.sign() == g_e.sign()).float().mean())
            print(f"  {name:9s} {r:8.0f} / s  {r / best['robaudit']:5.2f}x robaudit  grad diff {diff:.1e} of scale, "
                  f"same sign {sign:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
