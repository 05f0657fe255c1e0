"""Export the pretrained models and data in ``../shared`` to ``artifacts/`` (git-ignored).

Writes, into ``artifacts/``:

* TorchScript models (``torch.jit.script``, eval mode, input float32 NCHW in [0, 1],
  normalisation inside, output logits (N, 10)):
  ``mnist_lenet5_clean.pt``, ``mnist_lenet5_adv.pt``, ``mnist_cnn_a_adv.pt``,
  ``cifar10_resnet20.pt``, ``cifar10_resnet56.pt``, ``cifar10_cnn_a_adv.pt``.
* ONNX (opset 17, dynamic batch; see ``scripts/ONNX_NOTES.md``):
  ``mnist_lenet5_clean.onnx``, ``cifar10_resnet20.onnx``.
* Data: ``mnist_test.npz`` (all 10000 MNIST test images) and ``cifar10_exact761.npz``
  (the 761 exact CIFAR-10 test images); keys ``x`` uint8 NHWC and ``y`` int64.
* ``cifar10_train13k.npz``: a CIFAR-10 training set for ``robaudit defend train`` that never
  touches the 761 evaluation images: the 3805 exact training images plus the lossy JPEG copies of
  test images 761..9999 (13044 images; the demo CIFAR CNN was trained on the same split).

Each exported file is reloaded and its clean accuracy printed (MNIST models on the full
MNIST test set, CIFAR models on the 761 exact test images); each ONNX file is checked
against the torch model with onnxruntime and onnx2torch (max abs logit diff <= 1e-4).

    python scripts/export_shared.py [--shared ../shared] [--out artifacts]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import architectures as A  # noqa: E402
from onnx_export import export_onnx, verify_onnx  # noqa: E402
from shared_data import (  # noqa: E402
    CIFAR_EXACT_N,
    DEFAULT_SHARED,
    REPO_ROOT,
    load_cifar_exact_test,
    load_cifar_exact_train,
    load_cifar_jpeg_test,
    load_mnist,
    to_tensor_nchw,
)


@dataclass(frozen=True)
class Spec:
    name: str
    weights: str
    build: Callable[[], torch.nn.Module]
    dataset: str  # "mnist" or "cifar10"
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    onnx: bool
    expected: float  # documented clean accuracy, for the printout


SPECS = [
    Spec("mnist_lenet5_clean", "mnist-lenet5/mnist_lenet5_clntrained.pt", A.LeNet5, "mnist", None, None, True, 0.984),
    Spec("mnist_lenet5_adv", "mnist-lenet5/mnist_lenet5_advtrained.pt", A.LeNet5, "mnist", None, None, False, 0.980),
    Spec("mnist_cnn_a_adv", "mnist-cnn-a-adv/mnist_cnn_a_adv.model", A.cnn_a_mnist, "mnist", None, None, False, 0.95),
    Spec("cifar10_resnet20", "cifar10-resnet20/resnet20-12fca82f.th", A.resnet20, "cifar10",
         A.CIFAR_RESNET_MEAN, A.CIFAR_RESNET_STD, True, 0.917),
    Spec("cifar10_resnet56", "cifar10-resnet56/resnet56-4bfd9763.th", A.resnet56, "cifar10",
         A.CIFAR_RESNET_MEAN, A.CIFAR_RESNET_STD, False, 0.934),
    Spec("cifar10_cnn_a_adv", "cifar10-cnn-a-adv/cifar_cnn_a_adv.model", A.cnn_a_cifar, "cifar10",
         A.CIFAR_CNN_A_MEAN, A.CIFAR_CNN_A_STD, False, 0.65),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: np.ndarray, bs: int = 500) -> float:
    pred = torch.cat([model(x[i : i + bs]).argmax(1) for i in range(0, x.shape[0], bs)]).numpy()
    return float((pred == y).mean())


def build(spec: Spec, shared: Path) -> torch.nn.Module:
    model = spec.build()
    model.load_state_dict(A.load_state_dict_file(str(shared / "weights" / spec.weights)), strict=True)
    if spec.mean is not None and spec.std is not None:
        model = A.with_normalization(model, spec.mean, spec.std)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="path to the shared folder")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "artifacts", help="output folder")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shared: Path = args.shared.resolve()
    out: Path = args.out
    if not (shared / "DATA.md").exists():
        print(f"error: {shared} does not look like the shared folder (no DATA.md)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    xm, ym = load_mnist(shared, "t10k")
    xc, yc = load_cifar_exact_test(shared)
    np.savez_compressed(out / "mnist_test.npz", x=xm, y=ym)
    np.savez_compressed(out / "cifar10_exact761.npz", x=xc, y=yc)
    x_tr, y_tr = load_cifar_exact_train(shared)
    x_jpeg, y_jpeg = load_cifar_jpeg_test(shared)
    x_tr, y_tr = np.concatenate([x_tr, x_jpeg[CIFAR_EXACT_N:]]), np.concatenate([y_tr, y_jpeg[CIFAR_EXACT_N:]])
    np.savez_compressed(out / "cifar10_train13k.npz", x=x_tr, y=y_tr)
    print(f"data: mnist_test.npz x{xm.shape} y{ym.shape}; cifar10_exact761.npz x{xc.shape} y{yc.shape}; "
          f"cifar10_train13k.npz x{x_tr.shape} y{y_tr.shape}")
    data = {"mnist": (to_tensor_nchw(xm), ym), "cifar10": (to_tensor_nchw(xc), yc)}

    summary: dict[str, dict[str, object]] = {}
    failures = 0
    for spec in SPECS:
        model = build(spec, shared)
        x, y = data[spec.dataset]
        pt = out / f"{spec.name}.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript deprecation notices
            scripted = torch.jit.script(model)
            torch.jit.save(scripted, str(pt))
            loaded = torch.jit.load(str(pt), map_location="cpu").eval()
        acc_eager = accuracy(model, x, y)
        acc = accuracy(loaded, x, y)
        with torch.no_grad():
            diff = float((loaded(x[:64]) - model(x[:64])).abs().max())
        entry: dict[str, object] = {
            "file": pt.name, "sha256": sha256(pt), "dataset": spec.dataset, "n_eval": int(len(y)),
            "clean_accuracy": acc, "input_shape": list(x.shape[1:]), "classes": 10,
            "mean": list(spec.mean) if spec.mean else None, "std": list(spec.std) if spec.std else None,
        }
        print(f"{spec.name:22s} torchscript acc={acc:.4f} (eager {acc_eager:.4f}, DATA.md ~{spec.expected:.3f}) "
              f"n={len(y)} script-vs-eager maxdiff={diff:.2e} size={pt.stat().st_size} B")
        if spec.onnx:
            onnx_path = export_onnx(model, x[:2].clone(), out / f"{spec.name}.onnx")
            try:
                diffs = verify_onnx(model, onnx_path, x[:37].clone(), atol=1e-4)
                ok = True
            except AssertionError as e:
                print(f"  ONNX CHECK FAILED: {e}")
                diffs, ok = {}, False
                failures += 1
            import onnxruntime as ort

            sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            xn = x.numpy()
            logits = np.concatenate([sess.run(None, {"input": xn[i : i + 500]})[0] for i in range(0, len(xn), 500)])
            acc_onnx = float((logits.argmax(1) == y).mean())
            print(f"  {onnx_path.name}: onnxruntime acc={acc_onnx:.4f} diffs={diffs} ok={ok} "
                  f"size={onnx_path.stat().st_size} B")
            entry["onnx"] = {"file": onnx_path.name, "sha256": sha256(onnx_path), "clean_accuracy": acc_onnx,
                             "max_abs_diff": diffs, "opset": 17}
        summary[spec.name] = entry

    (out / "manifest.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}/manifest.json; done in {time.time() - t0:.1f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
