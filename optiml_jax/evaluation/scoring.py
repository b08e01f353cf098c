"""Scoring evaluation examples with a predictor: rank classification over answer candidates, greedy generation
bounded per task, the per-example metrics and a held-out unit's summary.

An example with answer candidates is scored by rank classification (accuracy: the highest-scoring candidate is
right when it equals a reference, after normalising case and spaces); any other example is decoded greedily
and scored with its task's metric (Rouge-L F1 or exact match, 0-100). `evaluate_many` scores several units in
one call per kind, so batches fill across units (`optiml_jax.inference.Predictor` sorts them by length).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from optiml_jax import candidates as candidates_lib
from optiml_jax import decoding
from optiml_jax.evaluation.planning import EvalConfig, generation_limits
from optiml_jax.evaluation.reports import template_spread
from optiml_jax.tasks.schema import PromptedExample, TaskInfo


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


def vocab_of(predictor: Any) -> Any:
    """The predictor's vocabulary, or None: a predictor needs one only when generations are bounded by the
    references (`generation_limits` says so if it is missing), not to score or generate."""
    return getattr(predictor, "vocab", None)


def generate_greedy(predictor: Any, sources: Sequence[str], max_new_tokens: int,
                    limits: Sequence[int] | None = None) -> list[str]:
    """Greedy generations of ``sources``: up to ``max_new_tokens`` (which also sets the decode shapes and how far
    prompts are cut), each at most its entry of ``limits`` when given. Without a limit below ``max_new_tokens``
    the call is the plain one (no per-row limits at all)."""
    dcfg = decoding.DecodeConfig(method="greedy", max_new_tokens=max_new_tokens)
    if limits is not None and min(limits) < max_new_tokens:
        return predictor.generate(list(sources), dcfg, limits=list(limits))
    return predictor.generate(list(sources), dcfg)


def evaluate_examples(
    predictor: Any, task: TaskInfo, examples: Sequence[PromptedExample], cfg: EvalConfig
) -> tuple[dict, list[dict]]:
    """Scores one unit's examples; returns (summary, per-example prediction records)."""
    return evaluate_many(predictor, [(task, examples)], cfg)[0]


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
        limits = generation_limits(cfg, [task for task, _ in items], vocab_of(predictor))
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
        outputs = generate_greedy(predictor, [flat[i][1].source for i in generated], cfg.max_new_tokens,
                                  [limits[items[flat[i][0]][0].name] for i in generated])
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
