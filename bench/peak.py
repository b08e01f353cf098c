"""Peak matmul throughput measured in the same run as everything it is compared with."""
from __future__ import annotations

import time
from typing import Any

from bench.common import summarize


def jax_matmul_flops(size: int, dtype: str, *, repeats: int = 5) -> dict[str, Any]:
    """FLOP/s of a jitted [size, size] @ [size, size] on the first device; inputs in `dtype`, f32 accumulation."""
    import jax
    import jax.numpy as jnp

    if size < 1:
        raise ValueError(f"matmul size must be positive, got {size}")
    dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
    dev = jax.devices()[0]
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.device_put(jax.random.normal(ka, (size, size), jnp.float32).astype(dt), dev)
    b = jax.device_put(jax.random.normal(kb, (size, size), jnp.float32).astype(dt), dev)
    mm = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    mm(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    flops = 2.0 * size ** 3
    # The best time is the peak: noise from other processes only ever slows a matmul down.
    return {"size": size, "dtype": dtype, "flops_per_s": flops / min(times),
            "median_flops_per_s": flops / summarize(times)["median_s"]}


def torch_matmul_flops(size: int, dtype: str, *, repeats: int = 5) -> dict[str, Any] | None:
    """The same matmul in PyTorch (context for the HF comparisons); None when torch is absent."""
    try:
        import torch
    except ImportError:
        return None
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(dt)
    b = torch.randn(size, size, generator=g).to(dt)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t0)
    flops = 2.0 * size ** 3
    return {"size": size, "dtype": dtype, "flops_per_s": flops / min(times),
            "median_flops_per_s": flops / summarize(times)["median_s"]}


def measure_peak(size: int, *, repeats: int = 5) -> dict[str, Any]:
    """Peak FLOP/s of JAX (f32, bf16 inputs with f32 accumulation) and PyTorch on this device."""
    return {
        "jax_f32": jax_matmul_flops(size, "float32", repeats=repeats),
        "jax_bf16": jax_matmul_flops(size, "bfloat16", repeats=repeats),
        "torch_f32": torch_matmul_flops(size, "float32", repeats=repeats),
        "torch_bf16": torch_matmul_flops(size, "bfloat16", repeats=repeats),
    }
