"""Which models fast generation serves: `unsupported_reason(model)` says, in words, why a model
is not (model type, attention layout, RoPE type, quantized or non-Linear projections, LoRA
variants, other peft layers, free GPU memory for the merged copy), or None.
"""

from __future__ import annotations

import torch

from polychromic.generation.fast_weights import ATTN_PROJ, MLP_PROJ, base_model, copy_bytes, lora_linear_cls, projections

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
"""RoPE types whose frequencies do not depend on the sequence length (dynamic/longrope do)."""


def unsupported_reason(model, copy_held: bool = False) -> str | None:
    """None when the fast path can generate for `model`; otherwise why not, in words.
    `copy_held`: a merged copy for this model exists already (its memory is taken), so the
    free-memory check is skipped."""
    base = base_model(model)
    cfg = getattr(base, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return f"model_type {getattr(cfg, 'model_type', None)!r} is not one of {SUPPORTED_MODEL_TYPES}"
    if getattr(cfg, "use_sliding_window", False) or any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return "sliding-window attention layers"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in STATIC_ROPE_TYPES:
        return f"RoPE type {rope_type!r} depends on the sequence length"
    inner = getattr(base, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")) or not hasattr(base, "lm_head"):
        return f"{type(base).__name__} does not have the embed_tokens/layers/norm/rotary_emb/lm_head layout"
    if type(base.lm_head) is not torch.nn.Linear:
        return f"lm_head is a {type(base.lm_head).__name__}, not a plain nn.Linear (adapter or quantized)"
    LoraLinear = lora_linear_cls()
    lora_ok = set()
    for layer in inner.layers:
        for name, mod in projections(layer):
            lin = mod.base_layer if isinstance(mod, LoraLinear) else mod
            if type(lin) is not torch.nn.Linear or not lin.weight.dtype.is_floating_point:
                return f"{name} is a {type(lin).__name__} ({lin.weight.dtype}), not a plain floating-point nn.Linear"
            if isinstance(mod, LoraLinear):
                lora_ok.add(id(mod))
                if mod.merged:
                    return f"{name}: the adapter is merged into the base weights in place (unmerge it first)"
                if mod.fan_in_fan_out or any(a in getattr(mod, "lora_variant", {}) for a in mod.active_adapters):
                    return f"{name}: LoRA variant (DoRA or other) or fan_in_fan_out is not supported"
                if any(getattr(mod, "lora_bias", {}).get(a, False) for a in mod.active_adapters):
                    return f"{name}: LoRA bias is not supported"
    for name, mod in base.named_modules():
        # Any other peft layer (adapters on lm_head or embeddings, modules_to_save copies) changes
        # the forward pass in ways the fused decode step would ignore.
        if type(mod).__module__.startswith("peft.") and id(mod) not in lora_ok:
            return f"{name}: {type(mod).__name__} is not a LoRA adapter on one of {ATTN_PROJ + MLP_PROJ}"
    dev = base.lm_head.weight.device
    if dev.type == "cuda" and not copy_held:
        need = copy_bytes(base)
        free, _ = torch.cuda.mem_get_info(dev)
        free += torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        if need > 0.9 * free:
            return f"not enough free GPU memory for the merged weight copy ({need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free)"
    return None
