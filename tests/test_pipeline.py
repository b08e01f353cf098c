"""TrainInput (packing, determinism, state/restore, sharding), evaluation helpers; synthetic and real data."""
import os

import numpy as np
import pytest

os.environ.setdefault("OPTIML_SKIP_REGISTRATION", "1")  # these tests build their own Bench

from optiml_jax import feature_converters as fc  # noqa: E402
from optiml_jax.tasks import mixtures as mx  # noqa: E402
from optiml_jax.tasks import pipeline  # noqa: E402
from optiml_jax.tasks.schema import Example, TaskInfo  # noqa: E402


@pytest.fixture(scope="module")
def vocab():
    from optiml_jax.tokenizer import OPTVocabulary

    return OPTVocabulary.default()


def synthetic_bench(excluded=frozenset()):
    """Two 'benchmarks', a held-out category, supervised instances; deterministic examples."""
    cats = ["Sorting", "Arithmetic", "Sentiment Analysis", "Word Analogy", "Question Answering"]
    catalogue, data = {}, {}
    for b, bench in enumerate(("SuperNI", "PromptSource")):
        for i in range(6):
            name = f"{bench.lower()}_{i}"
            cat = cats[(i + b) % len(cats)] if i < 5 else "Question Answering"
            level = "task" if bench == "SuperNI" else "instance"
            catalogue[name] = TaskInfo(name, bench, cat, instruction_level=level, num_instances=[20, 500, 9000][i % 3])
            data[name] = [Example(id=f"{name}-{j}", input=f"{name} input number {j} " + "word " * (j % 7),
                                  outputs=(f"out {j}",), definition=f"Definition of {name}." if level == "task" else "")
                          for j in range(30)]
    catalogue["cot_0"] = TaskInfo("cot_0", "Reasoning", "Reasoning", num_instances=7000)
    data["cot_0"] = [Example(id=f"c{j}", input=f"q {j}", outputs=(str(j),), rationale=f"because {j}") for j in range(30)]
    # Word Analogy is held out: its tasks are fully held-out evaluation tasks, never trained.
    heldout = tuple(n for n, t in catalogue.items() if t.category == "Word Analogy")
    train = tuple(n for n in catalogue if n not in heldout and n != "promptsource_5")
    eval_tasks = {("validation", "fully_heldout"): heldout, ("validation", "partially_heldout"): ("promptsource_5",),
                  ("validation", "supervised"): ("superni_0",), ("test", "fully_heldout"): (),
                  ("test", "partially_heldout"): (), ("test", "supervised"): ()}
    return pipeline.Bench(
        split_name="synthetic", data_dir=None, catalogue=catalogue, train_tasks=train, eval_tasks=eval_tasks,
        load=lambda info: data[info.name],
        is_heldout=lambda task, ex_id: task == "superni_0" and int(ex_id.rsplit("-", 1)[1]) % 5 == 0,
        excluded=frozenset(excluded))


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_train_input_batches_shape_and_invariants(vocab):
    ti = pipeline.TrainInput(vocab=vocab, batch_size=4, seq_len=96, seed=3, bench=synthetic_bench())
    assert "superni_3" not in ti.task_names and "promptsource_2" not in ti.task_names  # Word Analogy: held out
    assert "promptsource_5" not in ti.task_names  # partially held-out eval task
    for batch in _take(ti, 3):
        assert set(batch) == set(fc.BATCH_KEYS) | {fc.TASK_ID_KEY}
        for k, v in batch.items():
            assert v.shape == (4, 96), k
        seg, tid = batch["decoder_segment_ids"], batch[fc.TASK_ID_KEY]
        assert ((seg == 0) == (tid == -1)).all()
        assert (batch["decoder_loss_weights"][seg == 0] == 0).all()
        assert batch["decoder_loss_weights"].sum() > 0
        assert tid.max() < len(ti.task_names)
        # A row's tokens decode back to rendered prompts of the tagged task.
        r = 0
        s1 = np.flatnonzero(seg[r] == 1)
        text = vocab.decode(batch["decoder_input_tokens"][r, s1].tolist())
        task = ti.task_names[tid[r, s1[0]]]
        assert task in text or task.startswith("cot") or ti.task_benchmark[task] == "PromptSource"
    # Supervised held-out instances never appear in training examples.
    assert all(int(e.id.rsplit("-", 1)[1]) % 5 for e in ti._examples[ti.task_names.index("superni_0")])


def test_state_restore_gives_identical_continuation(vocab):
    import json

    bench = synthetic_bench()
    a = pipeline.TrainInput(vocab=vocab, batch_size=3, seq_len=64, seed=7, bench=bench, packing_window=4)
    _take(a, 2)
    state = json.loads(json.dumps(a.state()))
    # Mid-stream with a non-empty look-ahead window that skipped over pending examples.
    pending = state["pending"]
    assert len(pending) == 4 and pending[-1] < state["position"]
    assert pending != list(range(state["position"] - 4, state["position"])), "no reordering: test too weak"
    assert state["packing_window"] == 4 and len(json.dumps(state)) < 400
    expected = _take(a, 3)
    b = pipeline.TrainInput(vocab=vocab, batch_size=3, seq_len=64, seed=7, bench=bench, packing_window=4)
    b.restore(state)
    _assert_batches_equal(_take(b, 3), expected)
    assert b.state() == a.state()
    # A fresh input reproduces the whole stream.
    c = pipeline.TrainInput(vocab=vocab, batch_size=3, seq_len=64, seed=7, bench=bench, packing_window=4)
    _take(c, 2)
    _assert_batches_equal(_take(c, 3), expected)
    # Forgetting the window loses its examples: the continuation differs (so the test above can fail).
    d = pipeline.TrainInput(vocab=vocab, batch_size=3, seq_len=64, seed=7, bench=bench, packing_window=4)
    d.restore(dict(state, pending=[]))
    assert not np.array_equal(next(d)["decoder_input_tokens"], expected[0]["decoder_input_tokens"])
    with pytest.raises(ValueError, match="'seed'"):
        pipeline.TrainInput(vocab=vocab, batch_size=3, seq_len=64, seed=8, bench=bench).restore(state)
    with pytest.raises(ValueError, match="'packing_window' is 4 but this input has 16"):
        pipeline.TrainInput(vocab=vocab, batch_size=3, seq_len=64, seed=7, bench=bench).restore(state)
    with pytest.raises(ValueError, match="not a TrainInput state"):
        b.restore({"foo": 1})
    for bad in ([5, 3], [3, 3], [-1], [state["position"]], [1, 2, 3, 4, 5], "12", [1.0], None):
        with pytest.raises(ValueError, match="state field 'pending'"):
            b.restore(dict(state, pending=bad))
    with pytest.raises(ValueError, match="packing_window must be an int >= 1"):
        pipeline.TrainInput(vocab=vocab, batch_size=3, seq_len=64, bench=bench, packing_window=0)


def test_version_one_state_restores_with_an_empty_window(vocab):
    """A checkpoint of the in-order packer (position = examples consumed) resumes without losing examples."""
    bench = synthetic_bench()
    a = pipeline.TrainInput(vocab=vocab, batch_size=2, seq_len=64, seed=5, bench=bench)
    old = {k: v for k, v in a.state().items() if k not in ("pending", "packing_window")}
    old.update(version=1, position=9)
    a.restore(old)
    assert a.state()["pending"] == [] and a.position == 9
    ref = pipeline.TrainInput(vocab=vocab, batch_size=2, seq_len=64, seed=5, bench=bench)
    first = [(s.tolist(), t.tolist()) for s, t, _ in _take(ref.iter_examples(9), 1)][0]
    row = next(a)["decoder_input_tokens"][0]
    assert row[:len(first[0]) + 1].tolist() == [vocab.bos_id] + first[0]  # stream position 9 opens the batch
    with pytest.raises(ValueError, match="state version 0"):
        a.restore(dict(old, version=0))


def _real_token_fraction(ti, num_batches):
    return float(np.mean([np.mean(next(ti)["decoder_segment_ids"] > 0) for _ in range(num_batches)]))


@pytest.mark.parametrize("which", ["embedded", "real"])
def test_packing_efficiency_at_2048(which, request, vocab):
    """Issue 6: >= 95% of the positions of 2048-token rows hold real tokens (in-order packing: ~87% on the
    real mixture)."""
    if which == "real":
        bench = pipeline.get_bench(str(request.getfixturevalue("real_data_dir")), "optiml")
    else:
        bench = pipeline.get_bench(None, "embedded")
    ti = pipeline.TrainInput(vocab=vocab, batch_size=8, seq_len=2048, bench=bench)
    assert _real_token_fraction(ti, 3) >= 0.95
    assert ti.state()["pending"] and len(ti.state()["pending"]) == fc.DEFAULT_PACKING_WINDOW


def test_shards_are_disjoint_and_interleave_to_the_single_host_stream(vocab):
    bench = synthetic_bench()
    full = pipeline.TrainInput(vocab=vocab, batch_size=1, seq_len=64, seed=1, bench=bench)
    shards = [pipeline.TrainInput(vocab=vocab, batch_size=1, seq_len=64, seed=1, bench=bench,
                                  shard_index=s, num_shards=3) for s in range(3)]
    positions = [{sh.global_index(k) for k in range(200)} for sh in shards]
    assert not (positions[0] & positions[1]) and not (positions[1] & positions[2])
    assert set.union(*positions) == set(range(600))
    for g in range(30):
        s, k = g % 3, g // 3
        assert shards[s].draw(k) == full.draw(g)
    ex_full = [(s.tolist(), t.tolist()) for s, t, _ in _take(full.iter_examples(), 12)]
    ex_shard = [[(s.tolist(), t.tolist()) for s, t, _ in _take(sh.iter_examples(), 4)] for sh in shards]
    assert ex_full == [ex_shard[g % 3][g // 3] for g in range(12)]
    with pytest.raises(ValueError, match="shard_index"):
        pipeline.TrainInput(vocab=vocab, batch_size=1, seq_len=64, bench=bench, shard_index=3, num_shards=3)


def test_iter_examples_packs_to_the_same_batches(vocab):
    bench = synthetic_bench()
    ti = pipeline.TrainInput(vocab=vocab, batch_size=2, seq_len=80, seed=2, bench=bench)
    batches = _take(pipeline.TrainInput(vocab=vocab, batch_size=2, seq_len=80, seed=2, bench=bench), 3)
    segs = (fc.make_segment(s, t, bos_id=vocab.bos_id, eos_id=vocab.eos_id, max_length=80, tag=tag)
            for s, t, tag in ti.iter_examples())
    rows = []
    # One uninterrupted packing of the stream equals the batch-by-batch packing (no seam at batch ends).
    for row, _ in fc.iter_packed_rows(segs, max_length=80, pad_id=vocab.pad_id, with_tags=True):
        rows.append(row)
        if len(rows) == 6:
            break
    _assert_batches_equal([fc.stack_rows(rows[i:i + 2]) for i in (0, 2, 4)], batches)


def test_mixture_fractions_and_exclusions(vocab):
    bench = synthetic_bench()
    ti = pipeline.TrainInput(vocab=vocab, batch_size=1, seq_len=64, bench=bench)
    idx = ti.sampler.task_indices(0, 50_000)
    for b, share in ti.rates.benchmark_share.items():
        frac = np.mean([ti.task_benchmark[ti.task_names[i]] == b for i in idx])
        assert abs(frac - share) < 0.01
    assert ti.rates.benchmark_share["Reasoning"] == pytest.approx(0.01)
    assert ti.rates.benchmark_share["SuperNI"] == pytest.approx(0.99 * 25 / 70)
    dropped = pipeline.TrainInput(vocab=vocab, batch_size=1, seq_len=64, bench=synthetic_bench({"superni_1"}))
    assert "superni_1" in ti.task_names and "superni_1" not in dropped.task_names
    small = pipeline.TrainInput(vocab=vocab, batch_size=1, seq_len=64, bench=bench,
                                mixture_config=mx.MixtureConfig(eps=100))
    # superni_1 (500) and superni_2 (9000) are both capped at EPS=100 -> same rate.
    assert small.rates.rate("superni_1") == pytest.approx(small.rates.rate("superni_2"))
    assert small.rates.rate("superni_0") == pytest.approx(small.rates.rate("superni_2") * 20 / 100)


def test_heldout_category_is_refused():
    bench = synthetic_bench()
    bench.train_tasks = bench.train_tasks + ("superni_3",)  # a Word Analogy task
    with pytest.raises(ValueError, match="'superni_3'.*'Word Analogy'"):
        pipeline.training_rates(bench)
    pipeline.training_rates(bench, pipeline.MAX_TRAIN_MIXTURE)  # the Max variant trains on held-out tasks


def test_max_mixture_leaves_out_evaluation_only_tasks():
    """Eval-only by source split (whatever the benchmark) or by benchmark; the split's exclusions too."""
    bench = synthetic_bench()
    bench.catalogue = dict(bench.catalogue, gsm_eval=TaskInfo("gsm_eval", "Reasoning", "Reasoning"),
                           bbh_x=TaskInfo("bbh_x", "BBH", "Reasoning"))
    bench.source_splits = {"gsm_eval": "eval_only", "superni_4": "test"}
    bench.roles = {"promptsource_1": "excluded"}
    names = bench.training_task_names(pipeline.MAX_TRAIN_MIXTURE)
    assert not {"gsm_eval", "bbh_x", "superni_4", "promptsource_1"} & set(names)
    # Held-out evaluation tasks of trainable data are in: that is what makes it "Max".
    assert {"superni_3", "promptsource_5", "superni_0", "cot_0"} <= set(names)
    assert "source split 'eval_only'" in bench.eval_only_reason("gsm_eval")
    assert "benchmark 'BBH'" in bench.eval_only_reason("bbh_x")
    with pytest.raises(ValueError, match="'gsm_eval' is evaluation-only"):
        pipeline.training_rates(bench, "gsm_eval")  # not even as a single-task mixture


def test_eval_examples_levels_shots_and_heldout_batches(vocab):
    bench = synthetic_bench()
    sup = pipeline.eval_examples("superni_0", split="validation", num_shots=5, bench=bench)
    assert len(sup) == 6 and {p.id for p in sup} == {f"superni_0-{j}" for j in range(0, 30, 5)}
    for p in sup:
        assert p.num_shots == 5 and p.source.startswith("Definition of superni_0.\n\n")
        # Demonstrations are training instances, never held-out ones (ids divisible by 5).
        for j in range(0, 30, 5):
            assert f"input number {j} " not in p.source.split("\n\n", 1)[1].rsplit("\n\n", 1)[0]
    assert pipeline.eval_examples("superni_0", split="validation", num_shots=5, bench=bench) == sup
    full = pipeline.eval_examples("superni_3", split="validation", max_examples=10, seed=1, bench=bench)
    assert len(full) == 10 and full == pipeline.eval_examples("superni_3", split="validation", max_examples=10,
                                                              seed=1, bench=bench)
    assert bench.level_of("promptsource_5", "validation") == "partially_heldout"
    with pytest.raises(ValueError, match="split must be one of"):
        pipeline.eval_examples("superni_0", split="dev", bench=bench)
    batches = pipeline.heldout_loss_batches(vocab=vocab, batch_size=2, seq_len=128, max_examples_per_task=4,
                                            bench=bench)
    assert batches and all(b["decoder_input_tokens"].shape == (2, 128) for b in batches)
    n_segments = sum(int(b["decoder_segment_ids"].max(axis=1).sum()) for b in batches)
    assert n_segments == 4 * 3 + 4   # 3 held-out tasks x 4, superni_0's 6 held-out instances capped at 4


# ----- real data and the embedded suite through the data layer -------------------------------------------------

def test_embedded_suite_pipeline(vocab):
    bench = pipeline.get_bench(None, "embedded")
    ti = pipeline.TrainInput(vocab=vocab, batch_size=2, seq_len=128, bench=bench)
    assert ti.task_names and next(ti)["decoder_input_tokens"].shape == (2, 128)
    names = pipeline.eval_task_names("validation", split_definition="embedded")
    assert names
    ex = pipeline.eval_examples(names[0], split="validation", num_shots=2, max_examples=3, bench=bench)
    assert len(ex) == 3 and all(p.num_shots == 2 for p in ex)


def test_real_data_pipeline(vocab, real_data_dir):
    bench = pipeline.get_bench(str(real_data_dir), "optiml")
    ti = pipeline.TrainInput(vocab=vocab, batch_size=2, seq_len=512, bench=bench)
    held = bench.heldout_categories()
    assert not [t for t in ti.task_names if bench.catalogue[t].category in held]
    assert {"SuperNI", "PromptSource"} <= set(ti.rates.benchmark_share)
    b = next(ti)
    assert b["decoder_input_tokens"].shape == (2, 512) and b["decoder_loss_weights"].sum() > 0
    for split in pipeline.EVAL_SPLITS:
        names = pipeline.eval_task_names(split, data_dir=str(real_data_dir), split_definition="optiml")
        assert names
        p = pipeline.eval_examples(names[0], split=split, num_shots=5, max_examples=2, bench=bench)
        assert len(p) <= 2


def test_real_max_mixture_has_no_evaluation_only_task(real_data_dir):
    from optiml_jax.tasks import catalogue

    bench = pipeline.get_bench(str(real_data_dir), "optiml")
    names = set(bench.training_task_names(pipeline.MAX_TRAIN_MIXTURE))
    source_split = catalogue.source_splits(real_data_dir)
    eval_only = {n for n, s in source_split.items() if s in ("eval_only", "test")}
    bigbench = {n for n in eval_only if bench.catalogue[n].benchmark == "BIG-bench"}  # the canary: all of them
    assert bigbench == {n for n, i in bench.catalogue.items() if i.benchmark == "BIG-bench"}
    assert len(eval_only - bigbench) == 54 + 3 + 119  # BBH (both layouts), GSM8K/StrategyQA/SVAMP, SuperNI test
    assert not names & eval_only
    assert not [n for n in names if bench.catalogue[n].benchmark in pipeline.EVAL_ONLY_BENCHMARKS]
    assert not {"task1759_gsm", "task1760_strategyqa", "task1761_svamp"} & names
    # The optiml split keeps the embedded suite out; so does its Max variant.
    assert not [n for n in names if bench.catalogue[n].benchmark.startswith("Embedded")]
    # Max = the split's training tasks plus its held-out evaluation tasks of trainable data.
    train = set(bench.training_task_names(pipeline.TRAIN_MIXTURE))
    assert train < names
    assert names - train == {n for (_, lv), ts in bench.eval_tasks.items() if lv != "supervised"
                             for n in ts} - eval_only - bench.excluded
    assert "flan_bool_q" in names and "task1759_gsm" not in names
    # GSM8K's CoT training data shares its source with the evaluation-only GSM8K copy: the split excludes it.
    assert bench.role("cot_gsm8k") == "excluded" and "cot_gsm8k" not in names


@pytest.mark.parametrize("which", ["embedded", "real"])
def test_mixture_invariants_on_data_layer(which, request, vocab):
    """Embedded suite and real data: no held-out category trained, 50k draws match the benchmark shares,
    per-task rates follow min(n, EPS) inside each benchmark."""
    if which == "real":
        bench = pipeline.get_bench(str(request.getfixturevalue("real_data_dir")), "optiml")
    else:
        bench = pipeline.get_bench(None, "embedded")
    ti = pipeline.TrainInput(vocab=vocab, batch_size=1, seq_len=64, bench=bench)
    held = bench.heldout_categories()
    assert held and not [t for t in ti.task_names if bench.catalogue[t].category in held]
    assert not set(ti.task_names) & {t for (s, lv), ts in bench.eval_tasks.items() if lv != "supervised" for t in ts}
    idx = ti.sampler.task_indices(0, 50_000)
    bench_of = np.array([ti.task_benchmark[n] for n in ti.task_names])[idx]
    for b, share in ti.rates.benchmark_share.items():
        assert abs(np.mean(bench_of == b) - share) < 0.01, (b, share)
    for b in ti.rates.benchmark_share:
        members = [t for t in ti.task_names if ti.task_benchmark[t] == b]
        capped = np.array([min(ti.rates.task_size[t], ti.rates.eps) for t in members], float)
        got = np.array([ti.rates.rate(t) for t in members])
        np.testing.assert_allclose(got, ti.rates.benchmark_share[b] * capped / capped.sum(), rtol=1e-9)
    if which == "real":
        assert ti.rates.benchmark_share["Reasoning"] == pytest.approx(0.01)
        # SuperNI and PromptSource are the regular benchmarks on disk: 25/70 and 45/70 of the other 99 %.
        assert ti.rates.benchmark_share["SuperNI"] == pytest.approx(0.99 * 25 / 70)


def test_real_prompt_parts_tokenise_like_the_source_and_truncation_keeps_definition(real_data_dir, vocab):
    """Issue 12 on the real mixture: encoding a prompt's parts one by one gives exactly the tokens of its whole
    source (so untruncated examples are unchanged), and at seq_len=128 every trained example keeps its
    definition, delimiter and full target; the rest are skipped and counted per benchmark."""
    bench = pipeline.get_bench(str(real_data_dir), "optiml")
    ti = pipeline.TrainInput(vocab=vocab, batch_size=8, seq_len=128, seed=1, bench=bench)
    prompted = [ti._render(k)[1] for k in range(600)]
    layouts = [pipeline.prompt_parts(p) for p in prompted]
    assert all("".join(t for _, t in lay) == p.source for lay, p in zip(layouts, prompted))
    whole = vocab.encode_batch([p.source for p in prompted])
    pieces = [[tok for _, t in lay for tok in vocab.encode(t)] for lay in layouts]
    assert pieces == whole
    with_definition = 0
    for p, lay, seg in zip(prompted, layouts, pipeline.encode_prompted(vocab, prompted, seq_len=128)):
        if isinstance(seg, fc.Skipped):
            continue
        src = seg.tokens[1:seg.num_prefix].tolist()
        assert seg.tokens[seg.num_prefix:-1].tolist() == vocab.encode(p.target)   # the full target
        for role, text in lay:
            if role in ("definition", "fixed"):
                assert vocab.encode(text) in [src[i:i + len(vocab.encode(text))] for i in range(len(src))]
        if lay and lay[0][0] == "definition":
            with_definition += 1
            assert src[:len(vocab.encode(lay[0][1]))] == vocab.encode(lay[0][1])
    assert with_definition > 10
    estimate = ti.estimate_truncation(600)
    superni = estimate["SuperNI"]
    assert superni["skipped_definition"] > 0 and superni["examples"] > 0
    for _ in range(3):
        next(ti)
    counts = ti.truncation_counts()
    assert sum(c.get("examples", 0) for c in counts.values()) > 8
    assert sum(v for c in counts.values() for k, v in c.items() if k.startswith("skipped_")) > 0
