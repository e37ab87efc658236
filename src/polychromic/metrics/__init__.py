"""Per-prompt metrics: pure functions on the k samples of ONE prompt (texts, embeddings, a
similarity matrix or quality scores), and `REGISTRY`, their metadata. This package re-exports
every public name of its modules:

- core: `Undefined` (the exclusion signal) and the input checks;
- lexical: `tokenize`, `distinct_n`, Self-BLEU / pairwise BLEU / the BLEU matrix, `compression_ratio`;
- semantic: the cosine Gram matrix, `mean_pairwise_cosine_distance`, `vendi_score`;
- equivalence: `distinct_k` (equivalence classes among the k samples, NoveltyBench) and its rule;
- pass_at_k: `pass_at_k`, `max_at_k`, `der`, `collapse_point`, `usq`;
- registry: `MetricInfo`, `REGISTRY`, `metric_info`, `per_prompt_metrics`;
- stats (imported as `polychromic.metrics.stats`): paired statistics over prompts.

What is implemented, the exclusion rules and the measured speed: docs/metrics.md.

Rules these modules keep (the prior system broke each of them):
- The unit is the prompt. A model's score is the mean of per-prompt values; nothing here pools
  samples of different prompts.
- A value that is undefined on a prompt (one sample for a pairwise metric, an empty sample, no
  bigrams) raises `Undefined(reason)`; `per_prompt_metrics` records it as None plus the reason,
  and the report counts it. Nothing becomes 0.0, nothing becomes NaN. Bad input (mismatched
  lengths, NaN embeddings, k > n in pass@k) raises ValueError.

No torch here (layering rule, tests/test_layering.py): numpy, zlib and the standard library.
"""

from .core import Undefined
from .equivalence import EQUIVALENCE_THRESHOLD, distinct_k, distinct_k_fraction, equivalence_classes
from .lexical import (
    BLEU_ORDER,
    compression_ratio,
    distinct_n,
    pairwise_bleu,
    pairwise_bleu_matrix,
    self_bleu,
    self_bleu_scores,
    tokenize,
)
from .pass_at_k import USQ_SELECTORS, collapse_point, der, max_at_k, pass_at_k, usq
from .registry import MAX_K_REGISTERED, REGISTRY, MetricInfo, metric_info, per_prompt_metrics
from .semantic import VENDI_ORDERS, cosine_similarity_matrix, mean_pairwise_cosine_distance, vendi_score

__all__ = [
    "BLEU_ORDER",
    "EQUIVALENCE_THRESHOLD",
    "MAX_K_REGISTERED",
    "REGISTRY",
    "USQ_SELECTORS",
    "VENDI_ORDERS",
    "MetricInfo",
    "Undefined",
    "collapse_point",
    "compression_ratio",
    "cosine_similarity_matrix",
    "der",
    "distinct_k",
    "distinct_k_fraction",
    "distinct_n",
    "equivalence_classes",
    "max_at_k",
    "mean_pairwise_cosine_distance",
    "metric_info",
    "pairwise_bleu",
    "pairwise_bleu_matrix",
    "pass_at_k",
    "per_prompt_metrics",
    "self_bleu",
    "self_bleu_scores",
    "tokenize",
    "usq",
    "vendi_score",
]
