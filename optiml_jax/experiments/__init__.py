"""Generalization experiments as commands (paper section 4): sweeps of ordinary training runs and evaluations.

    python -m optiml_jax.experiments --gin_file=gin/experiments/task_scaling_cpu.gin [--gin.SMOKE=True]

An experiment is a list of points (an x value: a number of training tasks, an EPS cap, a mixture variant, an
instruction mode); each point is several runs (random task subsets, training seeds), each run an ordinary
MODEL_DIR trained by `optiml_jax.train.train` and evaluated with `optiml_jax.evaluation` (both resumable), all
under EXPERIMENT_DIR. `aggregate` turns the runs' evaluation results into ``results.json`` (per point and per
generalization level: the mean over runs with a 95% bootstrap interval over examples, tasks and runs) and
`figures` draws them.

Modules: `definitions` (what each experiment varies: pure), `instructions` (evaluation prompts without their
definition, with the label space only, and the label-space-aware trivial baseline: pure), `aggregate` (pure),
`figures`, `runner` (the side effects: training, evaluation, files) and `__main__` (the gin CLI). This package
sits at the top of the data flow: it imports the train and eval layers, nothing imports it.
"""
