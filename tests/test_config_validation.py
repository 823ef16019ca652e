"""Config validation: malformed configs are refused with one line naming the key path, before any job.

Each malformed config goes through ``masf.config.validate``, the ``masf validate`` command and
``snakemake -n`` (slow: one Snakemake start per case), and nothing may be written.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from masf import cli
from masf import config as mc

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "config" / "test.yaml").read_text())


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """A mutation that sets the dotted key ``path`` to ``value``."""

    def mutate(cfg: dict) -> None:
        *parents, last = path.split(".")
        node = cfg
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


def _delete(path: str) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        *parents, last = path.split(".")
        node = cfg
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


def _rename_experiment(cfg: dict) -> None:
    cfg["experiments"]["l/96"] = cfg["experiments"].pop("l96")


def _masf_on_sigmoid(cfg: dict) -> None:
    cfg["methods"]["masf_bridge"] = {"filter": "masf", "sampler": "bridge"}
    cfg["experiments"]["kolmogorov"]["operators"]["sigmoid"]["methods"].append("masf_bridge")


def _misspell_filter(cfg: dict) -> None:
    cfg["methods"]["enkf"]["filtr"] = cfg["methods"]["enkf"].pop("filter")


def _snapshots_beyond_the_pretrain_memory(cfg: dict) -> None:
    # 200 snapshots of 2 x 32 x 32 float32 = 1.6 MB: they fit the dataset job, not a 1 MB pretrain job
    cfg["experiments"]["kolmogorov"]["dataset"]["samples"] = 200
    cfg["resources"]["pretrain"]["mem_mb"] = 1


def _ensf_on_the_grid_mask(cfg: dict) -> None:
    # nfe 20 is fine on l96 (noise_std 1.0) and diverges on the grid mask's noise_std 0.1
    cfg["experiments"]["kolmogorov"]["methods"].append("ensf")


def _hybrid_with_fine_tuning(cfg: dict) -> None:
    cfg["methods"]["masf_hybrid"] = {"filter": "masf", "hybrid": True}  # finetune_epochs defaults to 120


def _residual_beyond_the_dense_limit(cfg: dict) -> None:
    cfg["methods"]["masf_residual"] = {"filter": "masf", "gaussian_residual": True}
    cfg["experiments"]["kolmogorov"]["system"]["n"] = 64  # 2 x 64 x 64 = 8192 entries
    cfg["experiments"]["kolmogorov"]["methods"].append("masf_residual")


def test_the_hybrid_alone_is_accepted_beyond_the_dense_limit():
    """``hybrid: true`` is matrix-free above 2048 entries; only the Gaussian residual is dense."""
    cfg = copy.deepcopy(BASE)
    cfg["methods"]["masf_hybrid"] = {"filter": "masf", "hybrid": True, "finetune_epochs": 0}
    cfg["experiments"]["kolmogorov"]["system"]["n"] = 64
    cfg["experiments"]["kolmogorov"]["methods"].append("masf_hybrid")
    mc.validate(cfg)


# (id, mutation, text the one-line error must contain)
BAD: list[tuple[str, Callable[[dict], None], str]] = [
    ("unknown-top-key", _set("bogus", 1), "(top level): unknown key 'bogus'"),
    ("unknown-experiment-key", _set("experiments.l96.cycels", 3), "experiments.l96: unknown key 'cycels'"),
    ("cycles-wrong-type", _set("experiments.l96.cycles", "ten"), "experiments.l96.cycles: 'ten'"),
    ("cycles-zero", _set("experiments.l96.cycles", 0), "experiments.l96.cycles: 0"),
    ("ensemble-negative", _set("experiments.l96.ensemble_size", -4), "experiments.l96.ensemble_size"),
    ("ensemble-one", _set("experiments.l96.ensemble_size", 1), "experiments.l96.ensemble_size: 1"),
    ("seeds-empty", _set("experiments.l96.seeds", []), "experiments.l96.seeds: [] should be non-empty"),
    ("seeds-repeated", _set("experiments.l96.seeds", [1, 1]), "experiments.l96.seeds"),
    ("steps-per-cycle-zero", _set("experiments.l96.steps_per_cycle", 0), "experiments.l96.steps_per_cycle"),
    ("unknown-system", _set("experiments.l96.system.name", "lorenz99"), "experiments.l96.system.name"),
    (
        "unknown-system-parameter",
        _set("experiments.l96.system.dims", 40),
        "experiments.l96.system.dims: unknown parameter of system 'lorenz96' (did you mean 'dim'?); allowed: dim, dt",
    ),
    ("unknown-operator", _set("experiments.l96.operators.half.operator", "blur"), "operators.half.operator"),
    (
        "speed-on-lorenz96",
        _set("experiments.l96.operators.half", {"operator": "speed", "noise_std": 0.1}),
        "experiments.l96.operators.half.operator: 'speed' does not fit system 'lorenz96'",
    ),
    (
        "center-mask-on-lorenz96",
        _set(
            "experiments.l96.operators.half", {"operator": "center_mask", "hole_ratio": 0.5, "noise_std": 1}
        ),
        "experiments.l96.operators.half.operator: 'center_mask' does not fit",
    ),
    (
        "operator-parameter-of-another-operator",
        _set("experiments.l96.operators.half.stride", 2),
        "experiments.l96.operators.half.stride: unknown parameter of operator 'every_kth'; allowed: k, offset",
    ),
    ("noise-missing", _delete("experiments.l96.operators.half.noise_std"), "'noise_std' is a required"),
    ("noise-negative", _set("experiments.l96.operators.half.noise_std", -1.0), "operators.half.noise_std"),
    ("unknown-filter", _set("methods.enkf.filter", "kalman"), "methods.enkf.filter: 'kalman' is not allowed"),
    ("unknown-method-in-experiment", _set("experiments.l96.methods", ["enkf", "var3d"]), "unknown method"),
    (
        "unknown-hyper-parameter",
        _set("methods.enkf.inflaton", 1.1),
        "methods.enkf.inflaton: unknown parameter of filter 'enkf' (did you mean 'inflation'?); allowed: center",
    ),
    ("hyper-parameter-out-of-range", _set("methods.enkf.inflation", 0.5), "methods.enkf.inflation: 0.5"),
    ("hyper-parameter-bad-choice", _set("methods.enkf.variant", "cholesky"), "one of sqrt, pertobs"),
    ("hyper-parameter-wrong-type", _set("methods.letkf.radius", "far"), 'methods.letkf.radius: "far"'),
    ("name-with-slash", _rename_experiment, "must match"),
    (
        "kolmogorov-odd-grid",
        _set("experiments.kolmogorov.system.n", 33),
        "experiments.kolmogorov.system.n: 33",
    ),
    ("masf-bridge-on-sigmoid", _masf_on_sigmoid, "needs a linear operator"),
    (
        "levels-the-grid-cannot-take",  # kolmogorov n = 32 halves at most 5 times; 7 levels would need 64 | 32
        _set("methods.masf_nonlinear.levels", 7),
        "methods.masf_nonlinear.levels: the dual_unet2d of experiment 'kolmogorov' halves its grid (32, 32) 6 "
        "times (7 levels), but (32, 32) is not divisible by 2^6 = 64",
    ),
    (
        "levels-on-an-mlp",  # l96 with dim 12 gets an mlp
        _set("methods.sf.levels", 2),
        "methods.sf.levels: 2 is invalid for experiment 'l96': its state (12,) gets an mlp",
    ),
    (
        "dataset-per-trajectory-not-dividing",
        _set("experiments.l96.dataset.per_trajectory", 5),
        "experiments.l96.dataset.per_trajectory: 5 does not divide samples = 64",
    ),
    (
        "replay-one",
        _set("methods.masf_bridge.finetune_replay", 1.0),
        "methods.masf_bridge.finetune_replay: 1.0",
    ),
    ("x0-uncertainty-bad", _set("methods.masf_bridge.x0_uncertainty", "jacobian"), "one of pathwise, none"),
    ("threads-zero", _set("resources.assimilate.threads", 0), "resources.assimilate.threads: 0"),
    ("unknown-stage", _set("resources.train", {"threads": 1}), "resources: unknown key 'train'"),
    ("unknown-device", _set("device", "tpu"), "device: 'tpu' is not allowed; allowed: auto, cpu, cuda"),
    ("no-experiments", _set("experiments", {}), "experiments"),
    (
        "cycles-integral-float",
        _set("experiments.l96.cycles", 6.0),
        "experiments.l96.cycles: 6.0 is a float; write 6",
    ),
    (
        "seed-integral-float",
        _set("experiments.l96.seeds", [0.0]),
        "experiments.l96.seeds.0: 0.0 is a float; write 0",
    ),
    (
        "nfe-integral-float",
        _set("methods.masf_bridge.nfe", 10.0),
        "methods.masf_bridge.nfe: 10.0 is a float; write 10",
    ),
    (
        "noise-nan",
        _set("experiments.l96.operators.half.noise_std", float("nan")),
        "experiments.l96.operators.half.noise_std: nan is not a finite number",
    ),
    (
        "inflation-inf",
        _set("methods.letkf.inflation", float("inf")),
        "methods.letkf.inflation: inf is not a finite",
    ),
    (
        "offset-not-below-stride",
        _set("experiments.kolmogorov.operators.grid.offset", 8),
        "experiments.kolmogorov.operators.grid.offset: 8 is not smaller than stride = 8; allowed: 0 .. 7",
    ),
    ("l96-too-small", _set("experiments.l96.system.dim", 3), "experiments.l96.system.dim: 3 is too small"),
    (
        "k-beyond-the-state",
        _set("experiments.l96.operators.half.k", 40),
        "experiments.l96.operators.half.k: 40 is larger than the state (12 entries)",
    ),
    (
        "unet2d-on-a-vector",
        _set("methods.sf.network", "unet2d"),
        "methods.sf.network: unet2d cannot take the state (12,) of experiment 'l96'; allowed: auto, mlp, unet1d",
    ),
    (
        "grid-the-default-unet-cannot-take",
        _set("experiments.kolmogorov.system.n", 34),
        "the unet2d of experiment 'kolmogorov' halves its grid (34, 34) 2 times (3 levels), but (34, 34) is not",
    ),
    (
        "ensemble-beyond-the-job-memory",  # 2 x 30M members x 12 floats = 2.7 GiB > 2000 MB
        _set("experiments.l96.ensemble_size", 30_000_000),
        "experiments.l96.ensemble_size: 30000000 needs at least 2,747 MB (two ensembles of 12 float32 entries), "
        "more than resources.assimilate.mem_mb = 2000",
    ),
    (
        "dataset-beyond-the-job-memory",
        _set("experiments.kolmogorov.dataset.samples", 200_000),
        "experiments.kolmogorov.dataset.samples: 200000 needs at least 1,562 MB",
    ),
    (
        "snapshots-beyond-the-pretrain-memory",
        _snapshots_beyond_the_pretrain_memory,
        "experiments.kolmogorov.dataset.samples: 200 needs at least 2 MB (snapshots of 2,048 float32 entries), "
        "more than resources.pretrain.mem_mb = 1",
    ),
    (
        "required-key-misspelt",
        _misspell_filter,
        "methods.enkf: required key 'filter' is missing; 'filtr' looks like a typo of it",
    ),
    (
        "options-fine-alone-unstable-together",
        _ensf_on_the_grid_mask,
        "methods.ensf.nfe: 20 is unstable with experiments.kolmogorov.operators.grid.noise_std = 0.1 (EnSF's "
        "Euler step overshoots the likelihood, docs/ensf.md); allowed: nfe >= 80, or a larger noise_std",
    ),
    ("typo-did-you-mean", _set("experiments.l96.cycels", 3), "unknown key 'cycels' (did you mean 'cycles'?)"),
    (
        "parameter-typo-did-you-mean",
        _set("methods.letkf.radus", 3.0),
        "methods.letkf.radus: unknown parameter of filter 'letkf' (did you mean 'radius'?)",
    ),
    (
        "method-name-typo-did-you-mean",
        _set("experiments.l96.methods", ["enkf", "letfk"]),
        "experiments.l96.methods[1]: unknown method 'letfk' (did you mean 'letkf'?)",
    ),
    # tuning (docs/tuning.md)
    (
        "tuning-without-tuning-seeds",
        _delete("experiments.l96.tuning_seeds"),
        "experiments.l96.tuning_seeds: missing, but method 'letkf_tuned' lists values to tune, which need "
        "seeds apart from the evaluation seeds; add e.g. tuning_seeds: [1, 2]",
    ),
    (
        "tuning-on-evaluation-seeds",
        _set("experiments.l96.tuning_seeds", [3, 0]),
        "experiments.l96.tuning_seeds: 0 is also an evaluation seed; allowed: seeds not in experiments.l96.seeds",
    ),
    (
        "tuned-value-out-of-range",
        _set("methods.letkf_tuned.inflation", [1.1, 0.9]),
        "methods.letkf_tuned.inflation[1]: 0.9 is invalid; allowed: a number >= 1",
    ),
    (
        "tuned-integral-float",
        _set("methods.ensf.nfe", [20, 40.0]),
        "methods.ensf.nfe[1]: 40.0 is a float; write 40 (an integer)",
    ),
    (
        "tuned-value-repeated",
        _set("methods.letkf_tuned.radius", [2.0, 3.0, 2.0]),
        "methods.letkf_tuned.radius[2]: 2.0 is listed twice; list each value once",
    ),
    (
        "tuned-list-empty",
        _set("methods.letkf_tuned.radius", []),
        "methods.letkf_tuned.radius: [] is an empty list of values to tune; give at least one value",
    ),
    (
        "tuned-key-typo",
        _set("methods.letkf_tuned.radus", [1.0, 2.0]),
        "methods.letkf_tuned.radus: unknown parameter of filter 'letkf' (did you mean 'radius'?)",
    ),
    (
        "tuning-grid-too-large",
        _set(
            "methods.letkf_tuned",
            {
                "filter": "letkf",
                "radius": list(range(1, 41)),
                "inflation": [1.0 + i / 100 for i in range(30)],
            },
        ),
        "methods.letkf_tuned: the lists make 1,200 variants (30 inflation x 40 radius); allowed: at most 1,000",
    ),
    (
        "hybrid-with-fine-tuning",
        _hybrid_with_fine_tuning,
        "methods.masf_hybrid.finetune_epochs: 120 does not fit hybrid: true (the forecast enters through the "
        "hybrid prior); allowed: 0",
    ),
    (
        "hybrid-key-without-hybrid",
        _set("methods.masf_bridge.radius", 3.0),
        "methods.masf_bridge.radius: applies to the hybrid prior only; set methods.masf_bridge.hybrid: true",
    ),
    (
        "residual-beyond-the-dense-limit",
        _residual_beyond_the_dense_limit,
        "method 'masf_residual' sets gaussian_residual: true, whose dense D×D climatology covariance supports "
        "states of at most 2048 entries, but experiment 'kolmogorov' has 8192",
    ),
    ("tuning-metric-unknown", _set("tuning", {"metric": "rmse"}), "tuning.metric: 'rmse' is not allowed"),
    (
        "tuning-metric-of-2d-fields-on-a-vector",
        _set("tuning", {"metric": "ssim_mean"}),
        "tuning.metric: ssim_mean is defined for 2-D fields only, but experiment 'l96' tunes 'letkf_tuned'",
    ),
]
IDS = [case[0] for case in BAD]


def _bad_config(mutate: Callable[[dict], None]) -> dict:
    cfg = copy.deepcopy(BASE)
    mutate(cfg)
    return cfg


def test_ensf_with_a_noise_std_out_of_its_reach_is_refused_without_searching_for_ever():
    cfg = copy.deepcopy(BASE)
    cfg["experiments"]["l96"]["operators"]["half"]["noise_std"] = 1e-4  # a stable nfe: about 5e7
    with pytest.raises(mc.ConfigError) as info:
        mc.validate(cfg)
    assert str(info.value) == (
        "methods.ensf.nfe: 20 is unstable with experiments.l96.operators.half.noise_std = 0.0001 (EnSF's "
        "Euler step overshoots the likelihood, docs/ensf.md); allowed: a larger noise_std (a stable nfe "
        "would be above 131,072)"
    )


def test_there_are_enough_cases():
    assert len(BAD) >= 15
    assert len(set(IDS)) == len(IDS)


@pytest.mark.parametrize(("case", "mutate", "expected"), BAD, ids=IDS)
def test_validate_refuses_with_one_line(case, mutate, expected):
    with pytest.raises(mc.ConfigError) as info:
        mc.validate(_bad_config(mutate))
    message = str(info.value)
    assert expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize(("case", "mutate", "expected"), BAD, ids=IDS)
def test_masf_validate_command_refuses(case, mutate, expected, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_bad_config(mutate)))
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("masf config error: ") and expected in err
    assert len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def _snakemake_dry_run(config: Path, workdir: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile")]
    return subprocess.run(
        [*command, "--configfile", str(config), "--directory", str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize(("case", "mutate", "expected"), BAD, ids=IDS)
def test_snakemake_refuses_before_any_job(case, mutate, expected, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_bad_config(mutate)))
    work = tmp_path / "work"
    work.mkdir()
    done = _snakemake_dry_run(path, work)
    assert done.returncode != 0
    lines = [line for line in (done.stderr + done.stdout).splitlines() if "masf config error: " in line]
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert not (work / "results").exists()


def test_snakemake_refuses_a_bad_config_quick(tmp_path):
    """One case outside the slow set, so that the plain test run covers the Snakefile's check."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_bad_config(_set("experiments.l96.seeds", []))))
    done = _snakemake_dry_run(path, tmp_path)
    assert done.returncode != 0
    assert "masf config error: experiments.l96.seeds: [] should be non-empty" in done.stderr
    assert not (tmp_path / "results").exists()


DUPLICATE = (
    (REPO / "config" / "test.yaml")
    .read_text()
    .replace(
        "  enkf: {filter: enkf, variant: sqrt, inflation: 1.02}\n",
        "  enkf: {filter: enkf, variant: sqrt, inflation: 1.02}\n  enkf: {filter: enkf, variant: pertobs}\n",
    )
)


def test_a_key_given_twice_is_refused_by_validate_and_by_snakemake(tmp_path, capsys):
    """Plain YAML keeps the last of two equal keys silently (here: a second method named enkf)."""
    assert DUPLICATE.count("  enkf: {") == 2
    path = tmp_path / "dup.yaml"
    path.write_text(DUPLICATE)
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "key 'enkf' is given twice in one mapping (first on line 19" in err and "line 20" in err, err
    done = _snakemake_dry_run(path, tmp_path)
    assert done.returncode != 0 and "key 'enkf' is given twice" in done.stderr
    assert not (tmp_path / "results").exists()


def test_merge_keys_may_still_be_overridden(tmp_path):
    """`<<: *anchor` then a key of the anchor is YAML's override, not a duplicate (the shipped configs use it)."""
    path = tmp_path / "merge.yaml"
    path.write_text("a: &base {x: 1, y: 2}\nb: {<<: *base, y: 3}\n")
    assert mc.load(path) == {"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 3}}


def test_yaml_syntax_error_is_one_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("experiments: {l96: [\n")
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not valid YAML" in err and len(err.splitlines()) == 1


def test_memory_bounds_count_states() -> None:
    """Known answer: 2N states per assimilate job, the snapshots per dataset and pretrain job."""
    cfg = mc.load_validated(REPO / "config" / "paper.yaml")
    bounds = mc.memory_bounds_mb(cfg, cfg["experiments"]["kolmogorov512"])
    state_mb = 2 * 512 * 512 * 4 / 2**20  # 2 MiB per float32 velocity field
    assert bounds == pytest.approx(
        {"assimilate": 80 * state_mb, "dataset": 1000 * state_mb, "pretrain": 1000 * state_mb}
    )


@pytest.mark.parametrize(
    "name", ["test.yaml", "sweep.yaml", "paper.yaml", "../benchmarks/highdim/smoke.yaml"]
)
def test_shipped_configs_are_valid(name):
    cfg = mc.load_validated(REPO / "config" / name)
    assert mc.runs(cfg)
    # defaults are filled in: every stage has every resource
    for stage in ("simulate", "dataset", "pretrain", "assimilate", "aggregate", "figures"):
        assert set(cfg["resources"][stage]) == {"threads", "mem_mb", "runtime", "gpu"}
    for exp in cfg["experiments"].values():
        assert exp["steps_per_cycle"] >= 1 and "samples" in exp["dataset"]


def test_defaults_do_not_touch_the_input():
    cfg = copy.deepcopy(BASE)
    out = mc.validate(cfg)
    assert cfg == BASE
    assert out["experiments"]["l96"]["spinup_steps"] is None
    assert out["resources"]["assimilate"]["gpu"] == 0


def test_sf_and_ssls_train_one_network_per_experiment_masf_one_per_operator():
    """SF's and SSLS's losses do not involve the operator: the second operator reuses the first's
    checkpoint; MASF's forward process is the operator's, so each operator trains its own."""
    cfg = mc.load_validated(REPO / "config" / "test.yaml")
    owners = mc.checkpoint_owners(cfg)
    exp = cfg["experiments"]["kolmogorov"]
    first, second = list(exp["operators"])[:2]
    cfg["experiments"]["kolmogorov"]["operators"][second]["methods"] = ["sf", "masf_bridge", "enkf"]
    owners = mc.checkpoint_owners(cfg)
    assert owners[("kolmogorov", second, "sf")] == (first, "sf")
    assert owners[("kolmogorov", second, "masf_bridge")] == (second, "masf_bridge")
    jobs = {(j["operator"], j["method"]) for j in mc.pretrain_jobs(cfg) if j["experiment"] == "kolmogorov"}
    assert (second, "sf") not in jobs and (first, "sf") in jobs and (second, "masf_bridge") in jobs
    assert "operator" not in mc.pretrain_spec(cfg, "kolmogorov", first, "sf")
    assert "operator" in mc.pretrain_spec(cfg, "kolmogorov", first, "masf_bridge")


def test_pretraining_jobs_only_for_score_based_methods():
    cfg = mc.load_validated(REPO / "config" / "sweep.yaml")
    jobs = mc.pretrain_jobs(cfg)
    assert jobs and all(mc.is_score_based(cfg, j["method"]) for j in jobs)
    # an operator runs only the methods it lists, and pretrains only those that need its own network;
    # a tuned method's checkpoint is owned by its first variant (the variants differ in sampling keys)
    for e, exp in cfg["experiments"].items():
        for o, op in exp["operators"].items():
            listed = set(op.get("methods", exp["methods"]))
            assert set(mc.methods_for(cfg, e, o)) == listed
            runs = {v for m in listed for v in mc.variants_of(cfg, m)}
            assert {j["method"] for j in jobs if (j["experiment"], j["operator"]) == (e, o)} <= runs
    tuned_owners = [(j["experiment"], j["operator"], j["method"]) for j in jobs if "@" in j["method"]]
    assert tuned_owners, "the shipped sweep tunes a score-based method"
    assert len(tuned_owners) == len({(e, o, m.split("@", 1)[0]) for e, o, m in tuned_owners})


def test_masf_bridge_and_reference_share_one_checkpoint():
    cfg = mc.load_validated(REPO / "config" / "sweep.yaml")
    owners = mc.checkpoint_owners(cfg)
    assert owners[("l96", "every2", "masf_reference_mlp")] == ("every2", "masf_bridge_mlp")
    assert owners[("l96", "every2", "sf_mlp")] == ("every2", "sf_mlp")
    jobs = [(j["experiment"], j["operator"], j["method"]) for j in mc.pretrain_jobs(cfg)]
    assert ("l96", "every2", "masf_bridge_mlp") in jobs and (
        "l96",
        "every2",
        "masf_reference_mlp",
    ) not in jobs
    run = next(r for r in mc.runs(cfg) if r["method"] == "masf_reference_mlp")
    assert (run["checkpoint_operator"], run["checkpoint_method"]) == ("every2", "masf_bridge_mlp")
    assert next(r for r in mc.runs(cfg) if r["method"] == "enkf")["checkpoint_method"] is None
    # MASF in scratch mode or with the Gaussian score model loads no network: no checkpoint, no job
    cfg["methods"]["masf_scratch"] = {**cfg["methods"]["masf_bridge_mlp"], "scratch": True}
    cfg["methods"]["masf_gauss"] = {**cfg["methods"]["masf_bridge_mlp"], "score_model": "gaussian"}
    cfg["experiments"]["l96"]["methods"] += ["masf_scratch", "masf_gauss"]
    assert not mc.needs_pretraining(cfg, "masf_scratch") and not mc.needs_pretraining(cfg, "masf_gauss")
    assert mc.is_score_based(cfg, "masf_scratch") and mc.needs_pretraining(cfg, "sf_mlp")
    assert {
        r["checkpoint_method"] for r in mc.runs(cfg) if r["method"] in ("masf_scratch", "masf_gauss")
    } == {None}
    assert not any(j["method"] in ("masf_scratch", "masf_gauss") for j in mc.pretrain_jobs(cfg))
    # a training key of its own gives the reference sampler its own checkpoint
    cfg["methods"]["masf_reference_mlp"]["width"] = 48
    assert mc.checkpoint_owners(cfg)[("l96", "every2", "masf_reference_mlp")] == (
        "every2",
        "masf_reference_mlp",
    )
    # the nonlinear sampler trains a dual-head network: never shared with the linear samplers
    cfg["methods"]["masf_nonlinear"] = {**cfg["methods"]["masf_bridge_mlp"], "sampler": "nonlinear"}
    assert mc.pretrain_spec(cfg, "l96", "every2", "masf_nonlinear") != mc.pretrain_spec(
        cfg, "l96", "every2", "masf_bridge_mlp"
    )


def test_sampling_parameters_do_not_change_the_pretraining_spec():
    cfg = mc.load_validated(REPO / "config" / "sweep.yaml")
    before = mc.pretrain_spec(cfg, "l96", "every2", "masf_bridge")
    cfg["methods"]["masf_bridge"]["nfe"] = 7
    assert mc.pretrain_spec(cfg, "l96", "every2", "masf_bridge") == before
    assert mc.assimilate_spec(cfg, "l96", "every2", "masf_bridge")["method"]["nfe"] == 7
    cfg["methods"]["masf_bridge"]["pretrain_epochs"] = 3
    assert mc.pretrain_spec(cfg, "l96", "every2", "masf_bridge") != before


def test_config_module_does_not_import_torch():
    code = "import sys, masf.config, masf.cli; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ---- the static parameter tables match the real classes ---------------------------------------------


def _init_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


@pytest.mark.parametrize("name", sorted(mc.FILTER_PARAMS))
def test_filter_table_matches_dataclass_fields(name):
    from masf.filters import FILTERS

    module, cls_name = FILTERS[name]
    cls = getattr(importlib.import_module(module), cls_name)  # a missing module is a failure
    assert set(mc.FILTER_PARAMS[name]) == _init_fields(cls)
    assert set(mc.SAMPLING_ONLY.get(name, ())) <= set(mc.FILTER_PARAMS[name])


def test_filter_choices_match_the_filters():
    from masf.diffusion import samplers
    from masf.filters import enkf, ensf, localization, masf, particle

    assert set(mc.FILTER_PARAMS["masf"]["sampler"]) == set(samplers.SAMPLERS)
    assert set(mc.FILTER_PARAMS["masf"]["eval_time"]) == set(masf.EVAL_TIMES)
    assert set(mc.FILTER_PARAMS["masf"]["score_model"]) == set(masf.SCORE_MODELS)

    assert set(mc.FILTER_PARAMS["enkf"]["variant"]) == set(enkf.VARIANTS)
    assert set(mc.FILTER_PARAMS["enkf"]["mode"]) == set(enkf.MODES)
    assert set(mc.FILTER_PARAMS["letkf"]["taper"]) == set(localization.TAPERS)
    assert set(mc.FILTER_PARAMS["pf"]["resampling"]) == set(particle.RESAMPLING)
    assert set(mc.FILTER_PARAMS["ensf"]["prior_score"]) == set(ensf.PRIOR_SCORES)


def test_score_choices_match_the_networks_and_normalizer():
    from masf.diffusion import normalizer
    from masf.filters import score_common

    assert set(mc.NETWORK_CHOICES) == set(score_common.NETWORK_CHOICES)
    assert set(mc.FILTER_PARAMS["sf"]["norm_form"]) == set(normalizer.FORMS)
    assert set(mc.FILTER_PARAMS["sf"]["norm_update"]) == set(normalizer.UPDATES)


def test_system_table_matches_dataclass_fields():
    from masf.systems import SYSTEMS, LinearGaussian, Lorenz63, Lorenz96
    from masf.systems.kolmogorov import Kolmogorov

    assert set(mc.SYSTEM_PARAMS) == set(SYSTEMS) == set(mc.SYSTEM_DIMS)
    assert set(mc.SYSTEM_PARAMS["lorenz63"]) == _init_fields(Lorenz63)
    assert set(mc.SYSTEM_PARAMS["lorenz96"]) == _init_fields(Lorenz96)
    assert set(mc.SYSTEM_PARAMS["kolmogorov"]) == _init_fields(Kolmogorov)
    default_args = set(inspect.signature(LinearGaussian.default).parameters)
    assert set(mc.SYSTEM_PARAMS["linear_gaussian"]) == _init_fields(LinearGaussian) | default_args


def test_operator_table_matches_the_builders():
    import masf.operators as ops

    assert set(mc.OPERATOR_PARAMS) == set(ops.OPERATORS) == set(mc.OPERATOR_DIMS)
    for name, builder in ops._BUILDERS.items():
        params = set(inspect.signature(builder).parameters) - {"state_shape", "noise_std"}
        assert set(mc.OPERATOR_PARAMS[name]) == params, name


def test_operator_fit_and_linearity_match_the_operators():
    """Every operator the table allows for a state kind builds; every one it refuses raises."""
    import torch

    import masf.operators as ops

    example = {"mask": {}, "grid_mask": {"stride": 2}, "center_mask": {"hole_ratio": 0.5}}
    example |= {"random_mask": {"fraction": 0.5, "seed": 0}, "every_kth": {"k": 2}, "identity": {}}
    example |= {"sigmoid": {"alpha": 2.0}, "arctan": {}, "speed": {}}
    shapes = {1: (8,), 2: (2, 8, 8)}
    for name, params in example.items():
        for dims, shape in shapes.items():
            kwargs = {"mask": torch.ones(shape)} if name == "mask" else params
            if dims in mc.OPERATOR_DIMS[name]:
                op = ops.make_operator(name, shape, noise_std=0.1, **kwargs)
                assert op.linear == (name in mc.LINEAR_OPERATORS), name
            else:
                with pytest.raises(ValueError):
                    ops.make_operator(name, shape, noise_std=0.1, **kwargs)


@pytest.mark.parametrize(
    "system",
    [
        {"name": "lorenz63"},
        {"name": "lorenz96"},
        {"name": "lorenz96", "dim": 12},
        {"name": "linear_gaussian"},
        {"name": "linear_gaussian", "dim": 6},
        {"name": "kolmogorov"},
        {"name": "kolmogorov", "n": 32},
    ],
)
def test_config_state_shape_is_the_systems(system):
    """The torch-free shape rule of the config validation agrees with the systems themselves."""
    from masf.systems import make_system

    params = {k: v for k, v in system.items() if k != "name"}
    assert mc.state_shape(system) == tuple(make_system(system["name"], **params).state_shape)
