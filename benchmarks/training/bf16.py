"""Seconds per training step of the 64² "fast" recipe network, float32 against bfloat16 autocast, on CPU.

    python benchmarks/training/bf16.py --threads 1 > benchmarks/training/bf16.json

Alternates the two settings over ``--rounds`` rounds of ``--steps`` steps (so machine load hits both
alike) and prints the median seconds per step of each as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from masf.nets import make_network


def step_seconds(
    net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, steps: int, bf16: bool
) -> float:
    t = torch.rand(len(x))
    started = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = (net(x, t).float() - x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    net = make_network("unet2d", (1, 64, 64), model_channels=8, channel_mult=(1, 2, 4, 8))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(4, 1, 64, 64)
    times: dict[str, list[float]] = {"float32": [], "bfloat16_autocast": []}
    step_seconds(net, opt, x, 2, False)
    step_seconds(net, opt, x, 2, True)
    for _ in range(args.rounds):
        times["float32"].append(step_seconds(net, opt, x, args.steps, False))
        times["bfloat16_autocast"].append(step_seconds(net, opt, x, args.steps, True))
    out = {k: statistics.median(v) for k, v in times.items()}
    out["threads"] = args.threads
    out["torch"] = torch.__version__
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
