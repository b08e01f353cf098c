"""Training mixture: EPS cap, benchmark proportions, reasoning / pre-training shares (paper sections 4.2-4.6).

Rates. Reasoning tasks (benchmark "Reasoning") get ``reasoning_share`` of the examples and pre-training data
(benchmark "Pretraining") ``pretraining_share``, each only when such tasks are present. The rest is split over
the other benchmarks by ``benchmark_proportions`` *renormalised over the benchmarks actually present*: with
only SuperNI and PromptSource on disk the defaults 25 and 45 become 25/70 and 45/70 of the remainder. Inside
a benchmark, task t gets ``share(b) * min(n_t, eps) / sum_{u in b} min(n_u, eps)`` (example-proportional
sampling with the maximum mixing rate EPS, as in T5/FLAN). Benchmark names may be aliased onto a proportion
key (the embedded suite's "Embedded-NI" and "Embedded-PS" stand in for SuperNI and PromptSource).

Sampling. `MixtureSampler` makes example ``g`` of the global stream a pure function of ``(seed, g)``: draws
come in blocks of `BLOCK` from ``numpy.random.Generator(PCG64([seed, block]))``, so the input position is one
integer, restarts are exact, and host ``s`` of ``n`` taking global positions ``k * n + s`` gives disjoint
streams whose interleaving is the single-host stream.

MetaICL (section 4.8): the number of demonstrations follows a Zipf law truncated to ``0..K``,
``P(k) ∝ (k + 1) ** -a``; with K = 5 this gives 92.5 % zero-shot examples for a = 4 and 67.1 % for a = 2,
the figures the paper reports.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

DEFAULT_BENCHMARK_PROPORTIONS: dict[str, float] = {
    # Paper Table 5, selected row: CrossFit/ExMix/FLAN/NIV2/PS/T5/U-SKG = 4/2/20/25/45/2/2 (%).
    "CrossFit": 4.0, "ExMix": 2.0, "FLAN": 20.0, "SuperNI": 25.0, "PromptSource": 45.0, "T5": 2.0,
    "UnifiedSKG": 2.0,
}
DEFAULT_BENCHMARK_ALIASES: dict[str, str] = {
    "Embedded-NI": "SuperNI", "Embedded-PS": "PromptSource", "Embedded-FLAN": "FLAN",
}
REASONING = "Reasoning"
PRETRAINING = "Pretraining"
BLOCK = 4096


@dataclasses.dataclass(frozen=True)
class MixtureConfig:
    """Parameters of the training mixture (defaults = the OPT-IML recipe, paper section 5).

    Attributes:
      eps: maximum number of examples a task counts with (EPS, section 4.2).
      benchmark_proportions: relative weight of each benchmark (renormalised over those present).
      benchmark_aliases: benchmark name -> proportion key it takes its weight from.
      reasoning_share: fraction of examples from "Reasoning" tasks (CoT), when present.
      pretraining_share: fraction of examples from "Pretraining" tasks, when present.
      size_source: "catalogue" (a task's size is its original release size, TaskInfo.num_instances, falling
        back to the examples on disk when unknown) or "disk" (the examples actually loaded).
      metaicl: train with k demonstrations, k ~ truncated Zipf(metaicl_zipf_a) on 0..metaicl_max_shots.
      metaicl_separator: string between demonstrations (three newlines, after Min et al. 2021).
      tasks: train on only these tasks of the mixture (names; None: all of them). Experiments over the number
        of training tasks (`optiml_jax.experiments`) draw these subsets; a name outside the mixture is refused.
      max_instances_per_task: train on at most this many instances of each task (a seeded subset of its training
        instances; None: all). Unlike ``eps``, which caps a task's mixing rate, this caps what it can repeat.
      extra_tasks: seqio Task name -> share of the whole mixture (in (0, 1)), for Tasks a user registered
        (a module imported by gin) that are not in the catalogue; they are cached and trained like the
        built-in ones (`optiml_jax.tasks.cache`), the catalogued tasks sharing the rest (`add_extra_tasks`).
    """

    eps: int = 4096
    benchmark_proportions: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_BENCHMARK_PROPORTIONS))
    benchmark_aliases: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_BENCHMARK_ALIASES))
    reasoning_share: float = 0.01
    pretraining_share: float = 0.05
    size_source: str = "catalogue"
    metaicl: bool = False
    metaicl_zipf_a: float = 4.0
    metaicl_max_shots: int = 5
    metaicl_separator: str = "\n\n\n"
    tasks: tuple[str, ...] | None = None
    max_instances_per_task: int | None = None
    extra_tasks: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, share in self.extra_tasks.items():
            if not (isinstance(share, (int, float)) and 0.0 < share < 1.0):
                raise ValueError(f"MixtureConfig.extra_tasks[{name!r}] must be a share in (0, 1), got {share!r}")
        if self.extra_tasks and sum(self.extra_tasks.values()) >= 1.0:
            raise ValueError(f"MixtureConfig.extra_tasks: the shares sum to {sum(self.extra_tasks.values())} "
                             "but must leave room (< 1) for the catalogued tasks")
        if self.tasks is not None and not self.tasks:
            raise ValueError("MixtureConfig.tasks is empty: give at least one task name, or None for all")
        if self.max_instances_per_task is not None and (
                not isinstance(self.max_instances_per_task, int) or self.max_instances_per_task < 1):
            raise ValueError(f"MixtureConfig.max_instances_per_task must be a positive integer or None, got "
                             f"{self.max_instances_per_task!r}")
        if not isinstance(self.eps, int) or self.eps < 1:
            raise ValueError(f"MixtureConfig.eps must be a positive integer, got {self.eps!r}")
        for name, value in self.benchmark_proportions.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"MixtureConfig.benchmark_proportions[{name!r}] must be a finite number >= 0, got {value!r}")
        for field in ("reasoning_share", "pretraining_share"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"MixtureConfig.{field} must be in [0, 1), got {value!r}")
        if self.reasoning_share + self.pretraining_share >= 1.0:
            raise ValueError("MixtureConfig.reasoning_share + pretraining_share must be < 1")
        if self.size_source not in ("catalogue", "disk"):
            raise ValueError(f"MixtureConfig.size_source must be 'catalogue' or 'disk', got {self.size_source!r}")
        if self.metaicl_zipf_a <= 0:
            raise ValueError(f"MixtureConfig.metaicl_zipf_a must be > 0, got {self.metaicl_zipf_a!r}")
        if self.metaicl_max_shots < 0:
            raise ValueError(f"MixtureConfig.metaicl_max_shots must be >= 0, got {self.metaicl_max_shots!r}")

    def proportion_key(self, benchmark: str) -> str:
        """The key of `benchmark_proportions` a benchmark draws its weight from."""
        return self.benchmark_aliases.get(benchmark, benchmark)

    def shot_distribution(self) -> np.ndarray:
        """P(k) for k = 0..metaicl_max_shots demonstrations (truncated Zipf)."""
        k = np.arange(self.metaicl_max_shots + 1, dtype=np.float64)
        weights = (k + 1.0) ** -self.metaicl_zipf_a
        return weights / weights.sum()


@dataclasses.dataclass(frozen=True)
class TaskSize:
    """What the rate computation needs to know about one training task."""

    benchmark: str
    size: int           # examples the task counts with before the EPS cap


@dataclasses.dataclass(frozen=True)
class MixtureRates:
    """Per-task sampling probabilities (sum to 1) and how they were obtained."""

    task_names: tuple[str, ...]
    rates: np.ndarray                        # float64 [num_tasks]
    task_benchmark: Mapping[str, str]
    task_size: Mapping[str, int]
    benchmark_share: Mapping[str, float]     # final fraction of examples per benchmark
    eps: int

    def rate(self, task: str) -> float:
        """Sampling probability of one task."""
        return float(self.rates[self.task_names.index(task)])


def compute_rates(tasks: Mapping[str, TaskSize], config: MixtureConfig) -> MixtureRates:
    """Per-task mixing rates (see module docstring). Raises on empty input, empty tasks or a benchmark
    without a proportion (naming it), so a mis-configured mixture never trains silently."""
    if not tasks:
        raise ValueError("compute_rates: no training tasks (is the data directory configured?)")
    by_bench: dict[str, list[str]] = {}
    for name in sorted(tasks):
        info = tasks[name]
        if info.size < 1:
            raise ValueError(f"training task {name!r} (benchmark {info.benchmark}) has no examples")
        by_bench.setdefault(info.benchmark, []).append(name)

    specials = {REASONING: config.reasoning_share, PRETRAINING: config.pretraining_share}
    regular = [b for b in by_bench if b not in specials]
    missing = sorted(b for b in regular if config.proportion_key(b) not in config.benchmark_proportions)
    if missing:
        raise ValueError(
            f"benchmark(s) {missing} have training tasks but no entry in MixtureConfig.benchmark_proportions "
            f"(keys: {sorted(config.benchmark_proportions)}); add a proportion or an alias")
    share: dict[str, float] = {}
    special_total = sum(v for b, v in specials.items() if b in by_bench)
    weights = {b: float(config.benchmark_proportions[config.proportion_key(b)]) for b in regular}
    total_weight = sum(weights.values())
    if total_weight > 0:
        for b in regular:
            share[b] = (1.0 - special_total) * weights[b] / total_weight
        for b, v in specials.items():
            if b in by_bench:
                share[b] = v
    else:
        # Only reasoning / pre-training data (or all proportions 0): renormalise what is left.
        present = {b: v for b, v in specials.items() if b in by_bench and v > 0}
        if not present:
            raise ValueError(
                f"every benchmark present ({sorted(by_bench)}) has proportion 0: nothing to sample")
        for b in regular:
            share[b] = 0.0
        for b, v in present.items():
            share[b] = v / sum(present.values())
        for b in specials:
            if b in by_bench and b not in present:
                share[b] = 0.0

    names: list[str] = []
    rates: list[float] = []
    for b in sorted(by_bench):
        members = by_bench[b]
        capped = np.array([min(tasks[t].size, config.eps) for t in members], np.float64)
        rates.extend(share[b] * capped / capped.sum())
        names.extend(members)
    arr = np.asarray(rates, np.float64)
    arr = arr / arr.sum()
    return MixtureRates(
        task_names=tuple(names), rates=arr,
        task_benchmark={t: tasks[t].benchmark for t in names},
        task_size={t: tasks[t].size for t in names},
        benchmark_share=dict(share), eps=config.eps)


USER_BENCHMARK = "User"   # the benchmark label of `MixtureConfig.extra_tasks`


def add_extra_tasks(rates: MixtureRates, extra: Mapping[str, float], sizes: Mapping[str, int]) -> MixtureRates:
    """`rates` with the user Tasks of ``extra`` (name -> share of the whole mixture) appended after the
    catalogued tasks, which keep their relative rates in the remaining ``1 - sum(extra)``. ``sizes``: each
    extra Task's number of training examples (for reports)."""
    if not extra:
        return rates
    clash = sorted(set(extra) & set(rates.task_names))
    if clash:
        raise ValueError(f"MixtureConfig.extra_tasks {clash} are already tasks of the mixture")
    names = tuple(sorted(extra))
    rest = 1.0 - sum(extra.values())
    arr = np.concatenate([rates.rates * rest, np.asarray([extra[n] for n in names], np.float64)])
    share = {b: v * rest for b, v in rates.benchmark_share.items()}
    share[USER_BENCHMARK] = share.get(USER_BENCHMARK, 0.0) + sum(extra.values())
    return MixtureRates(
        task_names=rates.task_names + names, rates=arr / arr.sum(),
        task_benchmark={**rates.task_benchmark, **{n: USER_BENCHMARK for n in names}},
        task_size={**rates.task_size, **{n: int(sizes[n]) for n in names}},
        benchmark_share=share, eps=rates.eps)


def rates_table(rates: MixtureRates) -> tuple[list[dict], list[dict]]:
    """Rows per benchmark and per task (plain dicts, for reports and JSON)."""
    bench_rows = []
    for b in sorted(rates.benchmark_share):
        members = [t for t in rates.task_names if rates.task_benchmark[t] == b]
        bench_rows.append({
            "benchmark": b,
            "tasks": len(members),
            "capped": sum(rates.task_size[t] > rates.eps for t in members),
            "examples": sum(rates.task_size[t] for t in members),
            "share": float(sum(rates.rate(t) for t in members)),
        })
    task_rows = [{
        "task": t, "benchmark": rates.task_benchmark[t], "size": rates.task_size[t],
        "capped": rates.task_size[t] > rates.eps, "rate": float(r),
    } for t, r in zip(rates.task_names, rates.rates)]
    return bench_rows, task_rows


def rates_report(rates: MixtureRates, *, max_tasks: int | None = 30) -> str:
    """Plain-text report: one line per benchmark, then the tasks with the highest rates."""
    bench_rows, task_rows = rates_table(rates)
    lines = [f"mixture: {len(rates.task_names)} tasks, EPS = {rates.eps}",
             f"{'benchmark':<16}{'tasks':>7}{'capped':>8}{'examples':>11}{'share %':>9}"]
    for r in bench_rows:
        lines.append(f"{r['benchmark']:<16}{r['tasks']:>7}{r['capped']:>8}{r['examples']:>11}"
                     f"{100 * r['share']:>9.2f}")
    shown = sorted(task_rows, key=lambda r: -r["rate"])
    if max_tasks is not None:
        shown = shown[:max_tasks]
    lines.append(f"{'task':<60}{'benchmark':<16}{'size':>9}{'rate %':>9}")
    for r in shown:
        lines.append(f"{r['task'][:59]:<60}{r['benchmark']:<16}{r['size']:>9}{100 * r['rate']:>9.4f}")
    return "\n".join(lines)


class MixtureSampler:
    """Deterministic, index-based sampler over tasks: draw ``g`` depends only on ``(seed, g)``.

    `draw(g)` returns ``(task_index, example_key, aux_key)``: the task by inverse-CDF on the mixing rates,
    and two uint64 keys the caller turns into an example index (``example_key % num_examples``) and
    per-example prompt randomness (delimiter choice, MetaICL demonstrations).
    """

    def __init__(self, rates: Sequence[float] | np.ndarray, seed: int = 0, block: int = BLOCK):
        p = np.asarray(rates, np.float64)
        if p.ndim != 1 or p.size == 0 or np.any(p < 0) or not np.isfinite(p).all() or p.sum() <= 0:
            raise ValueError("MixtureSampler: rates must be a non-empty vector of non-negative numbers")
        self._cdf = np.cumsum(p / p.sum())
        self._cdf[-1] = 1.0
        self.seed = int(seed)
        self.block = int(block)
        # (block, tasks, example keys, aux keys), replaced whole: one attribute store is atomic, so reader
        # threads (the grain loader's) never pair one block's number with another block's draws.
        self._cache: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None

    def _load(self, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cache = self._cache
        if cache is None or cache[0] != block:
            rng = np.random.Generator(np.random.PCG64([self.seed, block]))
            u = rng.random(self.block)
            tasks = np.searchsorted(self._cdf, u, side="right").astype(np.int64)
            # Guard against u == cdf[-1] rounding onto a zero-rate tail.
            np.minimum(tasks, len(self._cdf) - 1, out=tasks)
            keys = rng.integers(0, np.iinfo(np.int64).max, size=(2, self.block), dtype=np.int64)
            cache = (block, tasks, keys[0], keys[1])
            self._cache = cache
        return cache[1], cache[2], cache[3]

    def draw(self, g: int) -> tuple[int, int, int]:
        """Task index and two integer keys of global draw ``g`` (``g >= 0``)."""
        if g < 0:
            raise ValueError(f"draw index must be >= 0, got {g}")
        tasks, ex_keys, aux_keys = self._load(g // self.block)
        i = g % self.block
        return int(tasks[i]), int(ex_keys[i]), int(aux_keys[i])

    def task_indices(self, start: int, count: int) -> np.ndarray:
        """Task indices of draws ``start .. start + count - 1`` (vectorised per block, for statistics)."""
        out = np.empty(count, np.int64)
        pos = 0
        while pos < count:
            g = start + pos
            block, offset = divmod(g, self.block)
            tasks = self._load(block)[0]
            take = min(self.block - offset, count - pos)
            out[pos:pos + take] = tasks[offset:offset + take]
            pos += take
        return out


def sample_num_shots(config: MixtureConfig, key: int) -> int:
    """MetaICL: number of demonstrations for one example, a pure function of an integer key."""
    if not config.metaicl or config.metaicl_max_shots == 0:
        return 0
    cdf = np.cumsum(config.shot_distribution())
    u = np.random.Generator(np.random.PCG64([key & 0x7FFFFFFFFFFFFFFF, 7])).random()
    return int(min(np.searchsorted(cdf, u, side="right"), config.metaicl_max_shots))


def make_mixture_config(
    eps: int = 4096,
    benchmark_proportions: Mapping[str, float] | None = None,
    benchmark_aliases: Mapping[str, str] | None = None,
    reasoning_share: float = 0.01,
    pretraining_share: float = 0.05,
    size_source: str = "catalogue",
    metaicl: bool = False,
    metaicl_zipf_a: float = 4.0,
    metaicl_max_shots: int = 5,
    metaicl_separator: str = "\n\n\n",
    tasks: Sequence[str] | None = None,
    max_instances_per_task: int | None = None,
    extra_tasks: Mapping[str, float] | None = None,
) -> MixtureConfig:
    """Builds a `MixtureConfig`; registered with gin as ``mixture_config`` (see `register_gin`)."""
    return MixtureConfig(
        eps=eps,
        benchmark_proportions=dict(benchmark_proportions or DEFAULT_BENCHMARK_PROPORTIONS),
        benchmark_aliases=dict(DEFAULT_BENCHMARK_ALIASES if benchmark_aliases is None else benchmark_aliases),
        reasoning_share=reasoning_share, pretraining_share=pretraining_share, size_source=size_source,
        metaicl=metaicl, metaicl_zipf_a=metaicl_zipf_a, metaicl_max_shots=metaicl_max_shots,
        metaicl_separator=metaicl_separator, tasks=None if tasks is None else tuple(tasks),
        max_instances_per_task=max_instances_per_task, extra_tasks=dict(extra_tasks or {}))


def _register_gin() -> None:
    # gin lives at the CLI edge: the configurable is a thin wrapper, the dataclass stays plain.
    import gin

    try:
        gin.external_configurable(make_mixture_config, name="mixture_config", module="optiml_jax")
    except ValueError:  # already registered (module reloaded in tests)
        pass


_register_gin()
