"""Which figures a report has and the data behind each: `make_figures(EvalData, results)` ->
{file stem: (png bytes, caption)}. The drawing itself is polychromic.report.plots.
"""

from __future__ import annotations

import numpy as np

from polychromic.report import plots
from polychromic.report.load import EvalData
from polychromic.report.results import k_curve, metric_groups, metric_meta


def make_figures(data: EvalData, res: dict) -> dict[str, tuple[bytes, str]]:
    """{file stem: (png bytes, caption)}."""
    figs: dict[str, tuple[bytes, str]] = {}
    models, per_model = data.models, res["per_model"]
    summary = {m: per_model[m]["metrics"] for m in models}
    groups = metric_groups(data.metric_names)
    div = groups["diversity"]
    if div:
        png = plots.diversity_with_ci(summary, div, {n: metric_meta(n).higher_is_better for n in div}, models)
        figs["diversity"] = (png, "Mean per-prompt diversity of each model, with 95% bootstrap CIs over prompts.")
    curves = {}
    for m in models:
        k, p, pci = k_curve(summary[m], "pass_at_")
        k2, mx, mci = k_curve(summary[m], "max_at_")
        if k and k == k2:
            curves[m] = {"k": k, "pass": p, "pass_ci": pci, "max": mx, "max_ci": mci}
    if curves:
        figs["pass_max_at_k"] = (plots.pass_max_curves(curves, res["quality_threshold"], models),
                                 "pass@k and max@k against k on the full grid (bands: 95% bootstrap CIs).")
    primary = res["primary_metrics"][0] if res["primary_metrics"] else (div[0] if div else None)
    ymetric = next((q for q in ("quality", "relevance", "rouge_l") if q in data.metric_names), None)
    if primary and ymetric:
        pts, means = {}, {}
        for m in models:
            x, y = data.values(m, primary), data.values(m, ymetric)
            both = sorted(set(x) & set(y))
            if both:
                pts[m] = ([x[p] for p in both], [y[p] for p in both])
                means[m] = (float(np.mean(pts[m][0])), float(np.mean(pts[m][1])))
        if means:
            png, front = plots.quality_vs_diversity(pts, means, primary, ymetric, metric_meta(primary).higher_is_better is not False,
                                                    metric_meta(ymetric).higher_is_better is not False, models)
            figs["quality_vs_diversity"] = (png, f"{ymetric} against {primary}; Pareto front of the model means: {', '.join(front)}.")
    lengths = {m: [r["n_tokens"] for (mm, _), rows in data.samples.items() if mm == m for r in rows if r["kind"] == "sample"]
               for m in models}
    if any(lengths.values()):
        figs["lengths"] = (plots.length_distributions(lengths, models), "Completion length of the samples (model tokens).")
    if primary and res["comparisons"]:
        diffs, cis = {}, {}
        for m, comp in res["comparisons"].items():
            if primary in comp:
                a, b = data.values(m, primary), data.values(data.baseline, primary)
                common = sorted(set(a) & set(b))
                diffs[m] = [a[p] - b[p] for p in common]
                cis[m] = (comp[primary]["ci_low"], comp[primary]["ci_high"])
        if diffs:
            figs["differences"] = (plots.difference_histograms(diffs, cis, primary, data.baseline, metric_meta(primary).higher_is_better, models),
                                   f"Per-prompt differences in {primary} against {data.baseline}.")
    return figs
