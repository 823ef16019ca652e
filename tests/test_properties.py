"""Invariants, checked over parametrized sweeps of sizes and seeds: the ETKF transform and the random
rotations preserve the ensemble mean, CRPS is a proper score, the localization taper is symmetric, and
the systems commute with the symmetries of their periodic domains."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from masf.filters import FILTERS, make_filter
from masf.filters.enkf import etkf_transform
from masf.filters.ensemble import random_rotation
from masf.filters.localization import gaspari_cohn, local_domains
from masf.metrics import crps
from masf.systems import Lorenz96
from masf.systems.kolmogorov import Kolmogorov

F64 = torch.float64


@pytest.mark.parametrize("n", [2, 5, 20, 40])
@pytest.mark.parametrize("m", [1, 7, 30])
@pytest.mark.parametrize("seed", [0, 1])
def test_etkf_transform_is_symmetric_and_keeps_the_mean(n, m, seed):
    """T = √(N−1) C^{-1/2} with C = ŶŶᵀ + (N−1)I: symmetric, T² (C/(N−1)) = I, and T·1 = 1 because the
    anomalies Ŷ sum to zero over members (so the analysis anomalies T A still have zero mean)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(3, n, m, generator=g, dtype=F64) * torch.tensor([0.1, 1.0, 10.0], dtype=F64).view(3, 1, 1)
    y = y - y.mean(dim=1, keepdim=True)  # anomalies
    d = torch.randn(3, m, generator=g, dtype=F64)
    w, t = etkf_transform(y, d)
    ones = torch.ones(3, n, 1, dtype=F64)
    eye = torch.eye(n, dtype=F64).expand(3, n, n)
    c = y @ y.transpose(-1, -2) + (n - 1) * eye
    torch.testing.assert_close(t, t.transpose(-1, -2), rtol=0, atol=1e-12)
    torch.testing.assert_close(t @ t @ c / (n - 1), eye, rtol=0, atol=1e-9)
    torch.testing.assert_close(t @ ones, ones, rtol=0, atol=1e-10)
    torch.testing.assert_close(c @ w.unsqueeze(-1), y @ d.unsqueeze(-1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("n", [2, 3, 10, 40])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_rotation_is_orthogonal_and_mean_preserving(n, seed):
    q = random_rotation(n, torch.Generator().manual_seed(seed), torch.zeros(1, dtype=F64))
    eye = torch.eye(n, dtype=F64)
    torch.testing.assert_close(q @ q.T, eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(q @ torch.ones(n, dtype=F64), torch.ones(n, dtype=F64), rtol=0, atol=1e-12)
    if n > 2:  # and it actually rotates
        assert float((q - eye).abs().max()) > 1e-3


def test_random_rotations_are_not_all_the_same():
    qs = [random_rotation(6, torch.Generator().manual_seed(s), torch.zeros(1, dtype=F64)) for s in range(3)]
    assert float((qs[0] - qs[1]).abs().max()) > 1e-3 and float((qs[1] - qs[2]).abs().max()) > 1e-3


def _gaussian_quantile_ensemble(mean: float, std: float, n: int) -> torch.Tensor:
    p = (torch.arange(n, dtype=F64) + 0.5) / n
    return mean + std * math.sqrt(2.0) * torch.erfinv(2 * p - 1)


@pytest.mark.parametrize("fair", [False, True])
def test_crps_is_proper(fair):
    """The expected CRPS against y ~ N(0, 1) is smallest for the ensemble of N(0, 1) itself: any shift
    of the mean or change of the spread scores worse (outcomes are common to every candidate)."""
    y = torch.randn(1, 40_000, generator=torch.Generator().manual_seed(0), dtype=F64)
    scores = {}
    for mean in (-0.3, 0.0, 0.3):
        for std in (0.6, 1.0, 1.6):
            ens = _gaussian_quantile_ensemble(mean, std, 200).view(1, 200, 1).expand(1, 200, y.shape[1])
            scores[(mean, std)] = float(crps(ens, y, fair=fair))
    best = min(scores, key=scores.get)
    assert best == (0.0, 1.0), scores
    # and the Gaussian closed form: CRPS(N(0, 1), y) averaged over y ~ N(0, 1) is 1/√π
    assert scores[(0.0, 1.0)] == pytest.approx(1 / math.sqrt(math.pi), abs=0.01)


@pytest.mark.parametrize(
    ("state_shape", "radius"), [((17,), 2.5), ((40,), 7.28), ((1, 7, 9), 1.6), ((2, 6, 6), 2.2)]
)
def test_taper_is_symmetric_on_the_periodic_grid(state_shape, radius):
    """Every entry observed: the weight of observation o in the domain of p equals that of p in o's."""
    size = math.prod(state_shape)
    dom = local_domains(state_shape, torch.arange(size), radius)
    weight = torch.zeros(size, size, dtype=F64)
    for d in range(dom.members.shape[0]):
        for entry in dom.members[d].tolist():
            hits = dom.weights[d] > 0
            weight[entry, dom.obs[d][hits]] = dom.weights[d][hits].to(F64)
    torch.testing.assert_close(weight, weight.T, rtol=0, atol=0)
    assert bool((torch.diagonal(weight) == 1).all())
    r = torch.linspace(-3, 3, 601, dtype=F64)
    torch.testing.assert_close(gaspari_cohn(r), gaspari_cohn(-r), rtol=0, atol=0)


@pytest.mark.parametrize("shift", [1, 7, 39])
def test_lorenz96_commutes_with_cyclic_shifts(shift):
    system = Lorenz96(dim=40)
    x = system.sample_initial(3, generator=torch.Generator().manual_seed(shift), dtype=F64)
    torch.testing.assert_close(
        system.step(torch.roll(x, shift, dims=-1), 5), torch.roll(system.step(x, 5), shift, dims=-1),
        rtol=0, atol=1e-12,
    )  # fmt: skip


@pytest.mark.parametrize(("axis", "shift"), [(-1, 1), (-1, 13), (-2, 8), (-2, 16)])
def test_kolmogorov_commutes_with_the_translations_of_its_forcing(axis, shift):
    """The body force F sin(4y) is invariant under any shift in x and under shifts in y by whole forcing
    periods (n/4 cells): the flow map commutes with those translations. A shift in y by 1 cell does not."""
    system = Kolmogorov(n=32)
    x = system.sample_initial(2, generator=torch.Generator().manual_seed(1), dtype=F64)
    rolled = system.step(torch.roll(x, shift, dims=axis), 2)
    torch.testing.assert_close(rolled, torch.roll(system.step(x, 2), shift, dims=axis), rtol=0, atol=1e-10)


def test_kolmogorov_does_not_commute_with_a_shift_off_the_forcing_period():
    system = Kolmogorov(n=32)
    x = system.sample_initial(1, generator=torch.Generator().manual_seed(1), dtype=F64)
    rolled = system.step(torch.roll(x, 1, dims=-2), 2)
    assert float((rolled - torch.roll(system.step(x, 2), 1, dims=-2)).abs().max()) > 1e-4


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_filters_are_immutable_values(name):
    """A filter is a frozen dataclass: its settings cannot change between analyses, and two filters with
    the same settings are equal (the pipeline keys its runs on them)."""
    f = make_filter(name)
    field = dataclasses.fields(f)[0].name if dataclasses.fields(f) else "anything"
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(f, field, 1)
    assert f == make_filter(name)


def test_random_rotations_are_haar_in_the_complement_of_the_mean():
    """E[Q] = 11ᵀ/N for Haar-distributed Ω (the mean of a Haar orthogonal matrix is 0); QR without the
    sign correction of R's diagonal, or with it applied to the wrong side, biases the diagonal."""
    n, draws = 5, 4000
    total = torch.zeros(n, n, dtype=F64)
    gen = torch.Generator().manual_seed(0)
    for _ in range(draws):
        total += random_rotation(n, gen, torch.zeros(1, dtype=F64))
    mean = total / draws
    # each entry of Ω has variance 1/(N−1); 5 standard errors of the mean
    torch.testing.assert_close(
        mean, torch.full((n, n), 1.0 / n, dtype=F64), rtol=0, atol=5 / math.sqrt((n - 1) * draws)
    )
