"""Residual MLP x0-predictor for small states (Lorenz-63, the linear-Gaussian system).

    h_0 = W_in · flatten(x)                                  x: (B, *S) -> h: (B, width)
    h_{k+1} = h_k + W2_k · silu(FiLM_e(W1_k · silu(LN(h_k)))) FiLM_e(u) = u · (1 + scale(e)) + shift(e)
    x0_hat = unflatten(W_out · silu(LN(h_K)))                W_out zero-initialised

e = TimeEmbedding(t) of width 4·time_channels (absent when ``time_conditioned=False``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from masf.nets.blocks import check_input, zero_init
from masf.nets.embedding import TimeEmbedding, prepare_time


class ResidualMLPBlock(nn.Module):
    """h -> h + W2 · silu(FiLM(W1 · silu(LN(h)))), (B, width) -> (B, width); W2 zero-initialised."""

    def __init__(self, width: int, emb_dim: int | None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.film = nn.Linear(emb_dim, 2 * width) if emb_dim is not None else None
        self.fc2 = zero_init(nn.Linear(width, width))

    def forward(self, h: Tensor, emb: Tensor | None) -> Tensor:
        u = self.fc1(F.silu(self.norm(h)))
        if self.film is not None:
            scale, shift = self.film(F.silu(emb)).chunk(2, dim=1)
            u = u * (1 + scale) + shift
        return h + self.fc2(F.silu(u))


class MLP(nn.Module):
    """Residual MLP: forward(x: (B, *S), t: (B,) | None) -> (B, *S).

    Sizes: ``width`` hidden width, ``num_blocks`` residual blocks, ``time_channels`` sinusoidal features
    (embedding width 4·time_channels), ``time_conditioned``, ``time_scale`` (see ``masf.nets.embedding``).
    """

    kind = "mlp"

    def __init__(
        self,
        state_shape: Sequence[int],
        *,
        width: int = 128,
        num_blocks: int = 3,
        time_channels: int = 32,
        time_conditioned: bool = True,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        state_shape = tuple(int(s) for s in state_shape)
        if len(state_shape) < 1 or any(s < 1 for s in state_shape):
            raise ValueError(f"mlp needs a non-empty state shape of positive sizes, got {state_shape}")
        if width < 1 or num_blocks < 0 or time_channels < 2:
            raise ValueError(
                f"mlp sizes must be width >= 1, num_blocks >= 0, time_channels >= 2; "
                f"got width={width}, num_blocks={num_blocks}, time_channels={time_channels}"
            )
        self.state_shape = state_shape
        self.time_conditioned = bool(time_conditioned)
        self.config = {
            "kind": self.kind,
            "state_shape": list(state_shape),
            "width": int(width),
            "num_blocks": int(num_blocks),
            "time_channels": int(time_channels),
            "time_conditioned": bool(time_conditioned),
            "time_scale": float(time_scale),
        }
        dim = math.prod(state_shape)
        emb_dim = 4 * time_channels if time_conditioned else None
        self.time_embed = (
            TimeEmbedding(time_channels, emb_dim, time_scale=time_scale) if time_conditioned else None
        )
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualMLPBlock(width, emb_dim) for _ in range(num_blocks))
        self.out_norm = nn.LayerNorm(width)
        self.out = zero_init(nn.Linear(width, dim))

    def forward(self, x: Tensor, t: Tensor | float | None = None) -> Tensor:
        check_input(x, self.state_shape, self.kind)
        t = prepare_time(t, x, self.time_conditioned)
        emb = self.time_embed(t) if self.time_embed is not None else None
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h))).view(x.shape)
