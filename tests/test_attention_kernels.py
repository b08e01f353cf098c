"""Attention kernels (models/attention.py): each fused kernel equals the XLA path on packed, padded batches.

The Pallas kernels run in interpret mode here (no GPU/TPU): the numerics of the very kernels that are compiled
on accelerators, at tiny shapes because the interpreter is slow. "cudnn" runs the same
`jax.nn.dot_product_attention` call with implementation="xla".
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optiml_jax import gin_utils, partitioning, train
from optiml_jax.models import attention
from optiml_jax.models.configs import ATTENTION_KERNELS, get_config
from optiml_jax.models.opt import OPTForCausalLM

FWD_TOL, GRAD_TOL = 1e-4, 1e-3  # f32, the acceptance bounds


def _packed_segments(batch: int, length: int) -> np.ndarray:
    """Row 0: three packed segments and right padding; row 1: left padding then one segment; further rows:
    two segments with padding between and after them (every layout the feature converters and decoding make)."""
    seg = np.zeros((batch, length), np.int32)
    a, b = length // 3, 2 * length // 3
    seg[0, :a], seg[0, a:b], seg[0, b:length - 3] = 1, 2, 3
    seg[1, 5:] = 1
    for r in range(2, batch):
        seg[r, 1:a], seg[r, a + 2:length - 4] = 1, 2
    return seg


def _single_segments(batch: int, length: int) -> np.ndarray:
    """One segment per row: right padding, left padding, then no padding."""
    seg = np.zeros((batch, length), np.int32)
    seg[0, :length - 7] = 1
    seg[1 % batch, 6:] = 4
    if batch > 2:
        seg[2, :] = 2
    return seg


def _qkv(shape: tuple[int, ...], seed: int = 0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    # Scaled as the model's pre-scaled query is, so that softmax rows are neither flat nor one-hot.
    return tuple(jnp.asarray(rng.standard_normal(shape) * s, dtype) for s in (shape[-1] ** -0.5, 1.0, 1.0))


def _reference(q, k, v, seg):
    idx = jnp.arange(seg.shape[1], dtype=jnp.int32)
    return attention.xla_attention(q, k, v, attention.AttentionSegments(seg, seg, idx, idx))


def _kernel(name: str):
    return {
        "pallas": lambda q, k, v, s: attention.pallas_attention(q, k, v, s, interpret=True),
        "splash": lambda q, k, v, s: attention.splash_attention(q, k, v, s, interpret=True),
        "cudnn": lambda q, k, v, s: attention.cudnn_attention(q, k, v, s, implementation="xla"),
    }[name]


def _max_diff(a, b, where=None) -> float:
    d = jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))
    if where is not None:
        d = jnp.where(where, d, 0.0)
    return float(jnp.max(d))


# ----------------------------------------------------------------------------------------------------------------
# Kernel level
# ----------------------------------------------------------------------------------------------------------------


def test_unique_padding_ids_and_tiles():
    seg = jnp.asarray([[1, 1, 0, 2, 0], [0, 0, 3, 3, 3]], jnp.int32)
    ids = attention.unique_padding_ids(seg, 7)
    assert ids.tolist() == [[1, 1, -3, 2, -5, -6, -7], [-1, -2, 3, 3, 3, -6, -7]]
    # Triton tiles: powers of two in [16, 128] dividing the padded length.
    assert [attention.pallas_tiles(n) for n in (1, 16, 40, 100, 128, 130, 2048)] == [
        (16, 16), (16, 16), (64, 64), (128, 128), (128, 128), (128, 256), (128, 2048)]
    # Splash tiles: 512/256/128 dividing the length padded to a multiple of 128.
    assert [attention.splash_tiles(n) for n in (40, 128, 300, 512, 2000, 2048)] == [
        (128, 128), (128, 128), (128, 384), (512, 512), (512, 2048), (512, 2048)]


def test_single_segment_rows():
    seg = jnp.asarray([[1, 1, 1, 0, 0],   # right padding
                       [0, 0, 5, 5, 5],   # left padding
                       [0, 0, 0, 0, 0],   # all padding
                       [1, 1, 2, 2, 0],   # packed
                       [1, 0, 1, 1, 0],   # one id, not contiguous
                       [0, 3, 3, 3, 0]],  # padding on both sides
                      jnp.int32)
    supported, start, length = attention.single_segment_rows(seg)
    assert supported.tolist() == [True, True, True, False, False, True]
    assert start.tolist() == [0, 2, 0, 0, 0, 1]
    assert length.tolist() == [3, 3, 0, 4, 3, 3]


@pytest.mark.parametrize("name", ["pallas", "splash"])
def test_fused_kernel_equals_xla_on_packed_padded_batch(name):
    # Length 40 is no multiple of either kernel's tile; head_dim 24 is no power of two (mha pads it to 32).
    seg = jnp.asarray(_packed_segments(3, 40))
    q, k, v = _qkv((3, 40, 2, 24))
    fn = jax.jit(_kernel(name))
    out, ref = fn(q, k, v, seg), _reference(q, k, v, seg)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    # Padding rows too: with a unique id per padding position, a padding query sees only itself, as in XLA.
    assert _max_diff(out, ref) < FWD_TOL

    def loss(f):
        w = jnp.asarray(np.random.default_rng(1).standard_normal(ref.shape), jnp.float32)
        return lambda q, k, v: jnp.sum(f(q, k, v, seg) * w)

    got = jax.jit(jax.grad(loss(_kernel(name)), argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(loss(_reference), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        assert _max_diff(g, w) < GRAD_TOL


@pytest.mark.parametrize("name", ["pallas", "splash"])
def test_fused_kernel_bfloat16_keeps_dtype_and_matches(name):
    seg = jnp.asarray(_packed_segments(2, 32))
    q, k, v = _qkv((2, 32, 2, 16), dtype=jnp.bfloat16)
    out = jax.jit(_kernel(name))(q, k, v, seg)
    ref = _reference(q, k, v, seg)
    assert out.dtype == jnp.bfloat16
    assert _max_diff(out, ref) < 2e-2  # bf16 rounding of the probabilities and the output


def test_cudnn_call_equals_xla_on_single_segment_rows_and_is_nan_on_packed_rows():
    q, k, v = _qkv((3, 24, 2, 8))
    seg = jnp.asarray(_single_segments(3, 24))
    out, ref = jax.jit(_kernel("cudnn"))(q, k, v, seg), _reference(q, k, v, seg)
    real = (seg != 0)[:, :, None, None]
    assert _max_diff(out, ref, real) < FWD_TOL
    assert float(jnp.max(jnp.abs(jnp.where(real, 0.0, out)))) == 0.0  # padding rows are zeros

    def loss(f):
        return lambda q, k, v: jnp.sum(jnp.where(real, f(q, k, v, seg), 0.0) ** 2)

    for g, w in zip(jax.jit(jax.grad(loss(_kernel("cudnn")), argnums=(0, 1, 2)))(q, k, v),
                    jax.jit(jax.grad(loss(_reference), argnums=(0, 1, 2)))(q, k, v)):
        assert _max_diff(g, w) < GRAD_TOL

    packed = jnp.asarray(_packed_segments(3, 24))
    out = jax.jit(_kernel("cudnn"))(q, k, v, packed)
    assert bool(jnp.isnan(out[0]).all()) and bool(jnp.isnan(out[2]).all())  # several segments: refused loudly
    assert _max_diff(out[1], _reference(q, k, v, packed)[1], real[1] & (packed[1] != 0)[:, None, None]) < FWD_TOL


# ----------------------------------------------------------------------------------------------------------------
# The whole model
# ----------------------------------------------------------------------------------------------------------------


def _tiny(kernel: str, layers: int = 1):
    # A small vocabulary keeps the logits cheap; 4 heads of 16. One layer by default: the interpreter compiles
    # each layer's kernel calls separately, and every layer runs the same attention code.
    return OPTForCausalLM(get_config("tiny").replace(vocab_size=128, max_position_embeddings=64,
                                                     num_hidden_layers=layers, attention_kernel=kernel))


@functools.cache
def _loss_and_grad(kernel: str):
    """jit(value_and_grad) of a tiny model's next-token loss over real, same-segment targets, per kernel (cached:
    the XLA reference is compiled once for every test that compares with it)."""
    model = _tiny(kernel)

    def f(params, ids, seg):
        logits = model.apply({"params": params}, ids, segment_ids=seg)
        logp = jax.nn.log_softmax(logits[:, :-1])
        nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(nll * ((seg[:, 1:] != 0) & (seg[:, 1:] == seg[:, :-1]))), logits

    return jax.jit(jax.value_and_grad(f, has_aux=True))


@functools.cache
def _tiny_params():
    return _tiny("xla").init_params(jax.random.PRNGKey(0))


@pytest.mark.parametrize("name", ["pallas", "splash", "cudnn"])
def test_model_with_kernel_equals_xla(name):
    batch, length = 2, 24
    seg = _single_segments(batch, length) if name == "cudnn" else _packed_segments(batch, length)
    seg = jnp.asarray(seg)
    ids = jnp.asarray(np.random.default_rng(2).integers(3, 128, (batch, length)), jnp.int32)
    params, real = _tiny_params(), seg != 0
    (l_ref, logits_ref), g_ref = _loss_and_grad("xla")(params, ids, seg)
    (l_got, logits), g_got = _loss_and_grad(name)(params, ids, seg)
    assert _max_diff(logits, logits_ref, real[:, :, None]) < FWD_TOL
    assert abs(float(l_got) - float(l_ref)) < FWD_TOL * max(1.0, abs(float(l_ref)))
    diffs = jax.tree.leaves(jax.tree.map(_max_diff, g_got, g_ref))
    assert max(diffs) < GRAD_TOL
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_ref)) > 1e-3  # gradients are not all ~0


def test_decoding_with_a_fused_kernel_takes_the_xla_path():
    # Prefill and one step through the KV cache: bit-identical to the XLA model (the fused kernels are not used
    # there; they assume queries and keys start at the same position).
    ids = jnp.asarray([[1, 1, 9, 10, 11], [5, 6, 7, 8, 9]], jnp.int32)
    seg = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], jnp.int32)
    outs = []
    params = _tiny_params()
    for kernel in ("xla", "pallas"):
        model = _tiny(kernel)

        @jax.jit
        def prefill_and_step(params, cache, model=model):
            logits, mut = model.apply({"params": params, "cache": cache}, ids, segment_ids=seg, decode=True,
                                      mutable=["cache"])
            step, _ = model.apply({"params": params, "cache": mut["cache"]}, jnp.asarray([[12], [13]], jnp.int32),
                                  segment_ids=jnp.ones((2, 1), jnp.int32), decode=True, mutable=["cache"])
            return logits, step

        outs.append(prefill_and_step(params, model.init_cache(2, 8)))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_kernel_names_and_refusals():
    assert ATTENTION_KERNELS == ("xla", "pallas", "splash", "cudnn")
    model = _tiny("pallas")
    with pytest.raises(ValueError, match="attention_kernel='pallas' does not support attention_dropout"):
        m = OPTForCausalLM(model.config.replace(attention_dropout=0.1))
        jax.eval_shape(lambda: m.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                                      jnp.zeros((1, 8), jnp.int32), deterministic=False))
    with pytest.raises(ValueError, match="unknown fused attention kernel"):
        attention.fused_attention("xla", *_qkv((1, 8, 1, 8)), jnp.ones((1, 8), jnp.int32))


def test_training_refuses_cudnn(tmp_path):
    # Training batches are packed, which cuDNN's sequence-length masks cannot express: train() refuses before
    # any work (its argument check; the CLI turns it into one error line, exit 2).
    cfg = get_config("tiny").replace(attention_kernel="cudnn")
    with pytest.raises(gin_utils.GinUsageError, match="attention_kernel='cudnn' cannot express packed rows"):
        train._validate_args(str(tmp_path / "run"), 10, 2, 64, cfg)
    train._validate_args(str(tmp_path / "run"), 10, 2, 64, cfg.replace(attention_kernel="pallas"))


def test_fused_kernel_under_a_mesh_runs_per_device_and_equals_xla():
    # data=2 x model=2: each device gets one batch row and two of the four heads (shard_map), not the whole
    # batch gathered around an unpartitionable custom call.
    seg = jnp.asarray(_packed_segments(2, 24))
    ids = jnp.asarray(np.random.default_rng(3).integers(3, 128, (2, 24)), jnp.int32)
    params = _tiny_params()
    ref = _tiny("xla").apply({"params": params}, ids, segment_ids=seg)
    model = _tiny("pallas")
    mesh = partitioning.create_mesh({"data": 2, "fsdp": 1, "model": 2}, jax.devices()[:4])
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(partitioning.DEFAULT_LOGICAL_AXIS_RULES)):
        fn = jax.jit(lambda p, i, s: model.apply({"params": p}, i, segment_ids=s))
        out = fn(params, ids, seg)
        assert "sdy.manual_computation" in fn.lower(params, ids, seg).as_text()  # the shard_map
        rules = [("length", "model")] + [r for r in partitioning.DEFAULT_LOGICAL_AXIS_RULES if r[0] != "length"]
        with nn.logical_axis_rules(rules), pytest.raises(ValueError, match="need whole sequences"):
            # A fresh function: jit's trace cache does not know the axis rules changed.
            jax.eval_shape(lambda p, i, s: model.apply({"params": p}, i, segment_ids=s), params, ids, seg)
    assert _max_diff(out, ref) < FWD_TOL


# ----------------------------------------------------------------------------------------------------------------
# Causal block skipping of the XLA path (OPTConfig.attention_query_block)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [1, 7, 16, 36, 37])  # 37 = L: one block; 7 and 16 do not divide L
def test_causal_blocks_equal_the_full_score_matrix(block):
    """Forward and gradients on packed rows with padding (padding queries see only themselves)."""
    batch, length, heads, dim = 3, 37, 2, 8
    seg = jnp.asarray(_packed_segments(batch, length))
    q, k, v = _qkv((batch, length, heads, dim), seed=5)
    idx = jnp.arange(length, dtype=jnp.int32)
    segs = attention.AttentionSegments(seg, seg, idx, idx)
    cot = jnp.asarray(np.random.default_rng(6).standard_normal((batch, length, heads, dim)), jnp.float32)

    def loss(fn):
        return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * cot), argnums=(0, 1, 2)))

    ref, g_ref = loss(lambda q, k, v: attention.xla_attention(q, k, v, segs))(q, k, v)
    got, g_got = loss(lambda q, k, v: attention.causal_block_attention(q, k, v, segs, block))(q, k, v)
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)
    out = attention.causal_block_attention(q, k, v, segs, block)
    assert out.shape == q.shape
    assert _max_diff(out, _reference(q, k, v, seg)) < 1e-5
    for a, b in zip(g_got, g_ref):
        assert _max_diff(a, b) < 1e-5
    assert max(float(jnp.max(jnp.abs(g))) for g in g_ref) > 1e-2


def test_model_with_query_blocks_equals_one_block():
    """The whole model (packed, padded rows) with blocks of 5 positions: logits and gradients of the XLA path."""
    batch, length = 2, 24
    seg = jnp.asarray(_packed_segments(batch, length))
    ids = jnp.asarray(np.random.default_rng(2).integers(3, 128, (batch, length)), jnp.int32)
    params = _tiny_params()
    blocked = OPTForCausalLM(_tiny("xla").config.replace(attention_query_block=5))

    def loss(model):
        def f(p):
            logits = model.apply({"params": p}, ids, segment_ids=seg)
            return jnp.sum(jax.nn.log_softmax(logits)[..., 7] * (seg != 0)), logits
        return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

    (l_ref, logits_ref), g_ref = loss(_tiny("xla"))
    (l_got, logits), g_got = loss(blocked)
    assert _max_diff(logits, logits_ref) < 1e-5
    assert abs(float(l_got) - float(l_ref)) < 1e-4
    assert max(jax.tree.leaves(jax.tree.map(_max_diff, g_got, g_ref))) < 1e-5


def test_query_block_must_be_a_non_negative_integer():
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="attention_query_block"):
            get_config("tiny").replace(attention_query_block=bad)
