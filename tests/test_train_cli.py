"""The training CLI end to end (subprocesses on CPU): outputs, SIGKILL + resume == uninterrupted, clear errors."""
import json
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from optiml_jax import train

from train_runs import REPO, TINY_RUN as SMALL, env as _env, losses as _losses


@pytest.fixture(autouse=True)
def _clean_gin():
    """In-process CLI calls leave a finalized gin config behind; later tests must start from a clean one."""
    import gin

    yield
    gin.clear_config()


def _cmd(model_dir: pathlib.Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "optiml_jax.train", *SMALL, f"--gin.MODEL_DIR='{model_dir}'", *extra]


def _check_outputs(model_dir: pathlib.Path, stdout: str, steps: int) -> None:
    lines = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in lines if "loss" in r]
    assert [r["step"] for r in logged] == list(range(1, steps + 1))
    for r in logged:
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "examples"} <= set(r)
        assert r["loss"] > 0 and r["grad_norm"] > 0 and sum(r["examples"].values()) > 0
        assert r["mfu_basis"] == "given:1e+11 FLOP/s per device x2"  # SMALL's peak_flops_per_device, labelled
    assert logged[-1]["tokens_per_s"] > 0 and 0 < logged[-1]["mfu"]
    assert [r["step"] for r in lines if "heldout_loss" in r] == [0, 4, 8, 10]
    assert sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()) == [6, 8, 10]
    assert list((model_dir / "tb").glob("events.out.tfevents.*"))
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["final_step"] == steps and summary["exported"] == str(model_dir / "final")
    assert "final model written to" in stdout

    import numpy as np

    import optiml_jax

    model, params = optiml_jax.load_model(str(model_dir / "final"))
    assert model.config.name == "tiny" and model.config.num_hidden_layers == 2
    # The exported tokenizer (the embedded suite's 2,048 ids for tiny_cpu.gin) encodes text the model runs on.
    from optiml_jax.tokenizer import OPTVocabulary

    vocab = OPTVocabulary.from_checkpoint(model_dir / "final")
    ids = [vocab.bos_id, *vocab.encode("Hello world")]
    assert max(ids) < model.config.vocab_size == vocab.vocab_size
    logits = model.apply({"params": params}, np.array([ids], np.int32))
    assert logits.shape == (1, len(ids), model.config.vocab_size) and np.isfinite(np.asarray(logits)).all()


def test_sigkill_then_restart_equals_uninterrupted(tmp_path):
    """An uninterrupted run (whose outputs are checked too) vs. one SIGKILLed mid-run and restarted."""
    common = ("--gin.TRAIN_STEPS=10", "--gin.CheckpointConfig.save_every=2", "--gin.CheckpointConfig.async_save=False")
    quiet = ("--gin.optiml_jax.train.heldout_max_batches=0", "--gin.optiml_jax.train.export_final=False")
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    ref = subprocess.run(_cmd(ref_dir, *common, "--gin.optiml_jax.train.eval_every=4",
                              "--gin.optiml_jax.train.heldout_max_batches=1"),
                         cwd=REPO, env=_env(2), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    _check_outputs(ref_dir, ref.stdout, 10)
    reference = _losses(ref_dir)

    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(_cmd(run_dir, *common, *quiet), cwd=REPO, env=_env(2), stdout=log,
                            stderr=subprocess.STDOUT)
    metrics = run_dir / "metrics.jsonl"
    killed_after = None
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists():
            done = _losses(metrics.parent) if metrics.read_text().endswith("\n") else {}
            if done and max(done) >= 5:
                proc.send_signal(signal.SIGKILL)  # no cleanup, no final save: like a preempted host
                killed_after = max(done)
                break
        time.sleep(0.01)
    proc.wait()
    log.close()
    assert killed_after is not None, "the run finished before it could be killed: " + (tmp_path / "killed.log"
                                                                                          ).read_text()[-2000:]
    assert proc.returncode == -signal.SIGKILL
    assert killed_after < 10

    again = subprocess.run(_cmd(run_dir, *common, *quiet), cwd=REPO, env=_env(2), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout
    resumed_at = int(again.stdout.split("resumed from")[1].split()[0].rsplit("/", 1)[1])
    assert 4 <= resumed_at <= killed_after  # synchronous saves: step 4 was committed before step 5 ran
    resumed = _losses(run_dir)
    assert sorted(resumed) == list(range(1, 11))
    for step in range(1, 11):  # the same computation on the same data: identical, step for step
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-6), step


def test_cli_errors_are_clear(tmp_path, capsys):
    # In-process: usage errors stop before any heavy work.
    assert train.main(["--gin_file=gin/train/tiny_cpu.gin", "--gin.TRAIN_STPES=3"]) == 2
    assert "no gin file defines the macro 'TRAIN_STPES'" in capsys.readouterr().err
    assert train.main(["--gin_file=gin/train/tiny_cpu.gin", "--gin.optiml_jax.train.lr=3"]) == 2
    assert "--gin.optiml_jax.train.lr=3: Configurable 'optiml_jax.train' doesn't have a parameter named 'lr'" in \
        capsys.readouterr().err
    assert train.main(["--gin_file=gin/train/nope.gin"]) == 2
    assert "--gin_file=gin/train/nope.gin: file not found" in capsys.readouterr().err
    assert train.main([]) == 2
    assert "no --gin_file given" in capsys.readouterr().err
    assert train.main(["--gin_file=gin/train/tiny_cpu.gin", "--gin.MODEL_DIR="]) == 2
    assert "empty value" in capsys.readouterr().err
    missing = tmp_path / "no_such_ckpt"
    assert train.main(["--gin_file=gin/train/tiny_cpu.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
                       f"--gin.INIT_CHECKPOINT='{missing}'"]) == 2
    err = capsys.readouterr().err
    assert f"INIT_CHECKPOINT='{missing}': no such directory" in err and "from scratch" in err
    assert train.main(["--gin_file=gin/train/tiny_cpu.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
                       f"--gin.optiml_jax.train.data_dir='{tmp_path / 'nodata'}'"]) == 2
    assert "train.data_dir=" in capsys.readouterr().err
    assert train.main(["--gin_file=gin/train/tiny_cpu.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
                       "--gin.optiml_jax.train.ce_chunk_tokens=-1"]) == 2
    assert "error: train.ce_chunk_tokens must be an integer >= 0 (0 = no chunking), got -1" in \
        capsys.readouterr().err
    assert train.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "MODEL_DIR" in out and "INIT_CHECKPOINT" in out and "OptimizerConfig.learning_rate" in out


def test_paper_recipes_parse_with_table3_settings():
    import gin

    from optiml_jax import gin_utils, partitioning
    from optiml_jax.tasks import mixtures  # noqa: F401  (registers mixture_config)

    expected = {"optiml_30b": (256, 4000, 64), "optiml_175b": (128, 8000, 128)}
    for name, (batch, steps, devices) in expected.items():
        gin_utils.parse_gin([f"gin/train/{name}.gin"], [])
        assert gin.query_parameter("BATCH_SIZE/macro.value") == batch
        assert gin.query_parameter("TRAIN_STEPS/macro.value") == steps
        assert gin.query_parameter("optiml_jax.OptimizerConfig.learning_rate") == 5e-5
        assert gin.query_parameter("optiml_jax.OptimizerConfig.warmup_steps") == 60
        assert gin.query_parameter("optiml_jax.train.seq_len") == 2048
        shape = gin.query_parameter("optiml_jax.PartitionConfig.mesh_shape")
        assert partitioning.resolve_mesh_shape(shape, devices)[2] == 8  # Megatron tensor parallel 8
    for name in ("opt_125m", "tiny_cpu"):
        gin_utils.parse_gin([f"gin/train/{name}.gin"], [])


def test_ce_chunk_tokens_binding_reaches_the_trainer(tmp_path, monkeypatch):
    from optiml_jax import trainer as trainer_lib

    seen = []

    class Stop(Exception):
        pass

    def fake_init(self, model, config, *args, **kwargs):
        seen.append(config.ce_chunk_tokens)
        raise Stop

    monkeypatch.setattr(trainer_lib.Trainer, "__init__", fake_init)
    with pytest.raises(Stop):
        train.main(["--gin_file=gin/train/tiny_cpu.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
                    "--gin.optiml_jax.train.ce_chunk_tokens=512"])
    assert seen == [512]
