"""One polychromic optimizer step on the Qwen3-8B shape, stage by stage, each against its floor.

The trainer's own functions on the trainer's setup: random bf16 weights (bench_models.py),
LoRA r=16 / alpha 16 / dropout 0.1 on the seven projections (models.attach_lora, train mode),
the shipped moderate config (N = 5, M = 8, T = 0.9, 100 new tokens) with objective.quality=constant
(a random model's replies are all truncated, which would zero every advantage; see
moderate_run.py). Stages, in one process:

  ceilings   device-to-device copy (bytes read + written), bf16 8192^3 matmul on random data
  rollouts   generation.sample through generate_rollouts (8 x 5 x 100): first call, median of 3
  pg         rollout_term's score + recompute + backward over the 40 sequences: batched across
             groups (the default), and one prompt group per pass (rollout.recompute_rows=5, the
             former schedule), each with its passes and peak memory
  sft        16 x 256 tokens (128 prompt + 128 reply) in one pass (the shipped setting) and as
             4 micro-batches of 4 with gradient checkpointing (the former one)
  optimizer  clip_grad_norm_ + AdamW step on the 43.6 M adapter parameters
  step       the whole optimizer step in the trainer's order (SFT, rollouts, pg, clip, AdamW)
  sdpa       attention with padding: which SDPA kernels return NaN on a fully masked query row
             (what left padding makes), and whether a left-padded (TRL's layout) or a
             right-padded (rollout.pack's) batch gives finite LoRA gradients under sdpa / eager
  eval       evaluation sampling, 50 prompts x 10 samples x 100 tokens in one 500-row chunk
             (eval.batch_size 512), projected to 500 prompts x 10 samples

Floors: a decode step reads the projection + lm_head weights and the KV of the real context once
(bytes / copy bandwidth); prefill, SFT and the policy-gradient pass are matmul work over the
measured peak: 4 x linear parameters x tokens (forward 2 + input-gradient backward 2; frozen
weights need no weight gradient; the usual 6N convention counts a recompute on top) + the
lm_head at the positions whose logits are used + attention 8 x layers x heads x head_dim x
seq per token (PaLM app. B, without recompute); the optimizer reads p, g, m, v and writes p, m, v.

    PYTHONPATH=src python3 benchmarks/step_bench.py                       # on the GPU (~2.5 min)
    PYTHONPATH=src python benchmarks/step_bench.py --shape tiny --repeats 1   # CPU smoke test

Writes step_bench.json to --out (default $OUT) and prints a table last.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models as bm  # noqa: E402

from polychromic.config import LoraConfig, load_config  # noqa: E402
from polychromic.data import render_prompt  # noqa: E402
from polychromic.generation import SamplingParams, sample  # noqa: E402
from polychromic.io import atomic_write_json  # noqa: E402
from polychromic.models import attach_lora, load_embedder  # noqa: E402
from polychromic.training.loop import _set_grads, _take_grads  # noqa: E402
from polychromic.training.objectives import polychromic as poly  # noqa: E402
from polychromic.training.objectives.sft import ce_loss, count_targets  # noqa: E402
from polychromic.training.rollout import generate_rollouts, pack, rollout_seed  # noqa: E402

CONFIG = "polychromic_1.0_moderate"
ONE = SimpleNamespace(num_processes=1)  # the loop's gradient helpers, one process


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def median_of(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    runs = [timed(fn)[0] for _ in range(repeats)]
    return statistics.median(runs), runs


def peak_reset():
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


# ---------------------------------------------------------------------------------------------
# Ceilings and floors


def copy_bandwidth(device, nbytes: int) -> float:
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / median_of(lambda: dst.copy_(src), 10, 2)[0]


def matmul_peak(device, n: int, dtype) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / median_of(lambda: a @ b, 10, 3)[0]


def param_counts(model) -> dict:
    base = model.get_base_model()
    body = sum(m.weight.numel() for n, m in base.named_modules() if type(m) is torch.nn.Linear and "lora_" not in n and not n.endswith("lm_head"))
    return {"body_linear": body, "lm_head": base.lm_head.weight.numel(), "norms": sum(p.numel() for n, p in base.named_parameters() if "norm" in n),
            "lora": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def matmul_floor(counts: dict, cfg, seqs: list[int], logit_positions: int, peak: float, recompute: bool = False) -> float:
    """Seconds of a LoRA forward + backward over sequences of the given lengths (module docstring)."""
    tokens = sum(seqs)
    per_weight = 6 if recompute else 4
    attn = (12 if recompute else 8) * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * sum(s * s for s in seqs) / 2
    return (per_weight * (counts["body_linear"] * tokens + counts["lm_head"] * logit_positions) + attn) / peak


def rollout_floor(counts: dict, cfg, prompts: list[list[int]], n: int, new: int, bw: float, peak: float, elem: int) -> dict:
    weight_bytes = (counts["body_linear"] + counts["lm_head"] + counts["norms"]) * elem
    kv_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * elem
    ctx = statistics.mean(len(p) for p in prompts) + (new - 1) / 2
    step = (weight_bytes + kv_token * len(prompts) * n * ctx) / bw
    # The N samples of a prompt share its prefill: its floor counts each prompt once.
    prefill = max(2 * (counts["body_linear"] + counts["lm_head"]) * sum(len(p) for p in prompts) / peak, weight_bytes / bw)
    return {"decode_step_s": step, "prefill_s": prefill, "rollout_s": prefill + (new - 1) * step, "weight_bytes": weight_bytes}


# ---------------------------------------------------------------------------------------------
# Stages


def sft_micro(vocab: int, rows: int, seq: int, prompt: int, micro: int, device, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (rows, seq), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = -100
    out = []
    for x, y in zip(ids.chunk(micro), labels.chunk(micro)):
        out.append({"input_ids": x.to(device), "labels": y.to(device), "attention_mask": torch.ones_like(x).to(device)})
    return out


def sft_pass(model, micro: list[dict]) -> None:
    n_tgt = sum(count_targets(b) for b in micro)
    for b in micro:
        loss, _ = ce_loss(model, b, n_tgt)
        loss.backward()


def pg_pass(model, ro, embedder, cfg, rows: int | None) -> dict:
    c = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, recompute_rows=rows))
    calls = []
    terms = poly.rollout_term(model, ro, embedder, c, lambda loss: (calls.append(1), loss.backward()))
    return {"passes": len(calls), "terms": terms}


def with_checkpointing(model, on: bool):
    base = model.get_base_model()
    if on:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_disable()


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


def whole_step(model, tok, cfg, embedder, micro, texts, prompt_ids, opt, params, step: int) -> dict:
    sync()
    marks = [("start", time.perf_counter())]

    def mark(name):
        sync()
        marks.append((name, time.perf_counter()))

    sft_pass(model, micro)
    g_ce = _take_grads(params, ONE)
    mark("sft")
    ro = generate_rollouts(model, tok, texts, prompt_ids, cfg.rollout, rollout_seed(cfg.seed, step))
    mark("rollouts")
    terms = poly.rollout_term(model, ro, embedder, cfg, lambda loss: loss.backward())
    mark("pg")
    g_div = _take_grads(params, ONE)
    _set_grads(params, g_ce, g_div)
    torch.nn.utils.clip_grad_norm_(params, cfg.trainer.max_grad_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    mark("optimizer")
    out = {name: t - marks[i][1] for i, (name, t) in enumerate(marks[1:])}
    out["total"] = marks[-1][1] - marks[0][1]
    out["rollout_inner_s"] = ro.seconds
    out["div_loss"] = terms.logs["train/div_loss"]
    return out


# ---------------------------------------------------------------------------------------------


def setup(shape: str, device, dtype, work: Path):
    base, tok = bm.build_model(shape, device, dtype)
    model = attach_lora(base, LoraConfig(r=16, alpha=16, dropout=0.1, target_modules=bm.TARGETS))
    with torch.no_grad():  # a trained-looking adapter (B = 0 makes the A gradients and the merge trivial)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=1e-3)
    model.train()
    emb_dir = bm.write_embedder(work / "minilm", tiny=shape == "tiny")
    cfg = load_config(CONFIG, ["objective.quality=constant", f"objective.diversity_encoder_model={emb_dir}"])
    embedder = load_embedder(str(emb_dir), device=str(device))
    prep = bm.write_tweets(work / "prepared", 160, bm.SHAPES[shape]["vocab_size"], seed=1)
    import json

    rows = [json.loads(x) for x in (prep / "train.jsonl").read_text().splitlines()]
    texts = list(dict.fromkeys(r["prompt"] for r in rows))
    return model, tok, cfg, embedder, texts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(bm.SHAPES), default="8b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list: sdpa,old_pg,old_sft,eval")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    tiny = args.shape == "tiny"
    import peft
    import transformers

    res: dict = {"shape": args.shape, "device": torch.cuda.get_device_name() if cuda else "cpu",
                 "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                              "python": sys.version.split()[0]}}
    print(res, flush=True)
    bw = copy_bandwidth(dev, (1 << 22) if tiny else (2 << 30))
    peak = matmul_peak(dev, 512 if tiny else 8192, dtype)
    res["ceilings"] = {"copy_bytes_per_s": bw, "matmul_flops_per_s": peak}
    print(f"copy {bw / 1e12:.2f} TB/s, matmul {peak / 1e12:.0f} TFLOP/s", flush=True)

    work = Path(tempfile.mkdtemp(prefix="step_bench_"))
    t, (model, tok, cfg, embedder, texts) = timed(lambda: setup(args.shape, dev, dtype, work))
    res["setup_s"] = t
    mcfg = model.get_base_model().config
    counts = param_counts(model)
    res["params"] = counts
    params = [p for p in model.parameters() if p.requires_grad]
    m, n, new = cfg.rollout.max_examples_for_diversity, cfg.rollout.n_generations, cfg.rollout.max_generation_length
    all_texts = texts
    texts, prompt_ids = texts[:m], [render_prompt(tok, cfg.data, t) for t in texts[:m]]
    elem = torch.empty((), dtype=dtype).element_size()

    # -- rollouts
    ro_fn = lambda: generate_rollouts(model, tok, texts, prompt_ids, cfg.rollout, seed=11)  # noqa: E731
    peak_reset()
    first, ro = timed(ro_fn)
    roll, roll_runs = median_of(ro_fn, args.repeats, warmup=0)
    from polychromic.generation import fast as fastgen

    res["rollouts"] = {"seconds": roll, "runs": roll_runs, "first_call_s": first, "tokens": ro.n_tokens(),
                       "fast_stats": dict(fastgen.last_stats) if cuda else None, "peak_gib": peak_gib()}
    res["floors"] = {"rollout": rollout_floor(counts, mcfg, prompt_ids, n, new, bw, peak, elem)}
    seqs = [len(prompt_ids[i]) + len(y) for i in range(m) for y in ro.completion_ids[i]]
    positions = ro.n_tokens()
    res["floors"]["pg_s"] = matmul_floor(counts, mcfg, seqs, positions, peak)
    res["floors"]["pg_recompute_s"] = matmul_floor(counts, mcfg, seqs, positions, peak, recompute=True)
    res["pg_tokens"] = sum(seqs)
    print(f"rollouts {roll:.3f} s (first {first:.1f} s), floor {res['floors']['rollout']['rollout_s']:.3f} s; {sum(seqs)} pg tokens", flush=True)

    # -- scoring alone (embeddings, distances, advantages)
    def score():
        q, dist, _ = poly.score_rollouts(ro, embedder, cfg.objective)
        return q, dist
    res["score_s"] = median_of(score, args.repeats)[0]

    # -- policy-gradient term
    variants = {"pg_batched": None} if "old_pg" in skip else {"pg_batched": None, "pg_group_by_group": n}
    for key, rows in variants.items():
        peak_reset()
        info = {}

        def go():
            info.update(pg_pass(model, ro, embedder, cfg, rows))
            model.zero_grad(set_to_none=True)
        t, runs = median_of(go, args.repeats)
        res[key] = {"seconds": t, "runs": runs, "passes": info["passes"], "recompute_rows": rows, "peak_gib": peak_gib(),
                    "seconds_minus_score": t - res["score_s"]}
        print(f"{key}: {t:.3f} s in {info['passes']} passes, peak {peak_gib()} GiB", flush=True)
    res["pg_batched"]["x_floor"] = res["pg_batched"]["seconds_minus_score"] / res["floors"]["pg_s"]

    # -- SFT
    sft_seq, sft_prompt = (64, 32) if tiny else (256, 128)
    one = sft_micro(mcfg.vocab_size, 16, sft_seq, sft_prompt, 1, dev)
    res["floors"]["sft_s"] = matmul_floor(counts, mcfg, [sft_seq] * 16, 16 * (sft_seq - sft_prompt), peak)
    sft_variants = [("sft_16x256", one, False)]
    if "old_sft" not in skip:
        sft_variants.append(("sft_4x4x256_ckpt", sft_micro(mcfg.vocab_size, 16, sft_seq, sft_prompt, 4, dev), True))
    for key, micro, ckpt in sft_variants:
        with_checkpointing(model, ckpt)
        peak_reset()

        def go():
            sft_pass(model, micro)
            model.zero_grad(set_to_none=True)
        t, runs = median_of(go, args.repeats)
        with_checkpointing(model, False)
        res[key] = {"seconds": t, "runs": runs, "peak_gib": peak_gib(), "x_floor": t / res["floors"]["sft_s"]}
        print(f"{key}: {t:.3f} s, peak {peak_gib()} GiB", flush=True)

    # -- optimizer
    opt = torch.optim.AdamW(params, lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay)
    grads = [torch.randn_like(p) * 1e-3 for p in params]

    def opt_step():
        for p, g in zip(params, grads):
            p.grad = g.clone()
        sync()
        t0 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, cfg.trainer.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0
    opt_step()
    res["optimizer_s"] = statistics.median(opt_step() for _ in range(max(3, args.repeats)))
    res["floors"]["optimizer_s"] = 7 * 4 * counts["lora"] / bw

    # -- the whole step, in the trainer's order
    peak_reset()
    steps = [whole_step(model, tok, cfg, embedder, one, texts, prompt_ids, opt, params, s) for s in range(args.repeats + 1)]
    steps = steps[1:]  # the first may meet a new shape bucket
    med = sorted(steps, key=lambda r: r["total"])[len(steps) // 2]
    fl = res["floors"]
    res["step"] = {"median": med, "all_totals": [r["total"] for r in steps], "peak_gib": peak_gib(),
                   "floor_s": fl["sft_s"] + fl["rollout"]["rollout_s"] + fl["pg_s"] + fl["optimizer_s"]}
    print(f"whole step {med['total']:.3f} s: {med}", flush=True)

    # -- SDPA with padding
    if "sdpa" not in skip:
        try:
            probes(res, model, prompt_ids, ro, cfg, dev, dtype, cuda)
        except Exception as exc:  # a probe's failure is its result; the other stages still report
            res["sdpa_error"] = f"{type(exc).__name__}: {exc}"
            print(f"sdpa probes failed: {res['sdpa_error']}", flush=True)

    # -- evaluation sampling
    if "eval" not in skip:
        eval_stage(res, model, tok, cfg, all_texts, cuda)

    summary(res)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        print(f"wrote {atomic_write_json(Path(args.out) / 'step_bench.json', res)}")
    return 0


def eval_stage(res: dict, model, tok, cfg, texts, cuda: bool) -> None:
    from polychromic.generation import fast as fastgen

    if len(texts) < 50:
        raise ValueError(f"eval needs 50 distinct prompts, got {len(texts)}")
    eprompts = [render_prompt(tok, cfg.data, t) for t in texts[:50]]
    ep = SamplingParams(temperature=cfg.eval.temperature, top_p=1.0, top_k=0, max_new_tokens=100, min_new_tokens=100)
    bs = 512
    sample(model, tok, eprompts, 10, ep, seed=0, batch_size=bs)  # compile + capture of the 500-row bucket
    t, out = timed(lambda: sample(model, tok, eprompts, 10, ep, seed=1, batch_size=bs))
    assert all(len(c.ids) == 100 for r in out for c in r)
    res["eval"] = {"seconds_50x10": t, "projected_500x10_s": 10 * t, "fast_stats": dict(fastgen.last_stats) if cuda else None}
    print(f"eval 50 x 10 x 100: {t:.2f} s -> {10 * t:.1f} s per model for 500 x 10", flush=True)


def summary(res: dict) -> None:
    fl = res["floors"]
    rows = [("rollouts 8 x 5 x 100", res["rollouts"]["seconds"], fl["rollout"]["rollout_s"]),
            ("score (embed, distances, advantages)", res["score_s"], None),
            ("pg term, batched (score excluded)", res["pg_batched"]["seconds_minus_score"], fl["pg_s"])]
    if "pg_group_by_group" in res:
        rows.append(("pg term, group by group (score excl.)", res["pg_group_by_group"]["seconds_minus_score"], fl["pg_s"]))
    rows.append(("SFT 16 x 256, one pass", res["sft_16x256"]["seconds"], fl["sft_s"]))
    if "sft_4x4x256_ckpt" in res:
        rows.append(("SFT 4 x (4 x 256), checkpointing", res["sft_4x4x256_ckpt"]["seconds"], fl["sft_s"]))
    rows.append(("clip + AdamW", res["optimizer_s"], fl["optimizer_s"]))
    rows.append(("whole polychromic step", res["step"]["median"]["total"], res["step"]["floor_s"]))
    print(f"\n{'stage':40s} {'seconds':>9s} {'floor':>9s} {'x floor':>8s}")
    for name, t, f in rows:
        print(f"{name:40s} {t:9.3f} {f if f is not None else math.nan:9.3f} {t / f if f else math.nan:8.2f}")
    if "eval" in res:
        print(f"eval 500 x 10 x 100 per model (projected from 50 x 10): {res['eval']['projected_500x10_s']:.1f} s")


if __name__ == "__main__":
    raise SystemExit(main())
