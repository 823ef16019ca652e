"""SF: VE process formulas, time grid, exact-score known answers (correct vs constant step, guided toy),
shared glue (RMS clip, likelihood score), pretrain + analyse smoke test, bad hyper-parameters."""

from __future__ import annotations

import math

import pytest
import torch

from masf.diffusion.normalizer import Normalizer
from masf.filters import make_filter
from masf.filters.base import Context
from masf.filters.score_common import (
    STATE_KEY,
    ScoreModel,
    clip_rms,
    likelihood_score,
    network_kind,
    normalizer_to_json,
)
from masf.filters.sf import SF, sample_reverse_sde, sf_loss, time_grid, ve_diffusion, ve_std
from masf.nets import make_network
from masf.operators import make_operator
from masf.systems import make_system
from masf.train import load_checkpoint

F64 = torch.float64
SIGMA_MAX = 25.0


def test_ve_std_and_diffusion_known_values() -> None:
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    std = ve_std(t, SIGMA_MAX)
    assert std[0] == 0.0
    assert std[2].item() == pytest.approx(math.sqrt(624.0 / (2.0 * math.log(25.0))), rel=1e-12)
    assert std[2].item() == pytest.approx(9.845, abs=1e-3)  # method.md §7.1
    assert ve_diffusion(t, SIGMA_MAX)[1].item() == pytest.approx(25.0**0.3, rel=1e-12)
    # d std²/dt = g² (central difference)
    tt = torch.tensor([0.2, 0.6], dtype=F64)
    d = 1e-6
    deriv = (ve_std(tt + d, SIGMA_MAX) ** 2 - ve_std(tt - d, SIGMA_MAX) ** 2) / (2 * d)
    torch.testing.assert_close(deriv, ve_diffusion(tt, SIGMA_MAX) ** 2, rtol=1e-7, atol=0)


def test_time_grid_correct_and_constant_steps() -> None:
    t, h = time_grid(500)
    assert t[0] == 1.0 and t[-1].item() == pytest.approx(1e-10, rel=1e-6)
    assert bool((t[1:] < t[:-1]).all())
    assert h.sum().item() == pytest.approx(1.0, abs=1e-12)  # Σ h_i = t_0 − 0
    torch.testing.assert_close(h[:-1], t[:-1] - t[1:])
    tc, hc = time_grid(500, constant_step=True)
    torch.testing.assert_close(tc, t)
    assert bool((hc == t[0] - t[1]).all())
    assert hc[0].item() == pytest.approx(0.004, rel=0.01)
    assert hc.sum().item() == pytest.approx(2.0, abs=0.01)  # bug B11: Σ h ≈ 2
    with pytest.raises(ValueError, match="nfe"):
        time_grid(1, constant_step=True)


def test_clip_rms_known_answer() -> None:
    s = torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=F64)  # RMS = sqrt(12.5), sqrt(0.125)
    out = clip_rms(s, 1.0)
    assert out[0].square().mean().sqrt().item() == pytest.approx(1.0, rel=1e-12)
    torch.testing.assert_close(out[0] / s[0], torch.full((2,), 1 / math.sqrt(12.5), dtype=F64))
    torch.testing.assert_close(out[1], s[1])  # below tol: untouched


def test_likelihood_score_matches_closed_form_for_a_mask_and_normalization() -> None:
    op = make_operator("every_kth", (6,), k=2, noise_std=0.2)
    norm = Normalizer.from_stats(torch.tensor(1.5), torch.tensor(2.0))
    g = torch.Generator().manual_seed(0)
    x_n = torch.randn(5, 6, generator=g, dtype=F64)
    z_n = torch.randn(6, generator=g, dtype=F64)
    sigma_n = norm.noise_std_normalized(0.2, like=x_n)
    got = likelihood_score(x_n, z_n, op, norm, sigma_n)
    # H_n(x_n) = m ⊙ x_n − (1 − m) u/s, so the score is m ⊙ (z_n − H_n(x_n))/σ_n².
    m = op.mask.to(F64)
    scale = norm.x_scale.to(F64)
    h_n = m * x_n - (1 - m) * 1.5 / scale
    torch.testing.assert_close(got, m * (z_n - h_n) / sigma_n**2)


def _gaussian_ve_score(mean: torch.Tensor, var: torch.Tensor):
    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -(x - mean) / (var + ve_std(t, SIGMA_MAX).square()[:, None])

    return score


MEAN = torch.tensor([0.5, -1.0, 1.0, 0.0], dtype=F64)
VAR = torch.tensor([1.0, 0.25, 2.0, 0.5], dtype=F64)
N_MC = 20000


def _unguided(constant_step: bool) -> torch.Tensor:
    return sample_reverse_sde(
        _gaussian_ve_score(MEAN, VAR),
        N_MC,
        (4,),
        nfe=500,
        sigma_max=SIGMA_MAX,
        tol=100.0,
        generator=torch.Generator().manual_seed(0),
        constant_step=constant_step,
        dtype=F64,
    )


def test_unguided_sf_with_exact_score_and_correct_steps_reproduces_the_data() -> None:
    x = _unguided(constant_step=False)
    # The start N(0, std(1)²) instead of N(m, v + std(1)²) leaves a bias m·v/(v + std(1)²) (< 0.02 here),
    # which the reverse flow contracts exactly by that factor.
    s1 = ve_std(torch.tensor(1.0, dtype=F64), SIGMA_MAX) ** 2
    expected_mean = MEAN * s1 / (VAR + s1)
    se = (VAR / N_MC).sqrt()
    assert bool(((x.mean(0) - expected_mean).abs() < 4 * se).all()), x.mean(0)
    ratio = x.var(0) / VAR  # measured: 1.011, 1.003, 1.005, 1.013 (MC s.e. 0.01)
    assert bool(((ratio - 1).abs() < 0.04).all()), ratio


def test_constant_step_sf_does_not_reproduce_the_data_variance() -> None:
    """Bug B11 as a property: Σh ≈ 2 and big steps near t = 0 leave about half to two thirds of the
    data variance (measured 0.56, 0.51, 0.61, 0.53 for v = 1, 0.25, 2, 0.5); the mean stays right."""
    x = _unguided(constant_step=True)
    ratio = x.var(0) / VAR
    assert bool((ratio < 0.75).all()) and bool((ratio > 0.4).all()), ratio
    assert bool(((x.mean(0) - MEAN).abs() < 0.05).all()), x.mean(0)


def test_guided_sf_moves_the_mean_to_the_observation() -> None:
    """Prior N(0, I), observe entries 0 and 2 with σ = 0.3: the Kalman mean is z/(1 + σ²) there and 0
    elsewhere. SF (exact prior score) lands within 0.05 of it (measured 1.367/−0.914 vs 1.376/−0.917 with
    N = 2e4) but is under-dispersed on observed entries (measured variance 0.045 vs Kalman 0.083)."""
    sigma = 0.3
    op = make_operator("every_kth", (4,), k=2, noise_std=sigma)
    norm = Normalizer.identity()
    z = torch.tensor([1.5, 0.3, -1.0, 0.7], dtype=F64)
    sigma_n = norm.noise_std_normalized(sigma, like=z)
    x = sample_reverse_sde(
        _gaussian_ve_score(torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64)),
        4000,
        (4,),
        nfe=300,
        sigma_max=SIGMA_MAX,
        tol=100.0,
        generator=torch.Generator().manual_seed(1),
        likelihood=lambda x: likelihood_score(x, z, op, norm, sigma_n),
        dtype=F64,
    )
    kalman_mean = torch.tensor([1.5, 0.0, -1.0, 0.0], dtype=F64) * torch.tensor(
        [1 / (1 + sigma**2), 0, 1 / (1 + sigma**2), 0], dtype=F64
    )
    assert bool(((x.mean(0) - kalman_mean).abs() < 0.05).all()), x.mean(0)
    kalman_var = sigma**2 / (1 + sigma**2)
    assert bool((x.var(0)[[0, 2]] < kalman_var).all())  # SF is not exact: under-dispersed
    assert bool(((x.var(0)[[1, 3]] - 1).abs() < 0.1).all())  # unobserved, independent: prior variance


def test_sf_loss_is_zero_for_the_exact_noise_predictor_at_zero_data() -> None:
    """For x0 = 0 the optimal −ε prediction is −x_t/std(t): a net that returns it has zero loss."""

    class Exact(torch.nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return -x / ve_std(t, SIGMA_MAX)[:, None]

    x0 = torch.zeros(64, 3, dtype=F64)
    loss = sf_loss(Exact(), x0, torch.Generator().manual_seed(0), sigma_max=SIGMA_MAX)
    assert loss.item() < 1e-20
    net = make_network("mlp", (3,), width=8, num_blocks=1)  # zero-initialised output: loss = E‖ε‖² = 1
    loss = sf_loss(net, x0.float(), torch.Generator().manual_seed(0), sigma_max=SIGMA_MAX)
    assert loss.item() == pytest.approx(1.0, abs=0.3)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"nfe": 0}, "nfe"),
        ({"nfe": 1, "constant_step": True}, "nfe"),
        ({"sigma_max": 1.0}, "sigma_max"),
        ({"sigma_max": 0.5}, "sigma_max"),
        ({"tol": 0.0}, "tol"),
        ({"tol": -1.0}, "tol"),
        ({"constant_step": 1}, "constant_step"),
        ({"network": "resnet"}, "network"),
        ({"width": 0}, "width"),
        ({"pretrain_lr": 0.0}, "pretrain_lr"),
        ({"finetune_epochs": -1}, "finetune_epochs"),
        ({"norm_form": "minmax"}, "norm_form"),
    ],
)
def test_bad_hyper_parameters_raise(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SF(**params)


def test_make_filter_builds_sf() -> None:
    sf = make_filter("sf", nfe=10, constant_step=True)
    assert isinstance(sf, SF) and sf.needs_pretraining and sf.name == "sf"
    with pytest.raises(ValueError, match="nfe"):
        make_filter("sf", nfe=0)


def test_network_kind_auto() -> None:
    assert network_kind("auto", (2, 16, 16)) == "unet2d"
    assert network_kind("auto", (40,)) == "unet1d"
    assert network_kind("auto", (3,)) == "mlp"
    assert network_kind("mlp", (40,)) == "mlp"


def test_pretrain_and_analyse_smoke(tmp_path) -> None:
    system = make_system("lorenz96", dim=8)
    g = torch.Generator().manual_seed(0)
    data = system.sample_climatology(64, generator=g, spinup_steps=100)
    op = make_operator("every_kth", (8,), k=2, noise_std=1.0)
    sf = SF(
        nfe=20,
        network="mlp",
        width=16,
        depth=1,
        pretrain_epochs=2,
        pretrain_batch=16,
        finetune_epochs=1,
        finetune_batch=8,
    )
    path = tmp_path / "sf.pt"
    # float64 data (as read from NetCDF) is cast to the networks' float32
    sf.pretrain(
        data.double(), op, checkpoint=str(path), generator=torch.Generator().manual_seed(1), progress=False
    )
    payload = torch.load(path, weights_only=True)  # plain containers only
    assert payload["format"] == "masf-checkpoint"
    # trained without the operator (plain denoising): the checkpoint records none and serves every operator
    ckpt = load_checkpoint(path, expect={"method": "sf", "sigma_max": 25.0, "operator": None})
    assert ckpt.config["normalizer"]["x_shift"] == pytest.approx(
        normalizer_to_json(Normalizer().fit(data))["x_shift"], rel=1e-5
    )

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
        post = sf.analyse(prior, z, op, ctx)
        assert post.shape == prior.shape and post.dtype == prior.dtype
        assert bool(torch.isfinite(post).all())
    assert ctx.timings["sampling"] > 0 and ctx.timings["finetune"] > 0
    # A checkpoint made for another σ_max is refused.
    ctx2 = Context(generator=torch.Generator().manual_seed(2), pretrained=str(path))
    with pytest.raises(ValueError, match="sigma_max"):
        SF(sigma_max=10.0, nfe=2).analyse(prior, z, op, ctx2)


class _ExactNoisePredictor(torch.nn.Module):
    """E[−ε | x_t] = −std(t)(x − m)/(v + std(t)²) for data N(m, v I)."""

    def __init__(self, mean: float, var: float) -> None:
        super().__init__()
        self.mean, self.var = mean, var

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        std = ve_std(t, SIGMA_MAX)[:, None]
        return -std * (x - self.mean) / (self.var + std**2)


def test_analyse_with_the_exact_noise_predictor_gives_the_kalman_mean() -> None:
    """The whole analyse path (net -> score conversion, normalization, guidance, denormalization) with an
    analytic network: prior N(2, 4) per entry, normalizer (u, s) = (2, 2), mask on entries 0 and 2, σ = 0.6.
    Kalman mean 2 + 4/(4 + 0.36)(z − 2) on observed entries, 2 elsewhere: 3.835, 2, 1.083, 2 (measured
    3.818, 1.949, 1.089, 2.048 with N = 3000; MC s.e. 0.008 observed, 0.037 unobserved)."""
    norm = Normalizer.from_stats(torch.tensor(2.0), torch.tensor(2.0), eps=0.0)
    ctx = Context(generator=torch.Generator().manual_seed(4))
    ctx.state[STATE_KEY] = ScoreModel(net=_ExactNoisePredictor(0.0, 1.0), normalizer=norm)
    op = make_operator("every_kth", (4,), k=2, noise_std=0.6)
    z = torch.tensor([4.0, -9.0, 1.0, 9.0], dtype=F64)
    prior = torch.zeros(3000, 4, dtype=F64)  # SF uses only its shape (B15)
    post = SF(nfe=200).analyse(prior, z, op, ctx)
    gain = 4.0 / (4.0 + 0.36)
    kalman = torch.tensor([2 + gain * 2.0, 2.0, 2 + gain * -1.0, 2.0], dtype=F64)
    assert post.shape == prior.shape
    tol = 4 * (post.var(0) / len(post)).sqrt() + 0.02  # MC error + sampler bias
    assert bool(((post.mean(0) - kalman).abs() < tol).all()), post.mean(0)
    assert bool(((post.var(0)[[1, 3]] / 4.0 - 1).abs() < 0.1).all()), post.var(0)
    assert ctx.timings["sampling"] > 0 and "finetune" not in ctx.timings


@pytest.mark.slow
def test_learned_sf_reproduces_gaussian_data_without_information(tmp_path) -> None:
    """Train a small MLP (30 epochs, 2000 samples) on N(m, diag(s²)) data, then analyse with a useless
    observation (σ = 1e3): the particles follow the data law. Measured means 2.96, 0.98, 1.90, 0.19 (data
    3, 1, 2, 0), std ratios 0.93, 1.06, 0.93, 0.98 (about 15 s on one CPU thread)."""
    g = torch.Generator().manual_seed(0)
    std = torch.tensor([1.0, 0.5, 2.0, 1.0])
    mean = torch.tensor([3.0, 1.0, 2.0, 0.0])
    data = mean + std * torch.randn(2000, 4, generator=g)
    op = make_operator("identity", (4,), noise_std=1e3)
    sf = SF(
        nfe=200,
        network="mlp",
        width=64,
        depth=2,
        pretrain_epochs=30,
        pretrain_batch=64,
        pretrain_lr=2e-3,
        finetune_epochs=0,
    )
    path = str(tmp_path / "sf.pt")
    sf.pretrain(data, op, checkpoint=path, generator=torch.Generator().manual_seed(1), progress=False)
    ctx = Context(generator=torch.Generator().manual_seed(2), pretrained=path)
    post = sf.analyse(mean + std * torch.randn(2000, 4, generator=g), torch.zeros(4), op, ctx)
    assert bool(((post.mean(0) - mean).abs() < 0.3 * std).all()), post.mean(0)
    assert bool(((post.std(0) / std - 1).abs() < 0.15).all()), post.std(0)


def _em_law(
    mean0: float, var0: float, nfe: int, *, observed: float = 0.0, z: float = 0.0, sigma: float = 1.0
):
    """The exact law N(m, v) of SF's output for one entry of a N(mean0, var0) prior, by recursion over the
    Euler–Maruyama steps (every step is affine in x: x̄ = a x + b, then x = x̄ + √h g ξ):

        a = 1 − g²h (1/(var0 + std(t)²) + w(t)·observed/σ²),   b = g²h (mean0/(var0 + std(t)²) + w(t)·observed·z/σ²),

    with t_i = linspace(1, 1e-5, nfe)²_i, h_i = t_i − t_{i+1} (t_nfe = 0), g = σ_max^t, w(t) = max(0, 1 − 2t),
    std(t)² = (σ_max^{2t} − 1)/(2 ln σ_max), and the start N(0, std(1)²). Written from the method's formulas,
    independently of ``time_grid`` and ``sample_reverse_sde``."""
    log_s = math.log(SIGMA_MAX)
    times = [(1.0 + (1e-5 - 1.0) * i / (nfe - 1)) ** 2 if nfe > 1 else 1.0 for i in range(nfe)]
    m, v = 0.0, (SIGMA_MAX**2 - 1) / (2 * log_s)
    for i, t in enumerate(times):
        h = t - (times[i + 1] if i + 1 < nfe else 0.0)
        g2h = SIGMA_MAX ** (2 * t) * h
        prec = 1.0 / (var0 + math.expm1(2 * t * log_s) / (2 * log_s))
        w = max(0.0, 1.0 - 2.0 * t) * observed / sigma**2
        a, b = 1.0 - g2h * (prec + w), g2h * (mean0 * prec + w * z)
        m, v = a * m + b, a * a * v
        if i < nfe - 1:
            v += g2h
    return m, v


@pytest.mark.parametrize("nfe", [10, 30, 200])
def test_sf_sampler_law_is_the_discrete_gaussian_recursion_at_the_configured_nfe(nfe) -> None:
    """At the nfe the configs run (10, 30 for SF; 200 in the learned tests), mean and variance of every entry
    match the exact discrete law within 4 Monte-Carlo standard errors, unguided and guided (entries 0 and 2
    observed with σ = 0.3). At nfe 30 the variance is 3–7 % above the data's: the discretization, not a bug."""
    sigma, z = 0.3, torch.tensor([1.5, 0.3, -1.0, 0.7], dtype=F64)
    op = make_operator("every_kth", (4,), k=2, noise_std=sigma)
    norm = Normalizer.identity()
    sigma_n = norm.noise_std_normalized(sigma, like=z)
    for guided in (False, True):
        x = sample_reverse_sde(
            _gaussian_ve_score(MEAN, VAR),
            N_MC,
            (4,),
            nfe=nfe,
            sigma_max=SIGMA_MAX,
            tol=1e9,
            generator=torch.Generator().manual_seed(nfe + guided),
            likelihood=(lambda x: likelihood_score(x, z, op, norm, sigma_n)) if guided else None,
            dtype=F64,
        )
        for j in range(4):
            observed = 1.0 if guided and j % 2 == 0 else 0.0
            m, v = _em_law(float(MEAN[j]), float(VAR[j]), nfe, observed=observed, z=float(z[j]), sigma=sigma)
            assert abs(float(x[:, j].mean()) - m) < 4 * math.sqrt(v / N_MC), (
                guided,
                j,
                float(x[:, j].mean()),
                m,
            )
            assert abs(float(x[:, j].var()) / v - 1) < 4 * math.sqrt(2 / N_MC), (
                guided,
                j,
                float(x[:, j].var()),
                v,
            )


def test_a_tol_below_one_is_accepted() -> None:
    """Any tol > 0 and σ_max > 1 are valid: runs with tol 0.5 or σ_max 1.5 stay finite."""
    kwargs = dict(nfe=5, sigma_max=SIGMA_MAX, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = sample_reverse_sde(_gaussian_ve_score(MEAN, VAR), 200, (4,), tol=0.5, **kwargs)
    assert bool(torch.isfinite(x).all())
    # and any σ_max > 1 (here 1.5, below 2)
    x = sample_reverse_sde(
        _gaussian_ve_score(MEAN, VAR), 200, (4,), tol=100.0, **{**kwargs, "sigma_max": 1.5}
    )
    assert bool(torch.isfinite(x).all())


@pytest.mark.parametrize("data", [torch.zeros(16), torch.zeros(8, 4, dtype=torch.int64)])
def test_pretraining_refuses_data_that_is_not_a_float_batch(data, tmp_path) -> None:
    op = make_operator("identity", (4,), noise_std=1.0)
    with pytest.raises(ValueError, match=r"data must be a float tensor \(M, \*S\)"):
        SF(pretrain_epochs=1).pretrain(
            data, op, checkpoint=str(tmp_path / "x.pt"), generator=torch.Generator()
        )


class _NoiseOnly:
    """Has the operator's noise_std but cannot be applied to a state."""

    noise_std = 0.1


@pytest.mark.parametrize("name", ["sf", "ssls"])
@pytest.mark.parametrize("operator", [lambda x: x, _NoiseOnly()], ids=["no-noise-std", "not-callable"])
def test_an_operator_needs_both_a_call_and_a_noise_std(name, operator):
    """Either missing is refused (a callable without noise_std, or noise_std on something uncallable)."""
    with pytest.raises(
        ValueError, match=rf"{name}: operator must be a masf operator \(callable with noise_std\)"
    ):
        make_filter(name).check_operator(operator)
