"""The dimension-generic UNet trunk (ADM layout) shared by ``UNet1D``, ``UNet2D`` and ``DualHeadUNet2D``.

Encoder: input conv to ``mc·mult[0]`` channels, then per level ``num_res_blocks`` ResBlocks (+ attention when
the level's down-sampling factor is in ``attention_levels``), and a residual down-sampling ResBlock between
levels; then the middle block ResBlock, attention (if ``mid_attention``), ResBlock. Every block output is
kept as a skip. Decoder: per level (reversed) ``num_res_blocks + 1`` ResBlocks on [h, skip] (+ attention),
a residual up-sampling ResBlock between levels, then GroupNorm, SiLU and a zero-initialised output conv.

With L = len(channel_mult) levels the grid is down-sampled L-1 times, so every grid size must be divisible
by 2^(L-1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from masf.nets.blocks import Attention, ResBlock, conv, group_norm, zero_init
from masf.nets.embedding import TimeEmbedding, prepare_time


def check_sizes(
    model_channels: int,
    channel_mult: tuple[int, ...],
    num_res_blocks: int,
    attention_levels: tuple[int, ...],
    num_heads: int,
    dropout: float,
) -> None:
    """Raise ValueError on an impossible UNet configuration."""
    if model_channels < 1:
        raise ValueError(f"model_channels must be >= 1, got {model_channels}")
    if len(channel_mult) < 1 or any(m < 1 for m in channel_mult):
        raise ValueError(f"channel_mult must be a non-empty tuple of ints >= 1, got {channel_mult}")
    if num_res_blocks < 1:
        raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
    if any(a < 1 or a & (a - 1) for a in attention_levels):
        raise ValueError(
            f"attention_levels must be powers of 2 (down-sampling factors), got {attention_levels}"
        )
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def check_grid(grid: tuple[int, ...], channel_mult: tuple[int, ...], what: str) -> None:
    """Each grid size must be divisible by 2^(len(channel_mult) - 1)."""
    factor = 2 ** (len(channel_mult) - 1)
    if any(n < 1 or n % factor for n in grid):
        raise ValueError(
            f"{what} {grid} is not divisible by 2^(len(channel_mult)-1) = {factor} "
            f"(channel_mult={channel_mult}); use fewer levels in channel_mult"
        )


class Sequence(nn.ModuleList):
    """Blocks applied in order, each taking (h, emb)."""

    def forward(self, h: Tensor, emb: Tensor | None) -> Tensor:
        for block in self:
            h = block(h, emb)
        return h


class Encoder(nn.Module):
    """(B, in_ch, *grid), emb -> (middle features, list of skips)."""

    def __init__(
        self,
        dims: int,
        in_channels: int,
        model_channels: int,
        channel_mult: tuple[int, ...],
        num_res_blocks: int,
        attention_levels: tuple[int, ...],
        mid_attention: bool,
        num_heads: int,
        dropout: float,
        emb_dim: int | None,
    ) -> None:
        super().__init__()
        ch = model_channels * channel_mult[0]
        self.inp = conv(dims, in_channels, ch)
        self.skip_channels = [ch]
        self.down = nn.ModuleList()
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                blocks = [ResBlock(dims, ch, model_channels * mult, emb_dim, dropout=dropout)]
                ch = model_channels * mult
                if ds in attention_levels:
                    blocks.append(Attention(ch, num_heads))
                self.down.append(Sequence(blocks))
                self.skip_channels.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(Sequence([ResBlock(dims, ch, ch, emb_dim, dropout=dropout, mode="down")]))
                self.skip_channels.append(ch)
                ds *= 2
        mid = [ResBlock(dims, ch, ch, emb_dim, dropout=dropout)]
        if mid_attention:
            mid.append(Attention(ch, num_heads))
        mid.append(ResBlock(dims, ch, ch, emb_dim, dropout=dropout))
        self.mid = Sequence(mid)
        self.out_channels = ch

    def forward(self, x: Tensor, emb: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        h = self.inp(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        return self.mid(h, emb), skips


class Decoder(nn.Module):
    """(middle features, skips), emb -> (B, out_channels, *grid)."""

    def __init__(
        self,
        dims: int,
        out_channels: int,
        encoder: Encoder,
        model_channels: int,
        channel_mult: tuple[int, ...],
        num_res_blocks: int,
        attention_levels: tuple[int, ...],
        num_heads: int,
        dropout: float,
        emb_dim: int | None,
    ) -> None:
        super().__init__()
        skip_channels = list(encoder.skip_channels)
        ch = encoder.out_channels
        ds = 2 ** (len(channel_mult) - 1)
        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            for i in range(num_res_blocks + 1):
                c_out = model_channels * channel_mult[level]
                blocks = [ResBlock(dims, ch + skip_channels.pop(), c_out, emb_dim, dropout=dropout)]
                ch = c_out
                if ds in attention_levels:
                    blocks.append(Attention(ch, num_heads))
                if level > 0 and i == num_res_blocks:
                    blocks.append(ResBlock(dims, ch, ch, emb_dim, dropout=dropout, mode="up"))
                    ds //= 2
                self.up.append(Sequence(blocks))
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_init(conv(dims, ch, out_channels)))

    def forward(self, h: Tensor, skips: list[Tensor], emb: Tensor | None) -> Tensor:
        skips = list(skips)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


class UNetTrunk(nn.Module):
    """Time embedding, one shared encoder + middle block, and ``heads`` decoders.

    ``run(x, t)`` maps x: (B, channels, *grid) and t: (B,) (or None when time-free) to a list of ``heads``
    tensors of shape (B, channels, *grid). The time embedding has width 4·model_channels.
    """

    def __init__(
        self,
        dims: int,
        channels: int,
        *,
        model_channels: int,
        channel_mult: tuple[int, ...],
        num_res_blocks: int,
        attention_levels: tuple[int, ...],
        mid_attention: bool,
        num_heads: int,
        dropout: float,
        time_conditioned: bool,
        time_scale: float,
        heads: int,
    ) -> None:
        super().__init__()
        check_sizes(model_channels, channel_mult, num_res_blocks, attention_levels, num_heads, dropout)
        self.time_conditioned = bool(time_conditioned)
        emb_dim = 4 * model_channels if time_conditioned else None
        self.time_embed = (
            TimeEmbedding(model_channels, emb_dim, time_scale=time_scale) if time_conditioned else None
        )
        common = dict(
            model_channels=model_channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attention_levels=attention_levels,
            num_heads=num_heads,
            dropout=dropout,
            emb_dim=emb_dim,
        )
        self.encoder = Encoder(dims, channels, mid_attention=mid_attention, **common)
        self.decoders = nn.ModuleList(Decoder(dims, channels, self.encoder, **common) for _ in range(heads))

    def run(self, x: Tensor, t: Tensor | float | None) -> list[Tensor]:
        t = prepare_time(t, x, self.time_conditioned)
        emb = self.time_embed(t) if self.time_embed is not None else None
        h, skips = self.encoder(x, emb)
        return [decoder(h, skips, emb) for decoder in self.decoders]
