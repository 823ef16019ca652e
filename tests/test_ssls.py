"""SSLS: integrator coefficients, stationary variance of the Langevin chain for a Gaussian target (known
answer 1/(1/v + λ)), guided chain = Gaussian posterior, loss, pretrain + analyse smoke test, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from masf.diffusion.normalizer import Normalizer
from masf.filters.base import Context
from masf.filters.score_common import STATE_KEY, ScoreModel, likelihood_score
from masf.filters.ssls import SSLS, integrator_coefficients, langevin, phi, ssls_loss, stationary_variance
from masf.nets import make_network
from masf.operators import make_operator
from masf.systems import make_system
from masf.train import load_checkpoint

F64 = torch.float64


def test_phi_and_coefficients() -> None:
    assert phi(0.0) == 1.0
    assert phi(-1e-12) == pytest.approx(1.0, abs=1e-12)
    assert phi(-2.0) == pytest.approx((1 - math.exp(-2.0)) / 2.0, rel=1e-14)
    e, b, c = integrator_coefficients(0.1, 0.0)  # λ = 0: plain unadjusted Langevin
    assert (e, b) == (1.0, 0.1) and c == pytest.approx(math.sqrt(0.2), rel=1e-14)
    # the OU part alone is exact: e = exp(−λh), c² = (1 − e²)/λ (exact OU transition variance)
    e, b, c = integrator_coefficients(0.3, 2.0)
    assert e == pytest.approx(math.exp(-0.6))
    assert c * c == pytest.approx((1 - math.exp(-1.2)) / 2.0, rel=1e-12)
    assert b == pytest.approx((1 - math.exp(-0.6)) / 2.0, rel=1e-12)


def test_discrete_stationary_variance_tends_to_the_tilted_target() -> None:
    for v, lam in ((1.0, 1e-3), (0.25, 0.5), (4.0, 2.0)):
        target = 1.0 / (1.0 / v + lam)
        assert stationary_variance(v, 1e-5, lam) == pytest.approx(target, rel=1e-4)
        # O(h) bias ≈ h/(2v): only the frozen score term errs, the OU part is integrated exactly
        rel = stationary_variance(v, 4e-3, lam) / target - 1
        assert rel == pytest.approx(4e-3 / (2 * v), rel=0.05)


def test_langevin_chain_has_the_stationary_variance_1_over_1_over_v_plus_lambda() -> None:
    """Known answer (method.md §11.14): 1e4 chains, h = 4e-3, λ = 2, 1000 steps (time 4, relaxation e^-18).
    Measured variances 0.3414, 0.1648, 0.4445 for targets 0.3333, 0.1667, 0.4444 (without λ the target
    would be v = 1, 0.25, 4)."""
    v = torch.tensor([1.0, 0.25, 4.0], dtype=F64)
    lam, h, n = 2.0, 4e-3, 10000
    g = torch.Generator().manual_seed(0)
    x0 = 3.0 + torch.randn(n, 3, generator=g, dtype=F64)  # far from the target
    x = langevin(lambda x: -x / v, x0, n_steps=1000, step=h, decay=lam, tol=100.0, generator=g)
    target = 1.0 / (1.0 / v + lam)
    exact = torch.tensor([stationary_variance(float(vi), h, lam) for vi in v], dtype=F64)
    se = math.sqrt(2.0 / n)  # relative MC standard error of a variance
    assert bool(((x.var(0) / exact - 1).abs() < 4 * se).all()), x.var(0)
    assert bool(((x.var(0) / target - 1).abs() < 4 * se + 0.01).all()), x.var(0)
    assert bool((x.mean(0).abs() < 4 * (target / n).sqrt()).all()), x.mean(0)


def test_guided_langevin_samples_the_gaussian_posterior() -> None:
    """Prior N(0, I) (score −x), mask on entries 0 and 2, σ = 0.5, λ = 0: the chain targets the posterior
    N(z/(1+σ²), σ²/(1+σ²)) on observed entries and N(0, 1) elsewhere. Measured means 0.798, −1.599
    (exact 0.8, −1.6), variances 0.205, 1.013, 0.204, 0.990 (exact 0.2, 1, 0.2, 1; h-bias ≈ 2.5 %)."""
    sigma = 0.5
    op = make_operator("every_kth", (4,), k=2, noise_std=sigma)
    norm = Normalizer.identity()
    z = torch.tensor([1.0, 5.0, -2.0, 5.0], dtype=F64)
    sigma_n = norm.noise_std_normalized(sigma, like=z)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4000, 4, generator=g, dtype=F64)

    def score(x: torch.Tensor) -> torch.Tensor:
        return -x + likelihood_score(x, z, op, norm, sigma_n)

    x = langevin(score, x0, n_steps=600, step=1e-2, decay=0.0, tol=100.0, generator=g)
    post_var = sigma**2 / (1 + sigma**2)
    mean = torch.tensor([1.0 / (1 + sigma**2), 0.0, -2.0 / (1 + sigma**2), 0.0], dtype=F64)
    var = torch.tensor([post_var, 1.0, post_var, 1.0], dtype=F64)
    assert bool(((x.mean(0) - mean).abs() < 4 * (var / 4000).sqrt() + 0.01).all()), x.mean(0)
    assert bool(((x.var(0) / var - 1).abs() < 0.1).all()), x.var(0)


def test_clipping_bounds_each_step() -> None:
    """With a huge score the per-step drift is at most h φ(−λh)·tol in RMS."""
    x0 = torch.zeros(3, 5, dtype=F64)
    x = langevin(
        lambda x: torch.full_like(x, 1e6),
        x0,
        n_steps=1,
        step=1e-2,
        decay=0.0,
        tol=2.0,
        generator=torch.Generator(),
    )
    g = torch.Generator()
    noise = math.sqrt(2e-2) * torch.randn(3, 5, generator=g, dtype=F64)
    torch.testing.assert_close(x, 1e-2 * 2.0 + noise)


def test_ssls_loss_of_a_fresh_net_is_the_noise_power() -> None:
    net = make_network("mlp", (6,), width=8, num_blocks=1, time_conditioned=False)  # outputs 0
    loss = ssls_loss(net, torch.zeros(500, 6), torch.Generator().manual_seed(0), sigma=0.05)
    assert loss.item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"nfe": 0}, "nfe"),
        ({"step": 0.0}, "step"),
        ({"step": -1e-3}, "step"),
        ({"sigma": 0.0}, "sigma"),
        ({"decay": -1.0}, "decay"),
        ({"tol": 0.0}, "tol"),
        ({"tol": float("nan")}, "tol"),
        ({"depth": 0}, "depth"),
        ({"norm_update": "moving"}, "norm_update"),
        ({"normalize": "yes"}, "normalize"),
    ],
)
def test_bad_hyper_parameters_raise(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SSLS(**params)


def test_pretrain_and_analyse_smoke(tmp_path) -> None:
    system = make_system("lorenz96", dim=8)
    g = torch.Generator().manual_seed(0)
    data = system.sample_climatology(64, generator=g, spinup_steps=100)
    op = make_operator("sigmoid", (8,), alpha=2.0, noise_std=0.1)  # nonlinear H: accepted
    ssls = SSLS(
        nfe=20,
        network="mlp",
        width=16,
        depth=1,
        pretrain_epochs=2,
        pretrain_batch=16,
        finetune_epochs=1,
        finetune_batch=8,
    )
    path = tmp_path / "ssls.pt"
    ssls.pretrain(data, op, checkpoint=str(path), generator=torch.Generator().manual_seed(1), progress=False)
    torch.load(path, weights_only=True)
    ckpt = load_checkpoint(path, expect={"method": "ssls", "sigma": 0.05, "time_conditioned": False})
    assert ckpt.net.time_conditioned is False

    ctx = Context(
        generator=torch.Generator().manual_seed(2),
        pretrained=str(path),
        train_generator=torch.Generator().manual_seed(3),
        climatology=data[20:],  # the fine-tuning replay draws from it
    )
    prior, truth = data[:10], data[10]
    z = op.observe(truth[None], generator=g)[0]
    for cycle in range(2):
        ctx.cycle = cycle
        post = ssls.analyse(prior, z, op, ctx)
        assert post.shape == prior.shape and bool(torch.isfinite(post).all())
    assert ctx.timings["sampling"] > 0 and ctx.timings["finetune"] > 0
    # A checkpoint trained for another σ is refused; a missing checkpoint is a clear error.
    with pytest.raises(ValueError, match="sigma"):
        SSLS(sigma=0.1, nfe=2).analyse(prior, z, op, Context(generator=g, pretrained=str(path)))
    with pytest.raises(ValueError, match="pretrained"):
        SSLS(nfe=2).analyse(prior, z, op, Context(generator=g))


class _ExactNoisePredictor(torch.nn.Module):
    """E[−ε | x] = −σ(x − m)/(v + σ²) for data N(m, v I) noised at level σ (time-free)."""

    def __init__(self, mean: float, var: float, sigma: float) -> None:
        super().__init__()
        self.mean, self.var, self.sigma = mean, var, sigma

    def forward(self, x: torch.Tensor, t: None = None) -> torch.Tensor:
        return -self.sigma * (x - self.mean) / (self.var + self.sigma**2)


def test_analyse_with_the_exact_noise_predictor_samples_the_gaussian_posterior() -> None:
    """The whole analyse path with an analytic network. Prior N(2, 4) per entry, normalizer (u, s) = (2, 2),
    so in normalized units the score model is N(0, 1 + σ²), σ = 0.05; mask on entries 0 and 2, obs σ = 0.6,
    λ = 0. The chain (from the prior particles) targets the Kalman posterior of that prior:
    mean 2 + P/(P + 0.36)(z − 2), variance 0.36 P/(P + 0.36) with P = 4(1 + σ²): 3.835, 2, 1.082, 2 and
    0.330, 4.01 (measured 3.823, 2.021, 1.067, 2.024 and 0.346, 4.18, 0.346, 4.02; the +5 % on observed
    entries is the O(h) bias h/(2v) of the chain at h = 0.01, v = 0.083 in normalized units)."""
    sigma = 0.05
    norm = Normalizer.from_stats(torch.tensor(2.0), torch.tensor(2.0), eps=0.0)
    ctx = Context(generator=torch.Generator().manual_seed(5))
    ctx.state[STATE_KEY] = ScoreModel(net=_ExactNoisePredictor(0.0, 1.0, sigma), normalizer=norm)
    op = make_operator("every_kth", (4,), k=2, noise_std=0.6)
    z = torch.tensor([4.0, -9.0, 1.0, 9.0], dtype=F64)
    g = torch.Generator().manual_seed(6)
    prior = 2.0 + 2.0 * torch.randn(3000, 4, generator=g, dtype=F64)
    post = SSLS(sigma=sigma, nfe=600, step=1e-2, decay=0.0).analyse(prior, z, op, ctx)
    p = 4.0 * (1 + sigma**2)
    gain = p / (p + 0.36)
    mean = torch.tensor([2 + gain * 2.0, 2.0, 2 - gain, 2.0], dtype=F64)
    var = torch.tensor([0.36 * gain, p, 0.36 * gain, p], dtype=F64)
    assert post.shape == prior.shape
    assert bool(((post.mean(0) - mean).abs() < 4 * (var / len(post)).sqrt() + 0.01).all()), post.mean(0)
    assert bool(((post.var(0) / var - 1).abs() < 0.1).all()), post.var(0)
    assert ctx.timings["sampling"] > 0 and "finetune" not in ctx.timings


@pytest.mark.slow
def test_learned_ssls_keeps_the_smoothed_data_law_without_information(tmp_path) -> None:
    """Train a small time-free MLP at σ = 0.3 (30 epochs, 2000 samples) on N(m, diag(s²)) data, then run the
    chains from data particles with a useless observation: they keep the law of the σ-smoothed data, whose
    std is s·sqrt(1 + (σ d)²/s²) with d the normalizer scale. Measured std ratios 1.150, 1.448, 1.033, 1.113
    vs 1.117, 1.41, 1.03, 1.117; means 3.17, 1.04, 2.04, −0.04. (At the reference σ = 0.05 the same
    training is far from converged: the score signal is only σ²/(v + σ²) of the loss.)"""
    g = torch.Generator().manual_seed(0)
    std = torch.tensor([1.0, 0.5, 2.0, 1.0])
    mean = torch.tensor([3.0, 1.0, 2.0, 0.0])
    data = mean + std * torch.randn(2000, 4, generator=g)
    op = make_operator("identity", (4,), noise_std=1e3)
    sigma = 0.3
    ssls = SSLS(
        sigma=sigma,
        nfe=500,
        step=1e-2,
        decay=0.0,
        network="mlp",
        width=64,
        depth=2,
        pretrain_epochs=30,
        pretrain_batch=64,
        pretrain_lr=2e-3,
        finetune_epochs=0,
    )
    path = str(tmp_path / "ssls.pt")
    ssls.pretrain(data, op, checkpoint=path, generator=torch.Generator().manual_seed(1), progress=False)
    ctx = Context(generator=torch.Generator().manual_seed(2), pretrained=path)
    post = ssls.analyse(mean + std * torch.randn(2000, 4, generator=g), torch.zeros(4), op, ctx)
    d = Normalizer().fit(data).x_scale
    expected = (1 + (sigma * d) ** 2 / std**2).sqrt()
    assert bool(((post.mean(0) - mean).abs() < 0.3 * std).all()), post.mean(0)
    assert bool(((post.std(0) / std / expected - 1).abs() < 0.1).all()), post.std(0) / std


def test_ssls_loss_is_zero_for_the_exact_noise_predictor_at_zero_data() -> None:
    """x = x0 + σε with x0 = 0: the net −x/σ predicts −ε exactly, so the loss vanishes; a net that
    returns 0 pays E‖ε‖² = 1 per entry."""
    sigma = 0.3
    x0 = torch.zeros(256, 4, dtype=torch.float64)
    exact = ssls_loss(lambda x, t: -x / sigma, x0, torch.Generator().manual_seed(0), sigma=sigma)
    assert exact.item() < 1e-20
    zero = ssls_loss(lambda x, t: torch.zeros_like(x), x0, torch.Generator().manual_seed(0), sigma=sigma)
    assert zero.item() == pytest.approx(1.0, abs=0.1)


def test_stationary_variance_refuses_an_unstable_chain() -> None:
    """decay 0: a = 1 − h/v, unstable from h = 2v on (|a| >= 1), including 1 < |a| < 2."""
    assert stationary_variance(1.0, 1.9, 0.0) == pytest.approx(2 * 1.9 / (1 - 0.9**2))
    for step in (2.0, 2.5):
        with pytest.raises(ValueError, match="unstable"):
            stationary_variance(1.0, step, 0.0)


def test_zero_langevin_steps_return_the_start_unchanged():
    """n_steps = 0 is allowed and is the identity (no score call, no noise drawn)."""
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    out = langevin(lambda y: 1 / 0 * y, x, n_steps=0, step=0.1, decay=0.0, tol=10.0, generator=g)
    assert torch.equal(out, x)
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(1).get_state())
