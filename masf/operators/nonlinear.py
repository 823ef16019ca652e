"""Nonlinear measurement operators (method.md §9); Jacobian products come from autograd.

- ``Sigmoid``: z = sigmoid(α x) elementwise (α = 2 in the reference).
- ``Arctan``: z = arctan(x) elementwise (the EnSF benchmarks' operator, Bao, Zhang & Zhang 2024); its
  Jacobian 1/(1 + x²) vanishes for large |x|, so large values are nearly unobservable.
- ``Speed``: q = sigmoid(s · (u² + v² − τ)) with threshold τ = 3 and sharpness s = 1 on a velocity
  state (2, n, n); q is copied to both channels, and each copy gets its own noise, so the noise variance
  on q is effectively halved ("channel-coupled").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from masf.operators.base import Operator


def _check_number(
    value: float, parameter: str, operator: str, *, positive: bool = False, nonzero: bool = False
) -> float:
    """``value`` as a finite float (> 0 if ``positive``, != 0 if ``nonzero``), else ``ValueError``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not math.isfinite(v) or (positive and v <= 0.0) or (nonzero and v == 0.0):
        allowed = "> 0" if positive else "!= 0" if nonzero else "(any)"
        raise ValueError(f"{operator}: {parameter} must be a finite number {allowed}, got {value!r}")
    return v


class Sigmoid(Operator):
    """H(x) = sigmoid(α x) elementwise; any state shape (checked against ``state_shape`` if given)."""

    name = "sigmoid"
    linear = False

    def __init__(self, alpha: float, noise_std: float, *, state_shape: tuple[int, ...] | None = None) -> None:
        self.alpha = _check_number(alpha, "alpha", self.name, nonzero=True)
        super().__init__(noise_std, state_shape)

    def apply(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.alpha * x)

    def params(self) -> dict[str, float | int | str]:
        return {**super().params(), "alpha": self.alpha}


class Arctan(Operator):
    """H(x) = arctan(x) elementwise; any state shape (checked against ``state_shape`` if given)."""

    name = "arctan"
    linear = False

    def apply(self, x: Tensor) -> Tensor:
        return torch.atan(x)


class Speed(Operator):
    """q = sigmoid(sharpness · (u² + v² − threshold)) copied to both channels of a (2, n, n) state."""

    name = "speed"
    linear = False

    def __init__(
        self,
        noise_std: float,
        threshold: float = 3.0,
        sharpness: float = 1.0,
        *,
        state_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.threshold = _check_number(threshold, "threshold", self.name)
        self.sharpness = _check_number(sharpness, "sharpness", self.name, positive=True)
        if state_shape is not None:
            shape = tuple(state_shape)
            if len(shape) != 3 or shape[0] != 2 or shape[1] != shape[2]:
                raise ValueError(
                    f"speed: needs a velocity state_shape (2, n, n) (channels u, v), got {state_shape!r}"
                )
        super().__init__(noise_std, state_shape)

    def check_input(self, x: Tensor, parameter: str = "x") -> None:
        super().check_input(x, parameter)
        if x.ndim != 4 or x.shape[1] != 2 or x.shape[2] != x.shape[3]:
            raise ValueError(f"speed: {parameter} must be shaped (N, 2, n, n), got {tuple(x.shape)}")

    def apply(self, x: Tensor) -> Tensor:
        q = torch.sigmoid(self.sharpness * ((x * x).sum(dim=1, keepdim=True) - self.threshold))
        return torch.cat((q, q), dim=1)

    def params(self) -> dict[str, float | int | str]:
        return {**super().params(), "threshold": self.threshold, "sharpness": self.sharpness}
