"""Runs the performance suite and writes bench/results/latest.{json,md}: `python -m bench.run [--quick]`.

Every comparison (ours vs HF, step vs peak) is measured side by side in this one process so that the ratios
stay meaningful on a noisy machine. Sections fail independently: an error is recorded and the rest still runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from typing import Any, Callable

# Before anything imports TensorFlow / transformers / JAX.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench import report  # noqa: E402

DEFAULT_OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of every measurement (the defaults are the full run; `quick()` shrinks them)."""

    peak_size: int = 2048
    peak_repeats: int = 5
    train_model: str = "125m-2l"
    train_seq_len: int = 512
    train_batch: int = 4
    train_repeats: int = 5
    mfu_models: tuple[str, ...] = ("tiny", "125m-2l")
    mfu_seq_lens: tuple[int, ...] = (256, 512, 2048)
    mfu_tokens_per_step: int = 4096
    mfu_repeats: int = 3
    # (model, length) points also measured with bf16 compute (f32 params/optimizer) against the bf16 peak.
    mfu_bf16_points: tuple[tuple[str, int], ...] = (("125m-2l", 512),)
    memory_model: str = "125m-2l"
    memory_seq_len: int = 512
    packing_seq_len: int = 2048
    packing_batch: int = 8
    packing_batches: int = 11
    packing_simulate_segments: int = 2000
    decode_model: str = "125m-2l"
    decode_batches: tuple[int, ...] = (1, 8)
    decode_prompt_len: int = 128
    decode_new_tokens: int = 32
    decode_repeats: int = 3
    rank_examples: int = 16
    rank_candidates: int = 4
    rank_prompt_lens: tuple[int, int] = (64, 256)
    rank_cand_lens: tuple[int, int] = (1, 6)
    # Engines section (ours vs HF vs CTranslate2, f32 and int8): greedy at decode_batches/prompt/new tokens,
    # rank classification on the rank_* inputs, engines_repeats rounds.
    engines_model: str = "125m-2l"
    engines_repeats: int = 5
    engines_int8: bool = True
    scaling_model: str = "tiny"
    scaling_seq_len: int = 256
    scaling_batch: int = 16
    scaling_repeats: int = 3
    paper_widths: tuple[int, int] = (384, 768)
    paper_heads: int = 12
    paper_seq_len: int = 2048
    paper_mfu: float = 0.40
    gpu_models: tuple[str, ...] = ("opt-125m", "opt-350m", "opt-1.3b")
    gpu_tokens_per_step: int = 8 * 2048
    # Input wait (bench/input.py): the training mixture at this shape, a simulated step as long as one batch's
    # production; the first depth is train.prefetch's default and gives the headline figure.
    input_seq_len: int = 2048
    input_batch: int = 8
    input_steps: int = 40
    input_depths: tuple[int, ...] = (2, 4)
    input_rounds: int = 3

    @classmethod
    def quick(cls) -> "Settings":
        """Tiny models and few repeats: the whole run in under 2 minutes on a quiet 2-core CPU."""
        return cls(peak_size=1024, peak_repeats=3, train_model="tiny", train_seq_len=128, train_batch=4,
                   train_repeats=3, mfu_models=("tiny",), mfu_seq_lens=(128, 2048), mfu_tokens_per_step=2048,
                   mfu_bf16_points=(("tiny", 128),),
                   mfu_repeats=2, memory_model="tiny", memory_seq_len=128, packing_batch=8, packing_batches=4,
                   decode_model="tiny", decode_prompt_len=32, decode_new_tokens=16, decode_repeats=2,
                   rank_examples=8, rank_candidates=3, rank_prompt_lens=(16, 64), rank_cand_lens=(1, 4),
                   engines_model="tiny", engines_repeats=2, scaling_seq_len=64, scaling_batch=8, scaling_repeats=2, paper_widths=(64, 128), paper_heads=4,
                   paper_seq_len=128, gpu_models=("opt-125m",), gpu_tokens_per_step=2048, input_steps=24,
                   input_rounds=2)

    @classmethod
    def smoke(cls) -> "Settings":
        """Schema check in well under a minute: a 'micro' model (vocabulary 1024); the numbers mean nothing."""
        return cls(peak_size=256, peak_repeats=2, train_model="micro", train_seq_len=32, train_batch=2,
                   train_repeats=2, mfu_models=("micro",), mfu_seq_lens=(32, 128), mfu_tokens_per_step=128,
                   mfu_bf16_points=(("micro", 32),),
                   mfu_repeats=1, memory_model="micro", memory_seq_len=32, packing_seq_len=128, packing_batch=2,
                   packing_batches=2, packing_simulate_segments=100, decode_model="micro", decode_batches=(1, 2), decode_prompt_len=8,
                   decode_new_tokens=4, decode_repeats=1, rank_examples=3, rank_candidates=2,
                   rank_prompt_lens=(4, 12), rank_cand_lens=(1, 3), engines_model="micro", engines_repeats=1,
                   scaling_model="micro", scaling_seq_len=32,
                   scaling_batch=8, scaling_repeats=1, paper_widths=(32, 64), paper_heads=4, paper_seq_len=64,
                   gpu_models=("micro",), gpu_tokens_per_step=256, input_seq_len=128, input_batch=2, input_steps=4,
                   input_depths=(2,), input_rounds=1)


TARGETS = (
    # (name, goal text, threshold, getter)
    ("train step tokens/s vs HF PyTorch", ">= 1.5x", 1.5,
     lambda s: s["train_step"]["ratio_ours_over_hf"]),
    ("MFU, 125m-shaped config at length 512", ">= 50%", 0.5,
     lambda s: next(r["mfu"] for r in s["mfu"]
                    if r["model"] == "125m-2l" and r["seq_len"] == 512 and r["dtype"] == "float32")),
    ("greedy decoding tokens/s vs HF generate (worst batch size)", ">= 2x", 2.0,
     lambda s: min(r["ratio_ours_over_hf"] for r in s["decoding"]["rows"])),
    ("rank classification examples/s vs HF (prompt KV cache reused)", ">= 2x", 2.0,
     lambda s: s["rank_classification"]["ratio_ours_over_hf"]),
    ("greedy decoding tokens/s vs CTranslate2 f32 at batch 8", ">= 1.2x", 1.2,
     lambda s: next(r["ratio_ours_over"]["ct2_f32"] for r in s["engines"]["greedy"] if r["batch"] == 8)),
    ("real tokens in packed batches (2048 unless --smoke)", ">= 95%", 0.95,
     lambda s: s["packing"]["real_token_fraction"]),
    ("input wait fraction, simulated step = one batch's production", "<= 0.05", 0.05,
     lambda s: s["input"]["input_wait_fraction"]),
)


def evaluate_targets(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """Where each project target stands; a target whose measurement is absent is 'not measured'."""
    out = []
    for name, goal, threshold, get in TARGETS:
        try:
            value = get(sections)
        except (KeyError, StopIteration, TypeError, ValueError):
            value = None
        below = goal.startswith("<=")   # a ceiling, not a floor
        met = None if value is None else bool(value <= threshold if below else value >= threshold)
        status = "not measured" if met is None else ("met" if met else "NOT met")
        out.append({"name": name, "target": goal, "threshold": threshold, "value": value, "met": met,
                    "status": status})
    return out


def run_suite(settings: Settings, *, mode: str, only: tuple[str, ...] | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs every section (or those in `only`) and returns the benchmark record."""
    from bench import common

    t_start = time.perf_counter()
    common.setup_threads()
    # Before the sections run, so that "load_average_at_start" and "date" are what they say.
    machine = common.machine_info()
    import jax

    from bench import attention as attention_bench
    from bench import decode, engines, packing, paper_scale, peak, scaling, train_step
    from bench import input as input_bench

    s = settings
    sections: dict[str, Any] = {}
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    on_gpu = jax.devices()[0].platform == "gpu"

    def section(name: str, fn: Callable[[], Any]) -> None:
        if only and name not in only:
            return
        log(f"[bench] {name} ...")
        t0 = time.perf_counter()
        try:
            sections[name] = fn()
        except Exception:  # record and go on: one broken section must not hide the others
            errors[name] = traceback.format_exc(limit=8)
            log(f"[bench] {name} FAILED: {errors[name].strip().splitlines()[-1]}")
        timings[name] = time.perf_counter() - t0
        log(f"[bench] {name} done in {timings[name]:.1f} s")

    section("peak", lambda: peak.measure_peak(s.peak_size, repeats=s.peak_repeats))
    section("train_step", lambda: train_step.compare_with_hf(
        s.train_model, batch=s.train_batch, seq_len=s.train_seq_len, repeats=s.train_repeats))
    section("mfu", lambda: train_step.mfu_sweep(
        s.mfu_models, s.mfu_seq_lens, tokens_per_step=s.mfu_tokens_per_step, repeats=s.mfu_repeats,
        peak_size=s.peak_size) + [
            train_step.mfu_point(m, seq_len=L, tokens_per_step=s.mfu_tokens_per_step, repeats=s.mfu_repeats,
                                 peak_size=s.peak_size, dtype="bfloat16") for m, L in s.mfu_bf16_points])
    section("memory", lambda: {"step": train_step.step_memory(s.memory_model, seq_len=s.memory_seq_len),
                               "device": common.device_memory_stats()})

    def packing_section() -> dict[str, Any]:
        p = packing.measure_packing(seq_len=s.packing_seq_len, batch_size=s.packing_batch,
                                    num_batches=s.packing_batches,
                                    simulate_segments=s.packing_simulate_segments)
        # What the step consumes at this length: the largest model measured at this length.
        rows = [r for r in sections.get("mfu", []) if r["seq_len"] == s.packing_seq_len and r["dtype"] == "float32"]
        if rows:
            r = rows[-1]
            p["train_model"] = r["model"]
            p["train_sequences_per_s"] = r["tokens_per_s"] / r["seq_len"]
            p["pipeline_over_train"] = p["pipeline_sequences_per_s"] / p["train_sequences_per_s"]
        return p

    section("packing", packing_section)
    section("input", lambda: input_bench.measure_input_wait(
        seq_len=s.input_seq_len, batch_size=s.input_batch, steps=s.input_steps, depths=s.input_depths,
        rounds=s.input_rounds))
    section("decoding", lambda: decode.greedy_decoding(
        s.decode_model, batch_sizes=s.decode_batches, prompt_len=s.decode_prompt_len,
        new_tokens=s.decode_new_tokens, repeats=s.decode_repeats))
    section("rank_classification", lambda: decode.rank_classification(
        s.decode_model, examples=s.rank_examples, candidates=s.rank_candidates, prompt_lens=s.rank_prompt_lens,
        cand_lens=s.rank_cand_lens, repeats=s.decode_repeats))
    section("engines", lambda: engines.compare_engines(
        s.engines_model, batch_sizes=s.decode_batches, prompt_len=s.decode_prompt_len,
        new_tokens=s.decode_new_tokens, rank_examples=s.rank_examples, rank_candidates=s.rank_candidates,
        rank_prompt_lens=s.rank_prompt_lens, rank_cand_lens=s.rank_cand_lens, repeats=s.engines_repeats,
        with_int8=s.engines_int8, log=log))
    section("scaling", lambda: scaling.run_subprocess(
        s.scaling_model, seq_len=s.scaling_seq_len, batch=s.scaling_batch, repeats=s.scaling_repeats))

    def paper_section() -> dict[str, Any]:
        costs = paper_scale.measure_layer_costs(widths=s.paper_widths, heads=s.paper_heads,
                                                seq_len=s.paper_seq_len)
        return paper_scale.paper_scale(costs, mfu=s.paper_mfu)

    section("paper_scale", paper_section)
    section("attention", lambda: attention_bench.measure_mode(mode))

    def gpu_section() -> dict[str, Any]:
        if not on_gpu:
            return {"status": "skipped: no GPU"}
        return {"mfu": train_step.mfu_sweep(s.gpu_models, (2048,), tokens_per_step=s.gpu_tokens_per_step,
                                            repeats=s.mfu_repeats, peak_size=8192, dtype="bfloat16",
                                            attention_kernel="cudnn"),
                "device_memory": common.device_memory_stats()}

    section("gpu", gpu_section)
    timings["total"] = time.perf_counter() - t_start
    if only:  # sections not asked for are reported as such, so the record stays schema-valid
        for name in report.SECTIONS:
            if name not in sections and name not in errors:
                errors[name] = "not run (--only)"
    return {
        "schema_version": report.SCHEMA_VERSION, "mode": mode,
        "machine": {**machine, "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "settings": dataclasses.asdict(s), "sections": sections, "targets": evaluate_targets(sections),
        "errors": errors, "timings_s": timings, "peak_rss_bytes": common.peak_rss_bytes(),
    }


def write_results(record: dict[str, Any], out_dir: str) -> tuple[str, str]:
    """Writes latest.json and latest.md into out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    jpath, mpath = os.path.join(out_dir, "latest.json"), os.path.join(out_dir, "latest.md")
    with open(jpath, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True, default=float)
    with open(mpath, "w") as f:
        f.write(report.render_markdown(record))
    return jpath, mpath


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m bench.run [--quick] [--only SECTION ...] [--out-dir DIR]`."""
    p = argparse.ArgumentParser(prog="python -m bench.run", description="optiml-jax performance suite")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny models, few repeats (under 2 minutes on a quiet 2-core CPU)")
    size.add_argument("--smoke", action="store_true", help="schema check only (seconds; numbers meaningless)")
    p.add_argument("--only", nargs="+", metavar="SECTION", help=f"run only these sections: {report.SECTIONS}")
    p.add_argument("--out-dir", default=DEFAULT_OUT_DIR, help="where latest.json / latest.md go")
    args = p.parse_args(argv)
    if args.only:
        unknown = sorted(set(args.only) - set(report.SECTIONS))
        if unknown:
            p.error(f"--only: unknown section(s) {unknown}; choose from {list(report.SECTIONS)}")
    mode = "quick" if args.quick else "smoke" if args.smoke else "default"
    settings = {"quick": Settings.quick, "smoke": Settings.smoke, "default": Settings}[mode]()
    record = run_suite(settings, mode=mode,
                       only=tuple(args.only) if args.only else None)
    problems = report.validate_record(record)
    if problems:
        print(f"[bench] record has schema problems: {problems}", file=sys.stderr)
    jpath, mpath = write_results(record, args.out_dir)
    print(report.render_markdown(record))
    print(f"[bench] wrote {jpath} and {mpath}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
