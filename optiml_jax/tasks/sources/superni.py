"""SuperNI source: official task files ``superni/tasks/<task>.json`` and ``superni_extra`` (instances + demonstrations)."""
from __future__ import annotations

import functools
import pathlib
from typing import Any

from optiml_jax.tasks.schema import Example, TaskInfo
from optiml_jax.tasks.sources.common import (DataError, Loaded, LoadReport, _as_text, _check_unique_ids, _file_key,
                                             _finish, _iter_jsonl, _load_json, _outputs, usable_outputs)

def parse_superni_instances(instances: Any, path: pathlib.Path, definition: str,
                            report: LoadReport) -> list[Example]:
    """SuperNI ``Instances`` -> Examples (skips counted in ``report``)."""
    if not isinstance(instances, list):
        raise DataError(f"{path}: field 'Instances' must be a list, got {type(instances).__name__}")
    out = []
    for k, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise DataError(f"{path}: field 'Instances[{k}]' must be an object")
        outs = usable_outputs(inst, "output", report)
        if outs is None:
            continue
        out.append(Example(id=str(inst["id"]), input=inst["input"], outputs=outs,
                           definition=definition))
    _check_unique_ids(out, path)
    return out


def _superni_definition(d: dict, path: pathlib.Path) -> str:
    if "Definition" not in d:
        raise DataError(f"{path}: missing field 'Definition'")
    try:
        return _as_text(d["Definition"]).strip()
    except TypeError as e:
        raise DataError(f"{path}: field 'Definition' must be a string or a list of strings, "
                        f"got {e}") from None


@functools.lru_cache(maxsize=4096)
def _parse_superni_file(key: tuple[str, int, int]) -> tuple[tuple[Example, ...], LoadReport, tuple[Example, ...]]:
    path = pathlib.Path(key[0])
    d = _load_json(path)
    if not isinstance(d, dict):
        raise DataError(f"{path}: top level must be a JSON object (an official SuperNI task file)")
    if "Instances" not in d:
        raise DataError(f"{path}: missing field 'Instances'")
    report = LoadReport(task=path.stem, path=str(path))
    definition = _superni_definition(d, path)
    examples = parse_superni_instances(d["Instances"], path, definition, report)
    demos = _parse_demonstrations(d.get("Positive Examples", []), path, path.stem, definition, report)
    report.loaded = len(examples)
    if not examples and not d["Instances"]:
        report.note = "the task file has no instances (definition only)"
    _finish(report)
    return tuple(examples), report, demos


def _parse_demonstrations(raw: Any, path: pathlib.Path, task: str, definition: str,
                          report: LoadReport) -> tuple[Example, ...]:
    """Positive examples -> demonstration Examples; unusable ones are counted, not fatal."""
    if not isinstance(raw, list):
        raise DataError(f"{path}: field 'Positive Examples' must be a list")
    demos = []
    for k, ex in enumerate(raw):
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str) or "output" not in ex:
            report.skipped["bad_positive_example"] += 1
            continue
        outs = _outputs(ex["output"], report)
        if outs is None:
            report.skipped["bad_positive_example"] += 1
            continue
        demos.append(Example(id=f"{task}-positive-{k}", input=ex["input"], outputs=outs,
                             definition=definition, rationale=str(ex.get("explanation", ""))))
    return tuple(demos)


@functools.lru_cache(maxsize=4)
def _superni_extra_meta(key: tuple[str, int, int]) -> dict[str, dict]:
    path = pathlib.Path(key[0])
    meta = {}
    for lineno, rec in _iter_jsonl(path):
        if not isinstance(rec, dict) or "name" not in rec:
            raise DataError(f"{path}:{lineno}: missing field 'name'")
        meta[rec["name"]] = dict(rec, _line=lineno)
    return meta


@functools.lru_cache(maxsize=256)
def _parse_superni_extra(key: tuple[str, int, int], meta_key: tuple[str, int, int]) -> tuple[tuple[Example, ...], LoadReport, tuple[Example, ...]]:
    path = pathlib.Path(key[0])
    task = path.name.split(".")[0]
    meta_path = pathlib.Path(meta_key[0])
    meta = _superni_extra_meta(meta_key).get(task)
    if meta is None:
        raise DataError(f"{meta_path}: no record named {task!r} (needed for {path})")
    definition = _superni_definition(meta, meta_path)
    report = LoadReport(task=task, path=str(path))
    instances = []
    for lineno, rec in _iter_jsonl(path):
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno}: each line must be a JSON object")
        instances.append(rec)
    examples = parse_superni_instances(instances, path, definition, report)
    demos = _parse_demonstrations(meta.get("Positive Examples", []), meta_path, task, definition,
                                   report)
    report.loaded = len(examples)
    _finish(report)
    return tuple(examples), report, demos


def superni_path(task: TaskInfo, data: pathlib.Path) -> tuple[str, pathlib.Path] | None:
    """("superni" | "superni_extra", path) of the task's SuperNI file under ``data``, if present."""
    p = data / "superni" / "tasks" / f"{task.name}.json"
    if p.is_file():
        return "superni", p
    p = data / "superni_extra" / "instances_extra" / f"{task.name}.jsonl.gz"
    if p.is_file():
        return "superni_extra", p
    return None


def load_superni(task: TaskInfo, data: pathlib.Path, path: pathlib.Path) -> Loaded:
    """An official SuperNI task file."""
    return _parse_superni_file(_file_key(path))


def load_superni_extra(task: TaskInfo, data: pathlib.Path, path: pathlib.Path) -> Loaded:
    """A ``superni_extra`` instances file with its definition from ``tasks_extra.jsonl``."""
    meta = data / "superni_extra" / "tasks_extra.jsonl"
    if not meta.is_file():
        raise DataError(f"{meta}: missing (holds the definitions of {path.name})")
    return _parse_superni_extra(_file_key(path), _file_key(meta))
