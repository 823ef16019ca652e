# aggregate: every run file (+ the benchmark files, the wall-clock source of truth) -> results/metrics.nc
# with dims experiment, operator, method, seed, time, and a summary table for the report.


def _run_files(wildcards):
    return [mc.RUN.format(**r) for r in mc.runs(CFG)]


def _benchmark_files(wildcards):
    runs = [
        mc.BENCHMARK.format(stage="assimilate", name="{experiment}/{operator}/{method}/seed{seed}".format(**r))
        for r in mc.runs(CFG)
    ]
    pretrain = [
        mc.BENCHMARK.format(stage="pretrain", name="{experiment}/{operator}/{method}".format(**j))
        for j in mc.pretrain_jobs(CFG)
    ]
    return runs + pretrain


rule aggregate:
    input:
        runs=_run_files,
        benchmarks=_benchmark_files,
    output:
        metrics=report(
            mc.METRICS,
            caption="../report/metrics.rst",
            category="Summary",
            labels={"file": "metrics.nc"},
        ),
        summary=report(
            mc.SUMMARY,
            caption="../report/summary.rst",
            category="Summary",
            labels={"file": "summary table"},
        ),
    params:
        runs=lambda wc: mc.to_json(mc.runs(CFG)),
    log:
        mc.LOG.format(stage="aggregate", name="aggregate"),
    benchmark:
        mc.BENCHMARK.format(stage="aggregate", name="aggregate")
    threads: res("aggregate", "threads")
    resources:
        mem_mb=res("aggregate", "mem_mb"),
        runtime=res("aggregate", "runtime"),
    shell:
        "{MASF} aggregate --runs {params.runs:q} --out {output.metrics:q} --summary {output.summary:q}"
        " > {log:q} 2>&1"
