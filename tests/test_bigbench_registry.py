"""BIG-bench as a benchmark of the registry: catalogue rows, the "bigbench" split, prompts, scoring, bad sources.

Reads the first-50 file of the real data dir (the user cache is pointed elsewhere, so a fetched sdist in
~/.cache/optiml_jax does not replace it) and small synthetic archives in the sdist layout.
"""
from __future__ import annotations

import dataclasses
import json
import lzma
import pathlib

import numpy as np
import pytest

from optiml_jax import evaluation
from optiml_jax.tasks import bigbench as bb
from optiml_jax.tasks import catalogue, pipeline, prompts, resolved_splits, sources, splits
from optiml_jax.tasks.schema import LEVELS


def _clear_caches() -> None:
    # Bench and split resolutions are cached per data dir; the BIG-bench source also depends on the user cache.
    pipeline._bench_cached.cache_clear()
    resolved_splits.cache_clear()


@pytest.fixture
def data_dir(real_data_dir, tmp_path, monkeypatch) -> str:
    """The real data dir with an empty user cache: BIG-bench comes from its first-50 file."""
    if not (real_data_dir / "bigbench" / bb.FIRST50_NAME).is_file():
        pytest.skip(f"{real_data_dir}/bigbench/{bb.FIRST50_NAME} missing")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("OPTIML_DATA_DIR", raising=False)
    _clear_caches()
    yield str(real_data_dir)
    _clear_caches()


@pytest.fixture(scope="module")
def first50_rows(real_data_dir) -> dict[str, dict]:
    path = real_data_dir / "bigbench" / bb.FIRST50_NAME
    if not path.is_file():
        pytest.skip(f"{path} missing")
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return {r["task_path"]: r for r in map(json.loads, f)}


def test_bigbench_tasks_join_the_catalogue(data_dir, first50_rows):
    status = catalogue.bigbench_status(data_dir)
    assert status.registered and status.source.endswith(bb.FIRST50_NAME)
    cat = catalogue.load_catalogue(data_dir)
    names = {n for n, i in cat.items() if i.benchmark == "BIG-bench"}
    with_examples = {bb.task_name_for_path(p) for p, r in first50_rows.items() if r.get("examples")}
    assert names == with_examples and status.num_tasks == len(names) > 900
    split_of = catalogue.source_splits(data_dir)
    for n in names:
        info = cat[n]
        assert info.category in catalogue.TAXONOMY and info.split_role == "excluded"
        assert split_of[n] == "eval_only"  # the BIG-bench canary
    # Categories come from tasks/bigbench_keywords.tsv; the one extra category is in the unified taxonomy.
    assert cat["bigbench_analogical_similarity"].category == "Word Analogy"
    assert cat["bigbench_strategyqa"].category == "Logical Reasoning" and "Logical Reasoning" in catalogue.TAXONOMY
    # Example counts: the loader keeps every example of the JSON (minus the counted, malformed ones).
    for path in ("strategyqa", "odd_one_out", "arithmetic/1_digit_addition"):
        info = cat[bb.task_name_for_path(path)]
        exs = sources.load_examples(info, data_dir)
        report = sources.get_load_report(info.name)
        assert len(exs) + report.num_skipped == len(first50_rows[path]["examples"]) == 50
        assert info.num_instances == first50_rows[path]["num_examples_total"]
        assert all(e.candidates for e in exs) == (info.metric == "accuracy")


def test_bigbench_split_three_levels(data_dir):
    resolved = resolved_splits.resolved("bigbench", data_dir)
    cat = catalogue.load_catalogue(data_dir)
    assert resolved.train and all(cat[t].benchmark == "BIG-bench" for t in resolved.train)
    for s in ("validation", "test"):
        for level in LEVELS:
            assert resolved.eval_tasks(s, level), (s, level)
    assert resolved.level_of("bigbench_analogical_similarity", "validation") == "fully_heldout"
    assert resolved.level_of("bigbench_strategyqa", "validation") == "partially_heldout"
    assert resolved.level_of("bigbench_operators", "test") == "partially_heldout"
    held = set(resolved.heldout_categories["validation"]) | set(resolved.heldout_categories["test"])
    assert set(splits.BIGBENCH_VALIDATION_CATEGORIES + splits.BIGBENCH_TEST_CATEGORIES) <= held
    assert not [t for t in resolved.train if cat[t].category in held]
    # BBH was built from these tasks: never trained on, so BBH stays held out after this split's training.
    for t in ("bigbench_date_understanding", "bigbench_logical_deduction.three_objects"):
        assert resolved.roles[t] == "excluded" and resolved.excluded[t] == "listed in exclude_tasks"
    # Other benchmarks are out of scope.
    assert resolved.roles["task1759_gsm"] == "excluded" and resolved.roles["embedded_ni_add"] == "excluded"

    bench = pipeline.get_bench(data_dir, "bigbench")
    assert bench.eval_only_reason("bigbench_strategyqa") is None  # this split waives the canary explicitly
    sup = resolved.eval_tasks("validation", "supervised")[0]
    held_ids = {e.id for e in bench.eval_pool(sup, "validation")}
    assert held_ids and not held_ids & {e.id for e in bench.train_examples(sup)}

    # The paper's split keeps BIG-bench out of training (and out of its evaluation lists).
    optiml = pipeline.get_bench(data_dir, "optiml")
    bigbench = [n for n, i in optiml.catalogue.items() if i.benchmark == "BIG-bench"]
    assert bigbench and {optiml.role(n) for n in bigbench} == {"excluded"}
    assert not set(bigbench) & set(optiml.training_task_names(pipeline.MAX_TRAIN_MIXTURE))
    with pytest.raises(ValueError, match="bigbench_strategyqa.*evaluation-only"):
        optiml.check_no_eval_only_tasks(["bigbench_strategyqa"])


def test_bigbench_prompts_and_training_stream(data_dir):
    from optiml_jax.tasks import mixtures
    from optiml_jax.tokenizer import OPTVocabulary

    bench = pipeline.get_bench(data_dir, "bigbench")
    name = next(n for n in bench.eval_tasks[("validation", "fully_heldout")]
                if bench.info(n).instruction_level == "task" and bench.info(n).metric == "accuracy")
    raw = {e.id: e for e in bench.examples(name)}
    for shots in (0, 2):
        prompted = pipeline.eval_examples(name, split="validation", num_shots=shots, max_examples=3, bench=bench)
        assert len(prompted) == 3
        for p in prompted:
            ex = raw[p.id]
            assert p.source.startswith(ex.definition + prompts.DEFINITION_SEPARATOR)  # task prefix = definition
            assert p.num_shots == shots and p.candidates == tuple(prompts.format_target(c) for c in ex.candidates)
            assert p.references == ex.outputs and ex.input.strip() in p.source

    vocab = OPTVocabulary.default()
    config = mixtures.make_mixture_config(benchmark_proportions={"BIG-bench": 1.0})
    stream = pipeline.TrainInput(vocab=vocab, batch_size=2, seq_len=64, bench=bench, mixture_config=config)
    assert set(stream.task_benchmark.values()) == {"BIG-bench"}
    assert set(stream.task_names) <= set(bench.train_tasks)
    batch = next(stream)
    assert batch["decoder_input_tokens"].shape == (2, 64) and (batch["decoder_task_ids"] >= 0).any()


class _ScriptedPredictor:
    """Generates fixed strings (to check which metric a generative task uses)."""

    def __init__(self, outputs):
        self.outputs = outputs

    def generate(self, prompts_, cfg):
        return [self.outputs[i % len(self.outputs)] for i in range(len(prompts_))]


def test_generative_tasks_use_their_metric(data_dir):
    bench = pipeline.get_bench(data_dir, "bigbench")
    cfg = evaluation.EvalConfig(split="validation", split_definition="bigbench", max_examples=2)
    em = bench.info("bigbench_simple_arithmetic_json")
    rouge = bench.info("bigbench_rephrase")
    assert (em.metric, rouge.metric) == ("exact_match", "rouge_l")
    for info in (em, rouge):
        exs = pipeline.eval_examples(info.name, split="validation", max_examples=2, bench=bench)
        assert not any(e.candidates for e in exs)
        right = evaluation.evaluate_examples(_ScriptedPredictor([exs[0].references[0], exs[1].references[0]]),
                                             info, exs, cfg)[0]
        assert right["score"] == 100.0 and right["num_generated"] == 2
    exs = pipeline.eval_examples(rouge.name, split="validation", max_examples=2, bench=bench)
    first_word = exs[0].references[0].split()[0]
    summary, records = evaluation.evaluate_examples(_ScriptedPredictor([first_word]), rouge, exs[:1], cfg)
    assert 0.0 < records[0]["score"] < 100.0  # Rouge-L gives partial credit where exact match would give 0


def test_multiple_choice_scoring_matches_hf_reference(data_dir, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from hf_reference import load_hf_model, make_tiny_hf_opt

    from optiml_jax import inference
    from optiml_jax.models.convert import import_hf

    hf_dir = make_tiny_hf_opt(tmp_path, "preln", seed=3)
    import_hf(hf_dir, tmp_path / "ckpt")
    predictor = inference.Predictor.from_checkpoint(tmp_path / "ckpt", batch_size=4)
    hf = load_hf_model(hf_dir)
    bench = pipeline.get_bench(data_dir, "bigbench")
    cfg = evaluation.EvalConfig(split="validation", split_definition="bigbench", max_examples=4)
    vocab = predictor.vocab
    checked = 0
    for name in ("bigbench_odd_one_out", "bigbench_strategyqa"):
        info = bench.info(name)
        exs = pipeline.eval_examples(name, split="validation", num_shots=0, max_examples=4, bench=bench)
        summary, records = evaluation.evaluate_examples(predictor, info, exs, cfg)
        assert summary["num_rank_classified"] == len(exs) == 4
        for ex, rec in zip(exs, records):
            cand_ids = [vocab.encode(c) + [vocab.eos_id] for c in ex.candidates]
            prompt = predictor.encode_prompt(ex.source, max(len(c) for c in cand_ids))
            ref = []
            for c in cand_ids:
                ids = torch.tensor([prompt + c])
                with torch.no_grad():
                    lp = torch.log_softmax(hf(ids).logits[0].double(), -1)
                ref.append(sum(float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(c)))
            np.testing.assert_allclose(rec["candidate_scores"], ref, atol=2e-3)
            assert rec["prediction"] == ex.candidates[int(np.argmax(ref))]
            assert rec["score"] == (100.0 if rec["prediction"].strip() in ex.references else 0.0)
            checked += 1
    assert checked == 8


def _archive(path: pathlib.Path, rows: dict[str, dict]) -> pathlib.Path:
    from test_bigbench import _make_archive  # tests/ is on sys.path under pytest

    return _make_archive(path, rows)


@pytest.mark.parametrize("damage", ["truncate", "flip_crc"])
def test_corrupt_archive_is_skipped_with_its_reason(tmp_path, monkeypatch, first50_rows, damage):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("OPTIML_DATA_DIR", raising=False)
    d = tmp_path / "data"
    (d / "bigbench").mkdir(parents=True)
    archive = _archive(d / "bigbench" / bb.ARCHIVE_NAME, first50_rows)
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2] if damage == "truncate" else
                        blob[:-8] + bytes([blob[-8] ^ 0xFF]) + blob[-7:])
    _clear_caches()
    try:
        cat = catalogue.load_catalogue(d)
        assert not [n for n, i in cat.items() if i.benchmark == "BIG-bench"]  # all or nothing
        status = catalogue.bigbench_status(d)
        assert not status.registered and "corrupt or truncated" in status.error and str(archive) in status.error
        assert "fetch bigbench" in status.describe()
        assert sorted(p.name for p in (d / "bigbench").iterdir()) == [bb.ARCHIVE_NAME]  # no index, no cache
        with pytest.raises(splits.SplitError, match="no training tasks.*corrupt or truncated"):
            resolved_splits.resolved("bigbench", d)
        # The rest of the catalogue is unaffected.
        assert "embedded_ni_add" in cat and "task1759_gsm" in cat
    finally:
        _clear_caches()


def test_fetched_archive_is_preferred_and_registered_whole(tmp_path, monkeypatch, first50_rows, real_data_dir):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("OPTIML_DATA_DIR", raising=False)
    d = tmp_path / "data"
    (d / "bigbench").mkdir(parents=True)
    (d / "bigbench" / bb.FIRST50_NAME).symlink_to(real_data_dir / "bigbench" / bb.FIRST50_NAME)
    _clear_caches()
    try:
        assert catalogue.bigbench_status(d).num_tasks > 900
        archive = _archive(d / "bigbench" / bb.ARCHIVE_NAME, first50_rows)
        status = catalogue.bigbench_status(d)
        assert status.source == str(archive) and status.registered
        cat = catalogue.load_catalogue(d)
        assert {n for n, i in cat.items() if i.benchmark == "BIG-bench"} == {
            "bigbench_anachronisms", "bigbench_arithmetic.1_digit_addition",
            "bigbench_abstract_narrative_understanding.4_distractors"}
        info = cat["bigbench_anachronisms"]
        assert [e.input for e in sources.load_examples(info, d)] == [
            e["input"] for e in first50_rows["anachronisms"]["examples"]]
        assert sources.task_path(info, d) == archive
    finally:
        _clear_caches()


def test_missing_source_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("OPTIML_DATA_DIR", raising=False)
    _clear_caches()
    try:
        status = catalogue.bigbench_status(tmp_path)
        assert status.source is None and "fetch bigbench" in status.describe()
        info = dataclasses.replace(catalogue.load_catalogue(tmp_path)["embedded_ni_add"], name="bigbench_x",
                                   benchmark="BIG-bench")
        with pytest.raises(FileNotFoundError, match="no BIG-bench source"):
            sources.load_examples(info, tmp_path)
        with pytest.raises(splits.SplitError, match="no BIG-bench source"):
            resolved_splits.resolved("bigbench", tmp_path)
    finally:
        _clear_caches()
