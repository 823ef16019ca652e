"""Planning time of a 10,000-job sweep: write the config, time `snakemake -n` on the real Snakefile.

    .venv/bin/python benchmarks/planning/run.py [--seeds 40] [--repeats 3] [--out benchmarks/planning/results.json]

The sweep: 10 Lorenz-96 experiments (forcings 8.0..9.8) x 5 every-k-th operators x 5 methods (MASF
bridge and reference, SF, EnKF, LETKF) x 40 seeds = 10,000 assimilate jobs, plus 400 simulate, 10 dataset,
150 pretrain, aggregate, figures. The config is validated as usual (schema and cross-field checks) while
Snakemake parses the Snakefile. Each repeat runs in a fresh working directory (nothing exists, so every job
is planned). Timed: `snakemake -n` (job list printed to a pipe, as a user sees it) and `snakemake -n -q`
(summary only).
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
METHODS = {
    "masf_bridge": {
        "filter": "masf",
        "sampler": "bridge",
        "nfe": 50,
        "pretrain_epochs": 30,
        "finetune_epochs": 10,
    },
    "masf_reference": {
        "filter": "masf",
        "sampler": "reference",
        "nfe": 50,
        "pretrain_epochs": 30,
        "finetune_epochs": 10,
    },
    "sf": {"filter": "sf", "nfe": 100, "pretrain_epochs": 30, "finetune_epochs": 10},
    "enkf": {"filter": "enkf", "variant": "sqrt", "inflation": 1.02},
    "letkf": {"filter": "letkf", "radius": 7.0, "inflation": 1.02},
}
OPERATOR_STRIDES = (1, 2, 4, 5, 8)  # every k-th of 40 variables observed


def sweep_config(experiments: int, seeds: int) -> dict:
    """A valid sweep with experiments x len(OPERATOR_STRIDES) x len(METHODS) x seeds assimilate jobs."""
    return {
        "device": "cpu",
        "methods": METHODS,
        "experiments": {
            f"l96_f{i:02d}": {
                "system": {"name": "lorenz96", "dim": 40, "forcing": 8.0 + 0.2 * i, "dt": 0.05},
                "operators": {
                    f"every{k}": {"operator": "every_kth", "k": k, "noise_std": 1.0} for k in OPERATOR_STRIDES
                },
                "methods": list(METHODS),
                "cycles": 50,
                "steps_per_cycle": 1,
                "ensemble_size": 20,
                "seeds": list(range(seeds)),
                "dataset": {"samples": 1000, "seed": 0},
            }
            for i in range(experiments)
        },
    }


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
    parser.add_argument("--experiments", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    with tempfile.TemporaryDirectory(prefix="masf-planning-config-") as folder:
        config = Path(folder) / "sweep10k.yaml"
        config.write_text(yaml.safe_dump(sweep_config(args.experiments, args.seeds), sort_keys=False))
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
        "what": "snakemake -n on the real Snakefile, fresh working directory, 10,000 assimilate jobs",
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
