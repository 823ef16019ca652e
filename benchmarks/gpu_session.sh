#!/usr/bin/env bash
# The one script to run when a GPU machine is lent (about 12 minutes on one H100/H200):
#   bash benchmarks/gpu_session.sh "$OUT"
# 1. CUDA correctness: every test that needs CUDA (they skip on CPU-only machines);
# 2. benchmarks/compile: eager vs compiled MASF analysis and eager vs CUDA-graph forecast, 64²..512²,
#    with the cost exponents against D;
# 3. benchmarks/kolmogorov_speed/gpu_timing.py: the solver alone, 64²..512²;
# 4. benchmarks/highdim: the 256²/512² smoke sweep of every method on the GPU.
# Each step has its own time limit, and what a step wrote is kept when a later one fails.
set -uo pipefail
out=${1:?usage: gpu_session.sh OUT}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
timeout 240 python3 -m pytest -q -rs tests -k "cuda or CUDA or gpu" > "$out/cuda_tests.txt" 2>&1
echo "cuda tests: rc $?" | tee -a "$out/summary.txt"
timeout 300 python3 benchmarks/compile/run.py --device cuda --grids 64 128 256 512 --nfe 150 --repeats 3 \
    --out "$out/compile_gpu.json" > "$out/compile_gpu.log" 2>&1
echo "compile benchmark: rc $?" | tee -a "$out/summary.txt"
timeout 120 python3 benchmarks/kolmogorov_speed/gpu_timing.py --out "$out/kolmogorov_gpu.json" \
    > "$out/kolmogorov_gpu.log" 2>&1
echo "kolmogorov gpu timing: rc $?" | tee -a "$out/summary.txt"
timeout 240 python3 benchmarks/highdim/run.py --config benchmarks/highdim/smoke.yaml --device cuda \
    --cores 8 --workdir "$out/highdim" --out "$out/highdim_gpu.json" > "$out/highdim_gpu.log" 2>&1
echo "highdim smoke on the GPU: rc $?" | tee -a "$out/summary.txt"
