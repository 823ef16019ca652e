"""Where the time of a finished large sweep went: its own computation, each job's process, and Snakemake.

Reads a finished ``snakemake --cores C --directory WORK --configfile benchmarks/sweep_overhead/large.yaml``
(WORK/results: metrics.nc, the run files, Snakemake's benchmark files) and its wall-clock (two files,
``start`` and ``end``, holding ``date +%s``, as the README's command writes them). Per stage it sums

- the jobs' wall-clock (Snakemake's benchmark files: the whole process, interpreter start included);
- for assimilate, the cycle loop's own time (``wall_clock_total_s`` of each run file);

and it checks that every run of the config is in metrics.nc with status ok. What the C cores spent
outside any job (C x the sweep's wall-clock minus the jobs' sum) is Snakemake's own scheduling. Times the
sweep was stopped (``kill -STOP``, to free the cores for something else) are listed in WORK/pauses as
lines ``pause T`` and ``resume T`` and taken off its wall-clock; the jobs running across a pause keep it
in their own times, which the medians shrug off.

    .venv/bin/python benchmarks/sweep_overhead/summarize.py /tmp/large --cores 2 \\
        --out benchmarks/sweep_overhead/large.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import netCDF4
import numpy as np
import xarray as xr

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from masf import config as mc  # noqa: E402
from masf.aggregate import STATUS  # noqa: E402

CONFIG = Path(__file__).with_name("large.yaml")


def _job_seconds(work: Path, stage: str) -> list[float]:
    """The wall-clock ``s`` of every benchmark file of ``stage``."""
    seconds = []
    for path in sorted((work / "results" / "benchmarks" / stage).rglob("*.tsv")):
        lines = path.read_text().splitlines()
        seconds.append(float(lines[-1].split("\t")[0]))
    return seconds


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "jobs": len(values),
        "sum_s": float(sum(values)),
        "median_s": float(statistics.median(values)),
        "p90_s": float(np.percentile(values, 90)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("work", type=Path)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--config", default=str(CONFIG), help="the sweep file it ran (default large.yaml)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    work: Path = args.work
    wall = float((work / "end").read_text()) - float((work / "start").read_text())
    paused = 0.0  # `pauses`: lines "pause T" / "resume T" of times the sweep was stopped (SIGSTOP)
    if (work / "pauses").exists():
        marks = [line.split() for line in (work / "pauses").read_text().splitlines() if line.strip()]
        for (what, start), (again, end) in zip(marks[::2], marks[1::2], strict=True):
            assert (what, again) == ("pause", "resume"), marks
            paused += float(end) - float(start)
    wall -= paused
    # the last job's output, and the report that Snakemake's onsuccess builds after it
    start = float((work / "start").read_text())
    outputs = [work / mc.METRICS, *(work / "results" / "figures").rglob("*.png")]
    last_output = max(p.stat().st_mtime for p in outputs)
    jobs_wall = last_output - start - paused
    report = work / "results" / "report.html"
    report_s = report.stat().st_mtime - last_output if report.exists() else None
    cfg = mc.load_validated(args.config)
    runs = mc.runs(cfg)
    loop, outside = [], []
    for run in runs:
        with netCDF4.Dataset(work / mc.run_path(run)) as ds:
            loop.append(float(ds.getncattr("wall_clock_total_s")))
        name = "{experiment}/{operator}/{method}/seed{seed}".format(**run)
        bench = (work / mc.BENCHMARK.format(stage="assimilate", name=name)).read_text().splitlines()
        outside.append(float(bench[-1].split("\t")[0]) - loop[-1])
    with xr.open_dataset(work / mc.METRICS) as ds:
        status = ds["status"].values
        in_metrics = int((status != STATUS["not_run"]).sum())
        ok = int((status == STATUS["ok"]).sum())
    seconds = {
        s: _job_seconds(work, s) for s in ("simulate", "dataset", "assimilate", "aggregate", "figures")
    }
    stages = {stage: _stats(values) for stage, values in seconds.items() if values}
    jobs_sum = sum(s["sum_s"] for s in stages.values())
    n_jobs = sum(s["jobs"] for s in stages.values())
    result = {
        "command": f"snakemake --cores {args.cores} --directory WORK --configfile {args.config}",
        "runs_in_config": len(runs),
        "runs_in_metrics": in_metrics,
        "runs_ok": ok,
        "sweep_wall_s": wall,
        "paused_s": paused,
        "cores": args.cores,
        "stages": stages,
        "assimilate_cycle_loop": _stats(loop),
        "assimilate_outside_loop": _stats(outside),
        "until_last_job_s": jobs_wall,
        "report_s": report_s,
        # core-seconds outside any job until the last job's end: DAG building, scheduling, run_list
        "snakemake_own_core_s": args.cores * jobs_wall - jobs_sum,
        "snakemake_own_core_s_per_job": (args.cores * jobs_wall - jobs_sum) / n_jobs,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
