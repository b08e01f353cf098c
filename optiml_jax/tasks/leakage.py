"""Train/eval contamination audit (paper section 2.3, "Task de-duplication").

For every (train task, eval task) pair we report the fraction of the eval task's examples that share at least
one 13-gram (lower-cased whitespace tokens) with any example of the train task. Texts are an example's input
and references (the instance content; task definitions are left out because SuperNI definitions share
boilerplate sentences that would flag unrelated tasks).

Efficiency: every 13-gram is hashed to 64 bits with a polynomial hash over random per-token values, for a whole
task at once (numpy, vectorised). The train side becomes one index from gram hash to train tasks -- a sorted
array of (hash, task) pairs, the memory-light equivalent of a ``dict[gram] -> tasks`` -- and each eval task is
one ``searchsorted`` over all its grams.

Pairs above the threshold (1 % by default) are printed; ``--drop`` writes the offending train tasks to an
exclusion list (`exclusions_path`) that the pipeline honours (`read_exclusions`).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np

from optiml_jax.tasks.schema import Example

NGRAM = 13
DEFAULT_THRESHOLD = 0.01
EXCLUSIONS_ENV = "OPTIML_LEAKAGE_EXCLUSIONS"
_REPO_EXCLUSIONS = pathlib.Path(__file__).resolve().parents[2] / "tasks" / "leakage_exclusions.txt"
_MULT = np.uint64(0x100000001B3)  # FNV prime: an odd multiplier for the polynomial hash


@dataclasses.dataclass(frozen=True)
class Overlap:
    """One flagged pair: ``overlapping`` of ``total`` eval examples share a 13-gram with the train task."""

    train_task: str
    eval_task: str
    overlapping: int
    total: int

    @property
    def fraction(self) -> float:
        """Share of the eval task's examples that overlap."""
        return self.overlapping / self.total if self.total else 0.0


class _TokenHasher:
    """Maps whitespace tokens to random 64-bit values (fixed seed; one table per audit, so consistent)."""

    def __init__(self, seed: int = 0) -> None:
        self._ids: dict[str, int] = {}
        self._rng = np.random.default_rng(seed)
        self._table = np.empty(0, np.uint64)

    def __call__(self, tokens: Sequence[str]) -> np.ndarray:
        ids = self._ids
        idx = np.fromiter((ids.setdefault(t, len(ids)) for t in tokens), np.int64, count=len(tokens))
        if len(ids) > len(self._table):
            grow = max(len(ids) - len(self._table), len(self._table))
            self._table = np.concatenate([self._table, self._rng.integers(
                0, np.iinfo(np.uint64).max, size=grow, dtype=np.uint64, endpoint=True)])
        return self._table[idx]


def example_text(example: Example) -> str:
    """The text of an example that the audit compares."""
    return " ".join([example.input, *example.outputs])


def _grams_of_texts(texts: Sequence[str], hasher: _TokenHasher, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(gram hashes, index of the text each gram comes from) for all n-grams of all texts, vectorised: the
    texts' tokens are concatenated and grams that would straddle two texts are dropped."""
    token_lists = [t.lower().split() for t in texts]
    lengths = np.fromiter((len(t) for t in token_lists), np.int64, count=len(token_lists))
    total = int(lengths.sum())
    if total < n:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    vals = hasher([tok for toks in token_lists for tok in toks])
    m = total - n + 1
    h = np.zeros(m, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _MULT + vals[j:j + m]   # polynomial hash, wrapping modulo 2**64 on purpose
    owner = np.repeat(np.arange(len(texts)), lengths)[:m]
    ends = np.cumsum(lengths)
    valid = np.arange(m) + n <= ends[owner]   # the gram ends inside its own text
    return h[valid], owner[valid]


def gram_hashes(text: str, hasher: _TokenHasher, n: int = NGRAM) -> np.ndarray:
    """Unique 64-bit hashes of the n-grams of ``text`` (lower-cased, whitespace-split); empty if shorter."""
    return np.unique(_grams_of_texts([text], hasher, n)[0])


def build_index(train: Mapping[str, Sequence[str]], n: int = NGRAM,
                hasher: _TokenHasher | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Sorted (gram hash, train task index) arrays over all train texts, plus the task name list."""
    hasher = hasher or _TokenHasher()
    names = sorted(train)
    hashes, owners = [], []
    for ti, name in enumerate(names):
        g = np.unique(_grams_of_texts(list(train[name]), hasher, n)[0])
        hashes.append(g)
        owners.append(np.full(len(g), ti, np.int32))
    if not hashes:
        return np.empty(0, np.uint64), np.empty(0, np.int32), names
    h = np.concatenate(hashes)
    o = np.concatenate(owners)
    order = np.argsort(h, kind="stable")
    return h[order], o[order], names


def audit(train: Mapping[str, Sequence[str]], evaluation: Mapping[str, Sequence[str]], *, n: int = NGRAM,
          threshold: float = DEFAULT_THRESHOLD) -> list[Overlap]:
    """All (train, eval) pairs whose overlap fraction exceeds ``threshold``, highest first.

    Args:
      train: train task name -> texts of its examples.
      evaluation: eval task name -> texts of its examples.
    """
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    hasher = _TokenHasher()
    idx_hash, idx_task, names = build_index(train, n, hasher)
    flagged: list[Overlap] = []
    for eval_name in sorted(evaluation):
        texts = list(evaluation[eval_name])
        grams, owner = _grams_of_texts(texts, hasher, n)
        if not len(grams) or not len(idx_hash):
            continue
        lo = np.searchsorted(idx_hash, grams, side="left")
        hi = np.searchsorted(idx_hash, grams, side="right")
        hit = np.flatnonzero(hi > lo)
        if not len(hit):
            continue
        # Expand every hit into its (eval text, train task) pairs; a text counts once per train task.
        spans = hi[hit] - lo[hit]
        rows = np.repeat(owner[hit], spans)
        starts = np.repeat(lo[hit] - np.cumsum(spans) + spans, spans) + np.arange(int(spans.sum()))
        pairs = np.unique(rows * len(names) + idx_task[starts])
        counts = np.bincount(pairs % len(names), minlength=len(names))
        for ti in np.flatnonzero(counts):
            if names[ti] == eval_name:
                continue  # a supervised task against its own training instances: shared templates expected
            o = Overlap(names[ti], eval_name, int(counts[ti]), len(texts))
            if o.fraction > threshold:
                flagged.append(o)
    flagged.sort(key=lambda o: (-o.fraction, o.train_task, o.eval_task))
    return flagged


def exclusions_path() -> pathlib.Path:
    """Where the exclusion list lives: $OPTIML_LEAKAGE_EXCLUSIONS, else tasks/leakage_exclusions.txt."""
    env = os.environ.get(EXCLUSIONS_ENV)
    return pathlib.Path(env) if env else _REPO_EXCLUSIONS


def read_exclusions(data_dir: str | None = None, path: str | os.PathLike | None = None) -> list[str]:
    """Train task names to exclude (one per line, '#' comments). Missing file = no exclusions.

    ``data_dir`` is accepted for symmetry with the other loaders; the list itself is data-independent.
    """
    p = pathlib.Path(path) if path is not None else exclusions_path()
    if not p.is_file():
        return []
    names = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def write_exclusions(names: Iterable[str], path: str | os.PathLike | None = None) -> pathlib.Path:
    """Writes the exclusion list atomically; returns its path."""
    p = pathlib.Path(path) if path is not None else exclusions_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    body = "# train tasks dropped by `python -m optiml_jax.tasks leakage --drop` (13-gram overlap audit)\n"
    tmp.write_text(body + "".join(f"{n}\n" for n in sorted(set(names))), encoding="utf-8")
    os.replace(tmp, p)
    return p


def audit_bench(bench, *, threshold: float = DEFAULT_THRESHOLD, n: int = NGRAM,
                max_eval_examples: int | None = None) -> tuple[list[Overlap], dict]:
    """Runs `audit` on a `pipeline.Bench`: its training tasks (training instances) against every evaluation
    task of both splits (their evaluated instances). Returns the flagged pairs and summary figures."""
    from optiml_jax.tasks.pipeline import EVAL_SPLITS  # local: pipeline imports this module
    from optiml_jax.tasks.schema import LEVELS

    train = {name: [example_text(e) for e in bench.train_examples(name)]
             for name in bench.training_task_names("optiml_train")}
    train = {k: v for k, v in train.items() if v}
    evaluation: dict[str, list[str]] = {}
    for split in EVAL_SPLITS:
        for level in LEVELS:
            for name in bench.eval_tasks.get((split, level), ()):
                texts = [example_text(e) for e in bench.eval_pool(name, split)]
                if max_eval_examples is not None:
                    texts = texts[:max_eval_examples]
                evaluation.setdefault(name, []).extend(texts)
    flagged = audit(train, evaluation, n=n, threshold=threshold)
    summary = {
        "train_tasks": len(train), "eval_tasks": len(evaluation),
        "pairs_checked": len(train) * len(evaluation), "pairs_flagged": len(flagged),
        "train_tasks_flagged": len({o.train_task for o in flagged}),
        "eval_tasks_flagged": len({o.eval_task for o in flagged}),
    }
    return flagged, summary
