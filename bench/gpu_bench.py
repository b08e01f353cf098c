"""One-GPU training and decoding benchmark (what `bench/gpu.sh` runs): bf16 MFU, tokens/s and memory per
(model, attention kernel, remat policy) at 2048, and greedy decoding tokens/s; writes a markdown table.

    python -m bench.gpu_bench --all --out-dir bench/results/gpu [--budget-s 450]   # the matrix (gpu.sh)
    python -m bench.gpu_bench --all --cpu-tiny --out-dir /tmp/gpu_cpu              # same code path, tiny, on CPU
    python -m bench.gpu_bench --one train --model opt-125m --kernel cudnn --remat none --out r.json  # one point

The driver runs every configuration in its own subprocess with a time limit (a kernel that fails to compile,
runs out of memory or hangs is a row of the table saying so, never the end of the run) and stops starting new
ones when the overall budget is spent (those rows read "not run: budget"). MFU divides model FLOPs
(`OPTConfig.flops_per_token`, attention counted non-causally; the causal figure is in the JSON) by the chip's
dense bf16 spec peak (`optiml_jax.flops`); on CPU (``--cpu-tiny``) by a same-run matmul, labelled
"measured-matmul". Training = the project's `Trainer` step (forward, backward, clipping, AdamW; f32 master
weights, bf16 compute, dropout 0) on synthetic full rows.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any

# Order = priority: the driver runs them in this order until the budget is spent. The 1.3b points with the
# XLA kernel recompute attention (its [B, heads, L, L] f32 scores for 24 layers would not fit otherwise).
GPU_TRAIN_MATRIX: tuple[tuple[str, str, str], ...] = (
    ("opt-125m", "xla", "none"), ("opt-125m", "cudnn", "none"), ("opt-125m", "pallas", "none"),
    ("opt-1.3b", "cudnn", "none"), ("opt-1.3b", "cudnn", "dots_with_no_batch_dims_saveable"),
    ("opt-1.3b", "cudnn", "full"), ("opt-1.3b", "pallas", "none"),
    ("opt-1.3b", "xla", "dots_with_no_batch_dims_saveable"),
    ("opt-350m", "cudnn", "none"), ("opt-350m", "xla", "none"), ("opt-350m", "pallas", "none"),
)
GPU_DECODE_MODELS: tuple[str, ...] = ("opt-125m", "opt-1.3b")
# The CPU check of the driver: the XLA kernel only (cuDNN does not exist there, Pallas interprets slowly).
CPU_TRAIN_MATRIX: tuple[tuple[str, str, str], ...] = (("micro", "xla", "none"), ("micro", "xla", "full"))
CPU_DECODE_MODELS: tuple[str, ...] = ("micro",)


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Sequence length, rows per step, timed steps; decoding batch, prompt and new tokens."""

    seq_len: int = 2048
    batch: int = 8
    steps: int = 5
    decode_batch: int = 8
    prompt_len: int = 128
    new_tokens: int = 128

    @classmethod
    def cpu_tiny(cls) -> "Shapes":
        """Seconds on a CPU: the end-to-end check of the script, numbers meaningless."""
        return cls(seq_len=128, batch=2, steps=2, decode_batch=2, prompt_len=16, new_tokens=8)


# ---- one configuration (runs inside the subprocess) -----------------------------------------------------------
def _peak(dtype: str) -> Any:
    import jax

    from optiml_jax import flops, trainer

    return flops.resolve_peak(jax.devices(), dtype=dtype,
                              measure=lambda: trainer.measure_peak_flops(getattr(jax.numpy, dtype)))


def train_point(model: str, kernel: str, remat: str, shapes: Shapes) -> dict[str, Any]:
    """Tokens/s, MFU and memory of the bf16 train step for one (model, kernel, remat)."""
    import jax

    from bench.common import bench_config, device_memory_stats
    from bench.train_step import OursStep
    from optiml_jax import flops

    cfg = bench_config(model, shapes.seq_len, dtype="bfloat16", dropout=0.0, attention_kernel=kernel,
                       remat=remat)
    step = OursStep(cfg, shapes.batch, shapes.seq_len)
    # A second compilation costs budget: on accelerators the allocator's peak is the figure that matters.
    compiled = step.memory_analysis() if jax.devices()[0].platform == "cpu" else None
    t0 = time.perf_counter()
    step()  # compile + first step
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(shapes.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    best = min(times)
    tokens = shapes.batch * shapes.seq_len
    peak = _peak("bfloat16")
    fpt = cfg.flops_per_token(shapes.seq_len)
    tps = tokens / best
    return {"kind": "train", "model": model, "kernel": kernel, "remat": remat, "seq_len": shapes.seq_len,
            "batch": shapes.batch, "step_s": best, "compile_s": compile_s, "tokens_per_s": tps,
            "mfu": flops.mfu(fpt, tps, peak),
            "mfu_causal": flops.mfu(cfg.flops_per_token(shapes.seq_len, causal_attention=True), tps, peak),
            "mfu_basis": peak.basis, "loss": step.last_loss, "device": jax.devices()[0].device_kind,
            "device_memory": device_memory_stats(), "compiled_memory": compiled}


def decode_point(model: str, shapes: Shapes) -> dict[str, Any]:
    """Greedy decoding new tokens/s (bf16 weights and compute, KV cache) of one model."""
    import jax
    import numpy as np

    from bench.common import bench_config, device_memory_stats
    from bench.decode import greedy_prompts, ours_greedy
    from optiml_jax.models.opt import OPTForCausalLM

    cfg = bench_config(model, shapes.prompt_len + shapes.new_tokens, dtype="bfloat16", param_dtype="bfloat16",
                       dropout=0.0)
    m = OPTForCausalLM(cfg)
    params = m.init_params(jax.random.PRNGKey(0))
    prompts = greedy_prompts(np.random.default_rng(0), cfg, shapes.decode_batch, shapes.prompt_len)
    t0 = time.perf_counter()
    ours_greedy(m, params, prompts, shapes.new_tokens)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = ours_greedy(m, params, prompts, shapes.new_tokens)
        times.append(time.perf_counter() - t0)
    if out.shape != (shapes.decode_batch, shapes.new_tokens):
        raise RuntimeError(f"generate returned {out.shape}")
    return {"kind": "decode", "model": model, "batch": shapes.decode_batch, "prompt_len": shapes.prompt_len,
            "new_tokens": shapes.new_tokens, "seconds": min(times), "compile_s": compile_s,
            "tokens_per_s": shapes.decode_batch * shapes.new_tokens / min(times),
            "device": jax.devices()[0].device_kind, "device_memory": device_memory_stats()}


# ---- the driver ----------------------------------------------------------------------------------------------
def _run_one(args: list[str], out_path: str, timeout_s: float) -> dict[str, Any]:
    """Runs ``python -m bench.gpu_bench --one ...`` with a time limit; the row it wrote, or why there is none."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "bench.gpu_bench", "--one", *args, "--out", out_path]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout_s:.0f} s", "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    if proc.returncode == 0 and os.path.exists(out_path):
        with open(out_path) as f:
            return {**json.load(f), "status": "ok", "wall_s": wall}
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()
    reason = next((line for line in reversed(tail) if "Error" in line or "error" in line), tail[-1] if tail else "")
    if "RESOURCE_EXHAUSTED" in (proc.stderr or "") or "out of memory" in (proc.stderr or "").lower():
        reason = "out of memory: " + reason
    return {"status": f"failed (exit {proc.returncode}): {reason[:300]}", "wall_s": wall}


def run_matrix(out_dir: str, *, cpu_tiny: bool, budget_s: float, per_config_s: float,
               train_matrix: tuple[tuple[str, str, str], ...] | None = None,
               decode_models: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Every configuration in its own subprocess, in priority order, until ``budget_s`` is spent."""
    os.makedirs(out_dir, exist_ok=True)
    train_matrix = train_matrix or (CPU_TRAIN_MATRIX if cpu_tiny else GPU_TRAIN_MATRIX)
    decode_models = decode_models or (CPU_DECODE_MODELS if cpu_tiny else GPU_DECODE_MODELS)
    jobs: list[tuple[dict[str, Any], list[str]]] = []
    flags = ["--cpu-tiny"] if cpu_tiny else []
    for model, kernel, remat in train_matrix:
        jobs.append(({"kind": "train", "model": model, "kernel": kernel, "remat": remat},
                     ["train", "--model", model, "--kernel", kernel, "--remat", remat, *flags]))
    # Decoding goes second in priority: after the first three training points (the 125m kernel comparison).
    for i, model in enumerate(decode_models):
        jobs.insert(min(3 + i, len(jobs)), ({"kind": "decode", "model": model}, ["decode", "--model", model, *flags]))
    start = time.perf_counter()
    rows = []
    for i, (row, args) in enumerate(jobs):
        left = budget_s - (time.perf_counter() - start)
        if left < 20:
            rows.append({**row, "status": "not run: budget"})
            continue
        out = os.path.join(out_dir, f"point_{i:02d}.json")
        if os.path.exists(out):
            os.remove(out)
        result = _run_one(args, out, min(per_config_s, left))
        rows.append({**row, **result})
        print(f"[gpu_bench] {row} -> {result['status']} ({result['wall_s']:.0f} s)", flush=True)
    return rows


def _bytes(n: Any) -> str:
    if not n:
        return "-"
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


def markdown_table(rows: list[dict[str, Any]], *, header: str) -> str:
    """The README table: one line per configuration, failures and skipped points included."""
    lines = [header, "",
             "| model | kernel | remat | tokens/s | MFU | MFU, causal attention | step s | peak device memory "
             "| compiled temp | MFU peak | status |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["kind"] == "train"):
        ok = r["status"] == "ok"
        dev = (r.get("device_memory") or {}).get("peak_bytes_in_use")
        temp = (r.get("compiled_memory") or {}).get("temp_size_in_bytes")
        lines.append(f"| {r['model']} | {r['kernel']} | {r['remat']} | "
                     + (f"{r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['mfu_causal']:.1%} | {r['step_s']:.3f} | "
                        f"{_bytes(dev)} | {_bytes(temp)} | {r['mfu_basis']} | ok |" if ok else
                        f"- | - | - | - | - | - | - | {r['status']} |"))
    lines += ["", "| greedy decoding | batch | prompt | new tokens | new tokens/s | peak device memory | status |",
              "|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["kind"] == "decode"):
        if r["status"] == "ok":
            dev = (r.get("device_memory") or {}).get("peak_bytes_in_use")
            lines.append(f"| {r['model']} | {r['batch']} | {r['prompt_len']} | {r['new_tokens']} | "
                         f"{r['tokens_per_s']:,.0f} | {_bytes(dev)} | ok |")
        else:
            lines.append(f"| {r['model']} | - | - | - | - | - | {r['status']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--all", action="store_true", help="run the whole matrix, one subprocess per point")
    mode.add_argument("--one", choices=("train", "decode"), help="run one point in this process")
    p.add_argument("--cpu-tiny", action="store_true", help="tiny shapes and models, runnable on a CPU")
    p.add_argument("--model")
    p.add_argument("--kernel", default="xla")
    p.add_argument("--remat", default="none")
    p.add_argument("--out", help="--one: where to write the JSON row")
    p.add_argument("--out-dir", default="bench/results/gpu")
    p.add_argument("--budget-s", type=float, default=450.0, help="--all: stop starting points after this")
    p.add_argument("--per-config-s", type=float, default=150.0, help="--all: time limit of one point")
    args = p.parse_args(argv)
    shapes = Shapes.cpu_tiny() if args.cpu_tiny else Shapes()
    if args.one:
        if not args.model or not args.out:
            p.error("--one needs --model and --out")
        row = train_point(args.model, args.kernel, args.remat, shapes) if args.one == "train" else \
            decode_point(args.model, shapes)
        with open(args.out, "w") as f:
            json.dump(row, f)
        return 0
    t0 = time.perf_counter()
    rows = run_matrix(args.out_dir, cpu_tiny=args.cpu_tiny, budget_s=args.budget_s,
                      per_config_s=args.per_config_s)
    import jax  # after the subprocesses: this process never holds the device while they run

    dev = jax.devices()[0]
    header = (f"### One {dev.device_kind} ({dev.platform}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
              f"bf16 training at {shapes.seq_len} x {shapes.batch} rows, best of {shapes.steps} steps; "
              f"{time.perf_counter() - t0:.0f} s in all. MFU = model FLOPs (attention non-causal unless said) / the "
              "peak named in its column (spec = the chip's dense bf16 figure; measured-matmul = a matmul timed "
              "in the same run, not a hardware peak)")
    table = markdown_table(rows, header=header)
    with open(os.path.join(args.out_dir, "gpu_table.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.out_dir, "gpu_results.json"), "w") as f:
        json.dump({"shapes": dataclasses.asdict(shapes), "rows": rows}, f, indent=1)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
