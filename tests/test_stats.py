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
