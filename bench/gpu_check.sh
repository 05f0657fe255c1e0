#!/usr/bin/env bash
# The GPU checks, as one prepared run for a lent device machine (at most 9.5 minutes: each step has a time limit).
#
# What it does, each step under its own time limit, everything logged to $OUT/gpu_check.log:
#   1. the machine: nvidia-smi, Python, torch and the GPU it sees;
#   2. the CUDA tests (tests/test_cuda.py: every torch attack, CLEVER, A2D costs, the CLI and
#      `defend train` on the GPU against the same work on the CPU; the CUDA placement and
#      defence tests of tests/test_models.py and tests/test_defences.py);
#   3. bench/attack_bench.py --device cuda on the MNIST LeNet-5 and the CIFAR-10 ResNet-20
#      (robaudit vs ART, both on the GPU; PGD's share of raw forward+backward throughput);
#   4. bench/tvm_bench.py --device cuda (batched TVM, SS, JPEG on the GPU vs ART's on the CPU);
#   5. bench/clever_bench.py speed --device cuda (small budget);
#   6. bench/compile_bench.py --device cuda (torch.compile of the ONNX LeNet-5 vs robaudit's model).
#
# Prepare once, on the CPU machine, in the repository root (the machine has torch, typer, rich,
# pyyaml, scipy, scikit-learn, pytest and hypothesis, but not ART or onnx2torch, and cannot
# download):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       adversarial-robustness-toolbox==1.20.1 onnx2torch==1.5.15
#   python scripts/export_shared.py            # artifacts/ from ../shared
# Then, through the device tool: command `bash bench/gpu_check.sh`, timeout_s 600, carry
#   [".whl", "artifacts/mnist_lenet5_clean.pt", "artifacts/mnist_test.npz", "artifacts/cifar10_resnet20.pt",
#    "artifacts/cifar10_exact761.npz", "artifacts/mnist_lenet5_clean.onnx"]
# Results come back from $OUT (at most 8 files). Off the device tool, OUT defaults to ./gpu-out.
# On a machine without CUDA, ROBAUDIT_GPU_DEVICE=cpu runs the same steps on the CPU (a dry run).
set -u -o pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
DEV=${ROBAUDIT_GPU_DEVICE:-cuda}
PY=${PYTHON:-python3}
LOG=$OUT/gpu_check.log
: > "$LOG"

if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 ROBAUDIT_TEST_GPU=$DEV

step() {  # step LIMIT_S COMMAND...: run with a time limit, log output, return code and seconds
    local limit=$1
    shift
    local t0=$SECONDS
    echo "== $* (limit ${limit} s)" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "== rc ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$LOG"
}

step 20 nvidia-smi
step 60 $PY -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', \
torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')"
step 120 $PY -m pytest -q -p no:randomly -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml" \
    tests/test_cuda.py tests/test_models.py tests/test_defences.py -k cuda
for model in lenet5-clean resnet20; do
    step 110 $PY bench/attack_bench.py --device "$DEV" --models "$model" \
        --attacks fgsm,bim,pgd,apgd,cw-l2,deepfool,hopskipjump --out "$OUT/attack_bench_${DEV}_${model}.json"
done
step 45 $PY bench/tvm_bench.py --device "$DEV" -n 200 --repeats 3
step 70 $PY bench/clever_bench.py speed --device "$DEV" --models lenet5-clean,resnet20 --images 8 \
    --art-images 4 --resnet-art-images 3 --tag "gpu_check_${DEV}"
cp bench/results/clever_bench_gpu_check_"$DEV".md "$OUT/" 2>/dev/null
step 60 $PY bench/compile_bench.py --device "$DEV" --models lenet5-clean
$PY bench/attack_bench.py markdown "$OUT"/attack_bench_"$DEV"_*.json > "$OUT/attack_bench_${DEV}.md" 2>>"$LOG"
echo "== done in $SECONDS s" | tee -a "$LOG"
