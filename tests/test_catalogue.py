"""The committed task catalogue: completeness against the real data, taxonomy, validation."""
import ast
import collections
import csv
import importlib.resources
import json
import pathlib

import pytest

from optiml_jax.tasks import catalogue as cat
from optiml_jax.tasks import catalogue_builder
from optiml_jax.tasks import splits
from optiml_jax.tasks import taxonomy


@pytest.fixture(scope="module")
def table():
    return {r.info.name: r for r in cat.read_table(cat.CATALOGUE_PATH)}


def test_table_counts_per_benchmark(table):
    counts = collections.Counter(r.info.benchmark for r in table.values())
    assert counts["SuperNI"] == 1613  # the paper's Table 1 count
    assert counts["BBH"] == 27 + 27  # BBH JSON + the BBH tasks of superni_extra
    assert counts["PromptSource"] >= 60 and counts["FLAN"] >= 70
    assert counts["Reasoning"] == 9 + 3  # 9 CoT datasets + GSM8K/StrategyQA/SVAMP eval copies
    assert 1800 <= len(table) <= 2000
    official = collections.Counter(r.source_split for r in table.values() if r.info.benchmark == "SuperNI")
    assert official["test"] == 119 and official["train"] == 756


def test_every_superni_task_file_is_catalogued(real_data_dir, table):
    test_tasks = set((real_data_dir / "superni/splits/default/test_tasks.txt").read_text().split())
    files = sorted((real_data_dir / "superni/tasks").glob("*.json"))
    assert len(files) == 875
    for f in files:
        d = json.loads(f.read_text(encoding="utf-8"))
        row = table[d["Task"]]
        assert row.info.category == cat.map_category(d["Categories"][0]), d["Task"]
        assert row.source_split == ("test" if d["Task"] in test_tasks else "train")
        # SuperNI official test tasks are never trained on.
        if d["Task"] in test_tasks:
            assert row.info.split_role in ("fully_heldout", "partially_heldout"), d["Task"]


def test_all_tasks_catalog_is_covered_once(real_data_dir, table):
    with open(real_data_dir / "superni/all_tasks_catalog.tsv", encoding="utf-8") as f:
        names = [r["task"] for r in csv.DictReader(f, delimiter="\t")]
    keys = {catalogue_builder._superni_alias_key(n) for n in names}
    superni = [n for n, r in table.items() if r.info.benchmark == "SuperNI"]
    assert len(keys) == len(superni) == 1613
    assert {catalogue_builder._superni_alias_key(n) for n in superni} == keys


def test_committed_table_matches_a_fresh_build(real_data_dir, table):
    rebuilt = {r.info.name: r for r in catalogue_builder.build_catalogue(real_data_dir)}
    assert rebuilt.keys() == table.keys()
    diffs = [n for n in table if rebuilt[n] != table[n]]
    assert not diffs, f"tasks/catalogue.tsv is stale for {diffs[:5]}; rerun --build"


def test_roles_are_the_optiml_split(table):
    infos = {n: r.info for n, r in table.items()}
    resolved = splits.resolve(splits.get_split("optiml"), infos,
                              source_splits={n: r.source_split for n, r in table.items()})
    assert {n: r.info.split_role for n, r in table.items()} == dict(resolved.roles)


def test_taxonomy_and_mapping_tables():
    assert len(cat.SUPERNI_CATEGORIES) == 76
    for label, target in cat.CATEGORY_MAP.items():
        assert target in cat.TAXONOMY, label
    for ds, (category, metric) in cat.FLAN_DATASETS.items():
        assert category in cat.TAXONOMY and metric in cat.METRICS, ds
    for ds, (category, _, metric) in cat.PS_DATASETS.items():
        assert category in cat.TAXONOMY and metric in cat.METRICS, ds
    assert cat.map_category("Natural Language Inference") == "Textual Entailment"
    assert cat.map_category("Word Sense Disambiguation") == "Word Semantics"
    assert cat.map_category("Sentence Completion") == "Text Completion"
    with pytest.raises(cat.CatalogueError, match="Made-up Cluster"):
        cat.map_category("Made-up Cluster", where="x.csv:3")


def _tables_text() -> str:
    return importlib.resources.files("optiml_jax.tasks").joinpath(cat.TABLES_FILE).read_text(encoding="utf-8")


def test_taxonomy_file_is_well_formed_and_is_what_the_module_holds():
    tables = taxonomy.parse_tables(_tables_text())
    assert tables["superni_categories"] == cat.SUPERNI_CATEGORIES and tables["category_map"] == cat.CATEGORY_MAP
    assert tables["ps_datasets"] == cat.PS_DATASETS and tables["cot_datasets"] == cat.COT_DATASETS
    assert len(cat.TAXONOMY) == len(set(cat.TAXONOMY)) == 76 + len(cat.EXTRA_CATEGORIES)
    assert taxonomy.METRICS == cat.METRICS  # the tables' metrics are the catalogue's
    assert cat.SUPERNI_EXACT_MATCH_CATEGORIES <= set(cat.SUPERNI_CATEGORIES)
    assert all(isinstance(v, tuple) and len(v) == 2 for v in cat.FLAN_DATASETS.values())
    assert all(isinstance(v, tuple) and len(v) == 3 for v in cat.PS_DATASETS.values())
    # Chain-of-thought short names become task names: distinct, and the builder's "cot_" prefix stays unique.
    shorts = [short for short, _ in cat.COT_DATASETS.values()]
    assert len(shorts) == len(set(shorts))
    # Aliases are final: normalizing a canonical spelling again leaves it unchanged.
    for alias, canonical in cat.SOURCE_ALIASES.items():
        assert cat.normalize_source(alias) == canonical == cat.normalize_source(canonical), alias
    assert cat.normalize_source("SQuAD 1.1") == "squad_v1"


def test_taxonomy_file_ships_as_package_data():
    setup = ast.parse((pathlib.Path(__file__).resolve().parents[1] / "setup.py").read_text())
    package_data = next(kw.value for node in ast.walk(setup) if isinstance(node, ast.Call)
                        for kw in node.keywords if kw.arg == "package_data")
    assert cat.TABLES_FILE in ast.literal_eval(package_data)["optiml_jax.tasks"]


@pytest.mark.parametrize("old,new,match", [
    ('  "NLI": "Textual Entailment"', '  "NLI": "Textual Entailment"\n  "NLI": "Misc."', r"key 'NLI' given twice"),
    ('"Hate Speech Detection": "Toxic Language Detection"', '"Hate Speech Detection": "Toxic Talk"',
     r"category_map\['Hate Speech Detection'\] = 'Toxic Talk' is not in the taxonomy"),
    ('"aeslc": ["Summarization", "rouge_l"]', '"aeslc": ["Summarization", "bleu"]', r"metric 'bleu'"),
    ('"aeslc": ["Summarization", "rouge_l"]', '"aeslc": ["Summarization"]',
     r"flan_datasets\['aeslc'\]: expected a list of 2"),
    ('"cot_gsm8k": ["gsm8k", "gsm8k"]', '"cot_gsm8k": ["gsm8k", ""]', r"cot_datasets\['cot_gsm8k'\]"),
    ('  - "Logical Reasoning"', '  - "Logical Reasoning"\n  - "Reasoning"', r"lists \['Reasoning'\] more than once"),
    ('  - "Logical Reasoning"', '  - "Logical Reasoning"\n  - "Translation"', r"'Translation'\] is a SuperNI category"),
    ('  "gsm": "gsm8k"', '  "GSM-8k": "gsm8k"', r"key 'GSM-8k' is not a normalized"),
    ('  "gsm": "gsm8k"', '  gsm: yes', r"source_aliases\['gsm'\]: expected a non-empty string, got True"),
    ("cot_datasets:", "chain_of_thought:", r"expected exactly the tables"),
])
def test_parse_tables_rejects_malformed_tables(old, new, match):
    text = _tables_text()
    assert text.count(old) == 1, old
    with pytest.raises(cat.CatalogueError, match=match) as e:
        taxonomy.parse_tables(text.replace(old, new), where="taxonomy.yaml")
    assert str(e.value).startswith("taxonomy.yaml: ")


def test_categories_of_other_benchmarks(table):
    assert table["flan_copa"].info.category == "Cause Effect Classification"  # Table 15
    assert table["flan_anli_r1"].info.category == "Textual Entailment"
    assert table["ps_super_glue_wic"].info.category == "Word Semantics"
    assert table["ps_winogrande_winogrande_xl"].info.category == "Coreference Resolution"
    assert table["ps_story_cloze_2016"].info.category == "Text Completion"
    assert table["cot_gsm8k"].info.category == "Reasoning"
    for r in table.values():
        assert r.info.category in cat.TAXONOMY
        assert r.info.instruction_level == ("instance" if r.info.benchmark in ("FLAN", "PromptSource") else "task")


def test_ps_template_mapping():
    assert cat.ps_dataset_of("adversarial_qa_dbert_based_on") == "adversarial_qa_dbert"
    assert cat.ps_dataset_of("cos_e_v1.11_rationale") == "cos_e_v1_11"
    assert cat.ps_dataset_of("anli_GPT_3_style_r2_score_eval") == "anli_r2"
    assert cat.ps_dataset_of("cnn_dailymail_3.0.0_tldr_summary") == "cnn_dailymail_3_0_0"
    assert cat.ps_dataset_of("no_such_dataset_template") is None


def test_load_catalogue_adds_embedded_and_user_rows(tmp_path):
    base = cat.load_catalogue(tmp_path)
    emb = [n for n, t in base.items() if t.benchmark in cat.EMBEDDED_BENCHMARKS]
    assert len(emb) >= 36
    (tmp_path / "jsonl").mkdir()
    # A user table may leave out the optional "options" column.
    header = "\t".join(c for c in cat.COLUMNS if c not in cat.OPTIONAL_COLUMNS)
    (tmp_path / "jsonl/catalogue.tsv").write_text(
        header + "\ncrossfit_example\tCrossFit\tsome_data\tText Matching\tinstance\taccuracy\ttrain\t10\ttrain\n")
    cat._cached_rows.cache_clear()
    with_user = cat.load_catalogue(tmp_path)
    assert with_user["crossfit_example"].benchmark == "CrossFit"
    assert with_user["crossfit_example"].options == () and with_user["crossfit_example"].protocol == "generation"
    assert len(with_user) == len(base) + 1
    (tmp_path / "jsonl/catalogue.tsv").write_text(
        "\t".join(cat.COLUMNS) + "\ncrossfit_example\tCrossFit\tsome_data\tText Matching\tinstance\taccuracy\t"
        'train\t10\ttrain\t["no", "yes\\tand tab"]\n')
    cat._cached_rows.cache_clear()
    info = cat.load_catalogue(tmp_path)["crossfit_example"]
    assert info.options == ("no", "yes\tand tab") and info.protocol == "rank_classification"


@pytest.mark.parametrize("column,value,match", [
    ("benchmark", "NotABenchmark", "field 'benchmark'"),
    ("category", "Sorting Things", "field 'category'"),
    ("metric", "bleu", "field 'metric'"),
    ("num_instances", "many", "field 'num_instances'"),
    ("options", '["only one"]', "field 'options'"),
    ("options", "yes|no", "field 'options'"),
])
def test_read_table_names_line_and_field(tmp_path, column, value, match):
    fields = dict(name="t1", benchmark="SuperNI", source_dataset="s", category="Misc.",
                  instruction_level="task", metric="rouge_l", split_role="train",
                  num_instances="3", source_split="train", options="")
    fields[column] = value
    p = tmp_path / "cat.tsv"
    p.write_text("\t".join(cat.COLUMNS) + "\n" + "\t".join(fields[c] for c in cat.COLUMNS) + "\n")
    with pytest.raises(cat.CatalogueError, match=match) as e:
        cat.read_table(p)
    assert f"{p}:2" in str(e.value)


def test_read_table_rejects_duplicates(tmp_path):
    row = "t1\tSuperNI\ts\tMisc.\ttask\trouge_l\ttrain\t3\ttrain\t"
    p = tmp_path / "cat.tsv"
    p.write_text("\t".join(cat.COLUMNS) + f"\n{row}\n{row}\n")
    with pytest.raises(cat.CatalogueError, match=r"cat.tsv:3: duplicate task name 't1'"):
        cat.read_table(p)


def test_secondary_metrics(table):
    te = table["task1344_glue_entailment_classification"].info
    assert te.metric == "rouge_l" and cat.secondary_metrics(te) == ("exact_match",)
    assert cat.secondary_metrics(table["task1356_xlsum_title_generation"].info) == ()


def test_data_dir_resolution(monkeypatch, tmp_path):
    from optiml_jax import data_dir as data_dir_lib

    monkeypatch.setenv(cat.DATA_DIR_ENV, str(tmp_path))
    assert data_dir_lib.data_dir() == str(tmp_path)
    monkeypatch.setenv(cat.DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="OPTIML_DATA_DIR"):
        data_dir_lib.data_dir()
    with pytest.raises(FileNotFoundError, match="data_dir"):
        cat.resolve_data_dir(tmp_path / "nope")


def test_find_real_data_dir_precedence_and_pass_over(monkeypatch, tmp_path):
    from optiml_jax.data_dir import find_real_data_dir

    explicit, env, fallback, empty = (tmp_path / n for n in ("explicit", "env", "fallback", "empty"))
    for d in (explicit, env, fallback):
        (d / "superni").mkdir(parents=True)
    empty.mkdir()
    monkeypatch.setenv(cat.DATA_DIR_ENV, str(env))
    assert find_real_data_dir(explicit, fallbacks=[fallback]) == explicit
    assert find_real_data_dir(None, fallbacks=[fallback]) == env
    # A folder without the data is passed over, not an error (data_dir() would raise for a missing one).
    assert find_real_data_dir(empty, fallbacks=[fallback]) == env
    monkeypatch.setenv(cat.DATA_DIR_ENV, str(tmp_path / "missing"))
    assert find_real_data_dir(None, fallbacks=[None, empty, fallback]) == fallback
    assert find_real_data_dir(None, fallbacks=[empty]) is None
    assert find_real_data_dir(None, fallbacks=[fallback], marker="flan") is None
