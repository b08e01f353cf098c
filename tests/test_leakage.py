"""13-gram leakage audit: injected overlaps are found, decisions follow the rules, the committed TSV reproduces and
is applied, and the decoded training stream holds no evaluation instance (real data)."""
import os
import time

import numpy as np
import pytest

os.environ.setdefault("OPTIML_SKIP_REGISTRATION", "1")

from optiml_jax.tasks import leakage, pipeline  # noqa: E402
from optiml_jax.tasks.schema import Example  # noqa: E402

def _text(seed, n=30):
    """Random text over a 5,000-word vocabulary: independent texts share no 13-gram."""
    rng = np.random.default_rng(seed)
    return " ".join(f"w{i}" for i in rng.integers(0, 5000, size=n))


def test_gram_hashes_lowercase_whitespace_and_length():
    h = leakage._TokenHasher()
    a = leakage.gram_hashes("A b c d e f g h i j k l m", h)
    assert len(a) == 1
    assert leakage.gram_hashes("a  B c d e f g h i j k l\nm", h).tolist() == a.tolist()
    assert len(leakage.gram_hashes("a b c d e f g h i j k l", h)) == 0  # 12 tokens: no 13-gram
    assert len(leakage.gram_hashes("a b c d e f g h i j k l m n", h)) == 2


def test_audit_finds_injected_overlap_only():
    train = {"t_clean": [_text(i) for i in range(50)], "t_leaky": [_text(1000 + i) for i in range(50)]}
    evaluation = {"e": [_text(5000 + i) for i in range(100)]}
    assert leakage.audit(train, evaluation) == []
    # Inject: 3 of 100 eval examples contain a 13-gram copied from a t_leaky example (12-gram: not enough).
    src = train["t_leaky"][7].split()
    evaluation["e"][10] += " " + " ".join(src[4:17])
    evaluation["e"][20] = " ".join(src[:13]) + " " + evaluation["e"][20]
    evaluation["e"][30] += " " + " ".join(src[10:23]).upper()
    evaluation["e"][40] += " " + " ".join(src[0:12])
    found = leakage.audit(train, evaluation, threshold=0.01)
    assert [(o.train_task, o.eval_task, o.overlapping, o.total) for o in found] == [("t_leaky", "e", 3, 100)]
    assert found[0].fraction == pytest.approx(0.03)
    assert leakage.audit(train, evaluation, threshold=0.05) == []


def test_decisions_round_trip_and_gin_switch(tmp_path, monkeypatch):
    rows = [leakage.Decision("a_task", "e1", 0.034, leakage.DROP, "overlap above 0.01"),
            leakage.Decision("b_task", "e2", 0.05, leakage.KEEP, "broad resource: Wikipedia")]
    path = leakage.write_decisions(rows, tmp_path / "d.tsv")
    assert path.read_text().splitlines()[0] == "\t".join(leakage.DECISION_COLUMNS)
    assert [d.as_row() for d in leakage.read_decisions(path)] == [d.as_row() for d in rows]
    assert list(leakage.dropped_train_tasks(rows)) == ["a_task"]   # KEEP rows drop nothing
    monkeypatch.setenv(leakage.DECISIONS_ENV, str(path))
    assert list(leakage.active_drops()) == ["a_task"]
    import gin

    with gin.unlock_config():
        gin.bind_parameter("leakage_decisions.apply", False)
    try:
        assert leakage.active_drops() == {}
    finally:
        with gin.unlock_config():
            gin.bind_parameter("leakage_decisions.apply", True)
    bad = tmp_path / "bad.tsv"
    bad.write_text("\t".join(leakage.DECISION_COLUMNS) + "\na\tb\tnot-a-number\tdrop\tr\n")
    with pytest.raises(leakage.DecisionsError, match=r"bad.tsv:2: field 'overlap'"):
        leakage.read_decisions(bad)
    with pytest.raises(leakage.DecisionsError, match="not found"):
        leakage.read_decisions(tmp_path / "missing.tsv")


def _facts(source, category, supervised=False):
    return leakage.TaskFacts(source, category, supervised)


def test_decide_rules_overlap_broad_resource_and_source_propagation():
    train = {"t_ps": _facts("adversarial_qa", "QA"), "t_ps2": _facts("adversarial_qa", "QA"),
             "t_wiki": _facts("wiki_hop", "QA"), "t_sup": _facts("propara", "NER"),
             "t_sib": _facts("propara", "QG", supervised=True), "t_other": _facts("squad_v1", "QA")}
    evaluation = {"e_held": _facts("adverserial_qa", "Answerability"), "e_aq": _facts("aquamuse", "Answerability"),
                  "e_sup": _facts("propara", "QG", supervised=True), "e_aq_same": _facts("aquamuse", "QA")}
    O = leakage.Overlap
    overlaps = [O("t_ps", "e_held", 3, 100), O("t_ps2", "e_held", 1, 200),   # 0.5%: below the threshold
                O("t_wiki", "e_aq", 5, 100), O("t_wiki", "e_aq_same", 5, 100),
                O("t_sup", "e_sup", 5, 9), O("t_other", "e_held", 1, 100)]   # exactly 1%: not above
    decisions = leakage.decide(overlaps, train=train, evaluation=evaluation)
    got = {(d.train_task, d.eval_task): (d.decision, d.rule.split(":")[0], round(d.overlap, 4)) for d in decisions}
    assert got == {
        ("t_ps", "e_held"): ("drop", "overlap above 0.01", 0.03),
        # Evidence: adversarial_qa ~ adverserial_qa, so the sibling of the same source goes too, with its own overlap.
        ("t_ps2", "e_held"): ("drop", "same source", 0.005),
        ("t_wiki", "e_aq"): ("keep", "broad resource", 0.05),          # Wikipedia, different categories
        ("t_wiki", "e_aq_same"): ("drop", "overlap above 0.01", 0.05),  # same category: labels related
        ("t_sup", "e_sup"): ("drop", "overlap above 0.01", 0.5556),     # supervised pair: no propagation
    }
    assert set(leakage.dropped_train_tasks(decisions)) == {"t_ps", "t_ps2", "t_wiki", "t_sup"}


def test_find_contained_is_exact_and_skips_short_queries():
    train = {"a": ["Intro. The quick brown fox jumps over the lazy dog today , said Ann.", "unrelated words here"],
             "b": ["the QUICK brown fox jumps over the lazy\ndog", "yes"]}
    queries = ["The quick brown fox jumps over the lazy dog", "yes", "brown fox jumps over the lazy cat again ok"]
    assert leakage.find_contained(train, queries) == {"a": {0: 0}, "b": {0: 0}}
    assert leakage.find_contained(train, queries, min_tokens=1)["b"] == {0: 0, 1: 1}


def test_bench_leaves_out_training_instances_containing_an_evaluated_one():
    from test_pipeline import synthetic_bench  # tests/ is on sys.path under pytest

    bench = synthetic_bench()
    held = bench.eval_pool("superni_3", "validation")[4]   # a fully held-out task's instance
    base = bench.load

    def load(info):
        exs = base(info)
        if info.name == "superni_1":
            return exs + [Example(id="copy", input="Context: " + held.input + " Question: why?", outputs=("x",))]
        return exs

    bench.load = load
    assert "copy" not in {e.id for e in bench.train_examples("superni_1")}
    assert "copy" in {e.id for e in bench.train_examples("superni_1", drop_contained=False)}
    assert bench.contained_instances() == {"superni_1": frozenset({"copy"})}


def _leaky_bench():
    from test_pipeline import synthetic_bench  # tests/ is on sys.path under pytest

    bench = synthetic_bench()
    # superni_1 (train) receives copies of the held-out task superni_3's inputs.
    base = bench.load
    held = [e.input + " " + _text(9000 + j) for j, e in enumerate(base(bench.catalogue["superni_3"]))]

    def load(info):
        exs = base(info)
        if info.name == "superni_3":
            return [Example(id=e.id, input=held[j], outputs=e.outputs) for j, e in enumerate(exs)]
        if info.name == "superni_1":
            return exs + [Example(id=f"leak{j}", input=held[j], outputs=("x",)) for j in range(3)]
        return exs

    bench.load = load
    return bench


def test_cli_writes_decisions_reproducibly(tmp_path, monkeypatch, capsys):
    from optiml_jax.tasks import __main__ as cli

    seen = {}

    def fake_get_bench(data_dir=None, split=None, *, apply_leakage_decisions=True):
        seen["apply"] = apply_leakage_decisions
        return _leaky_bench()

    monkeypatch.setattr(pipeline, "get_bench", fake_get_bench)
    out = tmp_path / "decisions.tsv"
    assert cli.main(["leakage", "--out", str(out)]) == 0
    assert seen["apply"] is False   # the audit never sees its own decisions
    printed = capsys.readouterr().out
    assert "superni_1" in printed and "superni_3" in printed and "10.0%" in printed
    rows = leakage.read_decisions(out)
    assert [(d.train_task, d.eval_task, d.decision) for d in rows] == [("superni_1", "superni_3", "drop")]
    first = out.read_bytes()
    assert cli.main(["leakage", "--out", str(out)]) == 0 and out.read_bytes() == first


def test_committed_decisions_reproduce_and_are_applied(real_data_dir):
    """Acceptance (issue 12): the committed TSV is what the audit writes on the shared data, and every training
    mixture leaves its dropped tasks out; the known AdversarialQA spelling case is out by the alias table."""
    bench = pipeline.get_bench(str(real_data_dir), "optiml", apply_leakage_decisions=False)
    start = time.perf_counter()
    decisions, flagged, summary = leakage.audit_bench(bench)
    print(f"\nreal-data leakage audit: {summary}, {time.perf_counter() - start:.1f}s")
    assert summary["train_tasks"] > 400 and summary["eval_tasks"] > 300
    committed = leakage.read_decisions(leakage.DECISIONS_PATH)
    assert [d.as_row() for d in decisions] == [d.as_row() for d in committed]
    assert {o.train_task for o in flagged} <= {d.train_task for d in decisions}
    drops = leakage.dropped_train_tasks(committed)
    assert "task276_enhanced_wsc_classification" in drops and "ps_wiki_hop_original" not in drops
    applied = pipeline.get_bench(str(real_data_dir), "optiml")
    for mixture in (pipeline.TRAIN_MIXTURE, pipeline.MAX_TRAIN_MIXTURE):
        names = set(applied.training_task_names(mixture))
        assert names and not names & set(drops), mixture
        assert not any(n.startswith("ps_adversarial_qa") for n in names), mixture
    assert set(applied.leakage_drops) == set(drops) & set(bench.train_tasks)
    # A dropped task is not a supervised evaluation task either.
    supervised = {n for s in pipeline.EVAL_SPLITS for n in applied.eval_tasks[(s, "supervised")]}
    assert not supervised & set(drops)


def _windows(words, n):
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_decoded_training_stream_holds_no_evaluation_instance(real_data_dir):
    """Acceptance (issue 12): decode a large sample of the default training stream on the real data and search
    it for the input text of every evaluated instance (held-out tasks of both levels and held-out instances of
    supervised tasks, validation and test). Independent of the filter it checks: word windows + substring."""
    from optiml_jax.tokenizer import OPTVocabulary

    vocab = OPTVocabulary.default()
    bench = pipeline.get_bench(str(real_data_dir), "optiml")
    ti = pipeline.TrainInput(vocab=vocab, batch_size=16, seq_len=2048, seed=0, bench=bench)
    start = time.perf_counter()
    segments = []
    for _ in range(int(os.environ.get("OPTIML_LEAK_TEST_BATCHES", "120"))):
        batch = next(ti)
        for row_tokens, row_seg in zip(batch["decoder_input_tokens"], batch["decoder_segment_ids"]):
            for sid in np.unique(row_seg[row_seg > 0]):
                segments.append(row_tokens[row_seg == sid][1:].tolist())   # drop the BOS
    texts = [leakage.normalize_text(t) for t in vocab.decode_batch(segments)]
    n = 8
    windows: set[str] = set()
    for t in texts:
        windows |= _windows(t.split(), n)
    haystack = " \x00 ".join(texts)
    queries = {}
    for (split, level), names in bench.eval_tasks.items():
        for name in names:
            for e in bench.eval_pool(name, split):
                q = leakage.normalize_text(e.input)
                if len(q.split()) >= n:
                    queries.setdefault(q, (split, level, name, e.id))

    def leaks(extra=""):
        hay, win = haystack + extra, windows | _windows(extra.split(), n)
        return [where for q, where in queries.items() if _windows(q.split(), n) <= win and q in hay]

    found = leaks()
    print(f"\n{len(segments)} training examples decoded ({sum(map(len, segments))} tokens), "
          f"{len(queries)} evaluation inputs searched, {time.perf_counter() - start:.1f}s; found {found[:5]}")
    assert len(segments) > 10_000 and len(queries) > 10_000
    assert found == []
    # The search finds an evaluated instance when one is there.
    planted_q, planted = next(iter(queries.items()))
    assert leaks(" \x00 some prefix " + planted_q + " suffix") == [planted]


def test_vectorised_audit_equals_brute_force():
    rng = np.random.default_rng(3)
    vocab = ["a", "b", "c", "D"]  # tiny vocabulary: many accidental 3-gram matches (and some case folding)

    def rand_text():
        return " ".join(rng.choice(vocab, size=int(rng.integers(0, 12))))

    train = {f"tr{i}": [rand_text() for _ in range(int(rng.integers(1, 6)))] for i in range(6)}
    evaluation = {f"ev{i}": [rand_text() for _ in range(int(rng.integers(1, 8)))] for i in range(5)}
    n = 3

    def grams(t):
        toks = t.lower().split()
        return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}

    expected = []
    for e, texts in evaluation.items():
        for tname, ttexts in train.items():
            tg = set().union(*map(grams, ttexts))
            hits = sum(bool(grams(x) & tg) for x in texts)
            if hits / len(texts) > 0.0:
                expected.append((tname, e, hits, len(texts)))
    got = [(o.train_task, o.eval_task, o.overlapping, o.total) for o in leakage.audit(train, evaluation, n=n,
                                                                                       threshold=0.0)]
    assert sorted(got) == sorted(expected) and expected
