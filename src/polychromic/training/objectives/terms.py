"""`Terms`: what an objective's rollout step contributed to the step."""

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
