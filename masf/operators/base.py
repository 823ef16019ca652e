"""The measurement-operator interface: z = H(x) + σ η with η ~ N(0, I) on every entry.

An operator maps a batch of states ``(N, *S)`` to measurements of the same full shape ``(N, *S)``.
Subclasses implement ``apply(x)`` (H without checks, differentiable); this base class adds the input
checks, the noise, and Jacobian products through autograd (``torch.func``), which mask operators override
with their closed forms.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from masf.systems.base import randn


def check_noise_std(noise_std: float, operator: str) -> float:
    """σ as a float if it is finite and > 0, else ``ValueError``."""
    try:
        value = float(noise_std)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{operator}: noise_std must be a finite number > 0, got {noise_std!r}")
    return value


def check_state_shape(state_shape: tuple[int, ...], operator: str) -> tuple[int, ...]:
    """``state_shape`` as a non-empty tuple of positive ints, else ``ValueError``."""
    try:
        shape = tuple(int(s) for s in state_shape)
        ok = len(shape) >= 1 and all(s >= 1 for s in shape) and shape == tuple(state_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{operator}: state_shape must be a tuple of positive integers, got {state_shape!r}")
    return shape


class Operator:
    """Base class. Attributes: ``name``, ``noise_std`` (σ), ``linear``, ``state_shape`` (S or ``None`` for
    an elementwise operator built without one), ``mask`` ({0,1} tensor of shape S, or ``None``)."""

    name: str = "operator"
    linear: bool = False
    mask: Tensor | None = None

    def __init__(self, noise_std: float, state_shape: tuple[int, ...] | None) -> None:
        self.noise_std = check_noise_std(noise_std, self.name)
        self.state_shape = None if state_shape is None else check_state_shape(state_shape, self.name)

    def apply(self, x: Tensor) -> Tensor:
        """H(x) for ``x`` of shape (N, *S), no checks; subclasses implement it."""
        raise NotImplementedError

    def check_input(self, x: Tensor, parameter: str = "x") -> None:
        """``ValueError`` unless ``x`` is a floating tensor shaped ``(N, *S)`` (cheap: no device sync)."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{self.name}: {parameter} must be a float32/float64 tensor, got {kind}")
        if self.state_shape is not None and (
            x.ndim != len(self.state_shape) + 1 or tuple(x.shape[1:]) != self.state_shape
        ):
            raise ValueError(
                f"{self.name}: {parameter} must be shaped (N, {', '.join(map(str, self.state_shape))}), "
                f"got {tuple(x.shape)}"
            )

    def __call__(self, x: Tensor) -> Tensor:
        """H(x), shape (N, *S), without noise; differentiable."""
        self.check_input(x)
        return self.apply(x)

    def observe(self, x: Tensor, *, generator: torch.Generator) -> Tensor:
        """z = H(x) + σ η, η ~ N(0, I) from ``generator`` on every entry; shape (N, *S)."""
        self.check_input(x)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{self.name}: x contains NaN or Inf; cannot observe it")
        noise = randn(tuple(x.shape), generator, x.dtype, x.device)
        return self.apply(x) + self.noise_std * noise

    def jvp(self, x: Tensor, v: Tensor) -> Tensor:
        """J_H(x) v, shape (N, *S), for a tangent ``v`` shaped like ``x``.

        Reverse mode twice: w ↦ J_Hᵀ w is linear, so its own vector-Jacobian product with v is J_H v.
        (This avoids forward-mode AD, whose first use in torch 2.13 compiles TorchScript decompositions.)
        """
        self.check_input(x)
        self.check_input(v, "v")
        hx, pullback = torch.func.vjp(self.apply, x)
        _, pullback_of_pullback = torch.func.vjp(lambda w: pullback(w)[0], torch.zeros_like(hx))
        return pullback_of_pullback(v.to(x))[0]

    def vjp(self, x: Tensor, w: Tensor) -> Tensor:
        """J_H(x)ᵀ w, shape (N, *S), for a cotangent ``w`` shaped like ``x`` (reverse-mode autograd)."""
        self.check_input(x)
        self.check_input(w, "w")
        _, pullback = torch.func.vjp(self.apply, x)
        return pullback(w.to(x))[0]

    def observed_index(self) -> Tensor:
        """Flat indices (int64) of the state entries that carry a measurement: every entry by default."""
        if self.state_shape is None:
            raise ValueError(f"{self.name}: observed_index needs the operator's state_shape")
        return torch.arange(math.prod(self.state_shape))

    def params(self) -> dict[str, float | int | str]:
        """Name and σ; subclasses add their settings."""
        return {"name": self.name, "noise_std": self.noise_std}

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "name")
        return f"{self.name}({settings})"
