"""Shared helpers of the performance suite: machine description, interleaved timing, memory, model shapes."""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable, Mapping

# Benchmark model shapes. "125m-2l" keeps opt-125m's widths (hidden 768, 12 heads, ffn 3072, OPT vocabulary)
# with 2 of its 12 layers so that a CPU step takes seconds, not minutes.
BENCH_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("tiny", {}),
    # Schema smoke tests only: small vocabulary so that a step takes milliseconds (numbers are meaningless).
    "micro": ("tiny", {"vocab_size": 1024, "hidden_size": 32, "ffn_dim": 64, "num_attention_heads": 4,
                       "max_position_embeddings": 256}),
    "125m-2l": ("opt-125m", {"num_hidden_layers": 2}),
    "opt-125m": ("opt-125m", {}),
    "opt-350m": ("opt-350m", {}),
    "opt-1.3b": ("opt-1.3b", {}),
}


def bench_config(name: str, seq_len: int = 0, **overrides: Any):
    """The `OPTConfig` of benchmark model `name` with room for `seq_len` positions, plus field overrides."""
    from optiml_jax.models.configs import get_config

    if name not in BENCH_MODELS:
        raise ValueError(f"unknown benchmark model {name!r}; known: {sorted(BENCH_MODELS)}")
    base, changes = BENCH_MODELS[name]
    cfg = get_config(base).replace(**changes)
    if seq_len > cfg.max_position_embeddings:
        cfg = cfg.replace(max_position_embeddings=seq_len)
    return cfg.replace(name=name, **overrides)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (or platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def num_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def malloc_library(maps_path: str = "/proc/self/maps") -> str:
    """The allocator serving this process's malloc: "tcmalloc", "jemalloc" or "mimalloc" when one is mapped
    (typically through LD_PRELOAD), else "glibc" ("unknown" where /proc is unavailable).

    Recorded with every result because it moves CPU step times by 10-30%: glibc returns a large freed block
    to the kernel at once, so each step's fresh ~1 GB of temporaries is page-faulted in again.
    """
    try:
        with open(maps_path) as f:
            maps = f.read()
    except OSError:
        return "unknown"
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if f"lib{name}" in maps:
            return name
    return "glibc"


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, library versions, accelerator and date of this run."""
    import jax
    import numpy as np

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cores": num_cores(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "numpy": np.__version__,
        "platform": jax.devices()[0].platform,
        "devices": [str(d) for d in jax.devices()[:8]],
        "num_devices": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "malloc": malloc_library(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import flax
        info["flax"] = flax.__version__
    except ImportError:
        pass
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    info["host_memory_bytes"] = int(line.split()[1]) * 1024
                if line.startswith("MemAvailable"):
                    info["host_memory_available_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return info


def setup_threads() -> int:
    """Gives torch as many intra-op threads as JAX's CPU client uses (all cores); returns that number."""
    cores = num_cores()
    try:
        import torch
        torch.set_num_threads(cores)
    except ImportError:
        pass
    return cores


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def device_memory_stats() -> dict[str, Any] | None:
    """`memory_stats()` of the first accelerator (peak/in-use bytes), None on CPU or when unsupported."""
    import jax

    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return None
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # some backends raise instead of returning None
        return None
    keep = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit", "largest_alloc_size")
    return {k: int(stats[k]) for k in keep if k in stats}


def interleaved_times(fns: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int = 1
                      ) -> dict[str, list[float]]:
    """Wall times (s) of each zero-argument callable, run round-robin so that machine noise hits all alike.

    Each callable must block until its work is done. `warmup` rounds (compilation, allocator warm-up) are run
    first and not recorded.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def summarize(times: list[float]) -> dict[str, float]:
    """Median, best and worst of a list of wall times (the median is the headline number)."""
    return {"median_s": statistics.median(times), "best_s": min(times), "worst_s": max(times), "n": len(times)}


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def write_results(out_dir: str | os.PathLike, name: str, result: Mapping[str, Any], markdown: str) -> None:
    """``OUT/name.json`` and ``OUT/name.md`` for a standalone benchmark, and the markdown on stdout."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
