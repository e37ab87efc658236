"""polychromic.metrics: the known answers of docs/metrics.md, BLEU equal to NLTK's,
properties (identical samples give minimal diversity, order does not matter), exclusions."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from polychromic import metrics as M
from polychromic.metrics import Undefined

SMOOTH = SmoothingFunction().method1
CAT = ["the cat sat on the mat", "the cat sat on the hat", "a dog ran in the park"]

# --------------------------------------------------------------------------------------------
# Known answers (metrics.md), to 4 decimals


def test_known_distinct():
    assert round(M.distinct_n(["the cat sat", "the cat ran"], 1), 4) == 0.6667
    assert round(M.distinct_n(["the cat sat", "the cat ran"], 2), 4) == 0.75


def test_known_self_bleu_and_pairwise_bleu():
    assert round(M.self_bleu(CAT), 4) == 0.5202
    assert [round(x, 4) for x in M.self_bleu_scores(CAT)] == [0.7598, 0.7598, 0.0408]
    assert round(M.pairwise_bleu(CAT), 4) == 0.2805


def test_known_pass_at_k():
    cases = {(10, 3, 5): 0.916667, (10, 1, 10): 1.0, (5, 2, 2): 0.7, (4, 1, 2): 0.5, (10, 0, 1): 0.0}
    for (n, c, k), want in cases.items():
        assert round(M.pass_at_k(n, c, k), 6) == want


def test_known_max_at_k():
    assert [round(M.max_at_k([1, 2, 3, 4], k), 4) for k in (1, 2, 4)] == [2.5, 3.3333, 4.0]


def test_known_vendi():
    assert round(M.vendi_score([[1, 0.9, 0], [0.9, 1, 0], [0, 0, 1]], q=1.0), 4) == 2.1573
    assert round(M.vendi_score(np.eye(4)), 4) == 4.0
    assert round(M.vendi_score(np.ones((4, 4))), 4) == 1.0
    for q in (0.5, 2.0, math.inf):
        assert M.vendi_score(np.eye(4), q) == pytest.approx(4.0)
        assert M.vendi_score(np.ones((4, 4)), q) == pytest.approx(1.0)
    # order q = inf: 1 / largest eigenvalue of K/k; [[1, .9], [.9, 1]] has eigenvalues 1.9, 0.1
    assert M.vendi_score([[1, 0.9], [0.9, 1]], math.inf) == pytest.approx(2 / 1.9)


def test_tokenizer_nfkc_lowercase_punctuation():
    assert M.tokenize("Ｔｈｅ CAT, isn't HERE!") == ["the", "cat", ",", "isn", "'", "t", "here", "!"]
    assert M.tokenize("   ") == []


# --------------------------------------------------------------------------------------------
# BLEU computed from count matrices = NLTK sentence_bleu (method1), exactly

word = st.sampled_from(["a", "b", "c", "d", "the", "cat", "sat", ".", "!"])
sample = st.lists(word, min_size=1, max_size=12).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(st.lists(sample, min_size=2, max_size=5))
def test_bleu_equals_nltk(texts):
    toks = [M.tokenize(t) for t in texts]
    k = len(texts)
    nltk_self = [sentence_bleu([toks[j] for j in range(k) if j != i], toks[i], smoothing_function=SMOOTH) for i in range(k)]
    assert M.self_bleu_scores(texts) == nltk_self
    mat = M.pairwise_bleu_matrix(texts)
    for i in range(k):
        for j in range(k):
            if i != j:
                assert mat[i, j] == sentence_bleu([toks[j]], toks[i], smoothing_function=SMOOTH)
    assert np.all(np.diag(mat) == 1.0)


def test_bleu_equals_nltk_on_longer_texts():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(40)]
    for _ in range(20):
        texts = [" ".join(rng.choice(vocab, size=rng.integers(3, 60))) for _ in range(rng.integers(2, 8))]
        toks = [M.tokenize(t) for t in texts]
        want = [sentence_bleu([r for j, r in enumerate(toks) if j != i], h, smoothing_function=SMOOTH) for i, h in enumerate(toks)]
        assert M.self_bleu_scores(texts) == want


# --------------------------------------------------------------------------------------------
# Properties

long_sample = st.lists(word, min_size=4, max_size=15).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(long_sample, st.integers(2, 6))
def test_identical_samples_have_minimal_diversity(text, k):
    texts = [text] * k
    for n in range(1, 5):
        one = M.distinct_n([text], n)
        assert M.distinct_n(texts, n) == pytest.approx(one / k)  # the smallest value k copies allow
    assert M.self_bleu(texts) == pytest.approx(1.0)
    assert M.pairwise_bleu(texts) == pytest.approx(1.0)
    e = np.tile(np.random.default_rng(k).normal(size=8), (k, 1))
    assert M.mean_pairwise_cosine_distance(e) == pytest.approx(0.0, abs=1e-12)
    sim = M.cosine_similarity_matrix(e)
    for q in (1.0, 0.5, 2.0, math.inf):
        assert M.vendi_score(sim, q) == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(sample, min_size=2, max_size=6), st.randoms(use_true_random=False))
def test_order_does_not_matter(texts, rnd):
    perm = list(range(len(texts)))
    rnd.shuffle(perm)
    shuffled = [texts[i] for i in perm]
    for n in range(1, 5):
        try:
            assert M.distinct_n(shuffled, n) == M.distinct_n(texts, n)
        except Undefined:
            with pytest.raises(Undefined):
                M.distinct_n(texts, n)
    assert M.self_bleu(shuffled) == pytest.approx(M.self_bleu(texts), abs=1e-12)
    assert M.pairwise_bleu(shuffled) == pytest.approx(M.pairwise_bleu(texts), abs=1e-12)
    assert M.compression_ratio(shuffled) == M.compression_ratio(texts)
    e = np.random.default_rng(len(texts)).normal(size=(len(texts), 6))
    assert M.mean_pairwise_cosine_distance(e[perm]) == pytest.approx(M.mean_pairwise_cosine_distance(e))
    for q in (1.0, 0.5, 2.0, math.inf):
        assert M.vendi_score(M.cosine_similarity_matrix(e[perm]), q) == pytest.approx(M.vendi_score(M.cosine_similarity_matrix(e), q))
    q = np.random.default_rng(1).random(len(texts))
    for k in range(1, len(texts) + 1):
        assert M.max_at_k(q[perm], k) == pytest.approx(M.max_at_k(q, k))


# Latin, punctuation, Cyrillic, CJK, emoji, zero-width space, a ligature NFKC splits, newline
any_text = st.lists(st.sampled_from(["a", "b", " ", ",", ".", "!", "кот", "猫", "😀", "\u200b", "ﬁ", "\n"]), max_size=15).map("".join)


@settings(max_examples=150, deadline=None)
@given(st.lists(any_text, min_size=1, max_size=6))
def test_per_prompt_metrics_never_nan_and_every_none_has_a_reason(texts):
    k = len(texts)
    rng = np.random.default_rng(k)
    metrics, excluded = M.per_prompt_metrics(texts, rng.normal(size=(k, 5)), rng.random(k), [len(t) for t in texts], tau=0.5)
    for name, value in metrics.items():
        assert name in M.REGISTRY
        if value is None:
            assert excluded[name], name
        else:
            assert math.isfinite(value), (name, value)
    assert set(excluded) <= set(metrics)
    # vendi lies in [1, k] whenever it is defined
    for name in M.VENDI_ORDERS:
        if metrics[name] is not None:
            assert 1 - 1e-9 <= metrics[name] <= k + 1e-9


# --------------------------------------------------------------------------------------------
# Exclusions: undefined is never 0.0 and never NaN


def test_one_sample_excludes_pairwise_metrics():
    with pytest.raises(Undefined, match="at least 2 samples"):
        M.self_bleu(["just one reply here"])
    with pytest.raises(Undefined, match="at least 2 samples"):
        M.pairwise_bleu(["just one reply here"])
    with pytest.raises(Undefined, match="at least 2 samples"):
        M.mean_pairwise_cosine_distance(np.ones((1, 4)))
    metrics, excluded = M.per_prompt_metrics(["just one reply here"], np.ones((1, 4)), [0.9], [4], tau=0.5)
    for name in ("self_bleu", "pairwise_bleu", "mean_pairwise_cosine_distance"):
        assert metrics[name] is None and "at least 2 samples" in excluded[name]
    assert metrics["distinct_1"] == 1.0 and metrics["vendi_q1"] == 1.0
    assert metrics["pass_at_1"] == 1.0 and "pass_at_2" not in metrics


def test_empty_sample_excludes_diversity_and_keeps_quality():
    texts = ["a fine reply", "", "another fine reply"]
    metrics, excluded = M.per_prompt_metrics(texts, np.eye(3), [0.2, 0.0, 0.9], [3, 0, 3], tau=0.5)
    for name in ("distinct_1", "distinct_4", "self_bleu", "pairwise_bleu", "compression_ratio",
                 "mean_pairwise_cosine_distance", "vendi_q1", "vendi_qinf"):
        assert metrics[name] is None
        assert excluded[name] == "empty sample(s) (indices [1] of 3)"
    assert metrics["quality"] == pytest.approx(1.1 / 3)
    assert metrics["pass_at_1"] == pytest.approx(1 / 3) and metrics["length_tokens"] == 2.0
    with pytest.raises(Undefined, match="empty sample"):
        M.self_bleu(texts)
    with pytest.raises(Undefined, match="no 1-grams"):
        M.distinct_n(["", "  "], 1)
    with pytest.raises(Undefined, match="all samples are empty"):
        M.compression_ratio(["", ""])


def test_no_bigrams_is_excluded_with_reason():
    metrics, excluded = M.per_prompt_metrics(["yes", "no", "ok"], None, None, None)
    assert metrics["distinct_1"] == 1.0
    assert metrics["distinct_2"] is None and excluded["distinct_2"] == "distinct_2: no 2-grams in any sample"
    assert excluded["mean_pairwise_cosine_distance"] == "no embeddings given"
    assert excluded["quality"] == "no quality scores given" and excluded["length_tokens"] == "no token counts given"


def test_non_latin_scripts():
    # Cyrillic and Greek split on spaces like Latin: the same structure gives the same numbers
    en = ["the cat sat", "the cat ran"]
    ru = ["этот кот сидел", "этот кот бежал"]
    el = ["η γάτα κάθισε", "η γάτα έτρεξε"]
    for texts in (ru, el):
        for n in (1, 2):
            assert M.distinct_n(texts, n) == M.distinct_n(en, n)
        assert M.self_bleu(texts) == M.self_bleu(en)
    # scripts written without spaces: a run of CJK characters is ONE \w+ token (docs/metrics.md)
    assert M.tokenize("我喜欢猫。你呢？") == ["我喜欢猫", "。", "你呢", "?"]  # NFKC: fullwidth ？ -> ?
    metrics, excluded = M.per_prompt_metrics(["我喜欢猫。", "我喜欢狗。", "مرحبا بك يا صديقي"], np.eye(3), [1, 1, 1], [3, 3, 4])
    assert not excluded
    assert all(v is not None and math.isfinite(v) for v in metrics.values())


def test_very_long_samples_are_finite():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(500)]
    texts = [" ".join(rng.choice(vocab, size=5000)) for _ in range(5)]
    metrics, excluded = M.per_prompt_metrics(texts, rng.normal(size=(5, 384)), rng.random(5), [5000] * 5)
    assert not excluded and all(math.isfinite(v) for v in metrics.values())
    assert 0 < metrics["self_bleu"] < 1 and metrics["distinct_1"] < 0.1


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="3 embeddings for 2 texts"):
        M.per_prompt_metrics(["a b", "c d"], np.ones((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        M.mean_pairwise_cosine_distance([[1.0, np.nan], [1.0, 0.0]])
    with pytest.raises(ValueError, match="zero norm"):
        M.mean_pairwise_cosine_distance([[0.0, 0.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="not symmetric"):
        M.vendi_score([[1, 0.5], [0.1, 1]])
    with pytest.raises(ValueError, match="unit diagonal"):
        M.vendi_score([[2, 0], [0, 2]])
    with pytest.raises(TypeError, match="one string"):
        M.distinct_n("the cat sat", 1)


# --------------------------------------------------------------------------------------------
# pass@k, max@k, DER, collapse point, USQ


def test_pass_at_k_k_greater_than_n_raises():
    with pytest.raises(ValueError, match="k=6 > n=5"):
        M.pass_at_k(5, 2, 6)
    with pytest.raises(ValueError, match="k=4 > n=3"):
        M.max_at_k([0.1, 0.2, 0.3], 4)
    metrics, excluded = M.per_prompt_metrics(["a b", "c d"], None, [0.1, 0.9], [2, 2], tau=0.5, k_grid=[1, 2, 5])
    assert metrics["pass_at_5"] is None and excluded["pass_at_5"] == "k=5 > 2 samples"
    assert metrics["pass_at_2"] == 1.0


def test_pass_at_k_matches_enumeration():
    for n in range(1, 7):
        for c in range(n + 1):
            passes = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(passes, k))
                assert M.pass_at_k(n, c, k) == pytest.approx(np.mean([max(s) for s in subsets]))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=7), st.data())
def test_max_at_k_matches_brute_force(scores, data):
    k = data.draw(st.integers(1, len(scores)))
    brute = np.mean([max(s) for s in itertools.combinations(scores, k)])
    assert M.max_at_k(scores, k) == pytest.approx(brute, abs=1e-12)


def test_der_collapse_point_usq():
    assert M.der(0.9, 0.5, 3) == pytest.approx(0.6)
    with pytest.raises(Undefined, match="pass@1 = 0"):
        M.der(0.0, 0.0, 5)
    # gains: 0.3, 0.1, 0.005, 0.001 -> first gain under 0.01 is from k = 3 to 4
    assert M.collapse_point([0.5, 0.8, 0.9, 0.905, 0.906], 0.01) == 3
    with pytest.raises(Undefined, match="stays >= 0.01 up to k = 3"):
        M.collapse_point([0.2, 0.4, 0.6], 0.01)
    texts = ["short", "a much longer reply here", "mid size reply"]
    q = [0.3, 0.2, 0.9]
    assert M.usq(q, texts, "first") == 0.3
    assert M.usq(q, texts, "longest") == 0.2
    assert M.usq(q, texts, "best") == 0.9
    with pytest.raises(ValueError, match="unknown selector"):
        M.usq(q, texts, "random")


# --------------------------------------------------------------------------------------------
# Registry


def test_registry_covers_architecture_names():
    text = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    section = text[text.index("Per-prompt metric names"):]
    names = set(re.findall(r"`([a-z_0-9.]+)`", section)) - {"metrics.REGISTRY"}
    names -= {"distinct_1..distinct_4"}
    names |= {f"distinct_{n}" for n in range(1, 5)} | {f"pass_at_{k}" for k in (1, 10, 100)} | {f"max_at_{k}" for k in (1, 10)}
    names = {n for n in names if "{" not in n}
    missing = [n for n in names if n not in M.REGISTRY]
    assert not missing, missing
    assert M.metric_info("pass_at_500").higher_is_better is True
    with pytest.raises(KeyError, match="unknown metric"):
        M.metric_info("bogus")
    assert M.REGISTRY["ref_nll"].higher_is_better is False
    assert M.REGISTRY["length_tokens"].higher_is_better is None and M.REGISTRY["length_tokens"].kind == "control"
    assert M.REGISTRY["self_bleu"].higher_is_better is False and M.REGISTRY["vendi_q1"].higher_is_better is True
    assert all(i.level == "prompt" and i.uncertainty == "paired bootstrap over prompts" for i in M.REGISTRY.values())
    metrics, _ = M.per_prompt_metrics(CAT, np.eye(3), [0.1, 0.5, 0.9], [6, 6, 6])
    assert set(metrics) <= set(M.REGISTRY)


def test_distinct_k_known_answers():
    assert M.distinct_k(["a b c", "a b c", "x y z"]) == 2
    assert M.equivalence_classes(["a b c", "a b c", "x y z"]) == [0, 0, 1]
    assert M.distinct_k(["a b c"]) == 1 and M.distinct_k(["a", "b", "c", "d"]) == 4
    # normalisation: case and punctuation do not make a reply different
    assert M.equivalence_classes(["The cat sat.", "the cat, sat!", "A dog ran?"]) == [0, 0, 1]
    # unigram F1 is order-blind: a reordering is the same reply
    assert M.distinct_k(["a b c", "c b a"]) == 1
    # the threshold is inclusive: F1 = 3/4 = 0.75 and 7/10 = 0.7 join, 3/5 = 0.6 does not
    assert M.distinct_k(["a b c d", "a b c e"]) == 1
    assert M.distinct_k(["a b c d e f g h i j", "a b c d e f g x y z"]) == 1
    assert M.distinct_k(["a b c d e", "a b c x y"]) == 2
    assert M.distinct_k(["a b c d e", "a b c x y"], threshold=0.6) == 1
    # multiset overlap: "a a a b" vs "a b b b" share one a and one b: F1 = 2*2/8 = 0.5
    assert M.equivalence.unigram_f1(M.equivalence.normalise("a a a b"), M.equivalence.normalise("a b b b")) == 0.5
    # replies without a word are one class, apart from every reply with words
    assert M.equivalence_classes(["...", "!!", "a b", ""]) == [0, 0, 1, 0]
    assert M.distinct_k_fraction(["a b c", "a b c", "x y z", "p q r"]) == 0.75


def test_distinct_k_greedy_representative_and_order():
    """Not transitive: x1 is equivalent to x0 (F1 0.7) and to x2 (0.7), x0 and x2 are not (0.4).
    x2 is compared with x0, its class's representative, not with x1: 2 classes. With x1 first it
    represents a class both others join: 1 class."""
    x0, x1, x2 = "a b c d e f g h i j", "d e f g h i j k l m", "g h i j k l m n o p"
    assert M.equivalence_classes([x0, x1, x2]) == [0, 0, 1]
    assert M.equivalence_classes([x1, x0, x2]) == [0, 0, 0]
    # a sample joins the FIRST class whose representative matches, even if a later one matches better
    # (F1 with class 0's representative 0.7, with class 1's 0.8)
    assert M.equivalence_classes(["a b c d e f g h i j", "a b c d e k l m n o", "a b c d e f g k l m"]) == [0, 1, 0]


def test_distinct_k_in_per_prompt_metrics_and_registry():
    metrics, excluded = M.per_prompt_metrics(["a b c", "A b c!", "x y z"])
    assert metrics["distinct_k"] == 2.0 and metrics["distinct_k_fraction"] == pytest.approx(2 / 3)
    assert "distinct_k" not in excluded
    for name in ("distinct_k", "distinct_k_fraction"):
        info = M.metric_info(name)
        assert info.higher_is_better is True and info.level == "prompt" and info.kind == "diversity"
    # an empty sample excludes it with every other diversity metric
    metrics, excluded = M.per_prompt_metrics(["a b", ""])
    assert metrics["distinct_k"] is None and excluded["distinct_k"].startswith("empty sample")
    with pytest.raises(ValueError, match="threshold"):
        M.distinct_k(["a"], threshold=0.0)
    with pytest.raises(TypeError, match="one string"):
        M.distinct_k("a b c")


# --------------------------------------------------------------------------------------------
# Provenance: which metrics the training reward optimised


def test_trained_on_marks_what_the_training_reward_optimised():
    from polychromic.metrics.provenance import provenance, trained_on

    mini, e5 = "embedded:all-minilm-l6-v2", "embedded:multilingual-e5-small"
    # the default training: MiniLM distance, guard x relevance quality
    for m in ("mean_pairwise_cosine_distance", "vendi_q1", "vendi_qinf"):
        assert trained_on(m, mini, mini, "guard_x_relevance") is True
        assert trained_on(m, e5, mini, "guard_x_relevance") is False  # a separate evaluation encoder
        assert trained_on(m, mini, None, "guard") is False  # the training reward embeds nothing
    for m in ("quality", "pass_at_3", "max_at_10", "usq_best", "relevance"):
        assert trained_on(m, e5, mini, "guard_x_relevance") is True
    assert trained_on("quality", e5, mini, "guard") is True  # the guard alone is in the reward
    assert trained_on("relevance", e5, mini, "guard") is False
    assert trained_on("quality", e5, mini, "constant") is False
    assert trained_on("quality", e5, mini, "guard", eval_quality="relevance") is False  # no shared part
    for m in ("distinct_2", "self_bleu", "distinct_k", "distinct_k_fraction", "rouge_l", "ref_nll", "ref_nll_tempered",
              "compression_ratio", "length_tokens"):
        assert trained_on(m, mini, mini, "guard_x_relevance") is False, m
    # lexical training distances optimise lexical metrics directly
    assert trained_on("distinct_2", e5, mini, "guard", train_distance="distinct") is True
    assert trained_on("distinct_2", e5, mini, "guard", train_distance="semantic_distinct") is True
    assert trained_on("self_bleu", e5, mini, "guard", train_distance="bleu") is True
    assert trained_on("distinct_k", e5, mini, "guard", train_distance="distinct") is False
    with pytest.raises(KeyError, match="unknown metric"):
        trained_on("bogus", mini, mini, "guard")
    with pytest.raises(ValueError, match="unknown quality function 'nope'"):
        trained_on("quality", mini, mini, "nope")
    with pytest.raises(ValueError, match="unknown training distance"):
        trained_on("quality", mini, mini, "guard", train_distance="cosine")
    p = provenance(["quality", "distinct_k"], e5, mini, "guard_x_relevance")
    assert p["trained_on"] == {"distinct_k": False, "quality": True} and p["eval_quality"] == "guard_x_relevance"


def test_provenance_knows_every_quality_distance_and_registered_metric():
    from polychromic import rewards
    from polychromic.metrics import provenance as P

    assert set(P.QUALITY_PARTS) == set(rewards.QUALITIES)
    assert set(P.DISTANCE_METRICS) == set(rewards.DISTANCES)
    assert {q for q, parts in P.QUALITY_PARTS.items() if "relevance" in parts} == set(rewards.USES_RELEVANCE)
    for name in M.REGISTRY:  # every registered metric has a rule (none raises KeyError)
        P.trained_on(name, "a", "a", "guard_x_relevance")
