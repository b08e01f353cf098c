"""Inference throughput: KV-cache greedy decoding vs HF generate, rank classification vs HF log-likelihoods."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from bench.common import bench_config, interleaved_times, ratio, summarize


def _model_and_params(model: str, max_len: int, seed: int = 0) -> tuple[Any, Any, Any]:
    import jax

    from optiml_jax.models.opt import OPTForCausalLM

    cfg = bench_config(model, max_len, dropout=0.0)
    m = OPTForCausalLM(cfg)
    params = m.init_params(jax.random.PRNGKey(seed))
    return cfg, m, params


def greedy_prompts(rng: np.random.Generator, cfg: Any, batch: int, prompt_len: int) -> np.ndarray:
    """int32 [batch, prompt_len] random prompts starting with BOS (ids 4.. avoid the special tokens)."""
    prompts = rng.integers(4, min(cfg.vocab_size, 50000), size=(batch, prompt_len)).astype(np.int32)
    prompts[:, 0] = cfg.bos_token_id
    return prompts


def ours_greedy(m: Any, params: Any, prompts: np.ndarray, new_tokens: int) -> np.ndarray:
    """Exactly `new_tokens` greedy tokens per row with `decoding.generate` (EOS is an id that never occurs)."""
    from optiml_jax import decoding

    cfg = m.config
    tok, seg, pos = decoding.left_pad([list(p) for p in prompts], pad_id=cfg.pad_token_id)
    dcfg = decoding.DecodeConfig(method="greedy", max_new_tokens=new_tokens)
    return decoding.generate(m, params, tok, seg, pos, dcfg, eos_id=-1, pad_id=cfg.pad_token_id).tokens


def hf_greedy(hf: Any, prompts: np.ndarray, new_tokens: int) -> np.ndarray:
    """Exactly `new_tokens` greedy tokens per row with HF `generate` (`min_new_tokens` stops it stopping early)."""
    import torch

    ids = torch.from_numpy(prompts.astype(np.int64))
    with torch.inference_mode():
        return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                           pad_token_id=hf.config.pad_token_id)[:, prompts.shape[1]:].numpy()


def greedy_decoding(model: str, *, batch_sizes: Sequence[int], prompt_len: int, new_tokens: int, repeats: int,
                    seed: int = 0) -> dict[str, Any]:
    """New tokens/s of `optiml_jax.decoding.generate` (greedy) vs HF `generate(do_sample=False)`.

    Both decode exactly `new_tokens` per row from the same weights and prompts: our EOS is set to an id that never
    occurs and HF gets `min_new_tokens`, so neither stops early. The fraction of identical generated tokens is
    recorded as a sanity check (near-ties in f32 may legitimately flip a few).
    """
    import jax

    from bench.hf import hf_model_from_params

    cfg, m, params = _model_and_params(model, prompt_len + new_tokens, seed)
    hf = hf_model_from_params(cfg, jax.tree.map(np.asarray, params))
    rng = np.random.default_rng(seed)
    rows = []
    for b in batch_sizes:
        prompts = greedy_prompts(rng, cfg, b, prompt_len)
        out: dict[str, Any] = {}

        def ours():
            out["ours"] = ours_greedy(m, params, prompts, new_tokens)

        def reference():
            out["hf"] = hf_greedy(hf, prompts, new_tokens)

        times = interleaved_times({"ours": ours, "hf": reference}, repeats=repeats, warmup=1)
        n = b * new_tokens
        o, h = summarize(times["ours"]), summarize(times["hf"])
        rows.append({
            "batch": b, "prompt_len": prompt_len, "new_tokens": new_tokens,
            "ours": {**o, "tokens_per_s": n / o["median_s"]}, "hf": {**h, "tokens_per_s": n / h["median_s"]},
            "ratio_ours_over_hf": ratio(n / o["median_s"], n / h["median_s"]),
            "token_agreement": float(np.mean(out["ours"] == out["hf"])),
        })
    return {"model": model, "dtype": "float32", "rows": rows}


def _rank_inputs(rng: np.random.Generator, vocab: int, bos: int, examples: int, candidates: int,
                 prompt_lens: tuple[int, int], cand_lens: tuple[int, int]) -> tuple[list, list]:
    prompts, cands = [], []
    for _ in range(examples):
        n = int(rng.integers(prompt_lens[0], prompt_lens[1] + 1))
        prompts.append([bos] + rng.integers(4, vocab, size=n - 1).tolist())
        cands.append([rng.integers(4, vocab, size=int(rng.integers(cand_lens[0], cand_lens[1] + 1))).tolist()
                      for _ in range(candidates)])
    return prompts, cands


def hf_candidate_logprobs(hf: Any, prompts: Sequence[Sequence[int]], candidates: Sequence[Sequence[Sequence[int]]],
                          *, pad_id: int, rows_per_batch: int = 32) -> list[list[np.ndarray]]:
    """The reference: one HF forward over `prompt + candidate` per candidate (left-padded batches), then the
    log-softmax of the logits at the candidate's positions."""
    import torch

    rows = [(i, list(p) + list(c), len(c)) for i, (p, cs) in enumerate(zip(prompts, candidates)) for c in cs]
    result: list[list[np.ndarray]] = [[] for _ in prompts]
    with torch.inference_mode():
        for start in range(0, len(rows), rows_per_batch):
            chunk = rows[start:start + rows_per_batch]
            length = max(len(s) for _, s, _ in chunk)
            ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), length), dtype=torch.long)
            for r, (_, seq, _) in enumerate(chunk):
                ids[r, length - len(seq):] = torch.tensor(seq)
                mask[r, length - len(seq):] = 1
            # HF derives positions from the attention mask's cumulative sum, so left padding is handled.
            logp = torch.log_softmax(hf(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            for r, (i, seq, n) in enumerate(chunk):
                targets = ids[r, length - n:]
                lp = logp[r, length - n - 1:length - 1].gather(-1, targets[:, None])[:, 0]
                result[i].append(lp.numpy().astype(np.float32))
    return result


def hf_cached_candidate_logprobs(hf: Any, prompts: Sequence[Sequence[int]],
                                 candidates: Sequence[Sequence[Sequence[int]]], *, pad_id: int
                                 ) -> list[list[np.ndarray]]:
    """HF's best practice for rank classification: per example one prefill of the shared prompt (LM head on its
    last position only), its KV cache repeated for the candidates, then all candidates of the example in one
    right-padded forward over that cache (`past_key_values`); same log-likelihoods as `hf_candidate_logprobs`."""
    import torch

    decoder, lm_head = hf.model.decoder, hf.lm_head
    result: list[list[np.ndarray]] = []
    with torch.inference_mode():
        for prompt, cands in zip(prompts, candidates):
            ids = torch.tensor([list(prompt)], dtype=torch.long)
            pre = decoder(input_ids=ids, use_cache=True)
            first = torch.log_softmax(lm_head(pre.last_hidden_state[:, -1]).float(), dim=-1)[0]
            cache = pre.past_key_values
            cache.batch_repeat_interleave(len(cands))
            n = max(len(c) for c in cands)
            cand = torch.full((len(cands), n), pad_id, dtype=torch.long)
            # Right padding: the pads come after every real token, so the causal mask already hides them.
            mask = torch.zeros((len(cands), len(prompt) + n), dtype=torch.long)
            mask[:, :len(prompt)] = 1
            for r, c in enumerate(cands):
                cand[r, :len(c)] = torch.tensor(c)
                mask[r, len(prompt):len(prompt) + len(c)] = 1
            rows = []
            if n > 1:  # the logits after a candidate's last token are never needed
                h = decoder(input_ids=cand[:, :-1], attention_mask=mask[:, :-1], past_key_values=cache,
                            use_cache=True).last_hidden_state
                rest = torch.log_softmax(lm_head(h).float(), dim=-1)
            for r, c in enumerate(cands):
                lp = [first[c[0]]] + ([rest[r, j - 1, c[j]] for j in range(1, len(c))] if n > 1 else [])
                rows.append(torch.stack(lp).numpy().astype(np.float32))
            result.append(rows)
    return result


def ours_candidate_logprobs(m: Any, params: Any, prompts: Sequence[Sequence[int]],
                            candidates: Sequence[Sequence[Sequence[int]]]) -> list[list[np.ndarray]]:
    """`inference.candidate_logprobs` in the device calls evaluation makes: `Predictor.plan_batches` (prompts
    sorted by length into token-budget batches padded to bucket sizes), not one batch padded to the longest."""
    from optiml_jax import inference

    # plan_batches reads only batch_size / token_budget (the evaluation defaults); no vocabulary is needed.
    planner = inference.Predictor(model=m, params=params, vocab=None)
    out: list[list[np.ndarray]] = [[] for _ in prompts]
    for idx, _ in planner.plan_batches([len(p) for p in prompts], m.config.max_position_embeddings):
        lps = inference.candidate_logprobs(m, params, [prompts[i] for i in idx], [candidates[i] for i in idx],
                                           pad_id=m.config.pad_token_id, method="cache")
        for i, lp in zip(idx, lps):
            out[i] = lp
    return out


def compare_logprobs(ours: list[list[np.ndarray]], ref: list[list[np.ndarray]]) -> dict[str, float]:
    """Largest |log-prob difference| over all candidate tokens and the share of examples whose best candidate
    (summed log-probability) is the same."""
    diff = max(float(np.max(np.abs(a - b))) for xs, ys in zip(ours, ref) for a, b in zip(xs, ys))
    agree = np.mean([int(np.argmax([x.sum() for x in xs])) == int(np.argmax([y.sum() for y in ys]))
                     for xs, ys in zip(ours, ref)])
    return {"max_abs_logprob_diff": diff, "prediction_agreement": float(agree)}


def rank_classification(model: str, *, examples: int, candidates: int, prompt_lens: tuple[int, int],
                        cand_lens: tuple[int, int], repeats: int, seed: int = 0) -> dict[str, Any]:
    """Examples/s of `inference.candidate_logprobs` (prompt prefilled once, candidates from the KV cache; in
    evaluation's length-sorted batches, `ours_candidate_logprobs`) vs
    HF with the prompt's KV cache reused across candidates (the fair baseline, `hf_cached_candidate_logprobs`)
    and vs the naive HF full forward per candidate (`hf_candidate_logprobs`, the baseline of earlier runs),
    all round-robin; also their largest disagreement."""
    import jax

    from bench.hf import hf_model_from_params

    cfg, m, params = _model_and_params(model, prompt_lens[1] + cand_lens[1] + 32, seed)
    hf = hf_model_from_params(cfg, jax.tree.map(np.asarray, params))
    prompts, cands = _rank_inputs(np.random.default_rng(seed), min(cfg.vocab_size, 50000), cfg.bos_token_id,
                                  examples, candidates, prompt_lens, cand_lens)
    out: dict[str, Any] = {}

    def ours():
        out["ours"] = ours_candidate_logprobs(m, params, prompts, cands)

    def reference():
        out["hf"] = hf_cached_candidate_logprobs(hf, prompts, cands, pad_id=cfg.pad_token_id)

    def naive():
        out["hf_full"] = hf_candidate_logprobs(hf, prompts, cands, pad_id=cfg.pad_token_id)

    times = interleaved_times({"ours": ours, "hf": reference, "hf_full": naive}, repeats=repeats, warmup=1)
    o, h, f = summarize(times["ours"]), summarize(times["hf"]), summarize(times["hf_full"])
    return {"model": model, "examples": examples, "candidates_per_example": candidates,
            "prompt_lens": list(prompt_lens), "candidate_lens": list(cand_lens), "method": "cache",
            "ours": {**o, "examples_per_s": examples / o["median_s"]},
            "hf": {**h, "examples_per_s": examples / h["median_s"], "method": "prompt KV cache reused"},
            "hf_full": {**f, "examples_per_s": examples / f["median_s"], "method": "full forward per candidate"},
            "ratio_ours_over_hf": ratio(examples / o["median_s"], examples / h["median_s"]),
            "ratio_ours_over_hf_full": ratio(examples / o["median_s"], examples / f["median_s"]),
            **compare_logprobs(out["ours"], out["hf_full"]),
            "hf_cached_vs_full": compare_logprobs(out["hf"], out["hf_full"])}
