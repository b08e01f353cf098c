"""Scoring conventions (optiml_jax/candidates.py): the token splits of each convention, acc / acc_norm, and
per-choice log-likelihoods of the lm-eval-compatible mode against the harness's rule computed with HF PyTorch."""
import numpy as np
import pytest

from optiml_jax import candidates as C

# (context, continuation) -> expected (context ids, continuation ids) under each convention, GPT-2 ids
# (BOS = EOS = <|endoftext|> 50256). lm_eval: lm-evaluation-harness's TemplateLM._encode_pair with the
# tokenizer's BOS -- trailing context whitespace moves into the continuation, continuation = whole[len(ctx):].
SPLITS = [
    ("Question: Is the sky blue?\nAnswer:", " yes",
     {"optiml": ([50256, 24361, 25, 1148, 262, 6766, 4171, 30, 198, 33706, 25], [3763, 50256]),
      "lm_eval": ([50256, 24361, 25, 1148, 262, 6766, 4171, 30, 198, 33706, 25], [3763])}),
    # One trailing space: "Answer: " + "no" is scored as "Answer:" + " no" (" no" = 645; "no" alone = 3919).
    ("Is it raining? Answer: ", "no",
     {"optiml": ([50256, 3792, 340, 43079, 30, 23998, 25, 220], [3919, 50256]),
      "lm_eval": ([50256, 3792, 340, 43079, 30, 23998, 25], [645])}),
    # A trailing newline joins the continuation ("\n" = 198).
    ("2 + 2 =\n", "4",
     {"optiml": ([50256, 17, 1343, 362, 796, 198], [19, 50256]),
      "lm_eval": ([50256, 17, 1343, 362, 796], [198, 19])}),
    # Two trailing spaces: the whole-string encoding gives " " + " positive" (220, 3967).
    ("Review: great film.\nSentiment:  ", "positive",
     {"optiml": ([50256, 14832, 25, 1049, 2646, 13, 198, 31837, 3681, 25, 220, 220], [24561, 50256]),
      "lm_eval": ([50256, 14832, 25, 1049, 2646, 13, 198, 31837, 3681, 25], [220, 3967])}),
    # Empty context: the BOS alone.
    ("", " Hello world", {"optiml": ([50256], [18435, 995, 50256]), "lm_eval": ([50256], [18435, 995])}),
]


@pytest.fixture(scope="module")
def vocab():
    from optiml_jax.tokenizer import OPTVocabulary

    return OPTVocabulary.default()


@pytest.mark.parametrize("context,continuation,expected", SPLITS)
def test_token_splits_of_both_conventions(vocab, context, continuation, expected):
    for convention in C.CONVENTIONS:
        got = C.encode_pair(vocab, context, continuation, convention)
        assert (list(got[0]), list(got[1])) == expected[convention], convention


def test_encode_choices_shares_the_context_and_validates():
    class Chars:   # one id per character: makes the rule visible
        bos_id, eos_id = 0, 1

        def encode(self, s):
            return [ord(ch) for ch in s]

    ctx, conts = C.encode_choices(Chars(), "Q? A: ", ["yes", "no"], "lm_eval")
    assert ctx == [0] + [ord(ch) for ch in "Q? A:"] and conts == [[32] + [ord(ch) for ch in "yes"], [32, 110, 111]]
    with pytest.raises(ValueError, match="convention"):
        C.encode_pair(Chars(), "a", "b", "harness")
    with pytest.raises(ValueError, match="no choices"):
        C.encode_choices(Chars(), "a", [], "optiml")


def test_acc_and_acc_norm_pick_by_sum_and_by_characters():
    # Summed: " a" wins; per character of the choice ("a": 1, "bbbbbb": 6): -2/1 < -3/6, so "bbbbbb" wins.
    assert C.choose([-2.0, -3.0], [" a", " bbbbbb"]) == {"acc": 0, "acc_norm": 1}
    assert C.choose([-2.0, -30.0], [" a", " bbbbbb"]) == {"acc": 0, "acc_norm": 0}
    assert C.choice_text(" yes") == "yes" and C.choice_text("yes") == "yes"
    with pytest.raises(ValueError, match="log-likelihoods"):
        C.choose([-1.0], [" a", " b"])


def test_lm_eval_mode_loglikelihoods_equal_the_harness_rule(tmp_path):
    """Predictor.score(convention="lm_eval") gives, per choice, the harness's number: the sum over the
    continuation ids of log p(token | everything before) in one forward pass over context + continuation
    (HF PyTorch, the harness's `_loglikelihood_tokens`), with the token splits pinned above."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from hf_reference import make_tiny_hf_opt
    from transformers import OPTForCausalLM as HF

    from optiml_jax import inference
    from optiml_jax.models.convert import import_hf

    hf_dir = make_tiny_hf_opt(tmp_path, "preln", seed=3)
    import_hf(hf_dir, tmp_path / "ours")
    pred = inference.Predictor.from_checkpoint(tmp_path / "ours", batch_size=2)
    assert (pred.vocab.bos_id, pred.vocab.eos_id) == (50256, 50256)
    hf = HF.from_pretrained(hf_dir).eval()

    def harness_ll(ctx, cont):
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            lp = torch.log_softmax(hf(ids).logits[0].double(), -1)
        return float(sum(lp[len(ctx) - 1 + j, t] for j, t in enumerate(cont)))

    prompts = [ctx for ctx, _, _ in SPLITS[:4]]
    # Each prompt scored against its own continuation and one more, so several choices share one context.
    choices = [[cont, " maybe"] for _, cont, _ in SPLITS[:4]]
    for convention in C.CONVENTIONS:
        for method in ("cache", "full"):
            got = pred.score(prompts, choices, convention=convention, method=method)
            for (ctx, cont, expected), cands, scores in zip(SPLITS, choices, got):
                want = [harness_ll(*expected[convention])]
                c_ids, m_ids = C.encode_pair(pred.vocab, ctx, " maybe", convention)
                want.append(harness_ll(list(c_ids), list(m_ids)))
                np.testing.assert_allclose(scores, want, atol=2e-4, err_msg=f"{convention}/{method}: {ctx!r}")
    # The conventions differ where the harness moves whitespace or drops the EOS.
    a = pred.score(prompts[1:2], choices[1:2], convention="optiml")[0][0]
    b = pred.score(prompts[1:2], choices[1:2], convention="lm_eval")[0][0]
    assert abs(a - b) > 1e-3


def test_evaluate_examples_reports_acc_norm_in_lm_eval_mode():
    from optiml_jax import evaluation
    from optiml_jax.tasks.schema import PromptedExample, TaskInfo

    seen = {}

    class Scorer:   # fixed log-likelihoods: " a" wins by sum, " bbbbbb" per character
        def score(self, prompts, candidates, *, normalize, convention):
            seen["convention"] = convention
            return [[-2.0, -3.0] for _ in prompts]

    task = TaskInfo("t", "SuperNI", "Misc.", metric="exact_match", options=("a", "bbbbbb"))
    exs = [PromptedExample("t", str(i), "Q: x\nA:", " bbbbbb", references=("bbbbbb",), candidates=(" a", " bbbbbb"))
           for i in range(3)]
    summary, records = evaluation.evaluate_examples(Scorer(), task, exs, evaluation.EvalConfig(scoring="lm_eval"))
    assert seen["convention"] == "lm_eval"
    assert summary["score"] == 0.0 and summary["acc_norm"] == 100.0
    assert [r["acc_norm"] for r in records] == [100.0] * 3
    summary, _ = evaluation.evaluate_examples(Scorer(), task, exs, evaluation.EvalConfig())
    assert seen["convention"] == "optiml" and "acc_norm" not in summary
    with pytest.raises(ValueError, match="convention"):
        evaluation.EvalConfig(scoring="harness")
