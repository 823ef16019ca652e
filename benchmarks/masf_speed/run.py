"""Speed of MASF (issue "Evidence", item 2): amortization, cost against state dimension, RMSE against NFE.

Three parts, each selectable with ``--parts`` (default: all three, in this order):

``amortization``  The paper claims that amortized pretraining makes MASF up to 28.2x faster in wall clock
    than training a score network from scratch at every assimilation run. Setting: Kolmogorov flow 64²
    (Re 1000, Δt 0.2), grid mask stride 4, σ = 0.1, N = 10 members, 6 analyses every 10 outer steps; truth
    and ensemble are independent random fields spun up 40 outer steps (streams "truth" and "ensemble");
    pretraining data are 1000 climatology snapshots spun up 50 steps (stream "pretrain_data"). Every
    method uses the same UNet (width 32, depth 2). Methods:
      masf_bridge_pretrained     pretrain once (30 epochs, batch 32, lr 3e-4), then per run: online
                                 fine-tuning 30 epochs per analysis (from the 2nd on), bridge sampler, nfe 150;
      masf_reference_pretrained  the same checkpoint, the paper's reference sampler (its default weights
                                 w_s = (0.95, 1.6, 1.5), w_g = (1.1, 1.5, 2.0)), nfe 150;
      masf_bridge_scratch        no pretraining: a fresh network trained on the ensemble for 200 epochs at the
                                 first analysis and for another 200 at every later one (MASF scratch=True);
      sf_pretrained              SF (Bao et al.), nfe 500, σ_max 25, tol 100, its own pretraining (same epochs).
    Recorded per method: pretraining seconds (once, separately), the run's wall clock (total, analysis,
    fine-tuning, sampling; ``masf.assimilate.run`` attributes), mean analysis RMSE and spread, status.
    Derived: speedup of one pretrained-MASF run over one scratch run (run time only: scratch / pretrained),
    and amortized over R runs, R·t_scratch / (t_pretrain + R·t_pretrained) for R = 1, 5, 25, on the
    ``total`` and the ``analysis`` wall clock (forecast excluded), plus the break-even R.

``cost``  Seconds of ONE MASF-bridge analysis (fine-tune ``--finetune-epochs`` epochs + sampling, nfe 150,
    N = 10, width 32 depth 2) against the state dimension D = 2n² on Kolmogorov grids n = 32 64 128 256
    (CUDA; 32 64 128 on the CPU), grid mask stride 4. Cost does not depend on the weights, so the network
    is pretrained for 1 epoch on 16 random fields (not timed). Each grid: one analysis at cycle 0 (loads the
    checkpoint, sampling only; warm-up), one at cycle 1 (warm-up of fine-tuning), then ``--cost-repeats``
    timed analyses at cycles >= 2, calling ``filter.analyse`` directly with a ``masf.filters.Context``
    (the call ``masf.assimilate.run`` makes, without the forecast). LETKF (radius 5, ρ 1.1) and EnKF
    (perturbed observations, full, ρ 1.05) are timed the same way (one warm-up call, which for the LETKF
    builds its local domains, then timed calls). Exponents p of time ∝ D^p are least-squares fits on
    log-log, over all grids and over the grids n >= 64 (where the GPU is no longer launch-bound); the
    latter is the preferred one when it has >= 3 points.

``nfe``  Mean analysis RMSE (and spread, sampling seconds) against the number of denoiser evaluations for
    both MASF samplers (bridge, reference) in the ``amortization`` setting, with the checkpoint of that part
    (pretrained here if it did not run), nfe 10 20 50 100 150 300 600, experiment seeds 42 43 (the seed
    drives truth, observations, initial ensemble, sampling and fine-tuning streams; the checkpoint is shared).

Commands (the defaults are sized for ONE H100 within ~6 minutes in all; see ``--budget-s``):

    python benchmarks/masf_speed/run.py --out "$OUT/masf_speed"                       # GPU, all parts
    python benchmarks/masf_speed/run.py --out "$OUT/masf_speed" --parts amortization  # one part
    OMP_NUM_THREADS=1 python benchmarks/masf_speed/run.py --smoke --device cpu --threads 1 \\
        --out /tmp/masf_speed_smoke                                  # < 1 min check of the script
    python benchmarks/masf_speed/run.py --device cpu --threads 8 --n 32 --pretrain-samples 200 \\
        --pretrain-epochs 5 --finetune-epochs 5 --scratch-epochs 30 --nfe-masf 50 --nfe-sf 100 \\
        --cost-grids 32 64 --cost-nfe 50 --nfe-list 10 50 150 --nfe-seeds 42 --out /tmp/masf_speed_cpu
    python benchmarks/masf_speed/plot.py /tmp/masf_speed_smoke/results.json             # figures only

Shrinking on the GPU if time runs short: ``--pretrain-epochs``, ``--scratch-epochs``, ``--finetune-epochs``,
``--cost-grids 32 64 128``, ``--nfe-list 10 50 150 600``, ``--nfe-seeds 42``, ``--methods ...``.

Output: ``OUT/results.json`` rewritten after every measurement (a killed run keeps what it finished), and
``amortization.png``, ``cost_vs_dim.png``, ``rmse_vs_nfe.png`` beside it (``plot.py``). One line per
measurement on stdout. Seconds are wall clock, with ``torch.cuda.synchronize()`` around every timed
region on CUDA. ``--budget-s`` (default 300 on CUDA, off on the CPU) skips measurements that would start
after that many seconds since launch; they are listed under ``skipped``.

What the numbers mean: they measure cost, not the paper's accuracy (epochs are cut to fit the budget;
the paper uses 200 pretraining and 120 fine-tuning epochs at 128²). RMSE is of the analysis ensemble mean
against the truth in velocity units, averaged over the analysis cycles.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masf.assimilate import git_commit, run
from masf.diffusion.samplers import DEFAULTS as SAMPLER_DEFAULTS
from masf.filters import Context, make_filter
from masf.operators import make_operator
from masf.rng import generator
from masf.systems import make_system

PARTS = ("amortization", "cost", "nfe")
METHODS = ("masf_bridge_pretrained", "masf_reference_pretrained", "masf_bridge_scratch", "sf_pretrained")
SAMPLERS = ("bridge", "reference")
STAGES = ("total", "analysis", "forecast", "finetune", "sampling")

# --smoke: tiny sizes, so that the whole script runs in well under a minute on one CPU thread.
SMOKE = {
    "n": 32,
    "cycles": 2,
    "steps_per_cycle": 2,
    "spinup": 10,
    "data_spinup": 10,
    "pretrain_samples": 16,
    "pretrain_epochs": 1,
    "pretrain_batch": 8,
    "finetune_epochs": 1,
    "finetune_batch": 8,
    "scratch_epochs": 2,
    "width": 8,
    "depth": 1,
    "nfe_masf": 3,
    "nfe_sf": 3,
    "cost_grids": [32, 64],
    "cost_nfe": 3,
    "cost_data": 4,
    "nfe_list": [2, 3],
    "nfe_seeds": [42, 43],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder (results.json and PNGs)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (torch.set_num_threads)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: a < 1 min CPU check of the script")
    p.add_argument("--budget-s", type=float, default=None, help="skip measurements starting later (0: off)")
    p.add_argument("--tf32", choices=("default", "on", "off"), default="default", help="TF32 on CUDA")
    p.add_argument("--no-plot", action="store_true", help="do not write the figures at the end")
    p.add_argument("--seed", type=int, default=42, help="seed of part (a), the checkpoints and part (b)")
    g = p.add_argument_group("setting of parts amortization and nfe")
    g.add_argument("--n", type=int, default=64, help="Kolmogorov grid size")
    g.add_argument("--members", type=int, default=10, help="ensemble size N (all parts)")
    g.add_argument("--cycles", type=int, default=6)
    g.add_argument("--steps-per-cycle", type=int, default=10)
    g.add_argument("--spinup", type=int, default=40, help="outer steps of spin-up of truth and ensemble")
    g.add_argument("--data-spinup", type=int, default=50, help="spin-up of the pretraining snapshots")
    g.add_argument("--stride", type=int, default=4, help="grid mask stride (all parts)")
    g.add_argument("--noise-std", type=float, default=0.1, help="observation noise σ (all parts)")
    g.add_argument("--pretrain-samples", type=int, default=1000)
    g.add_argument("--pretrain-epochs", type=int, default=30)
    g.add_argument("--pretrain-batch", type=int, default=32)
    g.add_argument("--lr", type=float, default=3e-4, help="pretraining and fine-tuning learning rate")
    g.add_argument("--finetune-epochs", type=int, default=30, help="per analysis (all parts)")
    g.add_argument("--finetune-batch", type=int, default=32)
    g.add_argument("--scratch-epochs", type=int, default=200)
    g.add_argument("--width", type=int, default=32, help="UNet base width (all parts)")
    g.add_argument("--depth", type=int, default=2, help="UNet residual blocks per level (all parts)")
    g.add_argument("--nfe-masf", type=int, default=150)
    g.add_argument("--nfe-sf", type=int, default=500)
    g.add_argument("--sf-sigma-max", type=float, default=25.0)
    g.add_argument("--sf-tol", type=float, default=100.0)
    g.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    g.add_argument("--repeats", nargs="+", type=int, default=[1, 5, 25], help="R of the amortized speedup")
    g = p.add_argument_group("part cost")
    g.add_argument("--cost-grids", nargs="+", type=int, default=None, help="default 32 64 128 [256 on CUDA]")
    g.add_argument("--cost-nfe", type=int, default=150)
    g.add_argument("--cost-data", type=int, default=16, help="random fields for the 1-epoch pretraining")
    g.add_argument("--cost-repeats", type=int, default=1, help="timed analyses per grid and method")
    g.add_argument("--cost-min-n", type=int, default=64, help="smallest grid of the 'large' fit")
    g = p.add_argument_group("part nfe")
    g.add_argument("--nfe-list", nargs="+", type=int, default=[10, 20, 50, 100, 150, 300, 600])
    g.add_argument("--nfe-seeds", nargs="+", type=int, default=[42, 43])
    g.add_argument("--nfe-samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    pre, _ = p.parse_known_args(argv)
    if pre.smoke:
        p.set_defaults(**SMOKE)  # explicit flags still win
    return p.parse_args(argv)


def _tf32_state() -> dict[str, Any]:
    return {
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
    }


def _stats(ds: Any) -> dict[str, Any]:
    """What we keep of a ``masf.assimilate.run`` dataset."""
    rmse = ds.rmse.values.astype(float)
    out: dict[str, Any] = {
        "status": str(ds.attrs["status"]),
        "status_reason": str(ds.attrs.get("status_reason", "")),
        "cycles_done": int(np.isfinite(rmse).sum()),
        "rmse_mean": float(np.nanmean(rmse)) if np.isfinite(rmse).any() else math.nan,
        "rmse_per_cycle": [float(v) for v in rmse],
        "rmse_forecast_mean": float(ds.rmse_forecast.mean()),
        "spread_mean": float(ds.spread.mean()),
    }
    if "ssim" in ds:
        out["ssim_mean"] = float(ds.ssim.mean())
    for stage in STAGES:
        out[f"{stage}_s"] = float(ds.attrs.get(f"wall_clock_{stage}_s", math.nan))
    return out


def _fit(ns: list[int], seconds: list[float]) -> dict[str, Any] | None:
    """Least squares log t = p log D + c over the points (D = 2n²); None with fewer than 2 points."""
    pts = [(n, s) for n, s in zip(ns, seconds, strict=True) if s is not None and s > 0]
    if len(pts) < 2:
        return None
    d = np.log([2.0 * n * n for n, _ in pts])
    t = np.log([s for _, s in pts])
    p, c = np.polyfit(d, t, 1)
    resid = t - (p * d + c)
    return {
        "p": float(p),
        "log_c": float(c),
        "grids": [int(n) for n, _ in pts],
        "rms_log_residual": float(np.sqrt(np.mean(resid**2))),
    }


class Bench:
    """Shared state: device, results file, the 64² setting and the checkpoints, the time budget."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.perf_counter()
        if args.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            self.device = args.device
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch.cuda.is_available() is False")
        if args.threads:
            torch.set_num_threads(args.threads)
        if self.device == "cuda" and args.tf32 != "default":
            torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
            torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
        if args.budget_s is None:
            args.budget_s = 300.0 if self.device == "cuda" else 0.0
        if args.cost_grids is None:
            args.cost_grids = [32, 64, 128, 256] if self.device == "cuda" else [32, 64, 128]
        self.out = args.out / "results.json"
        self.workdir = Path(tempfile.mkdtemp(prefix="masf_speed_"))
        self.system = make_system("kolmogorov", n=args.n)
        self.operator = make_operator(
            "grid_mask", self.system.state_shape, stride=args.stride, noise_std=args.noise_std
        )
        self._sims: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._data: torch.Tensor | None = None
        self._ckpts: dict[str, str] = {}
        self._warm: set[str] = set()
        self.result: dict[str, Any] = {
            "meta": {
                "device": torch.cuda.get_device_name() if self.device == "cuda" else "cpu",
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "threads": torch.get_num_threads(),
                "git_commit": git_commit(),
                "tf32": _tf32_state() if self.device == "cuda" else None,
                "smoke": bool(args.smoke),
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "finished": False,
            },
            "setup": {},
            "pretrain": {},
            "skipped": [],
            "errors": [],
        }

    # ------------------------------------------------------------------------------------- plumbing
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def log(self, msg: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {msg}", flush=True)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def save(self) -> None:
        self.result["meta"]["elapsed_s"] = self.elapsed()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.result, indent=1, allow_nan=True) + "\n")
        os.replace(tmp, self.out)

    def over_budget(self, what: str) -> bool:
        """True (and ``what`` recorded as skipped) once the time budget is spent."""
        budget = self.args.budget_s
        if budget and self.elapsed() > budget:
            self.result["skipped"].append(what)
            self.log(f"SKIP {what} (budget {budget:.0f} s spent)")
            self.save()
            return True
        return False

    def guarded(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; on an exception record it, print the traceback, free CUDA memory, return None."""
        try:
            return fn()
        except Exception as err:
            traceback.print_exc()
            self.result["errors"].append({"what": what, "error": f"{type(err).__name__}: {err}"})
            self.log(f"ERROR {what}: {type(err).__name__}: {err}")
            if self.device == "cuda":
                torch.cuda.empty_cache()
            self.save()
            return None

    def timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - start

    # --------------------------------------------------------------------------------- the setting
    def simulation(self, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(truth (K, *S), observations (K, *S), initial ensemble (N, *S)) of experiment ``seed``."""
        if seed not in self._sims:
            a, dev, system = self.args, self.device, self.system

            def simulate() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
                x = system.sample_climatology(
                    1, generator=generator(seed, "truth", dev), spinup_steps=a.spinup, device=dev
                )
                states = []
                for _ in range(a.cycles):
                    x = system.step(x, a.steps_per_cycle)
                    states.append(x[0])
                truth = torch.stack(states)
                obs = self.operator.observe(truth, generator=generator(seed, "obs_noise", dev))
                ens0 = system.sample_climatology(
                    a.members, generator=generator(seed, "ensemble", dev), spinup_steps=a.spinup, device=dev
                )
                return truth, obs, ens0

            self._sims[seed], seconds = self.timed(simulate)
            self.result["setup"][f"simulate_seed{seed}_s"] = seconds
            self.log(f"setup: truth, observations and ensemble of seed {seed} in {seconds:.2f} s")
        return self._sims[seed]

    def data(self) -> torch.Tensor:
        """Climatology snapshots for pretraining (M, *S)."""
        if self._data is None:
            a = self.args
            self._data, seconds = self.timed(
                lambda: self.system.sample_climatology(
                    a.pretrain_samples,
                    generator=generator(a.seed, "pretrain_data", self.device),
                    spinup_steps=a.data_spinup,
                    device=self.device,
                )
            )
            self.result["setup"]["dataset_s"] = seconds
            self.log(f"setup: {a.pretrain_samples} pretraining snapshots in {seconds:.2f} s")
        return self._data

    def train_params(self) -> dict[str, Any]:
        a = self.args
        return {
            "width": a.width,
            "depth": a.depth,
            "pretrain_epochs": a.pretrain_epochs,
            "pretrain_batch": a.pretrain_batch,
            "pretrain_lr": a.lr,
            "finetune_epochs": a.finetune_epochs,
            "finetune_batch": a.finetune_batch,
            "finetune_lr": a.lr,
        }

    def method(self, label: str) -> tuple[str, dict[str, Any], str | None]:
        """(filter name, hyper-parameters, checkpoint key or None) of an amortization method."""
        a, train = self.args, self.train_params()
        if label == "masf_bridge_pretrained":
            return "masf", {"sampler": "bridge", "nfe": a.nfe_masf, **train}, "masf"
        if label == "masf_reference_pretrained":
            return "masf", {"sampler": "reference", "nfe": a.nfe_masf, **train}, "masf"
        if label == "masf_bridge_scratch":
            params = {
                "sampler": "bridge",
                "nfe": a.nfe_masf,
                "scratch": True,
                "scratch_epochs": a.scratch_epochs,
            }
            return "masf", {**params, **train}, None
        if label == "sf_pretrained":
            params = {"nfe": a.nfe_sf, "sigma_max": a.sf_sigma_max, "tol": a.sf_tol}
            return "sf", {**params, **train}, "sf"
        raise ValueError(label)

    def checkpoint(self, key: str) -> str:
        """Path of the pretrained checkpoint of ``key`` (``masf`` or ``sf``); pretrains (timed) on first use."""
        if key not in self._ckpts:
            a = self.args
            name = "masf" if key == "masf" else "sf"
            params = self.method("masf_bridge_pretrained" if key == "masf" else "sf_pretrained")[1]
            data = self.data()
            self.simulation(a.seed)
            self.warm_up(name, params, data)
            f = make_filter(name, **params)
            path = self.workdir / f"{key}.pt"

            def pretrain() -> None:
                f.pretrain(
                    data,
                    self.operator,
                    checkpoint=str(path),
                    generator=generator(a.seed, "train", self.device),
                    device=self.device,
                    progress=False,
                )

            _, seconds = self.timed(pretrain)
            n_val = math.floor(0.1 * len(data))
            self.result["pretrain"][key] = {
                "seconds": seconds,
                "epochs": a.pretrain_epochs,
                "samples": len(data),
                "steps_per_epoch": math.ceil((len(data) - n_val) / a.pretrain_batch),
                "batch": a.pretrain_batch,
                "checkpoint_mb": path.stat().st_size / 2**20,
            }
            self._ckpts[key] = str(path)
            self.log(
                f"pretrain {key}: {a.pretrain_epochs} epochs on {len(data)} snapshots in {seconds:.2f} s"
            )
            self.save()
        return self._ckpts[key]

    def warm_up(self, name: str, params: dict[str, Any], data: torch.Tensor) -> None:
        """Untimed: a 1-epoch pretraining and a 2-cycle run, so that one-time CUDA costs (context, cuDNN,
        cuFFT plans, allocator) do not land in the first timed measurement."""
        if name in self._warm:
            return
        self._warm.add(name)
        seed = self.args.seed

        def go() -> None:
            f = make_filter(name, **{**params, "pretrain_epochs": 1, "nfe": 2, "finetune_epochs": 1})
            path = self.workdir / f"warmup_{name}.pt"
            f.pretrain(
                data[: min(len(data), 64)],
                self.operator,
                checkpoint=str(path),
                generator=generator(seed, "train", self.device),
                device=self.device,
                progress=False,
            )
            truth, obs, ens0 = self.simulation(seed)
            k = min(2, len(obs))
            run(
                self.system,
                self.operator,
                f,
                obs[:k],
                ens0,
                truth=truth[:k],
                steps_per_cycle=1,
                pretrained=str(path),
            )

        _, seconds = self.timed(go)
        self.result["setup"][f"warmup_{name}_s"] = seconds
        self.log(f"warm-up {name} (untimed) in {seconds:.2f} s")

    def run_method(
        self, name: str, params: dict[str, Any], ckpt: str | None, seed: int
    ) -> tuple[dict[str, Any], float]:
        """One ``masf.assimilate.run`` in the 64² setting; (statistics, wall seconds around the call)."""
        truth, obs, ens0 = self.simulation(seed)
        f = make_filter(name, **params)
        ds, seconds = self.timed(
            lambda: run(
                self.system,
                self.operator,
                f,
                obs,
                ens0,
                truth=truth,
                steps_per_cycle=self.args.steps_per_cycle,
                seed=seed,
                pretrained=ckpt,
            )
        )
        return _stats(ds), seconds

    # ---------------------------------------------------------------------------- (a) amortization
    def amortization(self) -> None:
        a = self.args
        part: dict[str, Any] = {
            "setting": {
                "system": self.system.params(),
                "operator": self.operator.params(),
                "members": a.members,
                "cycles": a.cycles,
                "steps_per_cycle": a.steps_per_cycle,
                "spinup": a.spinup,
                "seed": a.seed,
                "reference_default_weights": {
                    k: list(v) for k, v in SAMPLER_DEFAULTS["reference"].items() if k.endswith("weights")
                },
            },
            "methods": {},
        }
        self.result["amortization"] = part
        for label in a.methods:
            if self.over_budget(f"amortization/{label}"):
                continue
            name, params, key = self.method(label)

            def measure(label: str = label, name: str = name, params: dict = params, key: str | None = key):
                if key is None:  # scratch: warm up with the MASF settings (no timing of its own)
                    self.warm_up(name, self.method("masf_bridge_pretrained")[1], self.data())
                ckpt = self.checkpoint(key) if key is not None else None
                stats, seconds = self.run_method(name, params, ckpt, a.seed)
                stats["call_s"] = seconds
                stats["filter"] = name
                stats["params"] = params
                stats["checkpoint"] = key
                stats["pretrain_s"] = self.result["pretrain"][key]["seconds"] if key else 0.0
                part["methods"][label] = stats
                self.log(
                    f"amortization {label}: run {stats['total_s']:.2f} s (analysis {stats['analysis_s']:.2f}, "
                    f"finetune {stats['finetune_s']:.2f}, sampling {stats['sampling_s']:.2f}, "
                    f"forecast {stats['forecast_s']:.2f}), pretrain {stats['pretrain_s']:.2f} s, "
                    f"rmse {stats['rmse_mean']:.4f}, spread {stats['spread_mean']:.4f}, {stats['status']}"
                )
                part["speedup"] = self.speedups(part["methods"])
                self.save()

            self.guarded(f"amortization/{label}", measure)
        for pair, ratio in part.get("speedup", {}).items():
            per_run = ratio["total"]["per_run"]
            amort = ", ".join(f"R={r}: {v:.2f}x" for r, v in ratio["total"]["amortized"].items())
            self.log(f"amortization speedup {pair}: per run {per_run:.2f}x; amortized (total) {amort}")

    def speedups(self, methods: dict[str, Any]) -> dict[str, Any]:
        """Scratch over pretrained MASF: per run, and with pretraining amortized over R runs."""
        out: dict[str, Any] = {}
        scratch = methods.get("masf_bridge_scratch")
        for label in ("masf_bridge_pretrained", "masf_reference_pretrained"):
            pre = methods.get(label)
            if scratch is None or pre is None:
                continue
            entry: dict[str, Any] = {
                "pretrain_s": pre["pretrain_s"],
                "all_ok": pre["status"] == "ok" and scratch["status"] == "ok",
            }
            for basis in ("total", "analysis"):
                t_pre, t_scr = pre[f"{basis}_s"], scratch[f"{basis}_s"]
                saved = t_scr - t_pre
                entry[basis] = {
                    "run_pretrained_s": t_pre,
                    "run_scratch_s": t_scr,
                    "per_run": t_scr / t_pre,
                    "amortized": {
                        str(r): r * t_scr / (pre["pretrain_s"] + r * t_pre) for r in self.args.repeats
                    },
                    "break_even_runs": pre["pretrain_s"] / saved if saved > 0 else None,
                }
            out[f"{label}_vs_masf_bridge_scratch"] = entry
        return out

    # ------------------------------------------------------------------------------------- (b) cost
    def cost(self) -> None:
        a = self.args
        part: dict[str, Any] = {
            "setting": {
                "members": a.members,
                "stride": a.stride,
                "noise_std": a.noise_std,
                "nfe": a.cost_nfe,
                "finetune_epochs": a.finetune_epochs,
                "finetune_batch": a.finetune_batch,
                "width": a.width,
                "depth": a.depth,
                "repeats": a.cost_repeats,
                "letkf": {"radius": 5.0, "inflation": 1.1, "eps": 1e-6},
                "enkf": {"variant": "pertobs", "mode": "full", "inflation": 1.05, "eps": 1e-6},
            },
            "grids": {},
            "fits": {},
        }
        self.result["cost"] = part
        for n in a.cost_grids:
            if self.over_budget(f"cost/n={n}"):
                continue
            self.guarded(f"cost/n={n}", lambda n=n: self.cost_grid(n, part))
            if self.device == "cuda":
                torch.cuda.empty_cache()
        for series, fit in part["fits"].items():
            pref = fit.get(fit["preferred"]) or {}
            if pref:
                self.log(
                    f"cost fit {series}: p = {pref['p']:.3f} over n = {pref['grids']} ({fit['preferred']})"
                )

    def cost_grid(self, n: int, part: dict[str, Any]) -> None:
        a, dev, seed = self.args, self.device, self.args.seed
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        system = make_system("kolmogorov", n=n)
        operator = make_operator("grid_mask", system.state_shape, stride=a.stride, noise_std=a.noise_std)
        # Random divergence-free fields: the cost of an analysis does not depend on the flow's state.
        prior = system.sample_initial(a.members, generator=generator(seed, "ensemble", dev), device=dev)
        x_true = system.sample_initial(1, generator=generator(seed, "truth", dev), device=dev)
        z = operator.observe(x_true, generator=generator(seed, "obs_noise", dev))[0]
        data = system.sample_initial(a.cost_data, generator=generator(seed, "pretrain_data", dev), device=dev)
        rec: dict[str, Any] = {"n": n, "D": 2 * n * n, "observed": int(operator.mask.sum().item())}
        part["grids"][str(n)] = rec

        params = {"sampler": "bridge", "nfe": a.cost_nfe, **self.train_params(), "pretrain_epochs": 1}
        f = make_filter("masf", **params)
        path = self.workdir / f"cost_{n}.pt"
        _, rec["pretrain_1epoch_s"] = self.timed(
            lambda: f.pretrain(
                data,
                operator,
                checkpoint=str(path),
                generator=generator(seed, "train", dev),
                device=dev,
                progress=False,
            )
        )
        ctx = Context(
            generator=generator(seed, "sampling", dev),
            train_generator=generator(seed, "train", dev),
            pretrained=str(path),
        )

        def analysis(filt: Any, c: Context) -> tuple[float, dict[str, float]]:
            before = dict(c.timings)
            _, seconds = self.timed(lambda: filt.analyse(prior, z, operator, c))
            return seconds, {k: c.timings.get(k, 0.0) - before.get(k, 0.0) for k in ("finetune", "sampling")}

        ctx.cycle = 0
        rec["masf_cycle0_s"], _ = analysis(f, ctx)  # loads the checkpoint; no fine-tuning at cycle 0
        ctx.cycle = 1
        rec["masf_warmup_s"], _ = analysis(f, ctx)
        runs = []
        for r in range(a.cost_repeats):
            ctx.cycle = 2 + r
            total, stages = analysis(f, ctx)
            runs.append(
                {"total_s": total, "finetune_s": stages["finetune"], "sampling_s": stages["sampling"]}
            )
        best = min(runs, key=lambda v: v["total_s"])
        rec["masf"] = {**best, "runs": runs}

        for label, name, fp in (
            ("letkf", "letkf", part["setting"]["letkf"]),
            ("enkf", "enkf", part["setting"]["enkf"]),
        ):
            filt = make_filter(name, **fp)
            c = Context(generator=generator(seed, "sampling", dev))
            first, _ = analysis(filt, c)
            times = [analysis(filt, c)[0] for _ in range(a.cost_repeats)]
            rec[label] = {"total_s": min(times), "first_call_s": first, "runs": times}
        if dev == "cuda":
            rec["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        m = rec["masf"]
        self.log(
            f"cost n={n} D={2 * n * n}: masf {m['total_s']:.3f} s (finetune {m['finetune_s']:.3f}, "
            f"sampling {m['sampling_s']:.3f}), letkf {rec['letkf']['total_s']:.4f} s "
            f"(first {rec['letkf']['first_call_s']:.3f}), enkf {rec['enkf']['total_s']:.4f} s"
        )
        part["fits"] = self.cost_fits(part["grids"])
        self.save()

    def cost_fits(self, grids: dict[str, Any]) -> dict[str, Any]:
        series = {
            "masf_total": ("masf", "total_s"),
            "masf_finetune": ("masf", "finetune_s"),
            "masf_sampling": ("masf", "sampling_s"),
            "letkf": ("letkf", "total_s"),
            "enkf": ("enkf", "total_s"),
        }
        out: dict[str, Any] = {}
        recs = sorted(grids.values(), key=lambda r: r["n"])
        for key, (method, field) in series.items():
            pts = [(r["n"], r[method][field]) for r in recs if method in r]
            large = [(n, s) for n, s in pts if n >= self.args.cost_min_n]
            fit_all = _fit([n for n, _ in pts], [s for _, s in pts])
            fit_large = _fit([n for n, _ in large], [s for _, s in large])
            out[key] = {
                "all": fit_all,
                "large": fit_large,
                "large_min_n": self.args.cost_min_n,
                "preferred": "large" if len(large) >= 3 and fit_large is not None else "all",
            }
        return out

    # -------------------------------------------------------------------------------------- (c) nfe
    def nfe(self) -> None:
        a = self.args
        part: dict[str, Any] = {
            "setting": {
                "nfe_list": a.nfe_list,
                "seeds": a.nfe_seeds,
                "samplers": a.nfe_samplers,
                "finetune_epochs": a.finetune_epochs,
                "checkpoint": (
                    "masf (shared with amortization)"
                    if "masf" in self._ckpts
                    else f"masf (pretrained here, {a.pretrain_epochs} epochs)"
                ),
            },
            "runs": [],
            "summary": {},
        }
        self.result["nfe"] = part
        if "masf" not in self._ckpts and self.over_budget("nfe (pretraining)"):
            return
        ckpt = self.guarded("nfe/checkpoint", lambda: self.checkpoint("masf"))
        if ckpt is None:
            return
        for seed in a.nfe_seeds:
            for nfe in a.nfe_list:
                for sampler in a.nfe_samplers:
                    what = f"nfe/{sampler}/nfe={nfe}/seed={seed}"
                    if self.over_budget(what):
                        continue

                    def measure(seed: int = seed, nfe: int = nfe, sampler: str = sampler) -> None:
                        params = {"sampler": sampler, "nfe": nfe, **self.train_params()}
                        # The amortization run of this sampler is this very run when nfe and seed agree.
                        done = self.result.get("amortization", {}).get("methods", {})
                        same = done.get(f"masf_{sampler}_pretrained")
                        if same is not None and same["params"] == params and seed == a.seed:
                            stats = {k: v for k, v in same.items() if k not in ("params", "filter")}
                            stats["reused_from"] = f"amortization/masf_{sampler}_pretrained"
                            seconds = same["call_s"]
                        else:
                            stats, seconds = self.run_method("masf", params, ckpt, seed)
                        stats.update(sampler=sampler, nfe=nfe, seed=seed, call_s=seconds)
                        part["runs"].append(stats)
                        part["summary"] = self.nfe_summary(part["runs"])
                        self.log(
                            f"nfe {sampler} nfe={nfe} seed={seed}: rmse {stats['rmse_mean']:.4f}, "
                            f"spread {stats['spread_mean']:.4f}, sampling {stats['sampling_s']:.2f} s, "
                            f"run {stats['total_s']:.2f} s, {stats['status']}"
                            + (f" (reused {stats['reused_from']})" if "reused_from" in stats else "")
                        )
                        self.save()

                    self.guarded(what, measure)

    @staticmethod
    def nfe_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for sampler in sorted({r["sampler"] for r in runs}):
            rows = []
            for nfe in sorted({r["nfe"] for r in runs if r["sampler"] == sampler}):
                sel = [r for r in runs if r["sampler"] == sampler and r["nfe"] == nfe]
                rm = [r["rmse_mean"] for r in sel]
                rows.append(
                    {
                        "nfe": nfe,
                        "seeds": [r["seed"] for r in sel],
                        "rmse_mean": float(np.mean(rm)),
                        "rmse_min": float(np.min(rm)),
                        "rmse_max": float(np.max(rm)),
                        "spread_mean": float(np.mean([r["spread_mean"] for r in sel])),
                        "not_ok": sum(r["status"] != "ok" for r in sel),
                        "sampling_s_mean": float(np.mean([r["sampling_s"] for r in sel])),
                        "sampling_s_per_analysis": float(np.mean([r["sampling_s"] for r in sel]))
                        / max(1, sel[0]["cycles_done"]),
                    }
                )
            out[sampler] = rows
        return out


def load_plot_module() -> Any:
    path = Path(__file__).with_name("plot.py")
    spec = importlib.util.spec_from_file_location("masf_speed_plot", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    bench = Bench(args)
    meta = bench.result["meta"]
    bench.log(
        f"device {meta['device']} (torch {meta['torch']}, {meta['threads']} threads), parts {args.parts}, "
        f"budget {args.budget_s or 'off'} s, out {bench.out}"
    )
    bench.save()
    try:
        for part in PARTS:
            if part in args.parts:
                bench.guarded(part, getattr(bench, part))
    finally:
        shutil.rmtree(bench.workdir, ignore_errors=True)  # the checkpoints
    meta["finished"] = True
    bench.save()
    bench.log(f"done: {bench.out}")
    if not args.no_plot:
        try:
            written = load_plot_module().make_plots(bench.out)
            bench.log("figures: " + ", ".join(str(p) for p in written))
        except Exception:
            traceback.print_exc()
            bench.log("plotting failed (results.json is complete)")


if __name__ == "__main__":
    main()
