"""The Lorenz-63 system, integrated with classical RK4 and batched over ensemble members.

    dx/dt = σ (y − x),   dy/dt = x (ρ − z) − y,   dz/dt = x y − β z

with the classical chaotic parameters σ = 10, ρ = 28, β = 8/3 and step dt = 0.01 (DAPPER's
``Lorenz63.sakov2012`` setup: 25 steps between observations, done by the cycle loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from masf.systems.base import check_count, check_positive, randn, rk4_advance

# DAPPER's sakov2012 initial mean (a point near the attractor) and its initial variance 2 (std √2).
_X0 = (1.509, -1.531, 25.46)
_X0_VARIANCE = 2.0


@dataclass(frozen=True)
class Lorenz63:
    """Lorenz-63 with parameters ``sigma``, ``rho``, ``beta`` and RK4 step ``dt``; state shape ``(3,)``."""

    sigma: float = 10.0
    rho: float = 28.0
    beta: float = 8.0 / 3.0
    dt: float = 0.01
    name: str = field(default="lorenz63", init=False)

    def __post_init__(self) -> None:
        for parameter in ("sigma", "rho", "beta", "dt"):
            object.__setattr__(
                self, parameter, check_positive(getattr(self, parameter), parameter, self.name)
            )

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (3,)

    def tendency(self, x: Tensor) -> Tensor:
        """dx/dt at states ``x`` of shape ``(N, 3)`` (no checks; used inside RK4)."""
        a, b, c = x.unbind(-1)
        return torch.stack(
            (self.sigma * (b - a), a * (self.rho - c) - b, a * b - self.beta * c),
            dim=-1,
        )

    def step(self, x: Tensor, n: int = 1, *, generator: torch.Generator | None = None) -> Tensor:
        """Advance ``x`` (N, 3) by ``n`` RK4 steps of ``dt``; deterministic, ``generator`` is ignored."""
        return rk4_advance(self.tendency, x, n, self.dt, self.state_shape, self.name)

    def sample_initial(
        self,
        n: int,
        *,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> Tensor:
        """``n`` draws of N(x0, 2 I) with DAPPER's x0 = (1.509, −1.531, 25.46); shape ``(n, 3)``."""
        mean = torch.tensor(_X0, dtype=dtype, device=device)
        return mean + _X0_VARIANCE**0.5 * randn((check_count(n, "n", self.name), 3), generator, dtype, device)

    def default_spinup_steps(self) -> int:
        """20 time units of spin-up (about 20 Lyapunov times), in steps of ``dt``."""
        return round(20.0 / self.dt)

    def sample_climatology(
        self,
        n: int,
        *,
        generator: torch.Generator,
        spinup_steps: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> Tensor:
        """``n`` independent states on the attractor: initial draws advanced ``spinup_steps`` steps."""
        steps = self.default_spinup_steps() if spinup_steps is None else spinup_steps
        return self.step(self.sample_initial(n, generator=generator, dtype=dtype, device=device), steps)

    def params(self) -> dict[str, float | int | str]:
        return {"name": self.name, "sigma": self.sigma, "rho": self.rho, "beta": self.beta, "dt": self.dt}
