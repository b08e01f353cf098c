"""Input wait of the training loop: the share of loop time a device would spend waiting for the host's batches.

The device is simulated: a step takes as long as producing one batch (the mean over a calibration pass of the
same stream, first batch left out: packing plus the host-to-device put) and uses no host CPU, as an accelerator would not; it runs
asynchronously on a worker thread, as a dispatched XLA step does. Two loops consume the same batches:

* ``serial`` (the loop before the input feed): draw and put the batch, dispatch the step, wait for its loss;
* ``feed`` (`optiml_jax.input_feed.InputFeed` with ``depth`` batches ahead, metrics read one step late, as
  `optiml_jax.train` does now).

``input_wait_fraction`` = time spent obtaining batches / loop time. The first batch is produced before any step
can run in either loop (in a real run it overlaps the first step's compilation), so the headline figure leaves it
out (``steady_input_wait_fraction``); both are reported. Modes run round-robin, each on a fresh input.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np


def _make_input(seq_len: int, batch_size: int, data_dir: str | None, seed: int):
    from optiml_jax.tasks.pipeline import TrainInput
    from optiml_jax.tokenizer import OPTVocabulary

    return TrainInput(vocab=OPTVocabulary.default(), batch_size=batch_size, seq_len=seq_len, seed=seed,
                      data_dir=data_dir, split=None if data_dir else "embedded")


def _put_fn(batch_size: int):
    import jax

    from optiml_jax import partitioning, trainer

    mesh = partitioning.create_mesh({"data": -1, "fsdp": 1, "model": 1}, jax.devices()[:1])

    def put(host):
        local = {k: np.asarray(host[k]) for k in trainer.MODEL_FEATURES}
        out = partitioning.global_batch_from_local(mesh, local, batch_size)
        jax.block_until_ready(out)   # the copy is part of producing a batch
        return out
    return put


def _digest(host) -> str:
    return hashlib.blake2b(np.ascontiguousarray(host["decoder_input_tokens"]).tobytes(), digest_size=8).hexdigest()


def _loop(mode: str, depth: int, data, put, steps: int, step_s: float,
          device: concurrent.futures.ThreadPoolExecutor) -> dict[str, Any]:
    from optiml_jax import input_feed

    def step() -> float:
        time.sleep(step_s)
        return 0.0

    waits: list[float] = []
    digests: list[str] = []
    t0 = time.perf_counter()
    if mode == "serial":
        for _ in range(steps):
            w0 = time.perf_counter()
            host = next(data)
            put(host)
            waits.append(time.perf_counter() - w0)
            digests.append(_digest(host))
            device.submit(step).result()   # float(loss) right after the step: the host waits for the device
    else:
        pending = None
        with input_feed.InputFeed(data, put=put, depth=depth) as feed:
            for _ in range(steps):
                fed = next(feed)
                waits.append(fed.wait_s)
                digests.append(_digest(fed.host))
                future = device.submit(step)
                if pending is not None:
                    pending.result()       # the previous step's metrics, one step late
                pending = future
            pending.result()
    total = time.perf_counter() - t0
    return {"mode": mode, "depth": depth, "loop_s": total, "wait_s": sum(waits),
            "input_wait_fraction": sum(waits) / total,
            "steady_input_wait_fraction": sum(waits[1:]) / max(total - waits[0], 1e-9),
            "digest": hashlib.blake2b("".join(digests).encode(), digest_size=8).hexdigest()}


def measure_input_wait(*, seq_len: int, batch_size: int, steps: int, depths: Sequence[int] = (2,),
                       rounds: int = 2, data_dir: str | None = None, embedded: bool = False,
                       seed: int = 0) -> dict[str, Any]:
    """Calibrates one batch's production time, then runs the serial and the feed loops round-robin.

    The data: ``data_dir``, else the real data `bench.packing.resolve_data_dir` finds; ``embedded`` forces the
    embedded suite (fast to build, for tests)."""
    from bench.packing import resolve_data_dir

    if steps < 2 or rounds < 1:
        raise ValueError(f"need steps >= 2 and rounds >= 1, got {steps}, {rounds}")
    load_start = list(os.getloadavg())
    data_dir = None if embedded else resolve_data_dir(data_dir)
    put = _put_fn(batch_size)
    data = _make_input(seq_len, batch_size, data_dir, seed)
    num_tasks = len(data.task_names)
    produce = []
    for _ in range(steps):
        t0 = time.perf_counter()
        put(next(data))
        produce.append(time.perf_counter() - t0)
    # The first batch carries one-time costs (first tokeniser chunk, lazy set-up) and is left out of the
    # headline fraction, so it is left out of the step time too.
    step_s = statistics.fmean(produce[1:])
    modes = [("serial", 0)] + [("feed", d) for d in depths]
    runs: dict[str, list[dict[str, Any]]] = {f"{m}{d if m == 'feed' else ''}": [] for m, d in modes}
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="simulated-device") as device:
        for _ in range(rounds):
            for mode, depth in modes:
                fresh = _make_input(seq_len, batch_size, data_dir, seed)   # the same batches, uncached
                runs[f"{mode}{depth if mode == 'feed' else ''}"].append(
                    _loop(mode, depth, fresh, put, steps, step_s, device))
    rows = []
    for name, rs in runs.items():
        rows.append({"name": name, "mode": rs[0]["mode"], "depth": rs[0]["depth"],
                     "input_wait_fraction": statistics.median(r["input_wait_fraction"] for r in rs),
                     "steady_input_wait_fraction": statistics.median(r["steady_input_wait_fraction"] for r in rs),
                     "loop_s": statistics.median(r["loop_s"] for r in rs),
                     "all_steady_fractions": [r["steady_input_wait_fraction"] for r in rs]})
    digests = {r["digest"] for rs in runs.values() for r in rs}
    best = next(r for r in rows if r["mode"] == "feed" and r["depth"] == depths[0])   # train.prefetch's default
    serial = next(r for r in rows if r["mode"] == "serial")
    return {
        "data": data_dir or "embedded suite", "num_tasks": num_tasks, "seq_len": seq_len, "batch_size": batch_size,
        "steps": steps, "rounds": rounds, "depths": list(depths),
        "produce_s_per_batch": {"mean": step_s, "median": statistics.median(produce[1:]), "max": max(produce[1:]),
                                "first": produce[0]},
        "simulated_step_s": step_s, "rows": rows,
        "input_wait_fraction": best["steady_input_wait_fraction"],
        "input_wait_fraction_before": serial["steady_input_wait_fraction"],
        "same_batches_in_every_loop": len(digests) == 1,
        "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
    }
