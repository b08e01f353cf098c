"""Aggregates, reports and comparisons of held-out evaluations (pure: plain dicts in, dicts and markdown out).

The paper's averages (OPT-IML section 4.1): a task's score is the mean over its examples (hence over its
templates), a category's the mean of its tasks, a generalization level's the mean of its categories, the
model-selection number the mean over levels and shot settings. Three rules on top:

* **Missing is "n/a", never 0.** A unit without examples on disk has score None; a cell (category, benchmark,
  level) with no task that has examples is None too and is rendered "n/a"; averages above it use only the cells
  that have data. Every cell records what was found: tasks planned, tasks with examples and examples scored.
* **Templates.** PromptSource and FLAN tasks are prompted through several templates; a task's score averages
  all of them and ``templates`` gives the spread over the per-template means (min, max, std).
* **Uncertainty.** Every category, benchmark and level average and the overall numbers carry a 95% bootstrap
  interval (`optiml_jax.bootstrap`: examples resampled within tasks, tasks within the cell, fixed strata above).
  Two aggregates over the same units draw the same indices, so `gain_intervals` gives paired intervals of
  their differences.

`optiml_jax.evaluation.runner` produces the per-unit results and writes these reports; `plots` draws them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from optiml_jax.bootstrap import Bootstrap, stratified_replicates
from optiml_jax.tasks.schema import LEVELS

LEVEL_TITLES = {
    "fully_heldout": "Fully held-out",
    "partially_heldout": "Partially supervised",
    "supervised": "Fully supervised",
}
# Benchmarks whose tasks are prompted through several templates (example ids "<template>-<k>").
TEMPLATED_BENCHMARKS = ("PromptSource", "FLAN")
NA = "n/a"


def mean_or_none(xs: Iterable[float | None]) -> float | None:
    """The mean of the values that exist (None and NaN are missing data, not zeros); None if there are none."""
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(vals)) if vals else None


# ------------------------------------------------------------------------------------------------- templates

def template_of(example_id: str, benchmark: str) -> str | None:
    """The template an evaluation example was rendered with, for PromptSource/FLAN tasks (ids
    "<template>-<k>", as `optiml_jax.tasks.sources` names them); None for other benchmarks."""
    if benchmark not in TEMPLATED_BENCHMARKS:
        return None
    head, sep, tail = example_id.rpartition("-")
    return head if sep and head and tail.isdigit() else None


def template_spread(ids: Sequence[str], scores: Sequence[float], benchmark: str) -> dict | None:
    """Per-template means of one unit and their spread; None when the task has no templates.

    Returns {"templates": n, "mean": mean of template means, "min", "max", "std" (population std over template
    means; 0 with one template), "per_template": {template: {"score", "examples"}}}.
    """
    groups: dict[str, list[float]] = {}
    for ex_id, s in zip(ids, scores):
        tpl = template_of(ex_id, benchmark)
        if tpl is None:
            return None
        groups.setdefault(tpl, []).append(float(s))
    if not groups:
        return None
    means = np.array([np.mean(v) for v in groups.values()])
    return {"templates": len(groups), "mean": float(means.mean()), "min": float(means.min()),
            "max": float(means.max()), "std": float(means.std()),
            "per_template": {t: {"score": float(np.mean(v)), "examples": len(v)} for t, v in sorted(groups.items())}}


# ---------------------------------------------------------------------------------------------- aggregation

def _cell(task_names: Sequence[str], tasks: Mapping[str, Mapping], shot_keys: Sequence[str]) -> dict:
    """A cell's point estimates and what was found on disk for it."""
    return {
        "tasks": len(task_names),
        "tasks_with_data": {s: sum(tasks[n]["scores"].get(s) is not None for n in task_names) for s in shot_keys},
        "examples": {s: int(sum(tasks[n]["num_examples"].get(s) or 0 for n in task_names)) for s in shot_keys},
        "scores": {s: mean_or_none(tasks[n]["scores"].get(s) for n in task_names) for s in shot_keys},
    }


def _members(tasks: Mapping[str, Mapping], levels: Sequence[str]) -> tuple[dict, dict]:
    """{level: {category: [task, ...]}} and {benchmark: [task, ...]}, names sorted (the bootstrap pairs by order)."""
    cats: dict[str, dict[str, list[str]]] = {lv: {} for lv in levels}
    benches: dict[str, list[str]] = {}
    for n in sorted(tasks):
        t = tasks[n]
        if t["level"] in cats:
            cats[t["level"]].setdefault(t["category"], []).append(n)
            benches.setdefault(t["benchmark"], []).append(n)
    return {lv: dict(sorted(c.items())) for lv, c in cats.items()}, dict(sorted(benches.items()))


def aggregate(
    unit_results: Sequence[Mapping], *, shots: Sequence[int], levels: Sequence[str] = LEVELS, name: str = "",
    split: str = "", bootstrap: Bootstrap | None = Bootstrap(),
) -> dict:
    """Aggregates per-unit results the paper's way: tasks -> categories -> levels -> overall.

    Each unit result has task, level, category, benchmark, metric, num_shots, score (None: no examples),
    num_examples and, for intervals and template spreads, ``example_scores`` and ``example_ids``. Scores are
    keyed by the shot count as a string ("0", "5"). ``bootstrap=None`` leaves the intervals out.
    """
    shot_keys = [str(k) for k in shots]
    tasks: dict[str, dict] = {}
    for r in unit_results:
        t = tasks.setdefault(r["task"], {
            "level": r["level"], "category": r["category"], "benchmark": r["benchmark"], "metric": r["metric"],
            "scores": {}, "num_examples": {}, "example_scores": {}, "templates": {},
        })
        s = str(r["num_shots"])
        t["scores"][s] = r["score"]
        t["num_examples"][s] = r["num_examples"]
        t["example_scores"][s] = r.get("example_scores")
        spread = r.get("templates")
        if spread is None and r.get("example_ids") and r.get("example_scores"):
            spread = template_spread(r["example_ids"], r["example_scores"], r["benchmark"])
        t["templates"][s] = spread
        # Templated tasks score the mean of their template means: the bootstrap resamples within templates.
        ids = r.get("example_ids")
        t.setdefault("example_templates", {})[s] = (
            [template_of(i, r["benchmark"]) for i in ids] if spread is not None and ids else None)

    members, bench_members = _members(tasks, levels)
    categories = {lv: {c: _cell(ns, tasks, shot_keys) for c, ns in cs.items()} for lv, cs in members.items()}
    benchmarks = {b: _cell(ns, tasks, shot_keys) for b, ns in bench_members.items()}
    level_stats = {}
    for lv in levels:
        if not members[lv]:
            continue
        names = [n for ns in members[lv].values() for n in ns]
        cell = _cell(names, tasks, shot_keys)
        cell["categories"] = len(members[lv])
        cell["categories_with_data"] = {s: sum(c["scores"][s] is not None for c in categories[lv].values())
                                        for s in shot_keys}
        # A level averages its categories, not its tasks (the paper's Table 2 rows).
        cell["scores"] = {s: mean_or_none(c["scores"][s] for c in categories[lv].values()) for s in shot_keys}
        level_stats[lv] = cell
    level_scores = {lv: dict(c["scores"]) for lv, c in level_stats.items()}
    overall = {s: mean_or_none(ls[s] for ls in level_scores.values()) for s in shot_keys}
    agg = {
        "name": name, "split": split, "shots": list(shots), "levels": list(levels), "tasks": tasks,
        "categories": {lv: c for lv, c in categories.items() if c}, "benchmarks": benchmarks,
        "level_stats": level_stats, "level_scores": level_scores, "overall": overall,
        "combined": mean_or_none(overall.values()),
    }
    if bootstrap is not None:
        _add_intervals(agg, bootstrap)
    return agg


# ------------------------------------------------------------------------------------------------ intervals

def replicates(agg: Mapping, bootstrap: Bootstrap) -> dict[tuple, np.ndarray]:
    """Bootstrap replicates of every average of an aggregate that can have them.

    Keys: ("category", level, category, shot), ("benchmark", benchmark, shot), ("level", level, shot),
    ("overall", shot), ("combined",). A cell is left out when it has no data or when one of its tasks with data
    lacks per-example scores (results of an older run).
    """
    shot_keys = [str(k) for k in agg["shots"]]
    tasks = agg["tasks"]
    members, bench_members = _members(tasks, agg["levels"])
    task_reps: dict[tuple[str, str], np.ndarray | None] = {}
    for n, t in tasks.items():
        for s in shot_keys:
            xs = t["example_scores"].get(s)
            if t["scores"].get(s) is not None:
                groups = t.get("example_templates", {}).get(s)
                task_reps[n, s] = bootstrap.task_replicates(xs, f"{n}/{s}", groups) if xs else None

    def cell(names: Sequence[str], s: str, key: str) -> np.ndarray | None:
        reps = [task_reps[n, s] for n in names if (n, s) in task_reps]
        if not reps or any(r is None for r in reps):
            return None
        return bootstrap.cell_replicates(reps, f"{key}/{s}")

    out: dict[tuple, np.ndarray] = {}
    for s in shot_keys:
        for lv, cats in members.items():
            strata = []
            for c, names in cats.items():
                r = cell(names, s, f"category/{lv}/{c}")
                if r is not None:
                    out["category", lv, c, s] = r
                    strata.append(r)
                elif any((n, s) in task_reps for n in names):
                    strata = None  # a category with data but without replicates: no interval for its level
                    break
            if strata:
                out["level", lv, s] = stratified_replicates(strata)
        for b, names in bench_members.items():
            r = cell(names, s, f"benchmark/{b}")
            if r is not None:
                out["benchmark", b, s] = r
        lv_reps = [out.get(("level", lv, s)) for lv in agg["level_scores"] if agg["level_scores"][lv].get(s) is not None]
        if lv_reps and all(r is not None for r in lv_reps):
            out["overall", s] = stratified_replicates(lv_reps)
    shot_reps = [out.get(("overall", s)) for s in shot_keys if agg["overall"].get(s) is not None]
    if shot_reps and all(r is not None for r in shot_reps):
        out["combined",] = stratified_replicates(shot_reps)
    return out


def _ci(reps: Mapping[tuple, np.ndarray], key: tuple, bootstrap: Bootstrap) -> list[float] | None:
    r = reps.get(key)
    return None if r is None else [round(x, 4) for x in bootstrap.interval(r)]


def _add_intervals(agg: dict, bootstrap: Bootstrap) -> None:
    """Adds "ci" ({shot: [low, high] | None}) to every cell and overall_ci / combined_ci to the aggregate."""
    reps = replicates(agg, bootstrap)
    shot_keys = [str(k) for k in agg["shots"]]
    for lv, cats in agg["categories"].items():
        for c, cell in cats.items():
            cell["ci"] = {s: _ci(reps, ("category", lv, c, s), bootstrap) for s in shot_keys}
    for b, cell in agg["benchmarks"].items():
        cell["ci"] = {s: _ci(reps, ("benchmark", b, s), bootstrap) for s in shot_keys}
    for lv, cell in agg["level_stats"].items():
        cell["ci"] = {s: _ci(reps, ("level", lv, s), bootstrap) for s in shot_keys}
    agg["overall_ci"] = {s: _ci(reps, ("overall", s), bootstrap) for s in shot_keys}
    agg["combined_ci"] = _ci(reps, ("combined",), bootstrap)
    agg["bootstrap"] = dataclasses.asdict(bootstrap)


def _bootstrap_of(agg: Mapping) -> Bootstrap:
    return Bootstrap(**agg["bootstrap"]) if agg.get("bootstrap") else Bootstrap()


def level_gains(agg_a: Mapping, agg_b: Mapping) -> dict:
    """Per-level (and average) score differences a - b for each shot setting both share (None where either
    side has no data)."""
    shot_keys = [str(k) for k in agg_a["shots"] if str(k) in {str(s) for s in agg_b["shots"]}]
    gains: dict[str, dict[str, float | None]] = {}
    for lv in list(agg_a["level_scores"]) + ["average"]:
        sa = agg_a["overall"] if lv == "average" else agg_a["level_scores"].get(lv, {})
        sb = agg_b["overall"] if lv == "average" else agg_b["level_scores"].get(lv, {})
        gains[lv] = {s: (None if sa.get(s) is None or sb.get(s) is None else sa[s] - sb[s]) for s in shot_keys}
    return gains


def gain_intervals(agg_a: Mapping, agg_b: Mapping, bootstrap: Bootstrap | None = None) -> dict:
    """95% bootstrap intervals of `level_gains` ({level | "average": {shot: [low, high] | None}}).

    Both aggregates are resampled with the same seeded draws (``bootstrap``, default: agg_a's settings), so
    over the same units and example counts the replicates are paired and the interval is that of the paired
    difference; otherwise the draws are independent and the interval that of a difference of independent
    estimates.
    """
    bs = bootstrap or _bootstrap_of(agg_a)
    ra, rb = replicates(agg_a, bs), replicates(agg_b, bs)
    out: dict[str, dict[str, list[float] | None]] = {}
    for lv, per_shot in level_gains(agg_a, agg_b).items():
        out[lv] = {}
        for s, g in per_shot.items():
            key = ("overall", s) if lv == "average" else ("level", lv, s)
            ok = g is not None and key in ra and key in rb
            out[lv][s] = [round(x, 4) for x in bs.interval(ra[key] - rb[key])] if ok else None
    return out


# -------------------------------------------------------------------------------------------------- reports

def format_score(score: float | None, ci: Sequence[float] | None = None, *, signed: bool = False) -> str:
    """"55.0 [50.1, 60.0]", "55.0" without an interval, "n/a" for missing data."""
    if score is None:
        return NA
    f = "{:+.1f}" if signed else "{:.1f}"
    text = f.format(score)
    return f"{text} [{f.format(ci[0])}, {f.format(ci[1])}]" if ci else text


def _found(cell: Mapping, shot_keys: Sequence[str]) -> str:
    """"t/n tasks, e ex." for a cell: tasks with examples on disk / tasks planned, examples scored."""
    with_data = max(cell["tasks_with_data"].get(s, 0) for s in shot_keys)
    examples = max(cell["examples"].get(s, 0) for s in shot_keys)
    return f"{with_data}/{cell['tasks']} tasks, {examples} ex."


def _row(first: str, second: str | None, cell0: Mapping | None, cells: Sequence[Mapping | None],
         shot_keys: Sequence[str], bold: bool = False) -> str:
    """A table row: first column, a second one unless ``second`` is None, the counts, one score per column."""
    found = _found(cell0, shot_keys) if cell0 else "0/0 tasks, 0 ex."
    vals = []
    for c in cells:
        for s in shot_keys:
            v = format_score(c["scores"].get(s), (c.get("ci") or {}).get(s)) if c else NA
            vals.append(f"**{v}**" if bold and v != NA else v)
    lead = f"| {first} | " if second is None else f"| {first} | {second} | "
    return lead + f"{found} | " + " | ".join(vals) + " |"


def markdown_report(aggs: Sequence[Mapping], labels: Sequence[str], *, title: str = "") -> str:
    """The paper's layout with counts and intervals: rows are levels with their categories, then benchmarks,
    then the spread over templates; one column per (model, shot setting)."""
    shot_keys = [str(k) for k in aggs[0]["shots"]]
    heads = [f"{lab}: {s}-shot" if len(aggs) > 1 else f"{s}-shot" for lab in labels for s in shot_keys]
    head = "| {} | {} | Found | " + " | ".join(heads) + " |"
    rule = "|---|---|---|" + "---:|" * len(heads)
    ci_note = ""
    if aggs[0].get("bootstrap"):
        b = aggs[0]["bootstrap"]
        ci_note = (f" Brackets: {b['confidence']:.0%} bootstrap interval ({b['num_samples']} replicates, seed "
                   f"{b['seed']}; examples resampled within tasks, tasks within the cell).")
    lines = [f"# {title}" if title else "", "",
             "Scores 0-100: accuracy for rank-classified tasks, else Rouge-L F1 / exact match." + ci_note,
             f"**{NA}**: no example of that cell was found on disk (not a score of 0); averages above it use the "
             "cells that have data. Found: tasks with examples on disk / tasks planned, examples scored.", "",
             head.format("Level", "Category"), rule]
    for lv in aggs[0]["levels"]:
        stats = [a.get("level_stats", {}).get(lv) for a in aggs]
        if stats[0] is None:
            continue
        lines.append(_row(f"**{LEVEL_TITLES.get(lv, lv)}**", "", stats[0], stats, shot_keys, bold=True))
        cats = sorted(set().union(*(a["categories"].get(lv, {}).keys() for a in aggs)))
        for c in cats:
            cells = [a["categories"].get(lv, {}).get(c) for a in aggs]
            lines.append(_row("", c, cells[0], cells, shot_keys))
    avg = []
    for a in aggs:
        for s in shot_keys:
            avg.append(f"**{format_score(a['overall'].get(s), (a.get('overall_ci') or {}).get(s))}**")
    lines.append("| **Average of levels** | | | " + " | ".join(avg) + " |")
    comb = " | ".join(f"{lab}: **{format_score(a['combined'], a.get('combined_ci'))}**" for lab, a in zip(labels, aggs))
    # The benchmark table has no sub-row column (an empty header there read as a missing label).
    lines += ["", f"Combined (model selection: mean over levels and shot settings): {comb}", "", "By benchmark:", "",
              "| Benchmark | Found | " + " | ".join(heads) + " |", "|---|---|" + "---:|" * len(heads)]
    for b in sorted(set().union(*(a["benchmarks"].keys() for a in aggs))):
        cells = [a["benchmarks"].get(b) for a in aggs]
        lines.append(_row(b, None, cells[0], cells, shot_keys))
    lines += _template_table(aggs, labels, shot_keys)
    lines += _task_table(aggs, labels, shot_keys)
    return "\n".join(lines).lstrip("\n") + "\n"


def _task_table(aggs: Sequence[Mapping], labels: Sequence[str], shot_keys: Sequence[str]) -> list[str]:
    """One row per task (level, category, benchmark, examples scored), means only."""
    heads = [f"{lab}: {s}-shot" if len(aggs) > 1 else f"{s}-shot" for lab in labels for s in shot_keys]
    lines = ["", "Per task:", "", "| Task | Level | Category | Benchmark | Examples | " + " | ".join(heads) + " |",
             "|---|---|---|---|---:|" + "---:|" * len(heads)]
    order = {lv: i for i, lv in enumerate(aggs[0]["levels"])}
    names = sorted(aggs[0]["tasks"], key=lambda n: (order.get(aggs[0]["tasks"][n]["level"], 99), n))
    for n in names:
        t = aggs[0]["tasks"][n]
        count = max((v or 0 for v in t["num_examples"].values()), default=0)
        vals = [format_score(a["tasks"].get(n, {}).get("scores", {}).get(s)) for a in aggs for s in shot_keys]
        lines.append(f"| {n} | {LEVEL_TITLES.get(t['level'], t['level'])} | {t['category']} | {t['benchmark']} | "
                     f"{count} | " + " | ".join(vals) + " |")
    return lines


def _template_table(aggs: Sequence[Mapping], labels: Sequence[str], shot_keys: Sequence[str]) -> list[str]:
    """Rows "mean (min-max, sd)" over templates for every templated task that has data."""
    names = sorted(n for n, t in aggs[0]["tasks"].items() if any(t.get("templates", {}).values()))
    if not names:
        return []
    heads = [f"{lab}: {s}-shot" if len(aggs) > 1 else f"{s}-shot" for lab in labels for s in shot_keys]
    lines = ["", "Spread over templates (PromptSource / FLAN tasks): mean of the per-template means "
             "(min-max over templates, standard deviation).", "",
             "| Task | Benchmark | Level | Templates | " + " | ".join(heads) + " |",
             "|---|---|---|---:|" + "---:|" * len(heads)]
    for n in names:
        t0 = aggs[0]["tasks"][n]
        n_tpl = max((sp["templates"] for sp in t0["templates"].values() if sp), default=0)
        vals = []
        for a in aggs:
            for s in shot_keys:
                sp = a["tasks"].get(n, {}).get("templates", {}).get(s)
                vals.append(NA if not sp else f"{sp['mean']:.1f} ({sp['min']:.1f}-{sp['max']:.1f}, sd {sp['std']:.1f})")
        lines.append(f"| {n} | {t0['benchmark']} | {LEVEL_TITLES.get(t0['level'], t0['level'])} | {n_tpl} | "
                     + " | ".join(vals) + " |")
    return lines


def format_gains(gains: Mapping, label_a: str, label_b: str, *, markdown: bool = False,
                 intervals: Mapping | None = None) -> str:
    """Human-readable per-level gains of model a over model b, with their intervals when given."""
    lines = [f"Per-level gains of {label_a} over {label_b} (points):"]
    if markdown:
        lines = ["## " + lines[0], ""]
    for lv, per_shot in gains.items():
        cells = ", ".join(
            f"{s}-shot {format_score(g, (intervals or {}).get(lv, {}).get(s), signed=True)}"
            for s, g in per_shot.items())
        lines.append(f"{'- ' if markdown else '  '}{LEVEL_TITLES.get(lv, 'Average')}: {cells}")
    return "\n".join(lines) + "\n"


def load_results(path: str | os.PathLike) -> dict:
    """Aggregates from an evaluation directory (its results.json) or a results.json file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no evaluation results at {path}: run the evaluation first")
    with open(path) as f:
        return json.load(f)
