"""Batched sampling: the one primitive behind training rollouts and evaluation samples.

`sample()` is the one public entry. All M prompts x N samples go through one batched call (split
only when `batch_size` says so), left-padded, KV cache on, with every decoding parameter passed
explicitly (`SamplingParams`). On a GPU it takes the fast path (`fast.py`: merged LoRA copy, static
KV cache, captured decode step; same greedy tokens and sampling distribution); elsewhere, or when
`fast.unsupported_reason(model)` says so, plain transformers generate (`hf.py`).
"""

from __future__ import annotations

from typing import Sequence

from polychromic.generation import hf
from polychromic.generation.params import Completion, SamplingParams, warn_if_off_policy

__all__ = ["Completion", "SamplingParams", "sample", "warn_if_off_policy"]


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
    if next(model.parameters()).is_cuda:
        # POLYCHROMIC_FASTGEN=0 forces the plain path.
        from polychromic.generation import fast

        if fast.use_fast_path(model):
            return fast.sample(model, tokenizer, prompts, n, params, seed=seed, batch_size=batch_size)
    return hf.sample(model, tokenizer, prompts, n, params, seed=seed, batch_size=batch_size)
