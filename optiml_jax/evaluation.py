"""Held-out evaluation following the paper's protocol (OPT-IML section 4.1, "Decoding" and "Model selection").

For every evaluation task of a split (validation or test) and every shot setting (0 and k, k=5 by default; 2 for
SuperNI comparisons):

* examples come from `optiml_jax.tasks.pipeline.eval_examples` (all templates of a task merged) with the paper's
  limits: at most 250 per validation task, the first 100 per SuperNI test task, all others on test;
* an example with answer candidates is scored by rank classification (accuracy); any other example is decoded
  greedily until EOS or 256 tokens (or its task's reference-length bound: `EvalConfig.generation_limit`,
  `optiml_jax.eval_plan`) and scored with its task's metric (Rouge-L F1 or exact match, 0-100);
* a task's score is the mean over its examples, for PromptSource / FLAN tasks the mean over its templates'
  means (the spread over templates is reported beside it); a category's score the mean of its tasks; a
  generalization level's score the mean of its categories; the model-selection number the mean of all levels
  and shot settings. A cell without any example on disk is None ("n/a"), never 0;
* pending units are scored in chunks across tasks (`evaluate_many`), so batches fill even at 1 example per unit.

Outputs under ``output_dir``: ``predictions/<task>.<k>shot.jsonl``, ``tasks/<task>.<k>shot.json`` (one file per
finished (task, shots) unit, with its per-example scores: a restarted evaluation skips those), ``results.json``
(aggregates with counts of what was found on disk, template spreads and 95% bootstrap intervals,
`optiml_jax.reports`), ``report.md`` (the paper's table layout; missing cells "n/a") and ``categories.png``.
`evaluate_models` renders every unit once, prints what it will do (`describe_plan`), runs several models (e.g.
trained vs its untrained initialisation) into sub-directories and adds a side-by-side report, a top-level
``results.json`` (also ``summary.json``) with the gains and their paired intervals, and ``comparison.png``.

Settings, units, rendering, generation limits and the plan live in `optiml_jax.eval_plan` (re-exported here).

BIG-Bench Hard (section 6.1, Table 14) has its own protocol (`BBHConfig`, `evaluate_bbh`, `evaluate_bbh_models`):
every test item of the 27 tasks, 3-shot with the task's own prompt examples with and without chain of thought,
greedy generation, exact match on the extracted answer, reported per task and as the mean over tasks.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from optiml_jax import candidates as candidates_lib
from optiml_jax import decoding
from optiml_jax.bootstrap import Bootstrap  # noqa: F401 (re-exported: evaluation.Bootstrap)
# What to evaluate; re-exported because callers, tests and notebooks use them from here.
from optiml_jax.eval_plan import (  # noqa: F401
    GENERATION_LIMITS, EvalConfig, Unit, describe_plan, format_plan, generation_limits, plan, render_units,
    safe_name,
)
# The pure aggregation/report layer; re-exported because callers and notebooks use them from here.
from optiml_jax.reports import (  # noqa: F401
    LEVEL_TITLES, aggregate, format_gains, gain_intervals, level_gains, load_results, markdown_report,
    mean_or_none as _mean, template_spread,
)
from optiml_jax.tasks.schema import PromptedExample, TaskInfo

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# Scoring one unit
# --------------------------------------------------------------------------------------------------------------


def _normalise_answer(s: str) -> str:
    return " ".join(s.strip().lower().split())


def metric_fn(metric: str) -> Callable[[str, Sequence[str]], float]:
    """The 0-100 per-example metric for generated text ("accuracy" on generated text means exact match)."""
    from optiml_jax import metrics

    if metric == "rouge_l":
        return metrics.rouge_l
    if metric in ("exact_match", "accuracy"):
        return metrics.exact_match
    raise ValueError(f"unknown metric {metric!r}: expected 'accuracy', 'exact_match' or 'rouge_l'")


def evaluate_examples(
    predictor: Any, task: TaskInfo, examples: Sequence[PromptedExample], cfg: EvalConfig
) -> tuple[dict, list[dict]]:
    """Scores one unit's examples; returns (summary, per-example prediction records)."""
    return evaluate_many(predictor, [(task, examples)], cfg)[0]


def _vocab_of(predictor: Any) -> Any:
    """The predictor's vocabulary, or None: a predictor needs one only when generations are bounded by the
    references (`generation_limits` says so if it is missing), not to score or generate."""
    return getattr(predictor, "vocab", None)


def evaluate_many(
    predictor: Any, items: Sequence[tuple[TaskInfo, Sequence[PromptedExample]]], cfg: EvalConfig,
    limits: Mapping[str, int] | None = None,
) -> list[tuple[dict, list[dict]]]:
    """Scores several units at once; returns (summary, records) per (task, examples) item.

    All rank-classified examples go to one `Predictor.score` call and all generated ones to one
    `Predictor.generate` call, which batch by length across units: with few examples per unit (the test split
    at 1 example per unit) a unit alone would fill one row of an 8-row batch and pay a whole decode loop for it.
    ``limits``: new tokens per generated example of each task (`generation_limits`; computed when not given).
    """
    if limits is None:
        limits = generation_limits(cfg, [task for task, _ in items], _vocab_of(predictor))
    flat = [(k, ex) for k, (_, exs) in enumerate(items) for ex in exs]
    references = [tuple(ex.references) or (ex.target,) for _, ex in flat]
    ranked = [i for i, (_, ex) in enumerate(flat) if ex.candidates]
    generated = [i for i, (_, ex) in enumerate(flat) if not ex.candidates]
    records: list[dict | None] = [None] * len(flat)

    if ranked:
        scores = predictor.score(
            [flat[i][1].source for i in ranked], [list(flat[i][1].candidates) for i in ranked],
            normalize=cfg.length_normalize, convention=cfg.scoring,
        )
        for i, s in zip(ranked, scores):
            ex = flat[i][1]
            pred = ex.candidates[int(np.argmax(s))]
            refs = {_normalise_answer(r) for r in references[i]}
            records[i] = {
                "mode": "rank_classification", "prediction": pred, "candidate_scores": [round(x, 5) for x in s],
                "score": 100.0 if _normalise_answer(pred) in refs else 0.0,
            }
            if cfg.scoring == "lm_eval":
                norm = ex.candidates[candidates_lib.choose(s, ex.candidates)["acc_norm"]]
                records[i]["acc_norm"] = 100.0 if _normalise_answer(norm) in refs else 0.0
    if generated:
        dcfg = decoding.DecodeConfig(method="greedy", max_new_tokens=cfg.max_new_tokens)
        row_limits = [limits[items[flat[i][0]][0].name] for i in generated]
        # Without a bound below max_new_tokens the call is the plain one (no per-row limits at all).
        sources = [flat[i][1].source for i in generated]
        outputs = (predictor.generate(sources, dcfg, limits=row_limits) if min(row_limits) < cfg.max_new_tokens
                   else predictor.generate(sources, dcfg))
        for i, out in zip(generated, outputs):
            fn = metric_fn(items[flat[i][0]][0].metric)
            records[i] = {"mode": "generation", "prediction": out, "score": float(fn(out, list(references[i])))}

    per_item: list[list[dict]] = [[] for _ in items]
    for (k, ex), refs, rec in zip(flat, references, records):
        per_item[k].append({
            "id": ex.id, "task": ex.task, "num_shots": ex.num_shots, "prompt": ex.source,
            "references": list(refs), "candidates": list(ex.candidates), **rec,
        })
    out = [(_unit_summary(task, full, cfg), full) for (task, _), full in zip(items, per_item)]
    for (task, _), (summary, _) in zip(items, out):
        summary["max_new_tokens"] = limits[task.name]
    return out


def _unit_summary(task: TaskInfo, full: Sequence[Mapping], cfg: EvalConfig) -> dict:
    """A unit's score and counts from its prediction records (score None: no example on disk)."""
    per_example = [r["score"] for r in full]
    ids = [r["id"] for r in full]
    ranked = [r for r in full if r["mode"] == "rank_classification"]
    summary = {
        "task": task.name, "benchmark": task.benchmark, "category": task.category, "metric": task.metric,
        "score": float(np.mean(per_example)) if per_example else None,
        "num_examples": len(full), "num_rank_classified": len(ranked), "num_generated": len(full) - len(ranked),
        # Kept in the unit file so that the bootstrap (and the template spread) can be recomputed from a
        # finished run without its predictions.
        "example_scores": [round(float(x), 4) for x in per_example], "example_ids": ids,
        "templates": template_spread(ids, per_example, task.benchmark),
    }
    if summary["templates"] is not None:
        # PromptSource / FLAN: the paper averages over templates, so a template with more examples on disk
        # does not weigh more; the plain example mean stays beside it.
        summary["example_mean"], summary["score"] = summary["score"], summary["templates"]["mean"]
    if cfg.scoring == "lm_eval" and ranked:
        summary["acc_norm"] = float(np.mean([r["acc_norm"] for r in ranked]))
    return summary


# --------------------------------------------------------------------------------------------------------------
# Running an evaluation
# --------------------------------------------------------------------------------------------------------------


def params_fingerprint(params: Any) -> str:
    """A short fingerprint of a parameter tree (shapes and a checksum), to detect resuming with other weights."""
    import jax
    import jax.numpy as jnp

    leaves = jax.tree_util.tree_leaves_with_path(params)
    h = hashlib.sha1()
    for path, leaf in leaves[:4] + leaves[-2:]:
        # Summed on the devices: the result is replicated, so every process of a multi-host run can read it
        # (np.asarray on a parameter sharded over several hosts fails). Rounded so that the summation order of
        # one mesh or another does not change the fingerprint.
        total = float(jax.jit(lambda x: jnp.sum(x, dtype=jnp.float32))(leaf))
        h.update(f"{jax.tree_util.keystr(path)}{tuple(leaf.shape)}{total:.4e}".encode())
    h.update(str(len(leaves)).encode())
    return h.hexdigest()[:16]


def _writes() -> bool:
    """Every process of a multi-host evaluation computes the same results; only process 0 writes them."""
    from optiml_jax.partitioning import is_output_process

    return is_output_process()


def _makedirs(*paths: str) -> None:
    if _writes():
        for p in paths:
            os.makedirs(p, exist_ok=True)


def _write_text(path: str, text: str) -> None:
    if _writes():
        with open(path, "w") as f:
            f.write(text)


def _write_json(path: str, obj: Any) -> None:
    if not _writes():
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written result behind


def _finished_unit(output_dir: str, key: str) -> dict | None:
    """The saved summary of an evaluation unit finished by an earlier (possibly killed) run, else None."""
    path = os.path.join(output_dir, "tasks", key + ".json")
    exists = os.path.exists(path)
    import jax

    if jax.process_count() > 1:
        # Process 0's view decides, so that all processes skip (or compute) the same units in step.
        from jax.experimental import multihost_utils

        exists = bool(multihost_utils.broadcast_one_to_all(np.int32(exists)))
        if exists and not os.path.exists(path):
            raise FileNotFoundError(f"{path}: written by process 0 but not visible here; a resumed multi-host "
                                    "evaluation needs an output directory that every host sees")
    if not exists:
        return None
    with open(path) as f:
        return json.load(f)


def _write_unit(output_dir: str, key: str, records: Sequence[Mapping], summary: Mapping) -> None:
    """Writes a unit's predictions, then its summary: the summary's presence is what marks the unit as done."""
    if not _writes():
        return
    pred_path = os.path.join(output_dir, "predictions", key + ".jsonl")
    with open(pred_path + ".tmp", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(pred_path + ".tmp", pred_path)
    _write_json(os.path.join(output_dir, "tasks", key + ".json"), summary)


def _check_run_meta(output_dir: str, meta: dict) -> None:
    path = os.path.join(output_dir, "run.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        for key in ("fingerprint", "settings"):
            if old.get(key) != meta[key]:
                raise ValueError(
                    f"{output_dir} holds results of another evaluation ({key} differs: {old.get(key)} vs "
                    f"{meta[key]}); use a fresh output directory or delete that one"
                )
    _write_json(path, meta)


def evaluate(
    predictor: Any,
    cfg: EvalConfig,
    output_dir: str | os.PathLike,
    *,
    units: Sequence[Unit] | None = None,
    examples: Mapping[str, Sequence[PromptedExample]] | None = None,
    progress: bool = True,
    chunk_examples: int = 256,
    limits: Mapping[str, int] | None = None,
) -> dict:
    """Evaluates ``predictor`` (an `optiml_jax.inference.Predictor`) on ``cfg``'s split; returns the aggregates.

    Finished units found in ``output_dir`` (from an earlier, possibly killed, run with the same model and
    settings) are loaded, not recomputed. ``examples`` (from `render_units`) saves rendering them again.
    Pending units are scored in chunks of about ``chunk_examples`` examples (`evaluate_many`: batches fill
    across units); each unit's files are written as soon as its chunk is done. ``limits``: as in
    `evaluate_many` (computed once here when not given).
    """

    output_dir = os.fspath(output_dir)
    units = list(units) if units is not None else plan(cfg)
    _makedirs(*(os.path.join(output_dir, sub) for sub in ("tasks", "predictions")))
    _check_run_meta(output_dir, {
        "model": predictor.name, "fingerprint": params_fingerprint(predictor.params), "settings": cfg.unit_settings(),
    })

    bar = _progress(len(units), predictor.name, progress)
    results: dict[str, dict] = {}
    pending = []
    for unit in units:
        done = _finished_unit(output_dir, unit.key)
        if done is not None:
            results[unit.key] = done
            bar.update(1)
        else:
            pending.append(unit)
    reused = len(results)
    if limits is None:
        limits = generation_limits(cfg, [u.task for u in pending], _vocab_of(predictor))
    try:
        for chunk in _chunks(pending, examples, cfg, chunk_examples):
            bar.set_postfix_str(f"{chunk[0].task.name} {chunk[0].shots}-shot (+{len(chunk) - 1} units)")
            t0 = time.time()
            rendered = examples if examples is not None else render_units(chunk, cfg)
            for unit in chunk:
                if not rendered[unit.key]:
                    logger.warning("task %s has no %s examples (%d-shot): n/a in the report", unit.task.name,
                                   cfg.split, unit.shots)
            scored = evaluate_many(predictor, [(u.task, rendered[u.key]) for u in chunk], cfg, limits)
            seconds = time.time() - t0
            total = max(1, sum(len(rendered[u.key]) for u in chunk))
            for unit, (summary, records) in zip(chunk, scored):
                # The chunk's time shared by example count: a rough per-unit cost for the logs.
                summary.update(level=unit.level, num_shots=unit.shots,
                               seconds=round(seconds * len(records) / total, 3))
                _write_unit(output_dir, unit.key, records, summary)
                results[unit.key] = summary
            bar.update(len(chunk))
    finally:
        bar.close()
    results = [results[u.key] for u in units]
    if not any(r["num_examples"] for r in results):
        raise ValueError(f"split {cfg.split!r} has no data: none of the {len(results)} evaluation units has examples")

    agg = aggregate(results, shots=cfg.shots, levels=cfg.levels, name=predictor.name, split=cfg.split,
                    bootstrap=cfg.bootstrap)
    agg["reused_units"] = reused
    agg["truncated_prompts"] = int(getattr(predictor, "truncated_prompts", 0))
    _write_json(os.path.join(output_dir, "results.json"), agg)
    _write_text(os.path.join(output_dir, "report.md"),
                markdown_report([agg], [predictor.name], title=f"{cfg.split} evaluation: {predictor.name}"))
    if not _writes():
        return agg
    from optiml_jax import plots

    plots.plot_categories(agg, os.path.join(output_dir, "categories.png"), title=f"{predictor.name} ({cfg.split})")
    return agg


def _chunks(units: Sequence[Unit], examples: Mapping[str, Sequence[PromptedExample]] | None, cfg: EvalConfig,
            size: int) -> Iterable[list[Unit]]:
    """Consecutive groups of units with about ``size`` examples each (a unit is never split: it is the unit of
    resumption). Without pre-rendered examples, the limit per task stands in for its count."""
    chunk: list[Unit] = []
    count = 0
    for u in units:
        n = len(examples[u.key]) if examples is not None else (cfg.example_limit(u.task) or size)
        if chunk and count + n > size:
            yield chunk
            chunk, count = [], 0
        chunk.append(u)
        count += n
    if chunk:
        yield chunk


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="task", disable=not (enabled and _writes()), dynamic_ncols=True)


def evaluate_models(
    predictors: Sequence[Any],
    labels: Sequence[str],
    cfg: EvalConfig,
    output_dir: str | os.PathLike,
    *,
    progress: bool = True,
) -> dict:
    """Evaluates several models into ``output_dir/<label>/`` and writes a side-by-side report and figure.

    Returns {"results": {label: aggregates}, "gains": per-level gains of the first model over the second,
    "report": path, "figure": path}.
    """
    if len(predictors) != len(labels) or len(set(labels)) != len(labels):
        raise ValueError("evaluate_models: give one distinct label per model")
    output_dir = os.fspath(output_dir)
    units = plan(cfg)  # planned once: every model sees exactly the same units
    examples = render_units(units, cfg)
    # Every model is bounded alike (the limits come from the first model's vocabulary: one tokenizer per run).
    limits = generation_limits(cfg, [u.task for u in units], _vocab_of(predictors[0]))
    if _writes():
        print(format_plan(describe_plan(units, examples, predictors[0], cfg, models=len(predictors),
                                        limits=limits)), flush=True)
    aggs = [
        evaluate(p, cfg, os.path.join(output_dir, safe_name(lab)), units=units, examples=examples, progress=progress,
                 limits=limits)
        for p, lab in zip(predictors, labels)
    ]
    out: dict = {"results": dict(zip(labels, aggs))}
    report = os.path.join(output_dir, "report.md")
    text = markdown_report(aggs, labels, title=f"{cfg.split} evaluation")
    if len(aggs) >= 2:
        out["gains"] = level_gains(aggs[0], aggs[1])
        out["gain_intervals"] = gain_intervals(aggs[0], aggs[1], cfg.bootstrap) if cfg.bootstrap else None
        text += "\n" + format_gains(out["gains"], labels[0], labels[1], markdown=True,
                                    intervals=out["gain_intervals"])
    _write_text(report, text)
    out["report"] = report
    if _writes():
        from optiml_jax import plots

        if len(aggs) >= 2:
            out["figure"] = plots.plot_comparison(aggs, labels, os.path.join(output_dir, "comparison.png"),
                                                  title=f"{cfg.split}: per-level averages")
    summary = {
        "labels": list(labels), "split": cfg.split, "shots": list(cfg.shots), "report": report,
        "figure": out.get("figure"), "gains": out.get("gains"), "gain_intervals": out.get("gain_intervals"),
        "bootstrap": dataclasses.asdict(cfg.bootstrap) if cfg.bootstrap else None,
        "overall": {lab: a["overall"] for lab, a in zip(labels, aggs)},
        "overall_ci": {lab: a.get("overall_ci") for lab, a in zip(labels, aggs)},
        "combined": {lab: a["combined"] for lab, a in zip(labels, aggs)},
        "combined_ci": {lab: a.get("combined_ci") for lab, a in zip(labels, aggs)},
        "level_stats": {lab: a["level_stats"] for lab, a in zip(labels, aggs)},
        "results": {lab: os.path.join(output_dir, safe_name(lab), "results.json") for lab in labels},
    }
    # results.json: the top-level numbers with their intervals (the per-model results.json hold every cell);
    # summary.json: the same, under the name earlier runs and notebooks read.
    out["results_json"] = os.path.join(output_dir, "results.json")
    _write_json(out["results_json"], summary)
    _write_json(os.path.join(output_dir, "summary.json"), summary)
    return out


# --------------------------------------------------------------------------------------------------------------
# BIG-Bench Hard (paper section 6.1, Table 14)
# --------------------------------------------------------------------------------------------------------------

BBH_MODE_TITLES = {"answer_only": "3-shot", "cot": "3-shot CoT"}


@dataclasses.dataclass(frozen=True)
class BBHConfig:
    """The BBH protocol: every task's test items, 3-shot with its own prompt examples, answer-only and/or
    chain-of-thought, greedy generation scored by exact match on the extracted answer.

    Attributes:
      modes: "answer_only" (demonstrations give the answer) and/or "cot" (they give rationale + answer; the
        answer is read after the last "the answer is").
      tasks: BBH task names (``bbh_<task>`` or just ``<task>``); None = all 27.
      max_examples: items per task; None = all (the paper's test protocol).
      max_new_tokens: generation limit in "cot" mode (rationales run to ~200 tokens).
      answer_only_max_new_tokens: generation limit in "answer_only" mode (answers are short).
      seed: selects the items when ``max_examples`` is set.
      data_dir: the data directory holding ``bbh/`` (None = the environment's).
    """

    modes: tuple[str, ...] = ("answer_only", "cot")
    tasks: tuple[str, ...] | None = None
    max_examples: int | None = None
    max_new_tokens: int = 256
    answer_only_max_new_tokens: int = 64
    seed: int = 0
    data_dir: str | None = None

    def __post_init__(self) -> None:
        from optiml_jax.tasks import pipeline

        bad = [m for m in self.modes if m not in pipeline.BBH_MODES]
        if bad or not self.modes or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"BBHConfig.modes: {list(self.modes)!r} must be distinct modes from "
                             f"{sorted(pipeline.BBH_MODES)}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"BBHConfig.max_examples must be >= 1 or None, got {self.max_examples}")
        for name in ("max_new_tokens", "answer_only_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"BBHConfig.{name} must be >= 1, got {getattr(self, name)}")

    def new_tokens(self, mode: str) -> int:
        """Generation limit of a mode."""
        return self.max_new_tokens if mode == "cot" else self.answer_only_max_new_tokens

    def unit_settings(self) -> dict:
        """What a finished (task, mode) result depends on: a resumed run must match it."""
        return {"protocol": "bbh", "max_examples": self.max_examples, "max_new_tokens": self.max_new_tokens,
                "answer_only_max_new_tokens": self.answer_only_max_new_tokens, "seed": self.seed,
                "data_dir": self.data_dir}


def plan_bbh(cfg: BBHConfig) -> list[tuple[str, str]]:
    """The (task, mode) units of a BBH evaluation in a stable order; validates the task names."""
    from optiml_jax.tasks import pipeline

    known = pipeline.bbh_task_names(cfg.data_dir)
    if cfg.tasks is None:
        names = known
    else:
        names = []
        for t in cfg.tasks:
            full = t if t.startswith(pipeline.BBH_PREFIX) else pipeline.BBH_PREFIX + t
            if full not in known:
                raise ValueError(f"unknown BBH task {t!r}; BBH tasks: {', '.join(n[len(pipeline.BBH_PREFIX):] for n in known)}")
            if full not in names:
                names.append(full)
    return [(n, m) for n in names for m in cfg.modes]


def evaluate_bbh_examples(predictor: Any, examples: Sequence[PromptedExample], mode: str, max_new_tokens: int
                          ) -> tuple[float | None, list[dict]]:
    """Generates greedily for one (task, mode) unit; returns (exact-match score 0-100, per-example records)."""
    from optiml_jax.tasks import pipeline

    if not examples:
        return None, []
    dcfg = decoding.DecodeConfig(method="greedy", max_new_tokens=max_new_tokens)
    outputs = predictor.generate([ex.source for ex in examples], dcfg)
    records = []
    for ex, out in zip(examples, outputs):
        answer = pipeline.bbh_extract_answer(out, mode=mode)
        records.append({"id": ex.id, "task": ex.task, "mode": mode, "num_shots": ex.num_shots, "prompt": ex.source,
                        "references": list(ex.references), "generation": out, "answer": answer,
                        "score": pipeline.bbh_exact_match(answer, ex.references)})
    return float(np.mean([r["score"] for r in records])), records


def evaluate_bbh(predictor: Any, cfg: BBHConfig, output_dir: str | os.PathLike, *,
                 units: Sequence[tuple[str, str]] | None = None, progress: bool = True) -> dict:
    """Evaluates ``predictor`` on BIG-Bench Hard; returns and writes the per-task results.

    Writes ``predictions/<task>.<mode>.jsonl``, ``tasks/<task>.<mode>.json`` (a restarted run skips finished
    units), ``bbh_results.json`` and ``bbh_report.md`` (the per-task table) under ``output_dir``.
    """
    from optiml_jax.tasks import pipeline

    output_dir = os.fspath(output_dir)
    units = list(units) if units is not None else plan_bbh(cfg)
    _makedirs(*(os.path.join(output_dir, sub) for sub in ("tasks", "predictions")))
    _check_run_meta(output_dir, {"model": predictor.name, "fingerprint": params_fingerprint(predictor.params),
                                 "settings": cfg.unit_settings()})
    bar = _progress(len(units), f"{predictor.name} BBH", progress)
    unit_results, reused = [], 0
    try:
        for task, mode in units:
            key = f"{safe_name(task)}.{mode}"
            done = _finished_unit(output_dir, key)
            if done is not None:
                unit_results.append(done)
                reused += 1
                bar.update(1)
                continue
            bar.set_postfix_str(f"{task} {mode}")
            t0 = time.time()
            examples = pipeline.bbh_examples(task, mode=mode, max_examples=cfg.max_examples, seed=cfg.seed,
                                             data_dir=cfg.data_dir)
            score, records = evaluate_bbh_examples(predictor, examples, mode, cfg.new_tokens(mode))
            summary = {"task": task, "mode": mode, "score": score, "num_examples": len(records),
                       "num_answered": sum(r["answer"] is not None for r in records),
                       "seconds": round(time.time() - t0, 2)}
            _write_unit(output_dir, key, records, summary)
            unit_results.append(summary)
            bar.update(1)
    finally:
        bar.close()
    result = aggregate_bbh(unit_results, modes=cfg.modes, name=predictor.name)
    result["reused_units"] = reused
    result["truncated_prompts"] = int(getattr(predictor, "truncated_prompts", 0))
    _write_json(os.path.join(output_dir, "bbh_results.json"), result)
    _write_text(os.path.join(output_dir, "bbh_report.md"),
                bbh_markdown_report([result], [predictor.name], title=f"BIG-Bench Hard: {predictor.name}"))
    return result


def aggregate_bbh(unit_results: Sequence[Mapping], *, modes: Sequence[str], name: str = "") -> dict:
    """Per-task scores by mode and their unweighted mean over tasks (how BBH is reported)."""
    tasks: dict[str, dict] = {}
    for r in unit_results:
        t = tasks.setdefault(r["task"], {"scores": {}, "num_examples": {}, "num_answered": {}})
        t["scores"][r["mode"]] = r["score"]
        t["num_examples"][r["mode"]] = r["num_examples"]
        t["num_answered"][r["mode"]] = r.get("num_answered")
    average = {m: _mean(t["scores"].get(m) for t in tasks.values()) for m in modes}
    return {"name": name, "protocol": "bbh", "modes": list(modes), "tasks": dict(sorted(tasks.items())),
            "average": average}


def bbh_markdown_report(results: Sequence[Mapping], labels: Sequence[str], *, title: str = "") -> str:
    """The per-task table: one row per BBH task, one column per (model, mode), the average over tasks last."""
    modes = list(results[0]["modes"])
    cols = [(i, m) for i in range(len(results)) for m in modes]
    head = [f"{labels[i]}: {BBH_MODE_TITLES.get(m, m)}" if len(results) > 1 else BBH_MODE_TITLES.get(m, m)
            for i, m in cols]
    lines = [f"# {title}" if title else "", "",
             "Exact match (0-100) on the generated answer; CoT answers are read after \"the answer is\".", "",
             "| Task | Examples | " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(cols)]
    names = sorted(set().union(*(r["tasks"].keys() for r in results)))
    for n in names:
        t0 = results[0]["tasks"].get(n, {})
        count = max((v for v in t0.get("num_examples", {}).values() if v is not None), default=0)
        cells = []
        for i, m in cols:
            s = results[i]["tasks"].get(n, {}).get("scores", {}).get(m)
            cells.append("-" if s is None else f"{s:.1f}")
        short = n[len("bbh_"):] if n.startswith("bbh_") else n
        lines.append(f"| {short} | {count} | " + " | ".join(cells) + " |")
    avg = ["-" if results[i]["average"].get(m) is None else f"**{results[i]['average'][m]:.1f}**" for i, m in cols]
    lines.append(f"| **Average ({len(names)} tasks)** | | " + " | ".join(avg) + " |")
    return "\n".join(lines).lstrip("\n") + "\n"


def evaluate_bbh_models(predictors: Sequence[Any], labels: Sequence[str], cfg: BBHConfig,
                        output_dir: str | os.PathLike, *, progress: bool = True) -> dict:
    """BBH for several models into ``output_dir/<label>/``, plus a side-by-side ``report.md`` and
    ``summary.json`` (per-task scores of every model) in ``output_dir``."""
    if len(predictors) != len(labels) or len(set(labels)) != len(labels):
        raise ValueError("evaluate_bbh_models: give one distinct label per model")
    output_dir = os.fspath(output_dir)
    units = plan_bbh(cfg)
    results = [evaluate_bbh(p, cfg, os.path.join(output_dir, safe_name(lab)), units=units, progress=progress)
               for p, lab in zip(predictors, labels)]
    report = os.path.join(output_dir, "report.md")
    _write_text(report, bbh_markdown_report(results, labels, title="BIG-Bench Hard"))
    summary = os.path.join(output_dir, "summary.json")
    _write_json(summary, {"protocol": "bbh", "labels": list(labels), "modes": list(cfg.modes),
                          "results": dict(zip(labels, results)), "report": report})
    return {"results": dict(zip(labels, results)), "report": report, "summary": summary}

