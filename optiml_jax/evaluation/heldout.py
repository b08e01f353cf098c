"""The held-out protocol (OPT-IML section 4.1, "Decoding" and "Model selection"): `HeldOut`, the runner's
parameterisation for the three generalization levels of a split (an `EvalConfig`).

For every evaluation task of a split (validation or test) and every shot setting (0 and k, k=5 by default; 2 for
SuperNI comparisons):

* examples come from `optiml_jax.tasks.pipeline.eval_examples` (all templates of a task merged) with the paper's
  limits: at most 250 per validation task, the first 100 per SuperNI test task, all others on test;
* an example with answer candidates is scored by rank classification (accuracy); any other example is decoded
  greedily until EOS or 256 tokens (or its task's reference-length bound: `EvalConfig.generation_limit`,
  `optiml_jax.evaluation.planning`) and scored with its task's metric (Rouge-L F1 or exact match, 0-100;
  `optiml_jax.evaluation.scoring`);
* a task's score is the mean over its examples, for PromptSource / FLAN tasks the mean over its templates'
  means (the spread over templates is reported beside it); a category's score the mean of its tasks; a
  generalization level's score the mean of its categories; the model-selection number the mean of all levels
  and shot settings. A cell without any example on disk is None ("n/a"), never 0;
* pending units are scored in chunks across tasks (`evaluate_many`), so batches fill even at 1 example per unit.

Outputs under a model's directory, besides the runner's unit files (``tasks/<task>.<k>shot.json``, with their
per-example scores, and ``predictions/<task>.<k>shot.jsonl``): ``results.json`` (aggregates with counts of what
was found on disk, template spreads and 95% bootstrap intervals, `optiml_jax.evaluation.reports`),
``report.md`` (the paper's table layout; missing cells "n/a") and ``categories.png``. Several models
(`runner.evaluate_models`: every unit rendered once, the plan printed first, `describe_plan`) add a side-by-side
``report.md``, a top-level ``results.json`` (also ``summary.json``) with the gains of the first model over the
second and their paired intervals, and ``comparison.png``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

from optiml_jax.evaluation import planning
from optiml_jax.evaluation import reports, scoring, store
from optiml_jax.evaluation.planning import EvalConfig, Unit
from optiml_jax.tasks.schema import PromptedExample


class HeldOut:
    """`EvalConfig` as a protocol of `optiml_jax.evaluation.runner`: (level, task, shots) units, rank
    classification or generation per example, the paper's averages with intervals, its report and figures."""

    results_file = "results.json"
    report_file = "report.md"

    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg
        self.name = cfg.split

    def plan(self) -> list[Unit]:
        """The units of the split (`planning.plan`)."""
        return planning.plan(self.cfg)

    def unit_settings(self) -> dict:
        """What a finished unit depends on (`EvalConfig.unit_settings`)."""
        return self.cfg.unit_settings()

    def render(self, units: Sequence[Unit]) -> dict[str, list[PromptedExample]]:
        """The units' examples with the paper's limits (`planning.render_units`)."""
        return planning.render_units(units, self.cfg)

    def example_limit(self, unit: Unit) -> int | None:
        """Examples a unit has at most before it is rendered (None: no limit)."""
        return self.cfg.example_limit(unit.task)

    def limits(self, units: Sequence[Unit], vocab: Any) -> dict[str, int]:
        """New tokens per generated example of each task (`planning.generation_limits`)."""
        return planning.generation_limits(self.cfg, [u.task for u in units], vocab)

    def describe(self, unit: Unit) -> str:
        """A unit in a progress bar or a log line."""
        return f"{unit.task.name} {unit.shots}-shot"

    def score(self, predictor: Any, units: Sequence[Unit], examples: Mapping[str, Sequence[PromptedExample]],
              limits: Mapping[str, int] | None) -> list[tuple[dict, list[dict]]]:
        """(summary, records) of each unit, all scored together (`scoring.evaluate_many`)."""
        return scoring.evaluate_many(predictor, [(u.task, examples[u.key]) for u in units], self.cfg, limits)

    def unit_fields(self, unit: Unit) -> dict:
        """What the unit file records of the unit itself, beside its scores."""
        return {"level": unit.level, "num_shots": unit.shots}

    def aggregate(self, results: Sequence[Mapping], *, name: str) -> dict:
        """The paper's averages of the unit results (`reports.aggregate`); refuses a split without any data."""
        if not any(r["num_examples"] for r in results):
            raise ValueError(f"split {self.cfg.split!r} has no data: none of the {len(results)} evaluation units "
                             "has examples")
        return reports.aggregate(results, shots=self.cfg.shots, levels=self.cfg.levels, name=name,
                                 split=self.cfg.split, bootstrap=self.cfg.bootstrap)

    def title(self, name: str = "") -> str:
        """The report's title, of one model or (no name) of several."""
        return f"{self.cfg.split} evaluation" + (f": {name}" if name else "")

    def report(self, aggs: Sequence[Mapping], labels: Sequence[str], *, title: str) -> str:
        """The paper's tables of one or several aggregates (`reports.markdown_report`)."""
        return reports.markdown_report(aggs, labels, title=title)

    def figures(self, agg: Mapping, output_dir: str, name: str) -> None:
        """``categories.png``: per-category scores of one model by level and shot setting."""
        from optiml_jax.evaluation import plots

        plots.plot_categories(agg, os.path.join(output_dir, "categories.png"), title=f"{name} ({self.cfg.split})")

    def announce(self, units: Sequence[Unit], examples: Mapping[str, Sequence[PromptedExample]],
                 predictors: Sequence[Any], limits: Mapping[str, int] | None) -> str | None:
        """The plan printed before an evaluation of several models starts (`planning.describe_plan`)."""
        return planning.format_plan(planning.describe_plan(units, examples, predictors[0], self.cfg,
                                                           models=len(predictors), limits=limits))

    def compare(self, aggs: Sequence[Mapping], labels: Sequence[str], output_dir: str) -> dict:
        """The side-by-side files of several models: ``report.md`` (with the gains of the first over the second
        and their paired intervals), ``comparison.png`` and the top-level ``results.json`` / ``summary.json``.

        Returns {"gains", "gain_intervals" (two models or more), "report", "figure" (idem), "results_json"}.
        """
        cfg = self.cfg
        out: dict = {}
        report = os.path.join(output_dir, "report.md")
        text = self.report(aggs, labels, title=self.title())
        if len(aggs) >= 2:
            out["gains"] = reports.level_gains(aggs[0], aggs[1])
            out["gain_intervals"] = reports.gain_intervals(aggs[0], aggs[1], cfg.bootstrap) if cfg.bootstrap \
                else None
            text += "\n" + reports.format_gains(out["gains"], labels[0], labels[1], markdown=True,
                                                intervals=out["gain_intervals"])
        store.write_text(report, text)
        out["report"] = report
        if store.writes() and len(aggs) >= 2:
            from optiml_jax.evaluation import plots

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
            "results": {lab: os.path.join(output_dir, planning.safe_name(lab), self.results_file) for lab in labels},
        }
        # results.json: the top-level numbers with their intervals (the per-model results.json hold every cell);
        # summary.json: the same, under the name earlier runs and notebooks read.
        out["results_json"] = os.path.join(output_dir, "results.json")
        store.write_json(out["results_json"], summary)
        store.write_json(os.path.join(output_dir, "summary.json"), summary)
        return out
