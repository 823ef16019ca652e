"""LETKF and localization: Gaspari–Cohn values, neighbour search vs brute force, reduction to the ETKF
for a huge radius, locality of the update, 2-D grids with masks and nonlinear H, caching, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from masf.filters.base import Context
from masf.filters.enkf import EnKF
from masf.filters.letkf import LETKF
from masf.filters.localization import gaspari_cohn, local_domains, taper_weights
from masf.operators import Sigmoid, Speed, every_kth, grid_mask, identity
from masf.operators.masks import Mask

F64 = torch.float64


def _ctx(seed: int = 0) -> Context:
    return Context(generator=torch.Generator().manual_seed(seed))


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_gaspari_cohn_known_values():
    r = torch.tensor([0.0, 1.0, 2.0, 2.5, 10.0, -1.0], dtype=F64)
    expected = torch.tensor([1.0, 5 / 24, 0.0, 0.0, 0.0, 5 / 24], dtype=F64)
    torch.testing.assert_close(gaspari_cohn(r), expected, rtol=0, atol=1e-15)
    # interior points against the textbook (unnested) polynomials of Gaspari & Cohn (1999, eq. 4.10)
    a, b = 0.5, 1.5
    inner = -(a**5) / 4 + a**4 / 2 + 5 * a**3 / 8 - 5 * a**2 / 3 + 1
    outer = b**5 / 12 - b**4 / 2 + 5 * b**3 / 8 + 5 * b**2 / 3 - 5 * b + 4 - 2 / (3 * b)
    torch.testing.assert_close(
        gaspari_cohn(torch.tensor([a, b], dtype=F64)), torch.tensor([inner, outer], dtype=F64)
    )


def test_gaspari_cohn_continuous_and_decreasing():
    r = torch.linspace(0.0, 2.2, 22_001, dtype=F64)
    g = gaspari_cohn(r)
    assert float(g.diff().max()) <= 1e-15  # non-increasing
    assert float(g.diff().abs().max()) < 1e-3  # no jump (step 1e-4, slope <= 1.6)
    assert float(g.min()) >= 0.0
    eps = torch.tensor([1 - 1e-9, 1 + 1e-9, 2 - 1e-6], dtype=F64)
    left, right, edge = gaspari_cohn(eps).tolist()
    assert abs(left - 5 / 24) < 1e-8 and abs(right - 5 / 24) < 1e-8 and 0 <= edge < 1e-12


def _brute_force(state_shape, obs_index, radius, same_channel_only):
    """Dense reference: for each state entry the set {(obs, weight)} within periodic distance < 2c."""
    if len(state_shape) == 1:
        channels, grid = 1, state_shape
    else:
        channels, grid = state_shape[0], state_shape[1:]
    n_pos = math.prod(grid)
    coords = torch.stack(torch.unravel_index(torch.arange(n_pos), grid), 1).to(F64)
    obs_pos, obs_ch = obs_index % n_pos, obs_index // n_pos
    delta = (coords[:, None, :] - coords[obs_pos][None, :, :]).abs()
    delta = torch.minimum(delta, torch.tensor(grid, dtype=F64) - delta)
    w = gaspari_cohn(delta.square().sum(-1).sqrt() / radius)  # (P, m)
    result = {}
    for entry in range(channels * n_pos):
        ch, pos = divmod(entry, n_pos)
        keep = (w[pos] > 0) & ((obs_ch == ch) if same_channel_only else True)
        result[entry] = {(int(o), round(float(w[pos, o]), 12)) for o in torch.nonzero(keep).flatten()}
    return result


@pytest.mark.parametrize(
    ("state_shape", "radius", "same_channel_only"),
    [((17,), 2.5, False), ((2, 6, 7), 1.3, False), ((2, 6, 7), 1.3, True), ((3, 5, 5), 4.0, False)],
)
def test_neighbour_search_matches_brute_force(state_shape, radius, same_channel_only):
    g = torch.Generator().manual_seed(3)
    obs_index = torch.nonzero(torch.rand(math.prod(state_shape), generator=g) < 0.4).flatten()
    dom = local_domains(state_shape, obs_index, radius, same_channel_only=same_channel_only)
    expected = _brute_force(state_shape, obs_index, radius, same_channel_only)
    seen = set()
    for d in range(dom.members.shape[0]):
        hits = dom.weights[d] > 0
        found = {
            (int(o), round(float(w), 12))
            for o, w in zip(dom.obs[d][hits], dom.weights[d][hits].to(F64), strict=True)
        }
        for entry in dom.members[d].tolist():
            assert found == expected[entry], (d, entry)
            seen.add(entry)
    assert seen == set(range(math.prod(state_shape)))  # every entry is in exactly one domain
    assert dom.members.numel() == math.prod(state_shape)


@pytest.mark.parametrize("state_shape", [(12,), (2, 4, 5)])
@pytest.mark.parametrize("stride", [1, 2])
def test_huge_radius_is_the_etkf(state_shape, stride):
    """c → ∞, ρ = 1, eps = 0: every local analysis is the global ETKF (weights 1 − O(d²/c²))."""
    n = 7
    prior = 2.0 + _randn(n, *state_shape, seed=1) + _randn(1, *state_shape, seed=2)
    z = _randn(*state_shape, seed=3)
    op = every_kth(state_shape, stride, noise_std=0.7) if len(state_shape) == 1 else None
    if op is None:
        op = grid_mask(state_shape, stride, noise_std=0.7)
    letkf = LETKF(radius=1e9).analyse(prior, z, op, _ctx())
    etkf = EnKF(variant="sqrt").analyse(prior, z, op, _ctx())
    torch.testing.assert_close(letkf, etkf, rtol=0, atol=1e-10)
    # and the ETKF is the Kalman update of the ensemble's own statistics
    x = prior.reshape(n, -1)
    h = torch.eye(x.shape[1], dtype=F64)[op.observed_index()]
    cov = torch.cov(x.T)
    gain = cov @ h.T @ torch.linalg.inv(h @ cov @ h.T + 0.49 * torch.eye(h.shape[0], dtype=F64))
    mean = x.mean(0) + gain @ (z.reshape(-1)[op.observed_index()] - h @ x.mean(0))
    cov_a = (torch.eye(x.shape[1], dtype=F64) - gain @ h) @ cov
    torch.testing.assert_close(letkf.reshape(n, -1).mean(0), mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.cov(letkf.reshape(n, -1).T), cov_a, rtol=0, atol=1e-10)


def test_update_is_local():
    """One observation at position 0, c = 2 on a ring of 30: entries at distance >= 4 are unchanged."""
    mask = torch.zeros(30)
    mask[0] = 1.0
    prior = _randn(6, 30, seed=4)
    post = LETKF(radius=2.0).analyse(prior, torch.full((30,), 3.0, dtype=F64), Mask(mask, 0.5), _ctx())
    dist = torch.minimum(torch.arange(30), 30 - torch.arange(30))
    changed = (post - prior).abs().amax(0) > 1e-12
    assert bool(changed[dist < 4].all()) and not bool(changed[dist >= 4].any())
    # the observed entry moves towards the measurement more than its neighbour at distance 3
    shift = (post.mean(0) - prior.mean(0)) / (3.0 - prior.mean(0)[0])
    assert float(shift[0]) > float(shift[3]) * (prior.std(0)[0] / prior.std(0)[3])


def test_local_analysis_with_a_single_local_observation_is_scalar_kalman():
    """Ring with one observation, boxcar taper: each affected entry gets the scalar Kalman update."""
    mask = torch.zeros(20)
    mask[5] = 1.0
    prior = _randn(9, 20, seed=5)
    z = torch.full((20,), -1.0, dtype=F64)
    post = LETKF(radius=1.5, taper="boxcar").analyse(prior, z, Mask(mask, 0.4), _ctx())
    cov = torch.cov(prior.T)
    gain = cov[:, 5] / (cov[5, 5] + 0.16)
    expected = prior.mean(0) + gain * (-1.0 - prior.mean(0)[5])
    near = torch.tensor([abs(j - 5) <= 3 for j in range(20)])  # boxcar support: d <= 2c = 3
    torch.testing.assert_close(post.mean(0)[near], expected[near], rtol=0, atol=1e-12)
    torch.testing.assert_close(post.mean(0)[~near], prior.mean(0)[~near], rtol=0, atol=1e-12)


def test_2d_grid_mask_and_same_channel_only():
    """(2, n, n) state, u observed everywhere and v nowhere: with same_channel_only v is untouched."""
    mask = torch.zeros(2, 8, 8)
    mask[0] = 1.0
    prior = _randn(10, 2, 8, 8, seed=6)
    z = _randn(2, 8, 8, seed=7)
    shared = LETKF(radius=1.5).analyse(prior, z, Mask(mask, 0.3), _ctx())
    own = LETKF(radius=1.5, same_channel_only=True).analyse(prior, z, Mask(mask, 0.3), _ctx())
    torch.testing.assert_close(own[:, 1], prior[:, 1], rtol=0, atol=1e-12)
    assert float((shared[:, 1] - prior[:, 1]).abs().max()) > 1e-3
    torch.testing.assert_close(own[:, 0], shared[:, 0], rtol=0, atol=1e-12)


def test_nonlinear_operator_on_2d_grid_reduces_error():
    """Twin test on a (2, 8, 8) grid, H = sigmoid(x) on every entry: truth and members are draws from
    the same prior, so the prior-mean error is ≈ the prior variance and the analysis must beat it."""
    g = torch.Generator().manual_seed(8)
    n, size = 16, 8
    op = Sigmoid(alpha=1.0, noise_std=0.05, state_shape=(2, size, size))
    prior_err = post_err = 0.0
    for t in range(4):
        draws = torch.randn(n + 1, 2, size, size, generator=g, dtype=F64)
        truth, prior = draws[:1], draws[1:]
        z = op.observe(truth, generator=g)[0]
        post = LETKF(radius=2.0, inflation=1.05).analyse(prior, z, op, _ctx(t))
        prior_err += float((prior.mean(0) - truth[0]).square().mean())
        post_err += float((post.mean(0) - truth[0]).square().mean())
    assert post_err < 0.5 * prior_err  # measured 0.34, (prior_err, post_err)


def test_speed_operator_runs_on_both_channels():
    """Speed writes the same q to both channels: both copies are local observations of each pixel."""
    op = Speed(noise_std=0.05, state_shape=(2, 6, 6))
    prior = 1.5 * _randn(8, 2, 6, 6, seed=10)
    post = LETKF(radius=1.0).analyse(prior, op.observe(prior[:1], generator=torch.Generator())[0], op, _ctx())
    assert post.shape == prior.shape and bool(torch.isfinite(post).all())
    assert float(post.std(0).mean()) < float(prior.std(0).mean())


def test_domains_are_cached_per_operator():
    ctx = _ctx()
    prior = _randn(5, 2, 6, 6, seed=9)
    z = torch.zeros(2, 6, 6, dtype=F64)
    f = LETKF(radius=2.0)
    f.analyse(prior, z, grid_mask((2, 6, 6), 2, noise_std=0.5), ctx)
    first = ctx.state["letkf_domains"][2]
    f.analyse(prior, z, grid_mask((2, 6, 6), 2, noise_std=0.5), ctx)
    assert ctx.state["letkf_domains"][2] is first
    f.analyse(prior, z, grid_mask((2, 6, 6), 3, noise_std=0.5), ctx)
    assert ctx.state["letkf_domains"][2] is not first


def test_float32_on_128_grid_shapes():
    """Shapes, dtype and taper weights on the production grid (2, 128, 128) with stride 4."""
    op = grid_mask((2, 128, 128), 4, noise_std=0.1)
    dom = local_domains((2, 128, 128), op.observed_index(), 5.0)
    assert dom.members.shape == (128 * 128, 2)
    assert float(dom.weights.max()) == 1.0  # an observed pixel sees itself with weight 1
    # 2 channels × (grid points of stride 4 within distance < 10) = 2 × 21 at an observed pixel
    assert int((dom.weights[0] > 0).sum()) == 2 * 21
    prior = torch.randn(4, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    post = LETKF(radius=2.0).analyse(prior, prior[0], grid_mask((2, 16, 16), 4, noise_std=0.1), _ctx())
    assert post.dtype == torch.float32 and post.shape == prior.shape


def test_taper_weights_boxcar_and_unknown():
    d = torch.tensor([0.0, 3.9, 4.0, 4.1], dtype=F64)
    assert taper_weights(d, 2.0, "boxcar").tolist() == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="taper"):
        taper_weights(d, 2.0, "gauss")


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"radius": 0.0}, "radius"),
        ({"radius": -2.0}, "radius"),
        ({"radius": math.inf}, "radius"),
        ({"inflation": 0.99}, "inflation"),
        ({"eps": -1.0}, "eps"),
        ({"taper": "gauss"}, "taper"),
        ({"same_channel_only": "yes"}, "same_channel_only"),
    ],
)
def test_bad_hyper_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        LETKF(**params)


def test_bad_analysis_input():
    f = LETKF(radius=2.0)
    op = identity((10,), noise_std=1.0)
    with pytest.raises(ValueError, match="N >= 2"):
        f.analyse(torch.zeros(1, 10, dtype=F64), torch.zeros(10, dtype=F64), op, _ctx())
    with pytest.raises(ValueError, match="zero spread"):
        f.analyse(torch.ones(3, 10, dtype=F64), torch.zeros(10, dtype=F64), op, _ctx())
    with pytest.raises(ValueError, match=r"\(D,\) \(ring\) or \(C, ny, nx\)"):
        f.check_operator(identity((4, 5), noise_std=1.0))
    with pytest.raises(ValueError, match="operator must be"):
        f.check_operator(object())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    """Same code on CUDA (neighbour search included): results agree with the CPU in float64."""
    op = grid_mask((2, 12, 12), 3, noise_std=0.3)
    prior = _randn(8, 2, 12, 12, seed=0)
    z = _randn(2, 12, 12, seed=1)
    f = LETKF(radius=2.5, inflation=1.1, rotate=True)
    cpu = f.analyse(prior, z, op, _ctx(2))
    gpu = f.analyse(prior.cuda(), z.cuda(), op, _ctx(2))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-10)


def test_rotation_keeps_the_analysis_mean_and_covariance():
    """rotate=True applies a mean-preserving rotation to the analysis anomalies: same mean and sample
    covariance as without it, different members."""
    prior = 1.5 + _randn(9, 24, seed=4)
    z = _randn(24, seed=5)
    op = every_kth((24,), 3, noise_std=0.6)
    plain = LETKF(radius=3.0, inflation=1.1).analyse(prior, z, op, _ctx())
    rotated = LETKF(radius=3.0, inflation=1.1, rotate=True).analyse(prior, z, op, _ctx())
    assert float((plain - rotated).abs().max()) > 1e-3
    torch.testing.assert_close(rotated.mean(0), plain.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cov(rotated.T), torch.cov(plain.T), rtol=0, atol=1e-12)


def test_dapper_factor_matches_the_gaussian_curvature_of_the_taper():
    """DAPPER's loc_rad L is the std of a Gaussian taper; GC(d/c) ≈ 1 − (5/3)(d/c)² near 0 matches
    exp(−d²/2L²) ≈ 1 − d²/(2L²) when c = L·√(10/3) ≈ 1.826 L: DAPPER's 1.82."""
    from masf.filters.localization import DAPPER_GC_FACTOR, gaspari_cohn

    assert abs(DAPPER_GC_FACTOR - math.sqrt(10.0 / 3.0)) < 0.01
    d = torch.tensor([0.05, 0.1], dtype=torch.float64)  # small d / L, where the quadratic terms rule
    gc = gaspari_cohn(d / DAPPER_GC_FACTOR)
    torch.testing.assert_close(gc, torch.exp(-(d**2) / 2), rtol=2e-3, atol=0)
