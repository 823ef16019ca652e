# figures: results/metrics.nc -> per experiment: RMSE over time, time-mean RMSE per operator and method,
# spread vs RMSE, wall-clock per stage; for 2-D experiments a vorticity panel per operator from the run
# files (truth, observation, each method's mean at a few cycles).


def _fig(name, caption, subcategory):
    return report(
        f"{mc.FIGURES}/{name}.png",
        caption=f"../report/{caption}.rst",
        category="{experiment}",
        subcategory=subcategory,
        labels={"figure": name.replace("_", " ")},
    )


rule figures:
    input:
        metrics=mc.METRICS,
    output:
        rmse_time=_fig("rmse_time", "rmse_time", "accuracy"),
        rmse_mean=_fig("rmse_mean", "rmse_mean", "accuracy"),
        spread_rmse=_fig("spread_rmse", "spread_rmse", "calibration"),
        wall_clock=_fig("wall_clock", "wall_clock", "cost"),
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
        "{MASF} figures summary --metrics {input.metrics:q} --experiment {wildcards.experiment}"
        " --outdir {params.outdir:q} > {log:q} 2>&1"


def _vorticity_runs(wildcards):
    exp = CFG["experiments"][wildcards.experiment]
    return {
        "data": mc.DATA.format(experiment=wildcards.experiment, seed=exp["seeds"][0]),
        "runs": [
            mc.RUN.format(
                experiment=wildcards.experiment, operator=wildcards.operator, method=m, seed=exp["seeds"][0]
            )
            for m in mc.methods_for(CFG, wildcards.experiment, wildcards.operator)
        ],
    }


rule vorticity:
    input:
        unpack(_vorticity_runs),
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
        "{MASF} figures vorticity --data {input.data:q} --operator {wildcards.operator} --runs {input.runs:q}"
        " --cycles {params.cycles} --out {output:q} > {log:q} 2>&1"
