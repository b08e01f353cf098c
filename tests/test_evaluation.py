"""Held-out evaluation (optiml_jax/evaluation/): aggregation, reports, end-to-end run, resume, errors."""
import dataclasses
import json
import os

import jax
import pytest

from optiml_jax import decoding, evaluation, inference
from optiml_jax.models.configs import get_config
from optiml_jax.models.opt import OPTForCausalLM
from optiml_jax.tokenizer import OPTVocabulary

# A generation task (exact match) and a rank-classification task (accuracy) at two levels.
TASKS = ("embedded_ni_cause_effect", "embedded_ni_analogy_opposites", "embedded_ps_sentiment")
CFG = evaluation.EvalConfig(split="validation", split_definition="embedded", shots=(0, 2), tasks=TASKS,
                            max_examples=3, max_new_tokens=4)


@pytest.fixture(scope="module")
def predictor():
    model = OPTForCausalLM(get_config("tiny"))
    params = model.init_params(jax.random.PRNGKey(0))
    return inference.Predictor(model, params, OPTVocabulary.default(), batch_size=4, name="tiny")


def unit(task, level, category, shots, score, bench="B", n=5):
    # Every example of the unit scores `score` (so intervals are zero-width); None = no example on disk.
    return {"task": task, "level": level, "category": category, "benchmark": bench, "metric": "rouge_l",
            "num_shots": shots, "score": score, "num_examples": 0 if score is None else n,
            "example_scores": [] if score is None else [score] * n}


def test_aggregate_follows_the_paper_and_renders():
    rows = [
        unit("t1", "fully_heldout", "A", 0, 10.0), unit("t1", "fully_heldout", "A", 5, 20.0),
        unit("t2", "fully_heldout", "A", 0, 30.0), unit("t2", "fully_heldout", "A", 5, 40.0),
        unit("t3", "fully_heldout", "B", 0, 90.0), unit("t3", "fully_heldout", "B", 5, 80.0),
        unit("t4", "supervised", "C", 0, 50.0, bench="X"), unit("t4", "supervised", "C", 5, None, bench="X"),
        unit("t5", "supervised", "D", 0, None, bench="X"), unit("t5", "supervised", "D", 5, None, bench="X"),
    ]
    agg = evaluation.aggregate(rows, shots=(0, 5), name="m")
    assert agg["categories"]["fully_heldout"]["A"]["scores"] == {"0": 20.0, "5": 30.0}
    # A level averages its categories (not its tasks): (20 + 90) / 2, not (10 + 30 + 90) / 3.
    assert agg["level_scores"]["fully_heldout"] == {"0": 55.0, "5": 55.0}
    # Missing data is None (n/a), not 0, and averages above it use only the cells with data.
    assert agg["level_scores"]["supervised"] == {"0": 50.0, "5": None}
    assert agg["categories"]["supervised"]["D"] == {
        "tasks": 1, "tasks_with_data": {"0": 0, "5": 0}, "examples": {"0": 0, "5": 0},
        "scores": {"0": None, "5": None}, "ci": {"0": None, "5": None}}
    assert agg["level_stats"]["supervised"]["tasks_with_data"] == {"0": 1, "5": 0}
    assert agg["level_stats"]["supervised"]["categories_with_data"] == {"0": 1, "5": 0}
    assert "partially_heldout" not in agg["level_scores"]
    assert agg["overall"] == {"0": 52.5, "5": 55.0}
    assert agg["combined"] == pytest.approx(53.75)
    assert agg["benchmarks"]["B"]["scores"] == {"0": pytest.approx(130 / 3), "5": pytest.approx(140 / 3)}
    # Constant scores within tasks but different tasks: the category interval spans the task means' range.
    assert agg["categories"]["fully_heldout"]["B"]["ci"]["0"] == [90.0, 90.0]
    lo, hi = agg["categories"]["fully_heldout"]["A"]["ci"]["0"]
    assert 10.0 <= lo < 20.0 < hi <= 30.0
    assert agg["level_stats"]["supervised"]["ci"] == {"0": [50.0, 50.0], "5": None}

    other = evaluation.aggregate([dict(r, score=None if r["score"] is None else r["score"] - 5,
                                       example_scores=[x - 5 for x in r["example_scores"]]) for r in rows],
                                 shots=(0, 5))
    md = evaluation.markdown_report([agg, other], ["m", "base"], title="t")
    assert "| **Fully held-out** |  | 3/3 tasks, 15 ex. | **55.0 [" in md
    assert "| | A |" not in md and "|  | A | 2/2 tasks, 10 ex. | 20.0 [" in md
    assert "|  | D | 0/1 tasks, 0 ex. | n/a | n/a | n/a | n/a |" in md
    # Every table's header names every column, and each row has as many cells as its header.
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            head = lines[i - 1].strip("|").split("|")
            assert all(h.strip() for h in head), lines[i - 1]
            body = [r for r in lines[i + 1:] if r.startswith("|")][:1]
            assert all(len(r.strip("|").split("|")) == len(head) for r in body), (lines[i - 1], body)
    assert "| Benchmark | Found | m: 0-shot |" in md and "| X | 1/2 tasks, 5 ex. | 50.0 [" in md
    c_row = next(line for line in md.splitlines() if "|  | C |" in line)
    assert c_row.endswith("| 50.0 [50.0, 50.0] | n/a | 45.0 [45.0, 45.0] | n/a |")
    gains = evaluation.level_gains(agg, other)
    assert gains["fully_heldout"] == {"0": 5.0, "5": 5.0} and gains["supervised"]["5"] is None
    # The same draws for both: a constant shift has a zero-width paired interval.
    intervals = evaluation.gain_intervals(agg, other)
    assert intervals["fully_heldout"]["0"] == pytest.approx([5.0, 5.0]) and intervals["supervised"]["5"] is None
    text = evaluation.format_gains(gains, "m", "base", intervals=intervals)
    assert "Fully held-out: 0-shot +5.0 [+5.0, +5.0], 5-shot +5.0 [+5.0, +5.0]" in text
    assert "Fully supervised: 0-shot +5.0 [+5.0, +5.0], 5-shot n/a" in text
    # Results of an older run (no per-example scores) still aggregate; they just have no intervals.
    old = evaluation.aggregate([{k: v for k, v in r.items() if k != "example_scores"} for r in rows], shots=(0, 5))
    assert old["overall"] == agg["overall"] and old["overall_ci"] == {"0": None, "5": None}


def test_evaluate_end_to_end_and_resume(predictor, tmp_path, monkeypatch):
    out = tmp_path / "ev"
    agg = evaluation.evaluate(predictor, CFG, out, progress=False)
    assert set(agg["tasks"]) == set(TASKS) and agg["reused_units"] == 0
    assert agg["tasks"]["embedded_ni_cause_effect"]["level"] == "fully_heldout"
    assert agg["tasks"]["embedded_ps_sentiment"]["level"] == "partially_heldout"
    for task in TASKS:
        for k in (0, 2):
            recs = [json.loads(x) for x in (out / "predictions" / f"{task}.{k}shot.jsonl").read_text().splitlines()]
            assert len(recs) == 3 and all(r["num_shots"] == k for r in recs)
            summary = json.loads((out / "tasks" / f"{task}.{k}shot.json").read_text())
            assert summary["score"] == pytest.approx(sum(r["score"] for r in recs) / 3)
            if task == "embedded_ps_sentiment":  # candidates -> rank classification, accuracy
                assert all(r["mode"] == "rank_classification" and r["prediction"] in r["candidates"] for r in recs)
                assert all(len(r["candidate_scores"]) == len(r["candidates"]) for r in recs)
            if task == "embedded_ni_analogy_opposites":
                assert all(r["mode"] == "generation" for r in recs)
    assert json.loads((out / "results.json").read_text())["overall"] == agg["overall"]
    report = (out / "report.md").read_text()
    assert "Fully held-out" in report and "| 0-shot | 2-shot |" in report
    assert (out / "categories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Resume: drop one finished unit; only it is recomputed and the aggregates do not change.
    os.remove(out / "tasks" / "embedded_ps_sentiment.2shot.json")
    calls = []
    real_score, real_generate = predictor.score, predictor.generate
    monkeypatch.setattr(predictor, "score", lambda *a, **k: calls.append("score") or real_score(*a, **k))
    monkeypatch.setattr(predictor, "generate", lambda *a, **k: calls.append("generate") or real_generate(*a, **k))
    again = evaluation.evaluate(predictor, CFG, out, progress=False)
    assert calls == ["score"] and again["reused_units"] == 5
    assert again["overall"] == pytest.approx(agg["overall"])

    # Another model (or other settings) in the same directory is refused rather than mixed in.
    with pytest.raises(ValueError, match="holds results of another evaluation"):
        evaluation.evaluate(predictor.untrained(seed=7), CFG, out, progress=False)


def test_evaluate_models_compares_trained_and_untrained(predictor, tmp_path):
    cfg = evaluation.EvalConfig(split="validation", split_definition="embedded", shots=(0,),
                                tasks=TASKS[:1] + TASKS[2:], max_examples=2, max_new_tokens=2)
    out = evaluation.evaluate_models([predictor, predictor.untrained(seed=1)], ["a", "b"], cfg, tmp_path,
                                     progress=False)
    assert set(out["gains"]) == {"fully_heldout", "partially_heldout", "average"}
    assert os.path.isfile(tmp_path / "a" / "results.json") and os.path.isfile(tmp_path / "b" / "results.json")
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    report = (tmp_path / "report.md").read_text()
    assert "| Level | Category | Found | a: 0-shot | b: 0-shot |" in report and "Per-level gains of a over b" in report


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown evaluation task"):
        evaluation.plan(evaluation.EvalConfig(split_definition="embedded", tasks=("no_such_task",)))
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluation.plan(evaluation.EvalConfig(split_definition="embedded", tasks=TASKS[:1], levels=("supervised",)))
    with pytest.raises(ValueError, match="split must be"):
        evaluation.EvalConfig(split="train")
    with pytest.raises(ValueError, match="unknown level"):
        evaluation.EvalConfig(levels=("heldout",))
    with pytest.raises(ValueError, match="shots"):
        evaluation.EvalConfig(shots=(-1,))
    with pytest.raises(FileNotFoundError, match="no evaluation results"):
        evaluation.load_results(tmp_path)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluation.metric_fn("bleu")


def test_templated_tasks_average_their_templates_and_superni_test_keeps_the_first_instances(real_data_dir,
                                                                                              monkeypatch):
    # PromptSource / FLAN ids are "<template>-<k>": 3 examples of template a (all 100) and 1 of b (0).
    ids, scores = ["tpl_a-1", "tpl_a-2", "tpl_a-3", "tpl_b-9"], [100.0, 100.0, 100.0, 0.0]
    spread = evaluation.template_spread(ids, scores, "PromptSource")
    assert (spread["templates"], spread["mean"], spread["min"], spread["max"], spread["std"]) == (2, 50.0, 0.0,
                                                                                                  100.0, 50.0)
    assert evaluation.template_spread(ids, scores, "SuperNI") is None  # SuperNI ids carry no template
    row = {"task": "ps_x", "level": "supervised", "category": "C", "benchmark": "PromptSource", "metric": "rouge_l",
           "num_shots": 0, "score": 50.0, "num_examples": 4, "example_scores": scores, "example_ids": ids}
    agg = evaluation.aggregate([row], shots=(0,))
    assert agg["tasks"]["ps_x"]["templates"]["0"]["per_template"]["tpl_b"] == {"score": 0.0, "examples": 1}
    # Resampled within templates: each template's mean is constant here, so the interval has zero width.
    assert agg["categories"]["supervised"]["C"]["ci"]["0"] == [50.0, 50.0]

    monkeypatch.setenv("OPTIML_DATA_DIR", str(real_data_dir))
    cfg = evaluation.EvalConfig(split="test", split_definition="optiml", shots=(0,), max_examples=3,
                                tasks=("task020_mctaco_span_based_question",))
    units = evaluation.plan(cfg)
    first = evaluation.render_units(units, cfg)[units[0].key]
    every = evaluation.render_units(units, dataclasses.replace(cfg, max_examples=None))[units[0].key]
    assert len(every) == 100 and [e.id for e in first] == [e.id for e in every[:3]]


def test_units_scored_across_tasks_match_unit_by_unit(predictor, tmp_path):
    # One call over all units (length-sorted batches mixing tasks) gives the same predictions as one per unit.
    together = evaluation.evaluate(predictor, CFG, tmp_path / "a", progress=False)
    alone = evaluation.evaluate(predictor, CFG, tmp_path / "b", progress=False, chunk_examples=1)
    assert together["tasks"] == alone["tasks"]
    for f in (tmp_path / "a" / "predictions").iterdir():
        a = [json.loads(x) for x in f.read_text().splitlines()]
        b = [json.loads(x) for x in (tmp_path / "b" / "predictions" / f.name).read_text().splitlines()]
        assert [r["prediction"] for r in a] == [r["prediction"] for r in b]
        for ra, rb in zip(a, b):
            assert ra.get("candidate_scores") == pytest.approx(rb.get("candidate_scores"), abs=1e-4)


def test_scoring_calls_fit_the_position_table(predictor):
    # A long prompt with short candidates and a short prompt with long candidates never share a call whose
    # longest prompt + longest candidate would pass the position table.
    n = predictor.max_positions
    prompts = [[5] * (n - 2), [5] * (n - 20), [5] * (n - 21)]
    assert [idx for idx, _ in predictor.plan_batches([len(p) for p in prompts], n)] == [[0, 1, 2]]  # one bucket
    assert predictor._fitting_batches(prompts, [2, 12, 3]) == [[0], [1, 2]]
    assert predictor._fitting_batches([[5] * 10, [5] * 9], [2, 8]) == [[0, 1]]


def test_reference_bound_cuts_generation_only_past_every_reference(predictor, tmp_path):
    # "references": each task decodes at most bucket(longest reference + EOS) tokens, over ALL its evaluation
    # instances (not the sampled ones, not per shot); rank classification is untouched, and every bounded
    # generation is the first tokens of the unbounded one (same prompts, same batches' shapes).
    from optiml_jax.tasks import pipeline

    fixed = dataclasses.replace(CFG, max_new_tokens=32, max_examples=3)
    bounded = dataclasses.replace(fixed, generation_limit="references")
    units = evaluation.plan(bounded)
    tasks = [u.task for u in units]
    vocab = predictor.vocab
    assert evaluation.generation_limits(fixed, tasks, vocab) == {t.name: 32 for t in tasks}
    limits = evaluation.generation_limits(bounded, tasks, vocab)
    assert limits == evaluation.generation_limits(dataclasses.replace(bounded, max_examples=1), tasks, vocab)
    bench = pipeline.get_bench(None, "embedded")
    for t in tasks:
        refs = [o.strip() for ex in bench.eval_pool(t.name, "validation") if not ex.candidates for o in ex.outputs]
        if refs:
            longest = max(len(vocab.encode(r)) for r in refs)
            assert longest + 1 <= limits[t.name] < 32  # the embedded answers are short
        else:
            assert limits[t.name] == 32
    assert fixed.unit_settings() != bounded.unit_settings()
    assert "generation_limit" not in fixed.unit_settings()  # run dirs from before the option still resume

    a = evaluation.evaluate(predictor, fixed, tmp_path / "fixed", progress=False)
    b = evaluation.evaluate(predictor, bounded, tmp_path / "bounded", progress=False)
    cut = 0
    for f in (tmp_path / "fixed" / "predictions").iterdir():
        ra = [json.loads(x) for x in f.read_text().splitlines()]
        rb = [json.loads(x) for x in (tmp_path / "bounded" / "predictions" / f.name).read_text().splitlines()]
        task = ra[0]["task"]
        for x, y in zip(ra, rb):
            if x["mode"] == "rank_classification":
                assert x["prediction"] == y["prediction"]
                assert x["candidate_scores"] == pytest.approx(y["candidate_scores"], abs=1e-4)
                continue
            # Text, not re-encoded tokens (decoding a random model's tokens does not round-trip); a cut inside a
            # multi-byte character decodes to U+FFFD.
            assert x["prediction"].startswith(y["prediction"].rstrip("\ufffd"))
            cut += len(y["prediction"]) < len(x["prediction"])
        summary = json.loads((tmp_path / "bounded" / "tasks" / f.name.replace(".jsonl", ".json")).read_text())
        assert summary["max_new_tokens"] == limits[task]
    assert cut > 0  # a random model runs on: the bound did cut something
    # Token level, on the predictor: a bounded prompt gets exactly the first `limit` tokens.
    prompts = ["Question: what is the opposite of hot?\nAnswer:", "Say something."]
    dcfg = decoding.DecodeConfig(max_new_tokens=32)
    full = predictor.generate_ids(prompts, dcfg)
    short = predictor.generate_ids(prompts, dcfg, limits=[16, 32])
    assert short[0] == full[0][:16] and short[1] == full[1]
    assert set(a["tasks"]) == set(b["tasks"])
    with pytest.raises(ValueError, match="generation_limit"):
        evaluation.EvalConfig(generation_limit="longest")
