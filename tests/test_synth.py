"""The synthetic benchmark: SuperNI task files the real loaders read, a split with every level, and training on it
in exactly the form tools use (``OPTIML_DATA_DIR=DIR ... --gin_file=gin/train/tiny_cpu.gin --gin_file=DIR/synth.gin``)."""
import hashlib
import json
import pathlib

import gin
import pytest

from optiml_jax.tasks import __main__ as tasks_cli
from optiml_jax.tasks import catalogue, pipeline, sources, synth
from optiml_jax.tasks.schema import LEVELS

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_gin():
    yield
    gin.clear_config()


def _digest(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _bench_from_gin(data_dir: pathlib.Path) -> pipeline.Bench:
    from optiml_jax import tasks

    tasks.import_configurables()
    gin.parse_config_files_and_bindings([str(data_dir / synth.GIN_FILE)], [], skip_unknown=["optiml_jax.train"])
    return pipeline.get_bench(str(data_dir), "custom")


def test_synth_bench_is_read_by_the_real_loaders_with_every_level(tmp_path):
    out = tmp_path / "synth"
    assert tasks_cli.main(["synth", "--tasks", "12", "--examples_per_task", "40", "--out", str(out)]) == 0
    plan = synth.plan_tasks(12)
    files = sorted(p.stem for p in (out / "superni" / "tasks").glob("*.json"))
    assert files == sorted(t.name for t in plan)

    cat = catalogue.load_catalogue(str(out))
    for t in plan:
        info = cat[t.name]
        assert info.benchmark == "SuperNI" and info.category == t.family.category
        exs = sources.load_examples(info, str(out))   # the SuperNI file reader, as for real tasks
        assert len(exs) == 40 and len({e.id for e in exs}) == 40
        assert all(e.definition == t.family.definition and e.outputs for e in exs)
        assert len(sources.load_demonstrations(info, str(out))) == 2

    bench = _bench_from_gin(out)
    assert bench.split_name == "custom"
    assert set(bench.train_tasks) == {t.name for t in plan if t.role == "train"}   # no real SuperNI task trains
    for split in ("validation", "test"):
        for level in LEVELS:
            names = bench.eval_tasks[(split, level)]
            assert names, (split, level)
            assert all(bench.eval_pool(n, split) for n in names), (split, level)
    rates, skipped = pipeline.training_rates(bench)
    assert skipped == [] and set(rates.task_names) == set(bench.train_tasks)


def test_synth_is_deterministic_and_never_overwrites_foreign_dirs(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    synth.write_synth_bench(a, num_tasks=6, examples_per_task=25, seed=3)
    synth.write_synth_bench(b, num_tasks=6, examples_per_task=25, seed=3)
    assert _digest(a) == _digest(b)
    synth.write_synth_bench(b, num_tasks=6, examples_per_task=25, seed=4, force=True)
    assert _digest(a) != _digest(b) and _digest(a).keys() == _digest(b).keys()

    before = _digest(a)
    foreign = tmp_path / "data"
    (foreign / "superni").mkdir(parents=True)
    cases = [(["--tasks", "3", "--examples_per_task", "20", "--out", str(tmp_path / "c")], "--tasks must be at least"),
             (["--tasks", "6", "--out", str(tmp_path / "c")], "synth needs --examples_per_task"),
             (["--tasks", "6", "--examples_per_task", "20", "--out", str(foreign)], "holds no SYNTH.json"),
             (["--tasks", "6", "--examples_per_task", "20", "--out", str(a)], "pass --force")]
    for argv, message in cases:
        capsys.readouterr()
        assert tasks_cli.main(["synth", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert _digest(a) == before and (foreign / "superni").is_dir()   # refused runs changed nothing


def test_training_on_a_synth_bench_in_the_tools_form(tmp_path, monkeypatch, capsys):
    from optiml_jax import train

    data = tmp_path / "synth"
    synth.write_synth_bench(data, num_tasks=8, examples_per_task=30)
    monkeypatch.setenv("OPTIML_DATA_DIR", str(data))
    monkeypatch.setenv("OPTIML_CACHE_DIR", str(tmp_path / "token_cache"))   # training builds its token cache
    monkeypatch.chdir(REPO)
    model_dir = tmp_path / "run"
    rc = train.main(["--gin_file=gin/train/tiny_cpu.gin", f"--gin_file={data / synth.GIN_FILE}",
                     f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8",
                     "--gin.optiml_jax.models.configs.model_config.name='tiny'", "--gin.optiml_jax.train.seq_len=64",
                     "--gin.optiml_jax.train.progress_bar=False", "--gin.optiml_jax.train.export_final=False",
                     "--gin.optiml_jax.train.peak_flops_per_device=1e11", "--gin.optiml_jax.train.heldout_max_batches=1"])
    assert rc == 0, capsys.readouterr().err[-3000:]
    lines = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(set(r["examples"]) == {"SuperNI"} and r["examples"]["SuperNI"] > 0 for r in steps)
    assert [r["step"] for r in lines if "heldout_loss" in r] == [0, 2]
    recorded = (model_dir / "config.gin").read_text()
    assert "custom_split.name = 'synth'" in recorded and "train.split = 'custom'" in recorded
