"""A linear-Gaussian system for known-answer tests (the Kalman filter is exact for it).

    x_{k+1} = F x_k + w_k,    w_k ~ N(0, Q),    x_0 ~ N(m_0, P_0),

with F, Q, P_0 of shape (D, D) and m_0 of shape (D,). Moments propagate exactly:
m_{k+1} = F m_k and P_{k+1} = F P_k Fᵀ + Q. When the spectral radius of F is < 1 the stationary covariance
P_∞ solves the discrete Lyapunov equation P_∞ = F P_∞ Fᵀ + Q.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from masf.systems.base import check_count, check_positive, check_state, check_steps, randn

_NAME = "linear_gaussian"


def _as_matrix(value: Any, parameter: str, shape: tuple[int, ...]) -> Tensor:
    """``value`` (tensor, nested list or JSON string) as a finite float64 CPU tensor of ``shape``."""
    if isinstance(value, str):
        value = json.loads(value)
    t = torch.as_tensor(value, dtype=torch.float64).detach().cpu().clone()
    if tuple(t.shape) != shape:
        raise ValueError(f"{_NAME}: {parameter} must have shape {shape}, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{_NAME}: {parameter} contains NaN or Inf")
    return t


def _psd_sqrt(c: Tensor, parameter: str) -> Tensor:
    """A square root L with L Lᵀ = C for a symmetric positive semi-definite C (eigendecomposition)."""
    if not torch.allclose(c, c.T, rtol=1e-10, atol=1e-12):
        raise ValueError(f"{_NAME}: {parameter} must be symmetric")
    eigval, eigvec = torch.linalg.eigh(c)
    scale = max(float(eigval.abs().max()), 1e-300)
    smallest = float(eigval.min())
    if smallest < -1e-10 * scale:
        raise ValueError(
            f"{_NAME}: {parameter} must be positive semi-definite, smallest eigenvalue {smallest:.3g}"
        )
    return eigvec * eigval.clamp(min=0.0).sqrt()


@dataclass(frozen=True, eq=False)
class LinearGaussian:
    """``x_{k+1} = F x_k + w``, ``w ~ N(0, Q)``, ``x_0 ~ N(mean0, cov0)``; state shape ``(D,)``.

    ``F``, ``Q``, ``cov0`` are (D, D) and ``mean0`` is (D,), given as tensors, nested lists or JSON
    strings; they are stored as float64 CPU tensors and cast to the input's dtype/device when used.
    ``dt`` is a nominal time per step (for time axes only). ``LinearGaussian.default(dim)`` builds a
    stable example.
    """

    F: Any
    Q: Any
    mean0: Any
    cov0: Any
    dt: float = 1.0
    name: str = field(default=_NAME, init=False)

    def __post_init__(self) -> None:
        f = torch.as_tensor(json.loads(self.F) if isinstance(self.F, str) else self.F)
        if f.ndim != 2 or f.shape[0] != f.shape[1] or f.shape[0] < 1:
            raise ValueError(f"{_NAME}: F must be a square (D, D) matrix, got shape {tuple(f.shape)}")
        d = int(f.shape[0])
        object.__setattr__(self, "F", _as_matrix(self.F, "F", (d, d)))
        object.__setattr__(self, "Q", _as_matrix(self.Q, "Q", (d, d)))
        object.__setattr__(self, "mean0", _as_matrix(self.mean0, "mean0", (d,)))
        object.__setattr__(self, "cov0", _as_matrix(self.cov0, "cov0", (d, d)))
        object.__setattr__(self, "dt", check_positive(self.dt, "dt", _NAME))
        object.__setattr__(self, "_q_sqrt", _psd_sqrt(self.Q, "Q"))
        object.__setattr__(self, "_cov0_sqrt", _psd_sqrt(self.cov0, "cov0"))

    @classmethod
    def default(cls, dim: int = 4, *, radius: float = 0.95, angle: float = 0.3) -> LinearGaussian:
        """A stable example whose stationary law is N(0, I), started in it.

        F = radius · R with R block-diagonal 2×2 rotations by ``angle`` (a trailing 1×1 block of 1 when
        ``dim`` is odd), so F Fᵀ = radius² I; Q = (1 − radius²) I, hence P_∞ = I; mean0 = 0, cov0 = I.
        """
        d = check_count(dim, "dim", _NAME)
        if not 0.0 < radius < 1.0:
            raise ValueError(f"{_NAME}: radius must be in (0, 1) for a stable default F, got {radius!r}")
        rot = torch.eye(d, dtype=torch.float64)
        c, s = math.cos(angle), math.sin(angle)
        for i in range(0, d - 1, 2):
            rot[i : i + 2, i : i + 2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        eye = torch.eye(d, dtype=torch.float64)
        return cls(F=radius * rot, Q=(1.0 - radius**2) * eye, mean0=torch.zeros(d), cov0=eye, dt=1.0)

    @property
    def dim(self) -> int:
        return int(self.F.shape[0])

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    @property
    def stochastic(self) -> bool:
        """Whether the process noise is non-zero (then ``step`` needs a generator)."""
        return bool((self.Q != 0).any())

    def step(self, x: Tensor, n: int = 1, *, generator: torch.Generator | None = None) -> Tensor:
        """Advance ``x`` (N, D) by ``n`` steps ``x ← x Fᵀ + η L_Qᵀ`` with η ~ N(0, I) from ``generator``."""
        check_state(x, self.state_shape, self.name)
        steps = check_steps(n)
        if self.stochastic and steps > 0 and generator is None:
            raise ValueError(f"{self.name}: step needs generator= (the process noise Q is non-zero)")
        f_t = self.F.T.to(dtype=x.dtype, device=x.device)
        q_sqrt_t = self._q_sqrt.T.to(dtype=x.dtype, device=x.device)
        x = x.clone()
        for _ in range(steps):
            x = x @ f_t
            if self.stochastic:
                x = x + randn(tuple(x.shape), generator, x.dtype, x.device) @ q_sqrt_t
        return x

    def sample_initial(
        self,
        n: int,
        *,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> Tensor:
        """``n`` draws of N(mean0, cov0); shape ``(n, D)``."""
        eta = randn((check_count(n, "n", self.name), self.dim), generator, dtype, device)
        mean = self.mean0.to(dtype=dtype, device=device)
        return mean + eta @ self._cov0_sqrt.T.to(dtype=dtype, device=device)

    def default_spinup_steps(self) -> int:
        """Steps until the initial law is forgotten to about 1e-6 (spectral radius ρ: ρ^k ≤ 1e-6)."""
        rho = float(torch.linalg.eigvals(self.F).abs().max())
        if rho >= 1.0:
            raise ValueError(
                f"{self.name}: F has spectral radius {rho:.4g} >= 1; give spinup_steps explicitly"
            )
        return max(1, math.ceil(math.log(1e-6) / math.log(max(rho, 1e-12))))

    def sample_climatology(
        self,
        n: int,
        *,
        generator: torch.Generator,
        spinup_steps: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> Tensor:
        """``n`` initial draws advanced ``spinup_steps`` steps (default: close to the stationary law)."""
        steps = self.default_spinup_steps() if spinup_steps is None else spinup_steps
        x0 = self.sample_initial(n, generator=generator, dtype=dtype, device=device)
        return self.step(x0, steps, generator=generator)

    def moments(self, n: int) -> tuple[Tensor, Tensor]:
        """Exact mean (D,) and covariance (D, D) of x_n (float64): m_n = Fⁿ m_0, P_n = F P_{n−1} Fᵀ + Q."""
        mean, cov = self.mean0.clone(), self.cov0.clone()
        for _ in range(check_steps(n)):
            mean = self.F @ mean
            cov = self.F @ cov @ self.F.T + self.Q
        return mean, cov

    def stationary_cov(self) -> Tensor:
        """P_∞ solving P = F P Fᵀ + Q (float64, (D, D)); ``ValueError`` if F is not stable."""
        rho = float(torch.linalg.eigvals(self.F).abs().max())
        if rho >= 1.0:
            raise ValueError(f"{self.name}: F has spectral radius {rho:.4g} >= 1; no stationary covariance")
        import scipy.linalg  # here, not at the top: every CLI job imports this module, few call this

        p = scipy.linalg.solve_discrete_lyapunov(self.F.numpy(), self.Q.numpy())
        return torch.from_numpy(np.ascontiguousarray(0.5 * (p + p.T)))

    def params(self) -> dict[str, float | int | str]:
        """Scalars as they are; the matrices as JSON strings (accepted back by the constructor)."""
        return {
            "name": self.name,
            "dim": self.dim,
            "dt": self.dt,
            "F": json.dumps(self.F.tolist()),
            "Q": json.dumps(self.Q.tolist()),
            "mean0": json.dumps(self.mean0.tolist()),
            "cov0": json.dumps(self.cov0.tolist()),
        }
