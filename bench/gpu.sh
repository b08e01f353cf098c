#!/usr/bin/env bash
# One-GPU benchmark of issue 17 (bench/gpu_bench.py): bf16 MFU and tokens/s of opt-125m/350m/1.3b at 2048 per
# attention kernel and remat policy, device memory, greedy decoding tokens/s; at most 8 minutes, writes
# bench/results/gpu/gpu_table.md (the README table) and gpu_results.json. Without a GPU: "skipped: no GPU", exit 0.
#   bash bench/gpu.sh                 # OUT_DIR=... to write elsewhere; extra args go to bench.gpu_bench
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${OUT_DIR:-bench/results/gpu}"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
  echo "skipped: no GPU"
  exit 0
fi
if ! timeout 60 python -c "import jax, sys; sys.exit(jax.devices()[0].platform != 'gpu')" >/dev/null 2>&1; then
  echo "error: a GPU is present but JAX does not see it (pip install -U 'jax[cuda12]')" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# 450 s of points + start-up and the table, inside the 8 minutes; each point has its own limit in the driver.
timeout 470 python -m bench.gpu_bench --all --budget-s 420 --per-config-s 120 --out-dir "$OUT_DIR" "$@"
rc=$?
if [ "$rc" -ne 0 ]; then
  echo "error: bench.gpu_bench exited with $rc (the rows measured so far are in $OUT_DIR/point_*.json)" >&2
fi
exit "$rc"
