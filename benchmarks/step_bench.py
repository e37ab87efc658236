"""One polychromic optimizer step on the Qwen3-8B shape, stage by stage, each against its floor.

The trainer's own functions on the trainer's setup: random bf16 weights (bench_models.py),
LoRA r=16 / alpha 16 / dropout 0.1 on the seven projections (models.attach_lora, train mode),
the shipped moderate config (N = 5, M = 8, T = 0.9, 100 new tokens) with objective.quality=constant
(a random model's replies are all truncated, which would zero every advantage; see
moderate_run.py). --compile routes the decoder layers' training passes through torch.compile
(trainer.compile); SDPA's cuDNN backend is left out unless --cudnn-attention, as the trainer
does (trainer.cudnn_attention). The allocator is set up as the trainer does it (expandable segments unless
--no-expandable-segments or the environment sets it; training/allocator.py). Stages, in one
process:

  ceilings   device-to-device copy (bytes read + written), bf16 8192^3 matmul on random data
  rollouts   generation.sample through generate_rollouts (8 x 5 x 100): first call, median of 3
  optimizer  the trainer's bookkeeping after the two backwards on the 43.6 M adapter parameters
             (each term's gradient norm, their sum, clip_grad_norm_, AdamW step): the trainer's
             (fused AdamW on CUDA, multi-tensor norms and sum) beside the former (multi-tensor
             AdamW, a norm and an add per tensor), in optimizer_ab
  then for each LoRA path of --lora in turn (fast: training/fast_lora.py, the trainer's default;
  peft: peft's own layer forward), side by side in the table:
  pg         rollout_term's score + recompute + backward over the 40 sequences: batched across
             groups (the default), and one prompt group per pass (rollout.recompute_rows=5, the
             former schedule), each with its first call, passes and peak memory
  sft        16 x 256 tokens (128 prompt + 128 reply) in one pass (the shipped setting) and as
             4 micro-batches of 4 with gradient checkpointing (the former one)
  step       the whole optimizer step in the trainer's order (SFT, rollouts, pg, norms, clip, AdamW),
             repeats + 1 times (every total kept; the median leaves out the first)
  and, on the first path:
  sdpa       attention with padding (sdpa_probes.py): which SDPA kernels return NaN on a fully
             masked query row (what left padding makes), and whether a left-padded (TRL's
             layout) or a right-padded (rollout.pack's) batch gives finite LoRA gradients
  eval       evaluation sampling, 50 prompts x 10 samples x 100 tokens in one 500-row chunk
             (eval.batch_size 512), projected to 500 prompts x 10 samples

Floors: a decode step reads the projection + lm_head weights and the KV of the real context once
(bytes / copy bandwidth); prefill, SFT and the policy-gradient pass are matmul work over the
measured peak: 4 x linear parameters x tokens (forward 2 + input-gradient backward 2; frozen
weights need no weight gradient; the usual 6N convention counts a recompute on top) + the
lm_head at the positions whose logits are used + attention 8 x layers x heads x head_dim x
seq per token (PaLM app. B, without recompute); the optimizer reads p, g, m, v and writes p, m, v.

    PYTHONPATH=src python3 benchmarks/step_bench.py                       # on the GPU
    PYTHONPATH=src python benchmarks/step_bench.py --shape tiny --repeats 1 --skip eval   # CPU smoke test

Writes <--name>.json (default step_bench.json) to --out (default $OUT) and prints a table last,
one column pair per LoRA path.
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
from torch.nn.utils import get_total_norm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models as bm  # noqa: E402

from polychromic.config import load_config  # noqa: E402
from polychromic.data import render_prompt  # noqa: E402
from polychromic.generation import SamplingParams, sample  # noqa: E402
from polychromic.io import atomic_write_json  # noqa: E402
from polychromic.models import load_embedder  # noqa: E402
from polychromic.training.loop import _set_grads, _take_grads, make_optimizer  # noqa: E402
from polychromic.training.objectives import polychromic as poly  # noqa: E402
from polychromic.training.objectives.sft import ce_loss, count_targets  # noqa: E402
from polychromic.training import fast_lora  # noqa: E402
from polychromic.training.allocator import ENV_NAMES, configure_allocator  # noqa: E402
from polychromic.training.compiled import compile_layers  # noqa: E402
from polychromic.training.rollout import generate_rollouts, rollout_seed  # noqa: E402
from sdpa_probes import probes, set_attention  # noqa: E402,F401 - trl_peer.py uses set_attention from here

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


def matmul_floor(counts: dict, cfg, seqs: list[int], logit_positions: int, peak: float, recompute: bool = False,
                 shared: list[int] = ()) -> float:
    """Seconds of a LoRA forward + backward over sequences of the given lengths (module docstring).
    shared[i]: the leading tokens of sequence i that a pass does not run again (a prompt it
    shares with an earlier sequence, rollout.share_prompts); its queries still attend to them."""
    shared = list(shared) or [0] * len(seqs)
    tokens = sum(seqs) - sum(shared)
    per_weight = 6 if recompute else 4
    pairs = sum(s * s - p * p for s, p in zip(seqs, shared))
    attn = (12 if recompute else 8) * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * pairs / 2
    return (per_weight * (counts["body_linear"] * tokens + counts["lm_head"] * logit_positions) + attn) / peak


def shared_prefixes(ro) -> list[int]:
    """Per recomputed sequence (prompt by prompt, sample by sample): the prompt tokens a packed
    pass with shared prompts does not run again (all but the first sample's)."""
    return [len(p) if j else 0 for p, group in zip(ro.prompt_ids, ro.completion_ids) for j in range(len(group))]


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


def sft_examples(vocab: int, rows: int, shortest: int, longest: int, seed: int = 0) -> list[dict]:
    """`rows` encoded examples of random token ids, lengths drawn uniformly in [shortest, longest]
    (seeded), the first half of each a prompt (labels -100): micro-batches with padding, as real
    data gives them, for data.collate / collate_packed."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(shortest, longest + 1, (rows,), generator=g).tolist()
    out = []
    for n in lens:
        ids = torch.randint(4, vocab, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (n // 2) + ids[n // 2 :]})
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


def whole_step(model, tok, cfg, embedder, micro, texts, prompt_ids, opt, params, step: int) -> dict:
    sync()
    marks = [("start", time.perf_counter())]

    def mark(name):
        sync()
        marks.append((name, time.perf_counter()))

    sft_pass(model, micro)
    g_ce = _take_grads(params, ONE)
    get_total_norm(g_ce)  # the trainer logs each term's gradient norm
    mark("sft")
    ro = generate_rollouts(model, tok, texts, prompt_ids, cfg.rollout, rollout_seed(cfg.seed, step))
    mark("rollouts")
    terms = poly.rollout_term(model, ro, embedder, cfg, lambda loss: loss.backward())
    mark("pg")
    g_div = _take_grads(params, ONE)
    get_total_norm(g_div)
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


def setup(shape: str, device, dtype, work: Path, lora: str = "fast"):
    """The model with its LoRA on `lora`'s path (use_lora_path), tokenizer, config, embedder, prompts."""
    base, tok = bm.build_model(shape, device, dtype)
    model = bm.with_adapter(base)
    use_lora_path(model, lora)
    model.train()
    emb_dir = bm.write_embedder(work / "minilm", tiny=shape == "tiny")
    cfg = load_config(CONFIG, ["objective.quality=constant", f"objective.diversity_encoder_model={emb_dir}"])
    embedder = load_embedder(str(emb_dir), device=str(device))
    prep = bm.write_tweets(work / "prepared", 160, bm.SHAPES[shape]["vocab_size"], seed=1)
    import json

    rows = [json.loads(x) for x in (prep / "train.jsonl").read_text().splitlines()]
    texts = list(dict.fromkeys(r["prompt"] for r in rows))
    return model, tok, cfg, embedder, texts


def use_lora_path(model, path: str) -> int:
    """Train the LoRA layers through `path`: "fast" (training/fast_lora.py, the trainer's
    default) or "peft" (peft's own forward). Forgets the recompute's bytes-per-token estimate,
    so each path sizes its passes from its own memory. Returns the layers on the fast path."""
    from polychromic.training import rollout

    rollout._BYTES_PER_TOKEN.pop(model, None)
    if path == "fast":
        return fast_lora.install(model)
    fast_lora.uninstall(model)
    return 0


def allocator_info(cuda: bool) -> dict:
    """The caching allocator's settings as torch parsed them, and how many of its segments are
    expandable."""
    get = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
    out = {"settings": get() if get else None, "env": {k: os.environ.get(k) for k in ENV_NAMES}}
    if cuda:
        segs = torch.cuda.memory._snapshot().get("segments", [])
        out.update(segments=len(segs), expandable=sum(bool(x.get("is_expandable")) for x in segs))
    return out


def lora_stages(model, tok, cfg, embedder, ro, texts, prompt_ids, opt, params, one, skip, repeats: int) -> dict:
    """The stages a LoRA path changes: the policy-gradient term, SFT, the whole step."""
    r: dict = {}
    n = cfg.rollout.n_generations
    variants = {"pg_batched": None} if "old_pg" in skip else {"pg_batched": None, "pg_group_by_group": n}
    for key, rows in variants.items():
        peak_reset()
        info = {}

        def go():
            info.update(pg_pass(model, ro, embedder, cfg, rows))
            model.zero_grad(set_to_none=True)
        first = timed(go)[0]
        t, runs = median_of(go, repeats, warmup=0)
        r[key] = {"seconds": t, "runs": runs, "first_call_s": first, "best_s": min(runs), "passes": info["passes"],
                  "recompute_rows": rows, "peak_gib": peak_gib()}
        print(f"  {key}: {t:.3f} s in {info['passes']} passes (first {first:.3f} s), peak {peak_gib()} GiB", flush=True)
    for key, micro, ckpt in one:
        with_checkpointing(model, ckpt)
        peak_reset()

        def go():
            sft_pass(model, micro)
            model.zero_grad(set_to_none=True)
        t, runs = median_of(go, repeats)
        with_checkpointing(model, False)
        r[key] = {"seconds": t, "runs": runs, "best_s": min(runs), "peak_gib": peak_gib()}
        print(f"  {key}: {t:.3f} s, peak {peak_gib()} GiB", flush=True)
    peak_reset()
    steps = [whole_step(model, tok, cfg, embedder, one[0][1], texts, prompt_ids, opt, params, s) for s in range(repeats + 1)]
    med = sorted(steps[1:], key=lambda x: x["total"])[len(steps[1:]) // 2]  # the first may meet a new shape bucket
    r["step"] = {"median": med, "all_totals": [x["total"] for x in steps[1:]], "first_total": steps[0]["total"],
                 "steps": steps, "peak_gib": peak_gib()}
    print(f"  whole step {med['total']:.3f} s: {[round(x['total'], 3) for x in steps]}", flush=True)
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(bm.SHAPES), default="8b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list: sdpa,old_pg,old_sft,eval")
    ap.add_argument("--lora", default="fast,peft", help="comma list of LoRA paths, each measured in turn: fast,peft")
    ap.add_argument("--no-expandable-segments", action="store_true", help="keep the allocator's default segments")
    ap.add_argument("--compile", action="store_true", help="decoder layers' training passes through torch.compile "
                    "(trainer.compile, the shipped Qwen3-8B setting)")
    ap.add_argument("--cudnn-attention", action="store_true", help="let SDPA pick cuDNN (trainer.cudnn_attention; "
                    "the trainer leaves it out by default)")
    ap.add_argument("--name", default="step_bench", help="the JSON file's stem")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)
    alloc = configure_allocator(not args.no_expandable_segments, "auto")  # what the trainer does, before CUDA starts
    torch.backends.cuda.enable_cudnn_sdp(args.cudnn_attention)  # as train() does with trainer.cudnn_attention
    skip = set(filter(None, args.skip.split(",")))
    paths = bm.comma_list(ap, "--lora", args.lora, ("fast", "peft"))
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    tiny = args.shape == "tiny"
    import peft
    import transformers

    res: dict = {"shape": args.shape, "device": torch.cuda.get_device_name() if cuda else "cpu", "lora_paths": paths,
                 "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                              "python": sys.version.split()[0]}, "allocator_choice": alloc, "host": bm.host()}
    print(res, flush=True)
    bw = copy_bandwidth(dev, (1 << 22) if tiny else (2 << 30))
    peak = matmul_peak(dev, 512 if tiny else 8192, dtype)
    res["ceilings"] = {"copy_bytes_per_s": bw, "matmul_flops_per_s": peak}
    print(f"copy {bw / 1e12:.2f} TB/s, matmul {peak / 1e12:.0f} TFLOP/s", flush=True)

    work = Path(tempfile.mkdtemp(prefix="step_bench_"))
    t, (model, tok, cfg, embedder, texts) = timed(lambda: setup(args.shape, dev, dtype, work, lora=paths[0]))
    res["setup_s"] = t
    res["compiled_layers"] = compile_layers(model) if args.compile else 0
    res["cudnn_attention"] = args.cudnn_attention
    mcfg = model.get_base_model().config
    counts = param_counts(model)
    res["params"] = counts
    params = [p for p in model.parameters() if p.requires_grad]
    m, n, new = cfg.rollout.max_examples_for_diversity, cfg.rollout.n_generations, cfg.rollout.max_generation_length
    all_texts = texts
    texts, prompt_ids = texts[:m], [render_prompt(tok, cfg.data, t) for t in texts[:m]]
    elem = torch.empty((), dtype=dtype).element_size()

    # -- rollouts (no_grad sampling: the same on either LoRA path)
    ro_fn = lambda: generate_rollouts(model, tok, texts, prompt_ids, cfg.rollout, seed=11)  # noqa: E731
    peak_reset()
    first, ro = timed(ro_fn)
    roll, roll_runs = median_of(ro_fn, args.repeats, warmup=0)
    from polychromic.generation import fast as fastgen

    res["rollouts"] = {"seconds": roll, "runs": roll_runs, "first_call_s": first, "tokens": ro.n_tokens(),
                       "fast_stats": dict(fastgen.last_stats) if cuda else None, "peak_gib": peak_gib()}
    res["floors"] = {"rollout": rollout_floor(counts, mcfg, prompt_ids, n, new, bw, peak, elem)}
    seqs = [len(prompt_ids[i]) + len(y) for i in range(m) for y in ro.completion_ids[i]]
    res["floors"]["pg_s"] = matmul_floor(counts, mcfg, seqs, ro.n_tokens(), peak)
    res["floors"]["pg_recompute_s"] = matmul_floor(counts, mcfg, seqs, ro.n_tokens(), peak, recompute=True)
    res["pg_tokens"] = sum(seqs)
    shared = shared_prefixes(ro)
    res["floors"]["pg_shared_s"] = matmul_floor(counts, mcfg, seqs, ro.n_tokens(), peak, shared=shared)
    res["pg_tokens_shared"] = sum(seqs) - sum(shared)
    print(f"rollouts {roll:.3f} s (first {first:.1f} s), floor {res['floors']['rollout']['rollout_s']:.3f} s; {sum(seqs)} pg tokens", flush=True)

    # -- scoring alone (embeddings, distances, advantages)
    def score():
        q, dist, _ = poly.score_rollouts(ro, embedder, cfg.objective)
        return q, dist
    res["score_s"] = median_of(score, args.repeats)[0]

    # -- optimizer (the same on either LoRA path): the trainer's bookkeeping after the two
    # backwards (both terms' norms, their sum, clip, AdamW), with the trainer's optimizer and,
    # side by side, the former one (torch's default multi-tensor AdamW, per-tensor norms)
    grads = [torch.randn_like(p) * 1e-3 for p in params]

    def per_tensor_norm(gs):
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in gs])))

    def opt_step(opt, norm, add):
        g_ce = [g.clone() for g in grads]
        g_div = [g.clone() for g in grads]
        sync()
        t0 = time.perf_counter()
        norm(g_ce), norm(g_div)
        add(params, g_ce, g_div)
        torch.nn.utils.clip_grad_norm_(params, cfg.trainer.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0

    def per_tensor_add(ps, g_ce, g_div):
        for p, a, b in zip(ps, g_ce, g_div):
            p.grad = a + b

    variants = {"shipped": (make_optimizer(params, cfg.trainer.lr, cfg.trainer.weight_decay), get_total_norm, _set_grads),
                "foreach_per_tensor": (torch.optim.AdamW(params, lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay),
                                       per_tensor_norm, per_tensor_add)}
    res["optimizer_ab"] = {}
    for name, (o, norm, add) in variants.items():
        opt_step(o, norm, add)
        res["optimizer_ab"][name] = statistics.median(opt_step(o, norm, add) for _ in range(max(3, args.repeats)))
    res["optimizer_ab"]["fused"] = bool(variants["shipped"][0].defaults["fused"])
    res["optimizer_s"] = res["optimizer_ab"]["shipped"]
    opt = variants["shipped"][0]
    res["floors"]["optimizer_s"] = 7 * 4 * counts["lora"] / bw

    # -- per LoRA path, in turn: the policy-gradient term, SFT, the whole step
    sft_seq, sft_prompt = (64, 32) if tiny else (256, 128)
    one = [("sft_16x256", sft_micro(mcfg.vocab_size, 16, sft_seq, sft_prompt, 1, dev), False)]
    if "old_sft" not in skip:
        one.append(("sft_4x4x256_ckpt", sft_micro(mcfg.vocab_size, 16, sft_seq, sft_prompt, 4, dev), True))
    fl = res["floors"]
    fl["sft_s"] = matmul_floor(counts, mcfg, [sft_seq] * 16, 16 * (sft_seq - sft_prompt), peak)
    fl["step_s"] = fl["sft_s"] + fl["rollout"]["rollout_s"] + fl["pg_s"] + fl["optimizer_s"]
    res["lora"] = {}
    for path in paths:
        layers = use_lora_path(model, path)
        print(f"LoRA path {path} ({layers} layers on the fast path)", flush=True)
        r = res["lora"][path] = lora_stages(model, tok, cfg, embedder, ro, texts, prompt_ids, opt, params, one, skip, args.repeats)
        r["fast_layers"] = layers
        for key in ("pg_batched", "pg_group_by_group"):
            if key in r:
                r[key]["seconds_minus_score"] = r[key]["seconds"] - res["score_s"]
                r[key]["x_floor"] = r[key]["seconds_minus_score"] / fl["pg_s"]
                r[key]["x_floor_shared"] = r[key]["seconds_minus_score"] / fl["pg_shared_s"]
        for key, _, _ in one:
            r[key]["x_floor"] = r[key]["seconds"] / fl["sft_s"]
        r["step"]["x_floor"] = r["step"]["median"]["total"] / fl["step_s"]
    res["allocator"] = allocator_info(cuda)
    use_lora_path(model, paths[0])

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
        print(f"wrote {atomic_write_json(Path(args.out) / f'{args.name}.json', res)}")
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
    fl, paths = res["floors"], res["lora_paths"]
    lora = res["lora"]

    def each(get):
        return [get(lora[p]) if get(lora[p]) is not None else None for p in paths]

    rows = [("rollouts 8 x 5 x 100", [res["rollouts"]["seconds"]] * len(paths), fl["rollout"]["rollout_s"]),
            ("score (embed, distances, advantages)", [res["score_s"]] * len(paths), None),
            ("pg term, batched (score excluded)", each(lambda r: r["pg_batched"]["seconds_minus_score"]), fl["pg_s"]),
            ("pg term, batched, best run", each(lambda r: r["pg_batched"]["best_s"] - res["score_s"]), fl["pg_s"])]
    if "pg_group_by_group" in lora[paths[0]]:
        rows.append(("pg term, group by group (score excl.)", each(lambda r: r["pg_group_by_group"]["seconds_minus_score"]), fl["pg_s"]))
    rows.append(("SFT 16 x 256, one pass", each(lambda r: r["sft_16x256"]["seconds"]), fl["sft_s"]))
    if "sft_4x4x256_ckpt" in lora[paths[0]]:
        rows.append(("SFT 4 x (4 x 256), checkpointing", each(lambda r: r["sft_4x4x256_ckpt"]["seconds"]), fl["sft_s"]))
    rows.append(("norms, sum, clip + AdamW", [res["optimizer_s"]] * len(paths), fl["optimizer_s"]))
    rows.append(("  the same, former (per tensor)", [res["optimizer_ab"]["foreach_per_tensor"]] * len(paths), fl["optimizer_s"]))
    rows.append(("whole polychromic step (median)", each(lambda r: r["step"]["median"]["total"]), fl["step_s"]))
    rows.append(("whole polychromic step (slowest)", each(lambda r: max(r["step"]["all_totals"])), fl["step_s"]))
    head = "".join(f" {p + ' s':>9s} {'x floor':>8s}" for p in paths)
    print(f"\n{'stage':40s} {'floor':>9s}{head}")
    for name, ts, f in rows:
        cells = "".join(f" {t:9.3f} {t / f if f else math.nan:8.2f}" for t in ts)
        print(f"{name:40s} {f if f is not None else math.nan:9.3f}{cells}")
    if "eval" in res:
        print(f"eval 500 x 10 x 100 per model (projected from 50 x 10): {res['eval']['projected_500x10_s']:.1f} s")
    print(f"allocator: {res['allocator']}")


if __name__ == "__main__":
    raise SystemExit(main())
