"""Lorenz-63 / Lorenz-96: RK4 order, invariants, fixed points, determinism, batching, precision, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from masf.rng import generator
from masf.systems import SYSTEMS, Lorenz63, Lorenz96, make_system


def _final_state(system_cls, dt: float, x0: torch.Tensor, horizon: float, **params) -> torch.Tensor:
    system = system_cls(dt=dt, **params)
    return system.step(x0, round(horizon / dt))


@pytest.mark.parametrize(
    ("system_cls", "params", "dts", "horizon"),
    [
        (Lorenz63, {}, (0.02, 0.01), 1.0),
        (Lorenz96, {"dim": 8}, (0.05, 0.025), 0.5),
    ],
)
def test_rk4_is_fourth_order(system_cls, params, dts, horizon):
    x0 = system_cls(**params).sample_climatology(3, generator=generator(1, "truth"), dtype=torch.float64)
    reference = _final_state(system_cls, dts[1] / 16, x0, horizon, **params)
    errors = [float((_final_state(system_cls, dt, x0, horizon, **params) - reference).norm()) for dt in dts]
    order = math.log(errors[0] / errors[1]) / math.log(dts[0] / dts[1])
    assert abs(order - 4.0) < 0.3, (errors, order)


def test_lorenz96_energy_identity():
    """x · f(x) = −|x|² + F Σ x: the advection term conserves ½|x|²."""
    system = Lorenz96(dim=13, forcing=8.0)
    x = 5.0 * torch.randn(6, 13, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    energy_rate = (x * system.tendency(x)).sum(-1)
    expected = -(x * x).sum(-1) + system.forcing * x.sum(-1)
    torch.testing.assert_close(energy_rate, expected, rtol=1e-12, atol=1e-10)
    advection = system.tendency(x) + x - system.forcing
    assert float((x * advection).sum(-1).abs().max()) < 1e-10


def test_lorenz96_matches_dapper_rk4_formula():
    """One call = one RK4 step of dt = 0.05 in DAPPER's form (k_i scaled by dt, rolls as in DAPPER)."""
    dt, forcing = 0.05, 8.0

    def dxdt(x):
        return (np.roll(x, -1, -1) - np.roll(x, 2, -1)) * np.roll(x, 1, -1) - x + forcing

    x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 40))
    k1 = dt * dxdt(x)
    k2 = dt * dxdt(x + k1 / 2)
    k3 = dt * dxdt(x + k2 / 2)
    k4 = dt * dxdt(x + k3)
    expected = x + (k1 + 2 * (k2 + k3) + k4) / 6
    ours = Lorenz96().step(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-13, atol=1e-13)


def test_lorenz63_fixed_points():
    system = Lorenz63()
    c = math.sqrt(system.beta * (system.rho - 1.0))
    fixed = torch.tensor(
        [[0.0, 0.0, 0.0], [c, c, system.rho - 1.0], [-c, -c, system.rho - 1.0]], dtype=torch.float64
    )
    assert float(system.tendency(fixed).abs().max()) < 1e-12
    torch.testing.assert_close(system.step(fixed, 100), fixed, rtol=0, atol=1e-10)
    # a generic point is not fixed
    assert float(system.tendency(fixed + 1.0).abs().max()) > 1.0


def test_lorenz96_fixed_point():
    system = Lorenz96(dim=10, forcing=5.0)
    fixed = torch.full((1, 10), 5.0, dtype=torch.float64)
    assert float(system.tendency(fixed).abs().max()) == 0.0
    torch.testing.assert_close(system.step(fixed, 20), fixed, rtol=0, atol=1e-12)


@pytest.mark.parametrize("system", [Lorenz63(), Lorenz96(dim=12)])
def test_same_seed_is_bit_identical(system):
    a = system.sample_climatology(4, generator=generator(7, "ensemble"), spinup_steps=50)
    b = system.sample_climatology(4, generator=generator(7, "ensemble"), spinup_steps=50)
    c = system.sample_climatology(4, generator=generator(8, "ensemble"), spinup_steps=50)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(system.step(a, 30), system.step(b, 30))


@pytest.mark.parametrize("system", [Lorenz63(), Lorenz96(dim=12)])
def test_batch_members_are_independent(system):
    x = system.sample_climatology(5, generator=generator(3, "truth"), spinup_steps=100)
    batch = system.step(x, 40)
    for i in range(5):
        single = system.step(x[i : i + 1], 40)
        torch.testing.assert_close(batch[i : i + 1], single, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("system", "steps"), [(Lorenz63(), 50), (Lorenz96(dim=40), 10)])
def test_float32_tracks_float64_over_short_horizon(system, steps):
    x64 = system.sample_climatology(8, generator=generator(5, "truth"), dtype=torch.float64)
    y64 = system.step(x64, steps)
    y32 = system.step(x64.float(), steps)
    assert y32.dtype == torch.float32
    scale = float(y64.abs().max())
    assert float((y32.double() - y64).abs().max()) < 2e-5 * scale
    assert float((y32.double() - y64).abs().max()) > 0.0  # really computed in float32


def test_step_does_not_modify_input_and_zero_steps_copies():
    system = Lorenz96(dim=6)
    x = system.sample_initial(2, generator=generator(0, "truth"))
    before = x.clone()
    y = system.step(x, 3)
    assert torch.equal(x, before)
    assert not torch.equal(y, x)
    z = system.step(x, 0)
    assert torch.equal(z, x) and z.data_ptr() != x.data_ptr()


def test_lorenz96_climatology_statistics():
    """F = 8, D = 40: the attractor's per-variable mean ≈ 2.34 and std ≈ 3.63 (well-known values)."""
    x = Lorenz96().sample_climatology(50, generator=generator(11, "pretrain_data"), dtype=torch.float64)
    assert abs(float(x.mean()) - 2.34) < 0.3
    assert abs(float(x.std()) - 3.63) < 0.3


def test_lorenz63_climatology_statistics():
    """σ, ρ, β = 10, 28, 8/3: mean z ≈ 23.5, std x ≈ 7.9, and x, y are symmetric about 0."""
    x = Lorenz63().sample_climatology(400, generator=generator(11, "pretrain_data"), dtype=torch.float64)
    assert abs(float(x[:, 2].mean()) - 23.5) < 1.5
    assert abs(float(x[:, 0].std()) - 7.9) < 0.8
    assert abs(float(x[:, 0].mean())) < 1.5


def test_initial_samples_shape_dtype_and_law():
    g = generator(0, "ensemble")
    x = Lorenz96(dim=20).sample_initial(500, generator=g, dtype=torch.float64)
    assert x.shape == (500, 20) and x.dtype == torch.float64
    assert abs(float(x.mean()) - 8.0) < 0.01
    assert abs(float(x.std()) - 1e-3**0.5) < 0.003
    y = Lorenz63().sample_initial(2000, generator=g)
    assert y.shape == (2000, 3) and y.dtype == torch.float32
    torch.testing.assert_close(y.mean(0), torch.tensor([1.509, -1.531, 25.46]), atol=0.15, rtol=0)
    torch.testing.assert_close(y.var(0), torch.full((3,), 2.0), atol=0.3, rtol=0)


def test_make_system_and_params_round_trip():
    assert set(SYSTEMS) == {"lorenz63", "lorenz96", "kolmogorov", "linear_gaussian"}
    for system in (Lorenz63(rho=30.0, dt=0.005), Lorenz96(dim=7, forcing=6.5)):
        params = system.params()
        assert make_system(**params) == system
        assert all(isinstance(v, float | int | str) for v in params.values())
    assert make_system("lorenz96", dim=40).dt == 0.05
    assert make_system("lorenz63").dt == 0.01


@pytest.mark.parametrize(
    ("build", "parameter"),
    [
        (lambda: Lorenz63(dt=0.0), "dt"),
        (lambda: Lorenz63(sigma=-1.0), "sigma"),
        (lambda: Lorenz96(dt=-0.05), "dt"),
        (lambda: Lorenz96(dim=3), "dim"),
        (lambda: Lorenz96(dim=4.5), "dim"),
        (lambda: Lorenz96(forcing=float("nan")), "forcing"),
        (lambda: make_system("lorenz42"), "lorenz63"),
        (lambda: make_system("lorenz96", bogus=1), "bogus"),
        (lambda: Lorenz63().sample_initial(0, generator=torch.Generator()), "n"),
    ],
)
def test_bad_parameters_raise(build, parameter):
    with pytest.raises(ValueError, match=parameter):
        build()


def test_bad_states_raise():
    system = Lorenz96(dim=8)
    with pytest.raises(ValueError, match="shaped"):
        system.step(torch.zeros(3, 7))
    with pytest.raises(ValueError, match="shaped"):
        system.step(torch.zeros(8))
    with pytest.raises(ValueError, match="NaN"):
        system.step(torch.full((2, 8), float("nan")))
    with pytest.raises(ValueError, match="float"):
        system.step(torch.zeros(2, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="steps"):
        system.step(torch.zeros(2, 8), -1)
    with pytest.raises(ValueError, match="shaped"):
        Lorenz63().step(torch.zeros(2, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("system", [Lorenz63(), Lorenz96()], ids=["l63", "l96"])
def test_cuda_matches_cpu(system):
    """Same code on both devices: CPU-generator draws are identical, trajectories agree to rounding."""
    x = system.sample_initial(16, generator=generator(0, "truth"), dtype=torch.float64)
    xc = system.sample_initial(16, generator=generator(0, "truth"), dtype=torch.float64, device="cuda")
    assert xc.device.type == "cuda" and torch.equal(xc.cpu(), x)
    xg = system.sample_initial(16, generator=generator(0, "truth", "cuda"), device="cuda")
    assert xg.device.type == "cuda" and xg.dtype == torch.float32
    torch.testing.assert_close(system.step(xc, 20).cpu(), system.step(x, 20), rtol=1e-10, atol=1e-10)
    y32 = system.step(xc.float(), 20)
    assert y32.dtype == torch.float32 and y32.device.type == "cuda"
    torch.testing.assert_close(y32.cpu(), system.step(x.float(), 20), rtol=1e-4, atol=1e-4)
