"""Online fine-tuning of MASF over long windows: what drifts, what memorizes, what helps (docs/finetuning.md).

One pretrained network per experiment (trained here once, to its plateau: the loss curve is stored), then
MASF-bridge runs with several fine-tuning variants on the same truths, observations and initial
ensembles, 3 seeds each, through ``masf.assimilate.run`` (the pipeline's cycle loop). Reported per variant:
time-mean analysis RMSE after a burn-in of 20 cycles and the time-mean spread over RMSE, per seed.

    python benchmarks/finetuning/run.py --experiment l63 --out benchmarks/finetuning/l63.json
    python benchmarks/finetuning/run.py --experiment l96 --out benchmarks/finetuning/l96.json

Experiments: ``l63`` (DAPPER's Sakov 2012 setting: every variable observed, noise variance 2 every 25
steps of 0.01, N = 20, 200 cycles) and ``l96`` (40 variables, every 4th observed, σ = 1, N = 20, 200
cycles). Variants: see ``VARIANTS``; ``--variants`` picks a subset.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from masf.assimilate import run
from masf.filters import make_filter
from masf.operators import make_operator
from masf.rng import generator
from masf.systems import make_system
from masf.train import load_checkpoint

EXPERIMENTS = {
    "l63": {
        "system": {"name": "lorenz63", "dt": 0.01},
        "operator": {"operator": "identity", "noise_std": 1.4142135},
        "steps_per_cycle": 25,
        "network": {
            "width": 64,
            "depth": 2,
            "pretrain_epochs": 60,
            "pretrain_batch": 64,
            "pretrain_lr": 1e-3,
        },
    },
    "l96": {
        "system": {"name": "lorenz96", "dim": 40, "forcing": 8.0, "dt": 0.05},
        "operator": {"operator": "every_kth", "k": 4, "noise_std": 1.0},
        "steps_per_cycle": 1,
        "network": {
            "width": 32,
            "depth": 1,
            "pretrain_epochs": 20,
            "pretrain_batch": 64,
            "pretrain_lr": 1e-3,
        },
    },
}
CYCLES, MEMBERS, SEEDS, BURN_IN, SAMPLES = 200, 20, (0, 1, 2), 20, 4000

# MASF-bridge variants (nfe 30); every key not given takes the MASF defaults.
VARIANTS = {
    "no_finetuning": {"finetune_epochs": 0},
    "no_finetuning_plugin_mean": {"finetune_epochs": 0, "x0_uncertainty": "none"},
    "paper": {
        "finetune_epochs": 120,
        "finetune_reset": False,
        "finetune_replay": 0.0,
        "finetune_optimizer": "fresh",
    },
    "members_only": {"finetune_epochs": 40, "finetune_replay": 0.0},
    "replay_0.3": {"finetune_epochs": 40, "finetune_replay": 0.3},
    "replay_0.5": {"finetune_epochs": 40, "finetune_replay": 0.5},
    "replay_0.5_plugin_mean": {"finetune_epochs": 40, "finetune_replay": 0.5, "x0_uncertainty": "none"},
    "replay_0.5_fresh_optimizer": {
        "finetune_epochs": 40,
        "finetune_replay": 0.5,
        "finetune_optimizer": "fresh",
    },
    "replay_0.5_no_reset": {"finetune_epochs": 40, "finetune_replay": 0.5, "finetune_reset": False},
    "replay_0.5_jitter_0.5": {"finetune_epochs": 40, "finetune_replay": 0.5, "finetune_jitter": 0.5},
    "replay_0.3_long": {"finetune_epochs": 120, "finetune_replay": 0.3},
    "replay_0.8": {"finetune_epochs": 40, "finetune_replay": 0.8},
    "replay_0.9": {"finetune_epochs": 40, "finetune_replay": 0.9},
    "replay_0.5_jitter_1.0": {"finetune_epochs": 40, "finetune_replay": 0.5, "finetune_jitter": 1.0},
    "replay_0.8_jitter_1.0": {"finetune_epochs": 40, "finetune_replay": 0.8, "finetune_jitter": 1.0},
    "replay_0.5_few_steps": {"finetune_epochs": 5, "finetune_replay": 0.5},
    "replay_0.99": {"finetune_epochs": 40, "finetune_replay": 0.99},
    "replay_0.5_lr_3e-5": {"finetune_epochs": 40, "finetune_replay": 0.5, "finetune_lr": 3e-5},
    "defaults": {},
}


def experiment(exp: dict, system, op, seed: int) -> tuple:
    """Truth ``(cycles, *S)``, observations and the initial ensemble of one seed."""
    g = generator(seed, "truth")
    x = system.sample_climatology(1, generator=g)
    truth = []
    for _ in range(exp["cycles"]):
        x = system.step(x, exp["steps_per_cycle"], generator=g)
        truth.append(x[0])
    truth = torch.stack(truth)
    obs = op.observe(truth, generator=generator(seed, "obs_noise"))
    ens = system.sample_climatology(MEMBERS, generator=generator(seed, "ensemble"))
    return truth, obs, ens


def seed_result(ds, seed: int, burn_in: int) -> dict:
    """One seed's time-mean analysis RMSE and spread/RMSE after ``burn_in`` cycles, and the run status."""
    r, sp = ds.rmse.values[burn_in:], ds.spread.values[burn_in:]
    return {
        "seed": seed,
        "rmse": float(r.mean()),
        "spread_rmse": float(sp.mean() / r.mean()),
        "status": ds.attrs["status"],
    }


def seed_columns(seeds: list[dict]) -> tuple[str, str]:
    """The per-seed RMSE and spread/RMSE of a result as two comma-separated table cells."""
    return ", ".join(f"{s['rmse']:.2f}" for s in seeds), ", ".join(f"{s['spread_rmse']:.2f}" for s in seeds)


def table(results: dict) -> str:
    """The results as a markdown table: variant, its keys, median RMSE, RMSE and spread/RMSE per seed."""
    lines = [
        "| variant | keys (others: MASF defaults) | median RMSE | RMSE per seed | spread/RMSE per seed |",
        "|---|---|---|---|---|",
    ]
    for name, v in results["variants"].items():
        rmse, ratio = seed_columns(v["seeds"])
        keys = json.dumps(v["params"]) if v["params"] else "(defaults)"
        lines.append(f"| `{name}` | `{keys}` | **{v['median_rmse']:.2f}** | {rmse} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", choices=sorted(EXPERIMENTS), required=True)
    p.add_argument("--variants", help="comma-separated subset of VARIANTS (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint", help="pretrained network to reuse (default: <out>.pt, trained if missing)")
    p.add_argument("--network", help="JSON of network keys overriding the experiment's (e.g. a cheaper net)")
    p.add_argument("--cycles", type=int, default=CYCLES)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    exp = EXPERIMENTS[args.experiment]
    exp = {**exp, "network": {**exp["network"], **json.loads(args.network or "{}")}, "cycles": args.cycles}
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"experiment": exp, "variants": {}}
    system = make_system(**exp["system"])
    op = make_operator(
        exp["operator"]["operator"],
        system.state_shape,
        **{k: v for k, v in exp["operator"].items() if k != "operator"},
    )
    data = system.sample_climatology(SAMPLES, generator=generator(0, "pretrain_data"))
    base = {"sampler": "bridge", "nfe": 30, **exp["network"]}
    ckpt = Path(args.checkpoint or out.with_suffix(".pt"))
    if not ckpt.exists():
        started = time.perf_counter()
        make_filter("masf", **base).pretrain(
            data, op, checkpoint=str(ckpt), generator=generator(0, "train"), progress=False
        )
        train = load_checkpoint(ckpt).extra["train"]
        results["pretraining"] = {
            "seconds": time.perf_counter() - started,
            "train_loss": train["train_loss"],
            "val_loss": train["val_loss"],
        }
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    runs = {s: experiment(exp, system, op, s) for s in SEEDS}
    for name in names:
        started = time.perf_counter()
        per_seed = []
        for s in SEEDS:
            truth, obs, ens = runs[s]
            f = make_filter("masf", **base, **VARIANTS[name])
            ds = run(
                system,
                op,
                f,
                obs,
                ens,
                truth=truth,
                steps_per_cycle=exp["steps_per_cycle"],
                seed=s,
                pretrained=str(ckpt),
                climatology=data,
            )
            per_seed.append(seed_result(ds, s, BURN_IN))
        rm = sorted(x["rmse"] for x in per_seed)
        results["variants"][name] = {
            "params": VARIANTS[name],
            "seeds": per_seed,
            "median_rmse": rm[len(rm) // 2],
            "seconds": time.perf_counter() - started,
        }
        print(
            f"{name:28s} rmse {[round(x['rmse'], 2) for x in per_seed]} spread/rmse {[round(x['spread_rmse'], 2) for x in per_seed]}",
            flush=True,
        )
        out.write_text(json.dumps(results, indent=1))
        out.with_suffix(".md").write_text(table(results))


if __name__ == "__main__":
    main()
