"""Packing efficiency of the real training mixture and input-pipeline throughput."""
from __future__ import annotations

import pathlib
import time
from typing import Any, Sequence

import numpy as np

from optiml_jax.data_dir import find_real_data_dir


# The shared real data beside the checkout (where the project's machines keep it), the last place looked.
SHARED_DATA_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def resolve_data_dir(data_dir: str | None = None) -> str | None:
    """`data_dir`, else $OPTIML_DATA_DIR, else ../shared/data beside the repository: the first that holds SuperNI."""
    found = find_real_data_dir(data_dir, fallbacks=(SHARED_DATA_DIR,))
    return str(found) if found is not None else None


def next_fit_fill(lengths: Sequence[int], max_length: int) -> float:
    """Fraction of positions holding tokens when segments are packed in order, a row closing as soon as the
    next segment does not fit (`feature_converters.plan_rows` with window=1, the packer before the look-ahead). Only closed rows count."""
    rows, used = 0, 0
    filled = 0
    for n in lengths:
        if n > max_length:
            raise ValueError(f"segment length {n} exceeds max_length {max_length}")
        if used + n > max_length:
            rows, filled, used = rows + 1, filled + used, 0
        used += n
    return filled / (rows * max_length) if rows else float("nan")


def windowed_first_fit_fill(lengths: Sequence[int], max_length: int, window: int) -> float:
    """Fill fraction of first-fit packing over a sliding look-ahead of `window` open rows.

    Each segment goes into the first open row with room; when none has room and `window` rows are open, the
    fullest row is closed. Deterministic in the stream, so an input state is (stream position, open rows).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    open_rows: list[int] = []
    closed, filled = 0, 0
    for n in lengths:
        for i, used in enumerate(open_rows):
            if used + n <= max_length:
                open_rows[i] += n
                break
        else:
            if len(open_rows) == window:
                j = int(np.argmax(open_rows))
                filled += open_rows.pop(j)
                closed += 1
            open_rows.append(n)
    return filled / (closed * max_length) if closed else float("nan")


def measure_packing(*, seq_len: int, batch_size: int, num_batches: int, data_dir: str | None = None,
                    windows: Sequence[int] = (4, 16), simulate_segments: int = 2000,
                    seed: int = 0) -> dict[str, Any]:
    """Packs `num_batches` batches of the training mixture with `TrainInput` and reports real-token fractions,
    pipeline sequences/s, and what first-fit packing with a look-ahead would give on the same segments."""
    from optiml_jax import feature_converters as fc
    from optiml_jax.tasks.pipeline import TrainInput
    from optiml_jax.tokenizer import OPTVocabulary

    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    data_dir = resolve_data_dir(data_dir)
    t0 = time.perf_counter()
    vocab = OPTVocabulary.default()
    ti = TrainInput(vocab=vocab, batch_size=batch_size, seq_len=seq_len, seed=seed, data_dir=data_dir)
    setup_s = time.perf_counter() - t0
    real, loss, rows = [], [], 0
    # Every batch is timed: TrainInput renders and tokenises ahead in chunks, so a per-batch split would
    # credit one batch with the work of several.
    t0 = time.perf_counter()
    for _ in range(num_batches):
        b = next(ti)
        real.append(float(np.mean(b["decoder_segment_ids"] > 0)))
        loss.append(float(np.mean(b["decoder_loss_weights"])))
        rows += b["decoder_segment_ids"].shape[0]
    elapsed = time.perf_counter() - t0
    consumed = ti.position
    # The same stream, unpacked, to compare packing strategies on identical segments.
    lengths = []
    for src, tgt, _ in ti.iter_examples(0):
        lengths.append(fc.make_segment(src, tgt, bos_id=vocab.bos_id, eos_id=vocab.eos_id, max_length=seq_len).length)
        if len(lengths) >= max(consumed, simulate_segments):
            break
    return {
        "data": data_dir or "embedded suite", "split": ti.bench.split_name, "num_tasks": len(ti.task_names),
        "seq_len": seq_len, "batch_size": batch_size, "batches_measured": num_batches,
        "setup_s": setup_s, "real_token_fraction": float(np.mean(real)),
        "loss_token_fraction": float(np.mean(loss)), "segments": consumed, "simulated_segments": len(lengths),
        "mean_segment_length": float(np.mean(lengths)), "pipeline_sequences_per_s": rows / elapsed,
        "pipeline_tokens_per_s": rows * seq_len / elapsed,
        "simulated_next_fit_fill": next_fit_fill(lengths, seq_len),
        "simulated_first_fit_fill": {str(w): windowed_first_fit_fill(lengths, seq_len, w) for w in windows},
    }
