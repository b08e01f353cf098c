"""The paper's evaluation gin files end to end on the REAL data (../shared/data): a few tasks per level, 2
examples each, including tasks and whole categories without any example on disk (issue 14: those crashed the
figures at the very end). A random tiny model: the scores mean nothing, the files and the n/a cells do."""
import json

import jax
import pytest

from optiml_jax import eval as eval_cli
from optiml_jax.models.configs import get_config
from optiml_jax.models.convert import save_checkpoint
from optiml_jax.models.opt import OPTForCausalLM

RUN = "--gin.optiml_jax.eval.run_eval"
# Per level: a rank-classification task, a generation task, a task whose category has no data on disk.
TASKS = {
    "validation": {
        "fully_heldout": ("task1155_bard_analogical_reasoning_trash_or_treasure",
                          "task1152_bard_analogical_reasoning_causation", "ps_crows_pairs"),
        "partially_heldout": ("task1720_civil_comments_toxicity_classification", "task1759_gsm"),
        "supervised": ("ps_cnn_dailymail_3_0_0", "ps_blended_skill_talk"),
    },
    "test": {
        "fully_heldout": ("task020_mctaco_span_based_question", "task033_winogrande_answer_generation",
                          "flan_anli_r1"),
        "partially_heldout": ("bbh_boolean_expressions", "flan_arc_challenge"),
        "supervised": ("task070_abductivenli_incorrect_classification", "ps_sciq", "flan_wmt16_translate_deen"),
    },
}
# (level, category) cells with no example on disk among the tasks above.
EMPTY = {"validation": [("fully_heldout", "Stereotype Detection"), ("supervised", "Dialogue Generation")],
         "test": [("fully_heldout", "Textual Entailment"), ("partially_heldout", "Question Answering"),
                  ("supervised", "Translation")]}
TEMPLATED = {"validation": "ps_cnn_dailymail_3_0_0", "test": "ps_sciq"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    config = get_config("tiny")
    params = OPTForCausalLM(config).init_params(jax.random.PRNGKey(0))
    # A run dir (its final/ export is evaluated): the report labels the model "tinyreal".
    return str(save_checkpoint(tmp_path_factory.mktemp("real") / "tinyreal" / "final", jax.device_get(params),
                               config).parent)


@pytest.mark.parametrize("split", ["validation", "test"])
def test_paper_gin_on_real_data(split, ckpt, real_data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPTIML_DATA_DIR", str(real_data_dir))
    out = tmp_path / split
    names = tuple(n for level in TASKS[split].values() for n in level)
    argv = [f"--gin_file=gin/eval/optiml_{split}.gin", f"--gin.CHECKPOINT='{ckpt}'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
            f"{RUN}.max_examples=2", f"{RUN}.tasks={names!r}", f"{RUN}.max_new_tokens=4", f"{RUN}.progress=False",
            f"{RUN}.compare_untrained=True", f"{RUN}.bootstrap_samples=200"]
    assert eval_cli.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "evaluation plan:" in printed  # what it will do, before it starts

    for f in ("report.md", "results.json", "comparison.png", "tinyreal/results.json", "tinyreal/categories.png",
              "untrained_init/results.json", "untrained_init/categories.png"):
        assert (out / f).is_file(), f
        if f.endswith(".png"):
            assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shots = {"validation": ["0", "5"], "test": ["0", "2", "5"]}[split]

    agg = json.loads((out / "tinyreal" / "results.json").read_text())
    assert agg["shots"] == [int(s) for s in shots]
    for lv, cat in EMPTY[split]:
        cell = agg["categories"][lv][cat]
        # Missing is null with its counts, never a 0 score.
        assert cell["scores"] == {s: None for s in shots} and cell["ci"] == {s: None for s in shots}
        assert cell["tasks"] >= 1 and cell["tasks_with_data"] == {s: 0 for s in shots}
        assert cell["examples"] == {s: 0 for s in shots}
    for lv, stats in agg["level_stats"].items():
        if lv in {lv_ for lv_, _ in EMPTY[split]}:
            assert stats["categories_with_data"][shots[0]] < stats["categories"]
        for s in shots:  # every level here has some data: a score with an interval around it
            lo, hi = stats["ci"][s]
            assert lo <= stats["scores"][s] <= hi
    assert all(agg["tasks"][n]["num_examples"][shots[0]] == 2 for n in names
               if agg["tasks"][n]["scores"][shots[0]] is not None)
    spread = agg["tasks"][TEMPLATED[split]]["templates"][shots[0]]
    assert spread["templates"] >= 1 and spread["min"] <= spread["mean"] <= spread["max"]

    top = json.loads((out / "results.json").read_text())
    assert top["labels"] == ["tinyreal", "untrained init"]
    assert set(top["gain_intervals"]) == set(agg["level_scores"]) | {"average"}
    assert all(top["overall_ci"][lab][s] is not None for lab in top["labels"] for s in shots)

    report = (out / "report.md").read_text()
    for lv, cat in EMPTY[split]:
        row = next(line for line in report.splitlines() if f"| {cat} |" in line)
        assert row.count("n/a") == 2 * len(shots) and "0/" in row  # two models x shots, "0/n tasks"
    assert "Spread over templates" in report and TEMPLATED[split] in report
    assert "Per-level gains of tinyreal over untrained init" in report
