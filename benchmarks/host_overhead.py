"""Host time of the module walks at the start of the training passes, on the Qwen3-8B module
structure: 36 decoder layers with a LoRA on the seven projections through the trainer's fast
LoRA path (about 3,000 modules). The cost of a walk is its number of modules, not their widths,
so the layers are 64 wide and the whole thing runs on a CPU in seconds.

At the start of a pass the GPU has nothing queued, so this host time is GPU idle time: on an
H100 the policy-gradient pass's profile showed a 5.3 ms gap between the index op that starts
`token_logprobs` and the model's first kernel; on a CPU, the same stretch of the 36-layer
structure took 6.2 ms of host time, most of it in `packed_forward`'s gradient-checkpointing test
(cProfile). Per call, median of --repeats, the shipped code beside the former in one process:

  checkpointing  packed.unsupported's gradient-checkpointing test, made by every packed pass
                 (SFT micro-batches and the recompute) and by rollout_term's packing choice:
                 shipped packed.checkpointing (the model's, decoder's and layers' flags) against
                 transformers' is_activation_checkpointing (a walk over every module)
  dropout_off    entering and leaving polychromic.dropout_off, once per policy-gradient term:
                 shipped (dropout_modules: one walk, a cheap test per module) against the same
                 with the former walk swapped in (two walks, getattr on every module)

and the sums per step: an SFT-only step makes one packed pass; a polychromic step one packed
SFT pass, the packing choice, one recompute pass and dropout_off. Then the scoring of one
policy-gradient term (the shipped moderate config's objective, 8 prompts x 5 replies, an
encoder stand-in whose own time is left out):

  scoring        the host's work on the term's scores and advantages from the first encoder
                 call on: on a GPU that call's copy waits for the queued forward, so this is
                 work done while the GPU has nothing queued; shipped score_rollouts (the guards
                 and word counts before one encoder call) against the former (the replies
                 embedded first, the prompts in a second call, the text work after both)

and what the run's logging costs per step where the run directory lives (--work):

  monitor_log    Monitor.log per step (a metrics.jsonl row appended and fsynced, state.json
                 rewritten atomically): median and 90th percentile, and the time in os.fsync

    PYTHONPATH=src python benchmarks/host_overhead.py --out OUTDIR [--work RUNS_FOLDER]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models as bm  # noqa: E402
import step_bench as sb  # noqa: E402

from polychromic.config import load_config  # noqa: E402
from polychromic.io import atomic_write_json  # noqa: E402
from polychromic.training import fast_lora, packed  # noqa: E402
from polychromic.training.objectives import polychromic as poly  # noqa: E402


def former_dropout_modules(model) -> tuple[list, list]:
    """polychromic.dropout_modules as it was: two walks, getattr on every module."""
    drops = [(m, m.p) for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.training]
    rates = [(m, m.attention_dropout) for m in model.modules() if isinstance(getattr(m, "attention_dropout", None), float)
             and m.attention_dropout > 0]
    return drops, rates


@contextmanager
def former_walk():
    """dropout_off with the former walk swapped in; the shipped one restored after."""
    shipped = poly.dropout_modules
    poly.dropout_modules = former_dropout_modules
    try:
        yield
    finally:
        poly.dropout_modules = shipped


def library_checkpointing(base) -> bool:
    """transformers' own answer, a walk over every module: is_activation_checkpointing, named
    is_gradient_checkpointing in the releases before it."""
    name = "is_activation_checkpointing" if hasattr(type(base), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return getattr(base, name)


def former_score_rollouts(ro, embedder, cfg):
    """polychromic.score_rollouts as it was: the replies embedded first, then the guards and the
    prompts (a second encoder call), the word counts last."""
    embed = poly._memo(embedder)
    flat_prompts = [p for p, group in zip(ro.prompt_texts, ro.texts) for _ in group]
    flat_texts = [t for group in ro.texts for t in group]
    flat_finished = [f for group in ro.finished for f in group]
    if embed is not None and cfg.diversity_metric in ("semantic", "semantic_distinct"):
        embed(flat_texts)
    q = poly.score_quality(flat_prompts, flat_texts, flat_finished, embed, cfg).reshape(ro.m, ro.n)
    dist = np.stack([poly.distance_matrix(group, cfg.diversity_metric, embed) for group in ro.texts])
    iu = np.triu_indices(ro.n, k=1)
    logs = {"train/diversity_score": float(np.mean([dm[iu].mean() for dm in dist])),
            "train/quality_mean": float(q.mean()),
            "train/avg_unique_words": float(np.mean([len(set(poly.words(t))) for t in flat_texts]))}
    return q, dist, logs


def synthetic_rollouts(m: int = 8, n: int = 5, seed: int = 0):
    """M tweet-like prompts with N finished replies of 12 to 40 words each (seeded)."""
    from polychromic.generation import SamplingParams
    from polychromic.training.rollout import Rollouts

    rng = random.Random(seed)
    vocab = ("the a my your this that cat dog coffee rain city game team song show love hate think know "
             "today tomorrow great bad new old really never always why how what when").split()

    def sentence(k: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(k)) + rng.choice([".", "!", "?"])

    texts = [[sentence(rng.randint(12, 40)) for _ in range(n)] for _ in range(m)]
    return Rollouts(prompt_texts=[sentence(20) for _ in range(m)], prompt_ids=[[1]] * m, completion_ids=[[[1]] * n] * m,
                    finished=[[True] * n] * m, texts=texts, params=SamplingParams(), seed=seed, seconds=0.0)


def encoder(texts) -> np.ndarray:
    """A stand-in sentence encoder: a fixed 384-dimensional vector per text."""
    return np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(384) for t in texts])


def scoring_ms(score, ro, cfg, repeats: int, calls: int = 20) -> tuple[float, int]:
    """(median host ms of a term's scoring and advantages from the first encoder call on, the
    encoder's own time left out; encoder calls per term)."""
    def once() -> tuple[float, int]:
        first, inside, n = None, 0.0, 0

        def embed(texts):
            nonlocal first, inside, n
            t0 = time.perf_counter()
            first = t0 if first is None else first
            out = encoder(texts)
            inside, n = inside + time.perf_counter() - t0, n + 1
            return out

        q, dist, _ = score(ro, embed, cfg.objective)
        rng = np.random.default_rng(ro.seed)
        np.stack([poly.advantage_parts(q[i], dist[i], cfg.objective, cfg.set_size, rng)["total"] for i in range(ro.m)])
        return (time.perf_counter() - first - inside) * 1e3, n

    runs = [once() for _ in range(repeats * calls)]
    return statistics.median(r[0] for r in runs), runs[0][1]


def monitor_log_ms(folder: Path, steps: int = 200) -> dict:
    """Monitor.log over `steps` steps of a run directory made under `folder` (removed after),
    with a row of the trainer's size: ms per step (median, 90th percentile) and ms in os.fsync."""
    from polychromic.config import config_from_dict
    from polychromic.training.monitor import Monitor

    folder.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="monitor_", dir=folder))
    values = {f"train/value_{i}": 1.0 + i for i in range(16)} | {"train/quality_loss": 2.0, "train/combined_loss": 1.9}
    real_fsync, in_fsync = os.fsync, []

    def timed_fsync(fd):
        t0 = time.perf_counter()
        real_fsync(fd)
        in_fsync.append(time.perf_counter() - t0)

    times = []
    os.fsync = timed_fsync
    try:
        with Monitor(run_dir, config_from_dict({"experiment": "host_overhead"}), total_steps=steps + 1) as mon:
            in_fsync.clear()
            for step in range(1, steps + 1):
                t0 = time.perf_counter()
                mon.log(step, values)
                times.append(time.perf_counter() - t0)
            fsync_s = sum(in_fsync)
            mon.close("done")
    finally:
        os.fsync = real_fsync
        shutil.rmtree(run_dir, ignore_errors=True)
    times.sort()
    return {"folder": str(folder), "steps": steps, "median_ms": statistics.median(times) * 1e3,
            "p90_ms": times[int(0.9 * len(times))] * 1e3, "fsync_ms_per_step": fsync_s / steps * 1e3}


def per_call_ms(fn, repeats: int, calls: int = 20) -> float:
    """step_bench.median_of over `repeats` of `calls` calls, per call, in ms."""
    return sb.median_of(lambda: [fn() for _ in range(calls)], repeats)[0] / calls * 1e3


def model_of(layers: int):
    """The Qwen3-8B module structure at 64 wide, with the benchmarks' LoRA (dropout 0.1, as
    shipped: every LoRA layer has a Dropout to switch) on the trainer's fast path."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    shape = dict(bm.SHAPES["8b"], vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, num_hidden_layers=layers)
    model = bm.with_adapter(Qwen3ForCausalLM(Qwen3Config(**shape)))
    fast_lora.install(model)
    return model.train()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=36, help="decoder layers (Qwen3-8B: 36)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--work", default=tempfile.gettempdir(), help="where the logging's run directory is made "
                    "(the filesystem training runs write to)")
    args = ap.parse_args(argv)
    model = model_of(args.layers)
    base = model.get_base_model()
    res: dict = {"layers": args.layers, "modules": sum(1 for _ in model.modules()), "host": bm.host(),
                 "torch": torch.__version__, "repeats": args.repeats}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecated gradient_checkpointing_* names
        for on in (True, False):  # the same answer, on and off
            base.gradient_checkpointing_enable() if on else base.gradient_checkpointing_disable()
            if packed.checkpointing(base) != library_checkpointing(base):
                raise RuntimeError(f"packed.checkpointing disagrees with transformers with checkpointing {on}")

    def dropout_off():
        with poly.dropout_off(model):
            pass

    def dropout_off_former():
        with former_walk(), poly.dropout_off(model):
            pass

    ms = {
        "checkpointing": {"shipped": per_call_ms(lambda: packed.checkpointing(base), args.repeats),
                          "former": per_call_ms(lambda: library_checkpointing(base), args.repeats)},
        "dropout_off": {"shipped": per_call_ms(dropout_off, args.repeats),
                        "former": per_call_ms(dropout_off_former, args.repeats)},
    }
    for way in ("shipped", "former"):
        check, drop = ms["checkpointing"][way], ms["dropout_off"][way]
        ms.setdefault("sft_step", {})[way] = check
        ms.setdefault("polychromic_step", {})[way] = 3 * check + drop
    res["ms_per_call"] = ms
    cfg = load_config("polychromic_1.0_moderate")
    ro = synthetic_rollouts(cfg.rollout.max_examples_for_diversity, cfg.rollout.n_generations)
    res["scoring"] = {"rollouts": f"{ro.m} x {ro.n}", "quality": cfg.objective.quality, "diversity_metric": cfg.objective.diversity_metric}
    for way, score in (("shipped", poly.score_rollouts), ("former", former_score_rollouts)):
        t, calls = scoring_ms(score, ro, cfg, args.repeats)
        res["scoring"][way] = {"ms_after_first_encoder_call": t, "encoder_calls": calls}
    same = [np.array_equal(a, b) for a, b in zip(poly.score_rollouts(ro, encoder, cfg.objective)[:2],
                                                  former_score_rollouts(ro, encoder, cfg.objective)[:2])]
    if not all(same):
        raise RuntimeError("the shipped and former scoring disagree on the same rollouts")
    res["monitor_log"] = monitor_log_ms(Path(args.work))
    for name, row in ms.items():
        print(f"{name:16s} shipped {row['shipped']:8.3f} ms   former {row['former']:8.3f} ms", flush=True)
    for way in ("shipped", "former"):
        sc = res["scoring"][way]
        print(f"scoring {way:8s} {sc['ms_after_first_encoder_call']:8.3f} ms from the first encoder call on, "
              f"{sc['encoder_calls']} encoder call(s)", flush=True)
    ml = res["monitor_log"]
    print(f"monitor.log      {ml['median_ms']:8.3f} ms per step (p90 {ml['p90_ms']:.3f}), of which os.fsync "
          f"{ml['fsync_ms_per_step']:.3f} ms, in {ml['folder']}", flush=True)
    print(f"{res['modules']} modules, {args.layers} layers; host {res['host']['cpu']}", flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        print(f"wrote {atomic_write_json(Path(args.out) / 'host_overhead.json', res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
