"""Build the small, self-contained demo fixtures shipped in ``robaudit/demo/``.

Reads the real data in ``../shared`` (see ``../shared/DATA.md``); deterministic (fixed seeds,
single process; bit-exact results also assume the same torch version and thread count).
Runs in a few minutes on 2 CPU cores.

Outputs (``robaudit/demo/``):

* ``mnist_demo.npz``  : the first 1000 MNIST test images (t10k), x uint8 (N,28,28,1), y int64.
* ``cifar10_demo.npz``: the first 500 of the 761 *exact* CIFAR-10 test images, x uint8
  (N,32,32,3), y int64.
* ``mnist_cnn.pt`` / ``mnist_cnn.onnx``: a small CNN trained on the 60000 MNIST training images.
* ``cifar10_cnn.pt``: a small CNN with mean/std normalisation inside the model.
* ``README.md`` and ``manifest.json`` (sha256 of each file, clean accuracy, shapes, mean/std).

Train/evaluation separation for the CIFAR-10 model: it is trained on

1. the 3805 exact CIFAR-10 *training* images (first 761 of each of the five training batches),
2. the lossy-JPEG CIFAR-10 *test* images with index >= 761 (9239 images),

and evaluated on exact test images 0..499, which are disjoint from both training sources
(test indices 0..760 are never used for training). The MNIST model is trained only on the
MNIST training set and evaluated on the first 1000 test images.

    python scripts/build_demo.py [--shared ../shared] [--out robaudit/demo] [--cifar-epochs 6]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import architectures as A  # noqa: E402
from onnx_export import export_onnx, verify_onnx  # noqa: E402
from shared_data import (  # noqa: E402
    CIFAR_EXACT_N,
    DEFAULT_SHARED,
    REPO_ROOT,
    cifar_label_names,
    load_cifar_exact_test,
    load_cifar_exact_train,
    load_cifar_jpeg_test,
    load_mnist,
    to_tensor_nchw,
)

MNIST_N = 1000
CIFAR_N = 500
# Usual CIFAR-10 training-set channel statistics (pixel space [0, 1]).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
MNIST_CLASSES = [str(i) for i in range(10)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: np.ndarray, bs: int = 500) -> float:
    model.eval()
    pred = torch.cat([model(x[i : i + bs]).argmax(1) for i in range(0, x.shape[0], bs)]).numpy()
    return float((pred == y).mean())


def augment(x: torch.Tensor, rng: np.random.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip of an NCHW batch."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    flip = rng.random(n) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = xp[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def train(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    aug: bool,
    eval_fn=None,
) -> None:
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    for ep in range(epochs):
        model.train()
        t0 = time.time()
        perm = torch.from_numpy(rng.permutation(len(x)))
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            xb, yb = x[idx], y[idx]
            if aug:
                xb = augment(xb, rng)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(idx)
        msg = f"  epoch {ep + 1}/{epochs}: loss {loss_sum / total:.4f} train-acc {correct / total:.4f}"
        if eval_fn is not None:
            msg += f" eval-acc {eval_fn():.4f}"
        print(msg + f" ({time.time() - t0:.0f}s)", flush=True)
    model.eval()


def save_torchscript(model: torch.nn.Module, path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript deprecation notices
        scripted = torch.jit.script(model.eval())
        torch.jit.save(scripted, str(path))
        return torch.jit.load(str(path), map_location="cpu").eval()


README = """# Demo fixtures

Small real data and models so that robaudit's demo and default test suite run without
`../shared`. Rebuild with `python scripts/build_demo.py` (deterministic, a few minutes on
2 CPU cores; needs `../shared`). Hashes and metadata are in `manifest.json`.

| file | what |
|---|---|
| `mnist_demo.npz` | first {mnist_n} MNIST test images (t10k, official order); `x` uint8 (N,28,28,1) NHWC, `y` int64 |
| `cifar10_demo.npz` | first {cifar_n} CIFAR-10 test images (official order, exact pixels); `x` uint8 (N,32,32,3) NHWC, `y` int64 |
| `mnist_cnn.pt` | TorchScript small CNN (conv16-conv32-fc64-fc10), input float32 (N,1,28,28) in [0,1], no normalisation, output logits (N,10) |
| `mnist_cnn.onnx` | the same model as ONNX (opset 17, dynamic batch, input `input`, output `logits`) |
| `cifar10_cnn.pt` | TorchScript small CNN (3 conv+BN blocks, linear), input float32 (N,3,32,32) in [0,1]; normalisation with mean {cmean} / std {cstd} is inside the model; output logits (N,10) |

## Clean accuracy (measured by `build_demo.py`)

- `mnist_cnn.pt` on `mnist_demo.npz` ({mnist_n} images): **{mnist_acc:.1%}** (ONNX via onnxruntime: {mnist_onnx_acc:.1%})
- `cifar10_cnn.pt` on `cifar10_demo.npz` ({cifar_n} images): **{cifar_acc:.1%}**

## Provenance and training

- MNIST model: trained on the 60000 MNIST training images ({mnist_epochs} epochs, Adam); never saw test images.
- CIFAR-10 model: trained ({cifar_epochs} epochs, Adam, random crop + flip) on the 3805 exact CIFAR-10
  training images available (first 761 of each training batch) plus the lossy-JPEG copies of the
  CIFAR-10 test images with index >= 761. The evaluation images (test indices 0..{cifar_last}) are
  disjoint from all training data.
- The CIFAR-10 model is deliberately small and weak: it exists to exercise attacks quickly,
  not to be a good classifier.

## Licences

- MNIST: Yann LeCun, Corinna Cortes, Christopher J.C. Burges; CC BY-SA 3.0.
- CIFAR-10: Alex Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009.
- The models were trained here from scratch on the data above.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="path to the shared folder")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "robaudit" / "demo", help="output folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mnist-epochs", type=int, default=2)
    ap.add_argument("--cifar-epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shared: Path = args.shared.resolve()
    out: Path = args.out
    if not (shared / "DATA.md").exists():
        print(f"error: {shared} does not look like the shared folder (no DATA.md)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    # ------------------------------------------------------------------ data fixtures
    xm_test, ym_test = load_mnist(shared, "t10k")
    xm_demo, ym_demo = xm_test[:MNIST_N], ym_test[:MNIST_N]
    np.savez_compressed(out / "mnist_demo.npz", x=xm_demo, y=ym_demo)
    xc_exact, yc_exact = load_cifar_exact_test(shared)
    xc_demo, yc_demo = xc_exact[:CIFAR_N], yc_exact[:CIFAR_N]
    np.savez_compressed(out / "cifar10_demo.npz", x=xc_demo, y=yc_demo)
    print(f"data: mnist_demo {xm_demo.shape} cifar10_demo {xc_demo.shape}", flush=True)

    # ------------------------------------------------------------------ MNIST CNN
    torch.manual_seed(args.seed)
    xm_train, ym_train = load_mnist(shared, "train")
    xmt, ymt = to_tensor_nchw(xm_train), torch.from_numpy(ym_train)
    xmd = to_tensor_nchw(xm_demo)
    mnist_model = A.DemoMnistCNN()
    print(f"training MNIST CNN on {len(xmt)} images", flush=True)
    train(mnist_model, xmt, ymt, epochs=args.mnist_epochs, batch_size=128, lr=3e-3, seed=args.seed, aug=False,
          eval_fn=lambda: accuracy(mnist_model, xmd, ym_demo))
    mnist_ts = save_torchscript(mnist_model, out / "mnist_cnn.pt")
    mnist_acc = accuracy(mnist_ts, xmd, ym_demo)
    onnx_path = export_onnx(mnist_model, xmd[:2].clone(), out / "mnist_cnn.onnx")
    diffs = verify_onnx(mnist_model, onnx_path, xmd[:37].clone(), atol=1e-4)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    mnist_onnx_acc = float((sess.run(None, {"input": xmd.numpy()})[0].argmax(1) == ym_demo).mean())
    print(f"mnist_cnn.pt acc on {MNIST_N} demo images: {mnist_acc:.4f}; onnx acc {mnist_onnx_acc:.4f}; "
          f"onnx diffs {diffs}", flush=True)
    if mnist_acc < 0.98:
        print("warning: MNIST demo model below 98% clean accuracy", file=sys.stderr)

    # ------------------------------------------------------------------ CIFAR-10 CNN
    torch.manual_seed(args.seed)
    x_tr_exact, y_tr_exact = load_cifar_exact_train(shared)
    x_jpeg, y_jpeg = load_cifar_jpeg_test(shared)
    x_tr = np.concatenate([x_tr_exact, x_jpeg[CIFAR_EXACT_N:]])
    y_tr = np.concatenate([y_tr_exact, y_jpeg[CIFAR_EXACT_N:]])
    xct, yct = to_tensor_nchw(x_tr), torch.from_numpy(y_tr)
    xcd = to_tensor_nchw(xc_demo)
    cifar_model = A.NormalizedModel(A.DemoCifarCNN(), CIFAR_MEAN, CIFAR_STD)
    print(f"training CIFAR-10 CNN on {len(xct)} images ({len(x_tr_exact)} exact train + "
          f"{len(x_jpeg) - CIFAR_EXACT_N} JPEG test[761:])", flush=True)
    train(cifar_model, xct, yct, epochs=args.cifar_epochs, batch_size=128, lr=3e-3, seed=args.seed, aug=True,
          eval_fn=lambda: accuracy(cifar_model, xcd, yc_demo))
    cifar_ts = save_torchscript(cifar_model, out / "cifar10_cnn.pt")
    cifar_acc = accuracy(cifar_ts, xcd, yc_demo)
    cifar_acc_rest = accuracy(cifar_ts, to_tensor_nchw(xc_exact[CIFAR_N:]), yc_exact[CIFAR_N:])
    print(f"cifar10_cnn.pt acc on {CIFAR_N} demo images: {cifar_acc:.4f} "
          f"(on the other {len(xc_exact) - CIFAR_N} exact test images: {cifar_acc_rest:.4f})", flush=True)

    # ------------------------------------------------------------------ README + manifest
    (out / "README.md").write_text(README.format(
        mnist_n=MNIST_N, cifar_n=CIFAR_N, cifar_last=CIFAR_N - 1,
        cmean=tuple(CIFAR_MEAN), cstd=tuple(CIFAR_STD),
        mnist_acc=mnist_acc, mnist_onnx_acc=mnist_onnx_acc, cifar_acc=cifar_acc,
        mnist_epochs=args.mnist_epochs, cifar_epochs=args.cifar_epochs,
    ))
    cifar_names = cifar_label_names(shared)
    meta: dict[str, dict[str, object]] = {
        "mnist_demo.npz": {"kind": "dataset", "n": MNIST_N, "x_shape": list(xm_demo.shape), "layout": "NHWC",
                           "dtype": "uint8", "classes": MNIST_CLASSES,
                           "source": "MNIST t10k images 0..999", "licence": "CC BY-SA 3.0"},
        "cifar10_demo.npz": {"kind": "dataset", "n": CIFAR_N, "x_shape": list(xc_demo.shape), "layout": "NHWC",
                             "dtype": "uint8", "classes": cifar_names,
                             "source": "CIFAR-10 test images 0..499 (exact)", "licence": "Krizhevsky 2009"},
        "mnist_cnn.pt": {"kind": "model", "format": "torchscript", "input_shape": [1, 28, 28], "classes": 10,
                         "clip": [0.0, 1.0], "mean": None, "std": None, "eval_data": "mnist_demo.npz",
                         "clean_accuracy": mnist_acc},
        "mnist_cnn.onnx": {"kind": "model", "format": "onnx", "opset": 17, "input_shape": [1, 28, 28],
                           "classes": 10, "clip": [0.0, 1.0], "mean": None, "std": None,
                           "eval_data": "mnist_demo.npz", "clean_accuracy": mnist_onnx_acc},
        "cifar10_cnn.pt": {"kind": "model", "format": "torchscript", "input_shape": [3, 32, 32], "classes": 10,
                           "clip": [0.0, 1.0], "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD),
                           "eval_data": "cifar10_demo.npz", "clean_accuracy": cifar_acc},
        "README.md": {"kind": "doc"},
    }
    files = {}
    for name, m in meta.items():
        p = out / name
        files[name] = {"sha256": sha256(p), "bytes": p.stat().st_size, **m}
    manifest = {"manifest_version": 1, "generator": "scripts/build_demo.py", "seed": args.seed,
                "torch": torch.__version__, "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    for name, f in files.items():
        print(f"  {name:18s} {f['bytes']:>9d} B  {f['sha256'][:16]}")
    print(f"total {total} B in {out}; done in {time.time() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
