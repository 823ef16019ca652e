"""Validation loss against wall-clock for the MASF denoisers on 2 CPU cores (issue "MASF done right", item 3).

Each recipe trains a network with ``masf.train.fit`` (the pipeline's training loop) for a wall-clock budget;
after every epoch (at most every ``--eval-every`` seconds of training) the weights ``fit`` would return (the
EMA weights when the recipe has an EMA) are scored on one fixed validation set: held-out climatology
states, 4 draws of (t, noise) each, the same draws for every recipe and every evaluation. Training time
excludes the evaluations. The loss is MASF's x0-prediction loss under the measurement-aware process of
the experiment's operator, in one normalization (fitted on the validation states) shared by all recipes,
so their numbers compare.

    python benchmarks/training/run.py --system k64 --recipes baseline,fast --minutes 20 --out benchmarks/training/k64
    python benchmarks/training/run.py --system l96 --recipes baseline,fast --minutes 5 --out benchmarks/training/l96

Writes ``<out>/<recipe>.json`` (the curve and the settings); ``plot.py`` draws the curves and the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from masf.diffusion import MeasurementAwareProcess, Normalizer
from masf.filters.masf import MASF
from masf.nets import count_parameters, make_network
from masf.operators import make_operator
from masf.rng import generator
from masf.systems import make_system
from masf.systems.snapshots import snapshots
from masf.train import fit
from masf.train.loop import _validation_loss

# The experiments: the system, the operator whose process the network learns, and the data of the recipes.
SYSTEMS = {
    "k64": {
        "system": {"name": "kolmogorov", "n": 64, "reynolds": 1000.0, "dt": 0.2},
        "operator": {"operator": "grid_mask", "stride": 8, "noise_std": 0.1},
        "spinup_steps": 40,
        "validation": {"n": 256, "per_trajectory": 8, "interval": 8},  # steps 40..96 of 64 trajectories
    },
    "l96": {
        "system": {"name": "lorenz96", "dim": 40, "forcing": 8.0, "dt": 0.05},
        "operator": {"operator": "every_kth", "k": 4, "noise_std": 1.0},
        "spinup_steps": None,
        "validation": {"n": 1024, "per_trajectory": 1, "interval": 1},
    },
}

# Recipes. "baseline" is what the committed benchmarks/accuracy configs trained with before this issue;
# the others change one thing at a time, "fast" is the chosen combination (the new defaults).
RECIPES = {
    "k64": {
        "baseline": {
            "data": {"n": 200, "per_trajectory": 1, "interval": 1},
            "net": {"kind": "unet2d", "model_channels": 16},
            "batch": 16,
            "lr": 1e-3,
        },
        # the new defaults: trajectory snapshots (13 per trajectory, 5 steps apart, 200 trajectories), a
        # lean deep UNet (8 channels at 64², 4 levels to 8²), batch 4, cosine learning rate, EMA
        "fast": {
            "data": {"n": 2600, "per_trajectory": 13, "interval": 5},
            "net": {"kind": "unet2d", "model_channels": 8, "channel_mult": [1, 2, 4, 8]},
            "batch": 4,
            "lr": 2e-3,
            "schedule": "cosine",
            "warmup": 0.05,
            "ema": 0.999,
        },
    },
    "l96": {
        "baseline": {
            "data": {"n": 4000, "per_trajectory": 1, "interval": 1},
            "net": {"kind": "unet1d", "model_channels": 32, "num_res_blocks": 1},
            "batch": 64,
            "lr": 1e-3,
        },
        # the new defaults: half the width, batch 32, cosine learning rate with warm-up, EMA
        "fast": {
            "data": {"n": 4000, "per_trajectory": 1, "interval": 1},
            "net": {"kind": "unet1d", "model_channels": 16, "num_res_blocks": 1},
            "batch": 32,
            "lr": 3e-3,
            "schedule": "cosine",
            "warmup": 0.05,
            "ema": 0.999,
        },
    },
}


def _load_recipes(path: str | None) -> None:
    """Merge extra recipes from a JSON file {system: {name: recipe}} (for exploration runs)."""
    if path:
        for system, recipes in json.loads(Path(path).read_text()).items():
            RECIPES[system].update(recipes)


def data_for(exp: dict, spec: dict, seed: int, role: str) -> torch.Tensor:
    system = make_system(**exp["system"])
    return snapshots(
        system,
        spec["n"],
        generator=generator(seed, role),
        spinup_steps=exp["spinup_steps"],
        per_trajectory=spec["per_trajectory"],
        interval=spec["interval"],
    )


def cached(path: Path, make) -> torch.Tensor:
    if path.exists():
        return torch.load(path, weights_only=True)
    x = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(x, path)
    return x


def run_recipe(name: str, system_name: str, minutes: float, eval_every: float, cache: Path) -> dict:
    exp, recipe = SYSTEMS[system_name], RECIPES[system_name][name]
    val = cached(cache / f"{system_name}_val.pt", lambda: data_for(exp, exp["validation"], 1000, "truth"))
    d = recipe["data"]
    tag = f"{system_name}_train_{d['n']}_{d['per_trajectory']}_{d['interval']}.pt"
    data_started = time.perf_counter()
    train = cached(cache / tag, lambda: data_for(exp, d, 0, "pretrain_data"))
    data_seconds = time.perf_counter() - data_started
    norm = Normalizer().fit(val)
    op = make_operator(
        exp["operator"]["operator"],
        tuple(val.shape[1:]),
        **{k: v for k, v in exp["operator"].items() if k != "operator"},
    )
    loss_fn = MASF().loss(MeasurementAwareProcess(op, norm))
    train_n, val_n = norm.norm_x(train), norm.norm_x(val)
    reps = 4
    val_rep = val_n.repeat(reps, *([1] * (val_n.ndim - 1)))
    val_idx = torch.arange(len(val_rep))
    sizes = {k: v for k, v in recipe["net"].items() if k != "kind"}
    net = make_network(recipe["net"]["kind"], tuple(val.shape[1:]), generator=generator(0, "train"), **sizes)
    if recipe.get("compile"):
        net.forward = torch.compile(net.forward)  # type: ignore[method-assign]
    batch, lr = recipe["batch"], recipe["lr"]
    steps_per_epoch = math.ceil(len(train_n) / batch)

    # time a few steps to size the epochs to the budget (the cosine schedule needs the total in advance)
    probe = make_network(recipe["net"]["kind"], tuple(val.shape[1:]), **sizes)
    if recipe.get("compile"):
        probe.forward = torch.compile(probe.forward)  # type: ignore[method-assign]

    def probe_seconds(steps: int) -> float:
        t0 = time.perf_counter()
        fit(
            probe,
            loss_fn,
            train_n[: steps * batch],
            epochs=1,
            batch_size=batch,
            lr=lr,
            generator=generator(1, "train"),
            val_fraction=0.0,
            progress=False,
        )
        return time.perf_counter() - t0

    probe_seconds(2)  # warm-up (and compilation)
    step_s = (probe_seconds(6) - probe_seconds(2)) / 4
    epochs = max(1, int(minutes * 60 / (step_s * steps_per_epoch)))

    curve: list[dict] = []
    clock = {"train": 0.0, "mark": time.perf_counter(), "last_eval": -math.inf}

    total = epochs * steps_per_epoch

    def evaluate(step: int, model, ema_state) -> None:
        now = time.perf_counter()
        clock["train"] += now - clock["mark"]
        if clock["train"] - clock["last_eval"] >= eval_every or step == total:
            v = _validation_loss(model, ema_state, loss_fn, val_rep, val_idx, 256, 12345, torch.device("cpu"))
            curve.append(
                {"steps": step, "epoch": step / steps_per_epoch, "seconds": clock["train"], "val_loss": v}
            )
            clock["last_eval"] = clock["train"]
            print(f"{name}: step {step}/{total} {clock['train']:.0f}s val {v:.5f}", flush=True)
        clock["mark"] = time.perf_counter()

    clock["mark"] = time.perf_counter()
    fit(
        net,
        loss_fn,
        train_n,
        epochs=epochs,
        batch_size=batch,
        lr=lr,
        generator=generator(0, "train"),
        ema=recipe.get("ema"),
        val_fraction=0.0,
        lr_schedule=recipe.get("schedule", "constant"),
        warmup=recipe.get("warmup", 0.0),
        progress=False,
        callback=evaluate,
    )
    return {
        "recipe": recipe,
        "system": exp,
        "parameters": count_parameters(net),
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "probe_step_seconds": step_s,
        "data_seconds": data_seconds,
        "curve": curve,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--system", choices=sorted(SYSTEMS), required=True)
    p.add_argument("--recipes", required=True, help="comma-separated recipe names")
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per recipe")
    p.add_argument("--eval-every", type=float, default=60.0, help="seconds of training between evaluations")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--extra", help="JSON file with more recipes {system: {name: recipe}}")
    p.add_argument("--cache", default="/tmp/masf-training-cache", help="where the data sets are kept")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    _load_recipes(args.extra)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.recipes.split(","):
        result = run_recipe(name, args.system, args.minutes, args.eval_every, Path(args.cache))
        result["load"] = os.getloadavg()
        (out / f"{name}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
