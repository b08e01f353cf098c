"""What the tests that run the training CLI in subprocesses share: the tiny run, its environment, its losses."""
import json
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent

# A very small run of the embedded default: the "tiny" model (GPT-2 vocabulary fits its 50272 rows).
TINY_RUN = [
    "--gin_file=gin/train/tiny_cpu.gin",
    "--gin.optiml_jax.models.configs.model_config.name='tiny'",
    "--gin.optiml_jax.train.seq_len=64",
    "--gin.BATCH_SIZE=4",
    "--gin.optiml_jax.train.progress_bar=False",
    "--gin.optiml_jax.train.peak_flops_per_device=1e11",  # skip the start-up matmul benchmark
]


# The kill/resume tests' run: 12 steps, a checkpoint every 4 (written synchronously, so a kill right after a
# step's line cannot race the save), nothing else written.
STEPS = 12
RESUME_RUN = TINY_RUN + [
    "--gin.optiml_jax.train.heldout_max_batches=0",
    "--gin.optiml_jax.train.export_final=False",
    "--gin.CheckpointConfig.save_every=4",
    "--gin.CheckpointConfig.async_save=False",
]


def env(devices: int = 1) -> dict:
    """A CPU-only environment with ``devices`` fake devices and no multi-host or verbosity settings inherited."""
    out = dict(os.environ)
    out.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3", USE_TF="0", PYTHONUNBUFFERED="1")
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "OPTIML_VERBOSE"):
        out.pop(var, None)
    return out


def losses(model_dir: pathlib.Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl; a resumed run's repeated steps overwrite the earlier lines."""
    out = {}
    for line in (model_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out
