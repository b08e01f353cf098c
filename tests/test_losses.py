"""Chunked tied-LM-head cross-entropy (optiml_jax.losses) equals the full-logits loss, value and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optiml_jax import losses

B, L, D, V = 3, 37, 16, 101


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(V, D)) * 0.3, jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)
    # Fractional loss weights and zeros (padding, prompts), as packed batches carry.
    weights = jnp.asarray((rng.random((B, L)) > 0.3) * rng.random((B, L)), jnp.float32)
    return h, w, targets, weights


def reference(h, w, targets, weights, z_loss):
    """Full logits in numpy float64."""
    h, w, t, wt = (np.asarray(x, np.float64) for x in (h, w, targets, weights))
    logits = h @ w.T
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    ce = log_z - np.take_along_axis(logits, t.astype(int)[..., None], -1)[..., 0] + z_loss * log_z ** 2
    return (ce * wt).sum(), wt.sum()


@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
@pytest.mark.parametrize("chunk_tokens", [9, 60])  # 3 and 20 positions per chunk; 37 is a multiple of neither
def test_chunked_equals_full_value_and_gradients(inputs, z_loss, chunk_tokens):
    h, w, targets, weights = inputs

    def loss(chunk):
        return lambda h, w, wt: losses.cross_entropy_sums(h, w, targets, wt, z_loss=z_loss, chunk_tokens=chunk)[0]

    full, g_full = jax.jit(jax.value_and_grad(loss(0), argnums=(0, 1, 2)))(h, w, weights)
    chunked, g_chunk = jax.jit(jax.value_and_grad(loss(chunk_tokens), argnums=(0, 1, 2)))(h, w, weights)
    ref, wsum = reference(h, w, targets, weights, z_loss)
    np.testing.assert_allclose(float(full), ref, rtol=1e-5)
    np.testing.assert_allclose(float(chunked), float(full), rtol=1e-6)
    for name, a, b in zip(("h", "w", "weights"), g_chunk, g_full):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=1e-5, err_msg=name)
    assert float(losses.cross_entropy_sums(h, w, targets, weights, chunk_tokens=chunk_tokens)[1]) == \
        pytest.approx(wsum, rel=1e-6)
    # The per-token loss is also the gradient with respect to the weights.
    assert float(jnp.abs(g_chunk[2]).sum()) > 0


def test_chunked_gradient_flows_through_a_model_like_function(inputs):
    """The custom VJP scales by the incoming cotangent and composes with what produced h and w."""
    h, w, targets, weights = inputs
    proj = jnp.eye(D) * 1.5

    def loss(chunk, proj):
        s, n = losses.cross_entropy_sums(jnp.tanh(h @ proj), w * 2.0, targets, weights, chunk_tokens=chunk)
        return 3.0 * s / n

    a = jax.grad(lambda p: loss(0, p))(proj)
    b = jax.grad(lambda p: loss(7, p))(proj)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5)
    # Inside a microbatch-style scan as the trainer's gradient accumulation uses it.
    def acc(p):
        def body(c, i):
            return c + loss(7, p * (1.0 + i)), None
        return jax.lax.scan(body, 0.0, jnp.arange(2.0))[0]

    def acc_full(p):
        return loss(0, p) + loss(0, 2.0 * p)

    np.testing.assert_allclose(np.asarray(jax.grad(acc)(proj)), np.asarray(jax.grad(acc_full)(proj)),
                               atol=1e-5, rtol=1e-5)


def test_bf16_compute_is_close_to_full(inputs):
    h, w, targets, weights = inputs
    hb, wb = h.astype(jnp.bfloat16), w.astype(jnp.bfloat16)

    def loss(chunk):
        return lambda h, w: losses.cross_entropy_sums(h, w, targets, weights, chunk_tokens=chunk)[0]

    full, (gh, gw) = jax.value_and_grad(loss(0), argnums=(0, 1))(hb, wb)
    chunked, (ch, cw) = jax.value_and_grad(loss(20), argnums=(0, 1))(hb, wb)
    assert ch.dtype == jnp.bfloat16 and cw.dtype == jnp.bfloat16
    np.testing.assert_allclose(float(chunked), float(full), rtol=1e-5)  # f32 logits/accumulation either way
    np.testing.assert_allclose(np.asarray(ch, np.float32), np.asarray(gh, np.float32), atol=2e-2, rtol=2e-2)
    np.testing.assert_allclose(np.asarray(cw, np.float32), np.asarray(gw, np.float32), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("chunk_tokens", [0, 5, 64])
def test_token_log_likelihoods_equal_log_softmax(inputs, chunk_tokens):
    h, w, targets, _ = inputs
    ll, log_z = jax.jit(lambda h, w, t: losses.token_log_likelihoods(h, w, t, chunk_tokens=chunk_tokens))(
        h, w, targets)
    logp = jax.nn.log_softmax(jnp.einsum("bld,vd->blv", h, w), axis=-1)
    np.testing.assert_allclose(np.asarray(ll), np.asarray(jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]),
                               atol=2e-6)
    np.testing.assert_allclose(np.asarray(log_z), np.asarray(jax.nn.logsumexp(jnp.einsum("bld,vd->blv", h, w), -1)),
                               rtol=1e-6)
    assert ll.shape == log_z.shape == (B, L)


def test_cross_entropy_from_logits_matches_numpy(inputs):
    h, w, targets, weights = inputs
    logits = jnp.einsum("bld,vd->blv", h, w)
    for z in (0.0, 1e-3):
        s, n = losses.cross_entropy_from_logits(logits, targets, weights, z_loss=z)
        ref, wsum = reference(h, w, targets, weights, z)
        np.testing.assert_allclose(float(s), ref, rtol=1e-5)
        assert float(n) == pytest.approx(wsum)


def test_backward_never_holds_the_full_logits():
    """XLA's compiled temporaries of the loss gradient: the full path needs the [tokens, vocab] f32 logits (and
    their gradient), the chunked one only a chunk of them."""
    b, length, d, v = 4, 512, 32, 4096
    full_logits = b * length * v * 4  # 32 MiB
    args = (jax.ShapeDtypeStruct((b, length, d), jnp.float32), jax.ShapeDtypeStruct((v, d), jnp.float32),
            jax.ShapeDtypeStruct((b, length), jnp.int32), jax.ShapeDtypeStruct((b, length), jnp.float32))

    def temp(chunk):
        def f(h, w, t, wt):
            return losses.cross_entropy_sums(h, w, t, wt, chunk_tokens=chunk)[0]
        return jax.jit(jax.grad(f, argnums=(0, 1))).lower(*args).compile().memory_analysis().temp_size_in_bytes

    assert temp(0) >= full_logits
    # A few chunk-sized f32 buffers (logits, their gradient): the chunk's size, not the batch's, sets the cost.
    chunk_256, chunk_64 = temp(256), temp(64)
    assert chunk_256 < full_logits / 2
    assert chunk_64 < chunk_256 / 2


def test_shapes_are_checked(inputs):
    h, w, targets, weights = inputs
    with pytest.raises(ValueError, match="expected h"):
        losses.cross_entropy_sums(h[0], w, targets, weights)
    with pytest.raises(ValueError, match="weights"):
        losses.cross_entropy_sums(h, w, targets, weights[:, :-1])
    assert losses.chunk_positions(4, 512, 0) == 512
    assert losses.chunk_positions(4, 512, 1000) == 250
    assert losses.chunk_positions(8, 16, 4) == 1
