"""Raw-example loaders: catalogue task (TaskInfo) -> list[schema.Example], one module per source format.

The format of a task picks its loader in `LOADERS` (superni.py, cot.py, bbh.py, promptsource.py, jsonl.py;
BIG-bench in bigbench.py); common.py holds DataError, LoadReport, the load-report registry and the readers.

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

import logging
import os
import pathlib
from typing import Callable

from optiml_jax.data_dir import DATA_DIR_ENV, resolve_data_dir
from optiml_jax.tasks import catalogue as cat
from optiml_jax.tasks.schema import Example, TaskInfo
# Re-exported: the rest of the repo reads these names from `optiml_jax.tasks.sources`.
from optiml_jax.tasks.sources.bbh import _parse_bbh, bbh_path, load_bbh, parse_bbh_cot_prompt  # noqa: F401
from optiml_jax.tasks.sources.bigbench import BIGBENCH_BENCHMARK, _parse_bigbench, load_bigbench  # noqa: F401
from optiml_jax.tasks.sources.common import (  # noqa: F401
    _REPORTS, OPTIONS_MISS_REFERENCE, DataError, Loaded, LoadReport, _apply_options, _check_unique_ids, _file_key,
    _iter_jsonl, _load_json, _read_text, get_load_report, load_reports, with_task_options)
from optiml_jax.tasks.sources.cot import COT_DEFINITIONS, _parse_cot_tsv, cot_path, load_cot  # noqa: F401
from optiml_jax.tasks.sources.jsonl import (  # noqa: F401
    _GENERIC_SUFFIXES, GENERIC_DIR, _generic_path, _parse_generic, load_jsonl)
from optiml_jax.tasks.sources.promptsource import (  # noqa: F401
    CHOICES_MISS_REFERENCE, INVERTED_TEMPLATE, ORIGINAL_TASK_UNSET, PS_TEMPLATES_DIR, TEMPLATE_CHOICE_FIXES,
    TEMPLATE_NOT_FOUND, PromptTemplateMeta, TemplateAudit, _parse_t0_file, _template_index, _templates_key,
    fixed_answer_choices, load_promptsource_templates, load_t0, match_p3_template, p3_template_name, t0_path,
    t0_template_audit)
from optiml_jax.tasks.sources.superni import (  # noqa: F401
    _parse_superni_extra, _parse_superni_file, load_superni, load_superni_extra, parse_superni_instances,
    superni_path)

log = logging.getLogger(__name__)

Loader = Callable[[TaskInfo, pathlib.Path, pathlib.Path], Loaded]

# Source format -> its loader (task, data dir, the format's file of the task).
LOADERS: dict[str, Loader] = {
    "superni": load_superni,
    "superni_extra": load_superni_extra,
    "cot": load_cot,
    "bbh": load_bbh,
    "t0": load_t0,
    GENERIC_DIR: load_jsonl,
}


def _native_path(task: TaskInfo, data: pathlib.Path) -> tuple[str, pathlib.Path] | None:
    """(format, path) of the task's file in its benchmark's own layout, if present."""
    name = task.name
    if task.benchmark == "SuperNI" or (name.startswith("task") and task.benchmark in ("BBH", "Reasoning")):
        return superni_path(task, data)
    if task.benchmark == "BBH" and name.startswith(cat.BBH_PREFIX):
        p = bbh_path(task, data)
        return ("bbh", p) if p else None
    if task.benchmark == "Reasoning" and name.startswith(cat.COT_PREFIX):
        p = cot_path(task, data)
        return ("cot", p) if p else None
    if task.benchmark == "PromptSource" and name.startswith(cat.PS_PREFIX):
        p = t0_path(task, data)
        return ("t0", p) if p else None
    return None


def _source_file(task: TaskInfo, data: pathlib.Path) -> tuple[str, pathlib.Path] | None:
    """(format, path) the task is read from: its native file, else the generic JSONL fallback."""
    native = _native_path(task, data)
    if native is not None:
        return native
    generic = _generic_path(task, data)
    return (GENERIC_DIR, generic) if generic is not None else None


def task_path(task: TaskInfo, data_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The file ``load_examples`` reads for ``task`` (None: embedded, or no data on disk)."""
    if task.benchmark in cat.EMBEDDED_BENCHMARKS:
        return None
    if task.benchmark == BIGBENCH_BENCHMARK:
        return cat.bigbench_source(data_dir)
    data = resolve_data_dir(data_dir)
    if data is None:
        return None
    found = _source_file(task, data)
    return found[1] if found else None


def task_available(task: TaskInfo, data_dir: str | os.PathLike | None = None) -> bool:
    """True when ``task`` has instance data (embedded tasks always do)."""
    if task.benchmark in cat.EMBEDDED_BENCHMARKS:
        return True
    try:
        return bool(load_examples(task, data_dir))
    except FileNotFoundError:
        return False


def _load(task: TaskInfo, data_dir: str | os.PathLike | None) -> Loaded:
    if task.benchmark in cat.EMBEDDED_BENCHMARKS:
        # Imported on use: the embedded suite builds its families on import, which runs that do not need it skip.
        from optiml_jax.tasks import embedded_suite
        exs = tuple(embedded_suite.embedded_examples(task.name))
        return exs, LoadReport(task=task.name, path="<embedded>", loaded=len(exs)), ()
    if task.benchmark == BIGBENCH_BENCHMARK:
        return load_bigbench(task, data_dir)
    data = resolve_data_dir(data_dir)
    if data is None:
        raise FileNotFoundError(f"task {task.name!r} ({task.benchmark}) needs a data directory: "
                                f"set ${DATA_DIR_ENV} or the gin binding data_dir.path")
    found = _source_file(task, data)
    if found is not None:
        kind, path = found
        return LOADERS[kind](task, data, path)
    log.debug("%s: no data under %s", task.name, data)
    return (), LoadReport(task=task.name, note="no data in the data directory"), ()


def load_examples(task: TaskInfo, data_dir: str | os.PathLike | None = None) -> list[Example]:
    """The raw instances of ``task`` (cached per file; [] when the data dir has none for it).

    Raises:
      DataError: a malformed file (message names file, line, field).
      FileNotFoundError: a non-embedded task and no data directory configured.
    """
    exs, report, _ = _load(task, data_dir)
    _REPORTS[task.name] = report
    return with_task_options(exs, task.options, report)


def load_demonstrations(task: TaskInfo, data_dir: str | os.PathLike | None = None) -> list[Example]:
    """The task's own demonstrations: SuperNI "Positive Examples" (explanation as ``rationale``),
    BBH's 3-shot CoT prompts; [] for other tasks."""
    _, _, demos = _load(task, data_dir)
    return list(demos)
