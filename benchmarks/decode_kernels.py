"""The kernels around the rollouts' decode step, one at a time, on the Qwen3-8B shape (step_bench.py's
setup; the shipped moderate config's rollouts, 8 prompts x 5 samples x 100 tokens, 40 rows):

  rollouts   generate_rollouts as the trainer calls it, with its merge / prefill / decode split
  flex       the decode attention through flex_attention under each kernel_options of FLEX_GRID
             (split of the KV length, KV block, warps, stages), captured alone per layer, with
             its largest difference from SDPA
  skinny     x @ W^T at the step's 40 rows for each projection: cuBLAS (F.linear) against
             skinny_linear below (a split-K Triton kernel) over SKINNY_GRID (K split, N and K
             blocks); it lost on every shape, so the product keeps cuBLAS
  merge      the merged copy's refresh: torch.addmm(W, B, A) against fast_kernels.merge_into
             per projection shape, and the engine's whole merge both ways, with the largest
             difference between the two copies
  prefill    the engine's prefill of the rollouts' distinct prompt rows with eager layers (wall
             time, and GPU kernel time under the profiler: what share is launch cost), then
             with compiled layers (what the engine runs on a GPU)
  scoring    score_rollouts under cProfile: where its ~45 ms go

    PYTHONPATH=src python3 benchmarks/decode_kernels.py          # on the GPU
    PYTHONPATH=src python benchmarks/decode_kernels.py --shape tiny   # CPU smoke: rollouts and scoring only

Writes decode_kernels.json to --out (default $OUT) and prints a summary.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import os
import pstats
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decode_profile as dp  # noqa: E402
import pg_profile as pp  # noqa: E402
import step_bench as sb  # noqa: E402

from polychromic.data import render_prompt  # noqa: E402
from polychromic.generation import fast as fastgen  # noqa: E402
from polychromic.generation import fast_kernels, fast_layers, fast_weights  # noqa: E402
from polychromic.io import atomic_write_json  # noqa: E402
from polychromic.training.allocator import configure_allocator  # noqa: E402
from polychromic.training.objectives import polychromic as poly  # noqa: E402
from polychromic.training.rollout import generate_rollouts  # noqa: E402

FLEX_GRID = [{}] + [
    dict(SPLIT_KV=s, BLOCK_N=n, num_warps=w, num_stages=1) for s, n, w in itertools.product((1, 2, 4), (32, 64, 128), (4, 8))
] + [dict(SPLIT_KV=1, BLOCK_N=64, num_warps=4, num_stages=2), dict(SPLIT_KV=1, BLOCK_N=64, num_warps=2, num_stages=1),
     dict(SPLIT_KV=1, BLOCK_N=32, num_warps=2, num_stages=1)]
SKINNY_GRID = [dict(split=s, block_n=n, block_k=k) for s, n, k in itertools.product((1, 2, 4, 8), (32, 64, 128), (128, 256))]


def _skinny_kernel_fn():
    """The split-K kernel for x (M <= 64, K) @ W^T, built on first use (Triton is in CUDA builds only)."""
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(x_ptr, w_ptr, p_ptr, M, N, K, s_x, s_w, k_per_split,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
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
            acc = tl.dot(xt, tl.trans(wt), acc)
        tl.store(p_ptr + pid_s * M * N + rm[:, None] * N + rn[None, :], acc, mask=mm[:, None] & mn[None, :])

    return kernel


_SKINNY: list = []


def skinny_linear(x: torch.Tensor, w: torch.Tensor, split: int, block_n: int = 64, block_k: int = 128,
                  num_warps: int = 4, num_stages: int = 4) -> torch.Tensor:
    """x (M, K) @ w (N, K)^T -> (M, N) in x's dtype (bfloat16), M <= 64: `split` partial sums along
    K in float32, added in order (deterministic, unlike atomics)."""
    if not _SKINNY:
        _SKINNY.append(_skinny_kernel_fn())
    m, k = x.shape
    n = w.shape[0]
    per = -(-(-(-k // split)) // block_k) * block_k
    parts = torch.empty(split, m, n, device=x.device, dtype=torch.float32)
    block_m = max(16, 1 << (m - 1).bit_length())
    _SKINNY[0][(-(-n // block_n), split)](x, w, parts, m, n, k, x.stride(0), w.stride(0), per,
                                          BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                                          num_warps=num_warps, num_stages=num_stages)
    return parts.sum(0).to(x.dtype)


def flex_table(eng, b, width: int) -> list[dict]:
    s = eng.shape
    group = s.n_heads // s.n_kv
    q = torch.randn(b.rows, s.n_kv, group, s.head_dim, device=eng.device, dtype=eng.dtype)
    kc, vc = b.layer_kv[0]
    mask = (b.valid & (b.arange <= width)).view(b.rows, 1, 1, b.length)
    ref = fast_layers.attend_sdpa(q, kc, vc, mask, s.scaling).float()
    out = []
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(FLEX_GRID))  # one per option
    for opts in FLEX_GRID:
        def fn(q, kc, vc, mask, _o=opts):
            return fast_layers.attend_flex(q, kc, vc, mask, s.scaling, kernel_options=_o)
        comp = torch.compile(fn, fullgraph=True, dynamic=False)
        row = {"kernel_options": opts}
        try:
            got = comp(q, kc, vc, mask)
            row["seconds"] = dp.captured_seconds(lambda: comp(q, kc, vc, mask))
            row["max_abs_diff"] = (got.float() - ref).abs().max().item()
        except Exception as e:  # recorded and printed; the other options still run
            row["error"] = f"{type(e).__name__}: {e}"[:600]
        out.append(row)
        print(f"  flex {opts or 'default'}: " + (f"{row['seconds'] * 1e6:.1f} us/layer, max |diff| {row['max_abs_diff']:.1e}"
                                                if "seconds" in row else f"FAILED {row['error'][:200]}"), flush=True)
    return out


def skinny_table(eng, rows: int) -> list[dict]:
    lw = eng.layer_args[0]
    out = []
    for name, w in (("qkv", lw[1]), ("o", lw[5]), ("gate_up", lw[8]), ("down", lw[10])):
        x = torch.randn(rows, w.shape[1], device=w.device, dtype=w.dtype)
        ref = F.linear(x, w)
        cublas = dp.captured_seconds(lambda: F.linear(x, w))
        best = None
        tried = []
        for cfg in SKINNY_GRID:
            programs = -(-w.shape[0] // cfg["block_n"]) * cfg["split"]
            if not 64 <= programs <= 2048 or w.shape[1] // cfg["split"] < cfg["block_k"]:
                continue
            try:
                got = skinny_linear(x, w, **cfg)
                t = dp.captured_seconds(lambda: skinny_linear(x, w, **cfg))
            except Exception as e:  # an unsupported config (shared memory): recorded, the others run
                tried.append({**cfg, "error": f"{type(e).__name__}: {e}"[:300]})
                continue
            err = ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
            tried.append({**cfg, "seconds": t, "max_rel_diff": err})
            if best is None or t < best["seconds"]:
                best = tried[-1]
        nbytes = w.numel() * w.element_size()
        out.append({"matmul": name, "n": w.shape[0], "k": w.shape[1], "rows": rows, "cublas_s": cublas,
                    "cublas_bytes_per_s": nbytes / cublas, "best": best, "tried": tried})
        print(f"  {name} {rows}x{w.shape[1]} @ {w.shape[1]}x{w.shape[0]}: cuBLAS {cublas * 1e6:.1f} us "
              f"({nbytes / cublas / 1e12:.2f} TB/s); best Triton "
              + (f"{best['seconds'] * 1e6:.1f} us ({nbytes / best['seconds'] / 1e12:.2f} TB/s) {best}" if best else "none"), flush=True)
    return out


@torch.no_grad()
def merge_table(model, eng) -> dict:
    base = fast_weights.base_model(model)
    layer = base.model.layers[0]
    shapes = []
    for name in ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj", "mlp.down_proj"):
        mod = layer.get_submodule(name)
        w, a, b, s = mod.base_layer.weight, mod.lora_A["default"].weight, mod.lora_B["default"].weight, mod.scaling["default"]
        dst1, dst2 = torch.empty_like(w), torch.empty_like(w)
        t_addmm = dp.captured_seconds(lambda: torch.addmm(w, b.to(w.dtype), a.to(w.dtype), alpha=s, out=dst1), calls=10)
        row = {"projection": name, "shape": list(w.shape), "addmm_s": t_addmm, "kernel": []}
        for bn, bk in itertools.product((32, 64, 128), (64, 128, 256)):
            t = dp.captured_seconds(lambda: fast_kernels.merge_into(dst2, w, b, a, s, block_n=bn, block_k=bk), calls=10)
            row["kernel"].append({"block_n": bn, "block_k": bk, "seconds": t})
        row["max_abs_diff"] = (dst1.float() - dst2.float()).abs().max().item()
        best = min(row["kernel"], key=lambda r: r["seconds"])
        nbytes = 2 * w.numel() * w.element_size()
        print(f"  merge {name} {tuple(w.shape)}: addmm {t_addmm * 1e6:.1f} us ({nbytes / t_addmm / 1e12:.2f} TB/s), kernel best "
              f"{best['seconds'] * 1e6:.1f} us ({nbytes / best['seconds'] / 1e12:.2f} TB/s) at {best}; max |diff| {row['max_abs_diff']:.1e}",
              flush=True)
        shapes.append(row)
    whole = {}
    copies = {}
    for flag in (False, True):
        fast_weights.MERGE_KERNEL = flag
        eng.merge()
        sb.sync()
        ts = []
        for _ in range(5):
            a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            eng.merge()
            e.record()
            e.synchronize()
            ts.append(a.elapsed_time(e) / 1000)
        whole["kernel" if flag else "addmm"] = sorted(ts)[2]
        copies[flag] = [s.weight.clone() for s in eng.slots[:8] if not s.alias]
    fast_weights.MERGE_KERNEL = True
    whole["max_abs_diff_first_slots"] = max((x.float() - y.float()).abs().max().item() for x, y in zip(copies[False], copies[True]))
    print(f"  whole merge: addmm {whole['addmm'] * 1e3:.1f} ms, kernel {whole['kernel'] * 1e3:.1f} ms; max |diff| "
          f"{whole['max_abs_diff_first_slots']:.1e}", flush=True)
    return {"shapes": shapes, "whole": whole}


def prefill_table(eng, b, tok, cfg, ids) -> dict:
    rows, width = b.rows, _width(ids)
    n = cfg.rollout.n_generations
    flat = [list(p) for p in ids for _ in range(n)]
    idt = torch.full((rows, width), 0, dtype=torch.long)
    att = torch.zeros((rows, width), dtype=torch.long)
    for i, x in enumerate(flat):
        idt[i, width - len(x):] = torch.tensor(x)
        att[i, width - len(x):] = 1
    uniq, where = torch.unique(torch.cat([idt, att], dim=1), dim=0, return_inverse=True)
    u_ids, u_att, where = uniq[:, :width].to(eng.device), uniq[:, width:].to(eng.device), where.to(eng.device)

    def go():
        eng.prefill(b, u_ids, u_att, where)

    shipped = eng.prefill_layer
    eng.prefill_layer = fast_layers.prefill_layer_fn(eng.shape, eng.act, compile=False)
    try:
        go()
        wall, _ = sb.timed(go)
        prof = pp.profile(go, True)
    finally:
        eng.prefill_layer = shipped
    out = {"distinct_rows": len(uniq), "width": width, "wall_s": wall, "profile_wall_s": prof["wall_s"],
           "gpu_busy_s": prof["gpu_busy_s"], "launches": prof["kernel_launches"], "top": prof["top"][:10]}
    print(f"  prefill {len(uniq)} x {width}, eager layers: {wall * 1e3:.1f} ms wall, {prof['gpu_busy_s'] * 1e3:.1f} ms of kernels, "
          f"{prof['kernel_launches']} launches", flush=True)
    eng.prefill_layer = fast_layers.prefill_layer_fn(eng.shape, eng.act, compile=True)
    try:
        out["compile_s"] = sb.timed(go)[0]
        out["compiled_wall_s"] = sb.timed(go)[0]
    finally:
        eng.prefill_layer = shipped
    print(f"  prefill, layers compiled: {out['compiled_wall_s'] * 1e3:.1f} ms (first call {out['compile_s']:.1f} s)", flush=True)
    return out


def _width(ids) -> int:
    return -(-max(len(x) for x in ids) // fastgen.WIDTH_BUCKET) * fastgen.WIDTH_BUCKET


def scoring_table(ro, embedder, cfg) -> dict:
    poly.score_rollouts(ro, embedder, cfg.objective)
    wall, _ = sb.timed(lambda: poly.score_rollouts(ro, embedder, cfg.objective))
    pr = cProfile.Profile()
    pr.enable()
    poly.score_rollouts(ro, embedder, cfg.objective)
    sb.sync()
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(25)
    print(f"  scoring {wall * 1e3:.1f} ms", flush=True)
    print(buf.getvalue()[:6000], flush=True)
    return {"wall_s": wall, "cprofile_top": buf.getvalue()[:20000]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="8b")
    ap.add_argument("--skip", default="", help="comma list of flex, skinny, merge, prefill, scoring")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)
    skip = set(args.skip.split(",")) - {""}
    configure_allocator(True, "auto")
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    work = Path(tempfile.mkdtemp(prefix="decode_kernels_"))
    model, tok, cfg, embedder, texts = sb.setup(args.shape, dev, dtype, work, lora="fast")
    res: dict = {"shape": args.shape, "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                 "copy_bytes_per_s": sb.copy_bandwidth(dev, (1 << 22) if args.shape == "tiny" else (2 << 30))}
    m = cfg.rollout.max_examples_for_diversity
    t_text = texts[:m]
    ids = [render_prompt(tok, cfg.data, x) for x in t_text]
    first, ro = sb.timed(lambda: generate_rollouts(model, tok, t_text, ids, cfg.rollout, seed=11))
    runs = [sb.timed(lambda: generate_rollouts(model, tok, t_text, ids, cfg.rollout, seed=11))[0] for _ in range(3)]
    res["rollouts"] = {"first_call_s": first, "runs": runs, "stats": dict(fastgen.last_stats)}
    print(f"rollouts {sorted(runs)[1]:.3f} s (first {first:.1f} s): {fastgen.last_stats}", flush=True)
    def save():  # after every section: a run cut short keeps what it measured
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            atomic_write_json(Path(args.out) / "decode_kernels.json", res)

    if "scoring" not in skip:
        res["scoring"] = scoring_table(ro, embedder, cfg)
        save()
    if cuda:
        eng, b, _ = dp.engine_state(model)
        width = res["rollouts"]["stats"]["width"]
        sections = {"merge": lambda: merge_table(model, eng), "prefill": lambda: prefill_table(eng, b, tok, cfg, ids),
                    "flex": lambda: flex_table(eng, b, width), "skinny": lambda: skinny_table(eng, b.rows)}
        for name, fn in sections.items():
            if name not in skip:
                res[name] = fn()
                save()
    save()
    if args.out:
        print(f"wrote {Path(args.out) / 'decode_kernels.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
