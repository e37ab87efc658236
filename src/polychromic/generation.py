"""Batched sampling: the one primitive behind training rollouts and evaluation samples.

All M prompts x N samples go through one `generate` call (split only when `batch_size` says so),
left-padded, KV cache on, with every decoding parameter passed explicitly: a model's own
generation_config never leaks in (the prior system's hidden top_k=20 did).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 100
    min_new_tokens: int = 0
    greedy: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def generation_kwargs(self, pad_id: int, eos_id) -> dict:
        kw = dict(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens or None,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            use_cache=True,
            num_beams=1,
            repetition_penalty=1.0,
        )
        if self.greedy:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kw


@dataclass
class Completion:
    ids: list[int]
    """Completion token ids, EOS included when the model emitted it, padding removed."""
    finished: bool
    """True when the model emitted EOS; False when cut at max_new_tokens (truncated)."""


def warn_if_off_policy(params: SamplingParams, where: str) -> None:
    if not params.greedy and (params.top_p < 1.0 or params.top_k > 0):
        warnings.warn(
            f"{where}: top_p={params.top_p}, top_k={params.top_k} truncates the sampling distribution; the "
            "score-function gradient then uses samples from a different policy than the one it differentiates "
            "(off-policy). Use top_p=1.0, top_k=0 for an unbiased estimate.",
            stacklevel=2,
        )


def _eos_ids(model, tokenizer) -> list[int]:
    ids = set()
    for src in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return sorted(ids)


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
    if next(model.parameters()).is_cuda:
        # On a GPU: merged LoRA, static KV cache, captured decode step (issue 5); same greedy
        # tokens and sampling distribution. POLYCHROMIC_FASTGEN=0 forces the plain path below.
        from polychromic import fastgen

        if fastgen.use_fast_path(model):
            return fastgen.sample(model, tokenizer, prompts, n, params, seed=seed, batch_size=batch_size)
    eos = _eos_ids(model, tokenizer)
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
                results.append(_strip(row, eos, pad))
    finally:
        model.train(was_training)
    return [results[i * n : (i + 1) * n] for i in range(len(prompts))]


def _strip(row: list[int], eos: list[int], pad: int) -> Completion:
    for j, t in enumerate(row):
        if t in eos:
            return Completion(ids=row[: j + 1], finished=True)
    return Completion(ids=row, finished=False)
