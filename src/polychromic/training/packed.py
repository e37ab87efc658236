"""Packed passes: sequences laid end to end in one row, attention kept inside each sequence.

The policy-gradient recompute right-pads its sequences to the longest (training/rollout.py,
`pack`): every projection, norm and MLP then runs on the padding too, and SDPA takes the
causal-and-padding mask, which its flash kernel cannot, so it falls back to a slower masked
kernel. A packed pass gives the decoder the real tokens only, (1, T) with T = the sum of the
lengths, position ids 0..len-1 restarting at each sequence, and attends through a
variable-length kernel that keeps each sequence causal and apart from the others
(torch.nn.attention.varlen.varlen_attn, flash attention over cumulative sequence offsets).

transformers picks a layer's attention by the config's `_attn_implementation` name, and passes
the forward's extra keyword arguments down to it. `packed_forward` registers PACKED_ATTENTION
under that name, switches the config to it for the one forward call and hands it the sequence
offsets; the mask mapping it passes holds no masks, so the model builds none. On a CPU, or
where this torch has no varlen kernel, the same attention runs one sequence at a time through
SDPA (exact, slower): what the CPU tests check the packed pass against.

A prompt shared by several sequences (the N samples of a rollout prompt, rollout.pack_packed
with share_prompts) is laid down once: the sequences after the first bring their completion
alone, and their attention segment takes its keys and values from the prompt copy and its own
tokens (KV_INDEX, gathered from the row), with the causal mask aligned at the bottom right, so
each completion token sees the prompt and its own earlier tokens, as in its own sequence.

Only the forward is switched: a backward that re-runs the forward (gradient checkpointing)
would meet the model's own attention with packed inputs, so `unsupported` refuses that case,
as it refuses attention layouts other than full causal attention (sliding windows) and models
whose logits are not the plain head over the decoder's output.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager

import torch
import torch.nn.functional as F

PACKED_ATTENTION = "polychromic_packed"
CU_SEQLENS = "polychromic_cu_seqlens"
MAX_LEN = "polychromic_max_len"
KV_INDEX = "polychromic_kv_index"
CU_SEQLENS_K = "polychromic_cu_seqlens_k"
MAX_LEN_K = "polychromic_max_len_k"

try:
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # a torch without the variable-length API: the per-sequence path
    _varlen_attn = None
_VARLEN_PARAMS = set(inspect.signature(_varlen_attn).parameters) if _varlen_attn is not None else set()


def varlen_kernel() -> bool:
    """Whether this torch has the variable-length flash kernel."""
    return _varlen_attn is not None


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs):
    """transformers attention-function signature: query (1, H, T, D), key/value (1, KV, T, D)
    of a packed row; returns ((1, T, H, D), None). With a KV_INDEX (a shared prompt,
    rollout.pack_packed), each segment's keys and values are gathered from the row at those
    positions and its queries attend to them through the bottom-right aligned causal mask."""
    cu, max_len = kwargs.get(CU_SEQLENS), kwargs.get(MAX_LEN)
    if cu is None or max_len is None:
        raise RuntimeError(f"{PACKED_ATTENTION} attention called without {CU_SEQLENS}/{MAX_LEN}: it serves "
                           "packed passes (training/packed.py, packed_forward) only")
    if query.shape[0] != 1:
        raise ValueError(f"{PACKED_ATTENTION}: a packed pass is one row, got {query.shape[0]}")
    if dropout:
        raise ValueError(f"{PACKED_ATTENTION}: attention dropout {dropout} is not supported in a packed pass")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, heads, D)
    cu_k, max_k, kv = cu, max_len, kwargs.get(KV_INDEX)
    if kv is not None:
        cu_k, max_k = kwargs[CU_SEQLENS_K], kwargs[MAX_LEN_K]
        k, v = k.index_select(0, kv), v.index_select(0, kv)
    if q.is_cuda and _varlen_attn is not None:
        out = _varlen(q, k, v, cu, cu_k, max_len, max_k, scaling)
    else:
        out = _per_sequence(q, k, v, cu, cu_k, scaling)
    return out.unsqueeze(0), None


def _varlen(q, k, v, cu, cu_k, max_len: int, max_k: int, scaling):
    kw: dict = {"scale": scaling}
    if "enable_gqa" in _VARLEN_PARAMS:
        kw["enable_gqa"] = True
    elif k.shape[1] != q.shape[1]:  # query head h reads KV head h // groups, as transformers' repeat_kv
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if "is_causal" in _VARLEN_PARAMS:
        kw["is_causal"] = True
    else:
        kw["window_size"] = (-1, 0)
    return _varlen_attn(q, k, v, cu, cu_k, max_len, max_k, **kw)


def _per_sequence(q, k, v, cu, cu_k, scaling):
    """The packed attention one segment at a time through SDPA: query i of a segment of Lq
    queries and Lk keys sees keys 0 .. i + Lk - Lq (causal, aligned at the bottom right)."""
    parts = []
    for (s, e), (sk, ek) in zip(zip(cu.tolist()[:-1], cu.tolist()[1:]), zip(cu_k.tolist()[:-1], cu_k.tolist()[1:])):
        lq, lk = e - s, ek - sk
        mask = None if lq == lk else torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        parts.append(F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[sk:ek].transpose(0, 1), v[sk:ek].transpose(0, 1),
                                                    attn_mask=mask, is_causal=mask is None, scale=scaling,
                                                    enable_gqa=True).transpose(0, 1))
    return torch.cat(parts, dim=0)


@functools.cache
def _aligns_bottom_right(device: str) -> bool:
    """Whether this torch's variable-length kernel aligns the causal mask of a segment with fewer
    queries than keys at the bottom right (FlashAttention's rule: query i of Lq sees keys up to
    i + Lk - Lq), which a shared prompt's segments need. One small call on `device` against the
    per-segment reference; a kernel aligning at the top left would let a completion's first
    token see one key of its prompt."""
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(n, 2, 64, generator=g).to(device=device, dtype=torch.bfloat16) for n in (3, 7, 7))
    cu_q, cu_k = (torch.tensor(c, dtype=torch.int32, device=device) for c in ([0, 3], [0, 7]))
    out = _varlen(q, k, v, cu_q, cu_k, 3, 7, None).float()
    ref = _per_sequence(q.float(), k.float(), v.float(), cu_q, cu_k, None)
    return bool(torch.allclose(out, ref, rtol=0, atol=0.05))


def check_shared_segments(device) -> None:
    """Raise when the variable-length kernel on `device` cannot run shared-prompt segments (see
    _aligns_bottom_right); a CPU runs them through the per-segment SDPA path, which can."""
    device = torch.device(device)
    if device.type == "cuda" and _varlen_attn is not None and not _aligns_bottom_right(str(device)):
        raise RuntimeError("rollout.share_prompts: this torch's variable-length attention kernel does not align a "
                           "causal segment of fewer queries than keys at the bottom right, so a completion cannot "
                           "attend to a shared prompt copy; set rollout.share_prompts: false")


PLAIN_HEAD_TYPES = ("llama", "mistral", "qwen2", "qwen3")
"""Model types whose causal-LM logits are exactly lm_head(final hidden state): for these the
head can run on the positions that are scored alone (training/rollout.py)."""

_REGISTERED = False


def _register() -> None:
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface

        AttentionInterface.register(PACKED_ATTENTION, packed_attention)
        _REGISTERED = True


def unsupported(base, training: bool = False) -> str | None:
    """Why `base` (a transformers causal LM, not the peft wrapper) cannot take a packed pass, or
    None when it can. `training`: the pass runs with dropout on (SFT), where the config's
    attention dropout would apply and the packed attention has none (packed_attention refuses
    a non-zero dropout when called)."""
    cfg = base.config
    p = float(getattr(cfg, "attention_dropout", 0.0) or 0.0)
    if training and p > 0:
        return f"its attention dropout ({p:g}) applies in training, and the packed attention has no dropout"
    if getattr(cfg, "model_type", None) not in PLAIN_HEAD_TYPES or not hasattr(base, "model"):
        return f"model type {getattr(cfg, 'model_type', None)!r} is not one of {', '.join(PLAIN_HEAD_TYPES)}"
    if type(getattr(base, "lm_head", None)) is not torch.nn.Linear:
        return "its lm_head is not a plain Linear layer"
    kinds = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"} or (getattr(cfg, "use_sliding_window", False) and getattr(cfg, "sliding_window", None)):
        return f"its layers are not all full causal attention (layer types {sorted(kinds)})"
    if checkpointing(base):
        return "gradient checkpointing re-runs the forward inside the backward, outside the packed attention"
    return None


def checkpointing(base) -> bool:
    """Whether gradient checkpointing is on in `base`, a plain decoder (PLAIN_HEAD_TYPES): the flag
    transformers' gradient_checkpointing_enable sets on the model, its decoder and each decoder
    layer, where the layers read it (every_n_layers may leave some off). The library's own
    is_activation_checkpointing walks every module for it: about 3,000 with LoRA on all seven
    projections of a 36-layer model, several ms of host time at the start of each pass."""
    decoder = base.model
    return any(getattr(m, "gradient_checkpointing", False) for m in (base, decoder, *getattr(decoder, "layers", ())))


def use_packed(model, setting: bool | None, key: str, training: bool) -> bool:
    """Whether a kind of training pass packs its sequences, from its config key `key`
    (trainer.packed_sft, with dropout, rollout.packed_recompute, without, as `training` says):
    None packs where the variable-length kernel runs (a CUDA model on a torch that has it) and
    the model supports a packed pass; True packs (on a CPU through the per-sequence attention)
    or raises why it cannot; False pads."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    reason = unsupported(base, training)
    if setting is None:
        return reason is None and varlen_kernel() and next(model.parameters()).is_cuda
    if setting and reason:
        raise ValueError(f"{key}: true, but {type(base).__name__} cannot take a packed pass: {reason}; "
                         "set it to null (pack where possible) or false")
    return bool(setting)


@contextmanager
def _attention(cfg, name: str):
    before = cfg._attn_implementation
    cfg._attn_implementation = name
    try:
        yield
    finally:
        cfg._attn_implementation = before


def packed_forward(base, batch: dict) -> torch.Tensor:
    """(T, hidden) final hidden states of a packed batch (rollout.pack_packed: input_ids and
    position_ids (1, T), cu_seqlens (N + 1,) int32, max_len, and with a shared prompt kv_index,
    cu_seqlens_k, max_len_k) through the decoder of `base` (LoRA layers, disable_adapter and
    compiled layers act inside it)."""
    reason = unsupported(base)
    if reason:
        raise ValueError(f"a packed pass cannot run on {type(base).__name__}: {reason}")
    _register()
    kw = {CU_SEQLENS: batch["cu_seqlens"], MAX_LEN: batch["max_len"]}
    if "kv_index" in batch:
        check_shared_segments(batch["input_ids"].device)
        kw |= {KV_INDEX: batch["kv_index"], CU_SEQLENS_K: batch["cu_seqlens_k"], MAX_LEN_K: batch["max_len_k"]}
    with _attention(base.config, PACKED_ATTENTION):  # no masks: every layer is full attention (unsupported)
        out = base.model(input_ids=batch["input_ids"], attention_mask={"full_attention": None}, position_ids=batch["position_ids"],
                         use_cache=False, **kw)
    return out.last_hidden_state[0]
