"""Shared by the source parsers: DataError, LoadReport and the process-global load-report registry, file readers.

Every parser keys its cache on `_file_key` (path, mtime, size), so an edited file is re-read; every report of a
`load_examples` call is kept in `_REPORTS` for `get_load_report` / `load_reports`.
"""
from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import logging
import lzma
import pathlib
from typing import Any, Iterable, Iterator, Sequence

from optiml_jax.errors import UserError
from optiml_jax.tasks.schema import Example

# One logger for the package, named as when it was one module, so log filters keep working.
log = logging.getLogger(__package__)

# Reason in LoadReport.flagged of examples whose reference is not among the catalogue's options.
OPTIONS_MISS_REFERENCE = "catalogue options lack a reference"

# What every loader returns: the instances, their report, and the task's own demonstrations.
Loaded = tuple[tuple[Example, ...], "LoadReport", tuple[Example, ...]]


class DataError(UserError):
    """A data file is malformed; the message names the file (and line and field where known)."""


@dataclasses.dataclass
class LoadReport:
    """What happened while loading one task: instances kept, skipped per reason, fixes per kind."""

    task: str
    path: str = ""
    loaded: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    fixed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # Instances kept although something about them could not be checked (per reason).
    flagged: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    note: str = ""

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        parts = [f"{self.task}: {self.loaded} instances from {self.path or '-'}"]
        if self.skipped:
            parts.append("skipped " + ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())))
        if self.fixed:
            parts.append("fixed " + ", ".join(f"{k}={v}" for k, v in sorted(self.fixed.items())))
        if self.flagged:
            parts.append("flagged " + ", ".join(f"{k}={v}" for k, v in sorted(self.flagged.items())))
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


_REPORTS: dict[str, LoadReport] = {}


def get_load_report(task_name: str) -> LoadReport | None:
    """The report of the latest ``load_examples`` of ``task_name`` (None if never loaded)."""
    return _REPORTS.get(task_name)


def load_reports() -> dict[str, LoadReport]:
    """Reports of every task loaded so far in this process."""
    return dict(_REPORTS)


def _read_text(path: pathlib.Path) -> str:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    elif path.name.endswith(".xz"):
        raw = lzma.decompress(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {e.start}: "
                        f"{raw[e.start:e.start + 1]!r})") from None


def _load_json(path: pathlib.Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}:{e.colno}: malformed JSON ({e.msg})") from None


def _lines(text: str) -> list[str]:
    # Split on "\n" only: str.splitlines() also breaks at U+2028, U+0085, ... which occur inside
    # JSON strings and TSV fields of real data.
    return [line.rstrip("\r") for line in text.split("\n")]


def _iter_jsonl(path: pathlib.Path) -> Iterator[tuple[int, Any]]:
    for lineno, line in enumerate(_lines(_read_text(path)), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}:{e.colno}: malformed JSON ({e.msg})") from None


def _as_text(value: Any) -> str:
    """Definitions and references may be strings or lists of strings in the official files."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise TypeError(type(value).__name__)


def _outputs(raw: Any, report: LoadReport) -> tuple[str, ...] | None:
    """Normalize a reference list; None means the instance has no usable reference."""
    if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list):
        return None
    out = []
    for r in raw:
        if isinstance(r, (int, float)) and not isinstance(r, bool):
            report.fixed["numeric_reference_as_text"] += 1
            r = str(r)
        if not isinstance(r, str):
            return None
        if r.strip():
            out.append(r)
        else:
            report.fixed["empty_reference_dropped"] += 1
    return tuple(out) if out else None


def usable_outputs(rec: dict, output_field: str, report: LoadReport) -> tuple[str, ...] | None:
    """The references of an instance record with ``id``, ``input`` and ``output_field``, or None when it is
    unusable (a missing field, an empty input, no reference): then the reason is counted in ``report.skipped``."""
    missing = [f for f in ("id", "input", output_field) if f not in rec]
    if missing:
        report.skipped[f"missing_field:{missing[0]}"] += 1
        return None
    if not isinstance(rec["input"], str) or not rec["input"].strip():
        report.skipped["empty_input"] += 1
        return None
    outs = _outputs(rec[output_field], report)
    if outs is None:
        report.skipped["empty_outputs"] += 1
    return outs


def _check_unique_ids(examples: Iterable[Example], path: pathlib.Path, where: dict[str, int] | None = None) -> None:
    seen: dict[str, int] = {}
    for i, e in enumerate(examples):
        if e.id in seen:
            loc = f"{path}:{where[e.id]}" if where and e.id in where else str(path)
            raise DataError(f"{loc}: field 'id': duplicate instance id {e.id!r} (instances "
                            f"#{seen[e.id]} and #{i}); ids select held-out instances, so they "
                            "must be unique")
        seen[e.id] = i


def _finish(report: LoadReport) -> None:
    if report.skipped or report.flagged:
        log.warning("%s", report.summary())
    else:
        log.debug("%s", report.summary())


def _file_key(path: pathlib.Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


def _apply_options(examples: Iterable[Example], options: tuple[str, ...]) -> tuple[list[Example], int]:
    """Gives ``options`` to every example without options of its own whose reference is among them. One whose
    reference is not could never be scored right by rank classification: it keeps none (generation) and is
    counted. Per example, so the outcome for an instance never depends on the other instances on disk."""
    out, missing = [], 0
    for e in examples:
        if not e.candidates:
            if any(o in options for o in e.outputs):
                e = dataclasses.replace(e, candidates=options)
            else:
                missing += 1
        out.append(e)
    return out, missing


def with_task_options(examples: Iterable[Example], options: Sequence[str],
                      report: LoadReport | None = None) -> list[Example]:
    """The catalogue's fixed ``options`` for the examples (`_apply_options`); examples whose reference is not
    among them are counted in ``report.flagged``."""
    if not options:
        return list(examples)
    out, missing = _apply_options(examples, tuple(options))
    if missing and report is not None:
        report.flagged[OPTIONS_MISS_REFERENCE] = missing
    return out
