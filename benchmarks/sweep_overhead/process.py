"""What one pipeline job costs besides its own computation: one `masf assimilate` process, timed whole.

The job is the shortest a large sweep runs (Lorenz-63, EnKF, N = 10, 50 cycles), started the way the
assimilate rule starts it (``python -m masf.cli assimilate --spec ...``). For each tree given (e.g. the
commit before a change, checked out with ``git worktree add``, and this checkout), the same command runs
``--repeats`` times, the trees alternating so that both see the same machine load. Recorded per start:
the process's wall-clock, the cycle loop's own time (``wall_clock_total_s`` of the run file) and, as the
floor no job can go below, ``python -c "import torch"``.

    .venv/bin/python benchmarks/sweep_overhead/process.py --tree before=/tmp/base --tree after=. \\
        --repeats 10 --out benchmarks/sweep_overhead/process.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("large.yaml")


def _timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _command(tree: Path, work: Path, out: Path) -> list[str]:
    """The assimilate rule's command for l63/full/enkf, seed 0, with ``tree``'s masf on the path."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from masf import config as mc; "
        "cfg = mc.load_validated(sys.argv[2]); "
        "print(mc.to_json(mc.assimilate_spec(cfg, 'l63', 'full', 'enkf')))"
    )
    spec = subprocess.run(
        [sys.executable, "-c", code, str(tree), str(CONFIG)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return [
        sys.executable, "-m", "masf.cli", "assimilate", "--spec", spec,
        "--data", str(work / "data.nc"), "--seed", "0", "--threads", "1", "--quiet", "--out", str(out),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH of a masf checkout")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    trees = dict(item.split("=", 1) for item in args.tree)
    work = Path(tempfile.mkdtemp(prefix="masf-overhead-"))
    subprocess.run(
        [sys.executable, "-m", "masf.cli", "simulate", "--config", str(CONFIG), "--experiment", "l63",
         "--seed", "0", "--quiet", "--out", str(work / "data.nc")],
        cwd=REPO, check=True,
    )  # fmt: skip
    commands = {
        name: _command(Path(path).resolve(), work, work / f"{name}.nc") for name, path in trees.items()
    }
    wall: dict[str, list[float]] = {name: [] for name in trees}
    loop: dict[str, list[float]] = {name: [] for name in trees}
    floor: list[float] = []
    import xarray as xr

    for _ in range(args.repeats):
        floor.append(_timed([sys.executable, "-c", "import torch"], REPO))
        for name, path in trees.items():
            wall[name].append(_timed(commands[name], Path(path).resolve()))
            with xr.open_dataset(work / f"{name}.nc") as ds:
                loop[name].append(float(ds.attrs["wall_clock_total_s"]))
    result = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, 2 cores",
        "job": "l63/full/enkf seed 0 of benchmarks/sweep_overhead/large.yaml (N 10, 50 cycles)",
        "repeats": args.repeats,
        "import_torch_s": {"median": statistics.median(floor), "all": floor},
        "trees": {
            name: {
                "path": trees[name],
                "process_s": {"median": statistics.median(wall[name]), "all": wall[name]},
                "cycle_loop_s": {"median": statistics.median(loop[name]), "all": loop[name]},
                "overhead_s": statistics.median(wall[name]) - statistics.median(loop[name]),
            }
            for name in trees
        },
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, r in result["trees"].items():
        print(
            f"{name}: process {r['process_s']['median']:.2f} s, cycle loop {r['cycle_loop_s']['median']:.2f} s, "
            f"overhead {r['overhead_s']:.2f} s"
        )
    print(f"import torch alone: {result['import_torch_s']['median']:.2f} s")


if __name__ == "__main__":
    main()
