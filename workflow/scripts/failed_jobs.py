"""Print the jobs that failed in the newest Snakemake run, one line each: rule, output and log.

    python workflow/scripts/failed_jobs.py [--log-dir .snakemake/log]

Reads the run's own log (``.snakemake/log/<time>.snakemake.log``), where Snakemake writes an "Error in
rule ..." block for each failed job; ``make sweep`` calls this when the sweep ends with failures, so the
list is not lost in the scroll-back of a long ``--keep-going`` run. Exit status 0.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def failed_jobs(text: str) -> list[dict[str, str]]:
    """The "Error in rule" blocks of a Snakemake log: ``[{"rule", "output", "log"}, ...]`` in order."""
    jobs: list[dict[str, str]] = []
    for block in re.split(r"(?m)^Error in rule ", text)[1:]:
        rule, _, body = block.partition(":")
        job = {"rule": rule.strip(), "output": "", "log": ""}
        for key in ("output", "log"):
            found = re.search(rf"(?m)^\s+{key}: (.*?)(?: \(check log file\(s\) for error details\))?$", body)
            if found:
                job[key] = found.group(1).strip()
        jobs.append(job)
    return jobs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--log-dir", default=".snakemake/log", help="where Snakemake keeps its run logs")
    args = p.parse_args()
    logs = sorted(Path(args.log_dir).glob("*.snakemake.log"))
    if not logs:
        print(f"no Snakemake log in {args.log_dir}")
        return
    jobs = failed_jobs(logs[-1].read_text(errors="replace"))
    print(f"{len(jobs)} job(s) failed (from {logs[-1]}):")
    for job in jobs:
        print(f"  {job['rule']}: {job['output'] or '(no output)'}; log {job['log'] or '(none)'}")
    if jobs:
        print("Fix the cause (see each log), then run the same command again: only what is missing reruns.")


if __name__ == "__main__":
    main()
