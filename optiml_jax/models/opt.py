"""OPT decoder-only language model in Flax linen, numerically faithful to HF `OPTForCausalLM`.

Parameter tree (names follow HF so conversion is a rename plus reshapes):

    embed_tokens/embedding                 [vocab, word_embed_proj_dim]      (vocab, embed)
    embed_positions/embedding              [max_positions + 2, hidden]       (abspos, embed)
    project_in/kernel, project_out/kernel  only when word_embed_proj_dim != hidden_size
    layers_{i}/self_attn/{q,k,v}_proj      kernel [hidden, heads, head_dim]  (embed, heads, kv), bias (heads, kv)
    layers_{i}/self_attn/out_proj          kernel [heads, head_dim, hidden]  (heads, kv, embed), bias (embed,)
    layers_{i}/{self_attn,final}_layer_norm scale, bias                      (embed,)
    layers_{i}/fc1, fc2                    kernel (embed, mlp) / (mlp, embed)
    final_layer_norm                       pre-LN models only
The output projection is tied to `embed_tokens` (no lm_head parameter).

Masking is driven by segment ids (0 = padding): a token attends to earlier tokens of its own non-zero segment,
which covers causal masking, packed sequences and left padding with one rule. Padding tokens attend only to
themselves so that every softmax row has a valid entry. `OPTConfig.attention_kernel` picks the kernel that
applies the rule (models/attention.py: "xla", or the fused "pallas", "splash", "cudnn" for training/prefill).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from optiml_jax.models.attention import (
    AttentionSegments,
    causal_block_attention,
    fused_attention,
    segment_mask,
    xla_attention,
)
from optiml_jax.models.configs import OPTConfig
from optiml_jax.models.matmul import compute_dot, dot_result_dtype

# OPT reserves the first two rows of its position table (fairseq's padding_idx + 1 offset).
POSITION_OFFSET = 2
_LAYER_NORM_EPS = 1e-5

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str) -> Any:
    """The jnp dtype for one of `configs.DTYPES`."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}") from None


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """0-based position of each query inside its segment: the number of earlier same-segment keys it sees."""
    return jnp.maximum(jnp.sum(mask[:, 0], axis=-1, dtype=jnp.int32) - 1, 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def tied_embedding(table: jax.Array, ids: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """The rows of the tied embedding ``table`` [V, D] for ``ids`` and the table itself, both in ``dtype``.

    Values as flax's ``Embed(dtype=...)`` lookup and ``table.astype(dtype)``. The custom VJP is for the gradient:
    plain autodiff scatter-adds the rows' cotangents into a zero-filled [V, D] buffer and then adds that to the
    output projection's gradient; this adds them straight into the output projection's gradient (one pass over
    dW fewer, and no [V, D] fill: ~0.17 s of a 3.6 s bf16 CPU step at 125m-2l, where XLA does not fold the add
    into the scatter itself). Out-of-range ids read NaN rows and get no gradient, as ``jnp.take``'s.
    """
    return jnp.take(table, ids, axis=0).astype(dtype), table.astype(dtype)


def _tied_embedding_fwd(table, ids, dtype):
    # The scalar only carries the table's dtype to the backward pass, whose gradient must come back in it.
    return tied_embedding(table, ids, dtype), (ids, jnp.zeros((), table.dtype))


def _tied_embedding_bwd(dtype, residuals, cotangents):
    del dtype
    ids, like = residuals
    rows_ct, table_ct = cotangents
    table_ct = table_ct.astype(like.dtype).at[ids].add(rows_ct.astype(like.dtype), mode="drop")
    return table_ct, np.zeros(ids.shape, jax.dtypes.float0)


tied_embedding.defvjp(_tied_embedding_fwd, _tied_embedding_bwd)


def _partitioned(init: Any, names: tuple[str | None, ...]) -> Any:
    return nn.with_logical_partitioning(init, names)


class _EinsumDense(nn.Module):
    """``tensordot(x, kernel, contract) + bias`` with the kernel declared in its final shape under logical names.

    The last ``contract`` dimensions of ``x`` are contracted with the kernel's first ``contract`` dimensions,
    in the same order (q/k/v: ``...e,ehd->...hd`` is 1; out_proj: ``...hd,hde->...e`` is 2). Used for the
    attention projections instead of nn.DenseGeneral, which initialises a flat 2-D kernel and reshapes it: flax
    checks the logical names against the initialiser's shape when a mesh and axis rules are active. The bias
    covers the kernel's trailing (output) dimensions.

    Not ``jnp.einsum``: for ``...hd,hde->...e`` it emits the contraction as (d, h) x (d, h), and XLA's CPU
    backend then copies the [heads, head_dim, hidden] kernel into a [head_dim, heads, hidden] layout to make
    it a 2-D matmul, at every step of the compiled decode loop (it is not hoisted out of the while loop).
    Contracting (h, d) in storage order makes the kernel a free [heads * head_dim, hidden] view, as HF's
    [hidden, heads * head_dim] ``out_proj`` weight is.
    """

    contract: int
    kernel_shape: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    bias_axes: tuple[str, ...]
    use_bias: bool
    dtype: Any
    param_dtype: Any
    kernel_init: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", _partitioned(self.kernel_init, self.kernel_axes), self.kernel_shape,
                            self.param_dtype)
        y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=self.contract,
                          preferred_element_type=dot_result_dtype(self.dtype))
        if self.use_bias:
            bias_shape = self.kernel_shape[len(self.kernel_shape) - len(self.bias_axes):]
            bias = self.param("bias", _partitioned(nn.initializers.zeros, self.bias_axes), bias_shape,
                              self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y.astype(self.dtype)


class OPTAttention(nn.Module):
    """Multi-head self-attention with an optional KV cache ("cache" collection)."""

    config: OPTConfig

    @nn.compact
    def __call__(self, x: jax.Array, segments: AttentionSegments, cache_index: jax.Array, deterministic: bool,
                 decode: bool) -> jax.Array:
        cfg = self.config
        dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        heads, head_dim = cfg.num_attention_heads, cfg.head_dim
        kernel_init = nn.initializers.normal(cfg.init_std)

        def projection(name: str) -> _EinsumDense:
            return _EinsumDense(contract=1, kernel_shape=(cfg.hidden_size, heads, head_dim),
                                kernel_axes=("embed", "heads", "kv"), bias_axes=("heads", "kv"),
                                use_bias=cfg.enable_bias, dtype=dtype, param_dtype=param_dtype,
                                kernel_init=kernel_init, name=name)

        # HF scales the projected query before QK^T (not the scores); keep that order for bit-level parity.
        query = projection("q_proj")(x) * jnp.asarray(head_dim ** -0.5, dtype)
        key = projection("k_proj")(x)
        value = projection("v_proj")(x)
        query = nn.with_logical_constraint(query, ("batch", "length", "heads", "kv"))
        key = nn.with_logical_constraint(key, ("batch", "length", "heads", "kv"))
        value = nn.with_logical_constraint(value, ("batch", "length", "heads", "kv"))

        if decode:
            # The cache is stored heads-major, [batch, heads, length, head_dim]: the layout the score and value
            # contractions read, so the compiled loop never re-transposes the whole K/V buffers at each step;
            # only this call's L new tokens are transposed.
            query, key, value = (jnp.swapaxes(t, 1, 2) for t in (query, key, value))
            initialized = self.has_variable("cache", "cached_key")
            cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
            if initialized:
                # Write this call's L keys/values at [cache_index, cache_index + L) and attend over the buffer.
                key = lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype),
                                               (0, 0, cache_index, 0))
                value = lax.dynamic_update_slice(cached_value.value, value.astype(cached_value.value.dtype),
                                                 (0, 0, cache_index, 0))
                cached_key.value, cached_value.value = key, value
            key = nn.with_logical_constraint(key, ("batch", "heads", "length", "kv"))
            value = nn.with_logical_constraint(value, ("batch", "heads", "length", "kv"))

        # Decoding (prefill included) always takes the XLA path: see models/attention.py.
        if cfg.attention_kernel != "xla" and not decode:
            if cfg.attention_dropout > 0 and not deterministic:
                raise ValueError(f"OPTConfig.attention_kernel={cfg.attention_kernel!r} does not support "
                                 "attention_dropout > 0 in training; use attention_kernel='xla'")
            out = fused_attention(cfg.attention_kernel, query, key, value, segments.q_segment_ids)
        else:
            dropout = nn.Dropout(rate=cfg.attention_dropout)

            def probs_fn(p: jax.Array) -> jax.Array:
                return dropout(p, deterministic=deterministic)

            if decode:
                out = xla_attention(query, key, value, segments, heads_major=True, probs_fn=probs_fn)
            else:
                out = causal_block_attention(query, key, value, segments, cfg.attention_query_block,
                                             probs_fn=probs_fn)
        out = _EinsumDense(contract=2, kernel_shape=(heads, head_dim, cfg.hidden_size),
                           kernel_axes=("heads", "kv", "embed"), bias_axes=("embed",), use_bias=cfg.enable_bias,
                           dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init, name="out_proj")(out)
        return out


def remat_policy(name: str) -> Any:
    """The `jax.checkpoint` policy of a `configs.REMAT_POLICIES` name ("full": save nothing but the layer's
    inputs; "dots_saveable": keep every matmul output; "dots_with_no_batch_dims_saveable": keep the
    projections' and MLP's outputs, recompute attention scores, whose einsums have batch dimensions)."""
    if name == "full":
        return None
    if name in ("dots_saveable", "dots_with_no_batch_dims_saveable"):
        return getattr(jax.checkpoint_policies, name)
    raise ValueError(f"remat policy {name!r} does not rematerialise; expected one of "
                     f"'full', 'dots_saveable', 'dots_with_no_batch_dims_saveable'")


def remat_layer(layer_cls: type[nn.Module], policy: str) -> type[nn.Module]:
    """``layer_cls`` wrapped in ``nn.remat`` with the named policy ("none": unchanged). Per layer, so it
    composes with a python loop over layers as with ``nn.scan``."""
    if policy == "none":
        return layer_cls
    # Arguments 4 and 5 (counting self) of a decoder layer are Python bools that select code paths.
    return nn.remat(layer_cls, policy=remat_policy(policy), static_argnums=(4, 5))


def _layer_norm(cfg: OPTConfig, name: str) -> nn.LayerNorm:
    affine = cfg.layer_norm_elementwise_affine
    return nn.LayerNorm(
        epsilon=_LAYER_NORM_EPS, use_bias=affine, use_scale=affine, dtype=dtype_of(cfg.dtype),
        param_dtype=dtype_of(cfg.param_dtype), scale_init=_partitioned(nn.initializers.ones, ("embed",)),
        bias_init=_partitioned(nn.initializers.zeros, ("embed",)), name=name)


def _dense(cfg: OPTConfig, features: int, kernel_axes: tuple[str | None, str | None], *, use_bias: bool,
           name: str) -> Callable[[jax.Array], jax.Array]:
    """``x @ kernel (+ bias)`` as flax's Dense under the logical ``kernel_axes`` (the bias takes the output's),
    returned in the compute dtype (the matmul's own result dtype is `models.matmul`'s choice)."""
    dtype = dtype_of(cfg.dtype)
    dense = nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=dtype_of(cfg.param_dtype),
                     kernel_init=_partitioned(nn.initializers.normal(cfg.init_std), kernel_axes),
                     bias_init=_partitioned(nn.initializers.zeros, kernel_axes[-1:]), dot_general=compute_dot,
                     name=name)
    return lambda x: dense(x).astype(dtype)


class OPTDecoderLayer(nn.Module):
    """One transformer block; pre-LN (most OPTs) or post-LN (opt-350m) per `do_layer_norm_before`."""

    config: OPTConfig

    @nn.compact
    def __call__(self, x: jax.Array, segments: AttentionSegments, cache_index: jax.Array, deterministic: bool,
                 decode: bool) -> jax.Array:
        cfg = self.config
        pre_ln = cfg.do_layer_norm_before

        residual = x
        h = _layer_norm(cfg, "self_attn_layer_norm")(x) if pre_ln else x
        h = OPTAttention(cfg, name="self_attn")(h, segments, cache_index, deterministic, decode)
        h = nn.Dropout(rate=cfg.dropout)(h, deterministic=deterministic)
        h = residual + h
        if not pre_ln:
            h = _layer_norm(cfg, "self_attn_layer_norm")(h)

        residual = h
        if pre_ln:
            h = _layer_norm(cfg, "final_layer_norm")(h)
        h = _dense(cfg, cfg.ffn_dim, ("embed", "mlp"), use_bias=cfg.enable_bias, name="fc1")(h)
        h = nn.relu(h)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        h = _dense(cfg, cfg.hidden_size, ("mlp", "embed"), use_bias=cfg.enable_bias, name="fc2")(h)
        h = nn.Dropout(rate=cfg.dropout)(h, deterministic=deterministic)
        h = residual + h
        if not pre_ln:
            h = _layer_norm(cfg, "final_layer_norm")(h)
        return nn.with_logical_constraint(h, ("batch", "length", "embed"))


class OPTForCausalLM(nn.Module):
    """OPT language model: token ids -> next-token logits (f32).

    Call with `input_ids` int [B, L] and optionally `segment_ids` (0 = padding; packing = several ids per row)
    and `positions` (0-based within each segment; OPT's offset of 2 is added here). Without `positions` they
    are derived from the mask: the count of earlier tokens of the same segment (in decode mode including
    those already in the cache), which is what packing, left padding and generation need.

    Decoding: `variables["cache"] = model.init_cache(batch, max_length)`, then
    `logits, mut = model.apply({"params": p, "cache": c}, ids, segment_ids=..., decode=True, mutable=["cache"])`
    with a prefill of L tokens followed by one token per call. Writing past `max_length` yields NaN logits
    rather than silently overwriting the cache.
    """

    config: OPTConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, *, segment_ids: jax.Array | None = None,
                 positions: jax.Array | None = None, deterministic: bool = True,
                 decode: bool = False, logits_to_keep: int = 0, return_hidden: bool = False) -> Any:
        """Next-token logits [batch, length, vocab] f32; with ``logits_to_keep=k > 0`` only the last k
        positions [batch, k, vocab] (a decoding prefill needs one row, and the tied output projection is the
        most expensive matmul of the model).

        ``return_hidden=True`` returns ``(hidden [batch, length, word_embed_proj_dim], output embedding
        [vocab, word_embed_proj_dim])`` in the compute dtype instead of logits, for losses that apply the tied
        LM head in chunks (`optiml_jax.losses`) rather than holding all f32 logits."""
        cfg = self.config
        dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be int [batch, length], got shape {input_ids.shape}")
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids must be integers, got {input_ids.dtype}")
        batch, length = input_ids.shape
        for arg_name, arg in (("segment_ids", segment_ids), ("positions", positions)):
            if arg is not None and tuple(arg.shape) != (batch, length):
                raise ValueError(f"{arg_name} must have the shape of input_ids {input_ids.shape}, got {arg.shape}")
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        segment_ids = segment_ids.astype(jnp.int32)

        cache_index = jnp.zeros((), jnp.int32)
        kv_segment_ids, q_index = segment_ids, jnp.arange(length, dtype=jnp.int32)
        overflow = None
        if decode:
            initialized = self.has_variable("cache", "cache_index")
            cached_segments = self.variable("cache", "segment_ids", jnp.zeros, (batch, length), jnp.int32)
            index_var = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
            if initialized:
                cache_index = index_var.value
                max_length = cached_segments.value.shape[1]
                kv_segment_ids = lax.dynamic_update_slice(cached_segments.value, segment_ids, (0, cache_index))
                cached_segments.value = kv_segment_ids
                index_var.value = cache_index + length
                q_index = cache_index + q_index
                overflow = cache_index + length > max_length
        kv_index = jnp.arange(kv_segment_ids.shape[1], dtype=jnp.int32)
        segments = AttentionSegments(segment_ids, kv_segment_ids, q_index, kv_index)
        if positions is None:
            positions = positions_from_mask(segment_mask(*segments))

        init = nn.initializers.normal(cfg.init_std)
        embed_tokens = nn.Embed(cfg.vocab_size, cfg.word_embed_proj_dim, dtype=dtype, param_dtype=param_dtype,
                                embedding_init=_partitioned(init, ("vocab", "embed")), name="embed_tokens")
        h, output_embedding = tied_embedding(embed_tokens.embedding, input_ids, dtype)
        if cfg.has_projections:
            h = _dense(cfg, cfg.hidden_size, (None, "embed"), use_bias=False, name="project_in")(h)
        h = h + nn.Embed(cfg.max_position_embeddings + POSITION_OFFSET, cfg.hidden_size, dtype=dtype,
                         param_dtype=param_dtype, embedding_init=_partitioned(init, ("abspos", "embed")),
                         name="embed_positions")(positions.astype(jnp.int32) + POSITION_OFFSET)
        # metaseq applies dropout to the summed embeddings (HF's port omits it; the two agree in eval mode).
        h = nn.Dropout(rate=cfg.dropout)(h, deterministic=deterministic)
        h = nn.with_logical_constraint(h, ("batch", "length", "embed"))

        layer_cls = remat_layer(OPTDecoderLayer, cfg.remat)
        for i in range(cfg.num_hidden_layers):
            h = layer_cls(cfg, name=f"layers_{i}")(h, segments, cache_index, deterministic, decode)

        if cfg.has_final_layer_norm:
            h = _layer_norm(cfg, "final_layer_norm")(h)
        if cfg.has_projections:
            h = _dense(cfg, cfg.word_embed_proj_dim, ("embed", None), use_bias=False, name="project_out")(h)
        if logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        if return_hidden:
            if decode:  # the NaN marking of a cache overflow lives on the logits
                raise ValueError("return_hidden=True is for full forwards; decode=True returns logits")
            return h.astype(dtype), output_embedding
        # Tied output projection, accumulated in f32 even for bf16 compute.
        logits = jnp.einsum("bld,vd->blv", h.astype(dtype), output_embedding,
                            preferred_element_type=jnp.float32)
        if overflow is not None:
            logits = jnp.where(overflow, jnp.nan, logits)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))

    @nn.nowrap
    def init_cache(self, batch_size: int, max_length: int) -> dict[str, Any]:
        """An empty "cache" collection for decoding up to `max_length` tokens per row (no params needed)."""
        if batch_size <= 0 or max_length <= 0:
            raise ValueError(f"init_cache needs positive batch_size and max_length, got {batch_size}, {max_length}")
        if max_length > self.config.max_position_embeddings:
            raise ValueError(f"max_length {max_length} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        ids = jnp.zeros((batch_size, max_length), jnp.int32)
        shapes = jax.eval_shape(lambda: self.init(jax.random.PRNGKey(0), ids, decode=True))["cache"]
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), nn.meta.unbox(shapes))

    @nn.nowrap
    def init_params(self, rng: jax.Array, *, batch_size: int = 1, length: int = 8) -> dict[str, Any]:
        """Freshly initialised parameters (unboxed, the `params` collection only)."""
        ids = jnp.zeros((batch_size, length), jnp.int32)
        # jit: one compiled program instead of hundreds of eagerly dispatched initialiser ops.
        return nn.meta.unbox(jax.jit(lambda r: self.init(r, ids)["params"])(rng))

    @nn.nowrap
    def abstract_params(self) -> dict[str, Any]:
        """Parameter shapes/dtypes as boxed `nn.Partitioned` ShapeDtypeStructs (for partition specs)."""
        ids = jnp.zeros((1, 8), jnp.int32)
        return jax.eval_shape(lambda: self.init(jax.random.PRNGKey(0), ids))["params"]
