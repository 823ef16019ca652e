"""The cycle loop: forecast with the system, analyse with the filter, record metrics and timings.

Timeline (DAPPER's convention): the initial ensemble describes the state at time 0; observation ``k``
(``k = 0 .. K-1``) is taken ``(k + 1) * steps_per_cycle`` model steps later. Each cycle forecasts the
ensemble ``steps_per_cycle`` steps, then analyses it with ``observations[k]``. ``truth[k]`` is the true
state at the time of observation ``k``.

A run stops early with status ``diverged`` when the ensemble or a particle filter's weights become
non-finite (or a filter's linear algebra fails on it); the cycles it did not reach are NaN. It never
returns garbage as ``ok``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

import masf
from masf import metrics
from masf.filters.base import Context, DegenerateEnsembleError
from masf.rng import generator as make_generator

STAGES = ("forecast", "analysis", "finetune", "sampling")


def state_dims(state_shape: tuple[int, ...]) -> tuple[str, ...]:
    """NetCDF dimension names of a state: ``("x",)`` for 1-D, ``("channel", "y", "x")`` for 2-D fields."""
    if len(state_shape) == 1:
        return ("x",)
    if len(state_shape) == 3:
        return ("channel", "y", "x")
    raise ValueError(f"no dimension names for a state of shape {state_shape}")


def _params(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "params"):
        return dict(obj.params())
    if dataclasses.is_dataclass(obj):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return {}


def _attr_value(value: Any) -> Any:
    """NetCDF attributes hold numbers and strings only."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value):
        return np.asarray(value)
    return str(value)


def git_commit() -> str:
    """The current git commit of the masf source tree, or ``"unknown"``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextlib.contextmanager
def _timer(timings: dict[str, float], stage: str, device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def _vorticity_fn(system: Any) -> Any:
    if getattr(system, "name", "") == "kolmogorov":
        from masf.systems.kolmogorov import vorticity

        return vorticity
    return None


def _weights(ctx: Context, n_members: int) -> Tensor | None:
    """A particle filter's normalized weights ``(1, N)`` from ``ctx.state["weights"]``, else None."""
    w = ctx.state.get("weights")
    if isinstance(w, Tensor) and w.shape == (n_members,):
        return w.unsqueeze(0)
    return None


def run(
    system: Any,
    operator: Any,
    filter: Any,
    observations: Tensor,
    initial_ensemble: Tensor,
    *,
    truth: Tensor | None = None,
    truth_steps: Tensor | None = None,
    steps_per_cycle: int = 1,
    seed: int = 0,
    pretrained: str | None = None,
    climatology: Tensor | None = None,
    keep_members: bool = False,
    progress: bool = False,
    attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Assimilate ``observations`` ``(K, *S)`` starting from ``initial_ensemble`` ``(N, *S)``.

    Args:
        system: a ``masf.systems`` system (forecast model).
        operator: a ``masf.operators`` operator (the one that made ``observations``).
        filter: a ``masf.filters`` filter.
        observations: ``(K, *S)`` measurements in physical units.
        initial_ensemble: ``(N, *S)`` ensemble at time 0; its dtype and device are used throughout.
        truth: ``(K, *S)`` true states at the observation times, for RMSE/CRPS/rank histograms.
        truth_steps: ``(K · steps_per_cycle, *S)`` true states after every model step (``truth`` is every
            ``steps_per_cycle``-th of them): the forecast is then stepped one model step at a time and
            ``rmse_lead`` records the RMSE of the forecast mean at the intermediate leads, the frames of
            the paper's metric (docs/metrics.md).
        steps_per_cycle: model steps between observations.
        seed: experiment seed; the filter's ``sampling`` and ``train`` streams and the stochastic
            forecast's ``model_noise`` stream derive from it.
        pretrained: checkpoint path for score-based filters.
        climatology: climatology states (M, *S) in physical units (e.g. the pretraining snapshots): the
            prior of a pretrained network (pathwise bridge draws, fine-tuning replay) and the draws of the
            ``climatology`` method; moved to the ensemble's device and dtype.
        keep_members: also store the analysis ensemble ``(K, N, *S)``.
        progress: show a progress bar over cycles.
        attrs: extra attributes for the dataset (experiment, operator and method names, ...).

    Returns:
        The mean, spread and CRPS use a particle filter's weights (``ctx.state["weights"]``) when it
        keeps them; the rank histogram counts members unweighted.

        An ``xarray.Dataset`` with dims ``time`` (cycle), the state dims and ``rank``; variables
        ``mean``, ``observation`` and (with ``truth``) ``truth``; per cycle ``spread``,
        ``spread_forecast``, and with ``truth`` ``rmse``, ``rmse_forecast``, ``crps``, ``rank_hist``
        (and ``ssim`` of the vorticity for Kolmogorov; ``rmse_lead`` (time, lead) with ``truth_steps``,
        lead j = 1 .. steps_per_cycle − 1 model steps after the previous analysis); attributes with every parameter, the wall-clock
        seconds per stage (``wall_clock_<stage>_s``) and ``status`` (``ok`` or ``diverged``).
    """
    shape = tuple(system.state_shape)
    if initial_ensemble.ndim != len(shape) + 1 or tuple(initial_ensemble.shape[1:]) != shape:
        raise ValueError(f"initial_ensemble must be shaped (N, {shape}), got {tuple(initial_ensemble.shape)}")
    n_members = initial_ensemble.shape[0]
    if n_members < 2:
        raise ValueError(f"the ensemble needs at least 2 members, got N = {n_members}")
    if observations.ndim != len(shape) + 1 or tuple(observations.shape[1:]) != shape:
        raise ValueError(f"observations must be shaped (K, {shape}), got {tuple(observations.shape)}")
    if truth is not None and truth.shape != observations.shape:
        raise ValueError(f"truth {tuple(truth.shape)} must match observations {tuple(observations.shape)}")
    if truth_steps is not None and (
        truth is None or tuple(truth_steps.shape) != (observations.shape[0] * int(steps_per_cycle), *shape)
    ):
        raise ValueError(
            f"truth_steps must be shaped (K * steps_per_cycle, *S) = ({observations.shape[0]} * {steps_per_cycle}, "
            f"{shape}) and needs truth; got {None if truth_steps is None else tuple(truth_steps.shape)}"
        )
    if int(steps_per_cycle) != steps_per_cycle or steps_per_cycle < 1:
        raise ValueError(f"steps_per_cycle must be a positive integer, got {steps_per_cycle!r}")
    if hasattr(filter, "check_operator"):
        filter.check_operator(operator)

    device, dtype = initial_ensemble.device, initial_ensemble.dtype
    observations = observations.to(device=device, dtype=dtype)
    truth = None if truth is None else truth.to(device=device, dtype=dtype)
    n_cycles = observations.shape[0]
    leads = int(steps_per_cycle) - 1 if truth_steps is not None else 0  # intermediate forecast frames
    if leads:
        truth_steps = truth_steps.to(device=device, dtype=dtype)
    ctx = Context(
        generator=make_generator(seed, "sampling", device),
        train_generator=make_generator(seed, "train", device),
        pretrained=pretrained,
        climatology=None if climatology is None else climatology.to(device=device, dtype=dtype),
    )
    model_noise = make_generator(seed, "model_noise", device)
    vorticity = _vorticity_fn(system)

    nan = math.nan
    mean_out = torch.full((n_cycles, *shape), nan, dtype=dtype)
    members_out = torch.full((n_cycles, n_members, *shape), nan, dtype=dtype) if keep_members else None
    per_cycle = {
        k: torch.full((n_cycles,), nan, dtype=torch.float64)
        for k in ("spread", "spread_forecast", "rmse", "rmse_forecast", "crps", "ssim")
    }
    rank_hist = torch.zeros(n_cycles, n_members + 1, dtype=torch.int64)
    rmse_lead = torch.full((n_cycles, max(leads, 1)), nan, dtype=torch.float64)
    status, reason = "ok", ""
    timings: dict[str, float] = {}
    ensemble = initial_ensemble.clone()

    cycles = range(n_cycles)
    if progress:
        from tqdm import tqdm

        cycles = tqdm(cycles, desc="assimilate", unit="cycle")
    start = time.perf_counter()
    for k in cycles:
        ctx.cycle = k
        with _timer(timings, "forecast", device):
            if leads:
                lead_err = []
                for j in range(leads):
                    ensemble = system.step(ensemble, 1, generator=model_noise)
                    if not bool(torch.isfinite(ensemble).all()):
                        break  # blew up inside the cycle: a system refuses to step it, the check below records it
                    target = truth_steps[k * steps_per_cycle + j : k * steps_per_cycle + j + 1]
                    lead_err.append(metrics.rmse(ensemble.mean(0, keepdim=True), target)[0])
                else:
                    ensemble = system.step(ensemble, 1, generator=model_noise)
                    rmse_lead[k, :leads] = torch.stack(lead_err).cpu().double()
            else:
                ensemble = system.step(ensemble, steps_per_cycle, generator=model_noise)
        if not bool(torch.isfinite(ensemble).all()):
            status, reason = "diverged", f"non-finite forecast at cycle {k}"
            break
        per_cycle["spread_forecast"][k] = metrics.spread(ensemble.unsqueeze(0)).item()
        if truth is not None:
            per_cycle["rmse_forecast"][k] = metrics.rmse(
                ensemble.mean(0, keepdim=True), truth[k : k + 1]
            ).item()
        try:
            with _timer(timings, "analysis", device):
                ensemble = filter.analyse(ensemble, observations[k], operator, ctx)
        except torch.linalg.LinAlgError as err:
            status, reason = "diverged", f"linear algebra failed at cycle {k}: {err}"
            break
        except DegenerateEnsembleError as err:
            status, reason = "diverged", f"degenerate ensemble at cycle {k}: {err}"
            break
        if not bool(torch.isfinite(ensemble).all()):
            status, reason = "diverged", f"non-finite analysis at cycle {k}"
            break
        weights = _weights(ctx, n_members)
        if weights is not None and not bool(torch.isfinite(weights).all()):
            status, reason = "diverged", f"non-finite particle weights at cycle {k}"
            break
        mean = metrics.ensemble_mean(ensemble.unsqueeze(0), weights)[0]
        mean_out[k] = mean.detach().cpu()
        if members_out is not None:
            members_out[k] = ensemble.detach().cpu()
        per_cycle["spread"][k] = metrics.spread(ensemble.unsqueeze(0), weights).item()
        if truth is not None:
            per_cycle["rmse"][k] = metrics.rmse(mean.unsqueeze(0), truth[k : k + 1]).item()
            per_cycle["crps"][k] = metrics.crps(
                ensemble.unsqueeze(0), truth[k : k + 1], weights=weights
            ).item()
            rank_hist[k] = metrics.rank_histogram(ensemble.unsqueeze(0), truth[k : k + 1])[0].cpu()
            if vorticity is not None:
                w_true = vorticity(truth[k : k + 1])
                per_cycle["ssim"][k] = metrics.ssim(vorticity(mean.unsqueeze(0)), w_true).item()
    total = time.perf_counter() - start
    for stage, seconds in ctx.timings.items():
        timings[stage] = timings.get(stage, 0.0) + seconds

    dims = state_dims(shape)
    data_vars: dict[str, Any] = {
        "mean": (("time", *dims), mean_out.numpy(), {"long_name": "analysis ensemble mean"}),
        "observation": (("time", *dims), observations.cpu().numpy(), {"long_name": "measurement z"}),
        "spread": (
            ("time",),
            per_cycle["spread"].numpy(),
            {"long_name": "analysis spread (root mean variance)"},
        ),
        "spread_forecast": (
            ("time",),
            per_cycle["spread_forecast"].numpy(),
            {"long_name": "forecast spread"},
        ),
    }
    if members_out is not None:
        data_vars["members"] = (("time", "member", *dims), members_out.numpy())
    if truth is not None:
        data_vars.update(
            truth=(("time", *dims), truth.cpu().numpy(), {"long_name": "true state"}),
            rmse=(("time",), per_cycle["rmse"].numpy(), {"long_name": "analysis RMSE of the ensemble mean"}),
            rmse_forecast=(("time",), per_cycle["rmse_forecast"].numpy(), {"long_name": "forecast RMSE"}),
            crps=(("time",), per_cycle["crps"].numpy(), {"long_name": "analysis ensemble CRPS"}),
            rank_hist=(("time", "rank"), rank_hist.numpy(), {"long_name": "rank histogram of the truth"}),
        )
        if vorticity is not None:
            data_vars["ssim"] = (("time",), per_cycle["ssim"].numpy(), {"long_name": "SSIM of vorticity"})
        if leads:
            data_vars["rmse_lead"] = (
                ("time", "lead"),
                rmse_lead.numpy(),
                {"long_name": "RMSE of the forecast mean at the intermediate model steps before cycle time"},
            )

    ds_attrs: dict[str, Any] = {
        "masf_version": masf.__version__,
        "git_commit": git_commit(),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "seed": int(seed),
        "ensemble_size": int(n_members),
        "steps_per_cycle": int(steps_per_cycle),
        "status": status,
        "status_reason": reason,
        "system": getattr(system, "name", type(system).__name__),
        "filter": getattr(filter, "name", type(filter).__name__),
        "wall_clock_total_s": total,
    }
    for stage in STAGES:
        ds_attrs[f"wall_clock_{stage}_s"] = float(timings.get(stage, 0.0))
    for prefix, obj in (("system", system), ("operator", operator), ("filter", filter)):
        for key, value in _params(obj).items():
            ds_attrs[f"{prefix}_{key}"] = _attr_value(value)
    for key, value in (attrs or {}).items():
        ds_attrs[key] = _attr_value(value)
    cycle = np.arange(1, n_cycles + 1)
    coords = {
        "time": ("time", cycle, {"long_name": "analysis cycle (observation index, 1-based)"}),
        "model_time": (
            "time",
            cycle * int(steps_per_cycle) * float(getattr(system, "dt", 1.0)),
            {"long_name": "model time of the analysis", "units": "model time units"},
        ),
    }
    if leads:
        coords["lead"] = (
            "lead",
            np.arange(1, leads + 1),
            {"long_name": "model steps after the previous analysis"},
        )
    return xr.Dataset(data_vars, coords=coords, attrs=ds_attrs)
