"""seqio registration: every task, training streams through get_dataset + our converter, eval mixtures."""
import os

import numpy as np
import pytest

os.environ.setdefault("OPTIML_SKIP_REGISTRATION", "1")

seqio = pytest.importorskip("seqio")

from optiml_jax import feature_converters as fc  # noqa: E402
from optiml_jax.tasks import pipeline, registry  # noqa: E402


@pytest.fixture(scope="module")
def vocab():
    from optiml_jax.tokenizer import OPTVocabulary

    return OPTVocabulary.default()


@pytest.fixture()
def synthetic(vocab):
    from test_pipeline import synthetic_bench  # tests/ is on sys.path under pytest

    bench = synthetic_bench()
    names = registry.register_all(vocab=vocab, bench=bench, seq_len=96, force=True)
    yield bench, names
    registry.unregister_all()


def test_every_task_and_mixture_registered(synthetic):
    bench, names = synthetic
    for task in bench.catalogue:
        assert registry.seqio_name(task) in names
        seqio.get_mixture_or_task(registry.seqio_name(task))
    for mix in ("optiml_train", "optiml_max_train", "optiml_validation", "optiml_validation_fully_heldout",
                "optiml_validation_partially_heldout", "optiml_validation_supervised", "optiml_validation_0shot",
                "optiml_validation_5shot", "optiml_validation_supervised_5shot"):
        assert mix in names
        seqio.get_mixture_or_task(mix)
    sub = seqio.get_mixture_or_task("optiml_validation_fully_heldout_5shot")
    assert {t.name for t in sub.tasks} == {registry.seqio_name(n, 5) for n in ("superni_3", "promptsource_2")}
    assert registry.seqio_name("superni_3") == "optiml.superni_3"
    assert registry.seqio_name("a-b c", 5) == "optiml.a:2d:b:20:c.5shot"
    assert registry.seqio_name("a-b") != registry.seqio_name("a_b")


def test_training_stream_via_get_dataset_equals_train_input(synthetic, vocab):
    bench, _ = synthetic
    task = seqio.get_mixture_or_task("optiml_train")
    ds = task.get_dataset(sequence_length=None, split="train", shuffle=False, seed=4,
                          shard_info=seqio.ShardInfo(index=1, num_shards=2), trim_output_features=False)
    conv = fc.CausalLMFeatureConverter(pack=True, bos_id=vocab.bos_id, eos_id=vocab.eos_id, pad_id=vocab.pad_id,
                                       max_length=96)
    rows = list(conv(ds, {"inputs": 96, "targets": 96}).take(6).as_numpy_iterator())
    ref = pipeline.TrainInput(vocab=vocab, batch_size=2, seq_len=96, seed=4, shard_index=1, num_shards=2,
                              bench=bench)
    for i in range(3):
        batch = next(ref)
        for key in fc.BATCH_KEYS:
            np.testing.assert_array_equal(np.stack([rows[2 * i][key], rows[2 * i + 1][key]]), batch[key])
    # The task's metrics follow the catalogue metric; held-out categories never enter training streams.
    names = {ref.task_names[t] for t in range(len(ref.task_names))}
    assert "superni_3" not in names


def test_eval_task_dataset_and_metrics(synthetic):
    task = seqio.get_mixture_or_task(registry.seqio_name("superni_0", 5))
    ex = next(task.get_dataset(sequence_length=None, split="validation", shuffle=False).as_numpy_iterator())
    text = ex["inputs_pretokenized"].decode()
    assert text.startswith("Definition of superni_0.") and ex["inputs"].dtype == np.int32
    assert [f.__name__ for f in task.metric_fns] == ["seqio_rouge_l"]
    with pytest.raises(ValueError):
        seqio.get_mixture_or_task(registry.seqio_name("superni_1", 5))  # not an eval task: no k-shot variant


def test_refuses_training_split_with_heldout_category(vocab):
    from test_pipeline import synthetic_bench

    bench = synthetic_bench()
    bench.train_tasks = bench.train_tasks + ("promptsource_2",)
    with pytest.raises(ValueError, match="'promptsource_2'.*held-out category 'Word Analogy'"):
        registry.register_all(vocab=vocab, bench=bench, force=True)
    registry.unregister_all()


def test_import_registers_embedded_suite_and_real_data(real_data_dir, vocab):
    """The default registration (what `import optiml_jax.tasks` does) on the real data: every task."""
    bench = pipeline.get_bench(str(real_data_dir), "optiml")
    names = set(registry.register_all(vocab=vocab, bench=bench, force=True))
    try:
        assert all(registry.seqio_name(t) in names for t in bench.catalogue)
        assert "optiml_test_fully_heldout_0shot" in names
        ds = seqio.get_mixture_or_task("optiml_train").get_dataset(
            sequence_length=None, split="train", shuffle=False, seed=0, trim_output_features=False)
        conv = fc.CausalLMFeatureConverter(pack=True, bos_id=vocab.bos_id, eos_id=vocab.eos_id,
                                           pad_id=vocab.pad_id, max_length=1024)
        row = next(conv(ds, {"inputs": 1024, "targets": 1024}).as_numpy_iterator())
        assert row["decoder_segment_ids"].max() >= 1 and row["decoder_loss_weights"].sum() > 0
    finally:
        registry.unregister_all()
