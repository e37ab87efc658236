"""A lean training forward/backward for plain LoRA layers: one autograd function per layer.

peft's `lora.Linear.forward` casts the input to the adapter's dtype (float32 when the base is
bfloat16: a float32 copy of every projection's input), runs dropout, two thin matmuls, a scale
and an add, each its own autograd node, and casts the sum back. `install(model)` switches every
eligible layer to `FastLoraLinear`, whose forward is one function,

    y = x W^T + b + s * (dropout(x) A^T) B^T

computed in the base weight's dtype: A and B (float32 parameters) are cast to it on the fly, the
frozen W gets no gradient, A and B get float32 gradients, and nothing is copied to float32. Its
backward is five matmuls (g B, g^T h, (g B)^T dropout(x), g W and (g B) A; fewer where an input
needs no gradient). Dropout is the layer's own module (the same random numbers as peft's), and
skipped when it is an identity (p = 0, or in eval mode).

The fast path serves a call when grad is enabled, the layer has exactly one active adapter with
no variant (no DoRA) and no LoRA bias, it is neither merged nor disabled, no per-call adapter
names are passed, autocast is off, and the input has the base weight's dtype, float32 or
bfloat16. Anything else (no_grad sampling, `disable_adapter()`, merged weights, float16, DoRA)
runs peft's own forward, so the layer behaves as before. The parameters, the state dict and the
saved adapter are peft's: `uninstall` restores the class, and an adapter trained either way loads
in plain peft.

Under torch.compile (training/compiled.py) the low-rank branch is added out of place, y = x W^T
+ (h (s B)^T), and the same in the backward (g W + gh A): inductor turns an in-place addmm_ into
an out-of-place addmm, whose cuBLAS call first copies the whole (T, out) base output into a new
buffer, while a plain add is fused into the next kernel (the norm, SiLU x up or residual add that
reads the projection's output anyway). Eager keeps the in-place addmm_, its cheapest form.
`INPLACE_UNDER_COMPILE = True` restores the in-place form under compile (benchmarks/pg_profile.py
measures the two side by side).

Precision: in float32 the result equals peft's up to float summation order. In bfloat16 the
low-rank branch is a bfloat16 matmul (float32 accumulation) instead of a float32 one, so h =
dropout(x) A^T and the branch output are rounded to bfloat16 before the add: an error of about
2^-9 of the branch, itself a small part of the layer output; the A and B gradients are bfloat16
matmul results (float32 accumulation) returned as float32. Every operation is a plain matmul or
elementwise kernel, deterministic on a GPU, so two runs of the same config give the same adapter
bit for bit (the float_penalty == sft identity check) as they do under peft.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as PeftLoraLinear

INPLACE_UNDER_COMPILE = False
"""Whether a compiled graph adds the low-rank branch in place (module docstring)."""

FAST_DTYPES = (torch.float32, torch.bfloat16)
"""Compute dtypes the fast path serves (float16 keeps peft's float32 adapter path: a float16
gradient of A or B summed over many tokens can overflow or underflow)."""


def _out_of_place() -> bool:
    return torch.compiler.is_compiling() and not INPLACE_UNDER_COMPILE


class _LoraLinearFunction(torch.autograd.Function):
    """y = x W^T + b + s (d A^T) B^T, with d = dropout(x) (or x itself when `d` is None)."""

    @staticmethod
    def forward(ctx, x, d, weight, bias, lora_a, lora_b, scale: float):
        dt = weight.dtype
        a, b = lora_a.to(dt), lora_b.to(dt)
        x2 = x.reshape(-1, x.shape[-1])
        d2 = x2 if d is None else d.reshape(-1, d.shape[-1])
        h = torch.mm(d2, a.t())  # (T, r)
        y = F.linear(x2, weight, bias)
        if _out_of_place():
            y = y + torch.mm(h, b.t() if scale == 1.0 else b.t() * scale)
        else:
            y.addmm_(h, b.t(), alpha=scale)
        ctx.save_for_backward(x if d is None else d, weight, a, b, h)
        ctx.scale, ctx.no_dropout = scale, d is None
        ctx.dtypes = (lora_a.dtype, lora_b.dtype)
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y):
        d, weight, a, b, h = ctx.saved_tensors
        need_x, need_d, _, _, need_a, need_b, _ = ctx.needs_input_grad
        g = grad_y.reshape(-1, grad_y.shape[-1])
        grad_x = grad_d = grad_a = grad_b = None
        if need_b:
            grad_b = torch.mm(g.t(), h).to(ctx.dtypes[1]).mul_(ctx.scale)
        if need_a or need_x or need_d:
            gh = torch.mm(g, b)  # (T, r): d loss / d h, before the scale
            if ctx.scale != 1.0:
                gh.mul_(ctx.scale)
            if need_a:
                grad_a = torch.mm(gh.t(), d.reshape(-1, d.shape[-1])).to(ctx.dtypes[0])
            if need_x:
                grad_x = torch.mm(g, weight)
                if ctx.no_dropout:
                    grad_x = (grad_x + torch.mm(gh, a)) if _out_of_place() else grad_x.addmm_(gh, a)
                grad_x = grad_x.view(*grad_y.shape[:-1], weight.shape[1])
            if need_d:
                grad_d = torch.mm(gh, a).view(*grad_y.shape[:-1], weight.shape[1])
        return grad_x, grad_d, None, None, grad_a, grad_b, None


def lora_linear(x: torch.Tensor, d: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None,
                lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """x W^T + bias + scale * (d A^T) B^T in W's dtype, d = dropout(x) or None (then x);
    differentiable in x, d, A and B (A and B get gradients in their own dtype), not in W or bias."""
    return _LoraLinearFunction.apply(x, d, weight, bias, lora_a, lora_b, float(scale))


def _is_identity(drop: torch.nn.Module) -> bool:
    return not isinstance(drop, torch.nn.Dropout) or drop.p == 0.0 or not drop.training


class FastLoraLinear(PeftLoraLinear):
    """peft's LoRA Linear with the training forward of `lora_linear` (module docstring); set on
    an existing layer by `install`, never constructed directly."""

    def fast_adapter(self, x: torch.Tensor) -> str | None:
        """The adapter the fast path computes for this call, or None (peft's forward runs)."""
        if not torch.is_grad_enabled() or self.disable_adapters or self.merged:
            return None
        active = [a for a in self.active_adapters if a in self.lora_A]
        if len(active) != 1:
            return None
        name = active[0]
        if name in self.lora_variant or self.lora_bias.get(name, False) or self.lora_B[name].bias is not None:
            return None
        base = self.base_layer
        w = base.weight
        if x.dtype != w.dtype or w.dtype not in FAST_DTYPES or w.requires_grad or x.device != w.device:
            return None
        if base.bias is not None and base.bias.requires_grad:
            return None
        if torch.is_autocast_enabled(x.device.type):
            return None
        return name

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = None if (args or kwargs) else self.fast_adapter(x)
        if name is None:
            return super().forward(x, *args, **kwargs)
        drop = self.lora_dropout[name]
        d = None if _is_identity(drop) else drop(x)
        base = self.base_layer
        return lora_linear(x, d, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name])


def eligible(module: torch.nn.Module) -> bool:
    """A peft LoRA Linear over a plain nn.Linear with an (out, in) weight: what install switches."""
    return (type(module) in (PeftLoraLinear, FastLoraLinear) and type(module.get_base_layer()) is torch.nn.Linear
            and module.base_layer is module.get_base_layer() and not module.fan_in_fan_out)


def install(model: torch.nn.Module) -> int:
    """Switch every eligible LoRA layer of `model` to FastLoraLinear (in place; the parameters
    are untouched). Returns how many layers use it."""
    n = 0
    for module in model.modules():
        if eligible(module):
            module.__class__ = FastLoraLinear
            n += 1
    return n


def uninstall(model: torch.nn.Module) -> int:
    """Give every FastLoraLinear of `model` peft's own forward back. Returns how many."""
    n = 0
    for module in model.modules():
        if type(module) is FastLoraLinear:
            module.__class__ = PeftLoraLinear
            n += 1
    return n


def installed(model: torch.nn.Module) -> int:
    """How many layers of `model` train through the fast path."""
    return sum(type(m) is FastLoraLinear for m in model.modules())
