"""Measurement operators z = H(x) + σ η on states ``(N, *S)`` (see docs/architecture.md, method.md §9).

``make_operator(name, state_shape, **params)`` builds one from a config dict; ``OPERATORS`` lists the
names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from masf.operators.base import Operator, check_state_shape
from masf.operators.masks import Mask, center_mask, every_kth, grid_mask, identity, random_mask
from masf.operators.nonlinear import Arctan, Sigmoid, Speed

__all__ = [
    "OPERATORS",
    "Arctan",
    "Mask",
    "Operator",
    "Sigmoid",
    "Speed",
    "center_mask",
    "every_kth",
    "grid_mask",
    "identity",
    "make_operator",
    "random_mask",
]


def _explicit_mask(state_shape: tuple[int, ...], mask: Any, noise_std: float) -> Mask:
    op = Mask(mask, noise_std)
    if op.state_shape != tuple(state_shape):
        raise ValueError(f"mask: mask has shape {op.state_shape} but the state_shape is {tuple(state_shape)}")
    return op


def _sigmoid(state_shape: tuple[int, ...], alpha: float, noise_std: float) -> Sigmoid:
    return Sigmoid(alpha, noise_std, state_shape=state_shape)


def _arctan(state_shape: tuple[int, ...], noise_std: float) -> Arctan:
    return Arctan(noise_std, state_shape=state_shape)


def _speed(
    state_shape: tuple[int, ...], noise_std: float, threshold: float = 3.0, sharpness: float = 1.0
) -> Speed:
    return Speed(noise_std, threshold, sharpness, state_shape=state_shape)


_BUILDERS: dict[str, Callable[..., Operator]] = {
    "mask": _explicit_mask,
    "grid_mask": grid_mask,
    "center_mask": center_mask,
    "random_mask": random_mask,
    "every_kth": every_kth,
    "identity": identity,
    "sigmoid": _sigmoid,
    "arctan": _arctan,
    "speed": _speed,
}

OPERATORS = tuple(_BUILDERS)

# Attributes that Mask.params() reports but that are computed, not set.
_DERIVED = ("n_observed", "observed_fraction")


def make_operator(name: str, state_shape: tuple[int, ...], **params: Any) -> Operator:
    """The operator ``name`` (one of ``OPERATORS``) for states of shape ``state_shape``.

    ``params`` are the builder's keywords, e.g. ``make_operator("grid_mask", (2, 128, 128), stride=10,
    noise_std=0.1)``. The derived attributes ``n_observed`` and ``observed_fraction`` of ``op.params()``
    are ignored, so ``make_operator(**op.params(), state_shape=op.state_shape)`` rebuilds ``op``.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown operator name {name!r}; allowed: {', '.join(OPERATORS)}")
    shape = check_state_shape(state_shape, name)
    settings = {k: v for k, v in params.items() if k not in _DERIVED}
    try:
        return _BUILDERS[name](shape, **settings)
    except TypeError as err:  # a missing or unexpected keyword
        raise ValueError(f"bad parameters for operator {name!r}: {err}") from err
