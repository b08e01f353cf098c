"""The hierarchical bootstrap (optiml_jax/bootstrap.py) against cases with a known answer."""
import numpy as np
import pytest

from optiml_jax.bootstrap import Bootstrap, stratified_replicates


def test_constant_scores_give_a_zero_width_interval():
    bs = Bootstrap(num_samples=500)
    reps = [bs.task_replicates([42.0] * n, f"t{n}") for n in (1, 3, 50)]
    assert bs.interval(bs.cell_replicates(reps, "cell")) == (42.0, 42.0)


def test_one_large_task_matches_the_normal_approximation():
    # 10,000 Bernoulli(0.3) examples: the mean's 95% interval is p +- 1.96 sqrt(p(1-p)/n).
    x = np.random.default_rng(1).binomial(1, 0.3, size=10_000) * 100.0
    bs = Bootstrap(num_samples=2000)
    lo, hi = bs.interval(bs.task_replicates(x, "big"))
    half = 1.96 * x.std() / np.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - half, abs=0.12 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.12 * half)


def test_many_single_example_tasks_resample_the_tasks():
    # One example per task: the within-task draw is constant, so the cell interval is the task-level normal one.
    means = np.random.default_rng(2).normal(50.0, 10.0, size=2_000)
    bs = Bootstrap(num_samples=2000)
    reps = bs.cell_replicates([bs.task_replicates([m], f"t{i}") for i, m in enumerate(means)], "cell")
    lo, hi = bs.interval(reps)
    half = 1.96 * means.std() / np.sqrt(means.size)
    assert (lo, hi) == pytest.approx((means.mean() - half, means.mean() + half), abs=0.12 * half)


def test_draws_are_seeded_by_name_and_pair_up():
    bs = Bootstrap(num_samples=300, seed=3)
    a = bs.task_replicates(np.arange(20.0), "task/0")
    assert np.array_equal(a, Bootstrap(num_samples=300, seed=3).task_replicates(np.arange(20.0), "task/0"))
    assert not np.array_equal(a, Bootstrap(num_samples=300, seed=4).task_replicates(np.arange(20.0), "task/0"))
    # Same name and size: the same indices, so a shifted copy differs by exactly the shift in every replicate.
    assert np.allclose(bs.task_replicates(np.arange(20.0) + 7.0, "task/0") - a, 7.0)
    # Strata average replicate by replicate.
    assert np.allclose(stratified_replicates([a, a + 2.0]), a + 1.0)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="num_samples"):
        Bootstrap(num_samples=1)
    with pytest.raises(ValueError, match="confidence"):
        Bootstrap(confidence=1.0)
    with pytest.raises(ValueError, match="non-empty"):
        Bootstrap().task_replicates([], "t")
