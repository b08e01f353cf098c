"""The trainer's and the evaluator's view of the benchmark (docs/architecture.md, "Pipeline API").

`TrainInput` is the fast training input: the mixture sampler picks ``(task, example, prompt key)`` for stream
position ``g`` as a pure function of ``(seed, g)``; prompts are rendered, tokenised in batches with the
vocabulary's ``encode_batch`` (and cached per task/example/delimiter), and packed in numpy by
`optiml_jax.feature_converters`. Host ``s`` of ``n`` reads global positions ``k * n + s`` (seqio ShardInfo
semantics: disjoint, deterministic, and their interleaving is the single-host stream). The packer looks ahead
a bounded window of examples (first-fit, `feature_converters.plan_rows`), so the whole input state is the next
local position ``k`` not yet drawn plus the local positions still pending in the window (a few ints).

Everything that touches the data layer (catalogue, sources, splits) goes through `Bench`, built once per
(data dir, split definition) by `get_bench`.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from optiml_jax import data_dir as data_dir_lib
from optiml_jax import feature_converters as fc
from optiml_jax.errors import UserError
from optiml_jax.tasks import mixtures as mx
from optiml_jax.tasks import prompts
from optiml_jax.tasks.packed import (STATE_VERSION, TRUNCATION_SAMPLE, PackedStream,  # noqa: F401 (re-exported)
                                     format_truncation)
from optiml_jax.tasks.prompts import BBH_MODES, bbh_exact_match, bbh_extract_answer  # noqa: F401 (re-exported)
from optiml_jax.tasks.schema import LEVELS, PART_INPUT, Example, PromptedExample, TaskInfo

logger = logging.getLogger(__name__)

EVAL_SPLITS: tuple[str, ...] = ("validation", "test")
TRAIN_MIXTURE = "optiml_train"
MAX_TRAIN_MIXTURE = "optiml_max_train"
# Evaluation-only data: never trained on, not even by the "Max" variant. Whole collections by benchmark, and
# single tasks by their split in their source benchmark (catalogue `source_split`): "test" (SuperNI official
# test) and "eval_only" (BBH, and the GSM8K/StrategyQA/SVAMP copies of superni_extra, whose benchmark is
# "Reasoning" like trainable CoT tasks).
EVAL_ONLY_BENCHMARKS = frozenset({"BBH", "BIG-bench"})
EVAL_ONLY_SOURCE_SPLITS = frozenset({"eval_only", "test"})


# ----------------------------------------------------------------------------------------------------------
# The benchmark as seen through one split definition.


@dataclasses.dataclass
class Bench:
    """Catalogue + split definition + example loader, with per-task caches.

    Attributes:
      split_name: the split definition ("optiml", "embedded", or a custom gin-defined one).
      data_dir: where the real data lives (None: embedded suite only).
      catalogue: every known task.
      train_tasks: the split's training tasks.
      eval_tasks: (validation|test, level) -> task names.
      load: TaskInfo -> raw examples.
      is_heldout: (task name, example id) -> True when the instance is held out of training (supervised level).
      eval_instance_split: (task name, example id) -> "validation" | "test" for held-out instances of
        training tasks (which evaluation split uses them); None when both may.
      excluded: training task names to drop from every mixture (the leakage audit's drops).
      leakage_drops: task -> reason for the training tasks the leakage audit's decisions dropped (the
        split already excludes them; kept here for reports).
      heldout_category_splits: category -> eval split that holds it out (from the split definition).
      source_splits: task -> its split in its source benchmark (catalogue ``source_split``; missing = "train").
      roles: task -> role under this split definition (``splits.resolve``); missing = the catalogue's
        ``split_role`` column, which is the "optiml" split's.
      trainable_eval_only: benchmark patterns whose evaluation-only data this split definition deliberately
        trains on (``Split.train_eval_only_benchmarks``, e.g. BIG-bench under the "bigbench" split).
      load_demos: TaskInfo -> the task's own prompt demonstrations (BBH's CoT prompts); None: none.
    """

    split_name: str
    data_dir: str | None
    catalogue: Mapping[str, TaskInfo]
    train_tasks: tuple[str, ...]
    eval_tasks: Mapping[tuple[str, str], tuple[str, ...]]
    load: Callable[[TaskInfo], list[Example]]
    is_heldout: Callable[[str, str], bool]
    eval_instance_split: Callable[[str, str], str | None] | None = None
    excluded: frozenset[str] = frozenset()
    leakage_drops: Mapping[str, str] = dataclasses.field(default_factory=dict)
    heldout_category_splits: Mapping[str, str] = dataclasses.field(default_factory=dict)
    source_splits: Mapping[str, str] = dataclasses.field(default_factory=dict)
    roles: Mapping[str, str] = dataclasses.field(default_factory=dict)
    trainable_eval_only: tuple[str, ...] = ()
    load_demos: Callable[[TaskInfo], list[Example]] | None = None
    _examples: dict[str, list[Example]] = dataclasses.field(default_factory=dict, repr=False)
    _train: dict[str, list[Example]] = dataclasses.field(default_factory=dict, repr=False)
    _contained: dict[str, frozenset[str]] | None = dataclasses.field(default=None, repr=False)

    def info(self, name: str) -> TaskInfo:
        """TaskInfo of a task; the error names the split and a few close names."""
        try:
            return self.catalogue[name]
        except KeyError:
            close = sorted(n for n in self.catalogue if name.split("_")[0] in n)[:5]
            raise KeyError(f"unknown task {name!r} (split {self.split_name!r}, data_dir={self.data_dir!r}); "
                           f"similar: {close}") from None

    def examples(self, name: str, *, keep: bool = True) -> list[Example]:
        """All examples of a task (cached; ``keep=False`` reads without caching, so a one-pass reader such as
        the token cache's build streams a bench of any size through bounded memory)."""
        if name in self._examples:
            return self._examples[name]
        examples = list(self.load(self.info(name)))
        if keep:
            self._examples[name] = examples
        return examples

    def demonstrations(self, name: str) -> list[Example]:
        """The task's own prompt demonstrations (BBH: the 3 chain-of-thought examples); [] when it has none."""
        return list(self.load_demos(self.info(name))) if self.load_demos is not None else []

    def _own_train_examples(self, name: str, keep: bool = True) -> list[Example]:
        return [e for e in self.examples(name, keep=keep) if not self.is_heldout(name, e.id)]

    def contained_instances(self) -> dict[str, frozenset[str]]:
        """Training task -> ids of its training instances whose text contains the whole input of an evaluated
        instance (any split, any level); `train_examples` leaves them out. Computed once (cached).

        Task-level decisions cannot catch these: a PromptSource dataset renders one example through several
        templates, so holding out one rendering leaves the same passage in the others; a few instances recur
        verbatim across tasks of different sources.
        """
        if self._contained is None:
            from optiml_jax.tasks import leakage  # a leaf of the data layer

            queries = [e.input for (split, _), names in sorted(self.eval_tasks.items()) for n in names
                       for e in self.eval_pool(n, split)]
            finder = leakage.ContainedFinder(queries)
            contained: dict[str, frozenset[str]] = {}
            # Task by task, keeping only the ids of hits: the search must not hold the whole bench.
            for n in sorted(self.train_tasks):
                own = self._own_train_examples(n, keep=False)
                found = finder.search([leakage.example_text(e) for e in own])
                if found:
                    contained[n] = frozenset(own[i].id for i in found)
            self._contained = contained
            if contained:
                logger.info("held-out instance text found in %d training instances of %d tasks; left out",
                            sum(map(len, contained.values())), len(contained))
        return self._contained

    def train_examples(self, name: str, *, drop_contained: bool = True, keep: bool = True) -> list[Example]:
        """Examples a training task may be trained on (cached unless ``keep=False``, as `examples`): its
        held-out instances removed, and for the split's training tasks also every instance containing an
        evaluated instance (`contained_instances`; ``drop_contained=False`` keeps those, for the task-level
        leakage audit, which measures the raw tasks)."""
        if not drop_contained:
            return self._own_train_examples(name, keep)
        if name in self._train:
            return self._train[name]
        drop = self.contained_instances().get(name, frozenset()) if name in self.train_tasks else frozenset()
        examples = [e for e in self._own_train_examples(name, keep) if e.id not in drop]
        if keep:
            self._train[name] = examples
        return examples

    def level_of(self, name: str, split: str) -> str:
        """Generalisation level of a task in an evaluation split."""
        _check_eval_split(split)
        for level in LEVELS:
            if name in self.eval_tasks.get((split, level), ()):
                return level
        raise ValueError(f"task {name!r} is not an evaluation task of split {split!r} "
                         f"(split definition {self.split_name!r})")

    def eval_pool(self, name: str, split: str) -> list[Example]:
        """The instances a task is evaluated on in ``split`` (held-out instances for supervised tasks)."""
        if self.level_of(name, split) != "supervised":
            return self.examples(name)
        held = [e for e in self.examples(name) if self.is_heldout(name, e.id)]
        if self.eval_instance_split is not None:
            held = [e for e in held if self.eval_instance_split(name, e.id) in (None, split)]
        return held

    def demo_pool(self, name: str, split: str) -> list[Example]:
        """Where k-shot demonstrations come from: training instances of a supervised task; other instances of
        the task otherwise (`prompts.choose_demos` never picks the evaluated one)."""
        if self.level_of(name, split) == "supervised":
            return self.train_examples(name)
        return self.examples(name)

    def heldout_categories(self) -> dict[str, str]:
        """Held-out category -> what holds it out (a fully held-out task, or the split definition)."""
        out: dict[str, str] = {}
        for split in EVAL_SPLITS:
            for name in self.eval_tasks.get((split, "fully_heldout"), ()):
                out.setdefault(self.catalogue[name].category, f"evaluation task {name!r}")
        for c, s in self.heldout_category_splits.items():
            out.setdefault(c, f"the {s} split")
        return out

    def role(self, name: str) -> str:
        """Role of a task under this split definition (schema.SplitRole)."""
        return self.roles.get(name) or self.info(name).split_role

    def eval_only_reason(self, name: str) -> str | None:
        """Why a task's data may only be evaluated on (None: it may be trained on)."""
        info = self.info(name)
        if any(fnmatch.fnmatchcase(info.benchmark, p) for p in self.trainable_eval_only):
            return None
        source_split = self.source_splits.get(name, "train")
        if source_split in EVAL_ONLY_SOURCE_SPLITS:
            return f"source split {source_split!r} (evaluation-only data)"
        if info.benchmark in EVAL_ONLY_BENCHMARKS:
            return f"benchmark {info.benchmark!r} (evaluation-only collection)"
        return None

    def max_training_task_names(self) -> tuple[str, ...]:
        """The "Max" variant's tasks (paper section 6.1: all tasks of the benchmark, including the held-out
        evaluation tasks): every task of this split definition except evaluation-only ones
        (`eval_only_reason`) and those the split excludes (out of its scope, no data, non-default SuperNI,
        shared sources). Held-out instances of supervised tasks stay out via `train_examples`."""
        return tuple(n for n in sorted(self.catalogue)
                     if self.role(n) != "excluded" and self.eval_only_reason(n) is None)

    def training_task_names(self, mixture: str) -> tuple[str, ...]:
        """Training tasks of a mixture name: the split's (optiml_train), all but evaluation-only ones
        (optiml_max_train, `max_training_task_names`), or one task."""
        if mixture == TRAIN_MIXTURE:
            names = self.train_tasks
        elif mixture == MAX_TRAIN_MIXTURE:
            names = self.max_training_task_names()
        elif mixture in self.catalogue:
            names = (mixture,)
        else:
            raise ValueError(f"unknown training mixture {mixture!r}: use {TRAIN_MIXTURE!r}, "
                             f"{MAX_TRAIN_MIXTURE!r} or a task name")
        return tuple(n for n in names if n not in self.excluded)

    def check_no_eval_only_tasks(self, names: Sequence[str]) -> None:
        """Refuses a training set containing an evaluation-only task (the error names it and why)."""
        for name in names:
            reason = self.eval_only_reason(name)
            if reason is not None:
                raise ValueError(f"training task {name!r} is evaluation-only ({reason}); it must never be "
                                 f"trained on (split definition {self.split_name!r})")

    def check_training_tasks(self, names: Sequence[str]) -> None:
        """Refuses a training set containing a task of a held-out category (the error names both)."""
        held = self.heldout_categories()
        for name in names:
            cat = self.catalogue[name].category
            if cat in held:
                raise ValueError(
                    f"training task {name!r} belongs to held-out category {cat!r} "
                    f"(held out by {held[cat]} of split definition {self.split_name!r})")


def _check_eval_split(split: str) -> None:
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str | None:
    """The data dir: the argument, else `optiml_jax.data_dir.data_dir` (gin ``data_dir.path`` / OPTIML_DATA_DIR),
    else None (the embedded suite)."""
    if data_dir is not None:
        return str(data_dir)
    resolved = data_dir_lib.data_dir()
    return str(resolved) if resolved else None


def default_split(data_dir: str | None) -> str:
    """"optiml" when real data is configured, else "embedded" (docs/architecture.md)."""
    return "optiml" if data_dir else "embedded"


@functools.lru_cache(maxsize=8)
def _bench_cached(data_dir: str | None, split: str, gin_config: str, apply_leakage_decisions: bool) -> Bench:
    del gin_config  # cache key only: new gin bindings (custom splits) give a new Bench
    from optiml_jax.tasks import catalogue, leakage, resolved_splits, sources  # the data layer

    cat = catalogue.load_catalogue(data_dir)
    resolved = resolved_splits.resolved(split, data_dir, apply_leakage_decisions=apply_leakage_decisions)
    drops = leakage.active_drops() if apply_leakage_decisions else {}
    eval_tasks = {(s, level): tuple(resolved.eval[(s, level)]) for s in EVAL_SPLITS for level in LEVELS}
    return Bench(
        split_name=split, data_dir=data_dir, catalogue=cat, train_tasks=tuple(resolved.train),
        eval_tasks=eval_tasks, load=lambda task: sources.load_examples(task, data_dir),
        is_heldout=resolved.is_heldout_instance, eval_instance_split=resolved.heldout_split_of,
        excluded=frozenset(n for n in drops if resolved.excluded.get(n) == drops[n]),
        leakage_drops={n: r for n, r in drops.items() if resolved.excluded.get(n) == r},
        heldout_category_splits={c: s for s, cats in resolved.heldout_categories.items() for c in cats},
        source_splits=catalogue.source_splits(data_dir), roles=dict(resolved.roles),
        trainable_eval_only=tuple(resolved.split.train_eval_only_benchmarks),
        load_demos=lambda task: sources.load_demonstrations(task, data_dir))


def get_bench(data_dir: str | os.PathLike | None = None, split: str | None = None, *,
              apply_leakage_decisions: bool = True) -> Bench:
    """The (cached) `Bench` for a data dir and split definition (defaults per `default_split`).

    ``apply_leakage_decisions=False`` keeps the train tasks the leakage audit drops (the audit needs that
    bench; ablations use the gin switch ``leakage_decisions.apply = False`` instead).
    """
    import gin

    d = resolve_data_dir(data_dir)
    return _bench_cached(d, split or default_split(d), gin.config_str(), bool(apply_leakage_decisions))


# ----------------------------------------------------------------------------------------------------------
# Training input.


def training_rates(bench: Bench, mixture: str = TRAIN_MIXTURE, config: mx.MixtureConfig | None = None, *,
                   counts: Mapping[str, int] | None = None) -> tuple[mx.MixtureRates, list[str]]:
    """Mixing rates of a training mixture and the tasks left out for having no training examples on disk.

    ``counts``: each task's number of training instances (`Bench.train_examples`) when already known (the
    token cache's manifest), so that no example is loaded.

    Refuses (ValueError naming the task) an evaluation-only task in any mixture, and a task of a held-out
    category except in the "Max" mixture, which deliberately trains on held-out evaluation tasks.
    """
    config = config or mx.MixtureConfig()
    names = bench.training_task_names(mixture)
    if config.tasks is not None:
        outside = sorted(set(config.tasks) - set(names))
        if outside:
            raise UserError(f"MixtureConfig.tasks: {outside[:5]} ({len(outside)} in all) are not training tasks of "
                            f"mixture {mixture!r} (split definition {bench.split_name!r})")
        names = tuple(n for n in names if n in set(config.tasks))
    bench.check_no_eval_only_tasks(names)
    if mixture != MAX_TRAIN_MIXTURE:
        bench.check_training_tasks(names)
    sizes: dict[str, mx.TaskSize] = {}
    skipped: list[str] = []
    for name in names:
        if counts is None:
            num = len(train_pool(bench, name, config))
        else:
            num = min(counts[name], config.max_instances_per_task or counts[name])
        if not num:
            skipped.append(name)
            continue
        info = bench.catalogue[name]
        use_catalogue = config.size_source == "catalogue" and info.num_instances > 0
        size = info.num_instances if use_catalogue else num
        if config.max_instances_per_task is not None:
            size = min(size, config.max_instances_per_task)
        sizes[name] = mx.TaskSize(info.benchmark, size)
    if skipped:
        logger.warning("%s: %d training tasks have no examples on disk and are left out (first: %s)",
                       mixture, len(skipped), skipped[:5])
    if not sizes:
        raise UserError(
            f"mixture {mixture!r}: none of its {len(names)} training tasks has examples in the data directory "
            f"{bench.data_dir or '(none configured: set OPTIML_DATA_DIR or train.data_dir)'}; point it at a folder "
            "laid out as tasks/README.md describes (superni/tasks/*.json, t0_p3/, flan_cot/, ...), or leave it "
            "unset for the embedded suite")
    return mx.compute_rates(sizes, config), skipped


def train_pool(bench: Bench, name: str, config: mx.MixtureConfig) -> list[Example]:
    """The instances a training task is sampled from: `Bench.train_examples`, cut to a seeded subset of
    ``config.max_instances_per_task`` when set."""
    return _subsample(bench.train_examples(name), config.max_instances_per_task, 0, "train/" + name)


class TrainInput(PackedStream):
    """Iterator of packed numpy batches of the training mixture, every training example in memory (see module
    docstring; `loader.CachedTrainInput` is the same stream read from the token cache).

    Each batch holds the feature-converter keys ([batch_size, seq_len]) plus ``decoder_task_ids`` (index into
    `task_names`, -1 on padding; keep it on the host). `state()` / `restore()` resume exactly, look-ahead
    window included. ``packing_window`` is the first-fit look-ahead (1 = in-order next-fit packing); it is
    part of the state, since another window packs the same stream differently.
    """

    name = "TrainInput"

    def __init__(
        self,
        mixture: str = TRAIN_MIXTURE,
        *,
        vocab: Any,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        shard_index: int = 0,
        num_shards: int = 1,
        data_dir: str | None = None,
        split: str | None = None,
        mixture_config: mx.MixtureConfig | None = None,
        bench: Bench | None = None,
        cache_size: int = 100_000,
        packing_window: int = fc.DEFAULT_PACKING_WINDOW,
        log_truncation: bool = False,
    ):
        config = mixture_config or mx.MixtureConfig()
        if config.extra_tasks:
            raise UserError(f"mixture_config.extra_tasks {sorted(config.extra_tasks)}: user seqio Tasks are read "
                            "from the token cache only (optiml_jax.tasks.loader.CachedTrainInput)")
        self.bench = bench or get_bench(data_dir, split)
        rates, self.skipped_tasks = training_rates(self.bench, mixture, config)
        self._setup(mixture=mixture, split_name=self.bench.split_name, vocab=vocab, batch_size=batch_size,
                    seq_len=seq_len, seed=seed, shard_index=shard_index, num_shards=num_shards, config=config,
                    rates=rates, task_benchmark={n: self.bench.catalogue[n].benchmark for n in rates.task_names},
                    packing_window=packing_window)
        self._examples = [train_pool(self.bench, n, self.config) for n in self.task_names]
        self._infos = [self.bench.catalogue[n] for n in self.task_names]
        self._cache: dict[tuple[int, int, int], tuple[tuple[tuple[str, np.ndarray], ...], np.ndarray]] = {}
        self._cache_size = int(cache_size)
        if log_truncation:
            log_truncation_estimate(self)

    def draw(self, k: int) -> tuple[int, int, int, int]:
        """(task index, example index, delimiter index, shots) of local position ``k``: pure in (seed, shard, k)."""
        t, ex_key, aux = self.sampler.draw(self.global_index(k))
        shots = mx.sample_num_shots(self.config, aux)
        return t, ex_key % len(self._examples[t]), prompts.train_delimiter_index(aux), shots

    def _render(self, k: int) -> tuple[int, PromptedExample, tuple[int, int, int] | None]:
        t, e, d, shots = self.draw(k)
        aux = self.sampler.draw(self.global_index(k))[2]
        pool = self._examples[t]
        p = prompts.render_train(self._infos[t], pool[e], pool, key=aux, num_shots=shots,
                                 separator=self.config.metaicl_separator)
        return t, p, ((t, e, d) if p.num_shots == 0 else None)

    def _encode(self, positions: Sequence[int]) -> list[fc.Segment | fc.Skipped]:
        """Segments (or skips) of local positions (pure in (seed, shard, k)); one tokeniser call for the
        uncached ones."""
        rendered = [self._render(k) for k in positions]
        if not rendered:
            return []
        cached: list[Any] = [self._cache.get(key) if key is not None else None for _, _, key in rendered]
        todo = [i for i, entry in enumerate(cached) if entry is None]
        if todo:
            # One batched tokeniser call for every part and target of the chunk.
            layouts = [prompt_parts(rendered[i][1]) for i in todo]
            texts = [text for layout in layouts for _, text in layout] + [rendered[i][1].target for i in todo]
            ids = self.vocab.encode_batch(texts)
            if len(self._cache) + len(todo) > self._cache_size:
                self._cache.clear()   # bounded memory; entries are cheap to recompute
            offset = 0
            for j, (i, layout) in enumerate(zip(todo, layouts)):
                parts = tuple((role, np.asarray(ids[offset + m], np.int32)) for m, (role, _) in enumerate(layout))
                offset += len(layout)
                cached[i] = (parts, np.asarray(ids[len(ids) - len(todo) + j], np.int32))
                key = rendered[i][2]
                if key is not None:   # MetaICL prompts vary with their demonstrations: not cached
                    self._cache[key] = cached[i]
        new: list[fc.Segment | fc.Skipped] = []
        for (t, _, _), (parts, target) in zip(rendered, cached):
            new.append(fc.fit_segment(parts, target, bos_id=self.vocab.bos_id, eos_id=self.vocab.eos_id,
                                      max_length=self.seq_len, tag=t))
        self._note_lengths(new)
        return new


def log_truncation_estimate(stream: PackedStream) -> None:
    """Logs `PackedStream.estimate_truncation` of the first stream positions (a warning when examples are cut
    or skipped: at a short seq_len, skipped examples change what the mixture really trains on)."""
    summary = format_truncation(stream.estimate_truncation(TRUNCATION_SAMPLE))
    (logger.warning if "skipped" in summary or "truncated" in summary else logger.info)(
        "seq_len=%d, first %d stream positions: %s", stream.seq_len, TRUNCATION_SAMPLE, summary)


# ----------------------------------------------------------------------------------------------------------
# Evaluation helpers.


def eval_task_names(split: str = "validation", level: str | None = None, data_dir=None, *,
                    split_definition: str | None = None) -> list[str]:
    """Evaluation task names of ``split`` (validation|test), optionally one level of schema.LEVELS."""
    _check_eval_split(split)
    if level is not None and level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS} or None, got {level!r}")
    bench = get_bench(data_dir, split_definition)
    levels = LEVELS if level is None else (level,)
    out: list[str] = []
    for lv in levels:
        out.extend(n for n in bench.eval_tasks.get((split, lv), ()) if n not in out)
    return out


def subsample_indices(n: int, max_examples: int | None, seed: int, task: str) -> np.ndarray | None:
    """Indices (sorted) of the seeded subset of ``max_examples`` of ``n`` items; None when all are kept."""
    if max_examples is None or n <= max_examples:
        return None
    if max_examples < 0:
        raise ValueError(f"max_examples must be >= 0 or None, got {max_examples}")
    rng = np.random.Generator(np.random.PCG64(prompts.stable_seed("subsample", seed, task)))
    return np.sort(rng.choice(n, size=max_examples, replace=False))


def _subsample(examples: list[Example], max_examples: int | None, seed: int, task: str) -> list[Example]:
    keep = subsample_indices(len(examples), max_examples, seed, task)
    return examples if keep is None else [examples[int(i)] for i in keep]


def eval_examples(task_name: str, *, split: str = "validation", num_shots: int = 0,
                  max_examples: int | None = None, seed: int = 0, data_dir=None,
                  split_definition: str | None = None, bench: Bench | None = None) -> list[PromptedExample]:
    """Rendered evaluation prompts of one task (all templates merged), deterministic in ``seed``.

    Demonstrations come from the task's training instances (supervised level) or from its other instances
    (held-out tasks), never from the evaluated instance. ``max_examples`` keeps a seeded subset in order.
    """
    bench = bench or get_bench(data_dir, split_definition)
    if num_shots < 0:
        raise ValueError(f"num_shots must be >= 0, got {num_shots}")
    info = bench.info(task_name)
    pool = _subsample(bench.eval_pool(task_name, split), max_examples, seed, task_name)
    demos = bench.demo_pool(task_name, split) if num_shots else []
    return [prompts.render_eval(info, ex, demos, num_shots=num_shots, seed=seed) for ex in pool]


def get_task_info(name: str, data_dir=None) -> TaskInfo:
    """TaskInfo of any catalogued task."""
    return get_bench(data_dir).info(name)


def level_of(task_name: str, split: str, data_dir=None) -> str:
    """Generalisation level of an evaluation task in ``split`` (validation|test)."""
    return get_bench(data_dir).level_of(task_name, split)


def prompt_parts(example: PromptedExample) -> tuple[tuple[str, str], ...]:
    """The (role, text) pieces of a prompt's source: its own `parts`, else the whole source as one input."""
    if example.parts:
        return example.parts
    return ((PART_INPUT, example.source),) if example.source else ()


def encode_prompted(vocab: Any, examples: Sequence[PromptedExample], *, seq_len: int,
                    tags: Sequence[int] | None = None) -> list[fc.Segment | fc.Skipped]:
    """Tokenises prompted examples (one ``encode_batch`` call) and fits them to ``seq_len``
    (`feature_converters.fit_segment`: demonstrations, then the input's middle, are cut; definition and
    target are kept, or the example is skipped)."""
    if not examples:
        return []
    layouts = [prompt_parts(e) for e in examples]
    texts = [text for layout in layouts for _, text in layout] + [e.target for e in examples]
    ids = vocab.encode_batch(texts)
    n, offset, out = len(examples), 0, []
    for i, layout in enumerate(layouts):
        parts = [(role, ids[offset + m]) for m, (role, _) in enumerate(layout)]
        offset += len(layout)
        out.append(fc.fit_segment(parts, ids[len(ids) - n + i], bos_id=vocab.bos_id, eos_id=vocab.eos_id,
                                  max_length=seq_len, tag=-1 if tags is None else tags[i]))
    return out


def heldout_loss_batches(*, vocab: Any, batch_size: int, seq_len: int, split: str = "validation",
                         data_dir=None, max_examples_per_task: int = 32, seed: int = 0,
                         split_definition: str | None = None, bench: Bench | None = None) -> list[dict]:
    """Fixed packed batches of 0-shot held-out examples (all three levels) for the periodic validation loss.

    The last batch is completed with all-padding rows (zero loss weight), so every batch is
    [batch_size, seq_len].
    """
    _check_eval_split(split)
    if batch_size < 1 or seq_len < 2:
        raise ValueError(f"heldout_loss_batches: need batch_size >= 1 and seq_len >= 2, got {batch_size}, {seq_len}")
    bench = bench or get_bench(data_dir, split_definition)
    prompted: list[PromptedExample] = []
    for level in LEVELS:
        for name in bench.eval_tasks.get((split, level), ()):
            prompted.extend(eval_examples(name, split=split, max_examples=max_examples_per_task, seed=seed,
                                          bench=bench))
    segments = [s for s in encode_prompted(vocab, prompted, seq_len=seq_len) if isinstance(s, fc.Segment)]
    rows = [r for r, _ in fc.iter_packed_rows(iter(segments), max_length=seq_len, pad_id=vocab.pad_id)]
    batches = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        chunk += [fc.empty_row(seq_len, vocab.pad_id) for _ in range(batch_size - len(chunk))]
        batches.append(fc.stack_rows(chunk))
    return batches


# ----------------------------------------------------------------------------------------------------------
# BIG-Bench Hard (paper Table 14).

BBH_BENCHMARK = "BBH"
BBH_PREFIX = "bbh_"   # the 27 tasks of bbh/bbh/*.json (the superni_extra copies are SuperNI-formatted)
BBH_SHOTS = 3


def bbh_task_names(data_dir=None, *, bench: Bench | None = None) -> list[str]:
    """The BBH tasks (``bbh_<task>``) of the catalogue, sorted."""
    bench = bench or get_bench(data_dir)
    return sorted(n for n, i in bench.catalogue.items() if i.benchmark == BBH_BENCHMARK and n.startswith(BBH_PREFIX))


def bbh_examples(task_name: str, *, mode: str, max_examples: int | None = None, seed: int = 0, data_dir=None,
                 bench: Bench | None = None) -> list[PromptedExample]:
    """3-shot BBH prompts of one task in ``mode`` ("answer_only" or "cot"; see `prompts.render_bbh`).

    The demonstrations are the task's own 3 CoT-prompt examples (``bbh/cot-prompts/<task>.txt``) for every test
    item; ``max_examples`` keeps a seeded subset in file order (None: all, the paper's test protocol).
    """
    if mode not in BBH_MODES:
        raise ValueError(f"BBH mode must be one of {sorted(BBH_MODES)}, got {mode!r}")
    bench = bench or get_bench(data_dir)
    info = bench.info(task_name)
    if info.benchmark != BBH_BENCHMARK or not task_name.startswith(BBH_PREFIX):
        raise ValueError(f"{task_name!r} is not a BBH task (benchmark {info.benchmark!r}); "
                         f"BBH tasks: {bbh_task_names(bench=bench)[:3]} ...")
    examples = bench.examples(task_name)
    if not examples:
        raise FileNotFoundError(
            f"BBH task {task_name!r} has no data: expected bbh/bbh/{task_name[len(BBH_PREFIX):]}.json in the data "
            f"directory ({bench.data_dir or 'none configured: set OPTIML_DATA_DIR'})")
    demos = bench.demonstrations(task_name)
    if len(demos) < BBH_SHOTS:
        raise FileNotFoundError(
            f"BBH task {task_name!r}: {len(demos)} prompt demonstrations, need {BBH_SHOTS}; expected "
            f"bbh/cot-prompts/{task_name[len(BBH_PREFIX):]}.txt in {bench.data_dir}")
    pool = _subsample(examples, max_examples, seed, task_name)
    return [prompts.render_bbh(info, ex, demos[:BBH_SHOTS], mode=mode) for ex in pool]
