# simulate: (experiment, seed) -> the truth at every observation time and the observations of every
# operator of the experiment (one NetCDF). CPU only; in the group "simulations" (see the Snakefile).


rule simulate:
    output:
        mc.DATA,
    params:
        spec=lambda wc: mc.to_json(mc.simulate_spec(CFG, wc.experiment)),
    log:
        mc.LOG.format(stage="simulate", name="{experiment}/seed{seed}"),
    benchmark:
        mc.BENCHMARK.format(stage="simulate", name="{experiment}/seed{seed}")
    threads: res("simulate", "threads")
    group: "simulations"
    resources:
        group_slots=1,
        mem_mb=res("simulate", "mem_mb"),
        runtime=res("simulate", "runtime"),
    shell:
        "{MASF} simulate --spec {params.spec:q} --seed {wildcards.seed} --threads {threads}"
        " --out {output:q} > {log:q} 2>&1"
