"""Split definitions: the paper's split over the catalogue and the embedded split, and invariants."""
import dataclasses

import gin
import pytest

from optiml_jax.tasks import catalogue as cat
from optiml_jax.tasks import embedded_suite, resolved_splits, splits
from optiml_jax.tasks.schema import LEVELS, TaskInfo


@pytest.fixture(scope="module")
def full_catalogue():
    return cat.load_catalogue(None)


@pytest.fixture(scope="module")
def optiml(full_catalogue):
    return splits.resolve(splits.get_split("optiml"), full_catalogue,
                          source_splits=cat.source_splits(None))


@pytest.fixture(scope="module")
def embedded():
    return splits.resolve(splits.get_split("embedded"), embedded_suite.embedded_tasks(), source_splits={})


def _invariants(r: splits.ResolvedSplit, catalogue):
    train_categories = {catalogue[t].category for t in r.train}
    for s in splits.EVAL_SPLITS:
        for t in r.eval[(s, "fully_heldout")]:
            assert catalogue[t].category not in train_categories, t
            assert catalogue[t].category in r.heldout_categories[s]
        for t in r.eval[(s, "partially_heldout")]:
            assert catalogue[t].category in train_categories, t
            assert t not in r.train
        assert set(r.eval[(s, "supervised")]) <= set(r.train)
    for cats in r.heldout_categories.values():
        assert not train_categories & set(cats)
    assert set(r.roles) == set(catalogue)


def test_optiml_split_invariants(optiml, full_catalogue):
    _invariants(optiml, full_catalogue)
    ss = cat.source_splits(None)
    for t in optiml.train:
        assert ss[t] == "train"  # never official test, eval-only or non-default tasks
        assert full_catalogue[t].benchmark not in cat.EMBEDDED_BENCHMARKS
    for c in splits.OPTIML_VALIDATION_CATEGORIES:
        assert c in optiml.heldout_categories["validation"]
    for c in ("Textual Entailment", "Coreference Resolution", "Dialogue Act Recognition",
              "Text Completion", "Word Semantics"):
        assert c in optiml.heldout_categories["test"]


def test_optiml_split_places_paper_tasks(optiml):
    assert optiml.level_of("task1557_jfleg_answer_generation", "validation") == "fully_heldout"
    assert optiml.level_of("flan_copa", "validation") == "fully_heldout"
    assert optiml.level_of("task1344_glue_entailment_classification", "test") == "fully_heldout"
    assert optiml.level_of("ps_super_glue_wic", "test") == "fully_heldout"
    assert optiml.level_of("task309_race_answer_generation", "validation") == "partially_heldout"
    assert optiml.level_of("task700_mmmlu_answer_generation_high_school_chemistry", "validation") == "partially_heldout"
    assert optiml.level_of("task1759_gsm", "validation") == "partially_heldout"
    assert optiml.level_of("flan_bool_q", "test") == "partially_heldout"
    assert optiml.level_of("bbh_navigate", "test") == "partially_heldout"
    assert optiml.level_of("ps_cnn_dailymail_3_0_0", "validation") == "supervised"
    # Source-level de-duplication: GSM8K CoT training data is dropped while GSM8K is evaluated.
    assert optiml.roles["cot_gsm8k"] == "excluded" and "gsm8k" in optiml.excluded["cot_gsm8k"]
    assert optiml.roles["cot_aqua"] == "train"


def test_embedded_split_invariants(embedded):
    tasks = embedded_suite.embedded_tasks()
    _invariants(embedded, tasks)
    for s in splits.EVAL_SPLITS:
        for lv in LEVELS:
            assert embedded.eval[(s, lv)], (s, lv)  # every level is populated
    assert {tasks[t].benchmark for t in embedded.train} == {"Embedded-NI", "Embedded-PS"}


def test_supervised_instances_are_disjoint(embedded):
    name = embedded.eval[("validation", "supervised")][0]
    ids = [e.id for e in embedded_suite.embedded_examples(name)]
    val = {i for i in ids if embedded.heldout_split_of(name, i) == "validation"}
    test = {i for i in ids if embedded.heldout_split_of(name, i) == "test"}
    train = {i for i in ids if embedded.is_train_instance(name, i)}
    assert val and not test  # a validation-supervised task holds out validation instances only
    assert not val & train and val | train == set(ids)
    assert 0.05 < len(val) / len(ids) < 0.15  # heldout_instance_fraction = 0.1
    test_task = embedded.eval[("test", "supervised")][0]
    tids = [e.id for e in embedded_suite.embedded_examples(test_task)]
    assert any(embedded.heldout_split_of(test_task, i) == "test" for i in tids)
    # Instances of non-supervised training tasks are never held out.
    plain = next(t for t in embedded.train if not any(t in embedded.eval[(s, "supervised")]
                                                      for s in splits.EVAL_SPLITS))
    assert not any(embedded.is_heldout_instance(plain, i) for i in range(300))


def test_module_level_heldout_check_is_deterministic(embedded):
    name = embedded.eval[("test", "supervised")][0]
    got = [resolved_splits.is_heldout_instance(name, f"{name}-{k}", "embedded") for k in range(300)]
    assert got == [embedded.is_heldout_instance(name, f"{name}-{k}") for k in range(300)]
    assert any(got)


def test_refuses_training_task_of_heldout_category(embedded):
    bad = dataclasses.replace(embedded, train=embedded.train + ("embedded_ni_entailment",))
    with pytest.raises(splits.SplitError, match=r"embedded_ni_entailment.*'Textual Entailment'"):
        splits.check_no_heldout_training(bad)


def test_available_filter_and_dynamic_level():
    tasks = {
        "a": TaskInfo("a", "SuperNI", "Summarization", source_dataset="s1"),
        "b": TaskInfo("b", "SuperNI", "Summarization", source_dataset="s2"),
        "c": TaskInfo("c", "SuperNI", "Title Generation", source_dataset="s3"),
        "d": TaskInfo("d", "SuperNI", "Title Generation", source_dataset="s4"),
        "e": TaskInfo("e", "SuperNI", "Misc.", source_dataset="s2"),
    }
    split = splits.Split(name="t", test_tasks=("b", "c"))
    r = splits.resolve(split, tasks, source_splits={})
    assert r.train == ("a", "d") and r.level_of("b", "test") == "partially_heldout"
    assert r.excluded["e"].startswith("shares data source 's2'")
    # Without data, "d" cannot train, so Title Generation becomes a fully held-out category.
    r2 = splits.resolve(split, tasks, source_splits={}, available=lambda t: t.name != "d")
    assert r2.level_of("c", "test") == "fully_heldout" and r2.roles["d"] == "excluded"


def test_split_validation_and_registry():
    with pytest.raises(splits.SplitError, match="both validation and test"):
        splits.Split(name="x", validation_categories=("Misc.",), test_categories=("Misc.",))
    with pytest.raises(splits.SplitError, match="heldout_instance_fraction"):
        splits.Split(name="x", heldout_instance_fraction=0.7)
    with pytest.raises(KeyError, match="unknown split 'nope'.*optiml"):
        splits.get_split("nope")


def test_custom_split_through_gin():
    with gin.unlock_config():
        gin.parse_config("""
            custom_split.benchmarks = ["Embedded-*"]
            custom_split.exclude_benchmarks = []
            custom_split.test_categories = ["Mathematics"]
            custom_split.validation_tasks = ["embedded_ni_list_max"]
        """)
    try:
        s = splits.get_split("custom")
        r = splits.resolve(s, embedded_suite.embedded_tasks(), source_splits={})
        assert "embedded_ni_add" in r.eval[("test", "fully_heldout")]
        assert r.level_of("embedded_ni_list_max", "validation") == "partially_heldout"
        assert not any(embedded_suite.embedded_tasks()[t].category == "Mathematics" for t in r.train)
    finally:
        gin.clear_config()
