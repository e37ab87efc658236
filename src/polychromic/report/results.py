"""The statistics behind results.json: `compute_results(EvalData) -> dict`.

What it computes (docs/metrics.md, "Statistics"):
- per model and metric: the mean over prompts, its 95% percentile bootstrap CI (prompts
  resampled), the number of prompts used and excluded (with the reasons);
- per model against the baseline, on the prompts where both have a value: the mean paired
  difference and its bootstrap CI, a sign-flip permutation p and a Wilcoxon p, d_z, the per-prompt
  win rate and the relative gain; Holm's correction over the family of (model, primary metric)
  comparisons, on the permutation p;
- the prior decision tree on the first primary metric (stats.decision_tree);
- DER and the collapse point from the mean pass@k curve on the full k grid.

No torch here (layering rule): numpy and polychromic.metrics.stats.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any, Optional

import numpy as np

from polychromic.config import to_dict
from polychromic.metrics import MetricInfo, Undefined, der, metric_info, stats
from polychromic.report.load import EvalData

COLLAPSE_THRESHOLD = 0.01
"""Collapse point: the first k where one more sample adds less than 1 point of pass@k."""
CI_LEVEL = 0.95


def _exclusions(data: EvalData, model: str, metric: str) -> Counter:
    """Reasons for the prompts without a value, counted; per-prompt details in parentheses (which
    sample was empty) are dropped so that the same reason is counted once."""
    reasons: Counter = Counter()
    for r in data.per_prompt[model].values():
        if r["metrics"].get(metric) is None:
            reason = r["excluded"].get(metric, "metric not computed for this prompt")
            reasons[re.sub(r"\s+\([^)]*\)", "", reason)] += 1
    return reasons


def metric_meta(name: str) -> MetricInfo:
    """`metric_info(name)`, or for a name the registry does not know a MetricInfo of kind
    'other' with no direction."""
    try:
        return metric_info(name)
    except KeyError:
        # A metric evaluate added that the registry does not know: shown, with no direction.
        return MetricInfo(name, None, "prompt", "other", "not in metrics.REGISTRY (no direction)")


def _model_summary(data: EvalData, model: str, resamples: int, seed: int) -> dict:
    out: dict[str, dict] = {}
    for name in data.metric_names:
        vals = data.values(model, name)
        reasons = _exclusions(data, model, name)
        entry: dict[str, Any] = {"n": len(vals), "n_excluded": sum(reasons.values()), "excluded_reasons": dict(reasons),
                                 "mean": None, "ci_low": None, "ci_high": None}
        if vals:
            ci = stats.bootstrap_ci(list(vals.values()), resamples=resamples, seed=seed, level=CI_LEVEL)
            entry.update(mean=ci["mean"], ci_low=ci["ci_low"], ci_high=ci["ci_high"])
        out[name] = entry
    return out


def _compare(data: EvalData, model: str, metric: str, resamples: int, seed: int) -> Optional[dict]:
    a, b = data.values(model, metric), data.values(data.baseline, metric)
    common = sorted(set(a) & set(b))
    if not common:
        return None
    va = np.array([a[p] for p in common])
    vb = np.array([b[p] for p in common])
    diffs = va - vb
    hib = metric_meta(metric).higher_is_better
    boot = stats.paired_bootstrap(va, vb, resamples=resamples, seed=seed, level=CI_LEVEL)
    perm = stats.sign_flip_permutation_p(diffs, resamples=resamples, seed=seed)
    wil = stats.wilcoxon_p(diffs)
    out: dict[str, Any] = {
        "n": len(common), "mean_model": boot["mean_a"], "mean_baseline": boot["mean_b"], "diff": boot["diff"],
        "ci_low": boot["ci_low"], "ci_high": boot["ci_high"], "p_permutation": perm["p"],
        "permutation_method": perm["method"], "p_wilcoxon": wil["p"], "wilcoxon_note": wil["note"],
        "higher_is_better": hib, "d_z": None, "d_z_note": None, "win_rate": None, "wins": None, "ties": None,
        "losses": None, "relative_gain": None, "relative_gain_note": None,
    }
    try:
        out["d_z"] = stats.cohens_dz(diffs)
    except Undefined as exc:
        out["d_z_note"] = exc.reason
    if hib is not None:
        w = stats.win_rate(va, vb, hib)
        out.update(win_rate=w["rate"], wins=w["wins"], ties=w["ties"], losses=w["losses"])
        try:
            out["relative_gain"] = stats.relative_gain(boot["mean_a"], boot["mean_b"], hib)
        except Undefined as exc:
            out["relative_gain_note"] = exc.reason
    return out


def k_curve(summary: dict, prefix: str) -> tuple[list[int], list[float], list[list[float]]]:
    ks, ys, cis = [], [], []
    for name, s in summary.items():
        if name.startswith(prefix) and s["mean"] is not None:
            ks.append(int(name.rsplit("_", 1)[1]))
            ys.append(s["mean"])
            cis.append([s["ci_low"], s["ci_high"]])
    order = np.argsort(ks)
    return [ks[i] for i in order], [ys[i] for i in order], [cis[i] for i in order]


def _derived(summary: dict) -> dict:
    """DER@k and the collapse point from the mean pass@k curve (model level)."""
    ks, curve, _ = k_curve(summary, "pass_at_")
    out: dict[str, Any] = {"der": {}, "der_note": None, "collapse_point": None, "collapse_note": None,
                           "collapse_threshold": COLLAPSE_THRESHOLD}
    if not ks:
        out["der_note"] = out["collapse_note"] = "no pass@k values"
        return out
    if ks != list(range(1, len(ks) + 1)):
        out["collapse_note"] = f"pass@k not on the full grid 1..{max(ks)} (have {ks})"
    else:
        gains = np.diff(curve)
        below = np.flatnonzero(gains < COLLAPSE_THRESHOLD)
        if below.size:
            out["collapse_point"] = int(below[0]) + 1
        else:
            out["collapse_note"] = f"gain per extra sample stays >= {COLLAPSE_THRESHOLD} up to k = {ks[-1]}"
    if ks[0] == 1:
        for k, v in zip(ks, curve):
            try:
                out["der"][str(k)] = der(v, curve[0], k)
            except Undefined as exc:
                out["der_note"] = exc.reason
                break
    return out


def _judge_summary(rows: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for r in rows:
        s = out.setdefault(r["model"], {"baseline": r["baseline"], "win": 0, "loss": 0, "tie": 0, "parse_failure": 0, "other": 0})
        s[r["verdict"] if r["verdict"] in ("win", "loss", "tie", "parse_failure") else "other"] += 1
    for s in out.values():
        judged = s["win"] + s["loss"] + s["tie"]
        s["win_rate"] = s["win"] / judged if judged else None
    return out


def compute_results(data: EvalData) -> dict:
    ev = data.cfg.eval
    resamples, seed = ev.bootstrap_resamples, data.cfg.seed
    summaries = {m: _model_summary(data, m, resamples, seed) for m in data.models}
    primary = [p for p in ev.primary_metrics if p in data.metric_names]
    missing_primary = [p for p in ev.primary_metrics if p not in data.metric_names]
    if missing_primary:
        data.warnings.append(f"primary metric(s) {missing_primary} not in per_prompt.jsonl")
    others = [m for m in data.models if m != data.baseline]
    comparisons: dict[str, dict] = {}
    for m in others:
        comparisons[m] = {}
        for name in data.metric_names:
            c = _compare(data, m, name, resamples, seed)
            if c is not None:
                comparisons[m][name] = c
    # Holm over the whole family of primary comparisons (every model x every primary metric):
    # adding a model to the evaluation rightly makes each claim need more evidence.
    family = [(m, p) for m in others for p in primary if p in comparisons[m]]
    for (m, p), adj in zip(family, stats.holm([comparisons[m][p]["p_permutation"] for m, p in family]) if family else []):
        comparisons[m][p]["p_holm"] = adj
        comparisons[m][p]["primary"] = True

    verdict: dict[str, Any]
    if not primary:
        verdict = {"verdict": "no verdict", "reason": "no primary metric was scored", "metric": None}
    elif not others:
        verdict = {"verdict": "no verdict", "reason": "one model only: nothing to compare", "metric": primary[0]}
    else:
        gains = {m: comparisons[m].get(primary[0], {}).get("relative_gain") for m in others}
        verdict = {**stats.decision_tree(gains), "metric": primary[0]}

    return {
        "eval_dir": str(data.eval_dir),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "experiment": data.cfg.experiment,
        "models": data.models,
        "baseline": data.baseline,
        "primary_metrics": primary,
        "n_prompts": len(data.prompts),
        "k": {m: sorted({r["k"] for r in data.per_prompt[m].values()}) for m in data.models},
        "quality_threshold": ev.quality_threshold,
        "bootstrap": {"resamples": resamples, "seed": seed, "level": CI_LEVEL, "method": "percentile, prompts resampled (paired)"},
        "permutation": {"method": f"sign flip, exact for n <= {stats.EXACT_PERMUTATION_MAX_N}, else {resamples} flips", "seed": seed},
        "holm_family": [f"{m}:{p}" for m, p in family],
        "metrics": {n: {"higher_is_better": metric_meta(n).higher_is_better, "kind": metric_meta(n).kind, "description": metric_meta(n).description}
                    for n in data.metric_names},
        "per_model": {m: {"n_prompts": len(data.per_prompt[m]), "metrics": summaries[m], "derived": _derived(summaries[m]),
                          "model_info": (data.models_json or {}).get(m)} for m in data.models},
        "comparisons": comparisons,
        "verdict": verdict,
        "judge": _judge_summary(data.judge_rows) if data.judge_rows else None,
        "warnings": data.warnings,
        "config": to_dict(data.cfg),
        "env": {k: (data.env or {}).get(k) for k in ("git_sha", "git_dirty", "packages", "python", "platform", "device")}
        if data.env else None,
    }


def metric_groups(names: list[str]) -> dict[str, list[str]]:
    """Metric names by the report's sections: diversity, control, quality, k-curves (pass@k,
    max@k), other (not in the registry)."""
    g: dict[str, list[str]] = {"diversity": [], "control": [], "quality": [], "k-curves": [], "other": []}
    for n in names:
        meta = metric_meta(n)
        if n.startswith(("pass_at_", "max_at_")):
            g["k-curves"].append(n)
        else:
            g.get(meta.kind, g["other"]).append(n)
    return g
