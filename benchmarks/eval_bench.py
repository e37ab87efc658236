"""Evaluation generation for one model, whole: 500 prompts x 10 samples x 100 tokens plus the
greedy reply of each prompt, through `generation.sample` in the order `polychromic evaluate`
calls it (evaluation/run.py: per chunk of eval.batch_size // k prompts, the k samples, then the
greedy reply), with the shipped Qwen3-8B evaluation settings (`_qwen3_8b.yaml`: k = 10,
T = 0.7, batch_size 512).

The model is the Qwen3-8B shape with random bf16 weights and a LoRA r=16 on the seven
projections (bench_models.py; nothing is downloaded). A random-weight model ends replies at
random, so every call asks for the full 100 tokens (min_new_tokens = 100): the most work a
model can ask for. The prompts are synthetic tweets through the chat template.

Each variant runs the whole pass twice: `cold` (the first pass of the process compiles and
captures its shapes) and `warm` (the steady state, what a second model costs). Variants:

  shipped  generation.fast.chunk_cap as shipped: a chunk that fits a bucket the engine already
           holds at this cache length takes it (its KV cache is paid for)
  former   the rule before it: the chunk size from the free memory alone, so the memory the
           first call's bucket took can send the next call to a new, smaller bucket

Between variants the engine is released (its buckets, graphs and merged copy freed). Per call
the JSON records the seconds and the sampler's stats (chunks, rows per chunk, capture time).

    PYTHONPATH=src python benchmarks/eval_bench.py --out OUTDIR               # on the GPU (~3 min)
    PYTHONPATH=src python benchmarks/eval_bench.py --shape tiny --prompts 24  # CPU smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models as bm  # noqa: E402

from polychromic.config import load_config  # noqa: E402
from polychromic.data import render_prompt  # noqa: E402
from polychromic.evaluation.run import chunk_seed, sampling_params  # noqa: E402
from polychromic.generation import fast as fastgen  # noqa: E402
from polychromic.generation import sample  # noqa: E402
from polychromic.io import atomic_write_json  # noqa: E402

CONFIG = "polychromic_1.0_moderate"
VARIANTS = ("shipped", "former")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


SHIPPED_CHUNK_CAP = fastgen.chunk_cap


def former_chunk_cap(total, batch_size, free, kv_per_row, temp_per_row, held=()):
    """The chunk size before held buckets counted: free memory alone."""
    return SHIPPED_CHUNK_CAP(total, batch_size, free, kv_per_row, temp_per_row, held=())


def one_pass(model, tok, cfg, ids: list[list[int]]) -> dict:
    """Every chunk's k samples then greedy replies, as evaluation/run.py calls them."""
    k, size = cfg.eval.k, max(1, cfg.eval.batch_size // cfg.eval.k)
    full = dict(min_new_tokens=cfg.eval.max_new_tokens)
    sp = dataclasses.replace(sampling_params(cfg, greedy=False), **full)
    gp = dataclasses.replace(sampling_params(cfg, greedy=True), **full)
    calls = []
    sync()
    t0 = time.perf_counter()
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        for kind, n, params, seed in (("sample", k, sp, chunk_seed(cfg.seed, [str(start)])), ("greedy", 1, gp, None)):
            sync()
            c0 = time.perf_counter()
            out = sample(model, tok, chunk, n, params, seed=seed, batch_size=cfg.eval.batch_size)
            sync()
            if any(len(c.ids) != cfg.eval.max_new_tokens for r in out for c in r):
                raise RuntimeError(f"{kind}: a reply is not {cfg.eval.max_new_tokens} tokens long")
            stats = {key: fastgen.last_stats.get(key) for key in ("chunks", "chunk_rows", "bucket_rows", "capture_s", "prefill_s", "decode_s")}
            calls.append({"kind": kind, "prompts": len(chunk), "rows": len(chunk) * n, "seconds": time.perf_counter() - c0, **stats})
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "sample_s": sum(c["seconds"] for c in calls if c["kind"] == "sample"),
            "greedy_s": sum(c["seconds"] for c in calls if c["kind"] == "greedy"),
            "captures": sum(1 for c in calls if (c["capture_s"] or 0) > 0.05),
            "buckets": sorted({c["bucket_rows"] for c in calls if c["bucket_rows"] is not None}), "calls": calls}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(bm.SHAPES), default="8b")
    ap.add_argument("--prompts", type=int, default=500)
    ap.add_argument("--variants", default="shipped,former", help=f"comma list of {', '.join(VARIANTS)}, run in that order")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)
    variants = bm.comma_list(ap, "--variants", args.variants, VARIANTS)
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    base, tok = bm.build_model(args.shape, dev, dtype)
    model = bm.with_adapter(base).eval()  # B non-zero: the merge does real work
    cfg = load_config(CONFIG, [])
    work = Path(tempfile.mkdtemp(prefix="eval_bench_"))
    prep = bm.write_tweets(work / "prepared", 3 * args.prompts, bm.SHAPES[args.shape]["vocab_size"], seed=2)
    texts = list(dict.fromkeys(json.loads(x)["prompt"] for x in (prep / "train.jsonl").read_text().splitlines()))
    if len(texts) < args.prompts:
        raise ValueError(f"{len(texts)} distinct synthetic prompts, {args.prompts} asked for")
    ids = [render_prompt(tok, cfg.data, t) for t in texts[: args.prompts]]
    res: dict = {"shape": args.shape, "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                 "host": bm.host(), "prompts": len(ids), "k": cfg.eval.k, "temperature": cfg.eval.temperature,
                 "batch_size": cfg.eval.batch_size, "max_new_tokens": cfg.eval.max_new_tokens,
                 "total_gib": torch.cuda.get_device_properties(dev).total_memory / 2**30 if cuda else None, "variants": {}}
    for v in variants:
        fastgen.release(model)
        fastgen.chunk_cap = SHIPPED_CHUNK_CAP if v == "shipped" else former_chunk_cap
        try:
            res["variants"][v] = {phase: one_pass(model, tok, cfg, ids) for phase in ("cold", "warm")}
        finally:
            fastgen.chunk_cap = SHIPPED_CHUNK_CAP
        for phase, r in res["variants"][v].items():
            print(f"{v:8s} {phase}: {r['seconds']:.1f} s (samples {r['sample_s']:.1f} s, greedy {r['greedy_s']:.1f} s), "
                  f"{r['captures']} calls captured, buckets {r['buckets']}", flush=True)
    if args.out:  # atomic_write_json makes the folder
        print(f"wrote {atomic_write_json(Path(args.out) / 'eval_bench.json', res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
