"""Packing invariants of optiml_jax.feature_converters, asserted exactly, and seqio parity."""
import numpy as np
import pytest

from optiml_jax import feature_converters as fc

BOS = EOS = 2


def _random_examples(rng, n, max_src=30, max_tgt=12):
    out = []
    for _ in range(n):
        src = rng.integers(10, 1000, size=int(rng.integers(0, max_src))).tolist()
        tgt = rng.integers(10, 1000, size=int(rng.integers(1, max_tgt))).tolist()
        out.append((src, tgt))
    return out


def _segments_of_row(batch, r):
    """Splits row r back into its segments (by segment id)."""
    seg = batch["decoder_segment_ids"][r]
    return [np.flatnonzero(seg == s) for s in range(1, int(seg.max()) + 1)]


def test_make_segment_layout_and_loss_mask():
    s = fc.make_segment([5, 6, 7], [8, 9], bos_id=BOS, eos_id=EOS, max_length=16)
    assert s.tokens.tolist() == [2, 5, 6, 7, 8, 9, 2]
    f = fc.segment_features(s)
    assert f["decoder_input_tokens"].tolist() == [2, 5, 6, 7, 8, 9]
    assert f["decoder_target_tokens"].tolist() == [5, 6, 7, 8, 9, 2]
    # Loss exactly on predictions of 8, 9 and the closing EOS.
    assert f["decoder_loss_weights"].tolist() == [0, 0, 0, 1, 1, 1]
    assert s.truncated == fc.NOT_TRUNCATED


def test_make_segment_cuts_source_middle_and_skips_target_overflow():
    s = fc.make_segment(list(range(100, 120)), [7, 8, 9], bos_id=BOS, eos_id=EOS, max_length=10)
    assert s.length == 10 and s.truncated == fc.SOURCE_TRUNCATED
    # BOS, the first 3 and last 3 source tokens, the full target, EOS.
    assert s.tokens.tolist() == [2, 100, 101, 102, 117, 118, 119, 7, 8, 9, 2]
    # The target alone does not fit: skipped, never trained as a source-less continuation mid-answer.
    t = fc.make_segment([1, 1, 1], list(range(50, 70)), bos_id=BOS, eos_id=EOS, max_length=8, tag=4)
    assert t == fc.Skipped(fc.SKIP_TARGET, 4)
    with pytest.raises(ValueError, match="max_length"):
        fc.make_segment([1], [2], bos_id=BOS, eos_id=EOS, max_length=1)


D, M, I, F = fc.PART_DEFINITION, fc.PART_DEMONSTRATION, fc.PART_INPUT, fc.PART_FIXED


def _fit(parts, target, max_length, **kw):
    return fc.fit_segment(parts, target, bos_id=BOS, eos_id=EOS, max_length=max_length, **kw)


def test_fit_segment_truncation_cases():
    """Issue 12: definition and full target are kept; demonstrations go first (earliest first), then the
    middle of the instance input; what cannot keep definition + target is skipped with its reason."""
    definition, demo1, demo2 = [10, 11, 12], [20, 21, 22, 23], [30, 31, 32, 33]
    inp, delim, target = list(range(40, 60)), [5], [7, 8]
    parts = [(D, definition), (M, demo1), (M, demo2), (I, inp), (F, delim)]
    full = 1 + 3 + 4 + 4 + 20 + 1 + 2      # positions: bos + source + target
    fits = _fit(parts, target, full)
    assert fits.truncated == fc.NOT_TRUNCATED and fits.tokens.tolist()[1:-1] == sum(
        [definition, demo1, demo2, inp, delim, target], [])
    # One position short: the earliest demonstration goes, nothing else.
    s = _fit(parts, target, full - 1)
    assert s.truncated == fc.DEMOS_DROPPED
    assert s.tokens.tolist() == [BOS] + definition + demo2 + inp + delim + target + [EOS]
    # Without room for any demonstration and 6 input tokens short: both demonstrations dropped, then the
    # input keeps its first 7 and last 7 tokens.
    s = _fit(parts, target, full - 8 - 6)
    assert s.truncated == fc.SOURCE_TRUNCATED
    assert s.tokens.tolist() == [BOS] + definition + inp[:7] + inp[-7:] + delim + target + [EOS]
    assert s.num_prefix == 1 + 3 + 14 + 1   # loss on the whole target and EOS only
    assert fc.segment_features(s)["decoder_loss_weights"].sum() == len(target) + 1
    # An odd budget keeps one more token at the start.
    s = _fit(parts, target, 1 + 3 + 9 + 1 + 2)
    assert s.tokens.tolist()[4:13] == inp[:5] + inp[-4:]
    # Fewer than MIN_INPUT_TOKENS of the input would remain: skipped.
    assert _fit(parts, target, 1 + 3 + 7 + 1 + 2, tag=3) == fc.Skipped(fc.SKIP_INPUT, 3)
    # The definition and delimiter themselves do not fit with the target: skipped, definition never cut.
    assert _fit(parts, target, 1 + 3 + 2) == fc.Skipped(fc.SKIP_DEFINITION)
    # The target alone does not fit.
    assert _fit(parts, list(range(100, 130)), 20) == fc.Skipped(fc.SKIP_TARGET)
    # A short input is kept whole even when that leaves it under MIN_INPUT_TOKENS.
    short = [(D, definition), (M, demo1), (I, [40, 41]), (F, delim)]
    s = _fit(short, target, 1 + 3 + 2 + 1 + 2)
    assert s.truncated == fc.DEMOS_DROPPED and s.tokens.tolist()[1:-1] == definition + [40, 41] + delim + target
    # A source-less (pre-training style) text is cut at its end instead.
    s = _fit([], list(range(100, 130)), 10)
    assert s.truncated == fc.TEXT_CUT and s.tokens.tolist() == [BOS] + list(range(100, 109)) + [EOS]
    with pytest.raises(ValueError, match="unknown part role"):
        _fit([("preamble", [1])], target, 10)


def test_part_roles_match_the_schema():
    from optiml_jax.tasks import schema

    assert (fc.PART_DEFINITION, fc.PART_DEMONSTRATION, fc.PART_INPUT, fc.PART_FIXED) == schema.PART_ROLES


def _check_row_invariants(packed, r, examples, ordinals):
    """Row r of a packed batch: its segments are exactly the examples at `ordinals`, laid out correctly."""
    segs = _segments_of_row(packed, r)
    assert len(segs) == len(ordinals)
    end = 0
    for pos, k in zip(segs, ordinals):
        n = len(pos)
        assert pos.tolist() == list(range(end, end + n))  # contiguous, in segment-id order, no gaps
        end += n
        src, tgt = examples[k]
        seg = fc.make_segment(src, tgt, bos_id=BOS, eos_id=EOS, max_length=packed["decoder_input_tokens"].shape[1])
        # The segment is the example's tokens, unchanged.
        assert packed["decoder_input_tokens"][r, pos].tolist() == seg.tokens[:-1].tolist()
        assert packed["decoder_target_tokens"][r, pos].tolist() == seg.tokens[1:].tolist()
        # Positions restart at 0 in every segment.
        assert packed["decoder_positions"][r, pos].tolist() == list(range(n))
        # No loss on a source token: loss starts exactly where the target starts.
        w = packed["decoder_loss_weights"][r, pos]
        assert w.tolist() == [0.0] * (seg.num_prefix - 1) + [1.0] * (n - seg.num_prefix + 1)
        assert packed["decoder_input_tokens"][r, pos[0]] == BOS
        assert packed["decoder_target_tokens"][r, pos[-1]] == EOS
    # Padding carries nothing.
    pad = packed["decoder_segment_ids"][r] == 0
    assert pad[end:].all() and not pad[:end].any()
    assert not packed["decoder_loss_weights"][r][pad].any()
    assert not packed["decoder_positions"][r][pad].any()


@pytest.mark.parametrize("window", [1, 4, fc.DEFAULT_PACKING_WINDOW])
def test_packing_invariants_exact(window):
    rng = np.random.default_rng(0)
    examples = _random_examples(rng, 200)
    L = 64
    segments = [fc.make_segment(s, t, bos_id=BOS, eos_id=EOS, max_length=L) for s, t in examples]
    packed, plans = fc.pack_segments(iter(segments), max_length=L, window=window)
    unpacked = fc.pack_examples(examples, bos_id=BOS, eos_id=EOS, max_length=L, pack=False)
    assert unpacked["decoder_input_tokens"].shape == (200, L)
    assert len(plans) == packed["decoder_input_tokens"].shape[0] < 200
    for key in fc.BATCH_KEYS:
        assert packed[key].dtype == (np.float32 if key == "decoder_loss_weights" else np.int32)
    np.testing.assert_array_equal(
        packed["decoder_input_tokens"], fc.pack_examples(examples, bos_id=BOS, eos_id=EOS, max_length=L,
                                                         window=window)["decoder_input_tokens"])
    for r, plan in enumerate(plans):
        _check_row_invariants(packed, r, examples, plan.members)
    # Every example is placed exactly once; in stream order, the placed segments reproduce the unpacked rows.
    order = [k for plan in plans for k in plan.members]
    assert sorted(order) == list(range(200))
    if window == 1:
        assert order == list(range(200))
    for r, plan in enumerate(plans):
        for pos, k in zip(_segments_of_row(packed, r), plan.members):
            n = len(pos)
            assert unpacked["decoder_segment_ids"][k, :n].tolist() == [1] * n
            assert not unpacked["decoder_segment_ids"][k, n:].any()
            for key in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                        "decoder_positions"):
                np.testing.assert_array_equal(packed[key][r, pos], unpacked[key][k, :n])


def test_next_fit_with_window_one_and_pending_prefix():
    segs = [fc.make_segment([1] * n, [3], bos_id=BOS, eos_id=EOS, max_length=10) for n in (3, 3, 6, 1, 8)]
    # Lengths (positions) are n + 2: 5, 5, 8, 3, 10 -> rows [5+5], [8], [3], [10]: in order, no look-ahead.
    batch, plans = fc.pack_segments(iter(segs), max_length=10, num_rows=2, window=1)
    assert [p.members for p in plans] == [(0, 1), (2,)]
    assert plans[-1].pending == (3,)  # drawn, not placed: where the stream resumes
    assert batch["decoder_segment_ids"][0].tolist() == [1] * 5 + [2] * 5
    assert batch["decoder_segment_ids"][1].tolist() == [1] * 8 + [0] * 2
    batch, plans = fc.pack_segments(iter(segs[3:]), max_length=10, num_rows=3, window=1)
    assert [p.members for p in plans] == [(0,), (1,)]
    assert not batch["decoder_segment_ids"][2].any()  # the stream ran dry: an all-padding row


def test_first_fit_look_ahead_fills_rows():
    lengths = [6, 6, 4, 4, 10]
    assert [p.members for p in fc.plan_rows(lengths, max_length=10, window=1)] == [(0,), (1, 2), (3,), (4,)]
    # Window 2: the 4 behind the second 6 completes the first row; the second 6 then opens the next one.
    plans = list(fc.plan_rows(lengths, max_length=10, window=2))
    assert [p.members for p in plans] == [(0, 2), (1, 3), (4,)]
    assert [p.pending for p in plans] == [(1, 3), (4,), ()]
    # A refill during a row is a candidate for that row: window 1 cannot see past the 6, window 2 can.
    assert [p.members for p in fc.plan_rows([6, 6, 2, 2], max_length=10, window=2)] == [(0, 2, 3), (1,)]
    # Unpacked: one segment per row, in order, whatever the window.
    assert [p.members for p in fc.plan_rows(lengths, max_length=10, window=3, pack=False)] == [(i,) for i in range(5)]


@pytest.mark.parametrize("window", [2, 5, 16])
def test_plan_rows_properties_and_restart_from_pending(window):
    rng = np.random.default_rng(window)
    L = 100
    lengths = rng.choice([3, 10, 40, 70, 99, 100], size=300, p=[0.2, 0.3, 0.2, 0.15, 0.1, 0.05]).tolist()
    plans = list(fc.plan_rows(lengths, max_length=L, window=window))
    placed: set[int] = set()
    for r, p in enumerate(plans):
        assert p.members and list(p.members) == sorted(p.members)
        assert sum(lengths[k] for k in p.members) <= L
        # The oldest unplaced segment opens every row: no segment waits more than `window` rows.
        assert p.members[0] == min(set(range(len(lengths))) - placed)
        placed |= set(p.members)
        assert len(p.pending) == min(window, len(lengths) - len(placed)) and not placed & set(p.pending)
        # Nothing pending fits the row's leftover space (else first-fit would have taken it).
        assert all(sum(lengths[k] for k in p.members) + lengths[k] > L for k in p.pending)
    assert placed == set(range(len(lengths)))
    # The state between rows is the window: restarting on `pending` + the undrawn rest continues identically.
    for r in (0, 7, len(plans) // 2):
        pending = plans[r].pending
        drawn = max(placed_k for p in plans[:r + 1] for placed_k in p.members + p.pending) + 1
        ordinals = list(pending) + list(range(drawn, len(lengths)))
        resumed = list(fc.plan_rows([lengths[k] for k in ordinals], max_length=L, window=window))
        assert [tuple(ordinals[i] for i in p.members) for p in resumed] == [p.members for p in plans[r + 1:]]
    # The look-ahead pays: fewer rows than in-order next-fit on the same lengths.
    assert len(plans) < len(list(fc.plan_rows(lengths, max_length=L, window=1)))


def test_window_and_length_validation():
    for bad in (0, -1, 1.5, True, "8"):
        with pytest.raises(ValueError, match="window must be an int >= 1"):
            list(fc.plan_rows([1], max_length=4, window=bad))
    with pytest.raises(ValueError, match="segment 1 has 5 positions"):
        list(fc.plan_rows([2, 5], max_length=4))
    with pytest.raises(ValueError, match="max_length=4"):
        list(fc.pack_rows([fc.make_segment([1] * 9, [3], bos_id=BOS, eos_id=EOS, max_length=20)], max_length=4))


def test_task_ids_follow_segments():
    segs = [fc.make_segment([1, 1], [3], bos_id=BOS, eos_id=EOS, max_length=12, tag=t) for t in (4, 9)]
    batch, _ = fc.pack_segments(segs, max_length=12, num_rows=1, with_tags=True)
    assert batch[fc.TASK_ID_KEY][0].tolist() == [4] * 4 + [9] * 4 + [-1] * 4


def test_seqio_converter_matches_numpy():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(1)
    examples = _random_examples(rng, 40, max_src=50)
    # Longer than both the row and the task feature length: the converter left-truncates instead of failing.
    examples[5] = (list(range(100, 190)), [7, 8, 9])
    ds = tf.data.Dataset.from_generator(
        lambda: ({"inputs": np.asarray(s, np.int32), "targets": np.asarray(t, np.int32)} for s, t in examples),
        output_signature={"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)})
    num_rows = {}
    for pack, window in ((True, None), (True, 1), (True, 3), (False, None)):
        kw = {} if window is None else {"packing_window": window}
        conv = fc.CausalLMFeatureConverter(pack=pack, bos_id=BOS, eos_id=EOS, max_length=48, **kw)
        out = list(conv(ds, {"inputs": 64, "targets": 16}).as_numpy_iterator())
        num_rows[pack, window] = len(out)
        ref = fc.pack_examples(examples, bos_id=BOS, eos_id=EOS, max_length=48, pack=pack,
                               window=window or fc.DEFAULT_PACKING_WINDOW)
        assert len(out) == ref["decoder_input_tokens"].shape[0]
        for key in fc.BATCH_KEYS:
            np.testing.assert_array_equal(np.stack([o[key] for o in out]), ref[key])
    # The converter honours the window: its default look-ahead needs fewer rows than in-order packing.
    assert num_rows[True, None] < num_rows[True, 1] < num_rows[False, None] == len(examples)
    with pytest.raises(ValueError, match="packing_window must be an int >= 1"):
        fc.CausalLMFeatureConverter(packing_window=0)
