"""BBH derived from BIG-bench task JSONs (optiml_jax.tasks.bbh) against the published BBH files."""
from __future__ import annotations

import json

import pytest

from optiml_jax import data as data_cli
from optiml_jax.tasks import bbh
from optiml_jax.tasks import bigbench as bb

# Published (input, target) pairs found among the renderings of the first 50 items of each BIG-bench task.
FIRST50_FOUND = {
    "disambiguation_qa": 47, "dyck_languages": 17, "logical_deduction_three_objects": 38,
    "logical_deduction_five_objects": 23, "logical_deduction_seven_objects": 18, "navigate": 15,
    "penguins_in_a_table": 48, "reasoning_about_colored_objects": 7, "salient_translation_error_detection": 15,
    "sports_understanding": 18, "tracking_shuffled_objects_three_objects": 20,
    "tracking_shuffled_objects_five_objects": 11, "tracking_shuffled_objects_seven_objects": 8, "word_sorting": 7,
    "causal_judgement": 45, "snarks": 47, "movie_recommendation": 22, "ruin_names": 26, "geometric_shapes": 31,
}
EXACT = [t for t, (f, n) in bbh.MEASURED_MATCH.items() if f == n]


@pytest.fixture(scope="module")
def first50(real_data_dir):
    p = bb.find_first50(real_data_dir)
    if p is None:
        pytest.skip("no bigbench_tasks_first50.jsonl.xz in the data dir")
    return p


def _published(real_data_dir, task):
    return bbh.load_bbh_file(real_data_dir / "bbh" / "bbh" / f"{task}.json")


def test_recipes_cover_all_27_tasks(real_data_dir):
    shipped = {p.stem for p in (real_data_dir / "bbh" / "bbh").glob("*.json")}
    assert len(shipped) == 27
    assert set(bbh.RECIPES) | set(bbh.NOT_DERIVABLE) == shipped
    assert not set(bbh.RECIPES) & set(bbh.NOT_DERIVABLE)
    assert set(bbh.MEASURED_MATCH) == set(bbh.RECIPES)


@pytest.mark.parametrize("task", sorted(FIRST50_FOUND))
def test_first50_reproduces_published_examples(first50, real_data_dir, task):
    derived = bbh.derive_examples(first50, task, max_examples=None)
    found, total = bbh.match_report(derived, _published(real_data_dir, task))
    assert found == FIRST50_FOUND[task], (task, found, total)
    if task in EXACT:
        # every item of an exact task whose question BBH sampled must come out byte-identical
        published_inputs = {e["input"]: e["target"] for e in _published(real_data_dir, task)}
        for e in derived:
            if e["input"] in published_inputs:
                assert published_inputs[e["input"]] == e["target"]


def test_option_rendering_and_targets(first50):
    ex = bbh.derive_examples(first50, "logical_deduction_three_objects", max_examples=1)[0]
    assert ex["input"].startswith("The following paragraphs each describe a set of three objects")
    assert "\nOptions:\n(A) " in ex["input"] and not ex["input"].endswith(".")
    assert ex["target"] in {"(A)", "(B)", "(C)"}
    nav = bbh.derive_examples(first50, "navigate", max_examples=3)
    assert all(e["input"].endswith("\nOptions:\n- Yes\n- No") and e["target"] in {"Yes", "No"} for e in nav)


def test_derive_bbh_writes_atomically(first50, tmp_path, real_data_dir):
    out = tmp_path / "bbh"
    out.mkdir()
    (out / "stale.json").write_text("{}")
    counts = bbh.derive_bbh(first50, out, max_examples=20)
    assert set(counts) == set(bbh.RECIPES) and all(0 < c <= 20 for c in counts.values())
    assert not (out / "stale.json").exists()  # the folder is replaced as a whole
    assert [p.name for p in tmp_path.iterdir()] == ["bbh"]  # no temporary folder left behind
    data = json.loads((out / "causal_judgement.json").read_text())
    assert set(data) == {"examples"} and set(data["examples"][0]) == {"input", "target"}
    assert len(bbh.load_bbh_file(out / "word_sorting.json")) == counts["word_sorting"]


def test_failed_derivation_leaves_out_dir_untouched(tmp_path, monkeypatch, first50):
    out = tmp_path / "bbh"
    out.mkdir()
    (out / "keep.json").write_text("{}")

    def broken(task, ex):
        raise bbh.BBHDeriveError("boom")
    monkeypatch.setitem(bbh.RECIPES, "word_sorting", bbh.Recipe("word_sorting", broken))
    with pytest.raises(bbh.BBHDeriveError, match=r"word_sorting example 0: .*boom"):
        bbh.derive_bbh(first50, out)
    assert [p.name for p in out.iterdir()] == ["keep.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["bbh"]


def test_errors_name_the_problem(tmp_path, first50):
    with pytest.raises(bbh.BBHDeriveError, match="programmatic"):
        bbh.render_task({"examples": []}, "web_of_lies")
    with pytest.raises(FileNotFoundError, match="fetch"):
        bbh.derive_bbh(tmp_path / "missing.tar.gz", tmp_path / "out")
    with pytest.raises(ValueError, match="max_examples"):
        bbh.derive_examples(first50, "navigate", max_examples=0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"examples": [{"input": "x"}]}))
    with pytest.raises(bbh.BBHDeriveError, match=r"examples\[0\]"):
        bbh.load_bbh_file(bad)
    with pytest.raises(bbh.BBHDeriveError, match="single correct"):
        bbh.render_task({"examples": [{"input": "q", "target_scores": {"a": 1, "b": 1}}]}, "ruin_names")


def test_cli_derive(first50, tmp_path, capsys):
    out = tmp_path / "derived"
    assert data_cli.main(["derive", "bbh", "--data_dir", str(first50.parents[1]), "--out_dir", str(out)]) == 0
    assert len(list(out.glob("*.json"))) == len(bbh.RECIPES) + 1  # + derived_from.json
    assert "24 BBH tasks" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(bbh.MEASURED_MATCH))
def test_full_archive_match_rates(real_data_dir, task):
    archive = bb.find_archive()
    if archive is None:
        pytest.skip("BIG-bench archive not fetched (python -m optiml_jax.data fetch bigbench)")
    derived = bbh.derive_examples(archive, task, max_examples=None)
    assert bbh.match_report(derived, _published(real_data_dir, task)) == bbh.MEASURED_MATCH[task]
