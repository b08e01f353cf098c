"""Train/eval contamination audit (paper section 2.3, "Task de-duplication").

For every (train task, eval task) pair we report the fraction of the eval task's examples that share at least
one 13-gram (lower-cased whitespace tokens) with any example of the train task. Texts are an example's input
and references (the instance content; task definitions are left out because SuperNI definitions share
boilerplate sentences that would flag unrelated tasks).

Efficiency: every 13-gram is hashed to 64 bits with a polynomial hash over random per-token values, for a whole
task at once (numpy, vectorised). The train side becomes one index from gram hash to train tasks -- a sorted
array of (hash, task) pairs, the memory-light equivalent of a ``dict[gram] -> tasks`` -- and each eval task is
one ``searchsorted`` over all its grams.

Decisions (paper section 2.3: "we manually examine every pair where more than 1% of the eval set overlaps ...
task pairs that share a broad contextual resource such as Wikipedia but otherwise contain unrelated output
labels are retained"). `decide` turns the measured overlaps into one row per resolved pair:

* ``drop`` / ``overlap``: more than ``threshold`` of the eval task's examples share a 13-gram with the train
  task. The overlap is the evidence that both were built from one data source, whatever their catalogue
  names say (AdversarialQA is ``adverserial_qa`` in SuperNI's metadata), so the train task is dropped.
* ``drop`` / ``same source``: the evidence makes two source names one source (``xquad ~ squad_v2``); every other
  training task built from that source is dropped too when the eval task is held out (a held-out task must
  not share a data source with any training task). Pairs with a supervised eval task (held-out instances of a
  training task) do not propagate: that level deliberately trains on sibling tasks of the same source.
* ``keep`` / ``broad resource``: both tasks draw their text from the same broad resource (`BROAD_RESOURCES`,
  a reviewed table, e.g. Wikipedia passages) and belong to different categories (unrelated labels).

The decisions are a committed TSV (`DECISIONS_PATH`, facts only: task names, overlap fractions, decision,
rule) written by ``python -m optiml_jax.tasks leakage``; `splits.resolve` drops the ``drop`` rows' train tasks
from every training mixture unless the gin switch ``leakage_decisions.apply = False`` turns it off. The
audit runs on the bench without its decisions, so rerunning it on the same data rewrites the same file.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import os
import pathlib
from typing import Iterable, Mapping, Sequence

import gin
import numpy as np

from optiml_jax.tasks.schema import Example

NGRAM = 13
DEFAULT_THRESHOLD = 0.01
DECISIONS_ENV = "OPTIML_LEAKAGE_DECISIONS"
DECISIONS_PATH = pathlib.Path(__file__).resolve().parents[2] / "tasks" / "leakage_decisions.tsv"
DECISION_COLUMNS: tuple[str, ...] = ("train_task", "eval_task", "overlap", "decision", "rule")
DROP, KEEP = "drop", "keep"
RULE_OVERLAP, RULE_SAME_SOURCE, RULE_BROAD = "overlap", "same source", "broad resource"

# Reviewed: source datasets whose text is passages of a broad resource, shared by tasks with unrelated labels.
# Each entry was checked on the overlapping 13-grams of the shared data (e.g. WikiHop supports and QED /
# AQuaMuSe passages are the same Wikipedia articles; GrailQA's answer descriptions are Freebase's Wikipedia
# abstracts). Sources missing here never count as broad: an overlap with them is a shared source.
BROAD_RESOURCES: dict[str, str] = {
    "wiki_hop": "Wikipedia", "qed": "Wikipedia", "aquamuse": "Wikipedia", "grailqa": "Wikipedia",
}
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


@dataclasses.dataclass(frozen=True)
class Decision:
    """One resolved train/eval pair: a row of the decisions TSV."""

    train_task: str
    eval_task: str
    overlap: float      # fraction of the eval task's examples sharing a 13-gram with the train task
    decision: str       # DROP (the train task leaves every training mixture) or KEEP
    rule: str           # why; starts with RULE_OVERLAP, RULE_SAME_SOURCE or RULE_BROAD

    def as_row(self) -> list[str]:
        """The TSV fields (overlap with 4 decimals, so reruns compare equal)."""
        return [self.train_task, self.eval_task, f"{self.overlap:.4f}", self.decision, self.rule]


@dataclasses.dataclass(frozen=True)
class TaskFacts:
    """What `decide` needs to know about a task: its catalogue source, category and whether it is a training
    task evaluated on its held-out instances (supervised level)."""

    source: str
    category: str
    supervised: bool = False


def _broad_resource(a: str, b: str) -> str | None:
    ra, rb = BROAD_RESOURCES.get(a), BROAD_RESOURCES.get(b)
    return ra if ra is not None and ra == rb else None


def decide(overlaps: Sequence[Overlap], *, train: Mapping[str, TaskFacts], evaluation: Mapping[str, TaskFacts],
           threshold: float = DEFAULT_THRESHOLD) -> list[Decision]:
    """Decisions for every pair above ``threshold`` and every training task sharing a source by evidence.

    Args:
      overlaps: measured pairs (`audit`; pass ``threshold=0`` there so that propagated rows carry their own
        measured overlap, 0 when absent).
      train: every training task (not only the flagged ones) -> facts.
      evaluation: every evaluation task -> facts.
    Returns rows sorted by (train task, eval task); one train task dropped by several pairs has several rows.
    """
    measured = {(o.train_task, o.eval_task): o.fraction for o in overlaps}
    rows: dict[tuple[str, str], Decision] = {}
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for o in sorted(overlaps, key=lambda o: (o.train_task, o.eval_task)):
        if o.fraction <= threshold or o.train_task not in train or o.eval_task not in evaluation:
            continue
        t, e = train[o.train_task], evaluation[o.eval_task]
        broad = _broad_resource(t.source, e.source)
        if broad is not None and t.category != e.category:
            rows[(o.train_task, o.eval_task)] = Decision(
                o.train_task, o.eval_task, o.fraction, KEEP,
                f"{RULE_BROAD}: {broad} ({t.source} / {e.source}), unrelated labels ({t.category} / {e.category})")
            continue
        rows[(o.train_task, o.eval_task)] = Decision(
            o.train_task, o.eval_task, o.fraction, DROP, f"{RULE_OVERLAP} above {threshold:g}")
        if not e.supervised and t.source and e.source and t.source != e.source:
            parent[find(t.source)] = find(e.source)   # evidence: one data source under two names
    # Propagate: a held-out eval task's source class must not reach any training task.
    classes: dict[str, set[str]] = collections.defaultdict(set)
    for s in list(parent):
        classes[find(s)].add(s)
    by_source: dict[str, list[str]] = collections.defaultdict(list)
    for name in sorted(train):
        by_source[train[name].source].append(name)
    for eval_name in sorted(evaluation):
        e = evaluation[eval_name]
        if e.supervised or e.source not in parent:
            continue
        for src in sorted(classes[find(e.source)] - {e.source}):
            for name in by_source.get(src, ()):
                if (name, eval_name) in rows or name == eval_name:
                    continue
                rows[(name, eval_name)] = Decision(
                    name, eval_name, measured.get((name, eval_name), 0.0), DROP,
                    f"{RULE_SAME_SOURCE}: {src} ~ {e.source} by 13-gram evidence")
    return [rows[k] for k in sorted(rows)]


def dropped_train_tasks(decisions: Iterable[Decision]) -> dict[str, str]:
    """Train task -> reason, for every task the decisions drop; the reason quotes its strongest evidence (the
    DROP row with the highest overlap; the first of equals)."""
    best: dict[str, Decision] = {}
    for d in decisions:
        if d.decision == DROP and (d.train_task not in best or d.overlap > best[d.train_task].overlap):
            best[d.train_task] = d
    return {t: f"leakage audit: {d.rule} with eval task {d.eval_task!r} ({100 * d.overlap:.1f}% of its examples)"
            for t, d in sorted(best.items())}


def decisions_path() -> pathlib.Path:
    """Where the decisions live: $OPTIML_LEAKAGE_DECISIONS, else tasks/leakage_decisions.tsv."""
    env = os.environ.get(DECISIONS_ENV)
    return pathlib.Path(env) if env else DECISIONS_PATH


@gin.configurable("leakage_decisions")
def active_decisions_path(apply: bool = True, path: str | None = None) -> pathlib.Path | None:
    """The decisions file every training mixture applies, or None when ``apply`` is False (ablations).

    Gin: ``leakage_decisions.apply = False`` trains without them; ``leakage_decisions.path`` points at another
    file (default `decisions_path`).
    """
    if not apply:
        return None
    return pathlib.Path(path) if path else decisions_path()


def write_decisions(decisions: Iterable[Decision], path: str | os.PathLike | None = None) -> pathlib.Path:
    """Writes the decisions TSV atomically (header + rows in the given order); returns its path."""
    p = pathlib.Path(path) if path is not None else decisions_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(DECISION_COLUMNS)
        for d in decisions:
            w.writerow(d.as_row())
    os.replace(tmp, p)
    return p


class DecisionsError(ValueError):
    """The decisions file is malformed; the message names the file, line and field."""


def read_decisions(path: str | os.PathLike | None = None) -> list[Decision]:
    """Rows of a decisions TSV. A missing file is an error naming it (an empty audit still writes a header)."""
    p = pathlib.Path(path) if path is not None else decisions_path()
    if not p.is_file():
        raise DecisionsError(f"{p}: leakage decisions file not found; run `python -m optiml_jax.tasks leakage` "
                             f"or set leakage_decisions.apply = False")
    with open(p, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or tuple(rows[0]) != DECISION_COLUMNS:
        raise DecisionsError(f"{p}:1: header must be the columns {', '.join(DECISION_COLUMNS)} (tab-separated)")
    out = []
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(DECISION_COLUMNS):
            raise DecisionsError(f"{p}:{lineno}: expected {len(DECISION_COLUMNS)} fields, got {len(row)}")
        train_task, eval_task, overlap, decision, rule = row
        try:
            frac = float(overlap)
        except ValueError:
            raise DecisionsError(f"{p}:{lineno}: field 'overlap' is not a number: {overlap!r}") from None
        if decision not in (DROP, KEEP):
            raise DecisionsError(f"{p}:{lineno}: field 'decision' must be {DROP!r} or {KEEP!r}, got {decision!r}")
        out.append(Decision(train_task, eval_task, frac, decision, rule))
    return out


@functools.lru_cache(maxsize=8)
def _dropped_cached(path: str, mtime_ns: int) -> tuple[tuple[str, str], ...]:
    del mtime_ns   # cache key: an edited file is read again
    return tuple(dropped_train_tasks(read_decisions(path)).items())


def active_drops() -> dict[str, str]:
    """Train task -> reason for the decisions in force (`active_decisions_path`; {} when switched off)."""
    p = active_decisions_path()
    if p is None:
        return {}
    mtime = p.stat().st_mtime_ns if p.is_file() else 0
    return dict(_dropped_cached(str(p), mtime))


def audit_bench(bench, *, threshold: float = DEFAULT_THRESHOLD, n: int = NGRAM,
                max_eval_examples: int | None = None) -> tuple[list[Decision], list[Overlap], dict]:
    """Audits a `pipeline.Bench` built without leakage decisions: its training tasks (training instances)
    against every evaluation task of both splits (their evaluated instances).

    Returns ``(decisions, flagged pairs above threshold, summary)``.
    """
    # The raw training instances (`drop_contained=False`): the paper's measure is on whole tasks, before the
    # instance-level filter removes the few instances that contain an evaluated one.
    train_texts = {name: [example_text(e) for e in bench.train_examples(name, drop_contained=False)]
                   for name in bench.train_tasks}
    train_texts = {k: v for k, v in train_texts.items() if v}
    eval_texts: dict[str, list[str]] = {}
    for (split, _level), names in sorted(bench.eval_tasks.items()):
        for name in names:
            texts = [example_text(e) for e in bench.eval_pool(name, split)]
            if max_eval_examples is not None:
                texts = texts[:max_eval_examples]
            eval_texts.setdefault(name, []).extend(texts)
    measured = audit(train_texts, eval_texts, n=n, threshold=0.0)
    flagged = [o for o in measured if o.fraction > threshold]
    train_set = set(bench.train_tasks)

    def facts(name: str) -> TaskFacts:
        info = bench.catalogue[name]
        return TaskFacts(info.source_dataset, info.category, supervised=name in train_set)

    decisions = decide(measured, train={n: facts(n) for n in bench.train_tasks},
                       evaluation={n: facts(n) for n in eval_texts}, threshold=threshold)
    summary = {
        "train_tasks": len(train_texts), "eval_tasks": len(eval_texts),
        "pairs_checked": len(train_texts) * len(eval_texts), "pairs_flagged": len(flagged),
        "train_tasks_flagged": len({o.train_task for o in flagged}),
        "eval_tasks_flagged": len({o.eval_task for o in flagged}),
        "train_tasks_dropped": len(dropped_train_tasks(decisions)),
        "pairs_kept": sum(d.decision == KEEP for d in decisions),
    }
    return decisions, flagged, summary


def normalize_text(text: str) -> str:
    """Lower-cased, whitespace-collapsed text: the form in which instance containment is checked."""
    return " ".join(text.lower().split())


class ContainedFinder:
    """Finds train texts that contain a whole query (normalised, `normalize_text`), one batch of train texts
    at a time, so a bench of any size is searched without holding all of it. Queries shorter than
    ``min_tokens`` tokens are not searched (short strings such as "Yes" or a bare entity name occur in
    unrelated texts by chance).

    Each query is anchored by its first ``min_tokens``-gram; train texts holding an anchor are confirmed by a
    substring test, so the result is exact.
    """

    def __init__(self, queries: Sequence[str], *, min_tokens: int = 8) -> None:
        if min_tokens < 1:
            raise ValueError(f"min_tokens must be >= 1, got {min_tokens}")
        self._min_tokens = min_tokens
        self._hasher = _TokenHasher(seed=1)
        self._norm_q = [normalize_text(q) for q in queries]
        keep = [i for i, q in enumerate(self._norm_q) if len(q.split()) >= min_tokens]
        anchors = np.array([_grams_of_texts([" ".join(self._norm_q[i].split()[:min_tokens])], self._hasher,
                                            min_tokens)[0][0] for i in keep], np.uint64)
        order = np.argsort(anchors, kind="stable")
        self._anchors, self._owners = anchors[order], np.asarray(keep, np.int64)[order]

    def search(self, texts: Sequence[str]) -> dict[int, int]:
        """Index of each text containing a query -> index of one query it contains."""
        found: dict[int, int] = {}
        if not len(self._anchors):
            return found
        grams, owner = _grams_of_texts(list(texts), self._hasher, self._min_tokens)
        if not len(grams):
            return found
        lo = np.searchsorted(self._anchors, grams, side="left")
        hi = np.searchsorted(self._anchors, grams, side="right")
        for g in np.flatnonzero(hi > lo):
            ti = int(owner[g])
            if ti in found:
                continue
            norm_t = normalize_text(texts[ti])
            for qi in self._owners[lo[g]:hi[g]]:
                if self._norm_q[int(qi)] in norm_t:
                    found[ti] = int(qi)
                    break
        return found


def find_contained(train: Mapping[str, Sequence[str]], queries: Sequence[str], *,
                   min_tokens: int = 8) -> dict[str, dict[int, int]]:
    """Which train texts contain a whole query (`ContainedFinder`): train task -> {text index -> index of one
    contained query}; tasks without a hit are absent."""
    finder = ContainedFinder(queries, min_tokens=min_tokens)
    out: dict[str, dict[int, int]] = {}
    for name in sorted(train):
        found = finder.search(train[name])
        if found:
            out[name] = found
    return out
