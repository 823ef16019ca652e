# aggregate: every run file (+ the benchmark files, the wall-clock source of truth) -> results/metrics.nc
# with dims experiment, operator, method, seed, time, and a summary table for the report.
# The list of runs goes through a file (results/runs.json), never the command line: Linux caps one
# argument at 128 KiB, about 1,200 runs.


rule run_list:
    input:
        selections=selection_files(),
    output:
        mc.RUN_LIST,
    params:
        runs=lambda wc: mc.runs(CFG),  # (tuned methods' variants are filled in from their selections)
    localrule: True
    run:
        from masf.io import write_text

        write_text(json.dumps(mc.runs(CFG, mc.read_selections(CFG)), sort_keys=True), output[0])


rule aggregate:
    input:
        run_list=mc.RUN_LIST,
        runs=run_files(tuned=False),
        tuned=run_files(tuned=True),
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
    log:
        mc.LOG.format(stage="aggregate", name="aggregate"),
    benchmark:
        mc.BENCHMARK.format(stage="aggregate", name="aggregate")
    threads: res("aggregate", "threads")
    resources:
        mem_mb=res("aggregate", "mem_mb"),
        runtime=res("aggregate", "runtime"),
    shell:
        "{MASF} aggregate --runs-file {input.run_list:q} --jobs {threads} --out {output.metrics:q} --summary {output.summary:q}"
        " > {log:q} 2>&1"
