"""The hybrid prior of MASF (masf.filters.hybrid, docs/hybrid.md): known answers in the Gaussian limit.

With an exact Gaussian climatology N(μ_c, C) as the base denoiser, the hybrid denoiser must be the exact
x0-predictor of the hybrid Gaussian, which is the localized forecast Gaussian N(x̄_f, L∘P_f) where the
forecast is narrower than the climatology; the bridge then samples the Kalman posterior of that prior.
The references are written out here by hand (loops, explicit inverses), not with the module's algebra.
"""

import math

import pytest
import torch

from masf.diffusion import GaussianDenoiser, MeasurementAwareProcess, sample
from masf.filters.base import Context
from masf.filters.hybrid import (
    MAX_DIM,
    HybridDenoiser,
    check_dim,
    climatology_gaussian,
    hybrid_prior,
    hybrid_sample,
)
from masf.filters.hybrid_fft import StationaryGaussian, stationary_gaussian, taper_spectrum
from masf.filters.letkf import LETKF
from masf.filters.localization import taper_matrix
from masf.filters.masf import MASF
from masf.filters.score_common import STATE_KEY
from masf.operators import Mask, every_kth, grid_mask
from masf.rng import generator
from masf.systems import Lorenz96
from masf.systems.kolmogorov import Kolmogorov
from masf.train import load_checkpoint

F64 = torch.float64
D = 12


def _gc(r: float) -> float:
    """Gaspari–Cohn (1999, eq. 4.10), scalar."""
    r = abs(r)
    if r <= 1:
        return 1 - 5 / 3 * r**2 + 5 / 8 * r**3 + 1 / 2 * r**4 - 1 / 4 * r**5
    if r < 2:
        return 4 - 5 * r + 5 / 3 * r**2 + 5 / 8 * r**3 - 1 / 2 * r**4 + 1 / 12 * r**5 - 2 / (3 * r)
    return 0.0


@pytest.mark.parametrize("shape", [(12,), (2, 3, 4)])
def test_taper_matrix_is_gaspari_cohn_of_the_periodic_distance(shape):
    radius = 1.3
    L = taper_matrix(shape, radius)
    chans, grid = (1, shape) if len(shape) == 1 else (shape[0], shape[1:])
    positions = (
        [(i,) for i in range(grid[0])]
        if len(grid) == 1
        else [(i, j) for i in range(grid[0]) for j in range(grid[1])]
    )
    P = len(positions)
    for a in range(chans * P):
        for b in range(chans * P):
            pa, pb = positions[a % P], positions[b % P]
            d2 = sum(min(abs(u - v), g - abs(u - v)) ** 2 for u, v, g in zip(pa, pb, grid, strict=True))
            assert float(L[a, b]) == pytest.approx(_gc(math.sqrt(d2) / radius), abs=1e-12)


def _setting(spread: float, seed: int = 0):
    """Forecast members (n, D), a mask process and climatology states of N(μ_c, C), all float64."""
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(D, dtype=F64)
    ring = torch.minimum((i[:, None] - i[None, :]).abs(), D - (i[:, None] - i[None, :]).abs())
    C = 4.0 * torch.exp(-ring / 3) + 0.1 * torch.eye(D, dtype=F64)
    mu_c = torch.linspace(-1, 1, D, dtype=F64)
    P_true = spread * torch.exp(-(ring**2) / 4) + 0.01 * torch.eye(D, dtype=F64)
    m_f = mu_c + 0.8 * torch.randn(D, generator=g, dtype=F64)
    members = m_f + torch.randn(400, D, generator=g, dtype=F64) @ torch.linalg.cholesky(P_true).T
    mask = (i % 3 == 0).to(F64)
    process = MeasurementAwareProcess(Mask(mask, 0.5))
    bank = mu_c + torch.randn(40000, D, generator=g, dtype=F64) @ torch.linalg.cholesky(C).T
    return members, process, bank


def _localized(members: torch.Tensor, radius: float, inflation: float) -> torch.Tensor:
    n = members.shape[0]
    a = inflation * (members - members.mean(0))
    P = a.T @ a / (n - 1)
    B = torch.empty_like(P)
    for j in range(D):
        for k in range(D):
            d = min(abs(j - k), D - abs(j - k))
            B[j, k] = _gc(d / radius) * P[j, k]
    return B


def _hybrid_gaussian(mu_c, C, m_f, B):
    """N(m_h, P_h) with P_h⁻¹ = C⁻¹ + max(B⁻¹ − C⁻¹, 0) in C's whitened basis, by explicit inverses."""
    vals, vecs = torch.linalg.eigh(C)
    W = vecs @ torch.diag(vals**-0.5) @ vecs.T
    R = torch.linalg.inv(W)
    lam, U = torch.linalg.eigh(W @ B @ W)
    var = torch.where(lam < 1, lam, torch.ones_like(lam))  # whitened variances, capped at the climatology's
    P_h = R @ U @ torch.diag(var) @ U.T @ R
    return m_f, P_h


@pytest.mark.parametrize("spread", [0.3, 8.0], ids=["narrow", "wider-than-climatology"])
def test_hybrid_denoiser_is_exact_for_a_gaussian_climatology(spread):
    members, process, bank = _setting(spread)
    clim = climatology_gaussian(bank)
    # the exact climatology denoiser, with the fitted Gaussian (so the reference is exact, not noisy)
    C_fit = clim.root @ clim.root
    base = GaussianDenoiser(clim.mean, C_fit, process)
    taper = taper_matrix((D,), 2.5)
    prior = hybrid_prior(members, clim, taper, inflation=1.1)
    B = _localized(members, 2.5, 1.1)
    m_h, P_h = _hybrid_gaussian(clim.mean, C_fit, members.mean(0), B)
    if spread < 1:
        torch.testing.assert_close(P_h, B, rtol=1e-8, atol=1e-10)  # no direction capped: P_h = B
    exact = GaussianDenoiser(m_h, P_h, process)
    hybrid = HybridDenoiser(base, prior, process)
    g = torch.Generator().manual_seed(5)
    for t in (1e-4, 0.05, 0.3, 0.7, 0.99):
        x0 = members[:16]
        tt = torch.full((16,), t, dtype=F64)
        x_t = process.forward(x0, t, generator=g)
        torch.testing.assert_close(hybrid(x_t, tt), exact(x_t, tt), rtol=1e-7, atol=1e-8)
    # and its prior draws are that Gaussian's
    draws = prior.draw(200000, torch.Generator().manual_seed(2))
    torch.testing.assert_close(draws.mean(0), m_h, rtol=0, atol=0.03 * float(P_h.diagonal().max().sqrt()))
    torch.testing.assert_close(torch.cov(draws.T), P_h, rtol=0, atol=0.02 * float(P_h.diagonal().max()))


def _kalman(m, P, mask, sigma, z):
    H = torch.diag(mask)[mask > 0]
    S = H @ P @ H.T + sigma**2 * torch.eye(H.shape[0], dtype=F64)
    K = P @ H.T @ torch.linalg.inv(S)
    return m + K @ (H @ z - H @ m), torch.diagonal((torch.eye(len(m), dtype=F64) - K @ H) @ P)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("nfe", [10, 30])
def test_hybrid_bridge_samples_the_localized_kalman_posterior(nfe, dtype):
    """Gaussian climatology: the hybrid bridge's draws are the Kalman posterior of N(x̄_f, L∘P_f), the
    B-localized EnKF's: mean within 0.1 posterior sd, variance ratio in [0.93, 1.07] (N = 20 000)."""
    members, process, bank = _setting(0.3, seed=1)
    clim = climatology_gaussian(bank)
    base = GaussianDenoiser(clim.mean.to(dtype), (clim.root @ clim.root).to(dtype), process)
    radius, inflation = 2.5, 1.0
    taper = taper_matrix((D,), radius)
    g = torch.Generator().manual_seed(7)
    truth = members.mean(0) + 0.5 * torch.randn(D, generator=g, dtype=F64)
    z = process.mask * truth + 0.5 * torch.randn(D, generator=g, dtype=F64)
    # many posterior draws from one forecast: repeat the 400 members (the start only uses them weakly)
    start = members.repeat(50, 1)
    prior = hybrid_prior(members, clim, taper, inflation)
    post = sample(
        HybridDenoiser(base, prior, process),
        process,
        z.to(dtype),
        start.to(dtype),
        sampler="bridge",
        nfe=nfe,
        generator=torch.Generator().manual_seed(0),
        prior_draws=prior.draw,
    ).to(F64)
    k_mean, k_var = _kalman(
        members.mean(0), _localized(members, radius, inflation), process.mask.to(F64), 0.5, z
    )
    err = (post.mean(0) - k_mean).abs() / k_var.sqrt()
    ratio = post.var(0) / k_var
    assert float(err.max()) < 0.1, err
    assert float((ratio - 1).abs().max()) < 0.07, ratio


# ------------------------------------------------------------------------------------- the MASF filter
def _l96_setup(tmp_path, residual: bool):
    system = Lorenz96(dim=16)
    operator = every_kth((16,), k=4, noise_std=1.0)
    data = system.sample_climatology(200, generator=generator(0, "pretrain_data"), spinup_steps=40)
    sizes = {"network": "mlp", "width": 16, "nfe": 4, "pretrain_epochs": 1, "pretrain_batch": 16}
    ckpt = tmp_path / f"net_{residual}.pt"
    MASF(gaussian_residual=residual, **sizes).pretrain(
        data, operator, checkpoint=str(ckpt), generator=generator(0, "train"), progress=False
    )
    return operator, data, sizes, ckpt


def _ctx(ckpt, data):
    return Context(generator=generator(0, "sampling"), pretrained=str(ckpt), climatology=data)


def test_gaussian_residual_checkpoint_holds_the_climatology_gaussian_and_is_checked(tmp_path):
    """The residual network's checkpoint stores the Gaussian of the normalized pretraining data; the
    effective denoiser is D_g + net, and a network of the other kind is refused in one line."""
    operator, data, sizes, ckpt = _l96_setup(tmp_path, residual=True)
    gaussian = load_checkpoint(ckpt).extra["gaussian"]
    prior, z = data[:6], operator.observe(data[6:7], generator=torch.Generator().manual_seed(0))[0]
    f = MASF(sampler="bridge", finetune_epochs=0, gaussian_residual=True, **sizes)
    ctx = _ctx(ckpt, data)
    assert f.analyse(prior, z, operator, ctx).isfinite().all()
    model = ctx.state[STATE_KEY]
    flat = model.normalizer.norm_x(data).reshape(len(data), -1).to(F64)
    torch.testing.assert_close(gaussian["mean"].reshape(-1), flat.mean(0))
    torch.testing.assert_close(gaussian["cov"], torch.cov(flat.T))
    # the effective denoiser: the exact Gaussian one plus the network
    process = f.process(operator, model.normalizer)
    x_t = process.forward(model.normalizer.norm_x(prior), 0.3, generator=torch.Generator().manual_seed(1))
    t = torch.full((6,), 0.3)
    expected = GaussianDenoiser(gaussian["mean"], gaussian["cov"], process)(x_t.to(F64), t.to(F64))
    got = f.denoiser(model.net, process, gaussian)(x_t, t)
    torch.testing.assert_close(got, expected.float() + model.net(x_t, t), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="holds a Gaussian-residual network; set gaussian_residual: true"):
        MASF(sampler="bridge", finetune_epochs=0, **sizes).analyse(prior, z, operator, _ctx(ckpt, data))


def test_plain_checkpoint_is_refused_by_a_gaussian_residual_run(tmp_path):
    operator, data, sizes, ckpt = _l96_setup(tmp_path, residual=False)
    prior, z = data[:6], operator.observe(data[6:7], generator=torch.Generator().manual_seed(0))[0]
    f = MASF(sampler="bridge", finetune_epochs=0, gaussian_residual=True, **sizes)
    with pytest.raises(ValueError, match="records no 'gaussian_residual'"):
        f.analyse(prior, z, operator, _ctx(ckpt, data))


def test_updated_members_are_the_draws_mean_with_the_letkf_anomalies(tmp_path):
    """members: updated = the mean of the hybrid draws + the LETKF analysis anomalies of the same radius
    and inflation; redrawn = the draws (same random stream, so the same mean)."""
    operator, data, sizes, ckpt = _l96_setup(tmp_path, residual=True)
    prior = data[:8] * 0.5 + 0.5 * data[8:9]  # a forecast narrower than the climatology
    z = operator.observe(data[9:10], generator=torch.Generator().manual_seed(0))[0]
    keys = {"sampler": "bridge", "finetune_epochs": 0, "gaussian_residual": True, "hybrid": True, **sizes}
    keys.update(radius=3.0, inflation=1.1)
    updated = MASF(**keys).analyse(prior, z, operator, _ctx(ckpt, data))
    redrawn = MASF(**keys, members="redrawn").analyse(prior, z, operator, _ctx(ckpt, data))
    letkf = LETKF(radius=3.0, inflation=1.1).analyse(prior, z, operator, _ctx(ckpt, data))
    torch.testing.assert_close(updated.mean(0), redrawn.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(updated - updated.mean(0), letkf - letkf.mean(0), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(redrawn - redrawn.mean(0), letkf - letkf.mean(0), atol=1e-3)
    # more draws for the mean: a different (larger) start batch, same shape out
    more = MASF(**keys, draws=50).analyse(prior, z, operator, _ctx(ckpt, data))
    assert more.shape == prior.shape and bool(torch.isfinite(more).all())


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"hybrid": True}, "hybrid needs finetune_epochs: 0"),
        ({"hybrid": True, "finetune_epochs": 0, "sampler": "reference"}, "hybrid needs sampler: bridge"),
        ({"radius": 3.0}, "apply to the hybrid prior only"),
        ({"hybrid": True, "finetune_epochs": 0, "members": "redrawn", "draws": 40}, "draws applies to"),
        ({"hybrid": True, "finetune_epochs": 0, "inflation": 0.9}, "inflation must be"),
        ({"hybrid": True, "finetune_epochs": 0, "members": "kept"}, "members must be one of"),
        ({"gaussian_residual": True, "sampler": "nonlinear"}, "gaussian_residual needs"),
    ],
)
def test_bad_hybrid_keys_are_refused(keys, message):
    with pytest.raises(ValueError, match=message):
        MASF(**keys)


def test_the_dense_limit_is_refused_before_any_work():
    check_dim(MAX_DIM, "masf")
    with pytest.raises(ValueError, match=r"gaussian_residual .* at most 2048 entries, got D = 2049"):
        check_dim(MAX_DIM + 1, "masf")


def test_beyond_the_dense_limit_the_filter_samples_the_matrix_free_hybrid(tmp_path):
    """Kolmogorov 48² (2·48·48 = 4608 > MAX_DIM entries): the filter takes the matrix-free path, whose
    draws are ``hybrid_sample`` of the normalized forecast with the stationary fit of the normalized
    climatology and the taper spectrum of the method's radius (same random stream), and ``updated``
    recentres the LETKF's anomalies of the same radius and inflation on their mean."""
    system = Kolmogorov(n=48)
    operator = grid_mask(system.state_shape, stride=8, noise_std=0.1)
    data = system.sample_climatology(24, generator=generator(0, "pretrain_data"), spinup_steps=5)
    sizes = {"network": "unet2d", "width": 4, "depth": 1, "nfe": 3, "pretrain_epochs": 1, "pretrain_batch": 8}
    ckpt = tmp_path / "net.pt"
    MASF(**sizes).pretrain(
        data, operator, checkpoint=str(ckpt), generator=generator(0, "train"), progress=False
    )
    prior = data[:5] * 0.5 + 0.5 * data[5:6]
    z = operator.observe(data[6:7], generator=torch.Generator().manual_seed(0))[0]
    keys = {"sampler": "bridge", "finetune_epochs": 0, "hybrid": True, "radius": 4.0, "inflation": 1.1}
    f = MASF(**keys, **sizes, members="redrawn")
    ctx = _ctx(ckpt, data)
    redrawn = f.analyse(prior, z, operator, ctx)
    clim, _taper = ctx.state["masf_hybrid"]
    assert isinstance(clim, StationaryGaussian)

    model = ctx.state[STATE_KEY]
    norm = model.normalizer
    process = f.process(operator, norm)
    bank = norm.norm_x(data)
    expected = hybrid_sample(
        model.net,
        process,
        norm.norm_z(z),
        norm.norm_x(prior),
        stationary_gaussian(bank),
        taper_spectrum(system.state_shape, 4.0),
        inflation=1.1,
        nfe=3,
        generator=generator(0, "sampling"),
    )
    torch.testing.assert_close(redrawn, norm.denorm_x(expected.float()), rtol=1e-4, atol=1e-4)
    updated = MASF(**keys, **sizes).analyse(prior, z, operator, _ctx(ckpt, data))
    letkf = LETKF(radius=4.0, inflation=1.1).analyse(prior, z, operator, _ctx(ckpt, data))
    torch.testing.assert_close(updated.mean(0), redrawn.mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(updated - updated.mean(0), letkf - letkf.mean(0), rtol=1e-4, atol=1e-4)
