#!/usr/bin/env bash
# The foundation audit: every attack x every target setting on the shared MNIST LeNet-5 and the
# CIFAR-10 ResNet-20 (TorchScript and ONNX), 200 images each. Needs artifacts/ from
# scripts/export_shared.py. Reports land in bench/results/.
#
# HopSkipJump and Shadow are query/per-image heavy on a 2-core CPU: they run with a reduced
# iteration budget here (stated in each report's params).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results
mkdir -p "$OUT"
N=${N:-200}
HEAVY=(--param hopskipjump.max_iter=${HSJ_ITERS:-10})
run() { echo "== $*" >&2; /usr/bin/time -f "%e s wall" robaudit attack "$@" -q --format markdown; }
run artifacts/mnist_lenet5_clean.pt --data artifacts/mnist_test.npz --attack all --target all --eps 0.3 -n "$N" \
    "${HEAVY[@]}" --out "$OUT/lenet5_torchscript.json" > "$OUT/lenet5_torchscript.md"
run artifacts/mnist_lenet5_clean.onnx --data artifacts/mnist_test.npz --attack all --target all --eps 0.3 -n "$N" \
    "${HEAVY[@]}" --out "$OUT/lenet5_onnx.json" > "$OUT/lenet5_onnx.md"
run artifacts/cifar10_resnet20.pt --data artifacts/cifar10_exact761.npz --attack all --target all --eps 0.0313725 -n "$N" \
    "${HEAVY[@]}" --out "$OUT/resnet20_torchscript.json" > "$OUT/resnet20_torchscript.md"
run artifacts/cifar10_resnet20.onnx --data artifacts/cifar10_exact761.npz --attack all --target all --eps 0.0313725 -n "$N" \
    "${HEAVY[@]}" --out "$OUT/resnet20_onnx.json" > "$OUT/resnet20_onnx.md"
