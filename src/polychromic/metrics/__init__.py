"""Per-prompt metrics: pure functions on the k samples of ONE prompt (texts, embeddings, a
similarity matrix or quality scores), and `REGISTRY`, their metadata.

Definitions and known answers: ../shared/docs/metrics.md; what is implemented, the exclusion
rules and the measured speed: docs/metrics.md.

Rules this module keeps (the prior system broke each of them):
- The unit is the prompt. A model's score is the mean of per-prompt values; nothing here pools
  samples of different prompts.
- A value that is undefined on a prompt (one sample for a pairwise metric, an empty sample, no
  bigrams) raises `Undefined(reason)`; `per_prompt_metrics` records it as None plus the reason,
  and the report counts it. Nothing becomes 0.0, nothing becomes NaN. Bad input (mismatched
  lengths, NaN embeddings, k > n in pass@k) raises ValueError.
- BLEU-4 is NLTK `sentence_bleu` (uniform weights, `SmoothingFunction().method1`) on our tokenizer,
  computed by `_bleu4` from n-gram count matrices: NLTK rebuilds every reference's n-gram Counter
  for every hypothesis (k^2 * 4 Counters per prompt), which made Self-BLEU + pairwise-BLEU the
  slowest part of an evaluation (benchmarks/metrics_speed.py; numbers in docs/metrics.md). The
  arithmetic replicates NLTK's step by step and tests check equality on random inputs.

No torch here (layering rule, tests/test_layering.py): numpy, zlib and the standard library.
"""

from __future__ import annotations

import math
import re
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------
# Exclusions


class Undefined(Exception):
    """The metric has no value on this input (not an error in the input): the caller records
    `reason` in the per-prompt `excluded` map and the report counts it."""

    @property
    def reason(self) -> str:
        return str(self.args[0]) if self.args else "undefined"


# ---------------------------------------------------------------------------------------------
# Tokenizer for lexical metrics (metrics.md: NFKC, lowercase, \w+|[^\w\s]; no NLTK data)

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
BLEU_ORDER = 4


def tokenize(text: str) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"tokenize: expected str, got {type(text).__name__}")
    return _TOKEN_RE.findall(unicodedata.normalize("NFKC", text).lower())


def _check_texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{what}: expected a list of strings (the k samples of one prompt), got one string")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}: sample {i} is {type(t).__name__}, expected str")
    if not texts:
        raise ValueError(f"{what}: no samples")
    return texts


class _Lexical:
    """The k samples of one prompt, tokenized once, with an n-gram count matrix per order
    (rows = samples, columns = the prompt's distinct n-grams). Memory O(k * V_n)."""

    def __init__(self, texts: Sequence[str]):
        self.tokens = [tokenize(t) for t in texts]
        self.lengths = [len(t) for t in self.tokens]
        self._counts: dict[int, np.ndarray] = {}

    @property
    def k(self) -> int:
        return len(self.tokens)

    def empty(self) -> list[int]:
        return [i for i, n in enumerate(self.lengths) if n == 0]

    def counts(self, n: int) -> np.ndarray:
        if n not in self._counts:
            vocab: dict[tuple[str, ...], int] = {}
            rows, cols = [], []
            for i, toks in enumerate(self.tokens):
                # n-grams are taken within each sample: they never cross sample boundaries
                for gram in zip(*(toks[j:] for j in range(n))):
                    cols.append(vocab.setdefault(gram, len(vocab)))
                    rows.append(i)
            mat = np.zeros((self.k, len(vocab)), dtype=np.int64)
            np.add.at(mat, (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)), 1)
            self._counts[n] = mat
        return self._counts[n]

    def require_bleu(self, what: str) -> None:
        if self.k < 2:
            raise Undefined(f"{what} needs at least 2 samples, got {self.k}")
        empty = self.empty()
        if empty:
            raise Undefined(f"{what}: empty sample(s) (indices {empty} of {self.k})")


# ---------------------------------------------------------------------------------------------
# Lexical diversity


def _distinct(lex: _Lexical, n: int) -> float:
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    c = lex.counts(n)
    total = int(c.sum())
    if total == 0:
        raise Undefined(f"distinct_{n}: no {n}-grams in any sample")
    return c.shape[1] / total


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams, pooled over the k samples of one prompt (n-grams never
    cross samples). Higher = more diverse. Undefined when no sample has an n-gram."""
    return _distinct(_Lexical(_check_texts(texts, "distinct_n")), n)


def _bleu4(matches: Sequence[int], totals: Sequence[int], hyp_len: int, ref_len: int) -> float:
    """NLTK corpus_bleu for one hypothesis, uniform 4-gram weights, SmoothingFunction().method1,
    step for step: p_n = matches/max(1, total) as a correctly rounded float (= float(Fraction));
    p_n with no match -> 0.1 / denominator; no unigram match -> 0; brevity penalty against the
    closest reference length; exp(fsum(w log p))."""
    if matches[0] == 0:
        return 0.0
    if hyp_len > ref_len:
        bp = 1.0
    elif hyp_len == 0:
        bp = 0.0
    else:
        bp = math.exp(1 - ref_len / hyp_len)
    logs = []
    for m, t in zip(matches, totals):
        den = max(1, t)
        p = m / den if m else 0.1 / den
        logs.append(0.25 * math.log(p))
    return bp * math.exp(math.fsum(logs))


def _closest_ref_len(ref_lens: Sequence[int], hyp_len: int) -> int:
    # NLTK: the closest length; ties go to the shorter reference
    return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))


def _totals(lex: _Lexical, i: int) -> list[int]:
    return [max(0, lex.lengths[i] - n + 1) for n in range(1, BLEU_ORDER + 1)]


def _pairwise_bleu_matrix(lex: _Lexical) -> np.ndarray:
    k = lex.k
    # matches[n][i, j] = sum over n-grams g of min(count_i(g), count_j(g)): the clipped matches
    # of hypothesis i against the single reference j.
    matches = []
    for n in range(1, BLEU_ORDER + 1):
        c = lex.counts(n)
        matches.append(np.stack([np.minimum(c[i], c).sum(axis=1) for i in range(k)]) if c.shape[1] else np.zeros((k, k), dtype=np.int64))
    out = np.eye(k)
    for i in range(k):
        totals = _totals(lex, i)
        for j in range(k):
            if i != j:
                out[i, j] = _bleu4([int(m[i, j]) for m in matches], totals, lex.lengths[i], lex.lengths[j])
    return out


def _self_bleu_scores(lex: _Lexical) -> list[float]:
    k = lex.k
    scores = []
    for i in range(k):
        others = [j for j in range(k) if j != i]
        matches = []
        for n in range(1, BLEU_ORDER + 1):
            c = lex.counts(n)
            if c.shape[1] == 0:
                matches.append(0)
                continue
            # multi-reference clipping: each n-gram is capped by its largest count in any reference
            matches.append(int(np.minimum(c[i], c[others].max(axis=0)).sum()))
        ref_len = _closest_ref_len([lex.lengths[j] for j in others], lex.lengths[i])
        scores.append(_bleu4(matches, _totals(lex, i), lex.lengths[i], ref_len))
    return scores


def pairwise_bleu_matrix(texts: Sequence[str]) -> np.ndarray:
    """(k, k) array: [i, j] = BLEU-4 of hypothesis i against the single reference j (NLTK
    sentence_bleu, method1, our tokenizer); the diagonal is 1 by definition (a sample against
    itself). Not symmetric (the brevity penalty depends on the hypothesis length). Also the
    `bleu` distance of the training objective (1 - the symmetrised matrix)."""
    lex = _Lexical(_check_texts(texts, "pairwise_bleu_matrix"))
    lex.require_bleu("pairwise_bleu_matrix")
    return _pairwise_bleu_matrix(lex)


def _pairwise_bleu(lex: _Lexical) -> float:
    lex.require_bleu("pairwise_bleu")
    m = _pairwise_bleu_matrix(lex)
    k = lex.k
    return float((m.sum() - np.trace(m)) / (k * (k - 1)))


def pairwise_bleu(texts: Sequence[str]) -> float:
    """Mean over ordered pairs i != j of single-reference BLEU-4. Lower = more diverse; unlike
    Self-BLEU it does not drift upward with k (more references -> more matches)."""
    return _pairwise_bleu(_Lexical(_check_texts(texts, "pairwise_bleu")))


def self_bleu_scores(texts: Sequence[str]) -> list[float]:
    """Per-hypothesis multi-reference BLEU-4: sample i against all the other samples."""
    lex = _Lexical(_check_texts(texts, "self_bleu"))
    lex.require_bleu("self_bleu")
    return _self_bleu_scores(lex)


def _self_bleu(lex: _Lexical) -> float:
    lex.require_bleu("self_bleu")
    return float(np.mean(_self_bleu_scores(lex)))


def self_bleu(texts: Sequence[str]) -> float:
    """Mean over i of BLEU-4(s_i, references = all other samples). Lower = more diverse."""
    return _self_bleu(_Lexical(_check_texts(texts, "self_bleu")))


def compression_ratio(texts: Sequence[str]) -> float:
    """UTF-8 bytes of the samples joined by newlines / bytes of their raw deflate (zlib level 9,
    wbits -15: no header, so short texts are not penalised by a constant). Lower = more diverse.
    The samples are joined in sorted order: deflate output depends on order, and a metric of a
    set of samples must not."""
    data = "\n".join(sorted(_check_texts(texts, "compression_ratio"))).encode("utf-8")
    if not data.strip():
        raise Undefined("compression_ratio: all samples are empty")
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = comp.compress(data) + comp.flush()
    return len(data) / len(packed)


# ---------------------------------------------------------------------------------------------
# Embedding diversity


def _check_matrix(x, what: str, ndim: int) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{what}: expected a {ndim}-d array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what}: contains NaN or infinite values")
    return a


def cosine_similarity_matrix(embeddings) -> np.ndarray:
    """(k, k) cosine Gram matrix of L2-normalised rows, clipped to [-1, 1] with an exact unit
    diagonal (round-off would otherwise make identical samples 1e-16 apart)."""
    e = _check_matrix(embeddings, "embeddings", 2)
    # Scale each row by its largest entry first: the norm of a row with entries ~1e200 would
    # overflow to inf and silently turn the row into zeros.
    scale = np.max(np.abs(e), axis=1, keepdims=True)
    e = np.divide(e, scale, out=np.zeros_like(e), where=scale > 0)
    norms = np.linalg.norm(e, axis=1)
    if np.any(norms == 0):
        raise ValueError(f"embeddings: row(s) {np.flatnonzero(norms == 0).tolist()} have zero norm (broken embedder?)")
    e = e / norms[:, None]
    sim = np.clip(e @ e.T, -1.0, 1.0)
    np.fill_diagonal(sim, 1.0)
    return sim


def _mean_cosine_distance(sim: np.ndarray) -> float:
    k = sim.shape[0]
    if k < 2:
        raise Undefined(f"mean_pairwise_cosine_distance needs at least 2 samples, got {k}")
    iu = np.triu_indices(k, 1)
    return float(np.mean(1.0 - sim[iu]))


def mean_pairwise_cosine_distance(embeddings) -> float:
    """Mean over i < j of 1 - cos(e_i, e_j) (rows L2-normalised). Higher = more diverse."""
    return _mean_cosine_distance(cosine_similarity_matrix(embeddings))


VENDI_ORDERS: dict[str, float] = {"vendi_q1": 1.0, "vendi_q0.5": 0.5, "vendi_q2": 2.0, "vendi_qinf": math.inf}


def vendi_score(similarity_matrix, q: float = 1.0) -> float:
    """Vendi score of order q (Friedman & Dieng 2023; Pasarkar & Dieng 2024 for q != 1): the
    eigenvalues l of K/k (K a similarity matrix with unit diagonal), round-off negatives clipped
    to 0; q = 1: exp(-sum l log l); q = inf: 1 / max l; else exp(log(sum l^q) / (1 - q)).
    Range [1, k]; higher = more diverse."""
    K = _check_matrix(similarity_matrix, "vendi_score: similarity_matrix", 2)
    k = K.shape[0]
    if K.shape != (k, k) or k == 0:
        raise ValueError(f"vendi_score: similarity matrix must be square and non-empty, got {K.shape}")
    if not np.allclose(K, K.T, atol=1e-8):
        raise ValueError("vendi_score: similarity matrix is not symmetric")
    if not np.allclose(np.diag(K), 1.0, atol=1e-6):
        raise ValueError("vendi_score: similarity matrix must have a unit diagonal (K[i, i] = 1)")
    if not (q > 0):
        raise ValueError(f"vendi_score: order q must be > 0 (or inf), got {q}")
    lam = np.clip(np.linalg.eigvalsh(K / k), 0.0, None)
    lam = lam[lam > 0]
    if q == 1.0:
        return float(math.exp(-float(np.sum(lam * np.log(lam)))))
    if math.isinf(q):
        return float(1.0 / lam.max())
    return float(math.exp(math.log(float(np.sum(lam**q))) / (1.0 - q)))


# ---------------------------------------------------------------------------------------------
# Quality over k samples


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021, eq. 1): 1 - C(n - c, k) / C(n, k), with n samples of
    which c pass. Exact integer binomials, one rounding. k > n is undefined: ValueError (the prior
    system clamped k, so its pass@10 on 5 samples silently meant pass@5)."""
    n, c, k = _check_count(n, "pass_at_k: n"), _check_count(c, "pass_at_k: c"), _check_count(k, "pass_at_k: k")
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if k < 1:
        raise ValueError(f"pass_at_k: k must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"pass_at_k: k={k} > n={n} samples: pass@k is undefined (never clamp k)")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def max_at_k(scores: Sequence[float], k: int) -> float:
    """Unbiased expected best-of-k quality over the n scores: with q sorted ascending (1-based),
    sum_{i=k..n} C(i - 1, k - 1) / C(n, k) * q_(i), the probability that q_(i) is the maximum of a
    uniformly drawn k-subset times its value."""
    q = np.sort(_check_matrix(scores, "max_at_k: scores", 1))
    n = q.shape[0]
    k = _check_count(k, "max_at_k: k")
    if k < 1:
        raise ValueError(f"max_at_k: k must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"max_at_k: k={k} > n={n} scores: undefined (never clamp k)")
    total = math.comb(n, k)
    weights = np.array([math.comb(i - 1, k - 1) / total for i in range(k, n + 1)])
    return float(np.dot(weights, q[k - 1 :]))


def der(pass_at_k_value: float, pass_at_1: float, k: int) -> float:
    """The prior system's diversity efficiency ratio, pass@k / (k * pass@1). It is a function of
    pass@1 and k alone (1/k when every sample passes or none differ), so it is reported, never
    optimised; undefined when pass@1 = 0."""
    if k < 1:
        raise ValueError(f"der: k must be >= 1, got {k}")
    if pass_at_1 == 0:
        raise Undefined("der: pass@1 = 0")
    return float(pass_at_k_value) / (k * float(pass_at_1))


def collapse_point(pass_curve: Sequence[float], threshold: float) -> int:
    """The smallest k whose gain from one extra sample, pass@(k+1) - pass@k, is below `threshold`.
    `pass_curve[i]` is pass@(i+1) on the FULL integer grid k = 1..n (the prior system used
    {1, 5, 10} and missed every collapse in between). Undefined when the gain never falls under
    the threshold within the grid."""
    curve = _check_matrix(pass_curve, "collapse_point: pass_curve", 1)
    if curve.shape[0] < 2:
        raise Undefined("collapse_point needs pass@k for at least k = 1, 2")
    gains = np.diff(curve)
    below = np.flatnonzero(gains < threshold)
    if below.size == 0:
        raise Undefined(f"collapse_point: gain per extra sample stays >= {threshold} up to k = {curve.shape[0]}")
    return int(below[0]) + 1


USQ_SELECTORS = ("first", "longest", "best")


def usq(qualities: Sequence[float], texts: Sequence[str], selector: str) -> float:
    """User-selection quality: the quality of the one sample a fixed selector picks from the k.
    first: sample 0 (what a user sees without reranking); longest: most tokens under the lexical
    tokenizer, ties to the lower index; best: highest quality (best-by-reward with the quality
    score as the reward: equals max@k at k = n)."""
    q = _check_matrix(qualities, "usq: qualities", 1)
    texts = _check_texts(texts, "usq")
    if q.shape[0] != len(texts):
        raise ValueError(f"usq: {q.shape[0]} qualities for {len(texts)} texts")
    if selector == "first":
        return float(q[0])
    if selector == "longest":
        lengths = [len(tokenize(t)) for t in texts]
        return float(q[lengths.index(max(lengths))])
    if selector == "best":
        return float(q.max())
    raise ValueError(f"usq: unknown selector {selector!r} (choose from {', '.join(USQ_SELECTORS)})")


# ---------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: Optional[bool]
    """None for controls (length): no direction is 'better'."""
    level: str
    kind: str
    """diversity | quality | control"""
    description: str
    uncertainty: str = "paired bootstrap over prompts"


MAX_K_REGISTERED = 100
"""pass_at_k / max_at_k are registered for k = 1..100; `metric_info` resolves any larger k."""


def _info(name: str, higher: Optional[bool], kind: str, description: str) -> MetricInfo:
    return MetricInfo(name=name, higher_is_better=higher, level="prompt", kind=kind, description=description)


def _pass_info(k: int) -> MetricInfo:
    return _info(f"pass_at_{k}", True, "quality", f"unbiased pass@{k}: P(at least one of {k} samples has quality >= tau)")


def _max_info(k: int) -> MetricInfo:
    return _info(f"max_at_{k}", True, "quality", f"expected best quality among {k} samples (unbiased)")


REGISTRY: dict[str, MetricInfo] = {
    **{
        f"distinct_{n}": _info(f"distinct_{n}", True, "diversity", f"unique / total {n}-grams pooled over the k samples")
        for n in range(1, 5)
    },
    "self_bleu": _info("self_bleu", False, "diversity", "mean BLEU-4 of each sample against all the others"),
    "pairwise_bleu": _info("pairwise_bleu", False, "diversity", "mean single-reference BLEU-4 over ordered pairs"),
    "mean_pairwise_cosine_distance": _info(
        "mean_pairwise_cosine_distance", True, "diversity", "mean 1 - cos of sentence embeddings over pairs"
    ),
    **{
        name: _info(name, True, "diversity", f"Vendi score of order q = {q} on the cosine Gram matrix (1..k)")
        for name, q in VENDI_ORDERS.items()
    },
    "compression_ratio": _info("compression_ratio", False, "diversity", "bytes / deflated bytes of the joined samples"),
    "length_tokens": _info("length_tokens", None, "control", "mean completion length in model tokens"),
    "relevance": _info("relevance", True, "quality", "mean embedding similarity of each sample to its prompt"),
    "quality": _info("quality", True, "quality", "mean quality q in [0, 1] of the samples"),
    **{f"pass_at_{k}": _pass_info(k) for k in range(1, MAX_K_REGISTERED + 1)},
    **{f"max_at_{k}": _max_info(k) for k in range(1, MAX_K_REGISTERED + 1)},
    "usq_first": _info("usq_first", True, "quality", "quality of the first sample (selector: first)"),
    "usq_longest": _info("usq_longest", True, "quality", "quality of the longest sample (selector: longest)"),
    "usq_best": _info("usq_best", True, "quality", "quality of the best sample (selector: best by quality)"),
    "rouge_l": _info("rouge_l", True, "quality", "ROUGE-L F1 of the greedy reply against the reference"),
    "ref_nll": _info("ref_nll", False, "quality", "per-token negative log-likelihood of the reference reply"),
}

_K_METRIC = re.compile(r"(pass|max)_at_(\d+)")


def metric_info(name: str) -> MetricInfo:
    """REGISTRY lookup that also resolves pass_at_K / max_at_K for any K."""
    if name in REGISTRY:
        return REGISTRY[name]
    m = _K_METRIC.fullmatch(name)
    if m and int(m.group(2)) >= 1:
        return (_pass_info if m.group(1) == "pass" else _max_info)(int(m.group(2)))
    raise KeyError(f"unknown metric {name!r}: not in polychromic.metrics.REGISTRY")


# ---------------------------------------------------------------------------------------------
# All metrics of one prompt

_LEXICAL_DIVERSITY = [f"distinct_{n}" for n in range(1, 5)] + ["self_bleu", "pairwise_bleu", "compression_ratio"]
_SEMANTIC_DIVERSITY = ["mean_pairwise_cosine_distance", *VENDI_ORDERS]


def per_prompt_metrics(
    texts: Sequence[str],
    embeddings=None,
    qualities: Optional[Sequence[float]] = None,
    n_tokens: Optional[Sequence[int]] = None,
    tau: float = 0.5,
    k_grid: Optional[Sequence[int]] = None,
) -> tuple[dict[str, Optional[float]], dict[str, str]]:
    """Every per-prompt metric this module computes for the k samples of one prompt.

    Returns (metrics, excluded): metrics maps each name to a float, or to None when the metric is
    undefined here, in which case `excluded[name]` says why. Inputs: `embeddings` (k, d) or None
    (semantic metrics excluded), `qualities` k floats or None (quality metrics excluded),
    `n_tokens` k model-token counts or None (length excluded), `tau` the pass threshold
    (quality >= tau passes), `k_grid` the k values of pass@k / max@k (default 1..k; a k larger
    than the number of samples is excluded, never clamped).

    A prompt with an empty sample (no tokens) gets every diversity metric excluded: an empty reply
    is a generation failure, and counting it as a maximally different sample would reward it,
    while dropping it would compare sets of different size. Tokenization happens once per call.
    """
    texts = _check_texts(texts, "per_prompt_metrics")
    k = len(texts)
    metrics: dict[str, Optional[float]] = {}
    excluded: dict[str, str] = {}

    def run(name: str, fn: Callable[[], float]) -> None:
        try:
            value = float(fn())
        except Undefined as exc:
            metrics[name], excluded[name] = None, exc.reason
            return
        if not math.isfinite(value):  # a bug, never a value: fail loudly
            raise ArithmeticError(f"per_prompt_metrics: {name} = {value} on texts {texts!r}")
        metrics[name] = value

    def skip(names, reason: str) -> None:
        for name in names:
            metrics[name], excluded[name] = None, reason

    lex = _Lexical(texts)
    empty = lex.empty()
    # details in parentheses: the report groups reasons with them stripped
    empty_reason = f"empty sample(s) (indices {empty} of {k})" if empty else None

    if empty_reason:
        skip(_LEXICAL_DIVERSITY, empty_reason)
    else:
        for n in range(1, 5):
            run(f"distinct_{n}", lambda n=n: _distinct(lex, n))
        run("self_bleu", lambda: _self_bleu(lex))
        run("pairwise_bleu", lambda: _pairwise_bleu(lex))
        run("compression_ratio", lambda: compression_ratio(texts))

    if embeddings is None:
        skip(_SEMANTIC_DIVERSITY, "no embeddings given")
    else:
        e = _check_matrix(embeddings, "per_prompt_metrics: embeddings", 2)
        if e.shape[0] != k:
            raise ValueError(f"per_prompt_metrics: {e.shape[0]} embeddings for {k} texts")
        if empty_reason:
            skip(_SEMANTIC_DIVERSITY, empty_reason)
        else:
            sim = cosine_similarity_matrix(e)
            run("mean_pairwise_cosine_distance", lambda: _mean_cosine_distance(sim))
            for name, q in VENDI_ORDERS.items():
                run(name, lambda q=q: vendi_score(sim, q))

    if n_tokens is None:
        skip(["length_tokens"], "no token counts given")
    else:
        counts = [_check_count(t, "per_prompt_metrics: n_tokens[i]") for t in n_tokens]
        if len(counts) != k or min(counts) < 0:
            raise ValueError(f"per_prompt_metrics: n_tokens must be {k} non-negative integers, got {list(n_tokens)}")
        metrics["length_tokens"] = float(np.mean(counts))

    grid = list(range(1, k + 1)) if k_grid is None else [_check_count(g, "per_prompt_metrics: k_grid[i]") for g in k_grid]
    k_names = [f"{p}_at_{g}" for g in grid for p in ("pass", "max")]
    usq_names = [f"usq_{s}" for s in USQ_SELECTORS]
    if qualities is None:
        skip(["quality", *k_names, *usq_names], "no quality scores given")
    else:
        q = _check_matrix(qualities, "per_prompt_metrics: qualities", 1)
        if q.shape[0] != k:
            raise ValueError(f"per_prompt_metrics: {q.shape[0]} qualities for {k} texts")
        metrics["quality"] = float(q.mean())
        c = int(np.sum(q >= tau))
        for g in grid:
            if g > k:
                skip([f"pass_at_{g}", f"max_at_{g}"], f"k={g} > {k} samples")
                continue
            metrics[f"pass_at_{g}"] = pass_at_k(k, c, g)
            metrics[f"max_at_{g}"] = max_at_k(q, g)
        for s in USQ_SELECTORS:
            metrics[f"usq_{s}"] = usq(q, texts, s)
    return metrics, excluded
