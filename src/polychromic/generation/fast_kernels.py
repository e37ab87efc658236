"""Triton kernels of fast generation, for CUDA tensors only (callers fall back to torch on a CPU).

- `merge_into(out, w, b, a, scale)`: out = W + scale * B @ A in one pass over W (W read once,
  out written once; B @ A is a rank-r product computed tile by tile in float32 and never stored),
  the merged copy's refresh. cuBLAS's addmm with K = r = 16 moves these bytes at about a third of
  the copy bandwidth (benchmarks/decode_kernels.py).
- `skinny_linear(x, w, split, ...)`: x @ W^T for few rows (the decode step's M = rows), split
  along K into `split` partial sums in float32 that are then added in a fixed order
  (deterministic, unlike atomics).

Both round exactly as their torch counterparts do up to float32 summation order: the products
accumulate in float32 from bfloat16 (or the input dtype's) operands and are rounded once.
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

    @triton.jit
    def _skinny_kernel(x_ptr, w_ptr, p_ptr, M, N, K, s_x, s_w, k_per_split,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
        pid_n, pid_s = tl.program_id(0), tl.program_id(1)
        rm = tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mm, mn = rm < M, rn < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        k0 = pid_s * k_per_split
        for kk in range(0, k_per_split, BLOCK_K):
            rk = k0 + kk + tl.arange(0, BLOCK_K)
            mk = rk < K
            xt = tl.load(x_ptr + rm[:, None] * s_x + rk[None, :], mask=mm[:, None] & mk[None, :], other=0.0)
            wt = tl.load(w_ptr + rn[:, None] * s_w + rk[None, :], mask=mn[:, None] & mk[None, :], other=0.0)
            acc = tl.dot(xt, tl.trans(wt), acc, input_precision=PRECISION)
        tl.store(p_ptr + pid_s * M * N + rm[:, None] * N + rn[None, :], acc, mask=mm[:, None] & mn[None, :])


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


def skinny_linear(x: torch.Tensor, w: torch.Tensor, split: int, block_n: int = 64, block_k: int = 128,
                  num_warps: int = 4, num_stages: int = 4) -> torch.Tensor:
    """x (M, K) @ w (N, K)^T -> (M, N) in x's dtype, for M <= 64: `split` partial sums along K in
    float32, added in order."""
    m, k = x.shape
    n = w.shape[0]
    if w.shape[1] != k:
        raise ValueError(f"skinny_linear: x {tuple(x.shape)} and w {tuple(w.shape)} do not fit")
    if m > 64:
        raise ValueError(f"skinny_linear serves at most 64 rows, got {m}")
    per = _cdiv(_cdiv(k, split), block_k) * block_k
    parts = torch.empty(split, m, n, device=x.device, dtype=torch.float32)
    block_m = max(16, 1 << (m - 1).bit_length())
    _skinny_kernel[(_cdiv(n, block_n), split)](x, w, parts, m, n, k, x.stride(0), w.stride(0), per,
                                               BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, PRECISION=_precision(w),
                                               num_warps=num_warps, num_stages=num_stages)
    return parts.sum(0).to(x.dtype)
