"""Tables, rank histograms and target checks from one finished accuracy sweep (issue 7, item 1).

Reads the Snakemake working directory of a sweep of this folder (its ``results/metrics.nc`` and run
files) and writes, into ``--out``:

    metrics.nc, summary.csv   copied from the sweep (the pipeline's own outputs)
    table.md       per experiment and operator, one row per method: time-mean analysis RMSE (mean ± std
                   over seeds), spread/RMSE, CRPS, SSIM (2-D), diverged runs, wall-clock per run; time
                   means skip the first ``--burn-in`` cycles; the lowest RMSE is in bold
    targets.json   the issue's targets per operator (``--sparse`` lists the sparse operators)
    rank_hist.png  rank histograms of the truth within the analysis ensemble (1-D systems), summed over
                   seeds and the cycles after burn-in
    figures/       the sweep's figures (results/figures/<experiment>/*.png)
    pretraining.json, pretraining.png   per-epoch losses of every pretrained network, with its minutes

    .venv/bin/python benchmarks/accuracy/summarize.py /tmp/acc/l96 --out benchmarks/accuracy/l96 \\
        --burn-in 20 --sparse every4 every2
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

SPREAD_TARGET = (0.7, 1.3)


def time_mean(values: np.ndarray, burn_in: int) -> np.ndarray:
    """Mean over the time axis (last) after ``burn_in`` cycles, NaN where nothing is finite."""
    tail = values[..., burn_in:]
    with np.errstate(invalid="ignore"):
        count = np.isfinite(tail).sum(-1)
        total = np.nansum(tail, -1)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def method_rows(
    ds: xr.Dataset, experiment: str, operator: str, burn_in: int, kept: float | None = None
) -> list[dict]:
    """One dict per method that ran on (experiment, operator), with seed means of the time means; with
    ``kept``, also the seed median and the number of seeds whose time-mean RMSE is below ``kept``."""
    rows = []
    for method in ds.method.values:
        sel = ds.sel({"experiment": experiment, "operator": operator, "method": method})
        status = sel.status.values
        ran = status > 0
        if not ran.any():
            continue
        ok = status == 1
        rmse = time_mean(sel.rmse.values, burn_in)[ok]
        spread = time_mean(sel.spread.values, burn_in)[ok]
        crps = time_mean(sel.crps.values, burn_in)[ok]
        row = {
            "method": str(method),
            "seeds": int(ran.sum()),
            "diverged": int((status == 2).sum()),
            "rmse": float(rmse.mean()) if rmse.size else math.nan,
            "rmse_std": float(rmse.std()) if rmse.size else math.nan,
            "rmse_seeds": [round(float(v), 4) for v in rmse],
            "spread_rmse": float((spread / rmse).mean()) if rmse.size else math.nan,
            "crps": float(crps.mean()) if crps.size else math.nan,
            "wall_clock_s": float(np.nanmean(sel.wall_clock_s.values[ran])),
        }
        if kept is not None:  # a diverged run keeps no track
            row["rmse_median"] = float(np.median(rmse)) if rmse.size else math.nan
            row["kept"] = int((rmse < kept).sum())
        if "rmse_frames" in ds:  # the paper's metric over every frame; no burn-in (docs/metrics.md)
            frames = sel.rmse_frames.values[ok]
            row["rmse_frames"] = float(frames.mean()) if frames.size else math.nan
        if "ssim" in ds:
            ssim = time_mean(sel.ssim.values, burn_in)[ok]
            row["ssim"] = float(ssim.mean()) if ssim.size else math.nan
        rows.append(row)
    return rows


def fmt(value: float, digits: int = 3) -> str:
    return "–" if not math.isfinite(value) else f"{value:.{digits}f}"


def markdown_table(rows: list[dict], spatial: bool) -> str:
    best = min((r["rmse"] for r in rows if math.isfinite(r["rmse"])), default=math.nan)
    frames = any("rmse_frames" in r for r in rows)
    kept = any("kept" in r for r in rows)
    head = "| method | RMSE (± std over seeds) |"
    head += " median RMSE | kept |" if kept else ""
    head += " spread/RMSE | CRPS |"
    head += " RMSE, every frame |" if frames else ""
    head += " SSIM |" if spatial else ""
    head += " diverged | s per run |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        rmse = f"{fmt(r['rmse'])} ± {fmt(r['rmse_std'])}"
        if math.isfinite(r["rmse"]) and r["rmse"] == best:
            rmse = f"**{rmse}**"
        cells = [r["method"], rmse]
        if kept:
            cells += [fmt(r["rmse_median"]), f"{r['kept']}/{r['seeds']}"]
        cells += [fmt(r["spread_rmse"], 2), fmt(r["crps"])]
        if frames:
            cells.append(fmt(r.get("rmse_frames", math.nan)))
        if spatial:
            cells.append(fmt(r["ssim"]))
        cells += [f"{r['diverged']}/{r['seeds']}", f"{r['wall_clock_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(rows: list[dict], sparse: bool) -> dict:
    """The issue's targets on one operator: a MASF sampler has the lowest RMSE (sparse operators) and
    MASF-bridge's spread/RMSE lies in [0.7, 1.3]."""
    finite = [r for r in rows if math.isfinite(r["rmse"])]
    best = min(finite, key=lambda r: r["rmse"]) if finite else None
    out: dict = {"lowest_rmse": best["method"] if best else None}
    masf = [r for r in finite if r["method"].startswith("masf")]
    if sparse and best is not None:
        best_masf = min(masf, key=lambda r: r["rmse"]) if masf else None
        out["masf_lowest_rmse"] = {
            "met": best["method"].startswith("masf"),
            "best": [best["method"], round(best["rmse"], 4)],
            "best_masf": [best_masf["method"], round(best_masf["rmse"], 4)] if best_masf else None,
        }
    bridge = next((r for r in rows if r["method"] == "masf_bridge"), None)
    if bridge is not None:
        ratio = bridge["spread_rmse"]
        out["bridge_spread_rmse"] = {
            "value": round(ratio, 3) if math.isfinite(ratio) else None,
            "met": bool(math.isfinite(ratio) and SPREAD_TARGET[0] <= ratio <= SPREAD_TARGET[1]),
        }
    return out


def rank_histograms(results: Path, ds: xr.Dataset, burn_in: int, out: Path) -> bool:
    """Rank histograms of every 1-D (experiment, operator, method), summed over seeds and cycles."""
    panels = []
    for e in ds.experiment.values:
        for o in ds.operator.values:
            for m in ds.method.values:
                counts = None
                for s in ds.seed.values:
                    path = results / "runs" / str(e) / str(o) / str(m) / f"seed{int(s)}.nc"
                    if not path.exists():
                        continue
                    with xr.open_dataset(path) as run:
                        if "rank_hist" not in run or "ssim" in run:
                            continue
                        h = run.rank_hist.values[burn_in:].sum(0)
                    counts = h if counts is None else counts + h
                if counts is not None and counts.sum() > 0:
                    panels.append((f"{e}/{o}\n{m}", counts))
    if not panels:
        return False
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (title, counts) in zip(axes.flat, panels, strict=False):
        freq = counts / counts.sum()
        ax.bar(np.arange(freq.size), freq, width=1.0, color="tab:blue")
        ax.axhline(1.0 / freq.size, color="k", lw=0.8, ls="--")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([0, freq.size - 1])
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        "rank of the truth in the analysis ensemble (flat = calibrated, U = too narrow, dome = too wide)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def pretraining_curves(results: Path, out: Path) -> dict:
    """Per-epoch training and validation losses of every pretrained checkpoint of the sweep
    (``results/checkpoints/<experiment>/<operator>/<method>.pt``, the loop's state in ``extra.train``)
    with the job's wall-clock (its Snakemake benchmark file), into ``pretraining.json`` and
    ``pretraining.png``. ``last_quarter_drop``: the relative fall of the validation loss over the last
    quarter of the epochs (a network near its plateau has a small one)."""
    from masf.aggregate import benchmark_seconds
    from masf.train.checkpoint import read_payload  # only here: the tables need no torch

    curves = {}
    for ckpt in sorted((results / "checkpoints").rglob("*.pt")):
        name = str(ckpt.relative_to(results / "checkpoints").with_suffix(""))
        train = read_payload(ckpt, map_location="cpu")["extra"]["train"]
        val = [float(v) for v in train["val_loss"]]
        seconds = benchmark_seconds(results / "benchmarks" / "pretrain" / f"{name}.tsv")
        k = max(1, len(val) // 4)
        curves[name] = {
            "train_loss": [float(v) for v in train["train_loss"]],
            "val_loss": val,
            "best_epoch": train["best_epoch"],
            "hyper": train["hyper"],
            "seconds": seconds,
            "last_quarter_drop": (val[-k - 1] - val[-1]) / val[-k - 1] if len(val) > k else math.nan,
        }
    if not curves:
        return curves
    (out / "pretraining.json").write_text(json.dumps(curves, indent=1) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in curves.items():
        epochs = np.arange(1, len(c["val_loss"]) + 1)
        ax.semilogy(epochs, c["val_loss"], marker="o", ms=3, label=f"{name} ({c['seconds'] / 60:.0f} min)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss (each method's own loss)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "pretraining.png", dpi=120)
    plt.close(fig)
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workdir", type=Path, help="the sweep's Snakemake working directory")
    parser.add_argument("--out", type=Path, required=True, help="folder for the committed results")
    parser.add_argument("--burn-in", type=int, default=0, help="cycles left out of the time means")
    parser.add_argument("--sparse", nargs="*", default=[], help="operators where MASF should win")
    parser.add_argument(
        "--kept",
        type=float,
        default=None,
        metavar="RMSE",
        help="add the seed median and the seeds whose time-mean RMSE stays below RMSE (kept tracks)",
    )
    args = parser.parse_args()
    results = args.workdir / "results"
    metrics = results / "metrics.nc"
    if not metrics.exists():
        raise SystemExit(f"summarize: {metrics} is missing; run the sweep first")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.nc", "summary.csv"):
        if (results / name).exists():
            shutil.copy2(results / name, args.out / name)
    ds = xr.load_dataset(metrics)
    spatial = "ssim" in ds
    sections, checks = [], {}
    for e in ds.experiment.values:
        for o in ds.operator.values:
            rows = method_rows(ds, str(e), str(o), args.burn_in, args.kept)
            if not rows:
                continue
            n_cycles = int(ds.sizes["time"])
            note = f"; kept: time-mean RMSE < {args.kept}" if args.kept is not None else ""
            sections.append(
                f"### {e} / {o}\n\nTime means over cycles {args.burn_in + 1}–{n_cycles}{note}.\n\n"
                + markdown_table(rows, spatial)
            )
            checks[f"{e}/{o}"] = {"targets": targets(rows, str(o) in args.sparse), "methods": rows}
    (args.out / "table.md").write_text("\n\n".join(sections) + "\n")
    (args.out / "targets.json").write_text(json.dumps(checks, indent=1) + "\n")
    if not spatial:
        rank_histograms(results, ds, args.burn_in, args.out / "rank_hist.png")
    figures = args.out / "figures"
    for png in sorted((results / "figures").rglob("*.png")):
        target = figures / png.relative_to(results / "figures")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(png, target)
    for name, c in pretraining_curves(results, args.out).items():
        print(
            f"pretrain {name}: val {c['val_loss'][0]:.4g} -> {c['val_loss'][-1]:.4g} in "
            f"{len(c['val_loss'])} epochs, {c['seconds'] / 60:.1f} min, "
            f"last-quarter drop {100 * c['last_quarter_drop']:.1f} %"
        )
    print((args.out / "table.md").read_text())
    for key, c in checks.items():
        print(key, json.dumps(c["targets"]))


if __name__ == "__main__":
    main()
