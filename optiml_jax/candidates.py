"""How a (context, candidate) pair becomes context / continuation token ids, and how candidates are chosen.

Two scoring conventions for rank classification (`optiml_jax.inference.Predictor.score(convention=...)`):

* ``"optiml"`` (default): the candidate is scored the way instruction tuning trains targets. Context
  ``[bos] + encode(context)``, continuation ``encode(candidate) + [eos]``; context and candidate are encoded
  separately (our prompts end with a delimiter such as "Answer:" and candidates start with a space, so the
  boundary is one the BPE pre-tokeniser splits at anyway). The EOS separates "yes" from "yes, but ...".
* ``"lm_eval"``: EleutherAI lm-evaluation-harness's rule (``TemplateLM._encode_pair``, 0.4.x, with the
  tokenizer's own BOS as in 0.4.10+): trailing whitespace of the context moves to the front of the
  continuation; the whole string ``context + continuation`` is encoded and the continuation is what lies after
  ``len(encode(context))`` tokens of it; no EOS. An empty context is the BOS alone. Numbers computed this way
  are comparable with harness results (e.g. published OPT/OPT-IML zero-shot accuracies from the harness).

`choose` gives the harness's ``acc`` (highest summed log-likelihood) and ``acc_norm`` (highest log-likelihood
per character of the choice, the choice being the candidate without its leading target delimiter, as the
harness's ``doc_to_choice`` strings are).

Leaf module: it imports nothing of the project (the vocabulary is any object with ``encode``, ``bos_id`` and
``eos_id``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

CONVENTIONS: tuple[str, ...] = ("optiml", "lm_eval")
TARGET_DELIMITER = " "   # what separates a prompt's delimiter from the answer (prompts.format_target)


def check_convention(convention: str) -> str:
    """Validates a convention name; the error lists the choices."""
    if convention not in CONVENTIONS:
        raise ValueError(f"scoring convention must be one of {CONVENTIONS}, got {convention!r}")
    return convention


def encode_pair(vocab: Any, context: str, continuation: str, convention: str = "optiml") -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of one pair under ``convention`` (see module docstring)."""
    check_convention(convention)
    bos = [vocab.bos_id]
    if convention == "optiml":
        return bos + list(vocab.encode(context)), list(vocab.encode(continuation)) + [vocab.eos_id]
    if not context:
        return bos, list(vocab.encode(continuation))
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = bos + list(vocab.encode(context + continuation))
    context_ids = bos + list(vocab.encode(context))
    return context_ids, whole[len(context_ids):]


def encode_choices(vocab: Any, context: str, choices: Sequence[str],
                   convention: str = "optiml") -> tuple[list[int], list[list[int]]]:
    """The context ids (shared by all choices under both conventions) and each choice's continuation ids."""
    if not choices:
        raise ValueError("encode_choices: no choices")
    pairs = [encode_pair(vocab, context, c, convention) for c in choices]
    context_ids = pairs[0][0]
    assert all(p[0] == context_ids for p in pairs), "context encoding must not depend on the choice"
    return context_ids, [p[1] for p in pairs]


def choice_text(candidate: str) -> str:
    """A candidate in target form (" yes") as the harness's choice string ("yes"): without the delimiter."""
    return candidate[len(TARGET_DELIMITER):] if candidate.startswith(TARGET_DELIMITER) else candidate


def choose(loglikelihoods: Sequence[float], candidates: Sequence[str]) -> dict[str, int]:
    """Indices picked by ``acc`` (summed log-likelihood) and ``acc_norm`` (per character of `choice_text`)."""
    ll = np.asarray(loglikelihoods, np.float64)
    if ll.shape != (len(candidates),) or not len(candidates):
        raise ValueError(f"choose: {ll.shape} log-likelihoods for {len(candidates)} candidates")
    chars = np.array([max(len(choice_text(c)), 1) for c in candidates], np.float64)
    return {"acc": int(np.argmax(ll)), "acc_norm": int(np.argmax(ll / chars))}
