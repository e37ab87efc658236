"""polychromic.metrics.stats: bootstrap CIs, permutation / Wilcoxon p-values, Holm, effect sizes, and the
prior decision tree."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from polychromic.metrics import stats as S
from polychromic.metrics import Undefined


def test_bootstrap_ci_known_case_and_coverage():
    rng = np.random.default_rng(0)
    a = rng.normal(5.0, 1.0, size=400)
    ci = S.bootstrap_ci(a, resamples=4000, seed=1)
    assert ci["mean"] == pytest.approx(a.mean())
    assert ci["ci_low"] < 5.0 < ci["ci_high"]
    # percentile CI width ~ 2 * 1.96 * sd / sqrt(n)
    assert ci["ci_high"] - ci["ci_low"] == pytest.approx(2 * 1.96 * a.std(ddof=1) / np.sqrt(400), rel=0.1)
    # coverage of the true mean over many data sets is close to 95%
    covered = 0
    for i in range(200):
        x = rng.exponential(2.0, size=60)
        c = S.bootstrap_ci(x, resamples=1000, seed=i)
        covered += c["ci_low"] <= 2.0 <= c["ci_high"]
    assert 0.85 <= covered / 200 <= 0.99
    # same seed, same CI (recorded in results.json, so reports are reproducible)
    assert S.bootstrap_ci(a, resamples=500, seed=3) == S.bootstrap_ci(a, resamples=500, seed=3)


def test_paired_bootstrap_uses_the_pairing():
    rng = np.random.default_rng(1)
    prompt_effect = rng.normal(0, 3, size=100)  # prompts differ a lot; the models differ by 0.5
    a = prompt_effect + 0.5 + rng.normal(0, 0.2, size=100)
    b = prompt_effect + rng.normal(0, 0.2, size=100)
    r = S.paired_bootstrap(a, b, resamples=3000, seed=0)
    assert r["diff"] == pytest.approx(np.mean(a - b))
    assert r["mean_a"] == pytest.approx(a.mean()) and r["mean_b"] == pytest.approx(b.mean())
    assert r["ci_low"] < 0.5 < r["ci_high"]
    assert r["ci_low"] > 0  # paired: the prompt effect cancels, so the difference is clear
    # the unpaired CIs of the two means overlap heavily
    assert r["ci_a"][0] < r["ci_b"][1]
    with pytest.raises(ValueError, match="must be paired"):
        S.paired_bootstrap([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        S.paired_bootstrap([1, np.nan], [1, 2])


def test_sign_flip_exact_known_answer():
    # 2^3 sign patterns; |mean| >= 2 only for (+,+,+) and (-,-,-)
    r = S.sign_flip_permutation_p([1.0, 2.0, 3.0])
    assert r["method"] == "exact" and r["p"] == pytest.approx(2 / 8)
    assert S.sign_flip_permutation_p([0.0, 0.0, 0.0])["p"] == 1.0


def test_sign_flip_clear_effect_and_null():
    rng = np.random.default_rng(2)
    effect = rng.normal(0.5, 1.0, size=200)
    assert S.sign_flip_permutation_p(effect, resamples=5000, seed=0)["p"] < 0.01
    # under the null, p-values are roughly uniform: about 5% fall under 0.05
    ps = np.array([S.sign_flip_permutation_p(rng.normal(0, 1, size=30), resamples=400, seed=i)["p"] for i in range(300)])
    assert 0.01 <= np.mean(ps < 0.05) <= 0.11
    assert 0.4 <= np.mean(ps < 0.5) <= 0.6
    # the exact test on a small sample is also calibrated
    ps_small = np.array([S.sign_flip_permutation_p(rng.normal(0, 1, size=10))["p"] for _ in range(300)])
    assert 0.01 <= np.mean(ps_small < 0.05) <= 0.11


def test_wilcoxon_matches_scipy_and_handles_all_zero():
    d = np.array([0.5, -0.2, 1.1, 0.9, 0.0, 0.3, 0.7, -0.1, 0.4, 0.6])
    r = S.wilcoxon_p(d)
    assert r["p"] == pytest.approx(scipy_stats.wilcoxon(d, zero_method="wilcox").pvalue)
    assert r["n_nonzero"] == 9 and "1 zero differences dropped" in r["note"]
    z = S.wilcoxon_p([0.0, 0.0, 0.0])
    assert z["p"] == 1.0 and "all differences are zero" in z["note"]


def test_holm_known_input():
    assert S.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert S.holm([0.5, 0.01]) == pytest.approx([0.5, 0.02])
    assert S.holm([0.04]) == [0.04]
    assert S.holm([0.3, 0.4, 0.9]) == pytest.approx([0.9, 0.9, 0.9])
    assert S.holm([]) == []
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        S.holm([0.2, 1.5])


def test_effect_sizes():
    assert S.cohens_dz([1.0, 2.0, 3.0]) == pytest.approx(2.0)
    with pytest.raises(Undefined, match="sd = 0"):
        S.cohens_dz([1.0, 1.0, 1.0])
    w = S.win_rate([3, 2, 1, 5], [1, 2, 2, 4], higher_is_better=True)
    assert w == {"rate": pytest.approx(2.5 / 4), "wins": 2, "ties": 1, "losses": 1}
    assert S.win_rate([3, 2, 1, 5], [1, 2, 2, 4], higher_is_better=False)["wins"] == 1
    with pytest.raises(ValueError, match="no better direction"):
        S.win_rate([1], [2], higher_is_better=None)
    assert S.relative_gain(0.6, 0.5, True) == pytest.approx(0.2)
    assert S.relative_gain(0.4, 0.5, False) == pytest.approx(0.2)  # Self-BLEU fell: 20% better
    assert S.relative_gain(0.6, 0.5, False) == pytest.approx(-0.2)
    with pytest.raises(Undefined, match="baseline mean is 0"):
        S.relative_gain(0.1, 0.0, True)


def test_decision_tree_branches():
    assert S.decision_tree({"aggressive_l2": 0.30, "moderate_l1": 0.10})["verdict"] == "main track"
    r = S.decision_tree({"aggressive_l2": 0.20, "moderate_l1": 0.16})
    assert r["verdict"] == "workshop" and "moderate_l1" in r["reason"] and r["success"]
    assert S.decision_tree({"Aggressive": 0.09, "Moderate": 0.01})["verdict"] == "preprint"
    assert S.decision_tree({"aggressive": 0.12})["verdict"] == "preprint"
    r = S.decision_tree({"aggressive": 0.05, "moderate": -0.3})
    assert r["verdict"] == "negative result" and not r["success"]
    # 25% exactly is not "> 25%"
    assert S.decision_tree({"aggressive": 0.25, "moderate": 0.0})["verdict"] == "preprint"
    r = S.decision_tree({"demo_polychromic": 0.4, "base": -0.1})
    assert r["verdict"] == "no verdict" and "aggressive" in r["reason"] and r["success"]
    r = S.decision_tree({"aggressive": None, "moderate": 0.2})
    assert r["verdict"] == "workshop" and r["undefined"] == ["aggressive"]
    assert S.model_role("qwen3-8b-AGGRESSIVE-lambda2") == "aggressive" and S.model_role("baseline") is None


# --------------------------------------------------------------------------------------------
# Seeds x prompts: two-level and pooled bootstrap


def _arm(values):
    """{seed: {prompt_id: value}} from a (seeds, prompts) array."""
    return {f"s{i}": {f"p{j:03d}": float(v) for j, v in enumerate(row)} for i, row in enumerate(np.asarray(values))}


def test_two_level_equals_pooled_without_seed_variance():
    rng = np.random.default_rng(0)
    prompt = rng.normal(0, 1, size=80)
    a = _arm(np.tile(prompt + 0.3 + rng.normal(0, 0.2, 80), (3, 1)))  # 3 identical seeds
    b = _arm(np.tile(prompt + rng.normal(0, 0.2, 80), (4, 1)))
    two = S.two_level_bootstrap(a, b, resamples=3000, seed=5)
    pooled = S.pooled_bootstrap(a, b, resamples=3000, seed=5)
    assert two["delta"] == pytest.approx(pooled["delta"]) and two["n_seeds_a"] == 3 and two["n_seeds_b"] == 4
    assert two["ci"] == pytest.approx(pooled["ci"], abs=1e-12)  # same prompt plan: equal, not just close
    assert two["se"] == pytest.approx(pooled["se"], rel=1e-9)
    # and the pooled one is paired_bootstrap on the seed means
    pb = S.paired_bootstrap(np.asarray(list(a["s0"].values())), np.asarray(list(b["s0"].values())), resamples=3000, seed=5)
    assert pooled["ci"] == pytest.approx([pb["ci_low"], pb["ci_high"]])


def test_two_level_ci_widens_with_seed_variance_by_the_known_amount():
    """value[s, p] = u_s + v_p: the prompt part cancels in the paired difference, so the two-level
    bootstrap variance of the difference is the bootstrap variance of the two seed means,
    var_pop(u_a) / S_a + var_pop(u_b) / S_b, while the pooled bootstrap sees no uncertainty."""
    rng = np.random.default_rng(1)
    v = rng.normal(0, 1, size=60)
    u_a, u_b = np.array([0.0, 0.4, 1.1, 0.5, 0.2]), np.array([0.1, -0.3, 0.6, 0.0])
    a, b = _arm(u_a[:, None] + v), _arm(u_b[:, None] + v)
    two = S.two_level_bootstrap(a, b, resamples=20000, seed=0)
    pooled = S.pooled_bootstrap(a, b, resamples=20000, seed=0)
    assert two["delta"] == pytest.approx(u_a.mean() - u_b.mean())
    assert pooled["ci_half_width"] == pytest.approx(0, abs=1e-12)
    assert two["se"] == pytest.approx(np.sqrt(u_a.var() / 5 + u_b.var() / 4), rel=0.03)
    assert two["ci_half_width"] > 0.2
    # seed variance on top of prompt noise: wider than pooled
    noise = rng.normal(0, 0.3, size=(5, 60))
    two = S.two_level_bootstrap(_arm(u_a[:, None] + v + noise), b, resamples=4000, seed=0)
    pooled = S.pooled_bootstrap(_arm(u_a[:, None] + v + noise), b, resamples=4000, seed=0)
    assert two["ci_half_width"] > 1.5 * pooled["ci_half_width"]
    assert two["note"] is None and "not in the CI" in pooled["note"]


def test_mde_formula_and_relative_delta():
    assert S.mde_multiplier() == pytest.approx(1.959964 + 0.841621, abs=1e-5)  # the "2.8 x SE" rule
    assert S.mde_multiplier(0.05, 0.9) == pytest.approx(1.959964 + 1.281552, abs=1e-5)
    rng = np.random.default_rng(2)
    n = 400
    d = rng.normal(0.1, 1.0, size=n)
    b_vals = 5 + rng.normal(0, 1, size=n)
    r = S.two_level_bootstrap(_arm([b_vals + d]), _arm([b_vals]), resamples=8000, seed=3)
    assert "one seed" in r["note"]
    # one seed per arm: the SE is the prompt bootstrap's, sd(d) / sqrt(n) (population sd)
    assert r["se"] == pytest.approx(d.std() / np.sqrt(n), rel=0.05)
    assert r["mde"] == pytest.approx(S.mde_multiplier() * r["se"], rel=1e-12)
    assert r["mde_relative"] == pytest.approx(r["mde"] / abs(b_vals.mean()))
    assert r["relative_delta"] == pytest.approx(d.mean() / b_vals.mean())
    assert r["relative_ci"][0] < r["relative_delta"] < r["relative_ci"][1]
    assert r["ci"][0] < r["delta"] < r["ci"][1] and r["ci_half_width"] == pytest.approx((r["ci"][1] - r["ci"][0]) / 2)
    zero = S.two_level_bootstrap(_arm([[1.0, 2.0]]), _arm([[0.0, 0.0]]), resamples=100)
    assert zero["relative_delta"] is None and "baseline mean is 0" in zero["relative_note"]


def test_two_level_input_errors_and_common_prompts():
    a = {"s0": {"p1": 1.0, "p2": 2.0, "p3": None}, "s1": {"p1": 1.5, "p2": 2.5, "p3": 3.0}}
    b = {"s0": {"p1": 0.0, "p2": float("nan"), "p3": 1.0}}
    assert S.common_prompts(a, b) == ["p1"]
    with pytest.raises(ValueError, match=r"seed 's0' has no value for 1 of 3 prompt\(s\).*common_prompts"):
        S.two_level_bootstrap(a, b)
    with pytest.raises(ValueError, match="NaN or infinite"):
        S.two_level_bootstrap(a, b, prompts=["p1", "p2"])
    r = S.two_level_bootstrap(a, b, prompts=S.common_prompts(a, b), resamples=200)
    assert r["n_prompts"] == 1 and r["delta"] == pytest.approx(1.25)
    with pytest.raises(ValueError, match="no seeds"):
        S.two_level_bootstrap({}, b)
