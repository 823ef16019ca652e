"""The submitit executor plugin on a real SLURM (``bash ../shared/tools/slurm-up.sh`` brings up a
single-node one): every job COMPLETED in sacct, outputs identical to a run without cluster, a failing job
retried, a job killed with scancel reported and retried, Ctrl-C leaves nothing queued, a too-short runtime
requeues a checkpointable job that then completes, clear errors for an unknown partition, for GPUs on a
CPU-only cluster and for what sbatch refuses, and config/test.yaml through the real Snakefile.

Skipped where ``sinfo`` does not answer, unless MASF_REQUIRE_SERVICES=1 (CI), which makes that a failure.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_executor_plugin import (
    REPO,
    result_files,
    snakemake,
    start_snakemake,
    toy_workdir,
    wait_for,
)

from masf import config as mc

pytestmark = pytest.mark.service

#: The CPU-only profile, with fast polling (the profile's values are meant for a shared cluster).
ON_SLURM = [
    "--profile",
    str(REPO / "profiles" / "slurm-cpu"),
    "--submitit-status-interval",
    "2",
    "--seconds-between-status-checks",
    "1",
]


def _slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="module", autouse=True)
def slurm() -> None:
    """Skip (or, with MASF_REQUIRE_SERVICES=1, fail) where no SLURM answers."""
    if _slurm_answers():
        return
    message = "no SLURM answers here (sinfo); `bash ../shared/tools/slurm-up.sh` brings up a local one"
    if os.environ.get("MASF_REQUIRE_SERVICES") == "1":
        pytest.fail(f"MASF_REQUIRE_SERVICES=1 but {message}")
    pytest.skip(message)


def job_ids(workdir: Path, rule: str) -> list[str]:
    """SLURM job ids of a rule's jobs, from their log folders (logs/submitit/<rule>/<id>), oldest first."""
    folder = workdir / "logs" / "submitit" / rule
    if not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir() if p.name.isdigit()), key=int)


def sacct_states(ids: list[str]) -> dict[str, list[str]]:
    """{job id: its states in sacct, one per start (requeues included), oldest first}."""
    done = subprocess.run(
        ["sacct", "-X", "-D", "-n", "-P", "-o", "JobID,State", "-j", ",".join(ids)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    states: dict[str, list[str]] = {i: [] for i in ids}
    for line in done.stdout.splitlines():
        job, state = line.split("|")
        states.setdefault(job, []).append(state.split()[0])
    return states


def wait_for_final_states(ids: list[str], timeout: float = 60) -> dict[str, list[str]]:
    """sacct states once no job is pending or running any more (the database may lag a few seconds)."""
    running = {"PENDING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED"}
    deadline = time.monotonic() + timeout
    while True:
        states = sacct_states(ids)
        if all(s and s[-1] not in running for s in states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(1)


def queued_ids() -> set[str]:
    """Ids of every job in squeue."""
    done = subprocess.run(
        ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=60, check=True
    )
    return set(done.stdout.split())


def test_toy_workflow_on_slurm_completes_with_local_outputs(tmp_path):
    work = toy_workdir(tmp_path, "slurm")
    # square asks for a GPU: the CPU-only profile drops the request instead of queueing for ever
    done = snakemake(work, *ON_SLURM, "--set-resources", "square:gpu=1", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ids = job_ids(work, "square") + job_ids(work, "total")
    assert len(ids) == 4
    assert wait_for_final_states(ids) == {i: ["COMPLETED"] for i in ids}
    local = toy_workdir(tmp_path, "local")
    assert snakemake(local, "--cores", "2").returncode == 0
    assert result_files(work) == result_files(local)
    # the resources reached sbatch (rule square: runtime=5, mem_mb=200, 1 thread, no GPU)
    script = (work / "logs" / "submitit" / "square" / ids[0] / f"{ids[0]}_submission.sh").read_text()
    for line in (
        "#SBATCH --time=5",
        "#SBATCH --mem=200MB",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --signal=USR2@90",
    ):
        assert line in script
    assert "gpu" not in script


def test_failing_job_is_retried_on_slurm(tmp_path):
    work = toy_workdir(tmp_path)
    done = snakemake(work, *ON_SLURM, "--retries", "1", "--config", "squares=1", "flaky=1", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ids = job_ids(work, "flaky")
    assert len(ids) == 2
    states = wait_for_final_states(ids)
    assert [states[i] for i in ids] == [["FAILED"], ["COMPLETED"]]


def test_job_killed_with_scancel_is_reported_and_retried(tmp_path):
    work = toy_workdir(tmp_path)
    marker = work / "state" / "sleeper.starts"
    proc = start_snakemake(work, *ON_SLURM, "--retries", "1", "--config", "squares=1", "sleep=300")
    try:
        wait_for(marker.exists, 120, "the sleeper job to start")
        (killed,) = job_ids(work, "sleeper")
        subprocess.run(["scancel", killed], check=True, timeout=60)
        assert proc.wait(240) == 0, (work / "snakemake.out").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    output = (work / "snakemake.out").read_text()
    assert f"submitit job {killed}" in output and "Error in rule sleeper" in output
    ids = job_ids(work, "sleeper")
    assert len(ids) == 2 and ids[0] == killed
    states = wait_for_final_states(ids)
    assert states[killed] == ["CANCELLED"] and states[ids[1]] == ["COMPLETED"]
    assert len(marker.read_text().split()) == 2


def test_ctrl_c_leaves_nothing_in_the_queue(tmp_path):
    work = toy_workdir(tmp_path)
    marker = work / "state" / "sleeper.starts"
    proc = start_snakemake(work, *ON_SLURM, "--retries", "0", "--config", "squares=3", "sleep=300")
    try:
        wait_for(marker.exists, 120, "the sleeper job to start")
        ours = set(job_ids(work, "sleeper")) | set(job_ids(work, "square"))
        assert ours & queued_ids()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    ours |= set(job_ids(work, "square")) | set(job_ids(work, "total"))
    wait_for(lambda: not (ours & queued_ids()), 60, f"jobs {sorted(ours)} to leave squeue")


#: Seconds a requeued job stays held before the test starts it (SLURM's own hold is about 2 min).
RELEASE_AFTER_S = 3.0


def _release_begin_time_holds(workdir: Path, rule: str, stop: threading.Event) -> None:
    """SLURM holds a requeued job for about 2 min (Reason=BeginTime); start the rule's jobs after 3 s instead.

    Not at once: slurmd refuses to launch a job whose credential is not newer (to the second) than the revocation
    of its previous run ("Job credential revoked"), and SLURM then fails the job (sacct: FAILED, exit 1).
    """
    held_since: dict[str, float] = {}
    while not stop.wait(0.5):
        for job in job_ids(workdir, rule):
            reason = subprocess.run(
                ["squeue", "-h", "-j", job, "-t", "PD", "-o", "%r"],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.strip()
            if reason != "BeginTime":
                held_since.pop(job, None)
                continue
            if time.monotonic() - held_since.setdefault(job, time.monotonic()) >= RELEASE_AFTER_S:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], timeout=60)
                held_since.pop(job)


#: Bundle 50 jobs of rule square into one SLURM job (group "sq"), one at a time on the 2-CPU node.
SQUARES_IN_GROUPS = ["--groups", "square=sq", "--group-components", "sq=50", "--resources", "group_slots=1"]


@pytest.mark.slow
def test_four_hundred_jobs_run_as_nine_slurm_jobs_with_the_right_outputs(tmp_path):
    work = toy_workdir(tmp_path)
    done = snakemake(work, *ON_SLURM, *SQUARES_IN_GROUPS, "--config", "squares=400", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    bundles, totals = job_ids(work, "sq_square"), job_ids(work, "total")
    assert len(bundles) == 8 and len(totals) == 1
    states = wait_for_final_states(bundles + totals)
    assert states == {i: ["COMPLETED"] for i in bundles + totals}
    # what a run without cluster writes (known answers: i^2 each, and their sum)
    squares = {f"square/{i}.txt": f"{i * i}\n".encode() for i in range(400)}
    assert result_files(work) == {**squares, "sum.txt": f"{sum(i * i for i in range(400))}\n".encode()}
    # a bundle asks for what runs at once (1 x 1 CPU, 1 x 200 MB) and its 50 jobs one after the other
    script = (
        work / "logs" / "submitit" / "sq_square" / bundles[0] / f"{bundles[0]}_submission.sh"
    ).read_text()
    for line in ("#SBATCH --cpus-per-task=1", "#SBATCH --mem=200MB", "#SBATCH --time=250"):
        assert line in script


@pytest.mark.slow
def test_a_failing_job_inside_a_group_is_retried_with_its_group(tmp_path):
    work = toy_workdir(tmp_path)
    grouped = ["--groups", "square=g", "flaky=g", "--group-components", "g=4", "--resources", "group_slots=2"]
    done = snakemake(
        work, *ON_SLURM, *grouped, "--retries", "1", "--config", "squares=3", "flaky=1", timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    bundles = job_ids(work, "g_flaky_square")
    assert len(bundles) == 2  # the first start of the bundle failed (flaky), its retry completed
    assert [s[-1] for s in wait_for_final_states(bundles).values()] == ["FAILED", "COMPLETED"]
    assert (work / "state" / "flaky.attempts").read_text().count("attempt") == 2
    assert (work / "results" / "flaky.txt").read_text() == "ok\n"
    assert (work / "results" / "sum.txt").read_text() == "5\n"


@pytest.mark.slow
def test_too_short_runtime_requeues_a_group_until_it_completes(tmp_path):
    # 60 steps of 1 s with a 2-minute limit and USR2 60 s before it: SLURM signals 30-60 s after the
    # start, so the first start is always interrupted; the job resumes from its state file under the
    # same job id (requeue), as often as needed. It shares one SLURM job (a group) with a square, which
    # cannot resume and starts over with each start. The plain job's requeue is tested on submitit's
    # local cluster (test_executor_plugin.py); here a bundle is requeued on a real SLURM.
    work = toy_workdir(tmp_path)
    stop = threading.Event()
    releaser = threading.Thread(
        target=_release_begin_time_holds, args=(work, "g_resumable_square", stop), daemon=True
    )
    releaser.start()
    try:
        done = snakemake(
            work,
            *ON_SLURM,
            *["--submitit-signal-delay", "60", "--retries", "0"],
            *["--groups", "resumable=g", "square=g", "--group-components", "g=2"],
            *["--set-resources", "square:runtime=1"],  # the bundle's limit: the longer of the two, 2 min
            *["--config", "squares=1", "resume_steps=60", "resume_runtime=2"],
            timeout=540,
        )
    finally:
        stop.set()
        releaser.join(10)
    assert done.returncode == 0, done.stderr[-3000:]
    state = (work / "results" / "resumed.json").read_text()
    assert '"step": 60' in state
    assert (work / "results" / "sum.txt").read_text() == "0\n"
    (job,) = job_ids(work, "g_resumable_square")
    states = wait_for_final_states([job])[job]
    assert states[-1] == "COMPLETED" and "REQUEUED" in states
    assert f'"starts": {len(states)}' in state  # one start per SLURM run of the same job id


def test_impossible_requests_fail_at_once_with_the_fix(tmp_path):
    work = toy_workdir(tmp_path)
    plain = ["--executor", "submitit", "--submitit-cluster", "slurm", "--config", "squares=1"]
    done = snakemake(work, *plain, "--default-resources", "slurm_partition=nope", timeout=120)
    assert done.returncode != 0
    assert "partition 'nope' does not exist on this cluster (sinfo lists: debug)" in done.stderr
    done = snakemake(work, *plain, "--set-resources", "square:gpu=1", timeout=120)
    assert done.returncode != 0
    assert "rule square asks for gpu=1, but partition debug has no GPUs" in done.stderr
    assert "--submitit-ignore-gpu" in done.stderr
    # more CPUs than the node has: sbatch would accept it and SLURM keep it pending for ever
    done = snakemake(work, *plain, "--set-threads", "square=3", timeout=120)
    assert done.returncode != 0
    assert "rule square asks for 3 CPUs, but the largest node of partition debug has 2" in done.stderr
    assert not (work / "logs" / "submitit").exists()  # nothing was submitted
    # sbatch itself refuses (more memory than the node has): its message and a hint naming the fix
    done = snakemake(work, *plain, "--set-resources", "square:mem_mb=100000", timeout=120)
    assert done.returncode != 0
    assert "submitit: submission of rule square failed" in done.stderr
    assert "Requested node configuration is not available" in done.stderr
    assert "lower threads, mem_mb or gpu" in done.stderr


@pytest.mark.slow
def test_pipeline_test_config_on_slurm(tmp_path):
    config = REPO / "config" / "test.yaml"
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    done = subprocess.run(
        # the profile bundles the classical runs and the simulations; two at a time on the 2-CPU node
        [
            *command,
            "--directory",
            str(tmp_path),
            "--configfile",
            str(config),
            *ON_SLURM,
            "--resources",
            "group_slots=2",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "results" / "metrics.nc").exists()
    ids = [i for rule in (tmp_path / "logs" / "submitit").iterdir() for i in job_ids(tmp_path, rule.name)]
    assert ids
    states = wait_for_final_states(ids)
    assert {i: s for i, s in states.items() if s != ["COMPLETED"]} == {}
    # the runs of the classical methods known from the start (10 evaluation runs, the tuned method's 8
    # tuning runs) went as one SLURM job, the tuned method's evaluation run (planned after its selection,
    # which runs on the submitting host) as a second, the 4 simulations as a third, and every score-based
    # run (a GPU job on a real cluster) as its own
    cfg = mc.load_validated(str(config))
    classical = [r for r in mc.runs(cfg) if not mc.is_score_based(cfg, r["method"])]
    assert len(classical) == 11 and len(mc.tuning_runs(cfg)) == 8
    assert len(job_ids(tmp_path, "runs_assimilate")) == 2
    assert len(job_ids(tmp_path, "simulations_simulate")) == 1
    assert len(job_ids(tmp_path, "assimilate")) == len(mc.runs(cfg)) - len(classical)
    assert not (tmp_path / "logs" / "submitit" / "tune").exists()  # a local rule


@pytest.mark.slow
def test_official_slurm_plugin_is_a_drop_in_fallback(tmp_path):
    # `--executor slurm` with the same profile and the same resource names
    pytest.importorskip(
        "snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm not installed"
    )
    work = toy_workdir(tmp_path, "official")
    fast = ["--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1"]
    done = snakemake(
        work,
        *["--profile", str(REPO / "profiles" / "slurm-cpu"), "--executor", "slurm", "--slurm-no-account"],
        *[*fast, "--set-resources", "square:slurm_extra='--mail-type=NONE'"],
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "results" / "sum.txt").read_text() == "5\n"
