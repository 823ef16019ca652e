#!/usr/bin/env bash
# The paper's 256² and 512² Kolmogorov settings on one GPU machine, every method of config/paper.yaml:
#   bash benchmarks/highdim/gpu.sh OUT        (OUT: where gpu_result.{json,md} and the logs go)
# Pretraining at the paper's budgets (200-300 epochs on 1000 snapshots) dominates: hours, not minutes.
set -euo pipefail
out=${1:?usage: gpu.sh OUT}
mkdir -p "$out"
cd "$(dirname "$0")/../.."
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
python3 benchmarks/highdim/run.py --config config/paper.yaml --experiments kolmogorov256 kolmogorov512 \
    --cores "$(nproc)" --workdir "$out/work" --out "$out/gpu_result.json"
