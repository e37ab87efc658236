"""The pure tensor arithmetic of fast generation: the decoder layer of Llama / Qwen2 / Qwen3
written out (RMS norm, RoPE, fused q/k/v and gate/up projections, the prefill layer and the
one-token decode layer), and the sampler (transformers' logits processors and warpers, in their
order, then the exponential race).

The same operations in the same dtypes as transformers' modules, so greedy decoding picks the same
tokens. Every weight is an argument: one compiled decode-layer function serves all layers.
polychromic.generation.fast owns the state (merged weights, caches, graphs) these run on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from polychromic.generation.params import SamplingParams


def rms(x, w, eps: float):
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(x, cos, sin):
    return x * cos + rotate_half(x) * sin


@dataclass(frozen=True)
class Shape:
    n_heads: int
    n_kv: int
    head_dim: int
    inter: int
    eps: float
    scaling: float


def qkv(h, shape: Shape, ln1, wqkv, bqkv, qn, kn, cos, sin):
    """Input norm, fused q/k/v projection, optional q/k norms (Qwen3), RoPE. -> (B, heads, T, D)."""
    b, t, _ = h.shape
    hd, nh, nkv = shape.head_dim, shape.n_heads, shape.n_kv
    fused = F.linear(rms(h, ln1, shape.eps), wqkv, bqkv)
    q, k, v = fused.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
    q, k, v = q.view(b, t, nh, hd), k.view(b, t, nkv, hd), v.view(b, t, nkv, hd)
    if qn is not None:
        q, k = rms(q, qn, shape.eps), rms(k, kn, shape.eps)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return rope(q.transpose(1, 2), cos, sin), rope(k.transpose(1, 2), cos, sin), v.transpose(1, 2)


def out_and_mlp(h, attn, shape: Shape, act, wo, bo, ln2, wgu, bgu, wd, bd):
    h = h + F.linear(attn, wo, bo)
    gate, up = F.linear(rms(h, ln2, shape.eps), wgu, bgu).split([shape.inter, shape.inter], dim=-1)
    return h + F.linear(act(gate) * up, wd, bd)


def attend_sdpa(q, kc, vc, mask, scale: float):
    """Decode attention through SDPA: q (B, KV heads, G, D), the G query heads of one KV head as
    its G query rows (they all sit at the same position); kc, vc (B, KV heads, L, D); mask (B, 1, 1, L)."""
    return F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, scale=scale)


FLEX_KERNEL_OPTIONS: dict = {"SPLIT_KV": 1, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
"""kernel_options handed to flex_attention by the decode step ({} for torch's defaults). One
program per (row, KV head) over the whole cache in blocks of 64 slots, two loads in flight: 15.1
us per layer against 19.5 us with torch's defaults (which split the cache and reduce the parts)
at 40 rows x 192 slots on the Qwen3-8B shape, the best of 22 options (benchmarks/decode_kernels.py,
its flex section; docs/performance.md)."""


def attend_flex(q, kc, vc, mask, scale: float, kernel_options: dict | None = None):
    """The same attention through torch's flex_attention: compiled, its decoding kernel packs the
    query heads of one KV head into one program and reads that head's cache once (15.1 us per
    layer with FLEX_KERNEL_OPTIONS, 19 with torch's defaults, SDPA's 28 to 32 us, at 40 rows x
    192 slots on the Qwen3-8B shape: benchmarks/decode_profile.py, decode_kernels.py); uncompiled
    (a CPU test) it is torch's unfused reference."""
    from torch.nn.attention.flex_attention import flex_attention

    b, nkv, g, d = q.shape
    valid = mask.view(b, -1)

    def keep(score, bi, h, qi, ki):
        return torch.where(valid[bi, ki], score, float("-inf"))

    opts = FLEX_KERNEL_OPTIONS if kernel_options is None else kernel_options
    o = flex_attention(q.reshape(b, nkv * g, 1, d), kc, vc, score_mod=keep, scale=scale, enable_gqa=True,
                       kernel_options=dict(opts) or None)
    return o.reshape(b, nkv, g, d)


ATTENTION_FNS = {"sdpa": attend_sdpa, "flex": attend_flex}
"""The decode attentions by name (generation.fast.DECODE_ATTENTION picks one)."""


def make_decode_layer(shape: Shape, act, attention: str):
    """One decoder layer for one new token per row; writes its K/V at `slot` of the cache."""
    attend = ATTENTION_FNS[attention]

    def decode_layer(h, ln1, wqkv, bqkv, qn, kn, wo, bo, ln2, wgu, bgu, wd, bd, cos, sin, kc, vc, slot, mask):
        b = h.shape[0]
        q, k, v = qkv(h, shape, ln1, wqkv, bqkv, qn, kn, cos, sin)
        kc.index_copy_(2, slot, k)
        vc.index_copy_(2, slot, v)
        # The G query heads of one KV head go in as G query rows of that head: no repeat_kv copy.
        group = shape.n_heads // shape.n_kv
        o = attend(q.reshape(b, shape.n_kv, group, shape.head_dim), kc, vc, mask, shape.scaling)
        return out_and_mlp(h, o.reshape(b, 1, shape.n_heads * shape.head_dim), shape, act, wo, bo, ln2, wgu, bgu, wd, bd)

    return decode_layer


_LAYER_FNS: dict = {}


def decode_layer_fn(shape: Shape, act, compile: bool, attention: str):
    """One decode-layer function per (shape, activation, compile, attention), shared by engines:
    torch.compile guards on the closure's objects, so a fresh closure per engine would recompile
    every time an engine is rebuilt (after `release`, or for each model in the tests)."""
    if attention not in ATTENTION_FNS:
        raise ValueError(f"decode attention {attention!r}: one of {', '.join(ATTENTION_FNS)}")
    key = (shape, type(act), compile, attention)
    if key not in _LAYER_FNS:
        fn = make_decode_layer(shape, act, attention)
        _LAYER_FNS[key] = torch.compile(fn, fullgraph=True, dynamic=False) if compile else fn
    return _LAYER_FNS[key]


def make_prefill_layer(shape: Shape, act):
    """One decoder layer over whole prompts (left-padded, width t); writes their K/V to the cache's first t slots."""

    def prefill_layer(h, ln1, wqkv, bqkv, qn, kn, wo, bo, ln2, wgu, bgu, wd, bd, cos, sin, kc, vc, mask):
        b, t, _ = h.shape
        q, k, v = qkv(h, shape, ln1, wqkv, bqkv, qn, kn, cos, sin)
        kc[:, :, :t].copy_(k)
        vc[:, :, :t].copy_(v)
        group = shape.n_heads // shape.n_kv
        k = k[:, :, None].expand(b, shape.n_kv, group, t, shape.head_dim).reshape(b, shape.n_heads, t, shape.head_dim)
        v = v[:, :, None].expand(b, shape.n_kv, group, t, shape.head_dim).reshape(b, shape.n_heads, t, shape.head_dim)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=shape.scaling)
        return out_and_mlp(h, o.transpose(1, 2).reshape(b, t, -1), shape, act, wo, bo, ln2, wgu, bgu, wd, bd)

    return prefill_layer


def prefill_layer_fn(shape: Shape, act, compile: bool):
    """The prefill layer, shared like decode_layer_fn's. Compiled, it is one static graph per
    (distinct rows, width) shape: inductor fuses the ~60 small kernels a layer launches eagerly
    (norms, RoPE, casts, the mask's expansion), which is most of the prefill's wall time on a
    large model (54 ms eager against 19 ms compiled for 8 prompts of 64 tokens on the Qwen3-8B
    shape, benchmarks/decode_kernels.py)."""
    key = ("prefill", shape, type(act), compile)
    if key not in _LAYER_FNS:
        fn = make_prefill_layer(shape, act)
        _LAYER_FNS[key] = torch.compile(fn, fullgraph=True, dynamic=False) if compile else fn
    return _LAYER_FNS[key]


@dataclass(frozen=True)
class Sampler:
    greedy: bool
    temperature: float
    top_k: int
    top_p: float
    min_new: int
    eos: tuple[int, ...]
    pad: int

    @classmethod
    def from_params(cls, p: SamplingParams, eos: Sequence[int], pad: int) -> "Sampler":
        if p.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {p.max_new_tokens}")
        if not p.greedy:
            if not p.temperature > 0:
                raise ValueError(f"temperature must be > 0 for sampling, got {p.temperature}")
            if not 0 < p.top_p <= 1:
                raise ValueError(f"top_p must be in (0, 1], got {p.top_p}")
            if p.top_k < 0:
                raise ValueError(f"top_k must be >= 0, got {p.top_k}")
        return cls(p.greedy, float(p.temperature), int(p.top_k), float(p.top_p), int(p.min_new_tokens or 0), tuple(eos), int(pad))


def choose(logits, sp: Sampler, t, eos_t):
    """Next token per row from float32 logits (B, V); `t` is the (1,) count of tokens made so far."""
    if sp.min_new > 0 and sp.eos:  # MinNewTokensLengthLogitsProcessor
        blocked = torch.where(t < sp.min_new, float("-inf"), logits.index_select(1, eos_t))
        logits = logits.index_copy(1, eos_t, blocked)
    if sp.greedy:
        return logits.argmax(-1)
    if sp.temperature != 1.0:  # TemperatureLogitsWarper
        logits = logits / sp.temperature
    if sp.top_k > 0:  # TopKLogitsWarper
        kth = logits.topk(min(sp.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sp.top_p < 1.0:  # TopPLogitsWarper, min_tokens_to_keep=1
        sorted_logits, order = torch.sort(logits, descending=False)
        remove = sorted_logits.softmax(-1).cumsum(-1) <= (1 - sp.top_p)
        remove[:, -1] = False
        logits = logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    probs = logits.softmax(-1)
    # argmax_i p_i / E_i with E_i ~ Exp(1) i.i.d. picks i with probability p_i (the minimum of
    # E_i / p_i, independent exponentials of rates p_i). The clamp keeps 0/0 out if E is ever 0.
    race = torch.empty_like(probs).exponential_().clamp_min_(torch.finfo(probs.dtype).tiny)
    return (probs / race).argmax(-1)
