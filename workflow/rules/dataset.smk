# dataset: (experiment) -> climatology snapshots of the system, the pretraining data of every
# score-based method of the experiment (one NetCDF). Needed only when a score-based method is run.


rule dataset:
    output:
        mc.SNAPSHOTS,
    params:
        spec=lambda wc: mc.to_json(mc.dataset_spec(CFG, wc.experiment)),
    log:
        mc.LOG.format(stage="dataset", name="{experiment}"),
    benchmark:
        mc.BENCHMARK.format(stage="dataset", name="{experiment}")
    threads: res("dataset", "threads")
    resources:
        mem_mb=res("dataset", "mem_mb"),
        runtime=res("dataset", "runtime"),
        gpu=res("dataset", "gpu"),
    shell:
        "{MASF} dataset --spec {params.spec:q} --threads {threads} --out {output:q} > {log:q} 2>&1"
