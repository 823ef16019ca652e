# figures: results/metrics.nc -> per experiment: RMSE over time, time-mean RMSE per operator and method,
# spread vs RMSE, wall-clock per stage; for 2-D experiments a vorticity panel per operator from the run
# files (truth, observation, each method's mean at a few cycles).


rule figures:
    input:
        metrics=mc.METRICS,
    output:
        rmse_time=figure("rmse_time", "rmse_time", "accuracy"),
        rmse_mean=figure("rmse_mean", "rmse_mean", "accuracy"),
        spread_rmse=figure("spread_rmse", "spread_rmse", "calibration"),
        wall_clock=figure("wall_clock", "wall_clock", "cost"),
    params:
        outdir=lambda wc: mc.FIGURES.format(experiment=wc.experiment),
    log:
        mc.LOG.format(stage="figures", name="{experiment}"),
    benchmark:
        mc.BENCHMARK.format(stage="figures", name="{experiment}")
    threads: res("figures", "threads")
    resources:
        mem_mb=res("figures", "mem_mb"),
        runtime=res("figures", "runtime"),
    shell:
        "{MASF} figures summary --metrics {input.metrics:q} --experiment {wildcards.experiment:q}"
        " --outdir {params.outdir:q} > {log:q} 2>&1"


rule vorticity:
    input:
        data=vorticity_data,
        runs=vorticity_runs,
    output:
        report(
            f"{mc.FIGURES}/vorticity_{{operator}}.png",
            caption="../report/vorticity.rst",
            category="{experiment}",
            subcategory="fields",
            labels={"figure": "vorticity", "operator": "{operator}"},
        ),
    params:
        cycles=CFG["figures"]["panel_cycles"],
    log:
        mc.LOG.format(stage="vorticity", name="{experiment}/{operator}"),
    benchmark:
        mc.BENCHMARK.format(stage="vorticity", name="{experiment}/{operator}")
    threads: res("figures", "threads")
    resources:
        mem_mb=res("figures", "mem_mb"),
        runtime=res("figures", "runtime"),
    shell:
        "{MASF} figures vorticity --data {input.data:q} --operator {wildcards.operator:q} --runs {input.runs:q}"
        " --cycles {params.cycles} --out {output:q} > {log:q} 2>&1"
