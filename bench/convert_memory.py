"""Peak host memory of checkpoint conversion both ways (``python -m optiml_jax.convert``), opt-350m-shaped.

    python -m bench.convert_memory [--model opt-350m] [--workdir /tmp/convmem] [--out bench/results]

A random HF checkpoint of the model's shapes is written tensor by tensor (no model in memory), then each
direction runs in its own interpreter, which reports its RSS just before converting (the baseline: Python, JAX,
orbax and our modules loaded) and its peak RSS (``ru_maxrss``) after. Goal (issue 13): peak minus baseline under
1.5 GiB, i.e. about the largest tensor plus a constant rather than the model.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any

import numpy as np

from bench import common
from bench.common import bench_config

_CHILD = r'''
import json, resource, sys, time
from optiml_jax import convert  # loads jax, orbax and ours: part of the baseline
import jax, orbax.checkpoint  # noqa: F401

def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

base = rss_kib()
t0 = time.time()
rc = convert.main(sys.argv[1:])
print("RESULT " + json.dumps({"rc": rc, "baseline_kib": base, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                              "seconds": time.time() - t0}), flush=True)
'''


def write_random_hf(out: pathlib.Path, model: str, seed: int = 0) -> dict[str, Any]:
    """A random HF OPT checkpoint with ``model``'s shapes (float32), written one tensor at a time."""
    from optiml_jax.models.hf_io import write_safetensors_stream
    from optiml_jax.models.hf_mapping import HF_PREFIX, parameter_map

    cfg = bench_config(model)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
    rng = np.random.default_rng(seed)
    maps = parameter_map(cfg)
    specs = [(HF_PREFIX + m.hf_key, m.hf_shape, np.dtype(np.float32)) for m in maps]
    arrays = (rng.standard_normal(m.hf_shape, dtype=np.float32) * 0.02 for m in maps)
    write_safetensors_stream(out / "model.safetensors", specs, arrays, {"format": "pt"})
    largest = max(int(np.prod(m.hf_shape)) * 4 for m in maps)
    return {"params": cfg.num_params(), "bytes": cfg.num_params() * 4, "largest_tensor_bytes": largest}


def _run(args: list[str]) -> dict[str, Any]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, env=env,
                          cwd=pathlib.Path(__file__).resolve().parent.parent, timeout=3600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"conversion {args} failed: {proc.stderr[-2000:]}")
    r = json.loads(line[7:])
    r["above_baseline_gib"] = (r["peak_kib"] - r["baseline_kib"]) / 2**20
    return r


def conversion_memory(model: str = "opt-350m", workdir: str | os.PathLike = "/tmp/optiml_convmem") -> dict[str, Any]:
    """Peak RSS above the interpreter's baseline for --from_hf then --to_hf of a random ``model`` checkpoint."""
    work = pathlib.Path(workdir)
    shutil.rmtree(work, ignore_errors=True)
    info = write_random_hf(work / "hf", model)
    rows = {}
    rows["from_hf"] = _run(["--from_hf", str(work / "hf"), "--out", str(work / "ours")])
    rows["to_hf"] = _run(["--to_hf", str(work / "ours"), "--out", str(work / "exported"), "--max_shard_gb", "0.5"])
    from optiml_jax.models.hf_io import HFWeights

    a, b = HFWeights(work / "hf"), HFWeights(work / "exported")
    same = sorted(a.keys()) == sorted(b.keys()) and all(np.array_equal(a.get(k), b.get(k)) for k in a.keys())
    shutil.rmtree(work, ignore_errors=True)
    return {"model": model, **info, "round_trip_identical": bool(same), **rows,
            "goal_gib": 1.5, "met": all(r["above_baseline_gib"] < 1.5 for r in rows.values())}


def markdown(r: dict[str, Any]) -> str:
    """The result as a markdown section."""
    lines = [f"### Conversion peak host memory ({r['model']}, {r['params'] / 1e6:.0f}M parameters, "
             f"{r['bytes'] / 2**30:.2f} GiB in f32; largest tensor {r['largest_tensor_bytes'] / 2**20:.0f} MiB)", "",
             "| direction | baseline RSS (GiB) | peak RSS (GiB) | above baseline (GiB) | seconds |",
             "|---|---:|---:|---:|---:|"]
    for k in ("from_hf", "to_hf"):
        x = r[k]
        lines.append(f"| --{k} | {x['baseline_kib'] / 2**20:.2f} | {x['peak_kib'] / 2**20:.2f} | "
                     f"{x['above_baseline_gib']:.2f} | {x['seconds']:.1f} |")
    lines += ["", f"Round trip bit-identical: {r['round_trip_identical']}; goal < {r['goal_gib']} GiB above "
                  f"baseline: {'met' if r['met'] else 'NOT met'}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI: measure and write ``convert_memory.json`` / ``.md`` under --out."""
    p = argparse.ArgumentParser(prog="python -m bench.convert_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="opt-350m")
    p.add_argument("--workdir", default="/tmp/optiml_convmem")
    p.add_argument("--out", default="bench/results")
    a = p.parse_args(argv)
    t0 = time.time()
    r = conversion_memory(a.model, a.workdir)
    r["total_seconds"] = time.time() - t0
    common.write_results(a.out, "convert_memory", r, markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
