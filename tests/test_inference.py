"""Rank classification (optiml_jax/inference.py), the Predictor and the infer CLI, against HF PyTorch OPT."""
import json

import numpy as np
import pytest

from optiml_jax import decoding, infer, inference
from optiml_jax.models.convert import import_hf
from optiml_jax.models.hf_io import load_hf_checkpoint
from optiml_jax.models.opt import OPTForCausalLM

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from hf_reference import gpt2_tokenize, make_tiny_hf_opt, real_texts  # noqa: E402

PAD, EOS = 1, 2


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_tiny_hf_opt(tmp_path_factory.mktemp("inf"), "postln_proj", seed=1)


@pytest.fixture(scope="module")
def ckpt(hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "ours"
    import_hf(hf_dir, out)
    return out


@pytest.fixture(scope="module")
def hf_model(hf_dir):
    from transformers import OPTForCausalLM as HF

    return HF.from_pretrained(hf_dir).eval()


def hf_candidate_logprobs(hf, prompt, cand):
    ids = torch.tensor([list(prompt) + list(cand)])
    with torch.no_grad():
        lp = torch.log_softmax(hf(ids).logits[0].double(), -1)
    return np.array([float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(cand)])


def test_candidate_logprobs_equal_hf(hf_dir, hf_model, real_data_dir, tmp_path):
    config, params = load_hf_checkpoint(hf_dir)
    model = OPTForCausalLM(config)
    texts = real_texts(real_data_dir, n=3)
    ids = gpt2_tokenize(texts + ["yes", "no", "it is not possible to tell", "maybe"], tmp_path, max_tokens=30)
    prompts = [[2] + ids[0][:25], [2] + ids[1][:6], [2] + ids[2][:14]]
    answers = [i + [EOS] for i in ids[3:]]
    cands = [answers[:2], answers[1:4], [answers[2]]]  # ragged candidate sets
    for method in ("cache", "full"):
        got = inference.candidate_logprobs(model, params, prompts, cands, pad_id=PAD, method=method)
        for p, cs, per in zip(prompts, cands, got):
            assert len(per) == len(cs)
            for c, lp in zip(cs, per):
                np.testing.assert_allclose(lp, hf_candidate_logprobs(hf_model, p, c), atol=1e-4)
    with pytest.raises(ValueError, match="empty candidate"):
        inference.candidate_logprobs(model, params, prompts[:1], [[[]]], pad_id=PAD)
    with pytest.raises(ValueError, match="method"):
        inference.candidate_logprobs(model, params, prompts[:1], [[[5]]], pad_id=PAD, method="packed")


def test_predictor_scores_and_classifies_like_hf(ckpt, hf_model):
    pred = inference.Predictor.from_checkpoint(ckpt, batch_size=2)
    vocab = pred.vocab
    prompts = ["Is the sky blue? Answer:", "Premise: a dog runs. Hypothesis: an animal moves. Entailment?",
               "2 + 2 ="]
    cands = [["yes", "no"], ["yes", "no", "maybe"], [" 4", " five"]]
    sums = pred.score(prompts, cands)
    means = pred.score(prompts, cands, normalize=True)
    for p, cs, s, m in zip(prompts, cands, sums, means):
        p_ids = [vocab.bos_id] + vocab.encode(p)
        for c, got_sum, got_mean in zip(cs, s, m):
            c_ids = vocab.encode(c) + [vocab.eos_id]
            ref = hf_candidate_logprobs(hf_model, p_ids, c_ids)
            assert got_sum == pytest.approx(ref.sum(), abs=1e-4)
            assert got_mean == pytest.approx(ref.mean(), abs=1e-4)
    assert pred.classify(prompts, cands) == [int(np.argmax(s)) for s in sums]
    full = pred.score(prompts, cands, method="full")
    np.testing.assert_allclose(np.concatenate(full), np.concatenate(sums), atol=1e-4)
    with pytest.raises(ValueError, match="non-empty list"):
        pred.score(["x"], [[]])


def test_predictor_generate_and_truncation(ckpt, hf_model):
    pred = inference.Predictor.from_checkpoint(ckpt, batch_size=2)
    cfg = decoding.DecodeConfig(max_new_tokens=6)
    prompts = ["Write a word:", "Count: one two", "x " * 300]  # the last one overflows 128 positions
    ids = pred.generate_ids(prompts, cfg)
    assert pred.truncated_prompts == 1
    for p, got in zip(prompts, ids):
        p_ids = pred.encode_prompt(p, cfg.max_new_tokens)
        assert len(p_ids) <= pred.max_positions - cfg.max_new_tokens
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([p_ids]), max_new_tokens=6, do_sample=False,
                                    eos_token_id=pred.vocab.eos_id, pad_token_id=PAD)
        ref = decoding.strip_generated(out[0, len(p_ids):].tolist(), eos_id=pred.vocab.eos_id, pad_id=PAD)
        assert got == ref
    assert pred.generate(prompts[:1], cfg) == [pred.vocab.decode(ids[0])]
    with pytest.raises(TypeError, match="list of prompts"):
        pred.generate("one string", cfg)


def test_resolve_checkpoint(ckpt, tmp_path):
    assert inference.resolve_checkpoint(ckpt) == str(ckpt)
    run = tmp_path / "run"
    (run / "checkpoints" / "step_10" / "params").mkdir(parents=True)
    (run / "checkpoints" / "step_10" / "config.json").write_text("{}")
    (run / "final" / "params").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    assert inference.resolve_checkpoint(run) == str(run / "final")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inference.resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        inference.resolve_checkpoint(tmp_path / "empty")


def test_infer_cli(ckpt, tmp_path, capsys):
    assert infer.main(["--checkpoint", str(ckpt), "--prompt", "Is it raining? Answer:",
                       "--candidates", "yes", "no"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["prediction"] in ("yes", "no") and len(line["scores"]) == 2

    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "Say hi:"}) + "\n" + json.dumps({"prompt": "A or B?", "candidates": ["A", "B"]}) + "\n")
    out = tmp_path / "out.jsonl"
    assert infer.main(["--checkpoint", str(ckpt), "--prompts_file", str(f), "--max_new_tokens", "4",
                       "--output", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert isinstance(rows[0]["prediction"], str) and rows[1]["prediction"] in ("A", "B")

    assert infer.main(["--checkpoint", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 3}\n')
    assert infer.main(["--checkpoint", str(ckpt), "--prompts_file", str(bad)]) == 2
    assert "line 1" in capsys.readouterr().err
