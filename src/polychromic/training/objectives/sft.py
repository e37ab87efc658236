"""Supervised fine-tuning: cross-entropy on the reply tokens (labels -100 on the prompt).

Normalisation: the summed token cross-entropy of one micro-batch is divided by the number of
target tokens of the WHOLE accumulated batch (all micro-batches, all processes), passed in by the
loop. Summing the micro-batch gradients then gives exactly the gradient of the mean token loss of
one big batch, whatever the accumulation factor. (The prior system averaged per micro-batch and
its logged loss was multiplied by the accumulation factor, docs/prior-system.md.)

A micro-batch comes right-padded (`collate`) or packed end to end in one row (`collate_packed`,
trainer.packed_sft): the packed one runs the decoder on its real tokens only, through the
variable-length attention of training/packed.py, and the head on the scored positions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polychromic.training.packed import packed_forward

NEEDS_ROLLOUTS = False


def count_targets(batch: dict) -> int:
    """Tokens that carry a loss: labels != -100 after the causal shift (the first token of a
    sequence is never predicted)."""
    return int((batch["labels"][:, 1:] != -100).sum())


def ce_loss(model, batch: dict, n_target_tokens: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to backpropagate = summed CE / n_target_tokens, detached summed CE of this micro-batch)."""
    if n_target_tokens <= 0:
        raise ValueError("ce_loss: the accumulated batch has no target tokens (every reply truncated away?)")
    # Only positions that predict a reply token need logits: on a big vocabulary the LM head is
    # most of the step's FLOPs and memory, and prompts are most of the tokens. Keep the union of
    # those positions over the batch (transformers' logits_to_keep accepts an index tensor).
    labels = batch["labels"][:, 1:]
    if "cu_seqlens" in batch:  # collate_packed: one row; the head on the scored positions alone
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        keep = (labels[0] != -100).nonzero().squeeze(-1)
        logits = base.lm_head(packed_forward(base, batch)[keep]).float()
        labels = labels[0, keep]
    else:
        keep = (labels != -100).any(dim=0).nonzero().squeeze(-1)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, logits_to_keep=keep)
        logits = out.logits.float()
        labels = labels[:, keep]
    ce_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")
    return ce_sum / n_target_tokens, ce_sum.detach()
