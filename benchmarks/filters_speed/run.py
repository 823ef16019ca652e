"""Wall-clock cost of one EnKF / LETKF analysis (float32, N = 20 members).

Cases: Lorenz-96 (D = 40, every entry observed, σ = 1) and random 2-D velocity fields (N, 2, n, n) with
n = 64 and 128 observed on a stride-4 grid mask (σ = 0.1). The LETKF's local domains are built on the
first call and cached in ``ctx.state``; that one-off cost is reported separately ("setup_s").

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/filters_speed/run.py [--device cuda] [--out FILE]

Prints a Markdown table and writes the numbers as JSON (default: results_<device>.json beside this file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from masf.filters.base import Context
from masf.filters.enkf import EnKF
from masf.filters.letkf import LETKF
from masf.filters.localization import DAPPER_GC_FACTOR
from masf.operators import grid_mask, identity


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_analysis(filt, prior, z, op, device, repeats: int) -> dict[str, float]:
    """Seconds of the first call (includes LETKF domain setup) and the median of ``repeats`` more."""
    ctx = Context(generator=torch.Generator(device="cpu").manual_seed(0))
    _sync(device)
    start = time.perf_counter()
    filt.analyse(prior, z, op, ctx)
    _sync(device)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = filt.analyse(prior, z, op, ctx)
        _sync(device)
        times.append(time.perf_counter() - start)
    assert bool(torch.isfinite(out).all())
    return {"first_s": first, "median_s": statistics.median(times), "min_s": min(times)}


def cases(device: torch.device):
    """(system, filter name, filter, state shape, operator) for every benchmark case."""
    l96 = identity((40,), noise_std=1.0)
    yield "L96-40", "EnKF sqrt", EnKF("sqrt", inflation=1.02, rotate=True), (40,), l96
    yield "L96-40", "EnKF pertobs", EnKF("pertobs", inflation=1.06), (40,), l96
    yield "L96-40", "LETKF", LETKF(radius=DAPPER_GC_FACTOR * 4, inflation=1.02, rotate=True), (40,), l96
    for n in (64, 128):
        op = grid_mask((2, n, n), 4, noise_std=0.1)
        yield f"2-D {n}²", "EnKF sqrt", EnKF("sqrt", inflation=1.05), (2, n, n), op
        yield f"2-D {n}²", "EnKF pertobs", EnKF("pertobs", inflation=1.05), (2, n, n), op
        yield f"2-D {n}²", "LETKF", LETKF(radius=5.0, inflation=1.1), (2, n, n), op


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    g = torch.Generator(device="cpu").manual_seed(1)
    rows = []
    for system, name, filt, shape, op in cases(device):
        prior = torch.randn(args.members, *shape, generator=g).to(device)
        z = torch.randn(*shape, generator=g).to(device)
        repeats = 50 if shape == (40,) else 5
        result = time_analysis(filt, prior, z, op, device, repeats)
        rows.append({"system": system, "filter": name, "state_shape": list(shape), **result})
        print(f"| {system} | {name} | {result['median_s'] * 1e3:.2f} ms | {result['first_s'] * 1e3:.1f} ms |")
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "members": args.members,
        "dtype": "float32",
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    out = Path(args.out) if args.out else Path(__file__).with_name(f"results_{device.type}.json")
    out.write_text(json.dumps({"info": info, "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
