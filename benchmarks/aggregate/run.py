"""Aggregation at cluster scale: ``masf aggregate`` over 11,200 real run files, wall-clock and peak memory.

The run files are copies of the runs of a finished pipeline sweep (``--source``, e.g. a ``make sweep``
checkout), each copied under more seeds until the sweep has ``--runs`` runs, with its Snakemake
benchmark file. Then ``masf aggregate --runs-file`` runs in a child process, the way the pipeline calls
it; its wall-clock and peak resident memory (``getrusage`` of the child) are recorded.

    .venv/bin/python benchmarks/aggregate/run.py --source /path/to/sweep --work /tmp/agg \\
        --runs 11200 --jobs 2 --out benchmarks/aggregate/results.json

Targets (issue "Sweeps at cluster scale", item 1): metrics.nc of 11,200 runs in <= 60 s and <= 4 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from masf import config as mc  # noqa: E402


def make_sweep(source: Path, work: Path, n_runs: int) -> list[dict]:
    """Copy every run of ``source`` under seeds 0, 1, ... until there are ``n_runs`` runs in ``work``."""
    originals = sorted((source / "results" / "runs").glob("*/*/*/seed*.nc"))
    if not originals:
        raise SystemExit(f"no run files under {source / 'results' / 'runs'}")
    combos: dict[tuple[str, str, str], list[Path]] = {}
    for path in originals:
        experiment, operator, method = path.parts[-4:-1]
        combos.setdefault((experiment, operator, method), []).append(path)
    per_combo = -(-n_runs // len(combos))
    runs = []
    for (experiment, operator, method), files in combos.items():
        for seed in range(per_combo):
            if len(runs) == n_runs:
                break
            run = {"experiment": experiment, "operator": operator, "method": method, "seed": seed}
            original = files[seed % len(files)]
            target = work / mc.RUN.format(**run)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(original, target)
            name = f"{experiment}/{operator}/{method}/seed{seed}"
            bench_src = source / mc.BENCHMARK.format(
                stage="assimilate", name=f"{experiment}/{operator}/{method}/{original.stem}"
            )
            if bench_src.exists():
                bench = work / mc.BENCHMARK.format(stage="assimilate", name=name)
                bench.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(bench_src, bench)
            runs.append(run)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="a folder with a finished sweep (results/runs/...)")
    p.add_argument("--work", required=True, help="scratch folder for the copies (emptied first)")
    p.add_argument("--runs", type=int, default=11200)
    p.add_argument("--jobs", type=int, default=2, help="masf aggregate --jobs (the job's threads)")
    p.add_argument("--out", required=True, help="results JSON")
    args = p.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    runs = make_sweep(Path(args.source), work, args.runs)
    copy_seconds = time.perf_counter() - started
    run_list = work / mc.RUN_LIST
    run_list.write_text(json.dumps(runs))
    masf = Path(sys.executable).parent / "masf"
    command = [str(masf), "aggregate", "--runs-file", str(run_list), "--jobs", str(args.jobs)]
    command += ["--summary", mc.SUMMARY]
    started = time.perf_counter()
    subprocess.run(command, cwd=work, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    size = sum(f.stat().st_size for f in (work / "results" / "runs").rglob("*.nc"))
    result = {
        "runs": len(runs),
        "run_files_gb": size / 1e9,
        "aggregate_seconds": seconds,
        "aggregate_peak_rss_mb": peak_mb,
        "metrics_nc_mb": (work / mc.METRICS).stat().st_size / 1e6,
        "copy_seconds": copy_seconds,
        "command": " ".join(command),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "load": os.getloadavg(),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
