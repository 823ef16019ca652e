"""Collect run files into ``results/metrics.nc`` and a per-method summary table.

``metrics.nc`` has dims ``experiment, operator, method, seed, time`` (``time`` = analysis cycle 1..K; NaN
where a combination is not in the sweep or a run stopped early). A tuned method appears under its own
name with the evaluation runs of its selected variant, whose values are in ``variant``. Time means are over all cycles of a
run and are NaN for a diverged run (its later cycles do not exist), so a filter that blew up never looks
good. Wall-clock seconds come from the Snakemake benchmark files when they exist (the source of truth),
otherwise from the run file's own timer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import pandas as pd
import xarray as xr

from masf import config as mc
from masf import tuning
from masf.io import corrupt_netcdf

# Per-cycle variables of a run file copied into metrics.nc: name -> (long_name, units).
PER_CYCLE = {
    "rmse": ("analysis RMSE of the ensemble mean", "state units"),
    "spread": ("analysis ensemble spread (root mean variance)", "state units"),
    "crps": ("analysis ensemble CRPS", "state units"),
    "ssim": ("SSIM of the vorticity of the ensemble mean and the truth", "1"),
}
STAGES = ("forecast", "analysis", "finetune", "sampling")
STATUS = {"not_run": 0, "ok": 1, "diverged": 2}


def benchmark_seconds(path: str | Path) -> float:
    """Wall-clock seconds (column ``s``) of a Snakemake benchmark TSV, NaN if absent or unreadable."""
    try:
        header, first = Path(path).read_text().splitlines()[:2]
        return float(first.split("\t")[header.split("\t").index("s")])
    except (OSError, ValueError, IndexError):
        return math.nan


RUN_VARIABLES = (*PER_CYCLE, "rmse_lead")


def read_run(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The per-cycle metric variables (``RUN_VARIABLES`` present in the file, as float arrays) and the
    attributes of one run file; the fields (``mean``, members) are never read, so memory stays small.

    ``FileNotFoundError`` when it is missing, ``CorruptFileError`` when it cannot be read.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such run file: {p}")
    try:
        with netCDF4.Dataset(p) as nc:
            nc.set_auto_mask(False)
            attrs = {k: nc.getncattr(k) for k in nc.ncattrs()}
            values = {
                k: np.asarray(nc.variables[k][:], dtype=float) for k in RUN_VARIABLES if k in nc.variables
            }
    except (OSError, RuntimeError, ValueError) as err:
        raise corrupt_netcdf(p, err) from err
    return values, attrs


def _time_mean(values: np.ndarray, status: str) -> float:
    if status != "ok" or values.size == 0 or not np.isfinite(values).any():
        return math.nan
    return float(np.nanmean(values))


def frames_rmse(ds: Mapping[str, Any], status: str) -> float:
    """The MASF paper's RMSE over every frame of a run (docs/metrics.md).

    sqrt of the mean square error of the ensemble mean over the frames: every analysis, and the forecast
    steps between two analyses (``rmse_lead`` of cycles 2..K; the forecast before the first analysis is
    left out, as the paper starts at an analysis). With one model step per cycle the frames are the
    analyses. NaN for a diverged run or a run without truth. ``ds``: a run dataset or the arrays of
    :func:`read_run`.
    """
    if status != "ok" or "rmse" not in ds:
        return math.nan
    squares = [np.asarray(ds["rmse"], dtype=float) ** 2]
    if "rmse_lead" in ds:
        squares.append(np.asarray(ds["rmse_lead"], dtype=float)[1:].ravel() ** 2)
    values = np.concatenate(squares)
    return float(np.sqrt(values.mean())) if np.isfinite(values).all() and values.size else math.nan


def run_metric(arrays: Mapping[str, np.ndarray], status: str, metric: str) -> float:
    """One run's value of a metrics.nc time-mean (``rmse_mean``, ``rmse_frames``, ``crps_mean``,
    ``ssim_mean``; NaN for a diverged run or a metric the run lacks), as :func:`aggregate` computes it."""
    if metric == "rmse_frames":
        return frames_rmse(arrays, status)
    name = metric.removesuffix("_mean")
    return _time_mean(arrays[name], status) if name in arrays else math.nan


def selection(spec: Mapping[str, Any], jobs: int = 1) -> dict[str, Any]:
    """The selection of a tuned method (docs/tuning.md) from its tuning run files: every variant's
    metric on each tuning seed, its score (:func:`masf.tuning.score`) and the chosen variant
    (:func:`masf.tuning.select`). ``spec``: :func:`masf.config.tune_spec`. NaN is written as null."""
    names, metric, seeds = spec["names"], spec["metric"], [int(s) for s in spec["seeds"]]
    keys = [(v, s) for v in spec["variants"] for s in seeds]
    paths = [mc.run_path({**names, "variant": v, "seed": s}) for v, s in keys]
    loaded = read_runs(paths, jobs)
    statuses = [str(attrs.get("status", "ok")) for _, attrs in loaded]
    per_run = {
        key: (run_metric(arrays, state, metric), state)
        for key, (arrays, _), state in zip(keys, loaded, statuses, strict=True)
    }
    scores = {}
    for v in spec["variants"]:
        values, statuses = zip(*(per_run[(v, s)] for s in seeds), strict=True)
        scores[v] = tuning.score(values, statuses, metric)
    chosen = tuning.select(scores, metric)

    def finite(x: float) -> float | None:
        return x if math.isfinite(x) else None

    return {
        **names,
        "metric": metric,
        "better": tuning.METRICS[metric],
        "seeds": seeds,
        "selected": chosen,
        "values": spec["variants"][chosen],
        "variants": [
            {
                "variant": v,
                "values": spec["variants"][v],
                "score": finite(scores[v]["score"]),
                "diverged": scores[v]["diverged"],
                "per_seed": {str(s): finite(per_run[(v, s)][0]) for s in seeds},
            }
            for v in spec["variants"]
        ],
    }


def read_runs(paths: Sequence[str], jobs: int = 1) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """:func:`read_run` of every path, in order; ``jobs`` > 1 reads in that many forked processes (opening
    a NetCDF/HDF5 file costs ~5 ms, which dominates the aggregation of a large sweep)."""
    if jobs <= 1 or len(paths) < 2 * jobs:
        return [read_run(p) for p in paths]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        return pool.map(read_run, paths, chunksize=max(1, min(256, len(paths) // (8 * jobs))))


def aggregate(runs: Sequence[dict[str, Any]], jobs: int = 1) -> xr.Dataset:
    """``metrics.nc`` content from the run files of ``runs`` (dicts of experiment/operator/method/seed),
    read by ``jobs`` processes."""
    if not runs:
        raise ValueError("aggregate: the list of runs is empty")
    axes = {k: list(dict.fromkeys(r[k] for r in runs)) for k in ("experiment", "operator", "method")}
    axes["seed"] = sorted({int(r["seed"]) for r in runs})
    loaded = read_runs([mc.run_path(r) for r in runs], jobs)
    n_time = max(v["rmse"].size if "rmse" in v else 0 for v, _ in loaded)
    shape = tuple(len(axes[k]) for k in ("experiment", "operator", "method", "seed"))
    per_cycle = {k: np.full((*shape, n_time), np.nan) for k in PER_CYCLE}
    scalars = {
        k: np.full(shape, np.nan)
        for k in (
            "rmse_mean",
            "rmse_frames",
            "spread_mean",
            "crps_mean",
            "ssim_mean",
            "wall_clock_s",
            "wall_clock_pretrain_s",
            *(f"wall_clock_{s}_s" for s in STAGES),
        )
    }
    status = np.zeros(shape, dtype=np.int8)
    # a tuned method's selected values, e.g. "inflation=1.1, radius=4.0"
    variant = np.full(shape[:3], "", dtype=object)
    spatial = False
    position = {
        k: {v: i for i, v in enumerate(axes[k])} for k in ("experiment", "operator", "method", "seed")
    }
    for r, (arrays, attrs) in zip(runs, loaded, strict=True):
        idx = (
            position["experiment"][r["experiment"]],
            position["operator"][r["operator"]],
            position["method"][r["method"]],
            position["seed"][int(r["seed"])],
        )
        under = r.get("variant") or r["method"]  # the name its files are under
        variant[idx[:3]] = tuning.variant_label(under)
        state = str(attrs.get("status", "ok"))
        status[idx] = STATUS.get(state, STATUS["diverged"])
        for name in PER_CYCLE:
            if name in arrays:
                values = arrays[name]
                per_cycle[name][idx][: values.size] = values
                scalars[f"{name}_mean"][idx] = _time_mean(values, state)
        scalars["rmse_frames"][idx] = frames_rmse(arrays, state)
        spatial = spatial or "ssim" in arrays
        for stage in STAGES:
            scalars[f"wall_clock_{stage}_s"][idx] = float(attrs.get(f"wall_clock_{stage}_s", math.nan))
        bench = benchmark_seconds(mc.BENCHMARK.format(stage="assimilate", name=mc.run_name(r)))
        scalars["wall_clock_s"][idx] = (
            bench if math.isfinite(bench) else float(attrs.get("wall_clock_total_s", math.nan))
        )
        scalars["wall_clock_pretrain_s"][idx] = benchmark_seconds(
            mc.BENCHMARK.format(
                stage="pretrain",
                name="{experiment}/{operator}/{method}".format(
                    experiment=r["experiment"],
                    operator=r.get("checkpoint_operator") or r["operator"],
                    method=r.get("checkpoint_method") or under,
                ),
            )
        )

    dims = ("experiment", "operator", "method", "seed")
    data: dict[str, Any] = {}
    for name, (long_name, units) in PER_CYCLE.items():
        if name == "ssim" and not spatial:
            continue
        data[name] = ((*dims, "time"), per_cycle[name], {"long_name": long_name, "units": units})
    described = {
        "rmse_mean": ("time-mean analysis RMSE (NaN if diverged)", "state units"),
        "rmse_frames": (
            "RMSE over every frame: the analyses and the forecast steps between them (the MASF paper's metric; NaN if diverged)",
            "state units",
        ),
        "spread_mean": ("time-mean analysis spread (NaN if diverged)", "state units"),
        "crps_mean": ("time-mean analysis CRPS (NaN if diverged)", "state units"),
        "ssim_mean": ("time-mean vorticity SSIM, 2-D systems only (NaN if diverged)", "1"),
        "wall_clock_s": ("wall-clock of the assimilate job (Snakemake benchmark)", "s"),
        "wall_clock_pretrain_s": (
            "wall-clock of the pretraining job, shared by all seeds and by methods with the same checkpoint",
            "s",
        ),
    }
    for stage in STAGES:
        described[f"wall_clock_{stage}_s"] = (f"wall-clock of the {stage} stage inside the run", "s")
    for name, (long_name, units) in described.items():
        if name == "ssim_mean" and not spatial:
            continue
        data[name] = (dims, scalars[name], {"long_name": long_name, "units": units})
    with np.errstate(divide="ignore", invalid="ignore"):
        skill = scalars["spread_mean"] / scalars["rmse_mean"]
    data["spread_skill"] = (dims, skill, {"long_name": "spread / RMSE (1 = calibrated)", "units": "1"})
    data["variant"] = (
        dims[:3],
        variant.astype(str),
        {
            "long_name": "hyper-parameters of a tuned method's selected variant ('' = not tuned; docs/tuning.md)"
        },
    )
    data["status"] = (
        dims,
        status,
        {
            "long_name": "run status",
            "flag_values": np.array(list(STATUS.values()), dtype=np.int8),
            "flag_meanings": " ".join(STATUS),
        },
    )
    coords = {
        "experiment": axes["experiment"],
        "operator": axes["operator"],
        "method": axes["method"],
        "seed": np.array(axes["seed"], dtype=np.int64),
        "time": ("time", np.arange(1, n_time + 1), {"long_name": "analysis cycle", "units": "1"}),
    }
    return xr.Dataset(data, coords=coords, attrs={"title": "masf sweep metrics", "Conventions": "CF-1.8"})


def summary_table(ds: xr.Dataset) -> pd.DataFrame:
    """One row per (experiment, operator, method) in the sweep: means and standard deviations over seeds."""
    rows = []
    for e in ds.experiment.values:
        for o in ds.operator.values:
            for m in ds.method.values:
                sel = ds.sel({"experiment": e, "operator": o, "method": m})
                status = sel["status"].values
                if not (status > 0).any():
                    continue
                row: dict[str, Any] = {
                    "experiment": e,
                    "operator": o,
                    "method": m,
                    "variant": str(sel["variant"].values) if "variant" in ds else "",
                    "seeds": int((status > 0).sum()),
                    "diverged": int((status == STATUS["diverged"]).sum()),
                }
                for name in (
                    "rmse_mean",
                    "rmse_frames",
                    "spread_skill",
                    "crps_mean",
                    "ssim_mean",
                    "wall_clock_s",
                ):
                    if name not in ds:
                        continue
                    values = sel[name].values[status > 0]
                    finite = values[np.isfinite(values)]
                    row[name] = float(finite.mean()) if finite.size else math.nan
                    if name == "rmse_mean":
                        row["rmse_std"] = float(finite.std()) if finite.size else math.nan
                rows.append(row)
    return pd.DataFrame(rows)
