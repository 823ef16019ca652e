"""The cycle loop: timeline, metrics, diverged runs, bad input (with minimal stand-in parts)."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from masf.assimilate import run


@dataclass(frozen=True)
class Drift:
    """x_{k+1} = x_k + 1 (deterministic), a system stand-in with a known trajectory."""

    name: str = "drift"
    dt: float = 0.5
    dim: int = 3

    @property
    def state_shape(self):
        return (self.dim,)

    def step(self, x, n=1, *, generator=None):
        return x + float(n)


@dataclass(frozen=True)
class Everything:
    noise_std: float = 1.0
    linear: bool = True


@dataclass(frozen=True)
class ReplaceWithObservation:
    """Analysis = the observation plus fixed member offsets: makes the loop's bookkeeping visible."""

    name: str = "replace"

    def analyse(self, prior, z, operator, ctx):
        offsets = torch.linspace(-1, 1, prior.shape[0], dtype=prior.dtype).view(-1, 1)
        ctx.add_time("sampling", 0.0)
        return z + offsets


@dataclass(frozen=True)
class Explode:
    at_cycle: int = 2

    def analyse(self, prior, z, operator, ctx):
        return prior * (float("nan") if ctx.cycle == self.at_cycle else 1.0)


def test_timeline_and_metrics():
    system = Drift()
    truth = torch.arange(1, 5, dtype=torch.float64).view(4, 1).repeat(1, 3) * 2  # at steps 2, 4, 6, 8
    obs = truth + 0.25
    ens0 = torch.zeros(5, 3, dtype=torch.float64)
    ds = run(system, Everything(), ReplaceWithObservation(), obs, ens0, truth=truth, steps_per_cycle=2)
    assert ds.attrs["status"] == "ok"
    np.testing.assert_allclose(ds["mean"].values, obs.numpy())
    np.testing.assert_allclose(ds["rmse"].values, 0.25)
    # first forecast: zeros advanced 2 steps = 2 = truth[0], so the forecast error is 0
    assert ds["rmse_forecast"].values[0] == pytest.approx(0.0)
    # later forecasts start from the analysis (truth + 0.25 + offsets), so the mean error is 0.25
    np.testing.assert_allclose(ds["rmse_forecast"].values[1:], 0.25)
    offsets = np.linspace(-1, 1, 5)
    np.testing.assert_allclose(ds["spread"].values, np.sqrt(offsets.var(ddof=1)))
    np.testing.assert_allclose(ds["model_time"].values, [1.0, 2.0, 3.0, 4.0])
    assert ds["rank_hist"].values.sum(axis=1).tolist() == [3] * 4
    assert ds.attrs["steps_per_cycle"] == 2 and ds.attrs["ensemble_size"] == 5
    assert ds.attrs["wall_clock_forecast_s"] >= 0 and "wall_clock_sampling_s" in ds.attrs


def test_diverged_run_stops_with_status_and_nan():
    system = Drift()
    obs = torch.zeros(5, 3)
    ds = run(system, Everything(), Explode(at_cycle=2), obs, torch.zeros(4, 3), truth=obs)
    assert ds.attrs["status"] == "diverged"
    assert "cycle 2" in ds.attrs["status_reason"]
    assert np.isfinite(ds["rmse"].values[:2]).all()
    assert np.isnan(ds["rmse"].values[2:]).all()


@dataclass(frozen=True)
class BlowUp:
    """Drift that refuses non-finite input, as the real systems do, and blows up once its mean reaches 5."""

    dim: int = 3
    at_mean: float = 5.0
    name: str = "blowup"

    @property
    def state_shape(self):
        return (self.dim,)

    def step(self, x, n=1, *, generator=None):
        from masf.systems.base import check_state

        check_state(x, self.state_shape, self.name)
        for _ in range(n):
            x = x + 1.0
            if float(x.mean()) >= self.at_mean:
                x = x * float("inf")
        return x


def test_a_blow_up_inside_a_cycle_is_diverged_not_a_crash():
    """With intermediate forecast frames (steps_per_cycle 3, truth_steps given) the forecast steps one
    at a time. The first analysis puts the mean at 3; the state blows up when its mean reaches 5, at the
    second step of cycle 1. That must end the run as diverged at cycle 1, not with the system refusing
    the non-finite state at the next step."""
    truth_steps = torch.zeros(9, 3, dtype=torch.float64)
    obs = torch.zeros(3, 3, dtype=torch.float64)
    obs[0] = 3.0
    ens0 = torch.zeros(4, 3, dtype=torch.float64)
    ds = run(
        BlowUp(), Everything(), ReplaceWithObservation(), obs, ens0, truth=obs, truth_steps=truth_steps,
        steps_per_cycle=3,
    )  # fmt: skip
    assert ds.attrs["status"] == "diverged"
    assert ds.attrs["status_reason"] == "non-finite forecast at cycle 1"
    assert np.isfinite(ds["rmse"].values[0]) and np.isnan(ds["rmse"].values[1:]).all()


def test_bad_input():
    system = Drift()
    with pytest.raises(ValueError, match="at least 2 members"):
        run(system, Everything(), Explode(), torch.zeros(2, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="observations must be shaped"):
        run(system, Everything(), Explode(), torch.zeros(2, 4), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="steps_per_cycle"):
        run(system, Everything(), Explode(), torch.zeros(2, 3), torch.zeros(3, 3), steps_per_cycle=0)


@dataclass(frozen=True)
class Collapse:
    def analyse(self, prior, z, operator, ctx):
        from masf.filters.base import DegenerateEnsembleError

        raise DegenerateEnsembleError("all members identical")


def test_degenerate_ensemble_is_recorded_as_diverged():
    ds = run(Drift(), Everything(), Collapse(), torch.zeros(3, 3), torch.zeros(4, 3))
    assert ds.attrs["status"] == "diverged" and "degenerate" in ds.attrs["status_reason"]


@dataclass(frozen=True)
class Weighted:
    """Keeps the particles and puts all weight on member 0, as a particle filter may."""

    def analyse(self, prior, z, operator, ctx):
        w = torch.zeros(prior.shape[0], dtype=prior.dtype)
        w[0] = 1.0
        ctx.state["weights"] = w
        return prior + torch.arange(prior.shape[0], dtype=prior.dtype).view(-1, 1)


def test_particle_weights_enter_mean_and_spread():
    ds = run(Drift(), Everything(), Weighted(), torch.zeros(2, 3), torch.zeros(4, 3), truth=torch.ones(2, 3))
    np.testing.assert_allclose(ds["mean"].values[0], 1.0)  # member 0 only: zeros forecast by one step
    np.testing.assert_allclose(ds["spread"].values, 0.0, atol=1e-6)


def test_forecast_frames_and_the_papers_all_frames_rmse():
    """``truth_steps`` makes the loop record the forecast mean's RMSE at every intermediate model step;
    checked against the stored analysis members stepped by hand, and the all-frames RMSE of
    ``masf.aggregate.frames_rmse`` against the pooled squares of those frames."""
    from masf.aggregate import frames_rmse
    from masf.filters import make_filter
    from masf.operators import identity
    from masf.rng import generator
    from masf.systems import Lorenz63

    system, spc, K = Lorenz63(), 5, 4
    op = identity((3,), noise_std=1.0)
    x = system.sample_climatology(1, generator=generator(0, "truth"), dtype=torch.float64)
    steps = []
    for _ in range(K * spc):
        x = system.step(x, 1)
        steps.append(x[0])
    truth_steps = torch.stack(steps)
    truth = truth_steps[spc - 1 :: spc]
    obs = op.observe(truth, generator=generator(0, "obs_noise"))
    ens = system.sample_climatology(10, generator=generator(0, "ensemble"), dtype=torch.float64)
    f = make_filter("enkf", inflation=1.02)
    ds = run(
        system, op, f, obs, ens, truth=truth, truth_steps=truth_steps, steps_per_cycle=spc, keep_members=True
    )
    plain = run(system, op, f, obs, ens, truth=truth, steps_per_cycle=spc)
    np.testing.assert_allclose(ds["rmse"].values, plain["rmse"].values, rtol=1e-10)  # same analyses
    assert ds["rmse_lead"].shape == (K, spc - 1) and "rmse_lead" not in plain
    for k in range(1, K):
        members = torch.from_numpy(ds["members"].values[k - 1])
        for j in range(spc - 1):
            members = system.step(members, 1)
            err = (members.mean(0) - truth_steps[k * spc + j]).square().mean().sqrt()
            assert ds["rmse_lead"].values[k, j] == pytest.approx(float(err), rel=1e-9)
    frames = np.concatenate([ds["rmse"].values ** 2, (ds["rmse_lead"].values[1:] ** 2).ravel()])
    assert frames.size == K + (K - 1) * (spc - 1)  # the paper's 51 frames for K = 6, spc = 10
    assert frames_rmse(ds, "ok") == pytest.approx(float(np.sqrt(frames.mean())), rel=1e-12)
    assert np.isnan(frames_rmse(ds, "diverged"))
    with pytest.raises(ValueError, match="truth_steps must be shaped"):
        run(system, op, f, obs, ens, truth=truth, truth_steps=truth_steps[:-1], steps_per_cycle=spc)


def test_a_nan_observation_makes_the_particle_filter_diverge_not_ok():
    """One NaN in the observations turns the particle weights into NaN while the particles stay finite:
    the run must say ``diverged`` at that cycle, not ``ok`` with a plausible RMSE."""
    from masf.filters.particle import ParticleFilter
    from masf.operators import identity

    obs = torch.zeros(4, 3)
    obs[2, 1] = float("nan")
    ens = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    ds = run(Drift(), identity((3,), noise_std=1.0), ParticleFilter(), obs, ens, truth=torch.zeros(4, 3))
    assert ds.attrs["status"] == "diverged"
    assert ds.attrs["status_reason"] == "non-finite particle weights at cycle 2"
    assert np.isfinite(ds["rmse"].values[:2]).all() and np.isnan(ds["rmse"].values[2:]).all()


def test_context_add_time_starts_from_zero_and_accumulates():
    from masf.filters.base import Context

    ctx = Context(generator=torch.Generator())
    ctx.add_time("finetune", 0.25)
    ctx.add_time("finetune", 0.5)
    ctx.add_time("sampling", 2.0)
    assert ctx.timings == {"finetune": 0.75, "sampling": 2.0}
