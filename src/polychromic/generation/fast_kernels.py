"""Triton kernels of fast generation, for CUDA tensors only (callers fall back to torch on a CPU).

- `merge_into(out, w, b, a, scale)`: out = W + scale * B @ A in one pass over W (W read once,
  out written once; B @ A is a rank-r product computed tile by tile in float32 and never stored),
  the merged copy's refresh. cuBLAS's addmm with K = r = 16 moves these bytes at about a third of
  the copy bandwidth (benchmarks/decode_kernels.py).

It rounds as torch's addmm does up to float32 summation order: the products accumulate in
float32 from operands in W's dtype and the sum is rounded once. (A split-K kernel for the decode
step's skinny projections, x @ W^T at 40 rows, was measured too and lost to cuBLAS on every
projection shape; docs/performance.md has the numbers, benchmarks/decode_kernels.py the kernel.)
"""

from __future__ import annotations

import torch

try:  # Triton ships with CUDA builds of torch; a CPU build has none and takes torch's path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None


def available(t: torch.Tensor) -> bool:
    """True when `t` is a CUDA tensor and Triton is installed."""
    return t.device.type == "cuda" and triton is not None


if triton is not None:

    @triton.jit
    def _merge_kernel(w_ptr, b_ptr, a_ptr, o_ptr, N, K, R, scale, s_w, s_b, s_a, s_o,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr):
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        rr = tl.arange(0, BLOCK_R)
        mn, mk, mr = rn < N, rk < K, rr < R
        bt = tl.load(b_ptr + rn[:, None] * s_b + rr[None, :], mask=mn[:, None] & mr[None, :], other=0.0)
        at = tl.load(a_ptr + rr[:, None] * s_a + rk[None, :], mask=mr[:, None] & mk[None, :], other=0.0)
        wt = tl.load(w_ptr + rn[:, None] * s_w + rk[None, :], mask=mn[:, None] & mk[None, :], other=0.0)
        ba = tl.dot(bt.to(w_ptr.dtype.element_ty), at.to(w_ptr.dtype.element_ty), input_precision=PRECISION)
        res = wt.to(tl.float32) + scale * ba
        tl.store(o_ptr + rn[:, None] * s_o + rk[None, :], res.to(o_ptr.dtype.element_ty), mask=mn[:, None] & mk[None, :])


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _precision(w: torch.Tensor) -> str:
    """float32 operands multiply in full float32 (Triton's default would be TF32, as torch's
    matmul is not by default); 16-bit ones are exact in either."""
    return "ieee" if w.dtype == torch.float32 else "tf32"


def merge_into(out: torch.Tensor, w: torch.Tensor, b: torch.Tensor, a: torch.Tensor, scale: float,
               block_n: int = 64, block_k: int = 128) -> torch.Tensor:
    """out (N, K) = w (N, K) + scale * b (N, R) @ a (R, K); b and a are rounded to w's dtype first
    (as the torch path's addmm on b.to(w.dtype), a.to(w.dtype) does)."""
    n, k = w.shape
    r = a.shape[0]
    if b.shape != (n, r) or a.shape != (r, k) or out.shape != (n, k):
        raise ValueError(f"merge_into: out {tuple(out.shape)}, w {tuple(w.shape)}, b {tuple(b.shape)}, a {tuple(a.shape)} do not fit")
    for name, t in (("out", out), ("w", w), ("b", b), ("a", a)):
        if t.stride(-1) != 1:
            raise ValueError(f"merge_into: {name} must have unit stride along its last dimension")
    block_r = max(16, 1 << (r - 1).bit_length())
    grid = (_cdiv(n, block_n), _cdiv(k, block_k))
    _merge_kernel[grid](w, b, a, out, n, k, r, float(scale), w.stride(0), b.stride(0), a.stride(0), out.stride(0),
                        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_R=block_r, PRECISION=_precision(w))
    return out
