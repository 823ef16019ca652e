"""The ensemble Kalman filter: deterministic square root (ETKF) or perturbed observations.

With the notation of ``masf.filters.ensemble`` (prior X (N, D), obs-space ensemble Y (N, m), measurement
z_o (m,), error variance r = σ² + eps), inflation ρ scales both anomaly sets first:
A = ρ(X − x̄) and B = ρ(Y − ȳ). The prior covariance is P = AᵀA/(N−1) and the Kalman gain is

    K = Pxy S⁻¹,  Pxy = AᵀB/(N−1),  S = BᵀB/(N−1) + r I_m.

Everything is computed in ensemble space (N×N systems, Woodbury / push-through identity
AᵀB(BᵀB + cI_m)⁻¹ = Aᵀ(BBᵀ + cI_N)⁻¹B), so the cost is O(N²(D + m) + N³): no D×D or m×m matrix.

``variant="sqrt"`` (ETKF, symmetric square root; Hunt et al. 2007), with Ŷ = B/√r and d̂ = (z_o − ȳ)/√r:

    C = ŶŶᵀ + (N−1) I_N = V diag(λ) Vᵀ,  w̄ = C⁻¹ Ŷ d̂,  T = √(N−1) V diag(λ^{-1/2}) Vᵀ,
    X_a = x̄ + w̄ᵀA + T A.

Its mean is the Kalman mean x̄ + K(z_o − ȳ) and its sample covariance the Kalman covariance (I − KH)P
(exactly, for a linear H) of the inflated prior statistics.

``variant="pertobs"`` (stochastic EnKF; Burgers et al. 1998): Z̃_i = z_o + σ ζ_i, ζ_i ~ N(0, I_m), and

    X_a = X + (Z̃ − Y) Kᵀ = X + (Z̃ − Y) Bᵀ (BBᵀ + (N−1) r I_N)⁻¹ A          (mode="full"),
    X_a = X + ((Z̃ − Y) / s) Bᵀ A / (N−1),  s = diag(BᵀB)/(N−1) + r          (mode="diag"),

where X = x̄ + A and Y = ȳ + B are rebuilt from the inflated anomalies. ``center_perturbations``
replaces ζ by (ζ − ζ̄)·√(N/(N−1)) (DAPPER's ``mean0``: zero member mean, per-member variance kept at 1),
so that the analysis mean is exactly x̄ + K(z_o − ȳ).
``mode="diag"`` keeps only each observation's own variance in S (the reference's cheap mode).

``rotate=True`` finally multiplies the analysis anomalies by a random mean-preserving orthogonal matrix
(DAPPER's ``rot=True``): the mean and sample covariance are unchanged, the members are mixed.

Mask operators use only their observed entries (``observed_index``); for a nonlinear H every entry is an
observation and Y = H(X) member by member.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from masf.filters.base import Context
from masf.filters.ensemble import (
    check_ensemble_operator,
    check_prior,
    check_spread,
    inflated_anomalies,
    observation_space,
    random_rotation,
)
from masf.systems.base import randn

VARIANTS = ("sqrt", "pertobs")
MODES = ("full", "diag")


def check_inflation(inflation: float, filter_name: str) -> float:
    """ρ as a float if finite and >= 1, else ``ValueError``."""
    value = float(inflation)
    if not math.isfinite(value) or value < 1.0:
        raise ValueError(f"{filter_name}: inflation must be a finite number >= 1, got {inflation!r}")
    return value


def check_eps(eps: float, filter_name: str) -> float:
    """eps as a float if finite and >= 0, else ``ValueError``."""
    value = float(eps)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{filter_name}: eps must be a finite number >= 0, got {eps!r}")
    return value


def etkf_transform(y_hat: Tensor, d_hat: Tensor) -> tuple[Tensor, Tensor]:
    """Ensemble-space ETKF weights, batched over leading dimensions.

    Args:
        y_hat: (..., N, m) observation anomalies scaled by R^{-1/2} (and localization weights).
        d_hat: (..., m) innovation z_o − ȳ scaled the same way.

    Returns:
        w̄ (..., N) = C⁻¹ Ŷ d̂ and T (..., N, N) = √(N−1) C^{-1/2}, with C = ŶŶᵀ + (N−1) I (symmetric,
        eigenvalues >= N−1, so the eigen-decomposition is well conditioned).
    """
    n = y_hat.shape[-2]
    eye = torch.eye(n, dtype=y_hat.dtype, device=y_hat.device)
    c = y_hat @ y_hat.transpose(-1, -2) + (n - 1) * eye
    lam, v = torch.linalg.eigh(c)
    w = (v / lam.unsqueeze(-2)) @ (v.transpose(-1, -2) @ (y_hat @ d_hat.unsqueeze(-1)))
    t = (v * lam.rsqrt().unsqueeze(-2)) @ v.transpose(-1, -2) * math.sqrt(n - 1)
    return w.squeeze(-1), t


@dataclass(frozen=True)
class EnKF:
    """Global ensemble Kalman filter (see the module docstring for the equations).

    Args:
        variant: ``"sqrt"`` (deterministic ETKF) or ``"pertobs"`` (perturbed observations).
        inflation: multiplicative anomaly inflation ρ >= 1, applied to the prior before the update.
        rotate: apply a random mean-preserving rotation to the analysis anomalies.
        mode: ``"full"`` or ``"diag"`` (S replaced by its diagonal; only with ``variant="pertobs"``).
        eps: added to the observation-error variance σ² (regularization, >= 0).
        center_perturbations: centre the observation perturbations and rescale them by √(N/(N−1))
            (pertobs only; DAPPER's convention).
    """

    variant: str = "sqrt"
    inflation: float = 1.0
    rotate: bool = False
    mode: str = "full"
    eps: float = 0.0
    center_perturbations: bool = True

    needs_pretraining: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"enkf: variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.mode not in MODES:
            raise ValueError(f"enkf: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "diag" and self.variant != "pertobs":
            raise ValueError(f"enkf: mode='diag' is only defined for variant='pertobs', got {self.variant!r}")
        object.__setattr__(self, "inflation", check_inflation(self.inflation, "enkf"))
        object.__setattr__(self, "eps", check_eps(self.eps, "enkf"))
        for flag in ("rotate", "center_perturbations"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"enkf: {flag} must be True or False, got {getattr(self, flag)!r}")

    def check_operator(self, operator: Any) -> None:
        """Accepts every masf operator (masks: observed entries only; nonlinear: all entries)."""
        check_ensemble_operator(operator, "enkf", self.eps)

    def analyse(self, prior: Tensor, z: Tensor, operator: Any, ctx: Context) -> Tensor:
        """Analysis ensemble (N, *S) from the prior (N, *S) and the measurement z (*S)."""
        self.check_operator(operator)
        check_prior(prior, z, operator, "enkf")
        n = prior.shape[0]
        y, z_o, _ = observation_space(prior, z, operator)
        x_mean, a = inflated_anomalies(prior.reshape(n, -1), self.inflation)
        check_spread(a, "enkf")
        y_mean, b = inflated_anomalies(y, self.inflation)
        r = float(operator.noise_std) ** 2 + self.eps

        if self.variant == "sqrt":
            w, t = etkf_transform(b / math.sqrt(r), (z_o - y_mean) / math.sqrt(r))
            mean_a = x_mean + w @ a
            anomalies_a = t @ a
        else:
            zeta = randn(tuple(y.shape), ctx.generator, prior.dtype, prior.device)
            if self.center_perturbations:
                zeta = (zeta - zeta.mean(dim=0)) * math.sqrt(n / (n - 1))
            innovations = z_o + float(operator.noise_std) * zeta - (y_mean + b)  # Z̃ − Y, (N, m)
            if self.mode == "full":
                g = b @ b.T + (n - 1) * r * torch.eye(n, dtype=b.dtype, device=b.device)
                coeff = torch.linalg.solve(g, b @ innovations.T).T  # (Z̃ − Y) Bᵀ G⁻¹, (N, N)
            else:
                s = (b * b).sum(dim=0) / (n - 1) + r
                coeff = (innovations / s) @ b.T / (n - 1)
            updated = x_mean + a + coeff @ a
            mean_a = updated.mean(dim=0)
            anomalies_a = updated - mean_a

        if self.rotate:
            anomalies_a = random_rotation(n, ctx.generator, a) @ anomalies_a
        return (mean_a + anomalies_a).reshape(prior.shape)
