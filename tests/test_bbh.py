"""BIG-Bench Hard with the paper's protocol (Table 14): prompts, answer extraction, the eval CLI end to end."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from optiml_jax import eval as eval_cli
from optiml_jax import evaluation
from optiml_jax.tasks import pipeline, prompts

RUN = "--gin.optiml_jax.eval.run_eval"


@pytest.fixture(scope="module")
def data_dir(real_data_dir) -> str:
    if not (real_data_dir / "bbh" / "bbh").is_dir():
        pytest.skip(f"{real_data_dir} has no bbh/")
    return str(real_data_dir)


@pytest.fixture(autouse=True)
def _clean_gin():
    import gin

    yield
    gin.clear_config()  # in-process CLI calls leave a locked config behind


@pytest.mark.parametrize("task", ["bbh_date_understanding", "bbh_dyck_languages", "bbh_word_sorting"])
def test_prompts_reproduce_the_official_bbh_prompts(data_dir, task):
    bench = pipeline.get_bench(data_dir)
    body = (bench.data_dir and open(os.path.join(data_dir, "bbh", "cot-prompts", task[4:] + ".txt")).read())
    body = body.split("-----", 1)[1].strip()
    demos = bench.demonstrations(task)
    assert len(demos) == 3
    raw = {e.id: e for e in bench.examples(task)}
    cot = pipeline.bbh_examples(task, mode="cot", max_examples=2, data_dir=data_dir)
    direct = pipeline.bbh_examples(task, mode="answer_only", max_examples=2, data_dir=data_dir)
    assert [p.id for p in cot] == [p.id for p in direct] and len(cot) == 2
    for c, a in zip(cot, direct):
        ex = raw[c.id]
        # The CoT prompt is BBH's own prompt file followed by the test question.
        assert c.source == f"{body}\n\nQ: {ex.input.strip()}\nA: {prompts.BBH_COT_TRIGGER}"
        # Answer-only: the same description and questions, each demonstration answered by its answer alone.
        expected = [demos[0].definition] + [f"Q: {d.input}\nA: {d.outputs[0]}" for d in demos]
        assert a.source == "\n\n".join(expected + [f"Q: {ex.input.strip()}\nA:"])
        assert prompts.BBH_COT_TRIGGER not in a.source
        assert c.references == a.references == ex.outputs and c.num_shots == a.num_shots == 3 and not c.candidates


@pytest.mark.parametrize("generation, mode, answer", [
    (" Let's see. A is True. So the answer is False.", "cot", "False"),
    (" Step 1 ... the answer is (B). Then the answer is (C).\n\nQ: next question", "cot", "(C)"),
    (" The Answer Is   valid .\nmore text", "cot", "valid"),
    (" ... So the answer is ] ) }.", "cot", "] ) }"),
    (" I cannot decide.", "cot", None),
    (" So the answer is\nQ: what? So the answer is Yes.", "cot", ""),  # the answer after a new question is not ours
    (" (A)\n\nQ: Which date ...\nA: (B)", "answer_only", "(A)"),
    ("  apple banana cherry.", "answer_only", "apple banana cherry"),
    ("", "answer_only", ""),
])
def test_answer_extraction(generation, mode, answer):
    assert prompts.bbh_extract_answer(generation, mode=mode) == answer


@pytest.mark.parametrize("answer, refs, score", [
    ("False", ["False"], 100.0), ("false", ["False"], 100.0), ("(B)", ["(B)"], 100.0),
    ("(B) 12/25/1937", ["(B)"], 100.0), ("(C) 12/25/1937", ["(B)"], 0.0), ("B", ["(B)"], 0.0),
    ("] ) }", ["] ) }"], 100.0), ("] )", ["] ) }"], 0.0), ("", ["] ) }"], 0.0),  # punctuation is kept
    ("apple  banana", ["apple banana"], 100.0), (None, ["True"], 0.0), ("24", ["24"], 100.0), ("2", ["24"], 0.0),
])
def test_exact_match(answer, refs, score):
    assert prompts.bbh_exact_match(answer, refs) == score


def test_bbh_eval_cli_end_to_end_with_a_converted_hf_model(data_dir, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from hf_reference import load_hf_model, make_tiny_hf_opt

    from optiml_jax import decoding, inference
    from optiml_jax.models.convert import import_hf

    hf_dir = make_tiny_hf_opt(tmp_path, "preln", seed=5)
    import_hf(hf_dir, tmp_path / "model" / "final")
    out = tmp_path / "bbh"
    args = ["--gin_file=gin/eval/bbh.gin", f"--gin.CHECKPOINT='{tmp_path / 'model'}'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
            f"{RUN}.tasks=('date_understanding', 'bbh_dyck_languages')", f"{RUN}.max_examples=2",
            f"{RUN}.max_new_tokens=6", f"{RUN}.answer_only_max_new_tokens=4", f"{RUN}.batch_size=4",
            f"{RUN}.data_dir='{data_dir}'", f"{RUN}.progress=False",
            f"{RUN}.param_dtype='float32'"]  # f32 serving: greedy tokens are compared with HF's f32 model
    assert eval_cli.main(args) == 0
    stdout = capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert str(out / "report.md") in stdout and report in stdout
    assert "| Task | Examples | 3-shot | 3-shot CoT |" in report
    for short in ("date_understanding", "dyck_languages"):
        assert f"| {short} | 2 |" in report
    assert "| **Average (2 tasks)** |" in report

    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels"] == ["model"] and summary["modes"] == ["answer_only", "cot"]
    result = json.loads((out / "model" / "bbh_results.json").read_text())
    assert result == summary["results"]["model"]
    assert set(result["tasks"]) == {"bbh_date_understanding", "bbh_dyck_languages"}
    hf = load_hf_model(hf_dir)
    predictor = inference.Predictor.from_checkpoint(tmp_path / "model")
    for task, t in result["tasks"].items():
        for mode in ("answer_only", "cot"):
            recs = [json.loads(x) for x in (out / "model" / "predictions" / f"{task}.{mode}.jsonl").read_text().splitlines()]
            assert len(recs) == t["num_examples"][mode] == 2
            # The unit's score is the exact match of the answers extracted from the generations.
            for r in recs:
                assert r["answer"] == prompts.bbh_extract_answer(r["generation"], mode=mode)
                assert r["score"] == prompts.bbh_exact_match(r["answer"], r["references"])
            assert t["scores"][mode] == pytest.approx(sum(r["score"] for r in recs) / 2)
            # Greedy generation equals the HF model's on the same (left-truncated) prompt.
            new = 6 if mode == "cot" else 4
            ids = predictor.encode_prompt(recs[0]["prompt"], new)
            with torch.no_grad():
                gen = hf.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False,
                                  eos_token_id=predictor.vocab.eos_id, pad_token_id=predictor.vocab.pad_id)
            ref = decoding.strip_generated(gen[0, len(ids):].tolist(), eos_id=predictor.vocab.eos_id,
                                           pad_id=predictor.vocab.pad_id)
            assert recs[0]["generation"] == predictor.vocab.decode(ref)
    assert result["average"]["cot"] == pytest.approx(
        sum(t["scores"]["cot"] for t in result["tasks"].values()) / 2)

    # A second run reuses every finished unit.
    assert eval_cli.main(args) == 0
    again = json.loads((out / "model" / "bbh_results.json").read_text())
    assert again["reused_units"] == 4 and again["tasks"] == result["tasks"]


def test_bbh_errors(data_dir, tmp_path, capsys):
    args = ["--gin_file=gin/eval/bbh.gin", f"--gin.EVAL_OUTPUT_DIR='{tmp_path}'", f"{RUN}.progress=False"]
    assert eval_cli.main(args) == 2
    assert "no checkpoint to evaluate" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown BBH task 'no_such_task'"):
        evaluation.plan_bbh(evaluation.BBHConfig(tasks=("no_such_task",), data_dir=data_dir))
    with pytest.raises(ValueError, match="BBHConfig.modes"):
        evaluation.BBHConfig(modes=("cot", "zero_shot"))
    with pytest.raises(ValueError, match="max_new_tokens"):
        evaluation.BBHConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="not a BBH task"):
        pipeline.bbh_examples("task1759_gsm", mode="cot", data_dir=data_dir)
    with pytest.raises(ValueError, match="BBH mode"):
        pipeline.bbh_examples("bbh_navigate", mode="two_shot", data_dir=data_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="bbh/bbh/navigate.json"):
        pipeline.bbh_examples("bbh_navigate", mode="cot", data_dir=str(empty))


def test_bbh_evaluation_mixture_is_registered(data_dir):
    seqio = pytest.importorskip("seqio")
    from optiml_jax.tasks import registry
    from optiml_jax.tokenizer import OPTVocabulary

    full = pipeline.get_bench(data_dir, "bigbench")
    keep = {"bbh_navigate", "bbh_word_sorting", "bbh_causal_judgement", "bigbench_strategyqa",
            "bigbench_simple_arithmetic_json", "bigbench_odd_one_out", "bigbench_unit_conversion.si_conversion"}
    import dataclasses

    bench = dataclasses.replace(
        full, catalogue={n: full.catalogue[n] for n in keep},
        train_tasks=tuple(t for t in full.train_tasks if t in keep),
        eval_tasks={k: tuple(t for t in v if t in keep) for k, v in full.eval_tasks.items()},
        _examples={}, _train={})
    vocab = OPTVocabulary.default()
    try:
        names = registry.register_all(vocab=vocab, bench=bench, seq_len=64, force=True)
        # BIG-bench tasks are ordinary registry tasks; BBH gets its two 3-shot modes and three mixtures.
        assert registry.seqio_name("bigbench_strategyqa", 0) in names
        assert "optiml.bigbench_strategyqa" in names
        mix = seqio.get_mixture_or_task("optiml_bbh_3shot_cot")
        assert {t.name for t in mix.tasks} == {registry.bbh_seqio_name(n, "cot") for n in
                                               ("bbh_navigate", "bbh_word_sorting", "bbh_causal_judgement")}
        assert len(seqio.get_mixture_or_task("optiml_bbh").tasks) == 6
        task = seqio.get_mixture_or_task(registry.bbh_seqio_name("bbh_navigate", "answer_only"))
        first = next(task.source.get_dataset(split="test", shuffle=False).as_numpy_iterator())
        expected = pipeline.bbh_examples("bbh_navigate", mode="answer_only", bench=bench)[0]
        assert first["inputs"].decode() == expected.source and first["targets"].decode() == expected.target
        post = task.postprocess_fn
        assert post(b" Yes\n\nQ: more", is_target=False) == "Yes" and post(b" Yes", is_target=True) == "Yes"
        assert registry.bbh_exact_match_metric(["Yes", "No"], ["yes", ""]) == {"exact_match": 50.0}
    finally:
        registry.unregister_all()


def test_bbh_is_a_protocol_of_the_one_runner(tmp_path):
    # BBH runs through the same runner as the held-out protocol: units of several tasks share a chunk, each mode
    # gets one generation call with its own limit (which also decides how far prompts are cut), the answers map
    # back to their units, and a second run reuses every unit file.
    from optiml_jax.tasks.schema import PromptedExample

    cfg = evaluation.BBHConfig(max_new_tokens=7, answer_only_max_new_tokens=3)
    assert isinstance(evaluation.protocol_for(cfg), evaluation.BBH)
    assert isinstance(evaluation.protocol_for(evaluation.EvalConfig()), evaluation.HeldOut)
    with pytest.raises(TypeError, match="not an evaluation config"):
        evaluation.protocol_for({"modes": ["cot"]})
    units = [evaluation.BBHUnit(t, m) for t in ("bbh_a", "bbh_b") for m in ("answer_only", "cot")]
    examples = {u.key: [PromptedExample(task=u.task, id=f"{u.task}-{i}", source=f"{u.task} {u.mode} {i}",
                                        target="(A)", references=("(A)",), num_shots=3) for i in range(2)]
                for u in units}
    examples[units[3].key] = []  # a unit without items is n/a, not 0

    class Scripted:
        name, params, calls = "scripted", {"w": np.zeros(2)}, []

        def generate(self, prompts, dcfg, limits=None):
            self.calls.append((dcfg.max_new_tokens, limits, list(prompts)))
            # answer_only prompts are answered right, CoT ones wrong but with an answer.
            return ["(A)" if " answer_only " in p else "so the answer is (B)." for p in prompts]

    predictor = Scripted()
    agg = evaluation.evaluate(predictor, cfg, tmp_path, units=units, examples=examples, progress=False)
    assert [(n, lim, len(p)) for n, lim, p in predictor.calls] == [(3, None, 4), (7, None, 2)]
    assert agg["tasks"]["bbh_a"]["scores"] == {"answer_only": 100.0, "cot": 0.0}
    assert agg["tasks"]["bbh_b"]["scores"] == {"answer_only": 100.0, "cot": None}
    assert agg["average"] == {"answer_only": 100.0, "cot": 0.0} and agg["reused_units"] == 0
    recs = [json.loads(x) for x in (tmp_path / "predictions" / "bbh_a.cot.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in recs] == ["(B)", "(B)"] and all(r["prompt"].startswith("bbh_a cot") for r in recs)
    summary = json.loads((tmp_path / "tasks" / "bbh_b.answer_only.json").read_text())
    assert list(summary) == ["task", "mode", "score", "num_examples", "num_answered", "seconds"]
    assert (tmp_path / "bbh_results.json").exists()
    assert "| a | 2 | 100.0 | 0.0 |" in (tmp_path / "bbh_report.md").read_text()
    again = evaluation.evaluate(predictor, cfg, tmp_path, units=units, examples=examples, progress=False)
    assert again["reused_units"] == 4 and len(predictor.calls) == 2
