"""Plain transformers `generate()`: one batched, left-padded call with explicit decoding params.

The path on a CPU, and on a GPU when the fast path does not support the model
(`polychromic.generation.fast.unsupported_reason`) or POLYCHROMIC_FASTGEN=0.
"""

from __future__ import annotations

from typing import Sequence

import torch

from polychromic.generation.params import Completion, SamplingParams, eos_ids, strip_completion


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    n: int,
    params: SamplingParams,
    seed: int | None = None,
    batch_size: int | None = None,
) -> list[list[Completion]]:
    """n completions for each tokenized prompt, as out[prompt][sample].

    The prompts are repeated n times and generated together (one call when batch_size is None or
    large enough). `seed` seeds torch's generator for reproducible samples.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    flat = [list(p) for p in prompts for _ in range(n)]
    bs = batch_size or len(flat)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if seed is not None:
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
    results: list[Completion] = []
    try:
        for start in range(0, len(flat), bs):
            chunk = flat[start : start + bs]
            width = max(len(x) for x in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, x in enumerate(chunk):  # left padding
                ids[i, width - len(x) :] = torch.tensor(x, dtype=torch.long)
                mask[i, width - len(x) :] = 1
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), **params.generation_kwargs(pad, eos)
            )
            new = out[:, width:].tolist()
            for row in new:
                results.append(strip_completion(row, eos, pad))
    finally:
        model.train(was_training)
    return [results[i * n : (i + 1) * n] for i in range(len(prompts))]
