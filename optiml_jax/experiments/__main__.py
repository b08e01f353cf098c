"""Experiments CLI: ``python -m optiml_jax.experiments --gin_file=gin/experiments/<name>.gin``.

    python -m optiml_jax.experiments --gin_file=gin/experiments/task_scaling_cpu.gin \
        [--gin.SMOKE=True] [--gin.EXPERIMENT_DIR="'runs/experiments/task_scaling_cpu'"]
    python -m optiml_jax.experiments --gin_file=... --num_workers=4 --worker_index=2   # one of 4 processes
    python -m optiml_jax.experiments --gin_file=... --aggregate_only                   # tables and figure only

Trains and evaluates every run of the experiment under EXPERIMENT_DIR (each an ordinary MODEL_DIR; a rerun
skips what is finished and resumes what was killed), then writes EXPERIMENT_DIR/results.json
(``{"points": [{"x", "score", "ci_low", "ci_high", "n_runs", ...}], "levels": {level: {"points": [...]}}}``),
results.md and <experiment>.png. ``SMOKE = True`` runs the smallest sweep that exercises every code path (the
first and the last point, two runs each, a few steps, two examples per task). ``--num_workers N
--worker_index K`` runs every N-th trained model starting at K (N processes, e.g. one per host or job, split
the sweep without talking to each other); ``--aggregate_only`` only collects what is finished. Exit status 75
after SIGTERM/SIGINT (the interrupted training saved a checkpoint: rerun the same command).
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import gin

from optiml_jax import errors, gin_utils, partitioning
from optiml_jax import train as _train  # noqa: F401  (registers optiml_jax.PartitionConfig before gin parses)
from optiml_jax.experiments import definitions as defs
from optiml_jax.experiments import runner
from optiml_jax.tasks.schema import LEVELS

# Plain dataclasses, made bindable at this edge only.
for _cls in (defs.TaskScaling, defs.MixtureSweep, defs.MixtureVariants, defs.LeaveOneBenchmarkOut,
             defs.InstructionAblation, runner.EvalSettings):
    gin.external_configurable(_cls, module="optiml_jax.experiments")


@gin.configurable(module="optiml_jax.experiments")
def experiment(
    *,
    name: str = gin.REQUIRED,
    experiment_dir: str = gin.REQUIRED,
    definition: Any = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    smoke: bool = False,
    smoke_train_steps: int = 8,
    smoke_max_examples: int = 2,
    evaluation: runner.EvalSettings = runner.EvalSettings(),
    split: str | None = None,
    data_dir: str | None = None,
    mixture: str = "optiml_train",
    mixture_config: Any = None,
    partition: partitioning.PartitionConfig = partitioning.PartitionConfig(),
) -> tuple[runner.Settings, Any]:
    """An experiment's settings and definition; the training itself takes everything else from ``optiml_jax.train``'s bindings.

    Args:
      name: the experiment's name (the figure's file name).
      experiment_dir: where every run and the results go (EXPERIMENT_DIR).
      definition: what varies: ``@optiml_jax.experiments.TaskScaling()``, ``MixtureSweep()``,
        ``MixtureVariants()``, ``LeaveOneBenchmarkOut()`` or ``InstructionAblation()``.
      train_steps: optimizer steps of every run (the learning-rate schedule decays to 0 there).
      smoke: SMOKE: the first and last point, two runs each, ``smoke_train_steps`` steps, ``smoke_max_examples``
        evaluation examples per task.
      evaluation: how every run is evaluated (`runner.EvalSettings`).
      split, data_dir: the split definition and data folder, for training and evaluation alike (None: the
        defaults, i.e. the embedded suite without a data directory).
      mixture, mixture_config: the training mixture and its base recipe (``@optiml_jax.mixture_config()``); each
        run applies its overrides to it.
      partition: the evaluation mesh (training uses ``optiml_jax.train.partition``).
    """
    from optiml_jax.tasks import mixtures as mx

    if mixture_config is not None and not isinstance(mixture_config, mx.MixtureConfig):
        raise gin_utils.GinUsageError(f"experiment.mixture_config must be @optiml_jax.mixture_config(), got "
                                      f"{mixture_config!r}")
    if not experiment_dir or not isinstance(experiment_dir, (str, os.PathLike)):
        raise gin_utils.GinUsageError(f"EXPERIMENT_DIR (experiment.experiment_dir) must be a folder path, got "
                                      f"{experiment_dir!r}; e.g. --gin.EXPERIMENT_DIR=\"'runs/experiments/x'\"")
    for field, value in (("train_steps", train_steps), ("smoke_train_steps", smoke_train_steps),
                         ("smoke_max_examples", smoke_max_examples)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise gin_utils.GinUsageError(f"experiment.{field} must be a positive integer, got {value!r}")
    if not isinstance(smoke, bool):
        raise gin_utils.GinUsageError(f"SMOKE (experiment.smoke) must be True or False, got {smoke!r}")
    bad = [lv for lv in evaluation.levels if lv not in LEVELS]
    if bad:
        raise gin_utils.GinUsageError(f"EvalSettings.levels: unknown level(s) {bad}; choose from {LEVELS}")
    if not isinstance(definition, defs.DEFINITIONS):
        raise gin_utils.GinUsageError(f"experiment.definition must be one of "
                                      f"{[d.__name__ for d in defs.DEFINITIONS]}, got {definition!r}")
    return runner.Settings(
        name=name, experiment_dir=os.fspath(experiment_dir), train_steps=train_steps, evaluation=evaluation,
        smoke=smoke, smoke_train_steps=smoke_train_steps, smoke_max_examples=smoke_max_examples, split=split,
        data_dir=data_dir, mixture_name=mixture, mixture=mixture_config or mx.MixtureConfig(), partition=partition), definition


def _pop_worker_flags(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Removes --worker_index, --num_workers and --aggregate_only from argv; returns (rest, their values)."""
    out: dict[str, Any] = {"worker_index": 0, "num_workers": 1, "aggregate_only": False}
    rest = []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        name = a[2:].split("=", 1)[0] if a.startswith("--") else ""
        if name in ("worker_index", "num_workers"):
            if "=" in a:
                value = a.split("=", 1)[1]
            elif i + 1 < len(args):
                i += 1
                value = args[i]
            else:
                raise gin_utils.GinUsageError(f"--{name} needs a value (--{name}=N)")
            try:
                out[name] = int(value)
            except ValueError:
                raise gin_utils.GinUsageError(f"--{name}={value}: not an integer") from None
        elif a == "--aggregate_only":
            out["aggregate_only"] = True
        else:
            rest.append(a)
        i += 1
    return rest, out


def _help() -> str:
    return gin_utils.help_text(
        "optiml_jax.experiments", __doc__ or "",
        [("optiml_jax.experiments.experiment", experiment), ("TaskScaling", defs.TaskScaling),
         ("MixtureSweep", defs.MixtureSweep), ("MixtureVariants", defs.MixtureVariants),
         ("LeaveOneBenchmarkOut", defs.LeaveOneBenchmarkOut), ("InstructionAblation", defs.InstructionAblation),
         ("EvalSettings", runner.EvalSettings)],
        macros=[("EXPERIMENT_DIR", "where the runs, results.json and the figures go"),
                ("SMOKE", "True: the smallest sweep that exercises every code path")])


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see the module docstring); returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, workers = _pop_worker_flags(argv)
    except gin_utils.GinUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.EXIT_USAGE

    def _main(args: gin_utils.GinArgs) -> int:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the task layer imports TensorFlow (via seqio)
        from optiml_jax import tasks

        tasks.import_configurables()
        gin_utils.parse_gin(args.gin_files, args.gin_bindings, args.search_paths)
        try:
            settings, definition = experiment()
        except RuntimeError as e:  # gin: a REQUIRED parameter left unbound
            if "Required bindings" not in str(e):
                raise
            raise gin_utils.GinUsageError(f"{e.args[0]} (the experiment gin file must bind it)") from None
        try:
            out = runner.run_experiment(settings, definition, **workers)
        except runner.Preempted as e:
            print(f"{e}; checkpoint saved. Rerun the same command to continue.", file=sys.stderr)
            return errors.EXIT_PREEMPTED
        if "figure" in out:
            from optiml_jax.experiments import aggregate as agg_lib

            print(agg_lib.markdown_table(out["results"]))
            print(f"results: {out['results']['experiment']} -> {out['figure']}, {out['table']}, "
                  f"{out['results_path']}" + ("" if out["results"]["complete"] else
                                              f" (incomplete: {len(out['results']['missing_runs'])} runs missing)"))
        return errors.EXIT_OK

    return gin_utils.run_cli(_main, argv, help_fn=_help)


if __name__ == "__main__":
    sys.exit(main())
