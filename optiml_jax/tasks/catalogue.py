"""The OPT-IML Bench task catalogue: one row of facts per task (name, benchmark, category, ...).

The table lives in ``tasks/catalogue.tsv`` and is generated from the facts in a data directory with

    python -m optiml_jax.tasks.catalogue_builder --build --data_dir /path/to/data

It never holds definitions, templates or instances, only names, categories, metrics and counts.
``load_catalogue`` reads the committed table, adds the procedurally generated embedded suite, the
optional user rows of ``<data_dir>/jsonl/catalogue.tsv`` (for CrossFit, ExMix, T5, UnifiedSKG, ...) and,
when a BIG-bench source is found (`bigbench_source`), its JSON tasks (benchmark "BIG-bench").

Categories follow one unified taxonomy: Super-NaturalInstructions' 76 categories plus a few extra
ones (``EXTRA_CATEGORIES``); every other benchmark's category label is mapped onto it through the
explicit tables ``CATEGORY_MAP``, ``FLAN_DATASETS`` and ``PS_DATASETS`` (see tasks/README.md). These tables
are data (``taxonomy.yaml`` next to this module) read by `optiml_jax.tasks.taxonomy`; this module re-exports them.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pathlib
import re
from typing import Iterable, Mapping

from optiml_jax.data_dir import DATA_DIR_ENV, resolve_data_dir  # noqa: F401 (DATA_DIR_ENV re-exported)
from optiml_jax.tasks import schema
from optiml_jax.tasks.schema import TaskInfo
from optiml_jax.tasks.taxonomy import (  # noqa: F401 (the taxonomy and mapping tables, re-exported for callers)
    CATEGORY_MAP,
    COT_DATASETS,
    EXTRA_CATEGORIES,
    FLAN_DATASETS,
    PS_DATASETS,
    SOURCE_ALIASES,
    SUPERNI_CATEGORIES,
    SUPERNI_EXACT_MATCH_CATEGORIES,
    TABLES_FILE,
    TAXONOMY,
    CatalogueError,
)

log = logging.getLogger(__name__)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CATALOGUE_PATH = REPO_ROOT / "tasks" / "catalogue.tsv"
# User-provided rows for benchmarks whose data is not shipped (generic JSONL layout).
EXTRA_CATALOGUE_RELPATH = pathlib.Path("jsonl") / "catalogue.tsv"

COLUMNS: tuple[str, ...] = (
    "name", "benchmark", "source_dataset", "category", "instruction_level", "metric",
    "split_role", "num_instances", "source_split", "options",
)
# Columns a user table (<data_dir>/jsonl/catalogue.tsv) may leave out, with their default.
OPTIONAL_COLUMNS: dict[str, str] = {"options": ""}
# A task's fixed label set (column "options", a JSON list): at build time, the distinct references of all the
# task file's instances when they number 2 to MAX_LABELS and there are at least twice as many instances as
# labels (SuperNI classification tasks). Fixed once committed, so the scoring protocol never depends on the
# instances a data directory holds.
MAX_LABELS = 10
# Where a task sits in its *source* benchmark (independent of any OPT-IML split definition):
#   train     - a training task of its benchmark
#   test      - an official test task (SuperNI default track); never trained on
#   eval_only - evaluation data only (BBH, superni_extra, BIG-bench); never trained on
#   extra     - a SuperNI task outside the default (English) track
SOURCE_SPLITS: tuple[str, ...] = ("train", "test", "eval_only", "extra")
SPLIT_ROLES: tuple[str, ...] = ("train", "fully_heldout", "partially_heldout", "excluded")
METRICS: tuple[str, ...] = ("accuracy", "exact_match", "rouge_l")
INSTRUCTION_LEVELS: tuple[str, ...] = ("task", "instance")
EMBEDDED_BENCHMARKS: tuple[str, ...] = ("Embedded-NI", "Embedded-PS")
KNOWN_BENCHMARKS: tuple[str, ...] = tuple(schema.BENCHMARKS) + EMBEDDED_BENCHMARKS

# Task-name prefixes per benchmark (sources/ dispatches on them).
PS_PREFIX = "ps_"
FLAN_PREFIX = "flan_"
COT_PREFIX = "cot_"
BBH_PREFIX = "bbh_"


@dataclasses.dataclass(frozen=True)
class CatalogueRow:
    """One row of tasks/catalogue.tsv: a TaskInfo plus the task's split in its source benchmark."""

    info: TaskInfo
    source_split: str = "train"

    def as_tsv(self) -> list[str]:
        i = self.info
        return [i.name, i.benchmark, i.source_dataset, i.category, i.instruction_level, i.metric,
                i.split_role, str(i.num_instances), self.source_split, format_options(i.options)]


def format_options(options: Iterable[str]) -> str:
    """The "options" cell: a JSON list (escapes tabs and newlines), "" for none."""
    options = list(options)
    return json.dumps(options, ensure_ascii=False) if options else ""


def parse_options(cell: str, where: str) -> tuple[str, ...]:
    """Inverse of `format_options`; the error names the row."""
    cell = cell.strip()
    if not cell:
        return ()
    try:
        value = json.loads(cell)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(v, str) and v.strip() for v in value):
        raise CatalogueError(f"{where}: field 'options' must be a JSON list of at least 2 non-empty strings, "
                             f"got {cell[:80]!r}")
    return tuple(value)


def label_set(outputs: Iterable[Iterable[str]]) -> tuple[str, ...]:
    """The fixed label set of a task from its instances' references (see `MAX_LABELS`), or ()."""
    outputs = [tuple(o) for o in outputs]
    labels = sorted({o for outs in outputs for o in outs})
    if 2 <= len(labels) <= MAX_LABELS and len(outputs) >= 2 * len(labels):
        return tuple(labels)
    return ()


def normalize_source(name: str) -> str:
    """Canonical spelling of a source-dataset name, used to match data sources across benchmarks."""
    # Some SuperNI "Source" fields append a URL to the dataset name; the name alone identifies it.
    base = name.split("http", 1)[0] if "http" in name else name
    s = re.sub(r"[^0-9a-z]+", "_", base.strip().lower()).strip("_")
    # Reviewed aliases (taxonomy.yaml's source_aliases); the leakage audit finds the cases no entry lists.
    return SOURCE_ALIASES.get(s, s)


def map_category(label: str, *, where: str = "") -> str:
    """Map a benchmark's own category label onto the unified taxonomy; raise when unmapped."""
    if label in TAXONOMY:
        return label
    if label in CATEGORY_MAP:
        return CATEGORY_MAP[label]
    raise CatalogueError(f"{where}: category {label!r} is neither in the unified taxonomy nor in "
                         "catalogue.CATEGORY_MAP; add an explicit mapping")


def secondary_metrics(task: TaskInfo) -> tuple[str, ...]:
    """Metrics reported besides ``task.metric`` (SuperNI: exact match for classification-like tasks)."""
    if task.benchmark == "SuperNI" and task.category in SUPERNI_EXACT_MATCH_CATEGORIES:
        return ("exact_match",) if task.metric != "exact_match" else ()
    return ()




# --------------------------------------------------------------------------------------------
# Reading the table
# --------------------------------------------------------------------------------------------
def _parse_row(fields: Mapping[str, str], where: str) -> CatalogueRow:
    fields = {**OPTIONAL_COLUMNS, **fields}
    for col in COLUMNS:
        if col not in fields or fields[col] is None:
            raise CatalogueError(f"{where}: missing column {col!r}")
    name = fields["name"].strip()
    if not name:
        raise CatalogueError(f"{where}: field 'name' is empty")
    bench = fields["benchmark"].strip()
    if bench not in KNOWN_BENCHMARKS:
        raise CatalogueError(f"{where}: field 'benchmark' = {bench!r} is not one of "
                             f"{', '.join(KNOWN_BENCHMARKS)}")
    category = fields["category"].strip()
    if category not in TAXONOMY:
        raise CatalogueError(f"{where}: field 'category' = {category!r} is not in the unified "
                             "taxonomy (catalogue.TAXONOMY)")
    checks = (("instruction_level", INSTRUCTION_LEVELS), ("metric", METRICS),
              ("split_role", SPLIT_ROLES), ("source_split", SOURCE_SPLITS))
    for col, allowed in checks:
        if fields[col].strip() not in allowed:
            raise CatalogueError(f"{where}: field {col!r} = {fields[col]!r} is not one of {allowed}")
    try:
        n = int(fields["num_instances"])
    except ValueError:
        raise CatalogueError(f"{where}: field 'num_instances' = {fields['num_instances']!r} is "
                             "not an integer") from None
    if n < 0:
        raise CatalogueError(f"{where}: field 'num_instances' is negative")
    info = TaskInfo(name=name, benchmark=bench, category=category,
                    source_dataset=fields["source_dataset"].strip(),
                    instruction_level=fields["instruction_level"].strip(),  # type: ignore[arg-type]
                    metric=fields["metric"].strip(),  # type: ignore[arg-type]
                    split_role=fields["split_role"].strip(), num_instances=n,
                    options=parse_options(fields["options"], where))
    return CatalogueRow(info=info, source_split=fields["source_split"].strip())


def read_table(path: str | os.PathLike) -> list[CatalogueRow]:
    """Parse and validate a catalogue TSV (header = ``COLUMNS``); errors name file, line and field."""
    path = pathlib.Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"catalogue table {path} not found; generate it with "
                                "`python -m optiml_jax.tasks.catalogue_builder --build --data_dir DIR`") from None
    except UnicodeDecodeError as e:
        raise CatalogueError(f"{path}: not valid UTF-8 at byte {e.start}") from None
    lines = text.splitlines()
    if not lines:
        raise CatalogueError(f"{path}: empty file (expected a header {COLUMNS})")
    header = lines[0].split("\t")
    missing = [c for c in COLUMNS if c not in header and c not in OPTIONAL_COLUMNS]
    if missing:
        raise CatalogueError(f"{path}: header lacks column(s) {missing}")
    rows: list[CatalogueRow] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        values = line.split("\t")
        if len(values) != len(header):
            raise CatalogueError(f"{path}:{lineno}: {len(values)} fields, header has {len(header)}")
        row = _parse_row(dict(zip(header, values)), f"{path}:{lineno}")
        if row.info.name in seen:
            raise CatalogueError(f"{path}:{lineno}: duplicate task name {row.info.name!r} "
                                 f"(first on line {seen[row.info.name]})")
        seen[row.info.name] = lineno
        rows.append(row)
    return rows


def write_table(rows: Iterable[CatalogueRow], path: str | os.PathLike) -> None:
    """Write rows as a catalogue TSV (sorted by benchmark, then name, for stable diffs)."""
    rows = sorted(rows, key=lambda r: (r.info.benchmark, r.info.name))
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(COLUMNS) + "\n")
        for r in rows:
            vals = r.as_tsv()
            if any("\t" in v or "\n" in v for v in vals):
                raise CatalogueError(f"task {r.info.name!r}: a field holds a tab or newline")
            f.write("\t".join(vals) + "\n")


@functools.lru_cache(maxsize=8)
def _cached_rows(table_path: str, mtime_ns: int, extra_path: str | None,
                 extra_mtime_ns: int, bigbench_key: tuple[str, int, int] | None = None
                 ) -> tuple[CatalogueRow, ...]:
    rows = read_table(table_path)
    if extra_path is not None:
        names = {r.info.name for r in rows}
        for r in read_table(extra_path):
            if r.info.name in names:
                raise CatalogueError(f"{extra_path}: task {r.info.name!r} is already in "
                                     f"{table_path}; give user tasks new names")
            rows.append(r)
    rows.extend(embedded_rows())
    if bigbench_key is not None:
        names = {r.info.name for r in rows}
        bb_rows = _bigbench_rows(bigbench_key).rows
        clash = sorted(names & {r.info.name for r in bb_rows})
        if clash:
            raise CatalogueError(f"BIG-bench tasks {clash[:3]} clash with catalogue names; rename the user tasks")
        rows.extend(bb_rows)
    return tuple(rows)


@dataclasses.dataclass(frozen=True)
class BigBenchStatus:
    """Whether BIG-bench joined the catalogue: its source, how many tasks, or why it was skipped."""

    source: str | None
    num_tasks: int = 0
    error: str | None = None
    rows: tuple[CatalogueRow, ...] = dataclasses.field(default=(), repr=False)

    @property
    def registered(self) -> bool:
        return self.error is None and self.num_tasks > 0

    def describe(self) -> str:
        """One line for logs and error messages."""
        if self.source is None:
            return ("no BIG-bench source: run `python -m optiml_jax.data fetch bigbench` or put "
                    "bigbench/bigbench_tasks_first50.jsonl.xz in the data directory")
        if self.error is not None:
            return f"BIG-bench skipped: {self.error}"
        return f"BIG-bench: {self.num_tasks} tasks from {self.source}"


def _bigbench_key(source) -> tuple[str, int, int] | None:
    if source is None:
        return None
    st = source.stat()
    return str(source), st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=4)
def _bigbench_rows(key: tuple[str, int, int]) -> BigBenchStatus:
    from optiml_jax.tasks import bigbench  # lazily: only when a source exists

    try:
        # bigbench_tasks builds the whole dict before returning: a bad source raises before anything is
        # added, so the benchmark is either complete or absent (never half-registered).
        infos = bigbench.bigbench_tasks(key[0])
    except (bigbench.BigBenchError, OSError) as e:
        log.warning("BIG-bench left out of the catalogue: %s", e)
        return BigBenchStatus(source=key[0], error=str(e))
    # The BIG-bench canary: evaluation-only data in its source benchmark; a split may waive this explicitly
    # (splits.Split.train_eval_only_benchmarks, e.g. the "bigbench" split).
    rows = tuple(CatalogueRow(info, source_split="eval_only") for info in infos.values())
    return BigBenchStatus(source=key[0], num_tasks=len(rows), rows=rows)


def bigbench_source(data_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The BIG-bench source the catalogue uses: the fetched sdist (``<data_dir>``, ``$OPTIML_DATA_DIR`` or
    ``~/.cache/optiml_jax``) if any, else ``<data_dir>/bigbench/bigbench_tasks_first50.jsonl.xz``, else None."""
    from optiml_jax.tasks import bigbench

    d = resolve_data_dir(data_dir)
    return bigbench.find_archive(d) or (bigbench.find_first50(d) if d is not None else None)


def bigbench_status(data_dir: str | os.PathLike | None = None) -> BigBenchStatus:
    """Why BIG-bench is (or is not) in ``load_catalogue(data_dir)``."""
    key = _bigbench_key(bigbench_source(data_dir))
    return _bigbench_rows(key) if key is not None else BigBenchStatus(source=None)


def embedded_rows() -> list[CatalogueRow]:
    """Rows of the embedded suite, with their roles under the "embedded" split."""
    from optiml_jax.tasks import embedded_suite, splits  # lower layers, imported only where the rows are built
    infos = embedded_suite.embedded_tasks()
    resolved = splits.resolve(splits.get_split("embedded"), infos, source_splits={})
    return [CatalogueRow(dataclasses.replace(i, split_role=resolved.roles[n]), source_split="train")
            for n, i in infos.items()]


def load_rows(data_dir: str | os.PathLike | None = None,
              table_path: str | os.PathLike | None = None) -> tuple[CatalogueRow, ...]:
    """All catalogue rows: the committed table, user rows of ``<data_dir>/jsonl/catalogue.tsv``,
    the embedded suite and the BIG-bench tasks of `bigbench_source` (skipped with a logged reason when that
    source is corrupt: see `bigbench_status`)."""
    table = pathlib.Path(table_path) if table_path else CATALOGUE_PATH
    if not table.is_file():
        raise FileNotFoundError(f"catalogue table {table} not found; generate it with "
                                "`python -m optiml_jax.tasks.catalogue_builder --build --data_dir DIR`")
    d = resolve_data_dir(data_dir)
    extra = d / EXTRA_CATALOGUE_RELPATH if d is not None else None
    extra_s, extra_m = (str(extra), extra.stat().st_mtime_ns) if extra and extra.is_file() else (None, 0)
    return _cached_rows(str(table), table.stat().st_mtime_ns, extra_s, extra_m,
                        _bigbench_key(bigbench_source(d)))


def load_catalogue(data_dir: str | os.PathLike | None = None) -> dict[str, TaskInfo]:
    """Every task of OPT-IML Bench (tasks/catalogue.tsv + user rows + embedded suite) by name.

    ``split_role`` is the task's role under the paper's "optiml" split (for embedded tasks: under
    the "embedded" split); ``splits.resolve`` recomputes roles for any split definition.
    """
    return {r.info.name: r.info for r in load_rows(data_dir)}


def source_splits(data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Task name -> its split in its source benchmark (``SOURCE_SPLITS``)."""
    return {r.info.name: r.source_split for r in load_rows(data_dir)}


_ANLI_ROUND = re.compile(r"_r([123])(_score_eval)?$")


def ps_dataset_of(template: str) -> str | None:
    """The PromptSource dataset a P3 template name belongs to (longest matching prefix; dots read
    as underscores, ANLI templates by their round suffix)."""
    t = template.replace(".", "_")
    if t.startswith("anli_"):
        m = _ANLI_ROUND.search(t)
        return f"anli_r{m.group(1)}" if m else None
    best = None
    for ds in PS_DATASETS:
        if t.startswith(ds + "_") and (best is None or len(ds) > len(best)):
            best = ds
    return best
