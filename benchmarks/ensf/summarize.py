"""Summarize the EnSF benchmark sweep: per method, the median over seeds of the time-mean analysis RMSE
(every analysis, as the EnSF authors average, and after a burn-in), its range, spread/RMSE, the fraction
of seeds that keep track, and seconds per analysis. Writes ``table.md`` and ``results.json``.

    .venv/bin/python benchmarks/ensf/summarize.py /tmp/ensf --out benchmarks/ensf --burn-in 50
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import xarray as xr

# The authors' tuning grids (zezhongzhang/EnSF, fine_tune_*/results): mean analysis RMSE over all 150
# analyses of 10 runs, initial ensemble N(0, I); and EnSF over the last 50 analyses.
PUBLISHED = {
    "LETKF, inflation 1.1, r_loc 4 (all analyses)": 0.231,
    "EnSF paired, eps_a 0.5, eps_b 0.025, 200 steps (all analyses)": 0.292,
    "EnSF paired, same (last 50 analyses)": 0.193,
}


def summarize(workdir: Path, burn_in: int, keep: float) -> list[dict]:
    rows = []
    root = workdir / "results" / "runs"
    for method_dir in sorted(root.glob("*/*/*")):
        runs = sorted(method_dir.glob("seed*.nc"))
        if not runs:
            continue
        all_rmse, late_rmse, ratio, per_analysis, diverged = [], [], [], [], 0
        for path in runs:
            with xr.open_dataset(path) as ds:
                rmse = np.asarray(ds.rmse, dtype=float)
                spread = np.asarray(ds.spread, dtype=float)
                cycles = rmse.shape[0]
                diverged += ds.attrs.get("status") != "ok"
                all_rmse.append(float(np.nanmean(rmse)))
                late_rmse.append(float(np.nanmean(rmse[burn_in:])))
                ratio.append(float(np.nanmean(spread[burn_in:]) / np.nanmean(rmse[burn_in:])))
                per_analysis.append(float(ds.attrs.get("wall_clock_analysis_s", np.nan)) / cycles)
        rows.append(
            {
                "experiment": method_dir.parent.parent.name,
                "operator": method_dir.parent.name,
                "method": method_dir.name,
                "seeds": len(runs),
                "rmse_all_median": statistics.median(all_rmse),
                "rmse_median": statistics.median(late_rmse),
                "rmse_min": min(late_rmse),
                "rmse_max": max(late_rmse),
                "spread_rmse_median": statistics.median(ratio),
                "kept_track": sum(r < keep for r in late_rmse) / len(runs),
                "diverged": diverged,
                "seconds_per_analysis": statistics.median(per_analysis),
                "rmse_per_seed": late_rmse,
            }
        )
    return rows


def table(rows: list[dict], burn_in: int, keep: float) -> str:
    lines = [
        f"| method | seeds | RMSE, all analyses (median) | RMSE after {burn_in} (median [min, max]) "
        f"| spread/RMSE | kept track (RMSE < {keep}) | s / analysis |",
        "|---|---|---|---|---|---|---|",
    ]
    best = min(r["rmse_median"] for r in rows)
    for r in sorted(rows, key=lambda r: r["rmse_median"]):
        late = f"{r['rmse_median']:.3f} [{r['rmse_min']:.3f}, {r['rmse_max']:.3f}]"
        if r["rmse_median"] == best:
            late = f"**{late}**"
        lines.append(
            f"| {r['method']} | {r['seeds']} | {r['rmse_all_median']:.3f} | {late} | {r['spread_rmse_median']:.2f} "
            f"| {r['kept_track']:.0%} | {r['seconds_per_analysis']:.4f} |"
        )
    lines += ["", "Published (the authors' grids, their conventions and initial ensemble):", ""]
    lines += [f"- {k}: {v}" for k, v in PUBLISHED.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workdir", type=Path, help="the sweep's Snakemake working directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--burn-in", type=int, default=50, help="analyses left out of the late means")
    parser.add_argument("--keep", type=float, default=1.0, help="RMSE below which a seed kept track")
    args = parser.parse_args()
    rows = summarize(args.workdir, args.burn_in, args.keep)
    if not rows:
        raise SystemExit(f"no run files under {args.workdir}/results/runs")
    text = table(rows, args.burn_in, args.keep)
    (args.out / "table.md").write_text(text)
    (args.out / "results.json").write_text(
        json.dumps(
            {"burn_in": args.burn_in, "keep": args.keep, "rows": rows, "published": PUBLISHED}, indent=1
        )
        + "\n"
    )
    print(text)


if __name__ == "__main__":
    main()
