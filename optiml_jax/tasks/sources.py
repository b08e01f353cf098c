"""Raw-example loaders: catalogue task (TaskInfo) -> list[schema.Example].

Layouts read from the data directory (``OPTIML_DATA_DIR``; see tasks/README.md):

* SuperNI official task files ``superni/tasks/<task>.json`` (Definition, Positive Examples,
  Instances ``{id, input, output: [...]}``); ``superni`` may be a natural-instructions checkout.
* ``superni_extra/instances_extra/<task>.jsonl.gz`` with metadata in ``superni_extra/tasks_extra.jsonl``.
* FLAN chain-of-thought TSVs ``flan_cot/<name>_train.tsv``: question, answer, rationale; newlines
  stored as the two characters backslash-n.
* BIG-Bench Hard ``bbh/bbh/<task>.json`` (``{"examples": [{"input", "target"}]}``) with the task
  description and 3-shot CoT demonstrations of ``bbh/cot-prompts/<task>.txt``.
* BIG-bench JSON tasks (benchmark "BIG-bench"): from the source `catalogue.bigbench_source` finds (the
  fetched PyPI sdist, else ``bigbench/bigbench_tasks_first50.jsonl.xz``), through
  `optiml_jax.tasks.bigbench`; no data directory is needed when the sdist is in ``~/.cache/optiml_jax``.
* T0 / PromptSource rendered examples ``t0_p3/*.jsonl.xz``: ``{"template", "input", "target"}`` per
  line; one task per dataset, instance-level (the instruction is inside ``input``). Each P3 template
  name is matched to its entry in ``promptsource/templates/<dataset>[/<subset>]/templates.yaml``:
  templates whose ``metadata.original_task`` is false (they invert the task, e.g. QA -> question
  generation; paper section 2.4) are skipped with reason "inverted template"; templates without a
  matching entry are kept and flagged "template metadata not found".
* The generic layout for every other benchmark (CrossFit, ExMix, T5, UnifiedSKG, FLAN, ...):
  ``jsonl/<task>.jsonl`` (optionally ``.gz`` / ``.xz``), one JSON object per line:
  ``{"id": str, "input": str, "outputs": [str, ...], "candidates"?: [str], "definition"?: str,
  "rationale"?: str}``. It is also the fallback of every task whose native file is absent.

Answer options (what makes an instance rank-classified) come from metadata only, never from how many
distinct outputs the instances on disk have: the file's own per-instance options (generic JSONL
``candidates``, BIG-bench's multiple-choice targets), a T0 template whose PromptSource ``answer_choices``
is a fixed list (no Jinja; instances whose reference is not among them are flagged), else the task's
catalogue ``options`` (`TaskInfo.options`, the committed label set of SuperNI classification tasks).

Validation: file-level problems (malformed JSON, non-UTF-8 bytes, a missing required field,
duplicate ids) raise ``DataError`` naming the file, line and field. Instance-level problems (an
instance without input or outputs, only empty references) are skipped, counted per reason in a
``LoadReport`` (``get_load_report(task_name)``) and logged; instances kept despite a caveat are
counted in ``LoadReport.flagged``. Nothing is dropped silently. ``t0_template_audit(data_dir)``
summarises the T0 template matching (matched, unmatched, inverted, instances dropped).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import gzip
import json
import logging
import lzma
import os
import pathlib
import re
from typing import Any, Iterable, Iterator, Sequence

import yaml

from optiml_jax.errors import UserError
from optiml_jax.tasks import catalogue as cat
from optiml_jax.tasks.schema import Example, TaskInfo

log = logging.getLogger(__name__)

GENERIC_DIR = "jsonl"
_GENERIC_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.xz")


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


# --------------------------------------------------------------------------------------------
# Low-level readers
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# SuperNI official task files
# --------------------------------------------------------------------------------------------
def parse_superni_instances(instances: Any, path: pathlib.Path, definition: str,
                            report: LoadReport) -> list[Example]:
    """SuperNI ``Instances`` -> Examples (skips counted in ``report``)."""
    if not isinstance(instances, list):
        raise DataError(f"{path}: field 'Instances' must be a list, got {type(instances).__name__}")
    out = []
    for k, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise DataError(f"{path}: field 'Instances[{k}]' must be an object")
        missing = [f for f in ("id", "input", "output") if f not in inst]
        if missing:
            report.skipped[f"missing_field:{missing[0]}"] += 1
            continue
        if not isinstance(inst["input"], str) or not inst["input"].strip():
            report.skipped["empty_input"] += 1
            continue
        outs = _outputs(inst["output"], report)
        if outs is None:
            report.skipped["empty_outputs"] += 1
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


# --------------------------------------------------------------------------------------------
# Chain-of-thought TSVs
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# BIG-Bench Hard
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# PromptSource template metadata
# --------------------------------------------------------------------------------------------
PS_TEMPLATES_DIR = pathlib.Path("promptsource", "templates")
# Reasons in LoadReport.skipped / LoadReport.flagged.
INVERTED_TEMPLATE = "inverted template"
TEMPLATE_NOT_FOUND = "template metadata not found"
ORIGINAL_TASK_UNSET = "template original_task not set"
CHOICES_MISS_REFERENCE = "answer_choices lack a reference"
OPTIONS_MISS_REFERENCE = "catalogue options lack a reference"
# Reviewed: P3 templates whose PromptSource ``answer_choices`` are wrong (checked against the options the rendered
# inputs list). CommonsenseQA's letter template lists "A ||| B ||| C ||| D" for five options A-E.
TEMPLATE_CHOICE_FIXES: dict[str, tuple[str, ...]] = {
    "commonsense_qa_question_to_answer_index": ("A", "B", "C", "D", "E"),
}

_P3_UNSAFE = re.compile(r"[^A-Za-z0-9_.]+")
_LOOSE_UNSAFE = re.compile(r"[^a-z0-9]+")


@dataclasses.dataclass(frozen=True)
class PromptTemplateMeta:
    """What the loaders use of one PromptSource template (never its Jinja text).

    Attributes:
      p3_name: the template's name in P3 (`p3_template_name`).
      dataset, subset, name: as written in templates.yaml.
      original_task: ``metadata.original_task``; None when the entry does not say.
      answer_choices: the fixed option list (`fixed_answer_choices`), () when there is none.
      path: the templates.yaml file of the entry.
    """

    p3_name: str
    dataset: str
    subset: str | None
    name: str
    original_task: bool | None
    answer_choices: tuple[str, ...]
    path: str


def p3_template_name(dataset: str, subset: str | None, template_name: str) -> str:
    """P3's name of a PromptSource template: ``dataset[_subset]_templatename``, each run of
    characters outside [A-Za-z0-9_.] replaced by one "_", then each "." by "_"; case kept. E.g.
    ``("cos_e", "v1.11", "aligned with common sense")`` -> ``"cos_e_v1_11_aligned_with_common_sense"``,
    ``("sciq", None, "Direct Question (Closed Book)")`` -> ``"sciq_Direct_Question_Closed_Book_"``."""
    parts = [dataset] + ([subset] if subset else []) + [template_name]
    return _P3_UNSAFE.sub("_", "_".join(parts)).replace(".", "_")


def _loose_key(name: str) -> str:
    # The fallback spelling: lower case, runs of other characters as one "_", no "_" at the ends,
    # so that names re-cased or re-escaped by other tools still find their entry.
    return _LOOSE_UNSAFE.sub("_", name.lower()).strip("_")


def fixed_answer_choices(raw: Any) -> tuple[str, ...]:
    """A template's ``answer_choices`` as a fixed option list (``"No ||| Yes"`` -> ``("No", "Yes")``);
    () when it is absent, computed per instance by Jinja (contains ``{{`` or ``{%``), or has fewer
    than two distinct options."""
    if not isinstance(raw, str) or "{{" in raw or "{%" in raw:
        return ()
    options: list[str] = []
    for option in raw.split("|||"):
        option = option.strip()
        if option and option not in options:
            options.append(option)
    return tuple(options) if len(options) >= 2 else ()


_YAML_SAFE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is ~10x faster when built


class _TemplatesLoader(_YAML_SAFE):  # type: ignore[valid-type, misc]
    """A safe loader that reads PromptSource's ``!Template`` / ``!TemplateMetadata`` objects as
    plain mappings (add_constructor on a subclass leaves yaml's global SafeLoader untouched)."""


def _plain_mapping(loader: Any, node: Any) -> dict:
    return loader.construct_mapping(node, deep=True)


for _tag in ("!Template", "!TemplateMetadata"):
    _TemplatesLoader.add_constructor(_tag, _plain_mapping)


def _yaml_error(path: pathlib.Path, e: yaml.YAMLError) -> DataError:
    mark = getattr(e, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    problem = getattr(e, "problem", None) or str(e)
    return DataError(f"{where}: malformed PromptSource templates.yaml ({problem})")


@functools.lru_cache(maxsize=512)
def _parse_templates_yaml(key: tuple[str, int, int]) -> tuple[PromptTemplateMeta, ...]:
    path = pathlib.Path(key[0])
    try:
        d = yaml.load(_read_text(path), Loader=_TemplatesLoader)
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: top level must be a mapping with fields 'dataset' and 'templates'")
    dataset, subset = d.get("dataset"), d.get("subset")
    if not isinstance(dataset, str) or not dataset:
        raise DataError(f"{path}: field 'dataset' must be a non-empty string")
    if subset is not None and not isinstance(subset, str):
        raise DataError(f"{path}: field 'subset' must be a string or null, got {type(subset).__name__}")
    templates = d.get("templates")
    if not isinstance(templates, dict):
        raise DataError(f"{path}: field 'templates' must be a mapping (template id -> !Template)")
    out = []
    for tid, t in templates.items():
        where = f"{path}: templates[{tid!r}]"
        if not isinstance(t, dict):
            raise DataError(f"{where}: must be a mapping")
        name = t.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{where}: field 'name' must be a non-empty string")
        meta = t.get("metadata")
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise DataError(f"{where}: field 'metadata' must be a mapping")
        original = meta.get("original_task")
        if original is not None and not isinstance(original, bool):
            raise DataError(f"{where}: field 'metadata.original_task' must be true or false, got {original!r}")
        choices = t.get("answer_choices")
        if choices is not None and not isinstance(choices, str):
            raise DataError(f"{where}: field 'answer_choices' must be a string or null, "
                            f"got {type(choices).__name__}")
        out.append(PromptTemplateMeta(
            p3_name=p3_template_name(dataset, subset, name), dataset=dataset, subset=subset,
            name=name, original_task=original, answer_choices=fixed_answer_choices(choices),
            path=str(path)))
    return tuple(out)


def load_promptsource_templates(path: str | os.PathLike) -> list[PromptTemplateMeta]:
    """The templates of one PromptSource ``templates.yaml`` (cached per file).

    Raises:
      DataError: malformed YAML or a field of the wrong type (names file, template id, field).
    """
    return list(_parse_templates_yaml(_file_key(pathlib.Path(path))))


TemplateIndexKey = tuple[str, int]


def _templates_key(root: pathlib.Path) -> TemplateIndexKey | None:
    """Cache key of a templates folder: its path and mtime. Listing and stat-ing its ~280 files
    takes ~14 ms, too slow to repeat on every task load, so a templates.yaml edited in place is
    only seen by a new process (adding or removing a dataset folder is seen at once)."""
    if not root.is_dir():
        return None
    return str(root), root.stat().st_mtime_ns


class _TemplateIndex:
    """P3 template name -> its templates.yaml entry, parsing only the files whose
    ``<dataset>[/<subset>]`` folder prefixes the name."""

    def __init__(self, key: TemplateIndexKey):
        root = pathlib.Path(key[0])
        self._files: dict[str, list[tuple[str, int, int]]] = collections.defaultdict(list)
        for path in sorted(root.rglob("templates.yaml")):
            rel = path.parent.relative_to(root)
            self._files[_loose_key("_".join(rel.parts))].append(_file_key(path))

    def match(self, template: str) -> tuple[PromptTemplateMeta | None, str]:
        """(entry, how): how is "exact" (P3's own spelling), "loose" (`_loose_key`), "ambiguous" or
        "unmatched"; entry is None unless exactly one entry matches."""
        loose = _loose_key(template)
        entries = [m for prefix, fkeys in self._files.items() if loose.startswith(prefix + "_")
                   for fkey in fkeys for m in _parse_templates_yaml(fkey)]
        for how, hits in (("exact", [m for m in entries if m.p3_name == template]),
                          ("loose", [m for m in entries if _loose_key(m.p3_name) == loose])):
            if len(hits) == 1:
                return hits[0], how
            if len(hits) > 1:
                return None, "ambiguous"
        return None, "unmatched"


@functools.lru_cache(maxsize=4)
def _template_index(key: TemplateIndexKey) -> _TemplateIndex:
    return _TemplateIndex(key)


def match_p3_template(template: str, data_dir: str | os.PathLike | None = None) -> PromptTemplateMeta | None:
    """The PromptSource entry of a P3 template name (e.g. ``"adversarial_qa_dbert_based_on"``) under
    ``<data_dir>/promptsource/templates``; None when no single entry matches or the folder is absent."""
    data = cat.resolve_data_dir(data_dir)
    key = _templates_key(data / PS_TEMPLATES_DIR) if data is not None else None
    return _template_index(key).match(template)[0] if key else None


@dataclasses.dataclass(frozen=True)
class TemplateAudit:
    """How the templates of one T0 file matched their PromptSource metadata.

    Attributes:
      path: the T0 file.
      templates: distinct template names of catalogue datasets in the file.
      matched_exact / matched_loose: found under P3's own spelling / the loose fallback.
      unmatched: names without an entry (their instances are kept and flagged).
      ambiguous: names with several entries (kept and flagged, like unmatched ones).
      inverted: names whose entry has ``original_task: false`` (their instances are skipped).
      instances_dropped: instances skipped as "inverted template".
      fixed_choice_templates: templates whose fixed ``answer_choices`` became the candidates.
    """

    path: str
    templates: int
    matched_exact: int
    matched_loose: int
    unmatched: tuple[str, ...]
    ambiguous: tuple[str, ...]
    inverted: tuple[str, ...]
    instances_dropped: int
    fixed_choice_templates: int


# --------------------------------------------------------------------------------------------
# T0 / PromptSource rendered examples
# --------------------------------------------------------------------------------------------
T0Parse = tuple[dict[str, tuple[Example, ...]], dict[str, LoadReport], TemplateAudit]


@functools.lru_cache(maxsize=4)
def _parse_t0_file(key: tuple[str, int, int], templates_key: TemplateIndexKey | None) -> T0Parse:
    """One P3 file -> examples grouped by PromptSource dataset (catalogue.PS_DATASETS), per-task
    reports, and the template audit."""
    path = pathlib.Path(key[0])
    index = _template_index(templates_key) if templates_key is not None else None
    matches: dict[str, tuple[PromptTemplateMeta | None, str]] = {}
    per_template: dict[str, list[Example]] = collections.defaultdict(list)
    reports: dict[str, LoadReport] = {}
    unmatched = collections.Counter()
    for lineno, rec in _iter_jsonl(path):
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno}: each line must be a JSON object")
        template = rec.get("template")
        if not isinstance(template, str) or not template:
            raise DataError(f"{path}:{lineno}: missing field 'template'")
        ds = cat.ps_dataset_of(template)
        if ds is None:
            unmatched[template] += 1
            continue
        name = cat.PS_PREFIX + ds
        report = reports.setdefault(name, LoadReport(task=name, path=str(path)))
        if template not in matches:
            matches[template] = index.match(template) if index is not None else (None, "unmatched")
        meta = matches[template][0]
        # The paper (section 2.4) neither trains nor evaluates on templates that change the task.
        if meta is not None and meta.original_task is False:
            report.skipped[INVERTED_TEMPLATE] += 1
            continue
        if not isinstance(rec.get("input"), str) or not rec["input"].strip():
            report.skipped["missing_field:input" if "input" not in rec else "empty_input"] += 1
            continue
        target = rec["target"] if "target" in rec else rec.get("output")
        if target is None:
            report.skipped["missing_field:target"] += 1
            continue
        outs = _outputs(target, report)
        if outs is None:
            report.skipped["empty_outputs"] += 1
            continue
        if meta is None:
            report.flagged[TEMPLATE_NOT_FOUND] += 1
        elif meta.original_task is None:
            report.flagged[ORIGINAL_TASK_UNSET] += 1
        k = len(per_template[template])
        per_template[template].append(Example(id=f"{template}-{k}", input=rec["input"], outputs=outs))
    if unmatched:
        # Not a silent drop: templates of datasets outside the catalogue are reported by name.
        log.warning("%s: %d lines of %d templates belong to no catalogue PromptSource dataset "
                    "(e.g. %s); add the dataset to catalogue.PS_DATASETS", path,
                    sum(unmatched.values()), len(unmatched), sorted(unmatched)[:3])
    if index is None:
        log.warning("%s: no %s folder beside it; inverted templates cannot be recognised and are kept",
                    path, PS_TEMPLATES_DIR)
    grouped: dict[str, list[Example]] = collections.defaultdict(list)
    fixed_choice_templates = 0
    for template in sorted(per_template):
        ds_name = cat.PS_PREFIX + cat.ps_dataset_of(template)  # type: ignore[operator]
        exs = per_template[template]
        meta = matches[template][0]
        choices = TEMPLATE_CHOICE_FIXES.get(template, meta.answer_choices if meta is not None else ())
        if choices:
            # The template's own option list (metadata): the full label set, whatever labels the sample holds.
            exs, missing = _apply_options(exs, choices)
            fixed_choice_templates += 1
            if missing:
                reports[ds_name].flagged[CHOICES_MISS_REFERENCE] += missing
        grouped[ds_name].extend(exs)
    for name, report in reports.items():
        report.loaded = len(grouped.get(name, []))
        _finish(report)
    inverted = tuple(sorted(t for t, (m, _) in matches.items() if m is not None and m.original_task is False))
    audit = TemplateAudit(
        path=str(path), templates=len(matches),
        matched_exact=sum(how == "exact" for _, how in matches.values()),
        matched_loose=sum(how == "loose" for _, how in matches.values()),
        unmatched=tuple(sorted(t for t, (_, how) in matches.items() if how == "unmatched")),
        ambiguous=tuple(sorted(t for t, (_, how) in matches.items() if how == "ambiguous")),
        inverted=inverted,
        instances_dropped=sum(r.skipped[INVERTED_TEMPLATE] for r in reports.values()),
        fixed_choice_templates=fixed_choice_templates)
    if audit.unmatched or audit.ambiguous:
        log.warning("%s: %d templates have no single PromptSource entry (kept, flagged %r; e.g. %s)",
                    path, len(audit.unmatched) + len(audit.ambiguous), TEMPLATE_NOT_FOUND,
                    (audit.unmatched + audit.ambiguous)[:3])
    return {k: tuple(v) for k, v in grouped.items()}, reports, audit


def _t0_files(data: pathlib.Path) -> list[pathlib.Path]:
    t0_dir = data / "t0_p3"
    return sorted(t0_dir.glob("*.jsonl*")) if t0_dir.is_dir() else []


def t0_template_audit(data_dir: str | os.PathLike | None = None) -> list[TemplateAudit]:
    """The template audit of every T0 file under ``<data_dir>/t0_p3`` ([] when there is none).

    Raises:
      FileNotFoundError: no data directory configured.
      DataError: a malformed T0 file or templates.yaml.
    """
    data = cat.resolve_data_dir(data_dir)
    if data is None:
        raise FileNotFoundError(f"t0_template_audit needs a data directory: set ${cat.DATA_DIR_ENV} "
                                "or the gin binding data_dir.path")
    tkey = _templates_key(data / PS_TEMPLATES_DIR)
    return [_parse_t0_file(_file_key(f), tkey)[2] for f in _t0_files(data)]

# --------------------------------------------------------------------------------------------
# Generic JSONL layout
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1024)
def _parse_generic(key: tuple[str, int, int], task: str) -> tuple[tuple[Example, ...], LoadReport]:
    path = pathlib.Path(key[0])
    report = LoadReport(task=task, path=str(path))
    out: list[Example] = []
    lines: dict[str, int] = {}
    for lineno, rec in _iter_jsonl(path):
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno}: each line must be a JSON object")
        missing = [f for f in ("id", "input", "outputs") if f not in rec]
        if missing:
            report.skipped[f"missing_field:{missing[0]}"] += 1
            continue
        if not isinstance(rec["input"], str) or not rec["input"].strip():
            report.skipped["empty_input"] += 1
            continue
        outs = _outputs(rec["outputs"], report)
        if outs is None:
            report.skipped["empty_outputs"] += 1
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


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------
def _generic_path(task: TaskInfo, data: pathlib.Path) -> pathlib.Path | None:
    for suffix in _GENERIC_SUFFIXES:
        p = data / GENERIC_DIR / f"{task.name}{suffix}"
        if p.is_file():
            return p
    return None


def _native_path(task: TaskInfo, data: pathlib.Path) -> tuple[str, pathlib.Path] | None:
    """(kind, path) of the task's file in its benchmark's own layout, if present."""
    name = task.name
    if task.benchmark == "SuperNI" or (name.startswith("task") and task.benchmark in ("BBH", "Reasoning")):
        p = data / "superni" / "tasks" / f"{name}.json"
        if p.is_file():
            return "superni", p
        p = data / "superni_extra" / "instances_extra" / f"{name}.jsonl.gz"
        if p.is_file():
            return "superni_extra", p
        return None
    if task.benchmark == "BBH" and name.startswith(cat.BBH_PREFIX):
        p = data / "bbh" / "bbh" / f"{name[len(cat.BBH_PREFIX):]}.json"
        return ("bbh", p) if p.is_file() else None
    if task.benchmark == "Reasoning" and name.startswith(cat.COT_PREFIX):
        p = data / "flan_cot" / f"{name[len(cat.COT_PREFIX):]}_train.tsv"
        return ("cot", p) if p.is_file() else None
    if task.benchmark == "PromptSource" and name.startswith(cat.PS_PREFIX):
        tkey = _templates_key(data / PS_TEMPLATES_DIR)
        for f in _t0_files(data):
            grouped, reports, _ = _parse_t0_file(_file_key(f), tkey)
            if name in grouped or name in reports:
                return "t0", f
        return None
    return None


# --------------------------------------------------------------------------------------------
# BIG-bench JSON tasks
# --------------------------------------------------------------------------------------------
BIGBENCH_BENCHMARK = "BIG-bench"


@functools.lru_cache(maxsize=256)
def _parse_bigbench(source_key: tuple[str, int, int], task: str) -> tuple[tuple[Example, ...], LoadReport]:
    from optiml_jax.tasks import bigbench

    path = source_key[0]
    try:
        raw = bigbench.task_json(path, task)
        metric = bigbench.metric_for(raw.get("metrics"), raw.get("preferred_score"),
                                     where=f"{path}: BIG-bench task {task}")
        exs, skipped = bigbench.examples_from_task_json(raw, task, metric)
    except bigbench.BigBenchError as e:
        raise DataError(str(e)) from e
    report = LoadReport(task=task, path=path, loaded=len(exs), skipped=collections.Counter(skipped))
    _finish(report)
    return tuple(exs), report


def _bigbench_source_key(data_dir: str | os.PathLike | None) -> tuple[str, int, int] | None:
    src = cat.bigbench_source(data_dir)
    if src is None:
        return None
    st = src.stat()
    return str(src), st.st_mtime_ns, st.st_size


def task_path(task: TaskInfo, data_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The file ``load_examples`` reads for ``task`` (None: embedded, or no data on disk)."""
    if task.benchmark in cat.EMBEDDED_BENCHMARKS:
        return None
    if task.benchmark == BIGBENCH_BENCHMARK:
        return cat.bigbench_source(data_dir)
    data = cat.resolve_data_dir(data_dir)
    if data is None:
        return None
    native = _native_path(task, data)
    return native[1] if native else _generic_path(task, data)


def task_available(task: TaskInfo, data_dir: str | os.PathLike | None = None) -> bool:
    """True when ``task`` has instance data (embedded tasks always do)."""
    if task.benchmark in cat.EMBEDDED_BENCHMARKS:
        return True
    try:
        return bool(load_examples(task, data_dir))
    except FileNotFoundError:
        return False


def _load(task: TaskInfo, data_dir: str | os.PathLike | None) -> tuple[tuple[Example, ...], LoadReport, tuple[Example, ...]]:
    if task.benchmark in cat.EMBEDDED_BENCHMARKS:
        from optiml_jax.tasks import embedded_suite
        exs = tuple(embedded_suite.embedded_examples(task.name))
        return exs, LoadReport(task=task.name, path="<embedded>", loaded=len(exs)), ()
    if task.benchmark == BIGBENCH_BENCHMARK:
        key = _bigbench_source_key(data_dir)
        if key is None:
            raise FileNotFoundError(
                f"task {task.name!r} (BIG-bench): no BIG-bench source; run `python -m optiml_jax.data fetch "
                f"bigbench` or set ${cat.DATA_DIR_ENV} to a folder with bigbench/bigbench_tasks_first50.jsonl.xz")
        exs, report = _parse_bigbench(key, task.name)
        return exs, report, ()
    data = cat.resolve_data_dir(data_dir)
    if data is None:
        raise FileNotFoundError(f"task {task.name!r} ({task.benchmark}) needs a data directory: "
                                f"set ${cat.DATA_DIR_ENV} or the gin binding data_dir.path")
    native = _native_path(task, data)
    if native is not None:
        kind, path = native
        key = _file_key(path)
        if kind == "superni":
            return _parse_superni_file(key)
        if kind == "superni_extra":
            meta = data / "superni_extra" / "tasks_extra.jsonl"
            if not meta.is_file():
                raise DataError(f"{meta}: missing (holds the definitions of {path.name})")
            return _parse_superni_extra(key, _file_key(meta))
        if kind == "cot":
            short = task.name[len(cat.COT_PREFIX):]
            exs, report = _parse_cot_tsv(key, task.name, COT_DEFINITIONS.get(short, ""))
            return exs, report, ()
        if kind == "bbh":
            short = task.name[len(cat.BBH_PREFIX):]
            prompt = data / "bbh" / "cot-prompts" / f"{short}.txt"
            return _parse_bbh(key, _file_key(prompt) if prompt.is_file() else None, task.name)
        if kind == "t0":
            grouped, reports, _ = _parse_t0_file(key, _templates_key(data / PS_TEMPLATES_DIR))
            return grouped.get(task.name, ()), reports[task.name], ()
    generic = _generic_path(task, data)
    if generic is not None:
        exs, report = _parse_generic(_file_key(generic), task.name)
        return exs, report, ()
    report = LoadReport(task=task.name, note="no data in the data directory")
    log.debug("%s: no data under %s", task.name, data)
    return (), report, ()


def load_examples(task: TaskInfo, data_dir: str | os.PathLike | None = None) -> list[Example]:
    """The raw instances of ``task`` (cached per file; [] when the data dir has none for it).

    Raises:
      DataError: a malformed file (message names file, line, field).
      FileNotFoundError: a non-embedded task and no data directory configured.
    """
    exs, report, _ = _load(task, data_dir)
    _REPORTS[task.name] = report
    return with_task_options(exs, task.options, report)


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


def load_demonstrations(task: TaskInfo, data_dir: str | os.PathLike | None = None) -> list[Example]:
    """The task's own demonstrations: SuperNI "Positive Examples" (explanation as ``rationale``),
    BBH's 3-shot CoT prompts; [] for other tasks."""
    _, _, demos = _load(task, data_dir)
    return list(demos)
