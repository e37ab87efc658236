"""TRL GRPOTrainer with the polychromic set-level reward, on the embedded SmolLM2-135M-Instruct.

Settings come from one of our configs (default `demo/polychromic`: model, LoRA, chatterbot data,
objective, N, temperature, max_generation_length); `PolychromicReward.grpo_settings()` turns them
into the GRPOConfig under which TRL's step is exactly lambda x our div_loss (docs/trl.md).

    python examples/trl_grpo.py                        # CPU: a few minutes (docs/trl.md)
    python examples/trl_grpo.py --max-steps 2 --max-completion-length 16   # the smallest run
    python examples/trl_grpo.py --set rollout.n_generations=8 --prompts-per-step 4
    python examples/trl_grpo.py --vllm                 # GPU: vLLM generation (colocated)

Writes OUTPUT_DIR/adapter (the LoRA adapter) and OUTPUT_DIR/log_history.jsonl (TRL's logs, one
line per step: loss, rewards/polychromic/mean (0: the set advantages of a group sum to 0),
polychromic/diversity_score, polychromic/quality_mean, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="demo/polychromic", help="our config: a shipped name or a YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--output-dir", default="runs/trl_grpo")
    p.add_argument("--max-steps", type=int, default=4, help="optimizer steps")
    p.add_argument("--prompts-per-step", type=int, default=2, help="prompts per optimizer step (each gets N completions)")
    p.add_argument("--max-completion-length", type=int, default=None,
                   help="max new tokens = L_norm (default: the config's rollout.max_generation_length)")
    p.add_argument("--vllm", action="store_true", help="generate with vLLM (colocated on the training GPU)")
    return p.parse_args(argv)


def training_prompts(cfg, out: Path, count: int) -> list[str]:
    """`count` distinct training prompts of the config's data (prepared under OUT/data if the
    config's prepared_dir does not exist yet)."""
    from polychromic.data import load_split, prepare

    prepared = Path(cfg.data.prepared_dir)
    if not (prepared / "manifest.json").is_file():
        prepared = Path(prepare(cfg.data, cfg.seed, out_dir=str(out / "data"))["out_dir"])
    prompts = list(dict.fromkeys(row["prompt"] for row in load_split(prepared, "train")))
    if len(prompts) < count:
        raise SystemExit(f"{prepared}: {len(prompts)} distinct training prompts, {count} needed (--max-steps x --prompts-per-step)")
    return prompts[:count]


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from polychromic.config import load_config
    from polychromic.integrations.trl import PolychromicReward
    from polychromic.io import atomic_write_text
    from polychromic.models import load_base_model, load_tokenizer, pick_device

    cfg = load_config(args.config, args.set)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.trainer.device)
    tok = load_tokenizer(cfg.model)
    model = load_base_model(cfg.model, device)
    reward = PolychromicReward.from_config(cfg, tokenizer=tok, model=model, relevance_column="raw_prompt")
    n = reward.num_generations

    raw = training_prompts(cfg, out, args.max_steps * args.prompts_per_step)

    # The user turn as our trainer renders it (data.render_prompt: template, optional system turn).
    def messages(p: str) -> list[dict]:
        system = [{"role": "system", "content": cfg.data.system_prompt}] if cfg.data.system_prompt else []
        return system + [{"role": "user", "content": cfg.data.template.replace("{prompt}", p)}]

    dataset = Dataset.from_dict({"prompt": [messages(p) for p in raw], "raw_prompt": raw})

    settings = reward.grpo_settings()  # loss_type dr_grpo, scale_rewards none, num_iterations 1, ...
    if args.max_completion_length is not None:
        settings["max_completion_length"] = args.max_completion_length
    scale = {}
    if args.vllm:
        # At scale: vLLM samples (its kernels differ slightly from the trainer's, so TRL reweights
        # the loss by a truncated importance ratio; keep it on). Server mode instead: run
        # `trl vllm-serve --model ...` on other GPUs and set vllm_mode="server".
        scale = dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
                     vllm_importance_sampling_correction=True)
    on_gpu = device.type == "cuda"
    grpo_args = GRPOConfig(
        output_dir=str(out / "trl"),
        # One generation per optimizer step, all on-policy: every micro-batch holds whole groups.
        per_device_train_batch_size=args.prompts_per_step * n,
        gradient_accumulation_steps=1,
        max_steps=args.max_steps,
        learning_rate=cfg.trainer.lr,
        lr_scheduler_type=cfg.trainer.lr_scheduler,
        warmup_steps=cfg.trainer.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the steps
        weight_decay=cfg.trainer.weight_decay,
        max_grad_norm=cfg.trainer.max_grad_norm,
        seed=cfg.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=not on_gpu,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        chat_template_kwargs={"enable_thinking": False},  # as data.render_prompt (Qwen3 templates)
        **settings,
        **scale,
    )
    reward.check(grpo_args)  # raises on any setting under which TRL's step is not ours
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=grpo_args, train_dataset=dataset,
                          processing_class=tok, peft_config=lora)
    t_train = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t_train
    trainer.model.save_pretrained(str(out / "adapter"))
    history = [row for row in trainer.state.log_history if "loss" in row]
    atomic_write_text(out / "log_history.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    last = history[-1] if history else {}
    print(
        f"{len(history)} steps of {args.prompts_per_step} prompts x {n} completions in {seconds:.0f} s of training "
        f"({time.perf_counter() - t0:.0f} s in all); last step: rewards/polychromic/mean="
        f"{last.get('rewards/polychromic/mean', float('nan')):.2e}, diversity_score="
        f"{last.get('polychromic/diversity_score', float('nan')):.3f}, quality_mean="
        f"{last.get('polychromic/quality_mean', float('nan')):.3f}; adapter: {out / 'adapter'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
