"""Nothing lost, through the training CLI: user mistakes, preemption, a second writer, damaged checkpoints, bad input.

Each fault is compared with one uninterrupted reference run (same command, same data): a run that resumes after a
fault must produce the reference's losses step for step. docs/faults.md lists these tests next to each fault.
"""
import hashlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from optiml_jax import errors, train

from train_runs import REPO, RESUME_RUN as RUN, STEPS, env, losses as _losses


@pytest.fixture(autouse=True)
def _clean_gin():
    import gin

    yield
    gin.clear_config()


def _env() -> dict:
    return env(2)


def _cmd(model_dir: pathlib.Path, *extra: str, steps: int = STEPS) -> list[str]:
    return [sys.executable, "-m", "optiml_jax.train", *RUN, f"--gin.TRAIN_STEPS={steps}",
            f"--gin.MODEL_DIR='{model_dir}'", *extra]


def _run(model_dir: pathlib.Path, *extra: str, steps: int = STEPS) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(model_dir, *extra, steps=steps), cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=900)


def _assert_same_losses(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    for step in want:  # the same computation on the same data: identical, step for step
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-6), step


def _steps(model_dir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit())


def _tree_digest(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _error_line(stderr: str) -> str:
    """The CLI's message: exactly one line starting with 'error:' and no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[pathlib.Path, dict[int, float]]:
    """An uninterrupted run: checkpoints at 4, 8 and 12, and its losses."""
    model_dir = tmp_path_factory.mktemp("faults") / "reference"
    done = _run(model_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _steps(model_dir) == [4, 8, 12]
    return model_dir, _losses(model_dir)


def _copy_until(reference_dir: pathlib.Path, dst: pathlib.Path, step: int) -> pathlib.Path:
    """A copy of the reference run as it was right after ``step`` (its later checkpoints and lines removed)."""
    shutil.copytree(reference_dir, dst)
    for s in _steps(dst):
        if s > step:
            shutil.rmtree(dst / "checkpoints" / str(s))
    lines = [ln for ln in (dst / "metrics.jsonl").read_text().splitlines() if json.loads(ln)["step"] <= step]
    (dst / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return dst


def test_run_records_its_config_and_lock(reference):
    model_dir, _ = reference
    config = (model_dir / "config.gin").read_text()
    assert "written when the run started at step 0" in config
    assert "train.seq_len = 64" in config and "TRAIN_STEPS = 12" in config and "model_config.name = 'tiny'" in config
    lock = json.loads((model_dir / "run.lock").read_text())
    assert lock["host"] == socket.gethostname() and lock["released"]


def test_wrong_model_config_on_resume_touches_nothing_then_right_config_resumes(reference, tmp_path):
    model_dir = _copy_until(reference[0], tmp_path / "run", 8)
    before = _tree_digest(model_dir / "checkpoints")
    wrong = _run(model_dir, "--gin.optiml_jax.models.configs.model_config.num_hidden_layers=3")
    assert wrong.returncode == errors.EXIT_USAGE
    line = _error_line(wrong.stderr)
    assert "num_hidden_layers: checkpoint 2 vs this run 3" in line and "left untouched" in line
    assert _tree_digest(model_dir / "checkpoints") == before  # byte for byte: nothing moved, nothing renamed
    assert not list((model_dir / "checkpoints").glob("*.corrupt*"))

    right = _run(model_dir)
    assert right.returncode == 0, right.stderr[-3000:]
    assert f"resumed from {model_dir / 'checkpoints'}/8" in right.stdout
    _assert_same_losses(_losses(model_dir), reference[1])
    config = (model_dir / "config.gin").read_text()
    assert "written when the run resumed at step 8" in config


def test_resume_with_a_changed_result_binding_says_which(reference, tmp_path):
    model_dir = _copy_until(reference[0], tmp_path / "run", 8)
    changed = _run(model_dir, "--gin.optiml_jax.OptimizerConfig.learning_rate=0.002",
                   "--gin.optiml_jax.train.eval_every=7")  # the second does not change results: not reported
    assert changed.returncode == 0, changed.stderr[-3000:]
    warning = next(ln for ln in changed.stdout.splitlines() if "results-changing" in ln)
    assert "1 results-changing binding(s)" in warning
    assert "OptimizerConfig.learning_rate: checkpoint 0.001 vs this run 0.002" in warning
    assert (model_dir / "config.before-step8.gin").is_file()  # the earlier record is kept


def _wait_for_step(proc: subprocess.Popen, metrics: pathlib.Path, step: int, timeout: float = 600) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists():
            text = metrics.read_text()
            done = [json.loads(ln)["step"] for ln in text.splitlines()[:-1 if not text.endswith("\n") else None]
                    if "loss" in ln]
            if done and max(done) >= step:
                return max(done)
        time.sleep(0.01)
    raise AssertionError(f"the run ended (rc {proc.poll()}) before step {step}")


def test_sigterm_saves_the_step_reached_and_the_rerun_equals_uninterrupted(reference, tmp_path):
    model_dir = tmp_path / "run"
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(_cmd(model_dir), cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    _wait_for_step(proc, model_dir / "metrics.jsonl", 2)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=600)
    log.close()
    out = (tmp_path / "run.log").read_text()
    assert rc == errors.EXIT_PREEMPTED, out[-3000:]
    reached = max(_losses(model_dir))
    assert reached < STEPS  # it stopped early ...
    assert reached in _steps(model_dir)  # ... with a checkpoint at exactly the step it reached
    assert f"SIGTERM: stopped after step {reached}" in out
    again = _run(model_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {model_dir / 'checkpoints'}/{reached}" in again.stdout
    _assert_same_losses(_losses(model_dir), reference[1])


def test_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path):
    model_dir = tmp_path / "run"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(_cmd(model_dir, "--gin.CheckpointConfig.save_every=0", steps=100000), cwd=REPO,
                             env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_step(first, model_dir / "metrics.jsonl", 1)
        second = _run(model_dir, steps=2)
        assert second.returncode == errors.EXIT_USAGE
        line = _error_line(second.stderr)
        assert f"is in use by pid {first.pid} on host {socket.gethostname()}" in line
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        log.close()
    third = _run(model_dir, steps=2)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"took over the stale lock of pid {first.pid}" in third.stderr


def test_damaged_latest_checkpoint_is_reported_and_the_previous_one_used(reference, tmp_path):
    model_dir = _copy_until(reference[0], tmp_path / "run", 12)
    lines = [ln for ln in (model_dir / "metrics.jsonl").read_text().splitlines() if json.loads(ln)["step"] <= 8]
    (model_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")  # steps 9-12 must be recomputed
    data = [p for p in (model_dir / "checkpoints" / "12" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    victim = max(data, key=lambda p: p.stat().st_size)
    os.truncate(victim, victim.stat().st_size // 2)
    again = _run(model_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "WARNING: checkpoint 12 was damaged and moved aside" in again.stdout
    assert f"resumed from {model_dir / 'checkpoints'}/8" in again.stdout
    assert (model_dir / "checkpoints" / "12.corrupt").is_dir()  # kept for inspection
    _assert_same_losses(_losses(model_dir), reference[1])


def test_every_checkpoint_damaged_refuses_to_start_over_unless_asked(reference, tmp_path):
    model_dir = _copy_until(reference[0], tmp_path / "run", 4)
    for p in (model_dir / "checkpoints" / "4" / "state").rglob("*"):
        if p.is_file() and p.parent.name == "d":
            p.unlink()
    refused = _run(model_dir)
    assert refused.returncode == errors.EXIT_USAGE
    assert "start_over_if_damaged=True" in _error_line(refused.stderr)
    assert (model_dir / "checkpoints" / "4.corrupt").is_dir()
    refused_again = _run(model_dir)  # the damaged step is out of orbax's sight now: still refused
    assert refused_again.returncode == errors.EXIT_USAGE and "4.corrupt" in _error_line(refused_again.stderr)
    fresh = _run(model_dir, "--gin.optiml_jax.train.start_over_if_damaged=True", steps=2)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert (model_dir / "checkpoints" / "4.corrupt").is_dir()


# ---- bad input: one line, exit 2, in-process (8 fake devices) --------------------------------------------------

QUICK = ["--gin_file=gin/train/tiny_cpu.gin", "--gin.optiml_jax.train.progress_bar=False",
         "--gin.optiml_jax.train.peak_flops_per_device=1e11", "--gin.TRAIN_STEPS=1",
         "--gin.optiml_jax.train.heldout_max_batches=0", "--gin.optiml_jax.train.export_final=False"]


def _one_line_error(capsys, argv: list[str]) -> str:
    assert train.main(argv) == errors.EXIT_USAGE
    return _error_line(capsys.readouterr().err)


def _bad_superni_dir(root: pathlib.Path, content: bytes) -> pathlib.Path:
    # A training task of the paper's split, so that the training mixture reads the file.
    rows = [ln.split("\t") for ln in (REPO / "tasks" / "catalogue.tsv").read_text().splitlines()[1:]]
    task = next(r[0] for r in rows if r[1] == "SuperNI" and r[6] == "train")
    (root / "superni" / "tasks").mkdir(parents=True)
    (root / "superni" / "tasks" / f"{task}.json").write_bytes(content)
    return root


@pytest.mark.parametrize("content, expected", [
    (b'{"Definition": ["x"], "Instances": [', "malformed JSON"),
    (b'{"Instances": [{"id": "a", "input": "q", "output": ["r"]}]}', "missing field 'Definition'"),
    (b'{"Definition": ["caf\xe9"], "Instances": []}', "not valid UTF-8"),
])
def test_bad_task_files_are_one_line(tmp_path, capsys, content, expected):
    data = _bad_superni_dir(tmp_path / "data", content)
    line = _one_line_error(capsys, QUICK + [f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
                                            "--gin.optiml_jax.train.split=None",
                                            f"--gin.optiml_jax.train.data_dir='{data}'"])
    assert str(data / "superni" / "tasks") in line and expected in line


def test_bad_user_input_is_one_line(tmp_path, capsys):
    run = f"--gin.MODEL_DIR='{tmp_path / 'run'}'"
    (tmp_path / "empty").mkdir()
    line = _one_line_error(capsys, QUICK + [run, "--gin.optiml_jax.train.split=None",
                                            f"--gin.optiml_jax.train.data_dir='{tmp_path / 'empty'}'"])
    assert str(tmp_path / "empty") in line and "no" in line
    line = _one_line_error(capsys, QUICK + [run, "--gin.optiml_jax.models.configs.model_config.num_hiden_layers=3"])
    assert "model_config.num_hiden_layers" in line and "num_hidden_layers" in line
    line = _one_line_error(capsys, QUICK + [run, "--gin.BATCH_SIZE=3"])  # 8 devices
    assert "BATCH_SIZE=3" in line and "data-parallel size 8" in line
    line = _one_line_error(capsys, QUICK + [run, "--gin.optiml_jax.train.seq_len=1"])
    assert "train.seq_len=1" in line
    line = _one_line_error(capsys, QUICK + [run, "--gin.optiml_jax.models.configs.model_config.dtype='float16'"])
    assert "model_config.dtype='float16'" in line and "bfloat16" in line
    (tmp_path / "a_file").write_text("x")
    line = _one_line_error(capsys, QUICK + [f"--gin.MODEL_DIR='{tmp_path / 'a_file'}'"])
    assert "is not a folder" in line


def _read_only_dirs(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(a read-only existing MODEL_DIR, a MODEL_DIR whose parent is read-only)."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro, ro / "run"
    # root ignores permission bits; /sys is a read-only file system in containers and on most hosts.
    if os.access("/sys", os.W_OK) and not _sys_is_read_only():
        pytest.skip("no read-only directory available to root here")
    return pathlib.Path("/sys/kernel"), pathlib.Path("/sys/optiml_run")


def _sys_is_read_only() -> bool:
    try:
        os.mkdir("/sys/optiml_probe")
    except OSError:
        return True
    os.rmdir("/sys/optiml_probe")
    return False


def test_read_only_model_dir_is_one_line(tmp_path, capsys):
    existing, child = _read_only_dirs(tmp_path)
    line = _one_line_error(capsys, QUICK + [f"--gin.MODEL_DIR='{child}'"])
    assert f"MODEL_DIR='{child}'" in line and "cannot create it" in line
    line = _one_line_error(capsys, QUICK + [f"--gin.MODEL_DIR='{existing}'"])
    assert f"MODEL_DIR='{existing}'" in line and "not writable" in line


def test_verbose_shows_the_traceback(tmp_path, capsys):
    assert train.main(QUICK + [f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.optiml_jax.train.seq_len=1",
                               "--verbose"]) == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: train.seq_len=1")


def test_input_positions_are_per_process(tmp_path):
    from optiml_jax import checkpoints

    assert train._this_process_input({"inputs": [{"position": 7}]}, 4, tmp_path) == {"position": 7}
    assert train._this_process_input({"input": {"position": 3}}, 4, tmp_path) == {"position": 3}  # older layout
    with pytest.raises(checkpoints.CheckpointError, match="written by 2 process\\(es\\) and this run has 1"):
        train._this_process_input({"inputs": [{"position": 1}, {"position": 2}]}, 4, tmp_path)
    with pytest.raises(checkpoints.CheckpointError, match="holds no input pipeline position"):
        train._this_process_input({}, 4, tmp_path)
