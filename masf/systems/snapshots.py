"""Climatology snapshots for pretraining and for the climatology draws of the filters.

``snapshots(system, n, ...)`` draws ``n`` states of the system's climatology at the times the filters see:
``n / per_trajectory`` independent initial states are spun up ``spinup_steps`` steps, and each trajectory
then gives ``per_trajectory`` snapshots ``interval`` steps apart (spin-up time, + interval, ...). With
``per_trajectory = 1`` (the default) every snapshot is an independent spin-up, as the MASF paper's
pretraining set; with more, one integration yields many snapshots (consecutive ones correlated), which is
how the pretraining data of a 64² flow becomes thousands of states in about a minute of CPU, and how the
snapshots cover the whole assimilation window of a non-stationary system.

Trajectories are integrated in batches of at most ``batch`` members to bound the memory.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def snapshots(
    system: Any,
    n: int,
    *,
    generator: torch.Generator,
    spinup_steps: int | None = None,
    per_trajectory: int = 1,
    interval: int = 1,
    batch: int = 256,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Tensor:
    """(n, *S) climatology states, trajectory by trajectory (module docstring); on the CPU.

    Raises ``ValueError`` unless ``n >= 1``, ``per_trajectory >= 1`` divides ``n`` and ``interval >= 1``.
    """
    for name, value in (
        ("n", n),
        ("per_trajectory", per_trajectory),
        ("interval", interval),
        ("batch", batch),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"snapshots: {name} must be an integer >= 1, got {value!r}")
    if n % per_trajectory:
        raise ValueError(f"snapshots: per_trajectory = {per_trajectory} must divide n = {n}")
    n_traj = n // per_trajectory
    out = []
    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc="snapshots", disable=not progress, leave=False)
    for start in range(0, n_traj, batch):
        count = min(batch, n_traj - start)
        x = system.sample_climatology(
            count, generator=generator, spinup_steps=spinup_steps, dtype=dtype, device=device
        )
        frames = [x.cpu()]
        for _ in range(per_trajectory - 1):
            x = system.step(x, interval, generator=generator)
            frames.append(x.cpu())
        out.append(torch.stack(frames, dim=1).reshape(count * per_trajectory, *x.shape[1:]))
        bar.update(count * per_trajectory)
    bar.close()
    return torch.cat(out)
