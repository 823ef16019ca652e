# Helpers shared by the rule files: resources from the config and the input functions of the rules.
# (Included first by the Snakefile; CFG is the validated config, mc is masf.config.)


# (experiment, operator, method) -> (operator, method) of the checkpoint it loads; computed once per parse
CHECKPOINT_OWNERS = mc.checkpoint_owners(CFG)


def res(stage, key):
    """A resource of a stage from the config's `resources` section."""
    return CFG["resources"][stage][key]


def pretrain_data(wildcards):
    """The snapshots of the experiment; refuses a method that loads no pretrained network."""
    if not mc.needs_pretraining(CFG, wildcards.method):
        raise ValueError(f"method {wildcards.method!r} loads no pretrained network; it has no checkpoint")
    return mc.SNAPSHOTS.format(experiment=wildcards.experiment)


def assimilate_inputs(wildcards):
    """The truth/observations file, the checkpoint for methods that load a pretrained network, and the
    climatology snapshots for the methods that draw from the climatology (mc.needs_climatology)."""
    inputs = {"data": mc.DATA.format(experiment=wildcards.experiment, seed=wildcards.seed)}
    if mc.needs_climatology(CFG, wildcards.method):
        inputs["climatology"] = mc.SNAPSHOTS.format(experiment=wildcards.experiment)
    if mc.needs_pretraining(CFG, wildcards.method):
        # runs with equal pretraining specs share the checkpoint of the first of them
        operator, method = CHECKPOINT_OWNERS[(wildcards.experiment, wildcards.operator, wildcards.method)]
        inputs["checkpoint"] = mc.CHECKPOINT.format(experiment=wildcards.experiment, operator=operator, method=method)
    return inputs


def input_options(wildcards, input):
    """`--checkpoint PATH` and `--climatology PATH` (shell-quoted) for the job's optional inputs."""
    options = [f"--{key} {shlex.quote(input[key])}" for key in ("checkpoint", "climatology") if key in input.keys()]
    return " ".join(options)


def run_files(wildcards):
    """Every run file of the sweep."""
    return [mc.RUN.format(**r) for r in mc.runs(CFG)]


def benchmark_files(wildcards):
    """The benchmark files of every assimilate and pretrain job (the wall-clock source of truth)."""
    runs = [
        mc.BENCHMARK.format(stage="assimilate", name="{experiment}/{operator}/{method}/seed{seed}".format(**r))
        for r in mc.runs(CFG)
    ]
    pretrain = [
        mc.BENCHMARK.format(stage="pretrain", name="{experiment}/{operator}/{method}".format(**j))
        for j in mc.pretrain_jobs(CFG)
    ]
    return runs + pretrain


def figure(name, caption, subcategory):
    """A summary figure of an experiment, marked for the report."""
    return report(
        f"{mc.FIGURES}/{name}.png",
        caption=f"../report/{caption}.rst",
        category="{experiment}",
        subcategory=subcategory,
        labels={"figure": name.replace("_", " ")},
    )


def vorticity_inputs(wildcards):
    """Truth/observations of the first seed and each method's run file for one operator."""
    exp = CFG["experiments"][wildcards.experiment]
    seed = exp["seeds"][0]
    methods = mc.methods_for(CFG, wildcards.experiment, wildcards.operator)
    return {
        "data": mc.DATA.format(experiment=wildcards.experiment, seed=seed),
        "runs": [
            mc.RUN.format(experiment=wildcards.experiment, operator=wildcards.operator, method=m, seed=seed)
            for m in methods
        ],
    }
