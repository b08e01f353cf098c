"""kill -9 on the token cache's side, through the CLIs: a training run killed mid-way resumes from its last
checkpoint on the cached loader and equals an uninterrupted run step for step; a cache build killed mid-way
continues task by task and ends with the same content as a build that was never interrupted."""
import json
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from train_runs import REPO, RESUME_RUN as RUN, STEPS, env, losses


def _env(cache_home: pathlib.Path) -> dict:
    out = env(2)
    out["OPTIML_CACHE_DIR"] = str(cache_home)
    return out


def _cmd(model_dir: pathlib.Path) -> list[str]:
    return [sys.executable, "-m", "optiml_jax.train", *RUN, f"--gin.TRAIN_STEPS={STEPS}",
            f"--gin.MODEL_DIR='{model_dir}'"]


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"the process ended (rc {proc.poll()}) before the awaited point")


def _steps_logged(metrics: pathlib.Path) -> int:
    if not metrics.exists():
        return 0
    done = [json.loads(ln)["step"] for ln in metrics.read_text().splitlines() if ln.endswith("}") and '"loss"' in ln]
    return max(done, default=0)


@pytest.mark.slow
def test_kill_9_mid_run_resumes_on_the_cached_loader_equal_to_uninterrupted(tmp_path):
    home = tmp_path / "cache_home"
    reference = tmp_path / "reference"
    done = subprocess.run(_cmd(reference), cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    caches = list(home.iterdir())
    assert len(caches) == 1 and (caches[0] / "manifest.json").is_file()   # it trained from the token cache

    model_dir = tmp_path / "run"
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(_cmd(model_dir), cwd=REPO, env=_env(home), stdout=log, stderr=subprocess.STDOUT)
    _wait_for(lambda: _steps_logged(model_dir / "metrics.jsonl") >= 6, proc)
    proc.send_signal(signal.SIGKILL)   # no handler runs: the last checkpoint (step 4) is all that is left
    proc.wait(timeout=60)
    log.close()
    assert 4 in [int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()]
    again = subprocess.run(_cmd(model_dir), cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout
    want, got = losses(reference), losses(model_dir)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-6), step


def _build_cmd(out: pathlib.Path) -> list[str]:
    return [sys.executable, "-m", "optiml_jax.tasks", "cache", "--mixture", "optiml_train", "--split", "embedded",
            "--out", str(out), "--no_progress"]


def _contents(out: pathlib.Path) -> dict[str, str]:
    return {p.name: json.loads(p.read_text())["content_fp"] for p in (out / "tasks").glob("*.json")}


@pytest.mark.slow
def test_kill_9_mid_build_continues_task_by_task_to_the_same_cache(tmp_path):
    clean = tmp_path / "clean"
    done = subprocess.run(_build_cmd(clean), cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    want = _contents(clean)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_build_cmd(out), cwd=REPO, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for(lambda: (out / "tasks").is_dir() and len(list((out / "tasks").glob("*.json"))) >= 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    kept = _contents(out)
    assert 5 <= len(kept) < len(want) and not (out / "manifest.json").exists()
    again = subprocess.run(_build_cmd(out), cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["built"] == len(want) - len(kept) and summary["remaining"] == 0
    assert _contents(out) == want and (out / "manifest.json").is_file()
    check = subprocess.run(_build_cmd(out) + ["--check"], cwd=REPO, env=_env(tmp_path), capture_output=True,
                           text=True, timeout=900)
    assert check.returncode == 0 and '"stale_or_missing": 0' in check.stdout


USER_MODULE = '''
"""A user's seqio Task in the training vocabulary of gin/train/tiny_cpu.gin (the embedded suite's BPE)."""
import seqio
import tensorflow as tf

from optiml_jax.tasks import embedded_vocab
from optiml_jax.tokenizer import OPTVocabulary

PHRASES = [f"red {i} green {i % 5} blue" for i in range(60)]


def dataset_fn(split, shuffle_files, seed=None):
    return tf.data.Dataset.from_tensor_slices({
        "inputs": [f"Reverse: {p}" for p in PHRASES],
        "targets": [" " + " ".join(reversed(p.split())) for p in PHRASES]})


vocab = OPTVocabulary.from_dir(embedded_vocab.embedded_tokenizer_dir())
seqio.TaskRegistry.add(
    "user.reverse_colours", seqio.FunctionDataSource(dataset_fn, splits=["train"]),
    output_features={k: seqio.Feature(vocab, add_eos=False) for k in ("inputs", "targets")},
    preprocessors=[seqio.preprocessors.tokenize])
'''


@pytest.mark.slow
def test_a_user_seqio_task_named_in_a_gin_file_is_cached_and_trained(tmp_path):
    (tmp_path / "user_colour_task.py").write_text(USER_MODULE)
    gin_file = tmp_path / "user.gin"
    gin_file.write_text("import user_colour_task\n"
                        "optiml_jax.train.mixture_config = @optiml_jax.mixture_config()\n"
                        "optiml_jax.mixture_config.extra_tasks = {'user.reverse_colours': 0.3}\n")
    run_env = _env(tmp_path / "home")
    run_env["PYTHONPATH"] = f"{tmp_path}:{run_env.get('PYTHONPATH', '')}"
    model_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "optiml_jax.train", *RUN, "--gin.TRAIN_STEPS=3", f"--gin.MODEL_DIR='{model_dir}'",
           f"--gin_file={gin_file}"]
    done = subprocess.run(cmd, cwd=REPO, env=run_env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(ln) for ln in (model_dir / "metrics.jsonl").read_text().splitlines()]
    seen = sum(ln.get("examples", {}).get("User", 0) for ln in lines if "loss" in ln)
    total = sum(sum(ln.get("examples", {}).values()) for ln in lines if "loss" in ln)
    assert seen > 0 and 0.1 < seen / total < 0.6, (seen, total)   # its rate is 0.3 of the drawn examples
    (cache_dir,) = list((tmp_path / "home").iterdir())
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["user_tasks"] == ["user.reverse_colours"]


@pytest.mark.slow
def test_a_build_over_two_worker_processes_equals_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for out, extra in ((one, []), (two, ["--workers", "2"])):
        done = subprocess.run(_build_cmd(out) + extra, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    assert _contents(two) == _contents(one) and len(_contents(one)) > 10
