"""The merged weight copy of fast generation: which projections it covers, one fused slot per
weight ([q;k;v], o, [gate;up], down) holding W + s * B @ A, the bytes it costs, and the fingerprint
that tells the engine when the model changed under it (a new adapter, a moved tensor).

The model's own parameters are never written: the trainable state after generation is
bit-identical to before (tests/test_fastgen.py).
"""

from __future__ import annotations

import torch

from polychromic.generation import fast_kernels

MERGE_KERNEL = True
"""Merge a CUDA copy through fast_kernels.merge_into (W read once, the sum written once) instead
of torch.addmm; benchmarks/decode_kernels.py measures both."""

ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJ = ("gate_proj", "up_proj", "down_proj")


def base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def lora_linear_cls():
    from peft.tuners.lora import Linear as LoraLinear

    return LoraLinear


def projections(layer):
    return [(f"self_attn.{n}", getattr(layer.self_attn, n)) for n in ATTN_PROJ] + [(f"mlp.{n}", getattr(layer.mlp, n)) for n in MLP_PROJ]


def copy_bytes(base) -> int:
    """Bytes of the merged weight copy: every projection, except single ones with no adapter
    (o_proj, down_proj without LoRA are used in place)."""
    LoraLinear = lora_linear_cls()
    total = 0
    for layer in base.model.layers:
        for name, mod in projections(layer):
            lin = mod.base_layer if isinstance(mod, LoraLinear) else mod
            if name.endswith(("o_proj", "down_proj")) and not isinstance(mod, LoraLinear):
                continue
            total += lin.weight.numel() * lin.weight.element_size()
    return total


class Slot:
    """One weight of the merged copy: the rows of `sources` stacked ([q;k;v], [gate;up], o, down)."""

    def __init__(self, sources: list, device, dtype, alias_ok: bool):
        LoraLinear = lora_linear_cls()
        self.sources = sources
        lins = [m.base_layer if isinstance(m, LoraLinear) else m for m in sources]
        self.alias = alias_ok and len(sources) == 1 and not isinstance(sources[0], LoraLinear)
        if self.alias:  # no adapter on a single projection: read the model's weight in place
            self.weight, self.bias = lins[0].weight, lins[0].bias
            return
        rows = sum(lin.out_features for lin in lins)
        self.weight = torch.empty(rows, lins[0].in_features, device=device, dtype=dtype)
        has_bias = [lin.bias is not None for lin in lins]
        if any(has_bias) and not all(has_bias):
            raise ValueError(f"fused projections disagree on bias: {[type(m).__name__ for m in sources]}")
        self.bias = torch.empty(rows, device=device, dtype=dtype) if all(has_bias) else None

    def merge(self) -> None:
        if self.alias:
            return
        LoraLinear = lora_linear_cls()
        row = 0
        for m in self.sources:
            lin = m.base_layer if isinstance(m, LoraLinear) else m
            w = lin.weight
            dst = self.weight[row : row + w.shape[0]]
            terms = []
            if isinstance(m, LoraLinear) and not m.disable_adapters:
                terms = [(m.lora_A[a].weight, m.lora_B[a].weight, m.scaling[a]) for a in m.active_adapters if a in m.lora_A]
            if not terms:
                dst.copy_(w)
            # W + s * B @ A in one GEMM: the sum is accumulated in float32 and rounded once (peft's
            # merge rounds B @ A to the weight dtype first). A float32 adapter is rounded to the
            # weight dtype for the GEMM; its share of W' is small, so that error is far under
            # W's own rounding.
            for i, (a, b, s) in enumerate(terms):
                if i == 0 and MERGE_KERNEL and fast_kernels.available(dst):
                    fast_kernels.merge_into(dst, w, b, a, s)
                    continue
                a, b = a.to(w.dtype), b.to(w.dtype)
                if i == 0:
                    torch.addmm(w, b, a, alpha=s, out=dst)
                else:
                    dst.addmm_(b, a, alpha=s)
            if self.bias is not None:
                self.bias[row : row + w.shape[0]].copy_(lin.bias)
            row += w.shape[0]


def watched_modules(base) -> tuple:
    """The module objects the engine reads; a new object (a new adapter injected, a module
    replaced) or a moved tensor means the engine must be rebuilt."""
    inner = base.model
    mods = [inner.embed_tokens, inner.norm, inner.rotary_emb, base.lm_head]
    for layer in inner.layers:
        mods += [layer.input_layernorm, layer.post_attention_layernorm] + [m for _, m in projections(layer)]
        if hasattr(layer.self_attn, "q_norm"):
            mods += [layer.self_attn.q_norm, layer.self_attn.k_norm]
    return tuple(mods)


def fingerprint(base) -> tuple:
    mods = watched_modules(base)
    ptrs = tuple(t.data_ptr() for m in mods for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)))
    return tuple(id(m) for m in mods), ptrs
