"""polychromic.metrics.frontier: gains over the baseline's temperature curve at matched quality
and matched diversity, with known answers on a linear curve, the envelope of a curve that turns
back, lower-is-better quality, no extrapolation, and the two-level bootstrap of the gains."""

from __future__ import annotations

import numpy as np
import pytest

from polychromic.metrics import frontier as F

TEMPS = (0.5, 0.7, 0.9, 1.1)


def linear_curve(temps=TEMPS):
    """quality = 1 - 0.5 T, diversity = 0.4 + 0.3 T."""
    return [(t, 1 - 0.5 * t, 0.4 + 0.3 * t) for t in temps]


def test_known_answer_on_a_linear_curve():
    # the variant (q 0.6, d 0.7): at q = 0.6 the baseline runs at T = 0.8 with d = 0.64; at d = 0.7
    # it runs at T = 1.0 with q = 0.5
    r = F.matched_gain(linear_curve(), (0.6, 0.7))
    d = r["diversity_at_matched_quality"]
    assert d["status"] == "inside" and d["end"] is None and d["monotone"] and d["segments"] == 1
    assert d["matched"] == pytest.approx(0.64) and d["temperature"] == pytest.approx(0.8)
    assert d["temperatures"] == [0.7, 0.9]
    assert d["gain"] == pytest.approx(0.06) and d["relative_gain"] == pytest.approx(0.7 / 0.64 - 1)
    q = r["quality_at_matched_diversity"]
    assert q["matched"] == pytest.approx(0.5) and q["temperature"] == pytest.approx(1.0) and q["temperatures"] == [0.9, 1.1]
    assert q["gain"] == pytest.approx(0.1) and q["relative_gain"] == pytest.approx(0.2)
    # the order of the points does not matter; a point on the curve gains nothing
    assert F.matched_gain(linear_curve()[::-1], (0.6, 0.7)) == r
    on = F.matched_gain(linear_curve(), (1 - 0.5 * 0.8, 0.4 + 0.3 * 0.8))
    assert on["diversity_at_matched_quality"]["gain"] == pytest.approx(0, abs=1e-12)
    assert on["quality_at_matched_diversity"]["gain"] == pytest.approx(0, abs=1e-12)
    # exactly on a baseline point: two segments meet there, one value
    v = F.matched_gain(linear_curve(), (0.65, 0.61))["diversity_at_matched_quality"]
    assert v["matched"] == pytest.approx(0.61) and v["temperature"] == pytest.approx(0.7)


def test_outside_the_curve_is_not_extrapolated():
    r = F.matched_gain(linear_curve(), (0.8, 0.5))  # better quality than the coldest baseline (0.75)
    d = r["diversity_at_matched_quality"]
    assert d["status"] == "outside" and d["end"] == "above" and d["end_temperature"] == 0.5
    assert d["gain"] is None and d["matched"] is None and "no extrapolation" in d["note"]
    q = r["quality_at_matched_diversity"]  # d = 0.5 is below the coldest baseline's 0.55
    assert q["status"] == "outside" and q["end"] == "below" and q["end_temperature"] == 0.5
    r = F.matched_gain(linear_curve(), (0.3, 0.9))
    assert r["diversity_at_matched_quality"]["end"] == "below" and r["diversity_at_matched_quality"]["end_temperature"] == 1.1
    assert r["quality_at_matched_diversity"]["end"] == "above"


def test_lower_is_better_quality_reference_nll():
    """Reference NLL rises with T: nll = 2 + T, diversity = 0.4 + 0.3 T. The variant (nll 2.9,
    d 0.7): at nll 2.9 the baseline (T = 0.9) has d = 0.67, gain +0.03; at d = 0.7 (T = 1.0) the
    baseline's NLL is 3.0, and the variant's 2.9 is 0.1 better: gain +0.1, relative 0.1 / 3."""
    curve = [(t, 2 + t, 0.4 + 0.3 * t) for t in TEMPS]
    r = F.matched_gain(curve, (2.9, 0.7), quality_higher_is_better=False)
    assert r["diversity_at_matched_quality"]["gain"] == pytest.approx(0.03)
    q = r["quality_at_matched_diversity"]
    assert q["matched"] == pytest.approx(3.0) and q["difference"] == pytest.approx(-0.1)
    assert q["gain"] == pytest.approx(0.1) and q["relative_gain"] == pytest.approx(0.1 / 3)
    # a worse NLL at that diversity is a negative gain
    assert F.matched_gain(curve, (3.2, 0.7), quality_higher_is_better=False)["quality_at_matched_diversity"]["gain"] \
        == pytest.approx(-0.2)
    # a lower-is-better diversity (Self-BLEU falls with T: 0.9 - 0.5 T): d_v = 0.4 at q = 0.6 (T 0.8,
    # baseline 0.5) is 0.1 better
    sb = [(t, 1 - 0.5 * t, 0.9 - 0.5 * t) for t in TEMPS]
    d = F.matched_gain(sb, (0.6, 0.4), diversity_higher_is_better=False)["diversity_at_matched_quality"]
    assert d["matched"] == pytest.approx(0.5) and d["gain"] == pytest.approx(0.1) and d["relative_gain"] == pytest.approx(0.2)


def test_a_curve_that_turns_back_uses_the_best_crossing():
    """Quality rises then falls with T: q = 0.6 is crossed twice, between T 0.5-0.7 (d 0.5 -> 0.6,
    at q 0.6: d = 0.55) and between T 0.9-1.1 (d 0.7 -> 0.8, at q 0.6: d = 0.75). The variant is
    compared with the better crossing, 0.75 (the upper envelope)."""
    curve = [(0.5, 0.5, 0.5), (0.7, 0.7, 0.6), (0.9, 0.7, 0.7), (1.1, 0.5, 0.8)]
    d = F.matched_gain(curve, (0.6, 0.8))["diversity_at_matched_quality"]
    assert not d["monotone"] and d["segments"] == 2
    assert d["matched"] == pytest.approx(0.75) and d["temperatures"] == [0.9, 1.1] and d["temperature"] == pytest.approx(1.0)
    assert d["gain"] == pytest.approx(0.05)
    # a flat segment at the variant's quality: the better end counts
    d = F.matched_gain(curve, (0.7, 0.8))["diversity_at_matched_quality"]
    assert d["matched"] == pytest.approx(0.7) and d["temperature"] == pytest.approx(0.9)


def test_a_hotter_baseline_that_is_better_in_quality_and_diversity_is_the_match():
    """Tempered reference NLL of a too-sharp model falls (improves) with T: nll = 3.5 - T,
    diversity = 0.4 + 0.3 T. The variant (nll 2.9, d 0.7) crosses the curve at T = 0.6 (d 0.58),
    but T = 1.1 has both a better NLL (2.4) and more diversity (0.73): the match is that point,
    and the variant's diversity gain is 0.7 - 0.73 = -0.03, not +0.12. At d = 0.7 the crossing is
    T = 1.0 (nll 2.5), and T = 1.1 is as diverse with nll 2.4: quality gain -(2.9 - 2.4) = -0.5."""
    curve = [(t, 3.5 - t, 0.4 + 0.3 * t) for t in TEMPS]
    r = F.matched_gain(curve, (2.9, 0.7), quality_higher_is_better=False)
    d = r["diversity_at_matched_quality"]
    assert d["status"] == "inside" and d["envelope"] and d["segments"] == 1
    assert d["matched"] == pytest.approx(0.73) and d["temperature"] == pytest.approx(1.1) and d["temperatures"] == [1.1, 1.1]
    assert d["gain"] == pytest.approx(-0.03) and d["relative_gain"] == pytest.approx(0.7 / 0.73 - 1)
    q = r["quality_at_matched_diversity"]
    assert q["envelope"] and q["matched"] == pytest.approx(2.4) and q["gain"] == pytest.approx(-0.5)
    # where quality falls with T (the usual trade-off) the crossing is the match: no envelope
    u = F.matched_gain(linear_curve(), (0.6, 0.7))
    assert not u["diversity_at_matched_quality"]["envelope"] and not u["quality_at_matched_diversity"]["envelope"]
    # a variant better than every baseline point in quality is still outside (nothing to compare)
    assert F.matched_gain(curve, (2.3, 0.7), quality_higher_is_better=False)["diversity_at_matched_quality"]["status"] == "outside"


def test_bad_curves_are_errors():
    with pytest.raises(ValueError, match="at least 2 temperatures"):
        F.matched_gain([(0.7, 0.5, 0.5)], (0.5, 0.5))
    with pytest.raises(ValueError, match="temperatures repeat"):
        F.matched_gain([(0.7, 0.5, 0.5), (0.7, 0.6, 0.4)], (0.5, 0.5))
    with pytest.raises(ValueError, match="NaN"):
        F.matched_gain([(0.7, 0.5, float("nan")), (0.9, 0.6, 0.4)], (0.5, 0.5))
    with pytest.raises(ValueError, match="point must be"):
        F.matched_gain(linear_curve(), (0.5,))


# --------------------------------------------------------------------------------------------
# Bootstrap


def per_prompt(curve_point, n_prompts, n_seeds, rng, prompt_sd=0.0, seed_sd=0.0):
    """{seed: {prompt_id: (q, d)}} whose mean over seeds and prompts is exactly `curve_point`:
    prompt and seed effects are centred."""
    q0, d0 = curve_point
    pe = rng.normal(0, prompt_sd, size=(n_prompts, 2))
    pe -= pe.mean(axis=0)
    se = rng.normal(0, seed_sd, size=(n_seeds, 2))
    se -= se.mean(axis=0)
    return {f"s{s}": {f"p{p:03d}": (q0 + pe[p, 0] + se[s, 0], d0 + pe[p, 1] + se[s, 1]) for p in range(n_prompts)}
            for s in range(n_seeds)}


def test_bootstrap_point_is_the_hand_computed_gain_and_the_ci_covers_it():
    rng = np.random.default_rng(0)
    baseline = {t: per_prompt((q, d), 60, 3, np.random.default_rng(int(t * 10)), prompt_sd=0.05, seed_sd=0.01)
                for t, q, d in linear_curve()}
    # seeds must be the same at every temperature, prompts the same everywhere; per-prompt noise
    # is different per temperature (independent rngs), means are exact
    variant = per_prompt((0.6, 0.7), 60, 2, rng, prompt_sd=0.05, seed_sd=0.01)
    r = F.matched_gain_bootstrap(baseline, variant, resamples=1500, seed=1)
    d, q = r["diversity_at_matched_quality"], r["quality_at_matched_diversity"]
    assert d["gain"] == pytest.approx(0.06) and d["relative_gain"] == pytest.approx(0.7 / 0.64 - 1)
    assert q["gain"] == pytest.approx(0.1)
    assert d["ci"][0] < 0.06 < d["ci"][1] and q["ci"][0] < 0.1 < q["ci"][1]
    assert d["relative_ci"][0] < d["relative_gain"] < d["relative_ci"][1]
    assert d["mde"] == pytest.approx(2.8016 * d["se"], rel=1e-3) and d["ci_note"] is None
    assert d["relative_half_width"] == pytest.approx((d["relative_ci"][1] - d["relative_ci"][0]) / 2)
    assert d["mde_relative"] == pytest.approx(2.8016 * d["relative_se"], rel=1e-3)
    assert d["relative_se"] == pytest.approx(d["se"] / 0.64, rel=0.1)  # relative = gain / a nearly fixed 0.64
    assert r["n_prompts"] == 60 and r["n_seeds"] == {"baseline": 3, "variant": 2}
    assert r["curve"][1] == pytest.approx((0.7, 0.65, 0.61))
    # seed variation widens the two-level CI over the pooled one
    noisy_v = per_prompt((0.6, 0.7), 60, 4, np.random.default_rng(5), prompt_sd=0.05, seed_sd=0.1)
    two = F.matched_gain_bootstrap(baseline, noisy_v, resamples=1500, seed=1)
    pooled = F.matched_gain_bootstrap(baseline, noisy_v, resamples=1500, seed=1, two_level=False)
    for axis in F.AXES:  # the same point estimate, up to round-off
        assert two["point"][axis]["gain"] == pytest.approx(pooled["point"][axis]["gain"], abs=1e-12)
    assert two["diversity_at_matched_quality"]["ci_half_width"] > 1.3 * pooled["diversity_at_matched_quality"]["ci_half_width"]
    assert pooled["method"].startswith("pooled")


def test_bootstrap_without_noise_is_degenerate_and_outside_gives_no_ci():
    baseline = {t: per_prompt((q, d), 10, 2, np.random.default_rng(0)) for t, q, d in linear_curve()}
    r = F.matched_gain_bootstrap(baseline, per_prompt((0.6, 0.7), 10, 1, np.random.default_rng(0)), resamples=200)
    assert r["diversity_at_matched_quality"]["ci"] == pytest.approx([0.06, 0.06])
    # at the coldest baseline's quality, half the resamples fall above the curve: no CI, and why
    edge = per_prompt((0.75, 0.7), 10, 1, np.random.default_rng(1), prompt_sd=0.05)
    r = F.matched_gain_bootstrap(baseline, edge, resamples=400)
    d = r["diversity_at_matched_quality"]
    assert d["status"] == "inside" and d["ci"] is None and "outside the baseline curve in" in d["ci_note"]
    assert d["outside_fraction"]["above"] > 0.2 and d["outside_fraction"]["below"] == 0
    far = F.matched_gain_bootstrap(baseline, per_prompt((0.9, 0.7), 10, 1, np.random.default_rng(1)), resamples=50)
    assert far["diversity_at_matched_quality"]["status"] == "outside" and far["diversity_at_matched_quality"]["ci"] is None


def test_bootstrap_input_errors():
    rng = np.random.default_rng(0)
    baseline = {t: per_prompt((q, d), 5, 2, rng) for t, q, d in linear_curve()}
    baseline[0.9] = per_prompt((0.55, 0.67), 5, 3, rng)
    with pytest.raises(ValueError, match="baseline seeds differ between T = 0.5"):
        F.matched_gain_bootstrap(baseline, per_prompt((0.6, 0.7), 5, 1, rng))
    baseline[0.9] = per_prompt((0.55, 0.67), 5, 2, rng)
    variant = per_prompt((0.6, 0.7), 5, 1, rng)
    del variant["s0"]["p004"]
    with pytest.raises(ValueError, match="variant quality: seed 's0' has no value for 1 of 5"):
        F.matched_gain_bootstrap(baseline, variant)
    variant["s0"]["p004"] = 0.5
    with pytest.raises(ValueError, match="expected \\(quality, diversity\\)"):
        F.matched_gain_bootstrap(baseline, variant)
