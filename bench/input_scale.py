"""Training input at benchmark scale (issue 15): `python -m bench.input_scale [--quick] [--out DIR]`.

Measured side by side in one run, with the load average next to every figure:

- **loader**: real tokens per second and per CPU-second (process time: the "per core" figure, which the load
  of other processes disturbs far less than wall time) at seq_len 2048, from the warm token cache
  (`loader.CachedTrainInput`, grain read threads 0 and 2) and from today's in-memory `pipeline.TrainInput`,
  interleaved, on the real data when present (else a synthetic bench);
- **mixture**: per-benchmark shares of the packed examples and the share of real tokens at 2048, cache vs
  in memory, on the same stream positions;
- **scale**: a synthetic bench of S and of 10 x S tasks x 300 examples: its cache build
  (``python -m optiml_jax.tasks cache``, wall and CPU time), then two training runs (tiny model, 3 steps) from the
  warm cache, each in a fresh process: peak RSS and the time from start to the first step's metrics line.

Writes ``input_scale.json`` and ``input_scale.md`` into ``--out`` (default bench/results/).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time
from typing import Any

from bench import common

REPO = pathlib.Path(__file__).resolve().parent.parent


def _load() -> float:
    return float(open("/proc/loadavg").read().split()[0])


def _real_tokens(batch) -> int:
    return int((batch["decoder_segment_ids"] > 0).sum())


def loader_throughput(data_dir: str | None, *, batches: int, seq_len: int = 2048, rows: int = 8,
                      rounds: int = 3, cache_dir: str | None = None) -> dict[str, Any]:
    """Real tokens/s (wall) and per CPU-second of the cached loader (0 and 2 threads) and of TrainInput."""
    from optiml_jax.tasks import loader, pipeline
    from optiml_jax.tokenizer import OPTVocabulary

    vocab = OPTVocabulary.default()
    bench = pipeline.get_bench(data_dir, None)
    t0 = time.perf_counter()
    make = {
        "cache, 0 threads": lambda: loader.CachedTrainInput(vocab=vocab, batch_size=rows, seq_len=seq_len,
                                                          bench=bench, num_threads=0, cache_dir=cache_dir),
        "cache, 2 threads": lambda: loader.CachedTrainInput(vocab=vocab, batch_size=rows, seq_len=seq_len,
                                                          bench=bench, num_threads=2, cache_dir=cache_dir),
        "in memory (TrainInput)": lambda: pipeline.TrainInput(vocab=vocab, batch_size=rows, seq_len=seq_len,
                                                              bench=bench),
    }
    inputs = {}
    setup = {}
    for name, fn in make.items():
        start = time.perf_counter()
        inputs[name] = fn()
        next(inputs[name])   # warm: tokeniser caches, grain threads started
        setup[name] = round(time.perf_counter() - start, 2)
    out: dict[str, Any] = {"data_dir": bench.data_dir, "split": bench.split_name, "seq_len": seq_len, "rows": rows,
                           "setup_s": setup, "first_setup_includes_cache_build_s": round(time.perf_counter() - t0, 1),
                           "rounds": {n: [] for n in make}}
    for _ in range(rounds):   # interleaved: each round measures every input once
        for name, it in inputs.items():
            load = _load()
            wall, cpu = time.perf_counter(), time.process_time()
            tokens = sum(_real_tokens(next(it)) for _ in range(batches))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            out["rounds"][name].append({"tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu,
                                        "load": load})
    out["best"] = {n: {"tokens_per_s": round(max(r["tokens_per_s"] for r in rs)),
                       "tokens_per_cpu_s": round(max(r["tokens_per_cpu_s"] for r in rs))}
                   for n, rs in out["rounds"].items()}
    return out


def mixture_shares(data_dir: str | None, *, batches: int, seq_len: int = 2048, rows: int = 8,
                   cache_dir: str | None = None) -> dict[str, Any]:
    """Per-benchmark shares of packed examples and real-token share at ``seq_len``: cache vs TrainInput."""
    import numpy as np

    from optiml_jax.tasks import loader, pipeline
    from optiml_jax.tokenizer import OPTVocabulary

    vocab = OPTVocabulary.default()
    bench = pipeline.get_bench(data_dir, None)
    out: dict[str, Any] = {"load": _load()}
    cached = loader.CachedTrainInput(vocab=vocab, batch_size=rows, seq_len=seq_len, bench=bench, cache_dir=cache_dir)
    for name, it in (("cache", cached),
                     ("in memory", pipeline.TrainInput(vocab=vocab, batch_size=rows, seq_len=seq_len, bench=bench))):
        real = 0
        for _ in range(batches):
            real += _real_tokens(next(it))
        counts = {b: c.get("examples", 0) for b, c in it.truncation_counts().items()}
        total = sum(counts.values())
        out[name] = {"shares": {b: round(100 * v / total, 2) for b, v in sorted(counts.items())},
                     "real_token_share": round(100 * real / (batches * rows * seq_len), 2),
                     "target_shares": {b: round(100 * v, 2) for b, v in sorted(it.rates.benchmark_share.items())}}
    a, b = out["cache"]["shares"], out["in memory"]["shares"]
    out["max_share_diff_points"] = max(abs(a.get(k, 0) - b.get(k, 0)) for k in set(a) | set(b))
    out["identical"] = bool(np.isclose(out["cache"]["real_token_share"], out["in memory"]["real_token_share"]))
    return out


def _child_env(cache_home: pathlib.Path, data_dir: pathlib.Path) -> dict:
    env = dict(os.environ)
    env.update(OPTIML_CACHE_DIR=str(cache_home), OPTIML_DATA_DIR=str(data_dir), JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3", USE_TF="0", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return env


_MEASURE = ("import resource, subprocess, sys, time, json, pathlib\n"
            "metrics = pathlib.Path(sys.argv[1]); t0 = time.perf_counter(); first = None\n"
            "p = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
            "while p.poll() is None:\n"
            "    if first is None and metrics.exists() and '\"loss\"' in metrics.read_text():\n"
            "        first = time.perf_counter() - t0\n"
            "    time.sleep(0.05)\n"
            "err = p.stderr.read()\n"
            "print(json.dumps({'rc': p.returncode, 'first_step_s': first, 'wall_s': time.perf_counter() - t0,\n"
            "    'max_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 'err': err[-2000:]}))\n")


def scale_run(work: pathlib.Path, num_tasks: int, examples: int, steps: int = 3) -> dict[str, Any]:
    """Synthetic bench of ``num_tasks`` x ``examples``: its cache build (the CLI), then two training runs from
    the warm cache, each in a fresh process (peak RSS, start to the first step's metrics line)."""
    from optiml_jax.tasks import embedded_vocab, synth

    data = work / f"synth_{num_tasks}x{examples}"
    if not (data / synth.MANIFEST).is_file():
        synth.write_synth_bench(data, num_tasks=num_tasks, examples_per_task=examples)
    cache_dir = work / f"cache_{num_tasks}x{examples}"
    gin_file = f"--gin_file={data / synth.GIN_FILE}"
    out: dict[str, Any] = {"tasks": num_tasks, "examples_per_task": examples}
    load = _load()
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    build = subprocess.run([sys.executable, "-m", "optiml_jax.tasks", "cache", "--mixture", "optiml_train",
                            "--data_dir", str(data), "--split", "custom", "--out", str(cache_dir), gin_file,
                            # gin/train/tiny_cpu.gin trains with the embedded suite's tokenizer
                            "--tokenizer_dir", embedded_vocab.embedded_tokenizer_dir(), "--no_progress"], cwd=REPO,
                           env=_child_env(work / "unused_home", data), capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["cache_build"] = {"rc": build.returncode, "wall_s": round(time.perf_counter() - start, 1), "load": load,
                          "cpu_s": round(after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime, 1),
                          "summary": (build.stdout.strip().splitlines()[-1] if build.stdout.strip()
                                      else build.stderr[-500:])}
    for attempt in range(2):   # a fresh MODEL_DIR each time
        run_dir = work / f"run_{num_tasks}x{examples}_{attempt}"
        cmd = [sys.executable, "-m", "optiml_jax.train", "--gin_file=gin/train/tiny_cpu.gin", gin_file,
               f"--gin.MODEL_DIR='{run_dir}'", f"--gin.TRAIN_STEPS={steps}",
               "--gin.optiml_jax.train.progress_bar=False",
               "--gin.optiml_jax.train.peak_flops_per_device=1e11", "--gin.optiml_jax.train.export_final=False",
               "--gin.optiml_jax.train.heldout_max_batches=0", f"--gin.optiml_jax.train.cache_dir='{cache_dir}'"]
        load = _load()
        res = subprocess.run([sys.executable, "-c", _MEASURE, str(run_dir / "metrics.jsonl"), *cmd], cwd=REPO,
                             env=_child_env(work / "unused_home", data), capture_output=True, text=True)
        out[f"warm_run_{attempt}"] = {**json.loads(res.stdout.strip().splitlines()[-1]), "load": load}
        if out[f"warm_run_{attempt}"]["rc"] != 0:
            raise RuntimeError(f"training run failed: {out[f'warm_run_{attempt}']['err']}")
    return out


def _markdown(res: dict[str, Any]) -> str:
    lines = ["# Training input at scale (bench/input_scale.py)", "", f"run: {res['started']} UTC", ""]
    if "loader" in res:
        lo = res["loader"]
        lines += [f"## Loader at seq_len {lo['seq_len']} ({lo['rows']} rows per batch), {lo['split']} split", "",
                  "| input | best real tokens/s (wall) | best real tokens per CPU-second | loads |",
                  "|---|---|---|---|"]
        for name, best in lo["best"].items():
            loads = ", ".join(f"{r['load']:.1f}" for r in lo["rounds"][name])
            lines.append(f"| {name} | {best['tokens_per_s']:,} | {best['tokens_per_cpu_s']:,} | {loads} |")
        lines.append("")
    if "mixture" in res:
        mi = res["mixture"]
        lines += ["## Mixture from the cache vs in memory", "", "| benchmark | cache % | in memory % | target % |",
                  "|---|---|---|---|"]
        for b in sorted(set(mi["cache"]["shares"]) | set(mi["in memory"]["shares"])):
            lines.append(f"| {b} | {mi['cache']['shares'].get(b, 0)} | {mi['in memory']['shares'].get(b, 0)} | "
                         f"{mi['cache']['target_shares'].get(b, 0)} |")
        lines += ["", f"real tokens at 2048: cache {mi['cache']['real_token_share']}%, in memory "
                      f"{mi['in memory']['real_token_share']}%; largest share difference "
                      f"{mi['max_share_diff_points']} points (load {mi['load']:.1f})", ""]
    if "scale" in res:
        lines += ["## Training run vs bench size (synthetic, tiny model, 3 steps, two warm runs each)", "",
                  "| bench | cache build wall s (CPU s) | warm: start to first step s | warm: peak RSS MB | loads |",
                  "|---|---|---|---|---|"]
        for s in res["scale"]:
            warm = [s[k] for k in ("warm_run_0", "warm_run_1")]
            lines.append(f"| {s['tasks']} x {s['examples_per_task']} | {s['cache_build']['wall_s']} "
                         f"({s['cache_build']['cpu_s']}) | "
                         + " / ".join(f"{w['first_step_s']:.1f}" if w["first_step_s"] else "n/a" for w in warm)
                         + " | " + " / ".join(f"{w['max_rss_mb']:.0f}" for w in warm) + " | "
                         + ", ".join(f"{x['load']:.1f}" for x in [s["cache_build"], *warm]) + " |")
        if len(res["scale"]) == 2:
            a, b = (min(s[k]["max_rss_mb"] for k in ("warm_run_0", "warm_run_1")) for s in res["scale"])
            lines += ["", f"peak RSS, large / small bench: {b / a:.3f} ({b - a:+.0f} MB)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Runs the sections and writes the JSON and markdown results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 vs 100 tasks, fewer batches")
    parser.add_argument("--only", choices=["loader", "mixture", "scale"], action="append")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--work", default="/tmp/optiml_input_scale", help="synthetic benches, caches, runs")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--cache_dir", default=None, help="a built cache of the data dir's mixture (default: "
                        "training's own, built when missing)")
    parser.add_argument("--sizes", default=None, help="scale: comma-separated task counts (default 100,1000; "
                        "--quick 10,100)")
    args = parser.parse_args(argv)
    from bench.packing import resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    only = set(args.only or ["loader", "mixture", "scale"])
    res: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "quick": args.quick,
                           "load_start": _load()}
    if "loader" in only:
        res["loader"] = loader_throughput(data_dir, batches=4 if args.quick else 16, cache_dir=args.cache_dir)
    if "mixture" in only:
        res["mixture"] = mixture_shares(data_dir, batches=20 if args.quick else 200, cache_dir=args.cache_dir)
    if "scale" in only:
        work = pathlib.Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        sizes = tuple(int(x) for x in args.sizes.split(",")) if args.sizes else (10, 100) if args.quick else (100, 1000)
        res["scale"] = [scale_run(work, n, 300) for n in sizes]
    res["load_end"] = _load()
    res["self_max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    common.write_results(args.out, "input_scale", res, _markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
