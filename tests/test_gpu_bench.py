"""bench/gpu.sh and bench/gpu_bench.py: skip without a GPU, robust driver (failures, time limits, budget)."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from bench import gpu_bench

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_gpu_sh_skips_without_a_gpu_within_a_minute():
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "skipped: no GPU"
    assert time.perf_counter() - t0 < 60


def test_driver_records_failures_timeouts_and_budget(tmp_path):
    bad = gpu_bench._run_one(["train", "--model", "no-such-model", "--cpu-tiny"], str(tmp_path / "x.json"), 120)
    assert bad["status"].startswith("failed (exit 1)") and "unknown benchmark model" in bad["status"]
    slow = gpu_bench._run_one(["train", "--model", "micro", "--cpu-tiny"], str(tmp_path / "y.json"), 0.2)
    assert slow["status"] == "timeout after 0 s"
    rows = gpu_bench.run_matrix(str(tmp_path), cpu_tiny=True, budget_s=0, per_config_s=1)
    assert rows and all(r["status"] == "not run: budget" for r in rows)
    assert {r["kind"] for r in rows} == {"train", "decode"}


def test_markdown_table_shows_every_row():
    ok = {"kind": "train", "model": "opt-125m", "kernel": "cudnn", "remat": "none", "status": "ok",
          "tokens_per_s": 123456.0, "mfu": 0.5123, "mfu_causal": 0.45, "step_s": 0.133,
          "device_memory": {"peak_bytes_in_use": 3 * 2 ** 30}, "compiled_memory": None,
          "mfu_basis": "spec:NVIDIA H100 SXM bf16 dense x1"}
    oom = {"kind": "train", "model": "opt-1.3b", "kernel": "xla", "remat": "none",
           "status": "failed (exit 1): out of memory: RESOURCE_EXHAUSTED"}
    dec = {"kind": "decode", "model": "opt-125m", "status": "not run: budget"}
    table = gpu_bench.markdown_table([ok, oom, dec], header="### t")
    assert "| opt-125m | cudnn | none | 123,456 | 51.2% | 45.0% | 0.133 | 3.0 GiB | - | spec:NVIDIA H100 SXM" in table
    assert "| opt-1.3b | xla | none | - |" in table and "out of memory" in table
    assert "| opt-125m | - | - | - | - | - | not run: budget |" in table


@pytest.mark.slow
def test_cpu_tiny_matrix_end_to_end(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_bench", "--all", "--cpu-tiny", "--out-dir", str(tmp_path),
                           "--per-config-s", "300"], capture_output=True, text=True, timeout=1200, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "gpu_results.json").read_text())["rows"]
    assert {(r["kind"], r["status"]) for r in rows} == {("train", "ok"), ("decode", "ok")}
    for r in rows:
        assert r["tokens_per_s"] > 0
        if r["kind"] == "train":
            assert r["mfu_basis"] == "measured-matmul:bfloat16" and r["mfu"] > 0
    assert "| micro | xla | full |" in (tmp_path / "gpu_table.md").read_text()
