"""Eager against compiled, side by side: one MASF analysis (compile) and one Kolmogorov forecast step
(cuda_graphs), per grid, on one device (issue "Speed and dimension", item 1).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/compile/run.py --device cpu --threads 2 --grids 32 64 \\
        --nfe 10 --out benchmarks/compile/cpu.json
    python benchmarks/compile/run.py --device cuda --grids 64 128 256 512 --nfe 150 \\
        --out benchmarks/compile/gpu.json                                  # prepared for a lent GPU

Setting (as benchmarks/masf_speed/, part "cost"): Kolmogorov flow n², grid mask stride 4, σ = 0.1, N = 10
members; MASF bridge sampler with pathwise x0 uncertainty, ``--nfe`` steps, fine-tuning
``--finetune-epochs`` epochs (batch 32, replay 0.5, reset, one AdamW); UNet2D width ``--width``, depth 2.
Cost does not depend on the weights, so the network is pretrained for one epoch on 16 snapshots.
For each grid, an eager and a compiled MASF (``compile: true``) load the same checkpoint; each pays two
warm-up analyses (cycle 0: sampling; cycle 1: fine-tuning + sampling; the compiled one compiles there,
reported as ``warmup_s``), then ``--repeats`` analyses each, alternating eager and compiled. The forecast
step (N = 10, one outer step Δt = 0.2) is timed eager and, on CUDA, with ``cuda_graphs``. Seconds are wall
clock with ``torch.cuda.synchronize()`` around each timed call on CUDA; medians are reported, and the
exponent p of time ∝ D^p over the grids for each variant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from masf.filters import Context
from masf.filters.masf import MASF
from masf.operators import grid_mask
from masf.rng import generator
from masf.systems.kolmogorov import Kolmogorov


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Any, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def exponent(grids: list[int], seconds: list[float]) -> float | None:
    """Least-squares slope of log(seconds) against log(D = 2n²)."""
    if len(grids) < 2:
        return None
    xs = [math.log(2 * n * n) for n in grids]
    ys = [math.log(s) for s in seconds]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def grid(n: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    system = Kolmogorov(n=n)
    operator = grid_mask(system.state_shape, 4, noise_std=0.1)
    data = system.sample_initial(16, generator=generator(0, "pretrain_data", device), device=device)
    sizes = {"width": args.width, "depth": 2, "nfe": args.nfe, "pretrain_epochs": 1, "pretrain_batch": 16}
    tuning = {"finetune_epochs": args.finetune_epochs, "finetune_batch": 32, "finetune_replay": 0.5}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(Path(tmp) / "net.pt")
        MASF(**sizes).pretrain(
            data,
            operator,
            checkpoint=ckpt,
            generator=generator(0, "train", device),
            device=device,
            progress=False,
        )
        prior = system.sample_initial(10, generator=generator(1, "ensemble", device), device=device)
        truth = system.sample_initial(1, generator=generator(1, "truth", device), device=device)
        z = operator.observe(truth, generator=generator(1, "obs_noise", device))[0]
        runs: dict[str, dict[str, Any]] = {}
        for compiled in (False, True):
            f = MASF(sampler="bridge", x0_uncertainty="pathwise", compile=compiled, **sizes, **tuning)
            ctx = Context(
                generator=generator(1, "sampling", device),
                train_generator=generator(1, "train", device),
                pretrained=ckpt,
                climatology=data,
            )
            warm = 0.0
            for cycle in (0, 1):
                ctx.cycle = cycle
                warm += timed(lambda f=f, ctx=ctx: f.analyse(prior, z, operator, ctx), device)
            runs["compiled" if compiled else "eager"] = {"filter": f, "ctx": ctx, "warmup_s": warm, "s": []}
        for repeat in range(args.repeats):
            order = ("eager", "compiled") if repeat % 2 == 0 else ("compiled", "eager")
            for name in order:
                run = runs[name]
                run["ctx"].cycle = 2 + repeat
                run["s"].append(
                    timed(lambda r=run: r["filter"].analyse(prior, z, operator, r["ctx"]), device)
                )
    out: dict[str, Any] = {"n": n, "D": 2 * n * n}
    for name, run in runs.items():
        out[f"analysis_{name}_s"] = statistics.median(run["s"])
        out[f"warmup_{name}_s"] = run["warmup_s"]
    out["analysis_speedup"] = out["analysis_eager_s"] / out["analysis_compiled_s"]
    ensemble = prior.clone()
    variants = {"eager": system}
    if device.type == "cuda":
        variants["cuda_graphs"] = Kolmogorov(n=n, cuda_graphs=True)
    for name, s in variants.items():
        s.step(ensemble, 1)  # warm-up (captures the graph)
        out[f"forecast_{name}_s"] = statistics.median(
            timed(lambda s=s: s.step(ensemble, 1), device) for _ in range(args.repeats)
        )
    if "forecast_cuda_graphs_s" in out:
        out["forecast_speedup"] = out["forecast_eager_s"] / out["forecast_cuda_graphs_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--grids", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result: dict[str, Any] = {
        "command": "benchmarks/compile/run.py " + " ".join(f"{k}={v}" for k, v in vars(args).items()),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "grids": [],
    }
    for n in args.grids:
        result["grids"].append(grid(n, args, device))
        print(json.dumps(result["grids"][-1]), flush=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    ns = [g["n"] for g in result["grids"]]
    for key in ("analysis_eager_s", "analysis_compiled_s", "forecast_eager_s", "forecast_cuda_graphs_s"):
        if all(key in g for g in result["grids"]):
            result[f"exponent_{key}"] = exponent(ns, [g[key] for g in result["grids"]])
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
