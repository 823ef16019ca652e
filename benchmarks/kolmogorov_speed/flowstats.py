"""Flow statistics for the Kolmogorov benchmark (numpy only): energy, enstrophy, energy spectrum.

Fields are velocities ``(..., 2, n, n)`` indexed ``[channel, y, x]`` on the collocated grid
x_i = 2π i/n, as ``masf.systems.kolmogorov`` holds them. ``from_jax_cfd`` converts jax-cfd arrays
(indexed ``[channel, x, y]`` on the staggered MAC grid) to that layout first.
"""

from __future__ import annotations

import numpy as np


def _wavenumbers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(k_x (1, n//2+1), k_y (n, 1)) of the rfft2 layout, integer wavenumbers on [0, 2π]."""
    return np.fft.rfftfreq(n, 1.0 / n)[None, :], np.fft.fftfreq(n, 1.0 / n)[:, None]


def from_jax_cfd(uv_xy: np.ndarray) -> np.ndarray:
    """jax-cfd velocities ``(..., 2, n, n)`` [c, x, y], staggered -> [c, y, x] at the cell corners.

    jax-cfd stores u at ((i+1)h, (j+½)h) and v at ((i+½)h, (j+1)h), h = 2π/n. Samples of a field at
    x_i + δ have DFT coefficients c_k e^{ikδ}, so multiplying by e^{−ik·δ} moves them to (ih, jh)
    (spectral interpolation; the Nyquist modes, which have no well-defined shift, are dropped).
    """
    a = np.swapaxes(uv_xy, -1, -2).astype(np.float64)
    n = a.shape[-1]
    kx, ky = _wavenumbers(n)
    h = 2 * np.pi / n
    shifts = ((h, h / 2), (h / 2, h))  # (δx, δy) of u and of v
    out = np.empty_like(a)
    nyquist = (np.abs(ky) == n // 2) | (kx == n // 2)
    for c, (dx, dy) in enumerate(shifts):
        coef = np.fft.rfft2(a[..., c, :, :]) * np.exp(-1j * (kx * dx + ky * dy))
        out[..., c, :, :] = np.fft.irfft2(np.where(nyquist, 0, coef), s=(n, n))
    return out


def snapshot_stats(uv: np.ndarray) -> dict[str, np.ndarray]:
    """Per-snapshot statistics of ``uv (..., 2, n, n)``.

    energy = ½⟨u² + v²⟩; enstrophy = ½⟨ω²⟩ with ω = ∂v/∂x − ∂u/∂y (spectral); spectrum E(k) for the
    shells k = 0..n/2 (|k| rounded), normalized so that Σ_k E(k) = energy (modes past the n/2 shell,
    the corners of the square, are left out of the spectrum only).
    """
    n = uv.shape[-1]
    coef = np.fft.fft2(uv) / n**2  # Fourier coefficients, (..., 2, n, n)
    kk = np.fft.fftfreq(n, 1.0 / n)
    kx, ky = kk[None, :], kk[:, None]
    dx = np.where(np.abs(kx) == n // 2, 0, kx)
    dy = np.where(np.abs(ky) == n // 2, 0, ky)
    w = 1j * (dx * coef[..., 1, :, :] - dy * coef[..., 0, :, :])
    power = 0.5 * (np.abs(coef) ** 2).sum(axis=-3)  # (..., n, n)
    shell = np.rint(np.sqrt(kx**2 + ky**2)).astype(int)
    spectrum = np.stack([power[..., shell == k].sum(axis=-1) for k in range(n // 2 + 1)], axis=-1)
    return {
        "energy": 0.5 * (uv**2).sum(axis=-3).mean(axis=(-2, -1)),
        "enstrophy": 0.5 * (np.abs(w) ** 2).sum(axis=(-2, -1)),
        "spectrum": spectrum,
    }


def summarize(uv: np.ndarray) -> dict:
    """Averages over members and time of ``uv (members, time, 2, n, n)``, with member-to-member errors.

    ``*_sem`` is the standard error of the mean over members of each member's time average (members are
    independent; snapshots within a member are not).
    """
    s = snapshot_stats(uv)
    members = uv.shape[0]
    out: dict = {"members": members, "snapshots": int(uv.shape[1]), "n": int(uv.shape[-1])}
    for key in ("energy", "enstrophy"):
        per_member = s[key].mean(axis=1)
        out[key] = float(per_member.mean())
        out[f"{key}_sem"] = float(per_member.std(ddof=1) / np.sqrt(members)) if members > 1 else float("nan")
    out["spectrum"] = s["spectrum"].mean(axis=(0, 1)).tolist()
    return out
