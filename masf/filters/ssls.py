"""SSLS: score-based sequential Langevin sampling (arXiv 2411.13443), as the reference runs it (method.md §7.2).

Prior score model (normalized space), a single noise level σ:

    x = x0 + σ ε,   the time-free network predicts −ε,   prior score s(x) = ε̂(x)/(σ + 1e-5).

Training loss: ‖ε̂(x) + ε‖² summed over channels and averaged over the rest.

Sampling: start at the normalized forecast particles and run ``nfe`` steps of the OU-preconditioned Langevin
exponential integrator (step h, decay λ >= 0, φ(u) = (e^u − 1)/u, φ(0) = 1):

    G = clip_rms( ∇_x[−‖z_n − H_n(x)‖²/(2σ_n²)] + s(x), tol )
    x ← e^{−λh} x + h φ(−λh) G + sqrt(2h φ(−2λh)) ξ

This integrates dx = (−λx + G(x)) dt + sqrt(2) dW with the linear part exact and G frozen over a step,
so it targets π(x) ∝ p(z | x) p(x) exp(−λ‖x‖²/2). For a Gaussian G = −x/v the chain is an AR(1)
x' = a x + c ξ with a = e^{−λh} − hφ(−λh)/v, c² = 2hφ(−2λh), whose stationary variance c²/(1 − a²) is
1/(1/v + λ) up to O(h) (:func:`stationary_variance`). The last iterate is returned, denormalized.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from masf.filters.base import Context
from masf.filters.score_common import (
    channel_sum_mse,
    check_analysis_input,
    check_any_operator,
    check_int,
    check_number,
    check_training_fields,
    clip_rms,
    likelihood_score,
    prepared_model,
    pretrain_filter,
    timed,
)
from masf.systems.base import randn

SCORE_EPS = 1e-5  # score = ε̂ / (σ + SCORE_EPS)


def phi(u: float) -> float:
    """φ(u) = (e^u − 1)/u, with φ(0) = 1 (computed with expm1)."""
    return 1.0 if u == 0.0 else math.expm1(u) / u


def integrator_coefficients(step: float, decay: float) -> tuple[float, float, float]:
    """(e^{−λh}, h φ(−λh), sqrt(2h φ(−2λh))): the multipliers of x, G and ξ in one step."""
    return (
        math.exp(-decay * step),
        step * phi(-decay * step),
        math.sqrt(2.0 * step * phi(-2.0 * decay * step)),
    )


def stationary_variance(v: float, step: float, decay: float) -> float:
    """Exact stationary variance of the chain for the Gaussian score G = −x/v (no clipping).

    x' = a x + c ξ with a = e^{−λh} − hφ(−λh)/v and c = sqrt(2hφ(−2λh)), so Var = c²/(1 − a²) (needs |a| < 1).
    As h → 0 it tends to 1/(1/v + λ).
    """
    e, b, c = integrator_coefficients(step, decay)
    a = e - b / v
    if not abs(a) < 1.0:
        raise ValueError(f"the chain is unstable for v={v}, step={step}, decay={decay} (|a| = {abs(a)} >= 1)")
    return c * c / (1.0 - a * a)


def ssls_loss(net: nn.Module, x0: Tensor, generator: torch.Generator, *, sigma: float) -> Tensor:
    """Single-level denoising loss: x = x0 + σ ε, mean_channelsum ‖net(x) + ε‖² (scalar)."""
    eps = randn(tuple(x0.shape), generator, x0.dtype, x0.device)
    return channel_sum_mse(net(x0 + sigma * eps, None), -eps)


def langevin(
    score: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    n_steps: int,
    step: float,
    decay: float,
    tol: float,
    generator: torch.Generator,
) -> Tensor:
    """``n_steps`` exponential-integrator Langevin steps from ``x`` (N, *S) (module docstring); the last iterate.

    Args:
        score: x (N, *S) -> total score G before clipping (likelihood + prior), (N, *S).
        generator: noise stream, drawn on its own device and moved to x's.
    """
    check_int(n_steps, "n_steps", "ssls", 0)
    check_number(step, "step", "ssls", low=0.0)
    check_number(decay, "decay", "ssls", low=0.0, strict=False)
    check_number(tol, "tol", "ssls", low=0.0)
    e, b, c = integrator_coefficients(step, decay)
    shape = tuple(x.shape)
    for _ in range(n_steps):
        g = clip_rms(score(x), tol)
        x = e * x + b * g + c * randn(shape, generator, x.dtype, x.device)
    return x


@dataclass(frozen=True)
class SSLS:
    """Score-based sequential Langevin sampling baseline; see the module docstring.

    Args:
        sigma: the single noise level σ > 0 of the score model (a pretraining parameter, checked against the
            checkpoint).
        nfe: number of Langevin steps (network evaluations), >= 1.
        step: Langevin step h > 0.
        decay: OU decay λ >= 0 (target tilted by exp(−λ‖x‖²/2)).
        tol: per-sample RMS bound of the total score G, > 0.
        network: ``"auto"`` or a ``masf.nets`` kind; width/depth/levels: see ``score_common.network_sizes``.
        pretrain_*, finetune_*, normalize, norm_form, norm_update, compile: as for :class:`masf.filters.sf.SF`.
    """

    sigma: float = 0.05
    nfe: int = 500
    step: float = 4e-3
    decay: float = 1e-3
    tol: float = 100.0
    network: str = "auto"
    width: int | None = None
    depth: int | None = None
    levels: int | None = None
    pretrain_epochs: int = 200
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-4
    finetune_epochs: int = 120
    finetune_batch: int = 32
    finetune_lr: float = 3e-4
    finetune_reset: bool = True
    finetune_replay: float = 0.5
    finetune_jitter: float = 0.0
    finetune_optimizer: str = "persistent"
    compile: bool = False
    normalize: bool = True
    norm_form: str = "affine"
    norm_update: str = "fixed"

    name: ClassVar[str] = "ssls"
    needs_pretraining: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_number(self.sigma, "sigma", self.name, low=0.0))
        check_int(self.nfe, "nfe", self.name, 1)
        object.__setattr__(self, "step", check_number(self.step, "step", self.name, low=0.0))
        object.__setattr__(self, "decay", check_number(self.decay, "decay", self.name, low=0.0, strict=False))
        object.__setattr__(self, "tol", check_number(self.tol, "tol", self.name, low=0.0))
        check_training_fields(self, self.name)

    def check_operator(self, operator: Any) -> None:
        """Accepts every operator: the likelihood score is taken by autograd through H."""
        check_any_operator(operator, self.name)

    def loss_fn(self) -> Callable[[nn.Module, Tensor, torch.Generator], Tensor]:
        """The training loss ``loss(net, x0, generator)`` for this σ."""
        return functools.partial(ssls_loss, sigma=self.sigma)

    def pretrain(
        self,
        data: Tensor,
        operator: Any,
        *,
        checkpoint: str,
        generator: torch.Generator,
        device: str | torch.device = "cpu",
        progress: bool = True,
        stop: Any = None,
    ) -> None:
        """Fit the normalizer on ``data`` (M, *S) (physical), train the time-free ε-network; write ``checkpoint``."""
        if operator is not None:  # the loss does not involve it; checked when given
            self.check_operator(operator)
        pretrain_filter(
            self,
            data,
            operator,
            self.loss_fn(),
            process={"sigma": self.sigma},
            operator_free=True,
            checkpoint=checkpoint,
            generator=generator,
            device=device,
            progress=progress,
            stop=stop,
            time_conditioned=False,
        )

    def analyse(self, prior: Tensor, z: Tensor, operator: Any, ctx: Context) -> Tensor:
        """Posterior particles (N, *S): Langevin chains started at the prior particles, guided by z (*S)."""
        self.check_operator(operator)
        check_analysis_input(prior, z, self.name)
        expect = {
            "method": self.name,
            "operator": None,  # trained without the operator: one network serves every operator
            "sigma": self.sigma,
            "state_shape": list(prior.shape[1:]),
        }
        model = prepared_model(self, prior, ctx, expect, lambda _: self.loss_fn())
        net, norm = model.net, model.normalizer
        z_n = norm.norm_z(z.to(prior))
        sigma_n = norm.noise_std_normalized(operator.noise_std, like=prior)
        scale = 1.0 / (self.sigma + SCORE_EPS)

        def score(x: Tensor) -> Tensor:
            with torch.no_grad():
                prior_score = net(x, None) * scale
            return prior_score + likelihood_score(x, z_n, operator, norm, sigma_n)

        def sample() -> Tensor:
            return langevin(
                score,
                norm.norm_x(prior),
                n_steps=self.nfe,
                step=self.step,
                decay=self.decay,
                tol=self.tol,
                generator=ctx.generator,
            )

        return norm.denorm_x(timed(sample, ctx, "sampling", prior))
