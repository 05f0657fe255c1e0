#!/usr/bin/env bash
# The foundation audit behind issue 2's closing note: every attack x every target setting on the
# shared MNIST LeNet-5 and CIFAR-10 ResNet-20, TorchScript and ONNX, one report per attack so that
# finished work survives. Needs artifacts/ from scripts/export_shared.py. Reports (JSON +
# Markdown) land in bench/results/.
#
# Every attack runs at its documented defaults except where a row says otherwise: on the 2-core
# CPU the query-heavy HopSkipJump runs 10 iterations (not 40), on 20 ResNet-20 images; JSMA
# (3072 features, pair saliency) 50 ResNet-20 images. Each report's rows carry the parameters used
# and the backend (the *_shadow_universal reports stored in bench/results were made before the torch
# universal perturbation existed, so their universal rows are ART's; *_universal_torch are the torch
# one on the same images).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results
mkdir -p "$OUT"
MNIST=(--data artifacts/mnist_test.npz --eps 0.3 --target all)
CIFAR=(--data artifacts/cifar10_exact761.npz --eps 0.0313725 --target all)
# ONLY="name1 name2" runs just those reports.
run() { local name=$1; shift; if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
        echo "== $(date +%T) $name: robaudit attack $*" >&2
        /usr/bin/time -f "$name: %e s wall" robaudit attack "$@" -q --format markdown --out "$OUT/$name.json" > "$OUT/$name.md"; }
run lenet5_torchscript artifacts/mnist_lenet5_clean.pt "${MNIST[@]}" --attack fgsm,bim,pgd,apgd,cw-l2,cw-linf,deepfool,jsma -n 200
run lenet5_hopskipjump artifacts/mnist_lenet5_clean.pt "${MNIST[@]}" --attack hopskipjump -n 200 --param hopskipjump.max_iter=10
run lenet5_shadow_universal artifacts/mnist_lenet5_clean.pt "${MNIST[@]}" --attack shadow,universal -n 200
run lenet5_universal_torch artifacts/mnist_lenet5_clean.pt "${MNIST[@]}" --attack universal -n 200
run lenet5_onnx artifacts/mnist_lenet5_clean.onnx "${MNIST[@]}" --attack fgsm,pgd,cw-l2,deepfool -n 200
R=artifacts/cifar10_resnet20.pt
run resnet20_gradient $R "${CIFAR[@]}" --attack fgsm,bim,pgd,apgd,deepfool -n 200
run resnet20_onnx artifacts/cifar10_resnet20.onnx "${CIFAR[@]}" --attack fgsm,pgd,deepfool -n 200
run resnet20_cw $R "${CIFAR[@]}" --attack cw-l2,cw-linf -n 200
run resnet20_shadow_universal $R "${CIFAR[@]}" --attack shadow,universal -n 200
run resnet20_universal_torch $R "${CIFAR[@]}" --attack universal -n 200
run resnet20_jsma $R "${CIFAR[@]}" --attack jsma -n 50
run resnet20_hopskipjump $R "${CIFAR[@]}" --attack hopskipjump -n 20 --param hopskipjump.max_iter=10
