"""Linear mask operators H(x) = m ⊙ x with a {0,1} mask m of the state's shape S.

Unobserved entries of z are pure noise (z = m ⊙ x + σ η on every entry). For 2-D states the spatial
axes are the last two (``[channel, y, x]``) and a pattern is copied to every channel.

- ``grid_mask``: m = 1 on every ``stride``-th row and column from ``offset`` (2-D), or every
  ``stride``-th entry (1-D). Stride 10 at 128² observes 13 × 13 points per channel.
- ``center_mask``: m = 0 on the centred rectangle of side round(n · hole_ratio) per spatial axis.
- ``random_mask``: round(fraction · P) spatial points (at least 1, P = number of points) drawn without
  replacement from a generator seeded with ``seed``.
- ``every_kth``: 1-D states, m = 1 on indices offset, offset + k, ….
- ``identity``: every entry observed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from masf.operators.base import Operator, check_state_shape


class Mask(Operator):
    """H(x) = mask ⊙ x for an explicit {0,1} ``mask`` of shape S (tensor or nested list)."""

    linear = True

    def __init__(
        self,
        mask: Any,
        noise_std: float,
        *,
        name: str = "mask",
        settings: dict[str, float | int | str] | None = None,
    ) -> None:
        self.name = name
        m = torch.as_tensor(mask).detach().cpu()
        if m.ndim < 1 or m.numel() == 0:
            raise ValueError(
                f"{name}: mask must be a non-empty array of the state's shape, got {tuple(m.shape)}"
            )
        m = m.to(torch.float32)
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"{name}: mask must contain only 0 and 1 (or booleans)")
        if not bool(m.any()):
            raise ValueError(f"{name}: mask observes nothing (all zeros); at least one entry must be 1")
        super().__init__(noise_std, tuple(m.shape))
        self.mask = m
        self.settings = dict(settings or {})
        self._cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def mask_like(self, x: Tensor) -> Tensor:
        """The mask in ``x``'s dtype and on its device (cached per dtype/device)."""
        key = (x.dtype, x.device)
        if key not in self._cache:
            self._cache[key] = self.mask.to(dtype=x.dtype, device=x.device)
        return self._cache[key]

    def apply(self, x: Tensor) -> Tensor:
        return self.mask_like(x) * x

    def jvp(self, x: Tensor, v: Tensor) -> Tensor:
        """m ⊙ v (H is linear)."""
        self.check_input(x)
        self.check_input(v, "v")
        return self.mask_like(x) * v.to(x)

    def vjp(self, x: Tensor, w: Tensor) -> Tensor:
        """m ⊙ w (H is symmetric)."""
        self.check_input(x)
        self.check_input(w, "w")
        return self.mask_like(x) * w.to(x)

    def observed_index(self) -> Tensor:
        """Flat indices (int64, into the flattened state) where the mask is 1, increasing."""
        return torch.nonzero(self.mask.flatten()).squeeze(1)

    def params(self) -> dict[str, float | int | str]:
        n_observed = int(self.mask.sum())
        return {
            **super().params(),
            **self.settings,
            "n_observed": n_observed,
            "observed_fraction": n_observed / self.mask.numel(),
        }


def _check_int(value: Any, parameter: str, operator: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high) (no upper bound if ``high`` is None), else ``ValueError``."""
    allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high})"
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ValueError(f"{operator}: {parameter} must be {allowed}, got {value!r}")
    if value < low or (high is not None and value >= high):
        raise ValueError(f"{operator}: {parameter} must be {allowed}, got {value!r}")
    return int(value)


def _check_spatial(shape: tuple[int, ...], operator: str) -> None:
    if len(shape) < 2:
        raise ValueError(
            f"{operator}: needs a 2-D state (channels, n, n) or (n, n); got state_shape {shape} (1-D)"
        )


def grid_mask(state_shape: tuple[int, ...], stride: int, offset: int = 0, *, noise_std: float) -> Mask:
    """Observe every ``stride``-th row and column from ``offset`` (2-D) or every ``stride``-th entry (1-D)."""
    shape = check_state_shape(state_shape, "grid_mask")
    stride = _check_int(stride, "stride", "grid_mask", 1)
    offset = _check_int(offset, "offset", "grid_mask", 0, stride)
    m = torch.zeros(shape)
    if len(shape) == 1:
        m[offset::stride] = 1.0
    else:
        m[..., offset::stride, offset::stride] = 1.0
    return Mask(m, noise_std, name="grid_mask", settings={"stride": stride, "offset": offset})


def center_mask(state_shape: tuple[int, ...], hole_ratio: float, *, noise_std: float) -> Mask:
    """Observe everything except a centred hole of side round(n · hole_ratio) on each spatial axis."""
    shape = check_state_shape(state_shape, "center_mask")
    _check_spatial(shape, "center_mask")
    ratio = float(hole_ratio)
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"center_mask: hole_ratio must be in (0, 1), got {hole_ratio!r}")
    m = torch.ones(shape)
    (h, w), (side_h, side_w) = shape[-2:], (round(shape[-2] * ratio), round(shape[-1] * ratio))
    top, left = (h - side_h) // 2, (w - side_w) // 2
    m[..., top : top + side_h, left : left + side_w] = 0.0
    return Mask(m, noise_std, name="center_mask", settings={"hole_ratio": ratio})


def random_mask(state_shape: tuple[int, ...], fraction: float, seed: int, *, noise_std: float) -> Mask:
    """Observe round(fraction · P) random spatial points (>= 1), the same on every channel of a 2-D state."""
    shape = check_state_shape(state_shape, "random_mask")
    frac = float(fraction)
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"random_mask: fraction must be in (0, 1], got {fraction!r}")
    seed = _check_int(seed, "seed", "random_mask", 0)
    spatial = shape[-2:] if len(shape) >= 2 else shape
    points = math.prod(spatial)
    count = max(1, round(frac * points))
    chosen = torch.randperm(points, generator=torch.Generator().manual_seed(seed))[:count]
    flat = torch.zeros(points)
    flat[chosen] = 1.0
    m = flat.reshape(spatial).expand(shape).clone()
    return Mask(m, noise_std, name="random_mask", settings={"fraction": frac, "seed": seed})


def every_kth(state_shape: tuple[int, ...], k: int, offset: int = 0, *, noise_std: float) -> Mask:
    """1-D states: observe the entries offset, offset + k, offset + 2k, …."""
    shape = check_state_shape(state_shape, "every_kth")
    if len(shape) != 1:
        raise ValueError(f"every_kth: needs a 1-D state (D,), got state_shape {shape}")
    k = _check_int(k, "k", "every_kth", 1)
    offset = _check_int(offset, "offset", "every_kth", 0, k)
    m = torch.zeros(shape)
    m[offset::k] = 1.0
    return Mask(m, noise_std, name="every_kth", settings={"k": k, "offset": offset})


def identity(state_shape: tuple[int, ...], *, noise_std: float) -> Mask:
    """Observe every entry: H(x) = x."""
    shape = check_state_shape(state_shape, "identity")
    return Mask(torch.ones(shape), noise_std, name="identity")
