# aggregate: every run file (+ the benchmark files, the wall-clock source of truth) -> results/metrics.nc
# with dims experiment, operator, method, seed, time, and a summary table for the report.


rule aggregate:
    input:
        runs=run_files,
        benchmarks=benchmark_files,
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
