"""Seaborn figures of a sweep: accuracy over time and on average, calibration, cost, and 2-D fields.

All summary figures read ``metrics.nc`` only (see ``masf.aggregate``); the vorticity panel reads the
truth/observation file and one run file per method. Bands and error bars are over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr
from matplotlib import patheffects

from masf import tuning
from masf.io import atomic_path, read_dataset


def _save(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _frame(ds: xr.Dataset, names: Sequence[str]) -> pd.DataFrame:
    """Long table of ``names`` for the runs that exist (status > 0)."""
    df = ds[[*names, "status"]].to_dataframe().reset_index()
    return df[df["status"] > 0].drop(columns="status")


def rmse_over_time(ds: xr.Dataset, path: str | Path) -> None:
    """Analysis RMSE per cycle, one line per method (mean over seeds, band = min..max), a panel per operator."""
    df = _frame(ds[["rmse", "status"]], ["rmse"]).dropna(subset=["rmse"])
    grid = sns.relplot(
        data=df,
        x="time",
        y="rmse",
        hue="method",
        col="operator",
        kind="line",
        errorbar=("pi", 100),
        height=3.2,
        aspect=1.3,
        facet_kws={"sharey": False},
    )
    grid.set_axis_labels("analysis cycle", "RMSE")
    _save(grid.figure, path)


def rmse_mean(ds: xr.Dataset, path: str | Path) -> None:
    """Time-mean RMSE per operator and method; bars = mean over seeds, ticks = seeds' spread."""
    df = _frame(ds, ["rmse_mean"])
    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * max(1, ds.sizes["operator"]), 3.4))
    sns.barplot(data=df, x="operator", y="rmse_mean", hue="method", errorbar="sd", ax=ax)
    diverged = _frame(ds, ["rmse_mean"]).pipe(lambda d: d[~np.isfinite(d["rmse_mean"])])
    if len(diverged):
        ax.set_title(f"{len(diverged)} run(s) diverged (not shown)", fontsize=9)
    ax.set_ylabel("time-mean RMSE")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    _save(fig, path)


def spread_vs_rmse(ds: xr.Dataset, path: str | Path) -> None:
    """Time-mean spread against time-mean RMSE per run; the diagonal is perfect calibration."""
    df = _frame(ds, ["rmse_mean", "spread_mean"]).dropna()
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    sns.scatterplot(data=df, x="rmse_mean", y="spread_mean", hue="method", style="operator", s=60, ax=ax)
    finite = df[["rmse_mean", "spread_mean"]].to_numpy()
    top = float(np.nanmax(finite)) * 1.1 if finite.size else 1.0
    ax.plot([0, top], [0, top], color="grey", lw=1, ls="--", label="spread = RMSE")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="time-mean RMSE", ylabel="time-mean spread")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    _save(fig, path)


def wall_clock(ds: xr.Dataset, path: str | Path) -> None:
    """Seconds per stage and method (mean over operators and seeds): pretraining and the run's stages."""
    stages = {
        "pretrain": "wall_clock_pretrain_s",
        "forecast": "wall_clock_forecast_s",
        "finetune": "wall_clock_finetune_s",
        "sampling": "wall_clock_sampling_s",
        "analysis": "wall_clock_analysis_s",
        "whole run": "wall_clock_s",
    }
    df = _frame(ds, list(stages.values()))
    long = df.melt(
        id_vars=["method"], value_vars=list(stages.values()), var_name="stage", value_name="seconds"
    )
    long["stage"] = long["stage"].map({v: k for k, v in stages.items()})
    long = long.dropna()
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * max(1, ds.sizes["method"]), 3.4))
    sns.barplot(data=long, x="method", y="seconds", hue="stage", errorbar="sd", ax=ax)
    if len(long) and long["seconds"].max() > 0:
        ax.set_yscale("log")
    ax.set_ylabel("wall-clock (s)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    _save(fig, path)


def summary_figures(metrics: str | Path, experiment: str, outdir: str | Path) -> list[Path]:
    """Write rmse_time, rmse_mean, spread_rmse and wall_clock PNGs of ``experiment`` into ``outdir``."""
    ds = read_dataset(metrics)
    if experiment not in ds.experiment.values:
        allowed = ", ".join(map(str, ds.experiment.values))
        raise ValueError(f"experiment {experiment!r} is not in {metrics}; allowed: {allowed}")
    # ("method" is also a keyword of .sel, so selections are passed as dicts)
    sub = ds.sel({"experiment": experiment})
    ran = sub["status"] > 0
    sub = sub.sel({"operator": [o for o in sub.operator.values if bool(ran.sel({"operator": o}).any())]})
    sub = sub.sel({"method": [m for m in sub.method.values if bool(ran.sel({"method": m}).any())]})
    out = Path(outdir)
    paths = []
    for name, plot in (
        ("rmse_time", rmse_over_time),
        ("rmse_mean", rmse_mean),
        ("spread_rmse", spread_vs_rmse),
        ("wall_clock", wall_clock),
    ):
        path = out / f"{name}.png"
        with sns.axes_style("whitegrid"):
            plot(sub, path)
        paths.append(path)
    return paths


# a white halo keeps text readable on dark and light heatmap cells alike
_OUTLINE = [patheffects.withStroke(linewidth=2.5, foreground="white")]


def _tuning_panel(ax: plt.Axes, chosen: dict) -> None:
    """One tuned method's surface: a line over one tuned key, a heatmap over two, bars beyond that. The
    selected variant is marked; a variant that diverged on a tuning seed is marked "div"."""
    rows = chosen["variants"]
    keys = list(rows[0]["values"])
    score = np.array([np.nan if r["score"] is None else r["score"] for r in rows], dtype=float)
    labels = [tuning.variant_label(r["variant"]) for r in rows]
    best = next(i for i, r in enumerate(rows) if r["variant"] == chosen["selected"])
    diverged = [r["diverged"] > 0 for r in rows]
    metric = chosen["metric"]
    if len(keys) == 2:
        xs = list(dict.fromkeys(r["values"][keys[1]] for r in rows))
        ys = list(dict.fromkeys(r["values"][keys[0]] for r in rows))
        table = np.full((len(ys), len(xs)), np.nan)
        for r, value in zip(rows, score, strict=True):
            table[ys.index(r["values"][keys[0]]), xs.index(r["values"][keys[1]])] = value
        image = ax.imshow(table, cmap="viridis_r" if chosen["better"] == "min" else "viridis", origin="lower")
        plt.colorbar(image, ax=ax, label=metric, shrink=0.8)
        for r, value, bad in zip(rows, score, diverged, strict=True):
            i, j = ys.index(r["values"][keys[0]]), xs.index(r["values"][keys[1]])
            text = "div" if bad else f"{value:.3g}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, path_effects=_OUTLINE)
        i, j = ys.index(rows[best]["values"][keys[0]]), xs.index(rows[best]["values"][keys[1]])
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_yticks(range(len(ys)), [str(y) for y in ys])
        ax.set(xlabel=keys[1], ylabel=keys[0])
        return
    positions = np.arange(len(rows))
    for r, x in zip(rows, positions, strict=True):  # each tuning seed's value
        seeds = [v for v in r["per_seed"].values() if v is not None]
        ax.plot([x] * len(seeds), seeds, "o", color="grey", ms=3, alpha=0.6)
    ax.plot(positions, score, "-o", color="C0", label="mean over tuning seeds")
    ax.plot([best], [score[best]], "*", color="red", ms=14, label="selected")
    for x, bad in zip(positions, diverged, strict=True):
        if bad:
            ax.annotate(
                "div", (x, 0), xycoords=("data", "axes fraction"), ha="center", fontsize=7, color="red"
            )
    names = [str(r["values"][keys[0]]) for r in rows] if len(keys) == 1 else labels
    ax.set_xticks(positions, names, rotation=0 if len(keys) == 1 else 60, fontsize=7)
    ax.set(xlabel=keys[0] if len(keys) == 1 else "variant", ylabel=metric)
    ax.legend(fontsize=7)


def tuning_surface(selections: Sequence[str | Path], out: str | Path) -> None:
    """One panel per selection file of ``masf tune`` (an operator and tuned method): each variant's
    score on the tuning seeds (docs/tuning.md)."""
    import json

    chosen = [json.loads(Path(p).read_text()) for p in selections]
    if not chosen:
        raise ValueError("tuning_surface: no selection files")
    cols = min(3, len(chosen))
    rows = -(-len(chosen) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.4 * cols, 3.6 * rows), squeeze=False, layout="constrained"
    )
    for ax, c in zip(axes.flat, chosen, strict=False):
        _tuning_panel(ax, c)
        seeds = ", ".join(map(str, c["seeds"]))
        ax.set_title(
            f"{c['operator']} / {c['method']}: {tuning.variant_label(c['selected'])}\n(tuning seeds {seeds})",
            fontsize=9,
        )
    for ax in list(axes.flat)[len(chosen) :]:
        ax.axis("off")
    fig.suptitle(f"tuning surface, experiment {chosen[0]['experiment']}", fontsize=10)
    _save(fig, out)


def vorticity(field: np.ndarray) -> np.ndarray:
    """Vorticity ∂v/∂x − ∂u/∂y of velocity fields ``(..., 2, ny, nx)`` by periodic central differences
    with unit grid spacing (for pictures only)."""
    u, v = field[..., 0, :, :], field[..., 1, :, :]
    dv_dx = (np.roll(v, -1, axis=-1) - np.roll(v, 1, axis=-1)) / 2.0
    du_dy = (np.roll(u, -1, axis=-2) - np.roll(u, 1, axis=-2)) / 2.0
    return dv_dx - du_dy


def vorticity_panel(
    data: str | Path, operator: str, runs: Sequence[str | Path], out: str | Path, *, cycles: int = 3
) -> None:
    """Rows: truth vorticity, the observation (u channel), each method's mean vorticity; columns: cycles."""
    truth_ds = read_dataset(data)
    obs_name = f"obs_{operator}"
    if obs_name not in truth_ds:
        raise ValueError(f"{data} has no variable {obs_name!r} (operator {operator!r})")
    truth = truth_ds["truth"].values
    if truth.ndim != 4:
        raise ValueError(f"vorticity panels need 2-D velocity fields (time, 2, ny, nx), got {truth.shape}")
    n_time = truth.shape[0]
    picks = sorted({round(i * (n_time - 1) / max(1, cycles - 1)) for i in range(cycles)})
    rows: list[tuple[str, np.ndarray, str]] = [
        ("truth", vorticity(truth[picks]), "RdBu_r"),
        ("observation (u)", truth_ds[obs_name].values[picks, 0], "viridis"),
    ]
    for run in runs:
        ds = read_dataset(run)
        label = str(ds.attrs.get("method", Path(run).parent.name))
        if ds.attrs.get("status") == "diverged":
            label += " (diverged)"
        rows.append((label, vorticity(ds["mean"].values[picks]), "RdBu_r"))
    limit = float(np.nanmax(np.abs(rows[0][1]))) or 1.0
    fig, axes = plt.subplots(
        len(rows),
        len(picks),
        figsize=(2.2 * len(picks), 2.2 * len(rows)),
        squeeze=False,
        layout="constrained",
    )
    for r, (label, fields, cmap) in enumerate(rows):
        for c, t in enumerate(picks):
            ax = axes[r][c]
            kw = {"vmin": -limit, "vmax": limit} if cmap == "RdBu_r" else {}
            ax.imshow(fields[c], cmap=cmap, origin="lower", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"cycle {t + 1}", fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(f"vorticity, operator {operator}", fontsize=10)
    if not math.isfinite(limit):
        raise ValueError("the truth vorticity is not finite")
    _save(fig, out)
