"""Set diversities that count duplicates (Vendi / n, classes / n), the advantages' quality /
diversity decomposition, the soft guard, and sampled subsets at N = 16, n = 4: known answers."""

import itertools
import math

import numpy as np
import pytest

from polychromic.config import ObjectiveConfig, load_config
from polychromic.metrics import vendi_score
from polychromic.rewards import score_parts
from polychromic.training.objectives.polychromic import (
    pointwise_advantages,
    pointwise_parts,
    set_advantage_parts,
    set_advantages,
    set_values,
)
from polychromic.training.set_diversity import class_labels, classes, mean_distance, set_diversity, vendi


def _stack(*mats):
    return np.stack([np.asarray(m, dtype=float) for m in mats])


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_identical_and_orthogonal_sets(n):
    same = np.zeros((n, n))
    apart = 1.0 - np.eye(n)
    np.testing.assert_allclose(vendi(_stack(same, apart)), [1.0 / n, 1.0], atol=1e-12)
    np.testing.assert_allclose(classes(_stack(same, apart), 0.2), [1.0 / n, 1.0], atol=1e-12)
    np.testing.assert_allclose(mean_distance(_stack(same, apart)), [0.0, 1.0], atol=1e-12)


def test_vendi_counts_effective_samples():
    # two identical pairs far apart: 2 effective samples among 4 -> Vendi 2, d = 2/4
    d = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=float)
    assert vendi(d[None])[0] == pytest.approx(0.5, abs=1e-12)
    # the mean distance of that set is 4/6: it cannot tell two duplicates from spread
    assert mean_distance(d[None])[0] == pytest.approx(4 / 6)
    # 2 x 2 with similarity s: eigenvalues (1 +- s) / 2, VS = exp(H)
    s = 0.4
    lam = np.array([(1 + s) / 2, (1 - s) / 2])
    assert vendi(np.array([[[0, 1 - s], [1 - s, 0]]]))[0] == pytest.approx(math.exp(-(lam * np.log(lam)).sum()) / 2, abs=1e-12)


def test_vendi_equals_the_metrics_vendi_score():
    rng = np.random.default_rng(0)
    for n in (3, 4, 5):
        e = np.abs(rng.normal(size=(n, 8)))  # positive vectors: cos >= 0, so the clip never applies
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        sim = e @ e.T
        d = 1.0 - sim
        np.fill_diagonal(d, 0.0)
        np.fill_diagonal(sim, 1.0)
        assert vendi(d[None])[0] == pytest.approx(vendi_score(sim, 1.0) / n, rel=1e-9)


def test_classes_are_connected_components():
    # a-b 0.1, b-c 0.1, a-c 0.5 (a and c linked through b), d far from all
    d = np.array([[0, 0.1, 0.5, 0.9], [0.1, 0, 0.1, 0.9], [0.5, 0.1, 0, 0.9], [0.9, 0.9, 0.9, 0]])
    assert classes(d[None], 0.2)[0] == pytest.approx(2 / 4)
    assert classes(d[None], 0.05)[0] == pytest.approx(4 / 4)
    assert classes(d[None], 0.9)[0] == pytest.approx(1 / 4)  # <= threshold: equivalent
    np.testing.assert_array_equal(class_labels(d, 0.2), [0, 0, 0, 3])
    for perm in itertools.permutations(range(4)):
        p = list(perm)
        assert classes(d[np.ix_(p, p)][None], 0.2)[0] == pytest.approx(0.5)
    # a chain of 8 needs the closure beyond one squaring
    chain = np.ones((8, 8))
    for i in range(7):
        chain[i, i + 1] = chain[i + 1, i] = 0.0
    np.fill_diagonal(chain, 0.0)
    assert classes(chain[None], 0.2)[0] == pytest.approx(1 / 8)
    with pytest.raises(ValueError, match="class_threshold"):
        classes(d[None], 1.5)
    with pytest.raises(ValueError, match="unknown"):
        set_diversity(d[None], "entropy")


@pytest.mark.parametrize("kind", ["vendi", "classes"])
def test_set_values_use_the_configured_diversity(kind):
    q = np.array([1.0, 0.5, 1.0, 1.0])
    d = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=float)
    subsets = np.array([[0, 1], [0, 2], [0, 1, 2, 3]][:2])
    # {0, 1} duplicates: d = 1/2, F = 0.75 * 0.5; {0, 2} apart: d = 1, F = 1
    np.testing.assert_allclose(set_values(q, d, subsets, set_diversity=kind), [0.375, 1.0], atol=1e-12)
    np.testing.assert_allclose(set_values(q, d, np.array([[0, 1, 2, 3]]), set_diversity=kind), [0.875 * 0.5], atol=1e-12)
    assert set_values(q, d, subsets, "max_quality", set_diversity=kind).tolist() == [1.0, 1.0]  # no diversity there


def test_decomposition_known_answer():
    # the hand-computed case of test_estimator: a = mean q over the pair, ds = its distance
    q = np.array([1.0, 1.0, 0.5])
    d = np.array([[0, 0.5, 1.0], [0.5, 0, 0.8], [1.0, 0.8, 0]])
    parts = set_advantage_parts(q, d, 2)
    dbar, abar = 2.3 / 3, 2.5 / 3  # sets {0,1}, {0,2}, {1,2}: ds = .5, 1, .8; a = 1, .75, .75
    np.testing.assert_allclose(parts["quality"], 2 / 3 * dbar * np.array([0.125, 0.125, -0.25]), atol=1e-12)
    np.testing.assert_allclose(parts["diversity"], 2 / 3 * abar * np.array([-0.05, -0.35, 0.4]), atol=1e-12)
    np.testing.assert_allclose(parts["total"], set_advantages(q, d, 2), atol=1e-15)
    assert parts["set_diversity"] == pytest.approx(dbar)


@pytest.mark.parametrize("max_subsets", [256, 8])  # enumerated, sampled
def test_decomposition_isolates_each_signal(max_subsets):
    rng = np.random.default_rng(5)
    d = rng.random((7, 7))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    flat_q = set_advantage_parts(np.full(7, 0.6), d, 3, max_subsets, np.random.default_rng(1))
    np.testing.assert_allclose(flat_q["quality"], 0.0, atol=1e-15)  # quality carries nothing when every q is the same
    np.testing.assert_allclose(flat_q["diversity"], flat_q["total"], atol=1e-12)
    assert np.abs(flat_q["total"]).max() > 1e-3
    flat_d = set_advantage_parts(rng.random(7), 0.4 * (1 - np.eye(7)), 3, max_subsets, np.random.default_rng(1))
    np.testing.assert_allclose(flat_d["diversity"], 0.0, atol=1e-15)
    np.testing.assert_allclose(flat_d["quality"], flat_d["total"], atol=1e-12)
    # pure diversity: no quality signal at all
    np.testing.assert_allclose(set_advantage_parts(rng.random(7), d, 3, max_subsets, np.random.default_rng(1), "diversity")["quality"], 0.0, atol=1e-15)


def test_pointwise_classes_is_darling_partition_reward():
    # classes {0, 1}, {2}, {3}: the fraction of the others outside one's class is 2/3, 2/3, 1, 1
    d = np.array([[0, 0.1, 0.9, 0.9], [0.1, 0, 0.9, 0.9], [0.9, 0.9, 0, 0.9], [0.9, 0.9, 0.9, 0]])
    q = np.array([1.0, 1.0, 0.5, 0.0])
    r = q * np.array([2 / 3, 2 / 3, 1.0, 1.0])
    np.testing.assert_allclose(pointwise_advantages(q, d, set_diversity="classes", class_threshold=0.2), r - r.mean(), atol=1e-12)
    parts = pointwise_parts(q, d, set_diversity="classes", class_threshold=0.2)
    s = np.array([2 / 3, 2 / 3, 1.0, 1.0])
    np.testing.assert_allclose(parts["quality"], q * s.mean() - (q * s.mean()).mean(), atol=1e-12)
    np.testing.assert_allclose(parts["diversity"], q.mean() * (s - s.mean()), atol=1e-12)
    with pytest.raises(ValueError, match="no pointwise form"):
        pointwise_advantages(q, d, set_diversity="vendi")


@pytest.mark.parametrize("kind", ["mean_distance", "vendi", "classes"])
def test_sampled_subsets_at_N16_n4_are_unbiased(kind):
    # N = 16, n = 4: C(16, 4) = 1820 sets, above the default max_subsets = 256, so training samples them
    rng = np.random.default_rng(11)
    e = rng.normal(size=(16, 3))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    d = np.clip(1 - e @ e.T, 0, 1)
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    q = rng.random(16)
    exact = set_advantage_parts(q, d, 4, max_subsets=1820, set_diversity=kind, class_threshold=0.3)
    draws = [set_advantage_parts(q, d, 4, 32, np.random.default_rng(s), set_diversity=kind, class_threshold=0.3) for s in range(300)]
    for key in ("total", "quality", "diversity"):
        x = np.stack([p[key] for p in draws])
        se = x.std(axis=0, ddof=1) / math.sqrt(len(x))
        assert np.all(np.abs(x.mean(axis=0) - exact[key]) < 4.5 * se + 1e-12), key
    assert np.abs(exact["total"]).max() > 10 * se.max()
    cfg = load_config(None, ["objective.name=polychromic", "objective.diversity_weight=1", "rollout.n_generations=16",
                             "objective.set_size=4", f"objective.set_diversity={kind}"])
    assert math.comb(cfg.rollout.n_generations, cfg.set_size) > cfg.objective.max_subsets


def test_soft_guard_quality_known_answers():
    emb = lambda xs: np.array([[1.0, 0.0] if "cat" in x else [0.6, 0.8] if x.strip() else [1.0, 0.0] for x in xs])
    prompts = ["cat"] * 4
    texts = ["a cat sat", "cat", "a dog here", ""]  # usable; too short; usable at relevance 0.6; empty
    finished = [True, True, False, True]  # the third is cut at max_new_tokens
    cfg = ObjectiveConfig(quality="relevance_x_soft_guard", guard_penalty=0.5, min_reply_words=2)
    parts = score_parts(prompts, texts, finished, emb, cfg)
    np.testing.assert_allclose(parts["guard"], [1, 0, 0, 0])
    # relevance 1, 1, 0.6, 1 (the toy embeds "" on the prompt): the guard costs half, an empty reply all
    np.testing.assert_allclose(parts["quality"], [1.0, 0.5, 0.3, 0.0], atol=1e-12)
    hard = score_parts(prompts, texts, finished, emb, ObjectiveConfig(quality="relevance_x_soft_guard", guard_penalty=1.0))
    np.testing.assert_allclose(hard["quality"], score_parts(prompts, texts, finished, emb, ObjectiveConfig())["quality"], atol=1e-12)
    none = score_parts(prompts, texts, finished, emb, ObjectiveConfig(quality="relevance_x_soft_guard", guard_penalty=0.0))
    np.testing.assert_allclose(none["quality"], [1.0, 1.0, 0.6, 0.0], atol=1e-12)


def test_config_rules_for_the_new_options():
    from polychromic.config import ConfigError

    with pytest.raises(ConfigError, match="vendi has no pointwise form"):
        load_config(None, ["objective.estimator=pointwise", "objective.set_diversity=vendi"])
    with pytest.raises(ConfigError, match="objective.guard_penalty: must be in"):
        load_config(None, ["objective.guard_penalty=1.5"])
    with pytest.raises(ConfigError, match="objective.ce_weight: must be > 0 for objective sft"):
        load_config(None, ["objective.ce_weight=0"])
    with pytest.raises(ConfigError, match="objective.kl_estimator: must be one of 'k3', 'k2'"):
        load_config(None, ["objective.kl_estimator=k4"])
    with pytest.raises(ConfigError, match="model.init_adapter: cannot be merged into 4-bit"):
        load_config(None, ["model.init_adapter=/x", "model.load_in_4bit=true"])
    ok = load_config(None, ["objective.name=polychromic", "objective.diversity_weight=1", "objective.ce_weight=0", "objective.kl_estimator=k2"])
    assert ok.objective.ce_weight == 0.0 and ok.objective.kl_estimator == "k2"
