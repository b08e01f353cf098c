"""BIG-bench JSON tasks read straight from the PyPI `bigbench` 1.0.0 sdist, never unpacked to disk.

Two sources give the same API:

* the sdist archive ``bigbench-1.0.0.tar.gz`` (358 MB compressed, 1.7 GB of task.json). The first use makes one
  streaming pass over it (gzip + tar stream, about 6 s of decompression) that validates every
  ``bigbench/benchmark_tasks/**/task.json`` member (1,041 of them: tasks and subtasks), writes each one into a
  small random-access zip cache next to the archive, and writes an index (task path -> member, keywords, metrics,
  counts) last, atomically. Re-seeking inside a gzip stream costs a decompression from the start (seconds per
  task), while the zip cache reads one task in milliseconds, so every later read goes through the cache.
* ``bigbench_tasks_first50.jsonl.xz`` (the data dir's fast fallback): the same metadata and the first 50 examples
  of every task; counts there are the full counts of the release.

Task names are ``bigbench_<task>`` and ``bigbench_<task>.<subtask>`` (valid seqio task names); the API also
accepts the task path (``<task>/<subtask>``). Tasks whose task.json has no examples (parents of subtasks) are in
the index but not in `bigbench_tasks`. The data carries the BIG-bench canary, so every task is registered with
``split_role="excluded"``: evaluation only, never training data.

Category: the keywords table ``tasks/bigbench_keywords.tsv`` (precedence rule documented there). Metric: the
task's ``preferred_score``, else its first known ``metrics`` entry, mapped by `METRIC_MAP`.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import pathlib
import re
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from typing import Any, BinaryIO, Iterator

from optiml_jax.data_dir import data_dir_candidates, fetch_dir, user_cache_dir
from optiml_jax.tasks.schema import Example, TaskInfo

log = logging.getLogger(__name__)

PACKAGE = "bigbench"
VERSION = "1.0.0"
ARCHIVE_NAME = f"bigbench-{VERSION}.tar.gz"
# From PyPI's simple index for bigbench 1.0.0 (uploaded 2022-06-30); checked again against the index at fetch time.
ARCHIVE_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
ARCHIVE_SIZE = 358_249_635
EXPECTED_TASK_FILES = 1041
FIRST50_NAME = "bigbench_tasks_first50.jsonl.xz"
NAME_PREFIX = "bigbench_"
INDEX_FORMAT = 2

KEYWORDS_TSV = pathlib.Path(__file__).resolve().parents[2] / "tasks" / "bigbench_keywords.tsv"
FALLBACK_CATEGORY = "Misc."

# BIG-bench metric name -> our metric. Multiple-choice scores become rank-classification accuracy; exact and
# numeric matches become exact match; every overlap score (rouge, bleu, bleurt, F1 over sequences) and the
# likelihood of a free-form target becomes Rouge-L, our generation metric.
METRIC_MAP: dict[str, str] = {
    "multiple_choice_grade": "accuracy",
    "macro_f1": "accuracy",
    "exact_str_match": "exact_match",
    "numeric_match_with_0_1_relative_error": "exact_match",
    "rouge": "rouge_l",
    "rougeLsum": "rouge_l",
    "rougeL": "rouge_l",
    "rouge1": "rouge_l",
    "rouge2": "rouge_l",
    "bleu": "rouge_l",
    "bleurt": "rouge_l",
    "sequence_f1": "rouge_l",
    "log_likelihood": "rouge_l",
}

_MEMBER_RE = re.compile(r"^[^/]+/bigbench/benchmark_tasks/(?P<path>[^/]+(?:/[^/]+)*)/task\.json$")


class BigBenchError(ValueError):
    """Bad BIG-bench input: unknown task, malformed task.json, unknown metric, bad source path."""


class BigBenchArchiveError(BigBenchError):
    """The sdist archive is corrupt, truncated or not a BIG-bench sdist."""


# ----------------------------------------------------------------------------------------------------------------
# Names


def task_name_for_path(task_path: str) -> str:
    """``"arithmetic/1_digit_addition"`` -> ``"bigbench_arithmetic.1_digit_addition"``."""
    return NAME_PREFIX + task_path.replace("/", ".")


def task_path_for_name(name: str) -> str:
    """Inverse of `task_name_for_path`; a task path (no prefix) is returned unchanged."""
    if name.startswith(NAME_PREFIX):
        return name[len(NAME_PREFIX):].replace(".", "/")
    return name


# ----------------------------------------------------------------------------------------------------------------
# Keywords -> category, metrics -> metric (pure)


@dataclasses.dataclass(frozen=True)
class KeywordTable:
    """The ordered keyword table: ``rows[i] = (keyword, category or None)``; earlier rows take precedence."""

    rows: tuple[tuple[str, str | None], ...]

    @functools.cached_property
    def rank(self) -> dict[str, tuple[int, str | None]]:
        return {kw: (i, cat) for i, (kw, cat) in enumerate(self.rows)}

    def covers(self, keyword: str) -> bool:
        """Whether the table has a row for ``keyword`` (matched case-insensitively)."""
        return keyword.strip().lower() in self.rank


def parse_keyword_table(text: str, source: str = "<string>") -> KeywordTable:
    """Parses the TSV text of a keyword table; errors name ``source`` and the line."""
    rows: list[tuple[str, str | None]] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise BigBenchError(f"{source}:{lineno}: expected 'keyword<TAB>category', got {line!r}")
        keyword, category = parts[0].strip().lower(), parts[1].strip()
        if keyword in seen:
            raise BigBenchError(f"{source}:{lineno}: keyword {keyword!r} already listed on line {seen[keyword]}")
        seen[keyword] = lineno
        rows.append((keyword, None if category == "-" else category))
    if not rows:
        raise BigBenchError(f"{source}: no keyword rows")
    return KeywordTable(tuple(rows))


@functools.lru_cache(maxsize=4)
def load_keyword_table(path: str | os.PathLike | None = None) -> KeywordTable:
    """Reads the keyword -> category table (default: ``tasks/bigbench_keywords.tsv`` of the repository)."""
    p = pathlib.Path(path) if path is not None else KEYWORDS_TSV
    if not p.is_file():
        raise BigBenchError(f"BIG-bench keyword table not found: {p}")
    return parse_keyword_table(p.read_text(encoding="utf-8"), source=str(p))


def category_for_keywords(keywords: list[str] | tuple[str, ...], table: KeywordTable | None = None,
                          task_path: str | None = None) -> str:
    """The unified category of a task: the highest-precedence row of the table that matches it.

    A row matches a keyword of the task (case-insensitively), or, for ``task:<path>`` rows, the task's own path or
    an ancestor of it. Unknown keywords carry no category (`unmapped_keywords` lists them); no categorised match
    gives "Misc.".
    """
    table = table or load_keyword_table()
    probes = [str(kw).strip().lower() for kw in keywords]
    if task_path:
        parts = task_path.lower().split("/")
        probes += ["task:" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    best: tuple[int, str] | None = None
    for probe in probes:
        hit = table.rank.get(probe)
        if hit is not None and hit[1] is not None and (best is None or hit[0] < best[0]):
            best = (hit[0], hit[1])
    return best[1] if best else FALLBACK_CATEGORY


def unmapped_keywords(keywords: list[str] | tuple[str, ...], table: KeywordTable | None = None) -> list[str]:
    """The non-empty keywords that the table has no row for."""
    table = table or load_keyword_table()
    return [k for k in keywords if str(k).strip() and not table.covers(str(k))]


def metric_for(metrics: list[str] | None, preferred_score: str | None, where: str = "task") -> str:
    """Our metric for a BIG-bench task: its ``preferred_score`` if known, else its first known ``metrics`` entry."""
    for name in ([preferred_score] if preferred_score else []) + list(metrics or []):
        if name in METRIC_MAP:
            return METRIC_MAP[name]
    raise BigBenchError(
        f"{where}: no known metric in preferred_score={preferred_score!r} / metrics={metrics!r}; "
        f"known: {sorted(METRIC_MAP)}"
    )


# ----------------------------------------------------------------------------------------------------------------
# task.json -> metadata, TaskInfo, Examples (pure)


def task_meta(task_path: str, task: dict[str, Any], num_examples: int | None = None) -> dict[str, Any]:
    """The index entry of one task.json (everything `bigbench_tasks` needs, without the examples)."""
    examples = task.get("examples") or []
    return {
        "name": str(task.get("name", task_path.rsplit("/", 1)[-1])),
        "description": str(task.get("description", "")),
        "keywords": [str(k) for k in task.get("keywords") or []],
        "metrics": [str(m) for m in task.get("metrics") or []],
        "preferred_score": task.get("preferred_score"),
        "task_prefix": str(task.get("task_prefix", "")),
        "num_examples": int(num_examples if num_examples is not None else len(examples)),
        "num_multiple_choice": sum(1 for e in examples if isinstance(e, dict) and "target_scores" in e),
    }


def _with_subtasks(metas: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Adds ``subtasks`` (the task paths one level below) to every entry; parents of subtasks have no examples."""
    children: dict[str, list[str]] = collections.defaultdict(list)
    for p in metas:
        if "/" in p:
            children[p.rsplit("/", 1)[0]].append(p)
    for p, meta in metas.items():
        meta["subtasks"] = sorted(children.get(p, []))
    return metas


def task_info_from_meta(task_path: str, meta: dict[str, Any], table: KeywordTable | None = None) -> TaskInfo:
    """Builds the TaskInfo of one BIG-bench task from its index entry."""
    return TaskInfo(
        name=task_name_for_path(task_path),
        benchmark="BIG-bench",
        category=category_for_keywords(meta["keywords"], table, task_path=task_path),
        source_dataset=task_path.split("/", 1)[0],
        instruction_level="task" if meta.get("task_prefix", "").strip() else "instance",
        metric=metric_for(meta["metrics"], meta.get("preferred_score"), where=f"BIG-bench task {task_path}"),
        split_role="excluded",  # BIG-bench canary: evaluation data only
        num_instances=int(meta["num_examples"]),
    )


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a few generative tasks give numeric targets
    return None


def examples_from_task_json(
    task: dict[str, Any], task_name: str, metric: str, max_examples: int | None = None
) -> tuple[list[Example], collections.Counter]:
    """Converts a task.json's examples into `Example`s; returns them and a counter of skipped ones by reason.

    Rank-classification tasks (metric "accuracy"): candidates = the ``target_scores`` keys in file order, outputs =
    the candidates with the top score. Generative tasks: outputs = the ``target`` (a string or a list of
    references), falling back to the top-scored candidates when an example only has ``target_scores``. The task's
    ``task_prefix`` becomes the definition; ``input`` is kept raw (prompt formatting happens in prompts.py).
    Ids are ``<task_name>-<index in the task.json>``, stable and unique.
    """
    if max_examples is not None and max_examples < 0:
        raise BigBenchError(f"max_examples must be >= 0 or None, got {max_examples}")
    raw = task.get("examples") or []
    if not isinstance(raw, list):
        raise BigBenchError(f"BIG-bench task {task_name}: field 'examples' is {type(raw).__name__}, not a list")
    definition = str(task.get("task_prefix", "")).strip()
    out: list[Example] = []
    skipped: collections.Counter = collections.Counter()
    for i, ex in enumerate(raw):
        if max_examples is not None and len(out) >= max_examples:
            break
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
            skipped["no string 'input'"] += 1
            continue
        candidates: tuple[str, ...] = ()
        best: tuple[str, ...] = ()
        scores = ex.get("target_scores")
        if isinstance(scores, dict) and scores:
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values()):
                skipped["non-numeric 'target_scores'"] += 1
                continue
            top = max(scores.values())
            candidates = tuple(str(k) for k in scores)
            best = tuple(str(k) for k, v in scores.items() if v == top) if top > 0 else ()
        target = ex.get("target")
        refs = [_as_text(target)] if not isinstance(target, list) else [_as_text(t) for t in target]
        refs = [r for r in refs if r is not None and r != ""]
        if metric == "accuracy":
            if not candidates:
                skipped["multiple-choice task without 'target_scores'"] += 1
                continue
            if not best:
                skipped["no positive score in 'target_scores'"] += 1
                continue
            outputs = best
        else:
            outputs = tuple(refs) or best
            candidates = ()  # a generative metric: candidates would switch evaluation to rank classification
            if not outputs:
                skipped["no 'target'"] += 1
                continue
        out.append(Example(id=f"{task_name}-{i}", input=ex["input"], outputs=outputs,
                           definition=definition, candidates=candidates))
    return out, skipped


# ----------------------------------------------------------------------------------------------------------------
# Finding sources


def find_archive(data_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The fetched sdist ``bigbench/bigbench-1.0.0.tar.gz`` under ``data_dir``, ``$OPTIML_DATA_DIR`` or
    ``~/.cache/optiml_jax`` (first found; see `optiml_jax.data_dir.data_dir_candidates`), else None."""
    for d in data_dir_candidates(data_dir):
        p = d / "bigbench" / ARCHIVE_NAME
        if p.is_file():
            return p
    return None


def find_first50(data_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
    """``<data_dir>/bigbench/bigbench_tasks_first50.jsonl.xz`` if present."""
    d = fetch_dir(data_dir)
    p = d / "bigbench" / FIRST50_NAME
    return p if p.is_file() else None


def find_source(data_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The best BIG-bench source: the full archive if fetched, else the first-50 file, else None."""
    return find_archive(data_dir) or find_first50(data_dir)


def _source_kind(path: pathlib.Path) -> str:
    if path.name.endswith(".tar.gz") or path.name.endswith(".tgz"):
        return "archive"
    if path.name.endswith(".jsonl.xz") or path.name.endswith(".jsonl"):
        return "first50"
    raise BigBenchError(
        f"{path}: not a BIG-bench source (expected the sdist {ARCHIVE_NAME} or {FIRST50_NAME})")


# ----------------------------------------------------------------------------------------------------------------
# The archive: one streaming pass -> zip cache + index


class _HashingReader(io.RawIOBase):
    """Read-only file wrapper that hashes and counts what it hands out (for sha256 and the progress bar)."""

    def __init__(self, f: BinaryIO, bar=None):
        self._f, self._bar = f, bar
        self.sha256 = hashlib.sha256()
        self.nbytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        if n:
            self.sha256.update(memoryview(b)[:n])
            self.nbytes += n
            if self._bar is not None:
                self._bar.update(n)
        return n


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm  # imported lazily: only the CLI and explicit progress=True need it

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)


def _corrupt(archive: pathlib.Path, detail: str) -> BigBenchArchiveError:
    return BigBenchArchiveError(
        f"{archive}: corrupt or truncated BIG-bench archive ({detail}). Delete it and run "
        f"`python -m optiml_jax.data fetch bigbench` (it re-downloads a bad archive once by itself)."
    )


def _iter_task_files(archive: pathlib.Path, reader: _HashingReader) -> Iterator[tuple[str, str, bytes]]:
    """Yields (task path, member name, bytes) for every task.json; reads the gzip stream to its end (CRC check)."""
    try:
        with gzip.GzipFile(fileobj=reader, mode="rb") as gz:
            with tarfile.open(fileobj=gz, mode="r|") as tar:
                for member in tar:
                    m = _MEMBER_RE.match(member.name)
                    if m is None or not member.isfile():
                        continue
                    f = tar.extractfile(member)
                    data = f.read() if f is not None else b""
                    if len(data) != member.size:
                        raise EOFError(f"member {member.name} ends after {len(data)} of {member.size} bytes")
                    yield m.group("path"), member.name, data
            # tar stops at its end-of-archive blocks; the gzip trailer (CRC32, length) is checked only at EOF.
            while gz.read(1 << 20):
                pass
        while reader.read(1 << 20):
            pass
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise _corrupt(archive, f"{type(e).__name__}: {e}") from e


def cache_paths(archive: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(index path, zip cache path): next to the archive when that folder is writable, else in the user cache."""
    stem = archive.name[: -len(".tar.gz")] if archive.name.endswith(".tar.gz") else archive.stem
    folder = archive.parent
    if not os.access(folder, os.W_OK):
        st = archive.stat()
        key = hashlib.sha1(f"{archive.resolve()}:{st.st_size}".encode()).hexdigest()[:12]
        folder = user_cache_dir() / "bigbench" / f"cache-{key}"
    return folder / f"{stem}.index.json", folder / f"{stem}.tasks.zip"


def _file_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give (mkstemp's files are 0600 whatever the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, _file_mode())
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def build_index(archive_path: str | os.PathLike, *, progress: bool = False) -> dict[str, Any]:
    """One streaming pass over the sdist: validates every task.json, writes the zip cache, then the index.

    Nothing is written under the index name unless the whole archive decompressed cleanly (gzip CRC included),
    every task.json parsed as a JSON object and, for the pinned release, all 1,041 were found and the sha256
    matched. Returns the index dict. Raises BigBenchArchiveError for a bad archive.
    """
    archive = pathlib.Path(archive_path)
    if not archive.is_file():
        raise BigBenchError(f"BIG-bench archive not found: {archive}")
    index_path, cache_path = cache_paths(archive)
    index_path.parent.mkdir(parents=True, exist_ok=True)
    st = archive.stat()
    t0 = time.perf_counter()
    tasks: dict[str, dict[str, Any]] = {}
    fd, tmp_zip = tempfile.mkstemp(dir=cache_path.parent, prefix=f".{cache_path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp_zip, _file_mode())
    bar = _progress_bar(st.st_size, f"indexing {archive.name}", progress)
    try:
        with open(archive, "rb") as raw, zipfile.ZipFile(
                tmp_zip, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            reader = _HashingReader(raw, bar)
            for task_path, member, data in _iter_task_files(archive, reader):
                try:
                    task = json.loads(data)
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise _corrupt(archive, f"member {member} is not valid JSON: {e}") from e
                if not isinstance(task, dict):
                    raise _corrupt(archive, f"member {member} is a JSON {type(task).__name__}, not an object")
                if "examples" in task and not isinstance(task["examples"], list):
                    raise _corrupt(archive, f"member {member}: field 'examples' is not a list")
                # Level 1: the cache only has to beat re-decompressing the gzip stream; higher levels cost 4-5x
                # the time for about 20% less disk.
                zf.writestr(task_path + ".json", data)
                meta = task_meta(task_path, task)
                meta["member"] = member
                meta["bytes"] = len(data)
                tasks[task_path] = meta
        sha = reader.sha256.hexdigest()
        if reader.nbytes != st.st_size:
            raise _corrupt(archive, f"read {reader.nbytes} of {st.st_size} bytes")
        if not tasks:
            raise BigBenchArchiveError(
                f"{archive}: no bigbench/benchmark_tasks/**/task.json members: not a BIG-bench sdist")
        if st.st_size == ARCHIVE_SIZE and sha != ARCHIVE_SHA256:
            raise _corrupt(archive, f"sha256 {sha} != pinned {ARCHIVE_SHA256}")
        if sha == ARCHIVE_SHA256 and len(tasks) != EXPECTED_TASK_FILES:
            raise _corrupt(archive, f"{len(tasks)} task.json members, expected {EXPECTED_TASK_FILES}")
        os.replace(tmp_zip, cache_path)
    except BaseException:
        pathlib.Path(tmp_zip).unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    index = {
        "format": INDEX_FORMAT,
        "archive": {"name": archive.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha},
        "cache": {"name": cache_path.name, "size": cache_path.stat().st_size},
        "num_task_files": len(tasks),
        "num_parent_tasks": sum(1 for t in _with_subtasks(tasks).values() if t["subtasks"]),
        "num_examples": sum(t["num_examples"] for t in tasks.values()),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "tasks": tasks,
    }
    # The index is the commit point: written last and atomically, so a failed pass never registers anything.
    _atomic_write_bytes(index_path, json.dumps(index, ensure_ascii=False, indent=1).encode("utf-8"))
    log.info("indexed %s: %d task.json, %d examples in %.1f s", archive, len(tasks), index["num_examples"],
             index["build_seconds"])
    return index


def _index_is_current(index: dict[str, Any], archive: pathlib.Path, cache_path: pathlib.Path) -> bool:
    st = archive.stat()
    a = index.get("archive", {})
    return (index.get("format") == INDEX_FORMAT and a.get("size") == st.st_size
            and a.get("mtime_ns") == st.st_mtime_ns and cache_path.is_file()
            and cache_path.stat().st_size == index.get("cache", {}).get("size"))


def load_index(archive_path: str | os.PathLike, *, build: bool = True, progress: bool | None = None
               ) -> dict[str, Any]:
    """The archive's index, built by `build_index` on first use (or when the archive changed since)."""
    archive = pathlib.Path(archive_path)
    if not archive.is_file():
        raise BigBenchError(f"BIG-bench archive not found: {archive}")
    index_path, cache_path = cache_paths(archive)
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            index = {}
        if _index_is_current(index, archive, cache_path):
            return index
    if not build:
        raise BigBenchError(f"{archive}: no current index at {index_path}")
    return build_index(archive, progress=sys.stderr.isatty() if progress is None else progress)


@functools.lru_cache(maxsize=4)
def _first50_rows(path: str, mtime_ns: int) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BigBenchError(f"{path}:{lineno}: invalid JSON: {e}") from e
            if not isinstance(row, dict) or not isinstance(row.get("task_path"), str):
                raise BigBenchError(f"{path}:{lineno}: missing string field 'task_path'")
            if "examples" in row and not isinstance(row["examples"], list):
                raise BigBenchError(f"{path}:{lineno}: field 'examples' is not a list")
            rows[row["task_path"]] = row
    if not rows:
        raise BigBenchError(f"{path}: no tasks")
    return rows


def _first50(path: pathlib.Path) -> dict[str, dict[str, Any]]:
    return _first50_rows(str(path), path.stat().st_mtime_ns)


def _source_metas(path: pathlib.Path) -> dict[str, dict[str, Any]]:
    if _source_kind(path) == "archive":
        return load_index(path)["tasks"]
    return _with_subtasks({p: task_meta(p, row, num_examples=row.get("num_examples_total"))
                           for p, row in _first50(path).items()})


def _resolve(path: pathlib.Path, metas: dict[str, dict[str, Any]], task_name: str) -> str:
    task_path = task_path_for_name(task_name)
    if task_path not in metas:
        close = [task_name_for_path(p) for p in metas if task_path.split("/")[0] in p][:5]
        raise BigBenchError(f"{path}: no BIG-bench task {task_name!r}" + (f"; similar: {close}" if close else ""))
    return task_path


# ----------------------------------------------------------------------------------------------------------------
# Public API


def bigbench_tasks(source_path: str | os.PathLike, *, keyword_table: KeywordTable | None = None
                   ) -> dict[str, TaskInfo]:
    """All BIG-bench JSON tasks of a source (the sdist archive or the first-50 file): name -> TaskInfo.

    Tasks without examples (parents of subtasks, which only list them) are left out. For the archive, the first
    call builds the index (one pass, see `build_index`); later calls read only the index.
    """
    path = pathlib.Path(source_path)
    if not path.is_file():
        raise BigBenchError(f"BIG-bench source not found: {path}")
    table = keyword_table or load_keyword_table()
    out: dict[str, TaskInfo] = {}
    unknown: set[str] = set()
    for task_path, meta in sorted(_source_metas(path).items()):
        if meta["num_examples"] == 0:
            continue
        unknown.update(unmapped_keywords(meta["keywords"], table))
        out[task_name_for_path(task_path)] = task_info_from_meta(task_path, meta, table)
    if unknown:
        log.warning("BIG-bench keywords missing from %s (no category signal): %s", KEYWORDS_TSV, sorted(unknown))
    return out


def task_json(source_path: str | os.PathLike, task_name: str) -> dict[str, Any]:
    """The raw task.json of one task (from the zip cache, or the first-50 row with its first 50 examples)."""
    path = pathlib.Path(source_path)
    if not path.is_file():
        raise BigBenchError(f"BIG-bench source not found: {path}")
    if _source_kind(path) == "first50":
        rows = _first50(path)
        return copy.deepcopy(rows[_resolve(path, rows, task_name)])  # the rows are cached: hand out a copy
    index = load_index(path)
    task_path = _resolve(path, index["tasks"], task_name)
    _, cache_path = cache_paths(path)
    try:
        with zipfile.ZipFile(cache_path) as zf:
            data = zf.read(task_path + ".json")
    except (OSError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise BigBenchArchiveError(
            f"{cache_path}: cannot read {task_path} from the BIG-bench cache ({e}); delete "
            f"{cache_path} and its .index.json to rebuild it") from e
    return json.loads(data)


def bigbench_examples(source_path: str | os.PathLike, task_name: str, max_examples: int | None = None
                      ) -> list[Example]:
    """The examples of one task (name ``bigbench_<task>[.<subtask>]`` or the task path), in file order.

    See `examples_from_task_json` for the mapping. Skipped malformed examples are logged with their reasons.
    With the first-50 source at most 50 examples exist per task.
    """
    path = pathlib.Path(source_path)
    task = task_json(path, task_name)
    task_path = task_path_for_name(task_name)
    metric = metric_for(task.get("metrics"), task.get("preferred_score"), where=f"BIG-bench task {task_path}")
    examples, skipped = examples_from_task_json(task, task_name_for_path(task_path), metric, max_examples)
    if skipped:
        log.warning("BIG-bench task %s (%s): skipped %d examples: %s", task_path, path, sum(skipped.values()),
                    dict(skipped))
    return examples
