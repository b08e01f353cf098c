"""Paper-scale estimate: step time and memory per GPU for OPT-IML 30B (64 A100s) and 175B (128 A100s).

Step time = model FLOPs of a step / (GPUs x peak x assumed MFU). Memory per GPU = sharded model state
+ FSDP gather buffers + activation checkpoints + one layer's working set + logits, where the per-layer working
set and the logits' cost per token are *measured* from XLA's memory analysis of our compiled (bf16, remat)
train step at two widths and depths, then scaled to the target width, heads and tensor-parallel degree.
"""
from __future__ import annotations

from typing import Any, Sequence

A100_40GB = {"name": "A100 40GB", "bf16_flops_per_s": 312e12, "memory_bytes": 40e9}

# Paper §3.3 / Table 3: sequence length 2048, global batch 256 (30B) and 128 (175B) sequences, 4000 / 8000
# steps in 19 h / 72 h; fp16 mixed precision with 32-bit Adam state; FSDP + Megatron tensor parallelism.
PAPER_RUNS: dict[str, dict[str, Any]] = {
    "opt-30b": {"gpus": 64, "global_batch": 256, "steps": 4000, "hours": 19.0},
    "opt-175b": {"gpus": 128, "global_batch": 128, "steps": 8000, "hours": 72.0},
}
SEQ_LEN = 2048
# Bytes per parameter across the job: fp16 weights + fp16 grads + fp32 master, Adam m and v.
STATE_BYTES_PER_PARAM = 2 + 2 + 4 + 4 + 4
ACT_BYTES = 2  # bf16/fp16 activations


def measure_layer_costs(*, widths: Sequence[int] = (384, 768), heads: int = 12, seq_len: int = 2048,
                        vocab_size: int | None = None) -> dict[str, Any]:
    """Temp bytes per token of our compiled bf16 remat train step with 1 and 2 layers at two widths.

    Returns the per-layer cost as `per_layer = a * hidden + c` (bytes per token; c holds the attention
    score/probability arrays, which scale with heads x length) and the non-layer cost per token per vocabulary
    entry (logits and their gradient).
    """
    from bench.common import bench_config
    from bench.train_step import OursStep

    if len(widths) != 2 or widths[0] >= widths[1]:
        raise ValueError(f"widths must be two increasing hidden sizes, got {widths}")
    per_layer, base = {}, {}
    for d in widths:
        temps = {}
        for layers in (1, 2):
            changes = dict(hidden_size=d, num_attention_heads=heads, ffn_dim=4 * d, num_hidden_layers=layers,
                           dtype="bfloat16", remat=True, dropout=0.0)
            if vocab_size:
                changes["vocab_size"] = vocab_size
            cfg = bench_config("125m-2l", seq_len, **changes)
            temps[layers] = OursStep(cfg, 1, seq_len).memory_analysis()["temp_size_in_bytes"] / seq_len
        per_layer[d] = temps[2] - temps[1]
        base[d] = temps[1] - per_layer[d]
    d0, d1 = widths
    a = (per_layer[d1] - per_layer[d0]) / (d1 - d0)
    c = per_layer[d0] - a * d0
    vocab = vocab_size or bench_config("125m-2l").vocab_size
    return {"widths": list(widths), "heads": heads, "seq_len": seq_len, "per_layer_bytes_per_token": per_layer,
            "bytes_per_token_per_hidden": a, "attention_bytes_per_token": c,
            "logits_bytes_per_token_per_vocab": base[d1] / vocab}


def estimate(name: str, costs: dict[str, Any], *, tensor_parallel: int, mfu: float,
             hardware: dict[str, Any] = A100_40GB) -> dict[str, Any]:
    """Step time and memory per GPU for one paper run under the stated assumptions."""
    from optiml_jax.models.configs import get_config

    run = PAPER_RUNS[name]
    cfg = get_config(name)
    g, t = run["gpus"], tensor_parallel
    if g % t or cfg.num_attention_heads % t:
        raise ValueError(f"{name}: tensor_parallel {t} must divide the GPUs ({g}) and heads")
    dp = g // t
    tokens_step = run["global_batch"] * SEQ_LEN
    tokens_rank = tokens_step / dp  # tokens each data-parallel rank (a TP group) processes
    flops = cfg.flops_per_token(SEQ_LEN) * tokens_step
    step_s = flops / (g * hardware["bf16_flops_per_s"] * mfu)
    paper_step_s = run["hours"] * 3600 / run["steps"]
    n, d, L = cfg.num_params(), cfg.hidden_size, cfg.num_hidden_layers
    layer_params = 12 * d * d + 13 * d
    heads_scale = cfg.num_attention_heads / costs["heads"] * SEQ_LEN / costs["seq_len"]
    mem = {
        "model_state": n * STATE_BYTES_PER_PARAM / g,
        "fsdp_gather_buffers": 2 * layer_params * 2 / t,  # current + prefetched layer, fp16, TP-sharded
        "activation_checkpoints": tokens_rank * d * ACT_BYTES * L,  # one residual per layer (remat)
        "layer_working_set": tokens_rank * (costs["bytes_per_token_per_hidden"] * d
                                            + costs["attention_bytes_per_token"] * heads_scale) / t,
        "logits": tokens_rank * costs["logits_bytes_per_token_per_vocab"] * cfg.vocab_size / t,
    }
    total = sum(mem.values())
    # Gradient accumulation over m microbatches divides every activation term by m (same step FLOPs).
    fixed = mem["model_state"] + mem["fsdp_gather_buffers"]
    act = total - fixed
    microbatches = None
    m = 1
    while m <= run["global_batch"] / dp:
        if fixed + act / m <= hardware["memory_bytes"]:
            microbatches = m
            break
        m *= 2
    return {
        "model": name, "gpus": g, "tensor_parallel": t, "data_parallel": dp, "global_batch": run["global_batch"],
        "sequences_per_dp_rank": run["global_batch"] / dp, "mfu_assumed": mfu, "model_flops_per_step": flops,
        "step_time_s": step_s, "paper_step_time_s": paper_step_s,
        "paper_implied_mfu": flops / (g * hardware["bf16_flops_per_s"] * paper_step_s),
        "memory_per_gpu_bytes": mem, "memory_total_per_gpu_bytes": total,
        "fits": total <= hardware["memory_bytes"],
        "microbatches_to_fit": microbatches,
        "memory_total_with_microbatches_bytes": fixed + act / microbatches if microbatches else None,
    }


def paper_scale(costs: dict[str, Any], *, mfu: float = 0.40, tensor_parallel: Sequence[int] = (1, 2, 4, 8)
                ) -> dict[str, Any]:
    """Estimates for both paper runs at each tensor-parallel degree (those that divide the heads)."""
    from optiml_jax.models.configs import get_config

    rows = []
    for name in PAPER_RUNS:
        heads = get_config(name).num_attention_heads
        rows += [estimate(name, costs, tensor_parallel=t, mfu=mfu) for t in tensor_parallel if heads % t == 0]
    return {
        "hardware": A100_40GB, "seq_len": SEQ_LEN, "measured_costs": costs, "rows": rows,
        "assumptions": [
            f"MFU {mfu:.0%} of {A100_40GB['bf16_flops_per_s'] / 1e12:.0f} TFLOP/s bf16 (model FLOPs: 6N + attention)",
            "fp16/bf16 weights and grads, fp32 master weights and Adam moments, all sharded over every GPU "
            "(FSDP over data-parallel ranks x Megatron TP)",
            "activation checkpointing per layer; checkpoints are replicated across a TP group (no sequence "
            "parallelism); layer working set and logits divided by TP",
            "per-layer working set and logits bytes/token measured from our compiled CPU step (bf16, remat) "
            "and scaled linearly in width, heads x length and vocabulary",
            "no allocator fragmentation, communication buffers or CUDA context (add ~2-4 GB in practice)",
        ],
    }
