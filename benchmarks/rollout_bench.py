"""Rollouts, evaluation generation and training steps on the Qwen3-8B shape, side by side.

The model is built from a config with random bf16 weights on the GPU (no download; throughput
does not depend on weight values), with a LoRA r=16 on all seven projections (peft), EOS off so
every sample runs its full length. One run measures, in this order:

  ceilings   device-to-device copy bandwidth (bytes read + written) and a bf16 8192^3 matmul
  floor      one decode step must read the projection + lm_head weights and the KV of the real
             context: (those bytes) / (measured bandwidth); the prefill's floor is its FLOPs / peak
  (a) prior  one generate() per prompt (5 samples each), 8 prompts x 100 tokens, unmerged LoRA
  (b) plain  one batched generate() of all 40 samples (generation.sample with POLYCHROMIC_FASTGEN=0)
  (c) fast   generation.sample's GPU default: polychromic.generation.fast (first call = compile + capture,
             then the median of --repeats); also its variants without compile / without graphs
  eval       fastgen on 50 prompts x 10 samples x 100 tokens in one chunk and at eval.batch_size 64,
             projected to 500 prompts x 10 samples per model
  training   LoRA SFT step (4 x 256 tokens; checkpointing on/off; 16 x 256 in one pass) and the
             policy-gradient step (40 x 164 tokens) with MFU against the measured matmul peak
  run        the moderate config (4,940 examples, 2 epochs, effective batch 16, N=5, M=8,
             diversity every 3 steps, 100 new tokens) projected from the measured step costs

    PYTHONPATH=src python benchmarks/rollout_bench.py                 # on the GPU (about 6 min)
    PYTHONPATH=src python benchmarks/rollout_bench.py --shape tiny    # CPU smoke test (seconds)

Writes rollout_bench.json (every number) to $OUT or --out when given.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from types import SimpleNamespace

import torch

from polychromic.generation import fast as fastgen
from polychromic.generation import SamplingParams, sample
from polychromic.io import atomic_write_json

SHAPES = {
    # Qwen3-8B
    "8b": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PAD = 0
TOK = SimpleNamespace(eos_token_id=None, pad_token_id=PAD)  # no EOS: every sample runs full length

# The moderate run.
RUN = dict(examples=4940, epochs=2, effective_batch=16, micro_batch=4, n=5, m=8, every=3, new_tokens=100)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def peak_reset():
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None


def median_of(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn)[0] for _ in range(repeats))


# ---------------------------------------------------------------------------------------------
# Ceilings


def copy_bandwidth(device, nbytes: int) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read plus bytes written."""
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = median_of(lambda: dst.copy_(src), repeats=10, warmup=2)
    return 2 * nbytes / t


def matmul_peak(device, n: int, dtype) -> float:
    """FLOP/s of an n x n x n matmul on random data (never zeros: they run faster)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = median_of(lambda: a @ b, repeats=10, warmup=3)
    return 2 * n**3 / t


# ---------------------------------------------------------------------------------------------
# Model


def build(shape: str, device, dtype):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(**SHAPES[shape], max_position_embeddings=4096, eos_token_id=None, bos_token_id=None, pad_token_id=PAD)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # initialise on the GPU directly: 8B on a CPU takes minutes
            model = Qwen3ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    gc = model.generation_config
    for k in ("temperature", "top_p", "top_k", "do_sample", "repetition_penalty"):
        setattr(gc, k, None)
    gc.eos_token_id, gc.pad_token_id = None, PAD
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.1, target_modules=TARGETS))
    with torch.no_grad():  # a trained-looking adapter (B = 0 would make the merge a no-op)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=1e-3)
    return model.eval()


def param_counts(model) -> dict:
    base = model.get_base_model()
    body = sum(m.weight.numel() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in n and not n.endswith("lm_head"))
    head = base.lm_head.weight.numel()
    return {"body_linear": body, "lm_head": head, "embedding": base.model.embed_tokens.weight.numel(),
            "norms": sum(p.numel() for n, p in base.named_parameters() if "norm" in n),
            "lora": sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)}


def prompts(vocab: int, count: int, longest: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    # lengths from `longest` down in steps of 2, so batches carry left padding as real ones do
    return [torch.randint(1, vocab, (longest - 2 * (i % 8),), generator=g).tolist() for i in range(count)]


# ---------------------------------------------------------------------------------------------
# Stages


def stage_prior(model, ps, n: int, new: int, measured: int) -> dict:
    """The prior design: one generate() call per prompt, its n samples batched, LoRA unmerged."""
    dev = next(model.parameters()).device

    def one(p, tokens=new):
        ids = torch.tensor([p] * n, device=dev)
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_p=1.0,
                              top_k=0, max_new_tokens=tokens, min_new_tokens=tokens, eos_token_id=None, pad_token_id=PAD)

    one(ps[0], tokens=2)  # CUDA context, cuBLAS handles
    peak_reset()
    t, outs = timed(lambda: [one(p) for p in ps[:measured]])
    assert all(o.shape[1] == len(p) + new for o, p in zip(outs, ps)), "a prior-design sample stopped early"
    per_call = t / measured
    return {"measured_prompts": measured, "seconds_measured": t, "seconds": per_call * len(ps), "projected": measured < len(ps),
            "per_call_s": per_call, "ms_per_step": 1000 * per_call / new, "peak_gb": peak_gb()}


def stage_plain(model, ps, n: int, params: SamplingParams) -> dict:
    os.environ[fastgen.ENV_SWITCH] = "0"
    try:
        peak_reset()
        t, out = timed(lambda: sample(model, TOK, ps, n, params, seed=0))
    finally:
        del os.environ[fastgen.ENV_SWITCH]
    assert all(len(c.ids) == params.max_new_tokens for r in out for c in r)
    return {"seconds": t, "ms_per_step": 1000 * t / params.max_new_tokens, "peak_gb": peak_gb()}


def stage_fast(model, ps, n: int, params: SamplingParams, repeats: int, batch_size=None, release_after: bool = False, **variant) -> dict:
    """fastgen through generation.sample's dispatch (the default), or a variant called directly."""
    def call():
        if variant:
            out = fastgen.sample(model, TOK, ps, n, params, seed=0, batch_size=batch_size, **variant)
        else:
            out = sample(model, TOK, ps, n, params, seed=0, batch_size=batch_size)
        assert fastgen._ENGINES.get(model), "generation.sample did not take the fast path"
        if release_after:
            fastgen.release(model, empty_cache=False)
        return out

    peak_reset()
    first_s, out = timed(call)
    first = dict(fastgen.last_stats)
    assert all(len(c.ids) == params.max_new_tokens for r in out for c in r)
    runs = []
    for _ in range(repeats):
        t, _ = timed(call)
        runs.append((t, dict(fastgen.last_stats)))
    t, st = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    return {"seconds": t, "first_call_s": first_s, "capture_s": first["capture_s"], "steady_capture_s": st["capture_s"], "merge_s": st["merge_s"], "prefill_s": st["prefill_s"],
            "decode_s": st["decode_s"], "steps": st["steps"], "ms_per_step": 1000 * st["decode_s"] / max(1, st["steps"]),
            "chunks": st["chunks"], "chunk_rows": st["chunk_rows"], "bucket_rows": st["bucket_rows"], "length": st["length"],
            "all_runs_s": [r[0] for r in runs], "peak_gb": peak_gb()}


def train_flops(counts: dict, cfg, tokens: int, seq: int, logit_positions: int) -> tuple[float, float]:
    """(6PT, 4PT) FLOPs of one step. 6PT: forward 2 + recomputed forward 2 + input-gradient
    backward 2 per weight per token (what LoRA with checkpointing executes; frozen weights need no
    weight gradient) -- the usual 6N convention. 4PT: the same without the recompute (the strict
    model FLOPs of a LoRA step). Attention adds 12 * layers * heads * head_dim * seq per token
    (PaLM, appendix B), scaled by 4/6 in the 4PT figure. The lm_head counts only where logits
    are computed."""
    attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq * tokens
    p = counts["body_linear"] * tokens + counts["lm_head"] * logit_positions
    return 6 * p + attn, 4 * p + attn * 4 / 6


def stage_train(model, kind: str, rows: int, seq: int, ckpt: bool, repeats: int, counts: dict, peak: float, keep_logits: bool = False,
                micro: int = 1) -> dict:
    """One optimizer step on random tokens. sft: causal-LM loss over all tokens (labels=ids).
    pg: -(advantage * sum of the completion's log-probs), the completion being the last
    RUN["new_tokens"] tokens; keep_logits computes logits only where they are used
    (logits_to_keep), otherwise over every position as a plain forward does. `micro` splits the
    rows into that many forward/backward passes before the one optimizer step (accumulation)."""
    base = model.get_base_model()
    cfg = base.config
    new = RUN["new_tokens"]
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    model.train()
    dev = next(model.parameters()).device
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(1, cfg.vocab_size, (rows, seq), generator=g).to(dev)
    adv = torch.randn(rows, generator=g).to(dev)

    def step():
        for x, a in zip(ids.chunk(micro), adv.chunk(micro)):
            if kind == "sft":
                loss = model(input_ids=x, labels=x, use_cache=False).loss / micro
            else:
                logits = model(input_ids=x, use_cache=False, logits_to_keep=new + 1 if keep_logits else 0).logits
                logp = torch.log_softmax(logits[:, -new - 1 : -1].float(), dim=-1).gather(-1, x[:, -new:, None]).squeeze(-1)
                loss = -(a * logp.sum(-1)).sum() / rows
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    label = {"kind": kind, "rows": rows, "seq": seq, "ckpt": ckpt, "keep_logits": keep_logits, "micro": micro}
    peak_reset()
    try:
        t = median_of(step, repeats=repeats, warmup=2)
    except torch.OutOfMemoryError as e:  # a measured outcome of this setting, reported as such
        opt.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return {**label, "error": f"CUDA out of memory: {str(e).splitlines()[0][:120]}"}
    finally:
        model.gradient_checkpointing_disable()
        model.eval()
    tokens = rows * seq
    f6, f4 = train_flops(counts, cfg, tokens, seq, rows * (new + 1 if keep_logits else seq))
    return {**label, "seconds": t, "tokens": tokens, "tflops_6pt": f6 / 1e12, "mfu_6pt": f6 / t / peak, "mfu_4pt": f4 / t / peak, "peak_gb": peak_gb()}


def best_run(res: dict, tr: dict, per_step: int) -> dict:
    """The fastest projected run whose every phase fits in GPU memory: with the fast path's
    buffers resident, a training step's peak plus the resident bytes must fit; with them
    released after each rollout call, the training peak alone (and the rollouts pay re-capture)."""
    cap = 0.95 * torch.cuda.get_device_properties(0).total_memory / 1e9
    best = None
    for mode, roll_key in (("resident", "fast"), ("released", "fast_release")):
        roll = res.get(roll_key)
        if not isinstance(roll, dict):
            continue
        extra = res["fast"]["resident_gb"] if mode == "resident" else 0.0
        fits = {k: v for k, v in tr.items() if "seconds" in v and v["peak_gb"] + extra <= cap}
        sft = [(v["seconds"] * per_step / v["rows"], k) for k, v in fits.items() if v["kind"] == "sft"]
        pg = [(v["seconds"], k) for k, v in fits.items() if v["kind"] == "pg"]
        if not sft or not pg:
            continue
        (s_s, s_k), (p_s, p_k) = min(sft), min(pg)
        run = project_run(s_s, roll["seconds"], p_s, once_s=res["fast"]["capture_s"])
        run["config"] = f"rollout buffers {mode}; SFT {s_k} x {per_step // tr[s_k]['rows']} per step; PG {p_k}"
        if best is None or run["total_s"] < best["total_s"]:
            best = run
    return best or {"total_s": math.nan, "config": "no configuration fits in memory", "sft_s": math.nan, "rollouts_s": math.nan, "pg_s": math.nan, "one_time_s": math.nan}


def project_run(sft_s: float, rollout_s: float, pg_s: float, once_s: float = 0.0) -> dict:
    steps = RUN["epochs"] * math.ceil(RUN["examples"] / RUN["effective_batch"])
    div_steps = math.ceil(steps / RUN["every"])
    parts = {"sft_s": steps * sft_s, "rollouts_s": div_steps * rollout_s, "pg_s": div_steps * pg_s, "one_time_s": once_s}
    return {"optimizer_steps": steps, "diversity_steps": div_steps, **parts, "total_s": sum(parts.values())}


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--prior-prompts", type=int, default=8, help="prompts of the prior design actually run (the rest projected)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eval-prompts", type=int, default=50, help="prompts timed for evaluation (projected to 500)")
    ap.add_argument("--skip", default="", help="comma list of stages to skip: prior,plain,variants,eval,train")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for rollout_bench.json (default $OUT)")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    tiny = args.shape == "tiny"
    res: dict = {"shape": args.shape, "dtype": str(dtype), "versions": {"torch": torch.__version__, "python": sys.version.split()[0]}}
    import peft
    import transformers

    res["versions"].update(transformers=transformers.__version__, peft=peft.__version__)
    res["device"] = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"device {res['device']}, torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}", flush=True)

    bw = copy_bandwidth(dev, (1 << 22) if tiny else (2 << 30))
    peak = matmul_peak(dev, 512 if tiny else 8192, dtype)
    res["ceilings"] = {"copy_bytes_per_s": bw, "matmul_flops_per_s": peak}
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write), bf16 matmul {peak / 1e12:.0f} TFLOP/s", flush=True)

    t_build, model = timed(lambda: build(args.shape, dev, dtype))
    cfg = model.get_base_model().config
    counts = param_counts(model)
    elem = torch.empty((), dtype=dtype).element_size()
    res["build_s"], res["params"] = t_build, counts
    print(f"built in {t_build:.1f} s: {counts}", flush=True)

    m, n, new = RUN["m"], RUN["n"], RUN["new_tokens"]
    longest = 64
    ps = prompts(cfg.vocab_size, m, longest, seed=1)
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new, min_new_tokens=new)

    # Floor: each decode step reads the weights it multiplies by (projections + lm_head + norms;
    # the embedding table is gathered, a few rows) and the KV of the real context once.
    kv_per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * elem
    weight_bytes = (counts["body_linear"] + counts["lm_head"] + counts["norms"]) * elem
    mean_ctx = statistics.mean(len(p) for p in ps) + (new - 1) / 2
    step_floor = (weight_bytes + kv_per_token * m * n * mean_ctx) / bw
    prefill_tokens = sum(len(p) for p in ps) * n
    prefill_floor = max(2 * (counts["body_linear"] + counts["lm_head"]) * prefill_tokens / peak, weight_bytes / bw)
    rollout_floor = prefill_floor + (new - 1) * step_floor
    res["floor"] = {"weight_bytes_per_step": weight_bytes, "kv_bytes_per_token": kv_per_token, "step_s": step_floor,
                    "prefill_s": prefill_floor, "rollout_s": rollout_floor,
                    "with_embedding_table_s": (counts["body_linear"] + counts["lm_head"] + counts["embedding"]) * elem / bw * new}
    print(f"decode floor {1000 * step_floor:.2f} ms/step ({weight_bytes / 1e9:.2f} GB weights + KV); rollout floor {rollout_floor:.3f} s", flush=True)

    if "prior" not in skip:
        res["prior"] = stage_prior(model, ps, n, new, measured=min(args.prior_prompts, m))
        print(f"(a) prior: {res['prior']}", flush=True)
    if "plain" not in skip:
        res["plain"] = stage_plain(model, ps, n, params)
        print(f"(b) plain batched: {res['plain']}", flush=True)
    if cuda:
        before = torch.cuda.memory_allocated()
        res["fast"] = stage_fast(model, ps, n, params, args.repeats)
        res["fast"]["resident_gb"] = (torch.cuda.memory_allocated() - before) / 1e9  # merged copy + KV kept between calls
        print(f"(c) fast: {res['fast']}", flush=True)
        # The same with everything freed after each call (a trainer short of memory does this):
        # each call re-allocates the copy and re-captures the graph; the compiled code is kept.
        fastgen.release(model)
        res["fast_release"] = stage_fast(model, ps, n, params, args.repeats, release_after=True)
        print(f"(c) fast, released after each call: {res['fast_release']}", flush=True)
        # Greedy agreement with plain generate on this model is checked by tests/test_fastgen.py
        # (random 8B logits are nearly flat, so greedy ties would say little here).
        if "variants" not in skip:
            fastgen.release(model)
            res["fast_graphs_no_compile"] = stage_fast(model, ps, n, params, 1, compile=False, graphs=True)
            print(f"(c') graphs, no compile: {res['fast_graphs_no_compile']}", flush=True)
            fastgen.release(model)
            res["fast_eager_merged"] = stage_fast(model, ps, n, params, 1, compile=False, graphs=False)
            print(f"(c'') merged, eager: {res['fast_eager_merged']}", flush=True)
            fastgen.release(model)
        if "eval" not in skip:
            eps = prompts(cfg.vocab_size, args.eval_prompts, longest, seed=2)
            scale = 500 / args.eval_prompts
            for label, bs in (("eval_one_chunk", None), ("eval_batch64", 64)):
                r = stage_fast(model, eps, 10, params, 1, batch_size=bs)
                r["projected_500x10_s"] = r["seconds"] * scale
                res[label] = r
                print(f"eval {label}: {r}", flush=True)
            if "prior" in res:
                res["eval_prior_projected_s"] = 500 * res["prior"]["per_call_s"]  # one generate(10) per prompt
        fastgen.release(model)
    else:
        res["fast"] = "skipped: needs CUDA"
        print("(c) fast: skipped: needs CUDA", flush=True)

    if "train" not in skip:
        tr = {}
        sft_seq, pg_seq = 256, longest + new
        tr["sft_ckpt_4x256"] = stage_train(model, "sft", 4, sft_seq, True, args.repeats, counts, peak)
        tr["sft_4x256"] = stage_train(model, "sft", 4, sft_seq, False, args.repeats, counts, peak)
        tr["sft_8x256"] = stage_train(model, "sft", 8, sft_seq, False, args.repeats, counts, peak)
        tr["sft_16x256"] = stage_train(model, "sft", 16, sft_seq, False, args.repeats, counts, peak)
        tr["sft_ckpt_16x256"] = stage_train(model, "sft", 16, sft_seq, True, args.repeats, counts, peak)
        tr["pg_ckpt_full_logits"] = stage_train(model, "pg", m * n, pg_seq, True, args.repeats, counts, peak)
        tr["pg_ckpt_keep"] = stage_train(model, "pg", m * n, pg_seq, True, args.repeats, counts, peak, keep_logits=True)
        tr["pg_keep_2x20"] = stage_train(model, "pg", m * n, pg_seq, False, args.repeats, counts, peak, keep_logits=True, micro=2)
        tr["pg_keep"] = stage_train(model, "pg", m * n, pg_seq, False, args.repeats, counts, peak, keep_logits=True)
        res["train"] = tr
        for k, v in tr.items():
            print(f"train {k}: {v}", flush=True)
        per_step = RUN["effective_batch"]
        prior_roll = res.get("prior", {}).get("seconds", math.nan)
        sft_prior = tr["sft_ckpt_4x256"]
        res["run_prior"] = project_run(sft_prior.get("seconds", math.nan) * per_step / 4, prior_roll, tr["pg_ckpt_full_logits"].get("seconds", math.nan))
        res["run_prior"]["config"] = "SFT 4 x 4x256 with checkpointing; one generate() per prompt; PG with checkpointing, full logits"
        if isinstance(res["fast"], dict):
            res["run_ours"] = best_run(res, tr, per_step)
        for k in ("run_prior", "run_ours"):
            if k in res:
                print(f"{k}: {res[k]}", flush=True)

    summary(res)
    if args.out:
        path = atomic_write_json(os.path.join(args.out, "rollout_bench.json"), res)
        print(f"wrote {path}")
    return 0


def summary(res: dict) -> None:
    fl = res["floor"]
    print("\n== rollouts: 8 prompts x 5 samples x 100 new tokens ==")
    print(f"{'stage':34s} {'seconds':>9s} {'ms/step':>8s} {'x floor':>8s} {'x faster than prior':>20s} {'peak GB':>8s}")
    prior = res.get("prior", {}).get("seconds")
    for key, label in (("prior", "(a) prior: generate() per prompt"), ("plain", "(b) one batched generate()"),
                       ("fast_eager_merged", "(c'') merged copy, eager"), ("fast_graphs_no_compile", "(c') + CUDA graph"),
                       ("fast", "(c) + torch.compile (default)"), ("fast_release", "(c) buffers freed after each call")):
        r = res.get(key)
        if not isinstance(r, dict):
            if r:
                print(f"{label:34s} {r}")
            continue
        speed = f"{prior / r['seconds']:.1f}" if prior else "-"
        peak = f"{r['peak_gb']:.1f}" if r.get("peak_gb") is not None else "-"
        print(f"{label:34s} {r['seconds']:9.3f} {r['ms_per_step']:8.2f} {r['seconds'] / fl['rollout_s']:8.2f} {speed:>20s} {peak:>8s}")
    print(f"{'floor':34s} {fl['rollout_s']:9.3f} {1000 * fl['step_s']:8.2f} {1.0:8.2f}")
    for key in ("eval_one_chunk", "eval_batch64"):
        r = res.get(key)
        if r:
            print(f"eval {key}: {r['projected_500x10_s']:.1f} s per model for 500 prompts x 10 samples (projected from {r['seconds']:.2f} s for {r['chunks']} chunk(s) of {r['chunk_rows']} rows)")
    if "eval_prior_projected_s" in res:
        print(f"eval, prior design (one generate(10) per prompt): {res['eval_prior_projected_s']:.0f} s per model (projected)")
    for k, v in res.get("train", {}).items():
        if "error" in v:
            print(f"train {k:22s} {v['error']}")
        else:
            print(f"train {k:22s} {v['seconds']:7.3f} s  MFU {100 * v['mfu_6pt']:5.1f}% (6PT)  {100 * v['mfu_4pt']:5.1f}% (4PT)  peak {v['peak_gb'] or 0:.1f} GB")
    for k in ("run_prior", "run_ours"):
        if k in res:
            r = res[k]
            print(f"{k}: {r['total_s'] / 60:.1f} min (sft {r['sft_s']:.0f} s, rollouts {r['rollouts_s']:.0f} s, pg {r['pg_s']:.0f} s, one-time {r['one_time_s']:.0f} s): {r['config']}")


if __name__ == "__main__":
    raise SystemExit(main())
