"""Split definitions resolved over the catalogue of a data dir: the cached task lists training and evaluation use.

`splits` holds the definitions and the pure `splits.resolve`; the catalogue sits below this module (it fills each
row's role with `splits.resolve` itself), so resolving over a loaded catalogue lives here, above both.
"""
from __future__ import annotations

import functools
import os

import gin

from optiml_jax.tasks import catalogue as cat_mod
from optiml_jax.tasks import leakage
from optiml_jax.tasks.splits import ResolvedSplit, SplitError, get_split, matches, resolve


@functools.lru_cache(maxsize=16)
def _resolved_cached(split_name: str, data_dir: str | None, gin_config: str,
                     leakage_drops: tuple[tuple[str, str], ...]) -> ResolvedSplit:
    del gin_config  # part of the cache key only: a new gin binding gives a new resolution
    split = get_split(split_name)
    result = resolve(split, cat_mod.load_catalogue(data_dir), source_splits=cat_mod.source_splits(data_dir),
                     leakage_drops=dict(leakage_drops))
    if split.train_eval_only_benchmarks and not result.train:
        # A split made for an optional benchmark (e.g. "bigbench") is useless without it: say why it is missing.
        reason = (cat_mod.bigbench_status(data_dir).describe()
                  if matches("BIG-bench", split.train_eval_only_benchmarks) else "check the data directory")
        raise SplitError(f"split {split_name!r} has no training tasks ({reason})")
    return result


def cache_clear() -> None:
    """Forget every cached resolution (tests that change the data dir's contents call it)."""
    _resolved_cached.cache_clear()


def resolved(split_name: str, data_dir: str | os.PathLike | None = None, *,
             apply_leakage_decisions: bool = True) -> ResolvedSplit:
    """``splits.resolve(get_split(split_name))`` over the full catalogue of ``data_dir``, cached.

    The leakage audit's decisions (`leakage.active_drops`: the committed tasks/leakage_decisions.tsv unless gin
    says ``leakage_decisions.apply = False``) are applied unless ``apply_leakage_decisions`` is False (the audit
    itself resolves without them, so that rerunning it reproduces its file).
    """
    drops = tuple(sorted(leakage.active_drops().items())) if apply_leakage_decisions else ()
    return _resolved_cached(split_name, None if data_dir is None else str(data_dir), gin.config_str(), drops)


def is_heldout_instance(task_name: str, example_id: str, split_name: str,
                        data_dir: str | os.PathLike | None = None) -> bool:
    """True when instance ``example_id`` of ``task_name`` is held out (supervised level) in ``split_name``, i.e.
    must be excluded from training."""
    return resolved(split_name, data_dir).is_heldout_instance(task_name, example_id)
