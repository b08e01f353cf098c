"""Step time of our train step on several meshes of fake CPU devices, relative to one device.

Run as a subprocess (`python -m bench.scaling --out FILE ...`): XLA_FLAGS must give the process several host
devices before JAX starts, and the main benchmark process should keep one device with every core.
All fake devices share the same cores, so the ideal relative step time is 1.0; the excess is the cost of the
partitioned program (collectives, resharding, smaller per-device matmuls).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, Sequence

MESHES: dict[str, dict[str, int]] = {
    "single": {"data": 1},
    "data": {"data": -1},
    "fsdp": {"fsdp": -1},
    "model": {"data": 2, "model": 4},
    "data+fsdp+model": {"data": 2, "fsdp": 2, "model": 2},
}


def run_meshes(model: str, *, seq_len: int, batch: int, repeats: int,
               meshes: Sequence[str] = tuple(MESHES)) -> dict[str, Any]:
    """In this process (which must already have the fake devices): median step time per mesh."""
    import jax

    from bench.common import bench_config, interleaved_times, summarize
    from bench.train_step import OursStep

    cfg = bench_config(model, seq_len)
    results: dict[str, Any] = {}
    for name in meshes:
        shape = MESHES[name]
        devices = jax.devices()[:1] if name == "single" else jax.devices()
        step = OursStep(cfg, batch, seq_len, mesh_shape=shape, devices=devices)
        s = summarize(interleaved_times({name: step}, repeats=repeats, warmup=1)[name])
        results[name] = {"mesh_shape": dict(zip(("data", "fsdp", "model"), step.trainer.mesh.devices.shape)),
                         "step": s, "tokens_per_s": batch * seq_len / s["median_s"]}
        del step
    base = results.get("single", {}).get("step", {}).get("median_s")
    for r in results.values():
        r["relative_step_time"] = r["step"]["median_s"] / base if base else None
    return {"model": model, "seq_len": seq_len, "batch": batch, "num_devices": jax.device_count(),
            "meshes": results}


def run_subprocess(model: str, *, seq_len: int, batch: int, repeats: int, num_devices: int = 8,
                   timeout_s: float = 900) -> dict[str, Any]:
    """Runs `run_meshes` in a fresh Python with `num_devices` fake CPU devices; returns its JSON result."""
    import tempfile

    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={num_devices}"])
    env.setdefault("USE_TF", "0")
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "scaling.json")
        cmd = [sys.executable, "-m", "bench.scaling", "--model", model, "--seq-len", str(seq_len), "--batch",
               str(batch), "--repeats", str(repeats), "--out", out]
        proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"bench.scaling subprocess failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        with open(out) as f:
            return json.load(f)


def main(argv: list[str] | None = None) -> int:
    """CLI of the subprocess: writes `run_meshes`' result as JSON to --out."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.batch % 8:
        p.error(f"--batch must be a multiple of 8 (the data-parallel size of the 'data' mesh), got {args.batch}")
    result = run_meshes(args.model, seq_len=args.seq_len, batch=args.batch, repeats=args.repeats)
    with open(args.out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
