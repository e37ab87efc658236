"""The SDPA padding probes of step_bench.py (docs/performance.md, "SDPA and left padding").

- kernel level: which SDPA backends return NaN outputs or gradients on a fully masked query row
  (what left padding makes), 4 rows left- or right-padded by 0/16/32/48 of 128 positions;
- model level: the LoRA gradients of a batch mixing prompt lengths in TRL 1.16's layout
  (left-padded, no position ids) and rollout.pack's (right-padded, real positions), under the
  model's attention implementation and under eager.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polychromic.training.objectives import polychromic as poly
from polychromic.training.rollout import pack


def sdpa_probe(device, dtype) -> dict:
    """NaN from fully masked query rows, kernel by kernel: 4 rows, the b-th left-padded by 16 b."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, h, length, d = 4, 8, 128, 128
    valid = torch.ones(b, length, dtype=torch.bool, device=device)
    for i in range(b):
        valid[i, : 16 * i] = False
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    layouts = {"left_padded": valid, "right_padded": valid.flip(-1)}
    out: dict = {}
    for layout, v in layouts.items():
        mask = (causal[None] & v[:, None, :])[:, None]
        fully_masked = ~mask.any(-1)  # (b, 1, L) query rows with no key
        for name, backend in (("default", None), ("math", SDPBackend.MATH), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                              ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            torch.manual_seed(0)
            q, k, vv = (torch.randn(b, h, length, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
            try:
                if backend is None:
                    o = F.scaled_dot_product_attention(q, k, vv, attn_mask=mask)
                else:
                    with sdpa_kernel([backend]):
                        o = F.scaled_dot_product_attention(q, k, vv, attn_mask=mask)
                # the loss ignores padding queries, as a masked loss does
                o.backward(torch.randn_like(o) * v[:, None, :, None])
            except RuntimeError as exc:
                out[f"{layout}/{name}"] = {"error": str(exc).splitlines()[0][:160]}
                continue
            out[f"{layout}/{name}"] = {
                "fully_masked_rows": int(fully_masked.sum()),
                "nan_out_fully_masked": bool(o.detach().isnan().any(-1)[fully_masked.expand(b, h, length)].any()) if fully_masked.any() else False,
                "nan_out_other": bool(o.detach().isnan().any(-1)[~fully_masked.expand(b, h, length)].any()),
                "nan_grad": {n: bool(t.grad.isnan().any()) for n, t in (("q", q), ("k", k), ("v", vv))},
            }
    return out


def padding_probe(model, prompts: list[list[int]], comps: list[list[int]], temp: float) -> dict:
    """LoRA gradients of sum(logp) over a batch mixing prompt lengths, in two layouts: prompts
    left-padded with no position ids (how TRL 1.16 recomputes), and rollout.pack's right-padded
    batch with real positions; each under the model's attention implementation."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    w = max(map(len, prompts))
    c = max(map(len, comps))
    ids = torch.zeros(len(prompts), w + c, dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, (p, y) in enumerate(zip(prompts, comps)):
        ids[i, w - len(p) : w + len(y)] = torch.tensor(p + y)
        att[i, w - len(p) : w + len(y)] = 1
    ids, att = ids.to(device), att.to(device)
    res = {}
    for layout in ("left_padded_no_positions", "right_padded_pack"):
        model.zero_grad(set_to_none=True)
        with poly.dropout_off(model):
            if layout == "left_padded_no_positions":
                logits = model(input_ids=ids, attention_mask=att, logits_to_keep=c + 1, use_cache=False).logits[:, :-1].float() / temp
                lp = torch.log_softmax(logits, -1).gather(-1, ids[:, w:, None])[..., 0] * att[:, w:]
            else:
                from polychromic.training.rollout import token_logprobs

                lp = token_logprobs(model, pack(prompts, comps, 0, device), temp)
            lp.sum().backward()
        bad = sum(int(not torch.isfinite(p.grad).all()) for p in params if p.grad is not None)
        res[layout] = {"finite_logp": bool(torch.isfinite(lp).all()), "lora_tensors_with_nonfinite_grad": bad, "of": len(params)}
    model.zero_grad(set_to_none=True)
    return res


def probes(res: dict, model, prompt_ids, ro, cfg, dev, dtype, cuda: bool) -> None:
    res["sdpa_kernels"] = sdpa_probe(dev, dtype) if cuda else "skipped: needs CUDA"
    pp = [prompt_ids[0], prompt_ids[1][: max(1, len(prompt_ids[1]) // 2)]]
    pc = [ro.completion_ids[0][0], ro.completion_ids[1][0]]
    res["padding_probe"] = {"sdpa": padding_probe(model, pp, pc, cfg.rollout.diversity_temperature)}
    set_attention(model, "eager")
    try:
        res["padding_probe"]["eager"] = padding_probe(model, pp, pc, cfg.rollout.diversity_temperature)
    finally:
        set_attention(model, "sdpa")
    print(f"sdpa: {res['sdpa_kernels']}\npadding: {res['padding_probe']}", flush=True)


def set_attention(model, impl: str) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "set_attn_implementation"):
        base.set_attn_implementation(impl)
    else:
        base.config._attn_implementation = impl
