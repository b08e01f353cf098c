"""The BIG-Bench Hard protocol (OPT-IML section 6.1, Table 14): `BBH`, the runner's parameterisation over a
`BBHConfig`, with its per-task aggregate (`aggregate_bbh`) and table (`bbh_markdown_report`).

Every test item of the 27 tasks, 3-shot with the task's own prompt examples with ("cot") and without
("answer_only") chain of thought, greedy generation, exact match on the extracted answer, reported per task and
as the mean over tasks. A unit is one (task, mode); outputs under a model's directory, besides the runner's unit
files (``tasks/<task>.<mode>.json``, ``predictions/<task>.<mode>.jsonl``): ``bbh_results.json`` and
``bbh_report.md`` (the per-task table). Several models (`runner.evaluate_models`) add a side-by-side
``report.md`` and ``summary.json`` (per-task scores of every model).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from optiml_jax.evaluation import store
from optiml_jax.evaluation.planning import safe_name
from optiml_jax.evaluation.reports import mean_or_none
from optiml_jax.evaluation.scoring import generate_greedy
from optiml_jax.tasks.schema import PromptedExample

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


class BBHUnit(NamedTuple):
    """One (task, mode) of a BBH evaluation: the granularity of progress and of resumption."""

    task: str
    mode: str

    @property
    def key(self) -> str:
        return f"{safe_name(self.task)}.{self.mode}"


def plan_bbh(cfg: BBHConfig) -> list[BBHUnit]:
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
    return [BBHUnit(n, m) for n in names for m in cfg.modes]


class BBH:
    """`BBHConfig` as a protocol of `optiml_jax.evaluation.runner`: (task, mode) units, greedy generation,
    exact match on the extracted answer, the mean over tasks per mode and the per-task table."""

    name = "BBH"
    results_file = "bbh_results.json"
    report_file = "bbh_report.md"

    def __init__(self, cfg: BBHConfig):
        self.cfg = cfg

    def plan(self) -> list[BBHUnit]:
        """The (task, mode) units (`plan_bbh`)."""
        return plan_bbh(self.cfg)

    def unit_settings(self) -> dict:
        """What a finished unit depends on (`BBHConfig.unit_settings`)."""
        return self.cfg.unit_settings()

    def render(self, units: Sequence[BBHUnit]) -> dict[str, list[PromptedExample]]:
        """The units' prompts: the task's own 3-shot prompt in the unit's mode before each test item."""
        from optiml_jax.tasks import pipeline

        c = self.cfg
        return {u.key: pipeline.bbh_examples(u.task, mode=u.mode, max_examples=c.max_examples, seed=c.seed,
                                             data_dir=c.data_dir) for u in units}

    def example_limit(self, unit: BBHUnit) -> int | None:
        """Examples a unit has at most before it is rendered (None: every test item)."""
        return self.cfg.max_examples

    def limits(self, units: Sequence[BBHUnit], vocab: Any) -> None:
        """No per-task limits: each mode has its own (`BBHConfig.new_tokens`)."""
        return None

    def describe(self, unit: BBHUnit) -> str:
        """A unit in a progress bar or a log line."""
        return f"{unit.task} {unit.mode}"

    def score(self, predictor: Any, units: Sequence[BBHUnit], examples: Mapping[str, Sequence[PromptedExample]],
              limits: None = None) -> list[tuple[dict, list[dict]]]:
        """(summary, records) of each unit: one greedy generation call per mode over all the units' prompts
        (a mode's generation limit also decides how far its prompts are cut, so modes never share a call)."""
        from optiml_jax.tasks import pipeline

        outputs: dict[str, list[str]] = {}
        for mode in dict.fromkeys(u.mode for u in units):
            sources = [ex.source for u in units if u.mode == mode for ex in examples[u.key]]
            it = iter(generate_greedy(predictor, sources, self.cfg.new_tokens(mode)) if sources else ())
            for u in units:
                if u.mode == mode:
                    outputs[u.key] = [next(it) for _ in examples[u.key]]
        scored = []
        for u in units:
            records = []
            for ex, out in zip(examples[u.key], outputs[u.key]):
                answer = pipeline.bbh_extract_answer(out, mode=u.mode)
                records.append({"id": ex.id, "task": ex.task, "mode": u.mode, "num_shots": ex.num_shots,
                                "prompt": ex.source, "references": list(ex.references), "generation": out,
                                "answer": answer, "score": pipeline.bbh_exact_match(answer, ex.references)})
            summary = {"task": u.task, "mode": u.mode,
                       "score": float(np.mean([r["score"] for r in records])) if records else None,
                       "num_examples": len(records), "num_answered": sum(r["answer"] is not None for r in records)}
            scored.append((summary, records))
        return scored

    def unit_fields(self, unit: BBHUnit) -> dict:
        """Nothing beyond the summary's own task and mode."""
        return {}

    def aggregate(self, results: Sequence[Mapping], *, name: str) -> dict:
        """Per-task scores by mode and their mean over tasks (`aggregate_bbh`)."""
        return aggregate_bbh(results, modes=self.cfg.modes, name=name)

    def title(self, name: str = "") -> str:
        """The report's title, of one model or (no name) of several."""
        return "BIG-Bench Hard" + (f": {name}" if name else "")

    def report(self, aggs: Sequence[Mapping], labels: Sequence[str], *, title: str) -> str:
        """The per-task table (`bbh_markdown_report`)."""
        return bbh_markdown_report(aggs, labels, title=title)

    def figures(self, agg: Mapping, output_dir: str, name: str) -> None:
        """BBH is reported as a table only."""

    def announce(self, units: Sequence[BBHUnit], examples: Mapping[str, Sequence[PromptedExample]],
                 predictors: Sequence[Any], limits: None) -> str | None:
        """Nothing is printed before a BBH evaluation (its units are few and uniform)."""
        return None

    def compare(self, aggs: Sequence[Mapping], labels: Sequence[str], output_dir: str) -> dict:
        """The side-by-side ``report.md`` and ``summary.json`` (every model's per-task results) of several
        models; returns {"report", "summary"} (their paths)."""
        report = os.path.join(output_dir, "report.md")
        store.write_text(report, self.report(aggs, labels, title=self.title()))
        summary = os.path.join(output_dir, "summary.json")
        store.write_json(summary, {"protocol": "bbh", "labels": list(labels), "modes": list(self.cfg.modes),
                                   "results": dict(zip(labels, aggs)), "report": report})
        return {"report": report, "summary": summary}


def aggregate_bbh(unit_results: Sequence[Mapping], *, modes: Sequence[str], name: str = "") -> dict:
    """Per-task scores by mode and their unweighted mean over tasks (how BBH is reported)."""
    tasks: dict[str, dict] = {}
    for r in unit_results:
        t = tasks.setdefault(r["task"], {"scores": {}, "num_examples": {}, "num_answered": {}})
        t["scores"][r["mode"]] = r["score"]
        t["num_examples"][r["mode"]] = r["num_examples"]
        t["num_answered"][r["mode"]] = r.get("num_answered")
    average = {m: mean_or_none(t["scores"].get(m) for t in tasks.values()) for m in modes}
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
