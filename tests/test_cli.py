"""The ``masf`` command: help texts, one-off stage runs, determinism, atomic files, aggregation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from masf import cli
from masf import config as mc
from masf.aggregate import STATUS, aggregate, summary_table
from masf.io import atomic_path, read_dataset, write_dataset

REPO = Path(__file__).resolve().parents[1]
TEST_CONFIG = str(REPO / "config" / "test.yaml")
COMMANDS = ("validate", "simulate", "dataset", "pretrain", "assimilate", "aggregate", "figures")


def test_masf_help_lists_every_command():
    masf = Path(sys.executable).with_name("masf")
    command = [str(masf)] if masf.exists() else [sys.executable, "-m", "masf.cli"]
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for name in COMMANDS:
        assert name in done.stdout


def test_the_fast_exit_keeps_the_exit_status_and_every_line_of_piped_output(tmp_path):
    # `python -m masf.cli` leaves through os._exit (no interpreter teardown): the buffered streams of a
    # pipe must still be flushed, and main's status must be the process's (PYTHONUNBUFFERED would hide
    # a missing flush)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run(
        [sys.executable, "-m", "masf.cli", "validate", TEST_CONFIG],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0
    assert done.stdout.startswith(f"{TEST_CONFIG}: ok (")
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(TEST_CONFIG).read_text().replace("dtype: float32", "dtype: float16"))
    done = subprocess.run(
        [sys.executable, "-m", "masf.cli", "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("masf config error: dtype") and "float16" in done.stderr


def test_an_assimilate_job_imports_neither_scipy_nor_jsonschema():
    # each pipeline job is a process: what the assimilate command imports, every one of thousands pays
    code = (
        "import sys, masf.cli, masf.assimilate, masf.systems, masf.operators, masf.filters, masf.io; "
        "print(sorted({'scipy', 'jsonschema'} & {m.split('.')[0] for m in sys.modules}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: masf {name}")
    assert "--out" in out or name in ("validate", "figures")


def _simulate(tmp_path: Path, seed: int, name: str = "data.nc") -> Path:
    out = tmp_path / name
    argv = ["simulate", "--config", TEST_CONFIG, "--experiment", "l96", "--seed", str(seed)]
    assert cli.main([*argv, "--out", str(out), "--quiet"]) == 0
    return out


def _assimilate(tmp_path: Path, data: Path, method: str, name: str, spec: str | None = None) -> Path:
    out = tmp_path / name
    source = ["--spec", spec] if spec else ["--config", TEST_CONFIG, "--experiment", "l96"]
    source += [] if spec else ["--operator", "half", "--method", method]
    argv = ["assimilate", *source, "--data", str(data), "--seed", "0", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    return out


def test_simulate_is_deterministic_and_seeded(tmp_path):
    a = read_dataset(_simulate(tmp_path, 0, "a.nc"))
    b = read_dataset(_simulate(tmp_path, 0, "b.nc"))
    c = read_dataset(_simulate(tmp_path, 1, "c.nc"))
    assert a["truth"].shape == (6, 12) and a["obs_half"].shape == (6, 12)
    assert np.array_equal(a["truth"].values, b["truth"].values)
    assert np.array_equal(a["obs_half"].values, b["obs_half"].values)
    assert not np.allclose(a["truth"].values, c["truth"].values)
    # every_kth k=2: the unobserved entries are pure noise, the observed ones are truth + noise (σ = 1)
    err = a["obs_half"].values[:, ::2] - a["truth"].values[:, ::2]
    assert 0.3 < err.std() < 3.0
    assert list(a.time.values) == [2, 4, 6, 8, 10, 12]  # steps_per_cycle 2


def test_assimilate_one_off_run_file(tmp_path):
    data = _simulate(tmp_path, 0)
    run = read_dataset(_assimilate(tmp_path, data, "enkf", "enkf.nc"))
    again = read_dataset(_assimilate(tmp_path, data, "enkf", "enkf2.nc"))
    assert run.attrs["status"] == "ok"
    assert (run.attrs["experiment"], run.attrs["operator"], run.attrs["method"]) == ("l96", "half", "enkf")
    for name in ("truth", "mean", "spread", "rmse", "crps"):
        assert name in run
    assert np.isfinite(run["rmse"].values).all()
    assert np.array_equal(run["mean"].values, again["mean"].values)
    # the spec that made the run is kept, so the file says how it was produced
    assert json.loads(run.attrs["spec"])["method"] == {"filter": "enkf", "variant": "sqrt", "inflation": 1.02}


def test_diverging_filter_gives_status_diverged(tmp_path):
    data = _simulate(tmp_path, 0)
    cfg = mc.load_validated(TEST_CONFIG)
    cfg["methods"]["enkf"]["inflation"] = 1.0e20
    spec = mc.to_json(mc.assimilate_spec(cfg, "l96", "half", "enkf"))
    run = read_dataset(_assimilate(tmp_path, data, "enkf", "wild.nc", spec=spec))
    assert run.attrs["status"] == "diverged"
    assert np.isnan(run["rmse"].values[-1])


def test_bad_arguments_stop_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match="not valid JSON"):
        cli.main(["simulate", "--spec", "{oops", "--seed", "0", "--out", str(tmp_path / "x.nc")])
    with pytest.raises(SystemExit, match="--config needs --experiment"):
        cli.main(["simulate", "--config", TEST_CONFIG, "--seed", "0", "--out", str(tmp_path / "x.nc")])
    with pytest.raises(SystemExit, match="unknown experiment 'l63'; allowed: l96, kolmogorov"):
        argv = ["simulate", "--config", TEST_CONFIG, "--experiment", "l63", "--seed", "0"]
        cli.main([*argv, "--out", str(tmp_path / "x.nc")])
    assert not (tmp_path / "x.nc").exists()


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nc"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    # a dataset netCDF cannot store (a complex variable) fails without leaving a file behind
    bad = xr.Dataset({"z": (("x",), np.array([1 + 2j, 3 + 0j]))})
    with pytest.raises((TypeError, ValueError, RuntimeError)):
        write_dataset(bad, target)
    assert list(tmp_path.iterdir()) == []
    good = xr.Dataset({"a": (("x",), np.arange(3.0))}, attrs={"flag": True, "none": None})
    write_dataset(good, target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.nc"]
    back = read_dataset(target)
    assert back.attrs["flag"] == 1 and back.attrs["none"] == ""


def test_atomic_writes_fsync_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    import os

    import masf.io

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(masf.io.os, "fsync", fsync)
    monkeypatch.setattr(masf.io.os, "replace", replace)
    target = tmp_path / "out.txt"
    masf.io.write_text("done", target)
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert Path(events[0][1]).name.startswith(".out.txt.") and events[0][1].endswith(".tmp")
    assert events[1][1] == str(target) and events[2][1] == str(tmp_path)
    assert target.read_text() == "done"


def _fake_run(path: Path, rmse: list[float], status: str) -> None:
    n = len(rmse)
    ds = xr.Dataset(
        {
            "rmse": (("time",), np.array(rmse)),
            "spread": (("time",), np.full(n, 0.5)),
            "crps": (("time",), np.full(n, 0.2)),
        },
        coords={"time": np.arange(1, n + 1)},
        attrs={"status": status, "wall_clock_forecast_s": 1.0, "wall_clock_total_s": 3.0},
    )
    write_dataset(ds, path)


def test_aggregate_dims_nan_and_status(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = [
        {"experiment": "a", "operator": "o", "method": "good", "seed": 0},
        {"experiment": "a", "operator": "o", "method": "bad", "seed": 0},
        {"experiment": "b", "operator": "p", "method": "good", "seed": 3},
    ]
    _fake_run(Path(mc.RUN.format(**runs[0])), [1.0, 2.0, 3.0], "ok")
    _fake_run(Path(mc.RUN.format(**runs[1])), [1.0, np.nan, np.nan], "diverged")
    _fake_run(Path(mc.RUN.format(**runs[2])), [4.0, 4.0], "ok")
    bench = Path(mc.BENCHMARK.format(stage="assimilate", name="a/o/good/seed0"))
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\n7.5\t0:00:07\n")
    ds = aggregate(runs)
    assert dict(ds.sizes) == {"experiment": 2, "operator": 2, "method": 2, "seed": 2, "time": 3}
    good = ds.sel({"experiment": "a", "operator": "o", "method": "good", "seed": 0})
    assert float(good.rmse_mean) == pytest.approx(2.0)
    assert float(good.spread_skill) == pytest.approx(0.25)
    assert float(good.wall_clock_s) == 7.5  # the benchmark file wins over the run's own timer
    bad = ds.sel({"experiment": "a", "operator": "o", "method": "bad", "seed": 0})
    assert int(bad.status) == STATUS["diverged"] and np.isnan(float(bad.rmse_mean))
    other = ds.sel({"experiment": "b", "operator": "p", "method": "good", "seed": 3})
    assert float(other.wall_clock_s) == 3.0 and np.isnan(float(other.rmse.isel(time=2)))
    missing = ds.sel({"experiment": "b", "operator": "o", "method": "bad", "seed": 0})
    assert int(missing.status) == STATUS["not_run"] and np.isnan(missing.rmse.values).all()
    for name in ("rmse", "rmse_mean", "spread_skill", "wall_clock_s"):
        assert ds[name].attrs["long_name"] and "units" in ds[name].attrs
    assert "ssim_mean" not in ds  # no 2-D system in this sweep
    table = summary_table(ds)
    assert len(table) == 3
    row = table[(table.method == "bad")].iloc[0]
    assert row.diverged == 1 and np.isnan(row.rmse_mean)
    # the file opens with xarray alone
    write_dataset(ds, tmp_path / "metrics.nc")
    with xr.open_dataset(tmp_path / "metrics.nc") as back:
        assert back["status"].attrs["flag_meanings"] == "not_run ok diverged"


def test_a_truncated_or_missing_input_is_one_line_naming_the_file(tmp_path, capsys):
    data = _simulate(tmp_path, 0)
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(data.read_bytes()[:300])
    base = ["assimilate", "--config", TEST_CONFIG, "--experiment", "l96", "--operator", "half"]
    base += ["--method", "enkf", "--seed", "0", "--quiet"]
    cases = (
        (truncated, "cannot be read as NetCDF.*delete it and rerun"),
        (tmp_path / "absent.nc", "no such"),
    )
    for path, says in cases:
        out = tmp_path / "run.nc"
        assert cli.main([*base, "--data", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and re.search(says, err), err
        assert not out.exists()


def test_aggregate_reads_the_run_list_from_a_file_as_the_pipeline_passes_it(tmp_path, monkeypatch):
    """The pipeline passes the runs in a file (a command-line argument is capped at 128 KiB, ~1,200
    runs); the file gives the same metrics as --runs, and exactly one source of runs is required."""
    monkeypatch.chdir(tmp_path)
    runs = [{"experiment": "a", "operator": "o", "method": "m", "seed": s} for s in range(5)]
    for s, r in enumerate(runs):
        _fake_run(Path(mc.RUN.format(**r)), [1.0 + s, 2.0], "ok")
    listed = tmp_path / "runs.json"
    listed.write_text(json.dumps(runs))
    assert cli.main(["aggregate", "--runs-file", str(listed), "--jobs", "2", "--out", "a.nc"]) == 0
    assert cli.main(["aggregate", "--runs", json.dumps(runs), "--out", "b.nc"]) == 0
    a, b = read_dataset(tmp_path / "a.nc"), read_dataset(tmp_path / "b.nc")
    assert a.rmse_mean.values.ravel().tolist() == [1.5, 2.0, 2.5, 3.0, 3.5]
    assert a.identical(b)  # two reading processes give the same file as one
    with pytest.raises(SystemExit, match="exactly one of --runs JSON, --runs-file FILE, --config FILE"):
        cli.main(["aggregate", "--runs", "[]", "--runs-file", str(listed), "--out", "c.nc"])
    assert not (tmp_path / "c.nc").exists()
