#!/usr/bin/env bash
# The foundation audit behind issue 2's closing note: every attack x every target setting on the
# shared MNIST LeNet-5 and CIFAR-10 ResNet-20, TorchScript and ONNX, one report per attack so that
# finished work survives. Needs artifacts/ from scripts/export_shared.py. Reports (JSON +
# Markdown) land in bench/results/.
#
# On a 2-core CPU shared with other work the ResNet-20 grid runs with reduced iteration budgets
# (each report's rows carry the parameters used) and the query-heavy / per-image attacks
# (jsma on 3072 features, hopskipjump, shadow) on fewer images.
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
run lenet5_torchscript artifacts/mnist_lenet5_clean.pt "${MNIST[@]}" --attack all -n 200
run lenet5_onnx artifacts/mnist_lenet5_clean.onnx "${MNIST[@]}" --attack fgsm,pgd,cw-l2,deepfool -n 200
R=artifacts/cifar10_resnet20.pt
run resnet20_fgsm_pgd_bim_deepfool $R "${CIFAR[@]}" --attack fgsm,pgd,bim,deepfool -n 200 --param pgd.steps=10 --param bim.steps=10
run resnet20_onnx artifacts/cifar10_resnet20.onnx "${CIFAR[@]}" --attack fgsm,pgd -n 200 --param pgd.steps=10
run resnet20_cw_l2 $R "${CIFAR[@]}" --attack cw-l2 -n 200 --param cw-l2.binary_search_steps=5
run resnet20_apgd $R "${CIFAR[@]}" --attack apgd -n 200 --param apgd.n_iter=20
run resnet20_cw_linf $R "${CIFAR[@]}" --attack cw-linf -n 200 --param cw-linf.search_steps=6 --param cw-linf.max_iter=10
run resnet20_universal $R "${CIFAR[@]}" --attack universal -n 200
run resnet20_jsma $R "${CIFAR[@]}" --attack jsma -n 50
run resnet20_hopskipjump $R "${CIFAR[@]}" --attack hopskipjump -n 20 --param hopskipjump.max_iter=5
run resnet20_shadow $R "${CIFAR[@]}" --attack shadow -n 20
