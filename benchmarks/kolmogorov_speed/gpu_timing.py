"""Time masf's Kolmogorov solver on a CUDA device (no jax-cfd there): outer-step time per grid and batch.

    python benchmarks/kolmogorov_speed/gpu_timing.py --out gpu_results.json

Also checks on the device: the state stays finite, and float64 CUDA agrees with float64 CPU after two
outer steps at 64².
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from masf.systems.kolmogorov import Kolmogorov

CONFIGS = [(64, 1), (64, 10), (128, 1), (128, 10), (256, 10), (256, 100), (512, 1), (512, 40)]


def time_config(n: int, batch: int, repeats: int, device: torch.device) -> dict:
    system = Kolmogorov(n=n)
    x = system.sample_initial(batch, generator=torch.Generator().manual_seed(0)).to(device)
    x = system.step(x)  # warm-up (cuFFT plans, caches)
    torch.cuda.synchronize(device)
    steps = max(1, min(10, round(20 / (batch * (n / 128) ** 3))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = system.step(x, steps)
        torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) / steps)
    return {
        "n": n,
        "batch": batch,
        "inner_steps": system.steps_per_dt,
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "finite": bool(torch.isfinite(x).all()),
        "max_speed": float(torch.sqrt((x**2).sum(1)).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda")
    s64 = Kolmogorov(n=64)
    x = s64.sample_initial(2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    diff = (s64.step(x.to(device), 2).cpu() - s64.step(x, 2)).abs().max().item()
    rows = []
    for n, batch in CONFIGS:
        rows.append(time_config(n, batch, args.repeats, device))
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "float64_cuda_vs_cpu_max_abs_diff_2_steps_64": diff,
        "timing": rows,
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "timing"}))


if __name__ == "__main__":
    main()
