"""First end-to-end number: MASF on Lorenz-96 with learned networks (issue 3, item 7).

Setting: Lorenz-96, 40 variables, F = 8, one RK4 step of dt = 0.05 per cycle, every 4th variable observed
with noise std 1, N = 20 members, 200 cycles, seeds 0, 1, 2. One network (UNet1D, x0-prediction under the
measurement-aware process) is pretrained once on climatology snapshots and reused by every seed and both
samplers, then fine-tuned online on each forecast ensemble. EnKF (square root) and LETKF run on the same
truths and observations for context. Metrics are averaged over cycles after a burn-in.

    .venv/bin/python benchmarks/l96_masf/run.py            # the committed numbers (results.json, README.md)
    .venv/bin/python benchmarks/l96_masf/run.py --quick    # a 2-minute smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from masf.assimilate import run
from masf.filters import make_filter
from masf.operators import make_operator
from masf.rng import generator
from masf.systems import make_system

HERE = Path(__file__).resolve().parent


def simulate(system, operator, cycles: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truth (cycles, 40) on the attractor and its observations."""
    x = system.sample_climatology(1, generator=generator(seed, "truth"))
    states = []
    for _ in range(cycles):
        x = system.step(x)
        states.append(x[0])
    truth = torch.stack(states)
    return truth, operator.observe(truth, generator=generator(seed, "obs_noise"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script")
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--burn-in", type=int, default=50, help="cycles left out of the time means")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nfe", type=int, default=100)
    parser.add_argument("--pretrain-samples", type=int, default=4000)
    parser.add_argument("--pretrain-epochs", type=int, default=60)
    parser.add_argument("--finetune-epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument(
        "--checkpoint", type=Path, help="reuse this pretrained network instead of training one"
    )
    args = parser.parse_args()
    if args.quick:
        args.cycles, args.burn_in, args.seeds, args.nfe = 20, 5, [0], 20
        args.pretrain_samples, args.pretrain_epochs, args.finetune_epochs = 400, 2, 2
        args.out = Path(tempfile.mkdtemp()) / "results.json"
    torch.set_num_threads(args.threads)

    system = make_system("lorenz96", dim=40, forcing=8.0, dt=0.05)
    operator = make_operator("every_kth", system.state_shape, k=4, noise_std=1.0)
    common = {"nfe": args.nfe, "pretrain_epochs": args.pretrain_epochs, "pretrain_batch": 64}
    common |= {"pretrain_lr": 1e-3, "finetune_epochs": args.finetune_epochs, "finetune_batch": 20}
    methods = {
        "enkf_sqrt": ("enkf", {"variant": "sqrt", "inflation": 1.05, "rotate": True}),
        "letkf": ("letkf", {"radius": 7.3, "inflation": 1.05}),
        "masf_bridge": ("masf", {"sampler": "bridge", **common}),
        "masf_reference": ("masf", {"sampler": "reference", **common}),
    }
    checkpoint = args.checkpoint or Path(tempfile.mkdtemp(prefix="masf-l96-")) / "masf.pt"
    pretrain_s = None
    if not checkpoint.exists():
        data = system.sample_climatology(args.pretrain_samples, generator=generator(0, "pretrain_data"))
        started = time.perf_counter()
        make_filter("masf", **methods["masf_bridge"][1]).pretrain(
            data, operator, checkpoint=str(checkpoint), generator=generator(0, "train")
        )
        pretrain_s = time.perf_counter() - started
        print(f"pretraining: {pretrain_s:.1f} s", flush=True)

    rows = []
    for seed in args.seeds:
        truth, obs = simulate(system, operator, args.cycles, seed)
        ens0 = system.sample_climatology(20, generator=generator(seed, "ensemble"))
        for label, (name, params) in methods.items():
            f = make_filter(name, **params)
            ds = run(system, operator, f, obs, ens0, truth=truth, seed=seed, pretrained=str(checkpoint))
            b = args.burn_in
            row = {
                "method": label,
                "seed": seed,
                "status": ds.attrs["status"],
                "rmse": float(ds.rmse[b:].mean()),
                "spread": float(ds.spread[b:].mean()),
                "rmse_forecast": float(ds.rmse_forecast[b:].mean()),
                "crps": float(ds.crps[b:].mean()),
                "wall_clock_s": float(ds.attrs["wall_clock_total_s"]),
                "finetune_s": float(ds.attrs["wall_clock_finetune_s"]),
                "sampling_s": float(ds.attrs["wall_clock_sampling_s"]),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    summary = {}
    for label in methods:
        mine = [r for r in rows if r["method"] == label]
        n = len(mine)
        summary[label] = {
            key: sum(r[key] for r in mine) / n
            for key in ("rmse", "spread", "rmse_forecast", "crps", "wall_clock_s", "finetune_s", "sampling_s")
        }
        summary[label]["spread_over_rmse"] = summary[label]["spread"] / summary[label]["rmse"]
        summary[label]["diverged"] = sum(r["status"] != "ok" for r in mine)
    result = {
        "setting": "L96 D=40 F=8 dt=0.05, every 4th observed, sigma=1, N=20",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "methods": {k: {"filter": v[0], **v[1]} for k, v in methods.items()},
        "pretrain_s": pretrain_s,  # None when --checkpoint reused an earlier pretraining
        "machine": f"{platform.machine()} {platform.processor() or ''} threads={args.threads}, torch {torch.__version__}",
        "runs": rows,
        "summary": summary,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
