"""EnKF: square-root update = Kalman update of the ensemble statistics, perturbed-observation update
converges to the Kalman update as N grows, diag mode, rotation invariants, nonlinear H, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from masf.filters.base import Context
from masf.filters.enkf import EnKF
from masf.operators import Sigmoid, identity
from masf.operators.masks import Mask

F64 = torch.float64
MASK6 = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
SIGMA = 0.5


def _ctx(seed: int = 0) -> Context:
    return Context(generator=torch.Generator().manual_seed(seed))


def _kalman(mean: torch.Tensor, cov: torch.Tensor, z: torch.Tensor, mask: torch.Tensor, sigma: float):
    """Kalman analysis mean and covariance for H = rows of I selected by ``mask``, R = σ² I."""
    h = torch.eye(mean.numel(), dtype=mean.dtype)[mask > 0]
    s = h @ cov @ h.T + sigma**2 * torch.eye(h.shape[0], dtype=mean.dtype)
    gain = cov @ h.T @ torch.linalg.inv(s)
    return mean + gain @ (z[mask > 0] - h @ mean), (
        torch.eye(mean.numel(), dtype=mean.dtype) - gain @ h
    ) @ cov


def _ensemble(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 1.0 + 2.0 * torch.randn(n, 6, generator=g, dtype=F64) @ torch.triu(torch.ones(6, 6, dtype=F64))


def _exact_prior():
    """A correlated Gaussian prior N(μ, P), P_ij = exp(−|i−j|/2) (method.md §11.9)."""
    idx = torch.arange(6, dtype=F64)
    return torch.linspace(-2.0, 1.0, 6, dtype=F64), torch.exp(-(idx[:, None] - idx[None, :]).abs() / 2)


@pytest.mark.parametrize("inflation", [1.0, 1.1])
@pytest.mark.parametrize("rotate", [False, True])
def test_sqrt_equals_kalman_of_ensemble_statistics(inflation, rotate):
    prior = _ensemble(10, 1)
    z = torch.tensor([0.3, -1.0, 2.0, 0.0, -0.5, 4.0], dtype=F64)
    post = EnKF(variant="sqrt", inflation=inflation, rotate=rotate).analyse(
        prior, z, Mask(MASK6, SIGMA), _ctx()
    )
    mean, cov = _kalman(prior.mean(0), inflation**2 * torch.cov(prior.T), z, MASK6, SIGMA)
    assert post.shape == prior.shape and post.dtype == F64
    torch.testing.assert_close(post.mean(0), mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cov(post.T), cov, rtol=0, atol=1e-12)


def test_rotation_mixes_members_but_keeps_statistics():
    prior = _ensemble(8, 2)
    z = torch.zeros(6, dtype=F64)
    plain = EnKF(variant="sqrt").analyse(prior, z, Mask(MASK6, SIGMA), _ctx())
    rotated = EnKF(variant="sqrt", rotate=True).analyse(prior, z, Mask(MASK6, SIGMA), _ctx())
    assert (plain - rotated).abs().max() > 1e-3
    torch.testing.assert_close(rotated.mean(0), plain.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cov(rotated.T), torch.cov(plain.T), rtol=0, atol=1e-12)


def test_sqrt_symmetric_transform_is_minimal():
    """The symmetric square root moves each member as little as possible: with an observation that
    carries no information (huge σ) the ensemble is returned unchanged."""
    prior = _ensemble(5, 3)
    post = EnKF().analyse(prior, torch.zeros(6, dtype=F64), Mask(MASK6, 1e9), _ctx())
    torch.testing.assert_close(post, prior, rtol=0, atol=1e-9)


def test_pertobs_centred_mean_is_kalman_mean():
    """With centred perturbations the stochastic analysis mean is exactly x̄ + K(z − Hx̄)."""
    prior = _ensemble(12, 4)
    z = torch.tensor([1.0, 0.0, -1.0, 0.0, 2.0, 0.0], dtype=F64)
    post = EnKF(variant="pertobs").analyse(prior, z, Mask(MASK6, SIGMA), _ctx(5))
    mean, _ = _kalman(prior.mean(0), torch.cov(prior.T), z, MASK6, SIGMA)
    torch.testing.assert_close(post.mean(0), mean, rtol=0, atol=1e-12)


def _pertobs_error(n: int, seeds: range) -> float:
    """Mean over seeds of |mean_a − μ_a| + |P_a(ens) − P_a| (Frobenius) vs the exact Kalman update."""
    mu, cov = _exact_prior()
    z = torch.tensor([-2.0, 0.0, -2.5, 0.0, 0.5, 0.0], dtype=F64)
    mean_true, cov_true = _kalman(mu, cov, z, MASK6, 0.3)
    chol = torch.linalg.cholesky(cov)
    errors = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        prior = mu + torch.randn(n, 6, generator=g, dtype=F64) @ chol.T
        post = EnKF(variant="pertobs", center_perturbations=False).analyse(
            prior, z, Mask(MASK6, 0.3), _ctx(1000 + seed)
        )
        errors.append(float((post.mean(0) - mean_true).norm() + (torch.cov(post.T) - cov_true).norm()))
    return sum(errors) / len(errors)


def test_pertobs_converges_to_kalman_like_inverse_sqrt_n():
    small, large = _pertobs_error(50, range(12)), _pertobs_error(800, range(12))
    # Monte-Carlo error ∝ N^{-1/2}: 16× the members gives ≈ 1/4 of the error.
    assert 0.15 < large / small < 0.4, (small, large)
    assert large < 4.0 * 800**-0.5 * 1.5, large  # measured ≈ 4/√N (0.071 at N = 3200)


def test_diag_mode_equals_full_mode_with_one_observation():
    mask = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    prior = _ensemble(7, 6)
    z = torch.full((6,), 0.7, dtype=F64)
    full = EnKF(variant="pertobs", mode="full").analyse(prior, z, Mask(mask, SIGMA), _ctx(3))
    diag = EnKF(variant="pertobs", mode="diag").analyse(prior, z, Mask(mask, SIGMA), _ctx(3))
    torch.testing.assert_close(diag, full, rtol=0, atol=1e-12)


def test_diag_mode_uses_each_observation_variance():
    """diag mode: Δx̄ = Σ_o Pxy[:, o] (z_o − ȳ_o) / (Pyy[o, o] + σ²) (centred perturbations)."""
    prior = _ensemble(9, 7)
    z = torch.tensor([0.5, 0.0, -0.5, 0.0, 1.5, 0.0], dtype=F64)
    post = EnKF(variant="pertobs", mode="diag").analyse(prior, z, Mask(MASK6, SIGMA), _ctx(2))
    cov = torch.cov(prior.T)
    obs = MASK6 > 0
    gain = cov[:, obs] / (torch.diagonal(cov)[obs] + SIGMA**2)
    expected = prior.mean(0) + gain @ (z[obs] - prior.mean(0)[obs])
    torch.testing.assert_close(post.mean(0), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", ["sqrt", "pertobs"])
def test_nonlinear_operator_reduces_error(variant):
    """Twin test with H = sigmoid(x/2): the analysis mean is closer to the truth than the prior mean."""
    g = torch.Generator().manual_seed(11)
    dim, n, trials = 20, 30, 20
    truth = torch.randn(trials, dim, generator=g, dtype=F64)
    op = Sigmoid(alpha=0.5, noise_std=0.02, state_shape=(dim,))
    prior_err, post_err = 0.0, 0.0
    for t in range(trials):
        prior = truth[t] + 0.3 + 0.8 * torch.randn(n, dim, generator=g, dtype=F64)
        z = op.observe(truth[t : t + 1], generator=g)[0]
        post = EnKF(variant=variant).analyse(prior, z, op, _ctx(t))
        prior_err += float((prior.mean(0) - truth[t]).square().mean())
        post_err += float((post.mean(0) - truth[t]).square().mean())
    assert post_err < 0.3 * prior_err, (prior_err, post_err)


def test_float32_and_large_state_without_dense_matrices():
    """D = m = 200 000: a D×D or m×m matrix would need 160 GB; ensemble-space algebra needs ~MBs."""
    dim, n = 200_000, 8
    g = torch.Generator().manual_seed(0)
    prior = torch.randn(n, dim, generator=g)
    z = torch.randn(dim, generator=g)
    op = identity((dim,), noise_std=1.0)
    for variant in ("sqrt", "pertobs"):
        post = EnKF(variant=variant, inflation=1.05).analyse(prior, z, op, _ctx(99))
        assert post.dtype == torch.float32 and post.shape == prior.shape
        assert bool(torch.isfinite(post).all())
        assert float(post.std(0).mean()) < float(prior.std(0).mean())


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"inflation": 0.9}, "inflation"),
        ({"inflation": math.nan}, "inflation"),
        ({"variant": "serial"}, "variant"),
        ({"mode": "banded"}, "mode"),
        ({"variant": "sqrt", "mode": "diag"}, "diag"),
        ({"eps": -1e-6}, "eps"),
        ({"rotate": 1}, "rotate"),
    ],
)
def test_bad_hyper_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        EnKF(**params)


def test_bad_analysis_input():
    op = Mask(MASK6, SIGMA)
    f = EnKF()
    z = torch.zeros(6, dtype=F64)
    with pytest.raises(ValueError, match="N >= 2"):
        f.analyse(torch.zeros(1, 6, dtype=F64), z, op, _ctx())
    with pytest.raises(ValueError, match="zero spread"):
        f.analyse(torch.ones(4, 6, dtype=F64), z, op, _ctx())
    with pytest.raises(ValueError, match="z must be shaped"):
        f.analyse(_ensemble(4, 0), torch.zeros(5, dtype=F64), op, _ctx())
    with pytest.raises(ValueError, match="prior must be shaped"):
        f.analyse(torch.zeros(4, 5, dtype=F64), z, op, _ctx())
    with pytest.raises(ValueError, match="operator must be"):
        f.check_operator(lambda x: x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("variant", ["sqrt", "pertobs"])
def test_cuda_matches_cpu(variant):
    """Same code on CUDA: with the CPU generator the draws are identical, so the results agree."""
    from masf.operators import grid_mask

    op = grid_mask((2, 8, 8), 2, noise_std=0.3)
    prior = torch.randn(8, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    z = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    f = EnKF(variant=variant, inflation=1.1, rotate=True)
    cpu = f.analyse(prior, z, op, _ctx(2))
    gpu = f.analyse(prior.cuda(), z.cuda(), op, _ctx(2))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-10)


def test_pertobs_centred_perturbations_have_the_stated_scale():
    """Scalar state, one observation, N = 5: x_a,i = x_i + K(z + σζ_i − x_i) with K = P/(P + σ²) and the
    centred perturbations rescaled by √(N/(N−1)), so E[var_a] = (1 − K)² P + K² σ² N/(N−1) (ddof 1; the
    cross term has mean 0). Averaged over 3000 analyses of one fixed prior."""
    n, sigma = 5, 0.8
    prior = torch.tensor([[0.3], [1.1], [-0.4], [0.9], [2.0]], dtype=F64)
    p = float(prior.var())
    k = p / (p + sigma**2)
    op = Mask(torch.ones(1), sigma)
    gen = torch.Generator().manual_seed(0)
    ctx = Context(generator=gen)
    f = EnKF(variant="pertobs")
    variances = torch.tensor(
        [float(f.analyse(prior, torch.tensor([0.5], dtype=F64), op, ctx).var()) for _ in range(3000)]
    )
    expected = (1 - k) ** 2 * p + k**2 * sigma**2 * n / (n - 1)
    se = float(variances.std()) / math.sqrt(3000)
    assert abs(float(variances.mean()) - expected) < 5 * se, (float(variances.mean()), expected, se)


@pytest.mark.parametrize("variant", ["sqrt", "pertobs"])
def test_measurement_of_the_wrong_shape_is_refused(variant):
    prior = _ensemble(8, 2)
    with pytest.raises(ValueError, match=r"z must be shaped \(6,\)"):
        EnKF(variant=variant).analyse(prior, torch.zeros(5, dtype=F64), Mask(MASK6, SIGMA), _ctx())


def test_a_regularizer_larger_than_the_noise_variance_is_accepted():
    """R = σ² + eps: eps above σ² (here 1e-3 against 1e-4) is a valid, larger error variance."""
    op = Mask(MASK6, 0.01)
    prior = _ensemble(6, 1)
    z = torch.zeros(6, dtype=F64)
    for variant in ("sqrt", "pertobs"):
        post = EnKF(variant=variant, eps=1e-3).analyse(prior, z, op, _ctx())
        assert post.shape == prior.shape and bool(torch.isfinite(post).all())
