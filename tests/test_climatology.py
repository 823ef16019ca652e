"""The climatology reference method: no assimilation, the floor of every table (masf.filters.climatology)."""

import math

import numpy as np
import pytest
import torch

from masf.assimilate import run
from masf.filters import Context, make_filter
from masf.operators import every_kth
from masf.rng import generator
from masf.systems import Lorenz96


def test_analysis_is_a_recentred_draw_of_the_climatology():
    g = torch.Generator().manual_seed(0)
    clim = torch.randn(5000, 6, generator=g, dtype=torch.float64) * torch.arange(1, 7) + 3.0
    f = make_filter("climatology")
    ctx = Context(generator=torch.Generator().manual_seed(1), climatology=clim)
    prior = torch.zeros(40, 6, dtype=torch.float64)
    post = f.analyse(prior, torch.zeros(6, dtype=torch.float64), None, ctx)
    assert post.shape == prior.shape and post.dtype == prior.dtype
    torch.testing.assert_close(post.mean(0), clim.mean(0), rtol=0, atol=1e-12)  # exactly its mean
    idx = torch.randint(0, len(clim), (40,), generator=torch.Generator().manual_seed(1))  # the same draws
    torch.testing.assert_close(post, clim[idx] - clim[idx].mean(0) + clim.mean(0), rtol=0, atol=1e-12)
    spread = post.std(0, correction=1)
    torch.testing.assert_close(spread, clim.std(0), rtol=0.35, atol=0)  # 40 draws: ~11 % standard error
    with pytest.raises(ValueError, match="needs climatology states"):
        f.analyse(prior, torch.zeros(6), None, Context(generator=torch.Generator()))
    with pytest.raises(ValueError, match="differ from the ensemble"):
        f.analyse(torch.zeros(4, 5), torch.zeros(5), None, ctx)


def test_a_run_scores_the_climatological_standard_deviation():
    """Over a long run the RMSE of the climatology method is the climatological std of the state (about
    3.6 for Lorenz-96 with F = 8: DAPPER's ``Climatology()`` gives 3.62) and spread/RMSE is about 1."""
    system = Lorenz96(dim=40)
    op = every_kth((40,), k=2, noise_std=1.0)
    clim = system.sample_climatology(2000, generator=generator(0, "pretrain_data"))
    x = system.sample_climatology(1, generator=generator(1, "truth"))
    truth = []
    for _ in range(300):
        x = system.step(x, 1)
        truth.append(x[0])
    truth = torch.stack(truth)
    obs = op.observe(truth, generator=generator(1, "obs_noise"))
    ens = system.sample_climatology(20, generator=generator(1, "ensemble"))
    ds = run(system, op, make_filter("climatology"), obs, ens, truth=truth, seed=1, climatology=clim)
    rmse, spread = float(ds.rmse.mean()), float(ds.spread.mean())
    assert rmse == pytest.approx(3.6, abs=0.25)
    assert spread / rmse == pytest.approx(1.0, abs=0.12)
    assert math.isfinite(float(ds.crps.mean())) and np.all(ds.rmse.values > 0)
