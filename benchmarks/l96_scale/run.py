"""Lorenz-96 at scale (issue 15 item 4): time and memory per analysis against the state dimension D.

For every (operator, method, D) a fresh subprocess builds a spun-up truth of Lorenz-96 (F = 8), a
forecast ensemble of N = 20 members around it (spread 1), one measurement, and times one ensemble forecast
step (dt = 0.05) and ``repeats`` analyses with the library's filters (float32, 1 torch thread per job, as
the pipeline runs them). Peak memory is the process's peak resident set (``ru_maxrss``) and its growth
over the resident set just before the first analysis. The cost exponent is the least-squares slope of
log(seconds per analysis) against log D. Subprocesses run one at a time.

    .venv/bin/python benchmarks/l96_scale/run.py                      # D = 10³, 10⁴, 10⁵, writes results.json
    .venv/bin/python benchmarks/l96_scale/run.py --dims 1000 --quick  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS: dict[str, dict] = {
    "letkf": {"filter": "letkf", "radius": 4.0, "inflation": 1.05},
    "enkf_sqrt": {"filter": "enkf", "variant": "sqrt", "inflation": 1.05},
    "enkf_pertobs": {"filter": "enkf", "variant": "pertobs", "inflation": 1.05},
    "ensf_paired": {"filter": "ensf", "prior_score": "paired", "nfe": 200},
    "ensf_mixture": {"filter": "ensf", "prior_score": "mixture", "nfe": 200},
}
OPERATORS: dict[str, dict] = {
    "every4": {"name": "every_kth", "k": 4, "noise_std": 1.0},
    "arctan": {"name": "arctan", "noise_std": 0.05},
}


def _rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return math.nan


def measure(dim: int, operator: str, method: str, repeats: int, nfe: int | None) -> dict:
    """One configuration, in this process: seconds and MB (see the module docstring)."""
    import torch

    from masf.filters import Context, make_filter
    from masf.operators import make_operator
    from masf.rng import generator
    from masf.systems import make_system

    torch.set_num_threads(1)
    system = make_system("lorenz96", dim=dim, forcing=8.0, dt=0.05)
    g = torch.Generator().manual_seed(0)
    truth = 8.0 * torch.rand(1, dim, generator=g) - 2.0
    truth = system.step(truth, 200)  # onto the attractor
    prior = truth + torch.randn(20, dim, generator=g)
    params = dict(METHODS[method])
    if nfe is not None and "nfe" in params:
        params["nfe"] = nfe
    op_params = dict(OPERATORS[operator])
    op = make_operator(op_params.pop("name"), (dim,), **op_params)
    z = op.observe(truth, generator=generator(0, "obs_noise"))[0]
    flt = make_filter(params.pop("filter"), **params)
    ctx = Context(generator=generator(0, "sampling"))

    started = time.perf_counter()
    forecast = system.step(prior)
    forecast_s = time.perf_counter() - started
    rss_before = _rss_mb()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        post = flt.analyse(forecast, z, op, ctx)
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    rmse_prior = float((forecast.mean(0) - truth[0]).square().mean().sqrt())
    rmse_post = float((post.mean(0) - truth[0]).square().mean().sqrt())
    return {
        "dim": dim,
        "operator": operator,
        "method": method,
        "params": METHODS[method] | ({"nfe": nfe} if nfe is not None and "nfe" in METHODS[method] else {}),
        "forecast_step_s": forecast_s,
        "analysis_s": times,
        "analysis_first_s": times[0],
        "analysis_median_s": sorted(times)[len(times) // 2],
        "peak_rss_mb": peak,
        "rss_growth_mb": peak - rss_before,
        "rmse_forecast": rmse_prior,
        "rmse_analysis": rmse_post,
        "finite": bool(torch.isfinite(post).all()),
    }


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of log y against log x."""
    lx = [math.log(x) for x, _ in points]
    ly = [math.log(y) for _, y in points]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dims", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--operators", nargs="+", default=list(OPERATORS), choices=list(OPERATORS))
    parser.add_argument(
        "--repeats", type=int, default=3, help="analyses per configuration (the first one is reported apart)"
    )
    parser.add_argument("--quick", action="store_true", help="nfe 10 and 1 repeat: a smoke run, not a result")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--one", nargs=3, metavar=("DIM", "OPERATOR", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--nfe", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        dim, operator, method = int(args.one[0]), args.one[1], args.one[2]
        print(json.dumps(measure(dim, operator, method, args.repeats, args.nfe)))
        return
    repeats, nfe = (1, 10) if args.quick else (args.repeats, None)
    rows = []
    for operator in args.operators:
        for method in args.methods:
            for dim in args.dims:
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    str(dim),
                    operator,
                    method,
                    "--repeats",
                    str(repeats),
                ]
                if nfe is not None:
                    cmd += ["--nfe", str(nfe)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                row = json.loads(out.strip().splitlines()[-1])
                rows.append(row)
                print(
                    f"{operator:7s} {method:13s} D={dim:>7d}  analysis {row['analysis_median_s']:8.3f} s "
                    f"(first {row['analysis_first_s']:.3f})  forecast {row['forecast_step_s']:.4f} s  "
                    f"peak {row['peak_rss_mb']:7.0f} MB (+{row['rss_growth_mb']:.0f})  "
                    f"rmse {row['rmse_forecast']:.3f} -> {row['rmse_analysis']:.3f}",
                    flush=True,
                )
    exponents = {}
    for operator in args.operators:
        for method in args.methods:
            pts = [
                (r["dim"], r["analysis_median_s"])
                for r in rows
                if r["operator"] == operator and r["method"] == method
            ]
            if len(pts) >= 2:
                exponents[f"{operator}/{method}"] = slope(pts)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, 2 cores, 1 torch thread",
        "python": platform.python_version(),
        "quick": args.quick,
        "rows": rows,
        "cost_exponent_vs_dim": exponents,
    }
    if not args.quick:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(exponents, indent=1))


if __name__ == "__main__":
    main()
