"""Attention kernels: compiled memory per kernel, lowering for GPU/TPU, and CPU times: `python -m bench.attention`.

What this CPU machine can honestly measure about the fused kernels (models/attention.py):
- compiled memory (`jit(...).lower(...).compile().memory_analysis()`) of one attention call, forward and
  backward, and of a whole train step, per kernel, plus whether the compiled program holds any tensor with two
  sequence-length dimensions (a [B, H, L, L] score or mask tensor). "pallas" and "splash" compile here in the
  Pallas interpreter, which runs the kernel's own blocked loops as XLA while loops: its memory shows the
  algorithm's (no L x L tensor), not the GPU's or TPU's. "cudnn" compiles here as implementation="xla", the
  materialising reference of the same call: its CPU memory says nothing of cuDNN's.
- lowering for the accelerators without one: "pallas" lowers for CUDA to Triton custom calls and "splash" for
  TPU to a Mosaic custom call (their StableHLO is inspected for L x L tensors); "cudnn" cannot lower here
  (JAX asks the driver for cuDNN's version while tracing).
- CPU wall times of one forward + backward, interleaved. The interpreter is orders of magnitude slower than
  a compiled kernel: its times are no speed measure of the kernels, only of what CPU tests cost.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from bench.common import bench_config, interleaved_times, summarize

KERNEL_LABELS = {
    "xla": "xla (einsum + softmax)",
    "pallas": "pallas (Pallas interpreter on CPU)",
    "splash": "splash (Pallas interpreter on CPU)",
    "cudnn": "cudnn (implementation='xla' on CPU)",
}
_MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                  "generated_code_size_in_bytes")


def _kernel_fn(kernel: str) -> Callable[..., Any]:
    """[B, L, H, D] x3 + segment ids [B, L] -> [B, L, H, D] for one kernel, in its CPU form."""
    import jax.numpy as jnp

    from optiml_jax.models import attention

    if kernel == "xla":
        def xla(q, k, v, seg):
            idx = jnp.arange(seg.shape[1], dtype=jnp.int32)
            return attention.xla_attention(q, k, v, attention.AttentionSegments(seg, seg, idx, idx))
        return xla
    if kernel == "pallas":
        return lambda q, k, v, seg: attention.pallas_attention(q, k, v, seg, interpret=True)
    if kernel == "splash":
        return lambda q, k, v, seg: attention.splash_attention(q, k, v, seg, interpret=True)
    if kernel == "cudnn":
        return lambda q, k, v, seg: attention.cudnn_attention(q, k, v, seg, implementation="xla")
    raise ValueError(f"unknown kernel {kernel!r}")


def _fwd_bwd(fn: Callable[..., Any]) -> Callable[..., Any]:
    """(q, k, v, seg) -> (output, dq, dk, dv) with the output itself as the cotangent."""
    import jax

    def run(q, k, v, seg):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, seg), q, k, v)
        return (out, *vjp(out))
    return run


def _shapes(batch: int, seq_len: int, heads: int, head_dim: int, dtype: str) -> tuple[Any, ...]:
    import jax
    import jax.numpy as jnp

    x = jax.ShapeDtypeStruct((batch, seq_len, heads, head_dim), jnp.dtype(dtype))
    return x, x, x, jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)


def square_tensors(hlo_text: str, seq_len: int) -> list[str]:
    """Distinct array shapes in an HLO/StableHLO text with at least two dimensions equal to ``seq_len``."""
    shapes = set(re.findall(r"\b[a-z]+\d*\[([\d,]+)\]", hlo_text))          # HLO: f32[1,4,2048,2048]
    shapes |= {s.replace("x", ",") for s in re.findall(r"tensor<([\dx]+)x[a-z]", hlo_text)}  # StableHLO
    return sorted(s for s in shapes if s.split(",").count(str(seq_len)) >= 2)


def attention_memory(kernels: tuple[str, ...], *, batch: int, seq_len: int, heads: int, head_dim: int,
                     dtype: str = "float32") -> list[dict[str, Any]]:
    """Compiled CPU memory of one attention forward + backward per kernel."""
    import jax

    rows = []
    for kernel in kernels:
        compiled = jax.jit(_fwd_bwd(_kernel_fn(kernel))).lower(
            *_shapes(batch, seq_len, heads, head_dim, dtype)).compile()
        ma = compiled.memory_analysis()
        row: dict[str, Any] = {"kernel": kernel, "label": KERNEL_LABELS[kernel]}
        row.update({f: int(getattr(ma, f)) for f in _MEMORY_FIELDS if ma is not None and hasattr(ma, f)})
        row["square_tensors"] = square_tensors(compiled.as_text(), seq_len)
        rows.append(row)
    return rows


def train_step_memory(kernels: tuple[str, ...], *, model: str, batch: int, seq_len: int) -> list[dict[str, Any]]:
    """Compiled memory of the project's whole train step (Trainer) per kernel (compile only, nothing runs)."""
    from bench.train_step import OursStep

    rows = []
    for kernel in kernels:
        cfg = bench_config(model, seq_len, attention_kernel=kernel)
        step = OursStep(cfg, batch, seq_len)
        row: dict[str, Any] = {"kernel": kernel, "label": KERNEL_LABELS[kernel], "model": model}
        row.update(step.memory_analysis())
        row["square_tensors"] = square_tensors(step.trainer.compile_train_step(step.batch).as_text(), seq_len)
        rows.append(row)
    return rows


def accelerator_lowering(*, batch: int, seq_len: int, heads: int, head_dim: int) -> list[dict[str, Any]]:
    """Lowers forward + backward of the fused kernels for the platform they compile on (bf16), here."""
    import jax

    from optiml_jax.models import attention

    targets = (("pallas", "cuda", lambda q, k, v, s: attention.pallas_attention(q, k, v, s, interpret=False)),
               ("splash", "tpu", lambda q, k, v, s: attention.splash_attention(q, k, v, s, interpret=False)),
               ("cudnn", "cuda", lambda q, k, v, s: attention.cudnn_attention(q, k, v, s, implementation="cudnn")))
    rows = []
    for kernel, platform, fn in targets:
        row: dict[str, Any] = {"kernel": kernel, "platform": platform}
        try:
            text = jax.jit(_fwd_bwd(fn)).trace(*_shapes(batch, seq_len, heads, head_dim, "bfloat16")).lower(
                lowering_platforms=(platform,)).as_text()
        except Exception as e:  # noqa: BLE001  (recorded: "cudnn" needs the driver to trace)
            row["status"] = f"cannot lower here: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            rows.append(row)
            continue
        calls = re.findall(r"custom_call @([\w$.]+)", text)
        row.update(status="lowered", custom_calls={c: calls.count(c) for c in sorted(set(calls))},
                   square_tensors=square_tensors(text, seq_len))
        rows.append(row)
    return rows


def cpu_times(kernels: tuple[str, ...], *, batch: int, seq_len: int, heads: int, head_dim: int,
              repeats: int) -> list[dict[str, Any]]:
    """Interleaved CPU wall times of one forward + backward per kernel (the interpreter's are no speed measure)."""
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    q, k, v = (jax.numpy.asarray(rng.standard_normal((batch, seq_len, heads, head_dim)), "float32")
               for _ in range(3))
    seg = np.ones((batch, seq_len), np.int32)
    seg[:, seq_len // 2:] = 2
    seg[:, -seq_len // 8:] = 0
    seg = jax.numpy.asarray(seg)
    fns = {}
    for kernel in kernels:
        compiled = jax.jit(_fwd_bwd(_kernel_fn(kernel)))
        fns[kernel] = (lambda c=compiled: jax.block_until_ready(c(q, k, v, seg)))
    times = interleaved_times(fns, repeats=repeats, warmup=1)
    base = summarize(times["xla"])["median_s"] if "xla" in times else None
    return [{"kernel": kname, "label": KERNEL_LABELS[kname], **summarize(t),
             "over_xla": summarize(t)["median_s"] / base if base else None} for kname, t in times.items()]


def measure(*, seq_len: int = 2048, batch: int = 1, heads: int = 32, head_dim: int = 64,
            step_model: str = "tiny", step_batch: int = 1, time_seq_len: int = 256, time_heads: int = 4,
            repeats: int = 3, kernels: tuple[str, ...] = ("xla", "pallas", "splash", "cudnn")) -> dict[str, Any]:
    """The attention section of the benchmark record."""
    from optiml_jax.models.configs import ATTENTION_KERNELS

    unknown = [k for k in kernels if k not in ATTENTION_KERNELS]
    if unknown:
        raise ValueError(f"unknown attention kernel(s) {unknown}; valid: {ATTENTION_KERNELS}")
    shape = {"batch": batch, "seq_len": seq_len, "heads": heads, "head_dim": head_dim}
    return {
        "shape": shape,
        "scores_bytes_f32": batch * heads * seq_len * seq_len * 4,  # one [B, H, L, L] f32 tensor
        "attention_memory": attention_memory(kernels, **shape),
        "train_step_memory": train_step_memory(kernels, model=step_model, batch=step_batch, seq_len=seq_len),
        "accelerator_lowering": accelerator_lowering(**shape),
        "cpu_times": cpu_times(kernels, batch=batch, seq_len=time_seq_len, heads=time_heads, head_dim=head_dim,
                               repeats=repeats),
        "time_shape": {"batch": batch, "seq_len": time_seq_len, "heads": time_heads, "head_dim": head_dim},
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# Sizes per bench.run mode ("default" is the run recorded in bench/README.md). The L x L column means something
# only at the default length: when a kernel's tile spans the whole sequence (pallas up to 128, splash up to 512)
# its block-sized masks are L x L, and splash lays segment ids out as [L, 128] lanes.
SIZES_BY_MODE: dict[str, dict[str, Any]] = {
    "default": {"seq_len": 2048, "heads": 32, "time_seq_len": 512, "repeats": 3},
    "quick": {"seq_len": 512, "heads": 8, "time_seq_len": 128, "repeats": 2},
    # Schema only: two kernels, the micro model (the interpreter's compile dominates).
    "smoke": {"seq_len": 64, "heads": 2, "time_seq_len": 32, "repeats": 1, "step_model": "micro",
              "kernels": ("xla", "pallas")},
}


def measure_mode(mode: str) -> dict[str, Any]:
    """`measure` at the sizes of a bench.run mode."""
    if mode not in SIZES_BY_MODE:
        raise ValueError(f"unknown bench mode {mode!r}; known: {sorted(SIZES_BY_MODE)}")
    return measure(**SIZES_BY_MODE[mode])


def _mib(x: Any) -> str:
    return "-" if x is None else f"{x / 2 ** 20:.1f}"


def render_markdown(section: dict[str, Any]) -> list[str]:
    """Markdown lines for the attention section."""
    s = section["shape"]
    lines = [(f"Shape: batch {s['batch']}, length {s['seq_len']}, {s['heads']} heads of {s['head_dim']} (f32); one "
              f"[B, H, L, L] f32 tensor is {_mib(section['scores_bytes_f32'])} MiB."), "",
             "| one attention fwd+bwd (CPU compile) | temp MiB | L x L tensors |", "|---|---|---|"]
    for r in section["attention_memory"]:
        lines.append(f"| {r['label']} | {_mib(r.get('temp_size_in_bytes'))} | "
                     f"{', '.join(r['square_tensors']) or 'none'} |")
    lines += ["", "| whole train step (CPU compile) | model | temp MiB | L x L tensors |", "|---|---|---|---|"]
    for r in section["train_step_memory"]:
        lines.append(f"| {r['label']} | {r['model']} | {_mib(r.get('temp_size_in_bytes'))} | "
                     f"{', '.join(r['square_tensors']) or 'none'} |")
    lines += ["", "| lowered here for | kernel | result |", "|---|---|---|"]
    for r in section["accelerator_lowering"]:
        if r["status"] == "lowered":
            calls = ", ".join(f"{n} x{c}" for n, c in r["custom_calls"].items())
            result = f"custom calls {calls}; L x L tensors: {', '.join(r['square_tensors']) or 'none'}"
        else:
            result = r["status"]
        lines.append(f"| {r['platform']} | {r['kernel']} | {result} |")
    t = section["time_shape"]
    lines += ["", (f"CPU fwd+bwd at length {t['seq_len']}, {t['heads']} heads (interpreter times are no speed "
                   "measure):"), "", "| kernel | median s | x xla |", "|---|---|---|"]
    for r in section["cpu_times"]:
        lines.append(f"| {r['label']} | {r['median_s']:.3g} | {r['over_xla']:.3g} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """CLI: prints the markdown and optionally writes the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--time_seq_len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default="", help="write the section's JSON here")
    args = p.parse_args(argv)
    for name in ("seq_len", "heads", "time_seq_len", "repeats"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be a positive integer, got {getattr(args, name)}", file=sys.stderr)
            return 2
    section = measure(seq_len=args.seq_len, heads=args.heads, time_seq_len=args.time_seq_len,
                      repeats=args.repeats)
    print("\n".join(render_markdown(section)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(section, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
