"""Fast rollouts on a GPU: the same contract as `generation.sample`, near the memory-bandwidth floor.

Plain `generate()` with an unmerged PEFT adapter spends ~76 ms per decode step on the Qwen3-8B
shape (docs/performance.md): Python and kernel-launch overhead plus seven extra LoRA
matmuls per layer, while the step's real cost is reading the weights once (~5 ms at 3 TB/s).
This module closes the gap:

1. Merged weights, in a copy. W' = W + s * B @ A (one addmm per projection, into preallocated
   fused buffers [q;k;v] and [gate;up]). The model's own parameters are never written, so the
   trainable state after generation is bit-identical to before (tested); merging in place and
   unmerging in bf16 would not be (W + D - D != W in bf16). The copy costs the projections' bytes
   once (13.9 GB on Qwen3-8B) and is refreshed at every call, since training moves the adapter.
2. A static KV cache per shape bucket (rows rounded up to 8, prompt width to 32, cache length
   to 64): a training run meets a handful of shapes, so nothing recompiles step after step.
3. One decode step (embedding, all layers, final norm, lm_head, sampling, state update) captured
   as a CUDA graph and replayed per token. Before capture, the per-layer function is compiled by
   torch.compile (inductor fuses the RMS norms, RoPE and SiLU*up; one compiled graph serves all
   layers, since the weights are arguments).
4. Sampling inside the graph, with transformers' rules in transformers' order (min_new_tokens'
   EOS block, temperature, top-k, top-p), then the exponential race argmax(p / E), E ~ Exp(1),
   which draws exactly from p without torch.multinomial's host synchronisation (gpt-fast does
   the same). Greedy is argmax, as in generate().

The prefill is one pass over the distinct prompts, its layers compiled as the decode step's are
(one static graph per shape bucket; the distinct rows are rounded up to a multiple of 8 too).
Attention matches generate(): left padding, positions counted over real tokens only, padded keys
masked. The decode step attends through flex_attention's decoding kernel (DECODE_ATTENTION; SDPA
the alternative, with the query heads sharing one KV head handed to it as that head's query rows),
so the KV cache is read once, never repeated per head.

Supported: model_type llama (SmolLM2), qwen2, qwen3 with full attention and a static RoPE, plain
nn.Linear projections (no 4-bit), LoRA adapters (no DoRA or other variants) on the seven
projections. `unsupported_reason(model)` says why a model is not.

This module holds the engine (buckets, captured steps, chunking) and the public `sample`,
`release`, `merged_weights`, `unsupported_reason`; the layer arithmetic and the sampler are
fast_layers, the merged copy fast_weights, the support check fast_support.
"""

from __future__ import annotations

import os
import time
import warnings
import weakref
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F

from polychromic.generation import fast_support
from polychromic.generation.fast_layers import Sampler, Shape, choose, decode_layer_fn, prefill_layer_fn, rms
from polychromic.generation.fast_support import STATIC_ROPE_TYPES, SUPPORTED_MODEL_TYPES  # noqa: F401 (public here)
from polychromic.generation.fast_weights import Slot, base_model, fingerprint, watched_modules
from polychromic.generation.params import Completion, SamplingParams, eos_ids, strip_completion

ROW_BUCKET = 8
WIDTH_BUCKET = 32
LENGTH_BUCKET = 64
"""Shape buckets. The cache length is a multiple of 64 also because SDPA's memory-efficient kernel
wants the mask's last dimension aligned to 16."""
MAX_CHUNK_ROWS = 512
"""Rows per generation chunk when batch_size does not say: past ~512 rows the decode step is
compute-bound on an H100 and larger chunks only cost memory."""
MEMORY_FRACTION = 0.5
"""Share of the free GPU memory one chunk's KV cache and temporaries may take."""
MAX_BUCKETS = 2
MAX_GRAPHS_PER_BUCKET = 4
STOP_CHECK_EVERY = 8
"""Decode steps between checks that every row has emitted EOS (each check is a host sync)."""
RECOMPILE_LIMIT = 64
"""Each shape bucket is one recompile of the layer function; torch's default limit (8) would
silently fall back to eager after eight buckets."""

DECODE_ATTENTION = "flex"
"""How the decode step attends: a key of fast_layers.ATTENTION_FNS (flex, sdpa), read when an
engine is built (benchmarks/decode_profile.py compares them: flex saves ~0.3 ms of a ~6.3 ms step)."""

ENV_SWITCH = "POLYCHROMIC_FASTGEN"
"""Set to 0 to make `generation.sample` use plain generate() on a GPU too."""

last_stats: dict = {}
"""Timings of the latest `sample` call (seconds; CUDA-event timed on a GPU): merge, prefill,
decode, capture (compile + graph capture, first use of a bucket only), steps, rows, shapes."""


# ---------------------------------------------------------------------------------------------
# Which models the fast path serves


def unsupported_reason(model) -> str | None:
    """None when the fast path can generate for `model`; otherwise why not, in words."""
    return fast_support.unsupported_reason(model, copy_held=bool(_ENGINES.get(model)))


def use_fast_path(model) -> bool:
    """What `generation.sample` asks on a GPU: the switch is on and the model is supported.
    An unsupported model gets a warning saying why (once per reason) and plain generate()."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    reason = unsupported_reason(model)
    if reason is not None:
        warnings.warn(f"fast generation is off for this model ({reason}); using plain generate()", stacklevel=3)
        return False
    return True


# ---------------------------------------------------------------------------------------------
# The engine: merged weight copy, buckets of static buffers, captured decode steps


class _Bucket:
    """Static buffers for one (rows, cache length) shape; graphs are captured on them."""

    def __init__(self, eng: "_Engine", rows: int, length: int):
        dev = eng.device
        self.rows, self.length = rows, length
        self.kv = torch.zeros(eng.n_layers, 2, rows, eng.shape.n_kv, length, eng.shape.head_dim, device=dev, dtype=eng.dtype)
        self.layer_kv = [(self.kv[i, 0], self.kv[i, 1]) for i in range(eng.n_layers)]
        self.tok = torch.zeros(rows, dtype=torch.long, device=dev)
        self.pos = torch.zeros(rows, dtype=torch.long, device=dev)
        self.slot = torch.zeros(1, dtype=torch.long, device=dev)
        self.t = torch.zeros(1, dtype=torch.long, device=dev)
        self.valid = torch.zeros(rows, length, dtype=torch.bool, device=dev)
        self.finished = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.out = torch.zeros(rows, length, dtype=torch.long, device=dev)
        self.arange = torch.arange(length, device=dev)
        self.graphs: OrderedDict = OrderedDict()


class _Timer:
    """CUDA events on a GPU (no host sync until the end), perf_counter on a CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.marks.append(e)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self, i: int, j: int) -> float:
        a, b = self.marks[i], self.marks[j]
        return a.elapsed_time(b) / 1000 if self.cuda else b - a


class _Prefix:
    """The first `rows` rows of a bucket's KV cache (views), for the distinct-row prefill."""

    def __init__(self, b: "_Bucket", rows: int):
        self.layer_kv = [(kc[:rows], vc[:rows]) for kc, vc in b.layer_kv]


class _Engine:
    def __init__(self, model, compile: bool, graphs: bool):
        base = base_model(model)
        cfg, inner = base.config, base.model
        self.modules = watched_modules(base)
        emb = inner.embed_tokens.weight
        self.device, self.dtype = emb.device, emb.dtype
        attn0 = inner.layers[0].self_attn
        self.shape = Shape(
            n_heads=cfg.num_attention_heads,
            n_kv=cfg.num_key_value_heads,
            head_dim=attn0.head_dim,
            inter=inner.layers[0].mlp.gate_proj.out_features,
            eps=float(cfg.rms_norm_eps),
            scaling=float(attn0.scaling),
        )
        self.act = inner.layers[0].mlp.act_fn
        self.n_layers = len(inner.layers)
        self.rotary = inner.rotary_emb
        self.embed, self.final_norm = emb, inner.norm.weight
        self.lm_head_w, self.lm_head_b = base.lm_head.weight, base.lm_head.bias
        self.slots: list[Slot] = []
        self.layer_args = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            qkv = self._slot([a.q_proj, a.k_proj, a.v_proj])
            o = self._slot([a.o_proj])
            gu = self._slot([m.gate_proj, m.up_proj])
            down = self._slot([m.down_proj])
            qn = a.q_norm.weight if hasattr(a, "q_norm") else None
            kn = a.k_norm.weight if hasattr(a, "k_norm") else None
            self.layer_args.append(
                (layer.input_layernorm.weight, qkv.weight, qkv.bias, qn, kn, o.weight, o.bias,
                 layer.post_attention_layernorm.weight, gu.weight, gu.bias, down.weight, down.bias)
            )
        self.graphs = graphs and self.device.type == "cuda"
        self.decode_layer = decode_layer_fn(self.shape, self.act, compile, DECODE_ATTENTION)
        self.prefill_layer = prefill_layer_fn(self.shape, self.act, compile)
        self.compiled = compile
        self.pool = torch.cuda.graph_pool_handle() if self.graphs else None
        self.buckets: OrderedDict = OrderedDict()
        self.eos_tensors: dict = {}

    def _slot(self, sources):
        s = Slot(sources, self.device, self.dtype, alias_ok=True)
        self.slots.append(s)
        return s

    def merge(self) -> None:
        for s in self.slots:
            s.merge()

    def bucket(self, rows: int, length: int) -> _Bucket:
        key = (rows, length)
        if key in self.buckets:
            self.buckets.move_to_end(key)
            return self.buckets[key]
        while len(self.buckets) >= MAX_BUCKETS:
            self.buckets.popitem(last=False)
        b = self.buckets[key] = _Bucket(self, rows, length)
        return b

    def eos_tensor(self, eos: tuple[int, ...]):
        if eos not in self.eos_tensors:  # kept alive: captured graphs read it by address
            self.eos_tensors[eos] = torch.tensor(eos or (0,), dtype=torch.long, device=self.device)
        return self.eos_tensors[eos]

    # -- the two passes ----------------------------------------------------------------------

    def prefill(self, b: _Bucket, ids, attn, where=None):
        """Runs the prompts (left-padded, width T) through the model, fills the cache's first T
        slots and returns the float32 logits of each row's last position. With `where` (one
        index per bucket row), `ids`/`attn` hold only the distinct rows: each is run once, and
        bucket row i gets the cache and logits of distinct row where[i]."""
        if where is not None:
            t = ids.shape[1]
            u = ids.shape[0]
            logits = self.prefill(_Prefix(b, u), ids, attn)
            for kc, vc in b.layer_kv:
                kc[:, :, :t].copy_(kc[:u, :, :t].index_select(0, where))
                vc[:, :, :t].copy_(vc[:u, :, :t].index_select(0, where))
            return logits.index_select(0, where)
        rows, t = ids.shape
        h = F.embedding(ids, self.embed)
        pos = (attn.cumsum(-1) - 1).clamp_min(0)  # generate(): positions count real tokens only
        cos, sin = self.rotary(h, pos)
        idx = torch.arange(t, device=self.device)
        mask = (idx[None, :] <= idx[:, None])[None] & attn.bool()[:, None, :]
        # A padding query attends to itself, so no row is fully masked (SDPA would give NaN there,
        # and NaN in the cache poisons later steps through 0 * NaN). Its output is never used.
        mask = (mask | torch.eye(t, dtype=torch.bool, device=self.device)[None]).unsqueeze(1)
        for lw, (kc, vc) in zip(self.layer_args, b.layer_kv):
            h = self.prefill_layer(h, *lw, cos, sin, kc, vc, mask)
        h = rms(h[:, -1:], self.final_norm, self.shape.eps)
        return F.linear(h[:, -1], self.lm_head_w, self.lm_head_b).float()

    def decode_step(self, b: _Bucket, sp: Sampler) -> None:
        """One token for every row, all on the device, reading and advancing the bucket's state
        (this is what gets captured)."""
        eos_t = self.eos_tensor(sp.eos)
        h = F.embedding(b.tok, self.embed).unsqueeze(1)
        cos, sin = self.rotary(h, b.pos.unsqueeze(1))
        mask = (b.valid & (b.arange <= b.slot)).view(b.rows, 1, 1, b.length)
        for lw, (kc, vc) in zip(self.layer_args, b.layer_kv):
            h = self.decode_layer(h, *lw, cos, sin, kc, vc, b.slot, mask)
        h = rms(h, self.final_norm, self.shape.eps)
        nxt = choose(F.linear(h[:, -1], self.lm_head_w, self.lm_head_b).float(), sp, b.t, eos_t)
        nxt = torch.where(b.finished, sp.pad, nxt)  # generate(): pad after EOS
        b.out.index_copy_(1, b.t, nxt.unsqueeze(1))
        if sp.eos:
            b.finished |= torch.isin(nxt, eos_t)
        b.tok.copy_(nxt)
        b.pos.add_(1)
        b.slot.add_(1)
        b.t.add_(1)

    def stepper(self, b: _Bucket, sp: Sampler):
        """The function that makes one decode step: a graph replay, or the eager step."""
        if not self.graphs:
            return lambda: self.decode_step(b, sp)
        if sp not in b.graphs:
            while len(b.graphs) >= MAX_GRAPHS_PER_BUCKET:
                b.graphs.popitem(last=False)
            b.graphs[sp] = self._capture(b, sp)
        b.graphs.move_to_end(sp)
        return b.graphs[sp].replay

    def _capture(self, b: _Bucket, sp: Sampler):
        # Warm-up and capture run on scratch state (reset by the caller afterwards) and must not
        # move the RNG: the same seed gives the same samples whether or not this call captured.
        rng = torch.cuda.get_rng_state(self.device)
        b.valid.zero_()
        b.valid[:, 0] = True
        b.slot.zero_()
        b.t.zero_()
        b.pos.zero_()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # the first call compiles the layer function
                self.decode_step(b, sp)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.decode_step(b, sp)
        torch.cuda.synchronize(self.device)
        torch.cuda.set_rng_state(rng, self.device)
        return graph

    def run_chunk(self, chunk: list[list[int]], width: int, length: int, sp: Sampler, max_new: int, stats: dict) -> list[list[int]]:
        n = len(chunk)
        rows = _round_up(n, ROW_BUCKET)
        b = self.bucket(rows, length)
        t0 = time.perf_counter()
        step = self.stepper(b, sp)
        stats["capture_s"] += time.perf_counter() - t0
        ids = torch.full((rows, width), sp.pad, dtype=torch.long)
        attn = torch.zeros((rows, width), dtype=torch.long)
        for i, x in enumerate(chunk):  # left padding
            ids[i, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            attn[i, width - len(x) :] = 1
        attn[n:, -1] = 1  # filler rows up to the bucket: one pad token each, discarded
        # The n samples of a prompt share its prefill: each distinct row is run once (a tenth of
        # the prefill for evaluation's 10 samples per prompt), then copied to the rows holding it.
        uniq, where = torch.unique(torch.cat([ids, attn], dim=1), dim=0, return_inverse=True)
        # Distinct rows rounded up to the row bucket (repeats of the first, never read back), so
        # a compiled prefill meets as few shapes as the decode step.
        spare = min(rows, _round_up(len(uniq), ROW_BUCKET)) - len(uniq)
        uniq = torch.cat([uniq, uniq[:1].expand(spare, -1)]) if spare > 0 else uniq
        ids, attn = ids.to(self.device), attn.to(self.device)
        timer = _Timer(self.device)
        timer.mark()
        b.kv.zero_()
        if len(uniq) < rows:
            logits = self.prefill(b, uniq[:, :width].to(self.device), uniq[:, width:].to(self.device), where.to(self.device))
        else:
            logits = self.prefill(b, ids, attn)
        first = choose(logits, sp, torch.zeros(1, dtype=torch.long, device=self.device), self.eos_tensor(sp.eos))
        b.valid.zero_()
        b.valid[:, :width] = attn.bool()
        b.valid[:, width:] = True
        b.finished.zero_()
        b.finished[n:] = True
        b.out.zero_()
        b.out[:, 0] = first
        if sp.eos:
            b.finished |= torch.isin(first, self.eos_tensor(sp.eos))
        b.tok.copy_(first)
        b.pos.copy_(attn.sum(-1))
        b.slot.fill_(width)
        b.t.fill_(1)
        timer.mark()
        made = 1
        while made < max_new:
            if sp.eos and made % STOP_CHECK_EVERY == 0 and bool(b.finished.all()):
                break
            step()
            made += 1
        timer.mark()
        out = b.out[:n, :made].tolist()  # synchronises
        stats["prefill_s"] += timer.seconds(0, 1)
        stats["decode_s"] += timer.seconds(1, 2)
        stats["steps"] += made - 1
        return out


_ENGINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _engine(model, compile: bool, graphs: bool) -> _Engine:
    base = base_model(model)
    per_model = _ENGINES.setdefault(model, {})
    key = (compile, graphs)
    fp = fingerprint(base)
    cached = per_model.get(key)
    if cached is not None and cached[0] == fp:
        return cached[1]
    per_model.pop(key, None)  # free the stale copy before building a new one
    eng = _Engine(model, compile=compile, graphs=graphs)
    per_model[key] = (fp, eng)
    return eng


def release(model, empty_cache: bool = True) -> None:
    """Frees the merged weight copy, KV caches and graphs held for `model` (the compiled layer
    function stays cached). A training loop short of memory calls this after its rollouts, with
    empty_cache=False so the training step reuses the freed blocks; the next `sample` then
    re-allocates and re-captures (no recompile: docs/performance.md has the cost)."""
    _ENGINES.pop(model, None)
    if empty_cache and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def plan_chunks(total: int, cap: int) -> list[int]:
    """Equal chunk sizes (the last no smaller than the others by more than one) so every chunk
    falls in the same row bucket: 5000 rows at cap 512 -> ten chunks of 500."""
    if total <= 0:
        return []
    k = -(-total // max(1, cap))
    base, extra = divmod(total, k)
    return [base + 1] * extra + [base] * (k - extra)


def chunk_cap(total: int, batch_size: int | None, free: float, kv_per_row: float, temp_per_row: float,
              held: Sequence[int] = ()) -> int:
    """Rows per chunk: at most `batch_size` (MAX_CHUNK_ROWS when None) and `total`, and what
    MEMORY_FRACTION of the `free` bytes holds at kv_per_row + temp_per_row a row for a new
    bucket. A bucket already held at this cache length (`held`: its rows) has its KV cache paid
    for, so chunks planned to land in it need only the temporaries: without this, the memory a
    first call's bucket took would shrink the next call of the same shape to a new bucket of its
    own, with its own capture, cache and chunk layout (so other samples for the same seed). A
    held bucket is taken only when plan_chunks at that size fills it, so no chunk ends up in a
    new bucket that the free memory was never checked for."""
    cap = min(total, batch_size or MAX_CHUNK_ROWS)
    budget = MEMORY_FRACTION * free
    new = int(budget // (kv_per_row + temp_per_row)) // ROW_BUCKET * ROW_BUCKET
    fills = lambda r: _round_up(plan_chunks(total, min(cap, r))[0], ROW_BUCKET) == r  # noqa: E731 (so r <= cap's bucket)
    reuse = max((r for r in held if r * temp_per_row <= budget and fills(r)), default=0)
    return max(ROW_BUCKET, min(cap, max(new, reuse)))


def _chunk_cap(eng: _Engine, total: int, batch_size: int | None, width: int, length: int, vocab: int) -> int:
    if eng.device.type != "cuda":
        return min(total, batch_size or MAX_CHUNK_ROWS)
    s = eng.shape
    elem = torch.empty((), dtype=eng.dtype).element_size()
    # Per row: its KV cache, the prefill's widest temporaries (gate/up activations over the prompt),
    # and the float32 vocabulary rows of sampling (logits, probabilities, noise, sort).
    kv = eng.n_layers * 2 * s.n_kv * length * s.head_dim * elem
    temp = width * 4 * s.inter * elem + 6 * vocab * 4
    free, _ = torch.cuda.mem_get_info(eng.device)
    free += torch.cuda.memory_reserved(eng.device) - torch.cuda.memory_allocated(eng.device)
    held = [rows for rows, held_length in eng.buckets if held_length == length]
    return chunk_cap(total, batch_size, free, kv, temp, held)


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    n: int,
    params: SamplingParams,
    seed: int | None = None,
    batch_size: int | None = None,
    *,
    compile: bool | None = None,
    graphs: bool | None = None,
) -> list[list[Completion]]:
    """`generation.sample`'s contract (n completions per tokenized prompt, out[prompt][sample]),
    through the merged-weight, static-cache, captured-step path. `compile` and `graphs` default
    to on for a CUDA model and off on a CPU (where only the arithmetic is exercised, in tests)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    reason = unsupported_reason(model)
    if reason is not None:
        raise ValueError(f"fast generation does not apply to this model: {reason}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError(f"prompt {next(i for i, p in enumerate(prompts) if len(p) == 0)} is empty")
    base = base_model(model)
    on_cuda = base.lm_head.weight.device.type == "cuda"
    eng = _engine(model, compile=on_cuda if compile is None else compile, graphs=on_cuda if graphs is None else graphs)
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    sp = Sampler.from_params(params, eos, pad)
    flat = [list(p) for p in prompts for _ in range(n)]
    stats = {"merge_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0, "capture_s": 0.0, "steps": 0, "rows": len(flat)}
    if not flat:
        last_stats.clear()
        last_stats.update(stats)
        return []
    timer = _Timer(eng.device)
    timer.mark()
    eng.merge()
    timer.mark()
    if seed is not None:
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
    width = _round_up(max(len(x) for x in flat), WIDTH_BUCKET)
    length = _round_up(width + params.max_new_tokens - 1, LENGTH_BUCKET)
    cap = _chunk_cap(eng, len(flat), batch_size, width, length, eng.lm_head_w.shape[0])
    sizes = plan_chunks(len(flat), cap)
    ids: list[list[int]] = []
    start = 0
    with torch._dynamo.config.patch(recompile_limit=max(RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)):
        for size in sizes:
            ids += eng.run_chunk(flat[start : start + size], width, length, sp, params.max_new_tokens, stats)
            start += size
    stats.update(merge_s=timer.seconds(0, 1), chunks=len(sizes), chunk_rows=sizes[0], bucket_rows=_round_up(sizes[0], ROW_BUCKET),
                 width=width, length=length, compiled=eng.compiled, graphs=eng.graphs)
    last_stats.clear()
    last_stats.update(stats)
    results = [strip_completion(row, eos, pad) for row in ids]
    return [results[i * n : (i + 1) * n] for i in range(len(prompts))]


def merged_weights(model) -> dict[str, torch.Tensor]:
    """The merged copy as {HF parameter name: tensor view} (e.g. `model.layers.0.self_attn.q_proj.weight`),
    after `sample` ran; for checks that compare against a model holding exactly these weights."""
    per_model = _ENGINES.get(model) or {}
    if not per_model:
        raise RuntimeError("no fast-generation engine for this model yet: call fastgen.sample first")
    eng = next(iter(per_model.values()))[1]
    base = base_model(model)
    out: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(base.model.layers):
        lw = eng.layer_args[i]
        for names, w, b in (
            (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), lw[1], lw[2]),
            (("self_attn.o_proj",), lw[5], lw[6]),
            (("mlp.gate_proj", "mlp.up_proj"), lw[8], lw[9]),
            (("mlp.down_proj",), lw[10], lw[11]),
        ):
            row = 0
            for name in names:
                mod = layer.get_submodule(name)
                rows = (mod.base_layer if hasattr(mod, "base_layer") else mod).out_features
                out[f"model.layers.{i}.{name}.weight"] = w[row : row + rows]
                if b is not None:
                    out[f"model.layers.{i}.{name}.bias"] = b[row : row + rows]
                row += rows
    return out
