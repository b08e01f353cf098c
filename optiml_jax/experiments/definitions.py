"""What each experiment varies: its points, and the runs (training seeds, task subsets) of every point (pure).

A definition turns a `Context` (the training tasks of the split, the tasks that must stay in training, the
base mixture) into `Point`s; each point is one or more `Run`s, each naming the MODEL_DIR it trains
(``train_key``; runs of several points may share one, e.g. the instruction modes of one model) with its seed and
its `MixtureConfig` overrides, and how the model is evaluated (``instructions``). ``smoke()`` returns the
smallest copy that still exercises every code path: the first and the last point, two runs each.

Experiments (paper section 4 and later work):

* `TaskScaling`: log-spaced numbers of training tasks, random task subsets per point (nested: subset r of n
  tasks is a prefix of subset r of the next n), held-out categories fixed by the split; the supervised level's
  tasks are always in the subset, so that level keeps evaluating trained tasks;
* `MixtureSweep`: one numeric `MixtureConfig` field over values (the EPS cap, instances per task, the
  reasoning (chain-of-thought) share, MetaICL's Zipf exponent, i.e. the zero-/few-shot ratio);
* `MixtureVariants`: named mixtures (benchmark proportions, MetaICL on/off, prompt mixes);
* `LeaveOneBenchmarkOut`: the full mixture and, for each benchmark, the mixture with its proportion at 0;
* `InstructionAblation`: models trained on the full mixture, evaluated with the full definition, without it
  and with the label space only, beside the label-space-aware trivial baseline (`instructions`).
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from optiml_jax.errors import UserError
from optiml_jax.experiments.instructions import MODES, check_mode
from optiml_jax.tasks.mixtures import MixtureConfig


class ExperimentError(UserError):
    """An experiment definition that cannot run as configured (the message names the setting)."""


@dataclasses.dataclass(frozen=True)
class Context:
    """What a definition needs to know about the bench it runs on."""

    train_tasks: tuple[str, ...]            # the split's training tasks (the full mixture)
    required_tasks: tuple[str, ...]         # always trained on (the evaluated supervised level's tasks)
    benchmarks: tuple[str, ...]             # benchmarks of the training tasks
    base_mixture: MixtureConfig = MixtureConfig()


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run (``train_key``: its MODEL_DIR under EXPERIMENT_DIR/runs; None: no model, the trivial
    baseline) and one evaluation of it (``instructions``: an `instructions.MODES` entry)."""

    train_key: str | None
    seed: int = 0
    mixture: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    instructions: str = "full"
    subset: int | None = None

    @property
    def key(self) -> str:
        """A name unique within the experiment: the MODEL_DIR and the evaluation mode."""
        return f"{self.train_key or 'baseline'}/{self.instructions}"


@dataclasses.dataclass(frozen=True)
class Point:
    """One x value of an experiment and its runs."""

    key: str
    x: float | str
    label: str
    runs: tuple[Run, ...]
    baseline: bool = False      # the trivial baseline (drawn as a reference line, not a point of the curve)


def safe_key(text: str) -> str:
    """A directory-safe version of a label."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(text)).strip("_") or "x"


def _check_positive(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ExperimentError(f"{name} must be a positive integer, got {value!r}")
    return value


def _smoke(points: Sequence[Point]) -> list[Point]:
    """The first and the last point of the curve (plus any baseline), two runs each."""
    curve = [p for p in points if not p.baseline]
    keep = curve if len(curve) <= 2 else [curve[0], curve[-1]]
    out = [dataclasses.replace(p, runs=p.runs[:2]) for p in keep]
    return out + [p for p in points if p.baseline]


def _seeded_runs(prefix: str, seeds: int, mixture: Mapping[str, Any], base_seed: int,
                 instructions: str = "full") -> tuple[Run, ...]:
    return tuple(Run(train_key=f"{prefix}-seed{base_seed + s}", seed=base_seed + s, mixture=dict(mixture),
                     instructions=instructions) for s in range(seeds))


@dataclasses.dataclass(frozen=True)
class TaskScaling:
    """Performance against the number of training tasks (SuperNI, Flan 2022; paper section 4.2's question).

    Attributes:
      num_tasks: training-task counts (None: all training tasks of the split); sorted ascending.
      subsets: random task subsets per point (each trained with its own seed).
      seed: seed of the subsets (and the base of the training seeds).
    """

    num_tasks: tuple[int | None, ...] = (4, 8, 16, None)
    subsets: int = 3
    seed: int = 0
    title: str = "Task scaling"
    x_label: str = "training tasks"
    log_x: bool = True

    def points(self, ctx: Context) -> list[Point]:
        """One point per count; run r of every point trains on the first n tasks of permutation r."""
        _check_positive("TaskScaling.subsets", self.subsets)
        total = len(ctx.train_tasks)
        required = [t for t in ctx.train_tasks if t in set(ctx.required_tasks)]
        optional = [t for t in ctx.train_tasks if t not in set(required)]
        counts = sorted({total if n is None else _check_positive("TaskScaling.num_tasks entry", n)
                         for n in self.num_tasks})
        if not counts:
            raise ExperimentError("TaskScaling.num_tasks is empty")
        if counts[0] < max(1, len(required)):
            raise ExperimentError(
                f"TaskScaling.num_tasks: {counts[0]} tasks is fewer than the {len(required)} tasks the supervised "
                f"level evaluates ({', '.join(required)}); every subset keeps them, so use counts >= {len(required)}")
        if counts[-1] > total:
            raise ExperimentError(f"TaskScaling.num_tasks: {counts[-1]} tasks asked for but the split trains on "
                                  f"{total}; use counts <= {total} (None: all)")
        perms = [np.random.default_rng([self.seed, r]).permutation(len(optional)) for r in range(self.subsets)]
        points = []
        for n in counts:
            runs = []
            for r, perm in enumerate(perms):
                chosen = set(required) | {optional[int(i)] for i in perm[:n - len(required)]}
                tasks = tuple(t for t in ctx.train_tasks if t in chosen)
                runs.append(Run(train_key=f"n{n}-subset{r}", seed=self.seed + r, subset=r,
                                mixture={} if n == total else {"tasks": tasks}))
            points.append(Point(key=f"n{n}", x=n, label=str(n), runs=tuple(runs)))
        return points

    def smoke(self) -> TaskScaling:
        """Two subsets (the points are cut to the first and last by `smoke_points`)."""
        return dataclasses.replace(self, subsets=min(self.subsets, 2))


@dataclasses.dataclass(frozen=True)
class MixtureSweep:
    """One numeric `MixtureConfig` field over values (EPS cap, instances per task, reasoning share, Zipf a).

    Attributes:
      field: the MixtureConfig field ("eps", "max_instances_per_task", "reasoning_share", "metaicl_zipf_a").
      values: its values (None allowed where the field takes None: "all instances"); in figure order.
      seeds: training seeds per point.
      base: overrides every point shares (e.g. {"metaicl": True} for a Zipf-exponent sweep).
    """

    field: str = "eps"
    values: tuple[Any, ...] = (16, 64, 256)
    seeds: int = 2
    seed: int = 0
    base: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    title: str = "EPS cap"
    x_label: str = "EPS (max examples per task)"
    log_x: bool = True

    def points(self, ctx: Context) -> list[Point]:
        """One point per value, `seeds` runs each."""
        names = {f.name for f in dataclasses.fields(MixtureConfig)}
        if self.field not in names:
            raise ExperimentError(f"MixtureSweep.field={self.field!r} is not a MixtureConfig field ({sorted(names)})")
        if not self.values:
            raise ExperimentError("MixtureSweep.values is empty")
        _check_positive("MixtureSweep.seeds", self.seeds)
        points = []
        for v in self.values:
            x = v if v is not None else _none_x(self.values)
            label = "all" if v is None else f"{v:g}" if isinstance(v, float) else str(v)
            points.append(Point(key=safe_key(f"{self.field}={label}"), x=x, label=label,
                                runs=_seeded_runs(safe_key(f"{self.field}={label}"), self.seeds,
                                                  {**self.base, self.field: v}, self.seed)))
        return points

    def smoke(self) -> MixtureSweep:
        return dataclasses.replace(self, seeds=min(self.seeds, 2))


def _none_x(values: Sequence[Any]) -> float:
    """Where "None" (no limit) sits on a numeric axis: one step of the sweep past its largest value."""
    nums = sorted(float(v) for v in values if v is not None)
    if not nums:
        return 1.0
    return nums[-1] * (nums[-1] / nums[-2] if len(nums) > 1 and nums[-2] > 0 else 2.0)


@dataclasses.dataclass(frozen=True)
class MixtureVariants:
    """Named mixtures on a categorical axis (benchmark proportions, MetaICL on/off, prompt mixes).

    Attributes:
      variants: label -> MixtureConfig overrides, in figure order ({} is the base mixture).
    """

    variants: Mapping[str, Mapping[str, Any]] = dataclasses.field(
        default_factory=lambda: {"base": {}, "MetaICL": {"metaicl": True}})
    seeds: int = 2
    seed: int = 0
    title: str = "Mixture variants"
    x_label: str = "training mixture"
    log_x: bool = False

    def points(self, ctx: Context) -> list[Point]:
        """One point per variant, `seeds` runs each."""
        if not self.variants:
            raise ExperimentError("MixtureVariants.variants is empty")
        _check_positive("MixtureVariants.seeds", self.seeds)
        return [Point(key=safe_key(label), x=label, label=label,
                      runs=_seeded_runs(safe_key(label), self.seeds, dict(over), self.seed))
                for label, over in self.variants.items()]

    def smoke(self) -> MixtureVariants:
        return dataclasses.replace(self, seeds=min(self.seeds, 2))


@dataclasses.dataclass(frozen=True)
class LeaveOneBenchmarkOut:
    """The full mixture, then each benchmark's proportion set to 0 (paper section 4.3's ablation).

    Attributes:
      benchmarks: benchmarks to leave out (names of the training tasks' benchmarks); None: every one present.
    """

    benchmarks: tuple[str, ...] | None = None
    seeds: int = 2
    seed: int = 0
    title: str = "Leave one benchmark out"
    x_label: str = "benchmark left out"
    log_x: bool = False

    def points(self, ctx: Context) -> list[Point]:
        """"none" (the full mixture) first, then one point per benchmark left out."""
        names = tuple(self.benchmarks) if self.benchmarks is not None else ctx.benchmarks
        unknown = sorted(set(names) - set(ctx.benchmarks))
        if unknown:
            raise ExperimentError(f"LeaveOneBenchmarkOut.benchmarks: {unknown} have no training task here "
                                  f"(benchmarks present: {list(ctx.benchmarks)})")
        if len(ctx.benchmarks) < 2:
            raise ExperimentError(f"LeaveOneBenchmarkOut needs at least two benchmarks in the mixture, got "
                                  f"{list(ctx.benchmarks)}")
        base = ctx.base_mixture
        variants: dict[str, dict[str, Any]] = {"none": {}}
        for b in names:
            props = dict(base.benchmark_proportions)
            props[base.proportion_key(b)] = 0.0
            variants[b] = {"benchmark_proportions": props}
        return MixtureVariants(variants=variants, seeds=self.seeds, seed=self.seed).points(ctx)

    def smoke(self) -> LeaveOneBenchmarkOut:
        return dataclasses.replace(self, seeds=min(self.seeds, 2))


@dataclasses.dataclass(frozen=True)
class InstructionAblation:
    """Models trained on the full mixture, evaluated with each instruction mode, and the trivial baseline.

    Attributes:
      modes: evaluation instruction modes (`instructions.MODES`), in figure order.
      seeds: trained models (each evaluated in every mode: the modes' runs are paired).
      trivial_baseline: add the label-space-aware trivial baseline as a reference.
    """

    modes: tuple[str, ...] = MODES
    seeds: int = 2
    seed: int = 0
    trivial_baseline: bool = True
    title: str = "Instruction ablation at evaluation"
    x_label: str = "instruction at evaluation"
    log_x: bool = False

    def points(self, ctx: Context) -> list[Point]:
        """One point per mode over the same trained models, then the baseline."""
        if not self.modes:
            raise ExperimentError("InstructionAblation.modes is empty")
        for m in self.modes:
            try:
                check_mode(m)
            except ValueError as e:
                raise ExperimentError(f"InstructionAblation.modes: {e}") from None
        _check_positive("InstructionAblation.seeds", self.seeds)
        points = [Point(key=f"instructions={m}", x=m, label=m,
                        runs=_seeded_runs("full", self.seeds, {}, self.seed, instructions=m))
                  for m in self.modes]
        if self.trivial_baseline:
            points.append(Point(key="trivial_baseline", x="trivial baseline", label="label-space trivial baseline",
                                runs=(Run(train_key=None),), baseline=True))
        return points

    def smoke(self) -> InstructionAblation:
        return dataclasses.replace(self, seeds=min(self.seeds, 2))


Definition = TaskScaling | MixtureSweep | MixtureVariants | LeaveOneBenchmarkOut | InstructionAblation
DEFINITIONS: tuple[type, ...] = (TaskScaling, MixtureSweep, MixtureVariants, LeaveOneBenchmarkOut,
                                 InstructionAblation)


def experiment_points(definition: Any, ctx: Context, *, smoke: bool = False) -> list[Point]:
    """The points of ``definition`` on ``ctx`` (the smoke copy when ``smoke``); refuses duplicate keys."""
    if not isinstance(definition, DEFINITIONS):
        raise ExperimentError(f"run_experiment.definition must be one of "
                              f"{[d.__name__ for d in DEFINITIONS]}, got {definition!r}")
    d = definition.smoke() if smoke else definition
    points = d.points(ctx)
    if smoke:
        points = _smoke(points)
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        raise ExperimentError(f"{type(definition).__name__}: two points share a key ({keys}); give distinct values")
    return points


def is_numeric_axis(points: Sequence[Point]) -> bool:
    """Whether the curve's x values are numbers (else a categorical axis)."""
    return all(isinstance(p.x, (int, float)) and math.isfinite(p.x) for p in points if not p.baseline)
