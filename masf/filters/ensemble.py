"""Ensemble algebra shared by the classical filters (EnKF, LETKF, particle filter).

Notation (all batched, no loops over members or entries):

- ``X`` (N, D): the prior ensemble flattened over the state shape S (D = prod(S));
- ``x̄ = mean_i X_i`` and the anomalies ``A = X − x̄`` (N, D);
- ``Y`` (N, m): the members in observation space, one column per observation: the observed entries of
  H(X) for a mask operator (``operator.observed_index()``), every entry of H(X) otherwise;
- ``z_o`` (m,): the same entries of the measurement z; ``r = σ² + eps`` the observation-error variance
  (every operator has scalar noise σ).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from masf.filters.base import DegenerateEnsembleError
from masf.systems.base import randn


def check_ensemble_operator(operator: Any, filter_name: str, eps: float = 0.0) -> None:
    """``ValueError`` unless ``operator`` can be used by an ensemble filter.

    Accepted: every ``masf.operators`` operator (mask operators: ``mask``, ``grid_mask``,
    ``center_mask``, ``random_mask``, ``every_kth``, ``identity``; nonlinear elementwise ones: ``sigmoid``,
    ``speed``): anything callable as ``operator(x) = H(x)`` with ``noise_std`` (σ² + eps > 0), ``linear``,
    ``state_shape`` and ``mask`` (a {0,1} tensor with ``observed_index()``, or ``None``).
    """
    missing = [a for a in ("noise_std", "mask", "state_shape", "linear") if not hasattr(operator, a)]
    if missing or not callable(operator):
        raise ValueError(
            f"{filter_name}: operator must be a masf.operators operator (callable, with noise_std, mask, "
            f"state_shape, linear); {type(operator).__name__} lacks {', '.join(missing) or '__call__'}"
        )
    if operator.mask is not None and not hasattr(operator, "observed_index"):
        raise ValueError(f"{filter_name}: a mask operator must provide observed_index()")
    sigma = float(operator.noise_std)
    if not math.isfinite(sigma) or sigma < 0.0 or sigma * sigma + eps <= 0.0:
        raise ValueError(
            f"{filter_name}: needs an observation-error variance noise_std² + eps > 0, "
            f"got noise_std={operator.noise_std!r}, eps={eps!r}"
        )


def check_prior(prior: Tensor, z: Tensor, operator: Any, filter_name: str) -> None:
    """``ValueError`` unless ``prior`` is a float (N, *S) ensemble with N >= 2 and ``z`` is shaped S.

    S is ``operator.state_shape`` when the operator knows it, else ``prior.shape[1:]``.
    """
    if not isinstance(prior, Tensor) or not prior.is_floating_point() or prior.ndim < 2:
        got = f"{prior.dtype} {tuple(prior.shape)}" if isinstance(prior, Tensor) else type(prior).__name__
        raise ValueError(f"{filter_name}: prior must be a float32/float64 tensor (N, *S), got {got}")
    shape = tuple(prior.shape[1:]) if operator.state_shape is None else tuple(operator.state_shape)
    if tuple(prior.shape[1:]) != shape:
        raise ValueError(
            f"{filter_name}: prior must be shaped (N, {', '.join(map(str, shape))}), got {tuple(prior.shape)}"
        )
    if prior.shape[0] < 2:
        raise ValueError(f"{filter_name}: the ensemble needs N >= 2 members, got N={prior.shape[0]}")
    if not isinstance(z, Tensor) or tuple(z.shape) != shape:
        got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"{filter_name}: z must be shaped {shape} (the state shape), got {got}")


def check_spread(anomalies: Tensor, filter_name: str) -> None:
    """``DegenerateEnsembleError`` (a ``ValueError``) if every anomaly is exactly zero (all members
    identical: nothing to update with); the cycle loop records such a run as ``diverged``."""
    if not bool(anomalies.abs().amax() > 0):
        raise DegenerateEnsembleError(
            f"{filter_name}: the prior ensemble has zero spread (all members identical); "
            "an ensemble Kalman update needs a spread (perturb the initial ensemble)"
        )


def observation_space(prior: Tensor, z: Tensor, operator: Any) -> tuple[Tensor, Tensor, Tensor]:
    """The ensemble in observation space.

    Returns ``Y`` (N, m), ``z_o`` (m,) and ``index`` (m,) int64, the flat state indices of the m
    observations: ``observed_index()`` for a mask operator, all D entries for a nonlinear one (each
    observation then sits at the position of the entry it was computed from).
    """
    n = prior.shape[0]
    hx = operator(prior).reshape(n, -1)
    zf = z.reshape(-1).to(prior)
    if operator.mask is not None:
        index = operator.observed_index().to(device=prior.device, dtype=torch.long)
        return hx[:, index], zf[index], index
    return hx, zf, torch.arange(hx.shape[1], device=prior.device)


def inflated_anomalies(values: Tensor, inflation: float) -> tuple[Tensor, Tensor]:
    """Mean (D,) and anomalies ρ·(values − mean) (N, D) of a (N, D) ensemble."""
    mean = values.mean(dim=0)
    return mean, inflation * (values - mean)


def random_rotation(n: int, generator: torch.Generator, like: Tensor) -> Tensor:
    """A random N×N orthogonal matrix Q with Q·1 = 1 (mean-preserving), Haar-distributed otherwise.

    Q = 11ᵀ/N + U Ω Uᵀ with U (N, N−1) an orthonormal basis of 1^⊥ and Ω a Haar orthogonal (N−1)×(N−1)
    (QR of a Gaussian matrix with the sign of R's diagonal moved into Q). Applied to anomalies A as Q A it
    keeps their mean (zero) and their sample covariance AᵀA. Float64 internally, returned like ``like``.
    """
    ones = torch.full((n, 1), 1.0 / math.sqrt(n), dtype=torch.float64, device=like.device)
    basis, _ = torch.linalg.qr(
        torch.cat([ones, torch.eye(n, dtype=torch.float64, device=like.device)[:, 1:]], 1)
    )
    u = basis[:, 1:]  # (N, N-1), orthogonal to 1 (first column is ±1/√N)
    g = randn((n - 1, n - 1), generator, torch.float64, like.device)
    q, r = torch.linalg.qr(g)
    omega = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    rotation = ones @ ones.T + u @ omega @ u.T
    return rotation.to(like)


def uniform(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    """U(0, 1) draws of ``shape`` made on the generator's device, returned on ``like``'s device/dtype."""
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=generator.device).to(like)
