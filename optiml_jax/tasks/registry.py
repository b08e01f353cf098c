"""seqio registration of the benchmark (``import optiml_jax.tasks`` calls `register_all`).

Registered names (``<task>`` is the catalogue name; characters seqio rejects become ``:<hex code>:``,
e.g. "-" -> ":2d:"):

- ``optiml.<task>``: one seqio.Task per catalogued task, the definition of record of what is trained on. Its
  "train" split yields the token cache's record features of every training instance (`cache.task_records`:
  ``definition`` / ``inputs`` / ``targets`` token ids, ``needs_delimiter``, ``pretraining``, and the ``id`` /
  ``body`` / ``target_text`` strings MetaICL demonstrations are rendered from); the training stream draws the
  delimiter and demonstrations per position from them (`loader.compose`). "validation" / "test" (where the
  split definition evaluates the task) yield rendered 0-shot prompts as strings. A user's own seqio Task
  (token ``inputs`` / ``targets``) joins a mixture by name with ``mixture_config.extra_tasks``.
- ``optiml.<task>.<k>shot`` for every evaluation task and k in `EVAL_SHOTS_REGISTERED`: k-shot prompts.
- ``optiml_train`` (the split's training tasks) and ``optiml_max_train`` (all tasks, the "Max" variant): one
  seqio.Task each whose source is the pre-mixed, index-based stream of `loader.CachedTrainInput` over the token
  cache (already tokenised; sharding = the sampler's disjoint per-host streams). A 2,000-task seqio.Mixture
  would build one tf.data pipeline per task and be ~300x slower.
- Evaluation mixtures ``optiml_<split>`` (split = validation|test) with sub-mixtures ``optiml_<split>_<level>``,
  ``optiml_<split>_<k>shot`` and ``optiml_<split>_<level>_<k>shot``: seqio.Mixtures over the k-shot tasks.
- BIG-Bench Hard (when the data dir holds ``bbh/``): ``optiml.bbh_<task>.3shot_<mode>`` (mode answer_only|cot,
  split "test", the paper's Table 14 prompts; predictions post-processed to the extracted answer, scored by
  exact match) in the mixtures ``optiml_bbh_3shot_answer_only``, ``optiml_bbh_3shot_cot`` and ``optiml_bbh``.
- BIG-bench JSON tasks join as ``optiml.bigbench_<task>[.<subtask>]`` like every other catalogued task, whenever
  the catalogue finds a BIG-bench source (`catalogue.bigbench_status`).

Task features are ``inputs`` / ``targets`` token ids without BOS/EOS: `feature_converters.CausalLMFeatureConverter`
adds both. Metrics come from `optiml_jax.metrics` by the task's metric.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Sequence

from optiml_jax.tasks import pipeline
from optiml_jax.tasks.schema import LEVELS, TaskInfo

logger = logging.getLogger(__name__)

PREFIX = "optiml."
EVAL_SHOTS_REGISTERED: tuple[int, ...] = (0, 5)
TRAINING_MIXTURES: tuple[str, ...] = (pipeline.TRAIN_MIXTURE, pipeline.MAX_TRAIN_MIXTURE)
_registered: dict[str, Any] = {}
_registered_with: list[Any] = []   # [bench, vocab] of the last register_all


def seqio_name(task_name: str, num_shots: int | None = None) -> str:
    """seqio registry name of a task (optionally its k-shot evaluation variant)."""
    # Injective escaping (catalogue names differ only by "-" vs "_" in places): every character seqio rejects,
    # and ":" itself, becomes ":<hex code>:".
    base = PREFIX + re.sub(r"[^\w.]|[^\x00-\x7f]", lambda m: f":{ord(m.group()):x}:", task_name)
    return base if num_shots is None else f"{base}.{num_shots}shot"


def mixture_name(split: str, level: str | None = None, num_shots: int | None = None) -> str:
    """Name of an evaluation (sub-)mixture."""
    parts = ["optiml", split] + ([level] if level else []) + ([f"{num_shots}shot"] if num_shots is not None else [])
    return "_".join(parts)


def _metric_fns(info: TaskInfo):
    from optiml_jax import metrics

    table = {"rouge_l": metrics.seqio_rouge_l, "exact_match": metrics.seqio_exact_match,
             "accuracy": metrics.seqio_accuracy}
    fns = [table[info.metric]]
    if info.metric != "rouge_l":
        fns.append(metrics.seqio_rouge_l)  # paper: Rouge-L is reported for every generation-style score
    return fns


BBH_MIXTURE = "optiml_bbh"


def bbh_seqio_name(task_name: str, mode: str) -> str:
    """seqio name of a BBH task's 3-shot prompts in one mode."""
    return f"{seqio_name(task_name)}.{pipeline.BBH_SHOTS}shot_{mode}"


def _bbh_postprocessor(mode: str):
    def postprocess(output: Any, example=None, is_target: bool = False) -> str:
        del example
        text = output.decode("utf-8") if isinstance(output, bytes) else str(output)
        if is_target:
            return text.strip()
        answer = pipeline.bbh_extract_answer(text, mode=mode)
        return "" if answer is None else answer  # no answer: scores 0 (targets are never empty)

    return postprocess


def bbh_exact_match_metric(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """seqio metric: mean BBH exact match (0-100) of extracted answers against the targets."""
    if len(targets) != len(predictions):
        raise ValueError(f"bbh_exact_match_metric: {len(targets)} targets but {len(predictions)} predictions")
    scores = [pipeline.bbh_exact_match(p or None, [t]) for t, p in zip(targets, predictions)]
    return {"exact_match": sum(scores) / len(scores) if scores else 0.0}


def _bbh_dataset_fn(bench: pipeline.Bench, name: str, mode: str):
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
        del shuffle_files, seed  # in-memory source; the protocol uses every test item
        if split != "test":
            raise ValueError(f"{bbh_seqio_name(name, mode)}: only the 'test' split exists, got {split!r}")
        return _string_dataset(pipeline.bbh_examples(name, mode=mode, bench=bench))

    return dataset_fn


def _bbh_tasks_with_data(bench: pipeline.Bench) -> list[str]:
    if bench.data_dir is None:
        return []
    from optiml_jax.tasks import sources

    out = []
    for name in pipeline.bbh_task_names(bench=bench):
        path = sources.task_path(bench.info(name), bench.data_dir)
        if path is not None and path.is_file():
            out.append(name)
    return out


def _string_dataset(prompted):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices({
        "inputs": tf.constant([p.source for p in prompted], tf.string),
        "targets": tf.constant([p.target for p in prompted], tf.string),
    })


def records_dataset(records: Sequence[dict]):
    """tf.data of record features (`cache.RECORD_FEATURES`): token lists become int32 vectors."""
    import numpy as np
    import tensorflow as tf

    def ragged(key: str):
        vals = [np.asarray(r[key], np.int32) for r in records]
        flat = np.concatenate(vals) if vals else np.zeros(0, np.int32)
        return tf.RaggedTensor.from_row_lengths(flat, np.asarray([len(v) for v in vals], np.int64))

    def strings(key: str):
        return tf.constant([r[key] for r in records], tf.string, shape=[len(records)])

    return tf.data.Dataset.from_tensor_slices({
        "id": strings("id"), "body": strings("body"), "target_text": strings("target_text"),
        "definition": ragged("definition"), "inputs": ragged("inputs"), "targets": ragged("targets"),
        "needs_delimiter": tf.constant([bool(r["needs_delimiter"]) for r in records], tf.bool, shape=[len(records)]),
        "pretraining": tf.constant([bool(r["pretraining"]) for r in records], tf.bool, shape=[len(records)]),
    })


def _tokenize_strings(dataset, output_features):
    """seqio's tokenize for the output features that are still strings (token features pass through)."""
    import seqio
    import tensorflow as tf

    def fn(features):
        out = dict(features)
        for key, feature in output_features.items():
            if key in out and out[key].dtype == tf.string:
                out[key] = feature.vocabulary.encode_tf(out[key])
        return out

    return seqio.map_over_dataset(fn)(dataset)


def _task_dataset_fn(bench: pipeline.Bench, name: str, num_shots: int, vocab):
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
        del shuffle_files  # in-memory source
        if split == "train":
            # The training instances as the token cache stores them (`cache.task_records`): the stream's
            # delimiter and MetaICL demonstrations are drawn per stream position from these features
            # (`loader.compose`), so the cache of this split trains exactly like `pipeline.TrainInput`.
            from optiml_jax.tasks import cache

            return records_dataset(list(cache.task_records(bench, name, vocab)))
        prompted = pipeline.eval_examples(name, split=split, num_shots=num_shots, seed=seed or 0, bench=bench)
        return _string_dataset(prompted)

    return dataset_fn


def _make_stream_source(bench: pipeline.Bench, mixture: str, vocab, seq_len: int, mixture_config):
    import seqio
    import tensorflow as tf

    class MixedStreamSource(seqio.DataSource):
        """The pre-mixed training stream as a seqio DataSource (ShardInfo -> disjoint host streams)."""

        def __init__(self):
            super().__init__(splits=["train"], num_input_examples=None, caching_permitted=False,
                             performs_internal_shuffling=True)

        @property
        def supports_arbitrary_sharding(self) -> bool:
            return True

        def list_shards(self, split: str) -> Sequence[str]:
            return [split]

        def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                        shard_info=None, *, sequence_length=None, use_cached=False, num_epochs=1):
            del shuffle, sequence_length, use_cached, num_epochs  # the stream is already random and endless
            if split != "train":
                raise ValueError(f"{mixture}: only the 'train' split exists, got {split!r}")
            from optiml_jax.tasks import loader   # the token cache: the stream never loads the whole bench

            index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
            stream = loader.CachedTrainInput(mixture, vocab=vocab, batch_size=1, seq_len=seq_len, seed=seed or 0,
                                             shard_index=index, num_shards=count, bench=bench,
                                             mixture_config=mixture_config)

            def gen():
                for src, tgt, _ in stream.iter_examples():
                    yield {"inputs": src, "targets": tgt}

            return tf.data.Dataset.from_generator(gen, output_signature={
                "inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)})

    return MixedStreamSource()


def register_all(data_dir: str | None = None, split: str | None = None, *, vocab=None, seq_len: int = 2048,
                 mixture_config=None, shots: Sequence[int] = EVAL_SHOTS_REGISTERED,
                 force: bool = False, bench: pipeline.Bench | None = None) -> list[str]:
    """Registers every task and mixture of a split definition; returns the registered names.

    Idempotent: a second call is a no-op unless ``force`` (then everything is re-registered, e.g. with
    another vocabulary or data dir). Refuses (ValueError) a training split containing a task of a held-out
    category. ``bench`` replaces the data layer's view (tests).
    """
    import seqio
    import tensorflow as tf

    if _registered and not force:
        return list(_registered)
    unregister_all()
    bench = bench or pipeline.get_bench(data_dir, split)
    bench.check_training_tasks(bench.training_task_names(pipeline.TRAIN_MIXTURE))
    if vocab is None:
        from optiml_jax.tokenizer import OPTVocabulary

        vocab = OPTVocabulary.default()
    features = {k: seqio.Feature(vocab, add_eos=False, dtype=tf.int32) for k in ("inputs", "targets")}
    eval_splits = {name: [s for s in pipeline.EVAL_SPLITS
                          if any(name in bench.eval_tasks.get((s, lv), ()) for lv in LEVELS)]
                   for name in bench.catalogue}

    def add_task(name: str, source, metric_fns, preprocessors, shuffle_buffer_size=seqio.SHUFFLE_BUFFER_SIZE,
                 postprocess_fn=None):
        _registered[name] = seqio.TaskRegistry.add(
            name, source=source, output_features=features, preprocessors=preprocessors,
            metric_fns=metric_fns, shuffle_buffer_size=shuffle_buffer_size, postprocess_fn=postprocess_fn)

    tokenize = [seqio.preprocessors.tokenize]
    for name, info in sorted(bench.catalogue.items()):
        splits = ["train"] + eval_splits[name]
        # The "train" split is already tokenised (record features); evaluation splits are strings.
        add_task(seqio_name(name), seqio.FunctionDataSource(_task_dataset_fn(bench, name, 0, vocab), splits=splits),
                 _metric_fns(info), [_tokenize_strings])
        if eval_splits[name]:
            for k in shots:
                add_task(seqio_name(name, k),
                         seqio.FunctionDataSource(_task_dataset_fn(bench, name, k, vocab), splits=eval_splits[name]),
                         _metric_fns(info), tokenize)
    for mixture in TRAINING_MIXTURES:
        add_task(mixture, _make_stream_source(bench, mixture, vocab, seq_len, mixture_config), [], [],
                 shuffle_buffer_size=None)  # the stream is already shuffled; a buffer would break resumption

    for s in pipeline.EVAL_SPLITS:
        groups: dict[str, list[str]] = {}
        for level in LEVELS:
            for name in bench.eval_tasks.get((s, level), ()):
                for k in shots:
                    member = seqio_name(name, k)
                    for key in (mixture_name(s), mixture_name(s, level), mixture_name(s, None, k),
                                mixture_name(s, level, k)):
                        groups.setdefault(key, []).append(member)
        for mix, members in groups.items():
            _registered[mix] = seqio.MixtureRegistry.add(mix, sorted(set(members)), default_rate=1.0)

    bbh_members: dict[str, list[str]] = {}
    for name in _bbh_tasks_with_data(bench):
        for mode in pipeline.BBH_MODES:
            member = bbh_seqio_name(name, mode)
            add_task(member, seqio.FunctionDataSource(_bbh_dataset_fn(bench, name, mode), splits=["test"]),
                     [bbh_exact_match_metric], tokenize, postprocess_fn=_bbh_postprocessor(mode))
            bbh_members.setdefault(f"{BBH_MIXTURE}_{pipeline.BBH_SHOTS}shot_{mode}", []).append(member)
            bbh_members.setdefault(BBH_MIXTURE, []).append(member)
    for mix, members in bbh_members.items():
        _registered[mix] = seqio.MixtureRegistry.add(mix, sorted(members), default_rate=1.0)
    _registered_with[:] = [bench, vocab]
    logger.info("registered %d seqio tasks and mixtures (split %s)", len(_registered), bench.split_name)
    return list(_registered)


def ensure_registered(bench: pipeline.Bench, vocab, task_name: str) -> str:
    """The seqio name of a catalogued task, registering the bench with ``vocab`` first unless the last
    `register_all` used this very bench and an equal vocabulary (the token cache reads these Tasks)."""
    if not _registered_with or _registered_with[0] is not bench or _registered_with[1] != vocab:
        register_all(bench=bench, vocab=vocab, force=True)
    return seqio_name(task_name)


def unregister_all() -> None:
    """Removes everything `register_all` added."""
    import seqio

    for name in list(_registered):
        seqio.TaskRegistry.remove(name)
        seqio.MixtureRegistry.remove(name)
        del _registered[name]
    _registered_with.clear()


def registered_names() -> list[str]:
    """Names registered by the last `register_all`."""
    return list(_registered)
