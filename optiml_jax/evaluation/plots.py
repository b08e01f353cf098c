"""Figures for evaluation reports (matplotlib, Agg backend: files only, no display needed).

Both functions take the aggregated results produced by `optiml_jax.evaluation.reports.aggregate` (plain dicts), so they
can redraw a figure from a results.json without a model. What a reader must be able to tell apart:

* shot settings (or models): one colour each, named in the legend;
* levels: one panel each, titled; a level's own average is the last, darker-edged group of its panel;
* intervals: black error bars (the 95% bootstrap interval of `optiml_jax.evaluation.reports`);
* missing cells: a grey hatched stub labelled "n/a" -- never a bar of height 0; a real score of 0 is marked
  with a "0" above the axis instead.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless machines and CI: never try to open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from optiml_jax.evaluation.reports import LEVEL_TITLES, NA  # noqa: E402

_MISSING_HEIGHT = 4.0  # points on the 0-100 axis: a stub visible at any figure size, far from any error bar


def _shot_keys(agg: Mapping) -> list[str]:
    return [str(k) for k in agg["shots"]]


def _bars(ax, x: float, width: float, cell: Mapping | None, shot: str, color, label: str | None) -> None:
    """One bar of ``cell`` for ``shot``: the score with its interval, or the n/a stub, or a marked 0."""
    score = None if cell is None else cell["scores"].get(shot)
    if score is None:
        ax.bar(x, _MISSING_HEIGHT, width, color="#eeeeee", edgecolor="#888888", hatch="///", linewidth=0.6)
        ax.text(x, _MISSING_HEIGHT + 1.0, NA, ha="center", va="bottom", fontsize=7, rotation=90, color="#555555")
        return
    ci = (cell.get("ci") or {}).get(shot)
    yerr = None if not ci else np.array([[max(score - ci[0], 0.0)], [max(ci[1] - score, 0.0)]])
    ax.bar(x, score, width, color=color, label=label, yerr=yerr, capsize=2,
           error_kw={"elinewidth": 0.8, "ecolor": "black"})
    if score == 0.0:
        # In the bar's colour: a 0 of one shot setting stays distinguishable from a 0 of another.
        ax.text(x, 1.0, "0", ha="center", va="bottom", fontsize=7, fontweight="bold", color=color)


def plot_categories(agg: Mapping, path: str | os.PathLike, *, title: str = "") -> str:
    """Per-category bars (one per shot setting, with 95% intervals), one panel per generalization level, the
    level's average last in its panel; missing cells drawn as "n/a" stubs. Writes a PNG; returns its path."""
    levels = [lv for lv in agg["levels"] if agg["categories"].get(lv)]
    if not levels:
        raise ValueError("plot_categories: the results hold no category (no evaluation task was planned)")
    shots = _shot_keys(agg)
    colors = plt.get_cmap("tab10").colors
    widths = [len(agg["categories"][lv]) + 1 for lv in levels]
    fig, axes = plt.subplots(
        1, len(levels), figsize=(2.0 + 0.9 * sum(widths), 4.8), squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    bar_w = 0.8 / len(shots)
    for ax, lv in zip(axes[0], levels):
        cats = sorted(agg["categories"][lv])
        cells = [agg["categories"][lv][c] for c in cats] + [agg.get("level_stats", {}).get(lv)]
        names = cats + ["LEVEL AVERAGE"]
        for i, cell in enumerate(cells):
            for j, s in enumerate(shots):
                # Every bar carries its label; _save keeps one legend entry per label.
                _bars(ax, i + (j - (len(shots) - 1) / 2) * bar_w, bar_w, cell, s, colors[j % 10], f"{s}-shot")
        ax.axvspan(len(cats) - 0.5, len(cats) + 0.5, color="#dddddd", alpha=0.5, zorder=0)
        ax.set_xticks(np.arange(len(names)))
        ticks = []
        for name, cell in zip(names, cells):
            found = "" if cell is None else \
                f"\n{max(cell['tasks_with_data'].values())}/{cell['tasks']} tasks, {max(cell['examples'].values())} ex."
            ticks.append(name + found)
        ax.set_xticklabels(ticks, rotation=40, ha="right", fontsize=7)
        ax.set_title(LEVEL_TITLES.get(lv, lv), fontsize=10)
        ax.set_ylim(0, 100)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, axes, "score (accuracy / Rouge-L / EM), 95% CI", title, path)


def plot_comparison(
    aggs: Sequence[Mapping], labels: Sequence[str], path: str | os.PathLike, *, title: str = ""
) -> str:
    """Grouped bars of per-level averages for several models with 95% intervals (one panel per shot setting),
    missing levels drawn as "n/a" stubs; writes a PNG and returns its path."""
    if len(aggs) != len(labels) or len(aggs) < 2:
        raise ValueError("plot_comparison: give at least two results with one label each")
    shots = [s for s in _shot_keys(aggs[0]) if all(s in _shot_keys(a) for a in aggs[1:])]
    if not shots:
        raise ValueError("plot_comparison: the results share no shot setting")
    levels = [lv for lv in aggs[0]["levels"] if any(lv in a["level_scores"] for a in aggs)] + ["average"]
    colors = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, len(shots), figsize=(1.8 + 3.4 * len(shots), 4.2), squeeze=False)
    bar_w = 0.8 / len(aggs)
    for ax, s in zip(axes[0], shots):
        for j, (agg, label) in enumerate(zip(aggs, labels)):
            for i, lv in enumerate(levels):
                if lv == "average":
                    cell = {"scores": agg["overall"], "ci": agg.get("overall_ci")}
                else:
                    cell = agg.get("level_stats", {}).get(lv) or (
                        {"scores": agg["level_scores"][lv]} if lv in agg["level_scores"] else None)
                _bars(ax, i + (j - (len(aggs) - 1) / 2) * bar_w, bar_w, cell, s, colors[j % 10], label)
        ax.axvspan(len(levels) - 1.5, len(levels) - 0.5, color="#dddddd", alpha=0.5, zorder=0)
        ax.set_xticks(np.arange(len(levels)))
        ax.set_xticklabels([LEVEL_TITLES.get(lv, "Average") for lv in levels], rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{s}-shot", fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, axes, "score, 95% CI", title, path)


def _save(fig, axes, ylabel: str, title: str, path: str | os.PathLike) -> str:
    """Labels, legend (with the n/a key) and title shared by every figure; writes the PNG, frees the figure."""
    from matplotlib.patches import Patch

    axes[0][0].set_ylabel(ylabel)
    handles, names = [], []
    for ax in axes[0]:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    handles.append(Patch(facecolor="#eeeeee", edgecolor="#888888", hatch="///"))
    names.append(f"{NA}: no data on disk")
    # Outside the panels, so that it never hides a bar or an interval.
    fig.legend(handles, names, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
