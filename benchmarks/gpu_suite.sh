#!/usr/bin/env bash
# The GPU checks and measurements, in one call (for a machine with a CUDA device):
#   bash benchmarks/gpu_suite.sh OUT_DIR
# builds the extension from source against the installed torch, runs the GPU-marked tests and
# the Triton kernel tests compiled for the device, `revgn check` on the GPU, then the benchmark suite at the paper's CIFAR
# shape (n=1024, d=3072, M=8000, L=6), writing JSON and a plot to OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-gpu}"
mkdir -p "$out"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" MAX_JOBS="${MAX_JOBS:-8}" PYTHONUNBUFFERED=1
python -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3
python -m revgn info | tee "$out/info.json"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
TRITON_INTERPRET=0 python -m pytest -q -m gpu tests 2>&1 | tail -5 | tee "$out/tests_gpu.txt"
TRITON_INTERPRET=0 python -m pytest -q tests/test_kernels_triton.py 2>&1 | tail -3 \
  | tee "$out/tests_triton.txt"
TRITON_INTERPRET=0 python -m revgn check --device cuda | tee "$out/check.txt" || true
TRITON_INTERPRET=0 python -m revgn bench --device cuda --repeats 7 --out "$out" | tee "$out/bench.txt"
