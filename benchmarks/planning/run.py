"""Planning time of a 10,000-job sweep: write the config, time `snakemake -n` on the real Snakefile.

    .venv/bin/python benchmarks/planning/run.py [--jobs 10000] [--seeds 40] [--repeats 3]

The sweep is config/paper.yaml (Kolmogorov 128/256/512, grid/center/sigmoid/speed operators, all methods)
scaled up: 40 seeds, and every method repeated with different hyper-parameters (``nfe`` + 10·v for the
score-based methods, ``inflation`` + 0.01·v for the others) until there are at least 10,000 assimilate jobs.
The config is validated as usual (schema and cross-field checks) while Snakemake parses the Snakefile. Each
repeat runs in a fresh working directory (nothing exists, so every job is planned). Timed: `snakemake -n`
(job list printed to a pipe, as a user sees it) and `snakemake -n -q` (summary only).
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "config" / "paper.yaml"


def assimilate_jobs_per_seed(config: dict) -> int:
    """Assimilate jobs of one seed: sum over experiments and operators of the methods run there."""
    total = 0
    for experiment in config["experiments"].values():
        for operator in experiment["operators"].values():
            total += len(operator.get("methods", experiment["methods"]))
    return total


def sweep_config(target: int, seeds: int) -> dict:
    """config/paper.yaml scaled up: ``seeds`` seeds and, for every method, hyper-parameter variants (``nfe``
    for score-based methods, ``inflation`` for the others) until at least ``target`` assimilate jobs."""
    paper = yaml.safe_load(PAPER.read_text())
    per_seed = assimilate_jobs_per_seed(paper)
    variants = -(-target // (per_seed * seeds))
    methods = {}
    for name, method in paper["methods"].items():
        for v in range(variants):
            copy = dict(method)
            if "nfe" in copy:
                copy["nfe"] = int(copy["nfe"]) + 10 * v
            elif "inflation" in copy:
                copy["inflation"] = round(float(copy["inflation"]) + 0.01 * v, 4)
            methods[f"{name}_v{v}"] = copy
    rename = lambda names: [f"{n}_v{v}" for n in names for v in range(variants)]  # noqa: E731
    for experiment in paper["experiments"].values():
        experiment["seeds"] = list(range(42, 42 + seeds))
        experiment["methods"] = rename(experiment["methods"])
        for operator in experiment["operators"].values():
            if "methods" in operator:
                operator["methods"] = rename(operator["methods"])
    paper["methods"] = methods
    return paper


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table of a dry run as {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def dry_run(config: Path, quiet: bool) -> tuple[float, dict[str, int]]:
    """Seconds of one `snakemake -n` in a fresh directory, and the planned jobs per rule ({} with -q)."""
    with tempfile.TemporaryDirectory(prefix="masf-planning-") as work:
        command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
        command += ["--directory", work, "--configfile", str(config), "-n"]
        if quiet:
            command.append("-q")
        start = time.perf_counter()
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{done.stderr[-3000:]}")
    output = done.stdout + done.stderr
    return seconds, job_counts(output) if "Job stats:" in output else {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="at least this many assimilate jobs")
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    with tempfile.TemporaryDirectory(prefix="masf-planning-config-") as folder:
        config = Path(folder) / "sweep10k.yaml"
        config.write_text(yaml.safe_dump(sweep_config(args.jobs, args.seeds), sort_keys=False))
        timings: dict[str, list[float]] = {"dry_run_s": [], "dry_run_quiet_s": []}
        counts: dict[str, int] = {}
        for _ in range(args.repeats):
            for key, quiet in (("dry_run_s", False), ("dry_run_quiet_s", True)):
                seconds, planned = dry_run(config, quiet)
                counts = planned or counts  # -q prints no job table
                timings[key].append(round(seconds, 2))
                print(f"{key}: {seconds:.1f} s", flush=True)
    snakemake_version = subprocess.run(
        [sys.executable, "-m", "snakemake", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    result = {
        "what": "snakemake -n on the real Snakefile, fresh working directory, config/paper.yaml scaled to "
        f"{args.seeds} seeds and hyper-parameter variants (>= {args.jobs} assimilate jobs)",
        "jobs": counts,
        **timings,
        "dry_run_median_s": sorted(timings["dry_run_s"])[len(timings["dry_run_s"]) // 2],
        "dry_run_quiet_median_s": sorted(timings["dry_run_quiet_s"])[len(timings["dry_run_quiet_s"]) // 2],
        "target_s": 60,
        "snakemake": snakemake_version,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "machine": re.sub(r"\s+", " ", platform.processor() or platform.machine()),
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
