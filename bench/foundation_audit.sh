#!/usr/bin/env bash
# The foundation audit behind issue 2's closing note: every attack x every target setting on the
# shared MNIST LeNet-5 and CIFAR-10 ResNet-20, TorchScript and ONNX. Needs artifacts/ from
# scripts/export_shared.py. Reports (JSON + Markdown) land in bench/results/.
#
# On a 2-core CPU the query-heavy and per-image attacks (hopskipjump, shadow, jsma on 3072
# features) dominate: on ResNet-20 they run on the first N_HEAVY images, and hopskipjump runs
# HSJ_ITERS iterations (stated in each report's params). ONNX runs cover the attacks needed to
# show parity with TorchScript.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results
mkdir -p "$OUT"
N=${N:-200}
N_HEAVY=${N_HEAVY:-50}
HSJ=(--param "hopskipjump.max_iter=${HSJ_ITERS:-10}")
MNIST=(--data artifacts/mnist_test.npz --eps 0.3 --target all)
CIFAR=(--data artifacts/cifar10_exact761.npz --eps 0.0313725 --target all)
run() { local name=$1; shift; echo "== $name: robaudit attack $*" >&2
        /usr/bin/time -f "$name: %e s wall" robaudit attack "$@" -q --format markdown --out "$OUT/$name.json" > "$OUT/$name.md"; }
run lenet5_torchscript artifacts/mnist_lenet5_clean.pt "${MNIST[@]}" --attack all -n "$N" "${HSJ[@]}"
run lenet5_onnx artifacts/mnist_lenet5_clean.onnx "${MNIST[@]}" --attack fgsm,pgd,cw-l2,deepfool -n "$N"
run resnet20_torchscript artifacts/cifar10_resnet20.pt "${CIFAR[@]}" \
    --attack fgsm,bim,pgd,apgd,cw-l2,cw-linf,deepfool,universal -n "$N"
run resnet20_torchscript_heavy artifacts/cifar10_resnet20.pt "${CIFAR[@]}" \
    --attack jsma,hopskipjump,shadow -n "$N_HEAVY" "${HSJ[@]}"
run resnet20_onnx artifacts/cifar10_resnet20.onnx "${CIFAR[@]}" --attack fgsm,pgd,deepfool -n "$N"
