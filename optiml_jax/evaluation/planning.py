"""What a held-out evaluation runs: its settings (`EvalConfig`), its (task, shots) units, their rendered examples, the
new-token limit of every generated example and the plan printed before it starts.

Generation limits (`EvalConfig.generation_limit`): "fixed" decodes every example up to ``max_new_tokens`` (the
paper's wording: "greedy decoding up to 256 tokens"); "references" bounds each task by its own references, as
t5x / seqio derive the decode length from the longest target of the evaluated task: ``min(max_new_tokens,
bucket_length(longest reference in tokens + 1))`` over *all* of the task's evaluation instances in the split
(so the bound does not depend on which examples or how many are sampled, nor on the shots; of the model only
its tokenizer counts).
The +1 is the EOS; the bucket (at least 16 tokens, then steps of at most 1.5x) leaves room for an answer
tokenised otherwise than its reference. A cut generation is already longer than every reference of its task:
exact match cannot be won after that point (short of a tail of punctuation and spaces, which normalisation
drops), while Rouge-L no longer sees the tail of an answer that runs on. Decoding then stops where the task's
answers end instead of running 256 steps for a model that seldom emits EOS (bench/README.md, issue 14).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping, Sequence

from optiml_jax import candidates as candidates_lib
from optiml_jax import decoding
from optiml_jax.bootstrap import Bootstrap
from optiml_jax.tasks.schema import LEVELS, PromptedExample, TaskInfo

GENERATION_LIMITS = ("fixed", "references")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how.

    Attributes:
      split: "validation" or "test" (of the active split definition: "optiml" with a data dir, else "embedded").
      shots: shot settings; the paper reports 0 and 5 (and 2 for the SuperNI comparison of Table 12).
      levels: generalization levels to include (subset of schema.LEVELS).
      tasks: restrict to these task names (must belong to the split); None = every task of the split.
      max_tasks_per_level: keep only the first n tasks of each level (quick looks); None = all.
      max_examples: examples per task; None = the paper's limits (250 per validation task; on test the first
        100 of SuperNI tasks and all of the others). SuperNI test tasks always keep their first instances in
        file order; every other task a seeded subset.
      max_new_tokens: generation limit (paper: 256).
      generation_limit: "fixed" (every generated example up to ``max_new_tokens``) or "references" (each task
        up to the bound its longest reference gives, at most ``max_new_tokens``; see the module docstring).
      length_normalize: rank candidates by mean per-token log-likelihood instead of the sum.
      scoring: how a (prompt, candidate) pair is tokenised and scored (`optiml_jax.candidates`): "optiml"
        (candidate + EOS, as instruction tuning trains targets; the paper's rank classification) or "lm_eval"
        (lm-evaluation-harness's rule, no EOS; adds the harness's acc_norm per example and task).
      seed: selects the examples and demonstrations (and the untrained baseline's initialisation).
      data_dir: the real data directory (None = the environment's / the embedded suite).
      split_definition: "optiml" (the paper's, needs real data) or "embedded"; None = "optiml" when a data dir
        is configured, else "embedded".
      bootstrap: settings of the 95% intervals of every average (`optiml_jax.bootstrap`); None = no intervals.
        Not part of `unit_settings`: intervals are recomputed from the unit files.
    """

    split: str = "validation"
    shots: tuple[int, ...] = (0, 5)
    levels: tuple[str, ...] = LEVELS
    tasks: tuple[str, ...] | None = None
    max_tasks_per_level: int | None = None
    max_examples: int | None = None
    max_new_tokens: int = 256
    length_normalize: bool = False
    seed: int = 0
    data_dir: str | None = None
    split_definition: str | None = None
    scoring: str = "optiml"
    bootstrap: Bootstrap | None = Bootstrap()
    generation_limit: str = "fixed"

    def __post_init__(self) -> None:
        candidates_lib.check_convention(self.scoring)
        if self.split not in ("validation", "test"):
            raise ValueError(f"EvalConfig.split must be 'validation' or 'test', got {self.split!r}")
        if not self.shots or any((not isinstance(k, int)) or k < 0 for k in self.shots):
            raise ValueError(f"EvalConfig.shots must be non-negative integers, got {self.shots!r}")
        bad = [lv for lv in self.levels if lv not in LEVELS]
        if bad or not self.levels:
            raise ValueError(f"EvalConfig.levels: unknown level(s) {bad or '(none given)'}; choose from {LEVELS}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"EvalConfig.max_examples must be >= 1 or None, got {self.max_examples}")
        if self.max_tasks_per_level is not None and self.max_tasks_per_level < 1:
            raise ValueError(f"EvalConfig.max_tasks_per_level must be >= 1 or None, got {self.max_tasks_per_level}")
        if self.max_new_tokens < 1:
            raise ValueError(f"EvalConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.generation_limit not in GENERATION_LIMITS:
            raise ValueError(f"EvalConfig.generation_limit must be one of {GENERATION_LIMITS}, got "
                             f"{self.generation_limit!r}")

    def example_limit(self, task: TaskInfo) -> int | None:
        """The per-task example limit (the paper's unless `max_examples` overrides it)."""
        if self.max_examples is not None:
            return self.max_examples
        if self.split == "validation":
            return 250
        return 100 if task.benchmark == "SuperNI" else None

    def takes_first(self, task: TaskInfo) -> bool:
        """Whether the limit keeps a task's first instances in file order (SuperNI test: the official "top 100
        instances per task") rather than a seeded subset."""
        return self.split == "test" and task.benchmark == "SuperNI"

    def unit_settings(self) -> dict:
        """The settings a finished (task, shots) result depends on: a resumed run must match them."""
        return {
            "split": self.split, "max_examples": self.max_examples, "max_new_tokens": self.max_new_tokens,
            "length_normalize": self.length_normalize, "seed": self.seed, "scoring": self.scoring,
            "split_definition": self.split_definition, "data_dir": self.data_dir,
            # How SuperNI test instances are chosen (first n since issue 14): older run dirs are refused.
            **({"superni_test": "first"} if self.split == "test" else {}),
            # Only when not the default, so that run dirs written before the option existed still resume.
            **({"generation_limit": self.generation_limit} if self.generation_limit != "fixed" else {}),
        }


@dataclasses.dataclass(frozen=True)
class Unit:
    """One (task, shots) evaluation: the granularity of progress and of resumption."""

    level: str
    task: TaskInfo
    shots: int

    @property
    def key(self) -> str:
        return f"{safe_name(self.task.name)}.{self.shots}shot"


def safe_name(name: str) -> str:
    """A task name usable as a file name."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)


# --------------------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------------------


def plan(cfg: EvalConfig) -> list[Unit]:
    """The (level, task, shots) units of an evaluation, in a stable order; validates task names and the split."""
    from optiml_jax.tasks import pipeline

    by_level: dict[str, list[str]] = {}
    for lv in LEVELS:
        by_level[lv] = list(pipeline.eval_task_names(
            cfg.split, lv, data_dir=cfg.data_dir, split_definition=cfg.split_definition))
    known = {t: lv for lv, names in by_level.items() for t in names}
    if not known:
        raise ValueError(
            f"split {cfg.split!r} has no evaluation tasks (data dir: {cfg.data_dir or os.environ.get('OPTIML_DATA_DIR') or 'none: embedded suite'}); "
            "check the data directory and the split definition"
        )
    if cfg.tasks is not None:
        unknown = [t for t in cfg.tasks if t not in known]
        if unknown:
            sample = ", ".join(sorted(known)[:8])
            raise ValueError(
                f"unknown evaluation task(s) for split {cfg.split!r}: {', '.join(unknown)}. "
                f"Known tasks include: {sample} ... ({len(known)} in all)"
            )
    units = []
    for lv in cfg.levels:
        names = [t for t in by_level[lv] if cfg.tasks is None or t in cfg.tasks]
        if cfg.max_tasks_per_level is not None:
            names = names[: cfg.max_tasks_per_level]
        for name in names:
            info = pipeline.get_bench(cfg.data_dir, cfg.split_definition).info(name)
            units.extend(Unit(lv, info, k) for k in cfg.shots)
    if not units:
        raise ValueError(
            f"nothing to evaluate: split {cfg.split!r} has no task at level(s) {list(cfg.levels)}"
            + (f" among {list(cfg.tasks)}" if cfg.tasks else "")
        )
    return units


def render_units(units: Sequence[Unit], cfg: EvalConfig) -> dict[str, list[PromptedExample]]:
    """The rendered examples of every unit (key -> examples), with the paper's limits: rendered once and shared
    by every model of an evaluation (and by `describe_plan`)."""
    from optiml_jax.tasks import pipeline

    out = {}
    for u in units:
        limit, head = cfg.example_limit(u.task), cfg.takes_first(u.task)
        exs = pipeline.eval_examples(
            u.task.name, split=cfg.split, num_shots=u.shots, max_examples=None if head else limit, seed=cfg.seed,
            data_dir=cfg.data_dir, split_definition=cfg.split_definition)
        out[u.key] = exs[:limit] if head and limit is not None else exs
    return out


def generation_limits(cfg: EvalConfig, tasks: Sequence[TaskInfo], vocab: Any) -> dict[str, int]:
    """New tokens at most per generated example of each task (name -> limit), by `EvalConfig.generation_limit`:
    ``max_new_tokens``, or the bound of the task's longest reference (module docstring). Computed once per
    evaluation (`runner.evaluate_models` shares it between the plan and every model)."""
    if cfg.generation_limit == "fixed":
        return {task.name: cfg.max_new_tokens for task in tasks}
    if vocab is None:
        raise ValueError("generation_limit='references' needs the model's vocabulary to measure the references; "
                         "this predictor has none")
    from optiml_jax.tasks import pipeline

    bench = pipeline.get_bench(cfg.data_dir, cfg.split_definition)
    out = {}
    for task in tasks:
        if task.name in out:
            continue
        refs = [o.strip() for ex in bench.eval_pool(task.name, cfg.split) if not ex.candidates for o in ex.outputs]
        longest = max(len(ids) for ids in vocab.encode_batch(refs)) if refs else None
        out[task.name] = cfg.max_new_tokens if longest is None else \
            min(cfg.max_new_tokens, decoding.bucket_length(longest + 1))
    return out


# Rough costs for the time estimate of `describe_plan`, measured with the tiny CPU model on the 2-core machine
# (bench/README.md, "Evaluation"): XLA compile plus flax tracing of one batch shape (a decode loop compiles in
# about as long as it takes to trace), fixed cost per unit (rendering, files), and the FLOP rate small
# evaluation batches reach per device (a fraction of the matmul peak).
_COMPILE_SECONDS = {"cpu": 2.0, "gpu": 3.0, "tpu": 5.0}
_UNIT_SECONDS = 0.02
_FLOPS_PER_DEVICE = {"cpu": 2e10, "gpu": 1e14, "tpu": 1e14}


def describe_plan(units: Sequence[Unit], examples: Mapping[str, Sequence[PromptedExample]], predictor: Any,
                  cfg: EvalConfig, *, models: int = 1, limits: Mapping[str, int] | None = None) -> dict:
    """What an evaluation will do, before it starts: units, examples, prompt / candidate / generated tokens
    (generated: the upper bound, each example's limit from ``limits`` (`generation_limits`, computed when not
    given)), distinct compiled batch shapes and an estimated time for this model and mesh (FLOPs at a typical
    rate plus compile and per-unit costs; ``models`` times)."""
    import jax

    if limits is None:
        limits = generation_limits(cfg, [u.task for u in units], predictor.vocab)
    exs = [ex for u in units for ex in examples[u.key]]
    gen = [ex for ex in exs if not ex.candidates]
    ranked = [ex for ex in exs if ex.candidates]
    vocab = predictor.vocab
    limit = predictor.max_positions
    lengths = [min(len(ids) + 1, limit) for ids in vocab.encode_batch([ex.source for ex in exs])] if exs else []
    cand_tokens = sum(len(ids) + 1 for ids in vocab.encode_batch([c for ex in ranked for c in ex.candidates])) \
        if ranked else 0
    gen_tokens = sum(limits[u.task.name] for u in units for ex in examples[u.key] if not ex.candidates)
    prompt_tokens = int(sum(lengths))
    shapes = {("gen" if not ex.candidates else "rank", decoding.bucket_length(n, maximum=limit))
              for ex, n in zip(exs, lengths)}
    cfg_model = getattr(predictor.model, "config", None)
    n_params = cfg_model.num_params() if cfg_model is not None else 0
    # The embeddings are looked up, not multiplied; the tied output projection (the largest matmul of a small
    # model) runs only where logits are used: each generated and candidate token and each prompt's last one.
    head = cfg_model.vocab_size * cfg_model.word_embed_proj_dim if cfg_model is not None else 0
    body = max(n_params - head - (cfg_model.max_position_embeddings + 2) * cfg_model.hidden_size, 0) \
        if cfg_model is not None else 0
    flops = 2.0 * body * (prompt_tokens + cand_tokens + gen_tokens) + 2.0 * head * (cand_tokens + gen_tokens + len(exs))
    platform = jax.devices()[0].platform
    devices = predictor.mesh.devices.size if getattr(predictor, "mesh", None) is not None else 1
    seconds = models * (flops / (_FLOPS_PER_DEVICE.get(platform, 2e10) * devices)
                        + len(units) * _UNIT_SECONDS) + len(shapes) * _COMPILE_SECONDS.get(platform, 1.0)
    return {
        "units": len(units), "units_with_data": sum(bool(examples[u.key]) for u in units),
        "tasks": len({u.task.name for u in units}), "examples": len(exs), "rank_classified": len(ranked),
        "generated": len(gen), "prompt_tokens": prompt_tokens, "candidate_tokens": int(cand_tokens),
        "max_generated_tokens": gen_tokens, "compiled_shapes": len(shapes), "models": models,
        "platform": platform, "devices": devices, "estimated_seconds": round(seconds, 1),
    }


def format_plan(p: Mapping) -> str:
    """One paragraph of `describe_plan`'s numbers."""
    mins, secs = divmod(int(round(p["estimated_seconds"])), 60)
    return (f"evaluation plan: {p['units']} units ({p['tasks']} tasks x shot settings; {p['units_with_data']} with "
            f"data), {p['examples']} examples ({p['rank_classified']} rank-classified, {p['generated']} generated), "
            f"{p['prompt_tokens']:,} prompt tokens, {p['candidate_tokens']:,} candidate tokens, up to "
            f"{p['max_generated_tokens']:,} generated tokens, ~{p['compiled_shapes']} batch shapes to compile; "
            f"{p['models']} model(s) on {p['devices']} {p['platform']} device(s): estimated {mins}m{secs:02d}s")
