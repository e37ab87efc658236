"""The metric registry and the one call that computes every per-prompt metric.

`REGISTRY` maps each per-prompt metric name to its `MetricInfo` (direction, kind, description);
`metric_info` also resolves pass_at_K / max_at_K for any K. `per_prompt_metrics` runs every
metric of lexical, semantic and pass_at_k on the k samples of ONE prompt and records each
undefined value as None plus its reason (the exclusion rules: docs/metrics.md).

No torch here (layering rule, tests/test_layering.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .core import Undefined, check_count, check_matrix, check_texts
from .equivalence import distinct_k
from .lexical import Lexical, compression_ratio
from .pass_at_k import USQ_SELECTORS, max_at_k, pass_at_k, usq
from .semantic import VENDI_ORDERS, cosine_similarity_matrix, mean_cosine_distance_of, vendi_score


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
    "distinct_k": _info("distinct_k", True, "diversity",
                        "equivalence classes among the k samples (unigram F1 >= 0.7, greedy in sample order; NoveltyBench)"),
    "distinct_k_fraction": _info("distinct_k_fraction", True, "diversity", "distinct_k / k"),
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
    "ref_nll_tempered": _info("ref_nll_tempered", False, "quality",
                              "reference per-token NLL under the evaluation temperature (logits / T), as the samples are drawn"),
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


_LEXICAL_DIVERSITY = [f"distinct_{n}" for n in range(1, 5)] + [
    "distinct_k", "distinct_k_fraction", "self_bleu", "pairwise_bleu", "compression_ratio"]
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
    texts = check_texts(texts, "per_prompt_metrics")
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

    lex = Lexical(texts)
    empty = lex.empty()
    # details in parentheses: the report groups reasons with them stripped
    empty_reason = f"empty sample(s) (indices {empty} of {k})" if empty else None

    if empty_reason:
        skip(_LEXICAL_DIVERSITY, empty_reason)
    else:
        for n in range(1, 5):
            run(f"distinct_{n}", lambda n=n: lex.distinct(n))
        classes = distinct_k(texts)
        metrics["distinct_k"], metrics["distinct_k_fraction"] = float(classes), classes / k
        run("self_bleu", lex.self_bleu)
        run("pairwise_bleu", lex.pairwise_bleu)
        run("compression_ratio", lambda: compression_ratio(texts))

    if embeddings is None:
        skip(_SEMANTIC_DIVERSITY, "no embeddings given")
    else:
        e = check_matrix(embeddings, "per_prompt_metrics: embeddings", 2)
        if e.shape[0] != k:
            raise ValueError(f"per_prompt_metrics: {e.shape[0]} embeddings for {k} texts")
        if empty_reason:
            skip(_SEMANTIC_DIVERSITY, empty_reason)
        else:
            sim = cosine_similarity_matrix(e)
            run("mean_pairwise_cosine_distance", lambda: mean_cosine_distance_of(sim))
            for name, q in VENDI_ORDERS.items():
                run(name, lambda q=q: vendi_score(sim, q))

    if n_tokens is None:
        skip(["length_tokens"], "no token counts given")
    else:
        counts = [check_count(t, "per_prompt_metrics: n_tokens[i]") for t in n_tokens]
        if len(counts) != k or min(counts) < 0:
            raise ValueError(f"per_prompt_metrics: n_tokens must be {k} non-negative integers, got {list(n_tokens)}")
        metrics["length_tokens"] = float(np.mean(counts))

    grid = list(range(1, k + 1)) if k_grid is None else [check_count(g, "per_prompt_metrics: k_grid[i]") for g in k_grid]
    k_names = [f"{p}_at_{g}" for g in grid for p in ("pass", "max")]
    usq_names = [f"usq_{s}" for s in USQ_SELECTORS]
    if qualities is None:
        skip(["quality", *k_names, *usq_names], "no quality scores given")
    else:
        q = check_matrix(qualities, "per_prompt_metrics: qualities", 1)
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
