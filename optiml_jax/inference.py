"""Rank classification and a `Predictor` that bundles a model, its params and its vocabulary.

Rank classification (Brown et al. 2020, paper section 4.1) scores every answer candidate by its log-likelihood
given the prompt and picks the best. The candidate is scored the way the model was trained on targets: the
prompt is ``[bos] + encode(source)``, the candidate ``encode(candidate) + [eos]`` (the EOS says the answer ends
there, which separates "yes" from "yes, but ...").

Two ways to compute the same numbers:

* ``"cache"`` (default): each distinct prompt is prefilled once into the KV cache, the cache rows are copied to
  the prompt's candidates, and all candidates of a batch advance together one token per step. The prompt --
  usually far longer than the answers -- is processed once per example instead of once per candidate.
* ``"full"``: one forward pass over ``prompt + candidate`` per candidate (left-padded rows); a reference.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optiml_jax import decoding

ScoreMethod = Literal["cache", "full"]


# --------------------------------------------------------------------------------------------------------------
# Device functions
# --------------------------------------------------------------------------------------------------------------


def _score_cached_impl(params, p_tokens, p_segments, p_positions, row_prompt, c_tokens, c_mask, *, model):
    """Per-token log-likelihoods [R, Lc] of candidates [R, Lc] continuing prompts [Bp, P] (row_prompt: [R])."""
    bp, prompt_len = p_tokens.shape
    rows, cand_len = c_tokens.shape
    logprobs, cache, lengths = decoding.prefill(
        model, params, p_tokens, p_segments, p_positions, prompt_len + cand_len
    )
    cache = decoding.gather_cache(cache, row_prompt, bp)
    lengths = lengths[row_prompt]
    first = jnp.take_along_axis(logprobs[row_prompt], c_tokens[:, :1], axis=-1)[:, 0]

    def body(cache, j):
        # Feeding candidate token j yields the distribution of token j + 1.
        lp, cache = decoding.step(model, params, cache, c_tokens[:, j], lengths + j)
        nxt = jnp.take_along_axis(lp, c_tokens[:, j + 1][:, None], axis=-1)[:, 0]
        return cache, nxt

    if cand_len > 1:
        _, rest = jax.lax.scan(body, cache, jnp.arange(cand_len - 1))
        per_token = jnp.concatenate([first[:, None], rest.T], axis=1)
    else:
        per_token = first[:, None]
    return per_token * c_mask


def _score_full_impl(params, tokens, segments, positions, target_mask, *, model):
    """Per-token log-likelihoods [R, L] of the tokens flagged by target_mask in left-padded rows [R, L]."""
    logits = model.apply({"params": params}, tokens, segment_ids=segments, positions=positions)
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32)[:, :-1])
    nxt = jnp.take_along_axis(logprobs, tokens[:, 1:, None], axis=-1)[..., 0]
    return nxt * target_mask[:, 1:]


@functools.lru_cache(maxsize=16)
def _compiled_scorer(model, method: str) -> Callable:
    impl = _score_cached_impl if method == "cache" else _score_full_impl
    return jax.jit(functools.partial(impl, model=model))


# --------------------------------------------------------------------------------------------------------------
# Host-side API on token ids
# --------------------------------------------------------------------------------------------------------------


def candidate_logprobs(
    model: Any,
    params: Any,
    prompts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[Sequence[int]]],
    *,
    pad_id: int,
    method: ScoreMethod = "cache",
    length_bucket: int = 16,
    mesh: jax.sharding.Mesh | None = None,
    rules: Sequence[tuple[str, Any]] | None = None,
) -> list[list[np.ndarray]]:
    """Per-token log-likelihoods of each candidate (token ids) given its prompt (token ids, BOS included).

    Returns, for prompt i, one float32 array per candidate with a log-probability per candidate token. All inputs
    go through the device in one call: callers batch (see `Predictor.score`).
    """
    if len(prompts) != len(candidates):
        raise ValueError(f"candidate_logprobs: {len(prompts)} prompts but {len(candidates)} candidate lists")
    rows = [(i, list(c)) for i, cands in enumerate(candidates) for c in cands]
    if not rows:
        return [[] for _ in prompts]
    for i, c in rows:
        if not c:
            raise ValueError(f"candidate_logprobs: prompt {i} has an empty candidate (no tokens to score)")
    max_pos = int(getattr(getattr(model, "config", None), "max_position_embeddings", 1 << 30))
    longest_p, longest_c = max(len(p) for p in prompts), max(len(c) for _, c in rows)
    if longest_p + longest_c > max_pos:
        raise ValueError(
            f"candidate_logprobs: a prompt of {longest_p} tokens plus a candidate of {longest_c} tokens exceeds the "
            f"model's {max_pos} positions; truncate the prompts (Predictor does this)"
        )
    n_rows = decoding.round_up(len(rows), 8)
    # Bucketed lengths (fewer compilations), but never beyond the position table / cache limit.
    cand_len = min(decoding.round_up(longest_c, length_bucket), max_pos - longest_p)
    if method == "cache":
        p_len = min(decoding.round_up(longest_p, length_bucket), max_pos - cand_len)
        n_prompts = decoding.round_up(len(prompts), 8)
        # Filler prompts/rows repeat the first real ones and are discarded below.
        padded_prompts = list(prompts) + [prompts[0]] * (n_prompts - len(prompts))
        tok, seg, pos = decoding.left_pad(padded_prompts, pad_id=pad_id, length=p_len)
        decoding.cache_structure(model, n_prompts, p_len + cand_len)  # see decoding.cache_structure
        row_prompt = np.zeros((n_rows,), np.int32)
        c_tok = np.full((n_rows, cand_len), pad_id, np.int32)
        c_mask = np.zeros((n_rows, cand_len), np.float32)
        for r, (i, c) in enumerate(rows):
            row_prompt[r] = i
            c_tok[r, : len(c)] = c
            c_mask[r, : len(c)] = 1.0
        args = decoding.place_batch(mesh, tok, seg, pos) + decoding.place_batch(mesh, row_prompt, c_tok, c_mask)
        with decoding.decode_context(mesh, rules):
            out = np.asarray(_compiled_scorer(model, "cache")(params, *args))
        per_row = [out[r, : len(c)] for r, (_, c) in enumerate(rows)]
    elif method == "full":
        seqs = [list(prompts[i]) + c for i, c in rows]
        seqs += [seqs[0]] * (n_rows - len(seqs))
        length = min(decoding.round_up(max(len(s) for s in seqs), length_bucket), max_pos)
        tok, seg, pos = decoding.left_pad(seqs, pad_id=pad_id, length=length)
        mask = np.zeros(tok.shape, np.float32)
        for r, (_, c) in enumerate(rows):
            mask[r, length - len(c):] = 1.0
        with decoding.decode_context(mesh, rules):
            out = np.asarray(_compiled_scorer(model, "full")(params, *decoding.place_batch(mesh, tok, seg, pos, mask)))
        # Column j of `out` scores token j + 1: the candidate occupies the last len(c) columns.
        per_row = [out[r, length - 1 - len(c): length - 1] for r, (_, c) in enumerate(rows)]
    else:
        raise ValueError(f"candidate_logprobs: method must be 'cache' or 'full', got {method!r}")
    result: list[list[np.ndarray]] = [[] for _ in prompts]
    for (i, _), lp in zip(rows, per_row):
        result[i].append(np.asarray(lp, np.float32))
    return result


def aggregate_score(token_logprobs: np.ndarray, normalize: bool) -> float:
    """A candidate's score: summed log-likelihood, or its mean per token when ``normalize``."""
    total = float(np.sum(token_logprobs))
    return total / max(len(token_logprobs), 1) if normalize else total


# --------------------------------------------------------------------------------------------------------------
# Predictor
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Predictor:
    """A model, its params and its vocabulary, with text-level generation and candidate scoring.

    Attributes:
      model: an ``OPTForCausalLM``.
      params: its parameters (optionally sharded on ``mesh``).
      vocab: an ``OPTVocabulary`` (``encode``, ``decode``, ``bos_id``, ``eos_id``, ``pad_id``).
      mesh / rules: the trainer's mesh and logical axis rules when params are sharded.
      batch_size: prompts per device call (a fixed size keeps compilations few).
      length_bucket: prompt lengths are padded up to a multiple of this.
      max_prompt_tokens: prompts longer than this are cut from the left (the instruction's start goes first,
        the example and the answer cue stay); defaults to what the position table leaves after the output.
      name: label used in reports.
    """

    model: Any
    params: Any
    vocab: Any
    mesh: jax.sharding.Mesh | None = None
    rules: Sequence[tuple[str, Any]] | None = None
    batch_size: int = 8
    length_bucket: int = 64
    max_prompt_tokens: int | None = None
    name: str = "model"
    truncated_prompts: int = dataclasses.field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"Predictor.batch_size must be >= 1, got {self.batch_size}")

    # ---- construction -----------------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_dir: str | os.PathLike,
        *,
        dtype: str | None = None,
        mesh: jax.sharding.Mesh | None = None,
        rules: Sequence[tuple[str, Any]] | None = None,
        **kwargs: Any,
    ) -> "Predictor":
        """Loads one of our checkpoints (config.json + params/ [+ tokenizer/]); see `resolve_checkpoint`."""
        ckpt = resolve_checkpoint(ckpt_dir)
        from optiml_jax.models.convert import load_config, load_model
        from optiml_jax.models.opt import OPTForCausalLM

        # With a mesh, orbax restores each parameter straight into its shard (no full copy on one device).
        shardings = param_shardings(OPTForCausalLM(load_config(ckpt)), mesh, rules) if mesh is not None else None
        model, params = load_model(ckpt, dtype, shardings=shardings)
        kwargs.setdefault("name", os.path.basename(os.path.normpath(str(ckpt_dir))))
        return cls(model, params, load_vocab(ckpt), mesh=mesh, rules=rules, **kwargs)

    def untrained(self, seed: int = 0) -> "Predictor":
        """The same architecture at its random initialisation (the "untrained" baseline of a report)."""
        params = init_params(self.model, seed)
        if self.mesh is not None:
            params = shard_params(self.model, params, self.mesh, self.rules)
        return dataclasses.replace(self, params=params, name=f"{self.name} (untrained init, seed {seed})")

    # ---- tokens -------------------------------------------------------------------------------------------

    @property
    def max_positions(self) -> int:
        cfg = getattr(self.model, "config", None)
        return int(getattr(cfg, "max_position_embeddings", 2048))

    def encode_prompt(self, text: str, reserve: int) -> list[int]:
        """``[bos] + encode(text)``, cut from the left to leave ``reserve`` positions for the continuation."""
        ids = [self.vocab.bos_id] + list(self.vocab.encode(text))
        limit = self.max_positions - reserve
        if self.max_prompt_tokens is not None:
            limit = min(limit, self.max_prompt_tokens)
        if limit < 2:
            raise ValueError(
                f"no room for a prompt: the model has {self.max_positions} positions and {reserve} are reserved "
                "for the output (lower max_new_tokens)"
            )
        if len(ids) > limit:
            self.truncated_prompts += 1
            ids = [self.vocab.bos_id] + ids[len(ids) - limit + 1:]
        return ids

    # ---- generation ---------------------------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[str], cfg: decoding.DecodeConfig = decoding.DecodeConfig()
    ) -> list[str]:
        """Continuations of ``prompts`` (text, EOS and padding removed); beam search returns the best beam."""
        return [self.vocab.decode(ids) for ids in self.generate_ids(prompts, cfg)]

    def generate_ids(
        self, prompts: Sequence[str], cfg: decoding.DecodeConfig = decoding.DecodeConfig()
    ) -> list[list[int]]:
        """Generated token ids per prompt (up to the EOS)."""
        if isinstance(prompts, str):
            raise TypeError("Predictor.generate: pass a list of prompts, not a single string")
        encoded = [self.encode_prompt(p, cfg.max_new_tokens) for p in prompts]
        # Longest first: rows of similar length share a batch, so less padding is computed.
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        results: list[list[int] | None] = [None] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            idx = order[start: start + self.batch_size]
            batch = [encoded[i] for i in idx]
            batch += [batch[0]] * (self.batch_size - len(batch))
            length = min(
                decoding.round_up(max(len(p) for p in batch), self.length_bucket),
                self.max_positions - cfg.max_new_tokens,
            )
            tok, seg, pos = decoding.left_pad(batch, pad_id=self.vocab.pad_id, length=length)
            out = decoding.generate(
                self.model, self.params, tok, seg, pos, cfg,
                eos_id=self.vocab.eos_id, pad_id=self.vocab.pad_id, mesh=self.mesh, rules=self.rules,
            )
            rows = out.tokens[:, 0] if cfg.method == "beam" else out.tokens
            for j, i in enumerate(idx):
                results[i] = decoding.strip_generated(rows[j], eos_id=self.vocab.eos_id, pad_id=self.vocab.pad_id)
        return [r or [] for r in results]

    # ---- scoring ------------------------------------------------------------------------------------------

    def score(
        self,
        prompts: Sequence[str],
        candidates: Sequence[Sequence[str]],
        *,
        normalize: bool = False,
        method: ScoreMethod = "cache",
    ) -> list[list[float]]:
        """Log-likelihood of each candidate given its prompt (sum, or per-token mean with ``normalize``)."""
        if len(prompts) != len(candidates):
            raise ValueError(f"Predictor.score: {len(prompts)} prompts but {len(candidates)} candidate lists")
        for i, c in enumerate(candidates):
            if isinstance(c, str) or len(c) == 0:
                raise ValueError(f"Predictor.score: prompt {i} needs a non-empty list of candidate strings")
        cand_ids = [
            [list(self.vocab.encode(c)) + [self.vocab.eos_id] for c in cands] for cands in candidates
        ]
        reserve = [max(len(c) for c in cands) for cands in cand_ids]
        encoded = [self.encode_prompt(p, r) for p, r in zip(prompts, reserve)]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        scores: list[list[float]] = [[] for _ in prompts]
        for start in range(0, len(order), self.batch_size):
            idx = order[start: start + self.batch_size]
            lps = candidate_logprobs(
                self.model, self.params, [encoded[i] for i in idx], [cand_ids[i] for i in idx],
                pad_id=self.vocab.pad_id, method=method, length_bucket=self.length_bucket,
                mesh=self.mesh, rules=self.rules,
            )
            for i, per_cand in zip(idx, lps):
                scores[i] = [aggregate_score(lp, normalize) for lp in per_cand]
        return scores

    def classify(
        self, prompts: Sequence[str], candidates: Sequence[Sequence[str]], *, normalize: bool = False
    ) -> list[int]:
        """Index of the most likely candidate per prompt (rank classification)."""
        return [int(np.argmax(s)) for s in self.score(prompts, candidates, normalize=normalize)]


# --------------------------------------------------------------------------------------------------------------
# Checkpoint helpers
# --------------------------------------------------------------------------------------------------------------


def resolve_checkpoint(path: str | os.PathLike) -> str:
    """The checkpoint directory (one holding ``config.json`` and ``params/``) that ``path`` designates.

    ``path`` may be the checkpoint itself or a training run directory (MODEL_DIR): then its final export
    (a sub-directory named ``final``, else the checkpoint with the highest step number) is used.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path} does not exist")
    if _is_checkpoint(path):
        return path
    found = []
    for root, dirs, _ in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != "params")
        if root != path and _is_checkpoint(root):
            found.append(root)
            dirs[:] = []
        if root.count(os.sep) - path.count(os.sep) >= 3:
            dirs[:] = []
    if not found:
        raise FileNotFoundError(
            f"no checkpoint in {path}: expected config.json and params/ there or in a sub-directory "
            "(a training run's final checkpoint, or the output of `python -m optiml_jax.convert`)"
        )

    def rank(p: str) -> tuple[int, int]:
        base = os.path.basename(p)
        digits = "".join(ch for ch in base if ch.isdigit())
        return (1 if "final" in os.path.relpath(p, path) else 0, int(digits) if digits else -1)

    return max(found, key=rank)


def _is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, "params"))


def checkpoint_config(path: str | os.PathLike) -> dict:
    """The model config dict stored in a checkpoint's config.json."""
    cfg_path = os.path.join(resolve_checkpoint(path), "config.json")
    try:
        with open(cfg_path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from e


def load_vocab(ckpt_dir: str | os.PathLike):
    """The checkpoint's tokenizer (``tokenizer/``) when it ships one, else the default GPT-2 vocabulary."""
    from optiml_jax.tokenizer import OPTVocabulary

    return OPTVocabulary.from_checkpoint(ckpt_dir)


def init_params(model: Any, seed: int = 0) -> Any:
    """Fresh random params for ``model`` (unboxed from their logical-partitioning metadata)."""
    return jax.jit(lambda rng: model.init_params(rng))(jax.random.PRNGKey(seed))


def param_shardings(model: Any, mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]] | None) -> Any:
    """NamedShardings of the model's params on ``mesh`` from its logical axis names and ``rules``."""
    from optiml_jax import partitioning

    rules = partitioning.validate_rules(rules or partitioning.DEFAULT_LOGICAL_AXIS_RULES)
    return partitioning.abstract_params_and_shardings(model.abstract_params, mesh, rules)[1]


def shard_params(model: Any, params: Any, mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]] | None) -> Any:
    """Places ``params`` on ``mesh`` following the model's logical axis names and ``rules``."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s), params, param_shardings(model, mesh, rules))
