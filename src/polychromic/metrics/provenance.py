"""Which evaluation metrics the training reward itself optimised ("trained on") and which are
held out.

Why: a metric computed with the training reward's own encoder or quality function measures how
well the model learned the reward, not how diverse or good it is: a model can raise the cosine
distance of the encoder it was trained against by moving in directions that encoder sees and a
reader does not, and a "quality" that contains the training guard rises when the model learns to
pass the guard. The report marks those metrics, so that a headline is never one of them
unnoticed.

The rule (`trained_on`), given the evaluation embedder, the training reward's embedder (None when
the training reward embeds nothing), the training quality function and the training distance:
- semantic diversity (`mean_pairwise_cosine_distance`, `vendi_*`): trained on when the evaluation
  embedder is the training reward's embedder;
- quality metrics (`quality`, `pass_at_K`, `max_at_K`, `usq_*`): computed with the evaluation
  quality function (today the training objective's own, with the training embedder): trained on
  when it shares a part (the guard, or relevance) with the training quality;
- `relevance`: trained on when the training quality contains relevance;
- lexical diversity: `distinct_1..4` when the training distance is `distinct` or
  `semantic_distinct` (distinct-2 of a pair), `self_bleu` / `pairwise_bleu` when it is `bleu`;
- held out whatever the training: `distinct_k` / `distinct_k_fraction` (unigram equivalence
  classes), `compression_ratio`, `rouge_l`, `ref_nll`, `ref_nll_tempered`, `length_tokens`.

No torch here (layering rule). The quality and distance names mirror
`polychromic.rewards` (tests/test_metrics.py checks that the two lists agree).
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

from .semantic import VENDI_ORDERS

QUALITY_PARTS: dict[str, frozenset[str]] = {
    "guard_x_relevance": frozenset({"guard", "relevance"}),
    "guard_x_relevance_gate": frozenset({"guard", "relevance"}),
    "guard_x_relevance_ramp": frozenset({"guard", "relevance"}),
    "relevance_x_soft_guard": frozenset({"guard", "relevance"}),
    "guard": frozenset({"guard"}),
    "relevance": frozenset({"relevance"}),
    "constant": frozenset(),
}
"""The parts of each quality function of `polychromic.rewards.QUALITIES`."""

DISTANCE_METRICS: dict[str, frozenset[str]] = {
    "semantic": frozenset(),
    "bleu": frozenset({"self_bleu", "pairwise_bleu"}),
    "distinct": frozenset(f"distinct_{n}" for n in range(1, 5)),
    "semantic_distinct": frozenset(f"distinct_{n}" for n in range(1, 5)),
}
"""Lexical metrics each training distance of `polychromic.rewards.DISTANCES` optimises directly."""

SEMANTIC_METRICS = frozenset({"mean_pairwise_cosine_distance", *VENDI_ORDERS})
HELD_OUT_METRICS = frozenset({"distinct_k", "distinct_k_fraction", "compression_ratio", "rouge_l", "ref_nll",
                              "ref_nll_tempered", "length_tokens"})
_QUALITY_METRIC = re.compile(r"quality|(pass|max)_at_\d+|usq_\w+")
_LEXICAL = frozenset({f"distinct_{n}" for n in range(1, 5)} | {"self_bleu", "pairwise_bleu"})


def quality_parts(quality: str) -> frozenset[str]:
    if quality not in QUALITY_PARTS:
        raise ValueError(f"unknown quality function {quality!r}; expected one of {', '.join(QUALITY_PARTS)}")
    return QUALITY_PARTS[quality]


def trained_on(metric_name: str, eval_embedder: str, train_embedder: Optional[str], train_quality: str,
               eval_quality: Optional[str] = None, train_distance: str = "semantic") -> bool:
    """Whether `metric_name` is computed with something the training reward optimised (the rule
    in the module docstring). `train_embedder` None: the training reward embeds nothing.
    `eval_quality` defaults to `train_quality` (evaluation scores quality with the training
    objective's function). Unknown metrics, quality functions or distances are errors."""
    train_parts = quality_parts(train_quality)
    eval_parts = quality_parts(eval_quality if eval_quality is not None else train_quality)
    if train_distance not in DISTANCE_METRICS:
        raise ValueError(f"unknown training distance {train_distance!r}; expected one of {', '.join(DISTANCE_METRICS)}")
    if metric_name in SEMANTIC_METRICS:
        return train_embedder is not None and eval_embedder == train_embedder
    if metric_name == "relevance":
        return "relevance" in train_parts
    if _QUALITY_METRIC.fullmatch(metric_name):
        return bool(train_parts & eval_parts)
    if metric_name in _LEXICAL:
        return metric_name in DISTANCE_METRICS[train_distance]
    if metric_name in HELD_OUT_METRICS:
        return False
    raise KeyError(f"trained_on: unknown metric {metric_name!r}")


def provenance(metric_names: Iterable[str], eval_embedder: str, train_embedder: Optional[str], train_quality: str,
               eval_quality: Optional[str] = None, train_distance: str = "semantic") -> dict:
    """What evaluation records about how its metrics were computed: the embedders, the quality
    function and distance, and `trained_on` per metric."""
    names = sorted(set(metric_names))
    return {
        "eval_embedder": eval_embedder,
        "train_embedder": train_embedder,
        "train_quality": train_quality,
        "eval_quality": eval_quality if eval_quality is not None else train_quality,
        "train_distance": train_distance,
        "trained_on": {m: trained_on(m, eval_embedder, train_embedder, train_quality, eval_quality, train_distance)
                       for m in names},
    }
