"""Held-out NLL of the reference replies: `reference_nll(model, tokenizer, cfg, prompts)`, the
per-prompt mean token negative log-likelihood of every reference reply of the prompt's group,
encoded exactly as training encodes them (data.encode_example), in length-sorted batches of at
most NLL_TOKEN_BUDGET tokens.

Two values per prompt, from one forward pass: `ref_nll` under the model's own distribution
(T = 1) and `ref_nll_tempered` under the distribution the samples are drawn from, softmax(logits
/ T) with T = eval.temperature (recorded as `temperature`). Why both: diversity is measured on
samples drawn at T, so the likelihood that belongs next to it is that of the distribution that
was sampled. The untempered NLL of the baseline does not move when its sampling temperature is
raised, so on (ref_nll, diversity) the baseline's temperature curve is a vertical line and a model
that learned to flatten its logits (a hotter baseline in disguise) cannot be placed against it;
on (ref_nll_tempered, diversity) the baseline's hotter points pay their likelihood cost and such a
model falls on the baseline's curve, where it belongs. top_p / top_k are not applied: they give
probability 0, hence infinite NLL, to every reference token outside the nucleus.
"""

from __future__ import annotations

import numpy as np

from polychromic.config import Config

NLL_TOKEN_BUDGET = 8192
"""Tokens per forward pass for the reference NLL: bounds the (tokens x vocab) logits in memory."""


def reference_nll(model, tokenizer, cfg: Config, prompts: list[dict]) -> list[dict]:
    """Per prompt: mean token NLL of its reference replies (all of the group's replies, tokens
    pooled) given the rendered prompt, encoded exactly as training encodes them; at T = 1
    (`ref_nll`) and at T = eval.temperature (`ref_nll_tempered`)."""
    import torch

    from polychromic.data import collate, encode_example

    examples = [(i, encode_example(tokenizer, cfg.data, p["prompt"], ref)) for i, p in enumerate(prompts) for ref in p["references"]]
    temperature = float(cfg.eval.temperature)
    if not temperature > 0:
        raise ValueError(f"eval.temperature must be > 0 for the tempered reference NLL, got {cfg.eval.temperature!r}")
    total = np.zeros(len(prompts))
    total_t = np.zeros(len(prompts))
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
            shifted = logits[:, :-1].float().transpose(1, 2)
            per_seq, per_seq_t = (
                torch.nn.functional.cross_entropy(x, labels, ignore_index=-100, reduction="none").sum(dim=1).double().cpu().numpy()
                for x in (shifted, shifted / temperature)
            )
            per_n = (labels != -100).sum(dim=1).cpu().numpy()
        for (i, _), s, s_t, n in zip(examples[start:end], per_seq, per_seq_t, per_n):
            total[i] += s
            total_t[i] += s_t
            count[i] += n
        start = end
    return [
        {"prompt_id": p["prompt_id"], "ref_nll": float(total[i] / count[i]) if count[i] else None,
         "ref_nll_tempered": float(total_t[i] / count[i]) if count[i] else None, "temperature": temperature,
         "n_tokens": int(count[i]), "n_references": len(p["references"])}
        for i, p in enumerate(prompts)
    ]
