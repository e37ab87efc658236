"""Held-out NLL of the reference replies: `reference_nll(model, tokenizer, cfg, prompts)`, the
per-prompt mean token negative log-likelihood of every reference reply of the prompt's group,
encoded exactly as training encodes them (data.encode_example), in length-sorted batches of at
most NLL_TOKEN_BUDGET tokens.
"""

from __future__ import annotations

import numpy as np

from polychromic.config import Config

NLL_TOKEN_BUDGET = 8192
"""Tokens per forward pass for the reference NLL: bounds the (tokens x vocab) logits in memory."""


def reference_nll(model, tokenizer, cfg: Config, prompts: list[dict]) -> list[dict]:
    """Per prompt: mean token NLL of its reference replies (all of the group's replies, tokens
    pooled) given the rendered prompt, encoded exactly as training encodes them."""
    import torch

    from polychromic.data import collate, encode_example

    examples = [(i, encode_example(tokenizer, cfg.data, p["prompt"], ref)) for i, p in enumerate(prompts) for ref in p["references"]]
    total = np.zeros(len(prompts))
    count = np.zeros(len(prompts), dtype=np.int64)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    examples.sort(key=lambda x: len(x[1]["input_ids"]))  # similar lengths together: less padding
    start = 0
    while start < len(examples):
        width, end = 0, start
        while end < len(examples) and (end == start or max(width, len(examples[end][1]["input_ids"])) * (end - start + 1) <= NLL_TOKEN_BUDGET):
            width = max(width, len(examples[end][1]["input_ids"]))
            end += 1
        batch = collate([e for _, e in examples[start:end]], pad)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
            labels = batch["labels"][:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
            )
            per_seq = nll.sum(dim=1).double().cpu().numpy()
            per_n = (labels != -100).sum(dim=1).cpu().numpy()
        for (i, _), s, n in zip(examples[start:end], per_seq, per_n):
            total[i] += s
            count[i] += n
        start = end
    return [
        {"prompt_id": p["prompt_id"], "ref_nll": float(total[i] / count[i]) if count[i] else None, "n_tokens": int(count[i]),
         "n_references": len(p["references"])}
        for i, p in enumerate(prompts)
    ]
