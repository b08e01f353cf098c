"""13-gram leakage audit: injected overlaps are found, clean pairs are not, the CLI drops train tasks."""
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


def test_exclusion_list_round_trip_and_bench_honours_it(tmp_path, monkeypatch):
    path = leakage.write_exclusions(["b_task", "a_task", "a_task"], tmp_path / "ex.txt")
    assert leakage.read_exclusions(path=path) == ["a_task", "b_task"]
    monkeypatch.setenv(leakage.EXCLUSIONS_ENV, str(path))
    assert leakage.read_exclusions() == ["a_task", "b_task"]
    assert leakage.read_exclusions(path=tmp_path / "missing.txt") == []


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


def test_cli_drop_writes_offending_train_tasks(tmp_path, monkeypatch, capsys):
    from optiml_jax.tasks import __main__ as cli

    monkeypatch.setattr(pipeline, "get_bench", lambda data_dir=None, split=None: _leaky_bench())
    out = tmp_path / "excl.txt"
    assert cli.main(["leakage", "--drop", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "superni_1" in printed and "superni_3" in printed and "10.0%" in printed
    assert leakage.read_exclusions(path=out) == ["superni_1"]


def test_leakage_on_real_data(real_data_dir):
    bench = pipeline.get_bench(str(real_data_dir), "optiml")
    start = time.perf_counter()
    flagged, summary = leakage.audit_bench(bench)
    took = time.perf_counter() - start
    print(f"\nreal-data leakage audit: {summary}, {took:.1f}s")
    for o in flagged[:15]:
        print(f"  {o.train_task} -> {o.eval_task}: {100 * o.fraction:.1f}% ({o.overlapping}/{o.total})")
    assert summary["train_tasks"] > 100 and summary["eval_tasks"] > 10
    assert all(o.fraction > 0.01 for o in flagged)


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
