"""Tuning: lists of values expand into variants, tuning seeds stay apart from evaluation seeds, and the
selection picks the variant a brute-force ranking of the tuning runs picks (docs/tuning.md)."""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from masf import cli, tuning
from masf import config as mc
from masf.aggregate import aggregate, selection, summary_table
from masf.io import write_dataset

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "config" / "test.yaml").read_text())


def _config(**methods: dict) -> dict:
    """config/test.yaml with ``methods`` added to the l96 experiment."""
    cfg = copy.deepcopy(BASE)
    cfg["methods"].update(methods)
    cfg["experiments"]["l96"]["methods"] += [
        m for m in methods if m not in cfg["experiments"]["l96"]["methods"]
    ]
    return cfg


# ---- variants ---------------------------------------------------------------------------------------


def test_variant_names_are_sorted_by_key_and_fit_the_wildcard():
    name = tuning.variant_name("letkf", {"radius": 4.0, "inflation": 1.05, "rotate": True})
    assert name == "letkf@inflation=1.05@radius=4.0@rotate=true"
    assert tuning.variant_name("ensf", {"eps_alpha": 1e-05}) == "ensf@eps_alpha=1e-05"
    assert re.fullmatch(tuning.VARIANT_PATTERN, name)
    assert tuning.variant_label(name) == "inflation=1.05, radius=4.0, rotate=true"
    # a cluster job gets its wildcards as one "key=value,key=value" argument: no commas in a name
    from snakemake.common import parse_key_value_arg

    assert parse_key_value_arg(f"method={name}", "bad") == ("method", name) and "," not in name


def test_the_grid_is_the_full_product_in_file_order():
    grid = {"radius": [2.0, 4.0, 8.0], "inflation": [1.0, 1.1]}
    variants = tuning.expand("letkf", {"filter": "letkf", "taper": "boxcar", **grid}, grid)
    assert len(variants) == 6
    combos = [(v["radius"], v["inflation"]) for v in variants.values()]
    assert combos == list(itertools.product(grid["radius"], grid["inflation"]))
    assert all(v["filter"] == "letkf" and v["taper"] == "boxcar" for v in variants.values())


def test_validate_expands_a_tuned_method_into_its_variants():
    cfg = mc.load_validated(REPO / "config" / "test.yaml")
    variants = mc.variants_of(cfg, "letkf_tuned")
    assert len(variants) == 4 and all(v in cfg["methods"] for v in variants)
    assert "letkf_tuned" not in cfg["methods"] and mc.is_tuned(cfg, "letkf_tuned")
    assert {(cfg["methods"][v]["radius"], cfg["methods"][v]["inflation"]) for v in variants} == {
        (2.0, 1.0),
        (2.0, 1.1),
        (4.0, 1.0),
        (4.0, 1.1),
    }
    assert "letkf_tuned" in mc.method_names(cfg)
    # 4 variants x 2 tuning seeds; the evaluation runs: one per seed, not yet selected
    tuning_runs = mc.tuning_runs(cfg)
    assert len(tuning_runs) == 8 and {r["seed"] for r in tuning_runs} == {1, 2}
    evaluation = [r for r in mc.runs(cfg) if r["method"] == "letkf_tuned"]
    assert [(r["seed"], r["variant"]) for r in evaluation] == [(0, None)]
    with pytest.raises(ValueError, match="no variant selected yet"):
        mc.run_path(evaluation[0])
    chosen = {("l96", "half", "letkf_tuned"): variants[2]}
    assert mc.run_path(mc.runs(cfg, chosen)[3]) == mc.RUN.format(
        experiment="l96", operator="half", method=variants[2], seed=0
    )


def test_a_list_of_one_value_is_that_value():
    cfg = mc.validate(_config(one={"filter": "enkf", "inflation": [1.05]}))
    assert cfg["methods"]["one"]["inflation"] == 1.05 and not mc.is_tuned(cfg, "one")


def test_list_valued_parameters_are_values_not_grids():
    cfg = mc.validate(_config(w={"filter": "masf", "sampler": "bridge", "score_weights": [0.1, 1.0, 2.0]}))
    assert cfg["methods"]["w"]["score_weights"] == [0.1, 1.0, 2.0] and not mc.is_tuned(cfg, "w")


def test_variants_differing_in_sampling_only_share_one_checkpoint():
    masf = {"filter": "masf", "sampler": "bridge", "width": 8, "depth": 1, "pretrain_epochs": 1}
    cfg = mc.validate(_config(masf_nfe={**masf, "nfe": [5, 10]}))
    owners = {mc.checkpoint_owners(cfg)[("l96", "half", v)] for v in mc.variants_of(cfg, "masf_nfe")}
    assert len(owners) == 1
    cfg = mc.validate(_config(masf_width={**masf, "width": [4, 8]}))
    owners = {mc.checkpoint_owners(cfg)[("l96", "half", v)] for v in mc.variants_of(cfg, "masf_width")}
    assert len(owners) == 2


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([True, "x y"], 'methods.bad.rotate[1]: "x y" is invalid; allowed: true or false'),
        ([1.5, [2.0]], "methods.bad.radius[1]: [2.0] is invalid; allowed: a number > 0"),
    ],
)
def test_each_listed_value_is_checked_as_its_key(values, expected):
    key = "rotate" if isinstance(values[0], bool) else "radius"
    with pytest.raises(mc.ConfigError) as info:
        mc.validate(_config(bad={"filter": "letkf", key: values}))
    assert str(info.value) == expected


def test_the_validate_command_counts_tuning_runs(capsys):
    assert cli.main(["validate", str(REPO / "config" / "test.yaml")]) == 0
    assert "8 tuning runs of 1 tuned methods" in capsys.readouterr().out


# ---- selection --------------------------------------------------------------------------------------


def test_score_averages_the_runs_that_did_not_diverge():
    s = tuning.score([1.0, 3.0, math.nan], ["ok", "ok", "diverged"], "rmse_mean")
    assert s == {"score": 2.0, "diverged": 1, "runs": 3}
    assert math.isnan(tuning.score([math.nan], ["diverged"], "rmse_mean")["score"])


def _brute_force(scores: dict[str, dict], better: str) -> str:
    """The best variant by sorting all of them (fewest diverged, best score, listed first)."""
    order = list(scores)
    sign = 1 if better == "min" else -1

    def key(v: str) -> tuple:
        s = scores[v]["score"]
        return (scores[v]["diverged"], sign * s if math.isfinite(s) else math.inf, order.index(v))

    return sorted(order, key=key)[0]


@pytest.mark.parametrize("metric", ["rmse_mean", "ssim_mean"])
def test_select_agrees_with_sorting_every_variant(metric):
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 6)
        scores = {
            f"m@x={i}": {
                "score": rng.choice([math.nan, float(rng.randint(0, 3))]),
                "diverged": rng.choice([0, 0, 1]),
                "runs": 2,
            }
            for i in range(n)
        }
        assert tuning.select(scores, metric) == _brute_force(scores, tuning.METRICS[metric])


def test_a_variant_that_diverged_loses_to_a_worse_one_that_did_not():
    scores = {"a": {"score": 0.1, "diverged": 1, "runs": 3}, "b": {"score": 5.0, "diverged": 0, "runs": 3}}
    assert tuning.select(scores, "rmse_mean") == "b"


def _fake_run(path: Path, rmse: list[float], status: str) -> None:
    n = len(rmse)
    ds = xr.Dataset(
        {"rmse": (("time",), np.array(rmse)), "spread": (("time",), np.full(n, 0.5))},
        coords={"time": np.arange(1, n + 1)},
        attrs={"status": status},
    )
    write_dataset(ds, path)


def test_selection_reads_the_tuning_runs(tmp_path, monkeypatch):
    """Known answer: per-seed time means of hand-made run files, their means, the best variant."""
    monkeypatch.chdir(tmp_path)
    variants = {"m@a=1": {"a": 1}, "m@a=2": {"a": 2}, "m@a=3": {"a": 3}}
    series = {  # (variant, seed) -> per-cycle RMSE, status
        ("m@a=1", 5): ([2.0, 4.0], "ok"),
        ("m@a=1", 6): ([3.0, 3.0], "ok"),  # mean 3.0
        ("m@a=2", 5): ([1.0, 2.0], "ok"),
        ("m@a=2", 6): ([2.0, 2.0], "ok"),  # mean 1.75: the best
        ("m@a=3", 5): ([0.1, 0.1], "ok"),
        ("m@a=3", 6): ([0.1, np.nan], "diverged"),  # best score, but diverged once
    }
    for (v, s), (rmse, status) in series.items():
        _fake_run(Path(mc.RUN.format(experiment="e", operator="o", method=v, seed=s)), rmse, status)
    spec = {
        "names": {"experiment": "e", "operator": "o", "method": "m"},
        "variants": variants,
        "seeds": [5, 6],
        "metric": "rmse_mean",
    }
    chosen = selection(spec)
    assert chosen["selected"] == "m@a=2" and chosen["values"] == {"a": 2}
    rows = {r["variant"]: r for r in chosen["variants"]}
    assert rows["m@a=1"]["score"] == pytest.approx(3.0)
    assert rows["m@a=1"]["per_seed"] == {"5": 3.0, "6": 3.0}
    assert rows["m@a=3"]["diverged"] == 1 and rows["m@a=3"]["per_seed"]["6"] is None
    json.dumps(chosen, allow_nan=False)  # plain JSON, no NaN
    # the CLI writes the same, and aggregates the selected variant's evaluation runs under the method
    out = tmp_path / "sel.json"
    assert cli.main(["tune", "--spec", json.dumps(spec), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == chosen
    _fake_run(Path(mc.RUN.format(experiment="e", operator="o", method="m@a=2", seed=0)), [1.0, 1.0], "ok")
    _fake_run(Path(mc.RUN.format(experiment="e", operator="o", method="plain", seed=0)), [2.0, 2.0], "ok")
    runs = [
        {"experiment": "e", "operator": "o", "method": "m", "variant": "m@a=2", "seed": 0},
        {"experiment": "e", "operator": "o", "method": "plain", "variant": "plain", "seed": 0},
    ]
    ds = aggregate(runs)
    assert list(ds.method.values) == ["m", "plain"]
    assert (
        ds["variant"].sel({"method": "m"}).item() == "a=2"
        and ds["variant"].sel({"method": "plain"}).item() == ""
    )
    assert float(ds["rmse_mean"].sel({"method": "m"}).item()) == 1.0
    table = summary_table(ds)
    assert list(table["variant"]) == ["a=2", ""]


def test_figure_of_the_tuning_surface(tmp_path):

    def chosen(keys: list[str], n: int) -> dict:
        values = [
            dict(zip(keys, combo, strict=True)) for combo in itertools.product(range(n), repeat=len(keys))
        ]
        rows = [
            {
                "variant": f"m@{i}",
                "values": v,
                "score": float(i),
                "diverged": int(i == 1),
                "per_seed": {"1": float(i)},
            }
            for i, v in enumerate(values)
        ]
        return {
            "experiment": "e",
            "operator": "o",
            "method": "m",
            "metric": "rmse_mean",
            "better": "min",
            "seeds": [1],
            "selected": "m@0",
            "values": values[0],
            "variants": rows,
        }

    paths = []
    for i, (keys, n) in enumerate([(["a"], 3), (["a", "b"], 2), (["a", "b", "c"], 2)]):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(chosen(keys, n)))
    out = tmp_path / "tuning.png"
    assert cli.main(["figures", "tuning", "--selections", *map(str, paths), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tune_command_names_what_is_wrong(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "config" / "test.yaml")
    where = ["--experiment", "l96", "--operator", "half"]
    with pytest.raises(SystemExit, match="unknown method 'letkf'; allowed: letkf_tuned"):
        cli.main(["tune", "--config", config, *where, "--method", "letkf", "--out", "s.json"])
    with pytest.raises(
        SystemExit, match=r"unknown method 'letkf_tuned' \(it is tuned: give one of its variants\)"
    ):
        cli.main(
            [
                "assimilate",
                "--config",
                config,
                *where,
                "--method",
                "letkf_tuned",
                "--data",
                "d.nc",
                "--seed",
                "0",
                "--out",
                "r.nc",
            ]
        )
    # before its tuning runs exist: one line naming the first missing run file, nothing written
    assert cli.main(["tune", "--config", config, *where, "--method", "letkf_tuned", "--out", "s.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "masf: no such run file: results/runs/l96/half/letkf_tuned@inflation=1.0@radius=2.0/seed1.nc"
    )
    assert not (tmp_path / "s.json").exists()
    cfg = mc.load_validated(config)
    with pytest.raises(FileNotFoundError, match="run the sweep's tune step first"):
        mc.read_selections(cfg)
