"""SF: the score-based filter of Bao, Zhang & Zhang (arXiv 2306.09282), as the reference runs it (method.md §7.1).

Forward process (variance exploding, in normalized space), σ_max > 1:

    x_t = x0 + std(t) ε,   std(t)² = (σ_max^{2t} − 1)/(2 ln σ_max),   g(t) = σ_max^t,   d std²/dt = g².

Training: t ~ U(1e-5, 1), the network predicts −ε from (x_t, t); loss ‖ε̂ + ε‖² summed over channels and
averaged over the rest. Prior score: s(x, t) = ε̂(x, t)/(std(t) + 1e-5).

Sampling (reverse SDE, Euler–Maruyama), N particles, state shape S:

    grid   t_i = (linspace(1, 1e-5, nfe)_i)²,  i = 0..nfe−1,   t_nfe := 0
    steps  h_i = t_i − t_{i+1}  (Σ h_i = 1)          or, with constant_step=True (the reference, bug B11),
           h_i = t_0 − t_1 for every i                (Σ h_i ≈ 2, too-large steps near t = 0)
    start  x ~ N(0, std(1)² I)                        (the forecast ensemble enters only via the network)
    step i S_i = clip_rms( s(x, t_i) + w(t_i) ∇_x[−‖z_n − H_n(x)‖²/(2σ_n²)], tol ),  w(t) = max(0, 1 − 2t)
           x̄ = x + g(t_i)² S_i h_i,   x = x̄ + sqrt(h_i) g(t_i) ξ
    output the last x̄ (noise-free mean), denormalized.

The likelihood gradient is taken by autograd at the noisy x, so every operator (linear or not) is accepted.
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
    expand_as_batch,
    likelihood_score,
    prepared_model,
    pretrain_filter,
    timed,
    uniform,
)
from masf.systems.base import randn

T_MIN = 1e-5  # smallest training / sampling time
SCORE_EPS = 1e-5  # score = ε̂ / (std(t) + SCORE_EPS)


def ve_std(t: Tensor, sigma_max: float) -> Tensor:
    """std(t) = sqrt((σ_max^{2t} − 1)/(2 ln σ_max)), elementwise on t (any shape), via expm1."""
    log_s = math.log(sigma_max)
    return torch.sqrt(torch.expm1(2.0 * t * log_s) / (2.0 * log_s))


def ve_diffusion(t: Tensor, sigma_max: float) -> Tensor:
    """g(t) = σ_max^t (so that d std(t)²/dt = g(t)²), elementwise."""
    return torch.exp(t * math.log(sigma_max))


def guidance_weight(t: float) -> float:
    """Damping of the likelihood score: w(t) = max(0, 1 − 2t) (no guidance for t >= 0.5)."""
    return max(0.0, 1.0 - 2.0 * float(t))


def time_grid(nfe: int, *, constant_step: bool = False, t_min: float = T_MIN) -> tuple[Tensor, Tensor]:
    """Sampling times t (nfe,) and step sizes h (nfe,), float64, see the module docstring.

    t_i = linspace(1, t_min, nfe)_i²; h_i = t_i − t_{i+1} with t_nfe = 0, or h_i = t_0 − t_1 for all i when
    ``constant_step`` (which needs nfe >= 2).
    """
    check_int(nfe, "nfe", "sf", 1)
    t = torch.linspace(1.0, t_min, nfe, dtype=torch.float64).square()
    if constant_step:
        if nfe < 2:
            raise ValueError(f"sf: constant_step=True needs nfe >= 2 (h = t_0 − t_1), got nfe={nfe}")
        return t, torch.full_like(t, float(t[0] - t[1]))
    return t, t - torch.cat([t[1:], t.new_zeros(1)])


def sf_loss(net: nn.Module, x0: Tensor, generator: torch.Generator, *, sigma_max: float) -> Tensor:
    """Denoising loss: t ~ U(1e-5, 1), x_t = x0 + std(t) ε, mean_channelsum ‖net(x_t, t) + ε‖² (scalar)."""
    t = uniform(x0.shape[0], T_MIN, 1.0, generator, x0)
    eps = randn(tuple(x0.shape), generator, x0.dtype, x0.device)
    x_t = x0 + expand_as_batch(ve_std(t, sigma_max), x0) * eps
    return channel_sum_mse(net(x_t, t), -eps)


def sample_reverse_sde(
    prior_score: Callable[[Tensor, Tensor], Tensor],
    n: int,
    state_shape: tuple[int, ...],
    *,
    nfe: int,
    sigma_max: float,
    tol: float,
    generator: torch.Generator,
    constant_step: bool = False,
    likelihood: Callable[[Tensor], Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Tensor:
    """SF's guided reverse-SDE sampler (module docstring), returning the last noise-free mean (n, *S).

    Args:
        prior_score: s(x (n, *S), t (n,)) -> (n, *S), the score of the VE-noised prior.
        likelihood: x (n, *S) -> ∇_x log p(z | x) (n, *S), damped by w(t); None for unguided sampling.
        generator: noise stream (start and Euler–Maruyama noise), drawn on its own device.
    """
    check_int(n, "n", "sf", 1)
    check_number(sigma_max, "sigma_max", "sf", low=1.0)
    check_number(tol, "tol", "sf", low=0.0)
    times, steps = time_grid(nfe, constant_step=constant_step)
    shape = (n, *state_shape)
    x = float(ve_std(torch.tensor(1.0, dtype=torch.float64), sigma_max)) * randn(
        shape, generator, dtype, device
    )
    mean = x
    for i, (t, h) in enumerate(zip(times.tolist(), steps.tolist(), strict=True)):
        t_batch = torch.full((n,), t, dtype=dtype, device=device)
        score = prior_score(x, t_batch)
        w = guidance_weight(t)
        if likelihood is not None and w > 0.0:
            score = score + w * likelihood(x)
        score = clip_rms(score, tol)
        g = sigma_max**t
        mean = x + (g * g * h) * score
        if i < nfe - 1:  # the last noise would be discarded
            x = mean + (math.sqrt(h) * g) * randn(shape, generator, dtype, device)
    return mean


@dataclass(frozen=True)
class SF:
    """Score-based filter (SF) baseline; see the module docstring.

    Args:
        nfe: number of reverse-SDE steps (network evaluations), >= 1 (>= 2 with ``constant_step``).
        sigma_max: σ_max > 1 of the VE process (a pretraining parameter: checked against the checkpoint).
        tol: per-sample RMS bound of the total score, > 0.
        constant_step: use the reference's constant step h = t_0 − t_1 (bug B11) instead of h_i = t_i − t_{i+1}.
        network: ``"auto"`` or a ``masf.nets`` kind; width/depth/levels: see ``score_common.network_sizes``.
        pretrain_epochs, pretrain_batch, pretrain_lr: pretraining on climatology (AdamW, wd 0.01).
        finetune_epochs, finetune_batch, finetune_lr: online fine-tuning on the forecast ensemble from the
            second analysis on (fresh AdamW each time); ``finetune_epochs=0`` switches it off.
        normalize, norm_form, norm_update: per-channel normalization (``masf.diffusion.normalizer``);
            ``normalize=False`` works in physical units.
        compile: compile the pretrained network for sampling and fine-tuning (``torch.compile``; CUDA
            graphs on a GPU; ``score_common.compile_network``). Same numbers up to float rounding.
    """

    nfe: int = 500
    sigma_max: float = 25.0
    tol: float = 100.0
    constant_step: bool = False
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

    name: ClassVar[str] = "sf"
    needs_pretraining: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_int(self.nfe, "nfe", self.name, 2 if self.constant_step is True else 1)
        object.__setattr__(self, "sigma_max", check_number(self.sigma_max, "sigma_max", self.name, low=1.0))
        object.__setattr__(self, "tol", check_number(self.tol, "tol", self.name, low=0.0))
        if not isinstance(self.constant_step, bool):
            raise ValueError(f"sf: constant_step must be True or False, got {self.constant_step!r}")
        check_training_fields(self, self.name)

    def check_operator(self, operator: Any) -> None:
        """Accepts every operator: the likelihood score is taken by autograd through H."""
        check_any_operator(operator, self.name)

    def loss_fn(self) -> Callable[[nn.Module, Tensor, torch.Generator], Tensor]:
        """The training loss ``loss(net, x0, generator)`` for this σ_max."""
        return functools.partial(sf_loss, sigma_max=self.sigma_max)

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
        """Fit the normalizer on ``data`` (M, *S) (physical) and train the ε-network; write ``checkpoint``."""
        if operator is not None:  # the loss does not involve it; checked when given
            self.check_operator(operator)
        pretrain_filter(
            self,
            data,
            operator,
            self.loss_fn(),
            process={"sigma_max": self.sigma_max},
            operator_free=True,
            checkpoint=checkpoint,
            generator=generator,
            device=device,
            progress=progress,
            stop=stop,
        )

    def analyse(self, prior: Tensor, z: Tensor, operator: Any, ctx: Context) -> Tensor:
        """Posterior particles (N, *S): N reverse-SDE samples guided by z (*S); see the module docstring."""
        self.check_operator(operator)
        check_analysis_input(prior, z, self.name)
        expect = {
            "method": self.name,
            "operator": None,  # trained without the operator: one network serves every operator
            "sigma_max": self.sigma_max,
            "state_shape": list(prior.shape[1:]),
        }
        model = prepared_model(self, prior, ctx, expect, lambda _: self.loss_fn())
        net, norm = model.net, model.normalizer
        z_n = norm.norm_z(z.to(prior))
        sigma_n = norm.noise_std_normalized(operator.noise_std, like=prior)

        def prior_score(x: Tensor, t: Tensor) -> Tensor:
            with torch.no_grad():
                return net(x, t) / expand_as_batch(ve_std(t, self.sigma_max) + SCORE_EPS, x)

        def likelihood(x: Tensor) -> Tensor:
            return likelihood_score(x, z_n, operator, norm, sigma_n)

        def sample() -> Tensor:
            return sample_reverse_sde(
                prior_score,
                prior.shape[0],
                tuple(prior.shape[1:]),
                nfe=self.nfe,
                sigma_max=self.sigma_max,
                tol=self.tol,
                generator=ctx.generator,
                constant_step=self.constant_step,
                likelihood=likelihood,
                dtype=prior.dtype,
                device=prior.device,
            )

        return norm.denorm_x(timed(sample, ctx, "sampling", prior))
