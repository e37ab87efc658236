"""The declared targets, the identity checks and the verdict, judged on the computed results.

Every target reads the CI view `spec.stats.verdict` names (two-level by default) at its variant
temperature. A target is
- met / missed on its number (and its CI when `ci_excludes_zero`);
- underpowered when the CI half-width of its relative gain exceeds the threshold it is judged
  against (min_gain, or max_drop when > 0): such a design could not tell a gain of that size from
  none, so no verdict is given and the minimum detectable effect is shown instead;
- marked trained-on when its metric is (heldout.py): shown, never counted in the verdict.
With one seed per arm the two-level view has no seed variation to resample: every target, and
the verdict, is then underpowered (the training recipe's spread is unknown), whatever the CI.

The verdict: the prior decision tree (stats.decision_tree: aggressive > 25% -> main track, moderate
> 15% -> workshop, either > 8% -> preprint) on the declared strengths, fed with the held-out,
temperature-matched gain: the first held-out primary diversity metric, at matched value of every
held-out quality metric (the smallest of those gains counts). A step of the tree whose gain has a
CI half-width above that step's threshold makes the verdict "underpowered".

Identity: two adapters are identical when their safetensors hold the same tensor names, dtypes,
shapes and bytes (safetensors.numpy; no torch).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from polychromic.experiment.spec import ExperimentSpec, TargetSpec, model_name, runs_dir
from polychromic.metrics import metric_info, stats

ADAPTER_FILE = "adapter_model.safetensors"
MIN_SEEDS = 2
"""Seeds per arm below which the two-level view cannot see the training recipe's seed variation."""


def one_seed(spec: ExperimentSpec) -> str:
    return (f"{len(spec.seeds)} seed per arm: the seed-to-seed variation of the training recipe cannot be estimated "
            f"(at least {MIN_SEEDS} seeds, or stats.verdict: pooled for a claim about these adapters only)")


def pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def _target_value(t: TargetSpec, res: dict, temperature: float) -> dict:
    """gain, ci, half_width, mde of one target (relative, signed: positive is better)."""
    key = f"{temperature:g}"
    if t.matched is None:
        c = res["comparisons"].get(key, {}).get(t.arm, {}).get(t.metric)
        if c is None:
            return {"error": f"no comparison of {t.metric} at T = {key} (metric undefined on every prompt?)"}
        v = c["view"]
        return {"gain": v["gain"], "ci": v["gain_ci"], "half_width": v["gain_half_width"], "mde": v["gain_mde"],
                "view": c["verdict_view"], "source": f"{t.metric} at T = {key} vs the baseline at T = {key}"}
    f = res["frontier"].get(t.arm, {}).get(key, {}).get(t.matched, {}).get(t.metric)
    if f is None:
        return {"error": f"no temperature-matched comparison of {t.metric} at matched {t.matched} (the baseline needs "
                         "at least two temperatures, and the metric must be a primary metric)"}
    if f.get("status") != "ok":
        return {"error": f.get("note", "no comparison")}
    x = f["diversity_at_matched_quality"]
    if x["status"] != "inside":
        return {"error": x.get("note") or "outside the baseline's curve"}
    return {"gain": x["relative_gain"], "ci": x.get("relative_ci"), "half_width": x.get("relative_half_width"), "mde": x.get("mde_relative"),
            "view": f["method"], "source": f"{t.metric} at T = {key} vs the baseline's curve at matched {t.matched} "
                                          f"(baseline T ~ {x['temperature']:.3g})", "ci_note": x.get("ci_note")}


def judge_target(t: TargetSpec, res: dict, spec: ExperimentSpec, marks: dict) -> dict:
    temperature = t.temperature if t.temperature is not None else spec.eval.variant_temperatures[0]
    info = metric_info(t.metric)
    threshold = t.min_gain if t.min_gain is not None else t.max_drop
    out = {"arm": t.arm, "metric": t.metric, "matched": t.matched, "temperature": temperature, "min_gain": t.min_gain,
           "max_drop": t.max_drop, "ci_excludes_zero": t.ci_excludes_zero, "threshold": threshold,
           "trained_on": bool((marks.get(t.metric) or {}).get("trained_on"))
           or bool(t.matched and (marks.get(t.matched) or {}).get("trained_on"))}
    if info.higher_is_better is None:
        return {**out, "status": "invalid", "reason": f"{t.metric} is a control metric: it has no better direction"}
    v = _target_value(t, res, temperature)
    if "error" in v:
        return {**out, "status": "no value", "reason": v["error"]}
    out.update(v)
    g, ci, hw = v["gain"], v.get("ci"), v.get("half_width")
    if g is None:
        return {**out, "status": "no value", "reason": "relative gain undefined (baseline mean 0)"}
    if t.min_gain is not None:
        ok = g >= t.min_gain
        rule = f"gain {pct(g)} {'>=' if ok else '<'} {pct(t.min_gain)}"
    else:
        ok = g >= -t.max_drop
        rule = f"change {pct(g)} {'>=' if ok else '<'} {pct(-t.max_drop)} (at most {100 * t.max_drop:.0f}% worse)"
    if t.ci_excludes_zero:
        if ci is None:
            return {**out, "status": "no value", "reason": v.get("ci_note") or "no CI"}
        excl = ci[0] > 0
        ok = ok and excl
        rule += f"; CI [{pct(ci[0])}, {pct(ci[1])}] {'excludes' if excl else 'contains'} 0"
    if spec.stats.verdict == "two_level" and len(spec.seeds) < MIN_SEEDS:
        return {**out, "status": "underpowered", "reason": f"too small to detect: {one_seed(spec)} ({rule}; minimum detectable "
                                                           f"effect at the prompt level alone {pct(v.get('mde'))})"}
    if threshold and hw is not None and hw > threshold:
        mde = f"; minimum detectable effect {pct(v.get('mde'))}" if v.get("mde") is not None else ""
        return {**out, "status": "underpowered",
                "reason": f"too small to detect: CI half-width {100 * hw:.1f}% > the {100 * threshold:.0f}% threshold{mde} ({rule})"}
    return {**out, "status": "met" if ok else "missed", "reason": rule}


def judge_monotone(spec: ExperimentSpec, res: dict, marks: dict) -> list[dict]:
    out = []
    for m in spec.monotone:
        t = m.temperature if m.temperature is not None else spec.eval.variant_temperatures[0]
        means = res["means"][f"{t:g}"]
        vals = [means[a][m.metric]["mean"] for a in m.arms]
        hib = metric_info(m.metric).higher_is_better
        better = [v if hib else -v for v in vals] if None not in vals and hib is not None else None
        ok = better is not None and all(x < y for x, y in zip(better, better[1:]))
        out.append({"arms": m.arms, "metric": m.metric, "temperature": t, "means": vals, "status": "met" if ok else "missed",
                    "trained_on": bool((marks.get(m.metric) or {}).get("trained_on")),
                    "reason": ("better at every step: " if ok else "not better at every step: ")
                    + " -> ".join(f"{a} {v:.4g}" if v is not None else f"{a} n/a" for a, v in zip(m.arms, vals))})
    return out


def compare_adapters(a: Path, b: Path) -> dict:
    """Tensor-by-tensor equality of two adapters' safetensors files."""
    from safetensors.numpy import load_file

    fa, fb = a / ADAPTER_FILE, b / ADAPTER_FILE
    for f in (fa, fb):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: adapter weights not found (the identity check needs both adapters)")
    ta, tb = load_file(str(fa)), load_file(str(fb))
    only = sorted(set(ta) ^ set(tb))
    differing = sorted(n for n in set(ta) & set(tb)
                       if ta[n].dtype != tb[n].dtype or ta[n].shape != tb[n].shape or ta[n].tobytes() != tb[n].tobytes())
    max_abs = 0.0
    for n in differing:
        if ta[n].shape == tb[n].shape:
            max_abs = max(max_abs, float(abs(ta[n].astype("float64") - tb[n].astype("float64")).max()))
    return {"identical": not only and not differing, "tensors": len(ta), "differing": differing[:20], "n_differing": len(differing),
            "only_in_one": only[:20], "max_abs_diff": max_abs,
            "sha256": [hashlib.sha256(f.read_bytes()).hexdigest() for f in (fa, fb)]}


def identity_checks(spec: ExperimentSpec) -> list[dict]:
    out = []
    for a, b in spec.identical:
        seeds = {}
        for s in spec.seeds:
            seeds[str(s)] = compare_adapters(runs_dir(spec) / a / f"seed_{s}" / "adapter", runs_dir(spec) / b / f"seed_{s}" / "adapter")
        ok = all(v["identical"] for v in seeds.values())
        out.append({"arms": [a, b], "seeds": seeds, "status": "met" if ok else "missed",
                    "reason": f"{model_name(a, 's')} == {model_name(b, 's')} tensor by tensor for "
                              + ("every seed" if ok else "seeds " + ", ".join(s for s, v in seeds.items() if v["identical"]) + " only")})
    return out


STEPS = (("aggressive", stats.MAIN_TRACK_GAIN), ("moderate", stats.WORKSHOP_GAIN))


def verdict_gain(spec: ExperimentSpec, res: dict, arm: str, marks: dict) -> dict:
    """The held-out, temperature-matched gain of one arm: the first held-out primary metric, the
    smallest matched gain over the held-out quality metrics."""
    t = f"{spec.eval.variant_temperatures[0]:g}"
    div = next((m for m in spec.eval.primary_metrics if marks[m]["trained_on"] is False), None)
    quals = [q for q in spec.eval.matched_metrics if marks[q]["trained_on"] is False]
    if div is None:
        return {"gain": None, "reason": "every primary metric is trained on: no held-out diversity metric"}
    if not quals:
        return {"gain": None, "reason": "every eval.matched_metrics axis is trained on: no held-out quality axis to match on"}
    if arm not in res["frontier"]:
        return {"gain": None, "reason": "no temperature curve of the baseline (one temperature)"}
    cands = []
    for q in quals:
        f = res["frontier"][arm][t][q][div]
        x = f.get("diversity_at_matched_quality") if f.get("status") == "ok" else None
        if x is None or x["status"] != "inside" or x.get("relative_gain") is None:
            return {"gain": None, "metric": div, "reason": f"{div} at matched {q}: " + ((x or {}).get("note") or f.get("note") or "no value")}
        cands.append((x["relative_gain"], q, x))
    g, q, x = min(cands, key=lambda c: c[0])
    return {"gain": g, "metric": div, "matched": q, "half_width": x.get("relative_half_width"),
            "ci": x.get("relative_ci"), "mde": x.get("mde_relative"),
            "reason": f"{div} at matched {q} (the smallest of {', '.join(quals)})"}


def _same_decoding(spec: ExperimentSpec, res: dict, arm: str, metric: Optional[str]) -> dict:
    """The verdict view's gain of `metric` at the first variant temperature (same decoding)."""
    c = res["comparisons"].get(f"{spec.eval.variant_temperatures[0]:g}", {}).get(arm, {}).get(metric) if metric else None
    if c is None:
        return {"gain": None, "half_width": None, "mde": None}
    v = c["view"]
    return {"gain": v["gain"], "half_width": v["gain_half_width"], "mde": v["gain_mde"], "ci": v["gain_ci"]}


def verdict(spec: ExperimentSpec, res: dict, marks: dict) -> dict:
    """The prior tree on the declared strengths, or "underpowered" / "no verdict".

    Power comes first: a step of the tree (aggressive at 25%, moderate at 15%, either at 8%) is
    underpowered when the CI half-width of a gain it reads, at the same decoding or matched on the
    baseline's curve, exceeds its threshold; the matched gain is never more certain than the
    same-decoding one, so a design too small for the latter is reported as such even when the
    variant falls outside the baseline's curve."""
    variants = [a for a in spec.compared if a.strength is not None]
    if not variants:
        return {"status": "no verdict", "reason": "no variant declares a strength (moderate / aggressive): the prior tree does not apply",
                "gains": {}}
    gains = {a.name: verdict_gain(spec, res, a.name, marks) for a in variants}
    div = next((m for m in spec.eval.primary_metrics if marks[m]["trained_on"] is False), None)
    for a in variants:
        gains[a.name]["same_decoding"] = _same_decoding(spec, res, a.name, div)
    judged = [a for a in variants if a.strength in ("moderate", "aggressive")]
    if spec.stats.verdict == "two_level" and len(spec.seeds) < MIN_SEEDS and judged:
        g = gains[judged[0].name]["same_decoding"]
        return {"status": "underpowered", "gains": gains, "tree": None,
                "reason": f"too small to detect: {one_seed(spec)}; minimum detectable effect of {judged[0].name}'s {div} gain at "
                          f"the prompt level alone {pct(g.get('mde'))}"}
    tree = None
    if all(gains[a.name]["gain"] is not None for a in judged):
        tree = stats.decision_tree({a.name: gains[a.name]["gain"] for a in variants}, roles={a.name: a.strength for a in variants})
    # The steps the tree went through to reach its verdict (all of them when it cannot run).
    everything = (*STEPS, ("either", stats.PREPRINT_GAIN))
    steps = everything if tree is None else {"main track": STEPS[:1], "workshop": STEPS}.get(tree["verdict"], everything)
    for strength, threshold in steps:
        for a in judged:
            if strength not in (a.strength, "either"):
                continue
            g = gains[a.name]
            for what, x in (("same-decoding", g["same_decoding"]), ("matched", g)):
                hw = x.get("half_width")
                if hw is not None and hw > threshold:
                    return {"status": "underpowered", "gains": gains, "tree": tree,
                            "reason": f"too small to detect a {100 * threshold:.0f}% gain: {a.name}'s {what} gain of {div} "
                                      f"({pct(x.get('gain'))}) has a CI half-width of {100 * hw:.1f}% (minimum detectable "
                                      f"effect {pct(x.get('mde'))})" + (f"; the tree alone would say '{tree['verdict']}'" if tree else "")}
    if tree is None:
        missing = {a.name: gains[a.name]["reason"] for a in judged if gains[a.name]["gain"] is None}
        return {"status": "no verdict", "reason": "; ".join(f"{n}: {r}" for n, r in missing.items()) or "no moderate or aggressive variant",
                "gains": gains, "tree": None}
    for a in judged:
        if gains[a.name].get("half_width") is None:
            return {"status": "no verdict", "reason": f"{a.name}: no CI of the matched gain ({gains[a.name]['reason']})",
                    "gains": gains, "tree": tree}
    return {"status": tree["verdict"], "reason": tree["reason"], "tree": tree, "gains": gains}
