"""The evaluation runner, one for every protocol: plans the units, renders them, scores the pending ones in chunks
with a predictor, keeps every finished unit on disk (a restarted run resumes from it), then aggregates and
reports, for one model (`evaluate`) or several on the same units (`evaluate_models`).

A protocol (`EvalProtocol`) says what the units are, how they are rendered, scored, aggregated and reported:
`heldout.HeldOut` over an `EvalConfig` (the paper's three generalization levels) or `bbh.BBH` over a
`BBHConfig` (BIG-Bench Hard); `evaluate` and `evaluate_models` take either config (or a protocol). The runner
owns what they share: planning once for every model, resumption and the unit files (`store`), chunking across
units so that batches fill, progress, timing and the per-model results and report files.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from optiml_jax.evaluation import store
from optiml_jax.evaluation.bbh import BBH, BBHConfig
from optiml_jax.evaluation.heldout import HeldOut
from optiml_jax.evaluation.planning import EvalConfig, safe_name
from optiml_jax.evaluation.scoring import vocab_of
from optiml_jax.tasks.schema import PromptedExample

logger = logging.getLogger(__name__)


@runtime_checkable
class EvalProtocol(Protocol):
    """What the runner asks of an evaluation protocol (`heldout.HeldOut`, `bbh.BBH`).

    Units are the protocol's own objects with a ``key`` (their file name under ``tasks/`` and
    ``predictions/``); ``limits`` is whatever `limits` returned, handed back to `score`.
    """

    name: str           # in the progress bar, after the model's name
    results_file: str   # a model's aggregate, under its directory
    report_file: str    # a model's report, under its directory

    def plan(self) -> list:
        """The units, in a stable order (validates the config against the data)."""

    def unit_settings(self) -> dict:
        """What a finished unit depends on: run.json keeps it, a resumed run must match it."""

    def render(self, units: Sequence) -> dict[str, list[PromptedExample]]:
        """The units' examples (unit key -> examples)."""

    def example_limit(self, unit: Any) -> int | None:
        """Examples a unit has at most before it is rendered (None: unknown), to chunk unrendered units."""

    def limits(self, units: Sequence, vocab: Any) -> Any:
        """Generation limits for `score`, computed once per evaluation (None: the protocol has none)."""

    def describe(self, unit: Any) -> str:
        """A unit in the progress bar and the logs."""

    def score(self, predictor: Any, units: Sequence, examples: Mapping[str, Sequence[PromptedExample]],
              limits: Any) -> list[tuple[dict, list[dict]]]:
        """(summary, per-example records) of every unit, scored together so that batches fill."""

    def unit_fields(self, unit: Any) -> dict:
        """What a unit file records of the unit itself, after its summary."""

    def aggregate(self, results: Sequence[Mapping], *, name: str) -> dict:
        """One model's aggregate of its unit summaries, in plan order."""

    def title(self, name: str = "") -> str:
        """The report's title, of one model (its name) or of several (no name)."""

    def report(self, aggs: Sequence[Mapping], labels: Sequence[str], *, title: str) -> str:
        """The markdown report of one or several aggregates."""

    def figures(self, agg: Mapping, output_dir: str, name: str) -> None:
        """Writes one model's figures into its directory (output process only)."""

    def announce(self, units: Sequence, examples: Mapping[str, Sequence[PromptedExample]],
                 predictors: Sequence[Any], limits: Any) -> str | None:
        """What `evaluate_models` prints before it starts (None: nothing)."""

    def compare(self, aggs: Sequence[Mapping], labels: Sequence[str], output_dir: str) -> dict:
        """Writes the side-by-side files of several models into ``output_dir``; returns their entries."""


def protocol_for(cfg: EvalConfig | BBHConfig | EvalProtocol) -> EvalProtocol:
    """The protocol of a config: `HeldOut` for an `EvalConfig`, `BBH` for a `BBHConfig`; a protocol as is."""
    if isinstance(cfg, EvalConfig):
        return HeldOut(cfg)
    if isinstance(cfg, BBHConfig):
        return BBH(cfg)
    if isinstance(cfg, EvalProtocol):
        return cfg
    raise TypeError(f"not an evaluation config or protocol: {type(cfg).__name__} (expected EvalConfig or BBHConfig)")


def evaluate(
    predictor: Any,
    cfg: EvalConfig | BBHConfig | EvalProtocol,
    output_dir: str | os.PathLike,
    *,
    units: Sequence | None = None,
    examples: Mapping[str, Sequence[PromptedExample]] | None = None,
    progress: bool = True,
    chunk_examples: int = 256,
    limits: Any = None,
) -> dict:
    """Evaluates ``predictor`` (an `optiml_jax.inference.Predictor`) with ``cfg``'s protocol; returns the
    aggregate, also written to the protocol's results file and report under ``output_dir``.

    Finished units found in ``output_dir`` (from an earlier, possibly killed, run with the same model and
    settings) are loaded, not recomputed. ``units`` (the protocol's plan when not given) and ``examples``
    (rendered units, key -> examples) save planning and rendering them again. Pending units are scored in
    chunks of about ``chunk_examples`` examples (batches fill across units; a unit is never split); each unit's
    files are written as soon as its chunk is done. ``limits``: the protocol's generation limits
    (`HeldOut.limits`; computed here when not given).
    """
    protocol = protocol_for(cfg)
    output_dir = os.fspath(output_dir)
    units = list(units) if units is not None else protocol.plan()
    store.prepare(output_dir, {"model": predictor.name, "fingerprint": store.params_fingerprint(predictor.params),
                               "settings": protocol.unit_settings()})

    bar = _progress(len(units), f"{predictor.name} {protocol.name}", progress)
    results: dict[str, dict] = {}
    pending = []
    for unit in units:
        done = store.finished_unit(output_dir, unit.key)
        if done is not None:
            results[unit.key] = done
            bar.update(1)
        else:
            pending.append(unit)
    reused = len(results)
    if limits is None:
        limits = protocol.limits(pending, vocab_of(predictor))
    try:
        for chunk in _chunks(pending, examples, protocol, chunk_examples):
            bar.set_postfix_str(protocol.describe(chunk[0]) + (f" (+{len(chunk) - 1} units)" if len(chunk) > 1
                                                                else ""))
            t0 = time.time()
            rendered = examples if examples is not None else protocol.render(chunk)
            for unit in chunk:
                if not rendered[unit.key]:
                    logger.warning("%s (%s) has no examples: n/a in the report", protocol.describe(unit),
                                   protocol.title())
            scored = protocol.score(predictor, chunk, rendered, limits)
            seconds = time.time() - t0
            total = max(1, sum(len(rendered[u.key]) for u in chunk))
            for unit, (summary, records) in zip(chunk, scored):
                # The chunk's time shared by example count: a rough per-unit cost for the logs.
                summary.update(protocol.unit_fields(unit), seconds=round(seconds * len(records) / total, 3))
                store.write_unit(output_dir, unit.key, records, summary)
                results[unit.key] = summary
            bar.update(len(chunk))
    finally:
        bar.close()

    agg = protocol.aggregate([results[u.key] for u in units], name=predictor.name)
    agg["reused_units"] = reused
    agg["truncated_prompts"] = int(getattr(predictor, "truncated_prompts", 0))
    store.write_json(os.path.join(output_dir, protocol.results_file), agg)
    store.write_text(os.path.join(output_dir, protocol.report_file),
                     protocol.report([agg], [predictor.name], title=protocol.title(predictor.name)))
    if store.writes():
        protocol.figures(agg, output_dir, predictor.name)
    return agg


def evaluate_models(
    predictors: Sequence[Any],
    labels: Sequence[str],
    cfg: EvalConfig | BBHConfig | EvalProtocol,
    output_dir: str | os.PathLike,
    *,
    progress: bool = True,
) -> dict:
    """Evaluates several models on the same units into ``output_dir/<label>/`` (`evaluate`), then writes the
    protocol's side-by-side files in ``output_dir`` (`HeldOut.compare`, `BBH.compare`).

    The units are planned and rendered once, and bounded alike for every model. Returns {"results": {label:
    aggregate}} plus what the protocol's comparison returns (held-out: "gains", "gain_intervals", "report",
    "figure", "results_json"; BBH: "report", "summary").
    """
    protocol = protocol_for(cfg)
    if len(predictors) != len(labels) or len(set(labels)) != len(labels):
        raise ValueError("evaluate_models: give one distinct label per model")
    output_dir = os.fspath(output_dir)
    units = protocol.plan()  # planned once: every model sees exactly the same units
    examples = protocol.render(units)
    # Every model is bounded alike (the limits come from the first model's vocabulary: one tokenizer per run).
    limits = protocol.limits(units, vocab_of(predictors[0]))
    if store.writes():
        note = protocol.announce(units, examples, predictors, limits)
        if note:
            print(note, flush=True)
    aggs = [
        evaluate(p, protocol, os.path.join(output_dir, safe_name(lab)), units=units, examples=examples,
                 progress=progress, limits=limits)
        for p, lab in zip(predictors, labels)
    ]
    return {"results": dict(zip(labels, aggs)), **protocol.compare(aggs, labels, output_dir)}


def _chunks(units: Sequence, examples: Mapping[str, Sequence[PromptedExample]] | None, protocol: EvalProtocol,
            size: int) -> Iterable[list]:
    """Consecutive groups of units with about ``size`` examples each (a unit is never split: it is the unit of
    resumption). Without rendered examples, the protocol's limit per unit stands in for its count."""
    chunk: list = []
    count = 0
    for u in units:
        n = len(examples[u.key]) if examples is not None else (protocol.example_limit(u) or size)
        if chunk and count + n > size:
            yield chunk
            chunk, count = [], 0
        chunk.append(u)
        count += n
    if chunk:
        yield chunk


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="unit", disable=not (enabled and store.writes()), dynamic_ncols=True)
