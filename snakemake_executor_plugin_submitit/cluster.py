"""What the SLURM cluster offers (partitions, CPUs per node, GPUs), checked before a job is submitted.

A job that can never start (a partition that does not exist, a GPU request where no partition has GPUs,
more CPUs than any node has: sbatch accepts that and the job waits for ever with reason PartitionConfig)
would otherwise sit in the queue for ever or fail with sbatch's terse message; these checks fail it at once
with a message that names the problem and the fix.
"""

import re
import subprocess
from dataclasses import dataclass

PROFILE_HINT = "profiles/slurm/config.yaml"


class ClusterCheckError(ValueError):
    """A job asks for something the cluster cannot give."""


@dataclass(frozen=True)
class Partition:
    """One SLURM partition as ``sinfo -h -o "%P %c %G"`` reports it (``cpus``: its largest node's CPUs)."""

    name: str
    gres: tuple[str, ...]
    default: bool = False
    cpus: int | None = None

    @property
    def has_gpus(self) -> bool:
        """Whether any node of the partition has a ``gpu`` generic resource."""
        return any(g.split(":", 1)[0] == "gpu" for g in self.gres)


def parse_sinfo(text: str) -> dict[str, Partition]:
    """Parse the output of ``sinfo -h -o "%P %c %G"`` (one line per partition, CPU count and GRES set).

    The default partition carries a ``*`` suffix; a partition without GRES shows ``(null)``. A partition
    whose nodes differ in CPUs or GRES appears on several lines; their GRES are merged and the largest CPU
    count is kept.
    """
    partitions: dict[str, Partition] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        raw_name, cpu_field, gres_fields = fields[0], fields[1].rstrip("+"), fields[2:]
        name = raw_name.rstrip("*")
        cpus = int(cpu_field) if cpu_field.isdigit() else None
        gres = tuple(
            g for field in gres_fields for g in re.split(r",(?![^(]*\))", field) if g and g != "(null)"
        )
        before = partitions.get(name)
        if before is not None:
            gres = before.gres + tuple(g for g in gres if g not in before.gres)
            known = [c for c in (cpus, before.cpus) if c is not None]
            cpus = max(known) if known else None
        partitions[name] = Partition(
            name=name,
            gres=gres,
            default=raw_name.endswith("*") or (before is not None and before.default),
            cpus=cpus,
        )
    return partitions


def query_partitions(timeout_s: float = 30.0) -> dict[str, Partition]:
    """Ask ``sinfo`` for the cluster's partitions and their GRES.

    Raises
    ------
    ClusterCheckError
        ``sinfo`` is missing or fails.
    """
    try:
        result = subprocess.run(
            ["sinfo", "-h", "-o", "%P %c %G"], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ClusterCheckError(
            f"cannot run sinfo ({error}). Run Snakemake on a SLURM login node, or use "
            "--submitit-cluster local to run jobs on this machine."
        ) from error
    if result.returncode != 0:
        raise ClusterCheckError(
            f"sinfo failed with status {result.returncode}: {result.stderr.strip()}. "
            "Check that SLURM answers (sinfo), or use --submitit-cluster local."
        )
    return parse_sinfo(result.stdout)


def check_request(
    partitions: dict[str, Partition], rule: str, partition: str | None, gpus: int, cpus: int = 1
) -> None:
    """Refuse a job that the cluster can never run.

    Parameters
    ----------
    partitions:
        The cluster's partitions (:func:`query_partitions`). Empty: nothing is checked.
    rule:
        Rule name, for the message.
    partition:
        The job's ``slurm_partition`` (``None``: SLURM's default partition).
    gpus:
        GPUs the job asks for.
    cpus:
        CPUs the job asks for (its threads; for a group job, the sum over the jobs that run at once).

    Raises
    ------
    ClusterCheckError
        Unknown partition, GPUs requested from a partition without GPUs, or more CPUs than the largest
        node of the partition has.
    """
    if not partitions:
        return
    names = ", ".join(sorted(partitions))
    if partition is not None:
        # sbatch accepts a comma-separated list of partitions; each one must exist.
        wanted = [p for p in partition.split(",") if p]
        unknown = [p for p in wanted if p not in partitions]
        if unknown:
            raise ClusterCheckError(
                f"rule {rule}: partition {', '.join(map(repr, unknown))} does not exist on this cluster "
                f"(sinfo lists: {names}). Set slurm_partition in default-resources of {PROFILE_HINT} "
                "or in the rule's resources."
            )
        candidates = [partitions[p] for p in wanted]
    else:
        candidates = [p for p in partitions.values() if p.default]
    if gpus > 0 and candidates and not any(p.has_gpus for p in candidates):
        where = ", ".join(p.name for p in candidates)
        gpu_partitions = sorted(p.name for p in partitions.values() if p.has_gpus)
        fix = (
            f"set slurm_partition to one of {', '.join(gpu_partitions)}"
            if gpu_partitions
            else "this cluster has no GPU partition: run with --submitit-ignore-gpu (or the "
            "profiles/slurm-cpu profile) to run GPU rules on CPUs"
        )
        raise ClusterCheckError(
            f"rule {rule} asks for gpu={gpus}, but partition {where} has no GPUs (sinfo GRES column). "
            f"Fix: {fix}."
        )
    largest = max((p.cpus for p in candidates if p.cpus is not None), default=None)
    if largest is not None and cpus > largest:
        where = ", ".join(p.name for p in candidates)
        raise ClusterCheckError(
            f"rule {rule} asks for {cpus} CPUs, but the largest node of partition {where} has {largest} "
            "(sinfo), so it would wait in the queue for ever. Fix: lower the stage's threads in the sweep "
            f"file's resources, or, for a bundle of grouped jobs (it asks for group_slots x threads), "
            f"group_slots in {PROFILE_HINT}."
        )


#: Known sbatch error messages and what to do about them.
_SBATCH_HINTS: tuple[tuple[str, str], ...] = (
    (
        r"invalid account|account/partition combination|no default account|must specify (an )?account",
        "This cluster needs a SLURM account: set slurm_account in default-resources of "
        f"{PROFILE_HINT} (list yours with `sacctmgr show associations user=$USER format=account`).",
    ),
    (
        r"invalid partition",
        f"The partition does not exist: set slurm_partition in {PROFILE_HINT} to one that `sinfo` lists.",
    ),
    (
        r"invalid qos|qos policy",
        f"The QOS is not allowed: fix the qos resource in {PROFILE_HINT} (see `sacctmgr show qos`).",
    ),
    (
        r"requested node configuration is not available",
        "No node has that many CPUs, that much memory or those GPUs: lower threads, mem_mb or gpu for this "
        "rule (config/sweep.yaml resources), or group_slots for a bundle of grouped jobs (it asks for "
        "group_slots x mem_mb), or pick another partition.",
    ),
    (
        r"time limit",
        "The runtime is above the partition's limit (`sinfo -o '%P %l'`): lower the rule's runtime.",
    ),
    (
        r"invalid generic resource|invalid gres",
        "The GPU request does not match the cluster's GRES: check gpu_model, or use --submitit-ignore-gpu "
        "on a CPU-only cluster.",
    ),
)


def explain_submission_error(message: str) -> str:
    """Return a hint for a failed ``sbatch``, or an empty string if the message is not a known one."""
    lowered = message.lower()
    for pattern, hint in _SBATCH_HINTS:
        if re.search(pattern, lowered):
            return hint
    return ""
