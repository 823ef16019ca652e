"""The paper's high-dimensional Kolmogorov settings (256², N = 100; 512², N = 40) through the pipeline.

    .venv/bin/python benchmarks/highdim/run.py --config benchmarks/highdim/smoke.yaml      # CPU
    bash benchmarks/highdim/gpu.sh OUT                       # a GPU machine: config/paper.yaml at 256², 512²

Runs the sweep of ``--config`` (only its ``--experiments``, when given) with Snakemake in a fresh
``--workdir`` (nothing of the checkout's ``results/`` is touched), then writes ``--out`` (JSON) and the same tables as Markdown beside it: per
job its wall-clock and peak resident memory (Snakemake's benchmark files) against the memory bound that
``masf validate`` checks, and per run its status, RMSE and spread.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from masf import config as mc  # noqa: E402


def snakemake(work: Path, config: Path, cores: int) -> float:
    """Run the sweep of ``config`` in ``work``; its wall-clock seconds (a failed job fails the run)."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--cores",
        str(cores),
    ]
    start = time.perf_counter()
    done = subprocess.run(
        [*command, "--directory", str(work), "--configfile", str(config), "--keep-going"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"snakemake failed:\n{done.stderr[-4000:]}")
    return seconds


def jobs(work: Path) -> list[dict]:
    """One row per benchmark file: stage, job name, wall-clock s, peak RSS MB."""
    rows = []
    root = work / "results" / "benchmarks"
    for path in sorted(root.rglob("*.tsv")):
        with path.open() as handle:
            record = next(csv.DictReader(handle, delimiter="\t"))
        stage, name = (
            path.relative_to(root).parts[0],
            str(path.relative_to(root / path.relative_to(root).parts[0])),
        )
        rows.append(
            {
                "stage": stage,
                "job": name.removesuffix(".tsv"),
                "seconds": round(float(record["s"]), 1),
                "max_rss_mb": round(float(record["max_rss"]), 0)
                if record["max_rss"] not in ("", "-")
                else None,
            }
        )
    return rows


def runs(work: Path) -> list[dict]:
    """One row per run file (read directly, so that a sweep stopped before aggregation tabulates too)."""
    import xarray as xr

    rows = []
    for path in sorted((work / "results" / "runs").rglob("seed*.nc")):
        experiment, operator, method = path.parts[-4:-1]
        with xr.open_dataset(path) as ds:
            rows.append(
                {
                    "experiment": experiment,
                    "operator": operator,
                    "method": method,
                    "seed": int(path.stem.removeprefix("seed")),
                    "status": ds.attrs["status"],
                    "reason": ds.attrs.get("status_reason", ""),
                    "rmse_mean": float(ds["rmse"].mean()),
                    "spread_mean": float(ds["spread"].mean()),
                    "analysis_s": round(float(ds.attrs.get("wall_clock_analysis_s", math.nan)), 1),
                }
            )
    return rows


def bounds(cfg: dict) -> dict[str, dict[str, float]]:
    """Per experiment, the lower bounds (MB) that ``masf validate`` checks against each stage's mem_mb."""
    return {name: mc.memory_bounds_mb(cfg, exp) for name, exp in cfg["experiments"].items()}


def markdown(result: dict) -> str:
    lines = [
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; {result['date_utc']}; whole sweep {result['sweep_s']:.0f} s"
        " (nan: tabulated from a stopped run).",
        "",
        "| stage | job | wall s | peak RSS MB | bound MB (validate) |",
        "|---|---|---|---|---|",
    ]
    for row in result["jobs"]:
        experiment = row["job"].split("/", 1)[0]
        bound = result["bounds_mb"].get(experiment, {}).get(row["stage"])
        shown = "" if bound is None else f"{bound:,.0f}"
        lines.append(f"| {row['stage']} | {row['job']} | {row['seconds']} | {row['max_rss_mb']} | {shown} |")
    lines += [
        "",
        "| experiment | operator | method | seed | status | RMSE | spread | analysis s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["runs"]:
        rmse = float(row["rmse_mean"]) if row.get("rmse_mean") not in (None, "") else math.nan
        spread = float(row["spread_mean"]) if row.get("spread_mean") not in (None, "") else math.nan
        status = row["status"] + (f" ({row['reason']})" if row.get("reason") else "")
        lines.append(
            f"| {row['experiment']} | {row['operator']} | {row['method']} | {row['seed']} | {status} "
            f"| {rmse:.3f} | {spread:.3f} | {row['analysis_s']} |"
        )
    if result.get("missing"):
        lines += ["", "Runs that did not finish: " + ", ".join(result["missing"]) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=REPO / "benchmarks" / "highdim" / "smoke.yaml")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/masf-highdim"))
    parser.add_argument("--experiments", nargs="*", help="run only these experiments of --config")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="override the config's device")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "highdim" / "result.json")
    parser.add_argument(
        "--tabulate-only",
        action="store_true",
        help="do not run Snakemake: tabulate what --workdir holds (a run stopped early); --out lists the runs missing",
    )
    args = parser.parse_args()
    raw = mc.load(args.config)
    if args.experiments:
        unknown = sorted(set(args.experiments) - set(raw["experiments"]))
        if unknown:
            raise SystemExit(
                f"--experiments: {unknown} not in {args.config}; allowed: {sorted(raw['experiments'])}"
            )
        raw["experiments"] = {k: v for k, v in raw["experiments"].items() if k in args.experiments}
    if args.device:
        raw["device"] = args.device
    cfg = mc.validate(raw)  # refuse bad input before any work
    args.workdir.mkdir(parents=True, exist_ok=True)
    config = args.workdir / "sweep.yaml"
    config.write_text(json.dumps(raw, indent=1))  # JSON is YAML: the file Snakemake reads
    seconds = math.nan if args.tabulate_only else snakemake(args.workdir, config, args.cores)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, device {cfg['device']}",
        "sweep_s": round(seconds, 1),
        "bounds_mb": bounds(cfg),
        "jobs": jobs(args.workdir),
        "runs": runs(args.workdir),
    }
    done = {(r["experiment"], r["operator"], r["method"]) for r in result["runs"]}
    result["missing"] = [
        f"{e}/{o}/{m}"
        for e, o, m in ((j["experiment"], j["operator"], j["method"]) for j in mc.runs(cfg, {}))
        if (e, o, m) not in done
    ]
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
