"""Held-out first: which of the experiment's metrics some arm's training reward optimised.

A metric the training optimised is no evidence that it worked (a policy trained to raise the mean
cosine distance under MiniLM raises exactly that number). The rule per metric and per training
run is `polychromic.metrics.provenance.trained_on` (evaluation embedder vs the reward's embedder,
shared quality parts, the reward's lexical distance); here it is applied to every arm whose loss
carries a reward term, i.e. the polychromic objective with lambda > 0 (float_penalty's penalty is
a constant without gradient, and the identity check shows it trains exactly what sft trains). A
metric is trained-on when it is for any such arm; the report names the arms.

No torch here.
"""

from __future__ import annotations

from typing import Iterable

from polychromic.config import Config
from polychromic.metrics import metric_info
from polychromic.metrics.provenance import trained_on
from polychromic.rewards import needs_embedder


def reward_arms(configs: Iterable[tuple[str, Config]]) -> list[tuple[str, Config]]:
    """The (arm, config) pairs whose training loss optimises a reward."""
    return [(a, c) for a, c in configs if c.objective.name == "polychromic" and c.objective.diversity_weight > 0]


def marks(metrics: Iterable[str], configs: list[tuple[str, Config]], eval_cfg: Config, eval_embedder: str) -> dict[str, dict]:
    """metric -> {"trained_on": True / False / None (a control), "arms": [...], "why": str}."""
    arms = reward_arms(configs)
    out = {}
    for m in metrics:
        if metric_info(m).kind == "control":
            out[m] = {"trained_on": None, "arms": [], "why": "a control (no better direction)"}
            continue
        hits = []
        for a, c in arms:
            o = c.objective
            if trained_on(m, eval_embedder, o.diversity_encoder_model if needs_embedder(o) else None, o.quality,
                          eval_cfg.objective.quality, o.diversity_metric):
                hits.append(a)
        if hits:
            why = f"the training reward of {', '.join(hits)} computes it (or its encoder / quality parts)"
        elif arms:
            why = f"held out: no training reward ({', '.join(a for a, _ in arms)}) computes it"
        else:
            why = "held out: no arm trains on a reward"
        out[m] = {"trained_on": bool(hits), "arms": hits, "why": why}
    return out
