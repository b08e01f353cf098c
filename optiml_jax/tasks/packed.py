"""The packed, resumable training stream shared by both training inputs (`pipeline.TrainInput`, in memory, and
`loader.CachedTrainInput`, over the token cache).

A subclass says what stream position ``k`` holds (`PackedStream._encode`: a `feature_converters.Segment`, or a
`Skipped` example, as a pure function of ``(seed, shard, k)``) and how to read the stream forward
(`PackedStream._fresh`); this class packs it with the bounded look-ahead first-fit of `feature_converters`,
counts what was trained on per benchmark, and saves / restores the position. Host ``s`` of ``n`` reads global
positions ``k * n + s``, so the whole state is the next local position ``k`` not yet drawn plus the local
positions pending in the packing window (a few ints): any two subclasses that encode the same segments give
the same batches and exchange states.
"""
from __future__ import annotations

import abc
import collections
import hashlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from optiml_jax import feature_converters as fc
from optiml_jax.tasks import mixtures as mx

# 2: adds the look-ahead window ("pending", "packing_window"). A version-1 state (in-order packing: nothing
# pending) still restores; the packing from there on is the windowed one.
STATE_VERSION = 2
TRUNCATION_SAMPLE = 1024   # stream positions fitted at start for the truncation log line


def digest(names: Sequence[str]) -> str:
    """Short stable digest of a list of task names (stored in the state: another task list is refused)."""
    return hashlib.blake2b("\n".join(names).encode(), digest_size=8).hexdigest()


def format_truncation(counts: Mapping[str, Mapping[str, int]]) -> str:
    """One line per `PackedStream.truncation_counts` result: per benchmark, the share of its drawn examples
    truncated and skipped (with reasons)."""
    out = []
    for bench_name, c in counts.items():
        drawn = c.get("examples", 0) + sum(v for k, v in c.items() if k.startswith("skipped_"))
        if not drawn:
            continue
        bits = [f"{k.replace('_', ' ')} {100 * v / drawn:.0f}%" for k, v in c.items() if k != "examples" and v]
        out.append(f"{bench_name} ({drawn}): " + (", ".join(bits) if bits else "all fit"))
    return "; ".join(out)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class PackedStream(abc.ABC):
    """Iterator of packed numpy batches over an index-addressed stream of segments (see module docstring).

    Subclasses call `_setup` from their constructor and implement `_encode(positions)`; `_fresh` /
    `_advance` default to reading ahead with `_encode` in chunks of about one batch.
    """

    name = "PackedStream"

    def _setup(self, *, mixture: str, split_name: str, vocab: Any, batch_size: int, seq_len: int, seed: int,
               shard_index: int, num_shards: int, config: mx.MixtureConfig, rates: mx.MixtureRates,
               task_benchmark: Mapping[str, str], packing_window: int) -> None:
        if batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be >= 1, got {batch_size}")
        if seq_len < 2:
            raise ValueError(f"{self.name}: seq_len must be >= 2, got {seq_len}")
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise ValueError(f"{self.name}: need 0 <= shard_index < num_shards, got {shard_index}/{num_shards}")
        self.packing_window = fc.check_window(packing_window, f"{self.name}: packing_window")
        self.mixture, self.split_name, self.vocab = mixture, split_name, vocab
        self.batch_size, self.seq_len = int(batch_size), int(seq_len)
        self.seed, self.shard_index, self.num_shards = int(seed), int(shard_index), int(num_shards)
        self.config, self.rates = config, rates
        self.task_names: tuple[str, ...] = rates.task_names
        self.task_benchmark: dict[str, str] = {n: task_benchmark[n] for n in self.task_names}
        self._tag_benchmark = [self.task_benchmark[n] for n in self.task_names]
        self.sampler = mx.MixtureSampler(rates.rates, seed=self.seed)
        self.position = 0                      # next local stream index not yet drawn into the packing window
        self._buffer: list[fc.Segment | fc.Skipped] = []   # encoded ahead: positions position, position + 1, ...
        self._window: list[tuple[int, fc.Segment]] = []   # (local position, segment) pending, in stream order
        self._avg_len = 64.0
        self._counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    # -- the stream a subclass defines ------------------------------------------------------------------

    @abc.abstractmethod
    def _encode(self, positions: Sequence[int]) -> list[fc.Segment | fc.Skipped]:
        """The encoded segments (or skips) of these local stream positions, in order."""

    def global_index(self, k: int) -> int:
        """Global stream position of this host's local position ``k``."""
        return k * self.num_shards + self.shard_index

    def _note_lengths(self, items: Sequence[fc.Segment | fc.Skipped]) -> None:
        lengths = [x.length for x in items if isinstance(x, fc.Segment)]
        if lengths:
            self._avg_len = 0.5 * self._avg_len + 0.5 * float(np.mean(lengths))

    def _extend(self, count: int) -> None:
        start = self.position + len(self._buffer)
        self._buffer.extend(self._encode(range(start, start + count)))

    def _fresh(self) -> Iterator[fc.Segment | fc.Skipped]:
        """Segments (and skips) from `position` on, encoded ahead in chunks sized to about one batch."""
        i = 0
        while True:
            if i >= len(self._buffer):
                want = int(self.batch_size * self.seq_len / max(self._avg_len, 1.0) * 1.1) + 4
                self._extend(max(16, want - (len(self._buffer) - i)))
            yield self._buffer[i]
            i += 1

    def _advance(self, consumed: int) -> None:
        """`consumed` fresh positions were drawn into the packer."""
        del self._buffer[:consumed]
        self.position += consumed

    def _reset_stream(self) -> None:
        """The position was set from outside (`restore`): drop what was read ahead."""
        self._buffer = []

    def iter_examples(self, start: int = 0, chunk: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """Unpacked stream ``(source_ids, target_ids, task_index)`` from local position ``start`` (for seqio),
        already fitted to ``seq_len`` (skipped examples left out); packing it with `feature_converters` gives
        exactly this input's batches. Independent of `position` and of the counters."""
        k = int(start)
        while True:
            for seg in self._encode(range(k, k + chunk)):
                if isinstance(seg, fc.Skipped):
                    continue
                yield seg.tokens[1:seg.num_prefix], seg.tokens[seg.num_prefix:-1], seg.tag
            k += chunk

    # -- counters -----------------------------------------------------------------------------------------

    def _count(self, item: fc.Segment | fc.Skipped, counts=None) -> None:
        c = (self._counts if counts is None else counts)[self._tag_benchmark[item.tag]]
        if isinstance(item, fc.Skipped):
            c["skipped_" + item.reason] += 1
        else:
            c["examples"] += 1
            if item.truncated != fc.NOT_TRUNCATED:
                c["truncated_" + fc.TRUNCATION_NAMES[item.truncated]] += 1

    def truncation_counts(self) -> dict[str, dict[str, int]]:
        """Per benchmark, since this object was built: ``examples`` packed into the batches returned so far,
        how many of them were truncated (``truncated_demonstrations``: demonstrations dropped;
        ``truncated_input``: instance input cut in its middle; ``truncated_text``: source-less text cut), and
        the stream positions skipped (``skipped_target`` / ``skipped_definition`` / ``skipped_input``, see
        `feature_converters.fit_segment`). JSON-serialisable, for metrics.jsonl."""
        return {b: dict(sorted(c.items())) for b, c in sorted(self._counts.items())}

    def estimate_truncation(self, num_examples: int = 1024) -> dict[str, dict[str, int]]:
        """`truncation_counts` of the first ``num_examples`` stream positions, without moving the stream (for
        the log line at start); ``examples`` here counts every fitted example, packed or not."""
        counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for item in self._encode(range(num_examples)):
            self._count(item, counts)
        return {b: dict(sorted(c.items())) for b, c in sorted(counts.items())}

    # -- batches ------------------------------------------------------------------------------------------

    def __iter__(self) -> "PackedStream":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        # The packer is restarted on (pending window, fresh stream) for every batch: its state between rows
        # is exactly its window, so this continues the packing of the previous batch without a seam.
        window = self._window
        taken: list[tuple[int, fc.Segment]] = list(window)   # packer ordinal -> (local position, segment)
        consumed = 0                                           # fresh stream positions drawn, skips included
        skipped: list[fc.Skipped] = []
        fresh = self._fresh()

        def stream() -> Iterator[fc.Segment]:
            nonlocal consumed
            for _, seg in window:
                yield seg
            for item in fresh:
                consumed += 1
                if isinstance(item, fc.Skipped):
                    skipped.append(item)   # never trained on; counted below
                    continue
                taken.append((self.position + consumed - 1, item))
                yield item

        batch, plans = fc.pack_segments(stream(), max_length=self.seq_len, num_rows=self.batch_size,
                                        pad_id=self.vocab.pad_id, with_tags=True, window=self.packing_window)
        for plan in plans:
            for ordinal in plan.members:
                self._count(taken[ordinal][1])
        for item in skipped:
            self._count(item)
        self._window = [taken[o] for o in plans[-1].pending] if plans else []
        self._advance(consumed)
        return batch

    # -- checkpointing -----------------------------------------------------------------------------------

    def state(self) -> dict:
        """Small JSON-serialisable position of this host's stream: the next local position not yet drawn
        (``position``) and the local positions pending in the packing window (``pending``, at most
        ``packing_window`` ints)."""
        return {
            "version": STATE_VERSION, "mixture": self.mixture, "split": self.split_name,
            "seed": self.seed, "shard_index": self.shard_index, "num_shards": self.num_shards,
            "position": self.position, "pending": [k for k, _ in self._window],
            "packing_window": self.packing_window, "tasks_digest": digest(self.task_names),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Resumes at a `state()`; refuses a state of another stream (mismatching field named)."""
        name = self.name
        if not isinstance(state, Mapping) or "position" not in state:
            raise ValueError(f"{name}.restore: not a {name} state: {state!r}")
        version = state.get("version")
        if version not in (1, STATE_VERSION):
            raise ValueError(f"{name}.restore: state version {version!r} is not 1 or {STATE_VERSION}")
        mine = self.state()
        if state.get("num_shards") != mine["num_shards"]:
            raise ValueError(
                f"{name}.restore: the state was written by a run reading the stream in {state.get('num_shards')!r} "
                f"host shard(s) and this one has {mine['num_shards']}: each host's position is in its own shard, "
                f"so resume with {state.get('num_shards')!r} host(s) (the device mesh within them may change)")
        keys = ["mixture", "split", "seed", "shard_index", "tasks_digest"]
        if version == STATE_VERSION:
            keys.append("packing_window")
        for key in keys:
            if state.get(key) != mine[key]:
                raise ValueError(f"{name}.restore: state field {key!r} is {state.get(key)!r} but this input "
                                 f"has {mine[key]!r} (different data, seed, sharding or packing window)")
        position = state["position"]
        if not _is_int(position) or position < 0:
            raise ValueError(f"{name}.restore: state field 'position' must be an int >= 0, got {position!r}")
        # Version 1 packed in order, so nothing was pending.
        pending = state.get("pending") if version == STATE_VERSION else []
        valid = (isinstance(pending, Sequence) and not isinstance(pending, str)
                 and all(_is_int(k) for k in pending) and list(pending) == sorted(set(pending))
                 and all(0 <= k < position for k in pending) and len(pending) <= self.packing_window)
        if not valid:
            raise ValueError(
                f"{name}.restore: state field 'pending' must be at most {self.packing_window} increasing ints "
                f"in [0, position={position}), got {pending!r}")
        pending = [int(k) for k in pending]
        self.position = int(position)
        self._reset_stream()
        self._window = list(zip(pending, self._encode(pending)))
