# pretrain: (experiment, operator, method) -> the score-network checkpoint of a score-based method,
# trained once on the experiment's snapshots and reused by every seed. Classical methods have none.


rule pretrain:
    input:
        data=pretrain_data,
    output:
        mc.CHECKPOINT,
    params:
        spec=lambda wc: mc.to_json(mc.pretrain_spec(CFG, wc.experiment, wc.operator, wc.method)),
    log:
        mc.LOG.format(stage="pretrain", name="{experiment}/{operator}/{method}"),
    benchmark:
        mc.BENCHMARK.format(stage="pretrain", name="{experiment}/{operator}/{method}")
    threads: res("pretrain", "threads")
    resources:
        mem_mb=res("pretrain", "mem_mb"),
        runtime=res("pretrain", "runtime"),
        gpu=res("pretrain", "gpu"),
    shell:
        "{MASF} pretrain --spec {params.spec:q} --data {input.data:q} --threads {threads}"
        " --out {output:q} > {log:q} 2>&1"
