"""BIG-Bench Hard source: ``bbh/bbh/<task>.json`` with the description and CoT demonstrations of ``bbh/cot-prompts``."""
from __future__ import annotations

import functools
import pathlib

from optiml_jax.tasks import catalogue as cat
from optiml_jax.tasks.schema import Example, TaskInfo
from optiml_jax.tasks.sources.common import DataError, Loaded, LoadReport, _file_key, _finish, _load_json, _outputs, _read_text

def parse_bbh_cot_prompt(text: str, path: pathlib.Path, task: str) -> tuple[str, tuple[Example, ...]]:
    """A BBH ``cot-prompts`` file -> (task description, CoT demonstrations)."""
    body = text.split("-----", 1)[1] if "-----" in text else text
    blocks = body.strip().split("\n\nQ: ")
    description = blocks[0].strip() if not blocks[0].startswith("Q: ") else ""
    qa_blocks = blocks[1:] if description else [blocks[0][3:]] + blocks[1:]
    demos = []
    for k, block in enumerate(qa_blocks):
        if "\nA: " not in block:
            raise DataError(f"{path}: demonstration {k} has no 'A: ' line")
        q, a = block.split("\nA: ", 1)
        a = a.strip()
        marker = "So the answer is "
        if marker not in a:
            raise DataError(f"{path}: demonstration {k} lacks {marker!r}")
        rationale, answer = a.rsplit(marker, 1)
        demos.append(Example(id=f"{task}-cot-{k}", input=q.strip(), outputs=(answer.strip().rstrip("."),),
                             definition=description, rationale=rationale.strip()))
    return description, tuple(demos)


@functools.lru_cache(maxsize=64)
def _parse_bbh(key: tuple[str, int, int], prompt_key: tuple[str, int, int] | None, task: str) -> tuple[tuple[Example, ...], LoadReport, tuple[Example, ...]]:
    path = pathlib.Path(key[0])
    description, demos = "", ()
    if prompt_key is not None:
        description, demos = parse_bbh_cot_prompt(_read_text(pathlib.Path(prompt_key[0])),
                                                  pathlib.Path(prompt_key[0]), task)
    d = _load_json(path)
    if not isinstance(d, dict) or "examples" not in d:
        raise DataError(f"{path}: missing field 'examples'")
    if not isinstance(d["examples"], list):
        raise DataError(f"{path}: field 'examples' must be a list")
    report = LoadReport(task=task, path=str(path))
    out = []
    for k, ex in enumerate(d["examples"]):
        if not isinstance(ex, dict):
            raise DataError(f"{path}: field 'examples[{k}]' must be an object")
        if "input" not in ex or "target" not in ex:
            report.skipped["missing_field:" + ("input" if "input" not in ex else "target")] += 1
            continue
        outs = _outputs(ex["target"], report)
        if outs is None:
            report.skipped["empty_outputs"] += 1
            continue
        out.append(Example(id=f"{task}-{k}", input=str(ex["input"]), outputs=outs,
                           definition=description))
    report.loaded = len(out)
    _finish(report)
    return tuple(out), report, demos


def bbh_path(task: TaskInfo, data: pathlib.Path) -> pathlib.Path | None:
    """The task's BBH JSON file under ``data``, if present."""
    p = data / "bbh" / "bbh" / f"{task.name[len(cat.BBH_PREFIX):]}.json"
    return p if p.is_file() else None


def load_bbh(task: TaskInfo, data: pathlib.Path, path: pathlib.Path) -> Loaded:
    """A BBH task file, with its CoT prompt file when there is one."""
    prompt = data / "bbh" / "cot-prompts" / f"{task.name[len(cat.BBH_PREFIX):]}.txt"
    return _parse_bbh(_file_key(path), _file_key(prompt) if prompt.is_file() else None, task.name)
