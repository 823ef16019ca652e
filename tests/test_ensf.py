"""EnSF: schedule identities, the members' scores against brute-force autograd, the sampler against its
written recursion, unguided known answers (the t = 0 marginal), a guided twin test, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from masf.ensf_schedule import MAX_NFE, schedule, stable_nfe
from masf.filters import make_filter
from masf.filters.base import Context
from masf.filters.ensf import EnSF, mixture_weights, prior_score, sample_ensf, standard_start
from masf.operators import Arctan, identity, make_operator
from masf.rng import generator

F64 = torch.float64


@pytest.mark.parametrize(("eps_alpha", "eps_beta"), [(0.5, 0.025), (0.01, 0.3)])
def test_schedule_end_points_and_marginal_variance_ode(eps_alpha: float, eps_beta: float) -> None:
    """α_0 = 1, α_1 = ε_α, β_0² = ε_β, β_1² = 1; f = d ln α/dt; and for every prior variance v the forward
    SDE's variance V(t) = α² v + β² solves dV/dt = 2 f V + g² (so the SDE has the stated marginals)."""
    a0, b0, _, _ = schedule(0.0, eps_alpha, eps_beta)
    a1, b1, _, _ = schedule(1.0, eps_alpha, eps_beta)
    assert (a0, b0, a1, b1) == pytest.approx((1.0, eps_beta, eps_alpha, 1.0), abs=1e-15)
    h = 1e-6
    for t in (0.1, 0.5, 0.9):
        alpha, beta2, f, g2 = schedule(t, eps_alpha, eps_beta)
        ap, bp, _, _ = schedule(t + h, eps_alpha, eps_beta)
        am, bm, _, _ = schedule(t - h, eps_alpha, eps_beta)
        assert f == pytest.approx((math.log(ap) - math.log(am)) / (2 * h), rel=1e-7)
        for v in (0.0, 0.3, 4.0):
            dv = ((ap * ap * v + bp) - (am * am * v + bm)) / (2 * h)
            assert dv == pytest.approx(2 * f * (alpha * alpha * v + beta2) + g2, rel=1e-7)


def _log_mixture(x: torch.Tensor, centres: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log Σ_j N(x; c_j, diag var), brute force with a Python loop over the centres."""
    terms = []
    for c in centres:
        terms.append((-0.5 * (x - c).square() / var - 0.5 * torch.log(2 * math.pi * var)).sum())
    return torch.logsumexp(torch.stack(terms), dim=0)


def test_mixture_and_paired_scores_equal_autograd_of_their_densities() -> None:
    g = torch.Generator().manual_seed(3)
    members = torch.randn(5, 2, 3, generator=g, dtype=F64)
    x = 0.7 * torch.randn(4, 2, 3, generator=g, dtype=F64)
    var = 0.2 + torch.rand(2, 3, generator=g, dtype=F64)
    alpha = 0.6
    got = prior_score(x, members, alpha, var, "mixture")
    for i in range(4):
        xi = x[i].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(_log_mixture(xi, alpha * members, var), xi)
        torch.testing.assert_close(got[i], grad, rtol=1e-10, atol=1e-12)
    paired = prior_score(x, members[:4], alpha, var, "paired")
    torch.testing.assert_close(paired, (alpha * members[:4] - x) / var, rtol=0, atol=0)
    w = mixture_weights(x, alpha * members, var)
    assert w.shape == (4, 5) and torch.allclose(w.sum(1), torch.ones(4, dtype=F64))


def test_mixture_weights_equal_a_brute_force_loop() -> None:
    """Against the definition, pair by pair in float64 with per-entry variances, at weights far from 0/1."""
    g = torch.Generator().manual_seed(4)
    x, c = torch.randn(7, 2, 5, generator=g), torch.randn(6, 2, 5, generator=g)
    var = 2.0 + torch.rand(2, 5, generator=g)
    logits = torch.tensor(
        [[-0.5 * float((((xi.double() - cj.double()) ** 2) / var.double()).sum()) for cj in c] for xi in x],
        dtype=torch.float64,
    )
    expected = torch.softmax(logits, dim=1)
    assert 0.01 < float(expected.max()) < 0.99  # not a hard argmin: the test sees the values
    torch.testing.assert_close(mixture_weights(x, c, var).double(), expected, rtol=1e-6, atol=1e-7)
    assert mixture_weights(x, c, var).dtype == torch.float32


def test_mixture_weights_stay_accurate_far_from_the_origin_in_float32() -> None:
    """Large offsets and D: the centred float64 product keeps the softmax right (no ‖x‖² − 2x·c cancellation)."""
    g = torch.Generator().manual_seed(5)
    d = 20_000
    c = 100.0 + torch.randn(3, d, generator=g)
    x = c[1:2] + 0.01 * torch.randn(1, d, generator=g)
    w = mixture_weights(x, c, torch.full((d,), 1.0))
    assert float(w[0, 1]) == pytest.approx(1.0, abs=1e-6)


def test_sampler_matches_its_written_recursion() -> None:
    """Replay the noise stream and step x ← x − Δ(f x − g² S) + √Δ g ξ by hand."""
    eps_a, eps_b, nfe = 0.3, 0.05, 4
    start = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)

    def score(x: torch.Tensor, t: float) -> torch.Tensor:
        return -x * (1.0 + t)

    got = sample_ensf(
        score, start, nfe=nfe, eps_alpha=eps_a, eps_beta=eps_b, generator=generator(2, "sampling")
    )
    replay = generator(2, "sampling")
    x = start
    for k in range(nfe):
        t = 1.0 - k / nfe
        alpha = 1.0 - (1.0 - eps_a) * t
        f = -(1.0 - eps_a) / alpha
        g2 = (1.0 - eps_b) - 2.0 * f * (eps_b + (1.0 - eps_b) * t)
        xi = torch.randn(3, 2, generator=replay, dtype=F64)
        x = x - (f * x + g2 * x * (1.0 + t)) / nfe + math.sqrt(g2 / nfe) * xi
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)


def test_standard_start_is_standardized_over_samples() -> None:
    x = standard_start((6, 4), generator(0, "sampling"), torch.zeros(1, dtype=F64))
    torch.testing.assert_close(x.mean(0), torch.zeros(4, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(x.std(0), torch.ones(4, dtype=F64), rtol=0, atol=1e-12)


def _members(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    return torch.randn(n, 3, generator=g, dtype=F64) * scale + torch.tensor([1.0, -1.0, 0.0], dtype=F64)


@pytest.mark.parametrize("bandwidth", [0.0, 0.5])
def test_unguided_mixture_samples_the_kernel_mixture(bandwidth: float) -> None:
    """Without information (σ = 10⁶) the t = 0 marginal is Σ_j N(m_j, v + ε_β)/N: its mean is the members'
    mean and its variance (1 − 1/N)·var + v + ε_β, v = bandwidth·var (ε_α small so that p_1 ≈ N(0, I))."""
    n, eps_beta = 1000, 0.025
    members = _members(n)
    f = EnSF(nfe=300, eps_alpha=0.01, eps_beta=eps_beta, bandwidth=bandwidth)
    out = f.analyse(
        members, torch.zeros(3, dtype=F64), identity((3,), noise_std=1e6), Context(generator(1, "sampling"))
    )
    var = members.var(0)
    assert bool(((out.mean(0) - members.mean(0)).abs() < 4 * (var / n).sqrt()).all())
    expected = (1 - 1 / n) * var + bandwidth * var + eps_beta
    ratio = out.var(0) / expected
    assert bool(((ratio - 1).abs() < 0.15).all()), ratio  # 3.4 standard errors of a variance at n = 1000


@pytest.mark.parametrize("bandwidth", [0.0, 0.5])
def test_unguided_paired_samples_follow_their_own_member(bandwidth: float) -> None:
    """``paired``: sample i ends at m_i + N(0, v + ε_β), member by member."""
    n, eps_beta = 1000, 0.025
    members = _members(n)
    f = EnSF(nfe=300, eps_alpha=0.01, eps_beta=eps_beta, prior_score="paired", bandwidth=bandwidth)
    out = f.analyse(
        members, torch.zeros(3, dtype=F64), identity((3,), noise_std=1e6), Context(generator(1, "sampling"))
    )
    resid = out - members
    kernel = bandwidth * members.var(0) + eps_beta
    assert bool((resid.mean(0).abs() < 4 * (kernel / n).sqrt() + 0.01 * members.abs().mean(0)).all())
    ratio = resid.var(0) / kernel
    assert bool(((ratio - 1).abs() < 0.15).all()), ratio


def test_inflation_widens_the_unguided_mixture() -> None:
    n = 1000
    members = _members(n)
    f = EnSF(nfe=300, eps_alpha=0.01, eps_beta=1e-3, prior_score="paired", inflation=1.5)
    out = f.analyse(
        members, torch.zeros(3, dtype=F64), identity((3,), noise_std=1e6), Context(generator(1, "sampling"))
    )
    ratio = out.var(0) / (2.25 * members.var(0))
    assert bool(((ratio - 1).abs() < 0.15).all()), ratio


@pytest.mark.parametrize("prior_score_kind", ["mixture", "paired"])
def test_guided_arctan_twin_analysis_beats_a_biased_forecast(prior_score_kind: str) -> None:
    """Every variable observed through arctan (σ = 0.05) and a forecast biased by +1: the analysis mean
    is at least twice as close to the truth as the forecast mean (float32, the shipped defaults)."""
    g = torch.Generator().manual_seed(7)
    d, n = 40, 20
    truth = torch.randn(d, generator=g)
    prior = truth + 1.0 + torch.randn(n, d, generator=g)
    op = Arctan(0.05, state_shape=(d,))
    z = op.observe(truth[None], generator=generator(0, "obs_noise"))[0]
    post = EnSF(prior_score=prior_score_kind).analyse(prior, z, op, Context(generator(0, "sampling")))
    assert post.dtype == torch.float32 and post.shape == prior.shape and bool(torch.isfinite(post).all())
    rmse_prior = float((prior.mean(0) - truth).square().mean().sqrt())
    rmse_post = float((post.mean(0) - truth).square().mean().sqrt())
    assert rmse_post < 0.5 * rmse_prior, (rmse_post, rmse_prior)


def test_sampling_time_is_recorded_and_runs_are_reproducible() -> None:
    prior = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    op = make_operator("every_kth", (8,), k=2, noise_std=0.5)
    z = torch.zeros(8)
    ctx = Context(generator(3, "sampling"))
    a = make_filter("ensf", nfe=5).analyse(prior, z, op, ctx)
    b = make_filter("ensf", nfe=5).analyse(prior, z, op, Context(generator(3, "sampling")))
    assert torch.equal(a, b) and ctx.timings["sampling"] > 0.0


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"nfe": 0}, "nfe must be an integer >= 1"),
        ({"eps_alpha": 1.0}, "eps_alpha must be in"),
        ({"eps_beta": 0.0}, "eps_beta must be a finite number > 0"),
        ({"prior_score": "kde"}, "prior_score must be one of mixture, paired"),
        ({"bandwidth": -0.1}, "bandwidth must be a finite number >= 0"),
        ({"inflation": 0.9}, "inflation must be a finite number >= 1"),
        ({"tol": 0.0}, "tol must be a finite number > 0"),
    ],
)
def test_bad_hyper_parameters_are_refused(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EnSF(**params)


def test_operator_without_vjp_is_refused() -> None:
    class Bare:
        noise_std = 0.1

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(ValueError, match="ensf: operator must provide vjp"):
        EnSF().check_operator(Bare())


def test_the_stable_nfe_is_the_first_stable_doubling_and_gives_up_past_max_nfe() -> None:
    # brute force: every nfe the doubling passes, with the stiffness computed step by step here
    def stiffness(nfe: int, sigma: float) -> float:
        gains = []
        for k in range(nfe):
            t = 1.0 - k / nfe
            alpha = 1.0 - 0.5 * t
            beta2 = 0.025 + 0.975 * t
            g2 = 0.975 + 2.0 * (0.5 / alpha) * beta2
            gains.append(g2 * (1.0 - t) / nfe)
        return max(gains) / sigma**2

    for sigma, nfe in [(1.0, 20), (0.1, 20), (0.1, 80), (0.05, 200), (0.02, 100)]:
        need = stable_nfe(nfe, 0.5, 0.025, sigma)
        doublings = [nfe * 2**i for i in range(12)]
        assert need == next(n for n in doublings if stiffness(n, sigma) < 2.0)
    assert stable_nfe(20, 0.5, 0.025, 1e-4) is None  # would need about 5e7 steps: refused, not computed
    op = make_operator("every_kth", (16,), k=2, noise_std=1e-4)
    with pytest.raises(ValueError, match=r"nfe=200 is unstable for noise_std=0.0001.*use a larger noise_std"):
        EnSF().check_operator(op)
    assert MAX_NFE == 1 << 17


def test_unstable_step_for_a_mask_operator_is_refused_with_the_nfe_that_works() -> None:
    """σ = 0.1 on a mask: Δ g² h/σ² reaches 5 at nfe 20 (Euler needs < 2); the error names nfe >= 80,
    and at that nfe the analysis is finite and pulls the observed entries to the measurement."""
    prior = 1.0 + torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    op = make_operator("every_kth", (16,), k=2, noise_std=0.1)
    z = torch.zeros(16)
    with pytest.raises(ValueError, match=r"nfe=20 is unstable for noise_std=0.1.*use nfe >= 80"):
        EnSF(nfe=20).analyse(prior, z, op, Context(generator(0, "sampling")))
    post = EnSF(nfe=80).analyse(prior, z, op, Context(generator(0, "sampling")))
    assert bool(torch.isfinite(post).all())
    assert float(post.mean(0)[::2].abs().mean()) < 0.5 * float(prior.mean(0)[::2].abs().mean())
