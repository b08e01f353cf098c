"""optiml_jax.experiments: aggregation and bootstrap with known intervals, definitions, knobs reaching the
mixture and the prompts, the trivial baseline, sharding, CLI errors, and (slow) a smoke sweep end to end."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from optiml_jax.evaluation import reports
from optiml_jax.bootstrap import Bootstrap
from optiml_jax.experiments import aggregate as agg_lib
from optiml_jax.experiments import definitions as defs
from optiml_jax.experiments import instructions as instr
from optiml_jax.tasks import mixtures as mx
from optiml_jax.tasks.schema import Example, PromptedExample, TaskInfo

LEVELS = ("fully_heldout", "partially_heldout", "supervised")
BS = Bootstrap(num_samples=2000, seed=0)


def _units(scores_by_level: dict[str, list[float]], shots=(0,)) -> list[dict]:
    """One task (one category) per level with the given example scores, for every shot setting."""
    out = []
    for lv, xs in scores_by_level.items():
        for k in shots:
            out.append({"task": f"t_{lv}", "benchmark": "SuperNI", "category": f"c_{lv}", "metric": "accuracy",
                        "level": lv, "num_shots": k, "score": float(np.mean(xs)), "num_examples": len(xs),
                        "example_scores": list(xs), "example_ids": [f"t_{lv}-{i}" for i in range(len(xs))]})
    return out


def _agg(value_or_scores, shots=(0,)):
    xs = value_or_scores if isinstance(value_or_scores, list) else [float(value_or_scores)] * 4
    return reports.aggregate(_units({lv: xs for lv in LEVELS}, shots), shots=shots, levels=LEVELS, bootstrap=BS)


def _point(aggs, key="p"):
    return agg_lib.point_summary({"key": key, "x": 1, "label": "1"}, aggs, BS, LEVELS)


# ---------------------------------------------------------------------------------- aggregation & bootstrap

def test_two_constant_runs_give_the_run_bootstrap_interval():
    # Runs scoring 100 and 0 on every example: example and task resampling change nothing, resampling the two
    # runs gives means 0, 50, 100 with probabilities 1/4, 1/2, 1/4, so the 95% interval is exactly [0, 100].
    p = _point([_agg(100.0), _agg(0.0)])
    assert p["n_runs"] == 2 and p["score"] == pytest.approx(50.0)
    assert (p["ci_low"], p["ci_high"]) == (0.0, 100.0)
    assert p["run_scores"] == [100.0, 0.0] and p["run_std"] == pytest.approx(50.0)
    for lv in LEVELS:
        assert p["levels"][lv]["score"] == pytest.approx(50.0)
        assert (p["levels"][lv]["ci_low"], p["levels"][lv]["ci_high"]) == (0.0, 100.0)


def test_identical_constant_runs_have_a_zero_width_interval():
    p = _point([_agg(60.0), _agg(60.0), _agg(60.0)])
    assert p["n_runs"] == 3 and (p["score"], p["ci_low"], p["ci_high"]) == (60.0, 60.0, 60.0)


def test_single_run_interval_is_the_example_bootstrap():
    # One run, every level one task with examples [0, 100]: a replicate is the mean of two draws (0, 50, 100
    # with probabilities 1/4, 1/2, 1/4) per level, and the combined score averages three independent levels.
    p = _point([_agg([0.0, 100.0])])
    assert p["n_runs"] == 1 and p["score"] == pytest.approx(50.0)
    for lv in LEVELS:
        assert (p["levels"][lv]["ci_low"], p["levels"][lv]["ci_high"]) == (0.0, 100.0)
    # The mean of three such levels: its support is multiples of 100/6; 2.5% and 97.5% percentiles, by
    # enumeration of the 3^3 level outcomes, are 100/6 and 500/6.
    assert p["ci_low"] == pytest.approx(100 / 6, abs=1e-3) and p["ci_high"] == pytest.approx(500 / 6, abs=1e-3)


def test_level_score_is_the_mean_over_shot_settings():
    aggs = [reports.aggregate(_units({lv: [20.0] * 3 for lv in LEVELS}, (0,)) +
                              [dict(u, num_shots=5, score=40.0, example_scores=[40.0] * 3)
                               for u in _units({lv: [0.0] * 3 for lv in LEVELS}, (0,))],
                              shots=(0, 5), levels=LEVELS, bootstrap=BS)]
    p = _point(aggs)
    assert p["score"] == pytest.approx(30.0) and (p["ci_low"], p["ci_high"]) == (30.0, 30.0)
    assert all(p["levels"][lv]["score"] == pytest.approx(30.0) for lv in LEVELS)


def test_points_with_equal_run_counts_are_paired():
    # The run draws depend on names only: shifting every run of a point by 5 shifts its interval by exactly 5.
    a = _point([_agg(10.0), _agg(40.0), _agg(70.0)], key="a")
    b = _point([_agg(15.0), _agg(45.0), _agg(75.0)], key="b")
    assert b["ci_low"] == pytest.approx(a["ci_low"] + 5) and b["ci_high"] == pytest.approx(a["ci_high"] + 5)


def test_results_table_layout_and_missing_points():
    done = _point([_agg(100.0), _agg(0.0)], key="n4")
    empty = agg_lib.point_summary({"key": "n8", "x": 8, "label": "8"}, [], BS, LEVELS)
    base = agg_lib.point_summary({"key": "b", "x": "trivial", "label": "trivial", "baseline": True},
                                 [_agg(50.0)], BS, LEVELS)
    res = agg_lib.results_table([done, empty, base], LEVELS, experiment="x", x_label="tasks")
    assert [p["x"] for p in res["points"]] == [1, 8] and res["baseline"]["score"] == 50.0
    for key in ("x", "score", "ci_low", "ci_high", "n_runs"):
        assert all(key in p for p in res["points"])
        assert all(key in p for lv in LEVELS for p in res["levels"][lv]["points"])
    assert empty["n_runs"] == 0 and empty["score"] is None and empty["levels"]["supervised"]["score"] is None
    table = agg_lib.markdown_table(res)
    assert "50.0 [0.0, 100.0]" in table and "n/a" in table and "trivial" in table
    json.dumps(res)  # plain JSON


# ---------------------------------------------------------------------------------------------- definitions

CTX = defs.Context(train_tasks=tuple(f"t{i:02d}" for i in range(20)), required_tasks=("t03", "t11"),
                   benchmarks=("Embedded-NI", "Embedded-PS"), base_mixture=mx.MixtureConfig())


def test_task_scaling_subsets_keep_required_tasks_are_nested_and_differ():
    points = defs.TaskScaling(num_tasks=(4, 8, None), subsets=3).points(CTX)
    assert [p.x for p in points] == [4, 8, 20]
    for p in points:
        assert len(p.runs) == 3
        for r in p.runs:
            tasks = r.mixture.get("tasks", CTX.train_tasks)
            assert len(set(tasks)) == p.x and {"t03", "t11"} <= set(tasks)
    small, big = points[0].runs, points[1].runs
    assert all(set(s.mixture["tasks"]) <= set(b.mixture["tasks"]) for s, b in zip(small, big))
    assert len({r.mixture["tasks"] for r in small}) == 3          # three different subsets
    assert points[2].runs[0].mixture == {} and len({r.seed for r in points[2].runs}) == 3
    with pytest.raises(defs.ExperimentError, match="fewer than the 2 tasks"):
        defs.TaskScaling(num_tasks=(1, 4)).points(CTX)
    with pytest.raises(defs.ExperimentError, match="trains on 20"):
        defs.TaskScaling(num_tasks=(4, 40)).points(CTX)


def test_smoke_keeps_first_and_last_point_with_two_runs():
    pts = defs.experiment_points(defs.TaskScaling(num_tasks=(4, 8, 16, None), subsets=3), CTX, smoke=True)
    assert [p.x for p in pts] == [4, 20] and all(len(p.runs) == 2 for p in pts)
    pts = defs.experiment_points(defs.InstructionAblation(seeds=3), CTX, smoke=True)
    assert [p.x for p in pts] == ["full", "labels", "trivial baseline"] and pts[-1].baseline


def test_sweeps_variants_and_leave_one_out_set_their_field():
    eps = defs.MixtureSweep(field="eps", values=(8, 64, None), seeds=2).points(CTX)
    assert [r.mixture["eps"] for p in eps for r in p.runs] == [8, 8, 64, 64, None, None]
    assert eps[-1].x > eps[-2].x and eps[-1].label == "all"
    with pytest.raises(defs.ExperimentError, match="not a MixtureConfig field"):
        defs.MixtureSweep(field="epss").points(CTX)
    lobo = defs.LeaveOneBenchmarkOut(seeds=1).points(CTX)
    assert [p.label for p in lobo] == ["none", "Embedded-NI", "Embedded-PS"]
    assert lobo[1].runs[0].mixture["benchmark_proportions"]["SuperNI"] == 0.0
    assert lobo[1].runs[0].mixture["benchmark_proportions"]["PromptSource"] > 0
    abl = defs.InstructionAblation(seeds=2).points(CTX)
    assert {r.train_key for p in abl[:3] for r in p.runs} == {"full-seed0", "full-seed1"}


def test_shard_splits_units_disjointly():
    from optiml_jax.experiments import runner

    units = runner.train_units(defs.TaskScaling(num_tasks=(4, 8, None), subsets=3).points(CTX))
    assert len(units) == 9
    parts = [runner.shard(units, k, 4) for k in range(4)]
    assert sorted(u.train_key for p in parts for u in p) == sorted(u.train_key for u in units)
    with pytest.raises(ValueError, match="worker_index"):
        runner.shard(units, 4, 4)


def test_finished_runs_are_skipped_and_other_settings_refused(tmp_path):
    from optiml_jax.experiments import runner

    settings = runner.Settings(name="x", experiment_dir=str(tmp_path), train_steps=7, split="embedded")
    unit = runner.TrainUnit("n4-subset0", 0, {"tasks": ("a", "b")}, ("full",))
    marker = runner.run_dir(settings, unit.train_key) / runner.TRAIN_MARKER
    runner._write_json(marker, {**runner._train_record(settings, unit), "seconds": 12.5})
    assert runner.train_run(settings, unit) == marker.parent     # finished (timings aside): not trained again
    with pytest.raises(defs.ExperimentError, match="trained by other settings"):
        runner.train_run(dataclasses.replace(settings, train_steps=8), unit)


# ------------------------------------------------------------------------------- knobs reach what they say

@pytest.fixture(scope="module")
def embedded():
    from optiml_jax.experiments import runner
    from optiml_jax.tasks import pipeline

    settings = runner.Settings(name="t", experiment_dir="/nonexistent", train_steps=1, split="embedded")
    return settings, pipeline.get_bench(None, "embedded")


def test_task_subsets_reach_the_training_mixture(embedded):
    from optiml_jax.experiments import runner
    from optiml_jax.tasks import pipeline

    settings, bench = embedded
    ctx = runner.context(settings, bench)
    assert set(ctx.required_tasks) <= set(ctx.train_tasks) and ctx.required_tasks
    pts = defs.TaskScaling(num_tasks=(4, None), subsets=2).points(ctx)
    summaries = {r.train_key: runner.mixture_summary(bench, settings, r.mixture) for p in pts for r in p.runs}
    assert [summaries[r.train_key]["tasks"] for p in pts for r in p.runs] == [4, 4] + [len(ctx.train_tasks)] * 2
    runner.check_knobs(pts, summaries)
    # What the trainer draws: only the subset's tasks, in a stream of real batches.
    _check_draws(pipeline.TrainInput, pts[0].runs[0], settings, bench)


@pytest.mark.slow
def test_task_subsets_reach_the_cached_training_input(embedded, tmp_path):
    # The cached input `optiml_jax.train` reads (its token cache is built for the whole mixture: ~1 min here).
    from optiml_jax.experiments import runner
    from optiml_jax.tasks import loader

    settings, bench = embedded
    run = defs.TaskScaling(num_tasks=(4,), subsets=1).points(runner.context(settings, bench))[0].runs[0]
    _check_draws(lambda **kw: loader.CachedTrainInput(cache_dir=str(tmp_path), rebuild=True, **kw), run, settings,
                 bench)


def _check_draws(make, run, settings, bench):
    from optiml_jax import tokenizer
    from optiml_jax.experiments import runner

    data = make(vocab=tokenizer.OPTVocabulary.default(), batch_size=4, seq_len=128, bench=bench,
                mixture_config=runner.mixture_config(settings, run.mixture))
    assert set(data.task_names) == set(run.mixture["tasks"])
    ids = np.concatenate([next(data)["decoder_task_ids"].ravel() for _ in range(3)])
    assert {data.task_names[i] for i in ids[ids >= 0]} == set(run.mixture["tasks"])


def test_instances_benchmarks_and_metaicl_reach_the_mixture(embedded):
    from optiml_jax.experiments import runner

    settings, bench = embedded
    full = runner.mixture_summary(bench, settings, {})
    few = runner.mixture_summary(bench, settings, {"max_instances_per_task": 10})
    assert few["instances"] == 10 * few["tasks"] < full["instances"]
    no_ni = runner.mixture_summary(bench, settings, defs.LeaveOneBenchmarkOut(
        benchmarks=("Embedded-NI",), seeds=1).points(runner.context(settings, bench))[1].runs[0].mixture)
    assert no_ni["benchmark_share"]["Embedded-NI"] == 0.0 and no_ni["tasks"] < full["tasks"]
    meta = runner.mixture_summary(bench, settings, {"metaicl": True, "metaicl_zipf_a": 2.0})
    assert meta["zero_shot_share"] == pytest.approx(0.671, abs=1e-3) and full["zero_shot_share"] == 1.0
    assert len({full["fingerprint"], few["fingerprint"], no_ni["fingerprint"], meta["fingerprint"]}) == 4


def test_knobs_without_effect_are_refused(embedded):
    from optiml_jax.experiments import runner

    settings, bench = embedded
    ctx = runner.context(settings, bench)
    # Every embedded task has a few hundred instances: caps above that all give the same mixture.
    for sweep in (defs.MixtureSweep(field="eps", values=(4096, 8192), seeds=1),
                  defs.MixtureSweep(field="reasoning_share", values=(0.0, 0.05), seeds=1)):
        pts = sweep.points(ctx)
        summaries = {r.train_key: runner.mixture_summary(bench, settings, r.mixture) for p in pts for r in p.runs}
        with pytest.raises(defs.ExperimentError, match="exactly the same mixture"):
            runner.check_knobs(pts, summaries)


def test_instruction_modes_reach_the_evaluation_prompts(embedded):
    from optiml_jax.experiments import runner

    settings, bench = embedded
    ev = runner.Evaluator(dataclasses.replace(settings, smoke=True))
    changed, total = ev.changed_prompts("none")
    assert 0 < changed < total   # task-level tasks lose their definition, instance-level ones have none
    for key, exs in ev.examples.items():
        for full, none, labels in zip(exs, ev.examples_for("none")[key], ev.examples_for("labels")[key]):
            definition = bench.examples(full.task)[0].definition
            if definition and bench.catalogue[full.task].instruction_level == "task":
                assert full.source.startswith(definition) and definition not in none.source
                assert none.source and none.source in full.source
                assert labels.source.startswith("Possible answers: " if full.candidates else none.source)
            else:
                assert none.source == full.source == labels.source


# ------------------------------------------------------------------------------ instructions and baseline

NI = TaskInfo(name="ni_task", benchmark="SuperNI", category="c", instruction_level="task", metric="accuracy")
PS = TaskInfo(name="ps_task", benchmark="PromptSource", category="c", instruction_level="instance")


def _ex(i, definition="Decide whether the review is positive or negative."):
    return Example(id=f"e{i}", input=f"Review {i}: fine.", outputs=("positive",), definition=definition,
                   candidates=("positive", "negative"))


@pytest.mark.parametrize("shots", [0, 2])
def test_no_definition_equals_a_prompt_rendered_without_one(shots):
    from optiml_jax.tasks import prompts

    pool = [_ex(i) for i in range(1, 6)]
    full = prompts.render_eval(NI, _ex(0), pool, num_shots=shots, seed=3)
    bare = prompts.render_eval(NI, _ex(0, ""), [_ex(i, "") for i in range(1, 6)], num_shots=shots, seed=3)
    none = instr.ablate(full, "none")
    assert "Decide whether" in full.source and "Decide whether" not in none.source
    assert none.source == bare.source and none.parts == bare.parts and none.target == full.target
    labels = instr.ablate(full, "labels")
    assert labels.source.startswith("Possible answers: positive, negative.\n\n")
    assert labels.source[len("Possible answers: positive, negative."):] == full.source[len(_ex(0).definition):]
    assert "".join(t for _, t in labels.parts) == labels.source
    assert instr.ablate(full, "full") is full


def test_instance_level_prompts_are_left_alone_and_counted():
    from optiml_jax.tasks import prompts

    ps = prompts.render_eval(PS, _ex(0, ""), [], num_shots=0, seed=0)
    ni = prompts.render_eval(NI, _ex(0), [], num_shots=0, seed=0)
    units = {"a": [ps, ni]}
    assert instr.changed_count(units, instr.ablate_units(units, "none")) == (1, 2)
    with pytest.raises(ValueError, match="instruction mode"):
        instr.ablate(ni, "minimal")


def test_trivial_baseline_scores():
    from optiml_jax import evaluation

    ranked = PromptedExample(task="t", id="a", source="q", target=" yes", references=("yes",),
                             candidates=(" yes", " no", " maybe", " Yes"))
    gen = PromptedExample(task="t", id="b", source="q", target=" red", references=("red",))
    pool = [Example(id=str(i), input="x", outputs=(o,)) for i, o in enumerate(["red", "red", "blue"])]
    scores = instr.trivial_example_scores([ranked, gen], pool, evaluation.metric_fn("exact_match"))
    assert scores == [50.0, 100.0]   # two of four candidates match "yes"; the majority answer "red" is right


# ------------------------------------------------------------------------------------------------------ CLI

def test_cli_errors_are_one_line(capsys):
    from optiml_jax.experiments.__main__ import main

    assert main(["--gin_file=gin/experiments/task_scaling_cpu.gin", "--num_workers=x"]) == 2
    assert capsys.readouterr().err.strip() == "error: --num_workers=x: not an integer"
    assert main(["--gin_file=gin/experiments/task_scaling_cpu.gin", "--gin.SMOKE=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: SMOKE") and "\n" not in err
    assert main(["--gin_file=gin/experiments/task_scaling_cpu.gin",
                 "--gin.optiml_jax.experiments.TaskScaling.num_tasks=(1, 2)"]) == 2
    err = capsys.readouterr().err.strip()
    assert "TaskScaling.num_tasks" in err and "\n" not in err


def test_every_experiment_gin_file_parses(tmp_path):
    import glob

    import gin

    from optiml_jax import gin_utils, tasks
    from optiml_jax.experiments import __main__ as cli

    tasks.import_configurables()
    files = sorted(glob.glob(os.path.join(gin_utils.REPO_ROOT, "gin", "experiments", "*.gin")))
    assert len(files) == 16   # eight experiments, each at CPU size and at the paper's scale
    assert any(f.endswith("task_scaling_cpu.gin") for f in files) and any(f.endswith("task_scaling_30b.gin")
                                                                          for f in files)
    for f in files:
        gin_utils.parse_gin([f], [f"EXPERIMENT_DIR = '{tmp_path}'"])
        settings, definition = cli.experiment()
        assert settings.experiment_dir == str(tmp_path) and isinstance(definition, defs.DEFINITIONS)
        # The points exist on a generic context (the 30B files' real bench is not needed to plan them).
        big = dataclasses.replace(CTX, train_tasks=tuple(f"t{i:04d}" for i in range(1500)),
                                  benchmarks=("Embedded-NI", "Embedded-PS", *mx.DEFAULT_BENCHMARK_PROPORTIONS))
        assert defs.experiment_points(definition, big)
    gin.clear_config()


# ---------------------------------------------------------------------------------------- end to end (slow)

@pytest.mark.slow
def test_smoke_sweep_writes_results_and_figure_and_resumes(tmp_path, capsys):
    from optiml_jax.experiments.__main__ import main

    args = ["--gin_file=gin/experiments/task_scaling_cpu.gin", "--gin.SMOKE=True",
            f"--gin.EXPERIMENT_DIR='{tmp_path}'", "--gin.optiml_jax.experiments.experiment.smoke_train_steps=2"]
    assert main(args) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["complete"] and len(res["points"]) >= 2
    for p in res["points"]:
        assert p["n_runs"] == 2 and p["ci_low"] is not None and p["ci_low"] <= p["score"] <= p["ci_high"]
    assert res["points"][0]["x"] < res["points"][-1]["x"]
    assert (tmp_path / "task_scaling_cpu.png").stat().st_size > 10_000
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [r["mixture"]["tasks"] for r in plan["points"][0]["runs"]] == [res["points"][0]["x"]] * 2
    markers = sorted(tmp_path.glob("runs/*/experiment_run.json"))
    before = [m.stat().st_mtime for m in markers]
    capsys.readouterr()
    assert main(args) == 0   # everything finished: skipped, same results
    assert [m.stat().st_mtime for m in markers] == before
    assert "initialised" not in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["points"] == res["points"]
    # A run killed after its last checkpoint but before it finished: the rerun resumes it (no new
    # initialisation), evaluates it again and gives the same results.
    import shutil

    killed = markers[0].parent
    markers[0].unlink()
    shutil.rmtree(killed / "final")
    shutil.rmtree(killed / "eval-full")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "initialised" not in out
    again = json.loads((tmp_path / "results.json").read_text())["points"]
    assert [(p["score"], p["ci_low"], p["ci_high"]) for p in again] == \
        [(p["score"], p["ci_low"], p["ci_high"]) for p in res["points"]]
