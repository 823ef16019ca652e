"""Issue 13 item 4: the tuning stage on the default sweep, end to end, and what one more value reruns.

1. Run config/sweep.yaml (EnKF's inflation and LETKF's radius x inflation tuned on two tuning seeds) in a
   fresh working directory: wall-clock, the selections, the evaluation RMSE of the selected variants.
2. Add one inflation value to LETKF's list and run again: wall-clock, which run files are new, and that no
   existing run file was rewritten.

    python benchmarks/tuning/run.py --workdir /tmp/tuning-bench --out benchmarks/tuning/result.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / "config" / "sweep.yaml"
LETKF = "  letkf: {filter: letkf, radius: [2.0, 4.0], inflation: [1.1, 1.2]}"
MORE = "  letkf: {filter: letkf, radius: [2.0, 4.0], inflation: [1.1, 1.15, 1.2]}"


def snakemake(work: Path, config: Path) -> float:
    """Run the sweep of ``config`` in ``work`` on 2 cores; its wall-clock seconds."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "2"]
    start = time.perf_counter()
    done = subprocess.run(
        [*command, "--directory", str(work), "--configfile", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"snakemake failed:\n{done.stderr[-3000:]}")
    return seconds


def run_files(work: Path) -> dict[str, int]:
    return {
        str(p.relative_to(work)): p.stat().st_mtime_ns for p in (work / "results" / "runs").rglob("seed*.nc")
    }


def selections(work: Path) -> dict[str, dict]:
    out = {}
    for path in sorted((work / "results" / "tuning").rglob("*.json")):
        chosen = json.loads(path.read_text())
        out[f"{chosen['experiment']}/{chosen['operator']}/{chosen['method']}"] = {
            "selected": chosen["selected"],
            "metric": chosen["metric"],
            "tuning_seeds": chosen["seeds"],
            "scores": {v["variant"]: v["score"] for v in chosen["variants"]},
            "per_seed": {v["variant"]: v["per_seed"] for v in chosen["variants"]},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path, help="an empty or absent folder")
    parser.add_argument("--out", required=True, type=Path, help="result JSON")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=False)
    sweep_seconds = snakemake(args.workdir, SWEEP)
    before, chosen_before = run_files(args.workdir), selections(args.workdir)
    with open(args.workdir / "results" / "summary.csv") as f:
        summary = [
            {
                k: row[k]
                for k in ("experiment", "operator", "method", "variant", "seeds", "rmse_mean", "rmse_std")
            }
            for row in csv.DictReader(f)
        ]
    text = SWEEP.read_text()
    if LETKF not in text:
        raise SystemExit(f"config/sweep.yaml no longer has the line {LETKF!r}; update this script")
    more = args.workdir / "more.yaml"
    more.write_text(text.replace(LETKF, MORE))
    rerun_seconds = snakemake(args.workdir, more)
    after = run_files(args.workdir)
    result = {
        "command": "python benchmarks/tuning/run.py --workdir W --out benchmarks/tuning/result.json",
        "machine": "2-core development VM, CPU, nothing else running",
        "default_sweep": {
            "wall_clock_s": round(sweep_seconds, 1),
            "run_files": len(before),
            "selections": chosen_before,
            "evaluation": summary,
        },
        "one_more_value": {
            "change": "LETKF inflation [1.1, 1.2] -> [1.1, 1.15, 1.2] (both experiments)",
            "wall_clock_s": round(rerun_seconds, 1),
            "new_run_files": sorted(set(after) - set(before)),
            "rewritten_run_files": sorted(p for p, t in before.items() if after.get(p) != t),
            "selections_changed": {
                k: [chosen_before[k]["selected"], v["selected"]]
                for k, v in selections(args.workdir).items()
                if chosen_before.get(k, {}).get("selected") != v["selected"]
            },
        },
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("default_sweep", "one_more_value")}, indent=1)[:3000])


if __name__ == "__main__":
    main()
