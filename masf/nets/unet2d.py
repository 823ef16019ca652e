"""Periodic 2-D UNets for fields on a doubly periodic grid (Kolmogorov flow, state (C, n, m)).

``UNet2D``: x (B, C, n, m), t (B,) -> x0_hat (B, C, n, m).
``DualHeadUNet2D``: same encoder and middle block, two decoders -> (x0_hat, h_hat), both (B, C, n, m); used
for nonlinear operators, where h_hat estimates E[H_n(x0) | x_t] (method.md §4, §5.4).

Sizes (defaults small for CPU tests; the reference uses model_channels 32 / 16, channel_mult (1, 2, 4, 8)):
``model_channels`` base width, ``channel_mult`` width multiplier per level (len L: L-1 down-samplings, so n
and m must be divisible by 2^(L-1)), ``num_res_blocks`` per level, ``attention_levels`` down-sampling
factors with self-attention (cost grows with the square of the number of grid points there),
``mid_attention`` attention in the middle block, ``num_heads``, ``dropout``, ``time_conditioned`` (False:
time-free net, ``t`` ignored), ``time_scale`` (see ``masf.nets.embedding``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from masf.nets.blocks import check_input
from masf.nets.trunk import UNetTrunk, check_grid


class UNet2D(nn.Module):
    """Periodic 2-D UNet x0-predictor: forward(x: (B, C, n, m), t: (B,) | None) -> (B, C, n, m)."""

    kind = "unet2d"
    heads = 1

    def __init__(
        self,
        state_shape: Sequence[int],
        *,
        model_channels: int = 16,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (),
        mid_attention: bool = True,
        num_heads: int = 1,
        dropout: float = 0.0,
        time_conditioned: bool = True,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        state_shape = tuple(int(s) for s in state_shape)
        if len(state_shape) != 3:
            raise ValueError(f"{self.kind} needs a state shape (C, n, m), got {state_shape}")
        channel_mult = tuple(int(m) for m in channel_mult)
        attention_levels = tuple(int(a) for a in attention_levels)
        check_grid(state_shape[1:], channel_mult, f"{self.kind}: grid")
        self.state_shape = state_shape
        self.time_conditioned = bool(time_conditioned)
        self.config = {
            "kind": self.kind,
            "state_shape": list(state_shape),
            "model_channels": int(model_channels),
            "channel_mult": list(channel_mult),
            "num_res_blocks": int(num_res_blocks),
            "attention_levels": list(attention_levels),
            "mid_attention": bool(mid_attention),
            "num_heads": int(num_heads),
            "dropout": float(dropout),
            "time_conditioned": bool(time_conditioned),
            "time_scale": float(time_scale),
        }
        self.trunk = UNetTrunk(
            2,
            state_shape[0],
            model_channels=int(model_channels),
            channel_mult=channel_mult,
            num_res_blocks=int(num_res_blocks),
            attention_levels=attention_levels,
            mid_attention=bool(mid_attention),
            num_heads=int(num_heads),
            dropout=float(dropout),
            time_conditioned=bool(time_conditioned),
            time_scale=float(time_scale),
            heads=self.heads,
        )

    def forward(self, x: Tensor, t: Tensor | float | None = None) -> Tensor:
        check_input(x, self.state_shape, self.kind)
        return self.trunk.run(x, t)[0]


class DualHeadUNet2D(UNet2D):
    """Shared encoder/middle, two decoders: forward(x, t) -> (x0_hat, h_hat), each (B, C, n, m)."""

    kind = "dual_unet2d"
    heads = 2

    def forward(self, x: Tensor, t: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
        check_input(x, self.state_shape, self.kind)
        x0_hat, h_hat = self.trunk.run(x, t)
        return x0_hat, h_hat
