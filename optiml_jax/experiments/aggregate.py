"""Aggregation of an experiment's runs into its results table: one score per point with a 95% interval (pure).

A run's evaluation is an aggregate of `optiml_jax.evaluation.reports.aggregate` (tasks -> categories -> levels,
per shot setting). A point's score is the mean over its runs of each run's combined score (the model-selection number:
the mean over levels and shot settings); a level's, the mean over runs of the run's level score averaged over
shot settings.

Intervals resample all three sources of noise, innermost first (`optiml_jax.bootstrap`):

1. examples within every task and tasks within every category (`reports.replicates`: the replicate ``b`` of a
   run's score);
2. runs within the point (`Bootstrap.cell_replicates` over the runs' replicates, under the name "runs/..."):
   the runs of a point differ by their training seed and, for task scaling, by their task subset.

Every draw is seeded by names, never by call order: runs evaluated on the same units draw the same example and
task indices, and points with the same number of runs draw the same runs, so the replicates of two points are
paired as those of two models in `reports.gain_intervals` are.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from optiml_jax.evaluation import reports
from optiml_jax.bootstrap import Bootstrap, stratified_replicates

LEVELS_KEY = "levels"


def run_scores(agg: Mapping[str, Any], bootstrap: Bootstrap) -> dict[str, Any]:
    """A run's combined score and per-level scores (mean over shot settings), each with its replicates.

    Returns {"score": float | None, "replicates": array | None, "levels": {level: {"score", "replicates"}},
    "template_std": mean over templated tasks of the std over template means (None: no templated task)}.
    Replicates are None when the aggregate lacks per-example scores.
    """
    reps = reports.replicates(agg, bootstrap)
    shots = [str(s) for s in agg["shots"]]
    out: dict[str, Any] = {"score": agg.get("combined"), "replicates": reps.get(("combined",)), "levels": {}}
    for lv, per_shot in agg.get("level_scores", {}).items():
        present = [s for s in shots if per_shot.get(s) is not None]
        if not present:
            continue
        lv_reps = [reps.get(("level", lv, s)) for s in present]
        out["levels"][lv] = {
            "score": float(np.mean([per_shot[s] for s in present])),
            "replicates": stratified_replicates(lv_reps) if all(r is not None for r in lv_reps) else None,
        }
    stds = [sp["std"] for t in agg.get("tasks", {}).values() for sp in (t.get("templates") or {}).values() if sp]
    out["template_std"] = float(np.mean(stds)) if stds else None
    return out


def _over_runs(scores: Sequence[float], replicates: Sequence[np.ndarray | None], name: str,
               bootstrap: Bootstrap) -> dict[str, Any]:
    """Mean over runs and the interval of the two-stage bootstrap (examples/tasks, then runs)."""
    score = float(np.mean(scores))
    if not replicates or any(r is None for r in replicates):
        return {"score": score, "ci_low": None, "ci_high": None}
    lo, hi = bootstrap.interval(bootstrap.cell_replicates(list(replicates), "runs/" + name))
    return {"score": score, "ci_low": round(lo, 4), "ci_high": round(hi, 4)}


def point_summary(point: Mapping[str, Any], run_aggs: Sequence[Mapping[str, Any]], bootstrap: Bootstrap,
                  levels: Sequence[str]) -> dict[str, Any]:
    """One results.json point from the evaluation aggregates of its finished runs.

    ``point``: {"key", "x", "label"} (plus anything else to keep, e.g. "baseline"). A point without finished
    runs gets score None and n_runs 0. Keys: x, label, score, ci_low, ci_high, n_runs, run_scores, run_std
    (the spread over seeds / subsets), levels {level: {score, ci_low, ci_high}}, template_std.
    """
    out: dict[str, Any] = {k: point[k] for k in point if k not in ("runs",)}
    per_run = [run_scores(a, bootstrap) for a in run_aggs]
    per_run = [r for r in per_run if r["score"] is not None]
    out["n_runs"] = len(per_run)
    if not per_run:
        out.update(score=None, ci_low=None, ci_high=None, run_scores=[], run_std=None,
                   levels={lv: {"score": None, "ci_low": None, "ci_high": None} for lv in levels},
                   template_std=None)
        return out
    out.update(_over_runs([r["score"] for r in per_run], [r["replicates"] for r in per_run],
                          "combined", bootstrap))
    out["run_scores"] = [round(float(r["score"]), 4) for r in per_run]
    out["run_std"] = float(np.std(out["run_scores"]))
    out["levels"] = {}
    for lv in levels:
        have = [r["levels"][lv] for r in per_run if lv in r["levels"]]
        if len(have) != len(per_run):   # a level some run did not evaluate: no mean over a different set of runs
            out["levels"][lv] = {"score": None, "ci_low": None, "ci_high": None}
            continue
        out["levels"][lv] = _over_runs([h["score"] for h in have], [h["replicates"] for h in have],
                                       lv, bootstrap)
        out["levels"][lv]["run_scores"] = [round(float(h["score"]), 4) for h in have]
    stds = [r["template_std"] for r in per_run if r["template_std"] is not None]
    out["template_std"] = float(np.mean(stds)) if stds else None
    return out


def results_table(points: Sequence[Mapping[str, Any]], levels: Sequence[str], **meta: Any) -> dict[str, Any]:
    """results.json: ``{"points": [...], "levels": {level: {"points": [...]}}, "baseline": point | None, ...}``.

    ``points`` are `point_summary` results (a baseline point has ``"baseline": True`` and is kept apart).
    ``meta`` (experiment name, axis, settings, completeness) is stored beside them.
    """
    curve = [p for p in points if not p.get("baseline")]
    base = [p for p in points if p.get("baseline")]
    per_level = {lv: {"points": [{"x": p["x"], "label": p.get("label"), "n_runs": p["n_runs"],
                                  **{k: p["levels"][lv][k] for k in ("score", "ci_low", "ci_high")},
                                  "run_scores": p["levels"][lv].get("run_scores", [])}
                                 for p in curve]} for lv in levels}
    return {**meta, "points": list(curve), LEVELS_KEY: per_level, "baseline": base[0] if base else None}


def markdown_table(results: Mapping[str, Any]) -> str:
    """The results as a markdown table: one row per point, the average and every level, with intervals."""
    levels = list(results.get(LEVELS_KEY, {}))

    def cell(score, lo, hi) -> str:
        ci = [lo, hi] if lo is not None and hi is not None else None
        return reports.format_score(score, ci)

    head = ("| " + results.get("x_label", "x") + " | runs | average | "
            + " | ".join(reports.LEVEL_TITLES.get(lv, lv) for lv in levels) + " | spread over runs (sd) |")
    lines = [head, "|---|---:|---:|" + "---:|" * len(levels) + "---:|"]
    rows = list(results["points"]) + ([results["baseline"]] if results.get("baseline") else [])
    for p in rows:
        lv_cells = [cell(p["levels"][lv]["score"], p["levels"][lv]["ci_low"], p["levels"][lv]["ci_high"])
                    for lv in levels]
        sd = reports.NA if p.get("run_std") is None else f"{p['run_std']:.1f}"
        lines.append(f"| {p.get('label', p['x'])} | {p['n_runs']} | {cell(p['score'], p['ci_low'], p['ci_high'])} | "
                     + " | ".join(lv_cells) + f" | {sd} |")
    return "\n".join(lines) + "\n"
