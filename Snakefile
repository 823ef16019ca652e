# masf sweep: simulate -> dataset -> pretrain -> assimilate (-> tune -> assimilate) -> aggregate -> figures
# -> report.
# The configuration is described in config/README.md; stages live in workflow/rules/*.smk.
# Parsing this file must stay fast (every cluster job re-parses it): nothing here imports torch.

import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

from masf import config as mc


# The default config only when no --configfile is given: Snakemake would otherwise deep-merge the
# --configfile into config/sweep.yaml (e.g. paper.yaml's experiments added to the default ones).
if not workflow.overwrite_configfiles:

    configfile: "config/sweep.yaml"


# One-line errors (key path, bad value, what is allowed) before any job starts; then Snakemake's own
# validate() against the same schema fills the defaults into `config`.
try:
    for path in workflow.overwrite_configfiles or ["config/sweep.yaml"]:
        mc.load(path)  # refuses a key given twice (the YAML Snakemake read kept the last one silently)
    CFG = mc.validate(config)
except mc.ConfigError as err:
    sys.exit(f"masf config error: {err}")
validate(config, "workflow/schemas/sweep.schema.yaml")

# How rules call the masf CLI: the interpreter running Snakemake, so no activated venv is needed.
MASF = f"{shlex.quote(sys.executable)} -m masf.cli"


wildcard_constraints:
    experiment=r"[A-Za-z][A-Za-z0-9_]*",
    operator=r"[A-Za-z][A-Za-z0-9_]*",
    method=rf"[A-Za-z][A-Za-z0-9_]*|{mc.tuning.VARIANT_PATTERN}",  # a method or a variant of a tuned one
    seed=r"\d+",


report: "workflow/report/workflow.rst"


# On a cluster, a profile may bundle the short CPU jobs (simulations, and runs of the classical filters)
# into few cluster jobs: those jobs belong to the groups "simulations" and "runs", `--group-components`
# sets how many jobs one cluster job holds, and each job holds one `group_slots`, so that
# `--resources group_slots=S` caps how many run at once inside one (profiles/README.md, "Grouped
# jobs"). Local runs ignore groups.
resource_scopes:
    group_slots="local",


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/assimilate.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        mc.METRICS,
        mc.SUMMARY,
        [
            f"{mc.FIGURES.format(experiment=e)}/{name}.png"
            for e in CFG["experiments"]
            for name in mc.SUMMARY_FIGURES
        ],
        selection_files(),
        [
            f"{mc.FIGURES.format(experiment=e)}/{mc.TUNING_FIGURE}.png"
            for e in dict.fromkeys(j["experiment"] for j in mc.tune_jobs(CFG))
        ],
        [
            f"{mc.FIGURES.format(experiment=e)}/vorticity_{o}.png"
            for e in mc.spatial_experiments(CFG)
            for o in CFG["experiments"][e]["operators"]
        ],


onsuccess:
    # Build results/report.html with the same config; a failure only warns (the sweep itself succeeded).
    if not Path(mc.METRICS).exists():
        print("masf: no results/metrics.nc, so no report was built", file=sys.stderr)
    else:
        Path("results/logs").mkdir(parents=True, exist_ok=True)
        used = Path("results/logs/report-config.yaml")
        used.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        command = [
            sys.executable, "-m", "snakemake", "--report", "results/report.html",
            "--snakefile", str(Path(workflow.main_snakefile).resolve()),
            "--configfile", str(used),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                tail = "\n".join(done.stderr.strip().splitlines()[-15:])
                print(f"masf: WARNING: building results/report.html failed:\n{tail}", file=sys.stderr)
            else:
                print("masf: report written to results/report.html", file=sys.stderr)
        except (OSError, subprocess.SubprocessError) as err:
            print(f"masf: WARNING: building results/report.html failed: {err}", file=sys.stderr)
