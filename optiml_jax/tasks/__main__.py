"""Command line: benchmark report and leakage audit.

    python -m optiml_jax.tasks --report [--data_dir D] [--split S] [--eps N] [--max_tasks K]
    python -m optiml_jax.tasks leakage [--threshold 0.01] [--out FILE] [--data_dir D] [--split S]

`leakage` audits the bench without its current decisions and writes the decisions TSV (default
tasks/leakage_decisions.tsv, which every training mixture applies; see optiml_jax/tasks/leakage.py).
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time

from optiml_jax.tasks import leakage, mixtures, pipeline
from optiml_jax.tasks.schema import LEVELS


def _roles(bench: pipeline.Bench) -> dict[str, str]:
    roles = {n: "unused" for n in bench.catalogue}
    for n in bench.train_tasks:
        roles[n] = "train"
    for n in bench.excluded:
        roles[n] = "excluded"
    for (split, level), names in bench.eval_tasks.items():
        for n in names:
            roles[n] = f"{split}:{level}" if roles[n] in ("unused", "train") and level != "supervised" \
                else roles[n]
    return roles


def benchmark_table(bench: pipeline.Bench) -> str:
    """Tasks per benchmark x role, then per category x role (plain text)."""
    roles = _roles(bench)
    role_names = sorted(set(roles.values()))
    lines = [f"split definition: {bench.split_name}   data_dir: {bench.data_dir}", ""]
    for key, title in ((lambda i: i.benchmark, "benchmark"), (lambda i: i.category, "category")):
        counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for name, info in bench.catalogue.items():
            counts[key(info)][roles[name]] += 1
        width = max(len(title), *(len(k) for k in counts)) + 2
        cw = max(len(r) for r in role_names) + 2
        lines.append(f"{title:<{width}}" + "".join(f"{r:>{cw}}" for r in role_names) + f"{'total':>8}")
        for k in sorted(counts):
            c = counts[k]
            lines.append(f"{k:<{width}}" + "".join(f"{c[r]:>{cw}}" for r in role_names) + f"{sum(c.values()):>8}")
        lines.append("")
    lines.append("evaluation tasks per level:")
    for split in pipeline.EVAL_SPLITS:
        lines.append("  " + split + ": " + ", ".join(f"{lv} {len(bench.eval_tasks.get((split, lv), ()))}"
                                                    for lv in LEVELS))
    return "\n".join(lines)


def _report(args) -> int:
    bench = pipeline.get_bench(args.data_dir, args.split)
    print(benchmark_table(bench))
    print()
    cfg = mixtures.MixtureConfig(eps=args.eps)
    rates, skipped = pipeline.training_rates(bench, args.mixture, cfg)
    print(mixtures.rates_report(rates, max_tasks=args.max_tasks))
    if skipped:
        print(f"\n{len(skipped)} training tasks have no examples on disk and are not in the mixture "
              f"(e.g. {', '.join(skipped[:3])})")
    return 0


def _leakage(args) -> int:
    # The audit must not see its own decisions: a bench without them makes the output a pure function of the
    # data (rerunning it on the same data rewrites the same file).
    bench = pipeline.get_bench(args.data_dir, args.split, apply_leakage_decisions=False)
    start = time.perf_counter()
    decisions, _flagged, summary = leakage.audit_bench(bench, threshold=args.threshold)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    print(f"{'train task':<58}{'eval task':<58}{'overlap':>8}  decision  rule")
    for d in decisions:
        print(f"{d.train_task[:57]:<58}{d.eval_task[:57]:<58}{100 * d.overlap:>7.1f}%  {d.decision:<8}  {d.rule}")
    print(json.dumps(summary))
    path = leakage.write_decisions(decisions, args.out)
    drops = leakage.dropped_train_tasks(decisions)
    print(f"{len(decisions)} decisions ({len(drops)} train tasks dropped) -> {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m optiml_jax.tasks``."""
    parser = argparse.ArgumentParser(prog="python -m optiml_jax.tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=["report", "leakage"], default=None)
    parser.add_argument("--report", action="store_true", help="print the benchmark table and mixture rates")
    parser.add_argument("--data_dir", default=None, help="real data dir (default: $OPTIML_DATA_DIR)")
    parser.add_argument("--split", default=None, help="split definition (default: optiml with data, else embedded)")
    parser.add_argument("--mixture", default=pipeline.TRAIN_MIXTURE)
    parser.add_argument("--eps", type=int, default=4096)
    parser.add_argument("--max_tasks", type=int, default=30, help="tasks listed in the rate report")
    parser.add_argument("--threshold", type=float, default=leakage.DEFAULT_THRESHOLD)
    parser.add_argument("--out", default=None, help="decisions TSV to write (default: leakage.decisions_path(), "
                        "tasks/leakage_decisions.tsv or $OPTIML_LEAKAGE_DECISIONS)")
    args = parser.parse_args(argv)
    if args.command == "leakage":
        if not 0 <= args.threshold < 1:
            parser.error(f"--threshold must be in [0, 1), got {args.threshold}")
        return _leakage(args)
    if args.report or args.command == "report":
        return _report(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
