"""The ``masf`` command: the pipeline's stages as subcommands, for Snakemake rules and one-off runs.

Each stage takes either ``--spec JSON`` (what the Snakemake rules pass, built by ``masf.config``) or
``--config FILE --experiment NAME [...]`` (the same spec, resolved from a sweep config by hand). Heavy
imports (torch, xarray) happen inside the commands so that ``masf --help`` and ``masf validate`` are quick.

    masf validate config/sweep.yaml
    masf simulate --config config/test.yaml --experiment l96 --seed 0 --out /tmp/data.nc
    masf assimilate --config config/test.yaml --experiment l96 --operator half --method enkf \\
        --data /tmp/data.nc --seed 0 --out /tmp/run.nc
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from masf import config as mc
from masf.errors import CorruptFileError


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("masf: device 'cuda' asked for, but torch sees no CUDA device")
    return name


def _spec(args: argparse.Namespace, build: Callable[..., dict[str, Any]], *names: str) -> dict[str, Any]:
    """The stage spec from ``--spec`` or from ``--config`` plus the named selectors."""
    if args.spec is not None:
        try:
            spec = json.loads(args.spec)
        except json.JSONDecodeError as err:
            raise SystemExit(f"masf: --spec is not valid JSON: {err}") from err
        if not isinstance(spec, dict):
            raise SystemExit("masf: --spec must be a JSON object")
        return spec
    if args.config is None:
        raise SystemExit("masf: give either --spec JSON or --config FILE with the names to select")
    cfg = mc.load_validated(args.config)
    values = []
    for name in names:
        value = getattr(args, name)
        if value is None:
            raise SystemExit(f"masf: --config needs --{name}")
        values.append(value)
    exp = values[0]
    if exp not in cfg["experiments"]:
        raise SystemExit(f"masf: unknown experiment {exp!r}; allowed: {', '.join(cfg['experiments'])}")
    if len(values) > 1 and values[1] not in cfg["experiments"][exp]["operators"]:
        allowed = ", ".join(cfg["experiments"][exp]["operators"])
        raise SystemExit(f"masf: unknown operator {values[1]!r} of {exp!r}; allowed: {allowed}")
    if len(values) > 2:
        allowed = list(cfg["tuned"]) if build is mc.tune_spec else list(cfg["methods"])
        if values[2] not in allowed:
            hint = ""
            if mc.is_tuned(cfg, values[2]):
                hint = " (it is tuned: give one of its variants)"
            raise SystemExit(f"masf: unknown method {values[2]!r}{hint}; allowed: {', '.join(allowed)}")
    return build(cfg, *values)


def _system(spec: dict[str, Any]) -> Any:
    from masf.systems import make_system

    params = dict(spec["system"])
    return make_system(params.pop("name"), **params)


def _operator(spec: dict[str, Any], state_shape: tuple[int, ...]) -> Any:
    from masf.operators import make_operator

    params = {k: v for k, v in spec.items() if k != "methods"}
    return make_operator(params.pop("operator"), state_shape, **params)


def _filter(method: dict[str, Any]) -> Any:
    from masf.filters import make_filter

    params = dict(method)
    return make_filter(params.pop("filter"), **params)


def _dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]


# ---- stages -----------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        cfg = mc.load_validated(args.config)
    except mc.ConfigError as err:
        print(f"masf config error: {err}", file=sys.stderr)
        return 2
    n_runs, n_pre, n_tune = len(mc.runs(cfg)), len(mc.pretrain_jobs(cfg)), len(mc.tuning_runs(cfg))
    tuned = f", {n_tune} tuning runs of {len(cfg['tuned'])} tuned methods" if n_tune else ""
    print(
        f"{args.config}: ok ({len(cfg['experiments'])} experiments, {n_runs} runs{tuned}, {n_pre} pretrainings)"
    )
    return 0


def simulate(spec: dict[str, Any], seed: int, progress: bool = True) -> Any:
    """Truth at every observation time and the observations of every operator, as an xarray.Dataset."""
    import numpy as np
    import torch
    import xarray as xr
    from tqdm import tqdm

    from masf.assimilate import state_dims
    from masf.rng import generator

    system = _system(spec)
    shape = tuple(system.state_shape)
    truth_gen = generator(seed, "truth")
    x = system.sample_climatology(
        1, generator=truth_gen, spinup_steps=spec["spinup_steps"], dtype=_dtype(spec["dtype"])
    )
    spc = spec["steps_per_cycle"]
    steps = []
    for _ in tqdm(range(spec["cycles"] * spc), desc="simulate", unit="step", disable=not progress):
        x = system.step(x, 1, generator=truth_gen)
        steps.append(x[0])
    every_step = torch.stack(steps)
    truth = every_step[spc - 1 :: spc]
    dims = ("time", *state_dims(shape))
    data = {"truth": (dims, truth.numpy(), {"long_name": "true state at the observation times"})}
    if spc > 1:  # the frames between the observations, for the paper's all-frames RMSE
        data["truth_steps"] = (
            ("step", *state_dims(shape)),
            every_step.numpy(),
            {"long_name": "true state after every model step"},
        )
    for name, op_spec in spec["operators"].items():
        operator = _operator(op_spec, shape)
        z = operator.observe(truth, generator=generator(seed, "obs_noise"))
        data[f"obs_{name}"] = (dims, z.numpy(), {"long_name": f"measurement of operator {name}"})
    attrs = {"seed": seed, "spec": mc.to_json(spec)}
    attrs.update({f"system_{k}": v for k, v in system.params().items() if not isinstance(v, list | dict)})
    coords = {"time": np.arange(1, spec["cycles"] + 1) * spc}
    if spc > 1:
        coords["step"] = np.arange(1, spec["cycles"] * spc + 1)
    return xr.Dataset(data, coords=coords, attrs=attrs)


def cmd_simulate(args: argparse.Namespace) -> int:
    from masf.io import write_dataset

    _set_threads(args.threads)
    spec = _spec(args, mc.simulate_spec, "experiment")
    write_dataset(simulate(spec, args.seed, progress=not args.quiet), args.out)
    return 0


def cmd_dataset(args: argparse.Namespace) -> int:
    import xarray as xr

    from masf.assimilate import state_dims
    from masf.io import write_dataset
    from masf.rng import generator
    from masf.systems.snapshots import snapshots

    _set_threads(args.threads)
    spec = _spec(args, mc.dataset_spec, "experiment")
    system = _system(spec)
    snaps = snapshots(
        system,
        spec["samples"],
        generator=generator(spec["seed"], "pretrain_data"),
        spinup_steps=spec["spinup_steps"],
        per_trajectory=spec.get("per_trajectory", 1),
        interval=spec.get("interval", 1),
        dtype=_dtype(spec["dtype"]),
        device=_device(spec.get("device", "cpu")),
        progress=not args.quiet,
    )
    dims = ("sample", *state_dims(tuple(system.state_shape)))
    ds = xr.Dataset(
        {"snapshots": (dims, snaps.numpy(), {"long_name": "climatology snapshots for pretraining"})},
        attrs={"spec": mc.to_json(spec)},
    )
    write_dataset(ds, args.out)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    import torch

    from masf.io import fsync_dir, read_dataset
    from masf.rng import generator
    from masf.train import StopOnSignal

    _set_threads(args.threads)
    spec = _spec(args, mc.pretrain_spec, "experiment", "operator", "method")
    device = _device(spec["device"])
    system = _system(spec)
    # SF and SSLS train without the operator: their spec has none (one network serves every operator)
    operator = _operator(spec["operator"], tuple(system.state_shape)) if "operator" in spec else None
    flt = _filter(spec["method"])
    if not getattr(flt, "needs_pretraining", False):
        raise SystemExit(f"masf: filter {spec['method']['filter']!r} needs no pretraining")
    data = torch.from_numpy(read_dataset(args.data)["snapshots"].values)
    partial = partial_checkpoint(args.out, spec)
    with StopOnSignal() as stop:
        flt.pretrain(
            data,
            operator,
            checkpoint=str(partial),
            generator=generator(spec["seed"], "train", device),
            device=device,
            progress=not args.quiet,
            stop=stop,
        )
    os.replace(partial, args.out)  # the partial checkpoint is already fsynced (atomic_torch_save)
    fsync_dir(Path(args.out).parent)
    return 0


def partial_checkpoint(out: str, spec: dict) -> Path:
    """Where an unfinished pretraining keeps its checkpoint: beside ``out``, named by a hash of the spec.

    It is not the rule's output, so Snakemake does not delete it when a job is killed (timeout,
    preemption: SIGTERM saves it at the end of the current step, see ``masf.train.StopOnSignal``), and
    the requeued or rerun job resumes from it. A changed spec gives another name, so a stale partial
    checkpoint is never resumed.
    """
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(f"{out}.{digest}.partial")


def cmd_assimilate(args: argparse.Namespace) -> int:
    import torch

    from masf.assimilate import run
    from masf.io import read_dataset, write_dataset
    from masf.rng import generator

    _set_threads(args.threads)
    spec = _spec(args, mc.assimilate_spec, "experiment", "operator", "method")
    device = _device(spec["device"])
    dtype = _dtype(spec["dtype"])
    names = spec.get("names", {})
    system = _system(spec)
    operator = _operator(spec["operator"], tuple(system.state_shape))
    flt = _filter(spec["method"])
    if getattr(flt, "needs_pretraining", False) and not args.checkpoint:
        raise SystemExit(f"masf: method {names.get('method', '?')!r} is score-based and needs --checkpoint")
    data = read_dataset(args.data)
    obs_name = f"obs_{args.observations or names.get('operator')}"
    if obs_name not in data:
        found = ", ".join(v for v in data.data_vars if v.startswith("obs_"))
        raise SystemExit(f"masf: {args.data} has no variable {obs_name!r}; it has {found}")
    climatology = None
    if args.climatology:
        climatology = torch.from_numpy(climatology_states(args.climatology)).to(device=device, dtype=dtype)
    truth = torch.from_numpy(data["truth"].values).to(device=device, dtype=dtype)
    truth_steps = None
    if "truth_steps" in data:
        truth_steps = torch.from_numpy(data["truth_steps"].values).to(device=device, dtype=dtype)
    observations = torch.from_numpy(data[obs_name].values).to(device=device, dtype=dtype)
    initial = system.sample_climatology(
        spec["ensemble_size"],
        generator=generator(args.seed, "ensemble"),
        spinup_steps=spec["spinup_steps"],
        dtype=dtype,
        device=device,
    )
    attrs = {**names, "spec": mc.to_json(spec), "checkpoint": args.checkpoint or ""}
    ds = run(
        system,
        operator,
        flt,
        observations,
        initial,
        truth=truth,
        truth_steps=truth_steps,
        steps_per_cycle=spec["steps_per_cycle"],
        seed=args.seed,
        pretrained=args.checkpoint,
        climatology=climatology,
        progress=not args.quiet,
        attrs=attrs,
    )
    write_dataset(ds, args.out)
    print(f"status: {ds.attrs['status']} {ds.attrs.get('status_reason', '')}".rstrip())
    return 0


#: At most this many climatology states are read for an assimilation run (evenly spaced over the file).
CLIMATOLOGY_MAX = 4096


def climatology_states(path: str) -> Any:
    """The ``snapshots`` of a ``masf dataset`` file as a numpy array (M, *S), M <= ``CLIMATOLOGY_MAX``."""
    import numpy as np

    from masf.io import read_dataset

    snaps = read_dataset(path)["snapshots"]
    step = max(1, -(-snaps.sizes["sample"] // CLIMATOLOGY_MAX))
    return np.ascontiguousarray(snaps.values[::step])


def cmd_aggregate(args: argparse.Namespace) -> int:
    from masf.aggregate import aggregate, summary_table
    from masf.io import write_dataset, write_text

    given = [k for k in ("runs", "runs_file", "config") if getattr(args, k) is not None]
    if len(given) != 1:
        raise SystemExit("masf aggregate: give exactly one of --runs JSON, --runs-file FILE, --config FILE")
    if args.runs is not None:
        runs = json.loads(args.runs)
    elif args.runs_file is not None:
        runs = json.loads(Path(args.runs_file).read_text())
    else:
        cfg = mc.load_validated(args.config)
        runs = mc.runs(cfg, mc.read_selections(cfg))
    ds = aggregate(runs, jobs=args.jobs)
    write_dataset(ds, args.out)
    if args.summary:
        write_text(summary_table(ds).to_csv(index=False, float_format="%.6g"), args.summary)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from masf.aggregate import selection
    from masf.io import write_text

    spec = _spec(args, mc.tune_spec, "experiment", "operator", "method")
    chosen = selection(spec, jobs=args.jobs)
    write_text(json.dumps(chosen, indent=1) + "\n", args.out)
    best = next(v for v in chosen["variants"] if v["variant"] == chosen["selected"])
    print(
        f"{chosen['experiment']}/{chosen['operator']}/{chosen['method']}: selected {chosen['selected']} "
        f"({chosen['metric']} {best['score']} over seeds {chosen['seeds']}, of {len(chosen['variants'])} variants)"
    )
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from masf import figures

    if args.kind == "summary":
        figures.summary_figures(args.metrics, args.experiment, args.outdir)
    elif args.kind == "tuning":
        figures.tuning_surface(args.selections, args.out)
    else:
        figures.vorticity_panel(args.data, args.operator, args.runs, args.out, cycles=args.cycles)
    return 0


# ---- argument parsing -------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, selectors: Sequence[str]) -> None:
    p.add_argument("--spec", help="the stage's JSON spec (what the Snakemake rule passes)")
    p.add_argument("--config", help="a sweep config YAML to build the spec from instead of --spec")
    for name in selectors:
        p.add_argument(f"--{name}", help=f"{name} name in --config")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The ``masf`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="masf",
        description="Score-based data-assimilation sweeps: the pipeline's stages as commands. "
        "Normally Snakemake runs them (`snakemake --cores all`); use them directly for one-off runs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a sweep config (schema + cross-field rules); writes nothing")
    p.add_argument("config", help="config YAML, e.g. config/sweep.yaml")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("simulate", help="truth trajectory + observations of every operator -> NetCDF")
    _common(p, ["experiment"])
    p.add_argument("--seed", type=int, required=True, help="experiment seed (truth and noise streams)")
    p.add_argument("--out", required=True, help="output NetCDF")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("dataset", help="climatology snapshots for pretraining -> NetCDF")
    _common(p, ["experiment"])
    p.add_argument("--out", required=True, help="output NetCDF")
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("pretrain", help="train a score-based method's network -> checkpoint")
    _common(p, ["experiment", "operator", "method"])
    p.add_argument("--data", required=True, help="snapshots NetCDF from `masf dataset`")
    p.add_argument("--out", required=True, help="checkpoint path (.pt)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("assimilate", help="one filtering run -> run NetCDF (status ok or diverged)")
    _common(p, ["experiment", "operator", "method"])
    p.add_argument("--data", required=True, help="truth + observations NetCDF from `masf simulate`")
    p.add_argument("--observations", help="which obs_<operator> variable of --data (default: --operator)")
    p.add_argument("--checkpoint", help="pretrained checkpoint (score-based methods)")
    p.add_argument(
        "--climatology",
        help="snapshots NetCDF from `masf dataset`: the climatology method's draws and the prior of pretrained "
        "networks (pathwise bridge draws, fine-tuning replay)",
    )
    p.add_argument("--seed", type=int, required=True, help="experiment seed (ensemble and sampling streams)")
    p.add_argument("--out", required=True, help="output NetCDF")
    p.set_defaults(func=cmd_assimilate)

    p = sub.add_parser(
        "tune",
        help="pick a tuned method's best variant by its tuning runs -> selection JSON (docs/tuning.md)",
    )
    p.add_argument("--spec", help="the stage's JSON spec (what the Snakemake rule passes)")
    p.add_argument("--config", help="a sweep config YAML to build the spec from instead of --spec")
    for name in ("experiment", "operator", "method"):
        p.add_argument(f"--{name}", help=f"{name} name in --config")
    p.add_argument("--jobs", type=int, default=1, help="processes that read the run files (default 1)")
    p.add_argument(
        "--out", required=True, help="output JSON (the selected variant and every variant's scores)"
    )
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("aggregate", help="run files -> results/metrics.nc (+ summary CSV)")
    p.add_argument("--runs", help="JSON list of {experiment, operator, method, seed} (small sweeps)")
    p.add_argument("--runs-file", help="file holding that JSON list (what the pipeline passes)")
    p.add_argument("--jobs", type=int, default=1, help="processes that read the run files (default 1)")
    p.add_argument("--config", help="take the runs of this sweep config instead of --runs")
    p.add_argument("--out", default=mc.METRICS, help=f"output NetCDF (default {mc.METRICS})")
    p.add_argument("--summary", help="also write a summary CSV here")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("figures", help="seaborn figures from metrics.nc and run files")
    fig = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    q = fig.add_parser("summary", help="RMSE over time, mean RMSE, spread vs RMSE, wall-clock per stage")
    q.add_argument("--metrics", default=mc.METRICS, help="metrics NetCDF")
    q.add_argument("--experiment", required=True, help="experiment name")
    q.add_argument("--outdir", required=True, help="folder for the PNG files")
    q = fig.add_parser("tuning", help="the tuning surface: each variant's score on the tuning seeds")
    q.add_argument("--selections", nargs="+", required=True, help="selection JSON files of `masf tune`")
    q.add_argument("--out", required=True, help="output PNG")
    q = fig.add_parser("vorticity", help="truth, observation and each method's mean (2-D systems)")
    q.add_argument("--data", required=True, help="truth + observations NetCDF")
    q.add_argument("--operator", required=True, help="operator name (selects obs_<operator>)")
    q.add_argument("--runs", nargs="+", required=True, help="run files, one per method")
    q.add_argument("--cycles", type=int, default=3, help="number of cycles shown (default 3)")
    q.add_argument("--out", required=True, help="output PNG")
    p.set_defaults(func=cmd_figures)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``masf`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except mc.ConfigError as err:
        print(f"masf config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, CorruptFileError) as err:  # a missing, truncated or corrupt input file
        print(f"masf: {err}", file=sys.stderr)
        return 2


def entry() -> None:
    """``masf`` / ``python -m masf.cli``: :func:`main`, then leave without the interpreter's teardown.

    Every pipeline job is one such process, and tearing down torch's modules costs about 0.7 s of a
    job that may compute for less than that (benchmarks/sweep_overhead/). Output files are already
    fsynced (masf.io); the streams are flushed here. An exception leaves the normal way, traceback and all.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
