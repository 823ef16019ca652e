"""Accuracy and stability of masf's Kolmogorov solver (Lawson RK4) against the Courant number (README).

    .venv/bin/python benchmarks/kolmogorov_speed/courant_check.py > benchmarks/kolmogorov_speed/courant_check.txt

For 64² and 128², 4 members from the climatology (t = 10), float64: the relative max error of one outer
step against a step 4× finer than the default (courant 0.8); then 16 other members in float32 run for
200 outer steps (t = 40): whether they stay finite, and the largest speed seen (the CFL bound assumes
max_velocity = 5; docs/kolmogorov.md). About 10 minutes on one core.
"""

from __future__ import annotations

import argparse
import time

import torch

from masf.systems.kolmogorov import Kolmogorov


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--courants", type=float, nargs="+", default=[0.5, 0.8, 1.0, 1.2, 1.4, 1.6])
    args = parser.parse_args()
    torch.set_num_threads(1)
    for n in args.sizes:
        default = Kolmogorov(n=n)
        x0 = default.sample_climatology(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        ref = Kolmogorov(n=n, inner_steps=4 * default.steps_per_dt).step(x0)
        scale = ref.abs().max().item()
        members = default.sample_climatology(16, generator=torch.Generator().manual_seed(1))
        for courant in args.courants:
            s = Kolmogorov(n=n, courant=courant)
            err = (s.step(x0) - ref).abs().max().item() / scale
            t0 = time.process_time()
            x, top, steps = members, 0.0, 0
            while steps < 200 and bool(torch.isfinite(x).all()):
                x, steps = s.step(x, 10), steps + 10
                top = max(top, x.square().sum(dim=1).sqrt().amax().item())
            cpu = (time.process_time() - t0) / steps
            finite = bool(torch.isfinite(x).all())
            print(
                f"n={n} courant={courant} inner_steps={s.steps_per_dt} one-step rel. error {err:.2e} "
                + (
                    f"finite after 200 steps: True (max speed {top:.2f}; "
                    if finite
                    else f"blew up by step {steps} ("
                )
                + f"{cpu * 1e3:.0f} ms CPU per outer step, 16 members)",
                flush=True,
            )


if __name__ == "__main__":
    main()
