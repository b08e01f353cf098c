"""Benchmark split definitions: which tasks train, which evaluate, at which generalization level.

A ``Split`` is a plain frozen dataclass; ``resolve(split, catalogue)`` turns it into concrete task
lists (``ResolvedSplit``). Three generalization levels (paper section 2.3, schema.LEVELS):

* ``fully_heldout``: tasks of categories never seen in training;
* ``partially_heldout``: unseen tasks of categories that training does see;
* ``supervised``: held-out instances of training tasks (chosen by a hash of the instance id, so
  the selection is deterministic and independent of file order).

Named splits: ``"optiml"`` (the paper's, for the real benchmark), ``"embedded"`` (the same
three levels over the procedurally generated suite) and ``"bigbench"`` (the same three levels over
the BIG-bench JSON tasks, which it alone trains on). ``custom_split`` builds others from gin
bindings, e.g. ``custom_split.test_categories = ["Textual Entailment"]`` and
``--split=custom``; ``register_split`` adds more from code.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
from typing import Callable, Iterable, Mapping

import gin

from optiml_jax.tasks.schema import LEVELS, TaskInfo

EVAL_SPLITS: tuple[str, ...] = ("validation", "test")
_BUCKETS = 10_000  # resolution of the hash-based instance and task selection


class SplitError(ValueError):
    """A split definition is invalid or would train on held-out data."""


@dataclasses.dataclass(frozen=True)
class Split:
    """A split definition. Task/benchmark selectors are fnmatch patterns on names.

    Attributes:
      name: split name.
      benchmarks / exclude_benchmarks: which benchmarks are in scope (others are "excluded").
      validation_categories / test_categories: fully held-out categories per evaluation split.
      validation_tasks / test_tasks: partially held-out tasks (their categories stay in training).
      official_test_to_test: SuperNI official test tasks outside held-out categories evaluate as
        test tasks (they are never trained on either way).
      validation_supervised_tasks / test_supervised_tasks: training tasks whose held-out instances
        form the supervised level; ``*_supervised_fraction`` adds that fraction of the remaining
        training tasks, chosen by a hash of the task name.
      heldout_instance_fraction: fraction of a supervised task's instances held out per eval split.
      exclude_tasks: tasks dropped outright.
      exclude_source_overlap: drop training tasks built from the data source of an eval task
        (the paper's source-level de-duplication; 13-gram checks live in leakage.py).
      train_non_default_superni: train on SuperNI tasks outside the default English track.
      train_eval_only_benchmarks: benchmarks whose evaluation-only data (catalogue ``source_split``
        "eval_only", e.g. BIG-bench's canary) this split deliberately trains on; every other split
        keeps such tasks out of training.
    """

    name: str
    benchmarks: tuple[str, ...] = ("*",)
    exclude_benchmarks: tuple[str, ...] = ()
    validation_categories: tuple[str, ...] = ()
    test_categories: tuple[str, ...] = ()
    validation_tasks: tuple[str, ...] = ()
    test_tasks: tuple[str, ...] = ()
    official_test_to_test: bool = True
    validation_supervised_tasks: tuple[str, ...] = ()
    test_supervised_tasks: tuple[str, ...] = ()
    validation_supervised_fraction: float = 0.0
    test_supervised_fraction: float = 0.0
    heldout_instance_fraction: float = 0.1
    exclude_tasks: tuple[str, ...] = ()
    exclude_source_overlap: bool = True
    train_non_default_superni: bool = False
    train_eval_only_benchmarks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise SplitError("Split.name is empty")
        both = set(self.validation_categories) & set(self.test_categories)
        if both:
            raise SplitError(f"split {self.name!r}: categories {sorted(both)} are held out for "
                             "both validation and test")
        for field in ("validation_supervised_fraction", "test_supervised_fraction"):
            v = getattr(self, field)
            if not 0.0 <= v <= 1.0:
                raise SplitError(f"split {self.name!r}: {field} = {v} is outside [0, 1]")
        if not 0.0 <= self.heldout_instance_fraction <= 0.5:
            raise SplitError(f"split {self.name!r}: heldout_instance_fraction = "
                             f"{self.heldout_instance_fraction} must be in [0, 0.5] (one share "
                             "per evaluation split)")


def _bucket(*parts: str) -> int:
    h = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") % _BUCKETS


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclasses.dataclass(frozen=True)
class ResolvedSplit:
    """Concrete task lists of a split over one catalogue.

    ``roles`` maps every catalogue task to a schema.SplitRole; ``eval`` maps
    ``(split, level)`` to sorted task names; ``excluded`` gives the reason of each exclusion.
    """

    split: Split
    train: tuple[str, ...]
    eval: Mapping[tuple[str, str], tuple[str, ...]]
    roles: Mapping[str, str]
    categories: Mapping[str, str]
    excluded: Mapping[str, str]
    heldout_categories: Mapping[str, tuple[str, ...]]

    def eval_tasks(self, split: str = "validation", level: str | None = None) -> tuple[str, ...]:
        """Evaluation task names of ``split`` (all levels when ``level`` is None)."""
        _check_split_level(split, level)
        levels = LEVELS if level is None else (level,)
        return tuple(sorted({t for lv in levels for t in self.eval[(split, lv)]}))

    def level_of(self, task_name: str, split: str = "validation") -> str | None:
        """The level at which ``task_name`` is evaluated in ``split`` (None: not evaluated there)."""
        _check_split_level(split, None)
        for lv in LEVELS:
            if task_name in self.eval[(split, lv)]:
                return lv
        return None

    def heldout_split_of(self, task_name: str, example_id: str) -> str | None:
        """"validation"/"test" when this instance of a supervised task is held out, else None."""
        f = self.split.heldout_instance_fraction
        b = _bucket(task_name, str(example_id))
        cut = int(round(f * _BUCKETS))
        if b < cut and task_name in self.eval[("validation", "supervised")]:
            return "validation"
        if cut <= b < 2 * cut and task_name in self.eval[("test", "supervised")]:
            return "test"
        return None

    def is_heldout_instance(self, task_name: str, example_id: str) -> bool:
        """True when the instance must not be trained on (held out for validation or test)."""
        return self.heldout_split_of(task_name, example_id) is not None

    def is_train_instance(self, task_name: str, example_id: str) -> bool:
        """True when the instance belongs to a training task and is not held out."""
        return task_name in self._train_set and not self.is_heldout_instance(task_name, example_id)

    @functools.cached_property
    def _train_set(self) -> frozenset[str]:
        return frozenset(self.train)

    def summary(self) -> dict[str, int]:
        """Counts of tasks per role and per (split, level)."""
        out = {"train": len(self.train), "excluded": len(self.excluded)}
        for (s, lv), names in sorted(self.eval.items()):
            out[f"{s}/{lv}"] = len(names)
        return out


def _check_split_level(split: str, level: str | None) -> None:
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    if level is not None and level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS} or None, got {level!r}")


def check_no_heldout_training(resolved: ResolvedSplit) -> None:
    """Raise if a training task belongs to a held-out category or is also an eval task."""
    held = {c: s for s, cats in resolved.heldout_categories.items() for c in cats}
    for t in resolved.train:
        cat = resolved.categories[t]
        if cat in held:
            raise SplitError(f"split {resolved.split.name!r}: training task {t!r} belongs to "
                             f"category {cat!r}, which is fully held out for {held[cat]}")
    eval_non_sup = {t for (s, lv), ts in resolved.eval.items() if lv != "supervised" for t in ts}
    both = eval_non_sup & set(resolved.train)
    if both:
        raise SplitError(f"split {resolved.split.name!r}: tasks {sorted(both)[:5]} are both "
                         "training and held-out evaluation tasks")


def resolve(split: Split, catalogue: Mapping[str, TaskInfo], *,
            source_splits: Mapping[str, str],
            available: Callable[[TaskInfo], bool] | None = None,
            leakage_drops: Mapping[str, str] | None = None) -> ResolvedSplit:
    """Assign every catalogue task a role under ``split``.

    Args:
      split: the definition.
      catalogue: tasks by name (`resolved_splits.resolved` passes ``catalogue.load_catalogue(data_dir)``).
      source_splits: task -> split in its source benchmark (``catalogue.source_splits(data_dir)``; tasks missing
        from it count as "train").
      available: optional predicate "this task has data"; tasks without data are excluded, and
        levels are then computed from the tasks that can actually train.
      leakage_drops: training task -> reason, from the leakage audit's decisions (`leakage.active_drops`);
        those tasks are excluded before the supervised level is chosen, so a dropped task is neither
        trained on nor evaluated as supervised.
    """
    excluded: dict[str, str] = {}
    train_cands: list[str] = []
    eval_cands: dict[str, tuple[str, str]] = {}  # task -> (split, declared level)
    held_val, held_test = set(split.validation_categories), set(split.test_categories)
    for name in sorted(catalogue):
        t = catalogue[name]
        ss = source_splits.get(name, "train")
        if not matches(t.benchmark, split.benchmarks) or matches(t.benchmark, split.exclude_benchmarks):
            excluded[name] = f"benchmark {t.benchmark} not in split {split.name!r}"
        elif matches(name, split.exclude_tasks):
            excluded[name] = "listed in exclude_tasks"
        elif ss == "extra" and not split.train_non_default_superni:
            excluded[name] = "SuperNI task outside the default English track"
        elif t.category in held_val:
            eval_cands[name] = ("validation", "fully_heldout")
        elif t.category in held_test:
            eval_cands[name] = ("test", "fully_heldout")
        elif matches(name, split.validation_tasks):
            eval_cands[name] = ("validation", "partially_heldout")
        elif matches(name, split.test_tasks):
            eval_cands[name] = ("test", "partially_heldout")
        elif ss == "test":
            if split.official_test_to_test:
                eval_cands[name] = ("test", "partially_heldout")
            else:
                excluded[name] = "SuperNI official test task (never trained on)"
        elif ss == "eval_only" and not matches(t.benchmark, split.train_eval_only_benchmarks):
            excluded[name] = "evaluation-only data not selected by this split"
        else:
            train_cands.append(name)

    if available is not None:
        for name in list(eval_cands):
            if not available(catalogue[name]):
                excluded[name] = "no data in the data directory"
                del eval_cands[name]
        kept = []
        for name in train_cands:
            if available(catalogue[name]):
                kept.append(name)
            else:
                excluded[name] = "no data in the data directory"
        train_cands = kept

    if split.exclude_source_overlap:
        eval_sources: dict[str, str] = {}
        for name in sorted(eval_cands):
            src = catalogue[name].source_dataset
            if src:
                eval_sources.setdefault(src, name)
        kept = []
        for name in train_cands:
            src = catalogue[name].source_dataset
            if src and src in eval_sources:
                excluded[name] = f"shares data source {src!r} with eval task {eval_sources[src]!r}"
            else:
                kept.append(name)
        train_cands = kept

    if leakage_drops:
        kept = []
        for name in train_cands:
            if name in leakage_drops:
                excluded[name] = leakage_drops[name]
            else:
                kept.append(name)
        train_cands = kept

    train = tuple(train_cands)
    seen_categories = {catalogue[t].category for t in train}
    evals: dict[tuple[str, str], list[str]] = {(s, lv): [] for s in EVAL_SPLITS for lv in LEVELS}
    roles: dict[str, str] = {}
    for name, (s, level) in eval_cands.items():
        # A "partially" held-out task whose category no training task covers is fully held out.
        if level == "partially_heldout" and catalogue[name].category not in seen_categories:
            level = "fully_heldout"
        evals[(s, level)].append(name)
        roles[name] = level

    for s, patterns, fraction in (
            ("validation", split.validation_supervised_tasks, split.validation_supervised_fraction),
            ("test", split.test_supervised_tasks, split.test_supervised_fraction)):
        cut = int(round(fraction * _BUCKETS))
        for name in train:
            if matches(name, patterns) or _bucket(split.name, s, name) < cut:
                evals[(s, "supervised")].append(name)

    for name in train:
        roles[name] = "train"
    for name in excluded:
        roles[name] = "excluded"
    heldout_categories = {
        "validation": tuple(sorted(held_val | {catalogue[n].category for n in evals[("validation", "fully_heldout")]})),
        "test": tuple(sorted(held_test | {catalogue[n].category for n in evals[("test", "fully_heldout")]})),
    }
    resolved = ResolvedSplit(
        split=split, train=train,
        eval={k: tuple(sorted(v)) for k, v in evals.items()},
        roles=roles, categories={n: t.category for n, t in catalogue.items()},
        excluded=excluded, heldout_categories=heldout_categories)
    check_no_heldout_training(resolved)
    return resolved


# --------------------------------------------------------------------------------------------
# Named splits
# --------------------------------------------------------------------------------------------
# The paper's split (section 2.3, Tables 10-12 and 15).
OPTIML_VALIDATION_CATEGORIES = ("Cause Effect Classification", "Grammar Error Correction",
                                "Stereotype Detection", "Word Analogy")
# Tk-Instruct's held-out categories kept fully held out by OPT-IML (Table 12) plus the T0/FLAN
# held-out clusters of Tables 10-11: NLI -> Textual Entailment, sentence completion -> Text
# Completion, coreference -> Coreference Resolution, word sense -> Word Semantics.
OPTIML_TEST_CATEGORIES = ("Coreference Resolution", "Dialogue Act Recognition", "Text Completion",
                          "Textual Entailment", "Word Semantics")
# Table 15's partially held-out validation tasks: MMLU, Civil Comments, Jigsaw (PromptSource),
# Newsroom (FLAN), RACE (PromptSource, SuperNI), StrategyQA and GSM8K (evaluation copies).
OPTIML_VALIDATION_TASKS = (
    "task*_mmmlu_*", "task*_civil_comments_*", "ps_jigsaw_unintended_bias", "flan_newsroom",
    "ps_race_*", "task309_race_answer_generation", "task310_race_classification",
    "task1759_gsm", "task1760_strategyqa",
)
# Test tasks of seen categories: QA tasks of Table 11 (BoolQ, OpenBookQA, ARC), DART (Table 13),
# and the evaluation-only reasoning suites (BBH, SVAMP).
OPTIML_TEST_TASKS = (
    "flan_bool_q", "flan_openbookqa", "flan_arc_challenge", "flan_arc_easy", "flan_dart",
    "bbh_*", "task*_bbh_*", "task1761_svamp",
)
# Table 15's fully supervised validation tasks: SQuAD v1 (FLAN, PromptSource; plus SuperNI's SQuAD
# v1.1 answer generation, which has data here), Blended Skill Talk and CNN/DailyMail (PromptSource).
OPTIML_VALIDATION_SUPERVISED = ("flan_squad_v1", "ps_squad_v1", "ps_blended_skill_talk",
                                "ps_cnn_dailymail_3_0_0", "task075_squad1.1_answer_generation")


# Benchmarks the paper's split leaves out: the embedded suite, and BIG-bench, whose tasks carry the
# BIG-bench canary (evaluation data only; the paper evaluates on BBH, which is in scope).
OPTIML_EXCLUDE_BENCHMARKS = ("Embedded-*", "BIG-bench")


@gin.configurable
def optiml_split(
    validation_categories: tuple[str, ...] = OPTIML_VALIDATION_CATEGORIES,
    test_categories: tuple[str, ...] = OPTIML_TEST_CATEGORIES,
    validation_tasks: tuple[str, ...] = OPTIML_VALIDATION_TASKS,
    test_tasks: tuple[str, ...] = OPTIML_TEST_TASKS,
    validation_supervised_tasks: tuple[str, ...] = OPTIML_VALIDATION_SUPERVISED,
    test_supervised_fraction: float = 0.05,
    heldout_instance_fraction: float = 0.1,
    train_non_default_superni: bool = False,
    exclude_benchmarks: tuple[str, ...] = OPTIML_EXCLUDE_BENCHMARKS,
) -> Split:
    """The paper's split over the real benchmark (embedded tasks and BIG-bench out of scope).

    Dropping "BIG-bench" from ``exclude_benchmarks`` evaluates its tasks of held-out categories; they are
    never trained on (their catalogue ``source_split`` is "eval_only").
    """
    return Split(
        name="optiml", exclude_benchmarks=tuple(exclude_benchmarks),
        validation_categories=tuple(validation_categories), test_categories=tuple(test_categories),
        validation_tasks=tuple(validation_tasks), test_tasks=tuple(test_tasks),
        validation_supervised_tasks=tuple(validation_supervised_tasks),
        test_supervised_fraction=test_supervised_fraction,
        heldout_instance_fraction=heldout_instance_fraction,
        train_non_default_superni=train_non_default_superni)


EMBEDDED_VALIDATION_CATEGORIES = ("Cause Effect Classification", "Word Analogy",
                                  "Grammar Error Correction")
EMBEDDED_TEST_CATEGORIES = ("Textual Entailment", "Coreference Resolution",
                            "Dialogue Act Recognition")
EMBEDDED_VALIDATION_TASKS = ("embedded_ni_list_max", "embedded_ps_sentiment",
                             "embedded_ni_subtract")
EMBEDDED_TEST_TASKS = ("embedded_ni_list_min", "embedded_ps_topic", "embedded_ni_fact_qa_owner",
                       "embedded_ni_multiply")
EMBEDDED_VALIDATION_SUPERVISED = ("embedded_ni_sort_ascending", "embedded_ps_reverse_words",
                                  "embedded_ni_add")
EMBEDDED_TEST_SUPERVISED = ("embedded_ni_uppercase", "embedded_ps_count_letter",
                            "embedded_ni_parity")


@gin.configurable
def embedded_split(
    validation_categories: tuple[str, ...] = EMBEDDED_VALIDATION_CATEGORIES,
    test_categories: tuple[str, ...] = EMBEDDED_TEST_CATEGORIES,
    validation_tasks: tuple[str, ...] = EMBEDDED_VALIDATION_TASKS,
    test_tasks: tuple[str, ...] = EMBEDDED_TEST_TASKS,
    validation_supervised_tasks: tuple[str, ...] = EMBEDDED_VALIDATION_SUPERVISED,
    test_supervised_tasks: tuple[str, ...] = EMBEDDED_TEST_SUPERVISED,
    heldout_instance_fraction: float = 0.1,
) -> Split:
    """The three generalization levels over the embedded suite (real benchmarks out of scope)."""
    return Split(
        name="embedded", benchmarks=("Embedded-*",),
        validation_categories=tuple(validation_categories), test_categories=tuple(test_categories),
        validation_tasks=tuple(validation_tasks), test_tasks=tuple(test_tasks),
        validation_supervised_tasks=tuple(validation_supervised_tasks),
        test_supervised_tasks=tuple(test_supervised_tasks),
        heldout_instance_fraction=heldout_instance_fraction)


# The "bigbench" split: OPT-IML's three levels over the BIG-bench JSON tasks (categories from
# tasks/bigbench_keywords.tsv). Validation holds out the BIG-bench counterparts of the paper's validation
# categories (Table 12: Cause Effect Classification, Word Analogy, Stereotype Detection; BIG-bench has no
# Grammar Error Correction); test holds out Word Semantics (as the paper's test split), Fact Verification
# and Answerability Classification.
BIGBENCH_VALIDATION_CATEGORIES = ("Cause Effect Classification", "Stereotype Detection", "Word Analogy")
BIGBENCH_TEST_CATEGORIES = ("Answerability Classification", "Fact Verification", "Word Semantics")
# Partially held-out: unseen tasks of seen categories, multiple-choice and generative (StrategyQA is also
# one of the paper's partially held-out validation tasks).
BIGBENCH_VALIDATION_TASKS = ("bigbench_strategyqa", "bigbench_irony_identification",
                             "bigbench_simple_arithmetic_json", "bigbench_rephrase")
BIGBENCH_TEST_TASKS = ("bigbench_hindu_knowledge", "bigbench_operators", "bigbench_logical_fallacy_detection",
                       "bigbench_auto_categorization")
# BIG-Bench Hard was built from these BIG-bench tasks (Suzgun et al. 2022): never trained on, so BBH stays a
# held-out benchmark after training on this split.
BBH_SOURCE_TASKS = tuple(f"bigbench_{t}" + suffix for t in (
    "boolean_expressions", "causal_judgment", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies_syllogisms_negation", "geometric_shapes", "hyperbaton", "logical_deduction",
    "movie_recommendation", "multistep_arithmetic", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects", "web_of_lies", "word_sorting",
) for suffix in ("", ".*"))


@gin.configurable
def bigbench_split(
    validation_categories: tuple[str, ...] = BIGBENCH_VALIDATION_CATEGORIES,
    test_categories: tuple[str, ...] = BIGBENCH_TEST_CATEGORIES,
    validation_tasks: tuple[str, ...] = BIGBENCH_VALIDATION_TASKS,
    test_tasks: tuple[str, ...] = BIGBENCH_TEST_TASKS,
    validation_supervised_tasks: tuple[str, ...] = (),
    test_supervised_tasks: tuple[str, ...] = (),
    validation_supervised_fraction: float = 0.02,
    test_supervised_fraction: float = 0.02,
    heldout_instance_fraction: float = 0.1,
    exclude_tasks: tuple[str, ...] = BBH_SOURCE_TASKS,
) -> Split:
    """The three generalization levels over the BIG-bench JSON tasks (other benchmarks out of scope).

    Trains on BIG-bench despite its canary (``train_eval_only_benchmarks``): select this split only to
    study instruction tuning on BIG-bench itself, never to train a model evaluated elsewhere on BIG-bench.
    """
    return Split(
        name="bigbench", benchmarks=("BIG-bench",), train_eval_only_benchmarks=("BIG-bench",),
        validation_categories=tuple(validation_categories), test_categories=tuple(test_categories),
        validation_tasks=tuple(validation_tasks), test_tasks=tuple(test_tasks),
        validation_supervised_tasks=tuple(validation_supervised_tasks),
        test_supervised_tasks=tuple(test_supervised_tasks),
        validation_supervised_fraction=validation_supervised_fraction,
        test_supervised_fraction=test_supervised_fraction,
        heldout_instance_fraction=heldout_instance_fraction, exclude_tasks=tuple(exclude_tasks))


@gin.configurable
def custom_split(
    name: str = "custom",
    benchmarks: tuple[str, ...] = ("*",),
    exclude_benchmarks: tuple[str, ...] = ("Embedded-*",),
    validation_categories: tuple[str, ...] = (),
    test_categories: tuple[str, ...] = (),
    validation_tasks: tuple[str, ...] = (),
    test_tasks: tuple[str, ...] = (),
    validation_supervised_tasks: tuple[str, ...] = (),
    test_supervised_tasks: tuple[str, ...] = (),
    validation_supervised_fraction: float = 0.0,
    test_supervised_fraction: float = 0.0,
    heldout_instance_fraction: float = 0.1,
    exclude_tasks: tuple[str, ...] = (),
) -> Split:
    """A split from category and task lists (bind its parameters in gin)."""
    return Split(
        name=name, benchmarks=tuple(benchmarks), exclude_benchmarks=tuple(exclude_benchmarks),
        validation_categories=tuple(validation_categories), test_categories=tuple(test_categories),
        validation_tasks=tuple(validation_tasks), test_tasks=tuple(test_tasks),
        validation_supervised_tasks=tuple(validation_supervised_tasks),
        test_supervised_tasks=tuple(test_supervised_tasks),
        validation_supervised_fraction=validation_supervised_fraction,
        test_supervised_fraction=test_supervised_fraction,
        heldout_instance_fraction=heldout_instance_fraction, exclude_tasks=tuple(exclude_tasks))


_SPLITS: dict[str, Callable[[], Split]] = {
    "optiml": optiml_split, "embedded": embedded_split, "bigbench": bigbench_split, "custom": custom_split,
}


def register_split(name: str, factory: Callable[[], Split]) -> None:
    """Make ``get_split(name)`` return ``factory()``."""
    if name in _SPLITS:
        raise ValueError(f"split {name!r} is already registered")
    _SPLITS[name] = factory


def split_names() -> tuple[str, ...]:
    """Registered split names."""
    return tuple(sorted(_SPLITS))


def get_split(name: str) -> Split:
    """The split definition registered as ``name`` (gin bindings of its factory apply)."""
    if name not in _SPLITS:
        raise KeyError(f"unknown split {name!r}; known splits: {', '.join(split_names())}")
    return _SPLITS[name]()
