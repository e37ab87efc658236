"""Lexical diversity of the k samples of one prompt: the tokenizer, distinct-n, the BLEU family
(Self-BLEU, pairwise BLEU, the pairwise BLEU matrix) and the compression ratio.

Tokenizer (docs/metrics.md): NFKC, lowercase, `\\w+|[^\\w\\s]`; no NLTK data.

BLEU-4 is NLTK `sentence_bleu` (uniform weights, `SmoothingFunction().method1`) on our tokenizer,
computed by `_bleu4` from n-gram count matrices: NLTK rebuilds every reference's n-gram Counter for
every hypothesis (k^2 * 4 Counters per prompt), which made Self-BLEU + pairwise-BLEU the slowest
part of an evaluation (benchmarks/metrics_speed.py; numbers in docs/metrics.md). The arithmetic
replicates NLTK's step by step and tests check equality on random inputs.

No torch here (layering rule, tests/test_layering.py): numpy, zlib and the standard library.
"""

from __future__ import annotations

import math
import re
import unicodedata
import zlib
from typing import Sequence

import numpy as np

from .core import Undefined, check_texts

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
BLEU_ORDER = 4


def tokenize(text: str) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"tokenize: expected str, got {type(text).__name__}")
    return _TOKEN_RE.findall(unicodedata.normalize("NFKC", text).lower())


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


class Lexical:
    """The k samples of one prompt, tokenized once, with an n-gram count matrix per order
    (rows = samples, columns = the prompt's distinct n-grams). Memory O(k * V_n).
    `per_prompt_metrics` builds one per prompt and asks it for every lexical metric."""

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

    def _totals(self, i: int) -> list[int]:
        return [max(0, self.lengths[i] - n + 1) for n in range(1, BLEU_ORDER + 1)]

    def distinct(self, n: int) -> float:
        if n < 1:
            raise ValueError(f"distinct_n: n must be >= 1, got {n}")
        c = self.counts(n)
        total = int(c.sum())
        if total == 0:
            raise Undefined(f"distinct_{n}: no {n}-grams in any sample")
        return c.shape[1] / total

    def pairwise_bleu_matrix(self) -> np.ndarray:
        self.require_bleu("pairwise_bleu_matrix")
        k = self.k
        # matches[n][i, j] = sum over n-grams g of min(count_i(g), count_j(g)): the clipped matches
        # of hypothesis i against the single reference j.
        matches = []
        for n in range(1, BLEU_ORDER + 1):
            c = self.counts(n)
            matches.append(np.stack([np.minimum(c[i], c).sum(axis=1) for i in range(k)]) if c.shape[1] else np.zeros((k, k), dtype=np.int64))
        out = np.eye(k)
        for i in range(k):
            totals = self._totals(i)
            for j in range(k):
                if i != j:
                    out[i, j] = _bleu4([int(m[i, j]) for m in matches], totals, self.lengths[i], self.lengths[j])
        return out

    def pairwise_bleu(self) -> float:
        self.require_bleu("pairwise_bleu")
        m = self.pairwise_bleu_matrix()
        k = self.k
        return float((m.sum() - np.trace(m)) / (k * (k - 1)))

    def self_bleu_scores(self) -> list[float]:
        self.require_bleu("self_bleu")
        k = self.k
        scores = []
        for i in range(k):
            others = [j for j in range(k) if j != i]
            matches = []
            for n in range(1, BLEU_ORDER + 1):
                c = self.counts(n)
                if c.shape[1] == 0:
                    matches.append(0)
                    continue
                # multi-reference clipping: each n-gram is capped by its largest count in any reference
                matches.append(int(np.minimum(c[i], c[others].max(axis=0)).sum()))
            ref_len = _closest_ref_len([self.lengths[j] for j in others], self.lengths[i])
            scores.append(_bleu4(matches, self._totals(i), self.lengths[i], ref_len))
        return scores

    def self_bleu(self) -> float:
        return float(np.mean(self.self_bleu_scores()))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams, pooled over the k samples of one prompt (n-grams never
    cross samples). Higher = more diverse. Undefined when no sample has an n-gram."""
    return Lexical(check_texts(texts, "distinct_n")).distinct(n)


def pairwise_bleu_matrix(texts: Sequence[str]) -> np.ndarray:
    """(k, k) array: [i, j] = BLEU-4 of hypothesis i against the single reference j (NLTK
    sentence_bleu, method1, our tokenizer); the diagonal is 1 by definition (a sample against
    itself). Not symmetric (the brevity penalty depends on the hypothesis length). Also the
    `bleu` distance of the training objective (1 - the symmetrised matrix)."""
    return Lexical(check_texts(texts, "pairwise_bleu_matrix")).pairwise_bleu_matrix()


def pairwise_bleu(texts: Sequence[str]) -> float:
    """Mean over ordered pairs i != j of single-reference BLEU-4. Lower = more diverse; unlike
    Self-BLEU it does not drift upward with k (more references -> more matches)."""
    return Lexical(check_texts(texts, "pairwise_bleu")).pairwise_bleu()


def self_bleu_scores(texts: Sequence[str]) -> list[float]:
    """Per-hypothesis multi-reference BLEU-4: sample i against all the other samples."""
    return Lexical(check_texts(texts, "self_bleu")).self_bleu_scores()


def self_bleu(texts: Sequence[str]) -> float:
    """Mean over i of BLEU-4(s_i, references = all other samples). Lower = more diverse."""
    return Lexical(check_texts(texts, "self_bleu")).self_bleu()


def compression_ratio(texts: Sequence[str]) -> float:
    """UTF-8 bytes of the samples joined by newlines / bytes of their raw deflate (zlib level 9,
    wbits -15: no header, so short texts are not penalised by a constant). Lower = more diverse.
    The samples are joined in sorted order: deflate output depends on order, and a metric of a
    set of samples must not."""
    data = "\n".join(sorted(check_texts(texts, "compression_ratio"))).encode("utf-8")
    if not data.strip():
        raise Undefined("compression_ratio: all samples are empty")
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = comp.compress(data) + comp.flush()
    return len(data) / len(packed)
