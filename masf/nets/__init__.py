"""x0-prediction networks (denoisers) for the score-based filters.

Every network is an ``nn.Module`` with ``forward(x: (B, *S), t: (B,) | float | None) -> (B, *S)`` returning
an estimate of E[x0 | x_t] (the dual-head variant returns ``(x0_hat, h_hat)``), ``state_shape``,
``time_conditioned`` (False: a time-free net, as SSLS uses; ``t`` may then be None) and ``config``: a
JSON-ready dict from which ``network_from_config`` rebuilds it (checkpoints store it).

API:
    make_network(kind, state_shape, *, generator=None, **sizes) -> nn.Module
        kinds: "mlp" (any state shape, flattened), "unet1d" ((D,), periodic), "unet2d" and "dual_unet2d"
        ((C, n, m), doubly periodic). ``generator`` makes the initial weights a function of it alone.
    network_from_config(config) -> nn.Module        (inverse of ``net.config``)
    count_parameters(net) -> int
    MLP, UNet1D, UNet2D, DualHeadUNet2D, TimeEmbedding, sinusoidal_embedding

Time embedding: sinusoidal features of 1000·t and a 2-layer MLP (method.md B12; ``time_scale=1.0`` gives
the reference's raw-t embedding). Output layers are zero-initialised, so a fresh network predicts 0.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from masf.nets.embedding import TimeEmbedding, sinusoidal_embedding
from masf.nets.mlp import MLP
from masf.nets.unet1d import UNet1D
from masf.nets.unet2d import DualHeadUNet2D, UNet2D

NETWORKS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "unet1d": UNet1D,
    "unet2d": UNet2D,
    "dual_unet2d": DualHeadUNet2D,
}

__all__ = [
    "MLP",
    "NETWORKS",
    "DualHeadUNet2D",
    "TimeEmbedding",
    "UNet1D",
    "UNet2D",
    "count_parameters",
    "make_network",
    "network_from_config",
    "sinusoidal_embedding",
]


def make_network(
    kind: str, state_shape: Sequence[int], *, generator: torch.Generator | None = None, **sizes: Any
) -> nn.Module:
    """Build a network of ``kind`` for states of shape ``state_shape`` (without the batch dimension).

    ``sizes`` are the keyword arguments of the class (e.g. ``model_channels=16, channel_mult=(1, 2, 4)``).
    With ``generator``, the initial weights are drawn from a CPU stream seeded by one draw of ``generator``
    (the global torch RNG is left untouched); without it, from the global torch RNG as usual.
    The network is on the CPU in float32; move it with ``.to(device)``.
    Raises ValueError for an unknown kind, an unknown size name, or a state shape the kind cannot take.
    """
    if kind not in NETWORKS:
        raise ValueError(f"unknown network kind {kind!r}; allowed: {', '.join(NETWORKS)}")
    cls = NETWORKS[kind]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "state_shape")]
    unknown = sorted(set(sizes) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown size(s) {unknown} for network kind {kind!r}; allowed: {', '.join(allowed)}"
        )
    if isinstance(state_shape, int) or not all(isinstance(s, int) and s > 0 for s in state_shape):
        raise ValueError(f"state_shape must be a sequence of positive ints, got {state_shape!r}")
    if generator is None:
        return cls(tuple(state_shape), **sizes)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(tuple(state_shape), **sizes)


def network_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild a network (fresh weights) from its ``net.config`` dict."""
    if not isinstance(config, dict) or "kind" not in config or "state_shape" not in config:
        raise ValueError(f"a network config needs 'kind' and 'state_shape', got {config!r}")
    sizes = {k: v for k, v in config.items() if k not in ("kind", "state_shape")}
    return make_network(config["kind"], [int(s) for s in config["state_shape"]], **sizes)


def count_parameters(net: nn.Module) -> int:
    """Number of scalar parameters of ``net`` (trainable or not)."""
    return sum(p.numel() for p in net.parameters())
