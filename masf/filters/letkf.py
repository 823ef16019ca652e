"""The local ensemble transform Kalman filter (LETKF; Hunt, Kostelich & Szunyogh 2007), R-localized.

One ETKF analysis per grid position p (per (channel, position) with ``same_channel_only``), using the
observations within periodic grid distance < 2c of p, each weighted by the taper ρ_po = GC(d_po/c)
(``masf.filters.localization``). With inflated anomalies A = ρ(X − x̄), B = ρ(Y − ȳ) and r = σ² + eps:

    Ŷ_p = B[:, o_p] · diag(√(ρ_po / r)),   d̂_p = (z_o − ȳ)[o_p] · √(ρ_po / r),
    C_p = Ŷ_p Ŷ_pᵀ + (N−1) I,   w̄_p = C_p⁻¹ Ŷ_p d̂_p,   T_p = √(N−1) C_p^{-1/2},
    X_a[:, j] = x̄_j + w̄_pᵀ A[:, j] + T_p A[:, j]      for every state entry j at position p.

All P local analyses are batched (one ``eigh`` of a (P, N, N) stack, in chunks to bound memory); the
local domains are built once by a vectorized stencil search and cached in ``ctx.state``. A position
without observations keeps its (inflated) prior. ``rotate=True`` applies one random mean-preserving
rotation to all analysis anomalies afterwards (as DAPPER does).

``radius`` is the Gaspari–Cohn half-width c in grid cells (support 2c). DAPPER's ``loc_rad`` maps to
``radius = 1.82 * loc_rad`` (``DAPPER_GC_FACTOR``). With c → ∞, ρ = 1 and eps = 0 the LETKF is the ETKF
(``EnKF(variant="sqrt")``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from masf.filters.base import Context
from masf.filters.enkf import check_eps, check_inflation, etkf_transform
from masf.filters.ensemble import (
    check_ensemble_operator,
    check_prior,
    check_spread,
    inflated_anomalies,
    observation_space,
    random_rotation,
)
from masf.filters.localization import TAPERS, LocalDomains, grid_geometry, local_domains

# Upper bound on the elements of one chunk of gathered local observation anomalies (P_chunk · N · K).
_CHUNK_ELEMENTS = 1 << 24
_CACHE_KEY = "letkf_domains"


@dataclass(frozen=True)
class LETKF:
    """LETKF with Gaspari–Cohn R-localization on periodic 1-D and 2-D grids.

    Args:
        radius: GC half-width c in grid cells (> 0); observations at distance >= 2c are ignored.
        inflation: multiplicative prior anomaly inflation ρ >= 1.
        rotate: random mean-preserving rotation of the analysis anomalies.
        eps: added to the observation-error variance σ² (>= 0).
        taper: ``"gaspari_cohn"`` or ``"boxcar"`` (weight 1 up to distance 2c).
        same_channel_only: for (C, n, n) states, use only observations of the entry's own channel.
    """

    radius: float = 5.0
    inflation: float = 1.0
    rotate: bool = False
    eps: float = 0.0
    taper: str = "gaspari_cohn"
    same_channel_only: bool = False

    needs_pretraining: ClassVar[bool] = False

    def __post_init__(self) -> None:
        radius = float(self.radius)
        if not math.isfinite(radius) or radius <= 0:
            raise ValueError(f"letkf: radius must be a finite number > 0 (grid cells), got {self.radius!r}")
        object.__setattr__(self, "radius", radius)
        object.__setattr__(self, "inflation", check_inflation(self.inflation, "letkf"))
        object.__setattr__(self, "eps", check_eps(self.eps, "letkf"))
        if self.taper not in TAPERS:
            raise ValueError(f"letkf: taper must be one of {', '.join(TAPERS)}, got {self.taper!r}")
        for flag in ("rotate", "same_channel_only"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"letkf: {flag} must be True or False, got {getattr(self, flag)!r}")

    def check_operator(self, operator: Any) -> None:
        """Accepts every masf operator on a (D,) ring or a (C, ny, nx) torus state (see ``ensemble``)."""
        check_ensemble_operator(operator, "letkf", self.eps)
        if operator.state_shape is None:
            return
        try:
            grid_geometry(operator.state_shape)
        except ValueError as err:
            raise ValueError(f"letkf: {err}") from None

    def domains(self, state_shape: tuple[int, ...], obs_index: Tensor, ctx: Context) -> LocalDomains:
        """The local domains for these observations, cached in ``ctx.state`` while they do not change."""
        key = (tuple(state_shape), self.radius, self.taper, self.same_channel_only)
        cached = ctx.state.get(_CACHE_KEY)
        if (
            cached is not None
            and cached[0] == key
            and cached[1].shape == obs_index.shape
            and cached[1].device == obs_index.device
            and bool(torch.equal(cached[1], obs_index))
        ):
            return cached[2]
        found = local_domains(
            state_shape,
            obs_index,
            self.radius,
            taper=self.taper,
            same_channel_only=self.same_channel_only,
        )
        ctx.state[_CACHE_KEY] = (key, obs_index.clone(), found)
        return found

    def analyse(self, prior: Tensor, z: Tensor, operator: Any, ctx: Context) -> Tensor:
        """Analysis ensemble (N, *S) from the prior (N, *S) and the measurement z (*S)."""
        self.check_operator(operator)
        check_prior(prior, z, operator, "letkf")
        state_shape = tuple(prior.shape[1:])
        try:
            grid_geometry(state_shape)
        except ValueError as err:
            raise ValueError(f"letkf: {err}") from None
        n = prior.shape[0]
        y, z_o, obs_index = observation_space(prior, z, operator)
        x_mean, a = inflated_anomalies(prior.reshape(n, -1), self.inflation)
        check_spread(a, "letkf")
        y_mean, b = inflated_anomalies(y, self.inflation)
        scale = 1.0 / math.sqrt(float(operator.noise_std) ** 2 + self.eps)
        y_hat, d_hat = b * scale, (z_o - y_mean) * scale

        dom = self.domains(state_shape, obs_index, ctx)
        root_w = dom.weights.to(prior.dtype).sqrt()
        n_dom, k = dom.obs.shape
        chunk = max(1, _CHUNK_ELEMENTS // (n * k))
        out = torch.empty_like(a)
        for start in range(0, n_dom, chunk):
            obs, rw, members = (t[start : start + chunk] for t in (dom.obs, root_w, dom.members))
            y_loc = y_hat[:, obs].permute(1, 0, 2) * rw.unsqueeze(1)  # (P, N, K)
            w, t = etkf_transform(y_loc, d_hat[obs] * rw)  # (P, N), (P, N, N)
            a_loc = a[:, members].permute(1, 0, 2)  # (P, N, G)
            mean_loc = x_mean[members] + (w.unsqueeze(1) @ a_loc).squeeze(1)  # (P, G)
            e_loc = mean_loc.unsqueeze(1) + t @ a_loc  # (P, N, G)
            out[:, members.reshape(-1)] = e_loc.permute(1, 0, 2).reshape(n, -1)

        if self.rotate:
            mean_a = out.mean(dim=0)
            out = mean_a + random_rotation(n, ctx.generator, out) @ (out - mean_a)
        return out.reshape(prior.shape)
