"""Translate Snakemake resources (the official slurm plugin's names) into submitit parameters.

| Snakemake resource | submitit parameter (AutoExecutor) | sbatch flag |
|---|---|---|
| ``runtime`` (minutes) | ``timeout_min`` | ``--time`` |
| ``mem_mb`` | ``mem_gb`` (= mem_mb / 1024) | ``--mem`` |
| threads | ``cpus_per_task`` | ``--cpus-per-task`` |
| ``gpu`` | ``gpus_per_node`` | ``--gpus-per-node`` |
| ``gpu`` + ``gpu_model`` | ``slurm_gres = "gpu:<model>:<gpu>"`` | ``--gres`` |
| ``slurm_partition`` | ``slurm_partition`` | ``--partition`` |
| ``slurm_account`` | ``slurm_account`` | ``--account`` |
| ``constraint`` | ``slurm_constraint`` | ``--constraint`` |
| ``qos`` | ``slurm_qos`` | ``--qos`` |
| ``slurm_extra`` ("--flag=value ...") | ``slurm_additional_parameters`` | as given |
"""

import shlex
from collections.abc import Mapping
from typing import Any


class ResourceError(ValueError):
    """A job's resources cannot be turned into a valid submission."""


#: sbatch flags that ``slurm_extra`` must not set, and the resource that sets them instead.
RESERVED_SLURM_FLAGS: dict[str, str] = {
    "time": "runtime",
    "t": "runtime",
    "mem": "mem_mb",
    "mem-per-cpu": "mem_mb",
    "cpus-per-task": "threads",
    "c": "threads",
    "gpus": "gpu",
    "gpus-per-node": "gpu",
    "gres": "gpu and gpu_model",
    "G": "gpu",
    "partition": "slurm_partition",
    "p": "slurm_partition",
    "account": "slurm_account",
    "A": "slurm_account",
    "qos": "qos",
    "q": "qos",
    "constraint": "constraint",
    "C": "constraint",
    "job-name": "(set by the plugin)",
    "J": "(set by the plugin)",
    "output": "(set by the plugin: --submitit-folder)",
    "o": "(set by the plugin: --submitit-folder)",
    "error": "(set by the plugin: --submitit-folder)",
    "e": "(set by the plugin: --submitit-folder)",
    "signal": "(set by the plugin: --submitit-signal-delay)",
    "comment": "(set by the official slurm plugin, which refuses it here too)",
}


def parse_slurm_extra(extra: str) -> dict[str, str | bool]:
    """Parse ``slurm_extra`` ("--flag=value --switch ...") into submitit's ``slurm_additional_parameters``.

    Only long options are accepted, each either ``--name=value`` or a bare ``--switch``. Flags that a named
    resource sets (``--time``, ``--mem``, ``--partition``, ...) are refused, as the official slurm plugin
    does, so that the same profile works with ``executor: slurm``.
    """
    parameters: dict[str, str | bool] = {}
    for token in shlex.split(extra):
        if not token.startswith("--") or token == "--":
            raise ResourceError(
                f"slurm_extra={extra!r}: {token!r} is not of the form --name=value or --switch. "
                'Write each sbatch option as one long option, e.g. slurm_extra="--mail-type=END --exclusive".'
            )
        name, has_value, value = token[2:].partition("=")
        if name in RESERVED_SLURM_FLAGS:
            raise ResourceError(
                f"slurm_extra={extra!r} sets --{name}; use the resource {RESERVED_SLURM_FLAGS[name]} instead."
            )
        parameters[name] = value if has_value else True
    return parameters


def _text(name: str, value: Any) -> str:
    """Resource ``name`` as a string; refuse control characters (a newline would become a line of the
    batch script that submitit writes)."""
    text = str(value)
    bad = sorted({f"U+{ord(c):04X}" for c in text if ord(c) < 32 or ord(c) == 127})
    if bad:
        raise ResourceError(
            f"resource {name}={text!r} contains control characters ({', '.join(bad)}); "
            "write it on one line without tabs or newlines."
        )
    return text


def _positive_int(resources: Mapping[str, Any], name: str) -> int | None:
    """Return resource ``name`` as an int (``None`` if absent); refuse values that are not whole numbers."""
    value = resources.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ResourceError(f"resource {name}={value!r} is not a whole number.") from None
    if number < 0:
        raise ResourceError(f"resource {name}={value!r} is negative.")
    return number


def submitit_parameters(
    resources: Mapping[str, Any], threads: int, ignore_gpu: bool = False
) -> dict[str, Any]:
    """Map one job's Snakemake resources and threads to ``AutoExecutor.update_parameters`` keywords.

    Parameters
    ----------
    resources:
        The job's resources (``job.resources``).
    threads:
        The job's threads (``job.threads``): becomes ``cpus_per_task``.
    ignore_gpu:
        Drop ``gpu`` and ``gpu_model`` (for a CPU-only cluster): the job runs without a GPU.

    Raises
    ------
    ResourceError
        A resource has a value that cannot be submitted (not a number, a reserved flag in ``slurm_extra``,
        a control character such as a newline in a string).
    """
    parameters: dict[str, Any] = {"cpus_per_task": max(1, int(threads))}
    runtime = _positive_int(resources, "runtime")
    if runtime is not None:
        parameters["timeout_min"] = max(1, runtime)
    mem_mb = _positive_int(resources, "mem_mb")
    if mem_mb is not None:
        parameters["mem_gb"] = mem_mb / 1024
    gpus = 0 if ignore_gpu else (_positive_int(resources, "gpu") or 0)
    if gpus > 0:
        model = resources.get("gpu_model")
        if model:
            parameters["slurm_gres"] = f"gpu:{model}:{gpus}"
        else:
            parameters["gpus_per_node"] = gpus
    for resource, parameter in (
        ("slurm_partition", "slurm_partition"),
        ("slurm_account", "slurm_account"),
        ("constraint", "slurm_constraint"),
        ("qos", "slurm_qos"),
    ):
        value = resources.get(resource)
        if value not in (None, ""):
            parameters[parameter] = _text(resource, value)
    extra = resources.get("slurm_extra")
    if extra:
        parameters["slurm_additional_parameters"] = parse_slurm_extra(_text("slurm_extra", extra))
    return parameters


def requested_gpus(resources: Mapping[str, Any]) -> int:
    """Number of GPUs the job asks for (resource ``gpu``; 0 if absent)."""
    return _positive_int(resources, "gpu") or 0
