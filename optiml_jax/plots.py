"""Figures for evaluation reports (matplotlib, Agg backend: files only, no display needed).

Both functions take the aggregated results produced by `optiml_jax.evaluation.aggregate` (plain dicts), so
they can redraw a figure from a results.json without a model.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless machines and CI: never try to open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LEVEL_TITLES = {
    "fully_heldout": "Fully held-out",
    "partially_heldout": "Partially supervised",
    "supervised": "Fully supervised",
}


def _shot_keys(agg: Mapping) -> list[str]:
    return [str(k) for k in agg["shots"]]


def plot_categories(agg: Mapping, path: str | os.PathLike, *, title: str = "") -> str:
    """Per-category bars (one bar per shot setting), one panel per generalization level; writes a PNG."""
    levels = [lv for lv in agg["levels"] if agg["categories"].get(lv)]
    if not levels:
        raise ValueError("plot_categories: the results hold no category scores")
    shots = _shot_keys(agg)
    widths = [max(len(agg["categories"][lv]), 1) for lv in levels]
    fig, axes = plt.subplots(
        1, len(levels), figsize=(2.0 + 1.1 * sum(widths), 4.2), squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    bar_w = 0.8 / len(shots)
    for ax, lv in zip(axes[0], levels):
        cats = sorted(agg["categories"][lv])
        x = np.arange(len(cats))
        for j, s in enumerate(shots):
            vals = [agg["categories"][lv][c]["scores"].get(s, np.nan) for c in cats]
            ax.bar(x + (j - (len(shots) - 1) / 2) * bar_w, vals, bar_w, label=f"{s}-shot")
        ax.set_xticks(x)
        ax.set_xticklabels(cats, rotation=35, ha="right", fontsize=8)
        ax.set_title(LEVEL_TITLES.get(lv, lv), fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, axes, "score (accuracy / Rouge-L / EM)", title, path)


def plot_comparison(
    aggs: Sequence[Mapping], labels: Sequence[str], path: str | os.PathLike, *, title: str = ""
) -> str:
    """Grouped bars of per-level averages for several models (one panel per shot setting); writes a PNG."""
    if len(aggs) != len(labels) or len(aggs) < 2:
        raise ValueError("plot_comparison: give at least two results with one label each")
    shots = [s for s in _shot_keys(aggs[0]) if all(s in _shot_keys(a) for a in aggs[1:])]
    if not shots:
        raise ValueError("plot_comparison: the results share no shot setting")
    levels = [lv for lv in aggs[0]["levels"] if all(lv in a["level_scores"] for a in aggs)] + ["average"]
    fig, axes = plt.subplots(1, len(shots), figsize=(1.8 + 3.2 * len(shots), 4.0), squeeze=False)
    bar_w = 0.8 / len(aggs)
    x = np.arange(len(levels))
    for ax, s in zip(axes[0], shots):
        for j, (agg, label) in enumerate(zip(aggs, labels)):
            vals = [
                (agg["overall"] if lv == "average" else agg["level_scores"][lv]).get(s, np.nan) for lv in levels
            ]
            ax.bar(x + (j - (len(aggs) - 1) / 2) * bar_w, vals, bar_w, label=label)
        ax.set_xticks(x)
        ax.set_xticklabels([LEVEL_TITLES.get(lv, "Average") for lv in levels], rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{s}-shot", fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, axes, "score", title, path)


def _save(fig, axes, ylabel: str, title: str, path: str | os.PathLike) -> str:
    """Labels, legend and title shared by every figure; writes the PNG and frees the figure."""
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
