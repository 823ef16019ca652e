"""The bootstrap particle filter (sequential importance resampling) with optional regularization.

Each particle x_i carries a normalized weight w_i; the weights live in ``ctx.state["weights"]`` (N,)
between analyses (the forecast keeps the particle order), starting uniform. At an analysis with
observation-space members y_i = H(x_i)[obs] (N, m), measurement z_o (m,) and noise σ:

    log w_i ← log w_i − ‖z_o − y_i‖² / (2σ²),   then normalized (log-sum-exp),
    ESS = 1 / Σ w_i².

If ESS <= ``ess_threshold``·N (DAPPER's ``NER``), the particles are resampled (systematic: one uniform
U, positions (U + i)/N on the weight CDF; or multinomial) and the weights reset to 1/N. With ``reg > 0``
every copy of a particle drawn more than once (DAPPER's ``nuj=True``: particles drawn once are kept
exactly) is jittered by

    ε ~ N(0, (reg · h)² Ĉ),   h = N^{−1/(D+4)}      (DAPPER's ``auto_bandw``, Scott's rule up to a constant),

where Ĉ is the weighted covariance of the particles before resampling with the unbiasing factor
1/(1 − Σw²) (equal weights are used for Ĉ when the weights have collapsed onto one particle). Sampled
as ε = ξ · diag(√(w/(1 − Σw²))) (X − x̄_w) with ξ ~ N(0, I_N) when N <= D (cost O(N²D), no D×D
matrix), and through the symmetric square root Ĉ^{1/2} (D×D) when N > D (cost O(ND²)).

The returned ensemble is **weighted**: its statistics (mean, spread) must use ``ctx.state["weights"]``
(uniform right after a resampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from masf.filters.base import Context
from masf.filters.ensemble import check_ensemble_operator, check_prior, observation_space, uniform
from masf.systems.base import randn

RESAMPLING = ("systematic", "multinomial")
WEIGHTS_KEY = "weights"


def systematic_resample(weights: Tensor, u: Tensor) -> Tensor:
    """Indices (N,) drawn by systematic resampling: searchsorted(cumsum(w), (u + i)/N), u ~ U(0, 1)."""
    n = weights.shape[0]
    cdf = torch.cumsum(weights, dim=0)
    cdf[-1] = 1.0
    points = (u + torch.arange(n, dtype=weights.dtype, device=weights.device)) / n
    return torch.searchsorted(cdf, points).clamp(max=n - 1)


def bandwidth(n: int, dim: int) -> float:
    """Kernel bandwidth h = N^{−1/(D+4)} for N samples in D dimensions (Scott's rule rate)."""
    return n ** (-1.0 / (dim + 4))


@dataclass(frozen=True)
class ParticleFilter:
    """Bootstrap particle filter.

    Args:
        resampling: ``"systematic"`` or ``"multinomial"``.
        reg: regularization (jitter) factor >= 0; 0 disables the jitter.
        ess_threshold: resample when ESS/N <= ess_threshold, in [0, 1] (1: every cycle).
    """

    resampling: str = "systematic"
    reg: float = 0.0
    ess_threshold: float = 0.5

    needs_pretraining: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.resampling not in RESAMPLING:
            raise ValueError(
                f"pf: resampling must be one of {', '.join(RESAMPLING)}, got {self.resampling!r}"
            )
        reg = float(self.reg)
        if not math.isfinite(reg) or reg < 0:
            raise ValueError(f"pf: reg must be a finite number >= 0, got {self.reg!r}")
        threshold = float(self.ess_threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"pf: ess_threshold must be in [0, 1], got {self.ess_threshold!r}")
        object.__setattr__(self, "reg", reg)
        object.__setattr__(self, "ess_threshold", threshold)

    def check_operator(self, operator: Any) -> None:
        """Accepts every masf operator (masks: observed entries only; nonlinear: all entries)."""
        check_ensemble_operator(operator, "pf")

    def analyse(self, prior: Tensor, z: Tensor, operator: Any, ctx: Context) -> Tensor:
        """Particles (N, *S) after reweighting and, if the ESS is low, resampling; weights in ctx.state."""
        self.check_operator(operator)
        check_prior(prior, z, operator, "pf")
        n = prior.shape[0]
        y, z_o, _ = observation_space(prior, z, operator)
        previous = ctx.state.get(WEIGHTS_KEY)
        if previous is None or tuple(previous.shape) != (n,):
            log_w = torch.zeros(n, dtype=prior.dtype, device=prior.device)
        else:
            log_w = previous.to(prior).log()
        log_w = log_w - 0.5 * (z_o - y).square().sum(dim=1) / float(operator.noise_std) ** 2
        weights = torch.softmax(log_w, dim=0)

        particles = prior.reshape(n, -1)
        if float(1.0 / weights.square().sum()) <= self.ess_threshold * n:
            index = self.resample(weights, ctx.generator)
            resampled = particles[index]
            if self.reg > 0:
                duplicate = torch.zeros(n, dtype=torch.bool, device=prior.device)
                same = index[1:] == index[:-1]  # index is sorted: copies are adjacent
                duplicate[1:] |= same
                duplicate[:-1] |= same
                jitter = self.jitter(particles, weights, ctx.generator)
                resampled = resampled + duplicate.unsqueeze(1).to(prior.dtype) * jitter
            particles = resampled
            weights = torch.full_like(weights, 1.0 / n)
        ctx.state[WEIGHTS_KEY] = weights
        return particles.reshape(prior.shape)

    def resample(self, weights: Tensor, generator: torch.Generator) -> Tensor:
        """Sorted indices (N,) of the resampled particles."""
        n = weights.shape[0]
        if self.resampling == "systematic":
            index = systematic_resample(weights, uniform((1,), generator, weights))
        else:
            draw = torch.multinomial(weights.to(generator.device), n, replacement=True, generator=generator)
            index = draw.to(weights.device)
        return torch.sort(index).values

    def jitter(self, particles: Tensor, weights: Tensor, generator: torch.Generator) -> Tensor:
        """Draws (N, D) of N(0, (reg·h)² Ĉ) with Ĉ the unbiased weighted covariance of ``particles``."""
        n, dim = particles.shape
        unbias = 1.0 - float(weights.square().sum())
        if unbias < 1e-10:  # all weight on one particle: fall back to equal weights
            weights = torch.full_like(weights, 1.0 / n)
            unbias = 1.0 - 1.0 / n
        anomalies = particles - weights @ particles
        root = (weights / unbias).sqrt().unsqueeze(1) * anomalies  # (N, D), Ĉ = rootᵀ root
        if n > dim:  # few dimensions: colour D standard normals with a D×D square root of Ĉ
            lam, vec = torch.linalg.eigh(root.T @ root)
            root = (vec * lam.clamp(min=0).sqrt()) @ vec.T  # symmetric Ĉ^{1/2}: no eigenvector-sign freedom
        xi = randn((n, root.shape[0]), generator, particles.dtype, particles.device)
        return self.reg * bandwidth(n, dim) * (xi @ root)
