"""In-loop evaluation during training (optiml_jax/inloop_eval.py + the train.py hook): every N steps a small
rank-classification + generation evaluation on the training mesh, its scores in metrics.jsonl and TensorBoard."""
import json
import subprocess
import sys

import pytest

from optiml_jax.inloop_eval import InLoopEval
from train_runs import REPO, TINY_RUN, env

INLOOP = "--gin.optiml_jax.InLoopEval"


def test_inloop_scores_go_to_metrics_and_tensorboard(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "optiml_jax.train", *TINY_RUN, f"--gin.MODEL_DIR='{run}'", "--gin.TRAIN_STEPS=4",
           "--gin.optiml_jax.train.eval_every=2", "--gin.optiml_jax.train.export_final=False",
           "--gin.optiml_jax.train.inloop_eval=@optiml_jax.InLoopEval()", f"{INLOOP}.every=2",
           f"{INLOOP}.split_definition='embedded'", f"{INLOOP}.tasks_per_level=2", f"{INLOOP}.max_examples=2",
           f"{INLOOP}.max_new_tokens=4"]
    # Two devices: the evaluation runs on the training mesh (data-parallel 2), not on a device of its own.
    proc = subprocess.run(cmd, cwd=REPO, env=env(devices=2), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    inloop = [r for r in lines if any(k.startswith("inloop/") for k in r)]
    assert [r["step"] for r in inloop] == [2, 4]  # every 2 steps, and after the last
    for r in inloop:
        assert 0.0 <= r["inloop/average/0shot"] <= 100.0
        assert {"inloop/rank_classification", "inloop/generation"} <= set(r)
        assert any(k.startswith("inloop/fully_heldout/") for k in r)
    # Beside the held-out loss, at the same steps.
    assert {r["step"] for r in lines if "heldout_loss" in r} >= {2, 4}
    # TensorBoard event files are TFRecords of Event protos (TensorFlow is a dependency through seqio).
    import tensorflow as tf

    tags = {v.tag for f in (run / "tb").glob("events.out.tfevents.*")
            for e in tf.compat.v1.train.summary_iterator(str(f)) for v in e.summary.value}
    assert {"eval/inloop/average/0shot", "eval/inloop/generation", "eval/heldout_loss"} <= tags


def test_inloop_config_is_checked():
    assert InLoopEval(every=5).due(10, 12) and InLoopEval(every=5).due(12, 12) and not InLoopEval(every=5).due(11, 12)
    assert not InLoopEval(every=0).due(10, 10)
    with pytest.raises(ValueError, match="tasks_per_level"):
        InLoopEval(tasks_per_level=0)
    with pytest.raises(ValueError, match="split must be"):
        InLoopEval(split="train").config()
