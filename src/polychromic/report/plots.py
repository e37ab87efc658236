"""Figures of the report, each returned as PNG bytes (the report embeds them as base64, so the
HTML is one self-contained file).

Built on `matplotlib.figure.Figure` with the Agg canvas directly: no pyplot, no global figure
state, no display needed. No torch here (layering rule).
"""

from __future__ import annotations

import io
import math
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
DPI = 110


def model_colors(models: Sequence[str]) -> dict[str, str]:
    """One fixed color per model, in the report's model order (same color in every figure)."""
    return {m: COLORS[i % len(COLORS)] for i, m in enumerate(models)}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def _direction(higher_is_better: Optional[bool]) -> str:
    return {True: " (higher = better)", False: " (lower = better)"}.get(higher_is_better, "")


def _grid(n: int, cols: int = 4) -> tuple[int, int]:
    cols = min(cols, max(1, n))
    return math.ceil(n / cols), cols


def diversity_with_ci(
    summary: Mapping[str, Mapping[str, Mapping[str, float]]],
    metrics: Sequence[str],
    directions: Mapping[str, Optional[bool]],
    models: Sequence[str],
) -> bytes:
    """One panel per metric: each model's mean over prompts with its 95% bootstrap CI.
    summary[model][metric] = {"mean", "ci_low", "ci_high"} (a metric missing for a model is
    left out of that panel)."""
    rows, cols = _grid(len(metrics))
    fig = Figure(figsize=(3.1 * cols, 2.6 * rows))
    colors = model_colors(models)
    for p, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, p + 1)
        for x, m in enumerate(models):
            s = summary.get(m, {}).get(metric)
            if not s or s.get("mean") is None:
                continue
            err = [[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]]
            ax.errorbar([x], [s["mean"]], yerr=err, fmt="o", color=colors[m], capsize=4, markersize=6, lw=1.6)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=20, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(models) - 0.4)
        ax.set_title(metric + _direction(directions.get(metric)), fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Per-prompt diversity, mean over prompts with 95% bootstrap CI", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def pass_max_curves(curves: Mapping[str, Mapping[str, Sequence]], tau: float, models: Sequence[str]) -> bytes:
    """pass@k and max@k against k on the full integer grid. curves[model] = {"k": [...],
    "pass": [...], "pass_ci": [[lo, hi], ...], "max": [...], "max_ci": [...]}."""
    fig = Figure(figsize=(10, 3.8))
    colors = model_colors(models)
    for p, (key, title) in enumerate([("pass", f"pass@k (quality >= {tau:g})"), ("max", "max@k (expected best quality of k)")]):
        ax = fig.add_subplot(1, 2, p + 1)
        for m in models:
            c = curves.get(m)
            if not c or not c.get("k"):
                continue
            k = np.asarray(c["k"])
            y = np.asarray(c[key], dtype=float)
            ax.plot(k, y, "-o", color=colors[m], label=m, markersize=3.5, lw=1.6)
            ci = np.asarray(c.get(f"{key}_ci") or [], dtype=float)
            if ci.shape == (len(k), 2):
                ax.fill_between(k, ci[:, 0], ci[:, 1], color=colors[m], alpha=0.15, lw=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("k (samples)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _pareto(points: Mapping[str, tuple[float, float]], x_higher: bool, y_higher: bool) -> list[str]:
    """Models not dominated by another (at least as good on both axes, better on one)."""
    def better_eq(a: float, b: float, higher: bool) -> bool:
        return a >= b if higher else a <= b

    front = []
    for m, (x, y) in points.items():
        dominated = any(
            better_eq(ox, x, x_higher) and better_eq(oy, y, y_higher) and (ox, oy) != (x, y)
            for o, (ox, oy) in points.items() if o != m
        )
        if not dominated:
            front.append(m)
    return sorted(front, key=lambda m: points[m][0])


def quality_vs_diversity(
    per_prompt: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    means: Mapping[str, tuple[float, float]],
    x_label: str,
    y_label: str,
    x_higher: bool,
    y_higher: bool,
    models: Sequence[str],
) -> tuple[bytes, list[str]]:
    """Quality (y) against diversity (x): one faint point per prompt, one large marker per model
    mean, and the Pareto front over the model means. Returns (png, front model names)."""
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot(1, 1, 1)
    colors = model_colors(models)
    for m in models:
        if m in per_prompt:
            xs, ys = per_prompt[m]
            ax.scatter(xs, ys, s=10, alpha=0.25, color=colors[m], lw=0)
    for m in models:
        if m in means:
            ax.scatter(*means[m], s=140, color=colors[m], edgecolor="black", lw=1.2, label=f"{m} (mean)", zorder=3)
    front = _pareto({m: means[m] for m in models if m in means}, x_higher, y_higher)
    if len(front) > 1:
        ax.plot([means[m][0] for m in front], [means[m][1] for m in front], "--", color="black", lw=1.2,
                label="Pareto front (model means)", zorder=2)
    ax.set_xlabel(x_label + _direction(x_higher))
    ax.set_ylabel(y_label + _direction(y_higher))
    ax.set_title("Quality against diversity (faint: one point per prompt)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig), front


def length_distributions(lengths: Mapping[str, Sequence[int]], models: Sequence[str]) -> bytes:
    """Histogram of completion lengths (model tokens) per model, mean marked: lexical diversity
    falls as texts get longer, so length sits next to every diversity number."""
    fig = Figure(figsize=(10, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    colors = model_colors(models)
    present = [m for m in models if len(lengths.get(m, ())) > 0]
    top = max((max(lengths[m]) for m in present), default=1)
    bins = np.linspace(0, max(top, 1) + 1, min(40, int(top) + 2))
    for m in present:
        v = np.asarray(lengths[m], dtype=float)
        ax.hist(v, bins=bins, histtype="step", lw=1.8, color=colors[m], label=f"{m} (mean {v.mean():.1f})")
        ax.axvline(v.mean(), color=colors[m], ls=":", lw=1.2)
    ax.set_xlabel("completion length (model tokens)")
    ax.set_ylabel("samples")
    ax.set_title("Length of the samples", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def difference_histograms(
    diffs: Mapping[str, Sequence[float]],
    cis: Mapping[str, tuple[float, float]],
    metric: str,
    baseline: str,
    higher_is_better: Optional[bool],
    models: Sequence[str],
) -> bytes:
    """Per-prompt difference (model - baseline) on one metric, one panel per compared model: zero
    line, mean line, and the mean's 95% CI shaded."""
    present = [m for m in models if m in diffs]
    rows, cols = _grid(len(present), 3)
    fig = Figure(figsize=(3.6 * cols, 2.9 * rows))
    colors = model_colors(models)
    for p, m in enumerate(present):
        ax = fig.add_subplot(rows, cols, p + 1)
        d = np.asarray(diffs[m], dtype=float)
        ax.hist(d, bins=min(30, max(5, d.size // 3)), color=colors[m], alpha=0.7)
        ax.axvline(0, color="black", lw=1)
        ax.axvline(d.mean(), color=colors[m], lw=2, ls="--", label=f"mean {d.mean():+.4g}")
        if m in cis:
            ax.axvspan(*cis[m], color=colors[m], alpha=0.15, label="95% CI of mean")
        ax.set_title(f"{m} - {baseline}", fontsize=9)
        ax.set_xlabel(f"per-prompt difference in {metric}", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7)
    better = {True: "right of 0 = better", False: "left of 0 = better"}.get(higher_is_better, "")
    fig.suptitle(f"Per-prompt differences vs {baseline}: {metric}" + (f" ({better})" if better else ""), fontsize=10)
    fig.tight_layout()
    return _png(fig)
