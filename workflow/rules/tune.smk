# tune: (experiment, operator, tuned method) -> results/tuning/.../<method>.json, the variant with the
# best mean metric on the experiment's tuning seeds (docs/tuning.md), and per experiment a figure of the
# tuning surface. `tune` is a checkpoint: which variant's evaluation runs the sweep needs is known only
# once it has run (common.smk, selected_variant). Every selection is a target of `all`, so all tuning runs
# are planned from the start.


checkpoint tune:
    input:
        tuning_run_files,
    output:
        mc.SELECTION,
    params:
        spec=lambda wc: mc.to_json(mc.tune_spec(CFG, wc.experiment, wc.operator, wc.method)),
    log:
        mc.LOG.format(stage="tune", name="{experiment}/{operator}/{method}"),
    localrule: True
    shell:
        "{MASF} tune --spec {params.spec:q} --out {output:q} > {log:q} 2>&1"


rule tuning_figure:
    input:
        selections=lambda wc: selection_files(wc.experiment),
    output:
        figure(mc.TUNING_FIGURE, "tuning", "tuning"),
    log:
        mc.LOG.format(stage="figures", name="{experiment}-tuning"),
    threads: res("figures", "threads")
    resources:
        mem_mb=res("figures", "mem_mb"),
        runtime=res("figures", "runtime"),
    shell:
        "{MASF} figures tuning --selections {input.selections:q} --out {output:q} > {log:q} 2>&1"
