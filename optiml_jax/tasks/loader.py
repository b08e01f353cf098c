"""The training input over the token cache: grain random-access reads, the project's sampler and packer.

`CachedTrainInput` is `pipeline.TrainInput`'s stream (same mixture rates, same draws, same rendering, same
packing: the batches are equal token for token, so their states are interchangeable) read from the
`optiml_jax.tasks.cache` instead of from every example held in memory:

- one ``grain.sources.ArrayRecordDataSource`` over every task's shard (a record is addressed by the task's
  offset plus its index), so a host opens files, not examples: memory does not grow with the bench;
- stream position ``k`` of host ``s`` of ``n`` is global draw ``k * n + s`` of `mixtures.MixtureSampler`
  (per-host index sharding; the hosts' streams are disjoint and interleave into the single-host one);
- ``grain.MapDataset.range(k0, ...).map(encode)`` turns positions into fitted segments on ``num_threads``
  threads with a ``prefetch`` buffer ahead of the packer (reads and the tokeniser release the GIL);
- the first-fit packer of `feature_converters` (through `packed.PackedStream`) packs them. grain's own
  ``FirstFitPackIterDataset`` is not used: it closes all its bins as soon as one segment fits none of them
  (rows are emitted a bin-batch at a time), while ours keeps a sliding window of the next 16 segments and
  fills each row from it, and it knows nothing of the per-benchmark counts of skipped and truncated examples
  the training log reports; our packer's state is the same few ints as before (position + pending window);
- the state (`state()` / `restore()`) is saved in the orbax checkpoint by the trainer like any input state.

The per-draw choices are `compose`: the delimiter part and, under MetaICL, the demonstrations (other records
of the task, rendered from their texts and tokenised like `pipeline.TrainInput` tokenises its prompt parts).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Sequence

import numpy as np

from optiml_jax import feature_converters as fc
from optiml_jax.tasks import cache as cache_lib
from optiml_jax.tasks import mixtures as mx
from optiml_jax.tasks import pipeline, prompts
from optiml_jax.tasks.packed import PackedStream
from optiml_jax.tasks.schema import PART_DEFINITION, PART_DEMONSTRATION, PART_FIXED, PART_INPUT

logger = logging.getLogger(__name__)

DEFAULT_THREADS = 2
DEFAULT_PREFETCH = 256   # segments read ahead of the packer


def _demo_text(rec: cache_lib.Record, delimiter: str) -> str:
    # prompts._demonstration: the body, the delimiter unless it ends with ":", the target.
    return rec.body + (delimiter if rec.needs_delimiter else "") + rec.target_text


def compose(rec: cache_lib.Record, delimiter_index: int, demos: Sequence[cache_lib.Record], separator: str,
            delimiter_tokens: Sequence[np.ndarray]) -> tuple[list[tuple[str, np.ndarray | None]], list[str]]:
    """The (role, tokens) parts of one draw's source, and the texts still to tokenise (their parts hold None,
    in order). A 0-shot draw is all tokens from the cache (``delimiter_tokens``: each of `prompts.DELIMITERS`
    tokenised alone, as the fixed part it is); demonstrations are rendered from their texts exactly as
    `prompts.render` joins them (the definition separator or ``separator`` before each, ``separator`` before
    the query)."""
    parts: list[tuple[str, np.ndarray | None]] = []
    texts: list[str] = []
    if rec.pretraining:
        return parts, texts
    has_definition = len(rec.definition) > 0
    if has_definition:
        parts.append((PART_DEFINITION, rec.definition))
    if demos:
        delimiter = prompts.DELIMITERS[delimiter_index]
        joiners = [prompts.DEFINITION_SEPARATOR if has_definition else ""] + [separator] * len(demos)
        for joiner, demo in zip(joiners, demos):
            parts.append((PART_DEMONSTRATION, None))
            texts.append(joiner + _demo_text(demo, delimiter))
        parts.append((PART_INPUT, None))
        texts.append(separator + rec.body)
    else:
        parts.append((PART_INPUT, rec.inputs))
    if rec.needs_delimiter:
        parts.append((PART_FIXED, delimiter_tokens[delimiter_index]))
    return parts, texts


class CachedTrainInput(PackedStream):
    """Packed batches of a training mixture read from the token cache (see module docstring).

    Same arguments and behaviour as `pipeline.TrainInput`, plus ``cache_dir`` (None: the default folder,
    built or refreshed by itself; a folder: used as it is, refused when stale unless ``rebuild``),
    ``num_threads`` / ``prefetch`` (grain read threads and segments buffered ahead), ``host_index`` /
    ``num_hosts`` (which share of a missing cache this process builds; None: all of it) and ``barrier`` (waits
    for every host's share). ``cache_dir_used`` is the folder read.
    """

    name = "CachedTrainInput"

    def __init__(self, mixture: str = pipeline.TRAIN_MIXTURE, *, vocab: Any, batch_size: int, seq_len: int,
                 seed: int = 0, shard_index: int = 0, num_shards: int = 1, data_dir: str | None = None,
                 split: str | None = None, mixture_config: mx.MixtureConfig | None = None,
                 bench: pipeline.Bench | None = None, packing_window: int = fc.DEFAULT_PACKING_WINDOW,
                 log_truncation: bool = False, cache_dir: str | os.PathLike | None = None,
                 rebuild: bool | None = None, num_threads: int = DEFAULT_THREADS, prefetch: int = DEFAULT_PREFETCH,
                 host_index: int | None = None, num_hosts: int | None = None, barrier=None,
                 progress: bool = False):
        import grain

        config = mixture_config or mx.MixtureConfig()
        self.bench = bench or pipeline.get_bench(data_dir, split)
        plan = cache_lib.plan(self.bench, mixture, vocab, tuple(sorted(config.extra_tasks)))
        self.cache_dir_used, found = cache_lib.ensure(
            plan, cache_dir, rebuild=rebuild, host_index=host_index or 0, num_hosts=num_hosts or 1, barrier=barrier,
            progress=progress)
        counts = {e.name: e.count for e in found}
        rates, self.skipped_tasks = pipeline.training_rates(self.bench, mixture, config, counts=counts)
        user = {n: counts[n] for n in config.extra_tasks}
        empty = sorted(n for n, c in user.items() if c == 0)
        if empty:
            raise cache_lib.CacheError(f"mixture_config.extra_tasks: seqio Task(s) {empty} have no 'train' examples")
        rates = mx.add_extra_tasks(rates, config.extra_tasks, user)
        benchmarks = {n: (self.bench.catalogue[n].benchmark if n in self.bench.catalogue else mx.USER_BENCHMARK)
                      for n in rates.task_names}
        self._setup(mixture=mixture, split_name=self.bench.split_name, vocab=vocab, batch_size=batch_size,
                    seq_len=seq_len, seed=seed, shard_index=shard_index, num_shards=num_shards, config=config,
                    rates=rates, task_benchmark=benchmarks, packing_window=packing_window)
        by_name = {e.name: e for e in found}
        entries = [by_name[n] for n in self.task_names]
        self._offsets = np.cumsum([0] + [e.count for e in entries[:-1]]).astype(np.int64)
        # max_instances_per_task: the same seeded subset `pipeline.train_pool` takes, as record indices.
        self._keep = [None if n in config.extra_tasks else pipeline.subsample_indices(
            e.count, config.max_instances_per_task, 0, "train/" + n) for n, e in zip(self.task_names, entries)]
        self._pool = np.asarray([e.count if k is None else len(k) for e, k in zip(entries, self._keep)], np.int64)
        self._source = grain.sources.ArrayRecordDataSource([str(e.shard) for e in entries])
        self._delimiters = [np.asarray(t, np.int32) for t in vocab.encode_batch(list(prompts.DELIMITERS))]
        self._threads, self._prefetch = int(num_threads), int(prefetch)
        self._iter = None
        self._iter_start = 0
        self._grain = grain
        if log_truncation:
            pipeline.log_truncation_estimate(self)

    # -- one stream position -----------------------------------------------------------------------------

    def _record(self, t: int, i: int) -> cache_lib.Record:
        keep = self._keep[t]
        return cache_lib.decode_record(self._source[int(self._offsets[t] + (i if keep is None else keep[i]))])

    def _draw(self, k: int) -> tuple[int, cache_lib.Record, int, list[cache_lib.Record]]:
        t, ex_key, aux = self.sampler.draw(self.global_index(k))
        n = int(self._pool[t])
        e = ex_key % n
        rec = self._record(t, e)
        shots = mx.sample_num_shots(self.config, aux)
        demos: list[cache_lib.Record] = []
        # prompts.render_train: a permutation prefix of the pool, the drawn instance itself passed over.
        if shots > 0 and n > 1 and not rec.pretraining and rec.body is not None:
            rng = np.random.Generator(np.random.PCG64(int(aux) & 0x7FFFFFFFFFFFFFFF))
            for i in rng.permutation(n)[:shots + 1]:
                cand = rec if int(i) == e else self._record(t, int(i))
                if cand.id != rec.id and len(demos) < shots:
                    demos.append(cand)
        return t, rec, prompts.train_delimiter_index(aux), demos

    def _encode(self, positions: Sequence[int]) -> list[fc.Segment | fc.Skipped]:
        drawn = [self._draw(k) for k in positions]
        composed = []
        texts: list[str] = []
        for t, rec, d, demos in drawn:
            parts, need = compose(rec, d, demos, self.config.metaicl_separator, self._delimiters)
            composed.append((t, rec, parts, len(texts)))
            texts += need
        ids = self.vocab.encode_batch(texts) if texts else []
        out: list[fc.Segment | fc.Skipped] = []
        for t, rec, parts, at in composed:
            filled = []
            for role, tokens in parts:
                if tokens is None:
                    tokens, at = np.asarray(ids[at], np.int32), at + 1
                filled.append((role, tokens))
            out.append(fc.fit_segment(filled, rec.targets, bos_id=self.vocab.bos_id, eos_id=self.vocab.eos_id,
                                      max_length=self.seq_len, tag=t))
        self._note_lengths(out)
        return out

    # -- reading ahead with grain ------------------------------------------------------------------------

    def _one(self, k: int) -> fc.Segment | fc.Skipped:
        return self._encode([k])[0]

    def _fresh(self):
        if self._iter is None or self._iter_start != self.position:
            ds = self._grain.MapDataset.range(self.position, sys.maxsize).map(self._one)
            options = self._grain.ReadOptions(num_threads=self._threads, prefetch_buffer_size=self._prefetch)
            self._iter = iter(ds.to_iter_dataset(options))
            self._iter_start = self.position
        while True:
            yield next(self._iter)

    def _advance(self, consumed: int) -> None:
        self.position += consumed
        self._iter_start += consumed

    def _reset_stream(self) -> None:
        self._iter = None
