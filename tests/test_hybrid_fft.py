"""The matrix-free hybrid (masf.filters.hybrid_fft, docs/hybrid.md "Matrix-free"): known answers.

The references are dense and written out here: the translation-averaged sample covariance by loops over
the grid's shifts, B = L ∘ P_f from the (hand-checked) dense taper matrix, and the exact x0-predictor of
N(x̄_f, B) (``GaussianDenoiser``, explicit D×D solves) for the hybrid denoiser's Gaussian limit.
"""

import itertools
import math

import pytest
import torch

from masf.diffusion import GaussianDenoiser, MeasurementAwareProcess, sample
from masf.filters.hybrid_fft import (
    FFTHybridDenoiser,
    conjugate_gradients,
    deconvolution_spectrum,
    fft_hybrid_prior,
    stationary_gaussian,
    taper_spectrum,
)
from masf.filters.localization import taper_matrix
from masf.operators import Mask

F64 = torch.float64
SHAPES = [(16,), (2, 4, 6)]
GAUSS_SHAPES = [(16,), (2, 5, 6)]  # grids on which the taper of radius 1.5 is positive definite


def _positions(shape):
    grid = shape if len(shape) == 1 else shape[1:]
    return grid, list(itertools.product(*[range(g) for g in grid]))


def _flat(shape, c, pos):
    grid, _ = _positions(shape)
    idx = 0
    for p, g in zip(pos, grid, strict=True):
        idx = idx * g + p
    return c * math.prod(grid) + idx


def _bank(shape, m, seed=0):
    """Correlated, non-stationary-looking states: a shared smooth field times per-channel scales."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    mix = torch.randn(d, d, generator=g, dtype=F64) / math.sqrt(d) + torch.eye(d, dtype=F64)
    return (torch.randn(m, d, generator=g, dtype=F64) @ mix.T + torch.linspace(-1, 1, d, dtype=F64)).reshape(
        m, *shape
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_stationary_gaussian_is_the_translation_averaged_sample_covariance(shape):
    bank = _bank(shape, 300)
    clim = stationary_gaussian(bank, floor=0.0)
    d = math.prod(shape)
    cov = torch.cov(bank.reshape(len(bank), -1).T)
    grid, positions = _positions(shape)
    channels = 1 if len(shape) == 1 else shape[0]
    ref = torch.zeros(d, d, dtype=F64)
    for c1, c2 in itertools.product(range(channels), repeat=2):
        for p in positions:
            for q in positions:
                total = 0.0
                for shift in positions:
                    ps = tuple((a + b) % g for a, b, g in zip(p, shift, grid, strict=True))
                    qs = tuple((a + b) % g for a, b, g in zip(q, shift, grid, strict=True))
                    total += float(cov[_flat(shape, c1, ps), _flat(shape, c2, qs)])
                ref[_flat(shape, c1, p), _flat(shape, c2, q)] = total / len(positions)
    eye = torch.eye(d, dtype=F64)
    torch.testing.assert_close(clim.cov(eye), ref, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(clim.solve(clim.cov(eye)), eye, rtol=0, atol=1e-8)
    torch.testing.assert_close(clim.mean, bank.reshape(len(bank), -1).mean(0))


@pytest.mark.parametrize("radius", [1.3, 3.0])
@pytest.mark.parametrize("shape", SHAPES)
def test_localized_forecast_covariance_is_the_taper_times_the_ensemble_covariance(shape, radius):
    members = _bank(shape, 7, seed=1)
    clim = stationary_gaussian(_bank(shape, 50))
    prior = fft_hybrid_prior(members, clim, taper_spectrum(shape, radius), inflation=1.2)
    x = members.reshape(7, -1)
    a = 1.2 * (x - x.mean(0))
    ref = taper_matrix(shape, radius) * (a.T @ a) / 6
    d = x.shape[1]
    torch.testing.assert_close(prior.cov(torch.eye(d, dtype=F64)), ref, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(prior.variance, ref.diagonal())


def _gaussian_setting(shape, seed=0):
    """Forecast members, a stationary climatology and a mask process on ``shape``; ℓ̂ >= 0 so B is PSD."""
    members = 0.4 * _bank(shape, 12, seed=seed + 1)
    clim = stationary_gaussian(_bank(shape, 400, seed=seed))
    taper = taper_spectrum(shape, 1.5)
    assert float(taper.min()) > 0  # precondition: L is positive definite, so B and the draws' root exist
    mask = torch.zeros(shape, dtype=F64).reshape(-1)
    mask[::3] = 1.0
    process = MeasurementAwareProcess(Mask(mask.reshape(shape), 0.5))
    return members, clim, taper, process


@pytest.mark.parametrize("shape", GAUSS_SHAPES)
def test_fft_hybrid_denoiser_is_exact_for_a_stationary_gaussian_climatology(shape):
    members, clim, taper, process = _gaussian_setting(shape)
    d = math.prod(shape)
    eye = torch.eye(d, dtype=F64)
    base = GaussianDenoiser(clim.mean.reshape(shape), clim.cov(eye), process)
    prior = fft_hybrid_prior(members, clim, taper, inflation=1.1)
    exact = GaussianDenoiser(prior.mean.reshape(shape), prior.cov(eye), process)
    hybrid = FFTHybridDenoiser(base, prior, process, tol=1e-13, max_iter=5000)
    g = torch.Generator().manual_seed(5)
    for t in (1e-4, 0.05, 0.3, 0.7, 0.99):
        tt = torch.full((8,), t, dtype=F64)
        x_t = process.forward(members[:8], t, generator=g)
        torch.testing.assert_close(hybrid(x_t, tt), exact(x_t, tt), rtol=1e-7, atol=1e-8)
    assert max(hybrid.steps) < 5000  # every solve converged


@pytest.mark.parametrize("shape", GAUSS_SHAPES)
def test_fft_hybrid_draws_are_the_localized_forecast_gaussian(shape):
    members, clim, taper, _ = _gaussian_setting(shape)
    prior = fft_hybrid_prior(members, clim, taper, inflation=1.0)
    d = math.prod(shape)
    B = prior.cov(torch.eye(d, dtype=F64))
    draws = prior.draw(100000, torch.Generator().manual_seed(3)).reshape(100000, -1)
    scale = float(B.diagonal().max())
    torch.testing.assert_close(draws.mean(0), prior.mean, rtol=0, atol=0.02 * math.sqrt(scale))
    torch.testing.assert_close(torch.cov(draws.T), B, rtol=0, atol=0.03 * scale)


def test_fft_hybrid_bridge_samples_the_localized_kalman_posterior():
    """Gaussian climatology: the bridge's draws under the matrix-free hybrid (float32, the default CG
    tolerance) are the Kalman posterior of N(x̄_f, L∘P_f): mean within 0.1 posterior sd, variance ratio
    in [0.93, 1.07] (8000 draws, nfe 10)."""
    dtype = torch.float32
    shape = GAUSS_SHAPES[1]
    members, clim, taper, process = _gaussian_setting(shape, seed=2)
    d = math.prod(shape)
    eye = torch.eye(d, dtype=F64)
    base = GaussianDenoiser(clim.mean.reshape(shape).to(dtype), clim.cov(eye).to(dtype), process)
    prior = fft_hybrid_prior(members, clim, taper, inflation=1.0)
    g = torch.Generator().manual_seed(7)
    mask = process.mask.reshape(-1)
    truth = prior.mean + 0.3 * torch.randn(d, generator=g, dtype=F64)
    z = mask * truth + 0.5 * torch.randn(d, generator=g, dtype=F64)
    post = sample(
        FFTHybridDenoiser(base, prior, process),
        process,
        z.reshape(shape).to(dtype),
        members.repeat(700, 1, 1, 1)[:8000].to(dtype),
        sampler="bridge",
        nfe=10,
        generator=torch.Generator().manual_seed(0),
        prior_draws=prior.draw,
    ).to(F64)
    B = prior.cov(eye)
    H = eye[mask > 0]
    K = B @ H.T @ torch.linalg.inv(H @ B @ H.T + 0.25 * torch.eye(H.shape[0], dtype=F64))
    k_mean = prior.mean + K @ (H @ z - H @ prior.mean)
    k_var = torch.diagonal((eye - K @ H) @ B)
    flat = post.reshape(len(post), -1)
    assert float(((flat.mean(0) - k_mean).abs() / k_var.sqrt()).max()) < 0.1
    assert float((flat.var(0) / k_var - 1).abs().max()) < 0.07


def test_conjugate_gradients_solves_each_row_and_stops_early():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(30, 30, generator=g, dtype=F64)
    M = q @ q.T + 30 * torch.eye(30, dtype=F64)
    rhs = torch.randn(4, 30, generator=g, dtype=F64)
    y, steps = conjugate_gradients(lambda v: v @ M, rhs, 1 / M.diagonal(), tol=1e-12, max_iter=500)
    torch.testing.assert_close(y, torch.linalg.solve(M, rhs.T).T, rtol=1e-9, atol=1e-11)
    assert steps < 500


def test_the_default_tolerance_stays_accurate_when_the_solve_is_ill_conditioned():
    """Late bridge steps (t → τ) make M = I + sBs ill-conditioned (κ ~ g·‖B‖ with g = A²/Σ large). With
    the default, loose CG tolerance the denoiser must stay within 2 % of the members' spread of the exact
    E[x0 | x_t] under N(x̄_f, B) on a 2·32² torus with a stride-8 grid mask (σ = 0.1) and radius 5: the
    correction is read as y/s where s ≥ 1 (reading u − Bsy there amplified the CG error by ‖B‖s, to
    thousands of the spread at 64²)."""
    shape = (2, 32, 32)
    members = 0.4 * _bank(shape, 10, seed=3)
    clim = stationary_gaussian(_bank(shape, 60, seed=4))
    mask = torch.zeros(shape, dtype=F64)
    mask[:, ::8, ::8] = 1.0
    process = MeasurementAwareProcess(Mask(mask, 0.1))
    prior = fft_hybrid_prior(members, clim, taper_spectrum(shape, 5.0), inflation=1.0)
    eye = torch.eye(math.prod(shape), dtype=F64)
    base = GaussianDenoiser(clim.mean.reshape(shape), clim.cov(eye), process)
    exact = GaussianDenoiser(prior.mean.reshape(shape), prior.cov(eye), process)
    loose = FFTHybridDenoiser(base, prior, process)
    spread = float(members.std(0).mean())
    g = torch.Generator().manual_seed(6)
    for t in (2e-3, 0.05, 0.5):
        tt = torch.full((4,), t, dtype=F64)
        x_t = process.forward(members[:4], t, generator=g)
        err = (loose(x_t, tt) - exact(x_t, tt)).abs().max()
        assert float(err) < 0.02 * spread, (t, float(err), spread)


def test_the_deconvolution_is_capped_per_wavenumber_at_the_forecast_precision():
    """Ring (one channel): C_d⁻¹(k) = 1 / max(Ĉ(k), B̄(k)), with B̄(k) the DFT of the dense B = L∘P_f
    averaged along its diagonals (a loop over positions); wide members make B̄ > Ĉ at some k."""
    shape = (16,)
    clim = stationary_gaussian(_bank(shape, 300, seed=0))
    members = _bank(shape, 8, seed=1)
    prior = fft_hybrid_prior(members, clim, taper_spectrum(shape, 2.0), inflation=1.0)
    b = prior.cov(torch.eye(16, dtype=F64))
    b_bar = torch.stack([sum(b[p, (p + d) % 16] for p in range(16)) / 16 for d in range(16)])
    b_hat = torch.fft.rfft(b_bar).real
    c_hat = clim.spectrum[:, 0, 0].real
    assert bool((b_hat > c_hat).any()) and bool((b_hat < c_hat).any())  # both branches are exercised
    got = deconvolution_spectrum(prior.anomalies, clim, prior.taper)[:, 0, 0]
    torch.testing.assert_close(got.real, 1.0 / torch.maximum(c_hat, b_hat), rtol=1e-9, atol=0)
    torch.testing.assert_close(got.imag, torch.zeros_like(got.imag), rtol=0, atol=1e-12)
