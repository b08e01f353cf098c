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


def test_truncation_keeps_target_and_drops_oldest_source():
    s = fc.make_segment(list(range(100, 120)), [7, 8, 9], bos_id=BOS, eos_id=EOS, max_length=10)
    assert s.length == 10 and s.truncated == fc.SOURCE_TRUNCATED
    # BOS, the 6 most recent source tokens, the full target, EOS.
    assert s.tokens.tolist() == [2, 114, 115, 116, 117, 118, 119, 7, 8, 9, 2]
    t = fc.make_segment([1, 1, 1], list(range(50, 70)), bos_id=BOS, eos_id=EOS, max_length=8)
    assert t.truncated == fc.TARGET_TRUNCATED and t.length == 8
    assert t.tokens.tolist() == [2] + list(range(63, 70)) + [2]
    assert fc.segment_features(t)["decoder_loss_weights"].sum() == 8
    with pytest.raises(ValueError, match="max_length"):
        fc.make_segment([1], [2], bos_id=BOS, eos_id=EOS, max_length=1)


def test_packing_invariants_exact():
    rng = np.random.default_rng(0)
    examples = _random_examples(rng, 200)
    L = 64
    packed = fc.pack_examples(examples, bos_id=BOS, eos_id=EOS, max_length=L)
    unpacked = fc.pack_examples(examples, bos_id=BOS, eos_id=EOS, max_length=L, pack=False)
    assert unpacked["decoder_input_tokens"].shape == (200, L)
    assert packed["decoder_input_tokens"].shape[0] < 200
    for key in fc.BATCH_KEYS:
        assert packed[key].dtype == (np.float32 if key == "decoder_loss_weights" else np.int32)

    # Concatenating the unpacked rows' real positions reproduces the packed rows, segment by segment.
    k = 0
    for r in range(packed["decoder_input_tokens"].shape[0]):
        for pos in _segments_of_row(packed, r):
            assert pos.tolist() == list(range(pos[0], pos[-1] + 1))  # contiguous
            n = len(pos)
            assert unpacked["decoder_segment_ids"][k, :n].tolist() == [1] * n
            assert not unpacked["decoder_segment_ids"][k, n:].any()
            for key in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                        "decoder_positions"):
                np.testing.assert_array_equal(packed[key][r, pos], unpacked[key][k, :n])
            # Positions restart at 0 in every segment.
            assert packed["decoder_positions"][r, pos].tolist() == list(range(n))
            # No loss on a source token: loss starts exactly where the target starts.
            src, tgt = examples[k]
            w = packed["decoder_loss_weights"][r, pos]
            assert w.tolist() == [0.0] * len(src) + [1.0] * (len(tgt) + 1)
            assert packed["decoder_input_tokens"][r, pos[0]] == BOS
            assert packed["decoder_target_tokens"][r, pos[-1]] == EOS
            k += 1
        # Padding carries nothing.
        pad = packed["decoder_segment_ids"][r] == 0
        assert not packed["decoder_loss_weights"][r][pad].any()
        assert not packed["decoder_positions"][r][pad].any()
    assert k == len(examples)


def test_greedy_in_order_packing_and_consumed_count():
    segs = [fc.make_segment([1] * n, [3], bos_id=BOS, eos_id=EOS, max_length=10) for n in (3, 3, 6, 1, 8)]
    # Lengths (positions) are n + 2: 5, 5, 8, 3, 10 -> rows [5+5], [8], [3], [10]: in order, no look-ahead.
    batch, consumed = fc.pack_segments(iter(segs), max_length=10, num_rows=2)
    assert consumed == 3
    assert batch["decoder_segment_ids"][0].tolist() == [1] * 5 + [2] * 5
    assert batch["decoder_segment_ids"][1].tolist() == [1] * 8 + [0] * 2
    batch, consumed = fc.pack_segments(iter(segs[3:]), max_length=10, num_rows=3)
    assert consumed == 2
    assert not batch["decoder_segment_ids"][2].any()  # the stream ran dry: an all-padding row


def test_task_ids_follow_segments():
    segs = [fc.make_segment([1, 1], [3], bos_id=BOS, eos_id=EOS, max_length=12, tag=t) for t in (4, 9)]
    batch, _ = fc.pack_segments(segs, max_length=12, num_rows=1, with_tags=True)
    assert batch[fc.TASK_ID_KEY][0].tolist() == [4] * 4 + [9] * 4 + [-1] * 4


def test_seqio_converter_matches_numpy():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(1)
    examples = _random_examples(rng, 40, max_src=50)
    ds = tf.data.Dataset.from_generator(
        lambda: ({"inputs": np.asarray(s, np.int32), "targets": np.asarray(t, np.int32)} for s, t in examples),
        output_signature={"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)})
    for pack in (True, False):
        conv = fc.CausalLMFeatureConverter(pack=pack, bos_id=BOS, eos_id=EOS, max_length=48)
        out = list(conv(ds, {"inputs": 64, "targets": 16}).as_numpy_iterator())
        ref = fc.pack_examples(examples, bos_id=BOS, eos_id=EOS, max_length=48, pack=pack)
        assert len(out) == ref["decoder_input_tokens"].shape[0]
        for key in fc.BATCH_KEYS:
            np.testing.assert_array_equal(np.stack([o[key] for o in out]), ref[key])
