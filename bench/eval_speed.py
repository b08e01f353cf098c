"""Evaluation speed on the real test split (issue 14): where the time of `optiml_jax.evaluation.evaluate` goes.

    OPTIML_DATA_DIR=../shared/data python -m bench.eval_speed [--checkpoint DIR] [--tasks_per_level N]
        [--max_examples 1] [--generation_limit fixed|references] [--compilation_cache DIR]
        [--profile out.prof] [--out DIR] [--same_as EARLIER_OUT]

Runs the paper's test protocol (optiml_test.gin's settings: shots 0/2/5, greedy up to 256 new tokens) with the
tiny CPU model (a trained checkpoint, or tiny-cpu at its random initialisation), prints the evaluation plan,
the wall time by phase (planning, rendering, model calls, aggregation and files), the compiled batch shapes and
the seconds per unit, the process CPU time beside the wall time (the machine is shared: CPU seconds say more
about the work than wall seconds), and optionally writes a cProfile file. ``--same_as`` compares the predictions
with an earlier run's output dir (identical, or for a bounded run a prefix of the earlier generation).
A benchmark, not a test: bench/README.md records the numbers with the machine's load.
"""
from __future__ import annotations

import argparse
import cProfile
import glob
import json
import os
import pstats
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="checkpoint or run dir (default: random tiny-cpu)")
    ap.add_argument("--tasks_per_level", type=int, default=None, help="first N tasks per level (default: all)")
    ap.add_argument("--max_examples", type=int, default=1)
    ap.add_argument("--max_new_tokens", type=int, default=256)
    ap.add_argument("--batch_size", type=int, default=8, help="prompts per device call (optiml_test.gin: 8)")
    ap.add_argument("--token_budget", type=int, default=8192, help="padded prompt tokens per call at most")
    ap.add_argument("--generation_limit", default="fixed", choices=("fixed", "references"),
                    help="new tokens per generated example: max_new_tokens, or each task's reference bound")
    ap.add_argument("--compilation_cache", default=None,
                    help="JAX persistent compilation cache dir (a second run reuses the compiled programs)")
    ap.add_argument("--profile", default=None, help="write cProfile stats here")
    ap.add_argument("--out", default=None, help="evaluation output dir (default: a fresh temporary dir)")
    ap.add_argument("--same_as", default=None, help="an earlier run's --out: compare the predictions")
    args = ap.parse_args()

    import jax

    if args.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)

    from optiml_jax import evaluation, inference
    from optiml_jax.models.configs import get_config
    from optiml_jax.models.opt import OPTForCausalLM
    from optiml_jax.tokenizer import OPTVocabulary

    if args.checkpoint:
        predictor = inference.Predictor.from_checkpoint(inference.resolve_checkpoint(args.checkpoint),
                                                        param_dtype="float32", name="tiny",
                                                        batch_size=args.batch_size, token_budget=args.token_budget)
    else:
        model = OPTForCausalLM(get_config("tiny-cpu"))
        predictor = inference.Predictor(model, model.init_params(jax.random.PRNGKey(0)), OPTVocabulary.default(),
                                        batch_size=args.batch_size, token_budget=args.token_budget, name="tiny")
    cfg = evaluation.EvalConfig(split="test", split_definition="optiml", shots=(0, 2, 5),
                                max_tasks_per_level=args.tasks_per_level, max_examples=args.max_examples,
                                max_new_tokens=args.max_new_tokens, generation_limit=args.generation_limit)
    out = args.out or tempfile.mkdtemp(prefix="eval_speed_")
    c0, t0 = time.process_time(), time.perf_counter()
    units = evaluation.plan(cfg)
    t1 = time.perf_counter()
    examples = evaluation.render_units(units, cfg)
    t2 = time.perf_counter()
    limits = evaluation.generation_limits(cfg, [u.task for u in units], predictor.vocab)
    t2b = time.perf_counter()
    print(evaluation.format_plan(evaluation.describe_plan(units, examples, predictor, cfg, limits=limits)),
          flush=True)
    t3 = time.perf_counter()
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    agg = evaluation.evaluate(predictor, cfg, out, units=units, examples=examples, progress=False, limits=limits)
    if prof:
        prof.disable()
        prof.dump_stats(args.profile)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    t4, c4 = time.perf_counter(), time.process_time()
    gen = []
    for path in glob.glob(os.path.join(out, "predictions", "*.jsonl")):
        with open(path) as f:
            gen += [r["prediction"] for r in map(json.loads, f) if r["mode"] == "generation"]
    print(f"plan {t1 - t0:.1f}s, render {t2 - t1:.1f}s, limits {t2b - t2:.1f}s, describe {t3 - t2b:.1f}s, "
          f"evaluate {t4 - t3:.1f}s ({(t4 - t3) / len(units):.3f}s per unit over {len(units)} units), total "
          f"{t4 - t0:.1f}s (process CPU {c4 - c0:.1f}s); {len(predictor.compiled_shapes)} compiled batch shapes; "
          f"{len(gen)} generations of {sum(map(len, gen)) / max(len(gen), 1):.0f} characters on average; combined "
          f"score {agg['combined']}; outputs in {out}; load: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("compiled batch shapes:", " ".join(str(x) for x in sorted(predictor.compiled_shapes)))
    if args.same_as:
        print(compare_predictions(args.same_as, out))


def compare_predictions(before: str, after: str) -> str:
    """How many predictions of ``after`` equal those of ``before`` (the same units), and how many of the others
    are a prefix of the earlier one (a generation cut by a smaller limit)."""
    same = prefix = other = 0
    for path in sorted(glob.glob(os.path.join(after, "predictions", "*.jsonl"))):
        old_path = os.path.join(before, "predictions", os.path.basename(path))
        if not os.path.exists(old_path):
            continue
        with open(path) as f, open(old_path) as g:
            for new, old in zip(map(json.loads, f), map(json.loads, g)):
                if new["prediction"] == old["prediction"]:
                    same += 1
                elif old["prediction"].startswith(new["prediction"].rstrip("\ufffd")):
                    prefix += 1
                else:
                    other += 1
    return f"predictions vs {before}: {same} identical, {prefix} a prefix of the earlier one, {other} different"


if __name__ == "__main__":
    main()
