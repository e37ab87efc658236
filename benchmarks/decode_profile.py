"""Where the rollouts' decode step spends its time, on the Qwen3-8B shape (step_bench.py's setup:
random bf16 weights, LoRA r=16 on the seven projections, the shipped moderate config's rollouts:
8 prompts x 5 samples x 100 tokens at its temperature).

In one process:

  rollouts   generation.sample's fast path through generate_rollouts, as the trainer calls it:
             first call (compile + capture), then the median of --repeats, with its merge /
             prefill / decode split (fast.last_stats)
  replay     the captured decode step replayed alone (CUDA-event timed), against its floor
             (the projection + lm_head weights and the real context's KV read once at the
             measured copy bandwidth)
  profile    the same step run uncaptured under torch.profiler: GPU kernel time per step by kind
             and the costliest kernels (kernel time below the replay time is launch gaps)
  gemm       each projection's matmul at the step's row count alone, captured (no launch cost):
             time and bytes per second through cuBLAS (torch's default) and through cuBLASLt,
             and the same matmul compiled with inductor's autotuning (--autotune-gemm;
             max-autotune-no-cudagraphs: cuBLAS against Triton templates, split-K among them)
  attention  the decode attention over the step's cache alone, captured: SDPA as the step runs it
             (with and without cuDNN's backend, and without mask), and each of
             fast_layers.ATTENTION_FNS compiled, with its largest difference from SDPA
  variants   the whole rollouts again with another decode attention, or the decode layer
             compiled under other inductor settings (--variants), each recaptured; the decode
             step's time per variant

    PYTHONPATH=src python3 benchmarks/decode_profile.py                      # on the GPU
    PYTHONPATH=src python benchmarks/decode_profile.py --shape tiny --repeats 1 --variants none   # CPU smoke

Writes decode_profile.json to --out (default $OUT) and prints a summary.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models as bm  # noqa: E402
import pg_profile as pp  # noqa: E402
import step_bench as sb  # noqa: E402

from polychromic.data import render_prompt  # noqa: E402
from polychromic.generation import fast as fastgen  # noqa: E402
from polychromic.generation import fast_layers  # noqa: E402
from polychromic.io import atomic_write_json  # noqa: E402
from polychromic.training.allocator import configure_allocator  # noqa: E402
from polychromic.training.rollout import generate_rollouts  # noqa: E402

VARIANTS = {
    # the decode attention (fast.DECODE_ATTENTION; fast_layers.ATTENTION_FNS has each)
    "sdpa": dict(attention="sdpa"),
    "flex": dict(attention="flex"),
    "sdpa_nocudnn": dict(attention="sdpa", cudnn=False),  # what a training run meets (trainer.cudnn_attention)
    # inductor settings for the decode layer, with the default attention
    "autotune": dict(compile=dict(mode="max-autotune-no-cudagraphs")),
    "coordinate_descent": dict(compile=dict(options={"coordinate_descent_tuning": True})),
    # torch's matmuls through cuBLASLt instead of cuBLAS (torch.backends.cuda.preferred_blas_library)
    "cublaslt": dict(blas="cublaslt"),
}


def captured_seconds(fn, calls: int = 20, replays: int = 5) -> float:
    """Seconds per call of fn, `calls` calls captured in one CUDA graph (no launch cost), median
    of `replays` replays; on a CPU, plain timing."""
    if not torch.cuda.is_available():
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1000 / calls)
    return statistics.median(times)


def engine_state(model):
    eng = next(iter(fastgen._ENGINES[model].values()))[1]
    b = next(reversed(eng.buckets.values()))
    sp = next(reversed(b.graphs.keys())) if b.graphs else None
    return eng, b, sp


def reset(b, width: int) -> None:
    b.slot.fill_(width)
    b.t.fill_(1)
    b.pos.fill_(width)
    b.valid[:, : width + 1] = True


def replay_seconds(eng, b, sp, width: int, steps: int) -> float:
    """The captured step replayed `steps` times from the prompt's end (the cache's contents are
    the last call's: the time does not depend on them)."""
    step = eng.stepper(b, sp)
    reset(b, width)
    sb.sync()
    if not torch.cuda.is_available():
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - t0) / steps
    a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(steps):
        step()
    e.record()
    e.synchronize()
    return a.elapsed_time(e) / 1000 / steps


@contextmanager
def blas_library(name: str | None):
    """torch's matmuls through `name` (cublas, cublaslt) meanwhile; None leaves the choice."""
    before = torch.backends.cuda.preferred_blas_library()
    if name is not None:
        torch.backends.cuda.preferred_blas_library(name)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(before)


def gemm_table(eng, rows: int, autotune: bool) -> list[dict]:
    lw = eng.layer_args[0]
    shapes = [("qkv", lw[1]), ("o", lw[5]), ("gate_up", lw[8]), ("down", lw[10]), ("lm_head", eng.lm_head_w)]
    out = []
    for name, w in shapes:
        x = torch.randn(rows, w.shape[1], device=w.device, dtype=w.dtype)
        t = captured_seconds(lambda: F.linear(x, w))
        with blas_library("cublaslt"):
            lt = captured_seconds(lambda: F.linear(x, w))
        row = {"matmul": name, "rows": rows, "n": w.shape[0], "k": w.shape[1], "seconds": t,
               "bytes_per_s": w.numel() * w.element_size() / t, "cublaslt_seconds": lt}
        if autotune:
            torch._dynamo.reset()
            fn = torch.compile(lambda x, w: F.linear(x, w), mode="max-autotune-no-cudagraphs", dynamic=False)
            t0 = time.perf_counter()
            fn(x, w)
            row["autotune_compile_s"] = time.perf_counter() - t0
            row["autotuned_seconds"] = captured_seconds(lambda: fn(x, w))
            row["autotuned_bytes_per_s"] = w.numel() * w.element_size() / row["autotuned_seconds"]
        out.append(row)
        print(f"  {name} {rows}x{w.shape[1]} @ {w.shape[1]}x{w.shape[0]}: {t * 1e6:.1f} us, {row['bytes_per_s'] / 1e12:.2f} TB/s"
              f" (cuBLASLt {lt * 1e6:.1f} us)"
              + (f"; autotuned {row['autotuned_seconds'] * 1e6:.1f} us, {row['autotuned_bytes_per_s'] / 1e12:.2f} TB/s"
                 if autotune else ""), flush=True)
    return out


def attention_table(eng, b, width: int) -> dict:
    s = eng.shape
    group = s.n_heads // s.n_kv
    q = torch.randn(b.rows, s.n_kv, group, s.head_dim, device=eng.device, dtype=eng.dtype)
    kc, vc = b.layer_kv[0]
    mask = (b.valid & (b.arange <= width)).view(b.rows, 1, 1, b.length)
    out = {"cache_length": b.length, "rows": b.rows}
    out["masked_s"] = captured_seconds(lambda: F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, scale=s.scaling))
    out["unmasked_s"] = captured_seconds(lambda: F.scaled_dot_product_attention(q, kc, vc, scale=s.scaling))
    used = width + 1
    kr, vr = kc[:, :, :used], vc[:, :, :used]
    out["unmasked_real_context_s"] = captured_seconds(lambda: F.scaled_dot_product_attention(q, kr, vr, scale=s.scaling))
    out["per_step_masked_s"] = out["masked_s"] * eng.n_layers
    torch.backends.cuda.enable_cudnn_sdp(False)
    out["masked_nocudnn_s"] = captured_seconds(lambda: F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, scale=s.scaling))
    torch.backends.cuda.enable_cudnn_sdp(True)
    ref = fast_layers.attend_sdpa(q, kc, vc, mask, s.scaling).float()
    for name, fn in fast_layers.ATTENTION_FNS.items():
        comp = torch.compile(fn, fullgraph=True, dynamic=False)
        try:
            got = comp(q, kc, vc, mask, s.scaling)
        except Exception as e:  # recorded and printed; the other kinds still run
            out[f"{name}_error"] = f"{type(e).__name__}: {e}"[:2000]
            print(f"  attention {name}: FAILED {out[f'{name}_error'][:300]}", flush=True)
            continue
        out[f"{name}_compiled_s"] = captured_seconds(lambda: comp(q, kc, vc, mask, s.scaling))
        out[f"{name}_max_abs_diff"] = (got.float() - ref).abs().max().item()
        print(f"  attention {name}, compiled: {out[f'{name}_compiled_s'] * 1e6:.1f} us/layer, "
              f"max |diff| from SDPA {out[f'{name}_max_abs_diff']:.2e}", flush=True)
    print(f"  attention (cache {b.length}): masked {out['masked_s'] * 1e6:.1f} us/layer, unmasked {out['unmasked_s'] * 1e6:.1f}, "
          f"over the {used} real slots {out['unmasked_real_context_s'] * 1e6:.1f}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(bm.SHAPES), default="8b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="sdpa,sdpa_nocudnn", help="comma list of " + ", ".join(VARIANTS) + ", or none")
    ap.add_argument("--autotune-gemm", action="store_true", help="also each matmul under inductor's autotuning")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)
    variants = [] if args.variants == "none" else [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS):
        ap.error(f"--variants {args.variants!r}: a comma list of {', '.join(VARIANTS)}, or none")
    configure_allocator(True, "auto")
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    work = Path(tempfile.mkdtemp(prefix="decode_profile_"))
    model, tok, cfg, embedder, texts = sb.setup(args.shape, dev, dtype, work, lora="fast")
    res: dict = {"shape": args.shape, "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}
    bw = sb.copy_bandwidth(dev, (1 << 22) if args.shape == "tiny" else (2 << 30))
    res["copy_bytes_per_s"] = bw
    m = cfg.rollout.max_examples_for_diversity
    t_text = texts[:m]
    ids = [render_prompt(tok, cfg.data, x) for x in t_text]

    def rollouts():
        generate_rollouts(model, tok, t_text, ids, cfg.rollout, seed=11)
        return dict(fastgen.last_stats)

    def measure(label: str) -> dict:
        first, _ = sb.timed(rollouts)
        runs = [sb.timed(rollouts) for _ in range(args.repeats)]
        med = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
        st = med[1]
        r = {"first_call_s": first, "seconds": med[0], "runs": [x[0] for x in runs], "stats": st}
        if "decode_s" not in st:  # a CPU model samples through plain generate()
            print(f"{label}: rollouts {med[0]:.3f} s (plain generate)", flush=True)
            return r
        r["decode_step_s"] = st["decode_s"] / max(1, st["steps"])
        print(f"{label}: rollouts {med[0]:.3f} s (first {first:.1f} s); merge {st['merge_s'] * 1e3:.1f} ms, prefill "
              f"{st['prefill_s'] * 1e3:.1f} ms, decode {st['steps']} x {r['decode_step_s'] * 1e3:.2f} ms", flush=True)
        return r

    res["rollouts"] = measure("default")
    if not cuda:
        print("no GPU: the rollouts ran eagerly; skipping replay, profile, gemm, attention", flush=True)
        variants = []
    else:
        eng, b, sp = engine_state(model)
        width = res["rollouts"]["stats"]["width"]
        s = eng.shape
        weight_bytes = sum(x.numel() * x.element_size() for lw in eng.layer_args for x in (lw[1], lw[5], lw[8], lw[10]))
        weight_bytes += eng.lm_head_w.numel() * eng.lm_head_w.element_size()
        ctx = width + 50  # the mean real context over the 100 steps
        kv_bytes = eng.n_layers * 2 * b.rows * s.n_kv * ctx * s.head_dim * eng.lm_head_w.element_size()
        res["floor"] = {"weight_bytes": weight_bytes, "kv_bytes": kv_bytes, "step_s": (weight_bytes + kv_bytes) / bw}
        steps = min(50, b.length - width - 1)
        res["replay_step_s"] = replay_seconds(eng, b, sp, width, steps)
        print(f"replay {res['replay_step_s'] * 1e3:.2f} ms per step; floor {res['floor']['step_s'] * 1e3:.2f} ms "
              f"({weight_bytes / 1e9:.1f} GB weights) -> {res['floor']['step_s'] / res['replay_step_s']:.0%} of the copy bandwidth", flush=True)
        reset(b, width)
        prof_steps = 10

        def eager_steps():
            for _ in range(prof_steps):
                eng.decode_step(b, sp)
        eager_steps()  # warm: the compiled layer function is already built
        reset(b, width)
        prof = pp.profile(eager_steps, cuda)
        per_step = {k: v / prof_steps for k, v in prof["by_kind_s"].items()}
        res["profile"] = {"steps": prof_steps, "kernel_s_per_step": prof["gpu_busy_s"] / prof_steps, "by_kind_s_per_step": per_step,
                          "launches_per_step": prof["kernel_launches"] / prof_steps,
                          "top": [dict(t, seconds_per_step=t["seconds"] / prof_steps) for t in prof["top"]]}
        print(f"profile: {res['profile']['kernel_s_per_step'] * 1e3:.2f} ms of kernels per step, "
              f"{res['profile']['launches_per_step']:.0f} launches; by kind (ms) "
              f"{ {k: round(v * 1e3, 3) for k, v in per_step.items()} }", flush=True)
        for t in res["profile"]["top"][:12]:
            print(f"    {t['seconds_per_step'] * 1e6:8.1f} us/step  {t['calls'] // prof_steps:4d}/step  {t['kind']:<18} {t['kernel'][:90]}")
        res["gemm"] = gemm_table(eng, b.rows, args.autotune_gemm)
        res["attention"] = attention_table(eng, b, width)
    res["variants"] = {}
    for v in variants:
        torch._dynamo.reset()
        fast_layers._LAYER_FNS.clear()
        fastgen.release(model)
        real, attention = torch.compile, fastgen.DECODE_ATTENTION

        def patched(fn, *a, _kw=VARIANTS[v].get("compile", {}), **kw):
            return real(fn, *a, **{**kw, **_kw})
        torch.compile = patched
        fastgen.DECODE_ATTENTION = VARIANTS[v].get("attention", attention)
        torch.backends.cuda.enable_cudnn_sdp(VARIANTS[v].get("cudnn", True))
        try:
            with blas_library(VARIANTS[v].get("blas")):
                res["variants"][v] = measure(v)
        except Exception as e:  # recorded in the JSON and printed: one failing variant keeps the others
            res["variants"][v] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            print(f"{v}: FAILED {res['variants'][v]['error'][:400]}", flush=True)
            continue
        finally:
            torch.compile, fastgen.DECODE_ATTENTION = real, attention
            torch.backends.cuda.enable_cudnn_sdp(True)
        eng, b, sp = engine_state(model)
        res["variants"][v]["replay_step_s"] = replay_seconds(eng, b, sp, res["rollouts"]["stats"]["width"], 50)
        print(f"  {v}: replay {res['variants'][v]['replay_step_s'] * 1e3:.2f} ms per step", flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.out) / "decode_profile.json", res)
        print(f"wrote {Path(args.out) / 'decode_profile.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
