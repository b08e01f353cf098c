"""BIG-bench source: JSON tasks of the fetched sdist or the first-50 extract, read through `optiml_jax.tasks.bigbench`."""
from __future__ import annotations

import collections
import functools
import os

from optiml_jax.data_dir import DATA_DIR_ENV
from optiml_jax.tasks import bigbench as bb
from optiml_jax.tasks import catalogue as cat
from optiml_jax.tasks.schema import Example, TaskInfo
from optiml_jax.tasks.sources.common import DataError, Loaded, LoadReport, _file_key, _finish

BIGBENCH_BENCHMARK = "BIG-bench"


@functools.lru_cache(maxsize=256)
def _parse_bigbench(source_key: tuple[str, int, int], task: str) -> tuple[tuple[Example, ...], LoadReport]:
    path = source_key[0]
    try:
        raw = bb.task_json(path, task)
        metric = bb.metric_for(raw.get("metrics"), raw.get("preferred_score"),
                          where=f"{path}: BIG-bench task {task}")
        exs, skipped = bb.examples_from_task_json(raw, task, metric)
    except bb.BigBenchError as e:
        raise DataError(str(e)) from e
    report = LoadReport(task=task, path=path, loaded=len(exs), skipped=collections.Counter(skipped))
    _finish(report)
    return tuple(exs), report


def load_bigbench(task: TaskInfo, data_dir: str | os.PathLike | None) -> Loaded:
    """A BIG-bench task from the source `catalogue.bigbench_source` finds (no data directory needed)."""
    src = cat.bigbench_source(data_dir)
    if src is None:
        raise FileNotFoundError(
            f"task {task.name!r} (BIG-bench): no BIG-bench source; run `python -m optiml_jax.data fetch "
            f"bigbench` or set ${DATA_DIR_ENV} to a folder with bigbench/bigbench_tasks_first50.jsonl.xz")
    exs, report = _parse_bigbench(_file_key(src), task.name)
    return exs, report, ()
