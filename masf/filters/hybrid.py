"""The hybrid prior of MASF: the learned climatology times a localized ensemble Gaussian (docs/hybrid.md).

Everything is in the network's normalized space, on flattened states (D = prod(S)), in float64:

- the climatology Gaussian N(μ_c, C), fitted to the climatology bank; R = C^{1/2} and W = R⁻¹
  (symmetric roots, eigenvalues floored at ``floor`` times their mean);
- the forecast members X (N, D) with mean x̄_f and inflated anomalies ρ(X − x̄_f); the localized
  covariance B = L ∘ P_f, P_f = AᵀA/(N − 1), L the Gaspari–Cohn taper matrix
  (:func:`masf.filters.localization.taper_matrix`, the LETKF's radius convention);
- whitened coordinates y = W(x − μ_c): the climatology is N(0, I), the forecast Gaussian N(ȳ_f, K) with
  K = W B W = U diag(λ) Uᵀ.

**Deconvolution.** The forecast factor is g(y) ∝ exp(−½ yᵀ Π y + ηᵀ y) with Π = U diag(π) Uᵀ,
π_k = max(1/λ_k − 1, 0) and η = (I + Π) ȳ_f, so that N(0, I)·g = N(ȳ_f, (I + Π)⁻¹): the climatology
is not counted twice, and the hybrid of two Gaussians is the forecast Gaussian itself wherever the
forecast is narrower than the climatology (λ_k < 1); where it is wider, it adds no information and the
climatology's variance stays.

**Hybrid denoiser.** With the network's D = D_θ(x_t, t), D_y = W(D − μ_c) and the climatology's
Var[y0 | x_t] = (I + R diag(A(t)²/Σ(t)) R)⁻¹ (mask operators: x_t = A(t) x0 + B(t) + √Σ(t) ε),

    D_H(x_t, t) = D + R (I + R diag(A²/Σ) R + Π)⁻¹ (η − Π D_y),

one D×D Cholesky per time step shared by the batch. It is E[x0 | x_t] under the hybrid prior when the
climatology is Gaussian (then the hybrid prior is N(μ_c + R ȳ_f, R (I + Π)⁻¹ R)), and its Gaussian
approximation for a learned climatology. The bridge's pathwise x0 draws (Matheron's rule) take x0* from
that Gaussian (:meth:`HybridPrior.draw`). Cost: two D×D eigendecompositions per analysis (one per run for
the climatology) and nfe Cholesky factorizations: dense, so the filter uses it for states of at most
``MAX_DIM`` entries and the matrix-free ``masf.filters.hybrid_fft`` above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from masf.diffusion.process import MeasurementAwareProcess
from masf.diffusion.samplers import GaussianDenoiser, sample
from masf.filters.hybrid_fft import FFTHybridDenoiser, StationaryGaussian, fft_hybrid_prior

MAX_DIM = 2048  # the largest state of the dense D×D algebra; the hybrid is matrix-free above it
_LAMBDA_MIN = 1e-10  # floor of the whitened forecast variances (B is positive definite in exact arithmetic)


@dataclass(frozen=True)
class ClimatologyGaussian:
    """N(mean, C) fitted to climatology states, with the symmetric roots ``root`` = C^{1/2} and
    ``root_inv`` = C^{-1/2} (all float64; mean (D,), roots (D, D))."""

    mean: Tensor
    root: Tensor
    root_inv: Tensor


def check_dim(dim: int, method: str) -> None:
    """``ValueError`` when a state of ``dim`` entries is too large for the dense Gaussian residual."""
    if dim > MAX_DIM:
        raise ValueError(
            f"{method}: gaussian_residual builds a dense D×D climatology covariance and supports states of at "
            f"most {MAX_DIM} entries, got D = {dim}; use gaussian_residual: false for this system"
        )


def climatology_gaussian(bank: Tensor, floor: float = 1e-6) -> ClimatologyGaussian:
    """The Gaussian fit of ``bank`` (M, *S), M > D; eigenvalues of C floored at ``floor``·mean."""
    flat = bank.reshape(len(bank), -1).to(torch.float64)
    m, d = flat.shape
    if m <= d:
        raise ValueError(
            f"masf: hybrid fits a Gaussian to the climatology states and needs more of them than state "
            f"entries, got {m} states of {d} entries; give more pretraining snapshots"
        )
    vals, vecs = torch.linalg.eigh(torch.cov(flat.T))
    vals = vals.clamp_min(floor * float(vals.mean()))
    root = (vecs * vals.sqrt()) @ vecs.T
    root_inv = (vecs * vals.rsqrt()) @ vecs.T
    return ClimatologyGaussian(mean=flat.mean(0), root=root, root_inv=root_inv)


@dataclass(frozen=True)
class HybridPrior:
    """The deconvolved forecast factor in whitened coordinates (module docstring).

    Attributes:
        clim: the climatology Gaussian.
        precision: Π (D, D); shift: η (D,); forecast: ȳ_f (D,).
        draw_root: U diag((1 + π)^{-1/2}) (D, D), a root of the hybrid Gaussian's whitened covariance.
        shape: the state shape S.
    """

    clim: ClimatologyGaussian
    precision: Tensor
    shift: Tensor
    forecast: Tensor
    draw_root: Tensor
    shape: tuple[int, ...]

    def draw(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws (n, *S) of the hybrid Gaussian N(μ_c + R ȳ_f, R (I + Π)⁻¹ R): the bridge's
        ``prior_draws`` (exact prior draws when the climatology is Gaussian)."""
        d = self.shift.shape[0]
        dev = self.shift.device if generator is None else generator.device
        eps = torch.randn((n, d), generator=generator, dtype=torch.float64, device=dev).to(self.shift.device)
        y = self.forecast + eps @ self.draw_root.T
        return (self.clim.mean + y @ self.clim.root).reshape(n, *self.shape)


def hybrid_prior(members: Tensor, clim: ClimatologyGaussian, taper: Tensor, inflation: float) -> HybridPrior:
    """The hybrid factor of the normalized forecast ``members`` (N, *S) with the taper matrix ``taper``
    (D, D) and multiplicative anomaly inflation ρ = ``inflation``."""
    n = members.shape[0]
    x = members.reshape(n, -1).to(torch.float64)
    mean = x.mean(0)
    a = inflation * (x - mean)
    b = taper.to(a) * (a.T @ a) / (n - 1)
    w = clim.root_inv
    k = w @ b @ w
    lam, u = torch.linalg.eigh(0.5 * (k + k.T))
    pi = (1.0 / lam.clamp_min(_LAMBDA_MIN) - 1.0).clamp_min(0.0)
    precision = (u * pi) @ u.T
    forecast = w @ (mean - clim.mean)
    return HybridPrior(
        clim=clim,
        precision=precision,
        shift=forecast + precision @ forecast,
        forecast=forecast,
        draw_root=u * (1.0 + pi).rsqrt(),
        shape=tuple(members.shape[1:]),
    )


class HybridDenoiser:
    """D_H(x_t, t) of the module docstring around a base denoiser ``base(x_t, t)`` (the network).

    ``t`` (n,) must hold one time for the whole batch (as every bridge step does): the correction uses t[0].
    """

    def __init__(self, base, prior: HybridPrior, process: MeasurementAwareProcess) -> None:
        self.base = base
        self.prior = prior
        self.process = process
        d = prior.shift.shape[0]
        self._eye = torch.eye(d, dtype=torch.float64, device=prior.shift.device)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.base(x, t)
        n = x.shape[0]
        p, c = self.prior, self.prior.clim
        t0 = t.reshape(-1)[:1]
        gain = (self.process.A(t0).square() / self.process.Sigma(t0)).to(torch.float64).reshape(-1)
        gain = gain.expand(p.shift.shape[0]) if gain.numel() == 1 else gain
        q = self._eye + (c.root * gain) @ c.root + p.precision
        chol, _ = torch.linalg.cholesky_ex(q)
        d_y = (out.reshape(n, -1).to(torch.float64) - c.mean) @ c.root_inv
        rhs = p.shift - d_y @ p.precision
        delta = torch.cholesky_solve(rhs.T, chol).T
        return out + (delta @ c.root).to(out.dtype).reshape(out.shape)


def hybrid_sample(
    base,
    process: MeasurementAwareProcess,
    z: Tensor,
    members: Tensor,
    clim: ClimatologyGaussian | StationaryGaussian,
    taper: Tensor,
    *,
    inflation: float,
    nfe: int,
    generator: torch.Generator | None,
    pathwise: bool = True,
    start: Tensor | None = None,
) -> Tensor:
    """Bridge draws from the posterior under the hybrid prior, all normalized: ``z`` (S) the measurement,
    ``members`` (N, *S) the forecast, ``base`` the climatology denoiser; one draw per row of ``start``
    (n, *S), the states whose forward-noised unobserved entries start the bridge (default ``members``).
    A :class:`ClimatologyGaussian` ``clim`` takes the dense algebra (``taper`` the taper matrix (D, D)),
    a ``StationaryGaussian`` the matrix-free one (``masf.filters.hybrid_fft``; ``taper`` its spectrum).
    ``pathwise``: Matheron's x0 draws from the prior's ``draw`` (else the plug-in mean)."""
    if isinstance(clim, StationaryGaussian):
        prior = fft_hybrid_prior(members, clim, taper, inflation)
        denoiser = FFTHybridDenoiser(base, prior, process)
    else:
        prior = hybrid_prior(members, clim, taper, inflation)
        denoiser = HybridDenoiser(base, prior, process)
    return sample(
        denoiser,
        process,
        z,
        members if start is None else start,
        sampler="bridge",
        nfe=nfe,
        generator=generator,
        prior_draws=prior.draw if pathwise else None,
    )


class ResidualDenoiser:
    """D(x_t, t) = D_g(x_t, t) + net(x_t, t): the network predicts the residual of the exact x0-predictor
    D_g of the climatology Gaussian N(mean, cov) (``GaussianDenoiser``, computed in float64), so that the
    linear part of E[x0 | x_t], which a network learns only to a floor of error, is exact at every t
    (docs/hybrid.md, "Gaussian residual"). ``mean`` (S) and ``cov`` (D, D) are normalized; D <= MAX_DIM.
    """

    def __init__(self, net, mean: Tensor, cov: Tensor, process: MeasurementAwareProcess) -> None:
        self.net = net
        self.gaussian = GaussianDenoiser(mean.to(torch.float64), cov.to(torch.float64), process)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        linear = self.gaussian(x.to(torch.float64), t.to(torch.float64))
        return self.net(x, t) + linear.to(x.dtype)


def gaussian_fit(data: Tensor) -> dict[str, Tensor]:
    """``{"mean": (S), "cov": (D, D)}`` (float64) of normalized states ``data`` (M, *S): the climatology
    Gaussian of :class:`ResidualDenoiser`, stored in the checkpoint's extra."""
    flat = data.reshape(len(data), -1).to(torch.float64)
    return {"mean": flat.mean(0).reshape(data.shape[1:]).cpu(), "cov": torch.cov(flat.T).cpu()}
