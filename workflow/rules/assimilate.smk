# assimilate: (experiment, operator, method, seed) -> one run file (analysis means, spread, metrics,
# timings, status ok|diverged). Score-based methods also take their checkpoint and a GPU if configured.


def _assimilate_inputs(wildcards):
    inputs = {"data": mc.DATA.format(experiment=wildcards.experiment, seed=wildcards.seed)}
    if mc.is_score_based(CFG, wildcards.method):
        inputs["checkpoint"] = mc.CHECKPOINT.format(
            experiment=wildcards.experiment, operator=wildcards.operator, method=wildcards.method
        )
    return inputs


def _checkpoint_option(wildcards, input):
    return f"--checkpoint {shlex.quote(input.checkpoint)}" if "checkpoint" in input.keys() else ""


rule assimilate:
    input:
        unpack(_assimilate_inputs),
    output:
        mc.RUN,
    params:
        spec=lambda wc: mc.to_json(mc.assimilate_spec(CFG, wc.experiment, wc.operator, wc.method)),
        checkpoint=_checkpoint_option,
    log:
        mc.LOG.format(stage="assimilate", name="{experiment}/{operator}/{method}/seed{seed}"),
    benchmark:
        mc.BENCHMARK.format(stage="assimilate", name="{experiment}/{operator}/{method}/seed{seed}")
    threads: res("assimilate", "threads")
    resources:
        mem_mb=res("assimilate", "mem_mb"),
        runtime=res("assimilate", "runtime"),
        gpu=lambda wc: res("assimilate", "gpu") if mc.is_score_based(CFG, wc.method) else 0,
    shell:
        "{MASF} assimilate --spec {params.spec:q} --data {input.data:q} {params.checkpoint}"
        " --seed {wildcards.seed} --threads {threads} --out {output:q} > {log:q} 2>&1"
