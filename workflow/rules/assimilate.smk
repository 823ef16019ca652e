# assimilate: (experiment, operator, method, seed) -> one run file (analysis means, spread, metrics,
# timings, status ok|diverged). Score-based methods also take their checkpoint and a GPU if configured;
# they and the climatology reference take the climatology snapshots. Runs of the other methods are in
# the group "runs" (see the Snakefile): short CPU jobs that a cluster profile may bundle.


rule assimilate:
    input:
        unpack(assimilate_inputs),
    output:
        mc.RUN,
    params:
        spec=lambda wc: mc.to_json(mc.assimilate_spec(CFG, wc.experiment, wc.operator, wc.method)),
        options=input_options,
    log:
        mc.LOG.format(stage="assimilate", name=mc.RUN_NAME),
    benchmark:
        mc.BENCHMARK.format(stage="assimilate", name=mc.RUN_NAME)
    threads: res("assimilate", "threads")
    group: lambda wc: None if mc.is_score_based(CFG, wc.method) else "runs"
    resources:
        group_slots=1,
        mem_mb=res("assimilate", "mem_mb"),
        runtime=res("assimilate", "runtime"),
        gpu=lambda wc: res("assimilate", "gpu") if mc.is_score_based(CFG, wc.method) else 0,
    shell:
        "{MASF} assimilate --spec {params.spec:q} --data {input.data:q} {params.options}"
        " --seed {wildcards.seed} --threads {threads} --out {output:q} > {log:q} 2>&1"
