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


def selection_files(experiment=None):
    """The selection files of the tuned methods (of one experiment, or of all)."""
    jobs = mc.tune_jobs(CFG)
    return [mc.SELECTION.format(**j) for j in jobs if experiment in (None, j["experiment"])]


def tuning_run_files(wildcards):
    """The tuning runs of one tuned method: each variant on each tuning seed."""
    seeds = CFG["experiments"][wildcards.experiment]["tuning_seeds"]
    return [
        mc.RUN.format(experiment=wildcards.experiment, operator=wildcards.operator, method=v, seed=s)
        for v in mc.variants_of(CFG, wildcards.method)
        for s in seeds
    ]


def selected_variant(experiment, operator, method):
    """The name the evaluation runs of ``method`` are under: itself, or for a tuned method the variant
    its `tune` checkpoint selected (Snakemake re-plans the dependent jobs once the checkpoint has run)."""
    if not mc.is_tuned(CFG, method):
        return method
    path = checkpoints.tune.get(experiment=experiment, operator=operator, method=method).output[0]
    return json.loads(Path(path).read_text())["selected"]


def evaluation_runs(tuned):
    """The evaluation runs of the untuned methods (``tuned`` False), or of the tuned ones under their
    selected variants (True; apart, so that the untuned runs need not wait for the tuning)."""
    if not tuned:
        return [r for r in mc.runs(CFG) if not mc.is_tuned(CFG, r["method"])]
    selected = {(j["experiment"], j["operator"], j["method"]): selected_variant(**j) for j in mc.tune_jobs(CFG)}
    return [r for r in mc.runs(CFG, selected) if mc.is_tuned(CFG, r["method"])]


def run_files(tuned):
    """An input function: the evaluation run files (see evaluation_runs)."""
    return lambda wildcards: [mc.run_path(r) for r in evaluation_runs(tuned)]


def benchmark_files(wildcards):
    """The benchmark files of every untuned evaluation and pretrain job (the wall-clock source of truth;
    a tuned method's appear with its run files, the rule's `tuned` input)."""
    runs = [mc.BENCHMARK.format(stage="assimilate", name=mc.run_name(r)) for r in evaluation_runs(False)]
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


def vorticity_data(wildcards):
    """Truth/observations of the experiment's first seed."""
    seed = CFG["experiments"][wildcards.experiment]["seeds"][0]
    return mc.DATA.format(experiment=wildcards.experiment, seed=seed)


def vorticity_runs(wildcards):
    """Each method's run file of the first seed for one operator (a tuned method's selected variant).
    A separate input from the data: until a `tune` checkpoint has run, Snakemake stands its output in
    for this input only, and the rule's other inputs stay as they are."""
    seed = CFG["experiments"][wildcards.experiment]["seeds"][0]
    methods = mc.methods_for(CFG, wildcards.experiment, wildcards.operator)
    return [
        mc.RUN.format(
            experiment=wildcards.experiment,
            operator=wildcards.operator,
            method=selected_variant(wildcards.experiment, wildcards.operator, m),
            seed=seed,
        )
        for m in methods
    ]
