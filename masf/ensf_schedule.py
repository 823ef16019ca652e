"""EnSF's forward schedule, its defaults and the explicit step's stability bound (docs/ensf.md).

Plain Python, no torch: the filter (masf.filters.ensf) samples with these numbers, and config validation
(masf.config, which must not import torch) refuses with them an ``nfe`` that would diverge, before any job.

    α_t = 1 − (1 − ε_α) t,   β_t² = ε_β + (1 − ε_β) t,   f(t) = −(1 − ε_α)/α_t,   g(t)² = (1 − ε_β) − 2 f β_t²

Euler on the likelihood drift of an observed entry of a linear operator, x' = −g² h (x − z)/σ² with
h(t) = 1 − t, is stable only while Δ g(t_k)² h(t_k)/σ² < 2 on every step t_k = 1 − kΔ, Δ = 1/nfe.
"""

from __future__ import annotations

#: The filter's defaults for the schedule and the number of steps (the EnSF dataclass uses these).
DEFAULT_NFE = 200
DEFAULT_EPS_ALPHA = 0.5
DEFAULT_EPS_BETA = 0.025


def schedule(t: float, eps_alpha: float, eps_beta: float) -> tuple[float, float, float, float]:
    """(α_t, β_t², f(t), g(t)²) of the linear schedule at time t (module docstring)."""
    alpha = 1.0 - (1.0 - eps_alpha) * t
    beta2 = eps_beta + (1.0 - eps_beta) * t
    f = -(1.0 - eps_alpha) / alpha
    return alpha, beta2, f, (1.0 - eps_beta) - 2.0 * f * beta2


def likelihood_stiffness(nfe: int, eps_alpha: float, eps_beta: float, noise_std: float) -> float:
    """max_k Δ g(t_k)² h(t_k) / σ²: the explicit step's gain on the likelihood of a unit-Jacobian entry.

    Euler on x' = −c x is stable only for Δ c < 2; a linear (mask) operator makes the likelihood drift
    exactly g² h (z − x)/σ² on observed entries, so a gain >= 2 makes the sampler diverge.
    """
    dt = 1.0 / nfe
    gains = (dt * schedule(1.0 - k * dt, eps_alpha, eps_beta)[3] * (k * dt) for k in range(nfe))
    return max(gains) / noise_std**2


#: ``stable_nfe`` gives up past this many steps: each check costs O(nfe), and EnSF with that many steps
#: per analysis is out of reach anyway (about nfe > 1/(2σ²): σ below about 0.002).
MAX_NFE = 1 << 17


def stable_nfe(nfe: int, eps_alpha: float, eps_beta: float, noise_std: float) -> int | None:
    """``nfe`` if its steps are stable on a linear operator, else the first doubling of it that is, or
    ``None`` when that would be more than ``MAX_NFE``."""
    need = nfe
    while likelihood_stiffness(need, eps_alpha, eps_beta, noise_std) >= 2.0:
        need *= 2
        if need > MAX_NFE:
            return None
    return need
