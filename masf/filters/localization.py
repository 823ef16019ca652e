"""Covariance localization on periodic grids: the Gaspari–Cohn taper and the LETKF's local domains.

Convention (used by ``LETKF(radius=c)``): the taper is GC(d/c) with the Gaspari–Cohn (1999, eq. 4.10)
fifth-order function, so c is the GC *half-width*: weight 1 at d = 0, 5/24 at d = c, 0 for d >= 2c (the
support is 2c). Distances d are periodic Euclidean distances between grid positions, in grid cells.

DAPPER's ``loc_rad`` is not c: DAPPER stretches it, c = 1.82·loc_rad (≈ √(10/3), so that the taper is
≈ exp(−1/2) at d = loc_rad). Use ``radius=DAPPER_GC_FACTOR * loc_rad`` to reproduce a DAPPER setup.

Grid geometry of a state shape S: ``(D,)`` is a ring of D positions (one channel); ``(C, ny, nx)`` is a
ny×nx torus with C channels sharing every position (channel c, pixel (i, j) is flat entry
c·ny·nx + i·nx + j). Observations sit at the position of the state entry they measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

DAPPER_GC_FACTOR = 1.82
TAPERS = ("gaspari_cohn", "boxcar")


def gaspari_cohn(r: Tensor) -> Tensor:
    """Gaspari–Cohn taper of the scaled distance r = d/c (elementwise, any shape):

        1 − 5/3 r² + 5/8 r³ + 1/2 r⁴ − 1/4 r⁵                        for 0 <= r <= 1,
        4 − 5r + 5/3 r² + 5/8 r³ − 1/2 r⁴ + 1/12 r⁵ − 2/(3r)          for 1 < r < 2,
        0                                                            for r >= 2.

    Continuous with value 5/24 at r = 1; uses |r|.
    """
    r = r.abs()
    inner = 1 + r**2 * (-5 / 3 + r * (5 / 8 + r * (1 / 2 - r / 4)))
    ro = r.clamp(min=1.0)
    outer = 4 - 5 * ro + ro**2 * (5 / 3 + ro * (5 / 8 + ro * (-1 / 2 + ro / 12))) - 2 / (3 * ro)
    return torch.where(r <= 1, inner, torch.where(r < 2, outer, torch.zeros_like(r)))


def taper_weights(distance: Tensor, radius: float, taper: str) -> Tensor:
    """Weights for distances (grid cells): GC(d/c), or 1 for d <= 2c ("boxcar"); 0 beyond 2c."""
    if taper == "gaspari_cohn":
        return gaspari_cohn(distance / radius).clamp(min=0.0)
    if taper == "boxcar":
        return (distance <= 2 * radius).to(distance.dtype)
    raise ValueError(f"taper must be one of {', '.join(TAPERS)}, got {taper!r}")


def grid_geometry(state_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(channels, grid shape) of a state shape: (1, (D,)) for (D,), (C, (ny, nx)) for (C, ny, nx)."""
    shape = tuple(int(s) for s in state_shape)
    if len(shape) == 1:
        return 1, shape
    if len(shape) == 3:
        return shape[0], shape[1:]
    raise ValueError(
        f"localization needs a state shaped (D,) (ring) or (C, ny, nx) (torus), got {state_shape!r}"
    )


def periodic_offsets(grid: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """Every displacement on the periodic grid once: offsets (M, k) int64 with each component in
    [−g//2, g − g//2 − 1] (the minimum image), and their Euclidean lengths (M,) float64."""
    axes = [torch.arange(-(g // 2), g - g // 2, device=device) for g in grid]
    offsets = torch.cartesian_prod(*axes).reshape(-1, len(grid))
    return offsets, offsets.to(torch.float64).square().sum(dim=1).sqrt()


@dataclass(frozen=True)
class LocalDomains:
    """The local analyses of an LETKF, padded to a common number K of local observations.

    Attributes:
        members: (P, G) int64 flat state indices updated by each of the P local analyses
            (G = C channels sharing a position, or G = 1 with ``same_channel_only``).
        obs: (P, K) int64 indices into the m observations (padding entries point at observation 0).
        weights: (P, K) taper weights in (0, 1]; exactly 0 on padding.
    """

    members: Tensor
    obs: Tensor
    weights: Tensor


def local_domains(
    state_shape: tuple[int, ...],
    obs_index: Tensor,
    radius: float,
    *,
    taper: str = "gaspari_cohn",
    same_channel_only: bool = False,
) -> LocalDomains:
    """Vectorized neighbour search: for each grid position, the observations within distance < 2c.

    Works by an offset stencil: a lookup table obs_at[channel, position] (−1 where unobserved) is
    gathered at position + offset for every offset with nonzero taper weight, then the hits are packed to
    the left of each row. Cost O(P·M_c·C) with M_c ≈ π(2c)² stencil offsets; no Python loop over
    positions. ``obs_index`` (m,) holds the flat state indices of the observations.
    """
    channels, grid = grid_geometry(state_shape)
    device = obs_index.device
    n_pos = math.prod(grid)
    obs_at = torch.full((channels * n_pos,), -1, dtype=torch.long, device=device)
    obs_at[obs_index] = torch.arange(obs_index.numel(), device=device)
    obs_at = obs_at.reshape(channels, n_pos)

    offsets, distance = periodic_offsets(grid, device)
    weight = taper_weights(distance, float(radius), taper)
    keep = weight > 0
    offsets, weight = offsets[keep], weight[keep]  # (M, k), (M,)

    sizes = torch.tensor(grid, device=device)
    flat_pos = torch.arange(n_pos, device=device)
    strides = [math.prod(grid[a + 1 :]) for a in range(len(grid))]
    coords = torch.stack([(flat_pos // st) % g for st, g in zip(strides, grid, strict=True)], dim=1)  # (P, k)
    neighbours = (coords.unsqueeze(1) + offsets.unsqueeze(0)) % sizes  # (P, M, k)
    flat = torch.zeros(neighbours.shape[:2], dtype=torch.long, device=device)
    for axis in range(len(grid)):
        flat = flat * grid[axis] + neighbours[..., axis]
    candidates = obs_at[:, flat]  # (C, P, M)

    positions = torch.arange(n_pos, device=device)
    channel_base = (torch.arange(channels, device=device) * n_pos).unsqueeze(1)  # (C, 1)
    if same_channel_only or channels == 1:
        members = (channel_base + positions).reshape(-1, 1)  # (C·P, 1)
        candidates = candidates.reshape(channels * n_pos, -1)
        cand_weight = weight.expand(candidates.shape[0], -1)
    else:
        members = (channel_base + positions).T.contiguous()  # (P, C)
        candidates = candidates.permute(1, 0, 2).reshape(n_pos, -1)  # (P, C·M)
        cand_weight = weight.repeat(channels).expand(n_pos, -1)

    valid = candidates >= 0
    k = max(int(valid.sum(dim=1).max()), 1) if valid.numel() else 1
    order = torch.argsort(valid.to(torch.int8), dim=1, descending=True, stable=True)[:, :k]
    hit = valid.gather(1, order)
    obs = torch.where(hit, candidates.gather(1, order), 0)
    weights = torch.where(hit, cand_weight.gather(1, order), 0.0)
    return LocalDomains(members=members, obs=obs, weights=weights)


def taper_matrix(state_shape: tuple[int, ...], radius: float, taper: str = "gaspari_cohn") -> Tensor:
    """The (D, D) float64 taper L_ij = ρ(d_ij) between the entries of a state shaped ``state_shape``
    (d_ij: periodic Euclidean distance of their grid positions, channels sharing a position; ρ as in
    :func:`taper_weights`). Used to localize an ensemble covariance, B = L ∘ P_f (the Schur product).

    Dense: D² entries, meant for states of up to a few thousand entries (``masf.filters.hybrid``).
    """
    channels, grid = grid_geometry(state_shape)
    n_pos = math.prod(grid)
    strides = [math.prod(grid[a + 1 :]) for a in range(len(grid))]
    flat_pos = torch.arange(n_pos)
    coords = torch.stack([(flat_pos // st) % g for st, g in zip(strides, grid, strict=True)], dim=1)
    diff = (coords.unsqueeze(1) - coords.unsqueeze(0)).abs()  # (P, P, k)
    sizes = torch.tensor(grid)
    diff = torch.minimum(diff, sizes - diff)  # the minimum image on each periodic axis
    distance = diff.to(torch.float64).square().sum(dim=-1).sqrt()
    weights = taper_weights(distance, float(radius), taper)
    return weights.repeat(channels, channels)
