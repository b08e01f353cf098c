"""Attention kernels of the OPT model: the XLA reference and fused kernels that understand packed segments.

Every kernel computes causal self-attention inside segments: query i sees key j when both carry the same
non-zero segment id and j <= i; a padding query (segment 0) sees only itself (see `segment_mask`). The query
arrives already scaled by head_dim ** -0.5 (HF's order), so no kernel scales again.

Kernels (`OPTConfig.attention_kernel`, `configs.ATTENTION_KERNELS`):

- ``"xla"``: einsum + f32 softmax over a [B, H, Lq, Lk] score tensor. Every feature: attention dropout, the KV
  cache, any segment layout. Outside decoding, ``OPTConfig.attention_query_block`` > 0 runs it in query blocks
  that skip the causal upper triangle (`causal_block_attention`; less work and memory, measured on CPU). The
  decode path (KV cache, prefill included) always uses it, whatever the kernel: one query row per step makes a
  fused kernel pointless there, and the fused kernels below assume the query and key blocks start at the same
  position, which a cache written at ``cache_index > 0`` breaks.
- ``"pallas"``: `jax.experimental.pallas.ops.gpu.attention.mha` (Triton flash attention, custom VJP) with segment
  ids; compiled on GPU, run by the Pallas interpreter on CPU (slow: tests only).
- ``"splash"``: TPU splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) with `SegmentIds` and a
  causal mask; compiled on TPU, interpreted on CPU.
- ``"cudnn"``: `jax.nn.dot_product_attention(implementation="cudnn")` with ``is_causal`` and sequence lengths,
  which JAX 0.10.2's public API offers instead of segment ids. It serves rows holding at most one contiguous
  segment (left or right padding, or none); a packed row cannot be expressed without a dense bias, so its
  outputs are NaN (the training CLI refuses "cudnn", as training batches are always packed). On a backend other
  than GPU the same call runs with ``implementation="xla"`` so that its masking is tested here.

Padding for the fused kernels: segment 0 would make every padding token of a row one segment (padding queries
would attend to earlier padding keys). Each padding position gets its own negative id instead, which gives
exactly `segment_mask`'s rule (padding sees only itself) and the XLA path's outputs on padding rows too.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from optiml_jax.models.configs import ATTENTION_KERNELS
from optiml_jax.models.matmul import dot_result_dtype

FUSED_KERNELS: tuple[str, ...] = tuple(k for k in ATTENTION_KERNELS if k != "xla")

_MASK_VALUE = float(jnp.finfo(jnp.float32).min)
_PALLAS_BLOCK = 128       # mha's default forward tile
_PALLAS_BWD_BLOCK = 32    # mha's default backward tiles
_TRITON_MIN_BLOCK = 16    # tl.dot needs tiles of at least 16 rows
_SPLASH_LANES = 128       # splash tiles are multiples of the TPU lane width
_SPLASH_MAX_BLOCK = 512


class AttentionSegments(NamedTuple):
    """What decides who attends to whom: segment ids of queries and keys and their absolute indices.

    ``q_segment_ids`` int32 [B, Lq], ``kv_segment_ids`` int32 [B, Lk] (0 = padding), ``q_index`` int32 [Lq] and
    ``kv_index`` int32 [Lk] (positions in the key sequence; a KV-cache step has ``q_index = cache_index + ...``).
    A pytree, so it passes through ``nn.remat`` like an array.
    """

    q_segment_ids: jax.Array
    kv_segment_ids: jax.Array
    q_index: jax.Array
    kv_index: jax.Array


def segment_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, q_index: jax.Array,
                 kv_index: jax.Array) -> jax.Array:
    """Block-causal attention mask, bool [B, 1, Lq, Lk].

    Query i sees key j when both belong to the same non-zero segment and j <= i (indices are absolute
    positions in the key sequence, so the same rule serves a full forward and a KV-cache step). A padding
    query (segment 0) sees only itself, so no softmax row is empty.
    """
    q_seg = q_segment_ids[:, :, None]
    kv_seg = kv_segment_ids[:, None, :]
    causal = kv_index[None, None, :] <= q_index[None, :, None]
    same = (q_seg == kv_seg) & (q_seg != 0)
    pad_self = (q_seg == 0) & (kv_index[None, None, :] == q_index[None, :, None])
    return ((same & causal) | pad_self)[:, None, :, :]


def xla_attention(query: jax.Array, key: jax.Array, value: jax.Array, segments: AttentionSegments, *,
                  heads_major: bool = False, probs_fn: Callable[[jax.Array], jax.Array] | None = None
                  ) -> jax.Array:
    """The reference: f32 scores and softmax, probabilities cast to the value dtype; output [B, Lq, H, D].

    ``heads_major``: q/k/v are [B, H, L, D] (the KV cache's layout) instead of [B, L, H, D].
    ``probs_fn`` transforms the probabilities before they weight the values (attention dropout).
    """
    q_spec, k_spec = ("bhqd", "bhkd") if heads_major else ("bqhd", "bkhd")
    scores = jnp.einsum(f"{q_spec},{k_spec}->bhqk", query, key, preferred_element_type=jnp.float32)
    scores = jnp.where(segment_mask(*segments), scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    if probs_fn is not None:
        probs = probs_fn(probs)
    out = jnp.einsum(f"bhqk,{k_spec}->{q_spec}", probs.astype(value.dtype), value,
                     preferred_element_type=dot_result_dtype(value.dtype)).astype(value.dtype)
    return jnp.swapaxes(out, 1, 2) if heads_major else out


def causal_block_attention(query: jax.Array, key: jax.Array, value: jax.Array, segments: AttentionSegments,
                           block: int, *, probs_fn: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """`xla_attention` of self-attention without a cache, queries taken ``block`` positions at a time, each
    block against the keys up to its own end only: the upper-triangle score blocks, masked anyway, are never
    formed (about half of the score and value work and memory at long sequences). [B, L, H, D] in and out.

    Exact for the rule of `segment_mask` when query and key indices are the same positions (training and
    scoring, not a KV-cache step): a key after the block's end is after every query in it. ``block <= 0`` or
    ``>= L``: one block, i.e. `xla_attention`. Blocks are a Python loop (static shapes, one pair of einsums
    per block): the Pallas kernels skip the same blocks on accelerators, but their CPU interpreter is for tests.
    """
    length = query.shape[1]
    if block <= 0 or block >= length:
        return xla_attention(query, key, value, segments, probs_fn=probs_fn)
    outs = []
    for start in range(0, length, block):
        end = min(length, start + block)
        part = AttentionSegments(segments.q_segment_ids[:, start:end], segments.kv_segment_ids[:, :end],
                                 segments.q_index[start:end], segments.kv_index[:end])
        outs.append(xla_attention(query[:, start:end], key[:, :end], value[:, :end], part, probs_fn=probs_fn))
    return jnp.concatenate(outs, axis=1)


def unique_padding_ids(segment_ids: jax.Array, length: int | None = None) -> jax.Array:
    """Segment ids with every padding position (id 0) given its own negative id, right-padded to ``length``.

    Under the fused kernels' rule (same id and causal) a padding token then sees only itself, as in
    `segment_mask`; the positions added to reach ``length`` are padding of the same kind.
    """
    n = segment_ids.shape[1]
    length = n if length is None else length
    ids = jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, length - n)))
    own = -(jnp.arange(length, dtype=jnp.int32) + 1)
    return jnp.where(ids == 0, own[None, :], ids)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad_length(x: jax.Array, length: int) -> jax.Array:
    """Zero-pads axis 1 (the sequence) of [B, L, ...] to ``length``."""
    return jnp.pad(x, [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


def pallas_tiles(seq_len: int) -> tuple[int, int]:
    """(forward tile, padded length) for the Triton kernel: power-of-two tiles of 16 to 128 rows dividing the
    padded length (mha needs the length to be a multiple of its tiles; Triton needs power-of-two tiles)."""
    block = min(_PALLAS_BLOCK, max(_TRITON_MIN_BLOCK, 1 << (seq_len - 1).bit_length()))
    return block, _round_up(seq_len, block)


def pallas_attention(query: jax.Array, key: jax.Array, value: jax.Array, segment_ids: jax.Array, *,
                     interpret: bool) -> jax.Array:
    """Triton flash attention (`pallas.ops.gpu.attention.mha`) over [B, L, H, D] with segment ids [B, L].

    The sequence is zero-padded to a multiple of the tile (the padding gets unique ids, so it changes nothing).
    head_dim need not be a power of two: mha pads it to one inside the kernel (masked loads).
    """
    from jax.experimental.pallas.ops.gpu import attention as pallas_gpu

    length = query.shape[1]
    block, padded = pallas_tiles(length)
    bwd = min(_PALLAS_BWD_BLOCK, block)
    sizes = pallas_gpu.BlockSizes(block_q=block, block_k=block, block_q_dkv=bwd, block_kv_dkv=bwd,
                                  block_q_dq=bwd, block_kv_dq=bwd)
    q, k, v = (_pad_length(t, padded) for t in (query, key, value))
    out = pallas_gpu.mha(q, k, v, unique_padding_ids(segment_ids, padded), sm_scale=1.0, causal=True,
                         block_sizes=sizes, interpret=interpret)
    return out[:, :length]


def splash_tiles(seq_len: int) -> tuple[int, int]:
    """(tile, padded length) for splash attention: the largest of 512/256/128 dividing the length padded to a
    multiple of 128 (splash's tiles are multiples of the lane width and must divide the length)."""
    padded = _round_up(seq_len, _SPLASH_LANES)
    block = next(b for b in (_SPLASH_MAX_BLOCK, 256, _SPLASH_LANES) if padded % b == 0)
    return block, padded


@functools.lru_cache(maxsize=32)
def _splash_kernel(heads: int, padded: int, block: int, interpret: bool) -> Any:
    # The kernel object holds the causal mask's block structure, computed in numpy once per shape.
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    mask = splash.MultiHeadMask([splash.CausalMask((padded, padded)) for _ in range(heads)])
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    # Built eagerly even when first asked for inside a trace: the cached kernel must hold concrete arrays.
    with jax.ensure_compile_time_eval():
        return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(query: jax.Array, key: jax.Array, value: jax.Array, segment_ids: jax.Array, *,
                     interpret: bool) -> jax.Array:
    """TPU splash attention over [B, L, H, D] with segment ids [B, L] (causal mask + `SegmentIds`)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    _, length, heads, _ = query.shape
    block, padded = splash_tiles(length)
    kernel = _splash_kernel(heads, padded, block, interpret)
    # splash takes one example [H, L, D]; vmap adds the batch.
    q, k, v = (jnp.swapaxes(_pad_length(t, padded), 1, 2) for t in (query, key, value))
    ids = unique_padding_ids(segment_ids, padded)
    out = jax.vmap(lambda q1, k1, v1, s1: kernel(q1, k1, v1, segment_ids=splash.SegmentIds(s1, s1)))(q, k, v, ids)
    return jnp.swapaxes(out, 1, 2)[:, :length]


def single_segment_rows(segment_ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(supported, start, length)`` per row [B]: whether the row's non-zero ids form one contiguous run of one
    id (what sequence lengths can express), where it starts and how long it is (0 for an all-padding row)."""
    real = segment_ids != 0
    length = jnp.sum(real, axis=1, dtype=jnp.int32)
    start = jnp.argmax(real, axis=1).astype(jnp.int32)
    last = segment_ids.shape[1] - 1 - jnp.argmax(real[:, ::-1], axis=1).astype(jnp.int32)
    first_id = jnp.take_along_axis(segment_ids, start[:, None], axis=1)
    same_id = jnp.sum(real & (segment_ids == first_id), axis=1, dtype=jnp.int32) == length
    supported = (length == 0) | (same_id & (last - start + 1 == length))
    return supported, start, length


def cudnn_attention(query: jax.Array, key: jax.Array, value: jax.Array, segment_ids: jax.Array, *,
                    implementation: str) -> jax.Array:
    """`jax.nn.dot_product_attention` with ``is_causal`` and sequence lengths over [B, L, H, D].

    Each row is rotated so that its segment starts at position 0 (left padding becomes right padding; causal
    order inside the segment is kept), attended with query/key lengths = the segment's length, and rotated
    back. Padding rows come out 0. Rows that `single_segment_rows` rejects (packed) come out NaN.
    """
    length = query.shape[1]
    supported, start, n = single_segment_rows(segment_ids)
    idx = jnp.arange(length, dtype=jnp.int32)[None, :]
    to_front = (idx + start[:, None]) % length
    back = (idx - start[:, None]) % length

    def gather(t: jax.Array, order: jax.Array) -> jax.Array:
        return jnp.take_along_axis(t, order[:, :, None, None], axis=1)

    # An all-padding row gets length 1 (an empty softmax would be 0/0 in some backends); its output is zeroed.
    lengths = jnp.maximum(n, 1)
    out = jax.nn.dot_product_attention(gather(query, to_front), gather(key, to_front), gather(value, to_front),
                                       scale=1.0, is_causal=True, query_seq_lengths=lengths,
                                       key_value_seq_lengths=lengths, implementation=implementation)
    out = gather(out, back)
    out = jnp.where((segment_ids != 0)[:, :, None, None], out, jnp.zeros((), out.dtype))
    return jnp.where(supported[:, None, None, None], out, jnp.full((), jnp.nan, out.dtype))


def _kernel_for_backend(kernel: str, backend: str, dtype: Any) -> Callable[..., jax.Array]:
    if kernel == "pallas":
        if backend == "tpu":
            raise ValueError("attention_kernel='pallas' is the GPU (Triton) kernel; on TPU use 'splash'")
        return functools.partial(pallas_attention, interpret=backend != "gpu")
    if kernel == "splash":
        if backend == "gpu":
            raise ValueError("attention_kernel='splash' is the TPU kernel; on GPU use 'pallas' or 'cudnn'")
        return functools.partial(splash_attention, interpret=backend != "tpu")
    if kernel == "cudnn":
        if backend == "gpu" and dtype == jnp.float32:
            raise ValueError("attention_kernel='cudnn' needs dtype 'bfloat16' or 'float16' on GPU (cuDNN's fused "
                             "attention has no float32 kernel); use 'pallas' or 'xla' for float32")
        return functools.partial(cudnn_attention, implementation="cudnn" if backend == "gpu" else "xla")
    raise ValueError(f"unknown fused attention kernel {kernel!r}; expected one of {FUSED_KERNELS}")


def _per_device(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """``fn`` run on each device's shard under the active mesh (`jax.set_mesh`) and flax logical axis rules.

    The SPMD partitioner cannot split a Pallas/cuDNN custom call: left to it, every device would gather the
    whole batch and all heads. shard_map hands each device its own batch rows and heads instead, which is all
    attention needs (sequence and head_dim must stay whole on a device).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn
    qkv = nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"))
    seg = nn.logical_to_mesh_axes(("batch", "length"))
    if qkv[1] is not None or qkv[3] is not None:
        raise ValueError(f"the fused attention kernels need whole sequences and heads on each device, but the "
                         f"logical axis rules shard 'length' or 'kv' ({qkv}); use attention_kernel='xla'")
    return jax.shard_map(fn, mesh=mesh, in_specs=(qkv, qkv, qkv, seg), out_specs=qkv, check_vma=False)


def fused_attention(kernel: str, query: jax.Array, key: jax.Array, value: jax.Array,
                    segment_ids: jax.Array) -> jax.Array:
    """Self-attention of [B, L, H, D] (query pre-scaled) with segment ids [B, L] by one of `FUSED_KERNELS`.

    Picks compiled or interpreted execution from the default backend: "pallas" is compiled on GPU, "splash" on
    TPU, "cudnn" needs a GPU for implementation="cudnn"; elsewhere the CPU runs their interpreted/XLA form.
    Under a mesh, each device attends over its own batch rows and heads (`_per_device`).
    """
    fn = _kernel_for_backend(kernel, jax.default_backend(), query.dtype)
    return _per_device(fn)(query, key, value, segment_ids)
