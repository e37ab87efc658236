"""The polychromic objective: CE + lambda * set-level score-function term + beta * KL.

Maths: ../shared/docs/objective.md (implemented exactly; notes in docs/objective.md). Per prompt,
N completions y_1..y_N are sampled with no grad; each gets a quality q_i in [0, 1] and each pair
a distance delta_ab in [0, 1]. For sets S of n samples, F(S) = mean_{i in S} q_i * d(S) with
d(S) = mean_{a<b in S} delta_ab ("reward times diversity", Hamid et al., Polychromic Objectives
for RL, ICLR 2026). The leave-one-out set advantage

    A_i = (n / N) * (g_i - b_i),  g_i = mean F(S) over sets containing i,
                                  b_i = mean F(S) over sets drawn from the other N - 1 samples,

makes sum_i A_i grad log pi(y_i | x) an unbiased estimate of grad E[F] (b_i does not depend on
y_i). The loss is div_loss = -(1/M) sum_x sum_i A_i logp_i / L_norm with logp_i the completion's
summed token log-prob (logits / T), L_norm = max_new_tokens a constant (a per-sample length
would bias the gradient towards short or long replies).
"""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager
from typing import Callable, Sequence

import numpy as np
import torch

from polychromic.config import Config, ObjectiveConfig
from polychromic.training.objectives.terms import Terms
from polychromic.rewards import distance_matrix, score_quality, words
from polychromic.training.rollout import Rollouts, pack, token_logprobs

NEEDS_ROLLOUTS = True
SET_REWARDS = ("quality_x_diversity", "diversity", "max_quality")


# ---------------------------------------------------------------------------------------------
# Advantages (pure numpy)


def _check(quality, distance) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(quality, dtype=np.float64)
    d = np.asarray(distance, dtype=np.float64)
    if q.ndim != 1:
        raise ValueError(f"quality: expected shape (N,), got {q.shape}")
    if d.shape != (q.shape[0], q.shape[0]):
        raise ValueError(f"distance: expected shape ({q.shape[0]}, {q.shape[0]}) for N={q.shape[0]} samples, got {d.shape}")
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(d))):
        raise ValueError("quality and distance must be finite")
    return q, d


def set_values(quality: np.ndarray, distance: np.ndarray, subsets: np.ndarray, set_reward: str = "quality_x_diversity") -> np.ndarray:
    """F(S) for each row of `subsets` (K, n) of sample indices."""
    qs = quality[subsets]
    if set_reward == "max_quality":
        return qs.max(axis=1)
    ia, ib = np.triu_indices(subsets.shape[1], k=1)
    ds = distance[subsets[:, ia], subsets[:, ib]].mean(axis=1)
    if set_reward == "diversity":
        return ds
    if set_reward == "quality_x_diversity":
        return qs.mean(axis=1) * ds
    raise ValueError(f"objective.set_reward: unknown {set_reward!r}; expected one of {SET_REWARDS}")


def set_advantages(
    quality,
    distance,
    set_size: int,
    max_subsets: int = 256,
    rng: np.random.Generator | None = None,
    set_reward: str = "quality_x_diversity",
) -> np.ndarray:
    """Leave-one-out set advantages A_i = (n / N)(g_i - b_i), shape (N,).

    quality: (N,) q_i; distance: (N, N) delta_ab (only a < b entries are read, through both
    index orders; pass a symmetric matrix). All C(N, n) subsets are enumerated when there are at
    most `max_subsets`; otherwise, for each i, `max_subsets` random orderings of the other N - 1
    samples give g_i (i plus the first n - 1) and b_i (the first n), both unbiased; sharing the
    ordering correlates them, which lowers the variance of g_i - b_i. `rng` drives that sampling
    (None: fresh entropy). N == n returns zeros: no set avoids i, so there is no baseline, and
    the only set's F is the same for every i.
    """
    q, d = _check(quality, distance)
    big_n, n = q.shape[0], int(set_size)
    if set_reward not in SET_REWARDS:
        raise ValueError(f"objective.set_reward: unknown {set_reward!r}; expected one of {SET_REWARDS}")
    lowest = 1 if set_reward == "max_quality" else 2
    if not lowest <= n <= big_n:
        raise ValueError(f"set_size: must be in [{lowest}, N={big_n}] for set_reward={set_reward}, got {n}")
    if max_subsets < 1:
        raise ValueError(f"max_subsets: must be >= 1, got {max_subsets}")
    if n == big_n:
        return np.zeros(big_n)
    if math.comb(big_n, n) <= max_subsets:
        subsets = np.array(list(itertools.combinations(range(big_n), n)), dtype=np.int64)
        f = set_values(q, d, subsets, set_reward)
        member = np.zeros((len(subsets), big_n), dtype=bool)
        member[np.arange(len(subsets))[:, None], subsets] = True
        g = (f @ member) / member.sum(axis=0)
        b = (f @ ~member) / (~member).sum(axis=0)
    else:
        rng = rng if rng is not None else np.random.default_rng()
        g = np.empty(big_n)
        b = np.empty(big_n)
        for i in range(big_n):
            others = np.delete(np.arange(big_n), i)
            order = others[np.argsort(rng.random((max_subsets, big_n - 1)), axis=1)]
            with_i = np.concatenate([np.full((max_subsets, 1), i), order[:, : n - 1]], axis=1)
            g[i] = set_values(q, d, with_i, set_reward).mean()
            b[i] = set_values(q, d, order[:, :n], set_reward).mean()
    return (n / big_n) * (g - b)


def pointwise_advantages(quality, distance, set_reward: str = "quality_x_diversity") -> np.ndarray:
    """DARLING-style surrogate (cheaper, biased; an ablation): r_i = q_i * mean_{j != i} delta_ij
    (the set_reward's pointwise analogue: mean distance alone for `diversity`, q_i for
    `max_quality`), advantage r_i - mean_j r_j (group-mean baseline)."""
    q, d = _check(quality, distance)
    big_n = q.shape[0]
    if big_n < 2:
        raise ValueError("pointwise advantages need N >= 2 samples")
    spread = (d.sum(axis=1) - np.diag(d)) / (big_n - 1)
    r = {"quality_x_diversity": q * spread, "diversity": spread, "max_quality": q}.get(set_reward)
    if r is None:
        raise ValueError(f"objective.set_reward: unknown {set_reward!r}; expected one of {SET_REWARDS}")
    return r - r.mean()


def advantages(quality, distance, cfg: ObjectiveConfig, set_size: int, rng: np.random.Generator) -> np.ndarray:
    """The configured estimator (objective.estimator) for one prompt's N samples."""
    if cfg.estimator == "pointwise":
        return pointwise_advantages(quality, distance, cfg.set_reward)
    return set_advantages(quality, distance, set_size, cfg.max_subsets, rng, cfg.set_reward)


# ---------------------------------------------------------------------------------------------
# Scoring rollouts


def _memo(embedder: Callable | None) -> Callable | None:
    """The embedder with a per-call-site cache: quality and distances embed the same texts."""
    if embedder is None:
        return None
    cache: dict[str, np.ndarray] = {}

    def embed(texts: Sequence[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in cache))
        if todo:
            for t, e in zip(todo, np.asarray(embedder(todo))):
                cache[t] = e
        return np.stack([cache[t] for t in texts]) if texts else np.asarray(embedder([]))

    return embed


def score_rollouts(ro: Rollouts, embedder, cfg: ObjectiveConfig) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(quality (M, N), distances (M, N, N), logs) for a batch of rollouts.

    logs: `train/diversity_score` = mean over prompts of the mean pairwise distance (with all
    subsets enumerated this is exactly the mean d(S) over the sets), `train/quality_mean`,
    `train/avg_unique_words` (mean over completions of the number of distinct words)."""
    embed = _memo(embedder)
    flat_prompts = [p for p, group in zip(ro.prompt_texts, ro.texts) for _ in group]
    flat_texts = [t for group in ro.texts for t in group]
    flat_finished = [f for group in ro.finished for f in group]
    q = score_quality(flat_prompts, flat_texts, flat_finished, embed, cfg).reshape(ro.m, ro.n)
    dist = np.stack([distance_matrix(group, cfg.diversity_metric, embed) for group in ro.texts])
    iu = np.triu_indices(ro.n, k=1)
    logs = {
        "train/diversity_score": float(np.mean([dm[iu].mean() for dm in dist])) if ro.n >= 2 else 0.0,
        "train/quality_mean": float(q.mean()),
        "train/avg_unique_words": float(np.mean([len(set(words(t))) for t in flat_texts])),
    }
    return q, dist, logs


# ---------------------------------------------------------------------------------------------
# Losses (torch)


def div_loss(logp: torch.Tensor, adv: torch.Tensor, l_norm: float, m: int) -> torch.Tensor:
    """-(1/M) sum_i A_i logp_i / L_norm for one prompt's samples (summed over prompts by the caller)."""
    return -(adv * logp).sum() / (m * l_norm)


def k3(logp_tok: torch.Tensor, ref_tok: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(r) - r - 1, r = logp_ref - logp (>= 0, unbiased
    on samples from pi, Schulman 2020); zero where mask is 0."""
    r = (ref_tok - logp_tok) * mask
    return (torch.exp(r) - r - 1.0) * mask


@contextmanager
def dropout_off(model):
    """Recompute log-probs without dropout (the samples came from the model in eval mode), but
    keep the model in train mode so gradient checkpointing stays active."""
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.training]
    for m in drops:
        m.eval()
    try:
        yield
    finally:
        for m in drops:
            m.train()


def rollout_term(model, ro: Rollouts, embedder, cfg: Config, backward: Callable[[torch.Tensor], None]) -> Terms:
    """Score, compute advantages, and backpropagate lambda * div_loss (+ beta * kl_loss) one prompt
    group at a time (memory stays that of N sequences). `model` is the PeftModel (its
    disable_adapter() gives the reference policy: no second model is loaded)."""
    o = cfg.objective
    q, dist, logs = score_rollouts(ro, embedder, o)
    rng = np.random.default_rng(ro.seed)
    adv = np.stack([advantages(q[i], dist[i], o, cfg.set_size, rng) for i in range(ro.m)])
    lam, beta = o.diversity_weight, o.kl_beta
    temp, l_norm = ro.params.temperature, float(ro.params.max_new_tokens)
    device = next(model.parameters()).device
    div_total, kl_total = 0.0, 0.0
    with dropout_off(model):
        for i in range(ro.m):
            if beta == 0 and not adv[i].any():
                continue  # every A_i is 0: the term's gradient is exactly 0, skip the forward
            # Pad id 0 is never attended to (attention_mask 0) and never scored (completion_mask 0).
            batch = pack([ro.prompt_ids[i]] * ro.n, ro.completion_ids[i], 0, device)
            logp_tok = token_logprobs(model, batch, temp)
            a = torch.as_tensor(adv[i], dtype=logp_tok.dtype, device=device)
            div = div_loss(logp_tok.sum(dim=1), a, l_norm, ro.m)
            loss = lam * div
            if beta > 0:
                with torch.no_grad(), model.disable_adapter():
                    ref_tok = token_logprobs(model, batch, temp)
                kl = k3(logp_tok, ref_tok, batch["completion_mask"]).sum() / (ro.m * ro.n * l_norm)
                loss = loss + beta * kl
                kl_total += float(kl.detach())
            backward(loss)
            div_total += float(div.detach())
    logs.update(
        {
            "train/advantage_mean": float(adv.mean()),
            "train/advantage_std": float(adv.std()),
            "train/div_loss": div_total,
            "train/kl": kl_total,
        }
    )
    return Terms(loss=lam * div_total + beta * kl_total, logs=logs)
