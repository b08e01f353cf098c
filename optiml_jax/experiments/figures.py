"""Paper-style figures of an experiment's results.json (matplotlib, Agg backend: files only).

One panel for the average over levels and one per generalization level, all sharing the y axis (0-100). On
each: the mean over runs per point with its 95% interval (error bars: examples, tasks and runs resampled), every
run's own score as a small grey dot (the spread over seeds and task subsets), the number of runs per point, and
the trivial baseline, when there is one, as a dashed line with its interval as a band. A numeric x axis (number
of tasks, EPS) is drawn as a line, log-scaled when the experiment says so; named variants as separate markers.
A point without a finished run is marked "n/a" at the bottom, never drawn as 0.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless machines and CI: never try to open a window
import matplotlib.pyplot as plt
import numpy as np

from optiml_jax.evaluation.reports import LEVEL_TITLES, NA


def _series(results: Mapping[str, Any], level: str | None) -> list[dict]:
    """The curve's points for the average (``level`` None) or one level: x, score, interval, run scores."""
    out = []
    for p in results["points"]:
        cell = p if level is None else p["levels"].get(level, {})
        out.append({"x": p["x"], "label": p.get("label", str(p["x"])), "n_runs": p["n_runs"],
                    "score": cell.get("score"), "lo": cell.get("ci_low"), "hi": cell.get("ci_high"),
                    "runs": p.get("run_scores", []) if level is None else cell.get("run_scores", [])})
    return out


def plot_experiment(results: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Draws ``results`` (an `aggregate.results_table` dict) to a PNG at ``path``; returns the path."""
    levels = list(results.get("levels", {}))
    panels: list[str | None] = [None] + levels
    numeric = bool(results.get("numeric_x"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.9), sharey=True, squeeze=False)
    base = results.get("baseline")
    for ax, level in zip(axes[0], panels):
        pts = _series(results, level)
        xs = [p["x"] for p in pts] if numeric else list(range(len(pts)))
        have = [i for i, p in enumerate(pts) if p["score"] is not None]
        for i, p in enumerate(pts):   # every run: the spread over seeds / subsets
            if p["runs"]:
                jitter = np.linspace(-0.06, 0.06, len(p["runs"])) if len(p["runs"]) > 1 else np.zeros(1)
                rx = np.asarray(xs[i], float) * (1 + jitter) if numeric and results.get("log_x") else \
                    np.asarray(xs[i], float) + jitter * (max(xs) - min(xs) if numeric and len(xs) > 1 else 1.0)
                ax.scatter(rx, p["runs"], s=10, color="#888888", alpha=0.8, zorder=2,
                           label="single runs" if i == have[0] else None)
        if have:
            hx = [xs[i] for i in have]
            hy = [pts[i]["score"] for i in have]
            err = np.array([[max(pts[i]["score"] - pts[i]["lo"], 0) if pts[i]["lo"] is not None else 0 for i in have],
                            [max(pts[i]["hi"] - pts[i]["score"], 0) if pts[i]["hi"] is not None else 0 for i in have]])
            ax.errorbar(hx, hy, yerr=err, fmt="o-" if numeric else "o", color="C0", capsize=3, lw=1.6, zorder=3,
                        label="mean over runs, 95% CI")
            for i in have:
                ax.annotate(f"n={pts[i]['n_runs']}", (xs[i], pts[i]["score"]), textcoords="offset points",
                            xytext=(4, 6), fontsize=7, color="#333333")
        for i, p in enumerate(pts):
            if p["score"] is None:
                ax.text(xs[i], 1.0, NA, ha="center", va="bottom", fontsize=8, color="#aa0000")
        if base is not None:
            cell = base if level is None else base["levels"].get(level, {})
            if cell.get("score") is not None:
                ax.axhline(cell["score"], ls="--", color="C3", lw=1.2, label="trivial baseline (label space)")
                if cell.get("ci_low") is not None:
                    ax.axhspan(cell["ci_low"], cell["ci_high"], color="C3", alpha=0.12)
        if numeric:
            if results.get("log_x"):
                ax.set_xscale("log")
            ax.set_xticks(xs)
            ax.set_xticklabels([p["label"] for p in pts])
            ax.minorticks_off()
        else:
            ax.set_xticks(xs)
            ax.set_xticklabels([p["label"] for p in pts], rotation=25, ha="right", fontsize=8)
            ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_title("Average of levels" if level is None else LEVEL_TITLES.get(level, level), fontsize=10)
        ax.set_xlabel(results.get("x_label", "x"), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("score (0-100)")
    axes[0][0].set_ylim(bottom=0)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        axes[0][0].legend(handles, labels, fontsize=7, loc="best")
    spread = [p["template_std"] for p in results["points"] if p.get("template_std") is not None]
    sub = ("template spread (mean sd over templates): " + f"{np.mean(spread):.1f}" if spread
           else "template spread: n/a (no multi-template task evaluated)")
    run_sd = [p["run_std"] for p in results["points"] if p.get("run_std") is not None]
    sub += "; spread over runs (mean sd): " + (f"{np.mean(run_sd):.1f}" if run_sd else NA)
    fig.suptitle(f"{results.get('title', '')}{' (SMOKE)' if results.get('smoke') else ''}\n{sub}", fontsize=10)
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
