"""Training objectives, one file each, chosen by `objective.name` (../shared/docs/style.md, rule 7).

Every objective trains the SFT cross-entropy (`sft.ce_loss`, per micro-batch, in the loop). An
objective module says whether it needs rollouts (`NEEDS_ROLLOUTS`) and, if so, provides
`rollout_term(model, rollouts, embedder, cfg, backward) -> Terms`: it scores the rollouts,
calls `backward` on whatever it differentiates (group by group, to bound memory) and returns
`Terms`. A new objective is a new file plus one line in `OBJECTIVES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Terms:
    """What an objective's rollout step contributed to the step."""

    loss: float
    """Value of the term added to the loss (what was backpropagated; for float_penalty the
    gradient-free -lambda * D that the prior added)."""
    logs: dict[str, float] = field(default_factory=dict)
    """`train/...` values to log (diversity_score, quality_mean, advantage_mean, ...)."""


# Imported after Terms: the objective modules import it from this package.
from polychromic.objectives import float_penalty, polychromic, sft  # noqa: E402

OBJECTIVES = {
    "sft": sft,
    "float_penalty": float_penalty,
    "polychromic": polychromic,
}
