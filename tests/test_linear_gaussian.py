"""Linear-Gaussian system: exact moment propagation against Monte Carlo, stationary law, bad input."""

from __future__ import annotations

import pytest
import torch

from masf.rng import generator
from masf.systems import LinearGaussian, make_system


def _example() -> LinearGaussian:
    """D = 3, a non-normal stable F, correlated Q and a non-zero initial mean."""
    f = [[0.9, 0.3, 0.0], [-0.2, 0.8, 0.1], [0.0, 0.4, 0.5]]
    q = [[0.2, 0.05, 0.0], [0.05, 0.1, 0.02], [0.0, 0.02, 0.3]]
    return LinearGaussian(
        F=f, Q=q, mean0=[1.0, -2.0, 3.0], cov0=[[0.5, 0.1, 0.0], [0.1, 0.4, 0.0], [0.0, 0.0, 1.0]]
    )


def test_monte_carlo_moments_match_exact_propagation():
    system, n, steps = _example(), 20_000, 4
    x0 = system.sample_initial(n, generator=generator(0, "ensemble"), dtype=torch.float64)
    x = system.step(x0, steps, generator=generator(0, "model_noise"))
    mean, cov = system.moments(steps)
    # Monte-Carlo standard errors: sqrt(P_ii/n) for the mean, sqrt((P_ii P_jj + P_ij²)/n) for the covariance
    mean_se = (cov.diagonal() / n).sqrt()
    cov_se = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert bool(((x.mean(0) - mean).abs() < 4 * mean_se).all()), (x.mean(0), mean)
    assert bool(((torch.cov(x.T) - cov).abs() < 4 * cov_se).all()), (torch.cov(x.T), cov)
    # and the initial law itself
    m0, p0 = system.moments(0)
    assert bool(((x0.mean(0) - m0).abs() < 4 * (p0.diagonal() / n).sqrt()).all())


def test_moments_known_values():
    """Hand-computed: m_1 = F m_0, P_1 = F P_0 Fᵀ + Q for a 2-D example."""
    system = LinearGaussian(
        F=[[0.5, 1.0], [0.0, 2.0]], Q=[[1.0, 0.0], [0.0, 0.0]], mean0=[1.0, 1.0], cov0=torch.eye(2)
    )
    mean, cov = system.moments(1)
    torch.testing.assert_close(mean, torch.tensor([1.5, 2.0], dtype=torch.float64))
    torch.testing.assert_close(cov, torch.tensor([[2.25, 2.0], [2.0, 4.0]], dtype=torch.float64))


def test_default_is_stable_with_identity_stationary_covariance():
    for dim in (1, 4, 5):
        system = LinearGaussian.default(dim)
        torch.testing.assert_close(system.F @ system.F.T, 0.95**2 * torch.eye(dim, dtype=torch.float64))
        torch.testing.assert_close(system.stationary_cov(), torch.eye(dim, dtype=torch.float64))
    system = _example()
    p = system.stationary_cov()
    torch.testing.assert_close(system.F @ p @ system.F.T + system.Q, p)
    torch.testing.assert_close(system.moments(400)[1], p)


def test_noise_free_system_is_deterministic_and_needs_no_generator():
    f = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    system = LinearGaussian(F=f, Q=torch.zeros(2, 2), mean0=torch.zeros(2), cov0=torch.eye(2))
    assert not system.stochastic
    x = torch.tensor([[1.0, 2.0]])
    torch.testing.assert_close(system.step(x, 4), x)  # a rotation by 90° four times
    torch.testing.assert_close(system.step(x, 1), torch.tensor([[2.0, -1.0]]))


def test_determinism_dtype_and_batch_independence():
    system = LinearGaussian.default(4)
    a = system.sample_climatology(6, generator=generator(2, "truth"))
    b = system.sample_climatology(6, generator=generator(2, "truth"))
    assert a.dtype == torch.float32 and a.shape == (6, 4) and torch.equal(a, b)
    zero_noise = LinearGaussian(F=system.F, Q=torch.zeros(4, 4), mean0=system.mean0, cov0=system.cov0)
    batch = zero_noise.step(a, 5)
    for i in range(6):
        torch.testing.assert_close(zero_noise.step(a[i : i + 1], 5), batch[i : i + 1], rtol=1e-6, atol=1e-6)


def test_make_system_default_and_round_trip():
    system = make_system("linear_gaussian", dim=3)
    assert system.dim == 3 and system.state_shape == (3,)
    again = make_system(**_example().params())
    for name in ("F", "Q", "mean0", "cov0"):
        assert torch.equal(getattr(again, name), getattr(_example(), name))
    with pytest.raises(ValueError, match="dim"):
        make_system("linear_gaussian", dim=2, F=[[1.0]], Q=[[1.0]], mean0=[0.0], cov0=[[1.0]])


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"F": [[1.0, 0.0]]}, "F"),
        ({"Q": [[1.0, 0.5], [0.0, 1.0]]}, "Q"),
        ({"Q": [[1.0, 0.0], [0.0, -1.0]]}, "Q"),
        ({"cov0": [[1.0, 2.0], [2.0, 1.0]]}, "cov0"),
        ({"mean0": [0.0, 0.0, 0.0]}, "mean0"),
        ({"F": [[float("nan"), 0.0], [0.0, 1.0]]}, "F"),
        ({"dt": 0.0}, "dt"),
    ],
)
def test_bad_parameters_raise(kwargs, parameter):
    base = {"F": torch.eye(2), "Q": torch.eye(2), "mean0": torch.zeros(2), "cov0": torch.eye(2)}
    with pytest.raises(ValueError, match=parameter):
        LinearGaussian(**{**base, **kwargs})


def test_bad_use_raises():
    system = LinearGaussian.default(2)
    with pytest.raises(ValueError, match="generator"):
        system.step(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="shaped"):
        system.step(torch.zeros(3, 3), generator=generator(0, "model_noise"))
    with pytest.raises(ValueError, match="radius"):
        LinearGaussian.default(2, radius=1.0)
    unstable = LinearGaussian(F=2.0 * torch.eye(2), Q=torch.eye(2), mean0=torch.zeros(2), cov0=torch.eye(2))
    with pytest.raises(ValueError, match="spectral radius"):
        unstable.stationary_cov()
    with pytest.raises(ValueError, match="spinup_steps"):
        unstable.sample_climatology(2, generator=generator(0, "truth"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    system = _example()
    x = system.sample_initial(8, generator=generator(0, "ensemble"), dtype=torch.float64)
    xc = system.sample_initial(8, generator=generator(0, "ensemble"), dtype=torch.float64, device="cuda")
    assert xc.device.type == "cuda" and torch.equal(xc.cpu(), x)
    y = system.step(x, 3, generator=generator(0, "model_noise"))
    yc = system.step(xc, 3, generator=generator(0, "model_noise"))  # CPU generator feeds CUDA states
    torch.testing.assert_close(yc.cpu(), y, rtol=1e-12, atol=1e-12)
    yg = system.step(xc.float(), 3, generator=generator(0, "model_noise", "cuda"))
    assert yg.device.type == "cuda" and yg.dtype == torch.float32
