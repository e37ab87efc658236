"""distinct_k: the number of equivalence classes among the k samples of one prompt, a held-out
diversity metric (NoveltyBench, Zhang et al., arXiv 2504.05228).

Why this metric: the embedding metrics (cosine distance, Vendi) use a sentence encoder, and when
that encoder is the one inside the training reward, a model trained against it can move the
metric without becoming more diverse to a reader. distinct_k uses no encoder and no quality
function, only the words of the replies, and it counts how many *different* replies there are
rather than how far apart they are on average: ten paraphrases of one reply count once.

The equivalence rule (declared, tested; `docs/metrics.md`):
- normalise: Unicode NFKC, lowercase, keep the `\\w+` runs (punctuation and whitespace are
  dropped): "The cat sat." and "the cat sat" are the same token sequence;
- two replies are equivalent when the unigram F1 of their normalised tokens (ROUGE-1 F-measure:
  multiset overlap, 2 * overlap / (len a + len b)) is >= `EQUIVALENCE_THRESHOLD` = 0.7. Two replies
  without any word are equivalent to each other and to nothing else;
- classes are built greedily in sample order, as NoveltyBench's `partition_responses` does: each
  sample joins the first existing class whose representative (its first member) it is equivalent
  to, else it opens a new class. The relation is not transitive, so the representative rule and
  the order matter (a known answer in tests/test_metrics.py shows both).

NoveltyBench's own lexical variant ("unigram") uses ROUGE-1 F > 0.458, a threshold calibrated
against its learned classifier on its prompts; on short dialog replies that merges replies that
only share function words, so we declare the stricter 0.7: replies that share most of their
words. The threshold is a parameter; a report states the one it used.

No torch here (layering rule, tests/test_layering.py): the standard library only.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Sequence

EQUIVALENCE_THRESHOLD = 0.7
"""Unigram F1 at or above which two replies are one class."""

_WORD_RE = re.compile(r"\w+")


def normalise(text: str) -> list[str]:
    """NFKC, lowercase, the `\\w+` runs of the text (punctuation stripped)."""
    if not isinstance(text, str):
        raise TypeError(f"normalise: expected str, got {type(text).__name__}")
    return _WORD_RE.findall(unicodedata.normalize("NFKC", text).lower())


def unigram_f1(a: Sequence[str], b: Sequence[str]) -> float:
    """ROUGE-1 F-measure of two token sequences: 2 * |a & b| / (|a| + |b|), with multiset
    overlap (a token counts as often as it occurs in both). Both empty: 1.0 (identical); one
    empty: 0.0."""
    if not a and not b:
        return 1.0
    overlap = sum((Counter(a) & Counter(b)).values())
    return 2.0 * overlap / (len(a) + len(b))


def _check(texts: Sequence[str], threshold: float) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("distinct_k: expected a list of strings (the k samples of one prompt), got one string")
    texts = list(texts)
    if not texts:
        raise ValueError("distinct_k: no samples")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"distinct_k: sample {i} is {type(t).__name__}, expected str")
    if not (0.0 < threshold <= 1.0):
        raise ValueError(f"distinct_k: threshold must be in (0, 1], got {threshold!r}")
    return texts


def equivalence_classes(texts: Sequence[str], threshold: float = EQUIVALENCE_THRESHOLD) -> list[int]:
    """The class of each sample (0, 1, ... in order of first appearance): sample i joins the first
    class whose representative (first member) has unigram F1 >= threshold with it, else opens a
    new class (NoveltyBench's greedy partition)."""
    texts = _check(texts, threshold)
    tokens = [normalise(t) for t in texts]
    counts = [Counter(t) for t in tokens]
    reps: list[int] = []  # sample index of each class's representative
    labels: list[int] = []
    for i, toks in enumerate(tokens):
        for c, r in enumerate(reps):
            if not toks and not tokens[r]:
                f1 = 1.0
            else:
                f1 = 2.0 * sum((counts[i] & counts[r]).values()) / (len(toks) + len(tokens[r]))
            if f1 >= threshold:
                labels.append(c)
                break
        else:
            labels.append(len(reps))
            reps.append(i)
    return labels


def distinct_k(texts: Sequence[str], threshold: float = EQUIVALENCE_THRESHOLD) -> int:
    """Number of equivalence classes among the samples (1..k); higher = more diverse."""
    return max(equivalence_classes(texts, threshold)) + 1


def distinct_k_fraction(texts: Sequence[str], threshold: float = EQUIVALENCE_THRESHOLD) -> float:
    """distinct_k / k, in (0, 1]: comparable across different k (distinct_k alone grows with k)."""
    texts = _check(texts, threshold)
    return distinct_k(texts, threshold) / len(texts)
