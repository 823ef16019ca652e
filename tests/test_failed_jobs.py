"""`make sweep` keeps going past a failed job and lists the failures at the end
(workflow/scripts/failed_jobs.py), tested on a real Snakemake run of a toy workflow."""

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "failed_jobs.py"

TOY = textwrap.dedent(
    """
    rule all:
        input: expand("out/{i}.txt", i=range(4))

    rule make:
        output: "out/{i}.txt"
        log: "logs/{i}.log"
        shell: "if [ {wildcards.i} = 1 ] || [ {wildcards.i} = 3 ]; then echo boom > {log}; exit 3; fi; echo ok > {output}"
    """
)


def test_a_failed_job_does_not_stop_the_sweep_and_is_listed_at_the_end(tmp_path):
    (tmp_path / "Snakefile").write_text(TOY)
    snakemake = Path(sys.executable).parent / "snakemake"
    done = subprocess.run(
        [str(snakemake), "--cores", "1", "--keep-going"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.txt", "2.txt"]  # the others ran
    listed = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert listed[0].startswith("2 job(s) failed")
    assert sorted(listed[1:3]) == ["  make: out/1.txt; log logs/1.log", "  make: out/3.txt; log logs/3.log"]


def test_no_failure_and_no_log_are_said_plainly(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "no Snakemake log in .snakemake/log"
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("failed_jobs", SCRIPT)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.failed_jobs("Building DAG of jobs...\nFinished jobid: 0\n") == []
