"""Rollouts: M prompts x N sampled completions, made by ONE batched generate call, and the
log-probs of those samples recomputed with grad.

The objectives consume the `Rollouts` type. Sampling is on-policy by default (temperature T,
top_p 1, top_k 0; a truncating user setting is warned about, since the score-function gradient
is then taken on samples from another policy) and seeded from (cfg.seed, step, rank), so a
resumed run regenerates the very same rollouts, and the global torch RNG is left untouched
(fork_rng): generating rollouts or not must not shift the dropout masks of the SFT term (that
keeps `float_penalty` bit-identical to `sft`).

The recompute is batched across prompt groups (one forward/backward pass for as many sequences
as memory holds: `rows_per_pass`). `pack` lays them out right-padded with explicit position ids,
so every token sits at the position it was sampled at; `token_logprobs` computes logits at the
completion positions alone (most of the memory on a big vocabulary is the prompt's logits) and
takes the tempered log-softmax in chunks without a float32 copy of the logits.
"""

from __future__ import annotations

import contextlib
import functools
import time
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from polychromic.config import RolloutConfig
from polychromic.generation import SamplingParams, sample, warn_if_off_policy
from polychromic.generation.params import eos_ids
from polychromic.prompts import padded_width
from polychromic.training.packed import PLAIN_HEAD_TYPES, packed_forward, use_packed


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


def _check_pairs(name: str, prompts, completions) -> None:
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"{name}: {len(prompts)} prompts for {len(completions)} completions")
    if any(len(p) == 0 for p in prompts):
        raise ValueError(f"{name}: an empty prompt (its first completion token would have no logit)")


def pack(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int, device,
         multiple: int = 1) -> dict:
    """Padded (prompt + completion) tensors for one forward pass, right-padded.

    Row i holds prompt i, then completion i, then padding up to L = max_i (len(p_i) + len(y_i)),
    rounded up to a multiple of `multiple` (trainer.pad_to_multiple_of).
    Position ids count real tokens only (0 .. len - 1), the positions generate gave them (it
    left-pads and counts real tokens only), and padding is never attended to, so every real
    token sees the context it was sampled with at the same position. Right padding, not
    generate's left padding: a left-padding query has no key to attend to, a fully masked
    attention row, where SDPA kernels on CUDA can return NaN, and 0 * NaN in the weight gradients
    poisons the whole step (docs/performance.md, "SDPA and left padding"). Right-padding queries
    always see their row's real tokens.

    Position ids are therefore 0 .. L - 1 in every row and come as one (1, L) row that broadcasts,
    the shape a model builds itself when it is given none (as in SFT): the decoder layers then
    see the same kinds of argument in both passes and share their compiled graphs
    (training/compiled.py).

    Returns input_ids/attention_mask (B, L), position_ids (1, L); completion_ids, completion_mask and
    logit_index (B, C), C = the longest completion: logit_index[i, t] = len(p_i) - 1 + t, the
    position whose logits predict completion token t (0 where the mask is 0). A completion may
    be empty (mask all zero).
    """
    _check_pairs("pack", prompts, completions)
    width = padded_width(max(len(p) + len(y) for p, y in zip(prompts, completions)), multiple)
    c = max(1, max(len(y) for y in completions))
    b = len(prompts)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    comp = torch.full((b, c), pad_id, dtype=torch.long)
    cmask = torch.zeros((b, c), dtype=torch.float32)
    index = torch.zeros((b, c), dtype=torch.long)
    for i, (p, y) in enumerate(zip(prompts, completions)):
        row = list(p) + list(y)
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
        if y:
            comp[i, : len(y)] = torch.tensor(y, dtype=torch.long)
            cmask[i, : len(y)] = 1.0
            index[i, : len(y)] = torch.arange(len(p) - 1, len(p) - 1 + len(y))
    pos = torch.arange(width, dtype=torch.long)[None]
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": pos.to(device),
        "completion_ids": comp.to(device),
        "completion_mask": cmask.to(device),
        "logit_index": index.to(device),
    }


def _offsets(lengths: Sequence[int], device) -> torch.Tensor:
    """(len + 1,) int32 cumulative offsets of segments of these lengths, from 0."""
    return torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)).to(device)


def _shared(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], share_prompts: bool) -> list[bool]:
    """Per sequence, whether `pack_packed` lets it attend to the prompt copy laid down before it
    instead of laying its own: its prompt equals the last one laid and its completion is not empty."""
    out, last = [], None
    for p, y in zip(prompts, completions):
        shared = share_prompts and len(y) > 0 and last is not None and list(p) == last
        if not shared:
            last = list(p)
        out.append(shared)
    return out


def laid_tokens(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], share_prompts: bool = True) -> list[int]:
    """The tokens each sequence adds to a `pack_packed` row, in order: its prompt and completion,
    or its completion alone where it shares the prompt laid before it. A prefix of the sequences
    lays the same counts, so their running sum is the row length of any first-k pass."""
    return _laid(prompts, completions, _shared(prompts, completions, share_prompts))


def _laid(prompts, completions, shared: Sequence[bool]) -> list[int]:
    return [len(y) + (0 if s else len(p)) for p, y, s in zip(prompts, completions, shared)]


def pack_packed(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], device,
                share_prompts: bool = True) -> dict:
    """The same sequences as `pack`, laid end to end in one row without padding (training/packed.py).

    Without sharing, sequence i is its prompt then its completion, positions 0 .. len - 1
    restarting at each sequence (the positions generate gave them), and it attends causally
    within itself. With `share_prompts`, a sequence whose prompt equals the one laid down last
    (the N samples of a prompt, given one after the other) and whose completion is not empty
    brings its completion alone, at positions len(p) .. len(p) + len(y) - 1: its queries attend
    to the earlier copy of the prompt and causally to its own tokens. The keys and values of
    such a segment are gathered from the row (`kv_index`), so the prompt runs once per run of
    equal prompts and its activations take the sum of its samples' gradients: the same
    log-probs and gradient as a copy per sample, with fewer tokens.

    Returns input_ids and position_ids (1, T); cu_seqlens (B + 1,) int32, each sequence's query
    segment in the row; max_len, the longest segment; completion_ids, completion_mask and
    logit_index (B, C) as in `pack`, logit_index now a position in the row (for a shared
    segment, completion token 0 is predicted at the prompt copy's last token). When some prompt
    is shared, also kv_index (K,) int64, the row positions each segment's keys come from
    (its prompt, then its own tokens), cu_seqlens_k (B + 1,) int32 and max_len_k: a segment's
    query i then sees keys up to i + (keys - queries), the bottom-right aligned causal mask."""
    _check_pairs("pack_packed", prompts, completions)
    b, c = len(prompts), max(1, max(len(y) for y in completions))
    flags = _shared(prompts, completions, share_prompts)
    q_lens = _laid(prompts, completions, flags)  # each sequence's query segment in the row
    ids, pos, kv, k_lens = [], [], [], []
    index = np.zeros((b, c), dtype=np.int64)
    last_start, offset = 0, 0
    for i, (p, y, shared) in enumerate(zip(prompts, completions, flags)):
        p, y = list(p), list(y)
        if not shared:
            last_start = offset
            ids += p
            pos += range(len(p))
        start = offset + (0 if shared else len(p))  # the completion's first token in the row
        ids += y
        pos += range(len(p), len(p) + len(y))
        kv += [*range(last_start, last_start + len(p)), *range(start, start + len(y))]
        k_lens.append(len(p) + len(y))
        if y:
            index[i, : len(y)] = [last_start + len(p) - 1, *range(start, start + len(y) - 1)]
        offset += q_lens[i]
    clen = np.array([len(y) for y in completions], dtype=np.int64)
    cmask = np.arange(c)[None, :] < clen[:, None]
    comp = np.zeros((b, c), dtype=np.int64)
    comp[cmask] = np.fromiter((t for y in completions for t in y), dtype=np.int64, count=int(clen.sum()))
    out = {
        "input_ids": torch.tensor(ids, dtype=torch.long)[None].to(device),
        "position_ids": torch.tensor(pos, dtype=torch.long)[None].to(device),
        "cu_seqlens": _offsets(q_lens, device),
        "max_len": max(q_lens),
        "completion_ids": torch.from_numpy(comp).to(device),
        "completion_mask": torch.from_numpy(cmask.astype(np.float32)).to(device),
        "logit_index": torch.from_numpy(index).to(device),
    }
    if q_lens != k_lens:
        out |= {
            "kv_index": torch.tensor(kv, dtype=torch.long).to(device),
            "cu_seqlens_k": _offsets(k_lens, device),
            "max_len_k": max(k_lens),
        }
    return out


def packing(model, setting: bool | None) -> bool:
    """Whether the recompute packs its sequences (rollout.packed_recompute; packed.use_packed)."""
    return use_packed(model, setting, "rollout.packed_recompute", training=False)


# ---------------------------------------------------------------------------------------------
# Log-probs of the sampled tokens, with grad

# PLAIN_HEAD_TYPES (training/packed.py): for these the head runs on the completion positions
# alone. Others (soft-capped or scaled logits) go through the model's own forward over the span
# of positions the rows need.

CHUNK_BYTES = 1 << 28
"""float32 bytes of logits one chunk of the log-softmax works on (256 MiB)."""


def _scaled(z, temperature: float, block, eos_cols, dt):
    """z / T in dtype dt; block (R,) and eos_cols (V,) bool: blocked rows' EOS entries are -inf."""
    return (z.to(dt) / temperature).masked_fill(block[:, None] & eos_cols[None, :], float("-inf"))


def _lse_picked(z, y, temperature: float, block, eos_cols, dt):
    """(log-normaliser, picked logit) per row of softmax(z / T), in dtype dt."""
    zc = _scaled(z, temperature, block, eos_cols, dt)
    return torch.logsumexp(zc, dim=-1), zc.gather(1, y[:, None])[:, 0]


def _logit_grad(z, y, lse, grad, temperature: float, block, eos_cols):
    """d/dz of grad * (picked - lse) = grad (onehot(y) - softmax(z / T)) / T, in z's dtype."""
    zc = _scaled(z, temperature, block, eos_cols, lse.dtype)
    g = grad.to(lse.dtype)[:, None]
    hit = torch.arange(z.shape[1], device=z.device)[None, :] == y[:, None]
    return ((torch.where(hit, g, 0.0) - torch.exp(zc - lse[:, None]) * g) / temperature).to(z.dtype)


@functools.cache
def _fused(fn):
    """`fn` through torch.compile: one reduction (forward) and one elementwise kernel (backward)
    that read the bf16 logits once and keep no float32 copy of them."""
    return torch.compile(fn, dynamic=True)


class _TemperedLogProb(torch.autograd.Function):
    """log softmax(z / T)[y] per row of z (R, V), with a float32 (or wider) softmax but no
    float32 copy of z kept: the forward saves z itself and the R log-normalisers, the backward
    recomputes the softmax and writes d/dz = (onehot(y) - softmax) / T in z's dtype. `block`
    (R,) marks rows where the `eos` columns were -inf for the sampler. Fused (`_fused`, the
    default on a GPU), each pass is one compiled kernel over all rows; otherwise it runs eagerly
    in row chunks of `chunk_rows`, each chunk's float32 temporaries freed before the next."""

    @staticmethod
    def forward(ctx, z, y, temperature: float, block, eos_cols, chunk_rows: int, fused: bool):
        dt = torch.promote_types(z.dtype, torch.float32)
        fwd = _fused(_lse_picked) if fused else _lse_picked
        step = z.shape[0] if fused else chunk_rows
        parts = [fwd(z[s : s + step], y[s : s + step], temperature, block[s : s + step], eos_cols, dt)
                 for s in range(0, z.shape[0], step)]
        lse, picked = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        ctx.save_for_backward(z, y, lse, block, eos_cols)
        ctx.temperature, ctx.step, ctx.fused = temperature, step, fused
        return picked - lse

    @staticmethod
    def backward(ctx, grad):
        z, y, lse, block, eos_cols = ctx.saved_tensors
        t, n = ctx.temperature, ctx.step
        bwd = _fused(_logit_grad) if ctx.fused else _logit_grad
        if n >= z.shape[0]:
            return bwd(z, y, lse, grad, t, block, eos_cols), None, None, None, None, None, None
        out = torch.empty_like(z)
        for s in range(0, z.shape[0], n):
            out[s : s + n] = bwd(z[s : s + n], y[s : s + n], lse[s : s + n], grad[s : s + n], t, block[s : s + n], eos_cols)
        return out, None, None, None, None, None, None


def tempered_logprobs(z: torch.Tensor, y: torch.Tensor, temperature: float, block: torch.Tensor | None = None,
                      eos: Sequence[int] = (), chunk_bytes: int = CHUNK_BYTES, fused: bool | None = None) -> torch.Tensor:
    """(R,) log softmax(z / T)[y] for logits z (R, V) and targets y (R,), differentiable in z,
    without a float32 copy of z (see _TemperedLogProb). block (R,) bool: rows whose `eos`
    columns are -inf (the min_new_tokens block). fused: compiled kernels (None: on a GPU)."""
    eos_cols = torch.zeros(z.shape[-1], dtype=torch.bool, device=z.device)
    if len(eos):
        eos_cols[torch.as_tensor(list(eos), dtype=torch.long, device=z.device)] = True
    block_t = block if block is not None and len(eos) else torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
    rows = max(1, chunk_bytes // (4 * max(1, z.shape[-1])))
    return _TemperedLogProb.apply(z, y, float(temperature), block_t, eos_cols, rows, z.is_cuda if fused is None else fused)


def _completion_logits(model, batch: dict, rows: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(R, V) logits at positions pos of rows `rows` (the completion-predicting ones)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "cu_seqlens" in batch:  # pack_packed: one row, logit_index is a position in it
        return base.lm_head(packed_forward(base, batch)[pos])
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"], use_cache=False)
    head = getattr(base, "lm_head", None)
    if getattr(base.config, "model_type", None) in PLAIN_HEAD_TYPES and type(head) is torch.nn.Linear and hasattr(base, "model"):
        # The decoder alone (LoRA layers, disable_adapter and gradient checkpointing act inside it),
        # then the head on the R completion positions only.
        hidden = base.model(**kw).last_hidden_state
        return head(hidden[rows, pos])
    lo, hi = int(pos.min()), int(pos.max()) + 1
    logits = model(**kw, logits_to_keep=torch.arange(lo, hi, device=pos.device)).logits
    return logits[rows, pos - lo]


def token_logprobs(model, batch: dict, temperature: float, min_new_tokens: int = 0, eos: Sequence[int] = ()) -> torch.Tensor:
    """(B, C) log pi(y_t | x, y_<t) of each completion token of a `pack` or `pack_packed` batch, logits divided by
    the sampling temperature (the policy the samples came from); zero where completion_mask is 0.
    Differentiable unless called under no_grad. Logits are computed at the completion positions
    only, and the log-softmax keeps no float32 copy of them (tempered_logprobs).

    With min_new_tokens > 0 the sampler set the EOS logits to -inf at completion positions
    t < min_new_tokens (transformers' MinNewTokensLengthLogitsProcessor; generation/fast.py does
    the same), so the policy that drew the samples renormalised over the other tokens there: pass
    the same `min_new_tokens` and `eos` ids and the same block is applied here, keeping the
    score-function gradient on-policy."""
    cmask = batch["completion_mask"] > 0
    c = cmask.shape[1]
    blocked = min(int(min_new_tokens), c)
    if blocked > 0 and len(eos):
        eos_t = torch.as_tensor(list(eos), device=cmask.device)
        early = torch.isin(batch["completion_ids"][:, :blocked], eos_t) & cmask[:, :blocked]
        if bool(early.any()):
            raise ValueError(f"token_logprobs: a completion holds an EOS id before min_new_tokens={min_new_tokens}; "
                             "the sampler that blocked EOS there cannot have drawn it")
    rows, cols = cmask.nonzero(as_tuple=True)
    measure = torch.is_grad_enabled() and cmask.is_cuda
    before = torch.cuda.memory_allocated(cmask.device) if measure else 0
    z = _completion_logits(model, batch, rows, batch["logit_index"][rows, cols])
    block = cols < blocked if blocked > 0 and len(eos) else None
    lp = tempered_logprobs(z, batch["completion_ids"][rows, cols], temperature, block, eos)
    if measure:  # what this pass keeps for its backward, per token: sizes the next passes
        _note_bytes_per_token(model, (torch.cuda.memory_allocated(cmask.device) - before) / batch["input_ids"].numel())
    return torch.zeros(cmask.shape, dtype=lp.dtype, device=lp.device).index_put((rows, cols), lp)


# ---------------------------------------------------------------------------------------------
# How many sequences one forward/backward pass takes

_BYTES_PER_TOKEN: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
BACKWARD_FACTOR = 1.25
"""The backward's peak over what the forward keeps (activation gradients of a layer, the
logits' gradient, the log-softmax chunks), with margin: an out-of-memory error halfway through a
backward cannot be retried (some gradients are already accumulated). On the Qwen3-8B shape the
peak of a 37-sequence pass was about 1.1x the forward's estimated share (docs/performance.md);
each pass also costs ~0.19 s of fixed work there, so the margin is not made wider than needed."""
RESERVE_FRACTION = 0.06
"""Share of the GPU's memory a pass leaves free (fragmentation, the optimizer's temporaries)."""


def _note_bytes_per_token(model, value: float) -> None:
    if value > 0:
        _BYTES_PER_TOKEN[model] = max(value, _BYTES_PER_TOKEN.get(model, 0.0))


def rows_per_pass(model, tokens: Sequence[int], limit: int | None, probe: int) -> int:
    """How many of the remaining sequences the next recompute pass takes, from the front;
    `tokens[i]` is what sequence i adds to the pass (a padded pass: its width; a packed one:
    `laid_tokens`, so a shared prompt counts once). `limit` (rollout.recompute_rows) caps it. On
    a GPU, as many as the free memory holds, from the bytes per token the model's last passes
    kept for their backward; before any pass was measured, `probe` sequences (one prompt group).
    On a CPU, all of them."""
    k = len(tokens) if limit is None else min(limit, len(tokens))
    device = next(model.parameters()).device
    if device.type != "cuda" or k <= 1:
        return max(1, k)
    per_token = _BYTES_PER_TOKEN.get(model)
    if per_token is None:
        return max(1, min(k, probe))
    usable = free_gpu_bytes(device) - RESERVE_FRACTION * gpu_budget_bytes(device)
    return fitting_rows(tokens[:k], BACKWARD_FACTOR * per_token, usable)


def fitting_rows(tokens: Sequence[int], bytes_per_token: float, usable: float) -> int:
    """The longest first-k of sequences adding `tokens` each whose total, at `bytes_per_token`,
    fits in `usable` bytes; at least 1 (a pass that cannot fit one sequence still has to try)."""
    total = np.cumsum(np.asarray(tokens, dtype=np.float64)) * bytes_per_token
    return max(1, int(np.searchsorted(total, usable, side="right")))


def gpu_budget_bytes(device) -> float:
    """The memory this process may use on `device`: the card's, times the per-process fraction
    when one was set (torch.cuda.set_per_process_memory_fraction)."""
    _, total = torch.cuda.mem_get_info(device)
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda d: 1.0)(device)
    return total * min(1.0, float(fraction))


def free_gpu_bytes(device) -> float:
    """Bytes an allocation can still get: the card's free memory plus the allocator's cached
    blocks, within this process's budget."""
    free, _ = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    free += torch.cuda.memory_reserved(device) - allocated
    return min(free, gpu_budget_bytes(device) - allocated)


# ---------------------------------------------------------------------------------------------
# Host work beside the recompute's queued passes


@contextlib.contextmanager
def scoring_stream(device: torch.device, on: bool):
    """With `on` (a CUDA device), the CUDA work inside runs on a second stream of `device`: its
    copies to and from the host then wait for that work alone, not for the passes queued before
    on the current stream. For work whose tensors all die inside (scoring returns numpy arrays),
    so no tensor crosses the streams. Otherwise the current stream, unchanged."""
    if not on:
        yield
        return
    index = torch.device(device).index
    with torch.cuda.stream(_side_stream(torch.cuda.current_device() if index is None else index)):
        yield


@functools.cache
def _side_stream(index: int) -> "torch.cuda.Stream":
    """One second stream per device for the process: the allocator's blocks that its work frees
    stay with one stream, not one more at every call."""
    return torch.cuda.Stream(index)


def to_device(values: np.ndarray, dtype: torch.dtype, device: torch.device, overlap: bool) -> torch.Tensor:
    """`values` as a `dtype` tensor on `device`. With `overlap` (a CUDA device) the copy comes from
    pinned memory without waiting: the host goes on queueing work behind the passes already on
    the stream, instead of waiting for them before it copies from pageable memory (torch's
    caching host allocator keeps the pinned block until the copy is done)."""
    t = torch.as_tensor(values, dtype=dtype)
    if overlap:
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
