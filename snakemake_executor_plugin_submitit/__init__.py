"""Snakemake executor plugin that submits every job through submitit (SLURM, or locally for tests).

Use it with ``snakemake --executor submitit --submitit-cluster slurm`` or ``snakemake --profile slurm``.
Resources use the official slurm plugin's names (see :mod:`.resources`), so ``executor: slurm`` in a
profile switches to that plugin without touching the rules.

How a job runs: ``run_job`` submits a :class:`~.command.ShellCommand` (or, for checkpointable rules, a
:class:`~.command.CheckpointableShellCommand`) that runs Snakemake's remote command for the job in its own
process group. ``check_active_jobs`` looks for submitit's result pickle (no scheduler call) and refreshes
the SLURM state of all jobs with one batched ``sacct`` at most every ``--submitit-status-interval`` seconds,
to see jobs that died without a result (cancelled, out of memory, node failure, time limit).
"""

import shutil
import subprocess
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.settings import CommonSettings, ExecutorSettingsBase
from submitit.core.utils import pickle_load

from .cluster import (
    ClusterCheckError,
    Partition,
    check_request,
    explain_submission_error,
    query_partitions,
)
from .command import CheckpointableShellCommand, ShellCommand
from .resources import ResourceError, requested_gpus, submitit_parameters

__all__ = ["Executor", "ExecutorSettings", "common_settings"]

CLUSTERS = ("slurm", "local", "debug")

#: Job states (sacct) after which no result pickle will appear any more.
_DEAD_WITHOUT_RESULT = ("CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")
#: Seconds to wait for the result pickle of a job that the scheduler already reports finished (a slow
#: shared file system may show the file late).
RESULT_GRACE_S = 15.0
#: SIGUSR2 arrives this long before the time limit on submitit's local cluster (fixed there).
LOCAL_SIGNAL_DELAY_S = 30


common_settings = CommonSettings(
    non_local_exec=True,
    implies_no_shared_fs=False,
    job_deploy_sources=False,
    pass_envvar_declarations_to_cmd=False,
    auto_deploy_default_storage_provider=False,
)


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    """Settings of the submitit executor; each field is the command-line flag ``--submitit-<field>``."""

    cluster: str = field(
        default="slurm",
        metadata={
            "help": "Where jobs run: slurm (sbatch), local (submitit's local processes, for tests) or "
            "debug (in this process, one at a time, for debugging).",
            "choices": list(CLUSTERS),
        },
    )
    folder: str = field(
        default="logs/submitit/{rule}/%j",
        metadata={
            "help": "Folder of each job's submitit files and logs (<jobid>_0_log.out/.err). {rule} is the "
            "rule (or group) name; %%j is the cluster job id.",
        },
    )
    status_interval: int = field(
        default=60,
        metadata={
            "help": "Seconds between two batched sacct calls that look for jobs that died without a result "
            "(cancelled, out of memory, node failure). Keep >= 60 on a shared cluster.",
            "type": int,
        },
    )
    ignore_gpu: bool = field(
        default=False,
        metadata={
            "help": "Drop the gpu and gpu_model resources of every job, so that GPU rules run on CPU "
            "nodes (CPU-only clusters and tests).",
        },
    )
    checkpointable_rules: str = field(
        default="",
        metadata={
            "help": "Comma-separated rules whose jobs are requeued on timeout or preemption (same job "
            "id): the command gets SIGTERM, must save its own checkpoint and resume when started again. "
            "A rule can also opt in with the resource checkpointable=1.",
        },
    )
    signal_delay: int = field(
        default=90,
        metadata={
            "help": "SLURM sends the timeout signal this many seconds before the time limit (sbatch "
            "--signal=USR2@N; SLURM may send it up to 60 s earlier). A checkpointable command gets "
            "N - 20 s to save its checkpoint after SIGTERM.",
            "type": int,
        },
    )
    max_requeues: int = field(
        default=3,
        metadata={
            "help": "How many times a checkpointable job may be requeued after a timeout.",
            "type": int,
        },
    )


class Executor(RemoteExecutor):
    """Submit each Snakemake job as one submitit job and follow it to its end."""

    def __post_init__(self) -> None:
        settings: ExecutorSettings = self.workflow.executor_settings
        if settings.cluster not in CLUSTERS:
            raise WorkflowError(
                f"--submitit-cluster {settings.cluster!r} is not one of {', '.join(CLUSTERS)}."
            )
        if settings.status_interval < 1:
            raise WorkflowError("--submitit-status-interval must be at least 1 second (60 on a cluster).")
        if settings.cluster == "slurm" and (shutil.which("sbatch") is None or shutil.which("srun") is None):
            raise WorkflowError(
                "--submitit-cluster slurm needs SLURM's sbatch and srun on PATH, and they are not there: run "
                "Snakemake on a login node of the cluster, or use --submitit-cluster local to run the jobs here."
            )
        if settings.signal_delay < 30:
            raise WorkflowError("--submitit-signal-delay must be at least 30 seconds.")
        self.settings = settings
        self.checkpointable_rules = {r.strip() for r in settings.checkpointable_rules.split(",") if r.strip()}
        self._last_state_refresh = float("-inf")
        self._refresh_thread: threading.Thread | None = None
        self._partitions: dict[str, Partition] | None = None
        self._warned_no_runtime: set[str] = set()
        self._finished_at: dict[str, float] = {}

    # ------------------------------------------------------------------ submission
    def _cluster_partitions(self) -> dict[str, Partition]:
        """The cluster's partitions, asked once per run (empty when sinfo does not answer)."""
        if self._partitions is None:
            try:
                self._partitions = query_partitions()
            except ClusterCheckError as error:
                self.logger.info(f"submitit: warning: partition/GPU checks skipped: {error}")
                self._partitions = {}
        return self._partitions

    def _is_checkpointable(self, job: JobExecutorInterface) -> bool:
        """Whether a timeout requeues the job: one of its rules is listed, or it has checkpointable > 0.

        A group job (a bundle of jobs in one cluster job) qualifies when any of its jobs does: its
        requeued start reruns the whole bundle, and the members that cannot resume start over, which is
        what a retry would do. Its ``checkpointable`` resource is the sum over the jobs running at once.
        """
        flag = str(job.resources.get("checkpointable", 0)).strip().lower()
        if flag in ("true", "yes") or (flag.isdigit() and int(flag) > 0):
            return True
        return any(str(name) in self.checkpointable_rules for name in job.rules)

    def _make_executor(self, job: JobExecutorInterface) -> submitit.AutoExecutor:
        """A fresh submitit executor for one job (parameters of one job never leak into another)."""
        folder = Path(self.settings.folder.replace("{rule}", job.name))
        kwargs: dict[str, Any] = {}
        if self.settings.cluster == "slurm":
            kwargs["slurm_max_num_timeout"] = self.settings.max_requeues
        elif self.settings.cluster == "local":
            kwargs["local_max_num_timeout"] = self.settings.max_requeues
        executor = submitit.AutoExecutor(folder=folder, cluster=self.settings.cluster, **kwargs)
        parameters = submitit_parameters(job.resources, job.threads, ignore_gpu=self.settings.ignore_gpu)
        if "timeout_min" not in parameters and job.name not in self._warned_no_runtime:
            self._warned_no_runtime.add(job.name)
            self.logger.info(
                f"submitit: warning: rule {job.name} has no runtime resource; submitit's default time limit "
                "(5 min on SLURM) applies. Set runtime (minutes) in default-resources or in the rule."
            )
        parameters["name"] = f"smk-{job.name}-{job.jobid}"
        if self.settings.cluster == "slurm":
            parameters["slurm_signal_delay_s"] = self.settings.signal_delay
        executor.update_parameters(**parameters)
        return executor

    def _checkpoint_grace_s(self) -> float:
        delay = self.settings.signal_delay if self.settings.cluster == "slurm" else LOCAL_SIGNAL_DELAY_S
        return float(max(5, delay - 20))

    def run_job(self, job: JobExecutorInterface) -> None:
        """Submit one job; report its submission, or report an error with the reason and the fix."""
        info = SubmittedJobInfo(job)
        try:
            if self.settings.cluster == "slurm":
                gpus = 0 if self.settings.ignore_gpu else requested_gpus(job.resources)
                partition = job.resources.get("slurm_partition") or None
                check_request(self._cluster_partitions(), job.name, partition, gpus, max(1, int(job.threads)))
            executor = self._make_executor(job)
        except (ClusterCheckError, ResourceError) as error:
            self.report_job_error(info, msg=f"submitit: job not submitted: {error}\n")
            return
        command_type = CheckpointableShellCommand if self._is_checkpointable(job) else ShellCommand
        command = command_type(self.format_job_exec(job), checkpoint_grace_s=self._checkpoint_grace_s())
        try:
            submitted = executor.submit(command)
        except Exception as error:  # sbatch's own message is the most useful thing to show
            hint = explain_submission_error(str(error))
            self.report_job_error(
                info, msg=f"submitit: submission of rule {job.name} failed: {error}\n{hint}\n".rstrip() + "\n"
            )
            return
        info.external_jobid = str(submitted.job_id)
        info.aux = {"submitit_job": submitted, "log": str(submitted.paths.stdout)}
        self.logger.info(
            f"submitit: job {job.jobid} (rule {job.name}) submitted as {self.settings.cluster} job "
            f"{submitted.job_id}; log: {submitted.paths.stdout}"
        )
        self.report_job_submission(info)

    # ------------------------------------------------------------------ status
    def _refresh_slurm_states(self) -> None:
        """Start one batched sacct for all unfinished jobs, at most every ``status_interval`` seconds.

        It runs in a background thread (submitit calls sacct without a timeout, and a hanging slurmdbd
        must not stop the result-file checks); its answer is used from the next status check on.
        """
        now = time.monotonic()
        if now - self._last_state_refresh < self.settings.status_interval:
            return
        if self._refresh_thread is not None and self._refresh_thread.is_alive():
            self.logger.info(
                "submitit: warning: the previous sacct call has not returned yet; job states may be stale."
            )
            return
        self._last_state_refresh = now
        self._refresh_thread = threading.Thread(
            target=submitit.SlurmJob.watcher.update, name="submitit-sacct", daemon=True
        )
        self._refresh_thread.start()

    def _scheduler_state(self, job: submitit.Job) -> str:
        """The job's last known scheduler state without calling the scheduler ('RUNNING' while alive)."""
        if self.settings.cluster == "slurm":
            return str(job.watcher.get_state(job.job_id, mode="cache")).split()[0].upper()
        # submitit's local cluster: the job is its controller process
        return "RUNNING" if job.get_info().get("jobState") == "RUNNING" else "FINISHED"

    def _failure_message(self, job: submitit.Job, what: str) -> str:
        """What went wrong, where the logs are, and the end of the job's own output.

        The end shown is what came before submitit's traceback (Snakemake's error report for the rule),
        which is what explains the failure; the traceback only says that the command failed.
        """
        paths = job.paths
        tail = ""
        for path in (paths.stderr, paths.stdout):
            try:
                lines = Path(path).read_text(errors="replace").splitlines()
            except OSError:
                continue
            submitit_errors = [i for i, line in enumerate(lines) if line.startswith("submitit ERROR")]
            if submitit_errors:
                lines = lines[: submitit_errors[-1]]
            lines = [line for line in lines if line.strip()][-15:]
            if lines:
                tail = f"Last lines of {path}:\n" + "\n".join(lines) + "\n"
                break
        return f"submitit job {job.job_id} {what}.\nLogs: {paths.stdout} and {paths.stderr}\n{tail}"

    def _outcome(self, info: SubmittedJobInfo) -> tuple[str, str]:
        """Return ('running'|'success'|'error', message) for one submitted job."""
        job: submitit.Job = info.aux["submitit_job"]
        if self.settings.cluster == "debug":
            error = job.exception()  # runs the job here and now, in this process
            if error is None:
                return "success", ""
            return "error", f"debug job failed: {error}\n"
        result_file = job.paths.result_pickle
        if result_file.exists():
            try:
                outcome, value = pickle_load(result_file)
            except (EOFError, OSError):  # still being written
                return "running", ""
            if outcome == "success":
                return "success", ""
            lines = str(value).strip().splitlines()  # a traceback: its last line is the exception
            return "error", self._failure_message(job, f"failed: {lines[-1] if lines else 'no reason given'}")
        state = self._scheduler_state(job)
        if state in ("RUNNING", "PENDING", "REQUEUED", "COMPLETING", "UNKNOWN", "READY", "PREEMPTED"):
            self._finished_at.pop(job.job_id, None)
            return "running", ""
        if state.startswith(_DEAD_WITHOUT_RESULT):
            return "error", self._failure_message(job, f"ended with state {state} and no result")
        # COMPLETED/FAILED/FINISHED without a result file yet: give the file system a moment
        first_seen = self._finished_at.setdefault(job.job_id, time.monotonic())
        if time.monotonic() - first_seen < RESULT_GRACE_S:
            return "running", ""
        return "error", self._failure_message(job, f"ended with state {state} but wrote no result")

    async def check_active_jobs(
        self, active_jobs: list[SubmittedJobInfo]
    ) -> AsyncGenerator[SubmittedJobInfo, None]:
        """Report finished jobs (success or error) and yield those still running."""
        if not active_jobs:
            # RemoteExecutor starts the thread that calls this before __post_init__ has run: without jobs
            # there is nothing to do, and self.settings may not exist yet.
            return
        if self.settings.cluster == "slurm":
            async with self.status_rate_limiter:  # the one scheduler call of this check
                self._refresh_slurm_states()
        for info in active_jobs:  # file checks only: no rate limit, thousands of jobs take a moment
            status, message = self._outcome(info)
            if status == "running":
                yield info
            elif status == "success":
                self.report_job_success(info)
            else:
                self.report_job_error(info, msg=message)

    # ------------------------------------------------------------------ cancel
    def cancel_jobs(self, active_jobs: list[SubmittedJobInfo]) -> None:
        """Cancel every job still known to the scheduler (one scancel call on SLURM)."""
        jobs = [info.aux["submitit_job"] for info in active_jobs if info.aux]
        if not jobs:
            return
        if self.settings.cluster == "slurm":
            ids = sorted({str(j.job_id) for j in jobs})
            result = subprocess.run(["scancel", *ids], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                self.logger.error(
                    f"submitit: scancel {' '.join(ids)} failed ({result.stderr.strip()}); "
                    "check squeue and cancel what is left by hand."
                )
            return
        for job in jobs:
            job.cancel(check=False)
