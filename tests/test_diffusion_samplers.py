"""Samplers and the exact Gaussian denoiser: argument checks, exact prior score, flat-prior variances,
nonlinear-reduces-to-linear, endpoint score vs finite differences (method.md §11 items 6–8, 11)."""

import itertools
import math

import pytest
import torch

from masf.diffusion import (
    GaussianDenoiser,
    MeasurementAwareProcess,
    Normalizer,
    prior_score,
    sample,
    schedule,
)
from masf.diffusion.samplers import endpoint_likelihood_score
from masf.operators import Mask, Sigmoid, grid_mask, identity

F64 = torch.float64
S2 = (2, 2, 2)


def _gaussian(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = torch.randn(d, d, generator=g, dtype=F64) / math.sqrt(d)
    return torch.randn(d, generator=g, dtype=F64), L @ L.T + 0.3 * torch.eye(d, dtype=F64)


def _affine_process():
    """2-D states, grid mask, affine normalization with nonzero means so that B(t) != 0."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(100, *S2, generator=g, dtype=F64) + torch.tensor([2.0, -1.0], dtype=F64).view(2, 1, 1)
    return MeasurementAwareProcess(grid_mask(S2, 2, noise_std=0.1), Normalizer().fit(x))


@pytest.mark.parametrize("t", [0.05, 0.5, 0.95])
def test_prior_score_exact_gaussian(t):
    """−(x − A E[x0|x] − B)/Σ = ∇ log N(x; Aμ + B, A P A + Σ); dropping B (bug B1) breaks it."""
    proc = _affine_process()
    mu, P = _gaussian(8)
    den = GaussianDenoiser(mu.reshape(S2), P, proc)
    A, B = proc.A(t).reshape(8), proc.B(t).reshape(8)
    assert B.abs().max() > 1e-3  # unobserved entries drift to the image of a physical 0
    C = A[:, None] * P * A[None, :] + torch.diag(proc.Sigma(t).expand(S2).reshape(8))
    dist = torch.distributions.MultivariateNormal(A * mu + B, C)
    x = dist.sample((4,)).requires_grad_(True)
    (grad,) = torch.autograd.grad(dist.log_prob(x).sum(), x)
    xs = x.detach().reshape(4, *S2)
    x0_hat = den(xs, torch.full((4,), t, dtype=F64))
    score = prior_score(proc, xs, x0_hat, t)
    torch.testing.assert_close(score.reshape(4, 8), grad, rtol=1e-8, atol=1e-8)
    wrong = prior_score(proc, xs, x0_hat, t, include_B=False)
    assert (wrong.reshape(4, 8) - grad).abs().max() > 1.0
    # the reference's eps is added to the variance: −(x − A x̂ − B)/(Σ + eps)
    damped = prior_score(proc, xs, x0_hat, t, eps=0.3)
    expected = -(xs - proc.A(t) * x0_hat - proc.B(t)) / (proc.Sigma(t) + 0.3)
    torch.testing.assert_close(damped, expected, rtol=1e-12, atol=1e-12)


def test_gaussian_denoiser_per_member_times():
    proc = _affine_process()
    mu, P = _gaussian(8, seed=1)
    den = GaussianDenoiser(mu.reshape(S2), P, proc)
    x = torch.randn(3, *S2, dtype=F64)
    ts = torch.tensor([0.1, 0.6, 0.9], dtype=F64)
    batched = den(x, ts)
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], den(x[i : i + 1], ts[i : i + 1]))
    # at tiny t the observation x_t is nearly noise-free on all entries: E[x0|x_t] ≈ (x_t − B)/A
    tiny = den(x, torch.full((3,), 1e-5, dtype=F64))
    torch.testing.assert_close(tiny, (x - proc.B(1e-5)) / proc.A(1e-5), atol=1e-3, rtol=0)


@pytest.mark.parametrize("nfe", [10, 30, 300])
def test_flat_prior_one_dimensional(nfe):
    """One observed entry, flat prior (x̂ = x): the plug-in bridge variance is the sum of its ancestral
    variances at every nfe (10 and 30 are what the configs run), → σ²(r_T² − r_τ²) as nfe grows; the
    reference gives 1/3 of that with unit weights and 1/(2 w_g + 1) in general (checked at nfe 300)."""
    proc = MeasurementAwareProcess(Mask(torch.ones(1), 0.1))
    n = 20000
    g = torch.Generator().manual_seed(0)
    z = torch.tensor([0.3], dtype=F64)
    prior = torch.randn(n, 1, generator=g, dtype=F64)

    def flat(x, t):
        return x

    tol = 4 * math.sqrt(2 / n)  # 4 Monte-Carlo standard errors of a variance ratio
    sig2 = 0.01
    x = sample(flat, proc, z, prior, sampler="bridge", nfe=nfe, generator=g)
    grid = schedule.time_grid(nfe, dtype=F64).tolist()
    v = [sig2 * schedule.r(t) ** 2 for t in grid]
    discrete = sum((v[j] - v[j + 1]) * v[j + 1] / v[j] for j in range(nfe - 1))
    assert x.var().item() / discrete == pytest.approx(1.0, abs=tol)
    assert x.mean().item() == pytest.approx(0.3, abs=4 * math.sqrt(sig2 / n))
    if nfe < 300:
        return
    continuum = v[0] - v[nfe - 1]  # σ²(r_T² − r_τ²)
    assert x.var().item() / continuum == pytest.approx(1.0, abs=0.05)
    for w_g, ratio in [(1.0, 1 / 3), (2.0, 1 / 5)]:
        x = sample(
            flat,
            proc,
            z,
            prior,
            sampler="reference",
            nfe=nfe,
            generator=g,
            score_weights=(1, 1, 1),
            guidance_weights=(w_g, w_g, 1),
        )
        assert x.var().item() / (sig2 * schedule.r(0.992) ** 2) == pytest.approx(ratio, rel=tol + 0.01)


def test_nonlinear_reduces_to_linear_for_identity():
    """H = identity, exact x̂ = ĥ: the endpoint-Gaussian score at the current time equals the §3.3 score,
    and the nonlinear sampler (eval_time="current") reproduces the reference sampler path."""
    D = 4
    proc = MeasurementAwareProcess(identity((D,), noise_std=0.1))
    mu, P = _gaussian(D, seed=2)
    den = GaussianDenoiser(mu, P, proc)
    dual = GaussianDenoiser(mu, P, proc, dual_head=True)
    g = torch.Generator().manual_seed(4)
    z = torch.randn(D, generator=g, dtype=F64)
    x = torch.randn(6, D, generator=g, dtype=F64)
    for s in (0.1, 0.6, 0.95):
        ell = endpoint_likelihood_score(
            dual, proc, z, x, s, a_end=schedule.a(proc.T), sigma_end=proc.Sigma(proc.T), eps=0.0
        )
        torch.testing.assert_close(ell, proc.likelihood_score(z, x, s), rtol=1e-10, atol=1e-10)
    prior = mu + torch.randn(50, D, generator=g, dtype=F64) @ torch.linalg.cholesky(P).T
    w = {"score_weights": (0.95, 1.5, 1.0), "guidance_weights": (1.1, 1.5, 2.0), "eps": 0.0}
    lin = sample(
        den, proc, z, prior, sampler="reference", nfe=40, generator=torch.Generator().manual_seed(9), **w
    )
    gen = torch.Generator().manual_seed(9)
    nl = sample(dual, proc, z, prior, sampler="nonlinear", nfe=40, generator=gen, eval_time="current", **w)
    torch.testing.assert_close(nl, lin, rtol=1e-8, atol=1e-8)
    # a single-head denoiser is accepted for linear operators (ĥ = H_n(x̂))
    gen = torch.Generator().manual_seed(9)
    single = sample(den, proc, z, prior, sampler="nonlinear", nfe=40, generator=gen, eval_time="current", **w)
    torch.testing.assert_close(single, nl)


class _DualMLP(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(d + 1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2 * d)
        )
        self.d = d

    def forward(self, x, t):
        out = self.body(torch.cat([x, t[:, None]], dim=1))
        return out[:, : self.d], out[:, self.d :]


def test_endpoint_score_vs_finite_differences():
    torch.manual_seed(0)
    D = 3
    net = _DualMLP(D).double()
    proc = MeasurementAwareProcess(Sigmoid(2.0, 0.1, state_shape=(D,)))
    z = torch.tensor([0.2, 0.7, 0.5], dtype=F64)
    x = torch.randn(2, D, dtype=F64)
    t, a_end, sig_end = 0.4, 0.0, proc.Sigma(0.992)
    ell = endpoint_likelihood_score(net, proc, z, x, t, a_end=a_end, sigma_end=sig_end, eps=1e-5)

    def logp(xx):
        xh, hh = net(xx, torch.full((xx.shape[0],), t, dtype=F64))
        mu = xx + (a_end - schedule.a(t)) * (xh - hh)
        return (-0.5 * (z - mu) ** 2 / (sig_end - proc.Sigma(t) + 1e-5)).sum(dim=1)

    h = 1e-5
    fd = torch.zeros_like(x)
    for j in range(D):
        e = torch.zeros_like(x)
        e[:, j] = h
        with torch.no_grad():
            fd[:, j] = (logp(x + e) - logp(x - e)) / (2 * h)
    torch.testing.assert_close(ell, fd, rtol=1e-6, atol=1e-6)


def test_nonlinear_sampler_runs_and_is_reproducible():
    D = 3
    torch.manual_seed(1)
    net = _DualMLP(D)
    proc = MeasurementAwareProcess(Sigmoid(2.0, 0.1, state_shape=(D,)))
    prior, z = torch.randn(5, D), torch.rand(D)
    outs = [
        sample(net, proc, z, prior, sampler="nonlinear", nfe=6, generator=torch.Generator().manual_seed(3))
        for _ in range(2)
    ]
    assert outs[0].shape == (5, D) and outs[0].dtype == torch.float32
    assert bool(torch.isfinite(outs[0]).all())
    assert torch.equal(outs[0], outs[1])
    with pytest.raises(ValueError, match="dual-head"):
        sample(lambda x, t: x, proc, z, prior, sampler="nonlinear", nfe=2)


def test_float32_default_and_nfe_one():
    proc = MeasurementAwareProcess(Mask(torch.tensor([1.0, 0.0, 1.0]), 0.1))
    mu, P = _gaussian(3, seed=3)
    den = GaussianDenoiser(mu.float(), P.float(), proc)
    prior = torch.randn(8, 3)
    z = torch.randn(3)
    for name in ("reference", "bridge"):
        out = sample(den, proc, z, prior, sampler=name, nfe=1, generator=torch.Generator().manual_seed(0))
        assert out.dtype == torch.float32 and out.shape == (8, 3) and bool(torch.isfinite(out).all())


def test_bad_arguments():
    proc = MeasurementAwareProcess(Mask(torch.tensor([1.0, 0.0]), 0.1))
    nl = MeasurementAwareProcess(Sigmoid(2.0, 0.1, state_shape=(2,)))
    prior, z = torch.zeros(4, 2), torch.zeros(2)

    def den(x, t):
        return x

    cases = [
        (dict(sampler="ddim", nfe=5), r"sampler must be one of \('reference', 'bridge', 'nonlinear'\)"),
        (dict(sampler="bridge", nfe=0), "nfe must be an integer >= 1; got 0"),
        (dict(sampler="bridge", nfe=3, eps=0.1), "unknown option"),
        (dict(sampler="reference", nfe=3, guidance_weights=(1, 2)), "guidance_weights must be three numbers"),
        (dict(sampler="nonlinear", nfe=3, eval_time="later"), "eval_time must be one of"),
        (dict(sampler="reference", nfe=3, eps=1.0), "reverse variance"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            sample(den, proc, z, prior, **kwargs)
    with pytest.raises(ValueError, match="z must have the operator's state shape"):
        sample(den, proc, torch.zeros(3), prior, sampler="bridge", nfe=2)
    with pytest.raises(ValueError, match="prior must have shape"):
        sample(den, proc, z, torch.zeros(4, 3), sampler="bridge", nfe=2)
    for name in ("bridge", "reference"):
        with pytest.raises(ValueError, match="needs a linear"):
            sample(den, nl, z, prior, sampler=name, nfe=2)
    with pytest.raises(ValueError, match="linear"):
        GaussianDenoiser(torch.zeros(2), torch.eye(2), nl)
    with pytest.raises(ValueError, match="cov must have shape"):
        GaussianDenoiser(torch.zeros(2), torch.eye(3), proc)


def test_reference_defaults_are_the_papers():
    """sample(sampler="reference") without options runs with the paper's weights, include_B=True and
    eps=1e-5: the same draws as passing them explicitly, and different from dropping B (bug B1)."""
    proc = _affine_process()
    mu, P = _gaussian(8)
    den = GaussianDenoiser(mu.reshape(S2), P, proc)
    prior = mu.reshape(S2) + torch.randn(6, *S2, generator=torch.Generator().manual_seed(1), dtype=F64)
    z = torch.zeros(S2, dtype=F64)

    def run(**options):
        return sample(
            den,
            proc,
            z,
            prior,
            sampler="reference",
            nfe=20,
            generator=torch.Generator().manual_seed(2),
            **options,
        )

    explicit = run(score_weights=(0.95, 1.6, 1.5), guidance_weights=(1.1, 1.5, 2.0), include_B=True, eps=1e-5)
    torch.testing.assert_close(run(), explicit, rtol=0, atol=0)
    assert float((run(include_B=False) - explicit).abs().max()) > 1e-3


def test_score_and_guidance_weight_known_values():
    """w_s(s) = lo + (hi − lo) s^p and w_g(s) = lo + (hi − lo)(1 − s)^p on [0, 1], clipped outside."""
    from masf.diffusion.samplers import guidance_weight, score_weight

    assert score_weight(0.25, (0.95, 1.6, 1.5)) == pytest.approx(0.95 + 0.65 * 0.25**1.5)
    assert guidance_weight(0.25, (1.1, 1.5, 2.0)) == pytest.approx(1.1 + 0.4 * 0.75**2)
    assert guidance_weight(1.7, (1.1, 1.5, 2.0)) == pytest.approx(1.1)
    assert score_weight(-0.5, (0.95, 1.6, 1.5)) == pytest.approx(0.95)


def _replayed(seed):
    """Two generators with the same seed: one for the sampler, one for the test's own recursion."""
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)


def test_reference_steps_follow_the_written_recursion():
    """Two steps of the reference sampler equal the module docstring's recursion, written out here with
    the random stream replayed: the likelihood uses the kernel variance Σ(T) − M(s,T)² Σ(s) and the step
    variance M(s,t)² Σ(s) − Σ(t)."""
    proc = _affine_process()
    mu, P = _gaussian(8, seed=2)
    den = GaussianDenoiser(mu.view(S2), P, proc)
    prior = torch.randn(5, *S2, generator=torch.Generator().manual_seed(1), dtype=F64)
    z = torch.randn(S2, generator=torch.Generator().manual_seed(2), dtype=F64)
    eps, ws, wg, nfe = 1e-5, (0.95, 1.6, 1.5), (1.1, 1.5, 2.0), 3
    g_sampler, g = _replayed(7)
    out = sample(den, proc, z, prior, sampler="reference", nfe=nfe, generator=g_sampler)

    T = proc.T
    grid = schedule.time_grid(nfe, T=T, tau=proc.tau, times_T=True, dtype=F64).tolist()
    A, B, Sig = proc.A, proc.B, proc.Sigma
    x = A(T) * prior + B(T) + torch.sqrt(Sig(T)) * torch.randn(prior.shape, generator=g, dtype=F64)
    for s, t in itertools.pairwise(grid):
        x0_hat = den(x, torch.full((5,), s, dtype=F64))
        s_hat = -(x - A(s) * x0_hat - B(s)) / (Sig(s) + eps)
        m_T = A(T) / (A(s) + eps)
        lik = m_T * (z - m_T * x - (B(T) - m_T * B(s))) / (Sig(T) - m_T * m_T * Sig(s) + eps)
        m_t = A(t) / (A(s) + eps)
        v = m_t * m_t * Sig(s) - Sig(t)
        w_s = ws[0] + (ws[1] - ws[0]) * s ** ws[2]
        w_g = wg[0] + (wg[1] - wg[0]) * (1.0 - s) ** wg[2]
        xi = torch.randn(x.shape, generator=g, dtype=F64)
        x = m_t * x + (B(t) - m_t * B(s)) + v * (w_s * s_hat + w_g * lik) + torch.sqrt(v) * xi
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)


def test_nonlinear_steps_follow_the_written_recursion():
    """Two steps of the nonlinear sampler (eval_time "next", the paper's) equal the docstring's recursion
    written out here, with Σ_end = σ² r(0.992)² from the operator's noise std σ = 0.1 and the likelihood
    score by autograd through the dual-head denoiser."""
    D, sigma = 3, 0.1
    proc = MeasurementAwareProcess(Sigmoid(2.0, sigma, state_shape=(D,)))
    w = torch.tensor([[0.6, -0.2, 0.1], [0.3, 0.5, 0.0], [-0.1, 0.2, 0.7]], dtype=F64)

    def den(x, t):
        x0 = torch.tanh(x @ w) * (1.0 + t.unsqueeze(1))
        return x0, torch.sigmoid(2.0 * x0) + 0.1 * x

    prior = torch.randn(4, D, generator=torch.Generator().manual_seed(3), dtype=F64)
    z = torch.rand(D, generator=torch.Generator().manual_seed(4), dtype=F64)
    eps, ws, wg, nfe = 1e-5, (0.95, 1.5, 1.0), (1.1, 1.5, 2.0), 3
    g_sampler, g = _replayed(11)
    out = sample(den, proc, z, prior, sampler="nonlinear", nfe=nfe, generator=g_sampler)

    T, tau = proc.T, proc.tau
    grid = schedule.time_grid(nfe, T=T, tau=tau, times_T=True, dtype=F64).tolist()

    def a(t):
        return schedule.a(t, T=T, tau=tau)

    def sig(t):
        return sigma**2 * schedule.r(t, T=T, tau=tau) ** 2

    sig_end = sigma**2 * schedule.r(0.992, T=1.0, tau=tau) ** 2
    noise = torch.randn(prior.shape, generator=g, dtype=F64)
    x = a(T) * prior + (1.0 - a(T)) * torch.sigmoid(2.0 * prior) + math.sqrt(sig(T)) * noise
    for s, t in itertools.pairwise(grid):
        ts = torch.full((4,), s, dtype=F64)
        x0_hat, h_hat = den(x, ts)
        s_hat = -(x - (a(s) * x0_hat + (1.0 - a(s)) * h_hat)) / (sig(s) + eps)
        xg = x.detach().requires_grad_(True)
        xe, he = den(xg, torch.full((4,), t, dtype=F64))
        mu = xg + (0.0 - a(t)) * (xe - he)
        (lik,) = torch.autograd.grad((-0.5 * (z - mu) ** 2 / (sig_end - sig(t) + eps)).sum(), xg)
        w_s = ws[0] + (ws[1] - ws[0]) * s ** ws[2]
        w_g = wg[0] + (wg[1] - wg[0]) * (1.0 - s) ** wg[2]
        xi = torch.randn(x.shape, generator=g, dtype=F64)
        dv = sig(s) - sig(t)
        x = x + (a(t) - a(s)) * (x0_hat - h_hat) + dv * (w_s * s_hat + w_g * lik) + math.sqrt(dv) * xi
    # the sampler's process keeps its noise variances in float32, hence 1e-6 rather than 1e-10
    torch.testing.assert_close(out, x, rtol=1e-6, atol=1e-7)
