"""Kolmogorov flow: masf's PyTorch solver against jax-cfd 0.2.1, speed and flow statistics side by side.

    .venv/bin/python benchmarks/kolmogorov_speed/run.py [--quick] [--threads 1] [--repeats 7]

Our solver runs in this process; jax-cfd runs in a worker process of its own virtual environment
(``--jax-python``, default /work/venv-jaxcfd/bin/python; README.md has the install line) that stays
alive, so both sides are compiled/warmed once and then measured alternately, repeat by repeat, with
the same thread pinning. Writes ``results.json`` and ``results.md`` next to this file (or ``--out``).
Run it on an otherwise idle machine: the README explains how to read the noise columns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import flowstats  # this folder is on sys.path when the script runs
import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def _pin_threads(threads: int) -> dict[str, str]:
    """Environment that pins OpenMP/MKL and XLA to ``threads`` threads."""
    flags = f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}"
    return {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "XLA_FLAGS": flags,
        "JAX_PLATFORMS": "cpu",
    }


class JaxWorker:
    """The jax-cfd side: ``jax_side.py`` in its own interpreter, one JSON request/reply per line."""

    def __init__(self, python: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [python, str(HERE / "jax_side.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        self.hello = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the jax-cfd worker exited; run jax_side.py by hand to see why")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"jax-cfd worker: {reply['error']}")
        return reply

    def ask(self, **request: object) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)


class TorchSide:
    """Our side: ``Kolmogorov(n).step`` on a float32 batch, timed like the jax side."""

    def __init__(self) -> None:
        self.states: dict[tuple[int, int], object] = {}

    def setup(self, n: int, batch: int) -> dict:
        from masf.systems.kolmogorov import Kolmogorov

        system = Kolmogorov(n=n)
        t0 = time.perf_counter()
        x = system.sample_initial(batch, generator=torch.Generator().manual_seed(0))
        x = system.step(x)
        self.states[(n, batch)] = (system, x)
        return {"inner_steps": system.steps_per_dt, "compile_s": time.perf_counter() - t0}

    def time(self, n: int, batch: int, steps: int) -> dict:
        system, x = self.states[(n, batch)]
        t0, c0 = time.perf_counter(), time.process_time()
        x = system.step(x, steps)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        if not bool(torch.isfinite(x).all()):
            raise RuntimeError("torch state became non-finite")
        self.states[(n, batch)] = (system, x)
        return {"seconds_per_step": elapsed / steps, "cpu_seconds_per_step": cpu / steps}

    def trajectory(self, n: int, members: int, seed: int, spinup: int, steps: int) -> np.ndarray:
        """Velocities (members, steps + 1, 2, n, n) at outer steps spinup..spinup+steps."""
        from masf.systems.kolmogorov import Kolmogorov

        system = Kolmogorov(n=n)
        x = system.sample_climatology(
            members, generator=torch.Generator().manual_seed(seed), spinup_steps=spinup
        )
        frames = [x]
        for _ in range(steps):
            x = system.step(x)
            frames.append(x)
        return torch.stack(frames, dim=1).double().numpy()


def _summary(times: list[float]) -> dict:
    return {
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "max_ms": 1e3 * max(times),
        "samples_ms": [1e3 * t for t in times],
    }


def run_timing(
    jax: JaxWorker, ours: TorchSide, configs: list[tuple[int, int, int]], repeats: int
) -> list[dict]:
    rows = []
    for n, batch, steps in configs:
        setup = {"jax_cfd": jax.ask(cmd="setup", n=n, batch=batch), "masf": ours.setup(n, batch)}
        times: dict[str, list[float]] = {"jax_cfd": [], "masf": []}
        cpu: dict[str, list[float]] = {"jax_cfd": [], "masf": []}
        for r in range(repeats):  # alternate, and alternate who goes first, to cancel drifts in load
            order = ("jax_cfd", "masf") if r % 2 == 0 else ("masf", "jax_cfd")
            for side in order:
                if side == "jax_cfd":
                    reply = jax.ask(cmd="time", n=n, batch=batch, steps=steps)
                else:
                    reply = ours.time(n, batch, steps)
                times[side].append(reply["seconds_per_step"])
                cpu[side].append(reply["cpu_seconds_per_step"])
        paired = [m / j for m, j in zip(times["masf"], times["jax_cfd"], strict=True)]
        row = {
            "n": n,
            "batch": batch,
            "steps_per_sample": steps,
            "inner_steps": {k: v["inner_steps"] for k, v in setup.items()},
            "first_call_s": {k: v["compile_s"] for k, v in setup.items()},
            "jax_cfd": _summary(times["jax_cfd"]),
            "masf": _summary(times["masf"]),
            "cpu_jax_cfd": _summary(cpu["jax_cfd"]),
            "cpu_masf": _summary(cpu["masf"]),
            "ratio_cpu_masf_over_jax_median": statistics.median(cpu["masf"])
            / statistics.median(cpu["jax_cfd"]),
            "ratio_masf_over_jax_median_of_pairs": statistics.median(paired),
            "ratio_masf_over_jax_min": min(times["masf"]) / min(times["jax_cfd"]),
        }
        rows.append(row)
        print(
            f"n={n:4d} batch={batch:3d}: jax-cfd median {row['jax_cfd']['median_ms']:8.2f} ms"
            f" (min {row['jax_cfd']['min_ms']:.2f}), masf median {row['masf']['median_ms']:8.2f} ms"
            f" (min {row['masf']['min_ms']:.2f}), ratio {row['ratio_masf_over_jax_median_of_pairs']:.2f}",
            flush=True,
        )
    return rows


def run_stats(jax: JaxWorker, ours: TorchSide, n: int, members: int, seed: int) -> dict:
    """Statistics over t ∈ [10, 20] (outer steps 50..100) of both solvers, each from its own prior."""
    spinup, steps = 50, 50
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "jax.npy")
        t0 = time.perf_counter()
        jax.ask(cmd="stats", n=n, members=members, seed=seed, spinup=spinup, steps=steps, out=path)
        t_jax = time.perf_counter() - t0
        jax_uv = flowstats.from_jax_cfd(np.load(path))
    t0 = time.perf_counter()
    our_uv = ours.trajectory(n, members, seed, spinup, steps)
    t_ours = time.perf_counter() - t0
    out = {
        "n": n,
        "window": "outer steps 50..100 (t = 10..20), every step, all members",
        "jax_cfd": {**flowstats.summarize(jax_uv), "wall_s": t_jax},
        "masf": {**flowstats.summarize(our_uv), "wall_s": t_ours},
    }
    for key in ("energy", "enstrophy"):
        out[f"{key}_rel_diff"] = out["masf"][key] / out["jax_cfd"][key] - 1.0
    return out


def _markdown(result: dict) -> str:
    lines = [
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; threads pinned to "
        f"{result['threads']}; {result['repeats']} alternating repeats; load average (1, 5, 15 min) "
        f"before / after: {result['machine']['loadavg_before']} / {result['machine']['loadavg_after']}.",
        "Time per outer step Δt = 0.2, float32. Wall: median (min) over repeats; CPU: median process time.",
        "",
        "| grid | batch | inner steps jax / masf | jax-cfd wall ms | masf wall ms | masf/jax wall "
        "(median of pairs) | jax-cfd CPU ms | masf CPU ms | masf/jax CPU | spread max/min jax, masf |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["timing"]:
        j, m, cj, cm = r["jax_cfd"], r["masf"], r["cpu_jax_cfd"], r["cpu_masf"]
        lines.append(
            f"| {r['n']}² | {r['batch']} | {r['inner_steps']['jax_cfd']} / {r['inner_steps']['masf']} "
            f"| {j['median_ms']:.1f} ({j['min_ms']:.1f}) | {m['median_ms']:.1f} ({m['min_ms']:.1f}) "
            f"| {r['ratio_masf_over_jax_median_of_pairs']:.2f} | {cj['median_ms']:.1f} | {cm['median_ms']:.1f} "
            f"| {r['ratio_cpu_masf_over_jax_median']:.2f} "
            f"| {j['max_ms'] / j['min_ms']:.2f}, {m['max_ms'] / m['min_ms']:.2f} |"
        )
    for s in result["stats"]:
        j, m = s["jax_cfd"], s["masf"]
        lines += [
            "",
            f"Flow statistics at {s['n']}², {j['members']} members per solver, each from its own prior, "
            f"{s['window']} (± standard error over members):",
            "",
            "| quantity | jax-cfd | masf | masf/jax − 1 |",
            "|---|---|---|---|",
            f"| mean kinetic energy ½⟨u²+v²⟩ | {j['energy']:.3f} ± {j['energy_sem']:.3f} "
            f"| {m['energy']:.3f} ± {m['energy_sem']:.3f} | {s['energy_rel_diff']:+.1%} |",
            f"| enstrophy ½⟨ω²⟩ | {j['enstrophy']:.2f} ± {j['enstrophy_sem']:.2f} "
            f"| {m['enstrophy']:.2f} ± {m['enstrophy_sem']:.2f} | {s['enstrophy_rel_diff']:+.1%} |",
        ]
        shells = [k for k in (1, 2, 3, 4, 5, 6, 8, 12, 16, 20, 32, 42) if k < len(j["spectrum"])]
        lines += ["", "| shell k | " + " | ".join(map(str, shells)) + " |", "|---" * (len(shells) + 1) + "|"]
        for name, d in (("E(k) jax-cfd", j), ("E(k) masf", m)):
            lines.append(f"| {name} | " + " | ".join(f"{d['spectrum'][k]:.3g}" for k in shells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 repeats, 4 members: a smoke run (~1 min)")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats per configuration (7)")
    parser.add_argument("--threads", type=int, default=1, help="threads for both sides (1)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="grids to time (64 128)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 10], help="ensemble sizes (1 10)")
    parser.add_argument(
        "--stats-n", type=int, nargs="*", default=[64, 128], help="grids of the statistics runs"
    )
    parser.add_argument("--stats-members", type=int, default=None, help="members per solver (16)")
    parser.add_argument("--skip-stats", action="store_true")
    parser.add_argument("--jax-python", default="/work/venv-jaxcfd/bin/python")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if not Path(args.jax_python).exists():
        raise SystemExit(f"no jax-cfd interpreter at {args.jax_python}; see README.md for the install line")
    repeats = args.repeats or (3 if args.quick else 7)
    members = args.stats_members or (4 if args.quick else 16)

    torch.set_num_threads(args.threads)
    jax = JaxWorker(args.jax_python, _pin_threads(args.threads))
    ours = TorchSide()
    load_before = [round(x, 2) for x in os.getloadavg()]
    # About 0.25 s per sample (cost ~ batch · n³, ~2.5 ms at 64², batch 1), 1 to 50 outer steps.
    configs = [
        (n, b, min(50, max(1, round(100 / (b * (n / 64) ** 3))))) for n in args.sizes for b in args.batches
    ]
    try:
        timing = run_timing(jax, ours, configs, repeats)
        stats = [] if args.skip_stats else [run_stats(jax, ours, n, members, seed=0) for n in args.stats_n]
    finally:
        jax.close()
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threads": args.threads,
        "repeats": repeats,
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0], **jax.hello["versions"]},
        "machine": {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "timing": timing,
        "stats": stats,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in (("results.json", json.dumps(result, indent=1)), ("results.md", _markdown(result))):
        tmp = args.out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, args.out / name)
    print(_markdown(result))


if __name__ == "__main__":
    main()
