"""Where our train step spends its time: `python -m bench.profile_step [--model 125m-2l --seq-len 512 ...]`.

Times jitted pieces of the step side by side (round-robin, one process): forward loss, forward+backward with
and without dropout, the tied LM head + cross-entropy alone (full logits and chunked, `optiml_jax.losses`), the
embedding-gradient scatter alone, the decoder body without the LM head, one layer's attention core, and the whole
Trainer step (forward, backward, clipping, AdamW). Also prints the HF PyTorch step for reference. The results
motivated the optimisations listed in bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

os.environ.setdefault("USE_TF", "0")


def profile(model: str, *, seq_len: int, batch: int, repeats: int, prng: str = "threefry2x32",
            include_hf: bool = True, ce_chunk_tokens: int = 2048) -> dict[str, Any]:
    """Best-of-`repeats` seconds of each piece of the step (see module docstring)."""
    import jax

    jax.config.update("jax_default_prng_impl", prng)
    import jax.numpy as jnp

    from bench.common import bench_config, interleaved_times, setup_threads, summarize
    from bench.train_step import HFStep, OursStep
    from optiml_jax import losses
    from optiml_jax.models.attention import AttentionSegments, xla_attention

    setup_threads()
    cfg = bench_config(model, seq_len)
    ours = OursStep(cfg, batch, seq_len)
    params = jax.tree.map(jnp.copy, ours.state.params)  # the Trainer step donates its state
    b = {k: jnp.asarray(v) for k, v in ours.batch.items()}
    m = ours.trainer.model
    rng = jax.random.PRNGKey(0)

    def hidden_states(p, deterministic):  # the decoder without the LM head: (final hidden, output embedding)
        return m.apply({"params": p}, b["decoder_input_tokens"], segment_ids=b["decoder_segment_ids"],
                       positions=b["decoder_positions"], deterministic=deterministic,
                       rngs=None if deterministic else {"dropout": rng}, return_hidden=True)

    def loss(p, deterministic):  # as the trainer's (chunked LM head)
        hidden, e = hidden_states(p, deterministic)
        s, w = losses.cross_entropy_sums(hidden, e, b["decoder_target_tokens"], b["decoder_loss_weights"],
                                         chunk_tokens=ours.trainer.config.ce_chunk_tokens)
        return s / w

    fwd = jax.jit(lambda p: loss(p, True))
    grad_nodrop = jax.jit(jax.grad(lambda p: loss(p, True)))
    grad_drop = jax.jit(jax.grad(lambda p: loss(p, False)))
    emb = params["embed_tokens"]["embedding"]
    h = jax.random.normal(rng, (batch, seq_len, cfg.word_embed_proj_dim), jnp.float32)

    def head_loss(e, h, chunk):
        s, w = losses.cross_entropy_sums(h, e, b["decoder_target_tokens"], b["decoder_loss_weights"],
                                         chunk_tokens=chunk)
        return s / w

    head = jax.jit(jax.grad(lambda e, h: head_loss(e, h, 0), argnums=(0, 1)))
    head_chunked = jax.jit(jax.grad(lambda e, h: head_loss(e, h, ce_chunk_tokens), argnums=(0, 1)))
    scatter = jax.jit(jax.grad(lambda e: jnp.sum(jnp.take(e, b["decoder_input_tokens"], axis=0) * h)))

    body_grad = jax.jit(jax.grad(lambda p: jnp.sum(hidden_states(p, True)[0])))
    # One layer's attention core (scores, mask, softmax, weighted values) on the step's q/k/v shapes: its
    # einsums are batched over (batch, heads) with a 64-wide contraction, unlike every other matmul.
    heads, head_dim = cfg.num_attention_heads, cfg.head_dim
    qkv = jax.random.normal(rng, (3, batch, seq_len, heads, head_dim), jnp.float32)
    seg = AttentionSegments(b["decoder_segment_ids"], b["decoder_segment_ids"], jnp.arange(seq_len),
                            jnp.arange(seq_len))
    attn_grad = jax.jit(jax.grad(lambda t: jnp.sum(xla_attention(t[0], t[1], t[2], seg))))
    block = jax.block_until_ready
    fns = {
        "forward (loss, no dropout)": lambda: block(fwd(params)),
        "forward+backward, no dropout": lambda: block(grad_nodrop(params)),
        "forward+backward, dropout 0.1": lambda: block(grad_drop(params)),
        "LM head + cross-entropy fwd+bwd": lambda: block(head(emb, h)),
        f"LM head + cross-entropy fwd+bwd, chunks of {ce_chunk_tokens}": lambda: block(head_chunked(emb, h)),
        "embedding lookup backward (scatter-add)": lambda: block(scatter(emb)),
        "decoder body fwd+bwd (no LM head, no dropout)": lambda: block(body_grad(params)),
        "attention core fwd+bwd, one layer": lambda: block(attn_grad(qkv)),
        "whole Trainer step": ours,
    }
    fns["whole Trainer step, bf16 compute"] = OursStep(cfg.replace(dtype="bfloat16"), batch, seq_len)
    if include_hf:
        fns["HF PyTorch step"] = HFStep(cfg, ours.params_numpy(), ours.batch)
    a = jnp.ones((2048, 2048), jnp.float32)
    mm = jax.jit(jnp.matmul)
    fns["2048^3 f32 matmul (peak reference)"] = lambda: block(mm(a, a))
    times = interleaved_times(fns, repeats=repeats, warmup=1)
    # Best-of: on a shared machine contention only ever adds time, so the minimum is the cleanest estimate.
    out = {name: summarize(t)["best_s"] for name, t in times.items()}
    tokens = batch * seq_len
    fpt = cfg.flops_per_token(seq_len)
    head = 6.0 * cfg.vocab_size * cfg.word_embed_proj_dim
    flops = {"forward (loss, no dropout)": fpt / 3 * tokens, "forward+backward, no dropout": fpt * tokens,
             "forward+backward, dropout 0.1": fpt * tokens, "LM head + cross-entropy fwd+bwd": head * tokens,
             f"LM head + cross-entropy fwd+bwd, chunks of {ce_chunk_tokens}": head * tokens,
             "decoder body fwd+bwd (no LM head, no dropout)": fpt * tokens - head * tokens,
             "attention core fwd+bwd, one layer": 12.0 * cfg.hidden_size * seq_len * tokens,  # fpt's convention
             "whole Trainer step": fpt * tokens, "whole Trainer step, bf16 compute": fpt * tokens,
             "HF PyTorch step": fpt * tokens, "2048^3 f32 matmul (peak reference)": 2.0 * 2048 ** 3}
    gflops = {k: flops[k] / out[k] / 1e9 for k in out if k in flops}
    return {"model": model, "seq_len": seq_len, "batch": batch, "prng": prng, "best_s": out,
            "gflops_per_s": gflops, "tokens": tokens, "flops_per_token": fpt}


def ce_memory(model: str, *, seq_len: int, batch: int, chunk: int) -> dict[str, Any]:
    """Compiled temp bytes of the LM head + cross-entropy gradient: full [tokens, vocab] f32 logits
    (``chunk_tokens=0``) vs `optiml_jax.losses.cross_entropy_sums` with ``chunk`` logits rows at a time.
    Compile-only, nothing is run."""
    import jax
    import jax.numpy as jnp

    from bench.common import bench_config
    from optiml_jax import losses

    cfg = bench_config(model, seq_len)
    n = batch * seq_len
    e = jax.ShapeDtypeStruct((cfg.vocab_size, cfg.word_embed_proj_dim), jnp.float32)
    h = jax.ShapeDtypeStruct((batch, seq_len, cfg.word_embed_proj_dim), jnp.float32)
    t = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)

    def loss(c):
        return lambda e, h, t: losses.cross_entropy_sums(h, e, t, jnp.ones(t.shape, jnp.float32), chunk_tokens=c)[0]

    out = {}
    for name, c in (("full", 0), ("chunked", chunk)):
        compiled = jax.jit(jax.grad(loss(c), argnums=(0, 1))).lower(e, h, t).compile()
        out[name] = int(compiled.memory_analysis().temp_size_in_bytes)
    return {"model": model, "tokens": n, "chunk": chunk, "temp_bytes": out,
            "bytes_per_token": {k: v / n for k, v in out.items()}}


def main(argv: list[str] | None = None) -> int:
    """CLI: prints the breakdown as a markdown table and JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="125m-2l")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--prng", default="threefry2x32", choices=("threefry2x32", "rbg", "unsafe_rbg"))
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--ce-memory-chunk", type=int, default=0,
                   help="instead: compare LM-head/CE gradient memory, full vs chunks of this many tokens")
    p.add_argument("--ce-chunk-tokens", type=int, default=2048, help="chunk of the chunked LM-head piece")
    args = p.parse_args(argv)
    if args.ce_memory_chunk:
        print(json.dumps(ce_memory(args.model, seq_len=args.seq_len, batch=args.batch, chunk=args.ce_memory_chunk)))
        return 0
    r = profile(args.model, seq_len=args.seq_len, batch=args.batch, repeats=args.repeats, prng=args.prng,
                include_hf=not args.no_hf, ce_chunk_tokens=args.ce_chunk_tokens)
    step = r["best_s"]["whole Trainer step"]
    print(f"| piece ({r['model']}, {r['batch']}x{r['seq_len']}, prng {r['prng']}) | best s | share of step "
          "| model GFLOP/s |")
    print("|---|---|---|---|")
    for name, t in r["best_s"].items():
        g = r["gflops_per_s"].get(name)
        print(f"| {name} | {t:.3f} | {t / step:.0%} | {'-' if g is None else f'{g:.0f}'} |")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
