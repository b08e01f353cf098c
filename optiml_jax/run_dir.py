"""The training run directory (MODEL_DIR) besides its checkpoints and export: who writes it, what it was run with,
what it measured.

* `claim`: creates MODEL_DIR, checks that it is writable and takes its `run_lock.RunLock` (process 0), so two runs
  never write one directory;
* `write_config` / `changed_bindings`: ``config.gin``, the operative gin config at the start and at every resume,
  and the results-changing bindings a resume changes;
* `MetricsWriter`: ``metrics.jsonl`` and ``tb/`` (process 0).
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import gin

from optiml_jax import errors, gin_utils, run_lock

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.gin"
METRICS_FILE = "metrics.jsonl"

# Bindings that do not change what the run computes: a resume may change them without a warning. The mesh is
# among them because checkpoints reshard on restore.
NON_RESULT_BINDINGS = ("MODEL_DIR", "train.model_dir", "train.progress_bar", "train.peak_flops_per_device",
                       "train.eval_every", "train.heldout_max_batches", "train.heldout_max_examples_per_task",
                       "train.export_final", "train.start_over_if_damaged", "train.checkpoint", "train.partition",
                       "train.distributed", "CheckpointConfig.", "PartitionConfig.", "DistributedConfig.",
                       "train.inloop_eval", "InLoopEval.", "train.prefetch")


def claim(model_dir: pathlib.Path, is_main: bool) -> run_lock.RunLock | None:
    """Creates MODEL_DIR, checks it is writable and takes its lock (process 0); every process learns the outcome."""
    import jax

    error = ""
    lock = None
    if is_main:
        try:
            ensure_writable(model_dir)
            lock = run_lock.RunLock(model_dir).acquire()
        except errors.UserError as e:
            error = str(e)
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        failed = int(multihost_utils.broadcast_one_to_all(np.int32(bool(error))))
        if failed and not is_main:
            raise gin_utils.GinUsageError(f"MODEL_DIR={str(model_dir)!r}: process 0 could not claim it (see the "
                                         "error line of process 0)")
    if error:
        raise gin_utils.GinUsageError(error)
    return lock  # a stale lock taken over was logged as a warning by run_lock


def ensure_writable(model_dir: pathlib.Path) -> None:
    import tempfile

    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise gin_utils.GinUsageError(f"MODEL_DIR={str(model_dir)!r} exists and is not a folder") from None
    except OSError as e:
        raise gin_utils.GinUsageError(
            f"MODEL_DIR={str(model_dir)!r}: cannot create it ({e.strerror}: {e.filename}); choose a writable "
            "folder, e.g. --gin.MODEL_DIR=\"'runs/my_run'\"") from None
    try:
        with tempfile.NamedTemporaryFile(dir=model_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise gin_utils.GinUsageError(
            f"MODEL_DIR={str(model_dir)!r} is not writable ({e.strerror}); fix its permissions or choose another "
            "folder") from None


def changed_bindings(stored: Mapping[str, str] | None, current: Mapping[str, str]) -> list[str]:
    """``"name: checkpoint A vs this run B"`` for the results-changing bindings that differ."""
    if not stored:
        return []

    def relevant(name: str) -> bool:
        return not any(name == x or (x.endswith(".") and name.startswith(x)) for x in NON_RESULT_BINDINGS)

    names = sorted(n for n in set(stored) | set(current) if relevant(n) and stored.get(n) != current.get(n))
    return [f"{n}: checkpoint {stored.get(n, '(unset)')} vs this run {current.get(n, '(unset)')}" for n in names]


def write_config(model_dir: pathlib.Path, step: int, resumed: bool) -> pathlib.Path:
    """Writes MODEL_DIR/config.gin (atomically); a previous, different one is kept beside it."""
    import socket

    path = model_dir / CONFIG_FILE
    body = gin.operative_config_str()
    if path.exists():
        old = path.read_text(encoding="utf-8")
        if gin_utils.bindings_of(old) != gin_utils.bindings_of(body):
            keep = model_dir / f"config.before-step{step}.gin"
            n = 2
            while keep.exists():
                keep = model_dir / f"config.before-step{step}-{n}.gin"
                n += 1
            path.rename(keep)
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    header = (f"# Operative gin config of optiml_jax.train, written when the run {'resumed' if resumed else 'started'}"
              f" at step {step}\n# {now} on {socket.gethostname()}: {' '.join(sys.argv)}\n\n")
    tmp = path.with_name(f".{CONFIG_FILE}.tmp-{os.getpid()}")
    tmp.write_text(header + body, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _flatten(tree: Mapping[str, Any], prefix: str) -> list[tuple[str, float]]:
    """``("examples/SuperNI", 12)``, ``("truncation/SuperNI/skipped_target", 1)``, ... for TensorBoard tags."""
    out = []
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.extend(_flatten(v, f"{prefix}/{k}"))
        elif isinstance(v, (int, float)) and math.isfinite(v):
            out.append((f"{prefix}/{k}", v))
    return out


class MetricsWriter:
    """metrics.jsonl lines plus TensorBoard scalars (process 0 only)."""

    def __init__(self, model_dir: pathlib.Path, enabled: bool):
        self.enabled = enabled
        self._file = None
        self._tb = None
        if enabled:
            self._file = open(model_dir / METRICS_FILE, "a", encoding="utf-8")
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(model_dir / "tb"))
            except ImportError:  # TensorBoard output is optional
                logger.warning("tensorboardX is not installed; no TensorBoard events")

    def write(self, line: Mapping[str, Any]) -> None:
        """Appends one JSON line (NaN written as null) and its scalars to TensorBoard."""
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in line.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(line["step"])
            for k, v in line.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    tag = f"eval/{k}" if k == "heldout_loss" or k.startswith("inloop/") else f"train/{k}"
                    self._tb.add_scalar(tag, v, step)
                elif isinstance(v, Mapping):  # e.g. examples per benchmark, truncation counts per benchmark
                    for tag, n in _flatten(v, k):
                       self._tb.add_scalar(tag, n, step)

    def close(self) -> None:
        """Flushes and closes the outputs."""
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
