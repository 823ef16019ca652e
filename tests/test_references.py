"""Brute-force references for the vectorized algorithms, entrywise at float64.

Each reference is a slow, obviously-correct loop written from the textbook formula with numpy, sharing
no code with the library beyond the operator's forward map:

- the LETKF as one local ETKF per state entry, the taper applied through the local R⁻¹ = diag(ρ/r)
  (Hunt et al. 2007, eqs. 20–25 with anomaly inflation), at the radii, inflations and ensemble sizes of
  the shipped configs, both tapers, finite radii, channel sharing and ``same_channel_only``;
- the weighted CRPS as the double sum over members, the weighted spread, the fair and plain CRPS;
- the particle filter's weights as a loop of Gaussian log-likelihoods;
- periodic grid distances as the minimum over the images of the torus.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from masf.filters.base import Context
from masf.filters.letkf import LETKF
from masf.filters.particle import WEIGHTS_KEY, ParticleFilter
from masf.metrics import crps, spread
from masf.operators import Sigmoid, every_kth, grid_mask
from masf.operators.masks import Mask

F64 = torch.float64


def _gc(r: float) -> float:
    """Gaspari & Cohn (1999, eq. 4.10), unnested, for r = d/c >= 0."""
    if r <= 1:
        return -(r**5) / 4 + r**4 / 2 + 5 * r**3 / 8 - 5 * r**2 / 3 + 1
    if r < 2:
        return r**5 / 12 - r**4 / 2 + 5 * r**3 / 8 + 5 * r**2 / 3 - 5 * r + 4 - 2 / (3 * r)
    return 0.0


def _torus_distance(a: tuple[int, ...], b: tuple[int, ...], grid: tuple[int, ...]) -> float:
    """Euclidean distance between grid points a and b on the periodic grid: the minimum over the images
    b + k·grid, k ∈ {−1, 0, 1}ᵈ (enough for coordinates inside the grid)."""
    best = math.inf
    for shift in itertools.product((-1, 0, 1), repeat=len(grid)):
        d = math.sqrt(sum((ai - bi - s * g) ** 2 for ai, bi, s, g in zip(a, b, shift, grid, strict=True)))
        best = min(best, d)
    return best


def _sym_sqrt(m: np.ndarray) -> np.ndarray:
    lam, vec = np.linalg.eigh(m)
    return (vec * np.sqrt(lam)) @ vec.T


def letkf_loop(
    prior: np.ndarray,
    hx: np.ndarray,
    z_o: np.ndarray,
    obs_entry: np.ndarray,
    state_shape: tuple[int, ...],
    *,
    radius: float,
    inflation: float,
    noise_var: float,
    taper: str,
    same_channel_only: bool,
) -> np.ndarray:
    """One local ETKF per state entry j (Hunt et al. 2007), with inflated anomalies.

    prior (N, D), hx (N, m) the members in observation space, z_o (m,), obs_entry (m,) the flat state
    entry each observation sits at. For entry j at grid point p: the observations o with ρ_o > 0,
    ρ_o = GC(d(p, p_o)/c) (or 1 for d <= 2c with the boxcar), and

        P̃ = [(N−1) I + Bᵀ R⁻¹ B]⁻¹,  R⁻¹ = diag(ρ_o / r),  w̄ = P̃ Bᵀ R⁻¹ (z − ȳ),  W = [(N−1) P̃]^{1/2},
        x_a,i(j) = x̄(j) + Σ_k A_k(j) (w̄_k + W_ki),

    with A = ρ_infl (X − x̄) (N, D) and B = ρ_infl (Y − ȳ) restricted to the local observations (N, K).
    """
    n, dim = prior.shape
    grid = state_shape if len(state_shape) == 1 else state_shape[1:]
    n_pos = math.prod(grid)
    x_mean = prior.mean(0)
    a = inflation * (prior - x_mean)
    y_mean = hx.mean(0)
    b = inflation * (hx - y_mean)
    out = np.empty_like(prior)
    for j in range(dim):
        channel, pos = divmod(j, n_pos)
        here = np.unravel_index(pos, grid)
        local, rho = [], []
        for o, entry in enumerate(obs_entry):
            o_channel, o_pos = divmod(int(entry), n_pos)
            if same_channel_only and o_channel != channel:
                continue
            d = _torus_distance(here, np.unravel_index(o_pos, grid), grid)
            weight = _gc(d / radius) if taper == "gaspari_cohn" else float(d <= 2 * radius)
            if weight > 0:
                local.append(o)
                rho.append(weight)
        b_loc = b[:, local]  # (N, K)
        r_inv = np.diag(np.array(rho) / noise_var)
        p_tilde = np.linalg.inv((n - 1) * np.eye(n) + b_loc @ r_inv @ b_loc.T)
        w_mean = p_tilde @ b_loc @ r_inv @ (z_o[local] - y_mean[local])
        w_root = _sym_sqrt((n - 1) * p_tilde)
        out[:, j] = x_mean[j] + a[:, j] @ w_mean + w_root @ a[:, j]
    return out


def _prior(n: int, state_shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(state_shape, generator=g, dtype=F64)
    return base + 1.3 * torch.randn(n, *state_shape, generator=g, dtype=F64)


# (state shape, operator, N, radius, inflation, eps, taper, same_channel_only): the first two are the
# shipped L96 settings (config/sweep.yaml: N 40, radius 4, inflation 1.2; config/paper.yaml: radius 5,
# inflation 1.1, eps 1e-6) on their grids; the others cover the boxcar, channel sharing, a nonlinear H.
CASES = {
    "l96-every2-sweep": ((40,), lambda s: every_kth(s, 2, noise_std=1.0), 40, 4.0, 1.2, 0.0, "gaspari_cohn", False),
    "l96-every4-paper": ((40,), lambda s: every_kth(s, 4, noise_std=1.0), 20, 5.0, 1.1, 1e-6, "gaspari_cohn", False),
    "ring-boxcar": ((23,), lambda s: every_kth(s, 3, 1, noise_std=0.5), 9, 2.2, 1.05, 0.0, "boxcar", False),
    "torus-grid4-paper": ((2, 12, 12), lambda s: grid_mask(s, 4, noise_std=0.1), 10, 5.0, 1.1, 1e-6, "gaspari_cohn", False),
    "torus-own-channel": ((2, 8, 9), lambda s: grid_mask(s, 2, 1, noise_std=0.3), 12, 1.7, 1.0, 0.0, "gaspari_cohn", True),
    "torus-boxcar-random": ((3, 6, 7), None, 8, 1.4, 1.15, 0.0, "boxcar", False),
    "torus-sigmoid": ((2, 6, 6), lambda s: Sigmoid(1.5, 0.2, state_shape=s), 10, 2.0, 1.1, 0.0, "gaspari_cohn", False),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_letkf_matches_the_local_etkf_loop(case):
    state_shape, make_op, n, radius, inflation, eps, taper, own = CASES[case]
    if make_op is None:  # a random mask: uneven local observation counts, padding exercised
        keep = torch.rand(state_shape, generator=torch.Generator().manual_seed(5)) < 0.3
        op = Mask(keep, noise_std=0.4)
    else:
        op = make_op(state_shape)
    prior = _prior(n, state_shape, seed=1)
    truth = _prior(1, state_shape, seed=2)[0]
    z = op.observe(truth.unsqueeze(0), generator=torch.Generator().manual_seed(3))[0]
    f = LETKF(radius=radius, inflation=inflation, eps=eps, taper=taper, same_channel_only=own)
    fast = f.analyse(prior, z, op, Context(generator=torch.Generator().manual_seed(0)))

    hx = op(prior).reshape(n, -1).numpy()
    zf = z.reshape(-1).numpy()
    if op.mask is not None:
        obs_entry = op.observed_index().numpy()
        hx, zf = hx[:, obs_entry], zf[obs_entry]
    else:
        obs_entry = np.arange(hx.shape[1])
    slow = letkf_loop(
        prior.reshape(n, -1).numpy(),
        hx,
        zf,
        obs_entry,
        state_shape,
        radius=radius,
        inflation=inflation,
        noise_var=float(op.noise_std) ** 2 + eps,
        taper=taper,
        same_channel_only=own,
    )
    np.testing.assert_allclose(fast.reshape(n, -1).numpy(), slow, rtol=0, atol=1e-10)


def test_letkf_loop_sees_the_taper_and_the_inflation():
    """The reference is sensitive to what it guards: a squared taper or no inflation moves the answer."""
    state_shape, make_op, n, radius, inflation, _, taper, own = CASES["l96-every2-sweep"]
    op = make_op(state_shape)
    prior = _prior(n, state_shape, seed=1).reshape(n, -1).numpy()
    idx = op.observed_index().numpy()
    z = np.linspace(-2, 2, idx.size)
    args = {"radius": radius, "noise_var": 1.0, "taper": taper, "same_channel_only": own}
    base = letkf_loop(prior, prior[:, idx], z, idx, state_shape, inflation=inflation, **args)
    flat = letkf_loop(prior, prior[:, idx], z, idx, state_shape, inflation=1.0, **args)
    boxcar = letkf_loop(
        prior, prior[:, idx], z, idx, state_shape, inflation=inflation, **{**args, "taper": "boxcar"}
    )
    assert np.abs(base - flat).max() > 0.05 and np.abs(base - boxcar).max() > 0.05


# ---- metrics -------------------------------------------------------------------------------------


def _weighted_case(b: int, n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ens = torch.randn(b, n, d, generator=g, dtype=F64)
    ens[:, 1] = ens[:, 0]  # a tie, as after resampling
    truth = torch.randn(b, d, generator=g, dtype=F64)
    w = torch.rand(b, n, generator=g, dtype=F64) ** 3
    return ens, truth, w / w.sum(1, keepdim=True)


def test_weighted_crps_is_the_double_sum():
    ens, truth, w = _weighted_case(3, 7, 5, seed=0)
    expected = np.zeros(3)
    for bi in range(3):
        per_entry = []
        for j in range(5):
            x, wt, y = ens[bi, :, j].numpy(), w[bi].numpy(), float(truth[bi, j])
            skill = sum(wt[i] * abs(x[i] - y) for i in range(7))
            pair = sum(wt[i] * wt[k] * abs(x[i] - x[k]) for i in range(7) for k in range(7))
            per_entry.append(skill - 0.5 * pair)
        expected[bi] = np.mean(per_entry)
    np.testing.assert_allclose(crps(ens, truth, weights=w).numpy(), expected, rtol=0, atol=1e-12)
    # uniform weights are the plain ensemble CRPS
    uniform = torch.full((3, 7), 1 / 7, dtype=F64)
    torch.testing.assert_close(crps(ens, truth, weights=uniform), crps(ens, truth), rtol=0, atol=1e-12)


@pytest.mark.parametrize("fair", [False, True])
def test_crps_is_the_double_sum(fair):
    ens, truth, _ = _weighted_case(2, 6, 4, seed=1)
    n = 6
    expected = np.zeros(2)
    for bi in range(2):
        vals = []
        for j in range(4):
            x, y = ens[bi, :, j].numpy(), float(truth[bi, j])
            pair = sum(abs(x[i] - x[k]) for i in range(n) for k in range(n))
            vals.append(np.mean(np.abs(x - y)) - 0.5 * pair / (n * (n - 1) if fair else n * n))
        expected[bi] = np.mean(vals)
    np.testing.assert_allclose(crps(ens, truth, fair=fair).numpy(), expected, rtol=0, atol=1e-12)


def test_weighted_spread_is_the_unbiased_weighted_variance():
    ens, _, w = _weighted_case(3, 7, 5, seed=2)
    expected = np.zeros(3)
    for bi in range(3):
        wt = w[bi].numpy()
        var = []
        for j in range(5):
            x = ens[bi, :, j].numpy()
            m = sum(wt[i] * x[i] for i in range(7))
            var.append(sum(wt[i] * (x[i] - m) ** 2 for i in range(7)) / (1 - sum(wt**2)))
        expected[bi] = math.sqrt(np.mean(var))
    np.testing.assert_allclose(spread(ens, w).numpy(), expected, rtol=0, atol=1e-12)
    uniform = torch.full((3, 7), 1 / 7, dtype=F64)
    torch.testing.assert_close(spread(ens, uniform), spread(ens), rtol=0, atol=1e-12)


# ---- particle filter -----------------------------------------------------------------------------


@pytest.mark.parametrize("operator", ["every2", "sigmoid"])
def test_particle_weights_are_the_gaussian_likelihoods(operator):
    """Two analyses without resampling (ess_threshold 0): w_i ∝ w_i⁽⁰⁾ Π_o N(z_o; H(x_i)_o, σ²)."""
    n, shape = 9, (10,)
    op = every_kth(shape, 2, noise_std=0.8) if operator == "every2" else Sigmoid(1.0, 0.3, state_shape=shape)
    pf = ParticleFilter(ess_threshold=0.0)
    ctx = Context(generator=torch.Generator().manual_seed(0))
    log_w = np.zeros(n)
    for step in range(2):
        prior = _prior(n, shape, seed=10 + step)
        z = _prior(1, shape, seed=20 + step)[0] * 0.5
        out = pf.analyse(prior, z, op, ctx)
        torch.testing.assert_close(out, prior, rtol=0, atol=0)  # no resampling: particles untouched
        hx = op(prior).numpy()
        zs = z.numpy()
        observed = range(10) if op.mask is None else op.observed_index().tolist()
        sigma = 0.8 if operator == "every2" else 0.3
        for i in range(n):
            log_w[i] += sum(-0.5 * (zs[o] - hx[i, o]) ** 2 / sigma**2 for o in observed)
        expected = np.exp(log_w - log_w.max())
        expected /= expected.sum()
        np.testing.assert_allclose(ctx.state[WEIGHTS_KEY].numpy(), expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("shape", [(3, 7), (3, 2, 7), (2, 2, 4, 5)])
def test_channel_sum_mse_is_the_loop(shape):
    """Squared error summed over the channel (dim 1) and averaged over batch and grid when a state has two
    or more dims ((B, C, D), (B, C, H, W)); the plain mean for 1-D states (B, D)."""
    from masf.filters.score_common import channel_sum_mse

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(shape, generator=g, dtype=F64), torch.randn(shape, generator=g, dtype=F64)
    sq = ((a - b) ** 2).numpy()
    if len(shape) == 2:
        expected = sq.mean()
    else:
        rest = [idx for idx in np.ndindex(*sq.shape) if idx[1] == 0]  # one per (batch, grid point)
        expected = np.mean([sum(sq[(i[0], c, *i[2:])] for c in range(shape[1])) for i in rest])
    assert float(channel_sum_mse(a, b)) == pytest.approx(expected, rel=1e-12)


def test_ssim_is_the_windowed_loop():
    """SSIM (Wang et al. 2004) pixel by pixel: Gaussian weights w_uv ∝ exp(−(u² + v²)/(2s²)) over the
    window offsets u, v ∈ [−(W−1)/2, (W−1)/2], local means, variances and covariance with periodic
    wrap-around, C1 = (0.01 L)², C2 = (0.03 L)², L the range of the reference field."""
    from masf.metrics import ssim

    g = torch.Generator().manual_seed(0)
    b = torch.randn(1, 9, 8, generator=g, dtype=F64)
    a = b + 0.5 * torch.randn(1, 9, 8, generator=g, dtype=F64)
    size, s = 5, 1.2
    half = (size - 1) // 2
    offsets = range(-half, half + 1)
    weights = {(u, v): math.exp(-(u * u + v * v) / (2 * s * s)) for u in offsets for v in offsets}
    total = sum(weights.values())
    x, y = a[0].numpy(), b[0].numpy()
    rng = float(b.max() - b.min())
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    values = []
    for i in range(9):
        for j in range(8):

            def local(f, i=i, j=j):
                return sum(w * f((i + u) % 9, (j + v) % 8) for (u, v), w in weights.items()) / total

            mx, my = local(lambda p, q: x[p, q]), local(lambda p, q: y[p, q])
            vx = local(lambda p, q: x[p, q] ** 2) - mx**2
            vy = local(lambda p, q: y[p, q] ** 2) - my**2
            cxy = local(lambda p, q: x[p, q] * y[p, q]) - mx * my
            values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    assert float(ssim(a, b, window=size, sigma=s)) == pytest.approx(np.mean(values), rel=1e-10)
    # batched, each item with its own data range: the same as one item at a time
    pair_a, pair_b = torch.cat([a, 3.0 * a]), torch.cat([b, 3.0 * b])
    one_by_one = torch.cat(
        [ssim(pair_a[i : i + 1], pair_b[i : i + 1], window=size, sigma=s) for i in range(2)]
    )
    torch.testing.assert_close(ssim(pair_a, pair_b, window=size, sigma=s), one_by_one, rtol=1e-12, atol=0)


def test_ensemble_mean_is_the_loop():
    from masf.metrics import ensemble_mean

    ens, _, w = _weighted_case(3, 7, 5, seed=3)
    plain = np.array([[np.mean([float(ens[b, i, j]) for i in range(7)]) for j in range(5)] for b in range(3)])
    weighted = np.array(
        [[sum(float(w[b, i] * ens[b, i, j]) for i in range(7)) for j in range(5)] for b in range(3)]
    )
    np.testing.assert_allclose(ensemble_mean(ens).numpy(), plain, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ensemble_mean(ens, w).numpy(), weighted, rtol=0, atol=1e-12)
