"""Preemption on two gloo processes through the training CLI: SIGTERM to one process stops both at the same step.

JAX's preemption sync manager (started by `jax.distributed.initialize`) agrees on the step; every process saves
it; the rerun continues to the same losses as an uninterrupted two-process run. Slow: four two-process runs.
"""
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from optiml_jax import errors

from train_runs import REPO, TINY_RUN, env as _cpu_env, losses as _losses

STEPS = 12
RUN = TINY_RUN + [
    "--gin.optiml_jax.train.heldout_max_batches=0",
    "--gin.optiml_jax.train.export_final=False",
    "--gin.CheckpointConfig.save_every=100",
    "--gin.CheckpointConfig.async_save=False",
    f"--gin.TRAIN_STEPS={STEPS}",
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model_dir: pathlib.Path, logs: pathlib.Path) -> list[subprocess.Popen]:
    port = _port()
    env = _cpu_env(1)
    procs = []
    for pid in range(2):
        d = "--gin.optiml_jax.DistributedConfig"
        cmd = [sys.executable, "-m", "optiml_jax.train", *RUN, f"--gin.MODEL_DIR='{model_dir}'",
               "--gin.optiml_jax.train.distributed=@optiml_jax.DistributedConfig()",
               f"{d}.coordinator_address='127.0.0.1:{port}'", f"{d}.num_processes=2", f"{d}.process_id={pid}",
               f"{d}.initialization_timeout=120"]
        log = open(logs.with_suffix(f".{pid}.log"), "w")
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _finish(procs, timeout=900) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_saved_step(tmp_path):
    ref_dir = tmp_path / "ref"
    assert _finish(_start(ref_dir, tmp_path / "ref")) == [0, 0]
    reference = _losses(ref_dir)

    run_dir = tmp_path / "run"
    procs = _start(run_dir, tmp_path / "run")
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if metrics.exists() and metrics.read_text().count('"loss"') >= 2:
            break
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGTERM)  # the non-coordinator process: the notice must reach process 0
    codes = _finish(procs)
    logs = [(tmp_path / f"run.{i}.log").read_text() for i in range(2)]
    assert codes == [errors.EXIT_PREEMPTED] * 2, "\n".join(x[-2000:] for x in logs)
    reached = max(_losses(run_dir))
    assert reached < STEPS
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [reached]
    assert all(f"stopped after step {reached}" in x for x in logs[:1])

    assert _finish(_start(run_dir, tmp_path / "again")) == [0, 0]
    assert f"resumed from {run_dir / 'checkpoints'}/{reached}" in (tmp_path / "again.0.log").read_text()
    resumed = _losses(run_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-6), step
