"""Accuracy and stability of masf's Kolmogorov solver against the Courant number (README, "Why we are slower").

    .venv/bin/python benchmarks/kolmogorov_speed/courant_check.py     # ~1 min on one core

For 64² and 128², 4 members from the climatology (t = 10), float64: the relative max error of one outer
step against a step 4× finer than the default, then whether a float32 run of 100 outer steps stays finite.
"""

from __future__ import annotations

import time

import torch

from masf.systems.kolmogorov import Kolmogorov


def main() -> None:
    torch.set_num_threads(1)
    for n in (64, 128):
        default = Kolmogorov(n=n)
        x0 = default.sample_climatology(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        ref = Kolmogorov(n=n, inner_steps=4 * default.steps_per_dt).step(x0)
        scale = ref.abs().max().item()
        for courant in (0.5, 0.75, 1.0, 1.25):
            s = Kolmogorov(n=n, courant=courant)
            err = (s.step(x0) - ref).abs().max().item() / scale
            t0 = time.process_time()
            x = s.step(x0.float(), 100)
            cpu = time.process_time() - t0
            print(
                f"n={n} courant={courant} inner_steps={s.steps_per_dt} one-step rel. error {err:.2e} "
                f"finite after 100 steps: {bool(torch.isfinite(x).all())} ({cpu:.1f} s CPU)",
                flush=True,
            )


if __name__ == "__main__":
    main()
