"""The training loop: ``fit`` (generic), ``pretrain`` (build + fit) and ``finetune`` (online, on an ensemble).

``loss_fn(net, x0, generator) -> scalar`` is supplied by the caller (MASF x0-prediction under the
measurement-aware process, SF eps-prediction, SSLS single-level...); it must draw all its randomness (t,
noise) from ``generator``. The loop adds AdamW, gradient-norm clipping, an optional EMA of the weights, a
validation split, checkpoints and exact resume.

Which weights ``fit`` returns (loaded into ``net`` in place):
- with a validation split (``floor(val_fraction · N) >= 1`` samples held out, drawn once from
  ``generator``): the weights with the lowest validation loss over the epochs (EMA weights when ``ema``
  is set). The validation loss of an epoch is ``loss_fn`` averaged over the held-out samples with the same
  t and noise every epoch (a generator re-seeded from one draw of ``generator``), so epochs compare fairly.
  This is our answer to method.md B13 (the reference makes a 10 % split and never uses it);
- without one (``val_fraction = 0``, or too few samples to hold one out): the EMA weights if ``ema`` is
  set, else the last weights.

Determinism: the split, the minibatch order and whatever ``loss_fn`` draws come from ``generator`` only.
Bitwise-equal results (and an exact resume) need the same device and, on the CPU, the same number of
threads (float reductions depend on it). Dropout (0 in every masf net) would use torch's global stream.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from masf.errors import CorruptFileError
from masf.io import set_aside
from masf.nets import make_network
from masf.train.checkpoint import read_payload, to_json, write_checkpoint
from masf.train.stop import StopOnSignal, TrainingInterrupted

LossFn = Callable[[nn.Module, Tensor, torch.Generator], Tensor]
LR_SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, total: int, schedule: str, warmup: float) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based) of ``total``.

    ``constant``: 1 after a linear warm-up over the first ``warmup · total`` steps. ``cosine``: the same
    warm-up, then (1 + cos(π p))/2 with p the fraction of the remaining steps done, down to 0 at the end.
    """
    n_warm = math.floor(warmup * total)
    if step < n_warm:
        return (step + 1) / n_warm
    if schedule == "constant":
        return 1.0
    p = (step - n_warm) / max(1, total - n_warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(p, 1.0)))


@dataclass
class TrainResult:
    """Outcome of ``fit``: the trained network (selected weights loaded) and per-epoch losses."""

    net: nn.Module
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int | None = None  # 0-based epoch of the selected weights (None: last/EMA weights)
    epochs: int = 0  # epochs completed in total (including those before a resume)
    seconds: float = 0.0  # wall-clock seconds of this call


def _copy_state(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _check_fit_args(
    data: Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    clip: float | None,
    ema: float | None,
    val_fraction: float,
    checkpoint_every: int,
    checkpoint_interval_s: float,
    lr_schedule: str = "constant",
    warmup: float = 0.0,
) -> None:
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup must be a fraction of the steps in [0, 1), got {warmup!r}")
    if not isinstance(data, Tensor) or data.ndim < 2 or not data.is_floating_point() or len(data) < 1:
        raise ValueError(
            f"data must be a floating tensor (N, *S) with N >= 1, got {getattr(data, 'shape', data)!r}"
        )
    if not torch.isfinite(data).all():
        raise ValueError("data contains non-finite values")
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 or None (no clipping), got {clip!r}")
    if ema is not None and not 0.0 < ema < 1.0:
        raise ValueError(f"ema must be a decay in (0, 1) or None, got {ema!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an int >= 1 (epochs), got {checkpoint_every!r}")
    if not checkpoint_interval_s >= 0:
        raise ValueError(f"checkpoint_interval_s must be >= 0 seconds, got {checkpoint_interval_s!r}")


def fit(
    net: nn.Module,
    loss_fn: LossFn,
    data: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.99),
    clip: float | None = 1.0,
    ema: float | None = None,
    val_fraction: float = 0.1,
    lr_schedule: str = "constant",
    warmup: float = 0.0,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    checkpoint_interval_s: float = 0.0,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
    resume: bool = True,
    stop: StopOnSignal | None = None,
    callback: Callable[[int, nn.Module, dict[str, Tensor] | None], None] | None = None,
) -> TrainResult:
    """Train ``net`` on ``data`` (N, *S) with ``loss_fn`` and a fresh AdamW; see the module docstring.

    Each epoch visits the training samples once in a random order, in minibatches of ``batch_size`` (the
    last one may be smaller; with N_train <= batch_size an epoch is one step). Per step: loss, backward,
    gradient-norm clip to ``clip``, AdamW step at ``lr · lr_factor(step)`` (see :func:`lr_factor`:
    ``lr_schedule`` ``constant`` or ``cosine`` over all ``epochs``, linear warm-up over the fraction
    ``warmup`` of the steps), EMA update ``e <- d·e + (1-d)·w`` with the warmed-up decay
    ``d = min(ema, (1 + k)/(10 + k))`` at the k-th update (so that a short run is not dominated by the
    initial weights: with ema = 0.999 they would still weigh 0.999^k).

    Checkpoints (if ``checkpoint_path``): every ``checkpoint_every`` epochs but no sooner than
    ``checkpoint_interval_s`` seconds after the previous one, always at the end and on a stop request,
    written atomically (short epochs of a large network would otherwise spend their time writing files). ``model`` holds the weights ``fit`` would return at that point (so the file
    can be used with ``load_checkpoint``) and ``extra["train"]`` the full resume state (raw weights,
    optimizer, EMA, best weights, losses, split, position, generator state). With ``resume`` and an existing
    file, training continues from it and ends with exactly the weights of an uninterrupted run; the file
    must come from a run with the same network, data size and hyper-parameters (``epochs`` may grow).
    ``config`` is stored as the checkpoint's run config and ``extra`` (tensors the model needs besides its
    weights, e.g. MASF's climatology Gaussian) beside ``extra["train"]``. ``callback(steps_done, net, ema_state)`` runs
    after every optimizer step (benchmarks use it to score the weights on their own validation data).

    Raises ValueError on bad arguments, FloatingPointError on a non-finite training loss, and
    ``TrainingInterrupted`` after a stop request (checkpoint written first).
    """
    started = time.perf_counter()
    _check_fit_args(
        data,
        epochs,
        batch_size,
        lr,
        weight_decay,
        betas,
        clip,
        ema,
        val_fraction,
        checkpoint_every,
        checkpoint_interval_s,
        lr_schedule,
        warmup,
    )
    if not isinstance(getattr(net, "config", None), dict):
        raise ValueError("net has no .config dict; build it with masf.nets.make_network")
    params = list(net.parameters())
    device = params[0].device
    n = len(data)
    hyper = {
        "n": n,
        "batch_size": batch_size,
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "betas": [float(b) for b in betas],
        "clip": clip,
        "ema": ema,
        "val_fraction": float(val_fraction),
        "lr_schedule": lr_schedule,
        "warmup": float(warmup),
    }
    optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    gen_device = generator.device

    s: dict[str, Any] | None = None  # resume state, everything that must survive an interruption
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    if path is not None and resume and path.exists():
        try:
            s = _restore(path, net, optimizer, generator, hyper)
        except CorruptFileError as err:  # e.g. a node died mid-write: set it aside, start clean
            aside = set_aside(path)
            warnings.warn(f"{err}; set it aside as {aside.name} and training from the start", stacklevel=2)
    if s is None:
        perm = torch.randperm(n, generator=generator, device=gen_device).cpu()
        n_val = math.floor(val_fraction * n) if n >= 2 else 0
        s = {
            "epoch": 0,
            "step": 0,
            "order": None,
            "loss_sum": 0.0,
            "loss_count": 0,
            "val_idx": perm[:n_val],
            "train_idx": perm[n_val:],
            "val_seed": int(torch.randint(0, 2**62, (1,), generator=generator, device=gen_device).item()),
            "ema_state": _copy_state(net) if ema is not None else None,
            "best_state": None,
            "best_val": math.inf,
            "best_epoch": None,
            "train_loss": [],
            "val_loss": [],
        }
    n_train = len(s["train_idx"])
    steps_per_epoch = math.ceil(n_train / batch_size)
    total_steps = epochs * steps_per_epoch

    def selected_state() -> dict[str, Tensor]:
        if s["best_state"] is not None:
            return s["best_state"]
        return s["ema_state"] if s["ema_state"] is not None else net.state_dict()

    last_save = -math.inf  # the first due epoch writes at once

    def save() -> None:
        nonlocal last_save
        if path is None:
            return
        last_save = time.monotonic()
        train = {
            **s,
            "hyper": hyper,
            "net": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
        }
        write_checkpoint(
            path, net.config, selected_state(), config or {}, None, {**(extra or {}), "train": train}
        )

    bar = tqdm(total=epochs, initial=min(s["epoch"], epochs), disable=not progress, desc="train", leave=False)
    net.train()
    while s["epoch"] < epochs:
        if s["order"] is None:
            shuffle = torch.randperm(n_train, generator=generator, device=gen_device).cpu()
            s["order"] = s["train_idx"][shuffle]
        while s["step"] < steps_per_epoch:
            idx = s["order"][s["step"] * batch_size : (s["step"] + 1) * batch_size]
            x0 = data[idx.to(data.device)].to(device)
            loss = loss_fn(net, x0, generator)
            if not isinstance(loss, Tensor) or loss.ndim != 0:
                raise ValueError(
                    f"loss_fn must return a scalar tensor, got {type(loss).__name__} {getattr(loss, 'shape', '')}"
                )
            loss_value = loss.item()  # the step's one host sync
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"non-finite training loss {loss_value} at epoch {s['epoch']} step {s['step']}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            factor = lr_factor(s["epoch"] * steps_per_epoch + s["step"], total_steps, lr_schedule, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr * factor
            optimizer.step()
            if s["ema_state"] is not None:
                done = s["epoch"] * steps_per_epoch + s["step"]  # EMA updates before this one
                decay = min(ema, (1.0 + done) / (10.0 + done))
                with torch.no_grad():
                    for key, value in net.state_dict().items():
                        target = s["ema_state"][key]
                        if target.is_floating_point():
                            target.lerp_(value, 1.0 - decay)
                        else:
                            target.copy_(value)
            s["loss_sum"] += loss_value * len(idx)
            s["loss_count"] += len(idx)
            s["step"] += 1
            if callback is not None:
                callback(s["epoch"] * steps_per_epoch + s["step"], net, s["ema_state"])
            if stop is not None and stop.requested:
                save()
                where = f"epoch {s['epoch']} step {s['step']}"
                saved = (
                    f"checkpoint written to {path}"
                    if path is not None
                    else "no checkpoint path, nothing saved"
                )
                raise TrainingInterrupted(
                    stop.signum or 15, f"training stopped by signal {stop.signum} after {where}; {saved}"
                )
        s["train_loss"].append(s["loss_sum"] / s["loss_count"])
        if len(s["val_idx"]):
            candidate = s["ema_state"]
            val = _validation_loss(
                net, candidate, loss_fn, data, s["val_idx"], batch_size, s["val_seed"], gen_device
            )
            s["val_loss"].append(val)
            if val < s["best_val"]:
                s["best_val"], s["best_epoch"] = val, s["epoch"]
                s["best_state"] = (
                    _copy_state(net) if candidate is None else {k: v.clone() for k, v in candidate.items()}
                )
        s.update(epoch=s["epoch"] + 1, step=0, order=None, loss_sum=0.0, loss_count=0)
        bar.update(1)
        bar.set_postfix(
            loss=f"{s['train_loss'][-1]:.4g}",
            **({"val": f"{s['val_loss'][-1]:.4g}"} if s["val_loss"] else {}),
        )
        due = s["epoch"] % checkpoint_every == 0 and time.monotonic() - last_save >= checkpoint_interval_s
        if due or s["epoch"] == epochs:
            save()
    bar.close()
    net.load_state_dict(selected_state())
    return TrainResult(
        net=net,
        train_loss=list(s["train_loss"]),
        val_loss=list(s["val_loss"]),
        best_epoch=s["best_epoch"],
        epochs=s["epoch"],
        seconds=time.perf_counter() - started,
    )


def _validation_loss(
    net: nn.Module,
    state: dict[str, Tensor] | None,
    loss_fn: LossFn,
    data: Tensor,
    val_idx: Tensor,
    batch_size: int,
    seed: int,
    gen_device: torch.device,
) -> float:
    """Mean ``loss_fn`` over the held-out samples with weights ``state`` (None: the current ones).

    The generator is re-seeded with ``seed`` each call, so every epoch sees the same t and noise.
    """
    raw = _copy_state(net) if state is not None else None
    if raw is not None:
        net.load_state_dict(state)
    gen = torch.Generator(device=gen_device)
    gen.manual_seed(seed)
    total = 0.0
    net.eval()
    with torch.no_grad():
        for start in range(0, len(val_idx), batch_size):
            idx = val_idx[start : start + batch_size]
            x0 = data[idx.to(data.device)].to(next(net.parameters()).device)
            total += loss_fn(net, x0, gen).item() * len(idx)
    net.train()
    if raw is not None:
        net.load_state_dict(raw)
    return total / len(val_idx)


def _restore(
    path: Path,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    hyper: dict[str, Any],
) -> dict[str, Any]:
    """Load the resume state of ``path`` into ``net``, ``optimizer`` and ``generator``; return the rest."""
    device = next(net.parameters()).device
    payload = read_payload(path, map_location="cpu")
    train = payload["extra"].get("train")
    if train is None:
        raise ValueError(
            f"checkpoint {path} holds no training state to resume from; pass resume=False to overwrite it"
        )
    if payload["network"] != to_json(net.config, "the network config"):
        raise ValueError(
            f"checkpoint {path} was made for network {payload['network']}, this run uses {net.config}"
        )
    for key, value in hyper.items():
        if train["hyper"].get(key) != value:
            raise ValueError(
                f"checkpoint {path} was trained with {key}={train['hyper'].get(key)!r}, this run uses "
                f"{key}={value!r}; pass resume=False or delete the file to start over"
            )
    net.load_state_dict(train["net"])
    optimizer.load_state_dict(train["optimizer"])
    generator.set_state(train["generator"])
    state = {k: v for k, v in train.items() if k not in ("hyper", "net", "optimizer", "generator")}
    for key in ("ema_state", "best_state"):
        if state[key] is not None:
            state[key] = {k: v.to(device) for k, v in state[key].items()}
    return state


def pretrain(
    data: Tensor,
    loss_fn: LossFn,
    *,
    kind: str,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    sizes: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    config: dict[str, Any] | None = None,
    val_fraction: float = 0.1,
    **fit_options: Any,
) -> TrainResult:
    """Build a ``kind`` network for states ``data.shape[1:]`` (initial weights from ``generator``), then ``fit``.

    ``device`` defaults to ``data``'s device. The checkpoint at ``checkpoint_path`` (written by ``fit``)
    ends holding the returned weights and ``config``, ready for ``load_checkpoint``; a rerun resumes it.
    ``fit_options``: the other keywords of ``fit`` (ema, clip, weight_decay, betas, progress, stop, ...).
    """
    if not isinstance(data, Tensor) or data.ndim < 2:
        raise ValueError(f"data must be a tensor (N, *S), got {getattr(data, 'shape', data)!r}")
    net = make_network(kind, tuple(data.shape[1:]), generator=generator, **(sizes or {}))
    net.to(data.device if device is None else device)
    return fit(
        net,
        loss_fn,
        data,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        generator=generator,
        checkpoint_path=checkpoint_path,
        config=config,
        val_fraction=val_fraction,
        **fit_options,
    )


def finetune(
    net: nn.Module,
    ensemble: Tensor,
    loss_fn: LossFn,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    val_fraction: float = 0.0,
    progress: bool = False,
    **fit_options: Any,
) -> TrainResult:
    """Online fine-tuning of ``net`` (in place) on a forecast ``ensemble`` (N, *S) (method.md §6).

    A fresh AdamW every call (as the reference). By default every member is trained on
    (``val_fraction=0``): the reference holds out 10 % and never uses it, wasting 1 of 10 members at
    grid 128 (method.md B13). Pass a copy (``copy.deepcopy``) to keep the original network unchanged.
    ``fit_options``: the other keywords of ``fit`` (ema, clip, weight_decay, betas, checkpoint_path, ...).
    """
    return fit(
        net,
        loss_fn,
        ensemble,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        generator=generator,
        val_fraction=val_fraction,
        progress=progress,
        **fit_options,
    )
