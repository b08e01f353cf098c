"""Two local JAX processes (gloo collectives over 127.0.0.1) reproduce the single-process training losses."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent

WORKER = r'''
import json, sys
import numpy as np
from optiml_jax import partitioning
port, nproc, pid, out_dir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if nproc > 1:
    assert partitioning.maybe_initialize_distributed(partitioning.DistributedConfig(
        coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid,
        initialization_timeout=120))
import jax
from optiml_jax import checkpoints, trainer
from optiml_jax.models.configs import get_config
from optiml_jax.models.opt import OPTForCausalLM
sys.path.insert(0, "tests")
from test_trainer import packed_batch

assert jax.device_count() == 2, jax.devices()
cfg = get_config("tiny").replace(vocab_size=256, num_hidden_layers=1, hidden_size=32, ffn_dim=64,
                                 max_position_embeddings=64)
mesh = partitioning.create_mesh({"data": 1, "fsdp": 2, "model": 1})  # parameters sharded across processes
tcfg = trainer.TrainerConfig(optimizer=trainer.OptimizerConfig(learning_rate=1e-3, warmup_steps=1, total_steps=10),
                             seed=5)
t = trainer.Trainer(OPTForCausalLM(cfg), tcfg, mesh, partitioning.DEFAULT_LOGICAL_AXIS_RULES,
                    global_batch_size=8, seq_len=16)
shard = partitioning.host_shard(mesh, 8)
rng = np.random.default_rng(0)
state = t.init_state()
losses = []
for step in range(3):
    full = packed_batch(rng, 8, 16, 256)  # every process draws the same global batch, keeps its rows
    lo = shard.shard_index * shard.local_batch_size
    state, m = t.train_step(state, {k: v[lo:lo + shard.local_batch_size] for k, v in full.items()})
    losses.append(float(m["loss"]))
ck = checkpoints.Checkpointer(out_dir + "/ckpt", checkpoints.CheckpointConfig(async_save=False))
ck.save(3, state, {"input": {"position": shard.shard_index}})
ck.wait()
restored = ck.restore_latest(partitioning.with_shardings(t.abstract_state, t.state_shardings))
ck.close()
same = all(bool(np.array_equal(np.asarray(a.addressable_shards[0].data), np.asarray(b.addressable_shards[0].data)))
           for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored.state)))
print("RESULT " + json.dumps({"losses": losses, "shard": [shard.shard_index, shard.num_shards],
                              "restored_step": restored.step, "restored_equal": same,
                              "processes": jax.process_count()}), flush=True)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(local_devices: int) -> dict:
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={local_devices}", JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3", USE_TF="0")
    return env


def _result(stdout: str) -> dict:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])


def test_two_processes_match_single_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    single = subprocess.run([sys.executable, str(script), "0", "1", "0", str(tmp_path / "single")], cwd=REPO,
                            env=_env(2), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    ref = _result(single.stdout)
    assert ref["processes"] == 1 and ref["shard"] == [0, 1]

    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(script), str(port), "2", str(i), str(tmp_path / "multi")],
                              cwd=REPO, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-3000:]
            outs.append(_result(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [o["shard"] for o in outs] == [[0, 2], [1, 2]]  # each process fed its half of the batch
    for o in outs:
        assert o["processes"] == 2
        np.testing.assert_allclose(o["losses"], ref["losses"], rtol=2e-5)
        assert o["restored_step"] == 3 and o["restored_equal"]
