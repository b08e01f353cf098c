"""Causal-LM packing for instruction tuning (paper section 3.1-3.2).

One example becomes one *segment*: ``[bos] + source + target + [eos]``. Inside a segment the model reads
``tokens[:-1]`` and predicts ``tokens[1:]``; the loss (label-loss) covers only predictions of target tokens,
including the closing EOS. Segments are packed greedily, in stream order, into rows of ``max_length``
positions; every row carries ``decoder_segment_ids`` (1, 2, ... per segment, 0 on padding) and
``decoder_positions`` (0-based inside each segment) so the model can apply document attention.

The numpy functions here are the single source of truth. `CausalLMFeatureConverter` exposes the same
computation to seqio (it streams the tf.data examples through `iter_packed_rows`), so the trainer's fast
path (`optiml_jax.tasks.pipeline.TrainInput`) and ``seqio.get_dataset(...)`` produce identical batches.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

# Keys of every batch, in the order the trainer documents them (docs/architecture.md).
BATCH_KEYS: tuple[str, ...] = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
)
TASK_ID_KEY = "decoder_task_ids"

# Truncation outcome of `make_segment`.
NOT_TRUNCATED, SOURCE_TRUNCATED, TARGET_TRUNCATED = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Segment:
    """One example laid out for causal-LM training.

    Attributes:
      tokens: ``[bos] + source + target + [eos]`` (int32).
      num_prefix: number of leading tokens that are not targets (bos + kept source tokens).
      truncated: NOT_TRUNCATED, SOURCE_TRUNCATED (source tokens dropped from the left) or TARGET_TRUNCATED
        (the target alone did not fit: only its tail is kept and no source remains).
      tag: caller-defined integer carried into ``decoder_task_ids`` (-1 when unused).
    """

    tokens: np.ndarray
    num_prefix: int
    truncated: int = NOT_TRUNCATED
    tag: int = -1

    @property
    def length(self) -> int:
        """Positions the segment occupies in a row (input tokens = all tokens but the last)."""
        return int(self.tokens.shape[0]) - 1


def make_segment(
    source_ids: Sequence[int],
    target_ids: Sequence[int],
    *,
    bos_id: int,
    eos_id: int,
    max_length: int,
    tag: int = -1,
) -> Segment:
    """Builds the segment ``[bos] + source + target + [eos]`` that fits in ``max_length`` positions.

    Overflow is resolved by dropping the oldest source tokens (the BOS stays first so every segment starts
    the way OPT was pre-trained). When the target plus EOS alone exceed the row, no source is kept and only
    the tail of the target survives; the segment is marked TARGET_TRUNCATED so callers can count it.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (one BOS position and one target), got {max_length}")
    src = np.asarray(source_ids, dtype=np.int32).reshape(-1)
    tgt = np.asarray(target_ids, dtype=np.int32).reshape(-1)
    truncated = NOT_TRUNCATED
    # Positions used = 1 (bos) + len(src) + len(tgt); the final EOS is only ever a label.
    if 1 + len(tgt) > max_length:
        tgt = tgt[len(tgt) - (max_length - 1):]
        src = src[:0]
        truncated = TARGET_TRUNCATED
    elif 1 + len(src) + len(tgt) > max_length:
        keep = max_length - 1 - len(tgt)
        src = src[len(src) - keep:] if keep > 0 else src[:0]
        truncated = SOURCE_TRUNCATED
    tokens = np.concatenate([np.array([bos_id], np.int32), src, tgt, np.array([eos_id], np.int32)])
    return Segment(tokens=tokens, num_prefix=1 + len(src), truncated=truncated, tag=tag)


def segment_features(segment: Segment) -> dict[str, np.ndarray]:
    """The unpadded per-position features of one segment (length ``segment.length``)."""
    n = segment.length
    loss = np.zeros(n, np.float32)
    # Position i predicts tokens[i + 1]; it is a target when i + 1 >= num_prefix.
    loss[segment.num_prefix - 1:] = 1.0
    return {
        "decoder_input_tokens": segment.tokens[:-1],
        "decoder_target_tokens": segment.tokens[1:],
        "decoder_loss_weights": loss,
        "decoder_positions": np.arange(n, dtype=np.int32),
    }


def empty_row(max_length: int, pad_id: int = 0, with_tags: bool = False) -> dict[str, np.ndarray]:
    """An all-padding row (segment id 0, zero loss weight)."""
    row = {
        "decoder_input_tokens": np.full(max_length, pad_id, np.int32),
        "decoder_target_tokens": np.full(max_length, pad_id, np.int32),
        "decoder_loss_weights": np.zeros(max_length, np.float32),
        "decoder_segment_ids": np.zeros(max_length, np.int32),
        "decoder_positions": np.zeros(max_length, np.int32),
    }
    if with_tags:
        row[TASK_ID_KEY] = np.full(max_length, -1, np.int32)
    return row


def _write(row: dict[str, np.ndarray], start: int, segment_id: int, segment: Segment) -> int:
    feats = segment_features(segment)
    end = start + segment.length
    for key, value in feats.items():
        row[key][start:end] = value
    row["decoder_segment_ids"][start:end] = segment_id
    if TASK_ID_KEY in row:
        row[TASK_ID_KEY][start:end] = segment.tag
    return end


def iter_packed_rows(
    segments: Iterable[Segment],
    *,
    max_length: int,
    pad_id: int = 0,
    pack: bool = True,
    with_tags: bool = False,
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Greedily packs segments, in order, into rows; yields ``(row, number_of_segments_in_row)``.

    A row is closed as soon as the next segment does not fit in the remaining positions; that segment starts
    the next row (no look-ahead, so the stream position after any row is exactly the segments consumed).
    With ``pack=False`` every segment gets its own row (evaluation). Segments longer than ``max_length`` are
    an error: build them with `make_segment` and the same ``max_length``.
    """
    row: dict[str, np.ndarray] | None = None
    used = count = 0
    for segment in segments:
        if segment.length > max_length:
            raise ValueError(
                f"segment of {segment.length} positions exceeds max_length={max_length}; "
                "build segments with make_segment(..., max_length=...)")
        if row is not None and (not pack or used + segment.length > max_length):
            yield row, count
            row = None
        if row is None:
            row, used, count = empty_row(max_length, pad_id, with_tags), 0, 0
        count += 1
        used = _write(row, used, count, segment)
    if row is not None:
        yield row, count


def stack_rows(rows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stacks row dicts into a batch dict of [B, L] arrays."""
    if not rows:
        raise ValueError("cannot stack an empty list of rows")
    return {key: np.stack([r[key] for r in rows]) for key in rows[0]}


def pack_segments(
    segments: Iterable[Segment],
    *,
    max_length: int,
    num_rows: int | None = None,
    pad_id: int = 0,
    pack: bool = True,
    with_tags: bool = False,
) -> tuple[dict[str, np.ndarray], int]:
    """Packs segments into a batch; returns ``(batch, segments_consumed)``.

    With ``num_rows`` the batch has exactly that many rows (all-padding rows when the stream runs dry) and
    only the segments placed in them count as consumed: the caller resumes its stream there. Without it,
    every segment is packed.
    """
    rows: list[dict[str, np.ndarray]] = []
    consumed = 0
    if num_rows is not None and num_rows < 1:
        raise ValueError(f"num_rows must be >= 1, got {num_rows}")
    if num_rows != 0:
        for row, count in iter_packed_rows(
                segments, max_length=max_length, pad_id=pad_id, pack=pack, with_tags=with_tags):
            rows.append(row)
            consumed += count
            if num_rows is not None and len(rows) == num_rows:
                break
    while num_rows is not None and len(rows) < num_rows:
        rows.append(empty_row(max_length, pad_id, with_tags))
    if not rows:
        rows.append(empty_row(max_length, pad_id, with_tags))
    return stack_rows(rows), consumed


def pack_examples(
    examples: Iterable[tuple[Sequence[int], Sequence[int]]],
    *,
    bos_id: int,
    eos_id: int,
    max_length: int = 2048,
    pad_id: int = 0,
    pack: bool = True,
) -> dict[str, np.ndarray]:
    """Convenience: ``(source_ids, target_ids)`` pairs -> one batch with every example (packed or not)."""
    segs = (make_segment(s, t, bos_id=bos_id, eos_id=eos_id, max_length=max_length) for s, t in examples)
    batch, _ = pack_segments(segs, max_length=max_length, pad_id=pad_id, pack=pack)
    return batch


def _import_seqio():
    import seqio  # noqa: WPS433 -- heavy (imports TensorFlow); only the seqio adapter needs it
    import tensorflow as tf

    return seqio, tf


def _make_converter_class():
    seqio, tf = _import_seqio()

    class CausalLMFeatureConverter(seqio.FeatureConverter):
        """seqio adapter of `iter_packed_rows`: task features ``inputs``/``targets`` -> packed causal-LM rows.

        Output per row: the five ``decoder_*`` features of docs/architecture.md (segment ids and positions
        in unpacked mode too, so the trainer sees one format). The row length is ``max_length`` when given,
        else ``task_feature_lengths["inputs"] + task_feature_lengths["targets"]``. Left truncation happens
        here, so call ``get_dataset(..., trim_output_features=False)`` to keep long sources' endings.
        """

        TASK_FEATURES = {
            "inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
            "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        }
        MODEL_FEATURES = {
            "decoder_input_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
            "decoder_target_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
            "decoder_loss_weights": seqio.FeatureConverter.FeatureSpec(dtype=tf.float32),
            "decoder_segment_ids": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
            "decoder_positions": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        }
        # Segment ids and positions are always produced (also unpacked), so they live in MODEL_FEATURES.
        PACKING_FEATURE_DTYPES: dict = {}

        def __init__(self, pack: bool = True, *, bos_id: int = 2, eos_id: int = 2, pad_id: int = 0,
                     max_length: int | None = None, apply_length_check: bool = True):
            super().__init__(pack=pack, use_custom_packing_ops=False, apply_length_check=apply_length_check,
                             bos_id=bos_id)
            if max_length is not None and max_length < 2:
                raise ValueError(f"CausalLMFeatureConverter: max_length must be >= 2, got {max_length}")
            self._eos_id, self._pad_id, self._max_length = eos_id, pad_id, max_length

        def _row_length(self, task_feature_lengths: Mapping[str, int]) -> int:
            if self._max_length is not None:
                return self._max_length
            return int(task_feature_lengths["inputs"]) + int(task_feature_lengths["targets"])

        def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
            length = self._row_length(task_feature_lengths)
            return {k: length for k in self.MODEL_FEATURES}

        def _convert_features(self, ds, task_feature_lengths):
            length = self._row_length(task_feature_lengths)
            bos, eos, pad, pack = self._bos_id, self._eos_id, self._pad_id, self.pack

            def rows():
                segs = (make_segment(ex["inputs"], ex["targets"], bos_id=bos, eos_id=eos, max_length=length)
                        for ex in ds.as_numpy_iterator())
                for row, _ in iter_packed_rows(segs, max_length=length, pad_id=pad, pack=pack):
                    yield row

            signature = {
                k: tf.TensorSpec([length], spec.dtype) for k, spec in self.MODEL_FEATURES.items()
            }
            return tf.data.Dataset.from_generator(rows, output_signature=signature)

    return CausalLMFeatureConverter


_CONVERTER_CLASS = None


def __getattr__(name: str):
    # The seqio class is built lazily: importing this module must not pull in TensorFlow.
    global _CONVERTER_CLASS
    if name == "CausalLMFeatureConverter":
        if _CONVERTER_CLASS is None:
            _CONVERTER_CLASS = _make_converter_class()
        return _CONVERTER_CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
