"""Non-finite losses, gradients and parameters: detected before they reach the optimizer or disk.

Per optimizer step the trainer asks `nonfinite_step` whether the step's loss terms or its global
gradient norm are NaN/inf. The values it reads are the same on every process (summed losses,
the norm of the all-reduced gradient), so all processes take the same decision:
- `trainer.on_nonfinite: skip` (default): no optimizer step (AdamW's moments and step count are
  untouched, and so are the weights); the scheduler and the data position move on as usual; the
  step is logged with `train/nonfinite_skipped` = 1, which the monitor turns into the
  `nonfinite_step_skipped` red flag (stderr, alerts.jsonl, trackers).
- `stop`: the step is logged (its non-finite values raise their alerts), then NonFiniteError
  ends the run; the last checkpoint on disk is the last good one (`train --resume` restarts
  there, e.g. with a lower `trainer.lr` or `on_nonfinite=skip`).
`check_finite_params` is the last line: a checkpoint or adapter with a non-finite weight is
never written, whatever produced it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


class NonFiniteError(RuntimeError):
    """A non-finite loss, gradient or parameter that the run must not continue past."""


def nonfinite_step(losses: dict[str, float], grad_norm: float) -> str | None:
    """A one-line reason when any loss term or the gradient norm is NaN/inf, else None."""
    bad = [f"{k} = {v}" for k, v in losses.items() if not math.isfinite(v)]
    if not math.isfinite(grad_norm):
        bad.append(f"gradient norm = {grad_norm}")
    return ", ".join(bad) if bad else None


def check_finite_params(model: torch.nn.Module, what: str, run_dir: Path | None = None) -> None:
    """Raise NonFiniteError naming the first trainable parameters holding NaN/inf."""
    bad = [n for n, p in model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
    if bad:
        where = f" (run {run_dir}: the last checkpoint on disk is the last good one)" if run_dir is not None else ""
        raise NonFiniteError(f"not writing {what}: non-finite values in {len(bad)} parameter(s), e.g. {bad[:3]}{where}")
