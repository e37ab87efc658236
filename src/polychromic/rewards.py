"""Quality q in [0, 1] of a completion, and pairwise distances delta in [0, 1] for d(S).

Both feed the polychromic objective (docs/objective.md, steps 2-3) and the evaluation.
Numpy only; the sentence embedder is injected as a function `texts -> (n, d) array`
(models.load_embedder gives one), so tests can pass a toy embedder.

Quality (objective.quality):
- `guard`: 1 for a usable reply, 0 for a degenerate one: empty, fewer than `min_reply_words`
  words, repetitive (its most frequent word 3-gram, repeated, covers more than
  `max_repeat_fraction` of its words), or truncated (no end-of-turn token before max_new_tokens).
  Without it the set reward F = mean q x d(S) pays for diverse garbage.
- `relevance`: clip(cos(e_prompt, e_reply), 0, 1), the reply's embedding similarity to its prompt.
- `guard_x_relevance` (default): their product. `constant`: q = 1 (pure diversity through F).
- `guard_x_relevance_gate`: guard x 1[relevance >= tau] (relevance as a hard constraint).
- `guard_x_relevance_ramp`: guard x min(1, relevance / tau): relevance is paid for up to tau and
  not beyond, so a set cannot raise F by echoing the prompt once its replies are on topic.
- `relevance_x_soft_guard`: relevance x (1 - p (1 - guard)), p = `guard_penalty`, and 0 for a
  reply without a word (the degenerate-output floor). With the hard guard a failed reply loses its
  whole q, so on a model whose replies fail the guard often (cut at max_new_tokens, too short)
  the 0/1 guard swings dominate the advantages and the run learns to pass the guard rather than
  to diversify; the soft guard costs a fraction p of q instead (p = 1: guard_x_relevance, p = 0:
  relevance with the floor).

Distances (objective.diversity_metric), each symmetric with a zero diagonal:
- `semantic`: clip(1 - cos(e_a, e_b), 0, 1) (the prior's metric, per pair).
- `bleu`: 1 - (BLEU-4(a | b) + BLEU-4(b | a)) / 2, the symmetrised single-reference BLEU of
  metrics.pairwise_bleu_matrix; an empty text is at distance 1 from a non-empty one, 0 from another.
- `distinct`: 2 * distinct_2([a, b]) - 1, clipped to [0, 1]: distinct-2 pooled over the pair is
  1 when the two share no bigram and 1/2 when they are the same text (with no repeated bigram
  inside), so the map sends "identical" to 0 and "no shared bigram" to 1. A pair holding no bigram
  at all (both texts under two tokens) is 0 when the texts tokenize the same, else 1.
- `semantic_distinct`: the mean of `semantic` and `distinct`: meaning and wording both count.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

import numpy as np

from polychromic.config import ObjectiveConfig
from polychromic.metrics import distinct_n, pairwise_bleu_matrix, tokenize

Embedder = Callable[[Sequence[str]], np.ndarray]

QUALITIES = ("guard_x_relevance", "guard_x_relevance_gate", "guard_x_relevance_ramp", "relevance_x_soft_guard", "guard", "relevance",
             "constant")
USES_RELEVANCE = ("guard_x_relevance", "guard_x_relevance_gate", "guard_x_relevance_ramp", "relevance_x_soft_guard", "relevance")
DISTANCES = ("semantic", "bleu", "distinct", "semantic_distinct")
EMBEDDED_DISTANCES = ("semantic", "semantic_distinct")
"""The distances that embed the texts (they need the sentence embedder)."""


def needs_embedder(cfg: ObjectiveConfig) -> bool:
    """Whether scoring rollouts under `cfg` needs the sentence embedder (quality or distance)."""
    return cfg.diversity_metric in EMBEDDED_DISTANCES or cfg.quality in USES_RELEVANCE


def words(text: str) -> list[str]:
    """Word tokens of metrics.tokenize (punctuation tokens dropped): "!!" is not two words."""
    return [t for t in tokenize(text) if any(ch.isalnum() for ch in t)]


def repeat_fraction(tokens: Sequence[str]) -> float:
    """Fraction of the words covered by the occurrences of the most frequent word 3-gram, when it
    occurs at least twice (0 otherwise: one 3-gram seen once is not a repetition). Ties go to the
    3-gram covering most words. "ha ha ha ha" -> 1.0; "i love it i love it" -> 1.0."""
    grams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    top = max(counts.values())
    if top < 2:
        return 0.0
    best = 0
    for gram, c in counts.items():
        if c != top:
            continue
        covered: set[int] = set()
        for i, g in enumerate(grams):
            if g == gram:
                covered.update((i, i + 1, i + 2))
        best = max(best, len(covered))
    return best / len(tokens)


def guard(text: str, finished: bool, min_words: int, max_repeat_fraction: float) -> float:
    """1.0 for a usable reply, 0.0 when empty, shorter than min_words words, repetitive or truncated."""
    w = words(text)
    if not text.strip() or not w:
        return 0.0
    if len(w) < min_words:
        return 0.0
    if not finished:
        return 0.0
    if repeat_fraction(w) > max_repeat_fraction:
        return 0.0
    return 1.0


def soft_guard(texts: Sequence[str], hard: np.ndarray, penalty: float) -> np.ndarray:
    """1 - penalty * (1 - hard guard), and 0 for a text without a word (the degenerate floor)."""
    if not 0.0 <= penalty <= 1.0:
        raise ValueError(f"objective.guard_penalty: must be in [0, 1], got {penalty}")
    has_words = np.array([bool(words(t)) for t in texts], dtype=np.float64)
    return has_words * (1.0 - penalty * (1.0 - np.asarray(hard, dtype=np.float64)))


def _unit(emb: np.ndarray, what: str, n: int) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(f"embedder returned shape {emb.shape} for {n} {what}; expected ({n}, d)")
    if not np.all(np.isfinite(emb)):
        raise ValueError(f"embedder returned non-finite values for the {what}")
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    # An all-zero embedding (possible for an empty text with some encoders) has no direction:
    # leave it zero, so its cosine with anything is 0 (relevance 0, semantic distance 1).
    return emb / np.where(norm > 0, norm, 1.0)


def relevance(prompts: Sequence[str], texts: Sequence[str], embedder: Embedder) -> np.ndarray:
    """clip(cos(e_prompt_i, e_text_i), 0, 1) for each pair."""
    if len(prompts) != len(texts):
        raise ValueError(f"relevance: {len(prompts)} prompts but {len(texts)} texts")
    if not texts:
        return np.zeros(0)
    # Each distinct prompt is embedded once (N completions share one prompt).
    uniq = list(dict.fromkeys(prompts))
    ep = _unit(embedder(uniq), "prompts", len(uniq))
    et = _unit(embedder(list(texts)), "texts", len(texts))
    row = {p: i for i, p in enumerate(uniq)}
    cos = np.einsum("nd,nd->n", ep[[row[p] for p in prompts]], et)
    return np.clip(cos, 0.0, 1.0)


def score_parts(
    prompts: Sequence[str], texts: Sequence[str], finished: Sequence[bool], embedder: Embedder | None, cfg: ObjectiveConfig
) -> dict[str, np.ndarray]:
    """{"guard", "relevance", "quality"} arrays of shape (len(texts),). `relevance` is NaN when the
    configured quality does not use it (it is then not computed, and no embedder is needed)."""
    if not (len(prompts) == len(texts) == len(finished)):
        raise ValueError(f"score_quality: {len(prompts)} prompts, {len(texts)} texts, {len(finished)} finished flags")
    if cfg.quality not in QUALITIES:
        raise ValueError(f"objective.quality: unknown {cfg.quality!r}; expected one of {QUALITIES}")
    g = np.array([guard(t, f, cfg.min_reply_words, cfg.max_repeat_fraction) for t, f in zip(texts, finished)], dtype=np.float64)
    if cfg.quality in USES_RELEVANCE:
        if embedder is None:
            raise ValueError(f"objective.quality={cfg.quality} needs a sentence embedder")
        r = relevance(prompts, texts, embedder)
    else:
        r = np.full(len(texts), np.nan)
    q = {"guard_x_relevance": lambda: g * r, "guard_x_relevance_gate": lambda: g * (r >= cfg.relevance_threshold),
         "guard_x_relevance_ramp": lambda: g * np.minimum(1.0, r / cfg.relevance_threshold),
         "relevance_x_soft_guard": lambda: soft_guard(texts, g, cfg.guard_penalty) * r,
         "guard": lambda: g, "relevance": lambda: r, "constant": lambda: np.ones(len(texts))}[cfg.quality]()
    return {"guard": g, "relevance": r, "quality": q}


def score_quality(
    prompts: Sequence[str], texts: Sequence[str], finished: Sequence[bool], embedder: Embedder | None, cfg: ObjectiveConfig
) -> np.ndarray:
    """Quality q in [0, 1] per text, as configured by `cfg.quality` (see the module docstring)."""
    return score_parts(prompts, texts, finished, embedder, cfg)["quality"]


def _pair_distinct_distance(a: list[str], b: list[str]) -> float:
    if len(a) < 2 and len(b) < 2:
        return 0.0 if a == b else 1.0
    d2 = distinct_n([" ".join(a), " ".join(b)], 2)
    return float(np.clip(2.0 * d2 - 1.0, 0.0, 1.0))


def distance_matrix(texts: Sequence[str], metric: str, embedder: Embedder | None = None) -> np.ndarray:
    """(N, N) symmetric pairwise distances in [0, 1] with a zero diagonal (module docstring)."""
    n = len(texts)
    if metric == "semantic_distinct":
        return (distance_matrix(texts, "semantic", embedder) + distance_matrix(texts, "distinct")) / 2.0
    if metric == "semantic":
        if embedder is None:
            raise ValueError("diversity_metric=semantic needs a sentence embedder")
        e = _unit(embedder(list(texts)), "texts", n)
        d = np.clip(1.0 - e @ e.T, 0.0, 1.0)
    elif metric == "bleu":
        # BLEU is undefined on a text without tokens (metrics raises Undefined); a sampled
        # completion can be empty (end-of-turn first), so such pairs are set here: an empty
        # text shares nothing with a non-empty one (1) and equals another empty one (0).
        empty = np.array([not tokenize(t) for t in texts])
        d = np.where(empty[:, None] & empty[None, :], 0.0, 1.0)
        full = np.flatnonzero(~empty)
        if len(full) >= 2:
            b = np.asarray(pairwise_bleu_matrix([texts[i] for i in full]), dtype=np.float64)
            d[np.ix_(full, full)] = np.clip(1.0 - (b + b.T) / 2.0, 0.0, 1.0)
    elif metric == "distinct":
        # Re-joining the tokens with spaces makes metrics.distinct_n see exactly these tokens.
        toks = [tokenize(t) for t in texts]
        d = np.zeros((n, n))
        for i in range(n):
            for j in range(i + 1, n):
                d[i, j] = d[j, i] = _pair_distinct_distance(toks[i], toks[j])
    else:
        raise ValueError(f"objective.diversity_metric: unknown {metric!r}; expected one of {DISTANCES}")
    d = (d + d.T) / 2.0  # exact symmetry despite float round-off in e @ e.T
    np.fill_diagonal(d, 0.0)
    return d
