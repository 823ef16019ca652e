"""Batched dynamical systems on states shaped ``(N, *state_shape)`` (see docs/architecture.md).

``make_system(name, **params)`` builds one from a config dict. ``SYSTEMS`` lists the names. The
Kolmogorov solver is imported only when asked for, so the light systems load without it.
"""

from __future__ import annotations

from typing import Any

from masf.systems.linear_gaussian import LinearGaussian
from masf.systems.lorenz63 import Lorenz63
from masf.systems.lorenz96 import Lorenz96

SYSTEMS = ("lorenz63", "lorenz96", "kolmogorov", "linear_gaussian")

__all__ = ["SYSTEMS", "LinearGaussian", "Lorenz63", "Lorenz96", "make_system"]


def make_system(name: str, **params: Any) -> Any:
    """The system ``name`` (one of ``SYSTEMS``) with the given parameters.

    ``params`` may be the output of ``system.params()`` minus ``name``, so ``make_system(**s.params())``
    rebuilds ``s``. For ``linear_gaussian`` without ``F`` this is ``LinearGaussian.default(**params)``
    (e.g. ``dim=4``); with ``F`` the matrices are given explicitly and ``dim``, if present, must match.
    """
    if name not in SYSTEMS:
        raise ValueError(f"unknown system name {name!r}; allowed: {', '.join(SYSTEMS)}")
    try:
        if name == "lorenz63":
            return Lorenz63(**params)
        if name == "lorenz96":
            return Lorenz96(**params)
        if name == "kolmogorov":
            from masf.systems.kolmogorov import Kolmogorov

            return Kolmogorov(**params)
        if "F" not in params:
            return LinearGaussian.default(**params)
        dim = params.pop("dim", None)
        system = LinearGaussian(**params)
    except TypeError as err:  # an unexpected keyword: say which system and what it got
        raise ValueError(f"bad parameters for system {name!r}: {err}") from err
    if dim is not None and int(dim) != system.dim:
        raise ValueError(f"linear_gaussian: dim={dim!r} does not match F of shape {tuple(system.F.shape)}")
    return system
