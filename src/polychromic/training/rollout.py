"""Rollouts: M prompts x N sampled completions, made by ONE batched generate call.

The objectives consume this type (../shared/docs/style.md, practice 2). Sampling is on-policy by
default (temperature T, top_p 1, top_k 0; a truncating user setting is warned about, since the
score-function gradient is then taken on samples from another policy) and seeded from
(cfg.seed, step, rank), so a resumed run regenerates the very same rollouts, and the global torch
RNG is left untouched (fork_rng): generating rollouts or not must not shift the dropout masks of
the SFT term (that keeps `float_penalty` bit-identical to `sft`).

`pack` lays the sequences out as generate did (prompts left-padded to one width W, completions
right-padded after them), with explicit position ids, so the log-probs recomputed with grad come
from the same positions the samples were drawn at; `token_logprobs` computes only the C completion
positions' logits (logits_to_keep), not the prompt's: that is most of the memory on a big vocabulary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from polychromic.config import RolloutConfig
from polychromic.generation import SamplingParams, sample, warn_if_off_policy
from polychromic.generation.params import eos_ids


@dataclass
class Rollouts:
    prompt_texts: list[str]
    """The M raw prompts (the tweet, before the template): what relevance is measured against."""
    prompt_ids: list[list[int]]
    """The M rendered prompts' token ids (data.render_prompt)."""
    completion_ids: list[list[list[int]]]
    """[M][N] completion token ids, end-of-turn included when emitted, no padding."""
    finished: list[list[bool]]
    """[M][N] True when the completion ended with an end-of-turn token (not truncated)."""
    texts: list[list[str]]
    """[M][N] decoded completions (special tokens skipped, stripped)."""
    params: SamplingParams
    seed: int
    seconds: float
    """Wall time of the generate call(s)."""
    eos_ids: list[int] = field(default_factory=list)
    """The end-of-turn ids the sampler stopped on (and blocked for the first min_new_tokens)."""

    @property
    def m(self) -> int:
        return len(self.prompt_ids)

    @property
    def n(self) -> int:
        return len(self.completion_ids[0]) if self.completion_ids else 0

    def n_tokens(self) -> int:
        return sum(len(c) for group in self.completion_ids for c in group)


def rollout_seed(seed: int, step: int, rank: int = 0) -> int:
    """A 31-bit seed that is a pure function of (run seed, optimizer step, process rank)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0] & 0x7FFFFFFF)


def sampling_params(cfg: RolloutConfig) -> SamplingParams:
    """Every decoding parameter explicit (generation.py never inherits a generation_config)."""
    return SamplingParams(
        temperature=cfg.diversity_temperature,
        top_p=cfg.diversity_top_p,
        top_k=cfg.diversity_top_k,
        max_new_tokens=cfg.max_generation_length,
        min_new_tokens=cfg.min_generation_length,
    )


def generate_rollouts(model, tokenizer, prompt_texts: Sequence[str], prompt_ids: Sequence[Sequence[int]], cfg: RolloutConfig, seed: int) -> Rollouts:
    """N completions for each of the M prompts through one generation.sample call."""
    if len(prompt_texts) != len(prompt_ids) or not prompt_ids:
        raise ValueError(f"generate_rollouts: {len(prompt_texts)} prompt texts for {len(prompt_ids)} prompt id lists")
    params = sampling_params(cfg)
    warn_if_off_policy(params, "rollout (rollout.diversity_top_p / diversity_top_k)")
    device = next(model.parameters()).device
    # fork_rng restores the global RNG afterwards: sampling consumes no randomness of the run.
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=devices):
        out = sample(model, tokenizer, prompt_ids, cfg.n_generations, params, seed=seed, batch_size=cfg.batch_size)
    seconds = time.perf_counter() - t0
    return Rollouts(
        prompt_texts=list(prompt_texts),
        prompt_ids=[list(p) for p in prompt_ids],
        completion_ids=[[c.ids for c in group] for group in out],
        finished=[[c.finished for c in group] for group in out],
        texts=[[tokenizer.decode(c.ids, skip_special_tokens=True).strip() for c in group] for group in out],
        params=params,
        seed=seed,
        seconds=seconds,
        eos_ids=eos_ids(model, tokenizer),
    )


def pack(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int, device) -> dict:
    """Padded (prompt + completion) tensors for one forward pass.

    Layout as at generation: prompt i left-padded to width W, its completion right-padded to C.
    Returns input_ids/attention_mask/position_ids (B, W + C), completion_ids and completion_mask
    (B, C), and W. A completion may be empty (mask all zero).
    """
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"pack: {len(prompts)} prompts for {len(completions)} completions")
    w = max(len(p) for p in prompts)
    c = max(1, max(len(x) for x in completions))
    b = len(prompts)
    ids = torch.full((b, w + c), pad_id, dtype=torch.long)
    mask = torch.zeros((b, w + c), dtype=torch.long)
    comp = torch.full((b, c), pad_id, dtype=torch.long)
    cmask = torch.zeros((b, c), dtype=torch.float32)
    for i, (p, y) in enumerate(zip(prompts, completions)):
        ids[i, w - len(p) : w] = torch.tensor(p, dtype=torch.long)
        mask[i, w - len(p) : w] = 1
        if y:
            ids[i, w : w + len(y)] = torch.tensor(y, dtype=torch.long)
            mask[i, w : w + len(y)] = 1
            comp[i, : len(y)] = torch.tensor(y, dtype=torch.long)
            cmask[i, : len(y)] = 1.0
    # Positions count real tokens only, as generate computes them for left-padded prompts.
    pos = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": pos.to(device),
        "completion_ids": comp.to(device),
        "completion_mask": cmask.to(device),
        "prompt_width": w,
    }


def token_logprobs(model, batch: dict, temperature: float, min_new_tokens: int = 0, eos: Sequence[int] = ()) -> torch.Tensor:
    """(B, C) log pi(y_t | x, y_<t) of each completion token, logits divided by the sampling
    temperature (the policy the samples came from); zero where completion_mask is 0.
    Differentiable unless called under no_grad.

    With min_new_tokens > 0 the sampler set the EOS logits to -inf at completion positions
    t < min_new_tokens (transformers' MinNewTokensLengthLogitsProcessor; generation/fast.py does
    the same), so the policy that drew the samples renormalised over the other tokens there: pass
    the same `min_new_tokens` and `eos` ids and the same block is applied here, keeping the
    score-function gradient on-policy."""
    c = batch["completion_ids"].shape[1]
    # The logit at position W - 1 + t predicts completion token t: keep the last C + 1 positions
    # and drop the very last (it predicts past the sequence).
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=c + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1, :].float() / temperature
    blocked = min(int(min_new_tokens), c)
    if blocked > 0 and len(eos):
        eos_t = torch.as_tensor(list(eos), device=logits.device)
        early = torch.isin(batch["completion_ids"][:, :blocked], eos_t) & (batch["completion_mask"][:, :blocked] > 0)
        if bool(early.any()):
            raise ValueError(f"token_logprobs: a completion holds an EOS id before min_new_tokens={min_new_tokens}; "
                             "the sampler that blocked EOS there cannot have drawn it")
        block = torch.zeros(c, logits.shape[-1], dtype=torch.bool, device=logits.device)
        block[:blocked, eos_t] = True
        logits = logits.masked_fill(block, float("-inf"))
    logp = torch.log_softmax(logits, dim=-1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    # where, not a product: a padded position may hold a blocked id (log-prob -inf; -inf * 0 is NaN).
    return torch.where(batch["completion_mask"] > 0, logp, torch.zeros_like(logp))
