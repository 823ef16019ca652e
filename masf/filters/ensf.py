"""EnSF: the training-free ensemble score filter of Bao, Zhang & Zhang (CMAME 432, 2024); docs/ensf.md.

No network: the prior score of the diffused forecast is computed from the N forecast members m_j, in
physical units. Forward process on t ∈ [0, 1] (the authors' linear schedule, ε_α, ε_β in (0, 1)):

    x_t = α_t x_0 + β_t ε,   α_t = 1 − (1 − ε_α) t,   β_t² = ε_β + (1 − ε_β) t,
    f(t) = d ln α_t / dt = −(1 − ε_α)/α_t,   g(t)² = dβ_t²/dt − 2 f(t) β_t² = (1 − ε_β) − 2 f(t) β_t²,

so that dx = f x dt + g dW has the marginals above (masf.ensf_schedule, torch-free). With the kernel variance v ≥ 0 per entry
(v = bandwidth · the members' per-entry variance) and V_t = α_t² v + β_t² (*S):

    mixture:  s(x, t) = (Σ_j w_j(x) α_t m_j − x) / V_t,   w(x) = softmax_j(−Σ_d (x − α_t m_j)_d² / (2 V_t,d))
              (bandwidth 0: the paper's Monte-Carlo estimate over the members; > 0: a Gaussian mixture)
    paired:   s_i(x_i, t) = (α_t m_i − x_i) / V_t   (sample i follows member i: the authors' tuned runs)

Likelihood score at the noisy sample, damped by h(t) = 1 − t:  ℓ(x) = J_H(x)ᵀ (z − H(x)) / σ²
(``operator.vjp``: every masf operator, linear or not). Total score S = clip_rms(s + h ℓ, tol).
Reverse SDE, Euler–Maruyama on t_k = 1 − k/nfe (k = 0..nfe−1), Δ = 1/nfe:

    x ← x − Δ (f(t_k) x − g(t_k)² S(x, t_k)) + √Δ g(t_k) ξ,   ξ ~ N(0, I),

from x ~ N(0, I) standardized over the samples entry by entry (mean 0, std 1, as the authors do); the
analysis is x at t = 0. Members are first inflated about their mean by ρ (``inflation``). Cost per step:
O(N² D) for ``mixture`` (one float64 matrix product), O(N D) for ``paired``; no network, no training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from masf.ensf_schedule import (
    DEFAULT_EPS_ALPHA,
    DEFAULT_EPS_BETA,
    DEFAULT_NFE,
    schedule,
    stable_nfe,
)
from masf.filters.base import Context
from masf.filters.ensemble import inflated_anomalies
from masf.filters.score_common import (
    check_analysis_input,
    check_any_operator,
    check_int,
    check_number,
    clip_rms,
    timed,
)
from masf.systems.base import randn

PRIOR_SCORES = ("mixture", "paired")


def mixture_weights(x: Tensor, centres: Tensor, var: Tensor) -> Tensor:
    """w (N, M): softmax over j of −Σ_d (x_i − c_j)_d² / (2 var_d), for x (N, *S), centres (M, *S), var (*S).

    A matrix product, not an (N, M, D) array of differences: about the centres' mean r, with
    W = diag(1/var), −½‖x_i − c_j‖²_W = −½‖x_i − r‖²_W + (x_i − r)ᵀW(c_j − r) − ½‖c_j − r‖²_W, and the
    first term is the same for every j, so the softmax needs only ℓ_ij = (x_i − r)ᵀW(c_j − r) − ½‖c_j − r‖²_W.
    Computed in float64 (centring and products), so the expansion does not cancel at large D or far from
    the origin; O(N M D) flops and O((N + M) D) memory. Returned in x's dtype.
    """
    n, m = x.shape[0], centres.shape[0]
    wide = torch.float64
    ref = centres.to(wide).mean(dim=0, keepdim=True)
    a = (x.to(wide) - ref).reshape(n, -1)
    b = (centres.to(wide) - ref).reshape(m, -1)
    inv_var = (1.0 / var.to(wide)).reshape(-1)
    bw = b * inv_var
    logits = a @ bw.T - 0.5 * (bw * b).sum(dim=1)
    return torch.softmax(logits, dim=1).to(x.dtype)


def prior_score(x: Tensor, members: Tensor, alpha: float, var_t: Tensor, kind: str) -> Tensor:
    """The prior score s(x, t) (N, *S) of the diffused members (module docstring), V_t = ``var_t`` (*S)."""
    centres = alpha * members
    if kind == "paired":
        return (centres - x) / var_t
    w = mixture_weights(x, centres, var_t)
    return ((w @ centres.reshape(centres.shape[0], -1)).reshape(x.shape) - x) / var_t


def sample_ensf(
    score: Callable[[Tensor, float], Tensor],
    start: Tensor,
    *,
    nfe: int,
    eps_alpha: float,
    eps_beta: float,
    generator: torch.Generator,
) -> Tensor:
    """Euler–Maruyama on the reverse SDE from ``start`` (N, *S) at t = 1 to t = 0; ``score(x, t)`` is S."""
    x = start
    dt = 1.0 / nfe
    for k in range(nfe):
        t = 1.0 - k * dt
        _, _, f, g2 = schedule(t, eps_alpha, eps_beta)
        noise = randn(tuple(x.shape), generator, x.dtype, x.device)
        x = x - dt * (f * x - g2 * score(x, t)) + math.sqrt(dt * g2) * noise
    return x


def standard_start(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    """N(0, I) draws (N, *S) standardized over the N samples entry by entry (mean 0, unbiased std 1)."""
    x = randn(shape, generator, like.dtype, like.device)
    return (x - x.mean(dim=0)) / x.std(dim=0).clamp_min(torch.finfo(like.dtype).tiny)


@dataclass(frozen=True)
class EnSF:
    """Ensemble score filter (training-free); see the module docstring and docs/ensf.md.

    Args:
        nfe: reverse-SDE steps per analysis (>= 1).
        eps_alpha: α_1 = ε_α, in (0, 1): how much of the state survives at t = 1.
        eps_beta: β_0² = ε_β, in (0, 1): the noise variance left at t = 0 (a kernel width, physical units²).
        prior_score: ``"mixture"`` (the paper) or ``"paired"`` (sample i follows member i).
        bandwidth: kernel variance per entry as a multiple of the members' per-entry variance (>= 0;
            0 = the paper's Dirac mixture, > 0 = a Gaussian mixture around the members).
        inflation: multiplicative inflation ρ >= 1 of the members about their mean before scoring.
        tol: per-sample RMS bound of the total score (> 0).
    """

    nfe: int = DEFAULT_NFE
    eps_alpha: float = DEFAULT_EPS_ALPHA
    eps_beta: float = DEFAULT_EPS_BETA
    prior_score: str = "mixture"
    bandwidth: float = 0.0
    inflation: float = 1.0
    tol: float = 1000.0

    name: ClassVar[str] = "ensf"
    needs_pretraining: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_int(self.nfe, "nfe", self.name, 1)
        for key in ("eps_alpha", "eps_beta"):
            value = check_number(getattr(self, key), key, self.name, low=0.0)
            if value >= 1.0:
                raise ValueError(f"ensf: {key} must be in (0, 1), got {getattr(self, key)!r}")
            object.__setattr__(self, key, value)
        if self.prior_score not in PRIOR_SCORES:
            raise ValueError(
                f"ensf: prior_score must be one of {', '.join(PRIOR_SCORES)}, got {self.prior_score!r}"
            )
        object.__setattr__(
            self, "bandwidth", check_number(self.bandwidth, "bandwidth", self.name, low=0.0, strict=False)
        )
        object.__setattr__(
            self, "inflation", check_number(self.inflation, "inflation", self.name, low=1.0, strict=False)
        )
        object.__setattr__(self, "tol", check_number(self.tol, "tol", self.name, low=0.0))

    def check_operator(self, operator: Any) -> None:
        """Accepts every masf operator (linear or not): the likelihood score is J_Hᵀ (z − H(x))/σ².

        On a linear operator it also refuses an ``nfe`` whose Euler step overshoots the likelihood
        (``masf.ensf_schedule.likelihood_stiffness`` >= 2), naming the ``nfe`` that works; ``run`` calls this before the
        first forecast.
        """
        check_any_operator(operator, self.name)
        if not callable(getattr(operator, "vjp", None)):
            raise ValueError(f"ensf: operator must provide vjp(x, w) (a masf operator), got {operator!r}")
        sigma = float(operator.noise_std)
        if not getattr(operator, "linear", False):
            return
        need = stable_nfe(self.nfe, self.eps_alpha, self.eps_beta, sigma)
        if need != self.nfe:
            fix = (
                f"use nfe >= {need}, or a larger noise_std" if need is not None else "use a larger noise_std"
            )
            raise ValueError(
                f"ensf: nfe={self.nfe} is unstable for noise_std={sigma:g} (the Euler step overshoots the "
                f"likelihood); {fix} (docs/ensf.md)"
            )

    def analyse(self, prior: Tensor, z: Tensor, operator: Any, ctx: Context) -> Tensor:
        """Analysis ensemble (N, *S) from the forecast (N, *S) and the measurement z (*S)."""
        self.check_operator(operator)
        check_analysis_input(prior, z, self.name)
        sigma = float(operator.noise_std)
        n = prior.shape[0]
        mean, anomalies = inflated_anomalies(prior.reshape(n, -1), self.inflation)
        members = (mean + anomalies).reshape(prior.shape)
        kernel = self.bandwidth * anomalies.var(dim=0).reshape(prior.shape[1:])
        z = z.to(prior)
        inv_r = 1.0 / sigma**2

        def score(x: Tensor, t: float) -> Tensor:
            alpha, beta2, _, _ = schedule(t, self.eps_alpha, self.eps_beta)
            s = prior_score(x, members, alpha, alpha * alpha * kernel + beta2, self.prior_score)
            likelihood = operator.vjp(x, (z - operator(x)) * inv_r)
            return clip_rms(s + (1.0 - t) * likelihood, self.tol)

        def sample() -> Tensor:
            start = standard_start(tuple(prior.shape), ctx.generator, prior)
            return sample_ensf(
                score,
                start,
                nfe=self.nfe,
                eps_alpha=self.eps_alpha,
                eps_beta=self.eps_beta,
                generator=ctx.generator,
            )

        return timed(sample, ctx, "sampling", prior)
