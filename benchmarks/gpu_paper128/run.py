"""The paper's Kolmogorov 128² setting on one GPU (issue 7, item 3): times and RMSE of every method.

Setting (method.md §1, §13): Kolmogorov flow 128², Re = 1000, Δt = 0.2; grid mask stride 10, σ = 0.1;
N = 10 members; the truth and the ensemble start from independent random fields spun up 40 outer steps;
6 analyses every 10 outer steps (steps 50, 60, ..., 100). Pretraining data: climatology snapshots at step 50.
Methods: MASF (bridge and reference; nfe 150, the paper's weights), SF (nfe 500), SSLS (500 steps), EnKF
(full, ρ = 1.05), LETKF (radius 5, ρ = 1.1), particle filter. Pretraining and fine-tuning epochs are cut to
fit the device budget (``--pretrain-epochs``, ``--finetune-epochs``; the paper uses 200 and 120): the
numbers measure cost and plumbing on a GPU, not the paper's accuracy.

    python benchmarks/gpu_paper128/run.py --out "$OUT/gpu_paper128.json"     # on the GPU machine

Results are written after every method, so a run stopped by its time limit keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from masf.assimilate import run
from masf.filters import make_filter
from masf.operators import make_operator
from masf.rng import generator
from masf.systems import make_system


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=128, help="grid size")
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--pretrain-samples", type=int, default=1000)
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--methods", nargs="+", default=["enkf", "letkf", "pf", "masf_bridge", "masf_reference", "sf", "ssls"]
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="nfe 3 everywhere: a CPU check of the script")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False

    system = make_system("kolmogorov", n=args.n)
    operator = make_operator("grid_mask", system.state_shape, stride=10, noise_std=0.1)
    train = {"pretrain_epochs": args.pretrain_epochs, "pretrain_batch": 32, "pretrain_lr": 3e-4}
    train |= {"finetune_epochs": args.finetune_epochs, "finetune_batch": 32, "finetune_lr": 3e-4}
    unet = {"width": 32, "depth": 2}
    methods = {
        "masf_bridge": ("masf", {"sampler": "bridge", "nfe": 150, **train, **unet}),
        "masf_reference": (
            "masf",
            {
                "sampler": "reference",
                "nfe": 150,
                **train,
                **unet,
                "score_weights": (0.95, 1.6, 1.5),
                "guidance_weights": (1.1, 1.5, 2.0),
            },
        ),
        "sf": ("sf", {"nfe": 500, "sigma_max": 25.0, "tol": 100.0, **train, **unet}),
        "ssls": (
            "ssls",
            {"sigma": 0.05, "nfe": 500, "step": 4e-3, "decay": 1e-3, "tol": 100.0, **train, **unet},
        ),
        "enkf": ("enkf", {"variant": "pertobs", "inflation": 1.05, "mode": "full", "eps": 1e-6}),
        "letkf": ("letkf", {"radius": 5.0, "inflation": 1.1, "eps": 1e-6}),
        "pf": ("pf", {"reg": 0.1}),
    }
    if args.smoke:
        methods = {k: (n, {**p, "nfe": 3} if "nfe" in p else p) for k, (n, p) in methods.items()}
    result: dict = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "methods": {},
        "stages": {},
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    t0 = time.perf_counter()
    x = system.sample_climatology(
        1, generator=generator(args.seed, "truth", device), spinup_steps=40, device=device
    )
    truth = []
    for _ in range(6):
        x = system.step(x, 10)
        truth.append(x[0])
    truth = torch.stack(truth)
    obs = operator.observe(truth, generator=generator(args.seed, "obs_noise", device))
    ens0 = system.sample_climatology(
        args.members, generator=generator(args.seed, "ensemble", device), spinup_steps=40, device=device
    )
    sync()
    result["stages"]["simulate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = system.sample_climatology(
        args.pretrain_samples,
        generator=generator(args.seed, "pretrain_data", device),
        spinup_steps=50,
        device=device,
    )
    sync()
    result["stages"]["dataset_s"] = time.perf_counter() - t0
    save()

    workdir = Path(tempfile.mkdtemp())
    checkpoints: dict[str, str] = {}
    for label in args.methods:
        name, params = methods[label]
        f = make_filter(name, **params)
        ckpt = None
        if getattr(f, "needs_pretraining", False):
            key = "masf" if name == "masf" else name
            if key not in checkpoints:
                t0 = time.perf_counter()
                path = workdir / f"{key}.pt"
                f.pretrain(
                    data,
                    operator,
                    checkpoint=str(path),
                    generator=generator(args.seed, "train", device),
                    device=device,
                    progress=False,
                )
                sync()
                result["stages"][f"pretrain_{key}_s"] = time.perf_counter() - t0
                checkpoints[key] = str(path)
            ckpt = checkpoints[key]
        ds = run(
            system, operator, f, obs, ens0, truth=truth, steps_per_cycle=10, seed=args.seed, pretrained=ckpt
        )
        result["methods"][label] = {
            "status": ds.attrs["status"],
            "rmse_analysis_mean": float(ds.rmse.mean()),
            "rmse_per_cycle": [float(v) for v in ds.rmse.values],
            "rmse_forecast_mean": float(ds.rmse_forecast.mean()),
            "spread_mean": float(ds.spread.mean()),
            "ssim_mean": float(ds.ssim.mean()),
            **{k: float(v) for k, v in ds.attrs.items() if k.startswith("wall_clock_")},
        }
        print(label, json.dumps(result["methods"][label]), flush=True)
        save()


if __name__ == "__main__":
    main()
