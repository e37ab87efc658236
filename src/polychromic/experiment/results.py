"""The experiment's numbers, from its evaluation folders alone: every compared arm against the
baseline arm at the same decoding, and against the baseline's temperature curve.

Per (arm, variant temperature, metric), three views of one comparison:
- pooled: each arm's seeds averaged per prompt, the prompt the unit of a paired bootstrap
  (`stats.pooled_bootstrap`), with a sign-flip permutation p on the per-prompt differences;
  Holm's correction runs over every metric of the table (an arm at one temperature), and a
  difference that does not survive it is marked exploratory;
- two-level: seeds and prompts resampled (`stats.two_level_bootstrap`), so the CI includes the
  seed-to-seed variation of the training recipe; its half-width and minimum detectable effect;
- per seed: each seed of the arm against the baseline seed of the same number (paired bootstrap
  over prompts), to show how much the seeds agree.
`spec.stats.verdict` names the view the targets and the verdict read.

Temperature-matched (`metrics.frontier.matched_gain_bootstrap`): for every quality metric X of
eval.matched_metrics and every primary diversity metric D, the arm's D against the baseline's
D(T) curve at the arm's X (and its X at the arm's D), with two-level (or pooled) CIs.

Gains are relative and signed so that positive is better (self_bleu and ref_nll: lower).
No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from polychromic.experiment.spec import ExperimentSpec, eval_dir, model_name
from polychromic.metrics import metric_info, stats
from polychromic.metrics.frontier import matched_gain_bootstrap

EXTRA_METRICS = ("distinct_1", "distinct_k", "pairwise_bleu", "vendi_q1", "quality", "length_tokens")
"""Secondary metrics shown in the tables when the evaluation computed them."""


class ResultsError(ValueError):
    pass


@dataclass
class ExperimentData:
    spec: ExperimentSpec
    per_prompt: dict[float, dict[str, dict[str, dict]]]
    """temperature -> model -> prompt_id -> {"k", "metrics", "excluded"}"""
    evals: dict[float, object]
    """temperature -> report.EvalData (prompts, samples, config of that folder)"""

    def arm(self, t: float, arm: str, metric: str) -> dict[int, dict[str, Optional[float]]]:
        """{seed: {prompt_id: value or None}} of one arm at temperature t."""
        out = {}
        for s in self.spec.seeds:
            rows = self.per_prompt[t].get(model_name(arm, s))
            if rows is None:
                raise ResultsError(f"{eval_dir(self.spec, t)}: no per-prompt rows for {model_name(arm, s)} "
                                   "(rerun `polychromic experiment run`)")
            out[s] = {pid: r["metrics"].get(metric) for pid, r in rows.items()}
        return out

    def metrics(self, t: float) -> list[str]:
        names = {n for rows in self.per_prompt[t].values() for r in rows.values() for n in r["metrics"]}
        return sorted(names)


def load(spec: ExperimentSpec) -> ExperimentData:
    from polychromic.report import load_eval_dir

    per_prompt, evals = {}, {}
    for t in spec.baseline_temperatures:
        d = eval_dir(spec, t)
        if not (d / "per_prompt.jsonl").is_file():
            raise ResultsError(f"{d}: not evaluated yet (no per_prompt.jsonl); run `polychromic experiment run`")
        data = load_eval_dir(d)
        if abs(data.cfg.eval.temperature - t) > 1e-12:
            raise ResultsError(f"{d}: evaluated at T = {data.cfg.eval.temperature:g}, the folder name says {t:g}")
        per_prompt[t], evals[t] = data.per_prompt, data
    return ExperimentData(spec, per_prompt, evals)


def table_metrics(spec: ExperimentSpec, available: list[str]) -> list[str]:
    """Primary, then quality, then the secondary metrics, those the evaluation has."""
    k = f"pass_at_{spec.eval.k}"
    declared = [*spec.eval.primary_metrics, *spec.eval.quality_metrics, *spec.eval.matched_metrics]
    want = [*declared, k, *EXTRA_METRICS]
    missing = [m for m in dict.fromkeys(declared) if m not in available]
    if missing:
        raise ResultsError(f"declared metric(s) {missing} are not in the evaluation's per-prompt rows ({', '.join(available)})")
    return [m for m in dict.fromkeys(want) if m in available]


def signed(d: dict, higher_is_better: Optional[bool]) -> dict:
    """gain, gain_ci, gain_half_width and gain_mde: the relative difference with its sign turned
    so that positive is better (None for a control metric or an undefined relative change)."""
    rel, ci = d.get("relative_delta"), d.get("relative_ci")
    if higher_is_better is None or rel is None:
        return {"gain": None, "gain_ci": None, "gain_half_width": None, "gain_mde": None}
    s = 1.0 if higher_is_better else -1.0
    lo, hi = sorted((s * ci[0], s * ci[1]))
    return {"gain": s * rel, "gain_ci": [lo, hi], "gain_half_width": (hi - lo) / 2, "gain_mde": d.get("mde_relative")}


def _ci_excludes_zero(c: dict) -> Optional[bool]:
    return None if c.get("gain_ci") is None else c["gain_ci"][0] > 0


def compare(data: ExperimentData, t: float, arm: str, metric: str) -> Optional[dict]:
    """One metric of one arm against the baseline at temperature t (the three views)."""
    sp = data.spec
    info = metric_info(metric)
    a, b = data.arm(t, arm, metric), data.arm(t, sp.baseline.name, metric)
    prompts = stats.common_prompts(a, b)
    if not prompts:
        return None
    kw = {"prompts": prompts, "resamples": sp.stats.resamples, "seed": sp.stats.seed, "level": sp.stats.level}
    pooled = stats.pooled_bootstrap(a, b, **kw)
    two = stats.two_level_bootstrap(a, b, **kw)
    pooled.update(signed(pooled, info.higher_is_better))
    two.update(signed(two, info.higher_is_better))
    diffs = np.array([np.mean([a[s][p] for s in a]) - np.mean([b[s][p] for s in b]) for p in prompts])
    pooled["p_permutation"] = stats.sign_flip_permutation_p(diffs, resamples=sp.stats.resamples, seed=sp.stats.seed)["p"]
    per_seed = {}
    for s in sp.seeds:
        if s not in b:
            continue
        ps = [p for p in prompts]
        r = stats.pooled_bootstrap({s: a[s]}, {s: b[s]}, **{**kw, "prompts": ps})
        r.update(signed(r, info.higher_is_better))
        per_seed[str(s)] = {k: r[k] for k in ("mean_a", "mean_b", "delta", "ci", "gain", "gain_ci")}
    return {"metric": metric, "kind": info.kind, "higher_is_better": info.higher_is_better, "n_prompts": len(prompts),
            "pooled": pooled, "two_level": two, "per_seed": per_seed,
            "verdict_view": sp.stats.verdict, "view": two if sp.stats.verdict == "two_level" else pooled}


def _holm(rows: dict[str, dict], level: float) -> None:
    """Holm over every metric of one table (controls excluded); marks the exploratory ones."""
    names = [m for m, c in rows.items() if c is not None and c["higher_is_better"] is not None]
    if not names:
        return
    adjusted = stats.holm([rows[m]["pooled"]["p_permutation"] for m in names])
    for m, p in zip(names, adjusted):
        rows[m]["pooled"]["p_holm"] = p
        rows[m]["exploratory"] = p > 1 - level


def arm_means(data: ExperimentData, t: float, arm: str, metric: str) -> dict:
    """Mean over seeds and prompts, and each seed's mean over prompts (defined values only)."""
    a = data.arm(t, arm, metric)
    per_seed = {}
    for s, vals in a.items():
        v = [x for x in vals.values() if x is not None]
        per_seed[str(s)] = float(np.mean(v)) if v else None
    defined = [x for x in per_seed.values() if x is not None]
    excluded = sum(x is None for vals in a.values() for x in vals.values())
    return {"mean": float(np.mean(defined)) if defined else None, "per_seed": per_seed, "excluded": excluded}


def frontier(data: ExperimentData, arm: str, t: float, quality: str, diversity: str) -> dict:
    """The arm at temperature t against the baseline's (quality, diversity) curve over its grid."""
    sp = data.spec
    temps = sp.baseline_temperatures
    base = {bt: {s: {} for s in sp.seeds} for bt in temps}
    q_arms = [data.arm(bt, sp.baseline.name, quality) for bt in temps] + [data.arm(t, arm, quality)]
    d_arms = [data.arm(bt, sp.baseline.name, diversity) for bt in temps] + [data.arm(t, arm, diversity)]
    prompts = stats.common_prompts(*q_arms, *d_arms)
    if not prompts:
        return {"status": "no prompts", "note": f"no prompt has {quality} and {diversity} for every model and temperature"}
    for i, bt in enumerate(temps):
        for s in sp.seeds:
            base[bt][s] = {p: (q_arms[i][s][p], d_arms[i][s][p]) for p in prompts}
    variant = {s: {p: (q_arms[-1][s][p], d_arms[-1][s][p]) for p in prompts} for s in sp.seeds}
    r = matched_gain_bootstrap(base, variant, prompts=prompts, resamples=sp.stats.resamples, seed=sp.stats.seed,
                               level=sp.stats.level, quality_higher_is_better=metric_info(quality).higher_is_better,
                               diversity_higher_is_better=metric_info(diversity).higher_is_better,
                               two_level=sp.stats.verdict == "two_level")
    for axis in ("diversity_at_matched_quality", "quality_at_matched_diversity"):
        r[axis]["reading"] = _reading(r[axis])
    r["status"] = "ok"
    return r


def _reading(x: dict) -> str:
    """How the arm sits relative to the baseline's curve on one axis."""
    if x["status"] != "inside":
        return f"outside the baseline's range ({x['end']} it): no matched comparison"
    ci = x.get("relative_ci")
    if ci is None:
        return "inside the range, no CI (" + (x.get("ci_note") or "resamples left the curve") + ")"
    if ci[0] > 0:
        return "beyond the baseline's curve (a gain no temperature of the baseline gives)"
    if ci[1] < 0:
        return "inside the baseline's curve (a temperature change of the baseline does better)"
    return "on the baseline's curve (what a temperature change of the baseline gives)"


def compute(data: ExperimentData) -> dict:
    """Means, comparisons and frontier of every compared arm (no targets or verdict yet)."""
    sp = data.spec
    out: dict = {"means": {}, "comparisons": {}, "frontier": {}}
    for t in sp.baseline_temperatures:
        names = table_metrics(sp, data.metrics(t))
        arms = [a.name for a in sp.arms if all(model_name(a.name, s) in data.per_prompt[t] for s in sp.seeds)]
        out["means"][f"{t:g}"] = {a: {m: arm_means(data, t, a, m) for m in names} for a in arms}
        if t not in sp.eval.variant_temperatures:
            continue
        out["comparisons"][f"{t:g}"] = {}
        for a in sp.compared:
            rows = {m: compare(data, t, a.name, m) for m in names}
            _holm(rows, sp.stats.level)
            out["comparisons"][f"{t:g}"][a.name] = rows
    if len(sp.baseline_temperatures) >= 2:
        for a in sp.compared:
            out["frontier"][a.name] = {
                f"{t:g}": {q: {d: frontier(data, a.name, t, q, d) for d in sp.eval.primary_metrics} for q in sp.eval.matched_metrics}
                for t in sp.eval.variant_temperatures}
    out["table_metrics"] = table_metrics(sp, data.metrics(sp.eval.variant_temperatures[0]))
    return out
