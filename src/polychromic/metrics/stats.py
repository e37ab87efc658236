"""Paired statistics over prompts, the two-level (seeds x prompts) bootstrap, and the prior
system's decision tree.

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


# ---------------------------------------------------------------------------------------------
# Seeds and prompts: the two-level bootstrap
#
# An arm (a model trained with several seeds) is {seed: {prompt_id: value}}. Averaging the seeds
# per prompt before a prompt bootstrap (`pooled_bootstrap`) treats the seeds as fixed: its CI
# says how sure we are about THESE adapters, not about the training recipe, and a recipe whose
# seeds scatter looks as certain as one whose seeds agree. `two_level_bootstrap` also resamples
# the seeds: in each resample the prompts are drawn with replacement once (shared by the arms, so
# the comparison stays paired per prompt) and each arm's seeds are drawn with replacement
# independently (the arms' seeds are different training runs). This is Owen's pigeonhole
# bootstrap for a crossed seeds x prompts design (Owen 2007, Ann. Appl. Stat. 1(2)), which is
# mildly conservative (the seed x prompt interaction is counted at both levels). With one seed
# per arm the seed level contributes nothing and both methods coincide; the result says so.

MDE_ALPHA = 0.05
MDE_POWER = 0.8


def mde_multiplier(alpha: float = MDE_ALPHA, power: float = MDE_POWER) -> float:
    """z_(1 - alpha/2) + z_power: the minimum detectable effect of a two-sided test at level alpha
    with the given power is this many standard errors (normal approximation, the far tail
    ignored); 1.960 + 0.842 = 2.80 for alpha 0.05 and 80% power."""
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"mde_multiplier: alpha and power must be in (0, 1), got {alpha}, {power}")
    return float(_scipy_stats.norm.ppf(1 - alpha / 2) + _scipy_stats.norm.ppf(power))


def common_prompts(*arms: Mapping) -> list[str]:
    """Sorted prompt ids with a finite value in every seed of every arm: the prompts a paired
    seeds x prompts comparison can use (an excluded metric is None on some prompts)."""
    sets = []
    for arm in arms:
        if not arm:
            raise ValueError("common_prompts: an arm has no seeds")
        for values in arm.values():
            sets.append({p for p, v in values.items() if v is not None and math.isfinite(float(v))})
    return sorted(set.intersection(*sets)) if sets else []


def arm_matrix(arm: Mapping, prompts: Sequence[str], what: str) -> np.ndarray:
    """(seeds, prompts) array of an arm {seed: {prompt_id: value}}, seeds in the arm's order.
    Every seed must have a finite value for every prompt (restrict to `common_prompts` first)."""
    if not arm:
        raise ValueError(f"{what}: no seeds")
    rows = []
    for s, values in arm.items():
        missing = [p for p in prompts if p not in values or values[p] is None]
        if missing:
            raise ValueError(f"{what}: seed {s!r} has no value for {len(missing)} of {len(prompts)} prompt(s) "
                             f"(e.g. {missing[:3]}); restrict the comparison to common_prompts(...)")
        rows.append([float(values[p]) for p in prompts])
    mat = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(mat)):
        bad = [(s, p) for (i, s) in enumerate(arm) for j, p in enumerate(prompts) if not math.isfinite(mat[i, j])]
        raise ValueError(f"{what}: NaN or infinite values at (seed, prompt) {bad[:3]}")
    return mat


def two_level_means(groups: Sequence[Sequence[np.ndarray]], resamples: int, seed: int) -> list[list[np.ndarray]]:
    """Resampled means of (seeds, prompts) matrices. The prompts are resampled once per resample
    for every matrix (the same plan as `paired_bootstrap`, so one seed gives exactly its numbers);
    the seeds once per resample and group: the matrices of one group are the same seeds (one
    arm's metrics, or one arm at several temperatures), different groups are independent arms.
    Returns, per group and matrix, the `resamples` means."""
    if not groups or any(not g for g in groups):
        raise ValueError("two_level_means: every group needs at least one matrix")
    n = groups[0][0].shape[1]
    for g in groups:
        for m in g:
            if m.ndim != 2 or m.shape[1] != n or m.shape[0] != g[0].shape[0]:
                raise ValueError(f"two_level_means: shapes {[x.shape for x in g]} do not share the group's seeds "
                                 f"and the {n} prompts")
    rng = np.random.default_rng([seed, 2])  # a stream apart from the prompt plan's
    seed_counts = []
    for g in groups:
        s = g[0].shape[0]
        idx = rng.integers(0, s, size=(resamples, s)) + s * np.arange(resamples)[:, None]
        seed_counts.append(np.bincount(idx.ravel(), minlength=resamples * s).reshape(resamples, s).astype(np.float64))
    out: list[list[list[np.ndarray]]] = [[[] for _ in g] for g in groups]
    done = 0
    for w in _chunks("boot", n, resamples, seed):
        rows = slice(done, done + w.shape[0])
        for gi, g in enumerate(groups):
            c = seed_counts[gi][rows]
            for mi, m in enumerate(g):
                x = m @ w.T  # (seeds, chunk): each seed's sum over the resampled prompts
                out[gi][mi].append(np.einsum("rs,sr->r", c, x) / (m.shape[0] * n))
        done += w.shape[0]
    return [[np.concatenate(parts) for parts in g] for g in out]


def _delta_summary(ma: np.ndarray, mb: np.ndarray, mean_a: float, mean_b: float, level: float, alpha: float,
                   power: float) -> dict:
    d = ma - mb
    lo, hi = _ci(d, level)
    se = float(d.std(ddof=1))
    mde = mde_multiplier(alpha, power) * se
    out = {"mean_a": mean_a, "mean_b": mean_b, "delta": mean_a - mean_b, "ci": [lo, hi], "ci_half_width": (hi - lo) / 2,
           "se": se, "mde": mde, "level": level, "alpha": alpha, "power": power}
    if mean_b == 0 or np.any(mb == 0):
        out.update(relative_delta=None, relative_ci=None, mde_relative=None,
                   relative_note="undefined: the baseline mean is 0 (in the data or in a resample)")
    else:
        out.update(relative_delta=(mean_a - mean_b) / abs(mean_b), relative_ci=list(_ci(d / np.abs(mb), level)),
                   mde_relative=mde / abs(mean_b), relative_note=None)
    return out


def _arms(a: Mapping, b: Mapping, prompts: Optional[Sequence[str]], what: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    if prompts is None:
        prompts = sorted({p for values in list(a.values()) + list(b.values()) for p in values})
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{what}: no prompts")
    return prompts, arm_matrix(a, prompts, f"{what}: a"), arm_matrix(b, prompts, f"{what}: b")


def two_level_bootstrap(a: Mapping, b: Mapping, prompts: Optional[Sequence[str]] = None, resamples: int = 10000,
                        seed: int = 0, level: float = 0.95, alpha: float = MDE_ALPHA, power: float = MDE_POWER) -> dict:
    """Mean difference a - b of two arms {seed: {prompt_id: value}} with a percentile CI from the
    two-level bootstrap (prompts shared and paired, each arm's seeds independently), the relative
    difference (a - b) / |b| and its CI, the CI half-width, the bootstrap standard error and the
    minimum detectable effect `mde` = mde_multiplier(alpha, power) x se (2.80 x se for alpha 0.05,
    power 0.8): a true difference smaller than this is likely to be missed by this design. `prompts`
    restricts the comparison (default: all prompts, each of which every seed must have). The
    point estimate weighs every (seed, prompt) equally, as `pooled_bootstrap` does."""
    prompts, ma, mb = _arms(a, b, prompts, "two_level_bootstrap")
    (ra,), (rb,) = two_level_means([[ma], [mb]], resamples, seed)
    out = _delta_summary(ra, rb, float(ma.mean()), float(mb.mean()), level, alpha, power)
    single = [x for x, m in (("a", ma), ("b", mb)) if m.shape[0] == 1]
    note = (f"arm(s) {', '.join(single)} have one seed: seed variation is not in the CI" if single else None)
    return {"method": "two-level (seeds and prompts resampled)", "n_prompts": len(prompts), "n_seeds_a": ma.shape[0],
            "n_seeds_b": mb.shape[0], **out, "resamples": resamples, "seed": seed, "note": note}


def pooled_bootstrap(a: Mapping, b: Mapping, prompts: Optional[Sequence[str]] = None, resamples: int = 10000,
                     seed: int = 0, level: float = 0.95, alpha: float = MDE_ALPHA, power: float = MDE_POWER) -> dict:
    """The same comparison with each arm's seeds averaged per prompt first and only the prompts
    resampled (`paired_bootstrap`'s plan): the CI of these adapters, seed variation ignored.
    Same keys as `two_level_bootstrap`, so a report can show both side by side."""
    prompts, ma, mb = _arms(a, b, prompts, "pooled_bootstrap")
    pa, pb = ma.mean(axis=0), mb.mean(axis=0)
    ra, rb = _bootstrap_means([pa, pb], resamples, seed)
    out = _delta_summary(ra, rb, float(pa.mean()), float(pb.mean()), level, alpha, power)
    return {"method": "pooled (seeds averaged per prompt, prompts resampled)", "n_prompts": len(prompts),
            "n_seeds_a": ma.shape[0], "n_seeds_b": mb.shape[0], **out, "resamples": resamples, "seed": seed,
            "note": "seed variation is not in the CI"}


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


def decision_tree(gains: Mapping[str, Optional[float]], roles: Optional[Mapping[str, Optional[str]]] = None) -> dict:
    """The prior tree on relative gains (fractions) of the non-baseline models: an aggressive
    variant > 25% -> main track; else a moderate variant > 15% -> workshop; else either > 8% ->
    preprint; else negative result. Roles are declared (`roles`: model -> 'aggressive' /
    'moderate' / other or None), else they come from the names (`model_role`); with no aggressive
    or moderate model the tree does not apply ('no verdict'). `success` is the prior criterion:
    some model > 15% better. Gains of None (undefined) are ignored and listed."""
    def fmt(g: float) -> str:
        return f"{100 * g:+.1f}%"

    declared = dict(roles) if roles is not None else {}
    role_of = {m: declared[m] if m in declared else model_role(m) for m in gains}
    defined = {m: g for m, g in gains.items() if g is not None}
    undefined = sorted(m for m, g in gains.items() if g is None)
    aggressive = {m: g for m, g in defined.items() if role_of[m] == "aggressive"}
    moderate = {m: g for m, g in defined.items() if role_of[m] == "moderate"}
    best = max(defined.items(), key=lambda kv: kv[1]) if defined else None
    out: dict = {"gains": dict(gains), "roles": role_of, "undefined": undefined,
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
