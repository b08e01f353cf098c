"""Metrics against rouge_score and the official SuperNI formulas, on the real test references."""
from __future__ import annotations

import gzip
import json
import pathlib
import string

import numpy as np
import pytest
from rouge_score import rouge_scorer

from optiml_jax import metrics as M


def _perturb(text: str, i: int) -> str:
    """A deterministic, varied corruption of a reference, used as a prediction."""
    words = text.split()
    kind = i % 7
    if kind == 0:
        return text
    if kind == 1:
        return " ".join(w for j, w in enumerate(words) if j % 3 != 1)
    if kind == 2:
        return text.upper() + "!!"
    if kind == 3:
        return " ".join(reversed(words))
    if kind == 4:
        return "The answer is: " + text.lower()
    if kind == 5:
        return ""
    return " ".join(words[: max(1, len(words) // 2)]) + " extra tokens here"


def _official_normalize(s: str) -> str:
    # Independent re-statement of the official normalisation: lower, strip ASCII punctuation, fix whitespace.
    s = s.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(s.split())


@pytest.fixture(scope="module")
def test_set(real_data_dir: pathlib.Path) -> tuple[list[str], list[list[str]]]:
    path = real_data_dir / "superni" / "test_references.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) == 11810
    refs = [r["references"] for r in rows]
    preds = [_perturb(r[(i // 7) % len(r)], i) for i, r in enumerate(refs)]
    return preds, refs


def test_rouge_l_matches_rouge_score_on_real_references(test_set):
    preds, refs = test_set
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [100.0 * max(scorer.score(r, p)["rougeL"].fmeasure for r in rs) for p, rs in zip(preds, refs)]
    ours = [M.rouge_l(p, rs) for p, rs in zip(preds, refs)]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)
    assert M.mean_rouge_l(preds, refs) == pytest.approx(float(np.mean(expected)), abs=1e-9)
    # The perturbations really exercise the metric: neither all-0 nor all-100.
    assert 20.0 < float(np.mean(expected)) < 90.0
    assert 0.2 < float(np.mean([0.0 < e < 100.0 for e in expected])) < 0.9
    # Every English-track reference stays on the default tokenizer under the automatic choice.
    assert not any(M.needs_xlingual_tokenizer(rs) for rs in refs)


def test_exact_match_matches_official_formula_on_real_references(test_set):
    preds, refs = test_set
    expected = [100.0 * max(_official_normalize(p) == _official_normalize(r) for r in rs)
                for p, rs in zip(preds, refs)]
    ours = [M.exact_match(p, rs) for p, rs in zip(preds, refs)]
    assert ours == expected
    assert M.mean_exact_match(preds, refs) == pytest.approx(float(np.mean(expected)))
    assert 20.0 < float(np.mean(expected)) < 60.0  # identity and upper-case+"!!" kinds match


def test_xlingual_matches_official_gpt2_tokenizer(real_data_dir):
    transformers = pytest.importorskip("transformers")
    from optiml_jax.tokenizer import gpt2_files_dir

    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        shutil.copy(gpt2_files_dir() / "encoder.json", pathlib.Path(d) / "vocab.json")
        shutil.copy(gpt2_files_dir() / "vocab.bpe", pathlib.Path(d) / "merges.txt")
        hf = transformers.GPT2TokenizerFast.from_pretrained(d)

    class OfficialTokenizer:  # what the official evaluation does with HF's "gpt2" tokenizer
        def tokenize(self, s):
            return [t.lstrip("Ġ") for t in hf.tokenize(s)]

    official = rouge_scorer.RougeScorer(["rougeL"], tokenizer=OfficialTokenizer())
    path = next((real_data_dir / "superni_extra" / "instances_extra").glob("task1239_*.jsonl.gz"))
    with gzip.open(path, "rt", encoding="utf-8") as f:
        outputs = [json.loads(line)["output"] for _, line in zip(range(120), f)]
    refs = [o if isinstance(o, list) else [o] for o in outputs]
    preds = [_perturb(rs[0], i) if i % 7 != 3 else rs[0][: len(rs[0]) // 2] for i, rs in enumerate(refs)]
    preds[1] = "  spaced   out  " + preds[1]  # whitespace-only tokens become "" and are kept
    expected = [100.0 * max(official.score(r, p)["rougeL"].fmeasure for r in rs) for p, rs in zip(preds, refs)]
    ours = [M.rouge_l(p, rs, xlingual=True) for p, rs in zip(preds, refs)]
    np.testing.assert_allclose(ours, expected, atol=1e-9)
    # Japanese references get the cross-lingual tokenizer automatically (a few are digits/Latin only).
    auto = [M.needs_xlingual_tokenizer(rs) for rs in refs]
    assert sum(auto) > 0.9 * len(refs)
    assert [M.rouge_l(p, rs) for p, rs, a in zip(preds, refs, auto) if a] == [o for o, a in zip(ours, auto) if a]
    assert 10.0 < float(np.mean(expected)) < 95.0


def test_rouge_l_hand_checked():
    # LCS("the cat sat on the mat", "the cat is on the mat") = 5 of 6 tokens each way.
    assert M.rouge_l("the cat sat on the mat", ["the cat is on the mat"]) == pytest.approx(500 / 6)
    # P = 2/2, R = 2/4 -> F = 2PR/(P+R) = 2/3.
    assert M.rouge_l("red apple", "a red big apple") == pytest.approx(200 / 3)
    assert M.rouge_l("Running dogs!", ["run dog"]) == pytest.approx(100.0)  # stemmer + punctuation + case
    assert M.rouge_l("x y", ["nothing shared", "x y"]) == 100.0  # max over references
    assert M.rouge_l("x y", ["nothing shared", "x z"]) == pytest.approx(50.0)
    # Empty strings score 0 in rouge_score, even against each other.
    assert M.rouge_l("", ["something"]) == 0.0
    assert M.rouge_l("something", [""]) == 0.0
    assert M.rouge_l("", [""]) == 0.0
    assert M.rouge_l("!!!", ["..."]) == 0.0  # punctuation-only: no tokens
    # The default tokenizer drops non-ASCII letters; the cross-lingual one does not.
    assert M.rouge_l("日本語", ["日本語"], xlingual=False) == 0.0
    assert M.rouge_l("日本語", ["日本語"], xlingual=True) == 100.0
    assert M.rouge_l("日本語", ["日本語"]) == 100.0  # automatic choice
    # Cyrillic is byte-level BPE'd: 16 and 15 tokens, and " столица" shares its 8 tokens with "столица"
    # once the space marker is stripped -> F = 2 * 8 / (16 + 15).
    assert M.rouge_l("Москва столица", ["столица России"]) == pytest.approx(1600 / 31)
    # Default tokenizer: "é" is a separator, so "caf" != "cafe"; "au lait" is the LCS of 3 tokens each.
    assert M.rouge_l("Café au lait", ["cafe au lait"]) == pytest.approx(200 / 3)


def test_exact_match_hand_checked():
    assert M.exact_match("Yes.", ["yes"]) == 100.0
    assert M.exact_match("  YES  ", "yes") == 100.0
    assert M.exact_match("don't", ["dont"]) == 100.0
    assert M.exact_match("no", ["yes", "No!"]) == 100.0  # max over references
    assert M.exact_match("no", ["yes", "maybe"]) == 0.0
    assert M.exact_match("", [""]) == 100.0
    assert M.exact_match("", ["x"]) == 0.0
    # The official SuperNI normalisation keeps articles; the SQuAD variant removes them.
    assert M.exact_match("the answer", ["answer"]) == 0.0
    assert M.exact_match("the answer", ["answer"], remove_articles=True) == 100.0
    assert M.exact_match("The Answer", ["an answer"], remove_articles=True) == 100.0
    assert M.normalize_answer("  Hello,   World!\n") == "hello world"
    # Unicode letters are lower-cased; non-ASCII punctuation is kept (string.punctuation is ASCII only).
    assert M.exact_match("CAFÉ", ["café"]) == 100.0
    assert M.exact_match("はい。", ["はい"]) == 0.0
    assert M.exact_match("ÜBER", ["über"]) == 100.0


def test_accuracy_and_corpus_means():
    assert M.accuracy(["a", "b", "c"], ["a", "b", "d"]) == pytest.approx(200 / 3)
    assert M.accuracy([1, 2], [1, 2]) == 100.0
    assert M.mean_exact_match(["yes", "no"], [["Yes"], ["yes"]]) == 50.0
    assert M.mean_rouge_l(["a b", "c"], [["a b"], "d"]) == 50.0
    assert M.superni_metrics(["yes", "x y"], [["yes"], ["x z"]]) == {"exact_match": 50.0, "rouge_l": 75.0}
    with pytest.raises(ValueError, match="pair up"):
        M.accuracy(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="no predictions"):
        M.mean_rouge_l([], [])
    with pytest.raises(TypeError, match="single str"):
        M.mean_exact_match("abc", ["abc"])


def test_seqio_metric_fns():
    targets = [b"Yes", ["no", "nope"], np.array([b"x y", b"z"])]
    predictions = ["yes", b"nope", "x"]
    assert M.seqio_exact_match(targets, predictions) == {"exact_match": pytest.approx(200 / 3)}
    assert M.seqio_rouge_l(targets, predictions) == {"rouge_l": pytest.approx((100 + 100 + 200 / 3) / 3)}
    assert M.seqio_accuracy(["a", "b"], ["a", "c"]) == {"accuracy": 50.0}
    with pytest.raises(ValueError, match=r"targets\[0\] is empty"):
        M.seqio_rouge_l([[]], ["x"])


def test_input_validation():
    with pytest.raises(ValueError, match="at least one reference"):
        M.rouge_l("x", [])
    with pytest.raises(TypeError, match="prediction must be a str"):
        M.exact_match(None, ["x"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"references\[1\]"):
        M.rouge_l("x", ["a", 3])  # type: ignore[list-item]
