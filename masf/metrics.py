"""Verification metrics, batched over a leading dimension.

Conventions (shapes): ``mean``/``truth`` are ``(B, *S)``, ``ensemble`` is ``(B, N, *S)`` with ``N``
members; every function returns one value per leading index ``b`` (shape ``(B,)``), averaging over the
state entries. These follow DAPPER's definitions: ``rmse`` of the ensemble mean and ``spread`` as the
root of the mean (unbiased) ensemble variance ("rmv"), so that a well-calibrated ensemble has
spread/RMSE close to 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _flat(x: Tensor, lead: int) -> Tensor:
    return x.reshape(*x.shape[:lead], -1)


def rmse(mean: Tensor, truth: Tensor) -> Tensor:
    """Root-mean-square error over the state: ``sqrt(mean_j (mean_j - truth_j)^2)``; ``(B, *S) -> (B,)``."""
    if mean.shape != truth.shape:
        raise ValueError(f"rmse: mean {tuple(mean.shape)} and truth {tuple(truth.shape)} differ in shape")
    return _flat(mean - truth, 1).pow(2).mean(-1).sqrt()


def _check_weights(weights: Tensor | None, ensemble: Tensor) -> Tensor | None:
    if weights is None:
        return None
    if weights.shape != ensemble.shape[:2]:
        raise ValueError(
            f"weights must be shaped (B, N) = {tuple(ensemble.shape[:2])}, got {tuple(weights.shape)}"
        )
    return weights.to(ensemble.dtype)


def ensemble_mean(ensemble: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean over members, ``sum_i w_i x_i`` with normalized ``weights`` (B, N) (uniform if None); ``(B, *S)``."""
    w = _check_weights(weights, ensemble)
    if w is None:
        return ensemble.mean(1)
    return (_flat(ensemble, 2) * w.unsqueeze(-1)).sum(1).reshape(ensemble.shape[:1] + ensemble.shape[2:])


def spread(ensemble: Tensor, weights: Tensor | None = None) -> Tensor:
    """Root mean ensemble variance: ``sqrt(mean_j var_i x_ij)``; ``(B, N, *S) -> (B,)``.

    Unweighted: ddof 1. With normalized ``weights`` (B, N) (a particle filter's), the unbiased weighted
    variance ``sum_i w_i (x_i - m)^2 / (1 - sum_i w_i^2)`` (0 when one particle holds all the weight).
    """
    if ensemble.shape[1] < 2:
        raise ValueError("spread: needs at least 2 ensemble members")
    w = _check_weights(weights, ensemble)
    if w is None:
        return _flat(ensemble, 2).var(dim=1, unbiased=True).mean(-1).sqrt()
    flat = _flat(ensemble, 2)
    dev2 = (flat - (flat * w.unsqueeze(-1)).sum(1, keepdim=True)).square()
    var = (dev2 * w.unsqueeze(-1)).sum(1) / (1.0 - w.square().sum(1, keepdim=True)).clamp_min(1e-12)
    return var.mean(-1).sqrt()


def crps(ensemble: Tensor, truth: Tensor, *, fair: bool = False, weights: Tensor | None = None) -> Tensor:
    """Ensemble CRPS averaged over the state; ``(B, N, *S), (B, *S) -> (B,)``.

    ``CRPS = E|X - y| - 1/2 E|X - X'|`` with the ensemble as the empirical distribution. The pairwise
    term uses the sorted members ``x_(1) <= ... <= x_(N)``:
    ``sum_{i,k} |x_i - x_k| = 2 sum_i (2i - N - 1) x_(i)``, so the cost is O(N log N).
    ``fair=True`` divides the pairwise sum by ``N(N-1)`` instead of ``N^2`` (unbiased for the
    distribution the members are drawn from). With normalized ``weights`` (B, N) the distribution puts
    mass ``w_i`` on ``x_i``: ``sum_{i,k} w_i w_k |x_i - x_k| = 2 sum_i w_(i) x_(i) (2 W_(i) + w_(i) - 1)``
    with ``W_(i)`` the weight strictly below ``x_(i)`` (``fair`` is then not defined).
    """
    n = ensemble.shape[1]
    ens = _flat(ensemble, 2)
    y = _flat(truth, 1).unsqueeze(1)
    w = _check_weights(weights, ensemble)
    if w is not None:
        if fair:
            raise ValueError("crps: fair=True is not defined for weighted ensembles")
        w = w.unsqueeze(-1).expand_as(ens)
        skill = ((ens - y).abs() * w).sum(1)
        sorted_x, order = ens.sort(dim=1)
        ws = torch.gather(w, 1, order)
        below = torch.cumsum(ws, dim=1) - ws
        pair = 2.0 * (ws * sorted_x * (2.0 * below + ws - 1.0)).sum(1)
        return (skill - 0.5 * pair).mean(-1)
    skill = (ens - y).abs().mean(1)
    ranks = torch.arange(1, n + 1, device=ens.device, dtype=ens.dtype).view(1, n, 1)
    pair_sum = 2.0 * ((2.0 * ranks - n - 1.0) * ens.sort(dim=1).values).sum(1)
    denom = n * (n - 1) if fair else n * n
    return (skill - 0.5 * pair_sum / denom).mean(-1)


def rank_histogram(ensemble: Tensor, truth: Tensor) -> Tensor:
    """Counts of the truth's rank among the members; ``(B, N, *S), (B, *S) -> (B, N + 1)``.

    Rank r = number of members strictly below the truth, per state entry. A calibrated ensemble gives
    a flat histogram; a U shape means too little spread.
    """
    n = ensemble.shape[1]
    below = (_flat(ensemble, 2) < _flat(truth, 1).unsqueeze(1)).sum(1)
    counts = torch.zeros(below.shape[0], n + 1, dtype=torch.int64, device=below.device)
    return counts.scatter_add_(1, below, torch.ones_like(below))


def _gaussian_window(size: int, sigma: float, like: Tensor) -> Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim(
    a: Tensor, b: Tensor, *, data_range: Tensor | float | None = None, window: int = 11, sigma: float = 1.5
) -> Tensor:
    """Structural similarity of 2-D fields on a periodic domain; ``(B, H, W), (B, H, W) -> (B,)``.

    Wang et al. (2004) with a Gaussian window (``window`` x ``window``, std ``sigma``), constants
    ``C1 = (0.01 L)^2`` and ``C2 = (0.03 L)^2``, local statistics with circular padding (the fields are
    periodic), averaged over all pixels. ``L = data_range`` defaults to the range of ``b`` (the reference
    field, e.g. the truth) per item. ``ssim(a, a) = 1``.
    """
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"ssim: expects two (B, H, W) fields of the same shape, got {a.shape} and {b.shape}")
    if data_range is None:
        data_range = _flat(b, 1).amax(-1) - _flat(b, 1).amin(-1)
    rng = torch.as_tensor(data_range, dtype=a.dtype, device=a.device).reshape(-1, 1, 1, 1)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    w = _gaussian_window(window, sigma, a)
    pad = window // 2

    def local_mean(x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="circular"), w)

    x, y = a.unsqueeze(1), b.unsqueeze(1)
    mx, my = local_mean(x), local_mean(y)
    vx = local_mean(x * x) - mx**2
    vy = local_mean(y * y) - my**2
    cxy = local_mean(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * cxy + c2)
    den = (mx**2 + my**2 + c1) * (vx + vy + c2)
    return (num / den).mean(dim=(1, 2, 3))


def time_mean(values: Tensor, burn_in: int = 0) -> float:
    """Mean of a per-cycle metric after dropping the first ``burn_in`` cycles (NaN if nothing is left)."""
    rest = values[burn_in:]
    return float(rest.mean()) if rest.numel() else math.nan
