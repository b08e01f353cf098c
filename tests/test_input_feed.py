"""The input feed: batches produced and put on the devices ahead of the step, never at the cost of exactness.

Unit tests of `InputFeed` (order, the input state that follows each batch, errors, shutdown) and training runs
through the CLI: prefetching changes nothing bit for bit, checkpoints hold the position of the consumed batches,
and a run killed while batches are prefetched resumes to the uninterrupted losses.
"""
import json
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from optiml_jax import input_feed

from train_runs import REPO, TINY_RUN, env, losses

FEED_THREAD = "optiml-input-feed"


class CountingInput:
    """A pipeline-contract iterator: batch k holds k; ``state()`` is the next k; optionally fails or ends."""

    def __init__(self, fail_at: int | None = None, end_at: int | None = None, delay_s: float = 0.0):
        self.position, self.fail_at, self.end_at, self.delay_s = 0, fail_at, end_at, delay_s

    def __iter__(self):
        return self

    def __next__(self):
        if self.end_at is not None and self.position >= self.end_at:
            raise StopIteration
        if self.fail_at is not None and self.position == self.fail_at:
            raise KeyError(f"bad record at {self.position}")
        time.sleep(self.delay_s)
        batch = {"x": np.full((2, 3), self.position, np.int32)}
        self.position += 1
        return batch

    def state(self):
        return {"position": self.position}


def _feed_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == FEED_THREAD]


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_feed_yields_batches_in_order_each_with_the_state_after_it(depth):
    data = CountingInput()
    with input_feed.InputFeed(data, put=lambda b: b["x"] * 10, depth=depth,
                              snapshot=lambda b: int(b["x"][0, 0]) + 100) as feed:
        got = [next(feed) for _ in range(6)]
        if depth:
            deadline = time.time() + 10
            while data.position < 6 + depth and time.time() < deadline:
                time.sleep(0.01)
            # The producer is ahead of the consumer, but each batch carries the position right after itself.
            assert data.position >= 6 + depth
    for k, fed in enumerate(got):
        assert fed.index == k and int(fed.host["x"][0, 0]) == k
        assert np.array_equal(fed.device, np.full((2, 3), 10 * k))
        assert fed.input_state == {"position": k + 1} and fed.snapshot == k + 100
        assert fed.wait_s >= 0
    assert feed.batches == 6 and feed.total_wait_s == pytest.approx(sum(f.wait_s for f in got))
    assert not _feed_threads()


@pytest.mark.parametrize("depth", [0, 2])
def test_a_producer_error_is_raised_in_the_consumer_at_the_failed_batch(depth):
    feed = input_feed.InputFeed(CountingInput(fail_at=3), put=lambda b: b, depth=depth)
    assert [int(next(feed).host["x"][0, 0]) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(KeyError, match="bad record at 3") as first:
        next(feed)
    with pytest.raises(KeyError) as again:   # the feed stays failed; it never skips the bad batch
        next(feed)
    assert again.value is first.value
    assert CountingInput.__next__.__code__ in list(_frames(first.value.__traceback__))   # where it failed
    feed.close()
    assert not _feed_threads()


def _frames(tb):
    while tb is not None:
        yield tb.tb_frame.f_code
        tb = tb.tb_next


def test_a_put_error_and_the_end_of_the_input_reach_the_consumer():
    def put(b):
        if int(b["x"][0, 0]) == 1:
            raise ValueError("device full")
        return b

    feed = input_feed.InputFeed(CountingInput(), put=put, depth=2)
    next(feed)
    with pytest.raises(ValueError, match="device full"):
        next(feed)
    feed.close()
    feed = input_feed.InputFeed(CountingInput(end_at=2), put=lambda b: b, depth=3)
    assert len(list(feed)) == 2
    feed.close()
    assert not _feed_threads()


def test_close_stops_a_producer_blocked_on_a_full_queue_and_a_slow_one():
    for data in (CountingInput(), CountingInput(delay_s=0.3)):
        feed = input_feed.InputFeed(data, put=lambda b: b, depth=2)
        next(feed)
        time.sleep(0.2)
        t0 = time.perf_counter()
        feed.close()
        assert time.perf_counter() - t0 < 5
        assert not _feed_threads()
        with pytest.raises(RuntimeError, match="after close"):
            next(feed)
        feed.close()  # idempotent
    with pytest.raises(ValueError, match="depth must be an int >= 0"):
        input_feed.InputFeed(CountingInput(), put=lambda b: b, depth=-1)


def test_the_consumer_waits_only_when_the_producer_is_behind():
    slow = input_feed.InputFeed(CountingInput(delay_s=0.05), put=lambda b: b, depth=0)
    ahead = input_feed.InputFeed(CountingInput(delay_s=0.05), put=lambda b: b, depth=4)
    time.sleep(0.6)   # the producer fills its queue meanwhile
    waits = {name: [next(f).wait_s for _ in range(4)] for name, f in (("slow", slow), ("ahead", ahead))}
    slow.close()
    ahead.close()
    assert min(waits["slow"]) >= 0.05           # produced while the consumer waited
    assert max(waits["ahead"]) < 0.05           # already there


def test_batches_put_ahead_train_bit_for_bit_like_batches_put_in_the_step():
    import jax

    from test_trainer import make_trainer, packed_batch

    t = make_trainer({"data": 2, "fsdp": 1, "model": 1}, jax.devices()[:2])
    rng = np.random.default_rng(1)
    batches = [packed_batch(rng) for _ in range(3)]

    class ListInput(CountingInput):
        def __next__(self):
            if self.position == len(batches):
                raise StopIteration
            self.position += 1
            return batches[self.position - 1]

    state, want = t.init_state(), []
    for b in batches:
        state, m = t.train_step(state, b)
        want.append(jax.device_get(m))
    ahead, got = t.init_state(), []
    with input_feed.InputFeed(ListInput(), put=t.global_batch, depth=3) as feed:
        for fed in feed:   # put on the devices by the producer thread, up to 3 batches ahead
            ahead, m = t.train_step_global(ahead, fed.device)
            got.append(jax.device_get(m))
    assert got == want
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), ahead.params, state.params)
    assert all(jax.tree.leaves(same))


# ---- training runs through the CLI (slow: four runs; the default suite's CLI tests train with prefetch=2) -------

STEPS = 8
RUN = TINY_RUN + [
    "--gin.optiml_jax.train.heldout_max_batches=0",
    "--gin.optiml_jax.train.export_final=False",
    "--gin.CheckpointConfig.save_every=2",
    "--gin.CheckpointConfig.keep=10",
    "--gin.CheckpointConfig.async_save=False",
    f"--gin.TRAIN_STEPS={STEPS}",
]


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory) -> dict:
    """The CLI runs' environment; their token cache (built by the first run) lives in the module's tmp dir."""
    out = env(2)
    out["OPTIML_CACHE_DIR"] = str(tmp_path_factory.mktemp("token_cache"))
    return out


def _cmd(model_dir: pathlib.Path, prefetch: int) -> list[str]:
    return [sys.executable, "-m", "optiml_jax.train", *RUN, f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.optiml_jax.train.prefetch={prefetch}"]


def _run(model_dir: pathlib.Path, prefetch: int, run_env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(_cmd(model_dir, prefetch), cwd=REPO, env=run_env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _step_lines(model_dir: pathlib.Path) -> dict[int, dict]:
    out = {}
    for line in (model_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = {k: rec[k] for k in ("loss", "grad_norm", "target_tokens", "examples")}
    return out


def _checkpoint_inputs(model_dir: pathlib.Path) -> dict[int, dict]:
    root = model_dir / "checkpoints"
    return {int(p.name): json.loads((p / "meta" / "metadata").read_text())["input_state"]
            for p in root.iterdir() if p.name.isdigit()}


def test_a_non_finite_loss_found_one_step_late_still_saves_nothing_after_it(cache_env, tmp_path):
    from optiml_jax import errors

    model_dir = tmp_path / "diverged"
    # Adam moves every parameter by about the learning rate: 1e30 overflows the activations at the second step.
    cmd = _cmd(model_dir, prefetch=2) + ["--gin.TRAIN_STEPS=4", "--gin.CheckpointConfig.save_every=1",
                                         "--gin.OptimizerConfig.learning_rate=1e30",
                                         "--gin.OptimizerConfig.warmup_steps=0"]
    done = subprocess.run(cmd, cwd=REPO, env=cache_env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == errors.EXIT_NON_FINITE, done.stderr[-3000:]
    assert "non-finite loss" in done.stderr and "at step 2;" in done.stderr
    assert "the batch held examples of: embedded_" in done.stderr
    assert sorted(losses(model_dir)) == [1]
    assert sorted(_checkpoint_inputs(model_dir)) == [1]   # step 2 ran, and was neither logged nor saved


@pytest.fixture(scope="module")
def unprefetched(tmp_path_factory, cache_env) -> pathlib.Path:
    model_dir = tmp_path_factory.mktemp("feed") / "prefetch0"
    _run(model_dir, prefetch=0, run_env=cache_env)
    return model_dir


@pytest.mark.slow
def test_prefetch_changes_nothing_and_checkpoints_hold_the_consumed_position(unprefetched, cache_env, tmp_path):
    ahead = tmp_path / "prefetch4"
    _run(ahead, prefetch=4, run_env=cache_env)
    want = _step_lines(unprefetched)
    assert sorted(want) == list(range(1, STEPS + 1))
    assert _step_lines(ahead) == want   # bit for bit: floats compared exactly
    # The stored position is the one after exactly `step` batches (what the serial run stores), not where the
    # producer had got to.
    inputs = _checkpoint_inputs(ahead)
    assert inputs == _checkpoint_inputs(unprefetched) and sorted(inputs) == [2, 4, 6, 8]
    seen = [json.loads(x) for x in (ahead / "metrics.jsonl").read_text().splitlines() if "examples_seen" in x]
    assert [r["step"] for r in seen] == [2, 4, 6, 8]
    totals: dict[str, int] = {}
    for rec in want.values():
        for k, v in rec["examples"].items():
            totals[k] = totals.get(k, 0) + v
    assert seen[-1]["examples_seen"] == totals == inputs[8]["examples_seen"]


@pytest.mark.slow
def test_kill9_while_batches_are_prefetched_then_resume_equals_uninterrupted(unprefetched, cache_env, tmp_path):
    model_dir = tmp_path / "killed"
    metrics = model_dir / "metrics.jsonl"
    killed_after = None
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(_cmd(model_dir, prefetch=4), cwd=REPO, env=cache_env, stdout=log,
                                stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            text = metrics.read_text() if metrics.exists() else ""
            done = [json.loads(x)["step"] for x in text.splitlines() if text.endswith("\n") and '"loss"' in x]
            if done and max(done) >= 3:
                proc.send_signal(signal.SIGKILL)   # the producer is up to 4 batches ahead of the step
                killed_after = max(done)
                break
            time.sleep(0.01)
        proc.wait()
    assert killed_after is not None and killed_after < STEPS, (tmp_path / "killed.log").read_text()[-2000:]
    again = _run(model_dir, prefetch=1, run_env=cache_env)   # another depth on resume: results do not depend on it
    assert "resumed from" in again.stdout
    assert "results-changing" not in again.stdout
    assert losses(model_dir) == losses(unprefetched)
    assert _step_lines(model_dir) == _step_lines(unprefetched)


def test_input_wait_bench_consumes_the_same_batches_in_every_loop():
    from bench import input as input_bench
    from bench import report, run

    rec = input_bench.measure_input_wait(seq_len=128, batch_size=2, steps=4, depths=(2,), rounds=1,
                                         embedded=True)
    assert rec["same_batches_in_every_loop"]   # prefetching changes what the loop waits for, never what it gets
    assert [(r["mode"], r["depth"]) for r in rec["rows"]] == [("serial", 0), ("feed", 2)]
    for r in rec["rows"]:
        assert 0 <= r["steady_input_wait_fraction"] <= 1 and 0 <= r["input_wait_fraction"] <= 1
    assert rec["input_wait_fraction"] == rec["rows"][1]["steady_input_wait_fraction"]
    target = next(t for t in run.evaluate_targets({"input": rec}) if t["name"].startswith("input wait"))
    assert target["met"] == (rec["input_wait_fraction"] <= 0.05)   # a ceiling: met below the threshold
    assert "## Input wait" in "\n".join(report._render_input(rec))
