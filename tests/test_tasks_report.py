"""`python -m optiml_jax.tasks --report`: Table 1 of the bench (as configured and on disk) and the realised
mixture, on a synthetic bench whose numbers are known."""
import os

os.environ.setdefault("OPTIML_SKIP_REGISTRATION", "1")

from optiml_jax.tasks import __main__ as cli  # noqa: E402
from optiml_jax.tasks import mixtures, pipeline  # noqa: E402


def _rows(text, title):
    block = text.split(title, 1)[1].split("\n\n", 2)[1]
    return {line.split(" | ")[0].strip("| *"): [c.strip() for c in line.strip("|").split("|")]
            for line in block.splitlines()[2:]}


def test_report_table1_and_mixture_on_a_synthetic_bench(monkeypatch, capsys):
    from test_pipeline import synthetic_bench  # tests/ is on sys.path under pytest

    bench = synthetic_bench()
    bench.leakage_drops = {"superni_2": "leakage audit: overlap above 0.01 with eval task 'superni_3' (5.0%)"}
    bench.train_tasks = tuple(n for n in bench.train_tasks if n != "superni_2")
    monkeypatch.setattr(pipeline, "get_bench", lambda data_dir=None, split=None, **kw: bench)
    assert cli.main(["--report", "--max_tasks", "3"]) == 0
    text = capsys.readouterr().out
    configured = _rows(text, "as configured")
    on_disk = _rows(text, "as present on disk")
    # SuperNI: superni_0..5; superni_3 is held out (Word Analogy), superni_2 dropped, the rest train.
    assert configured["SuperNI"] == ["SuperNI", "5", "6", f"{2 * (20 + 500 + 9000):,}", "4", "1", "0", "1"]
    # On disk every task has 30 instances; the supervised task superni_0 holds 6 of them out, but its examples
    # are all on disk.
    assert on_disk["SuperNI"][2:4] == ["6", f"{6 * 30:,}"]
    train = configured["OPT-IML Bench (train)"]
    assert int(train[2]) == len(bench.train_tasks)
    # promptsource_5 (partially held out) and the two Word Analogy tasks (superni_3, promptsource_2).
    assert int(configured["OPT-IML Bench (validation)"][2]) == 3
    rates, _ = pipeline.training_rates(bench, pipeline.TRAIN_MIXTURE, mixtures.MixtureConfig())
    shares = dict((r["benchmark"], r["share"]) for r in mixtures.rates_table(rates)[0])
    mix = _rows(text, "### Realised mixture")
    assert {b: float(r[4].rstrip("%")) for b, r in mix.items()} == {b: round(100 * s, 2) for b, s in shares.items()}
    assert "Rate per task (the 3 highest of" in text
    assert "| superni_2 | leakage audit: overlap above 0.01" in text
