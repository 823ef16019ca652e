"""Independent random streams, one per (seed, role).

Every source of randomness in an experiment draws from its own ``torch.Generator`` derived from the
experiment seed and a role name, so that e.g. the truth trajectory and the initial ensemble never share a
draw (the truth is never an ensemble member) and results do not depend on call order.
"""

from __future__ import annotations

import hashlib

import torch

ROLES = (
    "truth",  # initial condition (and process noise) of the truth trajectory
    "ensemble",  # initial ensemble
    "pretrain_data",  # climatology snapshots for pretraining
    "obs_noise",  # observation noise
    "train",  # minibatches and forward-process noise during training
    "sampling",  # noise of samplers and stochastic filters
    "model_noise",  # process noise in the forecast of stochastic systems
)


def derive_seed(seed: int, role: str) -> int:
    """A 63-bit seed from (seed, role) by SHA-256; distinct roles give unrelated streams."""
    if role not in ROLES:
        raise ValueError(f"unknown random-stream role {role!r}; allowed: {', '.join(ROLES)}")
    digest = hashlib.sha256(f"masf:{int(seed)}:{role}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, role: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from (seed, role)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, role))
    return gen
