"""Embedding diversity of the k samples of one prompt: the cosine Gram matrix, the mean pairwise
cosine distance, and the Vendi score of order q (Friedman & Dieng 2023, arXiv:2210.02410;
Pasarkar & Dieng 2024 for q != 1, arXiv:2310.12952).

No torch here (layering rule, tests/test_layering.py): the embeddings come in as arrays.
"""

from __future__ import annotations

import math

import numpy as np

from .core import Undefined, check_matrix


def cosine_similarity_matrix(embeddings) -> np.ndarray:
    """(k, k) cosine Gram matrix of L2-normalised rows, clipped to [-1, 1] with an exact unit
    diagonal (round-off would otherwise make identical samples 1e-16 apart)."""
    e = check_matrix(embeddings, "embeddings", 2)
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


def mean_cosine_distance_of(sim: np.ndarray) -> float:
    """`mean_pairwise_cosine_distance` from an already computed cosine Gram matrix."""
    k = sim.shape[0]
    if k < 2:
        raise Undefined(f"mean_pairwise_cosine_distance needs at least 2 samples, got {k}")
    iu = np.triu_indices(k, 1)
    return float(np.mean(1.0 - sim[iu]))


def mean_pairwise_cosine_distance(embeddings) -> float:
    """Mean over i < j of 1 - cos(e_i, e_j) (rows L2-normalised). Higher = more diverse."""
    return mean_cosine_distance_of(cosine_similarity_matrix(embeddings))


VENDI_ORDERS: dict[str, float] = {"vendi_q1": 1.0, "vendi_q0.5": 0.5, "vendi_q2": 2.0, "vendi_qinf": math.inf}


def vendi_score(similarity_matrix, q: float = 1.0) -> float:
    """Vendi score of order q (Friedman & Dieng 2023; Pasarkar & Dieng 2024 for q != 1): the
    eigenvalues l of K/k (K a similarity matrix with unit diagonal), round-off negatives clipped
    to 0; q = 1: exp(-sum l log l); q = inf: 1 / max l; else exp(log(sum l^q) / (1 - q)).
    Range [1, k]; higher = more diverse."""
    K = check_matrix(similarity_matrix, "vendi_score: similarity_matrix", 2)
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
