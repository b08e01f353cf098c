"""The sweep runner: trains and evaluates every run of an experiment under EXPERIMENT_DIR, then aggregates.

Layout::

    EXPERIMENT_DIR/runs/<train_key>/            an ordinary MODEL_DIR (optiml_jax.train): checkpoints/, final/, ...
    EXPERIMENT_DIR/runs/<train_key>/experiment_run.json   written when its training finished
    EXPERIMENT_DIR/runs/<train_key>/eval-<mode>/          an ordinary evaluation directory (optiml_jax.evaluation)
    EXPERIMENT_DIR/baseline/results.json        the trivial baseline's aggregate (instruction ablation)
    EXPERIMENT_DIR/plan.json                    the points, their runs and what each run's mixture is
    EXPERIMENT_DIR/results.json, results.md, <experiment>.png

Resumable at every level: a finished training (its marker) or evaluation (its results.json with the same
settings) is skipped, a killed training resumes from its last checkpoint (`optiml_jax.train.train`), a killed
evaluation from its last finished unit. A marker written by other settings (another sweep, SMOKE vs full) is
refused instead of mixed in.

Work units are the trained models (each with its evaluations); ``worker_index`` / ``num_workers`` take every
``num_workers``-th unit, so N processes (one per host or per job on a cluster) split a sweep between them
without talking to each other; each writes the results of what is finished so far (``complete`` says whether
every run was there), and the last to finish writes the complete ones. A point that itself spans several hosts
(a 30B model) runs its unit on all of them with ``num_workers = 1`` (`optiml_jax.DistributedConfig`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from optiml_jax import partitioning
from optiml_jax.bootstrap import Bootstrap
from optiml_jax.errors import UserError
from optiml_jax.experiments import aggregate as agg_lib
from optiml_jax.experiments import definitions as defs
from optiml_jax.experiments import instructions as instr
from optiml_jax.tasks import mixtures as mx
from optiml_jax.tasks.schema import LEVELS

logger = logging.getLogger(__name__)

RUNS_DIR = "runs"
TRAIN_MARKER = "experiment_run.json"


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint: rerun the same command to continue."""


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How every run is evaluated (see `optiml_jax.evaluation.EvalConfig`; the same units for every run)."""

    split: str = "validation"
    shots: tuple[int, ...] = (0,)
    levels: tuple[str, ...] = LEVELS
    max_examples: int | None = None
    max_tasks_per_level: int | None = None
    max_new_tokens: int = 256
    seed: int = 0
    batch_size: int = 8
    token_budget: int | None = 8192
    param_dtype: str = "bfloat16"
    bootstrap_samples: int = 1000
    bootstrap_seed: int = 0


@dataclasses.dataclass(frozen=True)
class Settings:
    """One experiment's settings (the gin file's, see `optiml_jax.experiments.__main__`)."""

    name: str
    experiment_dir: str
    train_steps: int
    evaluation: EvalSettings = EvalSettings()
    smoke: bool = False
    smoke_train_steps: int = 8
    smoke_max_examples: int = 2
    split: str | None = None
    data_dir: str | None = None
    mixture_name: str = "optiml_train"
    mixture: mx.MixtureConfig = mx.MixtureConfig()
    partition: partitioning.PartitionConfig = partitioning.PartitionConfig()

    @property
    def steps(self) -> int:
        return self.smoke_train_steps if self.smoke else self.train_steps

    def eval_config(self):
        """The `EvalConfig` every run is evaluated with."""
        from optiml_jax import evaluation

        e = self.evaluation
        return evaluation.EvalConfig(
            split=e.split, shots=tuple(e.shots), levels=tuple(e.levels),
            max_tasks_per_level=e.max_tasks_per_level,
            max_examples=self.smoke_max_examples if self.smoke else e.max_examples,
            max_new_tokens=e.max_new_tokens, seed=e.seed, data_dir=self.data_dir, split_definition=self.split,
            bootstrap=Bootstrap(num_samples=e.bootstrap_samples, seed=e.bootstrap_seed) if e.bootstrap_samples
            else None)


@dataclasses.dataclass(frozen=True)
class TrainUnit:
    """A model to train (or the baseline, ``train_key`` None) and the instruction modes it is evaluated in."""

    train_key: str | None
    seed: int
    mixture: Mapping[str, Any]
    modes: tuple[str, ...]


# ---------------------------------------------------------------------------------------------------- plan

def bench_of(settings: Settings):
    """The `pipeline.Bench` the experiment trains and evaluates on."""
    from optiml_jax.tasks import pipeline

    return pipeline.get_bench(settings.data_dir, settings.split)


def context(settings: Settings, bench) -> defs.Context:
    """What the definitions see: the split's training tasks, the supervised level's tasks, the benchmarks."""
    train = bench.training_task_names(settings.mixture_name)
    split = settings.evaluation.split
    required = bench.eval_tasks.get((split, "supervised"), ()) if "supervised" in settings.evaluation.levels else ()
    return defs.Context(train_tasks=tuple(train), required_tasks=tuple(t for t in required if t in set(train)),
                        benchmarks=tuple(sorted({bench.catalogue[t].benchmark for t in train})),
                        base_mixture=settings.mixture)


def mixture_config(settings: Settings, overrides: Mapping[str, Any]) -> mx.MixtureConfig:
    """The base mixture with a run's overrides (an unknown field or a bad value names itself)."""
    try:
        return dataclasses.replace(settings.mixture, **dict(overrides))
    except (TypeError, ValueError) as e:
        raise defs.ExperimentError(f"mixture overrides {dict(overrides)}: {e}") from None


def mixture_summary(bench, settings: Settings, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """What a run's training mixture really is: distinct tasks, instances they are drawn from, benchmark
    shares, the share of zero-shot prompts, and a fingerprint of all of it (two runs that would train on the
    same stream have the same fingerprint)."""
    from optiml_jax.tasks import pipeline

    cfg = mixture_config(settings, overrides)
    rates, _ = pipeline.training_rates(bench, settings.mixture_name, cfg)
    pools = [len(pipeline.train_pool(bench, t, cfg)) for t in rates.task_names]
    zero_shot = float(cfg.shot_distribution()[0]) if cfg.metaicl and cfg.metaicl_max_shots else 1.0
    live = [(t, round(float(r), 9), n) for t, r, n in zip(rates.task_names, rates.rates, pools) if r > 0]
    fingerprint = json.dumps([live, round(zero_shot, 9), cfg.metaicl_separator if zero_shot < 1 else None])
    return {
        "tasks": len(live), "instances": int(sum(n for _, _, n in live)),
        "benchmark_share": {b: round(float(v), 4) for b, v in sorted(rates.benchmark_share.items())},
        "zero_shot_share": round(zero_shot, 4),
        "fingerprint": _digest(fingerprint),
    }


def _digest(text: str) -> str:
    import hashlib

    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def check_knobs(points: Sequence[defs.Point], mixtures: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuses a sweep whose points would train the same models: the knob did not reach the mixture.

    ``mixtures``: train_key -> `mixture_summary`. Points of an instruction ablation share their models on
    purpose and differ by evaluation mode, which `check_prompts` checks.
    """
    seen: dict[tuple, str] = {}
    for p in points:
        if p.baseline:
            continue
        sig = tuple(sorted((mixtures[r.train_key]["fingerprint"], r.instructions) for r in p.runs))
        if sig in seen:
            raise defs.ExperimentError(
                f"points {seen[sig]!r} and {p.label!r} train on exactly the same mixture and are evaluated the same "
                f"way: the setting they differ by has no effect on this bench (e.g. an EPS cap above every task's "
                f"size, a reasoning share without reasoning tasks, or an instance limit above every task's pool)")
        seen[sig] = p.label


def train_units(points: Sequence[defs.Point]) -> list[TrainUnit]:
    """The distinct models of the experiment in first-use order, each with the modes it is evaluated in."""
    order: list[str | None] = []
    info: dict[str | None, tuple[int, Mapping[str, Any]]] = {}
    modes: dict[str | None, list[str]] = {}
    for p in points:
        for r in p.runs:
            if r.train_key not in info:
                order.append(r.train_key)
                info[r.train_key] = (r.seed, dict(r.mixture))
                modes[r.train_key] = []
            elif (r.seed, dict(r.mixture)) != (info[r.train_key][0], dict(info[r.train_key][1])):
                raise defs.ExperimentError(f"run {r.train_key!r} is defined twice with different settings")
            if r.instructions not in modes[r.train_key]:
                modes[r.train_key].append(r.instructions)
    return [TrainUnit(k, info[k][0], info[k][1], tuple(modes[k])) for k in order]


def shard(units: Sequence[TrainUnit], worker_index: int, num_workers: int) -> list[TrainUnit]:
    """Worker ``worker_index`` of ``num_workers``'s units: every ``num_workers``-th, starting at its index."""
    if not isinstance(num_workers, int) or num_workers < 1:
        raise UserError(f"--num_workers must be a positive integer, got {num_workers!r}")
    if not isinstance(worker_index, int) or not 0 <= worker_index < num_workers:
        raise UserError(f"--worker_index must be in [0, {num_workers}), got {worker_index!r}")
    return list(units[worker_index::num_workers])


# ---------------------------------------------------------------------------------------------------- run

def _read_json(path: pathlib.Path) -> Any:
    with open(path) as f:
        return json.load(f)


def _write_json(path: pathlib.Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=_jsonable)
    os.replace(tmp, path)   # a killed run never leaves half a marker behind


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _is_main() -> bool:
    import jax

    return jax.process_index() == 0


def run_dir(settings: Settings, train_key: str) -> pathlib.Path:
    """The MODEL_DIR of a run."""
    return pathlib.Path(settings.experiment_dir) / RUNS_DIR / train_key


def _train_record(settings: Settings, unit: TrainUnit) -> dict[str, Any]:
    return json.loads(json.dumps({"experiment": settings.name, "seed": unit.seed, "mixture": dict(unit.mixture),
                                  "train_steps": settings.steps, "mixture_name": settings.mixture_name,
                                  "split": settings.split}, default=_jsonable))


def train_run(settings: Settings, unit: TrainUnit) -> pathlib.Path:
    """Trains one run into its MODEL_DIR (skipped when finished, resumed when killed); returns the MODEL_DIR."""
    from optiml_jax import train as train_lib

    model_dir = run_dir(settings, unit.train_key)
    marker = model_dir / TRAIN_MARKER
    record = _train_record(settings, unit)
    if marker.exists():
        stored = _read_json(marker)
        if {k: stored.get(k) for k in record} != record:   # besides the record, the marker holds timings
            raise defs.ExperimentError(
                f"{model_dir} was trained by other settings ({stored} vs {record}); use another "
                "EXPERIMENT_DIR (SMOKE and full sweeps need different ones)")
        return model_dir
    t0 = time.time()
    summary = train_lib.train(model_dir=str(model_dir), train_steps=settings.steps, seed=unit.seed,
                              mixture=settings.mixture_name, mixture_config=mixture_config(settings, unit.mixture),
                              split=settings.split, data_dir=settings.data_dir, progress_bar=False)
    if summary.get("preempted"):
        raise Preempted(f"training of {model_dir} stopped at step {summary['preempted']['step']}")
    if _is_main():
        _write_json(marker, {**record, "seconds": round(time.time() - t0, 1),
                             "last_heldout_loss": summary.get("last_heldout_loss")})
    return model_dir


class Evaluator:
    """Evaluates runs on the experiment's units: planned and rendered once per process, shared by every run."""

    def __init__(self, settings: Settings):
        from optiml_jax import evaluation

        self.settings = settings
        self.cfg = settings.eval_config()
        self.units = evaluation.plan(self.cfg)
        self.examples = evaluation.render_units(self.units, self.cfg)
        self._ablated: dict[str, dict] = {"full": self.examples}

    def examples_for(self, mode: str) -> dict:
        """The units' examples rendered in instruction mode ``mode`` (cached)."""
        if mode not in self._ablated:
            self._ablated[mode] = instr.ablate_units(self.examples, mode)
        return self._ablated[mode]

    def changed_prompts(self, mode: str) -> tuple[int, int]:
        """(prompts mode ``mode`` changes, prompts in all)."""
        return instr.changed_count(self.examples, self.examples_for(mode))

    def evaluate(self, model_dir: pathlib.Path, mode: str, name: str) -> dict:
        """The aggregate of one run in one mode (reused when its directory holds it with the same settings)."""
        from optiml_jax import evaluation, inference

        out = model_dir / f"eval-{mode}"
        settings = json.loads(json.dumps(self.cfg.unit_settings()))
        if ((out / "results.json").exists() and (out / "run.json").exists()
                and _read_json(out / "run.json").get("settings") == settings):
            return _read_json(out / "results.json")
        e = self.settings.evaluation
        mesh = partitioning.create_mesh(self.settings.partition.mesh_shape)
        predictor = inference.Predictor.from_checkpoint(
            inference.resolve_checkpoint(str(model_dir)), name=name, param_dtype=e.param_dtype, mesh=mesh,
            rules=partitioning.validate_rules(self.settings.partition.logical_axis_rules), batch_size=e.batch_size,
            token_budget=e.token_budget)
        return evaluation.evaluate(predictor, self.cfg, out, units=self.units, examples=self.examples_for(mode),
                                   progress=False)

    def baseline(self, bench) -> dict:
        """The label-space-aware trivial baseline's aggregate over the same units (`instructions`)."""
        from optiml_jax import evaluation

        results = []
        for u in self.units:
            exs = self.examples[u.key]
            scores = instr.trivial_example_scores(exs, bench.demo_pool(u.task.name, self.cfg.split),
                                                  evaluation.metric_fn(u.task.metric))
            results.append({"task": u.task.name, "benchmark": u.task.benchmark, "category": u.task.category,
                            "metric": u.task.metric, "level": u.level, "num_shots": u.shots,
                            "score": float(np.mean(scores)) if scores else None, "num_examples": len(exs),
                            "example_scores": scores, "example_ids": [x.id for x in exs]})
        return evaluation.aggregate(results, shots=self.cfg.shots, levels=self.cfg.levels, name="trivial baseline",
                                    split=self.cfg.split, bootstrap=self.cfg.bootstrap)


def baseline_path(settings: Settings) -> pathlib.Path:
    return pathlib.Path(settings.experiment_dir) / "baseline" / "results.json"


def run_unit(settings: Settings, unit: TrainUnit, evaluator: Evaluator, bench) -> None:
    """Trains (unless finished) and evaluates one unit in each of its modes; the baseline needs no model."""
    if unit.train_key is None:
        path = baseline_path(settings)
        if _is_main():
            _write_json(path, evaluator.baseline(bench))
        return
    model_dir = train_run(settings, unit)
    for mode in unit.modes:
        evaluator.evaluate(model_dir, mode, f"{unit.train_key}/{mode}")


# ----------------------------------------------------------------------------------------------- aggregate

def finished_aggregate(settings: Settings, run: defs.Run, cfg) -> dict | None:
    """A run's evaluation aggregate if it finished with this experiment's settings, else None."""
    if run.train_key is None:
        path = baseline_path(settings)
        return _read_json(path) if path.exists() else None
    model_dir = run_dir(settings, run.train_key)
    out = model_dir / f"eval-{run.instructions}"
    marker = model_dir / TRAIN_MARKER
    if not (marker.exists() and (out / "results.json").exists() and (out / "run.json").exists()):
        return None
    record = _train_record(settings, TrainUnit(run.train_key, run.seed, run.mixture, (run.instructions,)))
    stored = _read_json(marker)
    if {k: stored.get(k) for k in record} != record:   # another sweep's run: not this experiment's result
        return None
    if _read_json(out / "run.json").get("settings") != json.loads(json.dumps(cfg.unit_settings())):
        return None
    return _read_json(out / "results.json")


def collect(settings: Settings, definition: Any, points: Sequence[defs.Point],
            mixtures: Mapping[str, Mapping[str, Any]], changed: Mapping[str, tuple[int, int]]) -> dict[str, Any]:
    """results.json from every finished run (``complete`` False and ``missing_runs`` when some are not)."""
    cfg = settings.eval_config()
    bootstrap = cfg.bootstrap or Bootstrap()
    summaries, missing = [], []
    for p in points:
        aggs = []
        for r in p.runs:
            a = finished_aggregate(settings, r, cfg)
            if a is None:
                missing.append(r.key)
            else:
                aggs.append(a)
        meta: dict[str, Any] = {"key": p.key, "x": p.x, "label": p.label, "baseline": p.baseline}
        trained = [r for r in p.runs if r.train_key is not None]
        if trained:
            mix = [mixtures[r.train_key] for r in trained]
            meta["mixture"] = {"tasks": [m["tasks"] for m in mix], "instances": [m["instances"] for m in mix],
                               "zero_shot_share": mix[0]["zero_shot_share"],
                               "benchmark_share": mix[0]["benchmark_share"]}
            meta["seeds"] = [r.seed for r in trained]
            markers = [run_dir(settings, r.train_key) / TRAIN_MARKER for r in trained]
            meta["train_seconds"] = [_read_json(m).get("seconds") for m in markers if m.exists()]
            meta["instructions"] = trained[0].instructions
            if trained[0].instructions in changed:
                meta["changed_prompts"] = list(changed[trained[0].instructions])
        summaries.append(agg_lib.point_summary(meta, aggs, bootstrap, cfg.levels))
    return agg_lib.results_table(
        summaries, cfg.levels, experiment=settings.name, title=getattr(definition, "title", settings.name),
        x_label=getattr(definition, "x_label", "x"), log_x=bool(getattr(definition, "log_x", False)),
        numeric_x=defs.is_numeric_axis(points), smoke=settings.smoke,
        score="combined score: mean over generalization levels and shot settings (0-100)",
        interval=f"{bootstrap.confidence:.0%} bootstrap over examples (within tasks), tasks (within categories) "
                 f"and runs (seeds / task subsets within the point), {bootstrap.num_samples} replicates",
        complete=not missing, missing_runs=missing,
        settings={"train_steps": settings.steps, "eval": json.loads(json.dumps(cfg.unit_settings())),
                  "shots": list(cfg.shots), "levels": list(cfg.levels), "split_definition": settings.split})


def write_results(settings: Settings, results: Mapping[str, Any]) -> dict[str, str]:
    """results.json, results.md and the figure under EXPERIMENT_DIR; returns their paths."""
    from optiml_jax.experiments import figures

    root = pathlib.Path(settings.experiment_dir)
    _write_json(root / "results.json", results)
    (root / "results.md").write_text(f"# {results['title']}\n\n{results['interval']}.\n\n"
                                     + agg_lib.markdown_table(results))
    fig = figures.plot_experiment(results, root / f"{settings.name}.png")
    return {"results_path": str(root / "results.json"), "table": str(root / "results.md"), "figure": fig}


def prepare(settings: Settings, definition: Any) -> tuple[Any, list[defs.Point], dict, dict, Evaluator]:
    """Plans the experiment and checks that each knob reaches what it claims to change; writes plan.json."""
    bench = bench_of(settings)
    ctx = context(settings, bench)
    points = defs.experiment_points(definition, ctx, smoke=settings.smoke)
    mixtures = {u.train_key: mixture_summary(bench, settings, u.mixture)
                for u in train_units(points) if u.train_key is not None}
    check_knobs(points, mixtures)
    evaluator = Evaluator(settings)
    changed = {}
    for mode in sorted({r.instructions for p in points for r in p.runs} - {"full"}):
        changed[mode] = evaluator.changed_prompts(mode)
        if changed[mode][0] == 0:
            raise defs.ExperimentError(
                f"instruction mode {mode!r} changes none of the {changed[mode][1]} evaluation prompts (no task of "
                "this split has a task-level definition); drop it from InstructionAblation.modes")
    if _is_main():
        _write_json(pathlib.Path(settings.experiment_dir) / "plan.json", {
            "experiment": settings.name, "smoke": settings.smoke, "train_steps": settings.steps,
            "points": [{"key": p.key, "x": p.x, "label": p.label, "baseline": p.baseline,
                        "runs": [{"train_key": r.train_key, "seed": r.seed, "instructions": r.instructions,
                                  "mixture_overrides": dict(r.mixture),
                                  "mixture": mixtures.get(r.train_key)} for r in p.runs]} for p in points]})
    return bench, points, mixtures, changed, evaluator


def run_experiment(settings: Settings, definition: Any, *, worker_index: int = 0, num_workers: int = 1,
                   aggregate_only: bool = False, log=print) -> dict[str, Any]:
    """Runs this worker's share of the sweep, then aggregates what is finished; returns results and paths."""
    if not isinstance(settings.train_steps, int) or settings.train_steps < 1:
        raise UserError(f"run_experiment.train_steps must be a positive integer, got {settings.train_steps!r}")
    bench, points, mixtures, changed, evaluator = prepare(settings, definition)
    units = train_units(points)
    mine = shard(units, worker_index, num_workers)
    log(f"experiment {settings.name}: {len(points)} points, {len(units)} models "
        f"({'SMOKE, ' if settings.smoke else ''}{settings.steps} steps each); worker {worker_index}/{num_workers} "
        f"runs {0 if aggregate_only else len(mine)}; {len(evaluator.units)} evaluation units per model")
    if not aggregate_only:
        for i, unit in enumerate(mine):
            t0 = time.time()
            run_unit(settings, unit, evaluator, bench)
            log(f"  [{i + 1}/{len(mine)}] {unit.train_key or 'trivial baseline'}: done in {time.time() - t0:.0f} s "
                f"({', '.join(unit.modes)})")
    results = collect(settings, definition, points, mixtures, changed)
    paths = write_results(settings, results) if _is_main() else {}
    return {"results": results, **paths}
