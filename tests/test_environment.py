"""environment.yml (for conda users on clusters) must agree with pyproject.toml."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAME = {"torch": "pytorch", "netCDF4": "netcdf4"}


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", requirement.strip())
    assert match, requirement
    return match.group(1), match.group(3).replace(" ", "")


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == "masf"
    assert "conda-forge" in env["channels"]
    conda = {}
    pip_entries = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip_entries += dep["pip"]
            continue
        name, spec = _split(dep.replace("=", "==", 1) if re.match(r"^python=\d", dep) else dep)
        conda[name] = spec
    assert conda["python"] == "==3.11"
    assert project["requires-python"] == ">=3.11"
    for requirement in project["dependencies"]:
        name, spec = _split(requirement)
        conda_name = CONDA_NAME.get(name, name)
        assert conda_name in conda, f"{requirement} from pyproject.toml is missing in environment.yml"
        assert conda[conda_name] == spec, (
            f"{name}: pyproject says {spec!r}, environment.yml {conda[conda_name]!r}"
        )
    assert "pygments" in conda, "snakemake[reports] needs pygments in the conda environment"
    assert pip_entries == ["-e ."], "environment.yml must install masf itself (editable) with pip"
