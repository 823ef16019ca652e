"""Bootstrap particle filter: importance weights vs the analytic Gaussian posterior, systematic
resampling counts, weight persistence, regularization jitter (who and how much), bad input."""

from __future__ import annotations

import math

import pytest
import torch

from masf.filters.base import Context
from masf.filters.particle import WEIGHTS_KEY, ParticleFilter, bandwidth, systematic_resample
from masf.operators.masks import Mask

F64 = torch.float64
MASK = torch.tensor([1.0, 0.0, 1.0])
SIGMA = 0.8


def _ctx(seed: int = 0) -> Context:
    return Context(generator=torch.Generator().manual_seed(seed))


def _gaussian_prior(n: int, seed: int):
    mean = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    cov = torch.tensor([[1.0, 0.6, 0.2], [0.6, 1.5, 0.4], [0.2, 0.4, 0.8]], dtype=F64)
    g = torch.Generator().manual_seed(seed)
    return mean + torch.randn(n, 3, generator=g, dtype=F64) @ torch.linalg.cholesky(cov).T, mean, cov


def _kalman_mean(mean, cov, z):
    h = torch.eye(3, dtype=F64)[MASK > 0]
    gain = cov @ h.T @ torch.linalg.inv(h @ cov @ h.T + SIGMA**2 * torch.eye(2, dtype=F64))
    return mean + gain @ (z[MASK > 0] - h @ mean), (torch.eye(3, dtype=F64) - gain @ h) @ cov


def test_weighted_mean_is_the_analytic_posterior_mean():
    n = 20_000
    prior, mean, cov = _gaussian_prior(n, 1)
    z = torch.tensor([2.0, 0.0, 1.0], dtype=F64)
    ctx = _ctx()
    post = ParticleFilter(ess_threshold=0.0).analyse(prior, z, Mask(MASK, SIGMA), ctx)
    torch.testing.assert_close(post, prior, rtol=0, atol=0)  # no resampling: particles unchanged
    w = ctx.state[WEIGHTS_KEY]
    ess = 1.0 / float(w.square().sum())
    mean_a, cov_a = _kalman_mean(mean, cov, z)
    tolerance = 5.0 * math.sqrt(float(torch.diagonal(cov).max()) / ess)  # 5 Monte-Carlo std
    assert float((w @ prior - mean_a).abs().max()) < tolerance, (w @ prior, mean_a, tolerance)
    weighted_cov = (prior - w @ prior).T @ ((prior - w @ prior) * w[:, None])
    assert float((weighted_cov - cov_a).abs().max()) < 2 * tolerance


def test_resampled_ensemble_mean_is_the_posterior_mean():
    n = 20_000
    prior, mean, cov = _gaussian_prior(n, 2)
    z = torch.tensor([0.0, 0.0, 3.0], dtype=F64)
    ctx = _ctx()
    post = ParticleFilter(ess_threshold=1.0).analyse(prior, z, Mask(MASK, SIGMA), ctx)
    torch.testing.assert_close(ctx.state[WEIGHTS_KEY], torch.full((n,), 1.0 / n, dtype=F64))
    mean_a, _ = _kalman_mean(mean, cov, z)
    assert float((post.mean(0) - mean_a).abs().max()) < 0.06


def test_systematic_resampling_counts_are_floor_or_ceil():
    g = torch.Generator().manual_seed(3)
    for trial in range(20):
        w = torch.rand(37, generator=g, dtype=F64) ** 3
        w = w / w.sum()
        u = torch.rand(1, generator=g, dtype=F64)
        counts = torch.bincount(systematic_resample(w, u), minlength=37).to(F64)
        expected = 37 * w
        assert int(counts.sum()) == 37
        assert bool(((counts >= expected.floor() - 1e-9) & (counts <= expected.ceil() + 1e-9)).all()), trial


def test_weights_persist_between_analyses():
    prior, _, _ = _gaussian_prior(50, 4)
    z1 = torch.tensor([0.5, 0.0, 1.0], dtype=F64)
    z2 = torch.tensor([1.5, 0.0, 2.0], dtype=F64)
    op, ctx, pf = Mask(MASK, SIGMA), _ctx(), ParticleFilter(ess_threshold=0.0)
    pf.analyse(pf.analyse(prior, z1, op, ctx), z2, op, ctx)
    obs = prior[:, MASK > 0]
    log_l = -((obs - z1[MASK > 0]).square().sum(1) + (obs - z2[MASK > 0]).square().sum(1)) / (2 * SIGMA**2)
    torch.testing.assert_close(ctx.state[WEIGHTS_KEY], torch.softmax(log_l, 0), rtol=1e-12, atol=1e-15)


def test_regularization_jitters_every_copy_of_a_duplicated_particle():
    prior, _, _ = _gaussian_prior(200, 5)
    z = torch.tensor([3.0, 0.0, 0.0], dtype=F64)
    plain = ParticleFilter(ess_threshold=1.0).analyse(prior, z, Mask(MASK, 0.3), _ctx(1))
    jittered = ParticleFilter(ess_threshold=1.0, reg=1.0).analyse(prior, z, Mask(MASK, 0.3), _ctx(1))
    assert torch.unique(plain, dim=0).shape[0] < 100  # strong update: many copies
    assert torch.unique(jittered, dim=0).shape[0] == 200  # every copy moved
    # rows equal to an original particle are exactly the particles drawn once
    counts = torch.bincount(((plain[:, None, :] == prior[None]).all(-1)).nonzero()[:, 1], minlength=200)
    kept = ((jittered[:, None, :] == prior[None]).all(-1)).any(0)
    assert torch.equal(kept, counts == 1)


def test_jitter_covariance_is_scaled_weighted_covariance():
    n = 20_000
    prior, _, _ = _gaussian_prior(n, 6)
    w = torch.full((n,), 1.0 / n, dtype=F64)
    pf = ParticleFilter(reg=2.0)
    eps = pf.jitter(prior, w, torch.Generator().manual_seed(7))
    expected = (2.0 * bandwidth(n, 3)) ** 2 * torch.cov(prior.T)
    assert eps.shape == prior.shape
    torch.testing.assert_close(torch.cov(eps.T), expected, rtol=0, atol=0.05 * float(expected.max()))
    # all weight on one particle: equal weights are used instead (no NaN, nonzero jitter)
    w1 = torch.zeros(n, dtype=F64)
    w1[0] = 1.0
    eps1 = pf.jitter(prior, w1, torch.Generator().manual_seed(7))
    assert bool(torch.isfinite(eps1).all()) and float(eps1.std()) > 0
    # N <= D path (anomaly-space colouring): the jitter lies in the span of the anomalies
    few = prior[:60].T.contiguous()  # 3 particles in 60 dimensions
    eps_few = pf.jitter(few, torch.full((3,), 1 / 3, dtype=F64), torch.Generator().manual_seed(8))
    assert eps_few.shape == few.shape
    basis = torch.linalg.svd(few - few.mean(0), full_matrices=False).Vh[:2]  # (2, 60)
    residual = eps_few - eps_few @ basis.T @ basis
    assert float(residual.abs().max()) < 1e-10 * float(eps_few.abs().max())


def test_bandwidth_golden():
    assert bandwidth(100, 3) == pytest.approx(100 ** (-1 / 7))
    assert bandwidth(100, 3) == pytest.approx(0.517947, abs=1e-6)


def test_zero_spread_ensemble_is_returned_unchanged():
    prior = torch.ones(10, 3, dtype=F64)
    ctx = _ctx()
    post = ParticleFilter(reg=1.0, ess_threshold=1.0).analyse(
        prior, torch.zeros(3, dtype=F64), Mask(MASK, 1.0), ctx
    )
    torch.testing.assert_close(post, prior, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"resampling": "residual"}, "resampling"),
        ({"reg": -0.1}, "reg"),
        ({"reg": math.nan}, "reg"),
        ({"ess_threshold": 1.5}, "ess_threshold"),
        ({"ess_threshold": -0.1}, "ess_threshold"),
    ],
)
def test_bad_hyper_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        ParticleFilter(**params)


def test_bad_analysis_input():
    pf = ParticleFilter()
    with pytest.raises(ValueError, match="N >= 2"):
        pf.analyse(torch.zeros(1, 3, dtype=F64), torch.zeros(3, dtype=F64), Mask(MASK, 1.0), _ctx())
    with pytest.raises(ValueError, match="operator must be"):
        pf.check_operator("identity")


def test_multinomial_resampling_runs():
    prior, mean, cov = _gaussian_prior(20_000, 8)
    z = torch.tensor([0.0, 0.0, 3.0], dtype=F64)
    post = ParticleFilter(resampling="multinomial", ess_threshold=1.0).analyse(
        prior, z, Mask(MASK, SIGMA), _ctx()
    )
    assert float((post.mean(0) - _kalman_mean(mean, cov, z)[0]).abs().max()) < 0.08


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    prior, _, _ = _gaussian_prior(300, 9)
    z = torch.tensor([2.0, 0.0, 1.0], dtype=F64)
    pf = ParticleFilter(reg=1.0, ess_threshold=1.0)
    ctx_cpu, ctx_gpu = _ctx(3), _ctx(3)
    cpu = pf.analyse(prior, z, Mask(MASK, SIGMA), ctx_cpu)
    gpu = pf.analyse(prior.cuda(), z.cuda(), Mask(MASK, SIGMA), ctx_gpu)
    assert gpu.device.type == "cuda" and ctx_gpu.state[WEIGHTS_KEY].device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-10)


def test_jitter_with_uneven_weights_is_coloured_by_the_unbiased_weighted_covariance():
    """Brute force at small N with uneven weights (1 − Σw² = 0.6, far from 1): the jitter is
    reg·h·ξ Ĉ^{1/2} with Ĉ = Σ_i w_i (x_i − x̄)(x_i − x̄)ᵀ / (1 − Σ_i w_i²), ξ the same normal draws."""
    from masf.systems.base import randn

    g = torch.Generator().manual_seed(3)
    particles = torch.randn(8, 3, generator=g, dtype=F64) * torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    w = torch.tensor([0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05], dtype=F64)
    mean = (w.unsqueeze(1) * particles).sum(0)
    cov = torch.zeros(3, 3, dtype=F64)
    for wi, xi in zip(w, particles, strict=True):
        cov += wi * torch.outer(xi - mean, xi - mean)
    cov /= 1.0 - float((w**2).sum())
    lam, vec = torch.linalg.eigh(cov)
    sqrt_cov = vec @ torch.diag(lam.sqrt()) @ vec.T
    pf = ParticleFilter(reg=0.7)
    got = pf.jitter(particles, w, torch.Generator().manual_seed(9))
    xi = randn((8, 3), torch.Generator().manual_seed(9), F64, particles.device)
    torch.testing.assert_close(got, 0.7 * bandwidth(8, 3) * xi @ sqrt_cov, rtol=1e-10, atol=1e-12)
