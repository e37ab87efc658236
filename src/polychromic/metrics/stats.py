"""Paired statistics over prompts, and the prior system's decision tree.

Every comparison is paired: model and baseline are scored on the same prompts, and the unit of
resampling is the prompt (docs/metrics.md, "Statistics"). Never resample samples within
a prompt: a set metric on a resampled set sees duplicates and reports less diversity than there is.

No torch here (layering rule): numpy and scipy.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import stats as _scipy_stats

from polychromic.metrics.core import Undefined

EXACT_PERMUTATION_MAX_N = 16
"""Up to 2^16 = 65,536 sign patterns the sign-flip test enumerates them all (exact p)."""

_CHUNK = 1000  # resamples drawn at a time: memory O(chunk * n), not O(resamples * n)
_CACHE_MAX = 5_000_000  # resample matrices up to this many entries (40 MB) are kept for reuse


def _chunks(kind: str, n: int, resamples: int, seed: int) -> list[np.ndarray]:
    """The resampling plan for n prompts, in chunks of rows: kind 'boot' gives how many times each
    prompt is drawn in each bootstrap resample (rows sum to n), kind 'sign' gives +-1 sign flips.
    A report computes dozens of CIs and tests on the same n with the same seed, so the plan is
    made once and every statistic is a matrix-vector product (the same resamples for every
    metric, as a paired analysis wants)."""
    key = (kind, n, resamples, seed)
    if key in _PLANS:
        return _PLANS[key]
    rng = np.random.default_rng(seed)
    out, done = [], 0
    while done < resamples:
        m = min(_CHUNK, resamples - done)
        if kind == "boot":
            idx = rng.integers(0, n, size=(m, n)) + n * np.arange(m)[:, None]
            out.append(np.bincount(idx.ravel(), minlength=m * n).reshape(m, n).astype(np.float64))
        else:
            out.append(np.where(rng.random((m, n)) < 0.5, 1.0, -1.0))
        done += m
    if n * resamples <= _CACHE_MAX:
        if len(_PLANS) >= 4:  # a few plans at most (e.g. boot + sign for two prompt counts)
            del _PLANS[next(iter(_PLANS))]
        _PLANS[key] = out
    return out


_PLANS: dict[tuple, list[np.ndarray]] = {}


def _vector(x, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{what}: expected a 1-d sequence of per-prompt values, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{what}: no values")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what}: contains NaN or infinite values (drop excluded prompts first)")
    return a


def _bootstrap_means(columns: Sequence[np.ndarray], resamples: int, seed: int) -> list[np.ndarray]:
    """Means of each column over the same `resamples` resamplings of the prompt indices."""
    n = columns[0].size
    stacked = np.stack(columns, axis=1)  # (n, c)
    means = np.concatenate([w @ stacked for w in _chunks("boot", n, resamples, seed)]) / n
    return [means[:, j] for j in range(len(columns))]


def _ci(means: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_ci(a, resamples: int = 10000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap CI of the mean of per-prompt values (prompts resampled)."""
    a = _vector(a, "bootstrap_ci")
    (means,) = _bootstrap_means([a], resamples, seed)
    lo, hi = _ci(means, level)
    return {"n": int(a.size), "mean": float(a.mean()), "ci_low": lo, "ci_high": hi, "level": level,
            "resamples": resamples, "seed": seed}


def paired_bootstrap(a, b, resamples: int = 10000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired percentile bootstrap over prompts: a[i] and b[i] are two models' values on prompt i.
    One set of resampled prompt indices gives the CIs of mean_a, mean_b and diff = mean_a - mean_b
    (the diff's CI comes from the same resamples, so it accounts for the pairing)."""
    a = _vector(a, "paired_bootstrap: a")
    b = _vector(b, "paired_bootstrap: b")
    if a.size != b.size:
        raise ValueError(f"paired_bootstrap: {a.size} values in a but {b.size} in b (must be paired per prompt)")
    ma, mb, md = _bootstrap_means([a, b, a - b], resamples, seed)
    return {
        "n": int(a.size),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "diff": float((a - b).mean()),
        "ci_low": _ci(md, level)[0],
        "ci_high": _ci(md, level)[1],
        "ci_a": list(_ci(ma, level)),
        "ci_b": list(_ci(mb, level)),
        "level": level,
        "resamples": resamples,
        "seed": seed,
    }


def sign_flip_permutation_p(diffs, resamples: int = 10000, seed: int = 0) -> dict:
    """Two-sided paired sign-flip permutation test of mean(diffs) = 0: under the null each
    per-prompt difference is as likely to have the other sign. Exact (every sign pattern) for
    n <= EXACT_PERMUTATION_MAX_N, else Monte Carlo with p = (1 + hits) / (1 + resamples), which is
    never 0 and is a valid p-value."""
    d = _vector(diffs, "sign_flip_permutation_p")
    n = d.size
    observed = abs(d.mean())
    # a float tolerance so that sign patterns giving the same |mean| up to round-off count as ties
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if not np.any(d):
        return {"p": 1.0, "method": "exact", "n": n, "note": "all differences are zero"}
    if n <= EXACT_PERMUTATION_MAX_N:
        # row r of `signs` is the binary expansion of r: every one of the 2^n sign patterns once
        signs = 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        stats = np.abs(signs @ d) / n
        return {"p": float(np.mean(stats >= observed - tol)), "method": "exact", "n": n, "note": None}
    hits = sum(int(np.sum(np.abs(signs @ d) / n >= observed - tol)) for signs in _chunks("sign", n, resamples, seed))
    return {"p": (1 + hits) / (1 + resamples), "method": f"monte carlo ({resamples} sign flips, seed {seed})", "n": n,
            "note": None}


def wilcoxon_p(diffs) -> dict:
    """Two-sided Wilcoxon signed-rank test (scipy; zero differences dropped, Wilcox's method).
    All differences zero: p = 1.0 with a note (scipy would raise or return NaN)."""
    d = _vector(diffs, "wilcoxon_p")
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        return {"p": 1.0, "n_nonzero": 0, "note": "all differences are zero: no evidence of a difference"}
    res = _scipy_stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    p = float(res.pvalue)
    if not math.isfinite(p):
        raise ArithmeticError(f"wilcoxon_p: scipy returned p = {p} for {nonzero} non-zero differences")
    note = None if nonzero == d.size else f"{d.size - nonzero} zero differences dropped"
    return {"p": p, "n_nonzero": nonzero, "note": note}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order: the i-th smallest p (1-based) is
    multiplied by m - i + 1, then made monotone (running max) and capped at 1."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"holm: expected p-values in [0, 1], got {list(pvalues)}")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


def cohens_dz(diffs) -> float:
    """Standardised paired effect: mean(diffs) / sd(diffs, ddof = 1)."""
    d = _vector(diffs, "cohens_dz")
    if d.size < 2:
        raise Undefined("d_z needs at least 2 prompts")
    sd = float(d.std(ddof=1))
    if sd == 0:
        raise Undefined("d_z: every per-prompt difference is the same (sd = 0)")
    return float(d.mean()) / sd


def win_rate(a, b, higher_is_better: bool) -> dict:
    """Share of prompts on which a beats b (ties count half), with the raw counts."""
    a = _vector(a, "win_rate: a")
    b = _vector(b, "win_rate: b")
    if a.size != b.size:
        raise ValueError(f"win_rate: {a.size} values in a but {b.size} in b (must be paired per prompt)")
    if higher_is_better is None:
        raise ValueError("win_rate: the metric has no better direction (a control such as length)")
    better = a > b if higher_is_better else a < b
    ties = a == b
    wins, tied = int(better.sum()), int(ties.sum())
    return {"rate": (wins + 0.5 * tied) / a.size, "wins": wins, "ties": tied, "losses": int(a.size - wins - tied)}


def relative_gain(mean_model: float, mean_base: float, higher_is_better: bool) -> float:
    """Improvement of the model over the baseline as a fraction of |baseline| (0.25 = 25% better),
    signed so that positive is better whatever the metric's direction."""
    if higher_is_better is None:
        raise ValueError("relative_gain: the metric has no better direction (a control such as length)")
    if mean_base == 0:
        raise Undefined("relative gain: baseline mean is 0")
    change = (mean_model - mean_base) if higher_is_better else (mean_base - mean_model)
    return float(change / abs(mean_base))


# The prior system's publication decision tree (docs/metrics.md, "Statistics"), on the relative
# diversity gain of the declared primary metric.
MAIN_TRACK_GAIN = 0.25  # aggressive variant
WORKSHOP_GAIN = 0.15  # moderate variant; also the prior "success" criterion (any variant)
PREPRINT_GAIN = 0.08  # either variant


def model_role(name: str) -> Optional[str]:
    """'aggressive' or 'moderate' when the model's name contains that word (case-insensitive), as
    the prior runs were named (output/experiments/<variant>); None otherwise."""
    low = name.lower()
    if "aggressive" in low:
        return "aggressive"
    if "moderate" in low:
        return "moderate"
    return None


def decision_tree(gains: Mapping[str, Optional[float]]) -> dict:
    """The prior tree on relative gains (fractions) of the non-baseline models: an aggressive
    variant > 25% -> main track; else a moderate variant > 15% -> workshop; else either > 8% ->
    preprint; else negative result. Roles come from the names (`model_role`); with no model named
    aggressive or moderate the tree does not apply ('no verdict'). `success` is the prior
    criterion: some model > 15% better. Gains of None (undefined) are ignored and listed."""
    def fmt(g: float) -> str:
        return f"{100 * g:+.1f}%"

    defined = {m: g for m, g in gains.items() if g is not None}
    undefined = sorted(m for m, g in gains.items() if g is None)
    roles = {m: model_role(m) for m in defined}
    aggressive = {m: g for m, g in defined.items() if roles[m] == "aggressive"}
    moderate = {m: g for m, g in defined.items() if roles[m] == "moderate"}
    best = max(defined.items(), key=lambda kv: kv[1]) if defined else None
    out: dict = {"gains": dict(gains), "roles": {m: model_role(m) for m in gains}, "undefined": undefined,
                 "success": bool(best is not None and best[1] > WORKSHOP_GAIN)}

    def verdict(v: str, reason: str) -> dict:
        return {**out, "verdict": v, "reason": reason}

    if not aggressive and not moderate:
        seen = f"; largest gain {fmt(best[1])} ({best[0]})" if best else ""
        return verdict("no verdict", "the prior tree needs a model named '*aggressive*' or '*moderate*'; "
                       f"models compared: {', '.join(gains) or 'none'}{seen}")
    for m, g in sorted(aggressive.items(), key=lambda kv: -kv[1]):
        if g > MAIN_TRACK_GAIN:
            return verdict("main track", f"aggressive variant '{m}' gains {fmt(g)} > {fmt(MAIN_TRACK_GAIN)}")
    for m, g in sorted(moderate.items(), key=lambda kv: -kv[1]):
        if g > WORKSHOP_GAIN:
            return verdict("workshop", f"moderate variant '{m}' gains {fmt(g)} > {fmt(WORKSHOP_GAIN)} "
                           f"(no aggressive variant above {fmt(MAIN_TRACK_GAIN)})")
    either = {**aggressive, **moderate}
    m, g = max(either.items(), key=lambda kv: kv[1])
    if g > PREPRINT_GAIN:
        return verdict("preprint", f"'{m}' gains {fmt(g)} > {fmt(PREPRINT_GAIN)} (below the workshop and main-track bars)")
    return verdict("negative result", f"no aggressive or moderate variant gains more than {fmt(PREPRINT_GAIN)} "
                   f"(best: {m} {fmt(g)})")
