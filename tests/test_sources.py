"""Loaders of every layout on the real data, and the TFDS builders on a small subset."""
import json
import shutil

import pytest

from optiml_jax.tasks import catalogue as cat
from optiml_jax.tasks import embedded_suite
from optiml_jax.tasks import sources
from optiml_jax.tasks.schema import TaskInfo


@pytest.fixture(scope="module")
def catalogue(real_data_dir):
    return cat.load_catalogue(real_data_dir)


def test_superni_official_test_set(real_data_dir, catalogue):
    """All 119 official test tasks: 11,810 instances with the official references."""
    refs = {}
    with open(real_data_dir / "superni/test_references.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            refs[r["id"]] = tuple(r["references"])
    ss = cat.source_splits(real_data_dir)
    test = sorted(n for n in catalogue if ss[n] == "test")
    assert len(test) == 119
    total = 0
    for name in test:
        exs = sources.load_examples(catalogue[name], real_data_dir)
        assert 0 < len(exs) <= 100
        assert all(e.definition for e in exs)
        for e in exs:
            assert refs[e.id] == e.outputs
        total += len(exs)
    assert total == 11810 == len(refs)


def test_superni_candidates_rule(real_data_dir, catalogue):
    exs = sources.load_examples(catalogue["task020_mctaco_span_based_question"], real_data_dir)
    assert exs[0].candidates == ("No.", "Yes.")
    assert all(e.outputs[0] in e.candidates for e in exs)
    gen = sources.load_examples(catalogue["task1356_xlsum_title_generation"], real_data_dir)
    assert gen[0].candidates == ()


def test_superni_demonstrations_and_skips(real_data_dir, catalogue):
    demos = sources.load_demonstrations(catalogue["task020_mctaco_span_based_question"], real_data_dir)
    assert demos and demos[0].outputs and demos[0].id.endswith("positive-0")
    # Two instances of this real file have only an empty reference: skipped and counted.
    task = catalogue["task1726_mathqa_correct_answer_generation"]
    exs = sources.load_examples(task, real_data_dir)
    report = sources.get_load_report(task.name)
    assert report.skipped["empty_outputs"] == 2 and len(exs) == report.loaded == 98


def test_definition_only_task_gives_no_examples(real_data_dir, catalogue):
    exs = sources.load_examples(catalogue["task001_quoref_question_generation"], real_data_dir)
    assert exs == []
    assert "definition only" in sources.get_load_report("task001_quoref_question_generation").note
    assert not sources.task_available(catalogue["task001_quoref_question_generation"], real_data_dir)


def test_superni_extra(real_data_dir, catalogue):
    exs = sources.load_examples(catalogue["task1759_gsm"], real_data_dir)
    assert len(exs) == 100 and exs[0].outputs == ("18",)  # numeric references become text
    assert exs[0].definition.startswith("Solve the math")
    non_english = sources.load_examples(catalogue["task1239_ted_translation_gl_ja"], real_data_dir)
    assert len(non_english) == 100


def test_cot_tsv(real_data_dir, catalogue):
    path = real_data_dir / "flan_cot/aqua_train.tsv"
    exs = sources.load_examples(catalogue["cot_aqua"], real_data_dir)
    assert len(exs) == catalogue["cot_aqua"].num_instances == len(path.read_bytes().strip().split(b"\n"))
    e = exs[0]
    assert "\nOptions:\n(A)" in e.input and "\\n" not in e.input  # escapes decoded
    # No options: a chain-of-thought task generates its rationale (the catalogue gives Reasoning tasks none).
    assert e.outputs == ("(C)",) and e.rationale and e.candidates == () and catalogue["cot_aqua"].options == ()


def test_bbh(real_data_dir, catalogue):
    bbh = [n for n in catalogue if n.startswith("bbh_")]
    assert len(bbh) == 27
    exs = sources.load_examples(catalogue["bbh_boolean_expressions"], real_data_dir)
    # BBH is scored by exact match on generations (paper Table 14): no options, whatever the label set.
    assert len(exs) == 250 and exs[0].candidates == () and catalogue["bbh_boolean_expressions"].protocol == "generation"
    assert exs[0].definition == "Evaluate the result of a random Boolean expression."
    demos = sources.load_demonstrations(catalogue["bbh_boolean_expressions"], real_data_dir)
    assert len(demos) == 3 and demos[0].rationale.startswith("Let's think step by step")
    assert demos[0].outputs == ("False",)


def test_t0_rendered(real_data_dir, catalogue):
    exs = sources.load_examples(catalogue["ps_adversarial_qa_dbert"], real_data_dir)
    # 5 templates x 200 rendered examples, less the inverted "generate_question" (tests/test_templates.py).
    assert len(exs) == 4 * 200
    assert all(e.definition == "" for e in exs)
    assert len({e.id for e in exs}) == len(exs)
    rt = sources.load_examples(catalogue["ps_glue_qqp"], real_data_dir)
    labelled = [e for e in rt if e.candidates]
    assert labelled and all(e.outputs[0] in e.candidates for e in labelled)
    # P3 ships TREC with empty targets: every instance is skipped and counted, never dropped silently.
    assert sources.load_examples(catalogue["ps_trec"], real_data_dir) == []
    assert sources.get_load_report("ps_trec").skipped["empty_outputs"] == 1400


def test_generic_jsonl_and_caching(tmp_path):
    (tmp_path / "jsonl").mkdir()
    lines = [{"id": "a", "input": "x", "outputs": ["1"], "candidates": ["1", "2"]},
             {"id": "b", "input": "y", "outputs": ["2"], "definition": "Pick.", "rationale": "r"}]
    (tmp_path / "jsonl/crossfit_t.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    task = TaskInfo(name="crossfit_t", benchmark="CrossFit", category="Text Matching")
    exs = sources.load_examples(task, tmp_path)
    assert [e.id for e in exs] == ["a", "b"]
    assert exs[0].candidates == ("1", "2") and exs[1].definition == "Pick." and exs[1].rationale == "r"
    assert sources.task_path(task, tmp_path) == tmp_path / "jsonl/crossfit_t.jsonl"
    info = sources._parse_generic.cache_info()
    sources.load_examples(task, tmp_path)
    assert sources._parse_generic.cache_info().hits == info.hits + 1


def test_missing_data(tmp_path, monkeypatch):
    task = TaskInfo(name="task9999_nothing", benchmark="SuperNI", category="Misc.")
    assert sources.load_examples(task, tmp_path) == []
    assert sources.get_load_report(task.name).note == "no data in the data directory"
    monkeypatch.delenv(cat.DATA_DIR_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="needs a data directory"):
        sources.load_examples(task, None)


def test_embedded_dispatch():
    task = cat.load_catalogue(None)["embedded_ni_add"]
    assert len(sources.load_examples(task, None)) == embedded_suite.NUM_INSTANCES


def _tfds_load(tfds, name, split, out, manual):
    ds = tfds.load(name, split=split, data_dir=str(out), download_and_prepare_kwargs={
        "download_config": tfds.download.DownloadConfig(manual_dir=str(manual))})
    rows = []
    for r in tfds.as_numpy(ds):
        rows.append({k: (v.decode() if isinstance(v, bytes) else [x.decode() for x in v] if hasattr(v, "__len__") and not isinstance(v, (str, bytes)) else v)
                     for k, v in r.items()})
    return rows


def test_tfds_builders_match_sources(real_data_dir, catalogue, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from optiml_jax.tasks import tfds_builders  # noqa: F401  (registers the builders)

    # SuperNI: 3 test + 1 train task in the official layout.
    ni = tmp_path / "ni"
    (ni / "tasks").mkdir(parents=True)
    (ni / "splits/default").mkdir(parents=True)
    train = ["task075_squad1.1_answer_generation"]
    test = ["task020_mctaco_span_based_question", "task1356_xlsum_title_generation",
            "task1557_jfleg_answer_generation"]
    for n in train + test:
        shutil.copy(real_data_dir / "superni/tasks" / f"{n}.json", ni / "tasks")
    (ni / "splits/default/train_tasks.txt").write_text("\n".join(train) + "\n")
    (ni / "splits/default/test_tasks.txt").write_text("\n".join(test) + "\n")
    rows = _tfds_load(tfds, "super_natural_instructions", "test", tmp_path / "out", ni)
    expected = {(n, e.id): e for n in test for e in sources.load_examples(catalogue[n], real_data_dir)}
    assert len(rows) == len(expected)
    for r in rows:
        e = expected[(r["task_name"], r["id"])]
        assert (r["input"], tuple(r["outputs"]), r["definition"], tuple(r["candidates"])) == \
            (e.input, e.outputs, e.definition, e.candidates)
        assert r["category"] == catalogue[r["task_name"]].category

    # BBH: two tasks with their CoT prompt files.
    bbh = tmp_path / "bbh"
    (bbh / "bbh").mkdir(parents=True)
    (bbh / "cot-prompts").mkdir()
    for t in ("boolean_expressions", "navigate"):
        shutil.copy(real_data_dir / "bbh/bbh" / f"{t}.json", bbh / "bbh")
        shutil.copy(real_data_dir / "bbh/cot-prompts" / f"{t}.txt", bbh / "cot-prompts")
    rows = _tfds_load(tfds, "big_bench_hard", "test", tmp_path / "out", bbh)
    exp = {e.id: e for t in ("bbh_boolean_expressions", "bbh_navigate")
           for e in sources.load_examples(catalogue[t], real_data_dir)}
    assert len(rows) == len(exp) == 500
    assert all(tuple(r["outputs"]) == exp[r["id"]].outputs and r["definition"] == exp[r["id"]].definition
               for r in rows)

    # CoT: a 40-line slice of one TSV; generic JSONL: two tiny files.
    cot = tmp_path / "cotdata" / "flan_cot"
    cot.mkdir(parents=True)
    head = (real_data_dir / "flan_cot/qasc_train.tsv").read_bytes().split(b"\n")[:40]
    (cot / "qasc_train.tsv").write_bytes(b"\n".join(head) + b"\n")
    rows = _tfds_load(tfds, "flan_cot", "train", tmp_path / "out", cot)
    task = TaskInfo(name="cot_qasc", benchmark="Reasoning", category="Reasoning")
    exp = {e.id: e for e in sources.load_examples(task, tmp_path / "cotdata")}
    assert len(rows) == len(exp) == 40
    assert all((r["input"], tuple(r["outputs"]), r["rationale"]) ==
               (exp[r["id"]].input, exp[r["id"]].outputs, exp[r["id"]].rationale) for r in rows)
    jl = tmp_path / "jl"
    jl.mkdir()
    for t in ("t5_a", "exmix_b"):
        (jl / f"{t}.jsonl").write_text("\n".join(json.dumps({"id": str(i), "input": f"{t} {i}",
                                                              "outputs": [str(i % 2)]}) for i in range(6)))
    rows = _tfds_load(tfds, "instruction_jsonl", "train", tmp_path / "out", jl)
    assert sorted((r["task_name"], r["id"]) for r in rows) == sorted((t, str(i)) for t in ("t5_a", "exmix_b") for i in range(6))
    # No options in the files and no catalogue rows: generation, however few distinct outputs the files hold.
    assert all(tuple(r["candidates"]) == () for r in rows)


def test_protocol_is_stable_when_half_the_instances_are_removed(real_data_dir, catalogue, tmp_path):
    """Issue 12: how a task is scored comes from its catalogue metadata, so a data directory holding half of a
    task's instances scores every remaining instance the same way. The old rule (a label set inferred from the
    distinct outputs on disk) flips for some of these tasks; the assertion on `flipped` keeps that evidence."""
    superni = real_data_dir / "superni" / "tasks"
    names = sorted(n for n, t in catalogue.items() if t.benchmark == "SuperNI" and (superni / f"{n}.json").is_file())
    half_dir = tmp_path / "half"
    (half_dir / "superni" / "tasks").mkdir(parents=True)
    checked, flipped, ranked = 0, [], 0
    for name in names[::7]:
        task = catalogue[name]
        full = sources.load_examples(task, real_data_dir)
        if len(full) < 8:
            continue
        d = json.loads((superni / f"{name}.json").read_text(encoding="utf-8"))
        d["Instances"] = d["Instances"][::2]
        (half_dir / "superni" / "tasks" / f"{name}.json").write_text(json.dumps(d), encoding="utf-8")
        half = sources.load_examples(task, half_dir)
        by_id = {e.id: e for e in full}
        assert half and all(e.candidates == by_id[e.id].candidates for e in half), name
        assert {bool(e.candidates) for e in half} == {task.protocol == "rank_classification"}, name
        ranked += task.protocol == "rank_classification"
        if cat.label_set(e.outputs for e in full) != cat.label_set(e.outputs for e in half):
            flipped.append(name)
        checked += 1
    assert checked > 50 and ranked > 5
    assert flipped, "expected tasks whose on-disk label set changes when halved"
