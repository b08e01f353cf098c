"""Figures (optiml_jax/evaluation/plots.py): missing cells never crash and never look like a 0 score."""
import matplotlib.pyplot as plt

from optiml_jax.evaluation import plots, reports


def _unit(task, level, category, shots, score, n=3):
    return {"task": task, "level": level, "category": category, "benchmark": "SuperNI", "metric": "rouge_l",
            "num_shots": shots, "score": score, "num_examples": 0 if score is None else n,
            "example_scores": [] if score is None else [score] * n}


def test_missing_cells_are_drawn_as_na_stubs_and_zero_is_marked(tmp_path):
    rows = [_unit("t1", "fully_heldout", "A", k, 40.0) for k in (0, 5)]
    rows += [_unit("t2", "fully_heldout", "Empty", k, None) for k in (0, 5)]  # the issue-14 crash
    rows += [_unit("t3", "supervised", "Zero", k, 0.0) for k in (0, 5)]
    agg = reports.aggregate(rows, shots=(0, 5))
    assert plots.plot_categories(agg, tmp_path / "c.png").endswith("c.png")
    other = reports.aggregate([dict(r, score=None) if r["task"] == "t3" else r for r in rows], shots=(0, 5))
    assert plots.plot_comparison([agg, other], ["a", "b"], tmp_path / "m.png").endswith("m.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "m.png").stat().st_size > 0

    fig, ax = plt.subplots()
    plots._bars(ax, 0, 0.4, agg["categories"]["fully_heldout"]["Empty"], "0", "C0", "0-shot")
    plots._bars(ax, 1, 0.4, agg["categories"]["supervised"]["Zero"], "0", "C0", "0-shot")
    plots._bars(ax, 2, 0.4, agg["categories"]["fully_heldout"]["A"], "0", "C0", "0-shot")
    heights = [p.get_height() for p in ax.patches]
    hatches = [p.get_hatch() for p in ax.patches]
    assert heights == [plots._MISSING_HEIGHT, 0.0, 40.0] and hatches == ["///", None, None]
    assert [t.get_text() for t in ax.texts] == [reports.NA, "0"]
    plt.close(fig)
