"""Periodic 1-D UNet for states on a ring (Lorenz-96, state (D,)).

forward(x: (B, D), t: (B,) | None) -> (B, D); internally (B, 1, D). With L = len(channel_mult) levels the
ring is down-sampled L-1 times, so D must be divisible by 2^(L-1): D = 40 = 2^3 · 5 allows up to 4 levels;
the default (1, 2, 2) down-samples twice (40 -> 20 -> 10). Sizes as in ``masf.nets.unet2d``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from masf.nets.blocks import check_input
from masf.nets.trunk import UNetTrunk, check_grid


class UNet1D(nn.Module):
    """Periodic 1-D UNet x0-predictor: forward(x: (B, D), t: (B,) | None) -> (B, D)."""

    kind = "unet1d"

    def __init__(
        self,
        state_shape: Sequence[int],
        *,
        model_channels: int = 32,
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
        if len(state_shape) != 1:
            raise ValueError(f"unet1d needs a state shape (D,), got {state_shape}")
        channel_mult = tuple(int(m) for m in channel_mult)
        attention_levels = tuple(int(a) for a in attention_levels)
        check_grid(state_shape, channel_mult, "unet1d: state dimension")
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
            1,
            1,
            model_channels=int(model_channels),
            channel_mult=channel_mult,
            num_res_blocks=int(num_res_blocks),
            attention_levels=attention_levels,
            mid_attention=bool(mid_attention),
            num_heads=int(num_heads),
            dropout=float(dropout),
            time_conditioned=bool(time_conditioned),
            time_scale=float(time_scale),
            heads=1,
        )

    def forward(self, x: Tensor, t: Tensor | float | None = None) -> Tensor:
        check_input(x, self.state_shape, self.kind)
        return self.trunk.run(x[:, None, :], t)[0][:, 0, :]
