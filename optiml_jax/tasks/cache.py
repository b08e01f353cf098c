"""The offline token cache: every training task of a mixture tokenised once into ArrayRecord shards.

Layout of a cache folder::

    manifest.json                  format, mixture, split, data dir, vocabulary and rendering fingerprints,
                                   the task list (written when the build is complete)
    tasks/<file>.arrayrecord       one record per training instance, in `Bench.train_examples` order
    tasks/<file>.json              per task: count, token statistics, fingerprints (data, content, rendering,
                                   vocabulary); written after its shard, so a killed build resumes task by task

A record (`Record`) is what the rendering of `optiml_jax.tasks.prompts` makes of one instance *before* the
per-draw choices of the training stream: the tokens of the definition, of the 0-shot input part and of the
target, whether the query takes a delimiter, and the texts a MetaICL demonstration is built from. The delimiter
(one of eight fixed parts, tokenised alone) and the demonstrations (drawn per stream position) are applied by
the loader (`optiml_jax.tasks.loader`), so one record serves every draw, and the packed batches equal those of
the in-memory `pipeline.TrainInput` token for token.

Records are produced by the seqio Tasks of record (`registry`: ``optiml.<task>``'s "train" split yields these
features); the build reads each Task's dataset once, task by task (a seqio Mixture of thousands of tasks would
build one tf.data pipeline per task at every step), and training reads only the cache.

Staleness: a task's entry is valid while its data fingerprint (file sizes and times of its source and of the
evaluation data that decides which of its instances are held out), the rendering fingerprint (this module and
`prompts`) and the vocabulary fingerprint (tokenizer files, special ids) are unchanged. `ensure` rebuilds stale
or missing tasks, or (``rebuild=False``) refuses with a message naming the first stale task and the command.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import os
import pathlib
import struct
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from optiml_jax.errors import UserError
from optiml_jax.tasks import pipeline, prompts
from optiml_jax.tasks.schema import PART_DEFINITION, PART_FIXED, PART_INPUT

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TASKS_DIR = "tasks"
SHARD_SUFFIX = ".arrayrecord"
_WRITER_OPTIONS = "group_size:1,uncompressed"   # random access: one record per chunk, no decompression
_HEADER = struct.Struct("<8I")                    # flags, n_def, n_in, n_tgt, id, body, target text, dtype
_FLAG_DELIMITER, _FLAG_PRETRAINING, _FLAG_TEXT = 1, 2, 4
_DTYPES = {1: np.uint16, 2: np.int32}


class CacheError(UserError):
    """A token cache that cannot be used (stale, incomplete, unreadable); the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One training instance as the cache stores it (see module docstring).

    Attributes:
      id: the instance id (MetaICL never uses an instance as its own demonstration).
      definition: tokens of the task definition part ([] for instance-level instructions).
      inputs: tokens of the 0-shot input part (definition separator + instruction body).
      targets: tokens of the target (" " + answer; the whole text for pre-training style tasks).
      needs_delimiter: the query does not end with ":", so the drawn delimiter is appended as a fixed part.
      pretraining: a source-less text (no delimiter, no demonstrations).
      body: the instruction body text and ``target_text`` the target text, from which MetaICL demonstrations
        and the k-shot input part are rendered; None for Tasks that give only tokens (always 0-shot).
    """

    id: str
    definition: np.ndarray
    inputs: np.ndarray
    targets: np.ndarray
    needs_delimiter: bool = False
    pretraining: bool = False
    body: str | None = None
    target_text: str | None = None


def encode_record(r: Record, dtype_code: int = 2) -> bytes:
    """The bytes of one record (``dtype_code`` 1 stores tokens as uint16, 2 as int32)."""
    dtype = _DTYPES[dtype_code]
    flags = (_FLAG_DELIMITER * r.needs_delimiter) | (_FLAG_PRETRAINING * r.pretraining) | (
        _FLAG_TEXT * (r.body is not None))
    texts = [r.id.encode(), (r.body or "").encode(), (r.target_text or "").encode()]
    arrays = [np.asarray(a, np.int64) for a in (r.definition, r.inputs, r.targets)]
    head = _HEADER.pack(flags, *(len(a) for a in arrays), *(len(t) for t in texts), dtype_code)
    return head + b"".join(a.astype(dtype).tobytes() for a in arrays) + b"".join(texts)


def decode_record(raw: bytes) -> Record:
    """Inverse of `encode_record` (tokens come back as int32)."""
    flags, n_def, n_in, n_tgt, n_id, n_body, n_text, code = _HEADER.unpack_from(raw)
    dtype = _DTYPES[code]
    width = np.dtype(dtype).itemsize
    off = _HEADER.size
    arrays = []
    for n in (n_def, n_in, n_tgt):
        arrays.append(np.frombuffer(raw, dtype, n, off).astype(np.int32))
        off += n * width
    texts = []
    for n in (n_id, n_body, n_text):
        texts.append(raw[off:off + n].decode())
        off += n
    has_text = bool(flags & _FLAG_TEXT)
    return Record(id=texts[0], definition=arrays[0], inputs=arrays[1], targets=arrays[2],
                  needs_delimiter=bool(flags & _FLAG_DELIMITER), pretraining=bool(flags & _FLAG_PRETRAINING),
                  body=texts[1] if has_text else None, target_text=texts[2] if has_text else None)


# ----------------------------------------------------------------------------------------------------------
# Records of a catalogued task (what the seqio Task of record yields for its "train" split).

RECORD_FEATURES = ("id", "definition", "inputs", "targets", "needs_delimiter", "pretraining", "body",
                   "target_text")


def task_records(bench: pipeline.Bench, name: str, vocab: Any, chunk: int = 4096) -> Iterator[dict]:
    """Record features of a catalogued task's training instances (`Bench.train_examples` order), tokenised
    in chunks of ``chunk`` instances (one ``encode_batch`` call each)."""
    info = bench.info(name)
    examples = bench.train_examples(name, keep=False)  # one pass: the build streams task by task
    for lo in range(0, len(examples), chunk):
        rendered = [prompts.render(info, e, delimiter=prompts.DELIMITERS[0]) for e in examples[lo:lo + chunk]]
        texts: list[str] = []
        for p in rendered:
            parts = dict(p.parts)
            texts += [parts.get(PART_DEFINITION, ""), parts.get(PART_INPUT, ""), p.target]
        ids = vocab.encode_batch(texts)
        for i, p in enumerate(rendered):
            parts = dict(p.parts)
            inputs = parts.get(PART_INPUT, "")
            joiner = prompts.DEFINITION_SEPARATOR if parts.get(PART_DEFINITION) else ""
            yield {"id": p.id, "definition": ids[3 * i], "inputs": ids[3 * i + 1], "targets": ids[3 * i + 2],
                   "needs_delimiter": PART_FIXED in parts, "pretraining": prompts.is_pretraining(info),
                   "body": inputs[len(joiner):], "target_text": p.target}


def record_from_features(features: Mapping[str, Any], index: int) -> Record:
    """A `Record` from one example of a seqio Task's "train" split: the record features of `task_records`,
    or a plain Task's token ``inputs`` / ``targets`` (trained as they are: no delimiter, no demonstrations)."""
    def text(key: str) -> str | None:
        value = features.get(key)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    for key in ("inputs", "targets"):
        value = features.get(key)
        if value is None or (np.asarray(value).size and not np.issubdtype(np.asarray(value).dtype, np.integer)):
            raise CacheError(f"seqio Task example {index}: feature {key!r} must be token ids (add "
                             "seqio.preprocessors.tokenize to the Task's preprocessors); got "
                             f"{type(value).__name__ if value is None else np.asarray(value).dtype}")
    full = "body" in features
    return Record(
        id=text("id") or str(index),
        definition=np.asarray(features.get("definition", ()), np.int64),
        inputs=np.asarray(features["inputs"], np.int64), targets=np.asarray(features["targets"], np.int64),
        needs_delimiter=bool(features.get("needs_delimiter", False)),
        pretraining=bool(features.get("pretraining", False)),
        body=text("body") if full else None, target_text=text("target_text") if full else None)


# ----------------------------------------------------------------------------------------------------------
# Fingerprints.


def _hash(*parts: Any) -> str:
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x1f")
    return h.hexdigest()


def vocab_fingerprint(vocab: Any) -> str:
    """Fingerprint of a vocabulary: its tokenizer files' contents and special ids."""
    folder = pathlib.Path(vocab.tokenizer_dir)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".txt", ".bpe"))
    return _hash([p.name for p in files], *(p.read_bytes() for p in files),
                 [vocab.bos_id, vocab.eos_id, vocab.pad_id, vocab.vocab_size])


def render_fingerprint() -> str:
    """Fingerprint of the rendering: the source of `prompts` and of this module's record layout."""
    return _hash(FORMAT_VERSION, inspect.getsource(prompts), inspect.getsource(task_records),
                 inspect.getsource(encode_record))


def _path_stamp(path: pathlib.Path | None) -> Any:
    if path is None or not path.exists():
        return None
    if path.is_file():
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    return [_path_stamp(p) for p in sorted(path.rglob("*")) if p.is_file()]


def _task_stamp(bench: pipeline.Bench, name: str, memo: dict) -> Any:
    from optiml_jax.tasks import embedded_suite, sources

    info = bench.info(name)
    if bench.data_dir is None:
        if bench.split_name == "embedded":
            return ["embedded", embedded_suite.code_fingerprint()]  # generated by code (all its modules)
        # A Bench built in memory (tests, notebooks): no file to stamp, and its examples are at hand.
        return [repr(info), _hash([repr(e) for e in bench.examples(name, keep=False)])]
    data = pathlib.Path(bench.data_dir)
    if info.benchmark == "PromptSource":
        # Which T0 file holds a PromptSource task is only known by parsing them all (seconds): stamp them all.
        if "ps" not in memo:
            memo["ps"] = _hash(_path_stamp(data / "t0_p3"), _path_stamp(data / sources.PS_TEMPLATES_DIR))
        return [repr(info), memo["ps"]]
    return [repr(info), _path_stamp(sources.task_path(info, bench.data_dir))]


def bench_stamp(bench: pipeline.Bench, memo: dict) -> str:
    """What every task's training instances depend on besides its own file: the split definition and the
    evaluation data (held-out instances and instances containing an evaluated input are left out)."""
    evals = sorted({n for names in bench.eval_tasks.values() for n in names})
    return _hash(bench.split_name, str(bench.data_dir), sorted(bench.eval_tasks.items()), sorted(bench.excluded),
                 sorted(bench.heldout_category_splits.items()), [_task_stamp(bench, n, memo) for n in evals])


def _seqio_stamp(task: Any) -> Any:
    """A user seqio Task: its name, source type and the code (file contents) of its dataset function."""
    source = task.source
    fn = getattr(source, "_dataset_fn", None)
    code = None
    try:
        code = inspect.getsource(inspect.getmodule(fn)) if fn is not None else None
    except (OSError, TypeError):
        code = None
    files = [str(p) for p in getattr(source, "_split_to_filepattern", {}).values()] if hasattr(
        source, "_split_to_filepattern") else []
    return [task.name, type(source).__name__, code, repr(getattr(source, "tfds_dataset", None)), files,
            [getattr(p, "__qualname__", repr(p)) for p in task.preprocessors]]


# ----------------------------------------------------------------------------------------------------------
# The cache on disk.


def task_file(name: str) -> str:
    """File stem of a task's shard and manifest (readable, and unique: a digest of the exact name)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:80]
    return f"{safe}-{hashlib.blake2b(name.encode(), digest_size=4).hexdigest()}"


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    """A cached task (its per-task manifest)."""

    name: str
    count: int
    shard: pathlib.Path
    meta: Mapping[str, Any]


def default_cache_dir(bench: pipeline.Bench, mixture: str, vocab_fp: str) -> pathlib.Path:
    """Where training keeps the cache it builds by itself: ``$OPTIML_CACHE_DIR`` (default
    ``~/.cache/optiml_jax/token_cache``) / split-mixture-digest of (data dir, split, mixture, vocabulary)."""
    root = pathlib.Path(os.environ.get("OPTIML_CACHE_DIR") or pathlib.Path.home() / ".cache" / "optiml_jax"
                        / "token_cache").expanduser()
    key = _hash(str(bench.data_dir), bench.split_name, mixture, vocab_fp)[:12]
    return root / f"{bench.split_name}-{mixture}-{key}"


def _read_json(path: pathlib.Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: pathlib.Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)   # atomic: a reader never sees half a manifest


@dataclasses.dataclass
class Plan:
    """What a mixture's cache must hold: per task, its expected fingerprints and how to read its records."""

    bench: pipeline.Bench
    mixture: str
    vocab: Any
    tasks: tuple[str, ...]          # catalogued tasks of the mixture, then the user seqio Tasks
    user_tasks: tuple[str, ...]
    data_fp: dict[str, str]
    vocab_fp: str
    render_fp: str

    def expected(self, name: str) -> dict:
        return {"format": FORMAT_VERSION, "task": name, "data_fp": self.data_fp[name], "vocab_fp": self.vocab_fp,
                "render_fp": self.render_fp}


def plan(bench: pipeline.Bench, mixture: str, vocab: Any, user_tasks: Sequence[str] = ()) -> Plan:
    """The `Plan` of a mixture (cheap: file stamps only, no example is loaded)."""
    names = bench.training_task_names(mixture)
    memo: dict = {}
    bstamp = bench_stamp(bench, memo)
    data_fp = {n: _hash(bstamp, _task_stamp(bench, n, memo)) for n in names}
    if user_tasks:
        import seqio

        for n in user_tasks:
            try:
                task = seqio.get_mixture_or_task(n)
            except ValueError:
                raise CacheError(f"mixture_config.extra_tasks: no seqio Task named {n!r} is registered; import "
                                 "the module that registers it from a gin file (`import my_tasks`)") from None
            for key in ("inputs", "targets"):
                feature = task.output_features.get(key)
                if feature is None or feature.vocabulary != vocab:
                    raise CacheError(
                        f"seqio Task {n!r}: its {key!r} feature "
                        + ("is missing" if feature is None else f"is tokenised with {feature.vocabulary!r}")
                        + f" but training uses {vocab!r}; give the Task the training vocabulary")
            data_fp[n] = _hash(_seqio_stamp(task))
    return Plan(bench=bench, mixture=mixture, vocab=vocab, tasks=tuple(names) + tuple(user_tasks),
                user_tasks=tuple(user_tasks), data_fp=data_fp, vocab_fp=vocab_fingerprint(vocab),
                render_fp=render_fingerprint())


def why_stale(meta: Mapping[str, Any] | None, want: Mapping[str, Any]) -> str | None:
    """Why a task's cached entry does not match what the plan expects (None: it matches)."""
    if meta is None:
        return "not built"
    for key, what in (("format", "cache format"), ("data_fp", "its data"), ("render_fp", "the rendering code"),
                      ("vocab_fp", "the vocabulary")):
        if meta.get(key) != want[key]:
            return f"{what} changed since it was cached"
    return None


def status(cache_dir: pathlib.Path, p: Plan) -> dict[str, str | None]:
    """Task -> why its entry is stale or missing (None: valid)."""
    folder = pathlib.Path(cache_dir) / TASKS_DIR
    return {n: why_stale(_read_json(folder / f"{task_file(n)}.json"), p.expected(n)) for n in p.tasks}


def host_tasks(names: Sequence[str], weights: Sequence[int], host_index: int, num_hosts: int) -> list[str]:
    """This host's share of a build: tasks by decreasing weight to the least loaded host (deterministic, so
    every host computes the same assignment without talking to the others)."""
    if num_hosts < 1 or not 0 <= host_index < num_hosts:
        raise UserError(f"need 0 <= host_index < num_hosts, got {host_index}/{num_hosts}")
    load = [0] * num_hosts
    mine = []
    for _, name in sorted(zip(weights, names), key=lambda wn: (-wn[0], wn[1])):
        host = min(range(num_hosts), key=lambda h: (load[h], h))
        load[host] += max(int(_), 1)
        if host == host_index:
            mine.append(name)
    return sorted(mine)


def _records_of(name: str, p: Plan) -> Iterator[Record]:
    """Reads a task's seqio Task of record ("train" split) once, in order."""
    import seqio

    if name not in p.user_tasks:
        # A catalogued task's seqio Task of record is `registry.records_dataset(task_records(...))`: the same
        # records are read here without the tf.data round trip, whose set-up (dataset ops, autograph of the
        # preprocessors) costs ~1.5 s per task (measured): hours at benchmark scale.
        # tests/test_cache.py checks that the cache holds what the seqio Task yields.
        for i, features in enumerate(task_records(p.bench, name, p.vocab)):
            yield record_from_features(features, i)
        return
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(sequence_length=None, split="train", shuffle=False, num_epochs=1, use_cached=False)
    index = 0
    # One tf.data step per _READ_BATCH examples: per-example iteration costs ~1.5 ms of eager overhead.
    for batch in ds.ragged_batch(_READ_BATCH):
        columns = {k: _rows(v) for k, v in batch.items()}
        for i in range(len(next(iter(columns.values())))):
            yield record_from_features({k: col[i] for k, col in columns.items()}, index)
            index += 1


_READ_BATCH = 1024


def _rows(value: Any) -> list:
    """A batched feature as one numpy value per example (ragged token lists split at their row limits)."""
    import tensorflow as tf

    if isinstance(value, tf.RaggedTensor):
        flat, splits = value.flat_values.numpy(), value.row_splits.numpy()
        return [flat[splits[i]:splits[i + 1]] for i in range(len(splits) - 1)]
    return list(value.numpy())


def build_task(cache_dir: pathlib.Path, name: str, p: Plan,
               records: Callable[[str, Plan], Iterable[Record]] = _records_of) -> dict:
    """Writes one task's shard, then its manifest (the order makes a killed build resumable); returns it."""
    from array_record.python.array_record_module import ArrayRecordWriter

    folder = pathlib.Path(cache_dir) / TASKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stem = task_file(name)
    tmp = folder / f".{stem}.{os.getpid()}{SHARD_SUFFIX}.tmp"
    code = 1 if p.vocab.vocab_size <= np.iinfo(np.uint16).max else 2
    writer = ArrayRecordWriter(str(tmp), _WRITER_OPTIONS)
    content = hashlib.blake2b(digest_size=12)
    count, src_len, tgt_len, longest = 0, 0, 0, 0
    start = time.perf_counter()
    try:
        for rec in records(name, p):
            raw = encode_record(rec, code)
            writer.write(raw)
            content.update(raw)
            count += 1
            n_src = len(rec.definition) + len(rec.inputs)
            src_len += n_src
            tgt_len += len(rec.targets)
            longest = max(longest, n_src + len(rec.targets))
    finally:
        writer.close()
    os.replace(tmp, folder / f"{stem}{SHARD_SUFFIX}")
    meta = {**p.expected(name), "count": count, "content_fp": content.hexdigest(),
            "tokens": {"source": src_len, "target": tgt_len, "mean": (src_len + tgt_len) / max(count, 1),
                       "max": longest},
            "seconds": round(time.perf_counter() - start, 3), "file": f"{stem}{SHARD_SUFFIX}"}
    _write_json(folder / f"{stem}.json", meta)
    return meta


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="task", desc="token cache", dynamic_ncols=True)


def build(cache_dir: str | os.PathLike, p: Plan, *, workers: int = 1, host_index: int = 0, num_hosts: int = 1,
          worker_setup: Mapping[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Builds this host's share of the stale or missing tasks of ``p`` (one process per worker when
    ``workers > 1``; ``worker_setup`` = {"gin_files", "gin_bindings", "data_dir", "split"} to rebuild the same
    bench and registry in each) and, once every task is valid, the top manifest. Returns a summary."""
    cache_dir = pathlib.Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    todo_all = [n for n, why in status(cache_dir, p).items() if why is not None]
    weights = [p.bench.catalogue[n].num_instances if n in p.bench.catalogue else 1 for n in todo_all]
    todo = host_tasks(todo_all, weights, host_index, num_hosts)
    bar = _progress(len(todo), progress)
    built: dict[str, dict] = {}
    start = time.perf_counter()
    if workers > 1 and len(todo) > 1:
        import concurrent.futures
        import multiprocessing

        setup = dict(worker_setup or {})
        setup["vocab"] = p.vocab
        setup["mixture"] = p.mixture
        setup["user_tasks"] = list(p.user_tasks)
        with concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                initargs=(setup,)) as pool:
            futures = {pool.submit(_worker_build, str(cache_dir), n): n for n in todo}
            for fut in concurrent.futures.as_completed(futures):
                built[futures[fut]] = fut.result()
                if bar is not None:
                    bar.update(1)
    else:
        for n in todo:
            built[n] = build_task(cache_dir, n, p)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    remaining = [n for n, why in status(cache_dir, p).items() if why is not None]
    if not remaining:
        write_manifest(cache_dir, p)
    return {"built": len(built), "examples": sum(m["count"] for m in built.values()),
            "seconds": round(time.perf_counter() - start, 1), "remaining": len(remaining),
            "tasks": len(p.tasks)}


def write_manifest(cache_dir: pathlib.Path, p: Plan) -> None:
    """The top manifest of a complete cache (task list, totals, fingerprints)."""
    folder = pathlib.Path(cache_dir) / TASKS_DIR
    metas = [_read_json(folder / f"{task_file(n)}.json") or {} for n in p.tasks]
    _write_json(pathlib.Path(cache_dir) / MANIFEST, {
        "format": FORMAT_VERSION, "mixture": p.mixture, "split": p.bench.split_name,
        "data_dir": str(p.bench.data_dir), "vocab_fp": p.vocab_fp, "render_fp": p.render_fp,
        "tasks": list(p.tasks), "user_tasks": list(p.user_tasks),
        "examples": sum(m.get("count", 0) for m in metas),
        "tokens": sum(m.get("tokens", {}).get("source", 0) + m.get("tokens", {}).get("target", 0) for m in metas)})


_WORKER: dict[str, Any] = {}


def _worker_init(setup: Mapping[str, Any]) -> None:
    # A spawned process starts empty: rebuild the same gin configuration, bench and registry.
    from optiml_jax.tasks import configurables  # a spawned worker's own gin set-up

    configurables.import_configurables()
    configurables.parse_task_gin(setup.get("gin_files") or [], setup.get("gin_bindings") or [])
    bench = pipeline.get_bench(setup.get("data_dir"), setup.get("split"))
    _WORKER["plan"] = plan(bench, setup["mixture"], setup["vocab"], setup.get("user_tasks") or ())


def _worker_build(cache_dir: str, name: str) -> dict:
    return build_task(pathlib.Path(cache_dir), name, _WORKER["plan"])


def entries(cache_dir: str | os.PathLike, p: Plan) -> list[TaskEntry]:
    """The valid entries of every task of ``p``; raises `CacheError` naming the first stale or missing one."""
    cache_dir = pathlib.Path(cache_dir)
    folder = cache_dir / TASKS_DIR
    out = []
    for n in p.tasks:
        meta = _read_json(folder / f"{task_file(n)}.json")
        why = why_stale(meta, p.expected(n))
        shard = folder / f"{task_file(n)}{SHARD_SUFFIX}"
        if why is None and not shard.is_file():
            why = "its shard file is missing"
        if why is not None:
            raise CacheError(
                f"token cache {cache_dir}: task {n!r} {why if why != 'not built' else 'is not built'}; rebuild "
                f"it with `python -m optiml_jax.tasks cache --mixture {p.mixture} --split {p.bench.split_name}"
                + (f" --data_dir {p.bench.data_dir}" if p.bench.data_dir else "") + f" --out {cache_dir}` "
                "(or leave train.cache_dir unset: training then builds its own cache)")
        out.append(TaskEntry(name=n, count=int(meta["count"]), shard=shard, meta=meta))
    return out


def ensure(p: Plan, cache_dir: str | os.PathLike | None = None, *, rebuild: bool | None = None,
           host_index: int = 0, num_hosts: int = 1, barrier: Callable[[], None] | None = None,
           progress: bool = False) -> tuple[pathlib.Path, list[TaskEntry]]:
    """Finds the cache of a plan, building what is stale or missing; returns (folder, entries).

    ``cache_dir`` None: the `default_cache_dir`, built and refreshed as needed. In an explicit folder, tasks
    not built yet are built (a killed build, a task added to the mixture), but stale ones are rebuilt only when
    ``rebuild`` (default: refused with a `CacheError` saying how to rebuild them, since someone built that cache
    on purpose). With several hosts each builds its share (`host_tasks`), then ``barrier`` waits for all of
    them (the folder must be on storage every host sees).
    """
    folder = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir(p.bench, p.mixture,
                                                                                       p.vocab_fp)
    if rebuild is None:
        rebuild = cache_dir is None
    stale = {n: why for n, why in status(folder, p).items() if why is not None}
    changed = {n: why for n, why in stale.items() if why != "not built"}
    if changed and not rebuild:
        entries(folder, p)   # raises, naming the first changed task and the command that rebuilds it
    if stale:
        first = next(iter(stale.items()))
        logger.warning("token cache %s: building %d of %d tasks (e.g. %s: %s)", folder, len(stale), len(p.tasks),
                       *first)
        summary = build(folder, p, host_index=host_index, num_hosts=num_hosts, progress=progress)
        logger.info("token cache %s: %s", folder, summary)
    if barrier is not None:
        barrier()
    found = entries(folder, p)
    if not (folder / MANIFEST).is_file():
        write_manifest(folder, p)
    return folder, found
