"""Generic JSONL source: ``jsonl/<task>.jsonl[.gz|.xz]`` of every other benchmark, and the fallback of all tasks."""
from __future__ import annotations

import functools
import pathlib

from optiml_jax.tasks.schema import Example, TaskInfo
from optiml_jax.tasks.sources.common import DataError, Loaded, LoadReport, _file_key, _finish, _iter_jsonl, usable_outputs

GENERIC_DIR = "jsonl"
_GENERIC_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.xz")


@functools.lru_cache(maxsize=1024)
def _parse_generic(key: tuple[str, int, int], task: str) -> tuple[tuple[Example, ...], LoadReport]:
    path = pathlib.Path(key[0])
    report = LoadReport(task=task, path=str(path))
    out: list[Example] = []
    lines: dict[str, int] = {}
    for lineno, rec in _iter_jsonl(path):
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno}: each line must be a JSON object")
        outs = usable_outputs(rec, "outputs", report)
        if outs is None:
            continue
        cands = rec.get("candidates") or ()
        if not isinstance(cands, (list, tuple)) or not all(isinstance(c, str) for c in cands):
            raise DataError(f"{path}:{lineno}: field 'candidates' must be a list of strings")
        for field in ("definition", "rationale"):
            if field in rec and not isinstance(rec[field], str):
                raise DataError(f"{path}:{lineno}: field {field!r} must be a string")
        ex_id = str(rec["id"])
        if ex_id in lines:
            raise DataError(f"{path}:{lineno}: field 'id': duplicate instance id {ex_id!r} "
                            f"(first on line {lines[ex_id]})")
        lines[ex_id] = lineno
        out.append(Example(id=ex_id, input=rec["input"], outputs=outs,
                           definition=rec.get("definition", ""), candidates=tuple(cands),
                           rationale=rec.get("rationale", "")))
    report.loaded = len(out)
    _finish(report)
    return tuple(out), report


def _generic_path(task: TaskInfo, data: pathlib.Path) -> pathlib.Path | None:
    for suffix in _GENERIC_SUFFIXES:
        p = data / GENERIC_DIR / f"{task.name}{suffix}"
        if p.is_file():
            return p
    return None


def load_jsonl(task: TaskInfo, data: pathlib.Path, path: pathlib.Path) -> Loaded:
    """A generic JSONL file; no demonstrations."""
    exs, report = _parse_generic(_file_key(path), task.name)
    return exs, report, ()
