"""Training-step throughput: our jitted step (optiml_jax.trainer) vs HF PyTorch, MFU, compiled-step memory."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Mapping, Sequence

import numpy as np

from bench.common import bench_config, interleaved_times, ratio, summarize


def synthetic_batch(vocab_size: int, batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A full batch in the feature-converter layout: one segment filling each row, loss on every token.

    Token values do not change the cost of a dense step; a single segment per row keeps the attention work
    identical to HF's plain causal mask so both sides do the same FLOPs.
    """
    if batch < 1 or seq_len < 2:
        raise ValueError(f"need batch >= 1 and seq_len >= 2, got {batch}, {seq_len}")
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, vocab_size, size=(batch, seq_len + 1), dtype=np.int32)
    return {
        "decoder_input_tokens": tokens[:, :-1].copy(),
        "decoder_target_tokens": tokens[:, 1:].copy(),
        "decoder_loss_weights": np.ones((batch, seq_len), np.float32),
        "decoder_segment_ids": np.ones((batch, seq_len), np.int32),
        "decoder_positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)).copy(),
    }


class OursStep:
    """The project's Trainer on one device; calling it runs one optimizer step and waits for it."""

    def __init__(self, config: Any, batch: int, seq_len: int, seed: int = 0, *,
                 mesh_shape: dict[str, int] | None = None, devices: Sequence[Any] | None = None,
                 ce_chunk_tokens: int | None = None, modules_at: tuple[str, Sequence[str]] | None = None):
        """``modules_at=(rev, module names)``: the step as it was with those modules at git revision ``rev``
        (`bench.revisions`); every trace and call runs inside the swap, so a retrace cannot pick up today's code.
        """
        import jax

        from optiml_jax import partitioning, trainer
        from optiml_jax.models.opt import OPTForCausalLM

        self.config, self.batch_size, self.seq_len = config, batch, seq_len
        mesh = partitioning.create_mesh(mesh_shape or {"data": 1},
                                        list(devices) if devices is not None else jax.devices()[:1])
        tcfg = trainer.TrainerConfig(optimizer=trainer.OptimizerConfig(learning_rate=1e-5, warmup_steps=0,
                                                                       total_steps=1000), seed=seed)
        if ce_chunk_tokens is not None:  # None: the trainer's default
            tcfg = dataclasses.replace(tcfg, ce_chunk_tokens=ce_chunk_tokens)
        self.trainer = trainer.Trainer(OPTForCausalLM(config), tcfg, mesh,
                                       partitioning.DEFAULT_LOGICAL_AXIS_RULES,
                                       global_batch_size=batch, seq_len=seq_len)
        self._state: Any = None  # initialised on first use: memory analysis needs only shapes
        self.modules_at = modules_at
        self.batch = synthetic_batch(config.vocab_size, batch, seq_len, seed)
        self.last_loss: float | None = None

    def _code(self) -> contextlib.AbstractContextManager:
        if self.modules_at is None:
            return contextlib.nullcontext()
        from bench.revisions import modules_at
        return modules_at(*self.modules_at)

    @property
    def state(self) -> Any:
        """The (lazily initialised, sharded) train state."""
        if self._state is None:
            with self._code():
                self._state = self.trainer.init_state()
        return self._state

    @state.setter
    def state(self, value: Any) -> None:
        self._state = value

    def params_numpy(self) -> Any:
        """The current parameters as host numpy arrays (for building the HF twin)."""
        import jax
        return jax.tree.map(np.asarray, self.state.params)

    def __call__(self) -> None:
        state = self.state
        with self._code():
            self.state, metrics = self.trainer.train_step(state, self.batch)
        self.last_loss = float(metrics["loss"])  # float() blocks until the step has finished

    def memory_analysis(self) -> dict[str, int]:
        """XLA's compiled-step memory analysis (argument/output/temp/alias bytes)."""
        with self._code():
            compiled = self.trainer.compile_train_step(self.batch)
        ma = compiled.memory_analysis()
        if ma is None:
            return {}
        fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
                  "generated_code_size_in_bytes")
        return {f: int(getattr(ma, f)) for f in fields if hasattr(ma, f)}


class HFStep:
    """HF `OPTForCausalLM` training step: forward with labels, backward, grad clipping, torch.optim.AdamW.

    ``autocast="bfloat16"`` runs the forward under ``torch.autocast("cpu", bfloat16)``, PyTorch's own mixed
    precision (f32 weights and AdamW state, bf16 matmuls): the like-for-like baseline of our bf16-compute step.
    """

    def __init__(self, config: Any, params: Any, batch: dict[str, np.ndarray],
                 attn_implementation: str = "sdpa", seed: int = 0, compile: bool = False,
                 autocast: str | None = None):
        import torch

        if autocast not in (None, "bfloat16"):
            raise ValueError(f"autocast must be None or 'bfloat16', got {autocast!r}")
        self.autocast = autocast

        from bench.hf import hf_model_from_params

        torch.manual_seed(seed)
        self.model = hf_model_from_params(config, params, attn_implementation=attn_implementation, train=True)
        # PyTorch's own best practice for a faster step: TorchInductor over the model (forward and backward;
        # the optimizer stays eager). Its first call compiles (about 2 minutes here): the warm-up pays it.
        self.params = list(self.model.parameters())
        self.forward = torch.compile(self.model) if compile else self.model
        # Same recipe as ours: (0.9, 0.95), eps 1e-8, weight decay 0.1, global-norm clip 1.0, fp32 state.
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8,
                                     weight_decay=0.1)
        # HF shifts labels inside the loss, so it gets seq_len + 1 tokens to score the same seq_len targets.
        full = np.concatenate([batch["decoder_input_tokens"], batch["decoder_target_tokens"][:, -1:]], axis=1)
        self.input_ids = torch.from_numpy(full[:, :-1].astype(np.int64))
        self.labels = torch.from_numpy(full[:, :-1].astype(np.int64))
        self.attention_mask = torch.ones_like(self.input_ids)
        self.last_loss: float | None = None
        self.last_logits_dtype: Any = None  # bf16 under autocast: what shows that autocast took effect

    def __call__(self) -> None:
        import torch

        self.opt.zero_grad(set_to_none=True)
        with (torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()):
            out = self.forward(input_ids=self.input_ids, attention_mask=self.attention_mask, labels=self.labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.last_loss = float(out.loss.detach())
        self.last_logits_dtype = out.logits.dtype


def compare_with_hf(model: str, *, batch: int, seq_len: int, repeats: int,
                    attn_implementation: str = "sdpa") -> dict[str, Any]:
    """Tokens/s of our train step and of HF's on the same config, weights, batch and length (f32, CPU).

    The two are timed round-robin in one process so that machine noise affects both alike.
    """
    cfg = bench_config(model, seq_len)
    ours = OursStep(cfg, batch, seq_len)
    hf = HFStep(cfg, ours.params_numpy(), ours.batch, attn_implementation=attn_implementation)
    times = interleaved_times({"ours": ours, "hf": hf}, repeats=repeats, warmup=1)
    tokens = batch * seq_len
    o, h = summarize(times["ours"]), summarize(times["hf"])
    return {
        "model": model, "batch": batch, "seq_len": seq_len, "dtype": "float32", "dropout": cfg.dropout,
        "hf_attn_implementation": attn_implementation, "num_params": cfg.num_params(),
        "ours": {**o, "tokens_per_s": tokens / o["median_s"], "final_loss": ours.last_loss},
        "hf": {**h, "tokens_per_s": tokens / h["median_s"], "final_loss": hf.last_loss},
        "ratio_ours_over_hf": ratio(tokens / o["median_s"], tokens / h["median_s"]),
    }


def _matmul_callable(size: int, dtype: str, min_seconds: float) -> tuple[Any, int]:
    """A zero-argument callable running `reps` jitted [size, size]^2 matmuls (f32 accumulation) to completion,
    with `reps` chosen so that one call lasts about `min_seconds`; returns (callable, reps).

    A peak sample as long as a train step averages over the same bursts of load from other processes; a single
    0.1 s matmul does not, and then the "peak" can come out below what the step achieves.
    """
    import time

    import jax
    import jax.numpy as jnp

    dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
    a = jax.device_put(jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32).astype(dt),
                       jax.devices()[0])
    mm = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))
    mm(a).block_until_ready()
    t0 = time.perf_counter()
    mm(a).block_until_ready()
    reps = max(1, min(1000, round(min_seconds / max(time.perf_counter() - t0, 1e-6))))

    def run() -> None:
        for _ in range(reps):
            out = mm(a)
        out.block_until_ready()

    return run, reps


def mfu_point(model: str, *, seq_len: int, tokens_per_step: int, repeats: int, peak_size: int,
              dtype: str = "float32", attention_kernel: str = "xla") -> dict[str, Any]:
    """Tokens/s and model-FLOPs utilisation of our train step for one (model, length).

    MFU = flops_per_token(seq_len) * tokens/s / peak, with the configs' PaLM-style FLOP count (6N + attention).
    On CPU the peak is a [peak_size]^3 matmul in the step's compute dtype, timed round-robin with the step (on a
    shared machine a peak measured minutes earlier can be off by 2x either way), labelled
    ``mfu_basis="measured-matmul:<dtype>"``; on a known GPU/TPU it is the chip's dense bf16 spec
    (`optiml_jax.flops`), and the matmul's rate is kept as ``matmul_flops_per_s``.
    """
    import jax

    from optiml_jax import flops

    batch = max(1, tokens_per_step // seq_len)
    cfg = bench_config(model, seq_len, dtype=dtype, attention_kernel=attention_kernel)
    ours = OursStep(cfg, batch, seq_len)
    ours()  # compile and time one step, so that each peak sample can last about as long
    t0 = time.perf_counter()
    ours()
    peak_fn, reps = _matmul_callable(peak_size, dtype, min(time.perf_counter() - t0, 5.0))
    times = interleaved_times({"ours": ours, "peak": peak_fn}, repeats=repeats, warmup=0)
    s, pk = summarize(times["ours"]), summarize(times["peak"])
    tokens = batch * seq_len
    fpt = cfg.flops_per_token(seq_len)
    peak_work = 2.0 * peak_size ** 3 * reps
    # A GPU/TPU in optiml_jax.flops.CHIPS: its spec peak; a CPU: the matmul timed round-robin with the step.
    peak = flops.resolve_peak(jax.devices()[:1], dtype=dtype, measure=lambda: peak_work / pk["median_s"])
    best_peak = peak.flops_per_s if peak.is_hardware_peak else peak_work / pk["best_s"]
    return {"model": model, "seq_len": seq_len, "batch": batch, "dtype": dtype,
            "attention_kernel": attention_kernel, "num_params": cfg.num_params(), "flops_per_token": fpt,
            "step": s, "tokens_per_s": tokens / s["median_s"], "model_flops_per_s": fpt * tokens / s["median_s"],
            "peak_flops_per_s": peak.flops_per_s, "mfu": fpt * tokens / s["median_s"] / peak.flops_per_s,
            "mfu_basis": peak.basis, "matmul_flops_per_s": peak_work / pk["median_s"],
            "best_mfu": (fpt * tokens / s["best_s"]) / best_peak, "peak_matmuls_per_sample": reps}


def mfu_sweep(models: Sequence[str], seq_lens: Sequence[int], *, tokens_per_step: int, repeats: int,
              peak_size: int, **kwargs: Any) -> list[dict[str, Any]]:
    """`mfu_point` for every (model, length)."""
    return [mfu_point(m, seq_len=L, tokens_per_step=tokens_per_step, repeats=repeats, peak_size=peak_size,
                      **kwargs)
            for m in models for L in seq_lens]


def step_memory(model: str, *, seq_len: int, batches: Sequence[int] = (1, 2)) -> dict[str, Any]:
    """Compiled-step memory of our train step at two batch sizes -> activation bytes per token and the
    largest batch that fits the host's available memory (CPU) or the device's limit (accelerators)."""
    from bench.common import device_memory_stats, machine_info

    if len(batches) != 2 or batches[0] >= batches[1]:
        raise ValueError(f"batches must be two increasing sizes, got {batches}")
    cfg = bench_config(model, seq_len)
    analyses = {}
    for b in batches:
        analyses[b] = OursStep(cfg, b, seq_len).memory_analysis()
    b0, b1 = batches
    if not analyses[b0] or "temp_size_in_bytes" not in analyses[b0]:
        return {"model": model, "seq_len": seq_len, "status": "skipped: no memory analysis on this backend"}
    temp0, temp1 = analyses[b0]["temp_size_in_bytes"], analyses[b1]["temp_size_in_bytes"]
    per_token = (temp1 - temp0) / ((b1 - b0) * seq_len)
    fixed = analyses[b0]["argument_size_in_bytes"] + temp0 - per_token * b0 * seq_len
    dev = device_memory_stats()
    limit = (dev or {}).get("bytes_limit") or machine_info().get("host_memory_available_bytes")
    largest = int((limit - fixed) // (per_token * seq_len)) if limit and per_token > 0 else None
    return {"model": model, "seq_len": seq_len, "analyses": {str(k): v for k, v in analyses.items()},
            "activation_bytes_per_token": per_token, "state_bytes": analyses[b0]["argument_size_in_bytes"],
            "memory_limit_bytes": limit, "largest_batch_that_fits": largest}


def step_variants(model: str, variants: dict[str, dict[str, Any]], *, batch: int, seq_len: int, repeats: int,
                  include_hf: bool = True, include_hf_compiled: bool = False, include_hf_bf16: bool = True,
                  peak_size: int = 2048, peak_seconds: float = 1.0) -> dict[str, Any]:
    """Seconds per train step of several variants of our step (``{"name": {"dtype": ..., "remat": ...,
    "ce_chunk_tokens": ..., "modules_at": (rev, module names)}}``; "modules_at" builds the step with those
    modules as they were at git revision ``rev``, see `bench.revisions`), HF PyTorch's f32 step (eager, and with
    ``include_hf_bf16`` under bf16 autocast) and the f32 and bf16 [peak_size]^3 matmuls (samples of
    ~``peak_seconds`` each), all round-robin in one process; plus each variant's compiled temp bytes.

    Returns per entry the summary, tokens/s and, for our variants, the ratios to HF (f32 eager; bf16 variants
    also to HF under bf16 autocast, the like-for-like baseline) and the share of the same-run matmul in the
    variant's dtype (model FLOPs/s / matmul FLOP/s: MFU against a measured matmul).
    """
    cfg0 = bench_config(model, seq_len)
    fns: dict[str, Any] = {}
    steps: dict[str, OursStep] = {}
    for name, v in variants.items():
        v = dict(v)
        chunk = v.pop("ce_chunk_tokens", None)
        at = v.pop("modules_at", None)
        steps[name] = OursStep(cfg0.replace(**v), batch, seq_len, ce_chunk_tokens=chunk, modules_at=at)
        fns[name] = steps[name]
    first = next(iter(steps.values()))
    if include_hf:
        fns["hf"] = HFStep(cfg0, first.params_numpy(), first.batch)
    if include_hf_compiled:
        fns["hf_compiled"] = HFStep(cfg0, first.params_numpy(), first.batch, compile=True)
    if include_hf_bf16:
        fns["hf_bf16"] = HFStep(cfg0, first.params_numpy(), first.batch, autocast="bfloat16")
    # Each peak sample is ~1 s of back-to-back matmuls: a single 0.1 s matmul right after a step came out
    # 25% below the machine's rate (thread wake-up, cold caches), making the step look faster than the peak.
    matmul_reps: dict[str, int] = {}
    for dtype in ("float32", "bfloat16"):
        fns[f"matmul_{dtype}"], matmul_reps[dtype] = _matmul_callable(peak_size, dtype, peak_seconds)
    times = interleaved_times(fns, repeats=repeats, warmup=1)
    tokens = batch * seq_len
    fpt = cfg0.flops_per_token(seq_len)
    out: dict[str, Any] = {"model": model, "batch": batch, "seq_len": seq_len, "flops_per_token": fpt,
                           "peak_size": peak_size, "entries": {}}
    for name, t in times.items():
        out["entries"][name] = {**summarize(t), "tokens_per_s": tokens / summarize(t)["median_s"]}
    for dtype in ("float32", "bfloat16"):
        e = out["entries"][f"matmul_{dtype}"]
        e["reps"] = matmul_reps[dtype]
        e["flops_per_s"] = 2.0 * peak_size ** 3 * matmul_reps[dtype] / e["median_s"]
        e["best_flops_per_s"] = 2.0 * peak_size ** 3 * matmul_reps[dtype] / e["best_s"]
    for name, step in steps.items():
        e = out["entries"][name]
        dtype = step.config.dtype
        e.update(dtype=dtype, remat=step.config.remat, ce_chunk_tokens=step.trainer.config.ce_chunk_tokens,
                 code=("working tree" if step.modules_at is None
                       else f"{', '.join(step.modules_at[1])} at {step.modules_at[0]}"),
                 model_flops_per_s=fpt * e["tokens_per_s"],
                 mfu_vs_same_run_matmul=fpt * e["tokens_per_s"] / out["entries"][f"matmul_{dtype}"]["flops_per_s"],
                 best_mfu_vs_same_run_matmul=(fpt * tokens / e["best_s"])
                 / out["entries"][f"matmul_{dtype}"]["best_flops_per_s"],
                 temp_bytes=step.memory_analysis().get("temp_size_in_bytes"))
        if include_hf:
            e["ratio_over_hf"] = ratio(e["tokens_per_s"], out["entries"]["hf"]["tokens_per_s"])
            e["best_ratio_over_hf"] = ratio(out["entries"]["hf"]["best_s"], e["best_s"])
        if include_hf_compiled:
            e["ratio_over_hf_compiled"] = ratio(e["tokens_per_s"], out["entries"]["hf_compiled"]["tokens_per_s"])
        if include_hf_bf16 and dtype == "bfloat16":
            e["ratio_over_hf_bf16"] = ratio(e["tokens_per_s"], out["entries"]["hf_bf16"]["tokens_per_s"])
    return out


# The step variants of the issue-17 table: f32 and bf16 compute; full logits by autodiff (chunk 0, the
# reference), the trainer's default chunk (2,048 logits rows: one chunk at 4 x 512), chunks of 256 rows, and
# those with the attention's causal query blocks.
STANDARD_VARIANTS: dict[str, dict[str, Any]] = {
    "f32, full logits": {"dtype": "float32", "ce_chunk_tokens": 0},
    "f32, default chunk": {"dtype": "float32"},
    "f32, chunks of 256": {"dtype": "float32", "ce_chunk_tokens": 256},
    "bf16 compute, full logits": {"dtype": "bfloat16", "ce_chunk_tokens": 0},
    "bf16 compute, default chunk": {"dtype": "bfloat16"},
    "bf16 compute, chunks of 256": {"dtype": "bfloat16", "ce_chunk_tokens": 256},
    # Causal block skipping of the XLA attention (OPTConfig.attention_query_block), the CPU's best settings;
    # f32 with chunks of 512 too: the f32 step's best chunk in all three sweeps so far (bench/README.md).
    "f32, chunks of 256, query blocks of 128": {"dtype": "float32", "ce_chunk_tokens": 256,
                                                "attention_query_block": 128},
    "f32, chunks of 512, query blocks of 128": {"dtype": "float32", "ce_chunk_tokens": 512,
                                                "attention_query_block": 128},
    "bf16 compute, chunks of 256, query blocks of 128": {"dtype": "bfloat16", "ce_chunk_tokens": 256,
                                                         "attention_query_block": 128},
}


def variants_markdown(result: Mapping[str, Any]) -> str:
    """The step-variant table (median and best seconds, ratios to HF eager, compiled and, for bf16 variants,
    under bf16 autocast; share of the same-run matmul, compiled temporaries; the run's malloc)."""
    e = result["entries"]
    malloc = result.get("machine", {}).get("malloc")
    lines = [f"Train step, {result['model']}, {result['batch']} x {result['seq_len']}, one round-robin "
             f"(load {result.get('load', '?')}{f'; malloc: {malloc}' if malloc else ''}):", "",
             "| step | median s | best s | vs HF eager | vs HF torch.compile | vs HF bf16 autocast | model FLOP/s / "
             "same-run matmul (not a hardware peak) | compiled temp |", "|---|---|---|---|---|---|---|---|"]

    def f(x: Any, fmt: str = "{:.3g}") -> str:
        return "-" if x is None else fmt.format(x)

    for name, r in e.items():
        if name.startswith("matmul_") or name.startswith("hf"):
            continue
        temp = r.get("temp_bytes")
        lines.append(f"| {name} | {f(r['median_s'])} | {f(r['best_s'])} | {f(r.get('ratio_over_hf'), '{:.2f}x')} | "
                     f"{f(r.get('ratio_over_hf_compiled'), '{:.2f}x')} | {f(r.get('ratio_over_hf_bf16'), '{:.2f}x')} | "
                     f"{f(r['mfu_vs_same_run_matmul'], '{:.0%}')} | {f(temp and temp / 1e9, '{:.2f} GB')} |")
    for name, label in (("hf", "HF PyTorch f32 (eager)"), ("hf_compiled", "HF PyTorch f32, torch.compile"),
                        ("hf_bf16", "HF PyTorch, bf16 autocast (eager)")):
        if name in e:
            lines.append(f"| {label} | {f(e[name]['median_s'])} | {f(e[name]['best_s'])} | - | - | - | - | - |")
    m32, m16 = e["matmul_float32"], e["matmul_bfloat16"]
    r32, r16 = m32.get("reps", 1), m16.get("reps", 1)  # seconds per matmul; each sample ran `reps` of them
    lines.append(f"| {result.get('peak_size', 2048)}^3 matmul f32 / bf16 (samples of {r32} / {r16}) | "
                 f"{f(m32['median_s'] / r32)} / {f(m16['median_s'] / r16)} | {f(m32['best_s'] / r32)} / "
                 f"{f(m16['best_s'] / r16)} | - | - | - | "
                 f"{m32['flops_per_s'] / 1e9:.0f} / {m16['flops_per_s'] / 1e9:.0f} GFLOP/s | - |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m bench.train_step` times `STANDARD_VARIANTS`, HF eager, HF with torch.compile, HF under
    bf16 autocast, and both matmuls round-robin; writes bench/results/step_variants.{json,md}."""
    import argparse
    import os
    import sys

    from bench.common import machine_info, setup_threads, write_results

    p = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    p.add_argument("--model", default="125m-2l")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no_compile", action="store_true", help="leave out HF with torch.compile")
    p.add_argument("--no_hf_bf16", action="store_true", help="leave out HF under bf16 autocast")
    p.add_argument("--only", action="append", metavar="SUBSTR", default=None,
                   help="time only the standard variants whose name contains SUBSTR (repeatable)")
    p.add_argument("--before", metavar="REV", default=None,
                   help="also time each variant with --before_modules as they were at git revision REV")
    p.add_argument("--before_modules", default="optiml_jax.losses",
                   help="comma-separated modules taken from --before (default: optiml_jax.losses)")
    p.add_argument("--out_dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)
    for name in ("batch", "seq_len", "repeats"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be a positive integer, got {getattr(args, name)}", file=sys.stderr)
            return 2
    standard = {k: v for k, v in STANDARD_VARIANTS.items() if not args.only or any(o in k for o in args.only)}
    if not standard:
        print(f"error: --only {args.only} matches none of {list(STANDARD_VARIANTS)}", file=sys.stderr)
        return 2
    variants = dict(standard)
    if args.before is not None:
        from bench.revisions import resolve

        try:
            rev = resolve(args.before)
        except ValueError as e:
            print(f"error: --before: {e}", file=sys.stderr)
            return 2
        names = tuple(n.strip() for n in args.before_modules.split(",") if n.strip())
        bad = [n for n in names if not n.startswith("optiml_jax.")]
        if not names or bad:
            print(f"error: --before_modules must name optiml_jax modules, got {args.before_modules!r}",
                  file=sys.stderr)
            return 2
        variants = {}
        for name, v in standard.items():
            variants[f"{name} (before: {rev[:7]})"] = {**v, "modules_at": (rev, names)}
            variants[name] = v
    setup_threads()
    load0 = os.getloadavg()[0]
    result = step_variants(args.model, variants, batch=args.batch, seq_len=args.seq_len,
                           repeats=args.repeats, include_hf_compiled=not args.no_compile,
                           include_hf_bf16=not args.no_hf_bf16)
    result["load"] = f"{load0:.1f} -> {os.getloadavg()[0]:.1f}"
    result["machine"] = machine_info()
    write_results(args.out_dir, "step_variants", result, variants_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
