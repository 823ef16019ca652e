"""Hyper-parameter tuning: methods with lists of values, their variants, and the choice of the best one.

A method of the sweep file whose hyper-parameter is a list, e.g. ``letkf: {filter: letkf, radius: [2, 4],
inflation: [1.02, 1.1]}``, stands for the grid of its *variants*, one per combination of the listed
values (here 4). Each variant runs on the experiment's ``tuning_seeds``; :func:`select` then picks, per
(experiment, operator, method), the variant with the best mean over those seeds of a named metric, and
only the selected variant runs on the evaluation ``seeds`` (docs/tuning.md).

This module is plain Python (the Snakefile imports it through :mod:`masf.config` at parse time).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

#: Metrics a selection may use (time means of a run, as in metrics.nc) and whether lower is better.
METRICS: dict[str, str] = {
    "rmse_mean": "min",
    "rmse_frames": "min",
    "crps_mean": "min",
    "ssim_mean": "max",
}
#: At most this many variants per method (each runs on every tuning seed of every experiment using it).
MAX_VARIANTS = 1000

#: Parameter kinds whose value is itself a list (masf.config): a list there is a value, not a grid.
LIST_KINDS = frozenset({"matrix", "floats", "weights"})

#: A variant's name: ``<method>@<key>=<value>@...`` (keys sorted). No commas: Snakemake passes a
#: cluster job's wildcards as one comma-separated ``key=value`` list.
VARIANT_PATTERN = r"[A-Za-z][A-Za-z0-9_]*(?:@[A-Za-z][A-Za-z0-9_]*=[A-Za-z0-9_.+-]+)+"
_VALUE = re.compile(r"[A-Za-z0-9_.+-]+")


def format_value(value: Any) -> str:
    """A hyper-parameter value as it appears in a variant name: ``true``/``false``, ``4``, ``1.05``,
    ``1e-05``, or the string itself."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def variant_name(method: str, values: Mapping[str, Any]) -> str:
    """``method@key=value@...`` over the tuned ``values`` in sorted key order, e.g.
    ``letkf@inflation=1.1@radius=4.0``."""
    return method + "".join(f"@{k}={format_value(values[k])}" for k in sorted(values))


def variant_label(name: str) -> str:
    """The tuned values of a variant name for tables and titles (``inflation=1.1, radius=4.0``), or ''
    for a method that is not a variant."""
    return ", ".join(name.split("@")[1:])


def tuned_keys(method: Mapping[str, Any], kinds: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The hyper-parameters of ``method`` given as lists of values to tune (``kinds``: the filter's
    parameter table; keys of a list kind, e.g. ``score_weights``, are values, never grids)."""
    return {
        k: v
        for k, v in method.items()
        if isinstance(v, list) and k != "filter" and kinds.get(k) not in LIST_KINDS
    }


def check_grid(name: str, grid: Mapping[str, list[Any]]) -> None:
    """Refuse an empty list, a repeated value, and a value that cannot be part of a file name; raises
    ``ValueError`` with a one-line message naming the key (``masf.config`` turns it into a ConfigError)."""
    for key, values in grid.items():
        where = f"methods.{name}.{key}"
        if not values:
            raise ValueError(f"{where}: [] is an empty list of values to tune; give at least one value")
        names = [format_value(v) for v in values]
        for i, (value, text) in enumerate(zip(values, names, strict=True)):
            if isinstance(value, dict | list) or value is None or not _VALUE.fullmatch(text):
                raise ValueError(
                    f"{where}[{i}]: {value!r} cannot be a tuned value (it names the variant's files); "
                    "allowed: numbers, true/false, or names of letters, digits, _ . + -"
                )
            if text in names[:i]:
                raise ValueError(f"{where}[{i}]: {value!r} is listed twice; list each value once")
    count = math.prod(len(v) for v in grid.values())
    if count > MAX_VARIANTS:
        sizes = " x ".join(f"{len(grid[k])} {k}" for k in sorted(grid))
        raise ValueError(
            f"methods.{name}: the lists make {count:,} variants ({sizes}); allowed: at most {MAX_VARIANTS:,} "
            "(tune fewer keys or values at once)"
        )


def expand(name: str, method: Mapping[str, Any], grid: Mapping[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """Every variant of ``method`` over ``grid`` (key -> list of values), as variant name -> the method
    with one value per key, in the order of the grid (the last key varying fastest)."""
    keys = list(grid)
    variants = {}
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        variants[variant_name(name, values)] = {**method, **values}
    return variants


def score(values: Sequence[float], statuses: Sequence[str], metric: str) -> dict[str, Any]:
    """A variant's score from its tuning runs: the mean of ``metric`` over the runs that did not diverge,
    with how many diverged. ``values``: the metric of each tuning run (NaN for a diverged one)."""
    ok = [v for v, s in zip(values, statuses, strict=True) if s == "ok" and math.isfinite(v)]
    diverged = len(values) - len(ok)
    return {"score": sum(ok) / len(ok) if ok else math.nan, "diverged": diverged, "runs": len(values)}


def select(scores: Mapping[str, Mapping[str, Any]], metric: str) -> str:
    """The best variant: fewest diverged tuning runs first, then the best score (``METRICS[metric]``:
    lowest or highest); a tie goes to the variant listed first. ``scores``: variant -> :func:`score`."""
    if not scores:
        raise ValueError("select: no variants")
    sign = 1.0 if METRICS[metric] == "min" else -1.0

    def rank(item: tuple[int, tuple[str, Mapping[str, Any]]]) -> tuple[int, float, int]:
        index, (_, s) = item
        value = s["score"]
        return (s["diverged"], sign * value if math.isfinite(value) else math.inf, index)

    return min(enumerate(scores.items()), key=rank)[1][0]
