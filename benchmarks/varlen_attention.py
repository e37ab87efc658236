"""Attention over variable-length sequences without padding, beside what the training pass and
the decode step run now, on the Qwen3-8B attention shape (32 query heads, 8 KV heads, head_dim
128, bf16):

  api        what this torch offers: torch.nn.attention.varlen.varlen_attn and its signature
             (GQA, causal, seqused_k), and aten's _flash_attention_forward schema
  recompute  the policy-gradient recompute's attention, 40 sequences of the benchmark's lengths
             (prompt 30 to 64 tokens + 100 completion tokens), forward and backward:
               padded   (40, heads, L, D) right-padded to the longest, SDPA with the causal and
                        padding mask transformers builds (torch's backend choice, cuDNN off and on)
               packed   the real tokens only, (T, heads, D), through varlen_attn, causal per
                        sequence, as a packed pass calls it (training/packed.py)
             the largest difference of the outputs and of the q/k/v gradients at real tokens
  decode     one decode step's attention at 40 rows x 192 cache slots, left-padded prompts
             (what generation/fast.py runs): flex_attention with FLEX_KERNEL_OPTIONS against
             varlen_attn reading each row's valid slots in place (cu_seq_k at the row's first
             valid slot, seqused_k its count), with the cache laid out (rows, slots, KV heads, D)

    PYTHONPATH=src python3 benchmarks/varlen_attention.py          # on the GPU

Writes varlen_attention.json to --out (default $OUT) and prints it.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from polychromic.io import atomic_write_json  # noqa: E402
from polychromic.training import packed  # noqa: E402

HEADS, KV, D = 32, 8, 128


def timed_us(fn, reps: int = 50) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps * 1e3


def api() -> dict:
    out: dict = {"torch": torch.__version__}
    try:
        from torch.nn.attention import varlen

        out["varlen_attn"] = str(inspect.signature(varlen.varlen_attn))
    except (ImportError, AttributeError) as e:
        out["varlen_attn"] = f"absent: {e}"
    out["aten_flash"] = str(torch.ops.aten._flash_attention_forward.default._schema)
    return out


def recompute(dev) -> dict:
    g = torch.Generator().manual_seed(0)
    lens = [int(x) + 100 for x in torch.randint(30, 65, (40,), generator=g)]
    L, T = max(lens), sum(lens)
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=dev)
    q = torch.randn(T, HEADS, D, device=dev, dtype=torch.bfloat16)
    k, v = (torch.randn(T, KV, D, device=dev, dtype=torch.bfloat16) for _ in range(2))
    go = torch.randn(T, HEADS, D, device=dev, dtype=torch.bfloat16)
    idx = torch.cat([torch.arange(n, device=dev) + i * L for i, n in enumerate(lens)])

    def padded(x):  # (T, H, D) -> (40, H, L, D)
        out = x.new_zeros(40 * L, x.shape[1], D)
        out[idx] = x
        return out.view(40, L, x.shape[1], D).transpose(1, 2)

    valid = torch.zeros(40, L, dtype=torch.bool, device=dev)
    for i, n in enumerate(lens):
        valid[i, :n] = True
    mask = torch.tril(torch.ones(L, L, dtype=torch.bool, device=dev))[None, None] & valid[:, None, None, :]
    res: dict = {"sequences": 40, "tokens": T, "padded_tokens": 40 * L}

    def run_padded():
        qp, kp, vp = (padded(t).detach().requires_grad_() for t in (q, k, v))
        o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, enable_gqa=True)
        o.backward(padded(go))
        return o, qp, kp, vp

    def run_packed():
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        o = packed._varlen(qq, kk, vv, cu, L, None)  # what a packed pass runs
        o.backward(go)
        return o, qq, kk, vv

    for name, cudnn in (("padded_sdpa", False), ("padded_sdpa_cudnn", True)):
        prev = torch.backends.cuda.cudnn_sdp_enabled()
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        try:
            res[name + "_us"] = timed_us(run_padded, 20)
        finally:
            torch.backends.cuda.enable_cudnn_sdp(prev)
    torch.backends.cuda.enable_cudnn_sdp(False)
    ref = run_padded()
    try:
        res["packed_varlen_us"] = timed_us(run_packed, 20)
        got = run_packed()
        back = lambda x: x.transpose(1, 2).reshape(40 * L, x.shape[1], D)[idx]  # noqa: E731
        res["max_diff"] = {
            "out": float((back(ref[0]) - got[0]).abs().max()),
            **{f"grad_{n}": float((back(r.grad) - t.grad).abs().max()) for n, r, t in zip("qkv", ref[1:], got[1:])},
        }
    except Exception as e:  # the probe reports what this torch cannot do, and goes on
        res["packed_varlen_error"] = f"{type(e).__name__}: {e}"
    return res


def decode(dev) -> dict:
    from polychromic.generation.fast_layers import FLEX_KERNEL_OPTIONS, attend_flex

    b, slots, width, t = 40, 192, 64, 100
    g = torch.Generator().manual_seed(1)
    pads = torch.randint(0, 35, (b,), generator=g).to(dev)
    used = width - pads + t  # valid slots: [pad, width + t)
    kc, vc = (torch.randn(b, KV, slots, D, device=dev, dtype=torch.bfloat16) for _ in range(2))
    q = torch.randn(b, KV, HEADS // KV, D, device=dev, dtype=torch.bfloat16)
    pos = torch.arange(slots, device=dev)
    mask = ((pos[None] >= pads[:, None]) & (pos[None] < width + t))[:, None, None, :]
    scale = D**-0.5
    flex = torch.compile(lambda q, kc, vc, m: attend_flex(q, kc, vc, m, scale), fullgraph=True, dynamic=False)
    res: dict = {"rows": b, "slots": slots, "flex_options": FLEX_KERNEL_OPTIONS}
    res["flex_us"] = timed_us(lambda: flex(q, kc, vc, mask), 200)
    ref = flex(q, kc, vc, mask)
    # Token-major cache: (rows, slots, KV, D) flattened to (rows * slots, KV, D).
    kt, vt = (c.transpose(1, 2).contiguous().view(b * slots, KV, D) for c in (kc, vc))
    starts = torch.arange(b, device=dev) * slots + pads
    cu_k = torch.cat([starts, torch.tensor([b * slots], device=dev)]).to(torch.int32)
    cu_q = torch.arange(b + 1, device=dev, dtype=torch.int32)
    qv = q.reshape(b, HEADS, D)
    try:
        from torch.nn.attention.varlen import varlen_attn

        call = lambda: varlen_attn(qv, kt, vt, cu_q, cu_k, 1, slots, enable_gqa=True, seqused_k=used.to(torch.int32))  # noqa: E731
        res["varlen_seqused_us"] = timed_us(call, 200)
        res["varlen_max_diff"] = float((call().view(b, KV, HEADS // KV, D) - ref).abs().max())
    except Exception as e:
        res["varlen_error"] = f"{type(e).__name__}: {e}"
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("varlen_attention.py measures CUDA kernels: run it on a GPU")
    dev = torch.device("cuda")
    res = {"device": torch.cuda.get_device_name(), "api": api()}
    for name, fn in (("recompute", recompute), ("decode", decode)):
        try:
            res[name] = fn(dev)
        except Exception as e:
            res[name] = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(res, indent=1))
    if args.out:
        atomic_write_json(Path(args.out) / "varlen_attention.json", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
