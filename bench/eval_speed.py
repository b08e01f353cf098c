"""Evaluation speed on the real test split (issue 14): where the time of `optiml_jax.evaluation.evaluate` goes.

    OPTIML_DATA_DIR=../shared/data python -m bench.eval_speed [--checkpoint DIR] [--tasks_per_level N]
        [--max_examples 1] [--profile out.prof] [--out DIR]

Runs the paper's test protocol (optiml_test.gin's settings: shots 0/2/5, greedy up to 256 new tokens) with the
tiny CPU model (a trained checkpoint, or tiny-cpu at its random initialisation), prints the evaluation plan,
the wall time by phase (planning, rendering, model calls, aggregation and files), the compiled batch shapes and
the seconds per unit, and optionally writes a cProfile file. A benchmark, not a test: bench/README.md records
the numbers with the machine's load.
"""
from __future__ import annotations

import argparse
import cProfile
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
    ap.add_argument("--profile", default=None, help="write cProfile stats here")
    ap.add_argument("--out", default=None, help="evaluation output dir (default: a fresh temporary dir)")
    args = ap.parse_args()

    import jax

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
                                max_new_tokens=args.max_new_tokens)
    out = args.out or tempfile.mkdtemp(prefix="eval_speed_")
    t0 = time.perf_counter()
    units = evaluation.plan(cfg)
    t1 = time.perf_counter()
    examples = evaluation.render_units(units, cfg)
    t2 = time.perf_counter()
    print(evaluation.format_plan(evaluation.describe_plan(units, examples, predictor, cfg)), flush=True)
    t3 = time.perf_counter()
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    agg = evaluation.evaluate(predictor, cfg, out, units=units, examples=examples, progress=False)
    if prof:
        prof.disable()
        prof.dump_stats(args.profile)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    t4 = time.perf_counter()
    print(f"plan {t1 - t0:.1f}s, render {t2 - t1:.1f}s, describe {t3 - t2:.1f}s, evaluate {t4 - t3:.1f}s "
          f"({(t4 - t3) / len(units):.3f}s per unit over {len(units)} units), total {t4 - t0:.1f}s; "
          f"{len(predictor.compiled_shapes)} compiled batch shapes; combined score {agg['combined']}; "
          f"outputs in {out}; load: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
