"""Where the policy-gradient pass and the SFT pass spend their time, and what compiling the
decoder layers buys, on the Qwen3-8B shape (step_bench.py's setup: random bf16 weights, LoRA
r=16 on the seven projections through the trainer's fast LoRA path, the shipped moderate config
with objective.quality=constant).

In one process:

  eager      the policy-gradient term over 40 rollouts (rollout_term minus its scoring, as
             step_bench.py reports it) and SFT 16 x 256 in one pass: median of --repeats
  profile    one eager pass of each under torch.profiler: GPU kernel time by kind (matmul,
             attention, elementwise and reductions, copies, the rest), the share of the wall
             time the GPU was busy, and the 25 costliest kernels
  compiled   the same passes with every decoder layer compiled (trainer.compile,
             training/compiled.py; regional compilation: the 36 layers share one graph): first
             call (compile), a second rollout batch of another width (dynamic-shape
             recompile), median of --repeats; the LoRA gradient of the policy-gradient pass
             against the eager one (relative L2 difference; dropout is off in that pass, so the
             two compute the same function) and the SFT loss against the eager one
  baseline   how far apart two equivalent eager schedules are in bfloat16: the same gradient
             with the 40 sequences recomputed in two passes of 20 (other matmul shapes, other
             rounding) against one pass, and the time of that two-pass schedule, eager and
             compiled (the fixed cost of a pass)
  ab         (--ab lora_add) the compiled passes twice more, with the LoRA branch added out of
             place (the default under compile) and in place (fast_lora.INPLACE_UNDER_COMPILE =
             True), the graphs rebuilt between the two: the same measurements, side by side;
             (--ab packing) the same with the recompute's sequences right-padded
             (rollout.packed_recompute false) and packed end to end (true, training/packed.py);
             (--ab sft_packing) the same with SFT micro-batches of 16 examples whose lengths are
             drawn uniformly between a quarter of and the full 256 tokens (seeded; real data
             pads), right-padded (trainer.packed_sft false) and packed (true); its SFT floor
             counts the real tokens;
             (--ab shared_prompts) the same with the packed recompute running a prompt once
             per sample (rollout.share_prompts false) and once for its N samples (true, the
             default); floors_shared is the floor of the shared layout's tokens;
             (--ab overlap_scoring) the same with the scoring on the forward's stream and on a
             second stream with the advantages copied in without waiting
             (polychromic.OVERLAP_SCORING): compare term_s, which includes the scoring;
             (--ab blas, CUDA only) the same with torch's matmuls through cuBLAS (its default)
             and through cuBLASLt (torch.backends.cuda.preferred_blas_library)

SDPA's cuDNN backend is left out unless --cudnn-attention, as the trainer does
(trainer.cudnn_attention).

Each profile also lists where the GPU sat idle inside the pass: the total of the gaps between
consecutive kernels, and the largest gaps with the kernels on either side, where in the pass
each falls and what the host was in meanwhile (a gap is host time: a synchronisation, Python, a
launch the CPU has not issued yet; rollout_term labels its phases rollout_term.forward, .score,
.advantages and .backward), and the host's time before the first kernel.

    PYTHONPATH=src python3 benchmarks/pg_profile.py                     # on the GPU
    PYTHONPATH=src python3 benchmarks/pg_profile.py --skip-eager --ab lora_add   # in place against out of place
    PYTHONPATH=src python3 benchmarks/pg_profile.py --skip-eager --ab packing    # padded against packed recompute
    PYTHONPATH=src python3 benchmarks/pg_profile.py --skip-eager --ab sft_packing  # padded against packed SFT
    PYTHONPATH=src python3 benchmarks/pg_profile.py --skip-eager --ab shared_prompts  # a prompt per sample against shared
    PYTHONPATH=src python3 benchmarks/pg_profile.py --skip-eager --ab overlap_scoring # scoring on one stream or beside it
    PYTHONPATH=src python3 benchmarks/pg_profile.py --skip-eager --ab blas      # cuBLAS against cuBLASLt
    PYTHONPATH=src python benchmarks/pg_profile.py --shape tiny --repeats 1 --no-compile   # CPU smoke

Writes pg_profile.json to --out (default $OUT) and prints a summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models as bm  # noqa: E402
import step_bench as sb  # noqa: E402

from polychromic.data import collate, collate_packed, render_prompt  # noqa: E402
from polychromic.io import atomic_write_json  # noqa: E402
from polychromic.training.compiled import compile_layers, uncompile  # noqa: E402
from polychromic.training import fast_lora  # noqa: E402
from polychromic.training.allocator import configure_allocator  # noqa: E402
from polychromic.training.objectives import polychromic as poly  # noqa: E402
from polychromic.training.objectives.sft import ce_loss, count_targets  # noqa: E402
from polychromic.training.rollout import generate_rollouts  # noqa: E402

KINDS = [
    ("matmul", r"gemm|nvjet|cutlass|xmma|cublas|splitk|sm90_|sm100_"),
    ("attention", r"flash|fmha|attention|cudnn|sdpa|efficient"),
    ("copy", r"memcpy|memset|copy|cat|index"),
    ("elementwise_reduce", r"elementwise|vectorized|reduce|unrolled|triton|softmax|norm|mul|add"),
]


def kind(name: str) -> str:
    low = name.lower()
    for k, pat in KINDS:
        if re.search(pat, low):
            return k
    return "other"


def idle_gaps(kernels: list[tuple[float, float, str]], top: int = 10,
              host: list[tuple[float, float, str]] | None = None) -> dict:
    """Gaps between consecutive kernels given as (start_us, end_us, name): their total in seconds
    and the `top` largest with the kernels before and after (overlapping kernels leave no gap)
    and where each starts (at_ms, from the first kernel). With the host's ranges given the same
    way: what the host was in at each gap's midpoint (host_stack, outermost first), and the
    host's time before the first kernel (lead_ms, from the first host range) with its stack."""
    kernels = sorted(kernels)
    gaps, end, before = [], None, None
    for start, stop, name in kernels:
        if end is not None and start > end:
            gaps.append((start - end, before, name, end))
        if end is None or stop > end:
            end, before = stop, name
    gaps.sort(key=lambda g: -g[0])
    largest = []
    for size, after, name, at in gaps[:top]:
        g = {"ms": size / 1e3, "after": after[:100], "before": name[:100], "at_ms": (at - kernels[0][0]) / 1e3}
        if host is not None:
            g["host_stack"] = host_stack(host, at + size / 2)
        largest.append(g)
    out = {"span_s": (end - kernels[0][0]) / 1e6 if kernels else 0.0, "idle_s": sum(g[0] for g in gaps) / 1e6,
           "gaps": len(gaps), "largest": largest}
    if host and kernels:
        first = min(r[0] for r in host)
        out["lead_ms"] = max(0.0, kernels[0][0] - first) / 1e3
        out["lead_host_stack"] = host_stack(host, (first + kernels[0][0]) / 2)
    return out


def device_kernels(prof, device: str = "CUDA") -> list[tuple[float, float, str]]:
    """(start_us, end_us, name) of every event the profiler recorded on `device`: on "CUDA" each
    GPU kernel, memcpy and memset; on "CPU" the host's ranges (ops and record_function labels)."""
    return [(e.time_range.start, e.time_range.end, e.name) for e in prof.events()
            if str(getattr(e, "device_type", "")).endswith(device) and e.time_range.end > e.time_range.start]


def host_stack(host: list[tuple[float, float, str]], t: float, depth: int = 8) -> list[str]:
    """The names of the host ranges (start_us, end_us, name) open at time t, outermost first (the
    earliest start, the longest first among equal starts); the innermost `depth` of them."""
    open_ = sorted((r for r in host if r[0] <= t < r[1]), key=lambda r: (r[0], -r[1]))
    return [name for _, _, name in open_][-depth:]


def profile(fn, cuda: bool) -> dict:
    """One call of fn under torch.profiler: kernel time by kind, GPU-busy share, top kernels."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sb.sync()
    with tprofile(activities=acts) as prof:
        t0 = time.perf_counter()
        fn()
        sb.sync()
        wall = time.perf_counter() - t0
    kernels = []
    for e in prof.key_averages():
        if str(getattr(e, "device_type", "")).endswith("CUDA"):
            us = getattr(e, "self_device_time_total", 0.0)
            if us > 0:
                kernels.append((e.key, us / 1e6, e.count))
    by_kind: dict[str, float] = {}
    for name, s, _ in kernels:
        by_kind[kind(name)] = by_kind.get(kind(name), 0.0) + s
    busy = sum(s for _, s, _ in kernels)
    kernels.sort(key=lambda k: -k[1])
    return {"wall_s": wall, "gpu_busy_s": busy, "busy_share": busy / wall if wall else None, "by_kind_s": by_kind,
            "idle": idle_gaps(device_kernels(prof), host=device_kernels(prof, "CPU")) if cuda else None,
            "kernel_launches": sum(c for _, _, c in kernels),
            "top": [{"kernel": n[:160], "seconds": s, "calls": c, "kind": kind(n)} for n, s, c in kernels[:25]]}


def rel_l2(g: torch.Tensor, ref: torch.Tensor) -> float:
    """|g - ref| / |ref|."""
    return float((g - ref).norm() / ref.norm())


def lora_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.detach().float().flatten() for p in model.parameters() if p.requires_grad and p.grad is not None])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(bm.SHAPES), default="8b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--skip-eager", action="store_true", help="measure the compiled passes only (the compiled "
                    "gradient is then compared with nothing)")
    ap.add_argument("--ab", choices=("lora_add", "packing", "sft_packing", "shared_prompts", "overlap_scoring", "blas"),
                    help="the compiled passes two ways, side by side (module docstring)")
    ap.add_argument("--cudnn-attention", action="store_true", help="let SDPA pick cuDNN (trainer.cudnn_attention)")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)
    alloc = configure_allocator(True, "auto")
    cuda = torch.cuda.is_available()
    if args.ab == "blas" and not cuda:
        ap.error("--ab blas compares cuBLAS with cuBLASLt: it needs a CUDA device")
    torch.backends.cuda.enable_cudnn_sdp(args.cudnn_attention)  # as train() does with trainer.cudnn_attention
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    work = Path(tempfile.mkdtemp(prefix="pg_profile_"))
    model, tok, cfg, embedder, texts = sb.setup(args.shape, dev, dtype, work, lora="fast")
    res: dict = {"shape": args.shape, "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                 "allocator_choice": alloc, "host": bm.host(),
                 "cudnn_attention": args.cudnn_attention}
    peak = sb.matmul_peak(dev, 512 if args.shape == "tiny" else 8192, dtype)
    m = cfg.rollout.max_examples_for_diversity
    counts, mcfg = sb.param_counts(model), model.get_base_model().config

    def rollouts(offset: int):
        t = texts[offset : offset + m]
        return generate_rollouts(model, tok, t, [render_prompt(tok, cfg.data, x) for x in t], cfg.rollout, seed=11 + offset)

    ro, ro2 = rollouts(0), rollouts(m)
    seqs = [len(ro.prompt_ids[i]) + len(y) for i in range(m) for y in ro.completion_ids[i]]
    res["pg_tokens"], res["pg_width"] = sum(seqs), max(seqs)
    res["pg_width_second_batch"] = max(len(ro2.prompt_ids[i]) + len(y) for i in range(m) for y in ro2.completion_ids[i])
    res["floors"] = {"pg_s": sb.matmul_floor(counts, mcfg, seqs, ro.n_tokens(), peak)}
    shared = sb.shared_prefixes(ro)
    res["pg_tokens_shared"] = sum(seqs) - sum(shared)
    res["floors"]["pg_shared_s"] = sb.matmul_floor(counts, mcfg, seqs, ro.n_tokens(), peak, shared=shared)
    sft_seq, sft_prompt = (64, 32) if args.shape == "tiny" else (256, 128)
    micro = sb.sft_micro(mcfg.vocab_size, 16, sft_seq, sft_prompt, 1, dev)
    res["floors"]["sft_s"] = sb.matmul_floor(counts, mcfg, [sft_seq] * 16, 16 * (sft_seq - sft_prompt), peak)
    if args.ab == "sft_packing":  # examples of unequal lengths, padded or packed below
        examples = sb.sft_examples(mcfg.vocab_size, 16, sft_seq // 4, sft_seq)
        lens = [len(e["input_ids"]) for e in examples]
        res["sft_lengths"], res["sft_padding_share"] = lens, 1 - sum(lens) / (16 * max(lens))
        targets = sum(count_targets(collate([e], 0)) for e in examples)
        res["floors"]["sft_s"] = sb.matmul_floor(counts, mcfg, lens, targets, peak)
    score_s = sb.median_of(lambda: poly.score_rollouts(ro, embedder, cfg.objective), args.repeats)[0]
    res["score_s"] = score_s

    packed: list = [None]  # rollout.packed_recompute for the passes below (None: the trainer's default)
    share: list = [True]  # rollout.share_prompts for the passes below (True: the default)

    def pg(batch=ro, rows=None):
        c = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, packed_recompute=packed[0], share_prompts=share[0]))
        sb.pg_pass(model, batch, embedder, c, rows)

    def two_pass() -> tuple[float, torch.Tensor]:
        t = sb.median_of(lambda: (pg(rows=20), model.zero_grad(set_to_none=True)), args.repeats)[0]
        pg(rows=20)
        g = lora_grad(model)
        model.zero_grad(set_to_none=True)
        return t - score_s, g

    def sft():
        n_tgt = sum(count_targets(b) for b in micro)
        loss, _ = ce_loss(model, micro[0], n_tgt)
        loss.backward()
        return float(loss.detach())

    def measure(label: str) -> dict:
        out: dict = {}
        sb.peak_reset()
        out["pg_first_call_s"] = sb.timed(lambda: (pg(), model.zero_grad(set_to_none=True)))[0]
        out["pg_other_width_first_s"] = sb.timed(lambda: (pg(ro2), model.zero_grad(set_to_none=True)))[0]
        t, runs = sb.median_of(lambda: (pg(), model.zero_grad(set_to_none=True)), args.repeats)
        # pg_s: the term's time less the scoring's, which rollout_term overlaps with its first
        # forward (so pg_s can be below the pass's own time); term_s: the whole term, scoring included
        out.update(pg_s=t - score_s, term_s=t, pg_runs=runs, pg_x_floor=(t - score_s) / res["floors"]["pg_s"],
                   pg_peak_gib=sb.peak_gib())
        pg()
        out["_grad"] = lora_grad(model)
        model.zero_grad(set_to_none=True)
        sb.peak_reset()
        t, runs = sb.median_of(lambda: (sft(), model.zero_grad(set_to_none=True)), args.repeats)
        out.update(sft_s=t, sft_runs=runs, sft_x_floor=t / res["floors"]["sft_s"], sft_peak_gib=sb.peak_gib())
        torch.manual_seed(0)
        out["sft_loss"] = sft()
        model.zero_grad(set_to_none=True)
        if not args.no_profile:
            out["pg_profile"] = profile(lambda: (pg(), model.zero_grad(set_to_none=True)), cuda)
            out["sft_profile"] = profile(lambda: (sft(), model.zero_grad(set_to_none=True)), cuda)
        print(f"{label}: term {out['term_s']:.3f} s with scoring; pg {out['pg_s']:.3f} s ({out['pg_x_floor']:.2f}x floor {res['floors']['pg_s']:.3f}; first "
              f"{out['pg_first_call_s']:.2f} s, other width {out['pg_other_width_first_s']:.2f} s, peak {out['pg_peak_gib']} GiB); "
              f"sft {out['sft_s']:.3f} s ({out['sft_x_floor']:.2f}x floor {res['floors']['sft_s']:.3f}, peak {out['sft_peak_gib']} GiB)",
              flush=True)
        for key in ("pg_profile", "sft_profile"):
            if key in out:
                p = out[key]
                kinds = ", ".join(f"{k} {v:.3f}" for k, v in sorted(p["by_kind_s"].items(), key=lambda kv: -kv[1]))
                print(f"  {key}: wall {p['wall_s']:.3f} s, GPU busy {p['gpu_busy_s']:.3f} s ({p['busy_share']:.0%}), "
                      f"{p['kernel_launches']} kernels; {kinds}", flush=True)
                for k in p["top"][:12]:
                    print(f"    {k['seconds'] * 1e3:8.1f} ms {k['calls']:6d}x {k['kind']:18s} {k['kernel'][:100]}", flush=True)
                if p["idle"]:
                    idle = p["idle"]
                    print(f"    idle between kernels {idle['idle_s'] * 1e3:.1f} ms in {idle['gaps']} gaps over a "
                          f"{idle['span_s'] * 1e3:.1f} ms span, after {idle.get('lead_ms', 0.0):.1f} ms of host work "
                          f"before the first kernel ({' > '.join(idle.get('lead_host_stack', [])[-4:])}); largest:", flush=True)
                    for g in idle["largest"][:6]:
                        print(f"      {g['ms']:7.2f} ms at {g['at_ms']:7.1f} ms after {g['after'][:60]} | before "
                              f"{g['before'][:60]}; host in: {' > '.join(g['host_stack'][-4:])}", flush=True)
        return out

    g_eager = None
    if not args.skip_eager:
        eager = measure("eager")
        g_eager = eager.pop("_grad")
        eager["pg_two_passes_s"], g_two = two_pass()
        eager["pg_grad_rel_l2_two_passes_vs_one"] = rel_l2(g_two, g_eager)
        res["eager"] = eager
        print(f"eager, two passes of 20: {eager['pg_two_passes_s']:.3f} s; gradient rel L2 against one pass "
              f"{eager['pg_grad_rel_l2_two_passes_vs_one']:.2e}", flush=True)

    def compiled(label: str, two_passes: bool = False) -> tuple[dict, torch.Tensor]:
        """The measurements with every decoder layer compiled; the graphs are dropped after."""
        t0 = time.perf_counter()
        res["compiled_layers"] = compile_layers(model)
        comp = measure(label)
        g_comp = comp.pop("_grad")
        comp["wall_incl_compile_s"] = time.perf_counter() - t0
        if g_eager is not None:
            comp["pg_grad_rel_l2_vs_eager"] = rel_l2(g_comp, g_eager)
            comp["sft_loss_minus_eager"] = comp["sft_loss"] - res["eager"]["sft_loss"]
        if two_passes:
            comp["pg_two_passes_s"], g_two = two_pass()
            print(f"{label}, two passes of 20: {comp['pg_two_passes_s']:.3f} s", flush=True)
            if g_eager is not None:
                comp["pg_grad_rel_l2_two_passes_vs_eager_one"] = rel_l2(g_two, g_eager)
        uncompile(model)
        torch._dynamo.reset()
        return comp, g_comp

    if not args.no_compile and not args.ab:
        comp, _ = compiled("compiled layers", two_passes=True)
        if g_eager is not None:
            print(f"compiled vs eager: pg gradient rel L2 {comp['pg_grad_rel_l2_vs_eager']:.2e} (two eager schedules: "
                  f"{res['eager']['pg_grad_rel_l2_two_passes_vs_one']:.2e}), sft loss diff {comp['sft_loss_minus_eager']:.2e}",
                  flush=True)
        res["compiled"] = comp
    def each_setting(get, put, settings, label) -> tuple[dict, dict]:
        """compiled() once per (name, value) of `settings`, after put(value); what get() gave
        before is put back after."""
        ab, grads, before = {}, {}, get()
        try:
            for name, value in settings:
                put(value)
                ab[name], grads[name] = compiled(label(name))
        finally:
            put(before)
        return ab, grads

    def slot_of(slot: list):
        """(get, put) of a setting held in slot[0]."""
        return (lambda: slot[0]), (lambda value: slot.__setitem__(0, value))

    def switch(module, name: str):
        """(get, put) of a module-level switch."""
        return (lambda: getattr(module, name)), (lambda value: setattr(module, name, value))

    if args.ab == "packing":
        ab, grads = each_setting(*slot_of(packed), (("padded", False), ("packed", True)), lambda n: f"compiled, recompute {n}")
        ab["pg_grad_rel_l2_packed_vs_padded"] = rel_l2(grads["packed"], grads["padded"])
        ab["pg_packed_over_padded"] = ab["packed"]["pg_s"] / ab["padded"]["pg_s"]
        res["ab_packing"] = ab
        print(f"packed / padded: pg {ab['pg_packed_over_padded']:.3f}; pg gradient rel L2 between them "
              f"{ab['pg_grad_rel_l2_packed_vs_padded']:.2e}", flush=True)
    if args.ab == "shared_prompts":
        packed[0] = True  # sharing is a packed pass's (on a CPU: the per-sequence attention)
        ab, grads = each_setting(*slot_of(share), (("per_sample", False), ("shared", True)),
                                 lambda n: f"compiled, prompts {n.replace('_', ' ')}")
        packed[0] = None
        ab["shared"]["pg_x_floor_shared"] = ab["shared"]["pg_s"] / res["floors"]["pg_shared_s"]
        ab["shared"]["term_x_floor_shared"] = ab["shared"]["term_s"] / res["floors"]["pg_shared_s"]
        ab["pg_grad_rel_l2_shared_vs_per_sample"] = rel_l2(grads["shared"], grads["per_sample"])
        ab["pg_shared_over_per_sample"] = ab["shared"]["pg_s"] / ab["per_sample"]["pg_s"]
        ab["term_shared_over_per_sample"] = ab["shared"]["term_s"] / ab["per_sample"]["term_s"]
        res["ab_shared_prompts"] = ab
        print(f"shared / per sample: term {ab['term_shared_over_per_sample']:.3f}, pg {ab['pg_shared_over_per_sample']:.3f} "
              f"({res['pg_tokens_shared']} tokens against "
              f"{res['pg_tokens']}; shared {ab['shared']['pg_x_floor_shared']:.2f}x the floor of its tokens "
              f"{res['floors']['pg_shared_s']:.3f} s); pg gradient rel L2 between them "
              f"{ab['pg_grad_rel_l2_shared_vs_per_sample']:.2e}", flush=True)
    if args.ab == "overlap_scoring":
        ab, grads = each_setting(*switch(poly, "OVERLAP_SCORING"), (("one_stream", False), ("overlapped", True)),
                                 lambda n: f"compiled, scoring {n.replace('_', ' ')}")
        ab["pg_grad_rel_l2_overlapped_vs_one_stream"] = rel_l2(grads["overlapped"], grads["one_stream"])
        ab["term_overlapped_over_one_stream"] = ab["overlapped"]["term_s"] / ab["one_stream"]["term_s"]
        res["ab_overlap_scoring"] = ab
        print(f"overlapped / one stream: term {ab['term_overlapped_over_one_stream']:.3f} (scoring included); pg "
              f"gradient rel L2 between them {ab['pg_grad_rel_l2_overlapped_vs_one_stream']:.2e}", flush=True)
    if args.ab == "blas":
        library = torch.backends.cuda.preferred_blas_library  # with no argument, the current one
        ab, grads = each_setting(library, library, (("cublas", "cublas"), ("cublaslt", "cublaslt")), lambda n: f"compiled, {n}")
        ab["pg_grad_rel_l2_cublaslt_vs_cublas"] = rel_l2(grads["cublaslt"], grads["cublas"])
        for part in ("pg", "sft", "term"):
            ab[f"{part}_cublaslt_over_cublas"] = ab["cublaslt"][f"{part}_s"] / ab["cublas"][f"{part}_s"]
        res["ab_blas"] = ab
        print(f"cuBLASLt / cuBLAS: pg {ab['pg_cublaslt_over_cublas']:.3f}, sft {ab['sft_cublaslt_over_cublas']:.3f}, term "
              f"{ab['term_cublaslt_over_cublas']:.3f}; pg gradient rel L2 between them "
              f"{ab['pg_grad_rel_l2_cublaslt_vs_cublas']:.2e}", flush=True)
    if args.ab == "sft_packing":
        ab = {}
        for name, batch in (("padded", collate(examples, 0)), ("packed", collate_packed(examples))):
            micro[:] = [{k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}]
            ab[name], _ = compiled(f"compiled, SFT {name}")
        ab["sft_loss_packed_minus_padded"] = ab["packed"]["sft_loss"] - ab["padded"]["sft_loss"]
        ab["sft_packed_over_padded"] = ab["packed"]["sft_s"] / ab["padded"]["sft_s"]
        res["ab_sft_packing"] = ab
        print(f"packed / padded: sft {ab['sft_packed_over_padded']:.3f} ({res['sft_padding_share']:.0%} of the padded "
              f"batch is padding); loss difference {ab['sft_loss_packed_minus_padded']:.2e}", flush=True)
    if args.ab == "lora_add":
        ab, grads = each_setting(*switch(fast_lora, "INPLACE_UNDER_COMPILE"), (("out_of_place", False), ("in_place", True)),
                                 lambda n: f"compiled, LoRA branch {n.replace('_', ' ')}")
        ab["pg_grad_rel_l2_in_vs_out_of_place"] = rel_l2(grads["in_place"], grads["out_of_place"])
        ab["pg_out_of_place_over_in_place"] = ab["out_of_place"]["pg_s"] / ab["in_place"]["pg_s"]
        ab["sft_out_of_place_over_in_place"] = ab["out_of_place"]["sft_s"] / ab["in_place"]["sft_s"]
        res["ab"] = ab
        print(f"out of place / in place: pg {ab['pg_out_of_place_over_in_place']:.3f}, sft "
              f"{ab['sft_out_of_place_over_in_place']:.3f}; pg gradient rel L2 between them "
              f"{ab['pg_grad_rel_l2_in_vs_out_of_place']:.2e}", flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        print(f"wrote {atomic_write_json(Path(args.out) / 'pg_profile.json', res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
