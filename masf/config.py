"""Sweep configuration: loading, schema validation with defaults, cross-field checks, and per-job specs.

The Snakefile imports this module at parse time, and every remote job re-parses the Snakefile, so it
must stay light: no torch, no masf submodule that imports torch. The allowed parameter names of systems,
operators and filters are therefore kept here as static tables; ``tests/test_config_validation.py``
checks them against the dataclass fields of the real classes.

Every error is a :class:`ConfigError` whose message is one line: the key path, the bad value and what is
allowed.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
from pathlib import Path
from typing import Any

import yaml

from masf import ensf_schedule, tuning

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "sweep.schema.yaml"

# Output layout (relative to the working directory); shared by the Snakefile and the CLI.
DATA = "results/data/{experiment}/seed{seed}.nc"
SNAPSHOTS = "results/datasets/{experiment}.nc"
CHECKPOINT = "results/checkpoints/{experiment}/{operator}/{method}.pt"
# A run's name in its run, log and benchmark paths ({method}: the method, or a tuned method's variant).
RUN_NAME = "{experiment}/{operator}/{method}/seed{seed}"
RUN = f"results/runs/{RUN_NAME}.nc"
METRICS = "results/metrics.nc"
RUN_LIST = "results/runs.json"  # the sweep's runs as JSON, read by `masf aggregate --runs-file`
SELECTION = "results/tuning/{experiment}/{operator}/{method}.json"  # a tuned method's chosen variant
SUMMARY = "results/summary.csv"
LOG = "results/logs/{stage}/{name}.log"
BENCHMARK = "results/benchmarks/{stage}/{name}.tsv"
FIGURES = "results/figures/{experiment}"
SUMMARY_FIGURES = ("rmse_time", "rmse_mean", "spread_rmse", "wall_clock")
TUNING_FIGURE = "tuning"  # results/figures/{experiment}/tuning.png, for experiments with tuned methods

# Spatial kind of each system's state: 1 = a vector (N, D), 2 = a 2-D velocity field (N, 2, n, n).
SYSTEM_DIMS: dict[str, int] = {"lorenz63": 1, "lorenz96": 1, "linear_gaussian": 1, "kolmogorov": 2}


def state_shape(system: dict[str, Any]) -> tuple[int, ...]:
    """The state shape of a config's ``system`` mapping, from its size parameter or the class default
    (lorenz63 (3,), lorenz96 (dim,) = (40,), linear_gaussian (dim,) = (4,) or F's size, kolmogorov
    (2, n, n) = (2, 64, 64)); ``tests/test_config_validation.py`` checks these against the classes."""
    name = system["name"]
    if name == "lorenz63":
        return (3,)
    if name == "kolmogorov":
        n = system.get("n", 64)
        return (2, n, n)
    if name == "linear_gaussian" and "F" in system and isinstance(system["F"], list):
        return (len(system["F"]),)
    return (system.get("dim", 40 if name == "lorenz96" else 4),)


def network_kind(network: str, shape: tuple[int, ...]) -> str:
    """The network kind ``auto`` resolves to for states of ``shape`` (2-D fields: unet2d; 1-D states of
    size >= 16 divisible by 4: unet1d; else mlp); any other ``network`` is itself."""
    if network != "auto":
        return network
    if len(shape) == 3:
        return "unet2d"
    if len(shape) == 1 and shape[0] >= 16 and shape[0] % 4 == 0:
        return "unet1d"
    return "mlp"


# Parameter kinds: "int+" integer >= 1 ("int+?" also null), "int0" integer >= 0, "num+" number > 0,
# "num0" number >= 0, "num1" number >= 1, "num" any finite number, "frac" number in (0, 1), "frac1" in
# (0, 1], "unit" in [0, 1], "unit1" in [0, 1), "bool", "str", "matrix" (nested lists or a JSON string), "floats" (a list
# of numbers), "weights" ((min, max, power): 3 numbers, or null), or a tuple of allowed strings.
Kind = str | tuple[str, ...]

SYSTEM_PARAMS: dict[str, dict[str, Kind]] = {
    "lorenz63": {"sigma": "num+", "rho": "num+", "beta": "num+", "dt": "num+"},
    "lorenz96": {"dim": "int+", "forcing": "num", "dt": "num+"},
    "linear_gaussian": {
        "dim": "int+",
        "radius": "frac",
        "angle": "num",
        "F": "matrix",
        "Q": "matrix",
        "mean0": "matrix",
        "cov0": "matrix",
        "dt": "num+",
    },
    "kolmogorov": {
        "n": "int+",
        "reynolds": "num+",
        "forcing_amplitude": "num",
        "forcing_wavenumber": "int+",
        "drag": "num0",
        "dt": "num+",
        "max_velocity": "num+",
        "courant": "num+",
        "inner_steps": "int+?",
        "init_max_velocity": "num+",
        "init_peak_wavenumber": "num+",
        "spinup_steps": "int0",
        "cuda_graphs": "bool",
    },
}

# Operators: which state kinds they fit (1-D vectors, 2-D fields), linear or not, and their parameters
# besides ``noise_std`` (every operator has it).
OPERATOR_DIMS: dict[str, tuple[int, ...]] = {
    "mask": (1, 2),
    "grid_mask": (1, 2),
    "center_mask": (2,),
    "random_mask": (1, 2),
    "every_kth": (1,),
    "identity": (1, 2),
    "sigmoid": (1, 2),
    "arctan": (1, 2),
    "speed": (2,),
}
LINEAR_OPERATORS = frozenset({"mask", "grid_mask", "center_mask", "random_mask", "every_kth", "identity"})
# Smallest state dimension a system is defined for (Lorenz-96 couples x_{i-2}, x_{i-1} and x_{i+1}).
SYSTEM_MIN_DIM: dict[str, int] = {"lorenz96": 4}

OPERATOR_PARAMS: dict[str, dict[str, Kind]] = {
    "mask": {"mask": "matrix"},
    "grid_mask": {"stride": "int+", "offset": "int0"},
    "center_mask": {"hole_ratio": "frac"},
    "random_mask": {"fraction": "frac1", "seed": "int0"},
    "every_kth": {"k": "int+", "offset": "int0"},
    "identity": {},
    "sigmoid": {"alpha": "num+"},
    "arctan": {},
    "speed": {"threshold": "num", "sharpness": "num+"},
}

# Filters: hyper-parameters (the dataclass fields) and whether they are score-based (pretrained).
SCORE_BASED = frozenset({"masf", "sf", "ssls"})
NETWORK_CHOICES = ("auto", "mlp", "unet1d", "unet2d", "dual_unet2d")
_NETWORK: dict[str, Kind] = {
    "network": NETWORK_CHOICES,
    "width": "int+?",
    "depth": "int+?",
    "levels": "int+?",
    "pretrain_epochs": "int+",
    "pretrain_batch": "int+",
    "pretrain_lr": "num+",
    "finetune_epochs": "int0",
    "finetune_batch": "int+",
    "finetune_lr": "num+",
    "finetune_reset": "bool",
    "finetune_replay": "unit1",
    "finetune_jitter": "num0",
    "finetune_optimizer": ("persistent", "fresh"),
    "normalize": "bool",
    "norm_form": ("affine", "scale_only"),
    "norm_update": ("fixed", "adaptive"),
    "compile": "bool",
}
FILTER_PARAMS: dict[str, dict[str, Kind]] = {
    "masf": {
        "sampler": ("reference", "bridge", "nonlinear"),
        "nfe": "int+",
        "x0_uncertainty": ("pathwise", "none"),
        "score_weights": "weights",
        "guidance_weights": "weights",
        "eval_time": ("current", "next"),
        "T": "frac",
        "tau": "num+",
        "scratch": "bool",
        "scratch_epochs": "int+",
        "score_model": ("network", "gaussian"),
        "gaussian_residual": "bool",
        "hybrid": "bool",
        "radius": "num+",
        "inflation": "num1",
        "members": ("updated", "redrawn"),
        "draws": "int+?",
        **_NETWORK,
    },
    "sf": {"nfe": "int+", "sigma_max": "num+", "tol": "num+", "constant_step": "bool", **_NETWORK},
    "ssls": {"sigma": "num+", "nfe": "int+", "step": "num+", "decay": "num0", "tol": "num+", **_NETWORK},
    "ensf": {
        "nfe": "int+",
        "eps_alpha": "frac",
        "eps_beta": "frac",
        "prior_score": ("mixture", "paired"),
        "bandwidth": "num0",
        "inflation": "num1",
        "tol": "num+",
    },
    "enkf": {
        "variant": ("sqrt", "pertobs"),
        "inflation": "num1",
        "rotate": "bool",
        "mode": ("full", "diag"),
        "eps": "num0",
        "center_perturbations": "bool",
    },
    "letkf": {
        "radius": "num+",
        "inflation": "num1",
        "rotate": "bool",
        "eps": "num0",
        "taper": ("gaspari_cohn", "boxcar"),
        "same_channel_only": "bool",
    },
    "pf": {"resampling": ("systematic", "multinomial"), "reg": "num0", "ess_threshold": "unit"},
    "climatology": {},
}
# Hyper-parameters used only when sampling (not when pretraining): changing them must not rerun the
# pretraining job, so they are left out of its params.
_FINETUNE = frozenset(k for k in _NETWORK if k.startswith("finetune_"))
SAMPLING_ONLY: dict[str, frozenset[str]] = {
    "masf": frozenset({"nfe", "x0_uncertainty", "score_weights", "guidance_weights", "eval_time"})
    | {"scratch_epochs", "hybrid", "radius", "inflation", "members", "draws"}
    | _FINETUNE,
    "sf": frozenset({"nfe", "tol", "constant_step"}) | _FINETUNE,
    "ssls": frozenset({"nfe", "step", "decay", "tol"}) | _FINETUNE,
}
# Score-based filters whose training loss does not involve the operator (plain denoising): one network
# per experiment serves all its operators.
OPERATOR_FREE_TRAINING = frozenset({"sf", "ssls"})
# MASF samplers that need a linear (mask) operator.
LINEAR_ONLY_SAMPLERS = frozenset({"reference", "bridge"})
# MASF's hybrid-prior keys, and the settings the hybrid needs (masf.filters.masf, docs/hybrid.md).
HYBRID_ONLY = ("radius", "inflation", "members", "draws")
HYBRID_NEEDS = {"sampler": "bridge", "score_model": "network", "scratch": False, "finetune_epochs": 0}
# Largest state (entries) of the Gaussian residual's dense D×D covariance (the hybrid is matrix-free above).
DENSE_MAX_DIM = 2048


class ConfigError(ValueError):
    """A bad configuration; the message is one line naming the key path and what is allowed."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping (plain YAML keeps the last one
    silently). Keys brought in by a ``<<`` merge may be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: key {key!r} is given twice in one mapping (first on "
                    f"line {seen[key]}; YAML would silently keep the last); remove or rename one"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (no validation; a key given twice in one mapping is refused)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except ConfigError as err:
        raise ConfigError(f"{p} {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load_schema() -> dict[str, Any]:
    """The JSON schema of a sweep configuration (``workflow/schemas/sweep.schema.yaml``)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _path(parts: Any) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def _did_you_mean(word: str, allowed: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest allowed name, or ''."""
    close = difflib.get_close_matches(str(word), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_finite(value: Any, where: list[str]) -> None:
    """Refuse NaN and ±inf anywhere in the config (they pass every range check, as comparisons are false)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{_path(where)}: {value} is not a finite number; write a number")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, [*where, str(k)])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, [*where[:-1], f"{where[-1]}[{i}]"] if where else [f"[{i}]"])


def _validator(schema: dict[str, Any]) -> Any:
    """A JSON-schema validator of ``schema`` whose "integer" refuses 6.0 (a sweep file means an int there).

    jsonschema is imported here, not at the top: every CLI job imports this module, only validation needs it.
    """
    import jsonschema

    strict = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, v: isinstance(v, int) and not isinstance(v, bool)
    )
    return jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=strict)(schema)


def _schema_message(error: Any) -> str:
    where = _path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hint = _did_you_mean(extra[0], allowed) if len(extra) == 1 else ""
        return f"{where}: unknown key {', '.join(map(repr, extra))}{hint}; allowed: {', '.join(allowed)}"
    if error.validator == "type" and "integer" in error.validator_value and isinstance(error.instance, float):
        if error.instance.is_integer():
            return f"{where}: {error.instance!r} is a float; write {int(error.instance)} (an integer)"
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        typos = [k for k in error.instance if _did_you_mean(k, [missing])] if missing else []
        if typos:
            return f"{where}: required key {missing!r} is missing; {typos[0]!r} looks like a typo of it"
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return f"{where}: {error.instance!r} is not allowed; allowed: {allowed}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "pattern" or error.validator == "propertyNames":
        return f"{where}: name {error.instance!r} must match {error.schema.get('pattern', '[A-Za-z][A-Za-z0-9_]*')}"
    message = " ".join(error.message.split())
    if len(message) > 200:
        message = message[:197] + "..."
    return f"{where}: {message}"


def _fill_defaults(instance: Any, schema: dict[str, Any], root: dict[str, Any]) -> None:
    """Insert schema ``default`` values in place, recursively (only where keys are missing)."""
    ref = schema.get("$ref")
    if ref:
        schema = root["$defs"][ref.rsplit("/", 1)[-1]]
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if "$ref" in sub:
            resolved = root["$defs"][sub["$ref"].rsplit("/", 1)[-1]]
        else:
            resolved = sub
        if key not in instance and "default" in resolved:
            instance[key] = copy.deepcopy(resolved["default"])
        if key in instance:
            _fill_defaults(instance[key], resolved, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                _fill_defaults(value, extra, root)


def _check_kind(value: Any, kind: Kind, where: str) -> None:
    def bad(allowed: str) -> ConfigError:
        return ConfigError(f"{where}: {json.dumps(value)} is invalid; allowed: {allowed}")

    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_num = (is_int or isinstance(value, float)) and math.isfinite(value)
    if isinstance(kind, tuple):
        if value not in kind:
            raise bad(f"one of {', '.join(kind)}")
    elif isinstance(value, float) and value.is_integer() and kind in ("int+", "int+?", "int0"):
        raise ConfigError(f"{where}: {value!r} is a float; write {int(value)} (an integer)")
    elif kind == "int+" and not (is_int and value >= 1):
        raise bad("an integer >= 1")
    elif kind == "int+?" and not (value is None or (is_int and value >= 1)):
        raise bad("an integer >= 1 or null")
    elif kind == "num1" and not (is_num and value >= 1):
        raise bad("a number >= 1")
    elif kind == "frac1" and not (is_num and 0 < value <= 1):
        raise bad("a number in (0, 1]")
    elif kind == "unit" and not (is_num and 0 <= value <= 1):
        raise bad("a number in [0, 1]")
    elif kind == "unit1" and not (is_num and 0 <= value < 1):
        raise bad("a number in [0, 1)")
    elif kind == "int0" and not (is_int and value >= 0):
        raise bad("an integer >= 0")
    elif kind == "num+" and not (is_num and value > 0):
        raise bad("a number > 0")
    elif kind == "num0" and not (is_num and value >= 0):
        raise bad("a number >= 0")
    elif kind == "num" and not is_num:
        raise bad("a finite number")
    elif kind == "frac" and not (is_num and 0 < value < 1):
        raise bad("a number strictly between 0 and 1")
    elif kind == "bool" and not isinstance(value, bool):
        raise bad("true or false")
    elif kind == "str" and not isinstance(value, str):
        raise bad("a string")
    elif kind == "floats" and not (
        isinstance(value, list)
        and value
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise bad("a non-empty list of numbers")
    elif kind == "weights" and not (
        value is None
        or (
            isinstance(value, list)
            and len(value) == 3
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        )
    ):
        raise bad("[min, max, power] (3 numbers) or null")
    elif kind == "matrix" and not isinstance(value, list | str):
        raise bad("a nested list of numbers or a JSON string")


def _check_known(key: str, table: dict[str, Kind], where: str, owner: str) -> None:
    if key not in table:
        allowed = ", ".join(sorted(table)) or "(none)"
        raise ConfigError(
            f"{where}.{key}: unknown parameter of {owner}{_did_you_mean(key, table)}; allowed: {allowed}"
        )


def _check_params(params: dict[str, Any], table: dict[str, Kind], where: str, owner: str) -> None:
    for key, value in params.items():
        _check_known(key, table, where, owner)
        _check_kind(value, table[key], f"{where}.{key}")


def check_config(cfg: dict[str, Any]) -> None:
    """Cross-field checks of a schema-valid config; raises :class:`ConfigError` (one line)."""
    methods = cfg["methods"]
    for name, method in methods.items():
        flt = method["filter"]
        params = {k: v for k, v in method.items() if k != "filter"}
        _check_params(params, FILTER_PARAMS[flt], f"methods.{name}", f"filter {flt!r}")
        if flt == "masf":
            _check_hybrid(method, f"methods.{name}")
    names = method_names(cfg)
    metric = cfg["tuning"]["metric"]
    for ename, exp in cfg["experiments"].items():
        where = f"experiments.{ename}"
        system = exp["system"]["name"]
        sys_params = {k: v for k, v in exp["system"].items() if k != "name"}
        _check_params(sys_params, SYSTEM_PARAMS[system], f"{where}.system", f"system {system!r}")
        dim = sys_params.get("dim")
        if dim is not None and dim < SYSTEM_MIN_DIM.get(system, 1):
            raise ConfigError(
                f"{where}.system.dim: {dim} is too small for {system}; allowed: >= {SYSTEM_MIN_DIM[system]}"
            )
        n = sys_params.get("n", 64)
        if system == "kolmogorov" and (n % 2 or not 32 <= n <= 512):
            raise ConfigError(f"{where}.system.n: {n} is invalid; allowed: an even integer in [32, 512]")
        _check_memory(cfg, exp, where)
        ds = exp["dataset"]
        if ds["samples"] % ds["per_trajectory"]:
            raise ConfigError(
                f"{where}.dataset.per_trajectory: {ds['per_trajectory']} does not divide samples = {ds['samples']}; "
                "allowed: a divisor of samples"
            )
        for i, mname in enumerate(exp["methods"]):
            if mname not in names:
                raise ConfigError(
                    f"{where}.methods[{i}]: unknown method {mname!r}{_did_you_mean(mname, names)}; defined in "
                    f"methods: {', '.join(names)}"
                )
        _check_tuning_seeds(cfg, ename, metric)
        for oname, op in exp["operators"].items():
            owhere = f"{where}.operators.{oname}"
            kind = op["operator"]
            if SYSTEM_DIMS[system] not in OPERATOR_DIMS[kind]:
                fitting = [k for k, d in OPERATOR_DIMS.items() if SYSTEM_DIMS[system] in d]
                raise ConfigError(
                    f"{owhere}.operator: {kind!r} does not fit system {system!r}; allowed: {', '.join(fitting)}"
                )
            op_params = {k: v for k, v in op.items() if k not in ("operator", "noise_std", "methods")}
            _check_params(op_params, OPERATOR_PARAMS[kind], owhere, f"operator {kind!r}")
            step = op.get("stride", op.get("k"))
            if "offset" in op and step is not None and op["offset"] >= step:
                name = "stride" if "stride" in op else "k"
                raise ConfigError(
                    f"{owhere}.offset: {op['offset']} is not smaller than {name} = {step}; allowed: 0 .. {step - 1}"
                )
            if kind == "every_kth" and op["k"] > (size := state_shape(exp["system"])[0]):
                raise ConfigError(
                    f"{owhere}.k: {op['k']} is larger than the state ({size} entries), so one entry is observed; "
                    f"allowed: <= {size}"
                )
            if system == "kolmogorov" and kind == "grid_mask" and "stride" in op:
                size = sys_params.get("n")
                if size is not None and op["stride"] >= size:
                    raise ConfigError(
                        f"{owhere}.stride: {op['stride']} leaves one row per channel; allowed: < n = {size}"
                    )
            for i, base in enumerate(op.get("methods", exp["methods"])):
                mwhere = f"{owhere}.methods[{i}]" if "methods" in op else f"{where}.methods"
                if base not in names:
                    raise ConfigError(
                        f"{mwhere}: unknown method {base!r}{_did_you_mean(base, names)}; defined in methods: "
                        f"{', '.join(names)}"
                    )
                for mname in variants_of(cfg, base):
                    _check_method_fits(cfg, mname, exp, ename, oname, mwhere)


def _check_method_fits(
    cfg: dict[str, Any], mname: str, exp: dict[str, Any], ename: str, oname: str, mwhere: str
) -> None:
    """A method (or one variant of a tuned one) fits the experiment's state and the operator."""
    method = cfg["methods"][mname]
    op = exp["operators"][oname]
    kind = op["operator"]
    owhere = f"experiments.{ename}.operators.{oname}"
    _check_levels(method, mname, state_shape(exp["system"]), ename)
    sampler = method.get("sampler", "reference")
    if method["filter"] == "masf" and sampler in LINEAR_ONLY_SAMPLERS and kind not in LINEAR_OPERATORS:
        raise ConfigError(
            f"{mwhere}: method {mname!r} (masf, sampler {sampler}) needs a linear operator, "
            f"but {oname!r} is {kind!r}; allowed samplers for it: nonlinear "
            f"(or set {owhere}.methods)"
        )
    if method["filter"] == "ensf" and kind in LINEAR_OPERATORS:
        _check_ensf_steps(method, mname, op["noise_std"], owhere)
    dense = method["filter"] == "masf" and method.get("gaussian_residual", False)
    if dense and (dim := math.prod(state_shape(exp["system"]))) > DENSE_MAX_DIM:
        raise ConfigError(
            f"{mwhere}: method {mname!r} sets gaussian_residual: true, whose dense D×D climatology "
            f"covariance supports states of at most {DENSE_MAX_DIM} entries, but experiment {ename!r} has "
            f"{dim}; allowed: gaussian_residual: false there (hybrid: true alone is matrix-free above it)"
        )


def _check_hybrid(method: dict[str, Any], where: str) -> None:
    """MASF's hybrid keys only with ``hybrid: true``, which needs the bridge, no fine-tuning, a network."""
    if not method.get("hybrid", False):
        given = [k for k in HYBRID_ONLY if k in method]
        if given:
            raise ConfigError(
                f"{where}.{given[0]}: applies to the hybrid prior only; set {where}.hybrid: true or remove it"
            )
        return
    defaults = {"sampler": "bridge", "score_model": "network", "scratch": False, "finetune_epochs": 120}
    for key, want in HYBRID_NEEDS.items():
        got = method.get(key, defaults[key])
        if got != want or isinstance(got, bool) != isinstance(want, bool):
            raise ConfigError(
                f"{where}.{key}: {got!r} does not fit hybrid: true (the forecast enters through the hybrid "
                f"prior); allowed: {want!r}"
            )
    if "draws" in method and method.get("members", "updated") != "updated":
        raise ConfigError(
            f"{where}.draws: applies to members: updated only; remove it or set members: updated"
        )


def _check_tuning_seeds(cfg: dict[str, Any], ename: str, metric: str) -> None:
    """An experiment that runs a tuned method needs ``tuning_seeds`` apart from its ``seeds`` (tuning on
    the evaluation seeds would report the best of several tries as one), and a metric it has."""
    exp = cfg["experiments"][ename]
    where = f"experiments.{ename}"
    tuned = sorted({m for o in exp["operators"] for m in methods_for(cfg, ename, o) if is_tuned(cfg, m)})
    if not tuned:
        return
    if not exp["tuning_seeds"]:
        raise ConfigError(
            f"{where}.tuning_seeds: missing, but method {tuned[0]!r} lists values to tune, which need seeds "
            f"apart from the evaluation seeds; add e.g. tuning_seeds: [{max(exp['seeds']) + 1}, "
            f"{max(exp['seeds']) + 2}]"
        )
    shared = sorted(set(exp["tuning_seeds"]) & set(exp["seeds"]))
    if shared:
        raise ConfigError(
            f"{where}.tuning_seeds: {shared[0]} is also an evaluation seed; allowed: seeds not in {where}.seeds"
        )
    if metric == "ssim_mean" and SYSTEM_DIMS[exp["system"]["name"]] != 2:
        raise ConfigError(
            f"tuning.metric: ssim_mean is defined for 2-D fields only, but experiment {ename!r} tunes "
            f"{tuned[0]!r} on a vector state; allowed for it: "
            f"{', '.join(m for m in tuning.METRICS if m != 'ssim_mean')}"
        )


def _expand_tuned(cfg: dict[str, Any]) -> None:
    """Replace, in place, each method with lists of values by its variants (masf.tuning), recording
    ``cfg["tuned"][method] = {"grid": {key: values}, "variants": {variant: {key: value}}}``. A list of one
    value is that value. Each listed value is checked as the key's kind."""
    methods: dict[str, Any] = {}
    cfg["tuned"] = {}
    for name, method in cfg["methods"].items():
        table = FILTER_PARAMS[method["filter"]]
        grid = tuning.tuned_keys(method, table)
        method = {**method, **{k: v[0] for k, v in grid.items() if len(v) == 1}}
        grid = {k: v for k, v in grid.items() if len(v) != 1}
        for key, values in grid.items():
            _check_known(key, table, f"methods.{name}", f"filter {method['filter']!r}")
            for i, value in enumerate(values):
                _check_kind(value, table[key], f"methods.{name}.{key}[{i}]")
        try:
            tuning.check_grid(name, grid)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if not grid:
            methods[name] = method
            continue
        variants = tuning.expand(name, method, grid)
        methods.update(variants)
        cfg["tuned"][name] = {
            "grid": grid,
            "variants": {v: {k: m[k] for k in grid} for v, m in variants.items()},
        }
    cfg["methods"] = methods


def _check_ensf_steps(method: dict[str, Any], name: str, noise_std: float, owhere: str) -> None:
    """EnSF's Euler steps must not overshoot the likelihood of a linear operator (masf.ensf_schedule):
    an nfe that is fine alone diverges with a small enough noise_std (the filter refuses it too)."""
    nfe = method.get("nfe", ensf_schedule.DEFAULT_NFE)
    eps_alpha = method.get("eps_alpha", ensf_schedule.DEFAULT_EPS_ALPHA)
    eps_beta = method.get("eps_beta", ensf_schedule.DEFAULT_EPS_BETA)
    need = ensf_schedule.stable_nfe(nfe, eps_alpha, eps_beta, noise_std)
    if need != nfe:
        allowed = (
            f"nfe >= {need}, or a larger noise_std"
            if need is not None
            else f"a larger noise_std (a stable nfe would be above {ensf_schedule.MAX_NFE:,})"
        )
        raise ConfigError(
            f"methods.{name}.nfe: {nfe} is unstable with {owhere}.noise_std = {noise_std:g} (EnSF's Euler "
            f"step overshoots the likelihood, docs/ensf.md); allowed: {allowed}"
        )


# Resolution levels of the UNets when ``levels`` is not given (masf.nets: channel_mult (1, 2, 2)).
DEFAULT_UNET_LEVELS = 3
# The state rank each network kind takes: mlp any, unet1d (D,), the 2-D UNets (C, n, m).
NETWORK_RANKS: dict[str, tuple[int, ...]] = {
    "mlp": (1, 2, 3),
    "unet1d": (1,),
    "unet2d": (3,),
    "dual_unet2d": (3,),
}


def _memory_needs(exp: dict[str, Any]) -> dict[str, tuple[str, int, int, str]]:
    """stage: (key, its value, states held, what they are): what a job of the stage holds at least."""
    return {
        "assimilate": ("ensemble_size", exp["ensemble_size"], 2 * exp["ensemble_size"], "two ensembles of"),
        "dataset": ("dataset.samples", exp["dataset"]["samples"], exp["dataset"]["samples"], "snapshots of"),
        "pretrain": ("dataset.samples", exp["dataset"]["samples"], exp["dataset"]["samples"], "snapshots of"),
    }


def memory_bounds_mb(cfg: dict[str, Any], exp: dict[str, Any]) -> dict[str, float]:
    """Lower bounds (MB) on the memory of an experiment's assimilate, dataset and pretrain jobs.

    An assimilate job holds at least two ensembles (forecast and analysis), a dataset or pretrain job
    its snapshots: states × prod(state_shape) × bytes per entry. A bound, never an estimate from above:
    ``benchmarks/highdim/`` measures how far the peak of real jobs lies above it.
    """
    state_bytes = math.prod(state_shape(exp["system"])) * (4 if cfg["dtype"] == "float32" else 8)
    return {stage: need[2] * state_bytes / 2**20 for stage, need in _memory_needs(exp).items()}


def _check_memory(cfg: dict[str, Any], exp: dict[str, Any], where: str) -> None:
    """Refuse what cannot fit a job's ``mem_mb`` by a lower bound (never a false refusal)."""
    entries = math.prod(state_shape(exp["system"]))
    bounds = memory_bounds_mb(cfg, exp)
    for stage, (key, value, _, what) in _memory_needs(exp).items():
        mb, mem_mb = bounds[stage], cfg["resources"][stage]["mem_mb"]
        if mb > mem_mb:
            raise ConfigError(
                f"{where}.{key}: {value} needs at least {mb:,.0f} MB ({what} {entries:,} {cfg['dtype']} "
                f"entries), more than resources.{stage}.mem_mb = {mem_mb}; allowed: a smaller {key} or a "
                "larger mem_mb"
            )


def _check_levels(method: dict[str, Any], name: str, shape: tuple[int, ...], experiment: str) -> None:
    """The network kind must take the experiment's state (an explicit ``unet2d`` on a vector is refused),
    ``levels`` needs a UNet, and the UNet's grid must halve ``levels - 1`` times (default 3 levels)."""
    if method["filter"] not in SCORE_BASED:
        return
    levels = method.get("levels")
    network = method.get("network", "auto")
    if method["filter"] == "masf" and method.get("sampler", "bridge") == "nonlinear" and network == "auto":
        network = "dual_unet2d"
    kind = network_kind(network, shape)
    if len(shape) not in NETWORK_RANKS.get(kind, (len(shape),)):
        fits = [k for k, ranks in NETWORK_RANKS.items() if len(shape) in ranks]
        raise ConfigError(
            f"methods.{name}.network: {kind} cannot take the state {shape} of experiment {experiment!r}; "
            f"allowed: auto, {', '.join(fits)}"
        )
    if kind == "mlp":
        if levels is not None:
            raise ConfigError(
                f"methods.{name}.levels: {levels} is invalid for experiment {experiment!r}: its state {shape} "
                "gets an mlp, which has no levels; allowed: null (or network: unet1d/unet2d)"
            )
        return
    grid = shape[1:] if len(shape) == 3 else shape
    used = DEFAULT_UNET_LEVELS if levels is None else levels
    factor = 2 ** (used - 1)
    if any(g % factor for g in grid):
        key = "levels" if levels is not None else "network"
        raise ConfigError(
            f"methods.{name}.{key}: the {kind} of experiment {experiment!r} halves its grid {grid} {used - 1} "
            f"times ({used} levels), but {grid} is not divisible by 2^{used - 1} = {factor}; allowed: a "
            "smaller levels, or a grid divisible by it"
        )


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Schema-check ``cfg``, fill defaults, cross-check; returns a new, complete config dict."""
    _check_finite(cfg, [])
    schema = load_schema()
    errors = list(_validator(schema).iter_errors(cfg))
    if errors:
        from jsonschema.exceptions import best_match

        raise ConfigError(_schema_message(best_match(errors)))
    out = copy.deepcopy(cfg)
    _fill_defaults(out, schema, schema)
    _expand_tuned(out)
    check_config(out)
    return out


def load_validated(path: str | Path) -> dict[str, Any]:
    """``validate(load(path))``."""
    return validate(load(path))


# ---- the jobs a config asks for ---------------------------------------------------------------------


def methods_for(cfg: dict[str, Any], experiment: str, operator: str) -> list[str]:
    """Method names run with ``operator`` in ``experiment`` (a tuned method by its own name)."""
    exp = cfg["experiments"][experiment]
    return list(exp["operators"][operator].get("methods", exp["methods"]))


def method_names(cfg: dict[str, Any]) -> list[str]:
    """The methods of the sweep file: untuned ones and tuned ones (by their own names), in file order."""
    names = []
    for name in cfg["methods"]:
        base = name.split("@", 1)[0]
        if base not in names:
            names.append(base)
    return names


def is_tuned(cfg: dict[str, Any], method: str) -> bool:
    """Whether ``method`` lists values to tune (its runs are those of its variants)."""
    return method in cfg["tuned"]


def variants_of(cfg: dict[str, Any], method: str) -> list[str]:
    """The variant names of a tuned ``method`` (masf.tuning.variant_name), or ``[method]``."""
    return list(cfg["tuned"][method]["variants"]) if is_tuned(cfg, method) else [method]


def tune_jobs(cfg: dict[str, Any]) -> list[dict[str, str]]:
    """Every (experiment, operator, tuned method): one selection each."""
    return [
        {"experiment": e, "operator": o, "method": m}
        for e, exp in cfg["experiments"].items()
        for o in exp["operators"]
        for m in methods_for(cfg, e, o)
        if is_tuned(cfg, m)
    ]


def tune_spec(cfg: dict[str, Any], experiment: str, operator: str, method: str) -> dict[str, Any]:
    """What a selection depends on: the variants (name -> tuned values), the tuning seeds, the metric."""
    return {
        "names": {"experiment": experiment, "operator": operator, "method": method},
        "variants": cfg["tuned"][method]["variants"],
        "seeds": cfg["experiments"][experiment]["tuning_seeds"],
        "metric": cfg["tuning"]["metric"],
    }


def run_name(run: dict[str, Any]) -> str:
    """:data:`RUN_NAME` of a run dict: under its ``variant`` (the method itself when untuned or absent);
    ``ValueError`` for a tuned method's evaluation run before its variant is selected."""
    method = run.get("variant", run["method"])
    if method is None:
        raise ValueError(
            f"run {run['experiment']}/{run['operator']}/{run['method']}: no variant selected yet"
        )
    return RUN_NAME.format(
        experiment=run["experiment"], operator=run["operator"], method=method, seed=run["seed"]
    )


def run_path(run: dict[str, Any]) -> str:
    """The run file of a run dict (see :func:`run_name`)."""
    return f"results/runs/{run_name(run)}.nc"


def read_selections(cfg: dict[str, Any], root: str | Path = ".") -> dict[tuple[str, str, str], str]:
    """(experiment, operator, method) -> the selected variant, from the selection files under ``root``;
    ``FileNotFoundError`` naming the first that is missing (the sweep's tune step writes them)."""
    out = {}
    for job in tune_jobs(cfg):
        path = Path(root) / SELECTION.format(**job)
        if not path.is_file():
            raise FileNotFoundError(f"no selection file {path}: run the sweep's tune step first")
        out[(job["experiment"], job["operator"], job["method"])] = json.loads(path.read_text())["selected"]
    return out


def is_score_based(cfg: dict[str, Any], method: str) -> bool:
    """Whether ``method`` (or a tuned method: all its variants share the filter) is a score-based filter
    (it gets the `gpu` resource)."""
    return cfg["methods"][variants_of(cfg, method)[0]]["filter"] in SCORE_BASED


def needs_pretraining(cfg: dict[str, Any], method: str) -> bool:
    """Whether ``method`` loads a pretrained network: score-based, except MASF in scratch mode (it trains
    on the ensemble) or with ``score_model: gaussian`` (the ensemble's Gaussian fit, no network)."""
    m = cfg["methods"][method]
    if m["filter"] not in SCORE_BASED:
        return False
    return not (m.get("scratch", False) or m.get("score_model", "network") == "gaussian")


def needs_climatology(cfg: dict[str, Any], method: str) -> bool:
    """Whether ``method``'s runs read the climatology snapshots: the ``climatology`` method (its draws) and
    every method with a pretrained network (its prior: pathwise bridge draws, fine-tuning replay)."""
    return cfg["methods"][method]["filter"] == "climatology" or needs_pretraining(cfg, method)


def runs(
    cfg: dict[str, Any], selected: dict[tuple[str, str, str], str] | None = None
) -> list[dict[str, Any]]:
    """Every evaluation run (experiment, operator, method, seed of ``seeds``) of the sweep, as dicts.

    Each dict also has ``variant``, the name its files are under (see :func:`run_path`): the method
    itself, or for a tuned method its variant in ``selected`` ((experiment, operator, method) -> variant;
    None until selected), and ``checkpoint_operator`` and ``checkpoint_method``: whose checkpoint the run
    loads (see :func:`checkpoint_owners`), or None for methods without one.
    """
    return _runs(cfg, "seeds", selected or {})


def tuning_runs(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Every tuning run: each variant of each tuned method on the ``tuning_seeds``, as :func:`runs`."""
    return _runs(cfg, "tuning_seeds", None)


def _runs(
    cfg: dict[str, Any], seeds: str, selected: dict[tuple[str, str, str], str] | None
) -> list[dict[str, Any]]:
    owners = checkpoint_owners(cfg)
    out = []
    for ename, exp in cfg["experiments"].items():
        for oname in exp["operators"]:
            for mname in methods_for(cfg, ename, oname):
                if selected is None:  # tuning runs: every variant of the tuned methods
                    variants = variants_of(cfg, mname) if is_tuned(cfg, mname) else []
                else:
                    variants = [selected.get((ename, oname, mname)) if is_tuned(cfg, mname) else mname]
                for variant in variants:
                    owner = owners.get((ename, oname, variant), (None, None)) if variant else (None, None)
                    for seed in exp[seeds]:
                        out.append(
                            {
                                "experiment": ename,
                                "operator": oname,
                                "method": mname,
                                "variant": variant,
                                "seed": seed,
                                "checkpoint_operator": owner[0],
                                "checkpoint_method": owner[1],
                            }
                        )
    return out


def checkpoint_owners(cfg: dict[str, Any]) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(experiment, operator, method) -> (operator, method) of the checkpoint it uses, for every method
    (every variant of a tuned one) that :func:`needs_pretraining`.

    Runs of one experiment with equal :func:`pretrain_spec` share one checkpoint, owned by the first of
    them (operators in order, then each operator's methods): MASF's bridge and reference samplers train
    the same network, and SF and SSLS, whose training does not involve the operator, train one network
    per experiment for all its operators.
    """
    owners: dict[tuple[str, str, str], tuple[str, str]] = {}
    for ename, exp in cfg["experiments"].items():
        specs: list[tuple[tuple[str, str], dict[str, Any]]] = []
        for oname in exp["operators"]:
            for mname in (v for m in methods_for(cfg, ename, oname) for v in variants_of(cfg, m)):
                if not needs_pretraining(cfg, mname):
                    continue
                spec = pretrain_spec(cfg, ename, oname, mname)
                owner = next((key for key, s in specs if s == spec), (oname, mname))
                if owner == (oname, mname):
                    specs.append((owner, spec))
                owners[(ename, oname, mname)] = owner
    return owners


def pretrain_jobs(cfg: dict[str, Any]) -> list[dict[str, str]]:
    """Every (experiment, operator, method) that owns a checkpoint (see :func:`checkpoint_owners`)."""
    return [
        {"experiment": e, "operator": o, "method": m}
        for (e, o, m), owner in checkpoint_owners(cfg).items()
        if owner == (o, m)
    ]


def spatial_experiments(cfg: dict[str, Any]) -> list[str]:
    """Experiments whose state is a 2-D field (they get vorticity panels)."""
    return [e for e, x in cfg["experiments"].items() if SYSTEM_DIMS[x["system"]["name"]] == 2]


# ---- what each stage needs (the rules pass these as params, so a change reruns the stage) ----------


def _operator(cfg: dict[str, Any], experiment: str, operator: str) -> dict[str, Any]:
    op = cfg["experiments"][experiment]["operators"][operator]
    return {k: v for k, v in op.items() if k != "methods"}


def simulate_spec(cfg: dict[str, Any], experiment: str) -> dict[str, Any]:
    """System, all operators, cycles and steps per cycle: what the truth and observations depend on."""
    exp = cfg["experiments"][experiment]
    return {
        "system": exp["system"],
        "operators": {o: _operator(cfg, experiment, o) for o in exp["operators"]},
        "cycles": exp["cycles"],
        "steps_per_cycle": exp["steps_per_cycle"],
        "spinup_steps": exp["spinup_steps"],
        "dtype": cfg["dtype"],
    }


def dataset_spec(cfg: dict[str, Any], experiment: str) -> dict[str, Any]:
    """System and snapshot count: what the pretraining snapshots depend on."""
    exp = cfg["experiments"][experiment]
    return {
        "system": exp["system"],
        "samples": exp["dataset"]["samples"],
        "seed": exp["dataset"]["seed"],
        "per_trajectory": exp["dataset"]["per_trajectory"],
        "interval": exp["dataset"]["interval"],
        "spinup_steps": exp["spinup_steps"],
        "device": cfg["device"],
        "dtype": cfg["dtype"],
    }


def pretrain_spec(cfg: dict[str, Any], experiment: str, operator: str, method: str) -> dict[str, Any]:
    """What ``method``'s pretraining depends on: the system, the operator (not for SF and SSLS, whose
    denoising losses do not involve it), the training-relevant hyper-parameters and the data seed."""
    exp = cfg["experiments"][experiment]
    m = cfg["methods"][method]
    skip = SAMPLING_ONLY.get(m["filter"], frozenset())
    if m["filter"] == "masf" and m.get("sampler", "bridge") in LINEAR_ONLY_SAMPLERS:
        skip = skip | {"sampler"}  # the bridge and reference samplers use the same single-head network
    spec = {
        "system": exp["system"],
        "method": {k: v for k, v in m.items() if k not in skip},
        "seed": exp["dataset"]["seed"],
        "device": cfg["device"],
    }
    if m["filter"] not in OPERATOR_FREE_TRAINING:
        spec["operator"] = _operator(cfg, experiment, operator)
    return spec


def assimilate_spec(cfg: dict[str, Any], experiment: str, operator: str, method: str) -> dict[str, Any]:
    """Everything one filtering run depends on (besides the seed and its input files)."""
    exp = cfg["experiments"][experiment]
    return {
        "system": exp["system"],
        "operator": _operator(cfg, experiment, operator),
        "method": cfg["methods"][method],
        "ensemble_size": exp["ensemble_size"],
        "steps_per_cycle": exp["steps_per_cycle"],
        "spinup_steps": exp["spinup_steps"],
        "device": cfg["device"],
        "dtype": cfg["dtype"],
        "names": {"experiment": experiment, "operator": operator, "method": method},
    }


def to_json(spec: dict[str, Any]) -> str:
    """Canonical JSON (sorted keys, compact) so that equal specs give equal Snakemake params."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))
