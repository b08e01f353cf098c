"""Causal-LM packing for instruction tuning (paper section 3.1-3.2).

One example becomes one *segment*: ``[bos] + source + target + [eos]``. Inside a segment the model reads
``tokens[:-1]`` and predicts ``tokens[1:]``; the loss (label-loss) covers only predictions of target tokens,
including the closing EOS. Segments are packed into rows of ``max_length`` positions by a bounded look-ahead
first-fit (`plan_rows`): a window of the next ``window`` pending segments of the stream is kept, and a row is
filled by taking, in stream order, every pending segment that still fits (the window is refilled from the
stream after each take) until none fits. Every row carries ``decoder_segment_ids`` (1, 2, ... per segment, 0
on padding) and ``decoder_positions`` (0-based inside each segment) so the model can apply document attention.

In-order next-fit (``window=1``) leaves about 13% of the positions of a 2048-token row empty on the real
OPT-IML mixture, whose segments average about 240 tokens with a long tail; a window of 16 fills about 99%.
The packer's whole state between rows is the window itself, so a resumable reader only has to remember which
stream positions are pending (`PackedRow.pending`).

The numpy functions here are the single source of truth. `CausalLMFeatureConverter` exposes the same
computation to seqio (it streams the tf.data examples through `iter_packed_rows`), so the trainer's fast
path (`optiml_jax.tasks.pipeline.TrainInput`) and ``seqio.get_dataset(...)`` produce identical batches.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Mapping, NamedTuple, Sequence

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

# Look-ahead of the first-fit packer. Measured on the real mixture at 2048 positions: 1 (next-fit) 86.6% real
# tokens, 4: 97.8%, 8: 98.7%, 16: 99.1%, 64: 99.5%; the state to checkpoint grows with it (one int per slot).
DEFAULT_PACKING_WINDOW = 16

# Truncation outcome of `fit_segment` / `make_segment` (`Segment.truncated`).
NOT_TRUNCATED = 0
DEMOS_DROPPED = 1      # whole demonstrations were dropped; definition, input and target intact
SOURCE_TRUNCATED = 2   # the instance input was cut in its middle (demonstrations, if any, all dropped)
TEXT_CUT = 3           # a source-less (pre-training style) text was cut at its end
TRUNCATION_NAMES = {NOT_TRUNCATED: "none", DEMOS_DROPPED: "demonstrations", SOURCE_TRUNCATED: "input",
                    TEXT_CUT: "text"}
# Why `fit_segment` skips an example (it is never trained on): the target alone does not fit; the parts that
# are never cut (definition, fixed text) plus the target do not fit; or fewer than `MIN_INPUT_TOKENS` of the
# instance input would remain.
SKIP_TARGET, SKIP_DEFINITION, SKIP_INPUT = "target", "definition", "input"
SKIP_REASONS: tuple[str, ...] = (SKIP_TARGET, SKIP_DEFINITION, SKIP_INPUT)
MIN_INPUT_TOKENS = 8
# Part roles, as in optiml_jax.tasks.schema (PART_ROLES); repeated so this module stays free of task imports.
PART_DEFINITION, PART_DEMONSTRATION, PART_INPUT, PART_FIXED = "definition", "demonstration", "input", "fixed"


@dataclasses.dataclass(frozen=True)
class Segment:
    """One example laid out for causal-LM training.

    Attributes:
      tokens: ``[bos] + source + target + [eos]`` (int32).
      num_prefix: number of leading tokens that are not targets (bos + kept source tokens).
      truncated: NOT_TRUNCATED, DEMOS_DROPPED, SOURCE_TRUNCATED or TEXT_CUT (see `fit_segment`).
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


@dataclasses.dataclass(frozen=True)
class Skipped:
    """An example `fit_segment` refuses to train on, and why (one of SKIP_REASONS)."""

    reason: str
    tag: int = -1


def fit_segment(
    parts: Sequence[tuple[str, Sequence[int]]],
    target_ids: Sequence[int],
    *,
    bos_id: int,
    eos_id: int,
    max_length: int,
    tag: int = -1,
    min_input_tokens: int = MIN_INPUT_TOKENS,
) -> "Segment | Skipped":
    """Lays out ``[bos] + parts + target + [eos]`` in ``max_length`` positions, or says why it cannot.

    ``parts`` are the source's (role, token ids) pieces in order (roles as `schema.PART_ROLES`; the pieces'
    ids concatenated are the source's). When the example is too long:

    1. whole demonstrations are dropped, earliest first (the farthest from the query; the task definition
       already says what to do);
    2. then the instance input is cut in its middle, keeping the first and last halves of what fits: its
       start carries the framing ("Passage:", the premise, the start of the context) and its end usually the
       question or the item to label, right before the delimiter; the middle of a long passage is what the
       example can best do without. (Cutting from the left, as before, lost the definition first.)

    The definition, fixed text (the delimiter) and the full target are never cut. When they do not fit, or
    fewer than ``min_input_tokens`` of the input would remain, the example is `Skipped` -- never trained as
    a continuation that starts mid-answer. A source-less example (pre-training style text) is cut at its end
    instead (TEXT_CUT): it has no answer to protect.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (one BOS position and one target), got {max_length}")
    tgt = np.asarray(target_ids, dtype=np.int32).reshape(-1)
    pieces = [(role, np.asarray(ids, dtype=np.int32).reshape(-1)) for role, ids in parts]
    for role, _ in pieces:
        if role not in (PART_DEFINITION, PART_DEMONSTRATION, PART_INPUT, PART_FIXED):
            raise ValueError(f"fit_segment: unknown part role {role!r}")
    # Positions used = 1 (bos) + source + target; the final EOS is only ever a label.
    budget = max_length - 1 - len(tgt)
    total = sum(len(ids) for _, ids in pieces)
    truncated = NOT_TRUNCATED
    if budget < 0:
        if total:
            return Skipped(SKIP_TARGET, tag)
        tgt, budget, truncated = tgt[:max_length - 1], 0, TEXT_CUT
    if total > budget:
        fixed = sum(len(ids) for role, ids in pieces if role in (PART_DEFINITION, PART_FIXED))
        inputs = sum(len(ids) for role, ids in pieces if role == PART_INPUT)
        if fixed > budget:
            return Skipped(SKIP_DEFINITION, tag)
        if fixed + min(inputs, min_input_tokens) > budget:
            return Skipped(SKIP_INPUT, tag)
        drop: set[int] = set()
        for i, (role, ids) in enumerate(pieces):   # earliest demonstration first
            if total <= budget:
                break
            if role == PART_DEMONSTRATION:
                drop.add(i)
                total -= len(ids)
        if drop:
            truncated = DEMOS_DROPPED
            pieces = [p for i, p in enumerate(pieces) if i not in drop]
        if total > budget:
            excess, cut = total - budget, []
            for role, ids in pieces:
                if role == PART_INPUT and excess > 0:
                    keep = max(len(ids) - excess, 0)
                    excess -= len(ids) - keep
                    ids = np.concatenate([ids[:(keep + 1) // 2], ids[len(ids) - keep // 2:]])
                cut.append((role, ids))
            pieces, truncated = cut, SOURCE_TRUNCATED
    src = np.concatenate([ids for _, ids in pieces]) if pieces else np.zeros(0, np.int32)
    tokens = np.concatenate([np.array([bos_id], np.int32), src, tgt, np.array([eos_id], np.int32)])
    return Segment(tokens=tokens, num_prefix=1 + len(src), truncated=truncated, tag=tag)


def make_segment(
    source_ids: Sequence[int],
    target_ids: Sequence[int],
    *,
    bos_id: int,
    eos_id: int,
    max_length: int,
    tag: int = -1,
) -> "Segment | Skipped":
    """`fit_segment` for a source of unknown structure: the whole source is one instance input (cut in its
    middle when too long, down to nothing if need be); a target that does not fit is `Skipped`."""
    parts = [(PART_INPUT, source_ids)] if len(source_ids) else []
    return fit_segment(parts, target_ids, bos_id=bos_id, eos_id=eos_id, max_length=max_length, tag=tag,
                       min_input_tokens=0)


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


class RowPlan(NamedTuple):
    """Which stream segments one packed row holds, and what is left pending for the next rows.

    Attributes:
      members: stream ordinals (0-based positions in the packer's input) of the row's segments, in row order
        (always increasing).
      pending: ordinals still in the look-ahead window after the row was closed, in stream order. Together
        with the number of segments drawn so far this is the packer's entire state: restarting the packer on
        ``pending`` followed by the rest of the stream continues identically.
    """

    members: tuple[int, ...]
    pending: tuple[int, ...]


class PackedRow(NamedTuple):
    """One packed row (the ``decoder_*`` arrays, [max_length] each) with its `RowPlan` fields."""

    row: dict[str, np.ndarray]
    members: tuple[int, ...]
    pending: tuple[int, ...]


def check_window(window: int, name: str = "window") -> int:
    """Validates a packing look-ahead (an int >= 1); the error names the argument."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"{name} must be an int >= 1 (1 = in-order next-fit packing), got {window!r}")
    return int(window)


def plan_rows(
    lengths: Iterable[int],
    *,
    max_length: int,
    window: int = DEFAULT_PACKING_WINDOW,
    pack: bool = True,
) -> Iterator[RowPlan]:
    """Bounded look-ahead first-fit packing of segment lengths; yields one `RowPlan` per row.

    The packer keeps the next ``window`` segments of the stream pending. A row takes, in stream order, each
    pending segment that fits in its remaining positions; after every take the window is refilled from the
    stream, so the newcomer is a candidate for the same row. The row closes when no pending segment fits.
    The oldest pending segment always opens the next row, so no segment waits more than ``window`` rows and
    the stream order is kept up to that bounded reordering. ``window=1`` is in-order next-fit. With
    ``pack=False`` each segment gets its own row, in order.

    Pure and deterministic in ``lengths``; it draws from ``lengths`` lazily and never more than the window
    needs, so it runs on endless streams.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    window = check_window(window)
    stream = iter(lengths)
    drawn = 0
    pending: list[tuple[int, int]] = []   # (ordinal, length), in stream order

    def refill() -> None:
        nonlocal drawn
        while len(pending) < window:
            try:
                n = int(next(stream))
            except StopIteration:
                return
            if not 1 <= n <= max_length:
                raise ValueError(f"segment {drawn} has {n} positions, outside [1, max_length={max_length}]; "
                                 "build segments with make_segment(..., max_length=...)")
            pending.append((drawn, n))
            drawn += 1

    refill()
    while pending:
        used, members, i = 0, [], 0
        while i < len(pending):
            ordinal, n = pending[i]
            if used + n > max_length:
                i += 1
                continue
            del pending[i]
            members.append(ordinal)
            used += n
            # Everything before i was already too long for less used space; the refill lands at the end,
            # so scanning on from i visits the remaining candidates in stream order.
            refill()
            if not pack:
                break
        yield RowPlan(tuple(members), tuple(o for o, _ in pending))


def pack_rows(
    segments: Iterable[Segment],
    *,
    max_length: int,
    pad_id: int = 0,
    pack: bool = True,
    with_tags: bool = False,
    window: int = DEFAULT_PACKING_WINDOW,
) -> Iterator[PackedRow]:
    """Packs segments with `plan_rows` and writes the rows; yields `PackedRow` (row, members, pending).

    Ordinals in ``members``/``pending`` count the segments drawn from ``segments`` (0-based). Segments longer
    than ``max_length`` are an error: build them with `make_segment` and the same ``max_length``.
    """
    held: dict[int, Segment] = {}   # drawn but not yet written (at most `window`)

    def lengths() -> Iterator[int]:
        for ordinal, segment in enumerate(segments):
            held[ordinal] = segment
            yield segment.length

    for plan in plan_rows(lengths(), max_length=max_length, window=window, pack=pack):
        row, used = empty_row(max_length, pad_id, with_tags), 0
        for segment_id, ordinal in enumerate(plan.members, start=1):
            used = _write(row, used, segment_id, held.pop(ordinal))
        yield PackedRow(row, plan.members, plan.pending)


def iter_packed_rows(
    segments: Iterable[Segment],
    *,
    max_length: int,
    pad_id: int = 0,
    pack: bool = True,
    with_tags: bool = False,
    window: int = DEFAULT_PACKING_WINDOW,
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """`pack_rows` without the plan: yields ``(row, number_of_segments_in_row)``.

    With ``window > 1`` the segments of a row are not necessarily the next ones of the stream; callers that
    resume a stream need `pack_rows` and its ``pending`` ordinals.
    """
    for packed in pack_rows(segments, max_length=max_length, pad_id=pad_id, pack=pack, with_tags=with_tags,
                            window=window):
        yield packed.row, len(packed.members)


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
    window: int = DEFAULT_PACKING_WINDOW,
) -> tuple[dict[str, np.ndarray], list[RowPlan]]:
    """Packs segments into a batch; returns ``(batch, plans)`` with one `RowPlan` per packed row.

    With ``num_rows`` the batch has exactly that many rows (all-padding rows, without a plan, when the
    stream runs dry) and the stream is read no further than those rows need: ``plans[-1].pending`` are the
    segments drawn but not placed. Without it, every segment is packed.
    """
    if num_rows is not None and num_rows < 1:
        raise ValueError(f"num_rows must be >= 1, got {num_rows}")
    rows: list[dict[str, np.ndarray]] = []
    plans: list[RowPlan] = []
    for packed in pack_rows(segments, max_length=max_length, pad_id=pad_id, pack=pack, with_tags=with_tags,
                            window=window):
        rows.append(packed.row)
        plans.append(RowPlan(packed.members, packed.pending))
        if num_rows is not None and len(rows) == num_rows:
            break
    while num_rows is not None and len(rows) < num_rows:
        rows.append(empty_row(max_length, pad_id, with_tags))
    if not rows:
        rows.append(empty_row(max_length, pad_id, with_tags))
    return stack_rows(rows), plans


def pack_examples(
    examples: Iterable[tuple[Sequence[int], Sequence[int]]],
    *,
    bos_id: int,
    eos_id: int,
    max_length: int = 2048,
    pad_id: int = 0,
    pack: bool = True,
    window: int = DEFAULT_PACKING_WINDOW,
) -> dict[str, np.ndarray]:
    """Convenience: ``(source_ids, target_ids)`` pairs -> one batch with every example that fits (packed or not;
    an example whose target does not fit is left out, see `fit_segment`)."""
    segs = (make_segment(s, t, bos_id=bos_id, eos_id=eos_id, max_length=max_length) for s, t in examples)
    batch, _ = pack_segments((s for s in segs if isinstance(s, Segment)), max_length=max_length, pad_id=pad_id,
                             pack=pack, window=window)
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
        here (task features longer than ``task_feature_lengths`` are accepted and truncated by
        `make_segment`: the source is cut in its middle, an example whose target does not fit is skipped), so
        call ``get_dataset(..., trim_output_features=False)``. The fast path (`TrainInput`) knows the prompt's
        parts and also keeps definitions, so the two agree on every example that fits. ``packing_window`` is the first-fit look-ahead (`plan_rows`); keep it equal to the trainer's
        `TrainInput` one for identical batches.
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
                     max_length: int | None = None, apply_length_check: bool = True,
                     packing_window: int = DEFAULT_PACKING_WINDOW):
            super().__init__(pack=pack, use_custom_packing_ops=False, apply_length_check=apply_length_check,
                             bos_id=bos_id)
            if max_length is not None and max_length < 2:
                raise ValueError(f"CausalLMFeatureConverter: max_length must be >= 2, got {max_length}")
            self._window = check_window(packing_window, "CausalLMFeatureConverter: packing_window")
            self._eos_id, self._pad_id, self._max_length = eos_id, pad_id, max_length

        def _validate_dataset(self, ds, expected_features, expected_lengths, strict, error_label):
            # seqio would assert inputs/targets <= task_feature_lengths before conversion, but truncating long
            # examples (from the left, keeping the target) is this converter's job, and with a look-ahead
            # window one long example anywhere in the stream would abort the whole dataset. The packed
            # output is still checked for exact lengths.
            if error_label == "input_validation":
                expected_lengths = {}
            return super()._validate_dataset(ds, expected_features, expected_lengths, strict, error_label)

        def _row_length(self, task_feature_lengths: Mapping[str, int]) -> int:
            if self._max_length is not None:
                return self._max_length
            return int(task_feature_lengths["inputs"]) + int(task_feature_lengths["targets"])

        def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
            length = self._row_length(task_feature_lengths)
            return {k: length for k in self.MODEL_FEATURES}

        def _convert_features(self, ds, task_feature_lengths):
            length = self._row_length(task_feature_lengths)
            bos, eos, pad, pack, window = self._bos_id, self._eos_id, self._pad_id, self.pack, self._window

            def rows():
                segs = (make_segment(ex["inputs"], ex["targets"], bos_id=bos, eos_id=eos, max_length=length)
                        for ex in ds.as_numpy_iterator())
                segs = (s for s in segs if isinstance(s, Segment))   # a target that does not fit: skipped
                for row, _ in iter_packed_rows(segs, max_length=length, pad_id=pad, pack=pack, window=window):
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
