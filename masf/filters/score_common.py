"""Glue shared by the score-based baselines SF and SSLS (method.md §6, §7.1, §7.2).

Both filters train a network ε̂_θ that predicts −ε from a noised state ``x0 + std·ε`` in normalized space,
so that the prior score is ``ε̂_θ(x)/(std + 1e-5)``. This module holds what they share:

- the network choice (``"auto"``: 2-D grids -> unet2d, 1-D states of size >= 16 divisible by 4 -> unet1d,
  else mlp) and the mapping of ``width``/``depth`` onto each kind's sizes;
- the loss "squared error summed over channels, averaged over the rest" (:func:`channel_sum_mse`);
- the likelihood score ∇_x[−‖z_n − H_n(x)‖²/(2σ_n²)] by autograd (:func:`likelihood_score`);
- the per-sample RMS clip of a score (:func:`clip_rms`);
- pretraining into a checkpoint whose JSON config records the method, the operator, the forward-process
  parameter and the fitted normalizer (:func:`pretrain_network`), loading it into ``ctx.state`` on the first
  analysis (:func:`loaded_model`) and online fine-tuning on the normalized forecast ensemble
  (:func:`finetune_model`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from masf.config import network_kind as config_network_kind
from masf.diffusion.normalizer import FORMS, UPDATES, Normalizer
from masf.filters.base import Context
from masf.nets import NETWORKS
from masf.train import LossFn, load_checkpoint, pretrain
from masf.train.online import OPTIMIZERS, Draws, OnlineTrainer, bank_draws

NETWORK_CHOICES = ("auto", *NETWORKS)
STATE_KEY = "score_model"  # ctx.state key of the loaded (and fine-tuned) model


# --------------------------------------------------------------------------------------- arguments
def check_int(value: Any, parameter: str, method: str, low: int) -> int:
    """``value`` as an int if it is an integer >= ``low``, else ``ValueError`` naming ``parameter``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{method}: {parameter} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_number(value: Any, parameter: str, method: str, *, low: float, strict: bool = True) -> float:
    """``value`` as a finite float > ``low`` (``>=`` when ``strict=False``), else ``ValueError``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    ok = math.isfinite(v) and (v > low if strict else v >= low)
    if isinstance(value, bool) or not ok:
        relation = ">" if strict else ">="
        raise ValueError(f"{method}: {parameter} must be a finite number {relation} {low}, got {value!r}")
    return v


def check_any_operator(operator: Any, method: str) -> None:
    """``ValueError`` unless ``operator`` looks like a masf operator (callable, with ``noise_std``).

    For filters that take every operator (linear or not): their likelihood score goes through autograd.
    """
    if not callable(operator) or not hasattr(operator, "noise_std"):
        raise ValueError(
            f"{method}: operator must be a masf operator (callable with noise_std), got {operator!r}"
        )


def check_training_fields(obj: Any, method: str) -> None:
    """Validate the network / training / normalization fields SF and SSLS share (frozen dataclass ``obj``)."""
    if obj.network not in NETWORK_CHOICES:
        raise ValueError(
            f"{method}: network must be one of {', '.join(NETWORK_CHOICES)}, got {obj.network!r}"
        )
    for name in ("width", "depth", "levels"):
        if getattr(obj, name) is not None:
            check_int(getattr(obj, name), name, method, 1)
    for name in ("pretrain_epochs", "pretrain_batch", "finetune_batch"):
        check_int(getattr(obj, name), name, method, 1)
    check_int(obj.finetune_epochs, "finetune_epochs", method, 0)
    for name in ("pretrain_lr", "finetune_lr"):
        object.__setattr__(obj, name, check_number(getattr(obj, name), name, method, low=0.0))
    if not isinstance(obj.finetune_reset, bool):
        raise ValueError(f"{method}: finetune_reset must be True or False, got {obj.finetune_reset!r}")
    replay = check_number(obj.finetune_replay, "finetune_replay", method, low=0.0, strict=False)
    if replay >= 1.0:
        raise ValueError(f"{method}: finetune_replay must be a number in [0, 1), got {obj.finetune_replay!r}")
    object.__setattr__(obj, "finetune_replay", replay)
    jitter = check_number(obj.finetune_jitter, "finetune_jitter", method, low=0.0, strict=False)
    object.__setattr__(obj, "finetune_jitter", jitter)
    if obj.finetune_optimizer not in OPTIMIZERS:
        raise ValueError(
            f"{method}: finetune_optimizer must be one of {', '.join(OPTIMIZERS)}, got {obj.finetune_optimizer!r}"
        )
    for name in ("normalize", "compile"):
        if not isinstance(getattr(obj, name), bool):
            raise ValueError(f"{method}: {name} must be True or False, got {getattr(obj, name)!r}")
    if obj.norm_form not in FORMS:
        raise ValueError(f"{method}: norm_form must be one of {', '.join(FORMS)}, got {obj.norm_form!r}")
    if obj.norm_update not in UPDATES:
        raise ValueError(
            f"{method}: norm_update must be one of {', '.join(UPDATES)}, got {obj.norm_update!r}"
        )


# ----------------------------------------------------------------------------------------- networks
def network_kind(network: str, state_shape: tuple[int, ...]) -> str:
    """The network kind for ``network`` (``"auto"`` resolved from the state shape, see
    :func:`masf.config.network_kind`: the one rule the config validation uses too)."""
    return config_network_kind(network, tuple(state_shape))


def network_sizes(
    kind: str, width: int | None, depth: int | None, levels: int | None = None, *, time_conditioned: bool
) -> dict:
    """Keyword sizes of ``make_network``: width -> mlp ``width`` / unet ``model_channels``, depth -> mlp
    ``num_blocks`` / unet ``num_res_blocks``, levels L -> unet ``channel_mult`` (1, 2, 4, ..., 2^(L-1)):
    L resolution levels, the width doubling at each (None keeps the class default)."""
    sizes: dict[str, Any] = {"time_conditioned": time_conditioned}
    if width is not None:
        sizes["width" if kind == "mlp" else "model_channels"] = int(width)
    if depth is not None:
        sizes["num_blocks" if kind == "mlp" else "num_res_blocks"] = int(depth)
    if levels is not None:
        if kind == "mlp":
            raise ValueError(
                "levels applies to the UNets only (unet1d, unet2d, dual_unet2d); the mlp has none"
            )
        sizes["channel_mult"] = tuple(2**i for i in range(int(levels)))
    return sizes


# ---------------------------------------------------------------------------------------- the math
def channel_sum_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Squared error summed over channels and averaged over the rest (batch and grid), a scalar.

    For states (B, C, ...) with two or more state dims the channel is dim 1; 1-D states (B, D) have a single
    channel, so the loss is then the plain mean.
    """
    sq = (pred - target).square()
    return sq.sum(dim=1).mean() if sq.ndim >= 3 else sq.mean()


def likelihood_score(
    x: Tensor, z_n: Tensor, operator: Callable[[Tensor], Tensor], normalizer: Normalizer, sigma_n: Tensor
) -> Tensor:
    """∇_x [−‖(z_n − H_n(x))/σ_n‖²/2] by autograd, (N, *S), for normalized x (N, *S) and z_n (*S).

    H_n(x) = norm_z(H(denorm_x(x))) (``normalizer.apply_operator``); σ_n broadcasts against x (per channel).
    The result is detached; the graph is built even inside ``torch.no_grad``.
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        residual = (z_n - normalizer.apply_operator(operator, xg)) / sigma_n
        log_lik = -0.5 * residual.square().sum()
        (grad,) = torch.autograd.grad(log_lik, xg)
    return grad.detach()


def clip_rms(score: Tensor, tol: float) -> Tensor:
    """Rescale each sample of ``score`` (N, *S) so that its RMS over the state is at most ``tol``.

    s_i ← s_i · min(1, tol / rms_i),  rms_i = sqrt(mean_j s_ij²).
    """
    rms = score.reshape(score.shape[0], -1).square().mean(dim=1).sqrt()
    factor = (tol / rms.clamp_min(torch.finfo(score.dtype).tiny)).clamp(max=1.0)
    return score * factor.reshape(-1, *([1] * (score.ndim - 1)))


def uniform(n: int, low: float, high: float, generator: torch.Generator, like: Tensor) -> Tensor:
    """(n,) draws of U(low, high) from ``generator`` (on its own device), cast to ``like``'s dtype/device."""
    u = torch.rand((n,), generator=generator, dtype=like.dtype, device=generator.device)
    return (low + (high - low) * u).to(like.device)


def expand_as_batch(v: Tensor, x: Tensor) -> Tensor:
    """(N,) -> (N, 1, ..., 1) broadcasting against x (N, *S)."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))


# --------------------------------------------------------------------------- pretraining and loading
@dataclass
class ScoreModel:
    """A loaded network (eval mode unless fine-tuning), the normalizer it was trained with, and the online
    trainer that fine-tunes it (created at the first fine-tuning cycle)."""

    net: nn.Module
    normalizer: Normalizer
    trainer: OnlineTrainer | None = None
    tuned: bool = False  # fine-tuned in the current cycle: its prior is the trainer's mixture
    extra: dict[str, Any] = field(default_factory=dict)  # the checkpoint's extra tensors (not "train")


def make_normalizer(normalize: bool, form: str, update: str) -> Normalizer:
    """An unfitted per-channel normalizer, or the identity when ``normalize`` is False."""
    return Normalizer(form, update, same=True) if normalize else Normalizer.identity()


def normalizer_to_json(normalizer: Normalizer) -> dict[str, Any]:
    """``normalizer.to_dict()`` with tensors turned into lists (for the JSON run config)."""
    return {k: (v.tolist() if isinstance(v, Tensor) else v) for k, v in normalizer.to_dict().items()}


def normalizer_from_json(d: dict[str, Any]) -> Normalizer:
    """Inverse of :func:`normalizer_to_json`."""
    return Normalizer.from_dict({k: (torch.tensor(v) if isinstance(v, list) else v) for k, v in d.items()})


#: How every pretraining optimizes (benchmarks/training/: with these, a 64² denoiser reaches a given
#: validation loss several times sooner than with a constant learning rate and no EMA): a cosine learning
#: rate decaying to 0 over the epochs after a linear warm-up over the first 5 % of the steps, and an EMA of
#: the weights (decay 0.999, warmed up), whose best-validation weights are kept.
PRETRAIN_RECIPE: dict[str, Any] = {"lr_schedule": "cosine", "warmup": 0.05, "ema": 0.999}

#: Pretraining writes its resume checkpoint at most this often (and always at the end and on SIGTERM): at
#: 64² a width-32 UNet's checkpoint is about 28 MB (weights, EMA, best weights, AdamW moments), and an
#: epoch on a GPU can take a second. A hard kill (OOM, node failure) loses at most this much training.
PRETRAIN_CHECKPOINT_INTERVAL_S = 60.0


def pretrain_network(
    data: Tensor,
    operator: Any,
    loss_fn: LossFn,
    *,
    method: str,
    process: dict[str, float],
    kind: str,
    sizes: dict[str, Any],
    normalizer: Normalizer,
    epochs: int,
    batch_size: int,
    lr: float,
    checkpoint: str,
    generator: torch.Generator,
    device: str | torch.device,
    progress: bool,
    stop: Any = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Fit ``normalizer`` on ``data`` (M, *S) (physical, cast to float32), train a ``kind`` network on the normalized data with
    ``loss_fn`` (``masf.train.pretrain``) and write ``checkpoint``.

    ``stop`` (a ``masf.train.StopOnSignal``) makes SIGTERM save the checkpoint and exit; a rerun resumes.
    The checkpoint's run config holds ``method``, ``operator`` (its ``params()``; None when the training
    does not depend on it, SF and SSLS: then one network serves every operator), the forward-process
    parameters ``process`` (e.g. ``{"sigma_max": 25.0}``) and ``normalizer`` (statistics as lists).
    """
    if not isinstance(data, Tensor) or data.ndim < 2 or not data.is_floating_point():
        raise ValueError(
            f"{method}: data must be a float tensor (M, *S), got {getattr(data, 'shape', data)!r}"
        )
    data = data.to(device=device, dtype=torch.float32)  # the networks are float32
    normalizer.fit(data)  # a no-op for the (already fitted) identity normalizer
    config = {
        "method": method,
        "operator": None if operator is None else operator.params(),
        **process,
        "normalizer": normalizer_to_json(normalizer),
    }
    pretrain(
        normalizer.norm_x(data),
        loss_fn,
        kind=kind,
        sizes=sizes,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        generator=generator,
        device=device,
        checkpoint_path=checkpoint,
        checkpoint_interval_s=PRETRAIN_CHECKPOINT_INTERVAL_S,
        config=config,
        extra=extra,
        progress=progress,
        stop=stop,
        **PRETRAIN_RECIPE,
    )


def compile_network(net: nn.Module, device: torch.device) -> nn.Module:
    """Compile ``net``'s forward in place (``nn.Module.compile``: parameters and state_dict keys unchanged).

    On CUDA with ``mode="reduce-overhead"``: TorchInductor kernels replayed as CUDA graphs, so a denoiser
    call or a fine-tuning step costs its arithmetic, not one launch per layer (docs/architecture.md,
    "Compiled networks"). On CPU with the default mode (C++ kernels). Static shapes: each batch size
    (the ensemble, the fine-tuning batch, the pathwise pair) compiles once, on first use.
    """
    net.compile(mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)
    return net


def loaded_model(
    ctx: Context, expect: dict[str, Any], like: Tensor, method: str, *, compile: bool = False
) -> ScoreModel:
    """The model in ``ctx.state`` (loaded from ``ctx.pretrained`` on first use, onto ``like``'s device;
    compiled by :func:`compile_network` when ``compile``).

    ``expect`` is checked against the checkpoint's config (``masf.train.load_checkpoint``).
    """
    model = ctx.state.get(STATE_KEY)
    if model is None:
        if ctx.pretrained is None:
            raise ValueError(
                f"{method}: ctx.pretrained is None; this filter needs a pretrained checkpoint (run pretrain)"
            )
        ckpt = load_checkpoint(ctx.pretrained, expect=expect, device=like.device)
        net = ckpt.net.to(dtype=like.dtype).eval()
        if compile:
            compile_network(net, like.device)
        extra = {k: v for k, v in ckpt.extra.items() if k != "train"}
        model = ScoreModel(net=net, normalizer=normalizer_from_json(ckpt.config["normalizer"]), extra=extra)
        ctx.state[STATE_KEY] = model
    return model


def _sync(x: Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def climatology_bank(ctx: Context, normalizer: Normalizer, like: Tensor) -> Tensor | None:
    """``ctx.climatology`` (M, *S) in ``normalizer``'s space on ``like``'s device and dtype, or None."""
    if ctx.climatology is None:
        return None
    return normalizer.norm_x(ctx.climatology.to(device=like.device, dtype=like.dtype))


def finetune_steps(f: Any, n_members: int) -> int:
    """Optimizer steps per fine-tuning cycle: ceil(finetune_epochs · N / finetune_batch)."""
    return math.ceil(f.finetune_epochs * n_members / f.finetune_batch)


def finetune_model(model: ScoreModel, prior: Tensor, loss_fn: LossFn, ctx: Context, f: Any) -> None:
    """Online fine-tuning (docs/finetuning.md) of ``model.net`` in place on the forecast ensemble ``prior``.

    Runs from the second analysis on (``ctx.cycle >= 1``) when ``f.finetune_epochs > 0``: refits an
    ``adaptive`` normalizer on ``prior`` first, then :meth:`OnlineTrainer.fit_cycle` with ``f``'s
    ``finetune_*`` fields on the normalized members mixed with the climatology bank (``ctx.climatology``,
    fraction ``finetune_replay``). Minibatches and noise come from ``ctx.train_generator``. Adds the
    seconds to ``ctx.timings["finetune"]``.
    """
    model.tuned = False
    if ctx.cycle < 1 or f.finetune_epochs == 0:
        return
    if ctx.train_generator is None:
        raise ValueError(
            f"{f.name}: fine-tuning (finetune_epochs={f.finetune_epochs}) needs ctx.train_generator"
        )
    if f.finetune_replay > 0 and ctx.climatology is None:
        raise ValueError(
            f"{f.name}: finetune_replay={f.finetune_replay} needs climatology states (run(..., climatology=...),"
            " `masf assimilate --climatology`); set finetune_replay: 0 to fine-tune on the members alone"
        )
    _sync(prior)
    started = time.perf_counter()
    if model.normalizer.update == "adaptive":
        model.normalizer.fit(prior)
    if model.trainer is None:
        model.trainer = OnlineTrainer(
            model.net,
            lr=f.finetune_lr,
            batch_size=f.finetune_batch,
            reset=f.finetune_reset,
            replay=f.finetune_replay,
            jitter=f.finetune_jitter,
            optimizer=f.finetune_optimizer,
        )
    members = model.normalizer.norm_x(prior)
    bank = climatology_bank(ctx, model.normalizer, prior)
    model.trainer.fit_cycle(members, bank, loss_fn, finetune_steps(f, len(prior)), ctx.train_generator)
    model.tuned = True
    _sync(prior)
    ctx.add_time("finetune", time.perf_counter() - started)


def prior_draws(model: ScoreModel, prior: Tensor, ctx: Context, method: str) -> Draws:
    """Draws (normalized) from the distribution ``model.net`` was last fitted to, for the bridge's pathwise
    x0 uncertainty: the trainer's mixture after fine-tuning this cycle, else the climatology bank."""
    if model.tuned and model.trainer is not None:
        members = model.normalizer.norm_x(prior)
        return model.trainer.draws(members, climatology_bank(ctx, model.normalizer, prior))
    bank = climatology_bank(ctx, model.normalizer, prior)
    if bank is None:
        raise ValueError(
            f"{method}: x0_uncertainty 'pathwise' needs climatology states, the prior the pretrained network "
            "was fitted to (run(..., climatology=...), `masf assimilate --climatology`); or set "
            "x0_uncertainty: none"
        )
    return bank_draws(bank)


def check_analysis_input(prior: Tensor, z: Tensor, method: str) -> None:
    """``ValueError`` unless ``prior`` is a float (N, *S) batch and ``z`` has shape S."""
    if not isinstance(prior, Tensor) or not prior.is_floating_point() or prior.ndim < 2:
        raise ValueError(
            f"{method}: prior must be a float tensor (N, *S), got {getattr(prior, 'shape', prior)!r}"
        )
    if not isinstance(z, Tensor) or tuple(z.shape) != tuple(prior.shape[1:]):
        raise ValueError(
            f"{method}: z must have the state shape {tuple(prior.shape[1:])}, got {getattr(z, 'shape', z)!r}"
        )


def timed(fn: Callable[[], Tensor], ctx: Context, stage: str, like: Tensor) -> Tensor:
    """Run ``fn()`` and add its wall-clock seconds (CUDA synchronised) to ``ctx.timings[stage]``."""
    _sync(like)
    started = time.perf_counter()
    out = fn()
    _sync(out)
    ctx.add_time(stage, time.perf_counter() - started)
    return out


def pretrain_filter(
    f: Any,
    data: Tensor,
    operator: Any,
    loss_fn: LossFn,
    *,
    process: dict[str, Any],
    checkpoint: str,
    generator: torch.Generator,
    device: str | torch.device,
    progress: bool,
    stop: Any = None,
    kind: str | None = None,
    time_conditioned: bool = True,
    normalizer: Normalizer | None = None,
    operator_free: bool = False,
    extra: dict[str, Any] | None = None,
) -> None:
    """Pretrain the network of the score-based filter ``f`` (its network, normalization and
    ``pretrain_*`` fields) on ``data`` with ``loss_fn``; see :func:`pretrain_network`.

    ``kind`` overrides ``f.network`` resolved by :func:`network_kind`; ``normalizer`` a fresh one from
    ``f``'s normalization fields (pass one when ``loss_fn`` was built on it). ``operator_free``: the loss
    does not involve the operator, so the checkpoint records none (and serves every operator).
    """
    kind = kind or network_kind(f.network, tuple(data.shape[1:]))
    pretrain_network(
        data,
        None if operator_free else operator,
        loss_fn,
        method=f.name,
        process=process,
        kind=kind,
        sizes=network_sizes(kind, f.width, f.depth, f.levels, time_conditioned=time_conditioned),
        normalizer=normalizer or make_normalizer(f.normalize, f.norm_form, f.norm_update),
        epochs=f.pretrain_epochs,
        batch_size=f.pretrain_batch,
        lr=f.pretrain_lr,
        checkpoint=checkpoint,
        generator=generator,
        device=device,
        progress=progress,
        stop=stop,
        extra=extra,
    )


def prepared_model(
    f: Any, prior: Tensor, ctx: Context, expect: dict[str, Any], loss_fn: Callable[[ScoreModel], LossFn]
) -> ScoreModel:
    """The model of filter ``f`` for this analysis: loaded from ``ctx.pretrained`` on first use (checked
    against ``expect``), then fine-tuned on ``prior`` with ``loss_fn(model)`` and ``f``'s ``finetune_*``
    fields (from the second analysis on; see :func:`finetune_model`)."""
    model = loaded_model(ctx, expect, prior, f.name, compile=f.compile)
    finetune_model(model, prior, loss_fn(model), ctx, f)
    return model
