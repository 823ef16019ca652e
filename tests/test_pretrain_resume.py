"""`masf pretrain` stopped by SIGTERM (a cluster timeout or preemption) resumes to the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from masf import cli
from masf import config as mc

REPO = Path(__file__).resolve().parents[1]


def _spec(epochs: int) -> dict:
    cfg = mc.load_validated(REPO / "config" / "test.yaml")
    cfg["methods"]["masf_bridge"]["pretrain_epochs"] = epochs
    return mc.pretrain_spec(cfg, "l96", "half", "masf_bridge")


def _pretrain(spec: dict, data: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "masf.cli", "pretrain", "--spec", json.dumps(spec), "--data", str(data)]
    command += ["--threads", "1", "--out", str(out), "--quiet"]
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_partial_checkpoint_is_named_by_the_spec():
    a, b = _spec(3), _spec(4)
    assert cli.partial_checkpoint("x.pt", a) == cli.partial_checkpoint("x.pt", dict(a))
    assert cli.partial_checkpoint("x.pt", a) != cli.partial_checkpoint("x.pt", b)
    assert cli.partial_checkpoint("x.pt", a).name.startswith("x.pt.")


def test_sigterm_then_rerun_gives_the_uninterrupted_weights(tmp_path):
    data = tmp_path / "snapshots.nc"
    argv = ["dataset", "--config", str(REPO / "config" / "test.yaml"), "--experiment", "l96"]
    assert cli.main([*argv, "--out", str(data), "--quiet"]) == 0
    spec = _spec(40)
    straight, resumed = tmp_path / "straight.pt", tmp_path / "resumed.pt"
    assert _pretrain(spec, data, straight).wait(timeout=600) == 0

    partial = cli.partial_checkpoint(str(resumed), spec)
    job = _pretrain(spec, data, resumed)
    deadline = time.monotonic() + 300
    while not partial.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, "training ended before it could be interrupted; raise the epochs"
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) == 128 + signal.SIGTERM
    assert partial.exists() and not resumed.exists()

    assert _pretrain(spec, data, resumed).wait(timeout=600) == 0
    assert resumed.exists() and not partial.exists()
    a = torch.load(straight, weights_only=True)["model"]
    b = torch.load(resumed, weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
