"""Every kind of bad data gives an error naming file and field, or a counted and reported skip."""
import gzip
import json
import logging

import pytest

from optiml_jax.tasks import sources
from optiml_jax.tasks.schema import TaskInfo

NI = TaskInfo(name="task9001_bad", benchmark="SuperNI", category="Misc.")
GENERIC = TaskInfo(name="t5_bad", benchmark="T5", category="Misc.")


def _good_task(**overrides):
    d = {"Definition": ["Do it."], "Positive Examples": [{"input": "a", "output": "b"}],
         "Instances": [{"id": "i1", "input": "x", "output": ["y"]},
                       {"id": "i2", "input": "x2", "output": ["y2"]}]}
    d.update(overrides)
    return d


def _write_ni(tmp_path, content):
    d = tmp_path / "superni" / "tasks"
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{NI.name}.json"
    p.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return p


def _write_jsonl(tmp_path, lines):
    d = tmp_path / "jsonl"
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{GENERIC.name}.jsonl"
    p.write_bytes(b"\n".join(x if isinstance(x, bytes) else json.dumps(x).encode() for x in lines))
    return p


def test_good_file_loads(tmp_path):
    _write_ni(tmp_path, _good_task())
    exs = sources.load_examples(NI, tmp_path)
    assert [e.id for e in exs] == ["i1", "i2"] and exs[0].definition == "Do it."


def test_malformed_json(tmp_path):
    p = _write_ni(tmp_path, b'{"Definition": ["x"], "Instances": [}')
    with pytest.raises(sources.DataError, match="malformed JSON") as e:
        sources.load_examples(NI, tmp_path)
    assert f"{p}:1:" in str(e.value)
    q = _write_jsonl(tmp_path, [{"id": "1", "input": "a", "outputs": ["b"]}, b'{"id": "2", "input": '])
    with pytest.raises(sources.DataError, match=r"t5_bad.jsonl:2:\d+: malformed JSON"):
        sources.load_examples(GENERIC, tmp_path)
    assert q.exists()


@pytest.mark.parametrize("field", ["Definition", "Instances"])
def test_missing_file_level_field(tmp_path, field):
    d = _good_task()
    del d[field]
    p = _write_ni(tmp_path, d)
    with pytest.raises(sources.DataError, match=f"missing field '{field}'") as e:
        sources.load_examples(NI, tmp_path)
    assert str(p) in str(e.value)


def test_missing_instance_fields_are_counted_skips(tmp_path, caplog):
    insts = [{"id": "i1", "input": "x", "output": ["y"]}, {"id": "i2", "output": ["y"]},
             {"id": "i3", "input": "x3"}, {"input": "x4", "output": ["z"]}]
    _write_ni(tmp_path, _good_task(Instances=insts))
    with caplog.at_level(logging.WARNING, logger="optiml_jax.tasks.sources"):
        exs = sources.load_examples(NI, tmp_path)
    assert [e.id for e in exs] == ["i1"]
    report = sources.get_load_report(NI.name)
    assert dict(report.skipped) == {"missing_field:input": 1, "missing_field:output": 1,
                                    "missing_field:id": 1}
    assert report.loaded == 1
    assert "missing_field:input=1" in caplog.text  # logged, not silent


def test_empty_outputs(tmp_path):
    insts = [{"id": "i1", "input": "x", "output": ["y", ""]}, {"id": "i2", "input": "x", "output": [""]},
             {"id": "i3", "input": "x", "output": []}]
    _write_ni(tmp_path, _good_task(Instances=insts))
    exs = sources.load_examples(NI, tmp_path)
    assert [(e.id, e.outputs) for e in exs] == [("i1", ("y",))]
    report = sources.get_load_report(NI.name)
    assert report.skipped["empty_outputs"] == 2
    assert report.fixed["empty_reference_dropped"] == 2
    _write_jsonl(tmp_path, [{"id": "1", "input": "a", "outputs": []}, {"id": "2", "input": "b", "outputs": ["c"]}])
    assert len(sources.load_examples(GENERIC, tmp_path)) == 1
    assert sources.get_load_report(GENERIC.name).skipped["empty_outputs"] == 1


def test_non_utf8(tmp_path):
    raw = json.dumps(_good_task()).encode().replace(b'"x2"', b'"x\xff2"')
    p = _write_ni(tmp_path, raw)
    with pytest.raises(sources.DataError, match="not valid UTF-8") as e:
        sources.load_examples(NI, tmp_path)
    assert str(p) in str(e.value)
    _write_jsonl(tmp_path, [{"id": "1", "input": "a", "outputs": ["b"]}, b'{"id": "2", "input": "\xc3\x28"}'])
    with pytest.raises(sources.DataError, match=r"t5_bad.jsonl:2: not valid UTF-8"):
        sources.load_examples(GENERIC, tmp_path)


def test_duplicate_ids(tmp_path):
    insts = [{"id": "i1", "input": "x", "output": ["y"]}, {"id": "i1", "input": "z", "output": ["w"]}]
    p = _write_ni(tmp_path, _good_task(Instances=insts))
    with pytest.raises(sources.DataError, match="field 'id': duplicate instance id 'i1'") as e:
        sources.load_examples(NI, tmp_path)
    assert str(p) in str(e.value)
    _write_jsonl(tmp_path, [{"id": "7", "input": "a", "outputs": ["b"]}, {"id": "7", "input": "c", "outputs": ["d"]}])
    with pytest.raises(sources.DataError, match=r"t5_bad.jsonl:2: field 'id': duplicate .*first on line 1"):
        sources.load_examples(GENERIC, tmp_path)


def test_bad_field_types(tmp_path):
    _write_ni(tmp_path, _good_task(Definition={"not": "text"}))
    with pytest.raises(sources.DataError, match="field 'Definition'"):
        sources.load_examples(NI, tmp_path)
    _write_ni(tmp_path, _good_task(Instances={"i1": 1}))
    with pytest.raises(sources.DataError, match="field 'Instances' must be a list"):
        sources.load_examples(NI, tmp_path)
    _write_jsonl(tmp_path, [{"id": "1", "input": "a", "outputs": ["b"], "candidates": "b"}])
    with pytest.raises(sources.DataError, match="field 'candidates'"):
        sources.load_examples(GENERIC, tmp_path)


def test_bad_cot_and_bbh_and_extra(tmp_path):
    cot = tmp_path / "flan_cot"
    cot.mkdir()
    (cot / "gsm8k_train.tsv").write_text("q1\t1\tr1\nq2 with no tabs\n")
    task = TaskInfo(name="cot_gsm8k", benchmark="Reasoning", category="Reasoning")
    with pytest.raises(sources.DataError, match=r"gsm8k_train.tsv:2: expected 3 tab-separated fields"):
        sources.load_examples(task, tmp_path)
    (tmp_path / "bbh/bbh").mkdir(parents=True)
    (tmp_path / "bbh/bbh/navigate.json").write_text(json.dumps({"canary": "x"}))
    with pytest.raises(sources.DataError, match="navigate.json: missing field 'examples'"):
        sources.load_examples(TaskInfo(name="bbh_navigate", benchmark="BBH", category="Reasoning"), tmp_path)
    extra = tmp_path / "superni_extra"
    (extra / "instances_extra").mkdir(parents=True)
    with gzip.open(extra / "instances_extra/task9002_x.jsonl.gz", "wt") as f:
        f.write(json.dumps({"id": "a", "input": "b", "output": ["c"]}))
    (extra / "tasks_extra.jsonl").write_text(json.dumps({"name": "task9003_other", "Definition": ["d"]}))
    with pytest.raises(sources.DataError, match="tasks_extra.jsonl: no record named 'task9002_x'"):
        sources.load_examples(TaskInfo(name="task9002_x", benchmark="SuperNI", category="Misc."), tmp_path)
