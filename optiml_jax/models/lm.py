"""The causal language model as trainer and evaluator see it: a linen decoder with its loss, scores and predictions.

This is the role of t5x's ``models.py``: the network (`OPTForCausalLM`, or any module with its call and decode
interface) says how to compute hidden states; `CausalLM` says what the training loss, a candidate's
log-likelihood and a prediction are, so `optiml_jax.trainer` and `optiml_jax.inference` compute them with the
same code -- e.g. the tied LM head in chunks (`optiml_jax.losses`), never ``[tokens, vocab]`` f32 logits, in the
training loss and in full-sequence scoring alike.

Every method is a pure function of (params, arrays), to be jitted by its caller (the trainer inside its train
step, inference and decoding per batch shape); `CausalLM` is a frozen dataclass, hashable, so it can be a static
argument of those compiled functions.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from optiml_jax import decoding, losses


@dataclasses.dataclass(frozen=True)
class CausalLM:
    """A decoder-only LM: loss for training, log-likelihoods for rank classification, decoding for generation.

    Attributes:
      module: the network, called as ``module.apply({"params": p}, tokens, segment_ids=, positions=,
        deterministic=, return_hidden=True)`` -> (final hidden states [B, L, D], tied output embedding [V, D]),
        and with ``decode=True`` for the KV cache (see `optiml_jax.decoding`).
      z_loss: PaLM-style ``z_loss * log(Z)^2`` penalty added to the training loss (the paper uses none).
      ce_chunk_tokens: logits rows of the tied LM head held at once by the loss and by full-sequence scoring;
        0 = all of them (see `optiml_jax.losses`).
    """

    module: nn.Module
    z_loss: float = 0.0
    ce_chunk_tokens: int = 4096

    def _hidden(self, params: Any, tokens: jax.Array, segments: jax.Array, positions: jax.Array,
                dropout_rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        deterministic = dropout_rng is None
        return self.module.apply(
            {"params": params}, tokens, segment_ids=segments, positions=positions, deterministic=deterministic,
            rngs=None if deterministic else {"dropout": dropout_rng}, return_hidden=True)

    # ---- training -------------------------------------------------------------------------------------------
    def loss(self, params: Any, batch: Mapping[str, jax.Array], dropout_rng: jax.Array | None = None
             ) -> tuple[jax.Array, jax.Array]:
        """``(sum of weighted token cross-entropy, sum of weights)`` of a packed batch of the trainer's features
        (``decoder_input_tokens``, ``decoder_target_tokens``, ``decoder_loss_weights``, ``decoder_segment_ids``,
        ``decoder_positions``). Dropout is on when ``dropout_rng`` is given, off (deterministic) otherwise.

        Sums, not a mean: microbatches and data-parallel shards add up, and the caller divides once by the
        global weight (a label-only loss over the whole batch, as the paper's recipe)."""
        hidden, embedding = self._hidden(params, batch["decoder_input_tokens"], batch["decoder_segment_ids"],
                                         batch["decoder_positions"], dropout_rng)
        return losses.cross_entropy_sums(hidden, embedding, batch["decoder_target_tokens"],
                                         batch["decoder_loss_weights"], z_loss=self.z_loss,
                                         chunk_tokens=self.ce_chunk_tokens)

    # ---- scoring --------------------------------------------------------------------------------------------
    def score(self, params: Any, tokens: jax.Array, segments: jax.Array, positions: jax.Array,
              target_mask: jax.Array) -> jax.Array:
        """Per-token log-likelihoods [R, L - 1] of ``tokens[:, 1:]`` given what precedes them, zero where
        ``target_mask[:, 1:]`` is 0 (left-padded rows: column j scores token j + 1). One full forward pass per
        row, the LM head in chunks as in `loss`."""
        hidden, embedding = self._hidden(params, tokens, segments, positions)
        nxt, _ = losses.token_log_likelihoods(hidden[:, :-1], embedding, tokens[:, 1:],
                                              chunk_tokens=self.ce_chunk_tokens)
        return nxt * target_mask[:, 1:]

    def score_continuations(self, params: Any, p_tokens: jax.Array, p_segments: jax.Array,
                            p_positions: jax.Array, row_prompt: jax.Array, c_tokens: jax.Array,
                            c_mask: jax.Array) -> jax.Array:
        """Per-token log-likelihoods [R, Lc] of continuations ``c_tokens`` [R, Lc] of the left-padded prompts
        [Bp, P] that ``row_prompt`` [R] names, zero where ``c_mask`` is 0.

        Each distinct prompt is prefilled once into the KV cache, its cache rows are copied to its
        continuations, and all continuation tokens are scored in one multi-token pass over those copies: the
        numbers of `score` on ``prompt + continuation`` without processing the prompt once per candidate."""
        bp, prompt_len = p_tokens.shape
        cand_len = c_tokens.shape[1]
        # Continuation token Lc - 1 is scored but never fed, so the cache needs P + Lc - 1 positions.
        logits, cache, lengths = decoding.prefill_logits(
            self.module, params, p_tokens, p_segments, p_positions, prompt_len + max(cand_len - 1, 1))
        cache = decoding.gather_cache(cache, row_prompt, bp)
        lengths = lengths[row_prompt]
        first = decoding.token_logprob(logits[row_prompt], c_tokens[:, 0])
        if cand_len == 1:
            return first[:, None] * c_mask
        # One call writes continuation tokens 0 .. Lc-2 after each prompt copy; its logits score tokens 1 ..
        # Lc-1. Tokens after a continuation's end are padding: they come later in their row, so nothing real
        # attends to them, and c_mask drops their scores.
        logits, _ = decoding.extend(self.module, params, cache, c_tokens[:, :-1], lengths)
        chosen = jnp.take_along_axis(logits, c_tokens[:, 1:, None], axis=-1)[..., 0]
        rest = chosen - jax.nn.logsumexp(logits, axis=-1)
        return jnp.concatenate([first[:, None], rest], axis=1) * c_mask

    # ---- prediction -----------------------------------------------------------------------------------------
    def predict(self, params: Any, tokens: jax.Array, segments: jax.Array, positions: jax.Array,
                rng: jax.Array, limits: jax.Array, *, cfg: decoding.DecodeConfig, eos_id: int, pad_id: int
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Continuations of left-padded prompts with the KV cache by ``cfg`` (greedy, sampling or beam search):
        ``(tokens, generated lengths, scores)`` as `decoding.decode`; `decoding.generate` is the host-side
        entry point (validation, placement, one compiled program per shape)."""
        return decoding.decode(self.module, params, tokens, segments, positions, rng, limits, cfg=cfg,
                               eos_id=eos_id, pad_id=pad_id)
