"""Hierarchical bootstrap confidence intervals for evaluation averages (numpy only; a leaf module).

An evaluation average is a mean of means: a task's score is the mean over its examples, a category's the mean
over its tasks, a level's the mean over its categories. Both sources of noise are resampled, as the paper's
numbers would vary if another sample of examples *and* of tasks had been drawn:

1. within every task, its examples are resampled with replacement (`task_replicates`);
2. within a cell (a category, a benchmark), its tasks are resampled with replacement (`cell_replicates`);
3. a level (the mean over its categories) or the overall average (the mean over levels) keeps its strata fixed
   and averages their replicates (`stratified_replicates`), exactly as the point estimate averages them.

Every random draw is seeded by (seed, a name: the task, the cell), never by the order of calls, so two runs
over the same units draw the same indices: the replicates of two models are paired, and the percentiles of
their differences give the interval of a difference (`interval(reps_a - reps_b)`).
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    """Settings of the bootstrap.

    Attributes:
      num_samples: bootstrap replicates (1,000 gives percentiles stable to about a tenth of the width).
      confidence: coverage of the percentile interval (0.95: the 2.5th and 97.5th percentiles).
      seed: base seed; the same seed over the same units gives the same (paired) replicates.
    """

    num_samples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_samples < 2:
            raise ValueError(f"Bootstrap.num_samples must be >= 2, got {self.num_samples}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"Bootstrap.confidence must lie in (0, 1), got {self.confidence}")

    def rng(self, name: str) -> np.random.Generator:
        """The generator of one named draw: depends only on (seed, name), so draws pair up across runs."""
        return np.random.default_rng([self.seed, zlib.crc32(name.encode("utf-8"))])

    def task_replicates(self, scores: Sequence[float], name: str, groups: Sequence[str] | None = None) -> np.ndarray:
        """[num_samples] means of the task's examples resampled with replacement.

        ``groups`` (one label per example, e.g. its template): the task's score is the mean of the group means,
        so each group is resampled within itself and the replicate is the mean of the resampled group means.
        """
        x = np.asarray(scores, dtype=np.float64)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"task_replicates({name!r}): need a non-empty 1-D array of example scores")
        if groups is None:
            idx = self.rng("task/" + name).integers(0, x.size, size=(self.num_samples, x.size))
            return x[idx].mean(axis=1)
        labels = np.asarray(groups)
        if labels.shape != x.shape:
            raise ValueError(f"task_replicates({name!r}): {labels.size} group labels for {x.size} scores")
        return stratified_replicates([self.task_replicates(x[labels == g], f"{name}/{g}") for g in np.unique(labels)])

    def cell_replicates(self, task_reps: Sequence[np.ndarray], name: str) -> np.ndarray:
        """[num_samples] means over the cell's tasks resampled with replacement (one task replicate column each)."""
        reps = np.stack([np.asarray(r, dtype=np.float64) for r in task_reps])  # [tasks, samples]
        n_tasks = reps.shape[0]
        pick = self.rng("cell/" + name).integers(0, n_tasks, size=(self.num_samples, n_tasks))
        # Replicate b averages the b-th example-level replicate of the tasks drawn for it.
        return reps[pick, np.arange(self.num_samples)[:, None]].mean(axis=1)

    def interval(self, replicates: np.ndarray) -> tuple[float, float]:
        """The percentile interval of a set of replicates."""
        tail = (1.0 - self.confidence) / 2.0 * 100.0
        lo, hi = np.percentile(np.asarray(replicates, dtype=np.float64), [tail, 100.0 - tail])
        return float(lo), float(hi)


def stratified_replicates(strata: Sequence[np.ndarray]) -> np.ndarray:
    """The replicates of a mean over fixed strata (a level over its categories): the mean of theirs."""
    return np.mean(np.stack([np.asarray(s, dtype=np.float64) for s in strata]), axis=0)
