"""Property-based: the per-prompt metrics on edge sets (one sample, empty strings, identical
samples, very long samples, CJK / Arabic / emoji / combining marks, random unicode) give, for every
metric, either a finite float inside its documented range or None with a reason in `excluded`;
never NaN, never another exception. And a report built on an evaluation folder with excluded values
counts them and writes no NaN.

Inputs tried: N_EXAMPLES per property test (N_LONG for the very long samples); the numbers are
recorded in docs/reliability.md."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from polychromic import io
from polychromic import metrics
from polychromic.config import Config, EvalModel, to_yaml
from polychromic.metrics import Undefined, per_prompt_metrics, tokenize
from polychromic.report import report

N_EXAMPLES = 500  # per property test below, except the long-sample one
N_LONG = 30

SCRIPTS = {
    "latin": "the a good day night rain sun coffee fun I we you it is was".split(),
    "cjk": list("我你他是的了在有人这中大为上个国和不") + ["東京", "日本語", "한국어"],
    "arabic": "مرحبا كيف حالك اليوم شكرا جدا جميل صباح الخير".split(),
    "emoji": ["😀", "🎉", "👍🏽", "❤️", "👨‍👩‍👧", "🇯🇵", "🙂🙂"],
    "marks": ["é", "e\u0301", "ﬁ", "Ⅻ", "\u200b", "ǅ", "ß"],
}
words = st.sampled_from([w for ws in SCRIPTS.values() for w in ws])
script_text = st.tuples(st.lists(words, max_size=12), st.sampled_from([" ", "", "\n", " , "])).map(lambda t: t[1].join(t[0]))
sample_text = st.one_of(
    st.just(""),
    st.sampled_from(["   ", "\n\t", "\u200b", "!!!", "?"]),      # blank, or punctuation only
    script_text,
    st.text(max_size=40),                                       # random unicode
)
sample_sets = st.one_of(
    st.lists(sample_text, min_size=1, max_size=6),                               # mixed
    sample_text.map(lambda t: [t]),                                               # one sample
    st.tuples(sample_text, st.integers(2, 6)).map(lambda t: [t[0]] * t[1]),      # identical samples
)

LEXICAL = [f"distinct_{n}" for n in range(1, 5)] + ["distinct_k", "distinct_k_fraction", "self_bleu", "pairwise_bleu",
                                                    "compression_ratio"]
SEMANTIC = ["mean_pairwise_cosine_distance", "vendi_q1", "vendi_q0.5", "vendi_q2", "vendi_qinf"]
PAIRWISE = ["self_bleu", "pairwise_bleu", "mean_pairwise_cosine_distance"]
TOL = 1e-9


def in_range(name: str, v: float, k: int, q: np.ndarray | None) -> bool:
    """The documented range of each metric (metrics.py docstrings, docs/metrics.md)."""
    if name == "distinct_k":  # a count of classes
        return v == int(v) and 1 <= v <= k
    if name.startswith("distinct_"):  # distinct_n and distinct_k_fraction
        return 0 < v <= 1
    if name in ("self_bleu", "pairwise_bleu"):
        return 0 <= v <= 1
    if name == "compression_ratio":
        return v > 0
    if name == "mean_pairwise_cosine_distance":
        return -TOL <= v <= 2 + TOL
    if name.startswith("vendi_"):
        return 1 - 1e-6 <= v <= k + 1e-6
    if name == "length_tokens":
        return v >= 0
    if name.startswith("pass_at_"):
        return 0 <= v <= 1
    if name in ("quality", "usq_first", "usq_longest", "usq_best") or name.startswith("max_at_"):
        return float(q.min()) - TOL <= v <= float(q.max()) + TOL
    raise AssertionError(f"no documented range for {name}")


def check_row(texts, m: dict, ex: dict, q) -> None:
    k = len(texts)
    json.dumps(m, allow_nan=False)  # no NaN / inf anywhere
    for name, v in m.items():
        if v is None:
            assert isinstance(ex.get(name), str) and ex[name].strip(), f"{name} is None without a reason"
        else:
            assert name not in ex, f"{name} has a value and an exclusion"
            assert type(v) is float and math.isfinite(v), (name, v)
            assert in_range(name, v, k, q), (name, v, texts)
    assert set(ex) <= set(m)
    if any(not tokenize(t) for t in texts):  # an empty sample: every diversity metric excluded, said why
        for name in LEXICAL + SEMANTIC:
            assert m[name] is None and ex[name].startswith("empty sample(s)"), (name, ex.get(name))
    elif k == 1:
        for name in PAIRWISE:
            assert m[name] is None and "at least 2 samples" in ex[name]
        for name in SEMANTIC[1:]:
            assert m[name] == pytest.approx(1.0)  # one sample: exactly one "effective sample"
    else:
        for name in ["distinct_1", "self_bleu", "pairwise_bleu", "compression_ratio", *SEMANTIC]:
            assert m[name] is not None, (name, ex.get(name), texts)


@st.composite
def prompt_inputs(draw, sets=sample_sets):
    texts = draw(sets)
    k = len(texts)
    d = draw(st.integers(1, 8))
    emb = draw(hnp.arrays(np.float64, (k, d), elements=st.floats(-10, 10, allow_nan=False)))
    assume(bool(np.all(np.linalg.norm(emb, axis=1) > 1e-6)))  # a zero vector is a broken embedder: ValueError, tested in test_metrics
    if len(set(texts)) == 1 and draw(st.booleans()):
        emb = np.repeat(emb[:1], k, axis=0)  # identical samples, identical embeddings
    q = np.array(draw(st.lists(st.floats(0, 1), min_size=k, max_size=k)))
    n_tokens = draw(st.lists(st.integers(0, 5000), min_size=k, max_size=k))
    grid = draw(st.one_of(st.none(), st.lists(st.integers(1, 8), min_size=1, max_size=4, unique=True)))
    tau = draw(st.floats(0, 1))
    return texts, emb, q, n_tokens, grid, tau


@settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(prompt_inputs())
def test_per_prompt_metrics_defined_or_excluded(inp):
    texts, emb, q, n_tokens, grid, tau = inp
    k = len(texts)
    m, ex = per_prompt_metrics(texts, emb, q, n_tokens, tau=tau, k_grid=grid)
    ks = list(range(1, k + 1)) if grid is None else grid
    assert set(m) == {*LEXICAL, *SEMANTIC, "length_tokens", "quality", "usq_first", "usq_longest", "usq_best",
                      *(f"{p}_at_{g}" for g in ks for p in ("pass", "max"))}
    check_row(texts, m, ex, q)
    assert m["length_tokens"] == pytest.approx(np.mean(n_tokens))
    assert m["quality"] == pytest.approx(q.mean()) and m["usq_best"] == pytest.approx(q.max()) and m["usq_first"] == q[0]
    for g in ks:
        if g > k:  # never clamped: excluded, with the reason
            assert m[f"pass_at_{g}"] is None and ex[f"pass_at_{g}"] == f"k={g} > {k} samples"
    defined = sorted(g for g in ks if g <= k)
    passes = [m[f"pass_at_{g}"] for g in defined]
    maxes = [m[f"max_at_{g}"] for g in defined]
    assert all(a <= b + TOL for a, b in zip(passes, passes[1:])) and all(a <= b + TOL for a, b in zip(maxes, maxes[1:]))
    if 1 in defined:
        assert m["pass_at_1"] == pytest.approx(np.mean(q >= tau)) and m["max_at_1"] == pytest.approx(q.mean())


@settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(script_text, st.text(min_size=1, max_size=60)), st.integers(2, 6))
def test_identical_samples_known_values(text, k):
    toks = tokenize(text)
    assume(toks)
    texts = [text] * k
    emb = np.tile(np.linspace(1.0, 2.0, 5), (k, 1))
    m, ex = per_prompt_metrics(texts, emb, np.full(k, 0.5), [len(toks)] * k)
    check_row(texts, m, ex, np.full(k, 0.5))
    for n in range(1, 5):
        grams = {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}
        if grams:
            assert m[f"distinct_{n}"] == pytest.approx(len(grams) / (k * (len(toks) - n + 1)))
        else:
            assert m[f"distinct_{n}"] is None and "no" in ex[f"distinct_{n}"]
    assert m["self_bleu"] == pytest.approx(m["pairwise_bleu"])
    if len(toks) >= 4:  # every n-gram of order 1..4 matches: BLEU is exactly 1
        assert m["self_bleu"] == pytest.approx(1.0)
    assert m["mean_pairwise_cosine_distance"] == pytest.approx(0.0, abs=1e-12)
    for name in SEMANTIC[1:]:
        assert m[name] == pytest.approx(1.0, abs=1e-6)


@settings(max_examples=N_LONG, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(script_text.filter(lambda t: t.strip() != ""), st.integers(200, 1500)), min_size=1, max_size=4))
def test_very_long_samples(parts):
    texts = [(t + " ") * reps for t, reps in parts]  # up to ~100k characters each
    k = len(texts)
    emb = np.arange(1, 3 * k + 1, dtype=np.float64).reshape(k, 3)
    m, ex = per_prompt_metrics(texts, emb, np.linspace(0, 1, k), [len(t) for t in texts])
    check_row(texts, m, ex, np.linspace(0, 1, k))


@settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample_sets, st.data())
def test_individual_metrics_value_or_undefined(texts, data):
    """Each public metric alone: a finite value in range, or Undefined with a reason."""
    k = len(texts)

    def value_or_reason(fn, *args):
        try:
            v = fn(*args)
        except Undefined as exc:
            assert exc.reason.strip()
            return None
        assert math.isfinite(v), (fn.__name__, v)
        return v

    for n in range(1, 5):
        v = value_or_reason(metrics.distinct_n, texts, n)
        assert v is None or 0 < v <= 1
    for fn in (metrics.self_bleu, metrics.pairwise_bleu):
        v = value_or_reason(fn, texts)
        assert v is None or 0 <= v <= 1
        assert (v is None) == (k < 2 or any(not tokenize(t) for t in texts))
    v = value_or_reason(metrics.compression_ratio, texts)
    assert v is None or v > 0

    emb = data.draw(hnp.arrays(np.float64, (k, 4), elements=st.floats(-1e3, 1e3, allow_nan=False)))
    assume(bool(np.all(np.linalg.norm(emb, axis=1) > 1e-6)))
    sim = metrics.cosine_similarity_matrix(emb)
    assert np.all(np.abs(sim) <= 1) and np.all(np.diag(sim) == 1)
    d = value_or_reason(metrics.mean_pairwise_cosine_distance, emb)
    assert (d is None) == (k == 1) and (d is None or 0 <= d <= 2)
    q_order = data.draw(st.one_of(st.sampled_from([0.5, 1.0, 2.0, math.inf]), st.floats(0.01, 50)))
    vs = metrics.vendi_score(sim, q_order)
    assert math.isfinite(vs) and 1 - 1e-6 <= vs <= k + 1e-6

    q = np.array(data.draw(st.lists(st.floats(0, 1), min_size=k, max_size=k)))
    c = data.draw(st.integers(0, k))
    curve = [metrics.pass_at_k(k, c, g) for g in range(1, k + 1)]
    assert all(0 <= p <= 1 for p in curve) and curve == sorted(curve)
    assert curve[-1] == (1.0 if c else 0.0)
    best = [metrics.max_at_k(q, g) for g in range(1, k + 1)]
    assert all(q.min() - TOL <= b <= q.max() + TOL for b in best) and best[-1] == pytest.approx(q.max())
    for sel in metrics.USQ_SELECTORS:
        assert q.min() <= metrics.usq(q, texts, sel) <= q.max()


# ---------------------------------------------------------------------------------------------
# Report on an evaluation folder with excluded values

EDGE_SETS = [
    ["a fine day", "", "rain again"],                 # an empty sample: diversity excluded
    ["同じ返事です"] * 3,                              # identical CJK samples
    ["مرحبا كيف حالك", "شكرا جدا", "صباح الخير"],
    ["😀", "🎉 🎉", "👍🏽"],
    ["?", "!", "…"],
    ["good " * 3000, "fun " * 2500, "day " * 2000],   # very long
]


def make_eval_dir(root):
    d = root / "eval"
    models = ["base", "tuned"]
    k = 3
    cfg = Config(experiment="edge")
    cfg.eval.models = [EvalModel(name="base"), EvalModel(name="tuned", adapter="runs/tuned/adapter")]
    cfg.eval.baseline, cfg.eval.k, cfg.eval.bootstrap_resamples = "base", k, 200
    io.atomic_write_text(d / "config.yaml", to_yaml(cfg))
    prompts = [{"prompt_id": f"p{i}", "prompt": f"prompt {i}", "reference": "a reply"} for i in range(len(EDGE_SETS))]
    io.atomic_write_jsonl(d / "prompts.jsonl", prompts)
    rng = np.random.default_rng(0)
    rows, samples = [], []
    for m in models:
        for p, texts in zip(prompts, EDGE_SETS):
            if m == "tuned" and p["prompt_id"] == "p1":
                texts = ["", "", ""]  # all empty: excluded for the tuned model only
            emb = rng.normal(size=(k, 8)) if len(set(texts)) > 1 else np.tile(rng.normal(size=8), (k, 1))
            # identical n_tokens in both models: zero paired differences for length_tokens
            n_tok = [len(tokenize(t)) for t in EDGE_SETS[int(p["prompt_id"][1:])]]
            met, ex = per_prompt_metrics(texts, emb, rng.uniform(size=k), n_tok, tau=0.3)
            rows.append({"model": m, "prompt_id": p["prompt_id"], "k": k, "metrics": met, "excluded": ex})
            samples += [{"prompt_id": p["prompt_id"], "model": m, "kind": "sample", "index": i, "text": t, "n_tokens": n_tok[i],
                         "finished": True, "decoding": {"k": k, "temperature": 0.7}} for i, t in enumerate(texts)]
    io.atomic_write_jsonl(d / "per_prompt.jsonl", rows)
    io.atomic_write_jsonl(d / "samples.jsonl", samples)
    return d, rows


def test_report_counts_exclusions_and_writes_no_nan(tmp_path):
    d, rows = make_eval_dir(tmp_path)
    report(d)
    text = (d / "results.json").read_text()

    def no_constant(name):
        raise AssertionError(f"results.json holds {name}")

    res = json.loads(text, parse_constant=no_constant)  # NaN / Infinity would call this
    assert not re.search(r"\bnan\b", text, re.I)
    for model in ("base", "tuned"):
        mine = [r for r in rows if r["model"] == model]
        for name, s in res["per_model"][model]["metrics"].items():
            expect = sum(1 for r in mine if r["metrics"].get(name) is None)
            assert s["n_excluded"] == expect and s["n"] == len(mine) - expect, (model, name)
            assert sum(s["excluded_reasons"].values()) == expect
    # the CJK prompt: a run of CJK characters is one \w+ token, so each sample is a single token
    no_bigram = "distinct_2: no 2-grams in any sample"
    assert res["per_model"]["base"]["metrics"]["distinct_2"]["excluded_reasons"] == {"empty sample(s)": 1, no_bigram: 1}
    assert res["per_model"]["tuned"]["metrics"]["distinct_2"]["excluded_reasons"] == {"empty sample(s)": 2}
    assert res["per_model"]["base"]["metrics"]["self_bleu"]["n_excluded"] == 1
    # paired comparisons use only the prompts both models have a value on: p2..p5
    assert res["comparisons"]["tuned"]["distinct_2"]["n"] == 4
    md = (d / "report.md").read_text()
    assert "## Excluded (prompts without a value)" in md
    assert re.search(r"\|\s*distinct_2\s*\|\s*2\s*\|\s*2\s*\|", md), md[md.index("## Excluded"):][:800]
    for page in ("report.md", "report.html"):
        assert not re.search(r"\bnan\b", (d / page).read_text(), re.I), page
