"""Gains over the baseline's temperature curve at matched quality (and matched diversity).

Why: raising the sampling temperature of the baseline raises its diversity and lowers its
quality, for free. A variant that is more diverse than the baseline at the evaluation temperature
but less good may be nothing more than a hotter baseline. So the variant is compared with the
baseline evaluated at several temperatures T: the baseline's points (T, quality, diversity) trace
a curve, and the variant's diversity is compared with the curve's diversity *at the variant's
quality* (and its quality with the curve's quality at the variant's diversity). A gain there is a
gain no temperature of the baseline gives.

Interpolation: linear in the matched coordinate along the polyline that joins the baseline's
points in temperature order. When quality is monotone in T (the usual case) exactly one segment
contains the variant's quality and this is plain linear interpolation of the points sorted by
quality. When it is not (a curve that turns back), several segments contain it and the matched
baseline value is the BEST of them (the upper envelope for a higher-is-better diversity): the
comparison is with the best the baseline reaches at that quality, never the worst.

Dominance: "at matched quality" means at a quality *at least as good* as the variant's. Where the
quality does not fall with T over part of the curve (the tempered reference NLL of a model that is
too sharp at T = 0.7 falls, i.e. improves, as T rises towards 1), a hotter baseline point can be
both better in quality and more diverse than the crossing; then that point is the match (the
Pareto envelope of the curve: the best diversity over every curve point whose quality is at least
the variant's), `envelope` is True and `temperature` is that point's. Matching only at exactly
equal quality would credit the variant with a gain that the baseline beats at a hotter, better
temperature. The same holds for quality at matched diversity. Outside the curve's range nothing
is extrapolated: status "outside", with the end ("below" / "above" the baseline's range) and the
temperature at that end.

Directions: a quality where lower is better (reference NLL) or a diversity where lower is better
(Self-BLEU) only changes which candidate is "best" and the sign of the gain: `gain` is signed so
that positive is better, `relative_gain` = gain / |matched| (= d_v / d_b(q_v) - 1 for a
higher-is-better diversity), `difference` = variant - matched, unsigned.

`matched_gain_bootstrap` puts CIs on both gains by the two-level bootstrap of
`polychromic.metrics.stats` (prompts shared by every arm and temperature; the baseline's seeds
shared by its temperatures, which evaluate the same adapters; the variant's seeds apart) and
recomputes the whole curve and the variant point in every resample.

No torch here (layering rule): numpy, and stats' resampling.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from polychromic.metrics.stats import MDE_ALPHA, MDE_POWER, arm_matrix, mde_multiplier, two_level_means

AXES = ("diversity_at_matched_quality", "quality_at_matched_diversity")


def _check_curve(curve) -> np.ndarray:
    c = np.asarray(curve, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(f"matched_gain: curve must be (temperature, quality, diversity) points, got shape {c.shape}")
    if c.shape[0] < 2:
        raise ValueError(f"matched_gain: the baseline curve needs at least 2 temperatures, got {c.shape[0]}")
    if not np.all(np.isfinite(c)):
        raise ValueError("matched_gain: the baseline curve contains NaN or infinite values")
    c = c[np.argsort(c[:, 0], kind="stable")]
    if np.any(np.diff(c[:, 0]) == 0):
        raise ValueError(f"matched_gain: temperatures repeat in the baseline curve: {c[:, 0].tolist()}")
    return c


def match_on_curve(ts: np.ndarray, xs: np.ndarray, ys: np.ndarray, x: float, y_higher_is_better: bool,
                   x_higher_is_better: Optional[bool] = None) -> dict:
    """The baseline's y at coordinate x along the polyline through (xs[i], ys[i]), i in temperature
    order (ts ascending). With `x_higher_is_better` given, the match is the best y over the
    crossings and every curve point whose x is at least as good as `x` (the envelope; module
    docstring). Keys: status ("inside" / "outside"), matched (y, or None), temperature
    (interpolated T), temperatures (the bracketing pair), segments (how many segments contain x),
    envelope (a better curve point, not a crossing, is the match), monotone (x strictly monotone
    in T), end / end_temperature / range (where it is outside)."""
    lo, hi = float(xs.min()), float(xs.max())
    steps = np.diff(xs)
    base = {"at": float(x), "range": [lo, hi], "monotone": bool(np.all(steps > 0) or np.all(steps < 0))}
    candidates = []
    for i in range(len(xs) - 1):
        x0, x1 = xs[i], xs[i + 1]
        if not min(x0, x1) <= x <= max(x0, x1):
            continue
        if x1 == x0:  # a flat segment: both ends are at x; the better one counts
            j = i if (ys[i] >= ys[i + 1]) == y_higher_is_better else i + 1
            y, t = float(ys[j]), float(ts[j])
        else:
            w = (x - x0) / (x1 - x0)
            y, t = float(ys[i] + w * (ys[i + 1] - ys[i])), float(ts[i] + w * (ts[i + 1] - ts[i]))
        candidates.append((y, t, [float(ts[i]), float(ts[i + 1])], False))
    if not candidates:
        end = "below" if x < lo else "above"
        j = int(np.argmin(xs) if x < lo else np.argmax(xs))
        return {**base, "status": "outside", "end": end, "end_temperature": float(ts[j]), "matched": None,
                "temperature": None, "temperatures": None, "segments": 0, "envelope": False}
    segments = len(candidates)
    pick = max if y_higher_is_better else min
    crossing = pick(candidates, key=lambda c: c[0])
    if x_higher_is_better is not None:
        better = xs >= x if x_higher_is_better else xs <= x
        candidates += [(float(ys[j]), float(ts[j]), [float(ts[j]), float(ts[j])], True) for j in np.flatnonzero(better)]
    y, t, brackets, vertex = pick(candidates, key=lambda c: c[0])
    envelope = bool(vertex and (y > crossing[0] if y_higher_is_better else y < crossing[0]))
    if not envelope:
        y, t, brackets = crossing[:3]
    return {**base, "status": "inside", "end": None, "end_temperature": None, "matched": y, "temperature": t,
            "temperatures": brackets, "segments": segments, "envelope": envelope}


def _compare(variant: float, m: dict, higher_is_better: bool) -> dict:
    out = {**m, "variant": float(variant), "difference": None, "gain": None, "relative_gain": None, "note": None}
    if m["status"] != "inside":
        out["note"] = (f"the variant's value {m['at']:.6g} is {m['end']} the baseline's range "
                       f"[{m['range'][0]:.6g}, {m['range'][1]:.6g}] (nearest: T = {m['end_temperature']:g}); "
                       "no extrapolation")
        return out
    diff = float(variant) - m["matched"]
    gain = diff if higher_is_better else -diff
    out.update(difference=diff, gain=gain)
    if m["matched"] == 0:
        out["note"] = "relative gain undefined: the matched baseline value is 0"
    else:
        out["relative_gain"] = gain / abs(m["matched"])
    return out


def matched_gain(curve: Sequence[Sequence[float]], point: Sequence[float], quality_higher_is_better: bool = True,
                 diversity_higher_is_better: bool = True) -> dict:
    """The variant point (quality, diversity) against the baseline curve [(T, quality, diversity)].

    Returns {"diversity_at_matched_quality": ..., "quality_at_matched_diversity": ...}, each with
    status, variant, matched (the baseline's value: the crossing, or a better curve point when
    `envelope`), difference, gain (signed: positive is better), relative_gain, temperature (the
    baseline temperature that matches), temperatures (the bracketing pair), segments, envelope,
    monotone, and end / end_temperature / note when outside."""
    c = _check_curve(curve)
    p = np.asarray(point, dtype=np.float64)
    if p.shape != (2,) or not np.all(np.isfinite(p)):
        raise ValueError(f"matched_gain: point must be a finite (quality, diversity), got {point!r}")
    ts, qs, ds = c[:, 0], c[:, 1], c[:, 2]
    qv, dv = float(p[0]), float(p[1])
    return {
        "diversity_at_matched_quality": _compare(
            dv, match_on_curve(ts, qs, ds, qv, diversity_higher_is_better, quality_higher_is_better), diversity_higher_is_better),
        "quality_at_matched_diversity": _compare(
            qv, match_on_curve(ts, ds, qs, dv, quality_higher_is_better, diversity_higher_is_better), quality_higher_is_better),
    }


# ---------------------------------------------------------------------------------------------
# Bootstrap


def _split(arm: Mapping, what: str) -> tuple[dict, dict]:
    """{seed: {prompt: (q, d)}} -> the quality arm and the diversity arm (None stays None)."""
    q: dict = {}
    d: dict = {}
    for s, values in arm.items():
        q[s], d[s] = {}, {}
        for pid, v in values.items():
            if v is None:
                q[s][pid] = d[s][pid] = None
                continue
            if not isinstance(v, (tuple, list)) or len(v) != 2:
                raise ValueError(f"{what}: seed {s!r} prompt {pid!r}: expected (quality, diversity), got {v!r}")
            q[s][pid], d[s][pid] = v
    return q, d


def _summary(point: dict, draws: list[dict], level: float, alpha: float, power: float) -> dict:
    inside = [r for r in draws if r["status"] == "inside"]
    below = sum(r["end"] == "below" for r in draws) / len(draws)
    above = sum(r["end"] == "above" for r in draws) / len(draws)
    out = {**point, "ci": None, "relative_ci": None, "se": None, "mde": None, "ci_half_width": None,
           "relative_half_width": None, "relative_se": None, "mde_relative": None,
           "outside_fraction": {"below": below, "above": above}, "ci_note": None}
    if point["status"] != "inside":
        out["ci_note"] = "no CI: the variant is outside the baseline curve"
        return out
    tail = (1 - level) / 2
    if below > tail or above > tail:
        out["ci_note"] = (f"no CI: the variant falls outside the baseline curve in {100 * (below + above):.1f}% of "
                          f"resamples ({100 * below:.1f}% below, {100 * above:.1f}% above), more than the "
                          f"{100 * tail:.1f}% a {level:.0%} CI may leave out on one side; evaluate the baseline at "
                          "more temperatures")
        return out
    g = np.array([r["gain"] for r in inside])
    lo, hi = np.quantile(g, [tail, 1 - tail])
    se = float(g.std(ddof=1))
    out.update(ci=[float(lo), float(hi)], ci_half_width=float(hi - lo) / 2, se=se, mde=mde_multiplier(alpha, power) * se)
    rel = [r["relative_gain"] for r in inside]
    if all(v is not None for v in rel):
        rel_lo, rel_hi = (float(x) for x in np.quantile(np.array(rel), [tail, 1 - tail]))
        rel_se = float(np.std(rel, ddof=1))
        out.update(relative_ci=[rel_lo, rel_hi], relative_half_width=(rel_hi - rel_lo) / 2, relative_se=rel_se,
                   mde_relative=mde_multiplier(alpha, power) * rel_se)
    if below + above > 0:
        out["ci_note"] = (f"{100 * (below + above):.1f}% of resamples fell outside the baseline curve and are not in "
                          "the CI")
    return out


def matched_gain_bootstrap(baseline: Mapping, variant: Mapping, prompts: Optional[Sequence[str]] = None,
                           resamples: int = 10000, seed: int = 0, level: float = 0.95,
                           quality_higher_is_better: bool = True, diversity_higher_is_better: bool = True,
                           two_level: bool = True, alpha: float = MDE_ALPHA, power: float = MDE_POWER) -> dict:
    """CIs of `matched_gain` from per-prompt values: `baseline` {temperature: {seed: {prompt_id:
    (quality, diversity)}}} (the same seeds at every temperature: they are the baseline's training
    seeds), `variant` {seed: {prompt_id: (quality, diversity)}}. Every resample draws the prompts
    once for every arm and temperature (paired), the baseline's seeds once for all its
    temperatures and the variant's seeds apart (`two_level=False`: seeds averaged per prompt,
    prompts alone resampled), recomputes the mean curve and the variant's mean point, and
    matches them. Percentile CIs of the gain and the relative gain over the resamples where the
    variant is inside the curve; no CI when more than (1 - level) / 2 of the resamples fall
    outside on one side (the gain is not defined there and dropping them would bias the CI).

    Returns {"point": matched_gain on the full means, "curve": [(T, quality, diversity)],
    "variant": (quality, diversity), one summary per axis (the point's keys plus ci,
    ci_half_width, se, mde of the gain; relative_ci, relative_half_width, relative_se,
    mde_relative of the relative gain; outside_fraction, ci_note), method, n_prompts, n_seeds,
    resamples, seed, level}."""
    if not baseline:
        raise ValueError("matched_gain_bootstrap: the baseline has no temperatures")
    temps = sorted(baseline, key=float)
    seeds = list(baseline[temps[0]])
    for t in temps:
        if sorted(map(str, baseline[t])) != sorted(map(str, seeds)):
            raise ValueError(f"matched_gain_bootstrap: baseline seeds differ between T = {temps[0]} ({sorted(map(str, seeds))}) "
                             f"and T = {t} ({sorted(map(str, baseline[t]))}); each temperature must evaluate the same seeds")
    arms = {t: _split({s: baseline[t][s] for s in seeds}, f"matched_gain_bootstrap: baseline T = {t}") for t in temps}
    vq, vd = _split(variant, "matched_gain_bootstrap: variant")
    if prompts is None:
        prompts = sorted({p for t in temps for s in seeds for p in baseline[t][s]} | {p for s in variant for p in variant[s]})
    prompts = list(prompts)
    if not prompts:
        raise ValueError("matched_gain_bootstrap: no prompts")
    base_mats = []
    for t in temps:
        for j, axis in enumerate(("quality", "diversity")):
            base_mats.append(arm_matrix(arms[t][j], prompts, f"matched_gain_bootstrap: baseline T = {t} {axis}"))
    var_mats = [arm_matrix(vq, prompts, "matched_gain_bootstrap: variant quality"),
                arm_matrix(vd, prompts, "matched_gain_bootstrap: variant diversity")]
    if not two_level:
        base_mats = [m.mean(axis=0, keepdims=True) for m in base_mats]
        var_mats = [m.mean(axis=0, keepdims=True) for m in var_mats]
    means_b, means_v = two_level_means([base_mats, var_mats], resamples, seed)

    def curve_of(vals: Sequence) -> list[tuple[float, float, float]]:
        return [(float(t), float(vals[2 * i]), float(vals[2 * i + 1])) for i, t in enumerate(temps)]

    kw = {"quality_higher_is_better": quality_higher_is_better, "diversity_higher_is_better": diversity_higher_is_better}
    curve = curve_of([m.mean() for m in base_mats])
    point_v = (float(var_mats[0].mean()), float(var_mats[1].mean()))
    point = matched_gain(curve, point_v, **kw)
    draws = [matched_gain(curve_of([m[r] for m in means_b]), (means_v[0][r], means_v[1][r]), **kw) for r in range(resamples)]
    out = {"point": point, "curve": curve, "variant": point_v}
    for axis in AXES:
        out[axis] = _summary(point[axis], [d[axis] for d in draws], level, alpha, power)
    out.update(method="two-level (seeds and prompts resampled)" if two_level else "pooled (seeds averaged per prompt)",
               n_prompts=len(prompts), n_seeds={"baseline": len(seeds), "variant": len(variant)}, resamples=resamples,
               seed=seed, level=level)
    return out
