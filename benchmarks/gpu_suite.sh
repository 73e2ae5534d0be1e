#!/usr/bin/env bash
# The GPU checks and measurements, in one call, sized for 8 minutes on an H200 (build included):
#   bash benchmarks/gpu_suite.sh OUT_DIR [MNIST_DIR]
# Stages, in order, each under its own time limit (a stage that runs out is recorded in
# OUT_DIR/stages.txt and the next one starts): build the extension against the installed torch;
# `revgn check` on the GPU; the GPU-marked tests and the Triton kernels compiled for the device;
# `revgn bench` at the paper's MNIST workload (real images; skipped without MNIST) and at the
# paper's CIFAR shape (n=1024, d=3072, M=8000, L=6); then, with what is left of the budget, a
# short full-batch MNIST training run. Everything lands in OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-gpu}"
mnist="${2:-${REVGN_MNIST_DIR:-../shared/data/mnist}}"
budget="${REVGN_GPU_BUDGET_S:-470}"
mkdir -p "$out"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" MAX_JOBS="${MAX_JOBS:-16}" PYTHONUNBUFFERED=1
export TRITON_INTERPRET=0 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}"
start=$(date +%s)
: > "$out/stages.txt"

stage() {  # stage NAME LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  local left=$((budget - ($(date +%s) - start)))
  if [ "$left" -lt 15 ]; then
    echo "$name skipped: budget spent" | tee -a "$out/stages.txt"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0
  t0=$(date +%s)
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  echo "$name rc=$rc $(($(date +%s) - t0))s (limit ${limit}s)" | tee -a "$out/stages.txt"
  tail -n 12 "$out/$name.txt"
}

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
stage build 170 python -m pip install -q --no-build-isolation --no-deps -e .
stage info 30 python -m revgn info
stage check 45 python -m revgn check --device cuda
stage tests_gpu 80 python -m pytest -q -x -p no:cacheprovider -m gpu tests tests/test_kernels_triton.py
if ls "$mnist"/train-images-idx3-ubyte* > /dev/null 2>&1; then
  stage bench_paper_mnist 60 python -m revgn bench --device cuda --workload paper-mnist \
    --data-dir "$mnist" --repeats 5 --out "$out/paper-mnist"
else
  echo "paper-mnist skipped: no MNIST training set in $mnist" | tee -a "$out/stages.txt"
fi
stage bench_cifar_shape 90 python -m revgn bench --device cuda --repeats 5 --out "$out/cifar-shape"
if ls "$mnist"/train-images-idx3-ubyte* > /dev/null 2>&1; then
  stage train_fullbatch 120 python -m revgn experiment fullbatch --dataset mnist \
    --data-dir "$mnist" --paper --seeds 42 --epochs 20 --device cuda --out "$out/train"
fi
echo "total $(($(date +%s) - start))s of ${budget}s" | tee -a "$out/stages.txt"
