"""Filters: MASF and its baselines, each a frozen dataclass of hyper-parameters.

Every filter has ``analyse(prior, z, operator, ctx) -> posterior`` (shapes ``(N, *S)``, ``(*S)``,
``(N, *S)``), ``check_operator(operator)`` and the class attribute ``needs_pretraining``; score-based
ones also have ``pretrain(data, operator, *, checkpoint, generator, device)``. See docs/architecture.md.

``make_filter(name, **params)`` builds one by its config name:

===========  ===========================================  ========================
name         class                                        module
===========  ===========================================  ========================
masf         MASF (sampler reference, bridge, nonlinear)  masf.filters.masf
sf           SF (score-based filter, Bao et al.)          masf.filters.sf
ssls         SSLS (sequential Langevin sampling)          masf.filters.ssls
ensf         EnSF (training-free ensemble score filter)   masf.filters.ensf
enkf         EnKF (square-root or perturbed obs.)         masf.filters.enkf
letkf        LETKF (local ETKF, Gaspari-Cohn)             masf.filters.letkf
pf           ParticleFilter (bootstrap)                   masf.filters.particle
climatology  Climatology (no assimilation: the floor)     masf.filters.climatology
===========  ===========================================  ========================
"""

from __future__ import annotations

import importlib
from typing import Any

from masf.filters.base import Context

FILTERS: dict[str, tuple[str, str]] = {
    "masf": ("masf.filters.masf", "MASF"),
    "sf": ("masf.filters.sf", "SF"),
    "ssls": ("masf.filters.ssls", "SSLS"),
    "ensf": ("masf.filters.ensf", "EnSF"),
    "enkf": ("masf.filters.enkf", "EnKF"),
    "letkf": ("masf.filters.letkf", "LETKF"),
    "pf": ("masf.filters.particle", "ParticleFilter"),
    "climatology": ("masf.filters.climatology", "Climatology"),
}


def filter_class(name: str) -> type:
    """The filter class registered under ``name`` (imported on demand)."""
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; allowed: {', '.join(FILTERS)}")
    module, cls = FILTERS[name]
    return getattr(importlib.import_module(module), cls)


def make_filter(name: str, **params: Any) -> Any:
    """Build the filter ``name`` with hyper-parameters ``params`` (unknown names are a ``ValueError``)."""
    cls = filter_class(name)
    allowed = set(getattr(cls, "__dataclass_fields__", {}))
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"filter {name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(allowed)) or '(none)'}"
        )
    return cls(**params)


__all__ = ["FILTERS", "Context", "filter_class", "make_filter"]
