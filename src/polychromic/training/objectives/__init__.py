"""Training objectives, one file each, chosen by `objective.name`.

Every objective trains the SFT cross-entropy (`sft.ce_loss`, per micro-batch, in the loop). An
objective module says whether it needs rollouts (`NEEDS_ROLLOUTS`) and, if so, provides
`rollout_term(model, rollouts, embedder, cfg, backward) -> Terms`: it scores the rollouts,
calls `backward` on whatever it differentiates (group by group, to bound memory) and returns
`Terms`. A new objective is a new file plus one line in `OBJECTIVES`.
"""

from __future__ import annotations

from polychromic.training.objectives import float_penalty, polychromic, sft
from polychromic.training.objectives.terms import Terms

__all__ = ["OBJECTIVES", "Terms"]

OBJECTIVES = {
    "sft": sft,
    "float_penalty": float_penalty,
    "polychromic": polychromic,
}
