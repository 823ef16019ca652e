"""Helpers shared by the dynamical systems: input checks and the classical RK4 step."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def check_state(x: Tensor, state_shape: tuple[int, ...], system: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a finite floating batch shaped ``(N, *state_shape)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{system}: the state must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape[1:]) != tuple(state_shape) or x.ndim != len(state_shape) + 1:
        raise ValueError(
            f"{system}: states must be shaped (N, {', '.join(map(str, state_shape))}), got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{system}: states must be float32 or float64, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{system}: the state contains NaN or Inf; refusing to integrate it")


def check_steps(n: int) -> int:
    """The number of steps as an int >= 0, or ``ValueError``."""
    if int(n) != n or n < 0:
        raise ValueError(f"the number of steps must be a non-negative integer, got {n!r}")
    return int(n)


def rk4_step(f: Callable[[Tensor], Tensor], x: Tensor, dt: float) -> Tensor:
    """One classical fourth-order Runge-Kutta step of ``dx/dt = f(x)`` (autonomous)."""
    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def check_positive(value: float, parameter: str, system: str) -> float:
    """``value`` as a float if it is finite and > 0, else ``ValueError`` naming ``parameter``."""
    v = float(value)
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"{system}: {parameter} must be a finite number > 0, got {value!r}")
    return v


def randn(
    shape: tuple[int, ...],
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Standard normal draws of ``shape`` from ``generator``, returned on ``device`` in ``dtype``.

    The draws are made on the generator's own device and then moved, so a CPU generator feeds a CUDA
    computation and gives the same numbers as on CPU.
    """
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    draws = torch.randn(shape, generator=generator, dtype=dtype, device=generator.device)
    return draws.to(device)


def check_count(n: int, parameter: str, system: str) -> int:
    """``n`` as an int >= 1 (a number of samples), else ``ValueError`` naming ``parameter``."""
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"{system}: {parameter} must be an integer >= 1, got {n!r}")
    return int(n)


def rk4_advance(
    tendency: Callable[[Tensor], Tensor],
    x: Tensor,
    n: int,
    dt: float,
    state_shape: tuple[int, ...],
    name: str,
) -> Tensor:
    """Check ``x`` (N, *state_shape) and advance it ``n`` RK4 steps of ``dt`` (a new tensor; ``x`` is kept)."""
    check_state(x, state_shape, name)
    steps = check_steps(n)
    if steps == 0:
        return x.clone()
    for _ in range(steps):
        x = rk4_step(tendency, x, dt)
    return x
