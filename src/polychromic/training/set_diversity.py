"""Set diversity d(S) of a set of n samples, from their pairwise distances (objective.set_diversity).

Pure numpy, vectorised over many sets at once: the estimator scores up to thousands of n-subsets
per prompt. Every function takes `dsub`, a (K, n, n) stack of the sets' distance sub-matrices
(symmetric, zero diagonal, entries in [0, 1], objective.diversity_metric), and returns (K,) values
in [0, 1]:

- `mean_distance`: mean_{a<b} delta_ab, the polychromic paper's d(S) (Hamid et al., arXiv
  2509.25424). Two paraphrases at distance 0.1 still add 0.1 each: it measures spread, and a set
  of four near-duplicates is not far from a set of four different replies under it.
- `vendi`: VS(S) / n, VS the Vendi score of order 1 (Friedman & Dieng, arXiv 2210.02410) with the
  similarity K = 1 - delta: the exponential of the entropy of the eigenvalues of K / n, "the
  effective number of distinct samples". n identical replies give VS = 1 (d = 1/n); n mutually
  orthogonal ones (delta = 1) give VS = n (d = 1). K = 1 - delta need not be positive
  semi-definite (the clipped cosine distance and the lexical distances are not kernels); round-off
  and such negative eigenvalues are clipped to 0 and the rest renormalised to sum 1, as
  metrics.vendi_score does (tested equal on sets where both apply).
- `classes`: (number of semantic equivalence classes in S) / n, counting duplicates the way
  DARLING (arXiv 2509.02534) and Poly-EPO (arXiv 2604.17654) partition samples, with a distance
  threshold standing in for their learned/LM-judge equivalence: a and b are equivalent when
  delta_ab <= threshold (objective.class_threshold), and the classes are the connected
  components of that graph (its transitive closure, i.e. single linkage). Components do not
  depend on the order of the samples, which a greedy representative-based partition does.
  n identical replies: 1 class (d = 1/n); all pairs above the threshold: n classes (d = 1).

`class_labels` partitions a whole group of N samples (the pointwise estimator's DARLING reward).
"""

from __future__ import annotations

import numpy as np

SET_DIVERSITIES = ("mean_distance", "vendi", "classes")


def _check(dsub) -> np.ndarray:
    d = np.asarray(dsub, dtype=np.float64)
    if d.ndim != 3 or d.shape[1] != d.shape[2] or d.shape[1] < 1:
        raise ValueError(f"set diversity: expected a (K, n, n) stack of distance matrices, got shape {d.shape}")
    return d


def mean_distance(dsub) -> np.ndarray:
    """(K,) mean over a < b of delta_ab; needs n >= 2."""
    d = _check(dsub)
    n = d.shape[1]
    if n < 2:
        raise ValueError("set diversity mean_distance: a set needs n >= 2 samples")
    ia, ib = np.triu_indices(n, k=1)
    return d[:, ia, ib].mean(axis=1)


def vendi(dsub) -> np.ndarray:
    """(K,) Vendi score (order 1) of K = 1 - delta, divided by n; in [1/n, 1]."""
    d = _check(dsub)
    n = d.shape[1]
    lam = np.clip(np.linalg.eigvalsh((1.0 - d) / n), 0.0, None)
    lam = lam / lam.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(lam > 0, lam * np.log(lam), 0.0)
    return np.exp(-plogp.sum(axis=1)) / n


def _reach(dsub: np.ndarray, threshold: float) -> np.ndarray:
    """(K, n, n) bool: j is reachable from i through pairs at distance <= threshold."""
    n = dsub.shape[1]
    reach = (dsub <= threshold) | np.eye(n, dtype=bool)[None]
    # Transitive closure by repeated squaring: after s squarings paths of length 2^s are covered,
    # and no shortest path is longer than n - 1.
    for _ in range(max(1, int(np.ceil(np.log2(max(n, 2)))))):
        reach = (reach.astype(np.int32) @ reach.astype(np.int32)) > 0
    return reach


def classes(dsub, threshold: float) -> np.ndarray:
    """(K,) number of equivalence classes (connected components of delta <= threshold) / n."""
    d = _check(dsub)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"objective.class_threshold: must be in [0, 1], got {threshold}")
    n = d.shape[1]
    reach = _reach(d, threshold)
    # A component is counted once, at its lowest index: i starts a class when no j < i reaches it.
    lower = np.tril(np.ones((n, n), dtype=bool), k=-1)[None]
    first = ~(reach & lower).any(axis=2)
    return first.sum(axis=1) / n


def class_labels(distance, threshold: float) -> np.ndarray:
    """(N,) class index of each sample (0, 1, ... by lowest member), the partition `classes` counts."""
    d = _check(np.asarray(distance, dtype=np.float64)[None])
    reach = _reach(d, threshold)[0]
    return np.argmax(reach, axis=1)  # the lowest index in each sample's component


def set_diversity(dsub, kind: str = "mean_distance", threshold: float = 0.2) -> np.ndarray:
    """d(S) for each of the K sets, as configured by objective.set_diversity."""
    if kind == "mean_distance":
        return mean_distance(dsub)
    if kind == "vendi":
        return vendi(dsub)
    if kind == "classes":
        return classes(dsub, threshold)
    raise ValueError(f"objective.set_diversity: unknown {kind!r}; expected one of {SET_DIVERSITIES}")
