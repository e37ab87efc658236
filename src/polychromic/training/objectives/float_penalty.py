"""The prior system's design, kept to reproduce its runs: loss = ce - lambda * D.

D is the diversity of decoded, sampled replies (mean pairwise distance, objective.diversity_metric):
a Python float. A float has no gradient, so grad(ce - lambda * D) == grad(ce): this objective
trains exactly what `sft` trains (tests/test_objectives.py checks the adapters are bit-identical
for the same seed and data), whatever lambda is; only the logged loss moves
(docs/objective.md, "Why the prior design trains nothing new").

It still generates rollouts and logs D under the prior names, so its logs look like the prior
ones. Nothing is backpropagated here; the rollouts are seeded on their own and leave the global
RNG alone (rollout.py), so generating them does not change the SFT run either.
"""

from __future__ import annotations

from typing import Callable

import torch

from polychromic.config import Config
from polychromic.training.objectives.terms import Terms
from polychromic.training.objectives.polychromic import score_rollouts
from polychromic.training.rollout import Rollouts

NEEDS_ROLLOUTS = True


def rollout_term(model, ro: Rollouts, embedder, cfg: Config, backward: Callable[[torch.Tensor], None]) -> Terms:
    """-lambda * D as a float: added to the logged loss, gradient-free (`backward` is never called)."""
    _, _, logs = score_rollouts(ro, embedder, cfg.objective)
    d = logs["train/diversity_score"]
    return Terms(loss=-cfg.objective.diversity_weight * d, logs=logs)
