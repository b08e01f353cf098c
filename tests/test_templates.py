"""PromptSource template metadata: P3 name matching, inverted-template skips, fixed answer choices."""
import collections
import json
import lzma

import pytest

from optiml_jax.tasks import catalogue as cat
from optiml_jax.tasks import sources
from optiml_jax.tasks.schema import TaskInfo

AG_NEWS = TaskInfo(name="ps_ag_news", benchmark="PromptSource", category="Text Categorization",
                   instruction_level="instance", metric="accuracy")


# ----- pure helpers ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset, subset, name, expected", [
    ("cos_e", "v1.11", "aligned with common sense", "cos_e_v1_11_aligned_with_common_sense"),
    ("sciq", None, "Direct Question (Closed Book)", "sciq_Direct_Question_Closed_Book_"),
    ("common_gen", None, "Given concepts - type 2", "common_gen_Given_concepts_type_2"),
    ("duorc", "ParaphraseRC", "answer_question", "duorc_ParaphraseRC_answer_question"),
    ("Zaid/coqa_expanded", None, "a.b", "Zaid_coqa_expanded_a_b"),
])
def test_p3_template_name(dataset, subset, name, expected):
    assert sources.p3_template_name(dataset, subset, name) == expected


def test_fixed_answer_choices():
    assert sources.fixed_answer_choices("No ||| Yes") == ("No", "Yes")
    assert sources.fixed_answer_choices(" 1 star|||2 stars ||| 1 star ") == ("1 star", "2 stars")
    assert sources.fixed_answer_choices("{{option1}} ||| {{option2}}") == ()
    assert sources.fixed_answer_choices("{% for c in choices %}{{c}}|||{% endfor %}") == ()
    assert sources.fixed_answer_choices("Yes") == ()       # one option is no label set
    assert sources.fixed_answer_choices(None) == ()


# ----- templates.yaml reading -----------------------------------------------------------------------------------

def _template_yaml(entries, dataset="ag_news", subset=None):
    """A templates.yaml in PromptSource's layout; entries: (id, name, original_task, answer_choices)."""
    lines = [f"dataset: {dataset}"] + ([f"subset: {subset}"] if subset else []) + ["templates:"]
    for tid, name, original, choices in entries:
        lines += [f"  {tid}: !Template",
                  f"    answer_choices: {json.dumps(choices) if choices is not None else 'null'}",
                  f"    id: {tid}",
                  "    jinja: '{{text}} ||| {{label}}'",
                  "    metadata: !TemplateMetadata",
                  "      choices_in_prompt: false",
                  f"      original_task: {json.dumps(original)}",
                  f"    name: {json.dumps(name)}"]
    return "\n".join(lines) + "\n"


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_reader_and_its_errors(tmp_path):
    p = _write(tmp_path / "ag_news/templates.yaml", _template_yaml(
        [("t1", "classify it", True, "A ||| B"), ("t2", "write (inverted)", False, None)]))
    metas = sources.load_promptsource_templates(p)
    assert [(m.p3_name, m.original_task, m.answer_choices) for m in metas] == [
        ("ag_news_classify_it", True, ("A", "B")), ("ag_news_write_inverted_", False, ())]

    bad = _write(tmp_path / "b1/templates.yaml", "dataset: x\ntemplates:\n  t1: !Template\n    name: [unclosed\n")
    with pytest.raises(sources.DataError, match=r"b1/templates.yaml:\d+: malformed PromptSource templates.yaml"):
        sources.load_promptsource_templates(bad)
    # The safe loader refuses Python object tags instead of executing them.
    evil = _write(tmp_path / "b2/templates.yaml", "dataset: x\ntemplates: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(sources.DataError, match=r"b2/templates.yaml:\d+: malformed"):
        sources.load_promptsource_templates(evil)
    wrong = _write(tmp_path / "b3/templates.yaml", _template_yaml([("t1", "n", "yes", None)], dataset="x"))
    with pytest.raises(sources.DataError, match=r"b3/templates.yaml: templates\['t1'\]: field "
                                                r"'metadata.original_task' must be true or false"):
        sources.load_promptsource_templates(wrong)
    nameless = _write(tmp_path / "b4/templates.yaml", "dataset: x\ntemplates:\n  t1: !Template\n    id: t1\n")
    with pytest.raises(sources.DataError, match=r"b4/templates.yaml: templates\['t1'\]: field 'name'"):
        sources.load_promptsource_templates(nameless)
    no_dataset = _write(tmp_path / "b5/templates.yaml", "templates: {}\n")
    with pytest.raises(sources.DataError, match="b5/templates.yaml: field 'dataset'"):
        sources.load_promptsource_templates(no_dataset)


# ----- T0 loading on a synthetic data dir -----------------------------------------------------------------------

def _t0_data(tmp_path, with_templates=True):
    """ag_news rendered through 4 templates: original with fixed choices, inverted, unknown to
    PromptSource, and original with options that miss a reference."""
    recs = []
    for i in range(6):
        recs.append({"template": "ag_news_classify_it", "input": f"news {i}", "target": "B"})
        recs.append({"template": "ag_news_write_inverted_", "input": f"label {i}", "target": f"news {i}"})
        recs.append({"template": "ag_news_not_in_promptsource", "input": f"n {i}", "target": "x"})
        recs.append({"template": "ag_news_partial_options", "input": f"p {i}", "target": "C" if i else "A"})
    _write(tmp_path / "t0_p3/sample.jsonl", "\n".join(json.dumps(r) for r in recs))
    if with_templates:
        _write(tmp_path / "promptsource/templates/ag_news/templates.yaml", _template_yaml([
            ("t1", "classify it", True, "A ||| B ||| C ||| D"),
            ("t2", "write (inverted)", False, None),
            ("t3", "partial options", True, "A ||| B")]))


def test_t0_inverted_templates_are_skipped_and_counted(tmp_path):
    _t0_data(tmp_path)
    exs = sources.load_examples(AG_NEWS, tmp_path)
    report = sources.get_load_report(AG_NEWS.name)
    assert report.skipped[sources.INVERTED_TEMPLATE] == 6
    assert not any(e.id.startswith("ag_news_write_inverted_") for e in exs)
    assert report.loaded == len(exs) == 18
    assert report.flagged[sources.TEMPLATE_NOT_FOUND] == 6            # unknown template: kept, flagged
    assert report.flagged[sources.CHOICES_MISS_REFERENCE] == 5           # the 5 "C" instances of t3
    assert "inverted template=6" in report.summary()
    by_template = collections.defaultdict(list)
    for e in exs:
        by_template[e.id.rsplit("-", 1)[0]].append(e)
    # Fixed options give the full label set although the sample only contains "B".
    assert {e.candidates for e in by_template["ag_news_classify_it"]} == {("A", "B", "C", "D")}
    # Options without "C" cannot score the "C" instances right: those are generated instead; the "A" one is
    # ranked over the template's options (never over a label set inferred from the sample).
    assert [e.candidates for e in by_template["ag_news_partial_options"]] == [("A", "B")] + [()] * 5
    assert {e.candidates for e in by_template["ag_news_not_in_promptsource"]} == {()}

    (audit,) = sources.t0_template_audit(tmp_path)
    assert (audit.templates, audit.matched_exact, audit.matched_loose) == (4, 3, 0)
    assert audit.unmatched == ("ag_news_not_in_promptsource",) and audit.ambiguous == ()
    assert audit.inverted == ("ag_news_write_inverted_",) and audit.instances_dropped == 6
    assert audit.fixed_choice_templates == 2   # t1 and t3: both give their options (t3 to its "A" instance)


def test_t0_loose_spelling_and_missing_templates_folder(tmp_path):
    _t0_data(tmp_path)
    meta = sources.match_p3_template("AG_NEWS_Write_Inverted", tmp_path)  # re-cased, no trailing "_"
    assert meta is not None and meta.original_task is False and meta.name == "write (inverted)"
    assert sources.match_p3_template("ag_news_unknown", tmp_path) is None

    bare = tmp_path / "bare"
    _t0_data(bare, with_templates=False)
    exs = sources.load_examples(AG_NEWS, bare)
    report = sources.get_load_report(AG_NEWS.name)
    # Without metadata nothing can be recognised as inverted: everything is kept and flagged.
    assert len(exs) == 24 and report.flagged[sources.TEMPLATE_NOT_FOUND] == 24
    assert sources.INVERTED_TEMPLATE not in report.skipped


# ----- real data ------------------------------------------------------------------------------------------------

def test_all_real_templates_parse(real_data_dir):
    root = real_data_dir / sources.PS_TEMPLATES_DIR
    metas = [m for p in sorted(root.rglob("templates.yaml")) for m in sources.load_promptsource_templates(p)]
    assert len(metas) == 2085
    assert collections.Counter(m.original_task for m in metas) == {True: 1535, False: 550}
    assert sum(bool(m.answer_choices) for m in metas) > 500


def test_real_t0_template_audit(real_data_dir):
    (audit,) = sources.t0_template_audit(real_data_dir)
    with lzma.open(real_data_dir / "t0_p3/t0_train_50k_all.jsonl.xz", "rt", encoding="utf-8") as f:
        per_template = collections.Counter(json.loads(line)["template"] for line in f)
    # Every P3 template name of the sample has exactly one PromptSource entry under P3's own spelling.
    assert audit.templates == len(per_template) == 283
    assert audit.matched_exact == 283 and audit.unmatched == () and audit.ambiguous == ()
    assert len(audit.inverted) == 73
    assert audit.instances_dropped == sum(per_template[t] for t in audit.inverted) == 13377
    assert {"adversarial_qa_dbert_generate_question", "wiki_qa_Jeopardy_style",
            "duorc_SelfRC_build_story_around_qa"} <= set(audit.inverted)
    assert audit.fixed_choice_templates == 81   # CommonsenseQA's letter template through TEMPLATE_CHOICE_FIXES


def test_real_t0_tasks_after_template_filtering(real_data_dir):
    catalogue = cat.load_catalogue(real_data_dir)
    qa = sources.load_examples(catalogue["ps_adversarial_qa_dbert"], real_data_dir)
    assert len(qa) == 4 * 200          # 5 templates, "generate_question" inverts the task
    assert sources.get_load_report("ps_adversarial_qa_dbert").skipped[sources.INVERTED_TEMPLATE] == 200
    assert not any(e.id.startswith("adversarial_qa_dbert_generate_question") for e in qa)
    # QuaRel's five P3 templates are all marked as not the original task.
    assert sources.load_examples(catalogue["ps_quarel"], real_data_dir) == []
    assert sources.get_load_report("ps_quarel").skipped[sources.INVERTED_TEMPLATE] == 1000
    # DBpedia: each template's sample holds a single label; the template's list gives all 14.
    dbp = sources.load_examples(catalogue["ps_dbpedia_14"], real_data_dir)
    assert dbp and all(len(e.candidates) == 14 and e.outputs[0] in e.candidates for e in dbp)
    assert len({e.outputs[0] for e in dbp}) < 14
    # CommonsenseQA's letter template lists A-D but its targets include E: the reviewed fix table gives A-E.
    csqa = [e for e in sources.load_examples(catalogue["ps_commonsense_qa"], real_data_dir)
            if e.id.startswith("commonsense_qa_question_to_answer_index")]
    assert csqa and all(e.candidates == ("A", "B", "C", "D", "E") for e in csqa)
    assert any(e.outputs == ("E",) for e in csqa)
    assert sources.get_load_report("ps_commonsense_qa").flagged[sources.CHOICES_MISS_REFERENCE] == 0
