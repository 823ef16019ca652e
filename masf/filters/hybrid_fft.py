"""The matrix-free hybrid prior of MASF, for states on periodic grids (docs/hybrid.md, "Matrix-free").

The dense hybrid (``masf.filters.hybrid``) builds D×D matrices; this one never does, so it serves states of
any size (Kolmogorov 64² and above). Shapes: a state S is ``(D,)`` (a ring) or ``(C, ny, nx)`` (a torus
with C channels sharing each position, ``masf.filters.localization``); G is the grid (S without the
channel axis), P = prod(G) positions, F the half-spectrum shape of ``torch.fft.rfftn`` over G. Everything
is normalized and float64; flat states are (n, D) with D = C·P.

- **Climatology**: the stationary Gaussian N(μ_c, C). μ_c is the mean field; C is the sample covariance
  averaged over the grid's translations, so it is diagonal in Fourier space up to the channels: one
  C×C Hermitian matrix Ĉ(k) = Σ_m â_m(k) â_m(k)ᴴ / ((M − 1) P) per wavenumber k (â_m the DFT of the
  anomaly of climatology state m). Eigenvalues are floored at ``floor`` times their mean.
- **Forecast**: B = L ∘ P_f, P_f = AᵀA/(N − 1) of the inflated anomalies, L(p, q) = ρ(|p − q|) the
  Gaspari–Cohn taper of the periodic distance (the LETKF's radius), the same for every channel pair. L is
  circulant, ℓ̂ its (real) spectrum, so

      (B v)_c = Σ_j a_{j,c} ∘ ℓ ⊛ (Σ_c' a_{j,c'} ∘ v_c') / (N − 1)        (N FFT convolutions),

  and draws of N(x̄_f, B) are x̄_f + Σ_j a_j ∘ (ℓ^{1/2} ⊛ ε_j)/√(N − 1), ε_j white noise on the grid
  (ℓ̂ clipped at 0 for the root; B itself uses ℓ̂ as it is).

**Hybrid denoiser.** With the deconvolution B̃⁻¹ = B⁻¹ − C_d⁻¹, the climatology's Γ_t = (C_d⁻¹ + G)⁻¹ and
G = diag(A(t)²/Σ(t)) of the mask process (x_t = A x0 + B(t) + √Σ ε):

    D_H = D + Γ_t (Γ_t + B̃)⁻¹ (m̃ − D) = D + (I + B G)⁻¹ [x̄_f − D + B C_d⁻¹ (D − μ_c)],

    (I + B G)⁻¹ u = u − B s y = y / s,   M y = s u,   M = I + s B s,   s = G^{1/2},

with M symmetric positive definite, solved by conjugate gradients preconditioned by its diagonal
1 + G ∘ diag(B), and read back as y/s where s ≥ 1 (the CG error damped, not amplified by ‖B‖s).
C_d⁻¹ is the climatology precision capped per wavenumber at the stationary forecast precision
(:func:`deconvolution_spectrum`): with C_d = C (the forecast narrower than the climatology at every
wavenumber) and a Gaussian climatology, D_H is exactly E[x0 | x_t] under N(x̄_f, B). Uncapped, C⁻¹
(eigenvalues down to ``floor``) multiplied the network's small-scale error where the localized B is wider
than the climatology, and the 64² analyses were noise (docs/hybrid.md, "Limits").
Cost per call: (2 + 2·iterations) products with B, i.e. N FFT pairs on the grid per row and product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from masf.diffusion.process import MeasurementAwareProcess
from masf.filters.localization import grid_geometry, taper_weights

F64 = torch.float64


def _grid(state_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(channels C, grid G, FFT dims of a (n, C, *G) batch)."""
    channels, grid = grid_geometry(state_shape)
    return channels, grid, tuple(range(2, 2 + len(grid)))


def _cross_spectrum(anomalies: Tensor, grid: tuple[int, ...], dims: tuple[int, ...]) -> Tensor:
    """Σ_m â_m(k) â_m(k)ᴴ / ((M − 1) P) (*F, C, C) of anomalies (M, C, *G): the DFT of their circular
    autocovariance averaged over the grid's translations."""
    ah = torch.fft.rfftn(anomalies, dim=dims).movedim(1, -1)  # (M, *F, C)
    return torch.einsum("m...i,m...j->...ij", ah, ah.conj()) / ((len(anomalies) - 1) * math.prod(grid))


@dataclass(frozen=True)
class StationaryGaussian:
    """N(mean, C) with C translation-invariant on the grid (module docstring).

    Attributes:
        mean: (D,) the mean field. spectrum: (*F, C, C) complex Ĉ(k); inverse: (*F, C, C) Ĉ(k)⁻¹;
        root_inv: (*F, C, C) Ĉ(k)^{-1/2}. shape: the state shape S.
    """

    mean: Tensor
    spectrum: Tensor
    inverse: Tensor
    root_inv: Tensor
    shape: tuple[int, ...]

    def apply(self, kernel: Tensor, v: Tensor) -> Tensor:
        """The translation-invariant operator of spectrum ``kernel`` (*F, C, C) on flat ``v`` (n, D)."""
        channels, grid, dims = _grid(self.shape)
        vh = torch.fft.rfftn(v.reshape(len(v), channels, *grid), dim=dims).movedim(1, -1)
        out = (kernel @ vh.unsqueeze(-1)).squeeze(-1).movedim(-1, 1)
        return torch.fft.irfftn(out, s=grid, dim=dims).reshape(len(v), -1)

    def cov(self, v: Tensor) -> Tensor:
        """C v for flat ``v`` (n, D)."""
        return self.apply(self.spectrum, v)

    def solve(self, v: Tensor) -> Tensor:
        """C⁻¹ v for flat ``v`` (n, D)."""
        return self.apply(self.inverse, v)


def stationary_gaussian(bank: Tensor, floor: float = 1e-6) -> StationaryGaussian:
    """The stationary Gaussian fit of climatology states ``bank`` (M, *S), M >= 2 (module docstring)."""
    m = len(bank)
    if m < 2:
        raise ValueError(f"masf: hybrid needs at least 2 climatology states to fit its Gaussian, got {m}")
    shape = tuple(bank.shape[1:])
    channels, grid, dims = _grid(shape)
    x = bank.to(F64).reshape(m, channels, *grid)
    mean = x.mean(0)
    vals, vecs = torch.linalg.eigh(_cross_spectrum(x - mean, grid, dims))
    vals = vals.clamp_min(floor * float(vals.mean())).unsqueeze(-2)
    spectrum = (vecs * vals.to(vecs.dtype)) @ vecs.mH
    inverse = (vecs / vals.to(vecs.dtype)) @ vecs.mH
    root_inv = (vecs * vals.rsqrt().to(vecs.dtype)) @ vecs.mH
    return StationaryGaussian(
        mean=mean.reshape(-1), spectrum=spectrum, inverse=inverse, root_inv=root_inv, shape=shape
    )


def taper_spectrum(state_shape: tuple[int, ...], radius: float, taper: str = "gaspari_cohn") -> Tensor:
    """ℓ̂ (*F), float64: the DFT of the taper ρ(d) of the periodic (minimum-image) distance d of each
    displacement on the grid, so that ℓ ⊛ w = irfftn(ℓ̂ · rfftn(w)) is the dense ``taper_matrix``'s product
    on one channel."""
    _, grid = grid_geometry(state_shape)
    axes = [torch.arange(g, dtype=F64) for g in grid]
    axes = [torch.minimum(a, g - a) for a, g in zip(axes, grid, strict=True)]
    distance = torch.stack(torch.meshgrid(*axes, indexing="ij")).square().sum(0).sqrt()
    return torch.fft.rfftn(taper_weights(distance, float(radius), taper)).real


@dataclass(frozen=True)
class FFTHybridPrior:
    """The forecast side of the matrix-free hybrid: x̄_f (D,), the inflated anomalies (N, C, *G), the
    taper spectrum ℓ̂ (*F), the climatology, diag(B) (D,), and the spectrum (*F, C, C) of the
    deconvolved climatology precision C_d⁻¹ (:func:`deconvolution_spectrum`)."""

    mean: Tensor
    anomalies: Tensor
    taper: Tensor
    clim: StationaryGaussian
    variance: Tensor
    deconvolution: Tensor

    def _convolve(self, w: Tensor, kernel: Tensor) -> Tensor:
        _, grid, _ = _grid(self.clim.shape)
        dims = tuple(range(w.ndim - len(grid), w.ndim))
        return torch.fft.irfftn(kernel * torch.fft.rfftn(w, dim=dims), s=grid, dim=dims)

    def cov(self, v: Tensor) -> Tensor:
        """B v for flat ``v`` (n, D): (B v)_c = Σ_j a_{j,c} ∘ ℓ ⊛ (Σ_c' a_{j,c'} ∘ v_c') / (N − 1)."""
        a = self.anomalies
        n_members, channels = a.shape[:2]
        flat_a = a.reshape(n_members, channels, -1)  # (N, C, P)
        w = torch.einsum("jcp,ncp->njp", flat_a, v.reshape(len(v), channels, -1))
        w = self._convolve(w.reshape(len(v), n_members, *a.shape[2:]), self.taper)
        out = torch.einsum("jcp,njp->ncp", flat_a, w.reshape(len(v), n_members, -1))
        return out.reshape(len(v), -1) / (n_members - 1)

    def draw(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws (n, *S) of N(x̄_f, B) (module docstring): the bridge's ``prior_draws``."""
        a = self.anomalies
        dev = self.mean.device if generator is None else generator.device
        eps = torch.randn((n, len(a), *a.shape[2:]), generator=generator, dtype=F64, device=dev)
        w = self._convolve(eps.to(self.mean.device), self.taper.clamp_min(0.0).sqrt())
        x = (a.unsqueeze(0) * w.unsqueeze(2)).sum(1) / math.sqrt(len(a) - 1)
        return (self.mean + x.reshape(n, -1)).reshape(n, *self.clim.shape)


def deconvolution_spectrum(anomalies: Tensor, clim: StationaryGaussian, taper: Tensor) -> Tensor:
    """C_d⁻¹ (*F, C, C): the climatology precision that the deconvolution subtracts, capped per
    wavenumber at the forecast's. With B̄ the translation average of B = L∘P_f (B̄(k) the DFT of
    ℓ(δ)·P̄_f(δ), P̄_f the anomalies' circular autocovariance) and K(k) = Ĉ^{-1/2} B̄ Ĉ^{-1/2} = U λ Uᴴ,
    C_d⁻¹ = Ĉ^{-1/2} U min(1, 1/λ) Uᴴ Ĉ^{-1/2}: Ĉ⁻¹ where the forecast is narrower than the climatology,
    B̄⁻¹ where it is wider (the stationary counterpart of the dense hybrid's π = max(1/λ − 1, 0))."""
    _, grid, dims = _grid(clim.shape)
    p_hat = _cross_spectrum(anomalies, grid, dims).movedim((-2, -1), (0, 1))  # (C, C, *F)
    ell = torch.fft.irfftn(taper.to(F64), s=grid)  # ρ(δ) (*G)
    b_hat = torch.fft.rfftn(torch.fft.irfftn(p_hat, s=grid, dim=dims) * ell, dim=dims)
    root_inv = clim.root_inv
    k = root_inv @ b_hat.movedim((0, 1), (-2, -1)) @ root_inv
    lam, u = torch.linalg.eigh(0.5 * (k + k.mH))
    capped = (u * (1.0 / lam.clamp_min(1.0)).unsqueeze(-2).to(u.dtype)) @ u.mH
    return root_inv @ capped @ root_inv


def fft_hybrid_prior(
    members: Tensor, clim: StationaryGaussian, taper: Tensor, inflation: float
) -> FFTHybridPrior:
    """The forecast side of normalized ``members`` (N, *S) with taper spectrum ``taper`` and inflation ρ."""
    n = len(members)
    channels, grid, _ = _grid(clim.shape)
    x = members.to(F64).reshape(n, channels, *grid)
    a = inflation * (x - x.mean(0))
    taper = taper.to(a.device)
    return FFTHybridPrior(
        mean=x.mean(0).reshape(-1),
        anomalies=a,
        taper=taper,
        clim=clim,
        variance=(a.square().sum(0) / (n - 1)).reshape(-1),  # ρ(0) = 1
        deconvolution=deconvolution_spectrum(a, clim, taper),
    )


def conjugate_gradients(
    apply, rhs: Tensor, precond: Tensor, *, tol: float, max_iter: int, check_every: int = 10
) -> tuple[Tensor, int]:
    """Solve M y = rhs for each row of ``rhs`` (n, D), M SPD given by ``apply`` (n, D) -> (n, D), with the
    diagonal preconditioner ``precond`` = diag(M)⁻¹ (D,). Stops when every row's residual is at most
    ``tol`` times its right-hand side (checked every ``check_every`` steps: one host sync each) or after
    ``max_iter`` steps. Returns (y, steps taken)."""
    tiny = torch.finfo(rhs.dtype).tiny
    y = torch.zeros_like(rhs)
    r = rhs.clone()
    zr = r * precond
    p = zr.clone()
    rz = (r * zr).sum(1, keepdim=True)
    target = tol * rhs.norm(dim=1)
    for step in range(1, max_iter + 1):
        mp = apply(p)
        alpha = rz / (p * mp).sum(1, keepdim=True).clamp_min(tiny)
        y = y + alpha * p
        r = r - alpha * mp
        if step % check_every == 0 and bool((r.norm(dim=1) <= target).all()):
            return y, step
        zr = r * precond
        rz_next = (r * zr).sum(1, keepdim=True)
        p = zr + (rz_next / rz.clamp_min(tiny)) * p
        rz = rz_next
    return y, max_iter


class FFTHybridDenoiser:
    """D_H(x_t, t) of the module docstring around a base denoiser ``base(x_t, t)`` (the network).

    ``t`` (n,) must hold one time for the whole batch (as every bridge step does). ``tol`` and ``max_iter``
    control the CG solve (docs/hybrid.md, "Conditioning": at 64² the defaults move an analysis by 0.2 %
    of its spread against tolerance 1e-6 and by 2e-7 of it against 300 steps); ``steps`` collects the CG
    steps of each call (for cost reports).
    """

    def __init__(
        self,
        base,
        prior: FFTHybridPrior,
        process: MeasurementAwareProcess,
        *,
        tol: float = 1e-2,
        max_iter: int = 60,
    ) -> None:
        self.base = base
        self.prior = prior
        self.process = process
        self.tol = tol
        self.max_iter = max_iter
        self.steps: list[int] = []

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.base(x, t)
        n, p = x.shape[0], self.prior
        t0 = t.reshape(-1)[:1]
        gain = (self.process.A(t0).square() / self.process.Sigma(t0)).to(F64)
        gain = torch.broadcast_to(gain, (1, *p.clim.shape)).reshape(-1)  # (D,)
        d = out.reshape(n, -1).to(F64)
        u = p.mean - d + p.cov(p.clim.apply(p.deconvolution, d - p.clim.mean))
        s = gain.sqrt()
        y, steps = conjugate_gradients(
            lambda v: v + s * p.cov(s * v),
            s * u,
            1.0 / (1.0 + gain * p.variance),
            tol=self.tol,
            max_iter=self.max_iter,
        )
        self.steps.append(steps)
        # (I + BG)⁻¹u = u − Bsy = y/s: the second form damps the CG error by 1/s where s ≥ 1 (late steps,
        # where the first amplifies it by ‖B‖s); the first serves where s is small or zero
        delta = torch.where(s >= 1.0, y / s.clamp_min(1.0), u - p.cov(s * y))
        return out + delta.to(out.dtype).reshape(out.shape)
