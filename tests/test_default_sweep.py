"""The default sweep (config/sweep.yaml) end to end, as a new user runs it: every run finishes, every
score-based method beats the climatology and the best method halves its RMSE. A file of its own so that
pytest-xdist (one file per worker) runs it beside the other pipeline tests."""

from __future__ import annotations

import time

import numpy as np
import pytest
import xarray as xr
from test_pipeline import REPO, snakemake

from masf import config as mc

# config/sweep.yaml (what `make sweep` runs) end to end, and the ordering it exists to show: on every
# (experiment, operator), every score-based method beats the climatology (no assimilation) and the best
# method reaches half of climatology's RMSE (median over the seeds of the time-mean analysis RMSE).


@pytest.mark.slow
def test_default_sweep_ranks_the_methods(tmp_path):
    start = time.perf_counter()
    done = snakemake(
        tmp_path, "--cores", "2", "--configfile", str(REPO / "config" / "sweep.yaml"), timeout=1500
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-4000:]
    print(f"config/sweep.yaml end to end: {seconds:.0f} s")
    cfg = mc.load_validated(REPO / "config" / "sweep.yaml")
    pairs = {(r["experiment"], r["operator"]) for r in mc.runs(cfg)}
    with xr.open_dataset(tmp_path / "results" / "metrics.nc") as ds:
        assert (ds["status"].values[np.isfinite(ds["rmse_mean"].values)] == 1).all()
        for experiment, operator in sorted(pairs):
            methods = mc.methods_for(cfg, experiment, operator)
            assert "climatology" in methods, experiment
            med = {
                m: float(
                    np.median(
                        ds["rmse_mean"].sel({"experiment": experiment, "operator": operator, "method": m})
                    )
                )
                for m in methods
            }
            floor = med["climatology"]
            for m in methods:
                assert np.isfinite(med[m]), (experiment, operator, m)
                if mc.is_score_based(cfg, m):
                    assert med[m] < floor, (
                        f"{experiment}/{operator}: {m} {med[m]:.3f} >= climatology {floor:.3f}"
                    )
            best = min(med, key=med.get)
            assert med[best] <= 0.5 * floor, (
                f"{experiment}/{operator}: best {best} {med[best]:.3f} > 0.5 x {floor:.3f}"
            )
