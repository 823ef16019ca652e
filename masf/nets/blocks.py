"""Building blocks of the periodic UNets, generic over 1-D and 2-D grids (``dims`` = 1 or 2).

Feature maps have shape (B, C, *grid). All 3x3 (or 3) convolutions pad circularly, so the blocks commute
with periodic shifts; resampling is 2x average pooling / nearest-neighbour upsampling, which commutes with
shifts by multiples of 2.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def check_input(x: Tensor, state_shape: tuple[int, ...], name: str) -> None:
    """x must have shape (B, *state_shape)."""
    if x.ndim != len(state_shape) + 1 or tuple(x.shape[1:]) != state_shape:
        raise ValueError(
            f"{name} expects x of shape (B, {', '.join(map(str, state_shape))}), got {tuple(x.shape)}"
        )


def num_groups(channels: int) -> int:
    """Largest divisor of ``channels`` that is <= 32 (GroupNorm groups, method.md §5.1)."""
    return max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels), channels)


def conv(dims: int, c_in: int, c_out: int, kernel: int = 3) -> nn.Module:
    """A stride-1 convolution with circular padding keeping the grid size (kernel odd)."""
    cls = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
    return cls(c_in, c_out, kernel, padding=kernel // 2, padding_mode="circular")


def zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (used for the last layer of residual branches)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def resample(x: Tensor, mode: str | None) -> Tensor:
    """``"down"``: 2x average pooling; ``"up"``: 2x nearest upsampling; ``None``: identity."""
    if mode is None:
        return x
    if mode == "down":
        return F.avg_pool1d(x, 2) if x.ndim == 3 else F.avg_pool2d(x, 2)
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class ResBlock(nn.Module):
    """Residual block with FiLM time conditioning and optional resampling.

        h = conv1(resample(silu(norm1(x))))
        h = norm2(h) · (1 + scale(e)) + shift(e)          (only if emb_dim is given)
        out = skip(resample(x)) + conv2(dropout(silu(h)))  (conv2 zero-initialised)

    x: (B, c_in, *grid), e: (B, emb_dim) -> (B, c_out, *grid') with grid' = grid/2, grid or 2·grid.
    """

    def __init__(
        self,
        dims: int,
        c_in: int,
        c_out: int,
        emb_dim: int | None,
        *,
        dropout: float = 0.0,
        mode: str | None = None,
    ) -> None:
        super().__init__()
        if mode not in (None, "down", "up"):
            raise ValueError(f"mode must be None, 'down' or 'up', got {mode!r}")
        self.mode = mode
        self.norm1 = group_norm(c_in)
        self.conv1 = conv(dims, c_in, c_out)
        self.norm2 = group_norm(c_out)
        self.film = nn.Linear(emb_dim, 2 * c_out) if emb_dim is not None else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(conv(dims, c_out, c_out))
        self.skip = nn.Identity() if c_in == c_out else conv(dims, c_in, c_out, kernel=1)

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        h = self.conv1(resample(F.silu(self.norm1(x)), self.mode))
        h = self.norm2(h)
        if self.film is not None:
            scale, shift = self.film(F.silu(emb)).chunk(2, dim=1)
            extra = (1,) * (h.ndim - 2)
            h = h * (1 + scale.view(*scale.shape, *extra)) + shift.view(*shift.shape, *extra)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(resample(x, self.mode)) + h


class Attention(nn.Module):
    """Multi-head self-attention over all grid points, residual, output projection zero-initialised.

    x: (B, C, *grid) -> (B, C, *grid); cost O(B · (#grid points)² · C).
    """

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads must divide channels={channels}, got {num_heads}")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_init(nn.Linear(channels, channels))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c = x.shape[:2]
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, L, C)
        q, k, v = self.qkv(h).view(b, -1, 3, self.num_heads, c // self.num_heads).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = self.proj(out.transpose(1, 2).reshape(b, -1, c))  # (B, L, C)
        return x + out.transpose(1, 2).reshape(x.shape)
