"""`polychromic train`: LoRA SFT plus the configured objective's rollout term, data-parallel.

`train(cfg, resume)` reads top to bottom like nanochat's chat_rl.py: per optimizer step, the
micro-batches' cross-entropy (normalised by the target tokens of the whole accumulated batch over
all processes), then, every `compute_diversity_every_n_steps` steps, M prompts of the step's batch
-> ONE batched generate call of M x N rollouts -> the objective's term, backpropagated; then clip,
AdamW step on the LoRA parameters, scheduler, log, checkpoint. The maths lives in objectives/.

Data parallel through accelerate: `accelerate launch -m polychromic train CFG` starts one process
per device and `Accelerator` sets up the process group (NCCL, or gloo on CPUs). The model is not
wrapped in DistributedDataParallel: each step backpropagates two different kinds of terms (SFT
micro-batches, then rollout groups, with generate and disable_adapter in between), so instead the
LoRA gradients (small) are averaged across processes explicitly, once per term, which also gives
each term's exact global gradient norm. Each process generates for its own prompts, so a group of
N samples never straddles processes.

Reproducibility: data order is a function of (seed, epoch), rollouts of (seed, step, rank), and
checkpoints hold the adapter, optimizer, scheduler, every RNG state and the data position, so a
run killed at any point and resumed ends with the same adapter as an uninterrupted one. Saving
and loading them (and the final adapter) is checkpoint.py's; non-finite steps are guards.py's.

Speed: the LoRA layers train through fast_lora.py (trainer.fast_lora), the decoder layers'
training passes optionally through torch.compile (trainer.compile, compiled.py), the SFT
micro-batches and the recompute packed without padding where the variable-length kernel runs
(trainer.packed_sft, rollout.packed_recompute, packed.py), and on CUDA the allocator starts
with expandable segments (trainer.expandable_segments, allocator.py). Outside the rollouts and
the rollout term (which read their samples and scores), a step waits on the GPU once, before
its optimizer step (`_read`: the losses and gradient norms, for the non-finite verdict); its
token counts come from the host.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.nn.utils import get_total_norm

from polychromic.config import Config
from polychromic.data import collate, collate_packed, encode_example, load_split, render_prompt
from polychromic.models import attach_lora, load_base_model, load_embedder, load_tokenizer, pick_device
from polychromic.models import stack_adapters
from polychromic.rundir import ADAPTER_DIR
from polychromic.training import fast_lora
from polychromic.training.compiled import compile_layers
from polychromic.training.allocator import configure_allocator
from polychromic.training.checkpoint import load_checkpoint, save_adapter, save_checkpoint
from polychromic.training.guards import NonFiniteError, nonfinite_step
from polychromic.training.monitor import Monitor
from polychromic.training.packed import use_packed
from polychromic.training.objectives import OBJECTIVES, Terms
from polychromic.training.objectives.sft import ce_loss, count_targets
from polychromic.training.rollout import generate_rollouts, rollout_seed
from polychromic.rewards import needs_embedder
from polychromic.rundir import init_run_dir, is_finished, latest_checkpoint, write_state

STACKED_ADAPTER_DIR = "adapter_stacked"
"""Stage-2 runs (model.init_adapter): both stages as one LoRA adapter on the original base."""

# trainer.lr_scheduler -> transformers.get_scheduler name (all with linear warmup).
SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def train(cfg: Config, resume: bool = False) -> Path:
    """Train `cfg`; return the run directory (final adapter in `<run_dir>/adapter/`).
    SDPA's cuDNN backend is off for the run unless trainer.cudnn_attention (restored after)."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(before and cfg.trainer.cudnn_attention)
    try:
        return _train(cfg, resume)
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def _train(cfg: Config, resume: bool) -> Path:
    from datetime import timedelta

    from accelerate import Accelerator, InitProcessGroupKwargs

    configure_allocator(cfg.trainer.expandable_segments, cfg.trainer.device)  # before anything starts CUDA
    t = cfg.trainer.collective_timeout_s  # bounds the wait for a hung peer (a dead one fails at once)
    kwargs = [InitProcessGroupKwargs(timeout=timedelta(seconds=t))] if t is not None else []
    acc = Accelerator(cpu=cfg.trainer.device == "cpu", kwargs_handlers=kwargs)
    if cfg.trainer.device == "cuda":
        pick_device("cuda")  # a clear error when no GPU is visible
    run_dir = cfg.run_dir
    if resume and is_finished(run_dir):
        if acc.is_main_process:
            print(f"{run_dir}: already finished; nothing to resume")
        return run_dir
    if acc.is_main_process:
        init_run_dir(cfg, resume)
    acc.wait_for_everyone()

    try:
        s = _Setup(cfg, acc)
    except BaseException as exc:  # recorded, then re-raised: `polychromic status` shows why
        if acc.is_main_process:
            write_state(run_dir, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    objective = OBJECTIVES[cfg.objective.name]
    total, every, lam = s.total_steps, cfg.objective.compute_diversity_every_n_steps, cfg.objective.diversity_weight
    ce_w = cfg.objective.ce_weight
    ckpt = latest_checkpoint(run_dir) if resume else None
    start = load_checkpoint(ckpt, s, acc) if ckpt is not None else 0
    with Monitor(run_dir, cfg, total, start, is_main=acc.is_main_process) as monitor:
        for step in range(start, total):
            t0 = time.perf_counter()
            sft = s.batches(step)
            n_tgt = _sum(acc, [sft.targets])[0]
            ces = []  # the device's values stay there until the step's one read below
            for batch in sft.micro:  # gradients are averaged over processes, so each divides by its share
                # ce_weight 0 (stage 2 without CE): the CE is still measured, but not differentiated.
                with torch.set_grad_enabled(ce_w > 0):
                    loss, ce = ce_loss(s.model, batch, n_tgt / acc.num_processes)
                if ce_w > 0:
                    acc.backward(ce_w * loss)
                ces.append(ce)
            g_ce = _take_grads(s.params, acc)  # each term's global gradient, measured on its own
            norms = {"train/grad_norm_ce": get_total_norm(g_ce)}
            terms, ro, g_div = Terms(loss=0.0), None, None
            if objective.NEEDS_ROLLOUTS and step % every == 0:
                ro = generate_rollouts(s.model, s.tok, *s.rollout_prompts(sft.rows), cfg.rollout, rollout_seed(cfg.seed, step, acc.process_index))
                terms = objective.rollout_term(s.model, ro, s.embedder, cfg, acc.backward)
                g_div = _take_grads(s.params, acc)
                norms["train/grad_norm_div"] = get_total_norm(g_div)
            _set_grads(s.params, g_ce, g_div)
            clipped = torch.nn.utils.clip_grad_norm_(s.params, cfg.trainer.max_grad_norm)
            ce_sum, grad_norm, *values = _read([torch.stack(ces).double().sum(), clipped, *norms.values()])
            norms = dict(zip(norms, values)) | ({"train/rollout_seconds": ro.seconds} if ro else {})
            lr = s.sched.get_last_lr()[0]  # the rate this step uses
            bad = _nonfinite(acc, ce_sum, terms.loss, grad_norm)  # the same verdict on every process
            if bad is None:
                s.opt.step()
            s.sched.step()
            s.opt.zero_grad(set_to_none=True)

            ce_tot, tokens = _sum(acc, [ce_sum, sft.tokens + (ro.n_tokens() if ro else 0)])
            rl = _mean_logs(acc, {**terms.logs, "train/rollout_term": terms.loss}) if ro is not None else {}
            quality_loss = ce_tot / n_tgt
            logs = {
                "train/quality_loss": quality_loss,
                "train/combined_loss": quality_loss - lam * rl.get("train/diversity_score", 0.0),
                "train/loss": ce_w * quality_loss + rl.get("train/rollout_term", 0.0),
                "train/grad_norm": grad_norm,
                **norms,
                **rl,
                "train/tokens_per_second": tokens / (time.perf_counter() - t0),
                "train/lr": lr,
                "train/epoch": (step + 1) * s.global_batch / s.n_train,
            }
            if bad is not None:
                logs["train/nonfinite_step"] = 1.0  # the monitor's nonfinite_step red flag
            if (step + 1) % cfg.trainer.log_every == 0 or step + 1 == total or bad is not None:
                monitor.log(step + 1, logs)
            if bad is not None and cfg.trainer.on_nonfinite == "stop":
                raise NonFiniteError(f"step {step + 1}: {bad} (trainer.on_nonfinite=stop); the last good checkpoint is "
                                     f"{latest_checkpoint(run_dir) or 'none (no checkpoint yet)'}")
            if (step + 1) % cfg.trainer.save_every == 0 or step + 1 == total:
                save_checkpoint(run_dir, step + 1, s, acc, cfg)
        save_adapter(run_dir, s, acc)
        if cfg.model.init_adapter:
            # Stage 2: the fresh LoRA only makes sense on the merged base; the stacked adapter
            # holds both stages and loads on the plain base (what `evaluate` does).
            if acc.is_main_process:
                stack_adapters(cfg.model.init_adapter, run_dir / ADAPTER_DIR, run_dir / STACKED_ADAPTER_DIR)
            acc.wait_for_everyone()
        monitor.close("done")
    return run_dir


# ---------------------------------------------------------------------------------------------
# Setup: model, data order, optimizer


class StepBatch(NamedTuple):
    """One optimizer step's SFT work on this process."""

    micro: list[dict]  # the micro-batches, on the device
    rows: list[dict]  # their training rows (the rollout prompts come from them)
    targets: int  # tokens that carry a loss, over the micro-batches
    tokens: int  # tokens laid, over the micro-batches


class _Setup:
    """Everything the loop touches, built once (and restored from a checkpoint on resume)."""

    def __init__(self, cfg: Config, acc) -> None:
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        self.cfg = cfg
        self.rank, self.world = acc.process_index, acc.num_processes
        self.device = acc.device
        self.tok = load_tokenizer(cfg.model)
        rows = load_split(cfg.data.prepared_dir, "train")
        if cfg.data.max_train_examples is not None:
            rows = rows[: cfg.data.max_train_examples]
        if not rows:
            raise ValueError(f"{cfg.data.prepared_dir}/train.jsonl: no training rows")
        self.rows = rows
        self.examples = [encode_example(self.tok, cfg.data, r["prompt"], r["reply"]) for r in rows]
        self.n_train = len(rows)
        t = cfg.trainer
        self.local_batch = t.batch_size * t.grad_accum
        self.global_batch = self.local_batch * self.world
        self.total_steps = t.max_steps or max(1, math.ceil(t.epochs * self.n_train / self.global_batch))
        self._perms: dict[int, np.ndarray] = {}
        self._prompt_ids: dict[str, list[int]] = {}

        # Same seed on every process: identical LoRA initialisation everywhere.
        set_seed(cfg.seed)
        # With model.init_adapter the SFT adapter is merged into these weights (models.py): the
        # fresh LoRA below is then the only trainable part, and disable_adapter() is the SFT policy.
        base = load_base_model(cfg.model, self.device)
        self.model = attach_lora(base, cfg.lora, cfg.model.gradient_checkpointing)
        # The lean LoRA forward/backward (fast_lora.py); the parameters and the saved adapter stay peft's.
        if t.fast_lora:
            fast_lora.install(self.model)
        if t.compile:  # every decoder layer's grad-enabled passes through torch.compile (compiled.py)
            compile_layers(self.model)
        self.model.train()
        self.packed_sft = use_packed(self.model, t.packed_sft, "trainer.packed_sft", training=True)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = make_optimizer(self.params, t.lr, t.weight_decay)
        warmup = math.ceil(t.warmup_ratio * self.total_steps)
        self.sched = get_scheduler(SCHEDULERS[t.lr_scheduler], self.opt, num_warmup_steps=warmup, num_training_steps=self.total_steps)

        o = cfg.objective
        embeds = OBJECTIVES[o.name].NEEDS_ROLLOUTS and needs_embedder(o)
        self.embedder = load_embedder(o.diversity_encoder_model, device=str(self.device)) if embeds else None
        # Reseeded last, after everything that may draw random numbers while being built (the
        # embedder's modules), so the training stream (dropout) is the same whatever the objective
        # loads: float_penalty stays bit-identical to sft. Each process gets its own stream
        # (dropout masks differ across processes, as across the rows of one big batch).
        set_seed(cfg.seed + self.rank)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation of the training rows: a pure function of (seed, epoch)."""
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.cfg.seed, epoch]).permutation(self.n_train)}
        return self._perms[epoch]

    def batches(self, step: int) -> StepBatch:
        """This process's micro-batches of optimizer step `step`, their rows, and their token
        counts (taken on the host, before the copy to the device: no wait on the GPU). The step
        takes the next global_batch positions of the (seed, epoch) permutations, epochs
        concatenated; process r takes the r-th contiguous slice, cut into micro-batches of
        batch_size."""
        first = step * self.global_batch + self.rank * self.local_batch
        idx = [int(self.order(k // self.n_train)[k % self.n_train]) for k in range(first, first + self.local_batch)]
        pad = self.tok.pad_token_id
        bs = self.cfg.trainer.batch_size
        micro, targets, tokens = [], 0, 0
        for j in range(0, len(idx), bs):
            examples = [self.examples[i] for i in idx[j : j + bs]]
            b = collate_packed(examples) if self.packed_sft else collate(examples, pad, self.cfg.trainer.pad_to_multiple_of)
            targets += count_targets(b)
            tokens += int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
            micro.append({k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in b.items()})
        return StepBatch(micro, [self.rows[i] for i in idx], targets, tokens)

    def rollout_prompts(self, rows: list[dict]) -> tuple[list[str], list[list[int]]]:
        """The first M distinct prompt groups among this process's rows of the step."""
        seen, texts = set(), []
        for r in rows:
            if r["group"] not in seen:
                seen.add(r["group"])
                texts.append(r["prompt"])
            if len(texts) == self.cfg.rollout.max_examples_for_diversity:
                break
        for p in texts:
            if p not in self._prompt_ids:
                self._prompt_ids[p] = render_prompt(self.tok, self.cfg.data, p)
        return texts, [self._prompt_ids[p] for p in texts]


# ---------------------------------------------------------------------------------------------
# Gradients across processes


def _sum(acc, values: list[float]) -> list[float]:
    """Sum of each value over processes (float64 on the device; identity with one process)."""
    if acc.num_processes == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=acc.device)
    return [float(x) for x in acc.reduce(t, reduction="sum")]


def _mean_logs(acc, logs: dict[str, float]) -> dict[str, float]:
    """Mean of each logged value over processes, so every process logs (and alerts on) the same."""
    if acc.num_processes == 1 or not logs:
        return dict(logs)
    keys = sorted(logs)
    sums = _sum(acc, [logs[k] for k in keys])
    return {k: v / acc.num_processes for k, v in zip(keys, sums)}


def _take_grads(params: list[torch.Tensor], acc) -> list[torch.Tensor]:
    """Remove the accumulated gradients from the parameters and return them averaged over
    processes (zeros for a parameter no backward reached). One all-reduce of one flat vector."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    for p in params:
        p.grad = None
    if acc.num_processes > 1:
        flat = acc.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
        grads = [chunk.view_as(g) for chunk, g in zip(flat.split([g.numel() for g in grads]), grads)]
    return grads


def make_optimizer(params: list[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW on the LoRA parameters: torch's fused kernel where they are on CUDA (one launch
    for the whole update instead of a chain of multi-tensor ones), its default elsewhere."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=params[0].is_cuda or None)


def _set_grads(params, g_ce, g_div) -> None:
    """Each parameter's gradient = its CE term + its rollout term (if any), added in one
    multi-tensor call; g_div's tensors hold the sums afterwards."""
    if g_div is not None:
        torch._foreach_add_(g_div, g_ce)
    for p, g in zip(params, g_ce if g_div is None else g_div):
        p.grad = g


def _nonfinite(acc, ce_sum: float, rollout_term: float, grad_norm: float) -> str | None:
    """guards.nonfinite_step on the process-summed losses and the global gradient norm."""
    ce, rt = _sum(acc, [ce_sum, float(rollout_term)])
    return nonfinite_step({"cross-entropy": ce, "rollout term": rt}, grad_norm)


def _read(values: list[torch.Tensor]) -> list[float]:
    """The step's values from the device, in one copy: the loop's one wait on the GPU before
    the optimizer step (which needs the verdict on non-finite values)."""
    return torch.stack([v.detach().double().reshape(()) for v in values]).tolist()
