"""PromptSource / T0 source: P3 files ``t0_p3/*.jsonl.xz`` matched to their ``templates.yaml`` metadata."""
from __future__ import annotations

import collections
import dataclasses
import functools
import os
import pathlib
import re
from typing import Any

import yaml

from optiml_jax.data_dir import DATA_DIR_ENV, resolve_data_dir
from optiml_jax.tasks import catalogue as cat
from optiml_jax.tasks.schema import Example, TaskInfo
from optiml_jax.tasks.sources.common import (DataError, Loaded, LoadReport, _apply_options, _file_key, _finish,
                                             _iter_jsonl, _outputs, _read_text, log)

PS_TEMPLATES_DIR = pathlib.Path("promptsource", "templates")
# Reasons in LoadReport.skipped / LoadReport.flagged.
INVERTED_TEMPLATE = "inverted template"
TEMPLATE_NOT_FOUND = "template metadata not found"
ORIGINAL_TASK_UNSET = "template original_task not set"
CHOICES_MISS_REFERENCE = "answer_choices lack a reference"
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
    data = resolve_data_dir(data_dir)
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
    data = resolve_data_dir(data_dir)
    if data is None:
        raise FileNotFoundError(f"t0_template_audit needs a data directory: set ${DATA_DIR_ENV} "
                                "or the gin binding data_dir.path")
    tkey = _templates_key(data / PS_TEMPLATES_DIR)
    return [_parse_t0_file(_file_key(f), tkey)[2] for f in _t0_files(data)]


def t0_path(task: TaskInfo, data: pathlib.Path) -> pathlib.Path | None:
    """The T0 file under ``data`` that holds the task's dataset, if any."""
    tkey = _templates_key(data / PS_TEMPLATES_DIR)
    for f in _t0_files(data):
        grouped, reports, _ = _parse_t0_file(_file_key(f), tkey)
        if task.name in grouped or task.name in reports:
            return f
    return None


def load_t0(task: TaskInfo, data: pathlib.Path, path: pathlib.Path) -> Loaded:
    """The task's instances of one T0 file (the file is parsed once for all its datasets)."""
    grouped, reports, _ = _parse_t0_file(_file_key(path), _templates_key(data / PS_TEMPLATES_DIR))
    return grouped.get(task.name, ()), reports[task.name], ()
