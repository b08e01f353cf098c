"""``python -m optiml_jax.tasks cache``: builds (or checks) the token cache of a training mixture.

    python -m optiml_jax.tasks cache --mixture NAME [--data_dir D] [--split S] --out CACHE_DIR [--workers N]
        [--host_index I --num_hosts H] [--tokenizer_dir T] [--gin_file F ...] [--gin BINDING ...] [--check]

Every task of the mixture is tokenised once into CACHE_DIR (see optiml_jax/tasks/cache.py); tasks already
cached with the same fingerprints are kept, so a killed build continues where it stopped, and a stale task
(its data, the rendering or the vocabulary changed) is rebuilt. ``--workers N`` builds N tasks at a time in
separate processes. On a cluster, every host runs the same command with its ``--host_index`` and the common
``--num_hosts`` on storage they all see: each builds its share of the tasks, and the last one to finish writes
the top manifest (rerun any host's command to check or complete it). ``--gin_file`` imports user modules that
register seqio Tasks (``import my_tasks``) and sets ``mixture_config.extra_tasks``; ``--check`` only reports.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from optiml_jax import errors


class CacheUsageError(errors.UserError):
    """A bad flag of the cache command."""


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m optiml_jax.tasks cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixture", default=None, help="training mixture (optiml_train, optiml_max_train, a task)")
    parser.add_argument("--data_dir", default=None, help="real data dir (default: $OPTIML_DATA_DIR)")
    parser.add_argument("--split", default=None, help="split definition (default: optiml with data, else embedded)")
    parser.add_argument("--out", default=None, help="the cache folder")
    parser.add_argument("--workers", type=int, default=1, help="processes building tasks at the same time")
    parser.add_argument("--host_index", type=int, default=None, help="this host's index (cluster builds)")
    parser.add_argument("--num_hosts", type=int, default=None, help="hosts sharing the build")
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (user Tasks, mixture_config)")
    parser.add_argument("--gin", action="append", default=[], help="gin binding, e.g. mixture_config.eps=1000")
    parser.add_argument("--tokenizer_dir", default=None, help="tokenizer folder (default: GPT-2's, as training)")
    parser.add_argument("--check", action="store_true", help="report what is stale or missing; build nothing")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def run(argv: list[str]) -> int:
    """Runs the command; a `errors.UserError` (bad flag, data, cache) is one ``error:`` line and exit 2."""
    try:
        return _run(_parse(argv))
    except errors.UserError as e:
        print(f"error: {errors.one_line(e)}", file=sys.stderr)
        return errors.EXIT_USAGE


def _run(args) -> int:
    for flag in ("mixture", "out"):
        if not getattr(args, flag):
            raise CacheUsageError(f"cache needs --{flag}")
    if args.workers < 1:
        raise CacheUsageError(f"--workers must be >= 1, got {args.workers}")
    if (args.host_index is None) != (args.num_hosts is None):
        raise CacheUsageError("give --host_index and --num_hosts together")
    num_hosts = args.num_hosts or 1
    host_index = args.host_index or 0
    if num_hosts < 1 or not 0 <= host_index < num_hosts:
        raise CacheUsageError(f"need 0 <= --host_index < --num_hosts, got {host_index} and {num_hosts}")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise CacheUsageError(f"--data_dir {args.data_dir!r}: no such directory")
    if args.tokenizer_dir is not None and not os.path.isdir(args.tokenizer_dir):
        raise CacheUsageError(f"--tokenizer_dir {args.tokenizer_dir!r}: no such directory")
    for f in args.gin_file:
        if not os.path.isfile(f):
            raise CacheUsageError(f"--gin_file {f!r}: no such file")
    import gin

    from optiml_jax.tasks import cache, mixtures, pipeline
    from optiml_jax.tasks.configurables import import_configurables, parse_task_gin
    from optiml_jax.tokenizer import OPTVocabulary

    import_configurables()
    parse_task_gin(args.gin_file, args.gin)
    config = _mixture_config(gin, mixtures)
    split = args.split   # train.split of a training gin file is not read here (that configurable is skipped)
    bench = pipeline.get_bench(args.data_dir, split)
    try:
        bench.training_task_names(args.mixture)
    except ValueError as e:
        raise CacheUsageError(f"--mixture: {e}") from None
    vocab = OPTVocabulary.from_dir(args.tokenizer_dir) if args.tokenizer_dir else OPTVocabulary.default()
    p = cache.plan(bench, args.mixture, vocab, tuple(sorted(config.extra_tasks)))
    stale = {n: why for n, why in cache.status(args.out, p).items() if why is not None}
    if args.check:
        print(json.dumps({"cache": args.out, "tasks": len(p.tasks), "stale_or_missing": len(stale),
                          "first": dict(list(stale.items())[:5])}))
        return 0 if not stale else 1
    summary = cache.build(args.out, p, workers=args.workers, host_index=host_index, num_hosts=num_hosts,
                          worker_setup={"gin_files": args.gin_file, "gin_bindings": args.gin,
                                        "data_dir": args.data_dir, "split": split},
                          progress=not args.no_progress)
    print(json.dumps({"cache": args.out, **summary}))
    if summary["remaining"]:
        print(f"{summary['remaining']} task(s) are other hosts' share or still missing; the manifest is written "
              "once every task is built", file=sys.stderr)
    return 0


def _mixture_config(gin, mixtures):
    """The gin-configured `mixture_config()` when a gin file sets it, else the defaults."""
    try:
        return gin.get_configurable("optiml_jax.mixture_config")() if any(
            "mixture_config" in line for line in gin.config_str().splitlines()) else mixtures.MixtureConfig()
    except ValueError as e:
        raise CacheUsageError(f"mixture_config: {e}") from None
