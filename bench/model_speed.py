"""Forward and forward+backward throughput of the plain network against robaudit's faster copies.

``robaudit.models.fast`` gives every TorchScript model on the CPU a channels-last frozen copy for
passes that need an input gradient and a oneDNN inference copy for passes that do not. This
script loads each model twice (with the copies, and with them dropped), checks that logits and
input gradients agree on the measured batch, and prints images per second for both, interleaved
over several rounds (best round each: the machine is shared).

    python bench/model_speed.py                      # shared models (artifacts/) and the demo models
    python bench/model_speed.py --threads 2 --batch 200 > bench/results/model_speed.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robaudit.models.loader import load_model  # noqa: E402

MODELS = {
    "demo mnist_cnn": ROOT / "robaudit" / "demo" / "mnist_cnn.pt",
    "demo cifar10_cnn": ROOT / "robaudit" / "demo" / "cifar10_cnn.pt",
    "MNIST LeNet-5": ROOT / "artifacts" / "mnist_lenet5_clean.pt",
    "MNIST LeNet-5 (adv. trained)": ROOT / "artifacts" / "mnist_lenet5_adv.pt",
    "MNIST CNN-A (adv. trained)": ROOT / "artifacts" / "mnist_cnn_a_adv.pt",
    "CIFAR-10 ResNet-20": ROOT / "artifacts" / "cifar10_resnet20.pt",
    "CIFAR-10 ResNet-56": ROOT / "artifacts" / "cifar10_resnet56.pt",
    "CIFAR-10 CNN-A (adv. trained)": ROOT / "artifacts" / "cifar10_cnn_a_adv.pt",
}


def _fwd(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _fwd_bwd(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xr).logsumexp(1).sum(), xr)
    return g


def _rate(fn, model: torch.nn.Module, x: torch.Tensor, seconds: float) -> float:
    fn(model, x)
    reps, t = 0, time.perf_counter()
    while True:
        fn(model, x)
        reps += 1
        dt = time.perf_counter() - t
        if dt >= seconds:
            return reps * x.shape[0] / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0, help="timing window per measurement")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("# Plain network vs robaudit's faster copies (CPU)\n")
    print(f"`python bench/model_speed.py --batch {args.batch} --threads {args.threads}`: torch {torch.__version__}, "
          f"{platform.machine()}, {args.threads} thread(s), batch {args.batch}, best of {args.rounds} interleaved "
          f"rounds of {args.seconds:g} s each; images per second.\n")
    print("| model | forward plain | forward copy | ratio | fwd+bwd plain | fwd+bwd copy | ratio "
          "| max logit diff | grad rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, path in MODELS.items():
        if not path.exists():
            continue
        fast = load_model(path, device="cpu")
        plain = load_model(path, device="cpu", fast_copies=False)
        x = torch.rand((args.batch, *fast.info.input_shape), generator=torch.Generator().manual_seed(0))
        diff = float((_fwd(fast, x) - _fwd(plain, x)).abs().max())
        g_fast, g_plain = _fwd_bwd(fast, x), _fwd_bwd(plain, x)
        gdiff = float((g_fast - g_plain).norm() / g_plain.norm().clamp_min(1e-12))
        best: dict[tuple[str, str], float] = {}
        for _ in range(args.rounds):
            for kind, fn in (("fwd", _fwd), ("bwd", _fwd_bwd)):
                for which, m in (("plain", plain), ("fast", fast)):
                    r = _rate(fn, m, x, args.seconds)
                    best[(kind, which)] = max(best.get((kind, which), 0.0), r)
        f0, f1, b0, b1 = (best[("fwd", "plain")], best[("fwd", "fast")], best[("bwd", "plain")],
                          best[("bwd", "fast")])
        print(f"| {name} | {f0:.0f} | {f1:.0f} | {f1 / f0:.2f}x | {b0:.0f} | {b1:.0f} | {b1 / b0:.2f}x "
              f"| {diff:.1e} | {gdiff:.1e} |", flush=True)
        if fast.grad_copy is None or fast.infer_copy is None:
            print(f"|  ({name}: {fast.info.runtime}) |||||||||")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
