"""The token cache and the loader over it: the same batches as the in-memory TrainInput (0-shot and MetaICL,
sharded, subsets), exact resume, a user's own seqio Task trained by name with a rate, stale caches detected."""
import json
import os
import pathlib
import sys

import numpy as np
import pytest

os.environ.setdefault("OPTIML_SKIP_REGISTRATION", "1")  # these tests build their own Bench

from optiml_jax import feature_converters as fc  # noqa: E402
from optiml_jax.tasks import cache, loader, pipeline  # noqa: E402
from optiml_jax.tasks import mixtures as mx  # noqa: E402

from test_pipeline import _assert_batches_equal, _take, synthetic_bench  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_gin():
    import gin

    yield
    gin.clear_config()


@pytest.fixture(scope="module")
def vocab():
    from optiml_jax.tokenizer import OPTVocabulary

    return OPTVocabulary.default()


@pytest.fixture(scope="module")
def bench():
    return synthetic_bench()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, bench, vocab):
    out = tmp_path_factory.mktemp("cache")
    summary = cache.build(out, cache.plan(bench, pipeline.TRAIN_MIXTURE, vocab), progress=False)
    assert summary["remaining"] == 0 and summary["built"] == len(bench.train_tasks)
    return out


def test_record_bytes_round_trip():
    rec = cache.Record(id="x-1", definition=np.array([5, 60000]), inputs=np.array([], np.int64),
                       targets=np.array([7]), needs_delimiter=True, body="Body é", target_text=" t")
    for code in (1, 2):
        back = cache.decode_record(cache.encode_record(rec, code))
        assert back.id == rec.id and back.body == rec.body and back.target_text == rec.target_text
        assert back.needs_delimiter and not back.pretraining
        for key in ("definition", "inputs", "targets"):
            np.testing.assert_array_equal(getattr(back, key), getattr(rec, key))
    tokens_only = cache.decode_record(cache.encode_record(
        cache.Record(id="7", definition=np.array([]), inputs=np.array([1]), targets=np.array([2]))))
    assert tokens_only.body is None and tokens_only.target_text is None


@pytest.mark.parametrize("config", [
    mx.MixtureConfig(),
    mx.MixtureConfig(metaicl=True, metaicl_zipf_a=1.0),          # many demonstrations, rendered from texts
    mx.MixtureConfig(max_instances_per_task=7, size_source="disk"),
], ids=["0shot", "metaicl", "subset"])
def test_cached_input_equals_train_input_batches_counts_and_states(bench, vocab, cache_dir, config):
    for shard in ((0, 1), (1, 2)):
        kw = dict(vocab=vocab, batch_size=3, seq_len=96, seed=5, bench=bench, mixture_config=config,
                  shard_index=shard[0], num_shards=shard[1], packing_window=8)
        ref = pipeline.TrainInput(**kw)
        got = loader.CachedTrainInput(**kw, cache_dir=cache_dir)
        assert got.task_names == ref.task_names and got.rates.rates.tolist() == ref.rates.rates.tolist()
        _assert_batches_equal(_take(ref, 12), _take(got, 12))
        assert got.state() == ref.state()
        assert got.truncation_counts() == ref.truncation_counts()
        # The states are interchangeable: the cached input resumes the in-memory one's stream exactly.
        again = loader.CachedTrainInput(**kw, cache_dir=cache_dir)
        again.restore(ref.state())
        _assert_batches_equal(_take(ref, 4), _take(again, 4))


def test_cached_input_resumes_bit_exactly_and_refuses_another_host_count(bench, vocab, cache_dir):
    kw = dict(vocab=vocab, batch_size=2, seq_len=64, seed=1, bench=bench, cache_dir=cache_dir, num_threads=3,
              prefetch=5)
    whole = loader.CachedTrainInput(**kw)
    want = _take(whole, 9)
    first = loader.CachedTrainInput(**kw)
    _take(first, 4)
    state = json.loads(json.dumps(first.state()))   # as the checkpoint stores it
    assert len(state["pending"]) <= fc.DEFAULT_PACKING_WINDOW
    resumed = loader.CachedTrainInput(**kw)
    resumed.restore(state)
    _assert_batches_equal(want[4:], _take(resumed, 5))
    other = loader.CachedTrainInput(**{**kw, "num_shards": 2, "cache_dir": cache_dir})
    with pytest.raises(ValueError, match="resume with 1 host"):
        other.restore(state)


def test_cache_holds_what_the_seqio_task_of_record_yields(bench, vocab, cache_dir):
    import seqio

    from optiml_jax.tasks import registry

    name = "superni_1"
    seqio_name = registry.ensure_registered(bench, vocab, name)
    examples = list(seqio.get_mixture_or_task(seqio_name).get_dataset(
        sequence_length=None, split="train", shuffle=False).as_numpy_iterator())
    entry = {e.name: e for e in cache.entries(cache_dir, cache.plan(bench, pipeline.TRAIN_MIXTURE, vocab))}[name]
    assert entry.count == len(examples) == len(bench.train_examples(name))
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(str(entry.shard))
    for i, ex in enumerate(examples):
        rec = cache.decode_record(reader.read([i])[0])
        assert rec.id == ex["id"].decode() == bench.train_examples(name)[i].id
        np.testing.assert_array_equal(rec.inputs, ex["inputs"])
        np.testing.assert_array_equal(rec.targets, ex["targets"])
        np.testing.assert_array_equal(rec.definition, ex["definition"])
        assert rec.body == ex["body"].decode() and rec.needs_delimiter == bool(ex["needs_delimiter"])
    reader.close()
    meta = entry.meta
    assert meta["tokens"]["target"] == sum(len(ex["targets"]) for ex in examples)
    assert {"data_fp", "content_fp", "render_fp", "vocab_fp"} <= set(meta)


USER_MODULE = '''
"""A user's own seqio Task: reverse the words of a short phrase (registered when gin imports this module)."""
import seqio
import tensorflow as tf

from optiml_jax.tokenizer import OPTVocabulary

PHRASES = [f"apple {i} banana {i % 7} cherry" for i in range(40)]


def dataset_fn(split, shuffle_files, seed=None):
    return tf.data.Dataset.from_tensor_slices({
        "inputs": [f"Reverse the words: {p}" for p in PHRASES],
        "targets": [" " + " ".join(reversed(p.split())) for p in PHRASES]})


vocab = OPTVocabulary.default()
if "user.reverse_words" not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        "user.reverse_words", seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        output_features={k: seqio.Feature(vocab, add_eos=False) for k in ("inputs", "targets")},
        preprocessors=[seqio.preprocessors.tokenize])
'''


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_reverse_task.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    gin_file = tmp_path / "user.gin"
    gin_file.write_text("import user_reverse_task\n"
                        "optiml_jax.mixture_config.extra_tasks = {'user.reverse_words': 0.25}\n")
    yield gin_file
    import seqio

    seqio.TaskRegistry.remove("user.reverse_words")
    sys.modules.pop("user_reverse_task", None)


def test_a_user_seqio_task_is_cached_and_trained_by_name_with_its_rate(bench, vocab, cache_dir, user_module):
    import gin

    from optiml_jax import tasks

    tasks.import_configurables()
    gin.parse_config_files_and_bindings([str(user_module)], [])
    config = gin.get_configurable("optiml_jax.mixture_config")()
    assert config.extra_tasks == {"user.reverse_words": 0.25}
    data = loader.CachedTrainInput(vocab=vocab, batch_size=4, seq_len=128, seed=2, bench=bench,
                                   mixture_config=config, cache_dir=cache_dir)
    user = data.task_names.index("user.reverse_words")
    assert data.task_benchmark["user.reverse_words"] == mx.USER_BENCHMARK
    assert data.rates.rates[user] == pytest.approx(0.25)
    base = pipeline.training_rates(bench, pipeline.TRAIN_MIXTURE, config)[0]
    np.testing.assert_allclose(data.rates.rates[:user], 0.75 * base.rates)
    drawn = data.sampler.task_indices(0, 20000)
    assert abs(np.mean(drawn == user) - 0.25) < 0.01
    # Its examples are trained as the Task gives them: [bos] inputs targets [eos], loss on the targets only.
    from user_reverse_task import PHRASES

    wanted = {tuple(vocab.encode(f"Reverse the words: {p}")): vocab.encode(" " + " ".join(reversed(p.split())))
              for p in PHRASES}
    seen = 0
    for batch in _take(data, 6):
        ids, tgt, w = batch["decoder_task_ids"], batch["decoder_target_tokens"], batch["decoder_loss_weights"]
        seg, inp = batch["decoder_segment_ids"], batch["decoder_input_tokens"]
        for r in range(ids.shape[0]):
            for s in set(seg[r][ids[r] == user].tolist()):
                at = seg[r] == s
                tokens = inp[r][at].tolist()
                assert tokens[0] == vocab.bos_id
                targets = tgt[r][at][w[r][at] > 0].tolist()
                source = tuple(tokens[1:len(tokens) - len(targets) + 1])
                assert source in wanted and targets == wanted[source] + [vocab.eos_id]
                seen += 1
    assert seen > 0
    # The cache now holds it beside the built-in tasks; the CLI with the same gin file finds it complete.
    manifest = json.loads((pathlib.Path(cache_dir) / cache.MANIFEST).read_text())
    assert "user.reverse_words" in manifest["user_tasks"]


def _synth_bench(root: pathlib.Path):
    import gin

    from optiml_jax import tasks
    from optiml_jax.tasks import synth

    synth.write_synth_bench(root, num_tasks=6, examples_per_task=12)
    tasks.import_configurables()
    gin.parse_config_files_and_bindings([str(root / synth.GIN_FILE)], [], skip_unknown=["optiml_jax.train"])
    return pipeline.get_bench(str(root), "custom")


def test_a_stale_cache_is_refused_with_the_rebuild_command_and_rebuilt_task_by_task(tmp_path, vocab, monkeypatch):
    data_dir = tmp_path / "data"
    bench = _synth_bench(data_dir)
    out = tmp_path / "cache"
    p = cache.plan(bench, pipeline.TRAIN_MIXTURE, vocab)
    assert cache.build(out, p, progress=False)["remaining"] == 0
    assert all(why is None for why in cache.status(out, p).values())
    before = {e.name: e.meta["content_fp"] for e in cache.entries(out, p)}

    def change(task_name):
        path = data_dir / "superni" / "tasks" / f"{task_name}.json"
        task = json.loads(path.read_text())
        task["Instances"][0]["output"] = ["a different answer"]
        path.write_text(json.dumps(task))
        pipeline._bench_cached.cache_clear()   # the Bench memoises examples; the file readers key on stamps
        new = pipeline.get_bench(str(data_dir), "custom")
        return new, cache.plan(new, pipeline.TRAIN_MIXTURE, vocab)

    # A training task's file changes: that task, and only it, is stale.
    evaluated = {n for names in bench.eval_tasks.values() for n in names}
    name = next(n for n in bench.train_tasks if n not in evaluated)
    bench2, p2 = change(name)
    stale = {n: why for n, why in cache.status(out, p2).items() if why}
    assert stale == {name: "its data changed since it was cached"}
    with pytest.raises(cache.CacheError, match=f"task '{name}' its data changed.*python -m optiml_jax.tasks cache "
                                               f"--mixture optiml_train --split custom --data_dir {data_dir}"):
        loader.CachedTrainInput(vocab=vocab, batch_size=2, seq_len=64, bench=bench2, cache_dir=out)
    # The training default (no cache_dir) rebuilds just that task, in its own folder.
    monkeypatch.setenv("OPTIML_CACHE_DIR", str(tmp_path / "home"))
    auto = loader.CachedTrainInput(vocab=vocab, batch_size=2, seq_len=64, bench=bench2)
    assert auto.cache_dir_used.parent == tmp_path / "home"
    summary = cache.build(out, p2, progress=False)
    assert summary["built"] == 1 and summary["remaining"] == 0
    after = {e.name: e.meta["content_fp"] for e in cache.entries(out, p2)}
    assert {n for n in after if after[n] != before[n]} == {name}

    # Another vocabulary makes every task stale.
    from optiml_jax.tasks import embedded_vocab
    from optiml_jax.tokenizer import OPTVocabulary

    other = OPTVocabulary.from_dir(embedded_vocab.embedded_tokenizer_dir())
    reasons = set(cache.status(out, cache.plan(bench2, pipeline.TRAIN_MIXTURE, other)).values())
    assert reasons == {"the vocabulary changed since it was cached"}

    # Evaluation data decides which training instances are held out: changing it makes every task stale.
    bench3, p3 = change(sorted(evaluated)[0])
    assert set(cache.status(out, p3).values()) == {"its data changed since it was cached"}


def test_host_shares_of_a_build_are_disjoint_and_complete():
    names = [f"t{i}" for i in range(23)]
    weights = [(i * 37) % 11 + 1 for i in range(23)]
    shares = [cache.host_tasks(names, weights, h, 4) for h in range(4)]
    assert sorted(n for s in shares for n in s) == sorted(names)
    loads = [sum(weights[names.index(n)] for n in s) for s in shares]
    assert max(loads) - min(loads) <= max(weights)


def test_cache_cli_errors_are_one_line(capsys, tmp_path):
    from optiml_jax.tasks import __main__ as tasks_cli

    for argv, wanted in ((["cache", "--out", str(tmp_path)], "cache needs --mixture"),
                         (["cache", "--mixture", "optiml_train", "--out", str(tmp_path), "--workers", "0"],
                          "--workers must be >= 1"),
                         (["cache", "--mixture", "optiml_train", "--out", str(tmp_path), "--host_index", "2",
                           "--num_hosts", "2"], "need 0 <= --host_index < --num_hosts"),
                         (["cache", "--mixture", "optiml_train", "--out", str(tmp_path), "--data_dir",
                           str(tmp_path / "nope")], "no such directory")):
        assert tasks_cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and wanted in err[0], err


def test_sampler_draws_are_the_same_from_many_threads_across_blocks():
    import concurrent.futures

    sampler = mx.MixtureSampler(np.arange(1, 30, dtype=np.float64), seed=3, block=64)
    positions = [int(g) for g in np.random.default_rng(0).integers(0, 64 * 50, size=4000)]
    want = [mx.MixtureSampler(np.arange(1, 30, dtype=np.float64), seed=3, block=64).draw(g) for g in positions]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:   # the grain loader's read threads share one sampler
        got = list(pool.map(sampler.draw, positions))
    assert got == want


def test_a_build_streams_the_bench_and_holds_no_training_task(tmp_path, vocab):
    """Bounded memory at any bench size: the leakage search and the records read each training task once
    without keeping it, so after a build the Bench holds examples of evaluation tasks only."""
    fresh = synthetic_bench()
    summary = cache.build(tmp_path, cache.plan(fresh, pipeline.TRAIN_MIXTURE, vocab), progress=False)
    assert summary["built"] == len(fresh.train_tasks) > 0
    evaluated = {n for names in fresh.eval_tasks.values() for n in names}
    assert set(fresh._examples) | set(fresh._train) <= evaluated
    assert set(fresh.train_tasks) - evaluated
