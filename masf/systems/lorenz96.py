"""The Lorenz-96 system on a periodic ring of ``dim`` variables, classical RK4, batched.

    dx_i/dt = (x_{i+1} − x_{i−2}) x_{i−1} − x_i + F,      indices mod D.

Defaults D = 40, F = 8 and one RK4 step of dt = 0.05 per call, exactly DAPPER's ``Lorenz96.sakov2008``
(``(roll(x,−1) − roll(x,2)) · roll(x,1) − x + F``). The advection term conserves energy:
Σ_i x_i (x_{i+1} − x_{i−2}) x_{i−1} = 0, so d/dt ½|x|² = −|x|² + F Σ_i x_i.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from masf.systems.base import check_count, check_positive, randn, rk4_advance

# Initial states: the (unstable) fixed point x = F·1 plus small noise of variance 1e-3 (DAPPER's
# initial variance for sakov2008); chaos spreads the members over the attractor during spin-up.
_INITIAL_VARIANCE = 1e-3


@dataclass(frozen=True)
class Lorenz96:
    """Lorenz-96 with ``dim`` >= 4 variables, forcing ``forcing`` and RK4 step ``dt``; state ``(dim,)``."""

    dim: int = 40
    forcing: float = 8.0
    dt: float = 0.05
    name: str = field(default="lorenz96", init=False)

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or int(self.dim) != self.dim or self.dim < 4:
            raise ValueError(f"{self.name}: dim must be an integer >= 4, got {self.dim!r}")
        object.__setattr__(self, "dim", int(self.dim))
        forcing = float(self.forcing)
        if forcing != forcing or abs(forcing) == float("inf"):
            raise ValueError(f"{self.name}: forcing must be a finite number, got {self.forcing!r}")
        object.__setattr__(self, "forcing", forcing)
        object.__setattr__(self, "dt", check_positive(self.dt, "dt", self.name))

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def tendency(self, x: Tensor) -> Tensor:
        """dx/dt at states ``x`` of shape ``(N, D)`` (no checks; used inside RK4)."""
        advection = (torch.roll(x, -1, dims=-1) - torch.roll(x, 2, dims=-1)) * torch.roll(x, 1, dims=-1)
        return advection - x + self.forcing

    def step(self, x: Tensor, n: int = 1, *, generator: torch.Generator | None = None) -> Tensor:
        """Advance ``x`` (N, D) by ``n`` RK4 steps of ``dt``; deterministic, ``generator`` is ignored."""
        return rk4_advance(self.tendency, x, n, self.dt, self.state_shape, self.name)

    def sample_initial(
        self,
        n: int,
        *,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> Tensor:
        """``n`` draws of N(F·1, 1e-3 I); shape ``(n, D)``."""
        shape = (check_count(n, "n", self.name), self.dim)
        return self.forcing + _INITIAL_VARIANCE**0.5 * randn(shape, generator, dtype, device)

    def default_spinup_steps(self) -> int:
        """20 time units of spin-up (DAPPER's burn-in for sakov2008), in steps of ``dt``."""
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
        return {"name": self.name, "dim": self.dim, "forcing": self.forcing, "dt": self.dt}
