"""Batched autoregressive decoding with the model's KV cache: greedy, sampling and beam search.

Every decoding function follows the same plan, compiled as one XLA program:

1. *prefill*: the left-padded prompts go through the model in one call with ``decode=True``; padding carries
   segment id 0 (so no real token attends to it) and positions are counted from each row's first real token, so a
   padded row computes exactly what the unpadded prompt would;
2. *steps*: inside a ``lax.while_loop`` one token per row is chosen from the last logits and fed back at position
   ``prompt_length + step``, until every row has produced EOS or its limit of new tokens (``max_new_tokens``,
   or a smaller per-row ``limits`` entry: rows of different limits share one compiled program and one batch,
   and the loop ends as soon as the last row is finished).

The functions are pure in (params, inputs); the model is a static argument. With params carrying the trainer's
``NamedSharding``s (see `optiml_jax.inference.shard_params`) the whole loop runs sharded over the mesh and the
result equals the unsharded one (see `decode_context`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Method = Literal["greedy", "sample", "beam"]

# Large negative used to remove tokens from a distribution; finite so that a fully masked row stays NaN-free.
_NEG_INF = -1e9


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How to continue a prompt.

    Attributes:
      method: "greedy" (argmax), "sample" (temperature / top-k / top-p) or "beam" (beam search).
      max_new_tokens: generated tokens at most per row (the paper decodes up to 256).
      temperature: divides the logits before sampling (sample only; must be > 0).
      top_k: keep only the k most likely tokens before sampling (0 = no limit).
      top_p: nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1.0 = no limit).
      num_beams: beams per prompt (beam only).
      length_penalty: GNMT-style exponent alpha; a finished hypothesis of length L scores
        logprob / ((5 + L) / 6) ** alpha (beam only; 0 = raw log-probability).
      seed: PRNG seed for sampling.
    """

    method: Method = "greedy"
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 4
    length_penalty: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("greedy", "sample", "beam"):
            raise ValueError(f"DecodeConfig.method must be 'greedy', 'sample' or 'beam', got {self.method!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"DecodeConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"DecodeConfig.temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"DecodeConfig.top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"DecodeConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.num_beams < 1:
            raise ValueError(f"DecodeConfig.num_beams must be >= 1, got {self.num_beams}")


@dataclasses.dataclass(frozen=True)
class DecodeOutput:
    """Result of `generate`.

    Attributes:
      tokens: int32 [B, max_new_tokens] (greedy/sample) or [B, num_beams, max_new_tokens] (beam, best first);
        generated ids including the EOS that ended a row, then ``pad_id``.
      lengths: int32 [B] or [B, num_beams]: generated tokens before (not counting) the EOS.
      scores: float32 [B] or [B, num_beams]: sum of log-probabilities of the generated tokens, EOS included
        (beam: divided by the length penalty; sorted descending).
    """

    tokens: np.ndarray
    lengths: np.ndarray
    scores: np.ndarray


# --------------------------------------------------------------------------------------------------------------
# Host-side input preparation
# --------------------------------------------------------------------------------------------------------------


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= n (bucketing keeps the number of compilations small)."""
    return -(-n // multiple) * multiple if multiple > 1 else n


def bucket_length(n: int, *, minimum: int = 16, maximum: int | None = None) -> int:
    """The padded length for ``n`` tokens: the next size of the series 16, 24, 32, 48, 64, 96, ... (2^k and
    1.5 * 2^k, at least ``minimum``), capped at ``maximum``.

    Padding wastes at most a third of a batch while a whole range of lengths shares about 2 log2(range)
    compiled programs.
    """
    if n < 1:
        raise ValueError(f"bucket_length: n must be >= 1, got {n}")
    size = max(1, minimum)
    while size < n:
        # 2^k -> 1.5 * 2^k -> 2^(k+1); 1 -> 2.
        size = size * 3 // 2 if size > 1 and size & (size - 1) == 0 else max(size * 4 // 3, size + 1)
    return min(size, maximum) if maximum is not None else size


def pow2_at_least(n: int) -> int:
    """The smallest power of two >= n (row counts padded so that few distinct batch shapes are compiled)."""
    return 1 << max(0, int(n) - 1).bit_length()


def left_pad(
    prompts: Sequence[Sequence[int]], *, pad_id: int, length: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-pads token lists into (tokens, segment_ids, positions), int32 [B, length].

    Padding gets segment id 0 and position 0; real tokens segment id 1 and positions 0.. from the first real token.
    Raises ValueError for an empty prompt or a prompt longer than ``length``.
    """
    if not prompts:
        raise ValueError("left_pad: no prompts given")
    longest = max(len(p) for p in prompts)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"left_pad: a prompt has {longest} tokens, more than the length {length}")
    b = len(prompts)
    tokens = np.full((b, length), pad_id, np.int32)
    segments = np.zeros((b, length), np.int32)
    positions = np.zeros((b, length), np.int32)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"left_pad: prompt {i} is empty (it needs at least the BOS token)")
        n = len(p)
        tokens[i, length - n:] = np.asarray(p, np.int32)
        segments[i, length - n:] = 1
        positions[i, length - n:] = np.arange(n, dtype=np.int32)
    return tokens, segments, positions


@contextlib.contextmanager
def decode_context(
    mesh: jax.sharding.Mesh | None = None,
    rules: Sequence[tuple[str, Any]] | None = None,
    *,
    constrain_activations: bool = False,
):
    """Context for running the jitted decoding functions on ``mesh``.

    By default nothing is entered: the params' ``NamedSharding``s (and the batch sharding of the inputs, see
    `place_batch`) drive GSPMD, which propagates them into activations and the cache. With
    ``constrain_activations`` the mesh and the logical ``rules`` (default: the trainer's
    `optiml_jax.partitioning.DEFAULT_LOGICAL_AXIS_RULES`) are made global so that the model's
    ``with_logical_constraint`` annotations apply too. Without a mesh this is always a no-op.
    """
    if mesh is None or not constrain_activations:
        yield
        return
    import flax.linen as nn

    if rules is None:
        from optiml_jax.partitioning import DEFAULT_LOGICAL_AXIS_RULES as rules
    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
        yield


def place_batch(mesh: jax.sharding.Mesh | None, *arrays: np.ndarray) -> tuple[Any, ...]:
    """Puts [batch, ...] host arrays on ``mesh`` split over its batch axes (replicated when they do not divide).

    Every process passes the same full arrays (each keeps the rows of its own devices), so this serves one host
    and many alike.
    """
    if mesh is None:
        return tuple(jnp.asarray(a) for a in arrays)
    from jax.sharding import PartitionSpec

    from optiml_jax.partitioning import put_global

    axes = tuple(a for a in ("data", "fsdp") if a in mesh.shape)
    size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    out = []
    for a in arrays:
        a = np.asarray(a)
        spec = PartitionSpec(axes, *([None] * (a.ndim - 1))) if a.ndim and a.shape[0] % size == 0 else PartitionSpec()
        out.append(put_global(mesh, a, spec))
    return tuple(out)


# --------------------------------------------------------------------------------------------------------------
# Model plumbing
# --------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def cache_structure(model: Any, batch: int, max_length: int) -> Any:
    """Shapes and dtypes of the KV cache for ``batch`` rows of ``max_length`` tokens (memoised).

    Callers evaluate this *outside* a mesh context before tracing (see `generate`): initialising the module's
    variables is then never traced under the sharding rules, which only the forward computation needs.
    """

    def build():
        if hasattr(model, "init_cache"):
            cache = model.init_cache(batch, max_length)
            return cache["cache"] if isinstance(cache, dict) and set(cache) == {"cache"} else cache
        # Modules following the plain flax pattern: a full-length decode call sizes the cache.
        return model.init(jax.random.PRNGKey(0), jnp.ones((batch, max_length), jnp.int32), decode=True)["cache"]

    return jax.eval_shape(build)


def init_cache(model: Any, batch: int, max_length: int) -> Any:
    """An empty KV cache (the "cache" collection) for ``batch`` rows of up to ``max_length`` tokens."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_structure(model, batch, max_length))


def _apply(model, params, cache, tokens, segments, positions, logits_to_keep: int = 1):
    # By default only the last position's logits are computed: prompts are left-padded, so it is every row's last
    # prompt token (a multi-token candidate pass asks for all of them).
    logits, mutated = model.apply(
        {"params": params, "cache": cache},
        tokens,
        segment_ids=segments,
        positions=positions,
        decode=True,
        logits_to_keep=logits_to_keep,
        mutable=["cache"],
    )
    return logits.astype(jnp.float32), mutated["cache"]


def prefill_logits(model, params, tokens: jax.Array, segments: jax.Array, positions: jax.Array, max_length: int):
    """Runs the prompts through the model into a fresh cache sized ``max_length``.

    Returns (next-token logits [B, V] f32, cache, real prompt lengths [B]).
    """
    cache = init_cache(model, tokens.shape[0], max_length)
    logits, cache = _apply(model, params, cache, tokens, segments, positions)
    lengths = jnp.sum(segments > 0, axis=1).astype(jnp.int32)
    return logits[:, -1], cache, lengths


def prefill(model, params, tokens: jax.Array, segments: jax.Array, positions: jax.Array, max_length: int):
    """`prefill_logits` with log-probabilities [B, V] instead of logits."""
    logits, cache, lengths = prefill_logits(model, params, tokens, segments, positions, max_length)
    return jax.nn.log_softmax(logits), cache, lengths


def step_logits(model, params, cache, token: jax.Array, position: jax.Array):
    """Feeds one token per row [B] at ``position`` [B]; returns (next-token logits [B, V] f32, cache)."""
    b = token.shape[0]
    logits, cache = _apply(
        model, params, cache, token.reshape(b, 1), jnp.ones((b, 1), jnp.int32), position.reshape(b, 1)
    )
    return logits[:, 0], cache


def step(model, params, cache, token: jax.Array, position: jax.Array):
    """`step_logits` with log-probabilities [B, V] instead of logits."""
    logits, cache = step_logits(model, params, cache, token, position)
    return jax.nn.log_softmax(logits), cache


def extend(model, params, cache, tokens: jax.Array, start: jax.Array):
    """Feeds L tokens per row [B, L] at positions ``start + 0..L-1`` in one call (a multi-token cache write).

    Returns the logits after each of them [B, L, V] f32 and the cache.
    """
    b, length = tokens.shape
    positions = start[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]
    return _apply(model, params, cache, tokens, jnp.ones((b, length), jnp.int32), positions, logits_to_keep=0)


def gather_cache(cache: Any, index: jax.Array, batch: int) -> Any:
    """Selects cache rows: every leaf whose leading dimension is the batch is indexed by ``index``.

    Per-layer scalars (such as a shared write index) are kept as they are.
    """
    return jax.tree.map(lambda x: x[index] if x.ndim >= 1 and x.shape[0] == batch else x, cache)


# --------------------------------------------------------------------------------------------------------------
# Token choice
# --------------------------------------------------------------------------------------------------------------


def filter_logits(logits: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Masks logits [..., V] outside the top-k set and outside the top-p nucleus (the most likely token stays)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, _NEG_INF, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # A token is dropped when the tokens ranked above it already reach top_p; the first one never is.
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        drop_sorted = mass_before >= top_p
        drop = jnp.take_along_axis(drop_sorted, jnp.argsort(order, axis=-1), axis=-1)
        logits = jnp.where(drop, _NEG_INF, logits)
    return logits


def choose_tokens(logits: jax.Array, rng: jax.Array, cfg: DecodeConfig) -> jax.Array:
    """Picks one token per row from logits [B, V]: argmax for greedy, a filtered sample otherwise."""
    if cfg.method == "greedy":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits / cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def token_logprob(logits: jax.Array, token: jax.Array) -> jax.Array:
    """log p(token) [B] from logits [B, V]: the chosen logit minus the log-partition (no [B, V] log-softmax)."""
    chosen = jnp.take_along_axis(logits, token[:, None], axis=-1)[:, 0]
    return chosen - jax.nn.logsumexp(logits, axis=-1)


# --------------------------------------------------------------------------------------------------------------
# Greedy / sampling
# --------------------------------------------------------------------------------------------------------------


def _generate_impl(params, tokens, segments, positions, rng, limits, *, model, cfg: DecodeConfig, eos_id: int,
                   pad_id: int):
    b, prompt_len = tokens.shape
    n = cfg.max_new_tokens
    # The cache needs room for the prompt and the n - 1 tokens fed back (the last chosen token is never fed).
    logits, cache, lengths = prefill_logits(model, params, tokens, segments, positions, prompt_len + n)

    def choose(i, logits, rng, out, done, scores, gen_len):
        rng, sub = jax.random.split(rng)
        token = choose_tokens(logits, sub, cfg)
        logprob = token_logprob(logits, token)
        token = jnp.where(done, pad_id, token)
        scores = scores + jnp.where(done, 0.0, logprob)
        is_eos = (token == eos_id) & ~done
        gen_len = gen_len + jnp.where(done | is_eos, 0, 1)
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, i))
        # A row that reached its own limit is finished like one that produced EOS: it only feeds padding from
        # then on, which no other row attends to, so the other rows compute exactly what they would alone.
        return token, rng, out, done | is_eos | (i + 1 >= limits), scores, gen_len

    def cond(state):
        i, _, _, _, done, _, _, _ = state
        return (i < n) & ~jnp.all(done)

    def body(state):
        # Token i - 1 was chosen: feed it, choose token i. The loop ends right after the last choice, so no model
        # step runs for a token that would never be used, and none once every row has produced EOS.
        i, cache, token, out, done, rng, scores, gen_len = state
        logits, cache = step_logits(model, params, cache, token, lengths + i - 1)
        token, rng, out, done, scores, gen_len = choose(i, logits, rng, out, done, scores, gen_len)
        return i + 1, cache, token, out, done, rng, scores, gen_len

    token, rng, out, done, scores, gen_len = choose(
        0, logits, rng, jnp.full((b, n), pad_id, jnp.int32), jnp.zeros((b,), bool), jnp.zeros((b,), jnp.float32),
        jnp.zeros((b,), jnp.int32))
    state = (jnp.int32(1), cache, token, out, done, rng, scores, gen_len)
    _, _, _, out, _, _, scores, gen_len = jax.lax.while_loop(cond, body, state)
    return out, gen_len, scores


# --------------------------------------------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------------------------------------------


def _length_penalty(length: jax.Array, alpha: float) -> jax.Array:
    return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def _beam_search_impl(params, tokens, segments, positions, *, model, cfg: DecodeConfig, eos_id: int, pad_id: int):
    """Beam search with separate pools of alive and finished hypotheses.

    Each step expands the k alive beams into their 2k best continuations (at most k of them end in EOS, so k
    alive ones always remain); EOS-ended ones among the best k enter the finished pool, scored with the length
    penalty. The loop
    stops early once no alive beam can overtake the worst finished one: log-probabilities only decrease, so an
    alive beam's best reachable score is its current log-probability over the largest penalty.
    """
    b, prompt_len = tokens.shape
    k, n, alpha = cfg.num_beams, cfg.max_new_tokens, cfg.length_penalty
    logprobs, cache, lengths = prefill(model, params, tokens, segments, positions, prompt_len + n)
    vocab = logprobs.shape[-1]
    # Beams share the prompt: prefill once per prompt, then give each beam its own copy of the cache.
    flat_rows = jnp.repeat(jnp.arange(b), k)
    cache = gather_cache(cache, flat_rows, b)
    logprobs = jnp.repeat(logprobs, k, axis=0)
    lengths = jnp.repeat(lengths, k)
    batch_idx = jnp.arange(b)[:, None]

    def cond(state):
        i, _, _, _, alive_lp, _, fin_scores = state
        best_alive = alive_lp[:, 0] / _length_penalty(jnp.int32(n), alpha)
        can_improve = best_alive > fin_scores[:, -1]
        return (i < n) & jnp.any(can_improve)

    def body(state):
        i, cache, logprobs, alive_seq, alive_lp, fin_seq, fin_scores = state
        cand = (alive_lp[:, :, None] + logprobs.reshape(b, k, vocab)).reshape(b, k * vocab)
        cand_lp, cand_idx = jax.lax.top_k(cand, 2 * k)
        src_beam = cand_idx // vocab
        cand_tok = (cand_idx % vocab).astype(jnp.int32)
        cand_seq = alive_seq[batch_idx, src_beam]
        cand_seq = cand_seq.at[:, :, i].set(cand_tok)
        is_eos = cand_tok == eos_id

        # Finished pool: previous finished plus the EOS-ended candidates, best k kept.
        # As in the usual formulation, an EOS continuation only finishes a hypothesis when it ranks among the
        # k best; with k = 1 this makes beam search exactly greedy decoding.
        in_top_k = jnp.arange(2 * k)[None, :] < k
        new_fin = jnp.where(is_eos & in_top_k, cand_lp / _length_penalty(i + 1, alpha), _NEG_INF)
        pool_scores = jnp.concatenate([fin_scores, new_fin], axis=1)
        pool_seq = jnp.concatenate([fin_seq, cand_seq], axis=1)
        fin_scores, top = jax.lax.top_k(pool_scores, k)
        fin_seq = pool_seq[batch_idx, top]

        # Alive pool: best k candidates that did not end.
        alive_lp, top = jax.lax.top_k(jnp.where(is_eos, _NEG_INF, cand_lp), k)
        alive_seq = cand_seq[batch_idx, top]
        parent = jnp.take_along_axis(src_beam, top, axis=1)
        cache = gather_cache(cache, (batch_idx * k + parent).reshape(-1), b * k)
        token = jnp.take_along_axis(cand_tok, top, axis=1).reshape(-1)
        logprobs, cache = step(model, params, cache, token, lengths + i)
        return i + 1, cache, logprobs, alive_seq, alive_lp, fin_seq, fin_scores

    init_alive_lp = jnp.tile(jnp.array([0.0] + [_NEG_INF] * (k - 1), jnp.float32), (b, 1))
    state = (
        jnp.int32(0),
        cache,
        logprobs,
        jnp.full((b, k, n), pad_id, jnp.int32),
        init_alive_lp,
        jnp.full((b, k, n), pad_id, jnp.int32),
        jnp.full((b, k), _NEG_INF, jnp.float32),
    )
    i, _, _, alive_seq, alive_lp, fin_seq, fin_scores = jax.lax.while_loop(cond, body, state)
    # Rows that did not fill the finished pool fall back on their alive beams (scored at their current length).
    alive_scores = alive_lp / _length_penalty(i, alpha)
    scores, top = jax.lax.top_k(jnp.concatenate([fin_scores, alive_scores], axis=1), k)
    seqs = jnp.concatenate([fin_seq, alive_seq], axis=1)[batch_idx, top]
    is_eos = seqs == eos_id
    gen_len = jnp.where(jnp.any(is_eos, -1), jnp.argmax(is_eos, -1), jnp.sum(seqs != pad_id, -1)).astype(jnp.int32)
    return seqs, gen_len, scores


# --------------------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------------------


def decode(model: Any, params: Any, tokens: jax.Array, segments: jax.Array, positions: jax.Array,
           rng: jax.Array, limits: jax.Array, *, cfg: DecodeConfig, eos_id: int, pad_id: int
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The decoding loop of ``cfg.method`` on device (pure, jittable; ``model`` static): ``(tokens, generated
    lengths, scores)``, tokens [B, n] for greedy / sample (``limits`` [B] new tokens at most per row, ``rng`` the
    sampling key) and [B, k, n] beams for beam search (which ignores ``rng`` and ``limits``)."""
    if cfg.method == "beam":
        return _beam_search_impl(params, tokens, segments, positions, model=model, cfg=cfg, eos_id=eos_id,
                                 pad_id=pad_id)
    return _generate_impl(params, tokens, segments, positions, rng, limits, model=model, cfg=cfg, eos_id=eos_id,
                          pad_id=pad_id)


@functools.lru_cache(maxsize=64)
def _compiled(model, cfg: DecodeConfig, eos_id: int, pad_id: int):
    return jax.jit(functools.partial(decode, model, cfg=cfg, eos_id=eos_id, pad_id=pad_id))


def generate(
    model: Any,
    params: Any,
    tokens: np.ndarray | jax.Array,
    segment_ids: np.ndarray | jax.Array,
    positions: np.ndarray | jax.Array,
    cfg: DecodeConfig = DecodeConfig(),
    *,
    eos_id: int,
    pad_id: int,
    mesh: jax.sharding.Mesh | None = None,
    rules: Sequence[tuple[str, Any]] | None = None,
    constrain_activations: bool = False,
    limits: Sequence[int] | np.ndarray | None = None,
) -> DecodeOutput:
    """Continues left-padded prompts (see `left_pad`) with the KV cache; returns host numpy arrays.

    ``limits`` (greedy / sample only): new tokens at most per row, each in 1 .. ``cfg.max_new_tokens``; a row
    gets exactly the first ``limits[i]`` tokens of what it would generate without a limit (then ``pad_id``).
    The limits are an input of the compiled program, not part of its shape.

    ``model`` is an ``OPTForCausalLM`` (or any module with the same decode interface), ``params`` its params
    (optionally sharded with ``NamedSharding``s on ``mesh``: the batch is then split over the mesh's data axes;
    see `decode_context` for ``rules`` / ``constrain_activations``).
    The prompt length plus ``cfg.max_new_tokens`` must fit the model's position table.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2 or tokens.shape != np.shape(segment_ids) or tokens.shape != np.shape(positions):
        raise ValueError(
            f"generate: tokens, segment_ids and positions must share one [batch, length] shape, got "
            f"{tokens.shape}, {np.shape(segment_ids)}, {np.shape(positions)}"
        )
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_pos is not None and tokens.shape[1] + cfg.max_new_tokens > max_pos:
        raise ValueError(
            f"generate: prompt length {tokens.shape[1]} + max_new_tokens {cfg.max_new_tokens} exceeds the model's "
            f"max_position_embeddings {max_pos}; truncate the prompts or lower max_new_tokens"
        )
    if limits is None:
        limits = np.full((tokens.shape[0],), cfg.max_new_tokens, np.int32)
    else:
        if cfg.method == "beam":
            raise ValueError("generate: per-row limits are for greedy and sampled decoding, not beam search")
        limits = np.asarray(limits, np.int32)
        if limits.shape != (tokens.shape[0],) or limits.min() < 1 or limits.max() > cfg.max_new_tokens:
            raise ValueError(f"generate: limits must be one value in 1..{cfg.max_new_tokens} (max_new_tokens) per "
                             f"row ({tokens.shape[0]} rows), got {limits.tolist()}")
    fn = _compiled(model, cfg, int(eos_id), int(pad_id))
    rng = jax.random.PRNGKey(cfg.seed)
    cache_structure(model, tokens.shape[0], tokens.shape[1] + cfg.max_new_tokens)  # outside the mesh context
    tokens, segment_ids, positions, limits = place_batch(
        mesh, np.asarray(tokens), np.asarray(segment_ids, np.int32), np.asarray(positions, np.int32), limits
    )
    with decode_context(mesh, rules, constrain_activations=constrain_activations):
        out, lengths, scores = fn(params, tokens, segment_ids, positions, rng, limits)
    from optiml_jax.partitioning import to_host

    return DecodeOutput(to_host(out), to_host(lengths), to_host(scores))


def strip_generated(tokens: Sequence[int], *, eos_id: int, pad_id: int) -> list[int]:
    """The generated ids of one row up to (not including) the first EOS, without padding."""
    out = []
    for t in tokens:
        t = int(t)
        if t == eos_id:
            break
        if t != pad_id:
            out.append(t)
    return out
