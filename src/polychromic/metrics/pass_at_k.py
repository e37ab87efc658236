"""Quality over the k samples of one prompt: unbiased pass@k (Chen et al. 2021, arXiv:2107.03374)
and max@k, the prior system's diversity efficiency ratio (der), the collapse point of the pass@k
curve, and user-selection quality (usq) under a fixed selector.

No torch here (layering rule, tests/test_layering.py): numpy and the standard library.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .core import Undefined, check_count, check_matrix, check_texts
from .lexical import tokenize


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021, eq. 1): 1 - C(n - c, k) / C(n, k), with n samples of
    which c pass. Exact integer binomials, one rounding. k > n is undefined: ValueError (the prior
    system clamped k, so its pass@10 on 5 samples silently meant pass@5)."""
    n, c, k = check_count(n, "pass_at_k: n"), check_count(c, "pass_at_k: c"), check_count(k, "pass_at_k: k")
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
    q = np.sort(check_matrix(scores, "max_at_k: scores", 1))
    n = q.shape[0]
    k = check_count(k, "max_at_k: k")
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
    curve = check_matrix(pass_curve, "collapse_point: pass_curve", 1)
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
    q = check_matrix(qualities, "usq: qualities", 1)
    texts = check_texts(texts, "usq")
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
