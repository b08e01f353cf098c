"""Mixing rates (EPS, benchmark proportions, special shares) and the index-based sampler."""
import numpy as np
import pytest

from optiml_jax.tasks import mixtures as mx


def _fake_tasks():
    rng = np.random.default_rng(0)
    tasks = {}
    for bench, count in (("SuperNI", 40), ("PromptSource", 12), ("FLAN", 6), ("CrossFit", 5), ("T5", 3)):
        for i in range(count):
            tasks[f"{bench}_{i}"] = mx.TaskSize(bench, int(rng.choice([50, 900, 5000, 60000])))
    tasks["cot_a"] = mx.TaskSize("Reasoning", 7000)
    tasks["cot_b"] = mx.TaskSize("Reasoning", 1000)
    return tasks


def test_defaults_are_the_paper_recipe():
    cfg = mx.MixtureConfig()
    assert cfg.eps == 4096 and cfg.reasoning_share == 0.01 and cfg.pretraining_share == 0.05
    assert cfg.benchmark_proportions == {"CrossFit": 4, "ExMix": 2, "FLAN": 20, "SuperNI": 25,
                                         "PromptSource": 45, "T5": 2, "UnifiedSKG": 2}


def test_rates_renormalise_over_present_benchmarks_and_follow_eps():
    tasks = _fake_tasks()
    rates = mx.compute_rates(tasks, mx.MixtureConfig())
    assert rates.rates.sum() == pytest.approx(1.0)
    present = {"SuperNI": 25, "PromptSource": 45, "FLAN": 20, "CrossFit": 4, "T5": 2}  # no ExMix/U-SKG
    total = sum(present.values())
    for b, w in present.items():
        assert rates.benchmark_share[b] == pytest.approx(0.99 * w / total)
    assert rates.benchmark_share["Reasoning"] == pytest.approx(0.01)
    assert "Pretraining" not in rates.benchmark_share  # absent: its 5% is not reserved
    # Inside a benchmark, rate is proportional to min(n, EPS).
    ni = [t for t in tasks if tasks[t].benchmark == "SuperNI"]
    denom = sum(min(tasks[t].size, 4096) for t in ni)
    for t in ni:
        assert rates.rate(t) == pytest.approx(rates.benchmark_share["SuperNI"] * min(tasks[t].size, 4096) / denom)
    assert rates.rate("cot_a") / rates.rate("cot_b") == pytest.approx(4096 / 1000)


def test_sampling_50k_matches_configured_proportions():
    tasks = _fake_tasks()
    tasks["pt"] = mx.TaskSize("Pretraining", 100000)
    rates = mx.compute_rates(tasks, mx.MixtureConfig())
    sampler = mx.MixtureSampler(rates.rates, seed=5)
    idx = sampler.task_indices(0, 50_000)
    benches = np.array([rates.task_benchmark[rates.task_names[i]] for i in idx])
    for b, share in rates.benchmark_share.items():
        assert abs(np.mean(benches == b) - share) < 0.01, b
    assert rates.benchmark_share["Pretraining"] == pytest.approx(0.05)
    # Per-task: the most frequent task's empirical rate is within sampling noise of its configured rate.
    top = int(np.argmax(rates.rates))
    p = rates.rates[top]
    assert abs(np.mean(idx == top) - p) < 4 * np.sqrt(p * (1 - p) / 50_000)


def test_sampler_is_a_pure_function_of_seed_and_index():
    rates = [0.2, 0.3, 0.5]
    a = mx.MixtureSampler(rates, seed=1, block=64)
    b = mx.MixtureSampler(rates, seed=1, block=64)
    forward = [a.draw(g) for g in range(300)]
    backward = [b.draw(g) for g in reversed(range(300))][::-1]
    assert forward == backward
    assert a.task_indices(10, 200).tolist() == [d[0] for d in forward[10:210]]
    c = mx.MixtureSampler(rates, seed=2, block=64)
    assert [c.draw(g) for g in range(50)] != forward[:50]
    with pytest.raises(ValueError):
        a.draw(-1)


def test_zero_rate_task_never_drawn():
    s = mx.MixtureSampler([0.5, 0.0, 0.5], seed=0)
    assert 1 not in set(s.task_indices(0, 20_000).tolist())


def test_metaicl_shot_distribution_matches_paper():
    assert mx.MixtureConfig(metaicl=True, metaicl_zipf_a=4).shot_distribution()[0] == pytest.approx(0.925, abs=1e-3)
    assert mx.MixtureConfig(metaicl=True, metaicl_zipf_a=2).shot_distribution()[0] == pytest.approx(0.671, abs=1e-3)
    cfg = mx.MixtureConfig(metaicl=True, metaicl_zipf_a=2)
    ks = np.array([mx.sample_num_shots(cfg, k) for k in range(4000)])
    assert ks.max() <= 5 and abs(np.mean(ks == 0) - 0.671) < 0.03
    assert mx.sample_num_shots(mx.MixtureConfig(), 123) == 0


def test_aliases_and_errors():
    cfg = mx.MixtureConfig()
    rates = mx.compute_rates({"a": mx.TaskSize("Embedded-NI", 10), "b": mx.TaskSize("Embedded-PS", 10)}, cfg)
    assert rates.benchmark_share["Embedded-NI"] == pytest.approx(25 / 70)
    with pytest.raises(ValueError, match="Mystery"):
        mx.compute_rates({"a": mx.TaskSize("Mystery", 10)}, cfg)
    with pytest.raises(ValueError, match="'a'.*no examples"):
        mx.compute_rates({"a": mx.TaskSize("SuperNI", 0)}, cfg)
    with pytest.raises(ValueError, match="eps"):
        mx.MixtureConfig(eps=0)
    with pytest.raises(ValueError, match=r"benchmark_proportions\['FLAN'\]"):
        mx.MixtureConfig(benchmark_proportions={"FLAN": -1})
    # Only reasoning data: it takes the whole mixture.
    only = mx.compute_rates({"c": mx.TaskSize("Reasoning", 5)}, cfg)
    assert only.rates.tolist() == [1.0]


def test_report_and_gin_factory():
    import gin

    rates = mx.compute_rates(_fake_tasks(), mx.MixtureConfig(eps=128))
    text = mx.rates_report(rates, max_tasks=5)
    assert "EPS = 128" in text and "SuperNI" in text and "Reasoning" in text
    bench_rows, task_rows = mx.rates_table(rates)
    assert sum(r["share"] for r in bench_rows) == pytest.approx(1.0)
    assert len(task_rows) == len(rates.task_names)
    with gin.unlock_config():
        gin.parse_config("optiml_jax.mixture_config.eps = 256\noptiml_jax.mixture_config.reasoning_share = 0.02")
    try:
        cfg = gin.get_configurable("optiml_jax.mixture_config")()
        assert cfg.eps == 256 and cfg.reasoning_share == 0.02 and cfg.benchmark_proportions["FLAN"] == 20
    finally:
        gin.clear_config()
