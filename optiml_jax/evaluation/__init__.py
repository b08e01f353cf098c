"""Evaluation of OPT-IML models: one runner parameterised by protocol (held-out generalization levels, BIG-Bench
Hard), with the plan, the scoring, the resumable result files, the reports and the figures beside it.

    from optiml_jax import evaluation
    agg = evaluation.evaluate(predictor, evaluation.EvalConfig(split="validation"), "eval/")
    out = evaluation.evaluate_models([a, b], ["trained", "init"], evaluation.BBHConfig(), "bbh/")

Modules, highest layer first (``.importlinter``, contract "evaluation"):

* `runner`: `evaluate` (one model) and `evaluate_models` (several, on the same units) for any protocol: planning,
  rendering, chunked scoring, resumption, progress, the per-model results and report files;
* `heldout` (`HeldOut` over an `EvalConfig`: the paper's three generalization levels, section 4.1) and `bbh`
  (`BBH` over a `BBHConfig`: BIG-Bench Hard, section 6.1, Table 14): the two protocols;
* `scoring` (rank classification, bounded greedy generation, metrics) and `store` (run.json, the per-unit
  files, writes by the output process only);
* `planning` (held-out settings, units, rendering, generation limits, the printed plan) and `plots` (figures);
* `reports`: the paper's averages with n/a cells, bootstrap intervals, gains and markdown reports (pure).

This module re-exports their public names; `plots` (matplotlib) is imported only when first used.
"""
from __future__ import annotations

import importlib
from typing import Any

from optiml_jax.bootstrap import Bootstrap
from optiml_jax.evaluation.bbh import (
    BBH, BBH_MODE_TITLES, BBHConfig, BBHUnit, aggregate_bbh, bbh_markdown_report, plan_bbh,
)
from optiml_jax.evaluation.heldout import HeldOut
from optiml_jax.evaluation.planning import (
    GENERATION_LIMITS, EvalConfig, Unit, describe_plan, format_plan, generation_limits, plan, render_units,
    safe_name,
)
from optiml_jax.evaluation.reports import (
    LEVEL_TITLES, NA, TEMPLATED_BENCHMARKS, aggregate, format_gains, format_score, gain_intervals, level_gains,
    load_results, markdown_report, mean_or_none, replicates, template_of, template_spread,
)
from optiml_jax.evaluation.runner import EvalProtocol, evaluate, evaluate_models, protocol_for
from optiml_jax.evaluation.scoring import evaluate_examples, evaluate_many, generate_greedy, metric_fn
from optiml_jax.evaluation.store import params_fingerprint

__all__ = [
    "BBH", "BBH_MODE_TITLES", "BBHConfig", "BBHUnit", "Bootstrap", "EvalConfig", "GENERATION_LIMITS", "HeldOut",
    "EvalProtocol", "LEVEL_TITLES", "NA", "TEMPLATED_BENCHMARKS", "Unit", "aggregate", "aggregate_bbh",
    "bbh_markdown_report", "describe_plan", "evaluate", "evaluate_examples", "evaluate_many", "evaluate_models",
    "format_gains", "format_plan", "format_score", "gain_intervals", "generate_greedy", "generation_limits",
    "level_gains", "load_results", "markdown_report", "mean_or_none", "metric_fn", "params_fingerprint", "plan",
    "plan_bbh", "plot_categories", "plot_comparison", "protocol_for", "render_units", "replicates", "safe_name",
    "template_of", "template_spread",
]

# Imported on first use: matplotlib is slow to import and `plots` selects its file-only backend.
_PLOTS = ("plot_categories", "plot_comparison")


def __getattr__(name: str) -> Any:
    """`plots` and its figures, imported on first access (importlib: a ``from`` import here would recurse)."""
    if name == "plots" or name in _PLOTS:
        plots = importlib.import_module("optiml_jax.evaluation.plots")
        return plots if name == "plots" else getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
