"""The training input feed: host batches produced and put on the devices ahead of the step, in a background thread.

`InputFeed` wraps any iterator of host batches that has the pipeline contract's ``state()`` (`TrainInput`, the
grain loader). A producer thread draws a batch, records the input's ``state()`` right after it (the position
*after* that batch), optionally a snapshot of host-side facts (per-benchmark counts, truncation counters), puts
the batch on the devices (``put``, e.g. `Trainer.global_batch`, which calls
`jax.make_array_from_process_local_data` with the batch's `NamedSharding`) and queues the lot, at most ``depth``
batches ahead. The training loop then never waits for packing or the host-to-device copy while the device is
busy with the previous step.

Resume stays exact: every `FedBatch` carries the input state that follows *it*, so a checkpoint written after
step N stores the state after the N-th consumed batch, never the producer's position; batches prefetched but not
consumed are dropped on stop and produced again from that state on resume.

``depth=0`` produces in the caller's thread at `next` (the loop as it was before the feed, for comparisons).
An exception in the producer is re-raised in the consumer (same object, so its type and traceback survive) at
the `next` call that would have returned the failed batch; `close` stops the producer and joins it, also when it
is blocked on a full queue.

Why not grain's `grain.experimental.device_put`: it needs a grain ``IterDataset`` (the contract here is any
iterator with ``state()``, `TrainInput` included), places with `jax.device_put` (not a multi-process global array
from process-local rows), and has no place for the per-batch host facts the loop logs.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Self

logger = logging.getLogger(__name__)

_POLL_S = 0.05       # how often a blocked producer or consumer checks for a stop or a dead peer
_JOIN_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class FedBatch:
    """One batch as the step consumes it.

    Attributes:
      index: 0-based count of batches drawn from the input by this feed.
      host: the numpy batch as the input yielded it (``decoder_task_ids`` etc. stay on the host).
      device: ``put(host)``: the global, sharded arrays the step takes.
      input_state: the input's ``state()`` right after this batch: where to resume once this batch is trained on.
      snapshot: ``snapshot(host)`` taken right after this batch was drawn (None without a snapshot function).
      wait_s: how long the consumer waited for this batch in `InputFeed.__next__` (with depth 0: the time to
        produce and put it).
    """

    index: int
    host: Mapping[str, Any]
    device: Any
    input_state: Any
    snapshot: Any
    wait_s: float


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class InputFeed(Iterator[FedBatch]):
    """Iterator of `FedBatch` over ``data``, produced ``depth`` batches ahead in a daemon thread.

    Args:
      data: an iterator of host batches with ``state()`` (the pipeline contract). It must not be touched by
        anyone else while the feed is open.
      put: host batch -> device arrays, run in the producer thread.
      depth: batches queued ahead of the consumer (device memory holds up to depth + 2 batches: the queue, the
        one being put and the one the step reads); 0 produces synchronously in `__next__`.
      snapshot: optional host batch -> anything, run in the producer right after the batch (it may read the
        input's counters, which move with the next batch).
    """

    def __init__(self, data: Iterator[Mapping[str, Any]], *, put: Callable[[Mapping[str, Any]], Any],
                 depth: int = 2, snapshot: Callable[[Mapping[str, Any]], Any] | None = None,
                 name: str = "optiml-input-feed"):
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise ValueError(f"InputFeed: depth must be an int >= 0, got {depth!r}")
        self._data, self._put, self._snapshot, self.depth = data, put, snapshot, depth
        self._drawn = 0
        self._closed = False
        self._done: BaseException | object | None = None    # the failure or end the consumer has reached
        self.total_wait_s = 0.0
        self.batches = 0
        self._stop = threading.Event()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._produce_loop, name=name, daemon=True)
            self._thread.start()

    # -- producer ---------------------------------------------------------------------------------------------
    def _make(self, t0: float) -> FedBatch:
        host = next(self._data)
        state = self._data.state()
        snap = self._snapshot(host) if self._snapshot is not None else None
        device = self._put(host)
        index, self._drawn = self._drawn, self._drawn + 1
        return FedBatch(index=index, host=host, device=device, input_state=state, snapshot=snap,
                        wait_s=time.perf_counter() - t0)

    def _offer(self, item: Any) -> bool:
        assert self._queue is not None
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce_loop(self) -> None:
        while not self._stop.is_set():
            try:
                item: Any = self._make(0.0)
            except StopIteration:
                self._offer(_END)
                return
            except BaseException as e:  # noqa: BLE001 -- handed to the consumer, which re-raises it
                self._offer(_Failure(e))
                return
            if not self._offer(item):
                return

    # -- consumer ---------------------------------------------------------------------------------------------
    def __iter__(self) -> InputFeed:
        return self

    def __next__(self) -> FedBatch:
        if self._closed:
            raise RuntimeError("InputFeed: next() after close()")
        if self._done is not None:
            if self._done is _END:
                raise StopIteration
            raise self._done  # type: ignore[misc]
        t0 = time.perf_counter()
        if self._queue is None:
            try:
                fed = self._make(t0)
            except StopIteration:
                self._done = _END
                raise
            except Exception as e:   # latched as the threaded path does: the failed batch is never skipped
                self._done = e
                raise
        else:
            item = self._get()
            if item is _END or isinstance(item, _Failure):
                self._done = _END if item is _END else item.error
                return self.__next__()
            fed = dataclasses.replace(item, wait_s=time.perf_counter() - t0)
        self.batches += 1
        self.total_wait_s += fed.wait_s
        return fed

    def _get(self) -> Any:
        assert self._queue is not None and self._thread is not None
        while True:
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("InputFeed: the producer thread ended without a batch, an end or an error")

    # -- shutdown ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stops and joins the producer (idempotent); batches produced but not consumed are dropped."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        self._stop.set()
        self._drain()
        self._thread.join(_JOIN_TIMEOUT_S)
        if self._thread.is_alive():  # stuck inside next(data): a daemon thread cannot keep the process alive
            logger.warning("input feed: the producer is still inside next(data) after %.0f s; left to finish as a "
                           "daemon thread", _JOIN_TIMEOUT_S)
        self._drain()

    def _drain(self) -> None:
        assert self._queue is not None
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
