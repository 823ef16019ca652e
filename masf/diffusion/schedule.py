"""Cosine schedule of the measurement-aware forward process and the samplers' time grids.

The signal coefficient is evaluated on a clamped time t̃ = clip(t, tau, T) (method.md §2.1):

    a(t) = cos((t̃ + c)/(1 + c) · π/2) / cos(c/(1 + c) · π/2),   c = 0.008
    r(t) = sqrt(1 − a(t)²)

a decreases from a(tau) ≈ 1 to a(T) = 0.0124673 (not 0) at the default T = 0.992; r increases from ≈ 0
to ≈ 1. Both accept a Python float (returning a float) or a tensor (returning a tensor of the same shape,
dtype and device).
"""

from __future__ import annotations

import math

import torch

C = 0.008
"""Offset of the cosine schedule."""
T_DEFAULT = 0.992
"""Default terminal time (clamp from above)."""
TAU_DEFAULT = 1e-5
"""Default smallest time (clamp from below)."""

_NORM = math.cos(C / (1.0 + C) * math.pi / 2.0)


def check_times(T: float, tau: float) -> None:
    """Raise ``ValueError`` unless ``0 <= tau < T <= 1``."""
    if not (math.isfinite(T) and math.isfinite(tau) and 0.0 <= tau < T <= 1.0):
        raise ValueError(f"need 0 <= tau < T <= 1 for the schedule; got tau={tau!r}, T={T!r}")


def a(t: float | torch.Tensor, *, T: float = T_DEFAULT, tau: float = TAU_DEFAULT) -> float | torch.Tensor:
    """Signal coefficient a(t) on the clamped time clip(t, tau, T); float in, float out; tensor in, tensor out."""
    check_times(T, tau)
    if isinstance(t, torch.Tensor):
        tc = t.clamp(tau, T)
        return torch.cos((tc + C) / (1.0 + C) * (math.pi / 2.0)) / _NORM
    tc = min(max(float(t), tau), T)
    return math.cos((tc + C) / (1.0 + C) * math.pi / 2.0) / _NORM


def r(t: float | torch.Tensor, *, T: float = T_DEFAULT, tau: float = TAU_DEFAULT) -> float | torch.Tensor:
    """Noise coefficient r(t) = sqrt(1 − a(t)²) (same clamping and types as :func:`a`)."""
    at = a(t, T=T, tau=tau)
    if isinstance(at, torch.Tensor):
        return torch.sqrt((1.0 - at * at).clamp_min(0.0))
    return math.sqrt(max(1.0 - at * at, 0.0))


def time_grid(
    nfe: int,
    *,
    T: float = T_DEFAULT,
    tau: float = TAU_DEFAULT,
    times_T: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Decreasing quadratic grid of ``nfe + 1`` times, shape (nfe + 1,).

        g_j = (1 − j/nfe)²,   s_j = g_j (T − tau) + tau,   j = 0..nfe     (s_0 = T, s_nfe = tau)

    With ``times_T=True`` every time is multiplied by T, as in the paper's code (bug B7): s_0 = T²,
    s_nfe = T·tau.
    """
    check_times(T, tau)
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1; got {nfe!r}")
    j = torch.arange(nfe + 1, dtype=torch.float64)
    s = (1.0 - j / nfe) ** 2 * (T - tau) + tau
    if times_T:
        s = s * T
    return s.to(dtype=dtype, device=device)
