"""Diffusion-time embedding shared by every network.

Choice (method.md B12): the reference feeds the raw time t ∈ [0, 1] to a sinusoidal embedding with maximum
period 1e4, so almost every frequency sees a nearly constant input and the network can hardly tell t = 0.01
from t = 0.02. We embed ``time_scale · t`` with ``time_scale = 1000`` by default (the DDPM convention of
integer steps 0..999, the factor the reference left commented out). It does not depend on a schedule, unlike
a log-SNR input, so the same network works for the measurement-aware process, SF and SSLS.
``time_scale = 1.0`` reproduces the reference for an ablation.

    e(t) = W2 · silu(W1 · [cos(s t ω_k), sin(s t ω_k)]_k + b1) + b2,   ω_k = P^(-k/h), k = 0..h-1

with s = time_scale, P = max_period, h = channels // 2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, channels: int, *, max_period: float = 1e4) -> Tensor:
    """Sinusoidal features of a batch of (already scaled) times.

    Args:
        t: times, shape (B,).
        channels: number of features; odd values get one trailing zero column.
        max_period: longest period P of the sinusoids.

    Returns:
        (B, channels) tensor ``[cos(t ω_0..ω_{h-1}), sin(t ω_0..ω_{h-1})]``, ``ω_k = P^(-k/h)``, in t's dtype.
    """
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
    if channels < 2:
        raise ValueError(f"channels must be >= 2, got {channels}")
    half = channels // 2
    k = torch.arange(half, device=t.device, dtype=t.dtype)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = t[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if channels % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


class TimeEmbedding(nn.Module):
    """Sinusoidal features of ``time_scale · t`` followed by a 2-layer MLP: (B,) -> (B, out_dim)."""

    def __init__(
        self, channels: int, out_dim: int, *, time_scale: float = 1000.0, max_period: float = 1e4
    ) -> None:
        super().__init__()
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self.channels = channels
        self.time_scale = float(time_scale)
        self.max_period = float(max_period)
        self.mlp = nn.Sequential(nn.Linear(channels, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        feats = sinusoidal_embedding(t * self.time_scale, self.channels, max_period=self.max_period)
        return self.mlp(feats)


def prepare_time(t: Tensor | float | None, x: Tensor, time_conditioned: bool) -> Tensor | None:
    """Check and broadcast the time argument of a network's ``forward``.

    Returns ``None`` for a time-free network (then ``t`` must be ``None`` or is ignored), else a (B,)
    tensor on x's device and dtype; a scalar ``t`` (float or 0-d tensor) is broadcast to the batch.
    """
    if not time_conditioned:
        return None
    if t is None:
        raise ValueError("t is None but this network is time-conditioned (time_conditioned=True)")
    t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must have shape ({x.shape[0]},) or be a scalar, got {tuple(t.shape)}")
    return t
