"""The policy-gradient step against TRL's GRPOTrainer on the same model and work, in one process.

Work per optimizer step, both sides: 8 prompts x 5 samples x 100 new tokens sampled at T = 0.9
(top_p 1, top_k 0), the policy-gradient loss over the 40 completions, one AdamW step on a LoRA
r=16 / alpha 16 / dropout 0.1 on the seven projections of a random-weight Qwen3-8B-shaped model
(bench_models.py; the same seed, so the same weights on both sides). No KL term (TRL's beta = 0,
our kl_beta = 0), no SFT micro-batches on our side (TRL has none). Both sides run in this
process under the trainer's allocator setting (expandable segments; training/allocator.py).

- ours: generate_rollouts + polychromic.rollout_term (objective.quality=constant: set-diversity
  advantages, non-zero in every group) + clip + AdamW, as the trainer does them; median of
  --repeats after a warm-up step (the first call compiles the decode step). With the LoRA
  layers on the trainer's fast path (training/fast_lora.py) and the model's attention as `sdpa`
  (our default) and as `eager` (TRL's setting below), SDPA with every pass padded to a multiple
  of 32 tokens, SDPA without cuDNN's attention and SDPA with the decoder layers compiled
  (trainer.compile, the shipped Qwen3-8B setting) (VARIANTS; --variants), then on peft's own
  layer forward (sdpa). Each step records its pass width, whether the process met it before
  and how many recompute passes it took.
- TRL 1.16 GRPOTrainer, per_device_train_batch_size 40 (all 40 completions in one forward/
  backward), num_generations 5, max_completion_length 100, peft_config as above, the rest TRL's
  defaults (gradient checkpointing on, bf16): (a) as shipped, transformers generate; (b) its best
  setting without vLLM, use_transformers_continuous_batching. A reward that hashes the completion
  text gives non-zero advantages. The step time is read from a TrainerCallback (on_step_begin ->
  on_step_end); the median of steps 2..--trl-steps is reported.
  TRL runs with attn_implementation="eager": with SDPA its first step's gradient norm was NaN
  and the next sampling step failed on the NaN weights. --sdpa-probe runs TRL (generate) for
  two steps under SDPA with torch's choice of backend and again with cuDNN's attention left
  out, recording each step's gradient norm and any error: which kernel the NaN comes from.

    PYTHONPATH=src python3 benchmarks/trl_peer.py                     # GPU, needs trl (see README)
    PYTHONPATH=src python benchmarks/trl_peer.py --shape tiny --repeats 1 --trl-steps 2   # CPU smoke

Writes trl_peer.json to --out (default $OUT) and prints the ratios last.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models as bm  # noqa: E402
import step_bench as sb  # noqa: E402

from polychromic.data import render_prompt  # noqa: E402
from polychromic.prompts import padded_width  # noqa: E402
from polychromic.io import atomic_write_json  # noqa: E402
from polychromic.training.allocator import configure_allocator  # noqa: E402
from polychromic.generation import fast as fastgen  # noqa: E402
from polychromic.training.compiled import compile_layers, uncompile  # noqa: E402
from polychromic.training.loop import make_optimizer  # noqa: E402
from polychromic.training.objectives import polychromic as poly  # noqa: E402
from polychromic.training.rollout import generate_rollouts, packing, rollout_seed  # noqa: E402

LR = 2e-4


NO_CUDNN = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")
VARIANTS = {
    "sdpa": ("sdpa", 1, None, False, None, True),
    "eager": ("eager", 1, None, False, None, True),
    "sdpa_pad32": ("sdpa", 32, None, False, None, True),
    "sdpa_nocudnn": ("sdpa", 1, NO_CUDNN, False, None, True),
    "sdpa_compiled": ("sdpa", 1, None, True, None, True),
    "shipped": ("sdpa", 1, NO_CUDNN, True, None, True),
    "shipped_padded": ("sdpa", 1, NO_CUDNN, True, False, True),
    "shipped_per_sample": ("sdpa", 1, NO_CUDNN, True, None, False),
}
"""Our step's settings: (attn_implementation, trainer.pad_to_multiple_of, the SDPA backends
allowed (None = torch's choice), trainer.compile, rollout.packed_recompute: None, the
default, packs the recompute where the variable-length kernel runs; False pads it;
rollout.share_prompts: a packed recompute runs a prompt once for its samples). pad32 pads every recompute pass to a
multiple of 32 tokens (few distinct shapes); nocudnn leaves cuDNN's attention out of SDPA's
choice; both probe the one-time cost per new pass width that the first steps of a process pay
under SDPA. compiled runs the decoder layers' training passes through torch.compile
(training/compiled.py); its warm-up step compiles. shipped is what the shipped Qwen3-8B configs
run: compiled, without cuDNN's attention (trainer.cudnn_attention false) in training and
sampling alike, as train() sets it; shipped_padded the same with the recompute right-padded
(the setting before packed passes, training/packed.py); shipped_per_sample the same packed, with
a copy of the prompt per sample (the setting before shared prompts)."""


def _backends(names):
    if names is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, n) for n in names])


def ours(args, dev, dtype, work: Path, paths: list[str], variants: list[str]) -> dict:
    """Our step per (LoRA path, attention variant): the first path under every variant, the
    others under sdpa. Each step records its recompute width (the longest prompt + completion,
    padded) and whether the process had met that width before under the same attention setting."""
    model, tok, cfg, embedder, texts = sb.setup(args.shape, dev, dtype, work, lora=paths[0])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, LR, cfg.trainer.weight_decay)  # the trainer's (fused on CUDA)
    m = cfg.rollout.max_examples_for_diversity
    out, seen = {}, set()
    for path, variant in [(paths[0], v) for v in variants] + [(p, "sdpa") for p in paths[1:]]:
        impl, multiple, backends, comp, packed_setting, share = VARIANTS[variant]
        if comp:
            compile_layers(model)
        vcfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, pad_to_multiple_of=multiple),
                                   rollout=dataclasses.replace(cfg.rollout, packed_recompute=packed_setting, share_prompts=share))
        packed = packing(model, packed_setting)
        sb.use_lora_path(model, path)
        sb.set_attention(model, impl)
        fastgen.release(model, empty_cache=False)  # each setting captures its own decode step (in its warm-up step)
        times, parts = [], []
        for step in range(args.repeats + 1):
            sel = [(step * m + i) % len(texts) for i in range(m)]
            t_text = [texts[i] for i in sel]
            ids = [render_prompt(tok, cfg.data, t) for t in t_text]
            sb.sync()
            t0 = time.perf_counter()
            with _backends(backends):  # sampling too, as train() does (the decode graph is captured under it)
                ro = generate_rollouts(model, tok, t_text, ids, cfg.rollout, rollout_seed(cfg.seed, step))
            sb.sync()
            t1 = time.perf_counter()
            passes = []
            with _backends(backends):
                poly.rollout_term(model, ro, embedder, vcfg, lambda loss: (passes.append(1), loss.backward()))
            torch.nn.utils.clip_grad_norm_(params, cfg.trainer.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sb.sync()
            t2 = time.perf_counter()
            width = padded_width(max(len(p) + len(y) for p, g in zip(ro.prompt_ids, ro.completion_ids) for y in g), multiple)
            new = (impl, backends, comp, width) not in seen  # per setting: each has its own kernels
            seen.add((impl, backends, comp, width))
            if step > 0:  # step 0 compiles and captures the decode step
                times.append(t2 - t0)
                parts.append({"rollouts": t1 - t0, "pg_and_optimizer": t2 - t1, "width": width, "new_width": new,
                              "passes": len(passes)})
        if comp:
            uncompile(model)
        med = statistics.median(times)
        out[f"{path}/{variant}"] = {"step_s": med, "steps_s": times, "parts": parts, "lora": path, "attention": impl,
                                    "pad_to_multiple_of": multiple, "sdpa_backends": backends, "compiled": comp,
                                    "packed_recompute": packed, "share_prompts": share}
        print(f"ours ({path} LoRA, {variant}, recompute {'packed' if packed else 'padded'}): {med:.3f} s per step {times}; widths "
              f"{[(p['width'], 'new' if p['new_width'] else 'seen', p['passes']) for p in parts]}", flush=True)
    sb.set_attention(model, "sdpa")
    fastgen.release(model)
    del model, opt, params, embedder
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


class StepTimer:
    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                sb.sync()
                timer.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                sb.sync()
                timer.steps.append(time.perf_counter() - timer.t0)

            def on_log(self, args, state, control, logs=None, **kw):
                if logs:
                    timer.logs.append(dict(logs))

        self.steps, self.logs, self.t0, self.callback = [], [], 0.0, CB()


def reward(prompts, completions, **kw):
    """A reward that depends on the completion text alone (non-zero advantages, no model)."""
    return [zlib.crc32(str(c).encode()) % 1000 / 1000 for c in completions]


def trl_run(args, dev, dtype, work: Path, continuous: bool, attention: str = "eager", cudnn: bool = True,
            steps: int | None = None) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    base, tok = bm.build_model(args.shape, dev, dtype)
    sb.set_attention(base, attention)
    texts = [r["prompt"] for r in _rows(work, args.shape)]
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"Generate an engaging Twitter reply to this tweet:\n\n{t}\n\nReply:"}]
                                         for t in texts]})
    cuda = dev.type == "cuda"
    cfg = GRPOConfig(
        output_dir=str(work / ("trl_cb" if continuous else "trl")), per_device_train_batch_size=40, gradient_accumulation_steps=1,
        num_generations=5, max_completion_length=100, temperature=0.9, top_p=1.0, top_k=0, learning_rate=LR, beta=0.0,
        max_steps=steps or args.trl_steps, logging_steps=1, report_to="none", save_strategy="no", seed=42, bf16=cuda,
        use_cpu=not cuda, use_transformers_continuous_batching=continuous, disable_tqdm=True,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(model=base, reward_funcs=reward, args=cfg, train_dataset=data, processing_class=tok,
                          peft_config=LoraConfig(r=16, lora_alpha=16, lora_dropout=0.1, target_modules=bm.TARGETS, task_type="CAUSAL_LM"),
                          callbacks=[timer.callback])
    t0 = time.perf_counter()
    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    try:
        trainer.train()
        error = None
    except Exception as exc:  # a measured outcome of this setting: recorded and reported
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)
    wall = time.perf_counter() - t0
    later = timer.steps[1:]
    res = {"continuous_batching": continuous, "attention": attention, "cudnn_attention": cudnn, "steps_s": timer.steps, "step_s": statistics.median(later) if later else None,
           "train_wall_s": wall, "error": error, "grad_norms": [lg.get("grad_norm") for lg in timer.logs if "grad_norm" in lg],
           "logs": timer.logs}
    print(f"TRL ({'continuous batching' if continuous else 'generate'}, {attention}{'' if cudnn else ' without cuDNN'}): "
          f"{res['step_s']} s per step {timer.steps} grad norms {res['grad_norms']} error={error}", flush=True)
    del trainer, base
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


def _rows(work: Path, shape: str) -> list[dict]:
    import json

    prep = bm.write_tweets(work / "prepared", 64, bm.SHAPES[shape]["vocab_size"], seed=1)
    rows = [json.loads(x) for x in (prep / "train.jsonl").read_text().splitlines()]
    seen, out = set(), []
    for r in rows:
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            out.append(r)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(bm.SHAPES), default="8b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trl-steps", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list: cb")
    ap.add_argument("--lora", default="fast,peft", help="our LoRA paths, comma list: fast (the trainer's default), peft")
    ap.add_argument("--variants", default="sdpa,eager,sdpa_pad32,sdpa_nocudnn,sdpa_compiled",
                    help=f"attention variants of the first LoRA path, comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--sdpa-probe", action="store_true", help="also TRL under SDPA, with and without cuDNN (2 steps each)")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)
    alloc = configure_allocator(True, "auto")  # as the trainer does, before CUDA starts; TRL runs under the same
    paths = bm.comma_list(ap, "--lora", args.lora, ("fast", "peft"))
    variants = bm.comma_list(ap, "--variants", args.variants, VARIANTS)
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    import trl

    work = Path(tempfile.mkdtemp(prefix="trl_peer_"))
    res: dict = {"shape": args.shape, "device": torch.cuda.get_device_name() if cuda else "cpu", "trl": trl.__version__,
                 "torch": torch.__version__, "allocator_choice": alloc, "host": bm.host()}
    res["ours"] = ours(args, dev, dtype, work, paths, variants)
    res["trl_generate"] = trl_run(args, dev, dtype, work, continuous=False)
    if "cb" not in args.skip:
        res["trl_continuous_batching"] = trl_run(args, dev, dtype, work, continuous=True)
    if args.sdpa_probe:
        res["trl_sdpa_probe"] = {"sdpa": trl_run(args, dev, dtype, work, False, attention="sdpa", steps=2),
                                 "sdpa_nocudnn": trl_run(args, dev, dtype, work, False, attention="sdpa", cudnn=False, steps=2)}
    print("\n== per optimizer step, 8 x 5 x 100 rollouts + policy gradient over 40 + AdamW ==")
    for name, o in res["ours"].items():
        print(f"ours, {name:22s} {o['step_s']:7.3f} s")
    res["ratios"] = {}
    for key in ("trl_generate", "trl_continuous_batching"):
        r = res.get(key)
        if r and r["step_s"]:
            res["ratios"][key] = {name: r["step_s"] / o["step_s"] for name, o in res["ours"].items()}
            print(f"{key:28s} {r['step_s']:7.2f} s  = " + ", ".join(f"{x:5.1f} x ours ({name})" for name, x in res["ratios"][key].items()))
        elif r:
            print(f"{key:28s} failed: {r['error']}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        print(f"wrote {atomic_write_json(Path(args.out) / 'trl_peer.json', res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
