"""The callables that submitit runs on the compute node.

Each one runs a shell command (the ``python -m snakemake ... --mode remote`` line of one Snakemake job) in
its own process group and session, so that stopping it stops the whole process tree. Its output goes to the
submitit log files of the job (inherited stdout and stderr), never into the result pickle.

This module imports only the standard library and submitit: it is loaded by every cluster job.
"""

import os
import signal
import subprocess
import sys
import time
from typing import Any

from submitit.core.job_environment import JobEnvironment
from submitit.helpers import Checkpointable, DelayedSubmission

#: Seconds between two checks of the child process.
POLL_INTERVAL_S = 0.2
#: Seconds a child process group gets between SIGTERM and SIGKILL when the job is stopped abnormally
#: (cancelled, interrupted). Short, because submitit's local cluster SIGKILLs the job 1 s after SIGINT.
STOP_GRACE_S = 0.5


class CommandFailedError(RuntimeError):
    """The shell command of a job exited with a non-zero status."""


def _ignore_preemption_signal() -> None:
    """Runs in the child between fork and exec: ignore submitit's timeout/preemption signal (USR2).

    SLURM sends ``--signal=USR2@N`` to every process of the job step, children included. Left at its
    default action USR2 would kill Snakemake and the rule's command before the job can checkpoint. An
    ignored signal stays ignored across ``exec`` and in grandchildren, so only the submitit process reacts,
    and it asks the command to checkpoint with SIGTERM instead.
    """
    signal.signal(JobEnvironment._usr_sig(), signal.SIG_IGN)


def _signal_group(pgid: int, signum: int) -> None:
    """Send ``signum`` to process group ``pgid``; a group that no longer exists is not an error."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Whether any process (zombies included) is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait(proc: "subprocess.Popen[bytes]", timeout_s: float | None) -> int | None:
    """Poll ``proc`` until it exits or ``timeout_s`` elapses (``None``: forever); return its exit status.

    Polling instead of ``Popen.wait()`` keeps the main thread interruptible by signal handlers, and a
    handler may itself wait for the same process (a blocking ``wait()`` holds a lock that ``wait(timeout)``
    inside the handler could never take).
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while (status := proc.poll()) is None:
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(POLL_INTERVAL_S)
    return status


class ShellCommand:
    """Run one shell command in its own process group; raise :class:`CommandFailedError` if it fails.

    Parameters
    ----------
    command:
        The shell command (run with ``/bin/sh -c``).
    checkpoint_grace_s:
        On a checkpoint request, seconds between SIGTERM to the command and SIGKILL.
    """

    def __init__(self, command: str, checkpoint_grace_s: float = 60.0) -> None:
        self.command = command
        self.checkpoint_grace_s = checkpoint_grace_s
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_proc"] = None  # a running process cannot travel in a pickle
        return state

    def __call__(self) -> int:
        """Run the command to its end and return its exit status (0)."""
        self.starts += 1
        print(f"submitit plugin: start {self.starts} of: {self.command}", file=sys.stderr, flush=True)
        self._proc = subprocess.Popen(
            self.command,
            shell=True,
            start_new_session=True,
            preexec_fn=_ignore_preemption_signal,
        )
        status: int | None = None
        try:
            status = _wait(self._proc, None)
        finally:
            if status is None:  # interrupted (cancel, requeue): leave nothing running
                self.stop(STOP_GRACE_S)
        if status != 0:
            raise CommandFailedError(
                f"The job's command exited with status {status}; Snakemake's report of the failure is "
                "in this job's log (the .err file beside the .out file)."
            )
        return status

    def stop(self, grace_s: float) -> int | None:
        """SIGTERM the command's process group, wait up to ``grace_s`` s, then SIGKILL what is left.

        The wait lasts until every process of the group has exited, not only the shell that leads it:
        the shell dies at once on SIGTERM, while Snakemake and the rule's command below it may need a
        while to save a checkpoint. Returns the shell's exit status, or ``None`` if it had to be killed.
        """
        proc = self._proc
        if proc is None:
            return None
        _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(proc.pid)):
            time.sleep(POLL_INTERVAL_S)
        _signal_group(proc.pid, signal.SIGKILL)
        return _wait(proc, 5.0)


class CheckpointableShellCommand(ShellCommand, Checkpointable):
    """A :class:`ShellCommand` that submitit requeues (same SLURM job id) on timeout or preemption.

    On submitit's USR2 it sends SIGTERM to the command's process group, so that the command saves its own
    checkpoint, waits up to ``checkpoint_grace_s``, and returns a fresh submission of the same command. The
    command must resume from its checkpoint when it is started again.
    """

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Stop the command gracefully and return the submission that requeues it."""
        started = time.monotonic()
        status = self.stop(self.checkpoint_grace_s)
        print(
            f"submitit plugin: checkpoint requested; the command stopped with status {status} after "
            f"{time.monotonic() - started:.1f} s and the job is requeued.",
            file=sys.stderr,
            flush=True,
        )
        again = CheckpointableShellCommand(self.command, self.checkpoint_grace_s)
        again.starts = self.starts
        return DelayedSubmission(again)
