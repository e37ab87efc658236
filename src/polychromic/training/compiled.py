"""Regional compilation of the training passes: every decoder layer's forward and backward
through torch.compile, when grad is enabled.

A LoRA pass on a large model is matmuls plus, per layer, some forty small elementwise kernels
(RMSNorm, RoPE, SiLU x up, residual adds, dtype casts, dropout) and their backward. Inductor
fuses those into a handful of kernels per layer and keeps fewer activations for the backward;
the matmuls stay cuBLAS's. The layers of a model are instances of one class with the same
code, so they share one compiled graph (torch.compile on a module with inlined built-in
modules lifts the parameters to graph inputs): the compile cost is that of one layer, forward
and backward, paid on the first pass. The graphs are compiled with dynamic shapes from the
start: a run's passes change width and row count from step to step, so a static first graph
would serve one shape and then be compiled again.

Only grad-enabled calls take the compiled graph. Calls under no_grad (the sampler's fallback
path, the KL reference under `disable_adapter()`, evaluation) run the layer's own eager forward,
so decoding with a KV cache never meets a graph traced for training. The parameters, the state
dict and the saved adapter are untouched; `uncompile` restores the eager call.

The maths is the layer's own: in float32 the result equals eager up to float summation order
(tests/test_compiled.py). In bfloat16 inductor keeps the fused elementwise work in float32
between the matmuls where eager rounds each op's output to bfloat16, so the two differ by
bfloat16 rounding (docs/performance.md measures how much on the Qwen3-8B shape, beside the
difference two equivalent eager schedules make).

How many graphs a run compiles. torch.compile guards on the call, so each kind of call is its
own graph. SFT runs in train mode (LoRA dropout on) where the policy-gradient recompute runs in
eval mode (the policy the samples came from): 2 graphs in a run. Three differences that are not
real are removed. The first layer's input (the frozen embedding's output) needs no grad where
the others' does: it enters as a fresh leaf that does, so the first layer takes the others'
graph (the cost is one layer's input gradient, 1/36 of the backward's on Qwen3-8B, against one
compile of a layer forward and backward per kind of call, 10 to 25 s there). A call through the
peft wrapper (SFT) passes `output_attentions=None, output_hidden_states=None` where the
recompute's call into the base model passes neither, so keyword arguments that are None are
dropped before the compiled call (a decoder layer reads them as absent: each defaults to None
or is read with `kwargs.get`). And the recompute's position ids come as one broadcast row,
the shape SFT's are built in (training/rollout.py, pack). Dynamo's recompile limit (8 per
function by default, after which the function silently runs eager; a run with static first
graphs and those three differences met 9) is raised to RECOMPILE_LIMIT while a compiled layer
runs, so a run meeting more kinds of call (a single-row pass specialises a size-1 dimension)
compiles them instead of falling back.
"""

from __future__ import annotations

import torch

RECOMPILE_LIMIT = 64


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model (its `_no_split_modules` classes), in order.
    Raises ValueError naming the model's class when it declares none or none is found."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"trainer.compile: {type(base).__name__} declares no repeated decoder-layer class "
                         f"(_no_split_modules = {sorted(names)}), so there is nothing to compile region by region; "
                         "set trainer.compile: false")
    return layers


def compile_layers(model: torch.nn.Module, dynamic: bool | None = True) -> int:
    """Route every decoder layer's grad-enabled calls through torch.compile (module docstring).
    `dynamic` is torch.compile's (True: symbolic widths and row counts from the first graph;
    None: a static graph first, dynamic after a shape changes).
    Returns how many layers were compiled."""
    layers = decoder_layers(model)
    for layer in layers:
        eager = layer._call_impl
        graph = torch.compile(eager, dynamic=dynamic)

        def call(*args, _graph=graph, _eager=eager, **kwargs):
            if not torch.is_grad_enabled():
                return _eager(*args, **kwargs)
            if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point() and not args[0].requires_grad:
                args = (args[0].detach().requires_grad_(), *args[1:])  # the first layer takes the others' graph
            with torch._dynamo.config.patch(recompile_limit=max(RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)):
                return _graph(*args, **{k: v for k, v in kwargs.items() if v is not None})

        call.polychromic_compiled = True
        layer._compiled_call_impl = call
    return len(layers)


def compiled(model: torch.nn.Module) -> int:
    """How many decoder layers of `model` run their training passes compiled."""
    return sum(getattr(getattr(m, "_compiled_call_impl", None), "polychromic_compiled", False) for m in model.modules())


def uncompile(model: torch.nn.Module) -> int:
    """Give every layer compiled by compile_layers its eager call back. Returns how many."""
    n = 0
    for m in model.modules():
        if getattr(getattr(m, "_compiled_call_impl", None), "polychromic_compiled", False):
            m._compiled_call_impl = None
            n += 1
    return n
