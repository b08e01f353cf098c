"""Eval throughput against the CPU inference engines: ours vs HF PyTorch vs CTranslate2, f32 and int8.

One interleaved run (`common.interleaved_times`, round-robin after a warm-up round) per workload, every engine
holding the same weights:

- greedy decoding, exactly `new_tokens` per row (no engine may stop early): ours `decoding.generate`; HF
  `generate(do_sample=False)` under `torch.inference_mode`, sdpa attention; CTranslate2
  `Generator.generate_batch(sampling_topk=1, min_length=max_length=new_tokens)`;
- rank classification, per-token log-likelihoods of every candidate: ours `inference.candidate_logprobs`
  (prompt prefilled once, all candidate tokens in one pass over its cache) in evaluation's length-sorted
  batches (`decode.ours_candidate_logprobs`); HF with the prompt's KV cache reused
  across candidates (`decode.hf_cached_candidate_logprobs`); CTranslate2 `Generator.score_batch` over
  prompt + candidate (its API has no prompt-cache reuse for scoring).

int8: CTranslate2 `compute_type="int8"` (int8 weights and int8 GEMMs, its CPU int8 mode); HF
`torch.ao.quantization.quantize_dynamic` on every `nn.Linear` (the LM head included). Outputs are checked
against ours (greedy tokens, log-probs) so the comparison is like for like.

CTranslate2 is a benchmark-only dependency (`pip install -e .[bench]`); without it the section reports
"skipped: ctranslate2 not installed".
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Sequence

import numpy as np

from bench import decode
from bench.common import interleaved_times, num_cores, ratio, summarize

SKIPPED = "skipped: ctranslate2 not installed"


def ct2_version() -> str | None:
    """The installed ctranslate2 version, or None when it cannot be imported."""
    try:
        import ctranslate2
    except ImportError:
        return None
    return ctranslate2.__version__


def write_placeholder_tokenizer(path: str, vocab_size: int) -> list[str]:
    """A word-level HF tokenizer whose vocabulary is OPT's four special tokens then `t{id}` for every other id.

    CTranslate2's converter reads the vocabulary (and BOS/EOS/UNK) from the model directory's tokenizer; the
    benchmark speaks token ids, so any bijection id <-> string with OPT's special ids serves. Returns the tokens
    in id order.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # OPT's ids 0..3
    tokens = specials + [f"t{i}" for i in range(len(specials), vocab_size)]
    tok = Tokenizer(WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    # OPT's HF tokenizer uses </s> as BOS too.
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(path)
    return tokens


def ct2_models(hf: Any, workdir: str, compute_types: Sequence[str]) -> dict[str, Any]:
    """`ctranslate2.Generator`s of the HF model `hf` per compute type (converted once, quantised at load)."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    hf_dir, ct2_dir = os.path.join(workdir, "hf"), os.path.join(workdir, "ct2")
    hf.save_pretrained(hf_dir, safe_serialization=True)
    write_placeholder_tokenizer(hf_dir, hf.config.vocab_size)
    TransformersConverter(hf_dir).convert(ct2_dir, force=True)  # f32 weights; int8 is applied when loading
    return {ct: ctranslate2.Generator(ct2_dir, device="cpu", compute_type=ct, inter_threads=1,
                                      intra_threads=num_cores()) for ct in compute_types}


def ct2_vocabulary(workdir: str) -> list[str]:
    """The converted model's vocabulary (token strings in id order)."""
    path = os.path.join(workdir, "ct2")
    for name in ("vocabulary.json", "vocabulary.txt"):
        f = os.path.join(path, name)
        if os.path.exists(f):
            with open(f) as fh:
                return json.load(fh) if name.endswith(".json") else fh.read().splitlines()
    raise FileNotFoundError(f"no vocabulary file in {path}")


def ct2_greedy(gen: Any, vocab: list[str], prompts: np.ndarray, new_tokens: int) -> np.ndarray:
    """Exactly `new_tokens` greedy tokens per row (`min_length` keeps EOS away) as int ids [B, new_tokens]."""
    start = [[vocab[int(t)] for t in row] for row in prompts]
    res = gen.generate_batch(start, max_length=new_tokens, min_length=new_tokens, sampling_topk=1, beam_size=1,
                             include_prompt_in_result=False, max_batch_size=0)
    return np.asarray([r.sequences_ids[0] for r in res], dtype=np.int32)


def ct2_candidate_logprobs(gen: Any, vocab: list[str], prompts: Sequence[Sequence[int]],
                           candidates: Sequence[Sequence[Sequence[int]]]) -> list[list[np.ndarray]]:
    """Per-token log-likelihoods of each candidate with `score_batch` over prompt + candidate (one batch)."""
    rows = [[vocab[t] for t in list(p) + list(c)] for p, cs in zip(prompts, candidates) for c in cs]
    scored = gen.score_batch(rows, max_batch_size=0)
    out: list[list[np.ndarray]] = []
    it = iter(scored)
    for cs in candidates:
        # score_batch gives log p(token_i | tokens_<i) for i >= 1; the candidate's are the last len(c).
        out.append([np.asarray(next(it).log_probs[-len(c):], np.float32) for c in cs])
    return out


def hf_int8(hf: Any) -> Any:
    """HF's CPU int8 path: dynamic quantisation (int8 weights, int8 GEMMs) of every nn.Linear, LM head included."""
    import copy
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch 2.13 marks quantised tensors deprecated; it is still their int8 path
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(hf), {torch.nn.Linear}, dtype=torch.qint8)


def _rows(times: dict[str, list[float]], work: float, unit: str) -> dict[str, dict[str, float]]:
    return {k: {**summarize(v), unit: work / summarize(v)["median_s"]} for k, v in times.items()}


def _engines(m: Any, params: Any, hf: Any, workdir: str, with_int8: bool) -> tuple[dict[str, Any], list[str]]:
    """The engine objects: HF f32 (and int8) and CTranslate2 per compute type, plus CT2's vocabulary."""
    gens = ct2_models(hf, workdir, ("float32", "int8") if with_int8 else ("float32",))
    engines = {"hf_f32": hf, "ct2_f32": gens["float32"]}
    if with_int8:
        engines.update(hf_int8=hf_int8(hf), ct2_int8=gens["int8"])
    return engines, ct2_vocabulary(workdir)


def compare_engines(model: str, *, batch_sizes: Sequence[int], prompt_len: int, new_tokens: int,
                    rank_examples: int, rank_candidates: int, rank_prompt_lens: tuple[int, int],
                    rank_cand_lens: tuple[int, int], repeats: int, with_int8: bool = True, seed: int = 0,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Greedy decoding tokens/s and rank-classification examples/s of ours, HF and CTranslate2 (see module doc).

    Ratios are ours over each engine (> 1: we are faster). Returns {"status": SKIPPED} without ctranslate2.
    """
    version = ct2_version()
    if version is None:
        log(f"[bench] engines {SKIPPED}")
        return {"status": SKIPPED}
    import jax

    from bench.hf import hf_model_from_params

    max_len = max(prompt_len + new_tokens, rank_prompt_lens[1] + rank_cand_lens[1] + 32)
    cfg, m, params = decode._model_and_params(model, max_len, seed)
    hf = hf_model_from_params(cfg, jax.tree.map(np.asarray, params))
    result: dict[str, Any] = {"model": model, "ctranslate2": version, "threads": num_cores(),
                              "engines": ["ours_f32", "hf_f32", "ct2_f32"] + (["hf_int8", "ct2_int8"]
                                                                             if with_int8 else [])}
    with tempfile.TemporaryDirectory(prefix="bench-ct2-") as workdir:
        engines, vocab = _engines(m, params, hf, workdir, with_int8)
        rng = np.random.default_rng(seed)
        greedy_rows = []
        for b in batch_sizes:
            prompts = decode.greedy_prompts(rng, cfg, b, prompt_len)
            out: dict[str, np.ndarray] = {}
            fns: dict[str, Callable[[], Any]] = {
                "ours_f32": lambda: out.__setitem__("ours_f32", decode.ours_greedy(m, params, prompts, new_tokens))}
            for name, eng in engines.items():
                if name.startswith("hf"):
                    fns[name] = lambda n=name, e=eng: out.__setitem__(n, decode.hf_greedy(e, prompts, new_tokens))
                else:
                    fns[name] = lambda n=name, e=eng: out.__setitem__(n, ct2_greedy(e, vocab, prompts, new_tokens))
            times = interleaved_times(fns, repeats=repeats, warmup=1)
            rows = _rows(times, b * new_tokens, "tokens_per_s")
            ours = rows["ours_f32"]["tokens_per_s"]
            greedy_rows.append({
                "batch": b, "prompt_len": prompt_len, "new_tokens": new_tokens, "engines": rows,
                "ratio_ours_over": {k: ratio(ours, r["tokens_per_s"]) for k, r in rows.items() if k != "ours_f32"},
                # Identical greedy tokens to ours (f32 engines should be 100%; int8 ones show the drift).
                "token_agreement_with_ours": {k: float(np.mean(v == out["ours_f32"])) for k, v in out.items()
                                              if k != "ours_f32"},
            })
            log(f"[bench] engines greedy batch {b}: " + ", ".join(
                f"{k} {r['tokens_per_s']:.0f} tok/s" for k, r in rows.items()))
        result["greedy"] = greedy_rows

        prompts, cands = decode._rank_inputs(np.random.default_rng(seed), min(cfg.vocab_size, 50000),
                                             cfg.bos_token_id, rank_examples, rank_candidates, rank_prompt_lens,
                                             rank_cand_lens)
        out_lp: dict[str, list[list[np.ndarray]]] = {}
        fns = {"ours_f32": lambda: out_lp.__setitem__("ours_f32", decode.ours_candidate_logprobs(
            m, params, prompts, cands))}
        for name, eng in engines.items():
            if name.startswith("hf"):
                fns[name] = lambda n=name, e=eng: out_lp.__setitem__(n, decode.hf_cached_candidate_logprobs(
                    e, prompts, cands, pad_id=cfg.pad_token_id))
            else:
                fns[name] = lambda n=name, e=eng: out_lp.__setitem__(n, ct2_candidate_logprobs(e, vocab, prompts,
                                                                                               cands))
        times = interleaved_times(fns, repeats=repeats, warmup=1)
        rows = _rows(times, rank_examples, "examples_per_s")
        ours = rows["ours_f32"]["examples_per_s"]
        result["rank_classification"] = {
            "examples": rank_examples, "candidates_per_example": rank_candidates,
            "prompt_lens": list(rank_prompt_lens), "candidate_lens": list(rank_cand_lens), "engines": rows,
            "ratio_ours_over": {k: ratio(ours, r["examples_per_s"]) for k, r in rows.items() if k != "ours_f32"},
            "agreement_with_ours": {k: decode.compare_logprobs(v, out_lp["ours_f32"]) for k, v in out_lp.items()
                                    if k != "ours_f32"},
        }
        log("[bench] engines rank classification: " + ", ".join(
            f"{k} {r['examples_per_s']:.1f} ex/s" for k, r in rows.items()))
    return result
