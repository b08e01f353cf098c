"""Rank classification and a `Predictor` that bundles a model, its params and its vocabulary.

Rank classification (Brown et al. 2020, paper section 4.1) scores every answer candidate by its log-likelihood
given the prompt and picks the best. The candidate is scored the way the model was trained on targets: the
prompt is ``[bos] + encode(source)``, the candidate ``encode(candidate) + [eos]`` (the EOS says the answer ends
there, which separates "yes" from "yes, but ...").
That is the default "optiml" convention; ``Predictor.score(convention="lm_eval")`` tokenises pairs by
lm-evaluation-harness's rule instead (`optiml_jax.candidates`).

Two ways to compute the same numbers:

* ``"cache"`` (default): each distinct prompt is prefilled once into the KV cache, the cache rows are copied to
  the prompt's candidates, and all tokens of all candidates of a batch are scored in *one* multi-token pass over
  those copies. The prompt -- usually far longer than the answers -- is processed once per example instead of
  once per candidate, and an answer of n tokens costs one call, not n sequential steps.
* ``"full"``: one forward pass over ``prompt + candidate`` per candidate (left-padded rows); a reference.

`Predictor` sorts examples by prompt length into token-budget batches padded to a few bucket sizes
(`decoding.bucket_length`), so the number of compiled programs stays small; it counts them
(``Predictor.compiled_shapes``) and logs the count.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any, Callable, Literal, Sequence

import jax
import numpy as np

from optiml_jax import candidates as candidates_lib
from optiml_jax import decoding
from optiml_jax.models.lm import CausalLM
from optiml_jax.partitioning import to_host

ScoreMethod = Literal["cache", "full"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# Device functions
# --------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _compiled_scorer(model, method: str) -> Callable:
    """The model's scoring function for ``method``, jitted: `CausalLM.score_continuations` ("cache") or
    `CausalLM.score` ("full"); ``model`` is the network (wrapped) or a `CausalLM`."""
    lm = model if isinstance(model, CausalLM) else CausalLM(model)
    return jax.jit(lm.score_continuations if method == "cache" else lm.score)


# --------------------------------------------------------------------------------------------------------------
# Host-side API on token ids
# --------------------------------------------------------------------------------------------------------------


def padded_rows(n: int, mesh: jax.sharding.Mesh | None = None) -> int:
    """Rows a batch of ``n`` is padded to: a power of two (few distinct shapes) and a multiple of the mesh's
    data-parallel size (so the batch splits evenly over its devices)."""
    dp = 1
    if mesh is not None:
        from optiml_jax.partitioning import data_parallel_size

        dp = data_parallel_size(mesh)
    return decoding.round_up(decoding.pow2_at_least(n), dp)


def candidate_logprobs(
    model: Any,
    params: Any,
    prompts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[Sequence[int]]],
    *,
    pad_id: int,
    method: ScoreMethod = "cache",
    mesh: jax.sharding.Mesh | None = None,
    rules: Sequence[tuple[str, Any]] | None = None,
    shapes_seen: set | None = None,
) -> list[list[np.ndarray]]:
    """Per-token log-likelihoods of each candidate (token ids) given its prompt (token ids, BOS included).

    Returns, for prompt i, one float32 array per candidate with a log-probability per candidate token. All inputs
    go through the device in one call: callers batch (see `Predictor.score`). Prompts are padded to a
    `decoding.bucket_length`, candidates to the bucket of the longest one (an answer of 2 tokens is scored in 2
    positions, not 64), row counts by `padded_rows`. ``shapes_seen`` collects the padded shapes, i.e. the
    distinct programs compiled.
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
    # Row counts are bucketed too: one call over many tasks (evaluation.evaluate_many) mixes prompts with 2 to 20
    # candidates, and every distinct count would otherwise be a program of its own (a trace and an XLA compile).
    n_rows = padded_rows(decoding.bucket_length(len(rows), minimum=8), mesh)
    # Bucketed lengths (fewer compilations), but never beyond the position table / cache limit.
    cand_len = decoding.bucket_length(longest_c, minimum=1, maximum=max_pos - longest_p)
    if method == "cache":
        p_len = decoding.bucket_length(longest_p, maximum=max_pos - cand_len)
        n_prompts = padded_rows(decoding.bucket_length(len(prompts), minimum=1), mesh)
        # Filler prompts/rows repeat the first real ones and are discarded below.
        padded_prompts = list(prompts) + [prompts[0]] * (n_prompts - len(prompts))
        tok, seg, pos = decoding.left_pad(padded_prompts, pad_id=pad_id, length=p_len)
        decoding.cache_structure(model, n_prompts, p_len + max(cand_len - 1, 1))  # see decoding.cache_structure
        row_prompt = np.zeros((n_rows,), np.int32)
        c_tok = np.full((n_rows, cand_len), pad_id, np.int32)
        c_mask = np.zeros((n_rows, cand_len), np.float32)
        for r, (i, c) in enumerate(rows):
            row_prompt[r] = i
            c_tok[r, : len(c)] = c
            c_mask[r, : len(c)] = 1.0
        if shapes_seen is not None:
            shapes_seen.add(("score_cache", n_prompts, p_len, n_rows, cand_len))
        args = decoding.place_batch(mesh, tok, seg, pos) + decoding.place_batch(mesh, row_prompt, c_tok, c_mask)
        with decoding.decode_context(mesh, rules):
            out = to_host(_compiled_scorer(model, "cache")(params, *args))
        per_row = [out[r, : len(c)] for r, (_, c) in enumerate(rows)]
    elif method == "full":
        seqs = [list(prompts[i]) + c for i, c in rows]
        seqs += [seqs[0]] * (n_rows - len(seqs))
        length = decoding.bucket_length(max(len(s) for s in seqs), maximum=max_pos)
        tok, seg, pos = decoding.left_pad(seqs, pad_id=pad_id, length=length)
        mask = np.zeros(tok.shape, np.float32)
        for r, (_, c) in enumerate(rows):
            mask[r, length - len(c):] = 1.0
        if shapes_seen is not None:
            shapes_seen.add(("score_full", n_rows, length))
        with decoding.decode_context(mesh, rules):
            out = to_host(_compiled_scorer(model, "full")(params, *decoding.place_batch(mesh, tok, seg, pos, mask)))
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
      batch_size: prompts per device call at most.
      token_budget: padded prompt tokens per device call at most: examples are sorted by length, so a batch of
        long prompts holds fewer rows (at least one); None = ``batch_size`` rows always.
      max_prompt_tokens: prompts longer than this are cut from the left (the instruction's start goes first,
        the example and the answer cue stay); defaults to what the position table leaves after the output.
      name: label used in reports.
      compiled_shapes: the distinct padded batch shapes run so far (one compiled program each).
    """

    model: Any
    params: Any
    vocab: Any
    mesh: jax.sharding.Mesh | None = None
    rules: Sequence[tuple[str, Any]] | None = None
    batch_size: int = 8
    token_budget: int | None = 8192
    max_prompt_tokens: int | None = None
    name: str = "model"
    truncated_prompts: int = dataclasses.field(default=0, init=False)
    compiled_shapes: set = dataclasses.field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"Predictor.batch_size must be >= 1, got {self.batch_size}")
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError(f"Predictor.token_budget must be >= 1 or None, got {self.token_budget}")

    # ---- construction -----------------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_dir: str | os.PathLike,
        *,
        dtype: str | None = None,
        param_dtype: str | None = None,
        mesh: jax.sharding.Mesh | None = None,
        rules: Sequence[tuple[str, Any]] | None = None,
        **kwargs: Any,
    ) -> "Predictor":
        """Loads one of our checkpoints (config.json + params/ [+ tokenizer/]); see `resolve_checkpoint`.

        ``param_dtype``: the serving dtype the weights are restored in (e.g. "bfloat16"; None = as stored); the
        compute dtype follows it unless ``dtype`` sets it. With a ``mesh`` every parameter is restored straight
        into its shard (``rules``: logical axis rules, default the trainer's), never through one device.
        """
        ckpt = resolve_checkpoint(ckpt_dir)
        from optiml_jax.models.convert import load_config, load_model
        from optiml_jax.models.opt import OPTForCausalLM

        shardings = param_shardings(OPTForCausalLM(load_config(ckpt)), mesh, rules) if mesh is not None else None
        model, params = load_model(ckpt, dtype or param_dtype, shardings=shardings, param_dtype=param_dtype)
        kwargs.setdefault("name", os.path.basename(os.path.normpath(str(ckpt_dir))))
        return cls(model, params, load_vocab(ckpt), mesh=mesh, rules=rules, **kwargs)

    def untrained(self, seed: int = 0) -> "Predictor":
        """The same architecture at its random initialisation (the "untrained" baseline of a report)."""
        params = init_params(self.model, seed, param_shardings(self.model, self.mesh, self.rules)
                             if self.mesh is not None else None)
        return dataclasses.replace(self, params=params, name=f"{self.name} (untrained init, seed {seed})")

    # ---- batching -----------------------------------------------------------------------------------------

    def plan_batches(self, lengths: Sequence[int], max_length: int,
                     limits: Sequence[int] | None = None) -> list[tuple[list[int], int]]:
        """Groups example indices into device calls: longest prompt first, each call's padded length a
        `decoding.bucket_length` (at most ``max_length``) and its size bounded by ``batch_size`` and
        ``token_budget``. Returns (indices, padded prompt length) per call.

        ``limits`` (generation: new tokens per example) order the examples of one padded length by limit, so
        a call's rows stop at about the same step; equal limits give the order of lengths alone."""
        def key(i: int) -> tuple[int, int, int]:
            bucket = decoding.bucket_length(lengths[i], maximum=max_length)
            return (-bucket, -(limits[i] if limits is not None else 0), -lengths[i])

        order = sorted(range(len(lengths)), key=key)
        out, start = [], 0
        while start < len(order):
            length = decoding.bucket_length(lengths[order[start]], maximum=max_length)
            rows = self._rows_for(length)
            out.append((order[start: start + rows], length))
            start += rows
        return out

    def _log_compiles(self, what: str) -> None:
        logger.info("%s %s: %d distinct batch shapes compiled so far", self.name, what, len(self.compiled_shapes))

    # ---- tokens -------------------------------------------------------------------------------------------

    @property
    def max_positions(self) -> int:
        cfg = getattr(self.model, "config", None)
        return int(getattr(cfg, "max_position_embeddings", 2048))

    def encode_prompt(self, text: str, reserve: int) -> list[int]:
        """``[bos] + encode(text)``, cut from the left to leave ``reserve`` positions for the continuation."""
        return self.fit_prompt([self.vocab.bos_id] + list(self.vocab.encode(text)), reserve)

    def fit_prompt(self, ids: list[int], reserve: int) -> list[int]:
        """Prompt ids (BOS first), cut from the left after the BOS to leave ``reserve`` positions."""
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
        self, prompts: Sequence[str], cfg: decoding.DecodeConfig = decoding.DecodeConfig(),
        limits: Sequence[int] | None = None,
    ) -> list[str]:
        """Continuations of ``prompts`` (text, EOS and padding removed); beam search returns the best beam."""
        return [self.vocab.decode(ids) for ids in self.generate_ids(prompts, cfg, limits)]

    def generate_ids(
        self, prompts: Sequence[str], cfg: decoding.DecodeConfig = decoding.DecodeConfig(),
        limits: Sequence[int] | None = None,
    ) -> list[list[int]]:
        """Generated token ids per prompt (up to the EOS).

        ``limits``: new tokens at most per prompt (each <= ``cfg.max_new_tokens``; greedy / sample), e.g. a
        per-task bound: a prompt gets the first ``limits[i]`` tokens of its unlimited continuation. Prompts are
        cut for ``cfg.max_new_tokens`` either way, and calls keep the shapes of ``cfg``, so limits add no
        compiled program; a call ends when its last row is finished."""
        if isinstance(prompts, str):
            raise TypeError("Predictor.generate: pass a list of prompts, not a single string")
        if limits is not None and len(limits) != len(prompts):
            raise ValueError(f"Predictor.generate: {len(prompts)} prompts but {len(limits)} limits")
        encoded = [self.encode_prompt(p, cfg.max_new_tokens) for p in prompts]
        results: list[list[int] | None] = [None] * len(encoded)
        for idx, length in self.plan_batches([len(e) for e in encoded], self.max_positions - cfg.max_new_tokens,
                                             limits):
            batch = [encoded[i] for i in idx]
            # Every call of one padded length has the same row count (filler rows repeat the first prompt).
            rows = padded_rows(self._rows_for(length), self.mesh)
            batch += [batch[0]] * (rows - len(batch))
            self.compiled_shapes.add((f"generate_{cfg.method}", rows, length, cfg.max_new_tokens))
            tok, seg, pos = decoding.left_pad(batch, pad_id=self.vocab.pad_id, length=length)
            # Filler rows take the smallest limit of the call: they never keep the loop running.
            row_limits = None if limits is None else [limits[i] for i in idx]
            if row_limits is not None:
                row_limits += [min(row_limits)] * (rows - len(row_limits))
            out = decoding.generate(
                self.model, self.params, tok, seg, pos, cfg,
                eos_id=self.vocab.eos_id, pad_id=self.vocab.pad_id, mesh=self.mesh, rules=self.rules,
                limits=row_limits,
            )
            rows_out = out.tokens[:, 0] if cfg.method == "beam" else out.tokens
            for j, i in enumerate(idx):
                results[i] = decoding.strip_generated(rows_out[j], eos_id=self.vocab.eos_id, pad_id=self.vocab.pad_id)
        self._log_compiles("generation")
        return [r or [] for r in results]

    def _rows_for(self, length: int) -> int:
        rows = self.batch_size
        if self.token_budget is not None:
            rows = max(1, min(rows, self.token_budget // length))
        return rows

    # ---- scoring ------------------------------------------------------------------------------------------

    def score(
        self,
        prompts: Sequence[str],
        candidates: Sequence[Sequence[str]],
        *,
        normalize: bool = False,
        method: ScoreMethod = "cache",
        convention: str = "optiml",
    ) -> list[list[float]]:
        """Log-likelihood of each candidate given its prompt (sum, or per-token mean with ``normalize``).

        ``convention`` says how (prompt, candidate) become token ids: "optiml" (candidate + EOS, as trained) or
        "lm_eval" (lm-evaluation-harness's whole-string rule, no EOS); see `optiml_jax.candidates`.
        """
        if len(prompts) != len(candidates):
            raise ValueError(f"Predictor.score: {len(prompts)} prompts but {len(candidates)} candidate lists")
        for i, c in enumerate(candidates):
            if isinstance(c, str) or len(c) == 0:
                raise ValueError(f"Predictor.score: prompt {i} needs a non-empty list of candidate strings")
        pairs = [candidates_lib.encode_choices(self.vocab, p, list(c), convention) for p, c in zip(prompts, candidates)]
        cand_ids = [cands for _, cands in pairs]
        reserve = [max(len(c) for c in cands) for cands in cand_ids]
        encoded = [self.fit_prompt(ctx, r) for (ctx, _), r in zip(pairs, reserve)]
        scores: list[list[float]] = [[] for _ in prompts]
        for idx in self._fitting_batches(encoded, reserve):
            lps = candidate_logprobs(
                self.model, self.params, [encoded[i] for i in idx], [cand_ids[i] for i in idx],
                pad_id=self.vocab.pad_id, method=method, mesh=self.mesh, rules=self.rules,
                shapes_seen=self.compiled_shapes,
            )
            for i, per_cand in zip(idx, lps):
                scores[i] = [aggregate_score(lp, normalize) for lp in per_cand]
        self._log_compiles("scoring")
        return scores

    def _fitting_batches(self, encoded: Sequence[Sequence[int]], reserve: Sequence[int]) -> list[list[int]]:
        """`plan_batches` for scoring, with every call's longest prompt plus longest candidate within the
        position table: each prompt was cut to leave room for its own candidates only, so a long prompt and
        another task's longer candidates (one call over many tasks) are split into separate calls."""
        out = []
        for idx, _ in self.plan_batches([len(e) for e in encoded], self.max_positions):
            current: list[int] = []
            for i in idx:  # longest prompt first
                longest_p = len(encoded[current[0]]) if current else len(encoded[i])
                if current and longest_p + max(reserve[j] for j in current + [i]) > self.max_positions:
                    out.append(current)
                    current = []
                current.append(i)
            out.append(current)
        return out

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


def init_params(model: Any, seed: int = 0, shardings: Any = None) -> Any:
    """Fresh random params for ``model`` (unboxed), created directly in ``shardings`` when given."""
    return jax.jit(lambda rng: model.init_params(rng), out_shardings=shardings)(jax.random.PRNGKey(seed))


def param_shardings(model: Any, mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]] | None) -> Any:
    """NamedShardings of the model's params on ``mesh`` from its logical axis names and ``rules``."""
    from optiml_jax import partitioning

    rules = partitioning.validate_rules(rules or partitioning.DEFAULT_LOGICAL_AXIS_RULES)
    return partitioning.abstract_params_and_shardings(model.abstract_params, mesh, rules)[1]


def shard_params(model: Any, params: Any, mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]] | None) -> Any:
    """Places ``params`` on ``mesh`` following the model's logical axis names and ``rules``."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s), params, param_shardings(model, mesh, rules))
