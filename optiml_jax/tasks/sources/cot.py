"""Chain-of-thought source: FLAN CoT TSVs ``flan_cot/<name>_train.tsv`` (question, answer, rationale)."""
from __future__ import annotations

import functools
import pathlib

from optiml_jax.tasks import catalogue as cat
from optiml_jax.tasks.schema import Example, TaskInfo
from optiml_jax.tasks.sources.common import DataError, Loaded, LoadReport, _file_key, _finish, _lines, _read_text

# Our own instructions for the CoT datasets (the TSVs carry none).
COT_DEFINITIONS: dict[str, str] = {
    "gsm8k": "Solve the math word problem. Reason step by step, then give the final number.",
    "strategyqa": "Answer the yes/no question. Explain the facts that lead to the answer first.",
    "aqua": "Solve the algebra word problem and pick the correct option. Reason step by step.",
    "creak": "Decide whether the claim is true using common sense. Explain your reasoning.",
    "ecqa": "Answer the commonsense question by choosing one option. Explain your choice.",
    "esnli": "Decide whether the hypothesis follows from the premise. Explain your reasoning.",
    "qasc": "Answer the science question by choosing one option. Combine the relevant facts.",
    "qed": "Answer the question from the passage and explain where the answer comes from.",
    "sensemaking": "Pick the sentence that goes against common sense and explain why.",
}


def _unescape(s: str) -> str:
    return s.replace("\\n", "\n").replace("\\t", "\t").strip()


@functools.lru_cache(maxsize=32)
def _parse_cot_tsv(key: tuple[str, int, int], task: str, definition: str) -> tuple[tuple[Example, ...], LoadReport]:
    path = pathlib.Path(key[0])
    report = LoadReport(task=task, path=str(path))
    out = []
    for lineno, line in enumerate(_lines(_read_text(path)), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 3:
            raise DataError(f"{path}:{lineno}: expected 3 tab-separated fields (question, answer, "
                            f"rationale), got {len(cols)}")
        question, answer, rationale = (_unescape(c) for c in cols)
        if not question:
            report.skipped["empty_input"] += 1
            continue
        if not answer:
            report.skipped["empty_outputs"] += 1
            continue
        out.append(Example(id=f"{task}-{lineno}", input=question, outputs=(answer,),
                           definition=definition, rationale=rationale))
    report.loaded = len(out)
    _finish(report)
    return tuple(out), report


def cot_path(task: TaskInfo, data: pathlib.Path) -> pathlib.Path | None:
    """The task's TSV under ``data``, if present."""
    p = data / "flan_cot" / f"{task.name[len(cat.COT_PREFIX):]}_train.tsv"
    return p if p.is_file() else None


def load_cot(task: TaskInfo, data: pathlib.Path, path: pathlib.Path) -> Loaded:
    """A CoT TSV with our own instruction for it (`COT_DEFINITIONS`); no demonstrations."""
    exs, report = _parse_cot_tsv(_file_key(path), task.name, COT_DEFINITIONS.get(task.name[len(cat.COT_PREFIX):], ""))
    return exs, report, ()
