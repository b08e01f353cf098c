"""Command line: benchmark report and leakage audit.

    python -m optiml_jax.tasks --report [--data_dir D] [--split S] [--eps N] [--max_tasks K]
    python -m optiml_jax.tasks leakage [--threshold 0.01] [--out FILE] [--data_dir D] [--split S]
    python -m optiml_jax.tasks synth --tasks N --examples_per_task M --out DIR [--seed S] [--force]
    python -m optiml_jax.tasks cache --mixture NAME [--data_dir D] [--split S] --out CACHE_DIR [--workers N]

`leakage` audits the bench without its current decisions and writes the decisions TSV (default
tasks/leakage_decisions.tsv, which every training mixture applies; see optiml_jax/tasks/leakage.py).
`cache` tokenises every task of a mixture once into a token cache (optiml_jax/tasks/cache_cli.py).
`synth` writes a synthetic benchmark of any size as a data dir plus DIR/synth.gin (optiml_jax/tasks/synth.py).
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from typing import Sequence

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


def _table1_rows(bench: pipeline.Bench, *, on_disk: bool) -> list[list[str]]:
    """The paper's Table 1 layout for the bench: per benchmark (categories, tasks, examples, then tasks per
    role), then the OPT-IML Bench train / validation / test rows. ``on_disk``: only tasks with examples in the
    data directory, counted by their instances there; else the catalogue's tasks and release sizes."""
    roles = _roles(bench)
    eval_split = {n: s for (s, lv), names in bench.eval_tasks.items() if lv != "supervised" for n in names}

    def size(name: str) -> int:
        if on_disk:
            try:
                return len(bench.examples(name))
            except (FileNotFoundError, ValueError):   # no data dir / unreadable: not present on disk
                return 0
        return bench.catalogue[name].num_instances

    in_scope = [n for n in sorted(bench.catalogue) if roles[n] != "unused"
                and bench.role(n) != "excluded" or n in bench.leakage_drops]
    sizes = {n: size(n) for n in in_scope}
    present = [n for n in in_scope if not on_disk or sizes[n] > 0]
    rows = []
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for n in present:
        groups[bench.catalogue[n].benchmark].append(n)

    def row(label: str, names: Sequence[str]) -> list[str]:
        cats = {bench.catalogue[n].category for n in names}
        trained = [n for n in names if n in bench.train_tasks]
        val = [n for n in names if eval_split.get(n) == "validation"]
        test = [n for n in names if eval_split.get(n) == "test"]
        dropped = [n for n in names if n in bench.leakage_drops]
        return [label, str(len(cats)), str(len(names)), f"{sum(sizes[n] for n in names):,}",
                str(len(trained)), str(len(val)), str(len(test)), str(len(dropped))]

    for bench_name in sorted(groups):
        rows.append(row(bench_name, groups[bench_name]))
    rows.append(row("**OPT-IML Bench (train)**", [n for n in present if n in bench.train_tasks]))
    rows.append(row("**OPT-IML Bench (validation)**", [n for n in present if eval_split.get(n) == "validation"]))
    rows.append(row("**OPT-IML Bench (test)**", [n for n in present if eval_split.get(n) == "test"]))
    return rows


_TABLE1_HEADER = ["benchmark", "categories", "tasks", "examples", "train tasks", "validation tasks",
                  "test tasks", "dropped by the audit"]


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def bench_report(bench: pipeline.Bench, mixture: str, config: mixtures.MixtureConfig, *,
                 max_tasks: int | None = 30) -> str:
    """The `--report` text (markdown): Table 1 as configured and as present on disk, supervised tasks, the
    realised mixture (share per benchmark, rate per task) and the tasks the leakage audit dropped, with why."""
    out = [f"split definition `{bench.split_name}`, data dir `{bench.data_dir}`, mixture `{mixture}`, "
           f"EPS {config.eps}", ""]
    out += ["### Table 1, as configured (catalogue tasks, release sizes)", "",
            _markdown(_TABLE1_HEADER, _table1_rows(bench, on_disk=False)), ""]
    out += ["### Table 1, as present on disk (tasks with instances, instances on disk)", "",
            _markdown(_TABLE1_HEADER, _table1_rows(bench, on_disk=True)), ""]
    sup = {s: len(bench.eval_tasks.get((s, "supervised"), ())) for s in pipeline.EVAL_SPLITS}
    out += ["Evaluation tasks per level: " + "; ".join(
        f"{s}: " + ", ".join(f"{lv} {len(bench.eval_tasks.get((s, lv), ()))}" for lv in LEVELS)
        for s in pipeline.EVAL_SPLITS) + f" (supervised = held-out instances of training tasks: {sup}).", ""]
    rates, skipped = pipeline.training_rates(bench, mixture, config)
    bench_rows, task_rows = mixtures.rates_table(rates)
    out += ["### Realised mixture", "", _markdown(
        ["benchmark", "tasks", "capped at EPS", "examples", "share"],
        [[r["benchmark"], str(r["tasks"]), str(r["capped"]), f"{r['examples']:,}", f"{100 * r['share']:.2f}%"]
         for r in bench_rows]), ""]
    shown = sorted(task_rows, key=lambda r: (-r["rate"], r["task"]))
    title = f"Rate per task (the {max_tasks} highest of {len(task_rows)})" if max_tasks is not None and \
        len(shown) > max_tasks else f"Rate per task ({len(task_rows)})"
    out += [title, "", _markdown(["task", "benchmark", "size", "rate"],
                                 [[r["task"], r["benchmark"], f"{r['size']:,}", f"{100 * r['rate']:.4f}%"]
                                  for r in shown[:max_tasks]]), ""]
    if skipped:
        out += [f"{len(skipped)} training tasks have no examples on disk and are not in the mixture "
                f"(e.g. {', '.join(skipped[:3])}).", ""]
    drops = sorted(bench.leakage_drops.items())
    out += [f"### Dropped by the leakage audit ({len(drops)} training tasks, `tasks/leakage_decisions.tsv`)", ""]
    out += [_markdown(["task", "why"], [[n, why] for n, why in drops])] if drops else ["none"]
    return "\n".join(out)


def _report(args) -> int:
    bench = pipeline.get_bench(args.data_dir, args.split)
    print(bench_report(bench, args.mixture, mixtures.MixtureConfig(eps=args.eps), max_tasks=args.max_tasks))
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


def _synth(args) -> int:
    from optiml_jax.tasks import synth

    missing = [f"--{k}" for k in ("tasks", "examples_per_task", "out") if getattr(args, k) is None]
    try:
        if missing:
            raise synth.SynthError(f"synth needs {', '.join(missing)}")
        manifest = synth.write_synth_bench(args.out, num_tasks=args.tasks, examples_per_task=args.examples_per_task,
                                           seed=args.seed, force=args.force)
    except synth.SynthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(manifest))
    print(f"wrote {args.out}; train on it with OPTIML_DATA_DIR={args.out} python -m optiml_jax.train "
          f"--gin_file=gin/train/tiny_cpu.gin --gin_file={args.out}/{synth.GIN_FILE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m optiml_jax.tasks``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["cache"]:   # its own flags (optiml_jax/tasks/cache_cli.py)
        from optiml_jax.tasks import cache_cli

        return cache_cli.run(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m optiml_jax.tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=["report", "leakage", "synth"], default=None)
    parser.add_argument("--report", action="store_true", help="print the benchmark table and mixture rates")
    parser.add_argument("--data_dir", default=None, help="real data dir (default: $OPTIML_DATA_DIR)")
    parser.add_argument("--split", default=None, help="split definition (default: optiml with data, else embedded)")
    parser.add_argument("--mixture", default=pipeline.TRAIN_MIXTURE)
    parser.add_argument("--eps", type=int, default=4096)
    parser.add_argument("--max_tasks", type=int, default=30, help="tasks listed in the rate report")
    parser.add_argument("--threshold", type=float, default=leakage.DEFAULT_THRESHOLD)
    parser.add_argument("--out", default=None, help="decisions TSV to write (default: leakage.decisions_path(), "
                        "tasks/leakage_decisions.tsv or $OPTIML_LEAKAGE_DECISIONS)")
    parser.add_argument("--tasks", type=int, default=None, help="synth: number of tasks")
    parser.add_argument("--examples_per_task", type=int, default=None, help="synth: instances per task")
    parser.add_argument("--seed", type=int, default=0, help="synth: seed of the generated instances")
    parser.add_argument("--force", action="store_true", help="synth: replace a synthetic bench in --out")
    args = parser.parse_args(argv)
    if args.command == "synth":
        return _synth(args)
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
