"""The polychromic objective: CE + lambda * set-level score-function term + beta * KL.

Maths: docs/objective.md. Per prompt, N completions y_1..y_N are sampled with no grad; each gets
a quality q_i in [0, 1] and each pair a distance delta_ab in [0, 1]. For sets S of n samples,
F(S) = mean_{i in S} q_i * d(S) with d(S) the set diversity of objective.set_diversity (default
mean_{a<b in S} delta_ab; Vendi / n and classes / n in training/set_diversity.py) ("reward times
diversity", Hamid et al., Polychromic Objectives for RL, arXiv 2509.25424). The leave-one-out set
advantage

    A_i = (n / N) * (g_i - b_i),  g_i = mean F(S) over sets containing i,
                                  b_i = mean F(S) over sets drawn from the other N - 1 samples,

makes sum_i A_i grad log pi(y_i | x) an unbiased estimate of grad E[F] (b_i does not depend on
y_i). The loss is div_loss = -(1/M) sum_x sum_i A_i logp_i / L_norm with logp_i the completion's
summed token log-prob (logits / T), L_norm = max_new_tokens a constant (a per-sample length
would bias the gradient towards short or long replies). The KL anchor beta * KL(policy, ref)
uses the per-token k3 or k2 estimator (objective.kl_estimator) against the model with its LoRA
disabled: the pre-SFT base, or the SFT policy when model.init_adapter was merged into the base.
"""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager
from typing import Callable, Sequence

import numpy as np
import torch
from torch.profiler import record_function

from polychromic.config import Config, ObjectiveConfig
from polychromic.training.objectives.terms import Terms
from polychromic.rewards import EMBEDDED_DISTANCES, USES_RELEVANCE, distance_matrix, score_quality, words
from polychromic.prompts import padded_width
from polychromic.training.rollout import (Rollouts, laid_tokens, pack, pack_packed, packing, rows_per_pass, scoring_stream,
                                         to_device, token_logprobs)
from polychromic.training.set_diversity import class_labels
from polychromic.training.set_diversity import set_diversity as set_diversity_of

NEEDS_ROLLOUTS = True
SET_REWARDS = ("quality_x_diversity", "diversity", "max_quality")

OVERLAP_SCORING = False
"""Whether rollout_term, on a GPU, scores the replies on a second CUDA stream and copies the
advantages in from pinned memory without waiting. On the one stream, the scoring's own copies
(the encoder's inputs in, its embeddings out) and the advantages' copy each wait for the whole
forward queued before them, and the GPU then idles while the host finishes the scoring. On a
second stream the scoring waits for its own work alone, so it can finish under the forward and
the backward be queued behind it. The term is the same either way (a GPU test in
tests/test_recompute.py checks it); which is faster is what `benchmarks/pg_profile.py --ab
overlap_scoring` measures, and off is the measured state."""


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


def set_parts(
    quality: np.ndarray,
    distance: np.ndarray,
    subsets: np.ndarray,
    set_reward: str = "quality_x_diversity",
    set_diversity: str = "mean_distance",
    class_threshold: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """(a(S), d(S)) for each row of `subsets` (K, n), with F(S) = a(S) * d(S): a the quality part
    (mean q for quality_x_diversity, max q for max_quality, 1 for diversity) and d the diversity
    part (d(S) of objective.set_diversity; 1 for max_quality)."""
    if set_reward not in SET_REWARDS:
        raise ValueError(f"objective.set_reward: unknown {set_reward!r}; expected one of {SET_REWARDS}")
    qs = quality[subsets]
    ones = np.ones(len(subsets))
    if set_reward == "max_quality":
        return qs.max(axis=1), ones
    ds = set_diversity_of(distance[subsets[:, :, None], subsets[:, None, :]], set_diversity, class_threshold)
    return (qs.mean(axis=1) if set_reward == "quality_x_diversity" else ones), ds


def set_values(quality: np.ndarray, distance: np.ndarray, subsets: np.ndarray, set_reward: str = "quality_x_diversity",
               set_diversity: str = "mean_distance", class_threshold: float = 0.2) -> np.ndarray:
    """F(S) for each row of `subsets` (K, n) of sample indices."""
    a, d = set_parts(quality, distance, subsets, set_reward, set_diversity, class_threshold)
    return a * d


def _loo(f: np.ndarray, member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(g, b) from F over enumerated subsets: g_i the mean over sets holding i, b_i over the others."""
    return (f @ member) / member.sum(axis=0), (f @ ~member) / (~member).sum(axis=0)


def set_advantage_parts(
    quality,
    distance,
    set_size: int,
    max_subsets: int = 256,
    rng: np.random.Generator | None = None,
    set_reward: str = "quality_x_diversity",
    set_diversity: str = "mean_distance",
    class_threshold: float = 0.2,
) -> dict[str, np.ndarray | float]:
    """The leave-one-out set advantages and their decomposition, for one prompt's N samples.

    Returns {"total": A (N,), "quality": A with d(S) fixed at its mean d_bar, "diversity": A with
    the quality part a(S) fixed at its mean a_bar, "set_diversity": d_bar}; the means are over the
    sets the estimator used (uniform over all n-subsets in both branches, see set_advantages).
    Var(A_quality) and Var(A_diversity) say how much of the advantage signal the quality and the
    diversity carry (they need not add up to Var(A): F = a d has an interaction term).
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
    spec = (set_reward, set_diversity, class_threshold)
    if n == big_n:
        a, ds = set_parts(q, d, np.arange(big_n)[None, :], *spec)
        zeros = np.zeros(big_n)
        return {"total": zeros, "quality": zeros.copy(), "diversity": zeros.copy(), "set_diversity": float(ds[0])}
    scale = n / big_n
    if math.comb(big_n, n) <= max_subsets:
        subsets = np.array(list(itertools.combinations(range(big_n), n)), dtype=np.int64)
        a, ds = set_parts(q, d, subsets, *spec)
        member = np.zeros((len(subsets), big_n), dtype=bool)
        member[np.arange(len(subsets))[:, None], subsets] = True
        out = {}
        for key, f in (("total", a * ds), ("quality", a * ds.mean()), ("diversity", a.mean() * ds)):
            g, b = _loo(f, member)
            out[key] = scale * (g - b)
        return out | {"set_diversity": float(ds.mean())}
    # For each i, `max_subsets` random orderings of the other N - 1 samples: g_i from i plus the
    # first n - 1, b_i from the first n (both unbiased; sharing the ordering correlates them, which
    # lowers the variance of g_i - b_i). Pooled over i, both kinds of draws are uniform over all
    # n-subsets, so the pooled means a_bar, d_bar estimate the means over every set.
    rng = rng if rng is not None else np.random.default_rng()
    with_i = np.empty((big_n, max_subsets, n), dtype=np.int64)
    without = np.empty((big_n, max_subsets, n), dtype=np.int64)
    for i in range(big_n):
        others = np.delete(np.arange(big_n), i)
        order = others[np.argsort(rng.random((max_subsets, big_n - 1)), axis=1)]
        with_i[i] = np.concatenate([np.full((max_subsets, 1), i), order[:, : n - 1]], axis=1)
        without[i] = order[:, :n]
    a, ds = set_parts(q, d, np.concatenate([with_i, without]).reshape(-1, n), *spec)
    a, ds = a.reshape(2, big_n, max_subsets), ds.reshape(2, big_n, max_subsets)
    out = {}
    for key, f in (("total", a * ds), ("quality", a * ds.mean()), ("diversity", a.mean() * ds)):
        out[key] = scale * (f[0].mean(axis=1) - f[1].mean(axis=1))
    return out | {"set_diversity": float(ds.mean())}


def set_advantages(
    quality,
    distance,
    set_size: int,
    max_subsets: int = 256,
    rng: np.random.Generator | None = None,
    set_reward: str = "quality_x_diversity",
    set_diversity: str = "mean_distance",
    class_threshold: float = 0.2,
) -> np.ndarray:
    """Leave-one-out set advantages A_i = (n / N)(g_i - b_i), shape (N,).

    quality: (N,) q_i; distance: (N, N) delta_ab (pass a symmetric matrix). All C(N, n) subsets
    are enumerated when there are at most `max_subsets`; otherwise, for each i, `max_subsets`
    random orderings of the other N - 1 samples give g_i (i plus the first n - 1) and b_i (the
    first n), both unbiased. `rng` drives that sampling (None: fresh entropy). N == n returns
    zeros: no set avoids i, so there is no baseline, and the only set's F is the same for every i.
    """
    return set_advantage_parts(quality, distance, set_size, max_subsets, rng, set_reward, set_diversity, class_threshold)["total"]


def pointwise_parts(quality, distance, set_reward: str = "quality_x_diversity", set_diversity: str = "mean_distance",
                    class_threshold: float = 0.2) -> dict[str, np.ndarray | float]:
    """DARLING-style surrogate and its decomposition (as set_advantage_parts): r_i = q_i * s_i,
    s_i the spread of sample i: its mean distance to the others (mean_distance) or the fraction
    of the others outside its equivalence class (classes, DARLING's partition reward); the
    set_reward's pointwise analogue (s_i alone for `diversity`, q_i for `max_quality`);
    advantage r_i - mean_j r_j (group-mean baseline). Vendi has no per-sample analogue."""
    q, d = _check(quality, distance)
    big_n = q.shape[0]
    if big_n < 2:
        raise ValueError("pointwise advantages need N >= 2 samples")
    if set_reward not in SET_REWARDS:
        raise ValueError(f"objective.set_reward: unknown {set_reward!r}; expected one of {SET_REWARDS}")
    if set_diversity == "mean_distance":
        spread = (d.sum(axis=1) - np.diag(d)) / (big_n - 1)
    elif set_diversity == "classes":
        labels = class_labels(d, class_threshold)
        spread = (labels[None, :] != labels[:, None]).sum(axis=1) / (big_n - 1)
    else:
        raise ValueError(f"objective.set_diversity={set_diversity!r} has no pointwise form; use estimator: set, "
                         "or set_diversity mean_distance or classes")
    ones = np.ones(big_n)
    a, s = {"quality_x_diversity": (q, spread), "diversity": (ones, spread), "max_quality": (q, ones)}[set_reward]
    out = {}
    for key, r in (("total", a * s), ("quality", a * s.mean()), ("diversity", a.mean() * s)):
        out[key] = r - r.mean()
    return out | {"set_diversity": float(s.mean())}


def pointwise_advantages(quality, distance, set_reward: str = "quality_x_diversity", set_diversity: str = "mean_distance",
                         class_threshold: float = 0.2) -> np.ndarray:
    """The pointwise surrogate's advantages r_i - mean_j r_j (pointwise_parts)."""
    return pointwise_parts(quality, distance, set_reward, set_diversity, class_threshold)["total"]


def advantage_parts(quality, distance, cfg: ObjectiveConfig, set_size: int, rng: np.random.Generator) -> dict[str, np.ndarray | float]:
    """The configured estimator (objective.estimator) for one prompt's N samples, with its
    quality / diversity decomposition (set_advantage_parts)."""
    if cfg.estimator == "pointwise":
        return pointwise_parts(quality, distance, cfg.set_reward, cfg.set_diversity, cfg.class_threshold)
    return set_advantage_parts(quality, distance, set_size, cfg.max_subsets, rng, cfg.set_reward, cfg.set_diversity, cfg.class_threshold)


def advantages(quality, distance, cfg: ObjectiveConfig, set_size: int, rng: np.random.Generator) -> np.ndarray:
    """The configured estimator's advantages for one prompt's N samples."""
    return advantage_parts(quality, distance, cfg, set_size, rng)["total"]


# ---------------------------------------------------------------------------------------------
# Scoring rollouts


def _memo(embedder: Callable | None, ahead: Sequence[str] = ()) -> Callable | None:
    """The embedder with a per-call-site cache: quality and distances embed the same texts. The
    texts `ahead` are embedded with the first call, in the same encoder call, whatever it asks."""
    if embedder is None:
        return None
    cache: dict[str, np.ndarray] = {}
    pending = list(ahead)

    def embed(texts: Sequence[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in (*pending, *texts) if t not in cache))
        pending.clear()
        if todo:
            for t, e in zip(todo, np.asarray(embedder(todo))):
                cache[t] = e
        return np.stack([cache[t] for t in texts]) if texts else np.asarray(embedder([]))

    return embed


def score_rollouts(ro: Rollouts, embedder, cfg: ObjectiveConfig) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(quality (M, N), distances (M, N, N), logs) for a batch of rollouts.

    logs: `train/diversity_score` = mean over prompts of the mean pairwise distance (with all
    subsets enumerated this is exactly the mean d(S) over the sets), `train/quality_mean`,
    `train/avg_unique_words` (mean over completions of the number of distinct words).

    One encoder call embeds every text the scoring needs (the distinct prompts for relevance,
    the M x N replies for a semantic distance), and the work on the texts alone (the word
    counts, the quality's guard) comes before it: rollout_term scores while the GPU runs the
    first pass's forward, and the encoder's first copy to the GPU waits for that forward."""
    flat_prompts = [p for p, group in zip(ro.prompt_texts, ro.texts) for _ in group]
    flat_texts = [t for group in ro.texts for t in group]
    flat_finished = [f for group in ro.finished for f in group]
    unique_words = float(np.mean([len(set(words(t))) for t in flat_texts]))
    relevance = cfg.quality in USES_RELEVANCE
    ahead = (list(dict.fromkeys(ro.prompt_texts)) if relevance else []) + (
        flat_texts if relevance or cfg.diversity_metric in EMBEDDED_DISTANCES else [])
    embed = _memo(embedder, ahead)
    q = score_quality(flat_prompts, flat_texts, flat_finished, embed, cfg).reshape(ro.m, ro.n)
    dist = np.stack([distance_matrix(group, cfg.diversity_metric, embed) for group in ro.texts])
    iu = np.triu_indices(ro.n, k=1)
    logs = {
        "train/diversity_score": float(np.mean([dm[iu].mean() for dm in dist])) if ro.n >= 2 else 0.0,
        "train/quality_mean": float(q.mean()),
        "train/avg_unique_words": unique_words,
    }
    return q, dist, logs


# ---------------------------------------------------------------------------------------------
# Losses (torch)


def div_loss(logp: torch.Tensor, adv: torch.Tensor, l_norm: float, m: int) -> torch.Tensor:
    """-(1/M) sum_i A_i logp_i / L_norm for one prompt's samples (summed over prompts by the caller)."""
    return -(adv * logp).sum() / (m * l_norm)


def k3(logp_tok: torch.Tensor, ref_tok: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k3 = exp(r) - r - 1, r = logp_ref - logp (Schulman 2020); zero where mask is 0.
    Its VALUE is an unbiased, non-negative estimate of KL(pi || ref) on samples from pi, but its
    GRADIENT, (1 - ref/pi) grad log pi in expectation, is the gradient of KL(ref || pi) (the
    mass-covering direction; Tang & Munos, arXiv 2506.09477). docs/objective.md, "KL anchor"."""
    r = (ref_tok - logp_tok) * mask
    return (torch.exp(r) - r - 1.0) * mask


def k2(logp_tok: torch.Tensor, ref_tok: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k2 = r^2 / 2, r = logp_ref - logp; zero where mask is 0. Its gradient on samples
    from pi, (log pi - log ref) grad log pi, is in expectation the gradient of KL(pi || ref) (the
    mode-seeking direction, the usual RLHF penalty; arXiv 2506.09477)."""
    r = (ref_tok - logp_tok) * mask
    return 0.5 * r * r * mask


KL_ESTIMATORS = {"k3": k3, "k2": k2}


def eos_blocked(ro: Rollouts) -> tuple[int, list[int]]:
    """(min_new_tokens, EOS ids) the sampler blocked: the recomputed log-probs must block them too
    (rollout.token_logprobs), else the score-function gradient is taken off-policy."""
    return ro.params.min_new_tokens, list(ro.eos_ids)


@contextmanager
def dropout_off(model):
    """Recompute log-probs without dropout (the samples came from the model in eval mode), but
    keep the model in train mode so gradient checkpointing stays active: the Dropout modules
    (LoRA's) go to eval mode with rate 0, and attention modules' dropout rate (transformers'
    attention reads `attention_dropout` in train mode) is 0 meanwhile. The rate as well as the
    mode: peft's disable_adapter() puts its layers' dropout back in the model's mode on exit
    (adapter_disabled undoes that too), and a Dropout of rate 0 is the identity in either mode."""
    drops, rates = dropout_modules(model)
    for m, _ in drops:
        m.eval()
        m.p = 0.0
    for m, _ in rates:
        m.attention_dropout = 0.0
    try:
        yield
    finally:
        for m, p in drops:
            m.p = p
            m.train()
        for m, rate in rates:
            m.attention_dropout = rate


def dropout_modules(model) -> tuple[list, list]:
    """(Dropout modules in train mode, with their rates), (modules with a non-zero attention
    dropout rate, with it): one walk, a cheap test per module (a LoRA'd 8B model has about 3,000,
    and the walk runs while the GPU waits at the start of the term)."""
    drops, rates = [], []
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            if m.training:
                drops.append((m, m.p))
        elif isinstance(rate := vars(m).get("attention_dropout"), float) and rate > 0:  # set in the module's __init__
            rates.append((m, rate))
    return drops, rates


@contextmanager
def adapter_disabled(model):
    """`model.disable_adapter()` (the reference policy) that leaves every module's train/eval
    mode as it found it: peft re-applies its layers' mode when the adapter comes back on, which
    would switch the recompute's dropout modules back to train mode for the passes after."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        with model.disable_adapter():
            yield
    finally:
        for m, training in modes:
            m.training = training


def rollout_term(model, ro: Rollouts, embedder, cfg: Config, backward: Callable[[torch.Tensor], None]) -> Terms:
    """Score, compute advantages, and backpropagate lambda * div_loss (+ beta * kl_loss).
    `model` is the PeftModel (its disable_adapter() gives the reference policy: no second model is
    loaded). Both losses are sums over sequences, so the recompute is batched across prompt
    groups: each forward/backward pass takes as many sequences as memory holds
    (rollout.rows_per_pass; rollout.recompute_rows caps it), longest first so a pass pads little,
    or packed end to end with no padding at all (rollout.packed_recompute, training/packed.py),
    a prompt's samples then attending to one copy of it (rollout.share_prompts).
    The gradient equals the group-by-group one up to float summation order (tested).

    The first pass's forward is queued before the replies are scored: on a GPU it runs while the
    host embeds the replies and computes the advantages, which enter only its loss. Its
    sequences are therefore taken before the advantages are known; the passes after it leave
    out groups whose advantages are all 0 (they contribute exactly 0 to the gradient, unless the
    KL term needs them), and a first pass that holds only such groups is not backpropagated."""
    o = cfg.objective
    lam, beta, kl_of = o.diversity_weight, o.kl_beta, KL_ESTIMATORS[o.kl_estimator]
    temp, l_norm = ro.params.temperature, float(ro.params.max_new_tokens)
    min_new, eos = eos_blocked(ro)
    device = next(model.parameters()).device
    length = lambda r: len(ro.prompt_ids[r[0]]) + len(ro.completion_ids[r[0]][r[1]])  # noqa: E731
    limit, multiple = cfg.rollout.recompute_rows, cfg.trainer.pad_to_multiple_of
    packed = packing(model, cfg.rollout.packed_recompute)
    seqs = [(i, j) for i in range(ro.m) for j in range(ro.n)]
    # Padded passes take the longest first, so a pass pads little; packed passes keep a prompt's
    # samples together, so they share its one copy (rollout.share_prompts), and size a pass by
    # the tokens it lays.
    if not packed:
        seqs.sort(key=lambda r: -length(r))

    @record_function("rollout_term.forward")
    def forward(order: list) -> tuple[list, dict, torch.Tensor, torch.Tensor | None]:
        """The forward of the next pass: as many of `order`'s first sequences as it takes."""
        prompts, completions = [ro.prompt_ids[i] for i, _ in order], [ro.completion_ids[i][j] for i, j in order]
        # A packed pass holds the tokens it lays (a shared prompt once); a padded one, every row
        # at the width of the first, the longest.
        tokens = (laid_tokens(prompts, completions, cfg.rollout.share_prompts) if packed
                  else [padded_width(length(order[0]), multiple)] * len(order))
        n = rows_per_pass(model, tokens, limit, probe=ro.n)
        take, prompts, completions = order[:n], prompts[:n], completions[:n]
        # Pad id 0 is never attended to (attention_mask 0) and never scored (completion_mask 0).
        batch = (pack_packed(prompts, completions, device, cfg.rollout.share_prompts) if packed
                 else pack(prompts, completions, 0, device, multiple))
        logp_tok = token_logprobs(model, batch, temp, min_new, eos)
        ref_tok = None
        if beta > 0:
            with torch.no_grad(), adapter_disabled(model):
                ref_tok = token_logprobs(model, batch, temp, min_new, eos)
        return take, batch, logp_tok, ref_tok

    divs, kls = [], []
    overlap = OVERLAP_SCORING and device.type == "cuda"
    with dropout_off(model):
        pending = forward(seqs)
        with record_function("rollout_term.score"), scoring_stream(device, overlap):
            q, dist, logs = score_rollouts(ro, embedder, o)
        with record_function("rollout_term.advantages"):
            rng = np.random.default_rng(ro.seed)
            parts = [advantage_parts(q[i], dist[i], o, cfg.set_size, rng) for i in range(ro.m)]
            adv = np.stack([p["total"] for p in parts])
        live = [r for r in seqs if beta > 0 or adv[r[0]].any()]
        done = set(pending[0])
        rest = [r for r in live if r not in done]
        while pending:
            take, batch, logp_tok, ref_tok = pending
            if beta > 0 or adv[[i for i, _ in take]].any():
                a = to_device(np.array([adv[i, j] for i, j in take]), logp_tok.dtype, device, overlap)
                div = div_loss(logp_tok.sum(dim=1), a, l_norm, ro.m)
                loss = lam * div
                if ref_tok is not None:
                    kl = kl_of(logp_tok, ref_tok, batch["completion_mask"]).sum() / (ro.m * ro.n * l_norm)
                    loss = loss + beta * kl
                    kls.append(kl.detach())
                with record_function("rollout_term.backward"):
                    backward(loss)
                divs.append(div.detach())
            del pending, take, batch, logp_tok, ref_tok  # the pass's graph and tensors go before the next pass
            pending = forward(rest) if rest else None
            if pending:
                rest = rest[len(pending[0]) :]
    div_total = float(torch.stack(divs).sum()) if divs else 0.0  # one host sync, after every pass
    kl_total = float(torch.stack(kls).sum()) if kls else 0.0
    logs.update(
        {
            "train/advantage_mean": float(adv.mean()),
            "train/advantage_std": float(adv.std()),
            # Over all M x N samples, like advantage_std (its square is Var(A)).
            "train/adv_var_quality": float(np.stack([p["quality"] for p in parts]).var()),
            "train/adv_var_diversity": float(np.stack([p["diversity"] for p in parts]).var()),
            "train/set_diversity": float(np.mean([p["set_diversity"] for p in parts])),
            "train/div_loss": div_total,
            "train/kl": kl_total,
        }
    )
    return Terms(loss=lam * div_total + beta * kl_total, logs=logs)
