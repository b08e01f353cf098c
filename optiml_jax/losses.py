"""Cross-entropy of the tied LM head in chunks of positions: never all [tokens, vocab] f32 logits at once.

The tied output projection is the largest matmul of a small OPT (opt-125m: 50272 x 768 per token, more than
all 12 layers' matmuls together) and its f32 logits are the largest activation of the step (about 200 KB
per token). These functions take the final hidden states ``h`` [B, L, D] and the output embedding ``w``
[V, D] instead of logits, and compute logits, log-partition and target logit one chunk of positions at a
time inside a ``lax.scan``:

* `token_log_likelihoods`: log p(target) and log Z per token (scoring; forward only).
* `cross_entropy_sums`: ``sum(w_t * (CE_t + z_loss * logZ_t^2))`` and ``sum(w_t)`` for training, with a
  custom VJP whose forward pass also forms each chunk's gradients (``dlogits = w_t * ((1 + 2 z logZ_t)
  softmax - onehot)``, then ``dh = dlogits @ W`` and ``dW^T += h^T @ dlogits``) and keeps only ``dh``
  [B, L, D] and ``dW`` [V, D]. The backward pass just scales them. That is the same three LM-head matmuls
  as plain autodiff of the full logits (none recomputed, unlike a ``jax.checkpoint`` per chunk, which costs
  a fourth), with one chunk of [B, chunk, V] logits live at a time.

Chunks run along the sequence axis, all rows together, so a batch sharded over data-parallel devices stays
sharded inside every chunk (chunking the flattened tokens would put each chunk on one device). The chunk
covers ``max(1, chunk_tokens // B)`` positions; the sequence is zero-padded to a whole number of chunks with
weight 0. ``chunk_tokens <= 0`` (or a chunk as long as the sequence) computes the full logits in one piece
with plain autodiff: the reference the chunked path is tested against.

`cross_entropy_from_logits` is the same loss for callers that already hold logits.

Pure functions of arrays; no model, trainer or inference imports (losses sit below both in the data flow).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _target_logit(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """The logit of each position's target, [...] from logits [..., V] and targets [...]."""
    return jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _stats(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log Z, target logit) per position from f32 logits [..., V]."""
    return jax.nn.logsumexp(logits, axis=-1), _target_logit(logits, targets)


def cross_entropy_from_logits(logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float = 0.0
                              ) -> tuple[jax.Array, jax.Array]:
    """Sum of weighted cross-entropy (plus the optional PaLM z-loss ``z_loss * logZ^2``) and sum of weights,
    f32, from logits [..., V] and targets/weights [...]."""
    log_z, target = _stats(logits.astype(jnp.float32), targets)
    ce = log_z - target
    if z_loss:
        ce = ce + z_loss * jnp.square(log_z)
    weights = weights.astype(jnp.float32)
    return jnp.sum(ce * weights), jnp.sum(weights)


def _logits(h: jax.Array, w: jax.Array) -> jax.Array:
    # f32 accumulation whatever the compute dtype, as the model's own output projection.
    return jnp.einsum("bld,vd->blv", h, w.astype(h.dtype), preferred_element_type=jnp.float32)


def chunk_positions(batch: int, length: int, chunk_tokens: int) -> int:
    """Positions per chunk for a [batch, length] input and a budget of ``chunk_tokens`` logits rows (0: all)."""
    if chunk_tokens <= 0:
        return length
    return max(1, min(length, chunk_tokens // max(batch, 1)))


def _chunked(x: jax.Array, size: int, fill=0) -> jax.Array:
    """[B, L, ...] -> [n, B, size, ...] (the scan axis first), zero-padding L to a multiple of ``size``."""
    b, length = x.shape[:2]
    n = -(-length // size)
    pad = n * size - length
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
    return jnp.moveaxis(x.reshape((b, n, size) + x.shape[2:]), 1, 0)


def _unchunked(x: jax.Array, length: int) -> jax.Array:
    """Inverse of `_chunked` (drops the padding)."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape((x.shape[0], -1) + x.shape[3:])[:, :length]


def token_log_likelihoods(h: jax.Array, w: jax.Array, targets: jax.Array, *, chunk_tokens: int = 4096
                          ) -> tuple[jax.Array, jax.Array]:
    """``(log p(target), log Z)`` per position, f32 [B, L], of hidden states ``h`` [B, L, D] under the output
    embedding ``w`` [V, D] (logits ``h @ w.T``), computed ``chunk_tokens`` logits rows at a time.

    For scoring (no gradient: differentiating this keeps every chunk's logits as scan residuals; training
    uses `cross_entropy_sums`).
    """
    _check(h, w, targets)
    b, length = targets.shape
    size = chunk_positions(b, length, chunk_tokens)
    if size >= length:
        log_z, target = _stats(_logits(h, w), targets)
        return target - log_z, log_z

    def body(_, xs):
        hc, tc = xs
        log_z, target = _stats(_logits(hc, w), tc)
        return None, (target - log_z, log_z)

    _, (ll, log_z) = jax.lax.scan(body, None, (_chunked(h, size), _chunked(targets, size)))
    return _unchunked(ll, length), _unchunked(log_z, length)


def cross_entropy_sums(h: jax.Array, w: jax.Array, targets: jax.Array, weights: jax.Array, *,
                       z_loss: float = 0.0, chunk_tokens: int = 4096) -> tuple[jax.Array, jax.Array]:
    """``(sum_t weights_t * (CE_t + z_loss * logZ_t^2), sum_t weights_t)``, f32, for hidden states ``h``
    [B, L, D], output embedding ``w`` [V, D], targets and weights [B, L]; differentiable in ``h``, ``w`` and
    ``weights`` without ever holding more than one chunk of logits (see the module docstring)."""
    _check(h, w, targets)
    if weights.shape != targets.shape:
        raise ValueError(f"weights {weights.shape} and targets {targets.shape} must have the same shape")
    weights = weights.astype(jnp.float32)
    b, length = targets.shape
    size = chunk_positions(b, length, chunk_tokens)
    if size >= length:
        # One chunk would cover the sequence: plain autodiff of the full logits. The custom VJP with one
        # [B, L, V] chunk was slower in f32 and held 15% more temporaries (bench/README.md, "One exponential").
        return cross_entropy_from_logits(_logits(h, w), targets, weights, z_loss)
    return _chunked_ce(h, w, targets, weights, float(z_loss), size), jnp.sum(weights)


def _check(h: jax.Array, w: jax.Array, targets: jax.Array) -> None:
    if h.ndim != 3 or w.ndim != 2 or h.shape[-1] != w.shape[-1] or targets.shape != h.shape[:2]:
        raise ValueError(f"expected h [B, L, D], w [V, D], targets [B, L]; got {h.shape}, {w.shape}, "
                         f"{targets.shape}")


def _per_token_ce(log_z: jax.Array, target: jax.Array, z_loss: float) -> jax.Array:
    ce = log_z - target
    return ce + z_loss * jnp.square(log_z) if z_loss else ce


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked_ce(h, w, targets, weights, z_loss, size):
    def body(total, xs):
        hc, tc, wc = xs
        log_z, target = _stats(_logits(hc, w), tc)
        return total + jnp.sum(_per_token_ce(log_z, target, z_loss) * wc), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32),
                            (_chunked(h, size), _chunked(targets, size), _chunked(weights, size)))
    return total


def _chunked_ce_fwd(h, w, targets, weights, z_loss, size):
    length = targets.shape[1]
    vocab = w.shape[0]
    wc_dtype = h.dtype  # the compute dtype: the gradient matmuls run in it, accumulating in f32

    def body(carry, xs):
        total, dw_t = carry
        hc, tc, wtc = xs
        logits = _logits(hc, w)
        # One exponential per logit serves both log Z and the softmax: logsumexp followed by
        # exp(logits - log Z) takes two, and on CPU that second pass over [B, chunk, V] cost ~10% of the LM head.
        peak = jnp.max(logits, axis=-1)
        unnormalised = jnp.exp(logits - peak[..., None])
        partition = jnp.sum(unnormalised, axis=-1)
        log_z = peak + jnp.log(partition)
        ce = _per_token_ce(log_z, _target_logit(logits, tc), z_loss)
        # d(loss)/d(logits) of this chunk; the one-hot term is subtracted with a compare, not a scatter.
        scale = wtc * (1.0 + 2.0 * z_loss * log_z) if z_loss else wtc
        onehot = jnp.arange(vocab, dtype=jnp.int32) == tc[..., None].astype(jnp.int32)
        g = (unnormalised * (scale / partition)[..., None]
             - jnp.where(onehot, wtc[..., None], 0.0)).astype(wc_dtype)
        dh = jnp.einsum("blv,vd->bld", g, w.astype(wc_dtype), preferred_element_type=jnp.float32)
        # dW is accumulated transposed, [D, V]: h^T @ g reads the chunk's gradient in the layout it was written
        # in, where g^T @ h made XLA's CPU backend copy-transpose every [chunk, V] gradient first (3-8% of the
        # LM head); one transpose of the sum at the end is cheaper.
        dw_t = dw_t + jnp.einsum("bld,blv->dv", hc, g, preferred_element_type=jnp.float32)
        return (total + jnp.sum(ce * wtc), dw_t), (dh.astype(h.dtype), ce)

    xs = (_chunked(h, size), _chunked(targets, size), _chunked(weights, size))
    # The first chunk runs outside the scan and its dW starts the sum: a zero [D, V] accumulator would cost a
    # fill and an add over all of dW (~1% of the CPU step; the vocabulary makes dW the largest gradient). Outside
    # a loop XLA folds the additions to zero away.
    h0, t0, w0 = (x[0] for x in xs)
    first, (dh0, ce0) = body((jnp.zeros((), jnp.float32), jnp.zeros(w.shape[::-1], jnp.float32)), (h0, t0, w0))
    (total, dw_t), (dh, ce) = jax.lax.scan(body, first, tuple(x[1:] for x in xs))
    dh = jnp.concatenate([dh0[None], dh])
    ce = jnp.concatenate([ce0[None], ce])
    return total, (_unchunked(dh, length), dw_t.T.astype(w.dtype), _unchunked(ce, length), targets)


def _chunked_ce_bwd(z_loss, size, residuals, g):
    dh, dw, ce, targets = residuals
    del z_loss, size
    zero_targets = np.zeros(targets.shape, jax.dtypes.float0)  # integer input: no cotangent
    return (g * dh).astype(dh.dtype), (g * dw).astype(dw.dtype), zero_targets, g * ce


_chunked_ce.defvjp(_chunked_ce_fwd, _chunked_ce_bwd)
