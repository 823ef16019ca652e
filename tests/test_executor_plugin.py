"""The submitit executor plugin without SLURM: resource mapping, cluster checks, the job command's process
handling and checkpoint, and the toy workflow through ``snakemake --executor submitit`` on submitit's
``local`` and ``debug`` clusters. The same workflow on a real SLURM is in test_slurm.py."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
import yaml

from snakemake_executor_plugin_submitit.cluster import (
    ClusterCheckError,
    check_request,
    explain_submission_error,
    parse_sinfo,
)
from snakemake_executor_plugin_submitit.command import (
    CheckpointableShellCommand,
    CommandFailedError,
    ShellCommand,
)
from snakemake_executor_plugin_submitit.resources import ResourceError, parse_slurm_extra, submitit_parameters

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "tests" / "fixtures" / "toy_workflow"
#: Poll fast in tests (the defaults are meant for a shared cluster).
FAST_POLL = ["--seconds-between-status-checks", "1", "--submitit-status-interval", "2"]


def toy_workdir(parent: Path, name: str = "wf") -> Path:
    """A fresh copy of the toy workflow under ``parent``."""
    work = parent / name
    shutil.copytree(TOY, work)
    return work


def snakemake(workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run Snakemake (this interpreter's) in ``workdir`` and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--jobs", "4", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _default_sigint() -> None:
    """In the child: SIGINT back to its default, as a user's shell gives it. A test runner's worker may
    ignore SIGINT, and an ignored disposition survives exec, so Snakemake would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_snakemake(workdir: Path, *args: str) -> subprocess.Popen:
    """Start Snakemake in ``workdir`` in the background (output to ``workdir/snakemake.out``)."""
    with open(workdir / "snakemake.out", "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "snakemake", "--jobs", "4", *args],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_default_sigint,
        )


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.2 s; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def result_files(workdir: Path) -> dict[str, bytes]:
    """Every file under ``workdir/results`` as {relative path: content}."""
    base = workdir / "results"
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


# ---- resources -> submitit parameters ----------------------------------------------------------------


def test_every_resource_maps_to_its_submitit_parameter():
    resources = {
        "runtime": 90,
        "mem_mb": 4000,
        "gpu": 2,
        "slurm_partition": "gpu",
        "slurm_account": "proj42",
        "constraint": "a100",
        "qos": "high",
        "slurm_extra": "--mail-type=END --exclusive",
        "tmpdir": "/tmp",
    }
    assert submitit_parameters(resources, threads=4) == {
        "cpus_per_task": 4,
        "timeout_min": 90,
        "mem_gb": 4000 / 1024,
        "gpus_per_node": 2,
        "slurm_partition": "gpu",
        "slurm_account": "proj42",
        "slurm_constraint": "a100",
        "slurm_qos": "high",
        "slurm_additional_parameters": {"mail-type": "END", "exclusive": True},
    }


def test_gpu_model_becomes_gres_and_ignore_gpu_drops_the_request():
    with_model = submitit_parameters({"gpu": 1, "gpu_model": "a100"}, threads=1)
    assert with_model["slurm_gres"] == "gpu:a100:1"
    assert "gpus_per_node" not in with_model
    ignored = submitit_parameters({"gpu": 4, "gpu_model": "a100"}, threads=1, ignore_gpu=True)
    assert "gpus_per_node" not in ignored and "slurm_gres" not in ignored
    assert "gpus_per_node" not in submitit_parameters({"gpu": 0}, threads=1)


def test_runtime_is_at_least_one_minute_and_optional():
    assert submitit_parameters({"runtime": 0}, threads=1)["timeout_min"] == 1
    assert "timeout_min" not in submitit_parameters({}, threads=1)


def test_mapped_parameters_are_accepted_by_submitit(tmp_path):
    parameters = submitit_parameters(
        {"runtime": 30, "mem_mb": 1500, "gpu": 1, "slurm_partition": "p", "qos": "q", "slurm_extra": "--x=1"},
        threads=2,
    )
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="local")
    executor.update_parameters(**parameters)  # raises on an unknown name or a wrong type


@pytest.mark.parametrize(
    ("extra", "named"),
    [("--time=10", "runtime"), ("--partition=x", "slurm_partition"), ("--mem=4G", "mem_mb"), ("-A x", "")],
)
def test_slurm_extra_refuses_what_a_resource_sets(extra, named):
    with pytest.raises(ResourceError, match=named or "not of the form"):
        parse_slurm_extra(extra)


def test_non_numeric_resource_is_refused_with_its_name():
    with pytest.raises(ResourceError, match="runtime='1h30'"):
        submitit_parameters({"runtime": "1h30"}, threads=1)


@pytest.mark.parametrize("resource", ["slurm_account", "slurm_partition", "constraint", "qos", "slurm_extra"])
@pytest.mark.parametrize("value", ["gpu\n#SBATCH --exclusive", "a\tb", "x\r"])
def test_control_characters_in_string_resources_are_refused(resource, value):
    """A newline in a string resource would become a line of the batch script that submitit writes."""
    with pytest.raises(ResourceError, match=rf"resource {resource}=.* contains control characters \(U\+"):
        submitit_parameters({resource: value}, threads=1)


# ---- cluster checks ----------------------------------------------------------------------------------

#: `sinfo -h -o "%P %c %G"`: a partition per line and CPU count and GRES set of its nodes
SINFO = "debug* 2 (null)\ngpu 32 gpu:a100:4\ngpu 16 gpu:v100:2(S:0-1)\nbig 128 (null)\n"


def test_sinfo_output_is_parsed_into_partitions():
    partitions = parse_sinfo(SINFO)
    assert sorted(partitions) == ["big", "debug", "gpu"]
    assert partitions["debug"].default and not partitions["gpu"].default
    assert partitions["gpu"].gres == ("gpu:a100:4", "gpu:v100:2(S:0-1)")
    assert partitions["gpu"].has_gpus and not partitions["debug"].has_gpus
    assert {name: p.cpus for name, p in partitions.items()} == {"debug": 2, "gpu": 32, "big": 128}


def test_more_cpus_than_the_largest_node_has_are_refused_naming_group_slots():
    partitions = parse_sinfo(SINFO)
    # a bundle of 8 one-thread runs on the 2-CPU default partition would pend for ever (PartitionConfig)
    with pytest.raises(ClusterCheckError, match=r"runs_assimilate asks for 8 CPUs, but the largest node of "):
        check_request(partitions, "runs_assimilate", None, 0, 8)
    with pytest.raises(ClusterCheckError, match=r"partition debug has 2 \(sinfo\).*group_slots"):
        check_request(partitions, "runs_assimilate", "debug", 0, 3)
    check_request(partitions, "runs_assimilate", None, 0, 2)
    check_request(partitions, "runs_assimilate", "gpu", 0, 32)  # the larger of its two node kinds
    check_request(partitions, "runs_assimilate", "debug,big", 0, 100)
    check_request(parse_sinfo("odd* N/A (null)\n"), "runs_assimilate", None, 0, 1000)  # unknown: no check


def test_unknown_partition_is_refused_with_the_known_ones():
    with pytest.raises(ClusterCheckError, match=r"partition 'nope' does not exist.*big, debug, gpu"):
        check_request(parse_sinfo(SINFO), "train", "nope", 0)


def test_gpu_request_on_a_partition_without_gpus_names_the_gpu_partition():
    partitions = parse_sinfo(SINFO)
    with pytest.raises(ClusterCheckError, match=r"gpu=1, but partition debug has no GPUs.*one of gpu"):
        check_request(partitions, "train", None, 1)  # the default partition
    check_request(partitions, "train", "gpu", 1)
    check_request(partitions, "train", "debug,gpu", 2)
    check_request(partitions, "train", "big", 0)


def test_gpu_request_on_a_cpu_only_cluster_points_to_ignore_gpu():
    with pytest.raises(ClusterCheckError, match="--submitit-ignore-gpu"):
        check_request(parse_sinfo("debug* 2 (null)\n"), "pretrain", "debug", 1)


def test_sbatch_errors_get_a_hint_that_names_the_fix():
    account = "sbatch: error: Batch job submission failed: Invalid account or account/partition combination"
    assert "slurm_account" in explain_submission_error(account)
    memory = "sbatch: error: Batch job submission failed: Requested node configuration is not available"
    assert "mem_mb" in explain_submission_error(memory)
    assert explain_submission_error("something else entirely") == ""


# ---- the job command ---------------------------------------------------------------------------------


def test_command_runs_in_its_own_process_group_and_session(tmp_path):
    out = tmp_path / "ids"
    code = "import os; print(os.getpgid(0), os.getsid(0))"
    assert ShellCommand(f"{sys.executable} -c '{code}' > {out}")() == 0
    pgid, sid = map(int, out.read_text().split())
    assert pgid != os.getpgid(0)
    assert sid == pgid  # its shell leads a new session, so a cancel can kill the whole tree


def test_failing_command_raises_with_its_status():
    with pytest.raises(CommandFailedError, match="status 3"):
        ShellCommand("exit 3")()


def test_command_ignores_the_timeout_signal(tmp_path):
    # SLURM sends USR2 to every process of the job; only submitit's process may react to it.
    out = tmp_path / "survived"
    ShellCommand(f"kill -USR2 $$; echo yes > {out}")()
    assert out.read_text() == "yes\n"


def _read_state(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def test_checkpoint_stops_the_command_gracefully_and_resubmits_it(tmp_path):
    state, output = tmp_path / "state.json", tmp_path / "out.json"
    script = TOY / "resumable.py"
    command = CheckpointableShellCommand(
        f"{sys.executable} {script} --steps 4 --state {state} --output {output}", checkpoint_grace_s=10
    )
    failures: list[BaseException] = []

    def run() -> None:
        try:
            command()
        except CommandFailedError as error:
            failures.append(error)

    runner = threading.Thread(target=run)
    runner.start()
    wait_for(lambda: _read_state(state).get("step", 0) >= 1, 20, "the first step")
    delayed = command.checkpoint()
    runner.join(10)
    assert not runner.is_alive() and len(failures) == 1  # the interrupted start counts as failed
    saved = _read_state(state)
    assert 1 <= saved["step"] < 4 and saved["starts"] == 1 and not output.exists()
    # what submitit requeues: the same command, picklable (no process handle inside)
    again = cloudpickle.loads(cloudpickle.dumps(delayed))
    assert isinstance(again.function, CheckpointableShellCommand)
    assert again.function.command == command.command
    assert again.result() == 0
    assert _read_state(output) == {"step": 4, "starts": 2}


@pytest.mark.parametrize(
    ("rules", "resources", "expected"),
    [
        (["pretrain"], {}, True),  # listed in --submitit-checkpointable-rules
        (["assimilate"], {}, False),
        (["assimilate"], {"checkpointable": 1}, True),  # the resource opts in
        (["assimilate"], {"checkpointable": "yes"}, True),
        (["assimilate"], {"checkpointable": 0}, False),
        # a group job: its rules, and the resource summed over the jobs that run at once
        ({"assimilate", "pretrain"}, {}, True),
        ({"assimilate", "simulate"}, {"checkpointable": 2}, True),
        ({"assimilate", "simulate"}, {"checkpointable": 0}, False),
    ],
)
def test_a_job_or_a_group_is_checkpointable_when_any_of_its_rules_is(rules, resources, expected):
    from types import SimpleNamespace

    from snakemake_executor_plugin_submitit import Executor

    executor = SimpleNamespace(checkpointable_rules={"pretrain"})
    job = SimpleNamespace(rules=rules, resources=resources)
    assert Executor._is_checkpointable(executor, job) is expected


# ---- the plugin through snakemake --------------------------------------------------------------------


def test_snakemake_lists_the_plugin_and_its_settings():
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for flag in (
        "--submitit-cluster",
        "--submitit-folder",
        "--submitit-status-interval",
        "--submitit-ignore-gpu",
    ):
        assert flag in done.stdout


def test_toy_workflow_on_the_local_cluster(tmp_path):
    work = toy_workdir(tmp_path)
    done = snakemake(work, "--executor", "submitit", "--submitit-cluster", "local", *FAST_POLL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "results" / "sum.txt").read_text() == "5\n"  # 0 + 1 + 4
    logs = sorted((work / "logs" / "submitit" / "square").glob("*/*_0_log.out"))
    assert len(logs) == 3  # one folder per job, named by rule and job id


def test_slurm_cluster_without_slurm_commands_fails_with_the_fix(tmp_path):
    work = toy_workdir(tmp_path)
    tools = tmp_path / "bin"  # what Snakemake needs, but no sbatch or srun
    tools.mkdir()
    for tool in ("bash", "which"):
        (tools / tool).symlink_to(shutil.which(tool))
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--jobs", "1", "--executor", "submitit"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{tools}"},
    )
    assert done.returncode != 0
    assert "--submitit-cluster slurm needs SLURM's sbatch and srun on PATH" in done.stderr
    assert "has no attribute" not in done.stderr  # the status thread must not trip over a half-made executor


@pytest.mark.slow
def test_toy_workflow_on_the_debug_cluster(tmp_path):
    work = toy_workdir(tmp_path)
    done = snakemake(work, "--executor", "submitit", "--submitit-cluster", "debug", "--config", "squares=1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "results" / "sum.txt").read_text() == "0\n"


@pytest.mark.slow
def test_failing_job_is_reported_with_its_log_and_retried(tmp_path):
    failing = toy_workdir(tmp_path, "failing")
    args = [
        "--executor",
        "submitit",
        "--submitit-cluster",
        "local",
        *FAST_POLL,
        "--config",
        "squares=1",
        "flaky=1",
    ]
    done = snakemake(failing, *args)
    assert done.returncode != 0
    assert "flaky: failing on purpose" in done.stderr  # the tail of the job's log is shown
    assert str(failing / "logs" / "submitit" / "flaky") in done.stderr
    retried = toy_workdir(tmp_path, "retried")
    done = snakemake(retried, *args, "--retries", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (retried / "state" / "flaky.attempts").read_text().count("attempt") == 2
    assert (retried / "results" / "flaky.txt").read_text() == "ok\n"


@pytest.mark.slow
def test_ctrl_c_stops_every_job_process(tmp_path):
    work = toy_workdir(tmp_path)
    marker = work / "state" / "sleeper.starts"
    proc = start_snakemake(
        work, "--executor", "submitit", "--submitit-cluster", "local", *FAST_POLL, "--config", "sleep=300"
    )
    try:
        wait_for(marker.exists, 120, "the sleeper job to start")
        shell_pid = int(marker.read_text().split()[0])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()

    def gone() -> bool:
        try:
            os.kill(shell_pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, 15, f"the job's shell (pid {shell_pid}) to end")


@pytest.mark.slow
def test_timed_out_checkpointable_job_is_requeued_and_resumes(tmp_path):
    # submitit's local cluster sends USR2 30 s before the time limit (runtime 1 min): the job is stopped at
    # about step 25 of 40, requeued, and a later start completes the remaining steps. 40 steps of 1 s do
    # not fit one start's 30 s, so finishing proves that progress survived the requeue; on a loaded
    # machine slow starts can need a third start, which is still a correct resume.
    work = toy_workdir(tmp_path)
    done = snakemake(
        work,
        *["--executor", "submitit", "--submitit-cluster", "local", *FAST_POLL],
        *["--config", "squares=1", "resume_steps=40", "resume_runtime=1"],
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    state = _read_state(work / "results" / "resumed.json")
    assert state["step"] == 40 and 2 <= state["starts"] <= 3, state
    (log,) = (work / "logs" / "submitit" / "resumable").glob("*/*_0_log.err")
    assert "checkpoint requested" in log.read_text()


# ---- profiles ----------------------------------------------------------------------------------------


def test_slurm_profile_is_reachable_as_dash_dash_profile_slurm():
    link = REPO / "slurm"
    assert link.is_symlink() and link.resolve() == (REPO / "profiles" / "slurm").resolve()


@pytest.mark.parametrize("profile", ["slurm", "slurm-cpu"])
def test_every_profile_entry_is_commented(profile):
    lines = (REPO / "profiles" / profile / "config.yaml").read_text().splitlines()
    keys = [i for i, line in enumerate(lines) if line and not line[0].isspace() and not line.startswith("#")]
    assert keys, "empty profile"
    for i in keys:
        commented = "#" in lines[i] or (i > 0 and lines[i - 1].lstrip().startswith("#"))
        assert commented, f"profiles/{profile}/config.yaml line {i + 1} has no comment: {lines[i]!r}"


@pytest.mark.parametrize("profile", ["slurm", "slurm-cpu"])
def test_profile_is_valid_for_snakemake(profile, tmp_path):
    # a dry run parses every key of the profile as a command-line flag (plugin settings included)
    work = toy_workdir(tmp_path)
    done = snakemake(work, "--profile", str(REPO / "profiles" / profile), "-n")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "total" in done.stdout
