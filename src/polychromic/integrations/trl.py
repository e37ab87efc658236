"""`PolychromicReward`: the polychromic set-level term as a TRL `GRPOTrainer` reward function.

TRL has no set-level objective; its GRPO advantage is a per-completion reward minus the mean of
its prompt's group. This reward returns, for each completion, its leave-one-out set advantage
(training/objectives/polychromic.py, scored by rewards.py: the same code our trainer runs) times
a constant c, so that TRL's policy-gradient step IS lambda x our `div_loss` step.

Derivation (TRL 1.16 `GRPOTrainer._compute_loss`, `loss_type="dr_grpo"`). On-policy
(`num_iterations=1`, generation every `steps_per_generation` micro-steps with
`gradient_accumulation_steps` a multiple of it) the ratio exp(logp - logp.detach()) is 1 with
gradient grad logp, and the clipped and unclipped terms agree, so one micro-batch of B completions
on one of P processes contributes

    loss_mb = -(1 / (B * L * GA)) * sum_i Ahat_i * logp_i,   L = max_completion_length,

logp_i the completion's summed token log-prob at the sampling temperature. Gradients are averaged
over the P processes and summed over the GA micro-batches, and P * GA * B = M * N (M prompts of
the optimizer step, N = num_generations completions each), so the step's gradient is

    -(1 / (M * N * L)) * sum_x sum_i Ahat_i * grad logp_i.

Ours (docs/objective.md): lambda * grad div_loss = -(lambda / (M * L_norm)) * sum_x sum_i A_i *
grad logp_i with L_norm = max_new_tokens. With L = L_norm the two are equal iff

    Ahat_i = c * A_i,   c = lambda * N.

TRL forms Ahat_i = r_i - mean_{j in group} r_j (with `scale_rewards="none"`: no division by a
std). With all C(N, n) subsets enumerated the A_i of a group sum to exactly 0 (sum_i g_i =
sum_i b_i = N * mean_S F(S)), so returning r_i = c * A_i makes Ahat_i = r_i: the step is exact.
With sampled subsets (C(N, n) > max_subsets) their sum is Monte-Carlo noise that TRL's mean
subtraction removes, a small departure from our estimator; `estimator: pointwise` sums to 0 by
construction. TRL's `beta` is our `kl_beta` (same constant normaliser under dr_grpo, the
adapter-disabled model as reference): with `use_bias_correction_kl=False` TRL's per-token KL is
our k3 (value and gradient); with TRL's default True it is k3 times the ratio exp(logp -
logp.detach()), whose gradient, (1 - e^r) + (e^r - r - 1) = -r per token (r = logp_ref - logp),
is that of our k2 = r^2 / 2 (the values differ: TRL logs k3). `reward_weights`
multiply r, so a weight w makes the effective lambda w * lambda; another reward function adds
its own group-centred advantage, i.e. a plain GRPO term on top of ours.

Layout (TRL 1.16): a generation batch of `generation_batch_size` completions is drawn at once
(`RepeatSampler`: each prompt's N copies consecutive), split into contiguous equal slices, one per
process, and the reward is called ONCE per process on its whole slice, before TRL splits it into
`steps_per_generation` micro-batches: a group is never split across steps, but it is split
across processes whenever per_device_train_batch_size x steps_per_generation is not a multiple of
N. The reward therefore gathers every process's slice (torch.distributed, all ranks call it in
step), scores whole groups on rank 0, broadcasts, and returns this process's slice. A slice that
does not hold whole groups of identical prompts raises, naming `num_generations`.

Finished (the quality guard's "truncated" test): TRL cuts each completion after its first EOS id
and hands the ids to the reward as `completion_ids`; a completion is finished when its last id is
an EOS id: the tokenizer's `eos_token_id` plus the model's `generation_config.eos_token_id` (the
set GRPOTrainer stops generation on; our `generation.params.eos_ids` is the same set).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from polychromic.config import Config, ConfigError, config_from_dict, load_config, to_dict
from polychromic.generation.params import eos_ids as model_eos_ids
from polychromic.rewards import needs_embedder
from polychromic.training.objectives.polychromic import advantages, score_rollouts

REWARD_NAME = "polychromic"
"""`__name__` of the reward: TRL logs `rewards/polychromic/mean` and `/std`."""


# ---------------------------------------------------------------------------------------------
# What TRL hands a reward function, as our scoring needs it


def prompt_text(prompt: Any) -> str:
    """The raw prompt relevance is measured against: a plain-text prompt as is, a conversational
    one's last user turn (our trainer measures relevance against the raw prompt, not the template)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        users = [m for m in prompt if m.get("role") == "user"]
        return _content_text((users or prompt)[-1].get("content", ""))
    raise TypeError(f"prompt: expected a string or a list of chat messages, got {type(prompt).__name__}")


def completion_text(completion: Any) -> str:
    """A completion's text, stripped (as our Rollouts.texts): a string, or the assistant turns of
    a conversational completion joined."""
    if isinstance(completion, str):
        return completion.strip()
    if isinstance(completion, list) and all(isinstance(m, dict) for m in completion):
        return "".join(_content_text(m.get("content") or "") for m in completion if m.get("role", "assistant") == "assistant").strip()
    raise TypeError(f"completion: expected a string or a list of chat messages, got {type(completion).__name__}")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: keep the text parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    raise TypeError(f"message content: expected a string or a list of blocks, got {type(content).__name__}")


def finished_flags(completion_ids: Sequence[Sequence[int]], eos_token_ids: Sequence[int]) -> list[bool]:
    """True where a completion's last token is an EOS id (TRL cuts completions after the first)."""
    eos = set(int(t) for t in eos_token_ids)
    return [bool(ids) and int(ids[-1]) in eos for ids in completion_ids]


def eos_ids(tokenizer=None, model=None, eos_token_ids: Sequence[int] | None = None) -> list[int]:
    """The EOS ids: explicit ones, else the tokenizer's eos_token_id plus, with `model`, its
    generation_config.eos_token_id (generation.params.eos_ids: what GRPOTrainer stops on too)."""
    if eos_token_ids is not None:
        ids = sorted({int(t) for t in eos_token_ids})
    elif tokenizer is not None and model is not None:
        ids = model_eos_ids(model, tokenizer)
    elif tokenizer is not None and tokenizer.eos_token_id is not None:
        ids = [int(tokenizer.eos_token_id)]
    else:
        ids = []
    if not ids:
        raise ValueError("PolychromicReward: no EOS token id; pass tokenizer= (and model=) or eos_token_ids= "
                         "(the quality guard needs to tell finished completions from truncated ones)")
    return ids


@dataclass
class _Groups:
    """The fields of training.rollout.Rollouts that `score_rollouts` reads (TRL gives a reward
    function neither prompt token ids nor sampling parameters, and scoring never reads them)."""

    prompt_texts: list[str]
    completion_ids: list[list[list[int]]]
    finished: list[list[bool]]
    texts: list[list[str]]

    @property
    def m(self) -> int:
        return len(self.texts)

    @property
    def n(self) -> int:
        return len(self.texts[0]) if self.texts else 0


# ---------------------------------------------------------------------------------------------
# Processes


def _dist():
    """torch.distributed when several processes run (TRL under accelerate/DeepSpeed/FSDP), else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


# ---------------------------------------------------------------------------------------------
# The reward


class PolychromicReward:
    """A TRL reward function: `reward(prompts, completions, completion_ids, **kwargs) -> list[float]`,
    one value per completion, c * A_i with c = lambda * num_generations (module docstring).

    Configured like our objective: `num_generations` is N (GRPOConfig.num_generations, which must
    match), and every other keyword is an `objective.*` field of our config (set_size, set_reward,
    estimator, quality, diversity_metric, diversity_encoder_model, max_subsets, min_reply_words,
    ...), with our defaults; `diversity_weight` (lambda) defaults to 1.0 here. `from_config` takes
    one of our configs instead. `embedder` (texts -> (n, d) array) is loaded from
    objective.diversity_encoder_model on first use when the quality or distance needs it.
    `eos_token_ids`, or `tokenizer` (+ `model`), give the EOS ids that mark a finished completion.
    `seed` seeds the subset sampling (only used when C(N, n) > max_subsets), per optimizer step.
    `relevance_column`: a dataset column holding the raw prompt that relevance is measured
    against (our trainer's Rollouts.prompt_texts, the prompt before the template); None: the
    prompt's last user turn.
    """

    def __init__(
        self,
        num_generations: int | None = None,
        *,
        config: Config | None = None,
        tokenizer=None,
        model=None,
        eos_token_ids: Sequence[int] | None = None,
        embedder: Callable[[Sequence[str]], np.ndarray] | None = None,
        seed: int | None = None,
        relevance_column: str | None = None,
        **objective: Any,
    ):
        data = to_dict(config) if config is not None else {}
        obj = dict(data.get("objective", {}))
        if not obj.get("diversity_weight"):
            obj["diversity_weight"] = 1.0  # lambda: our schema's 0.0 means "SFT", meaningless for a reward
        obj.update(objective)
        obj["name"] = "polychromic"
        data["objective"] = obj
        if num_generations is not None:
            data.setdefault("rollout", {})["n_generations"] = int(num_generations)
        elif config is None:
            raise ValueError("PolychromicReward: pass num_generations (GRPOConfig.num_generations) or config=")
        if seed is not None:
            data["seed"] = int(seed)
        try:
            self.config = config_from_dict(data, "PolychromicReward")
        except ConfigError as exc:
            raise ConfigError(exc.errors, "PolychromicReward (rollout.n_generations is num_generations)") from None
        self.objective = self.config.objective
        self.num_generations = self.config.rollout.n_generations
        self.set_size = self.config.set_size
        self.scale = self.objective.diversity_weight * self.num_generations
        """c = lambda * N: TRL's dr_grpo step with these rewards is lambda x div_loss's step."""
        self.eos_token_ids = eos_ids(tokenizer, model, eos_token_ids)
        self._embedder = embedder
        self.relevance_column = relevance_column
        self._step_calls = (-1, 0)  # (optimizer step, reward calls made at it)
        self.__name__ = REWARD_NAME

    @classmethod
    def from_config(cls, name_or_path: str | Config, overrides: list[str] | None = None, **kwargs: Any) -> "PolychromicReward":
        """From one of our configs (a shipped name such as `demo/polychromic`, a YAML path, or a
        Config): its objective, rollout.n_generations, seed; `grpo_settings()` then also carries
        its temperature, max_generation_length and kl_beta."""
        cfg = name_or_path if isinstance(name_or_path, Config) else load_config(name_or_path, overrides)
        return cls(config=cfg, **kwargs)

    # -- TRL settings --------------------------------------------------------------------------

    def grpo_settings(self) -> dict[str, Any]:
        """GRPOConfig keyword arguments under which TRL's step is exactly lambda x our div_loss
        (+ beta x our KL): pass them along with your own batch sizes, output_dir, ..."""
        r = self.config.rollout
        return {
            "num_generations": self.num_generations,
            "loss_type": "dr_grpo",  # constant normaliser max_completion_length = our L_norm
            "scale_rewards": "none",  # no division by the group's reward std
            "multi_objective_aggregation": "sum_then_normalize",
            "beta": self.objective.kl_beta,
            "use_bias_correction_kl": self.objective.kl_estimator == "k2",  # module docstring
            "num_iterations": 1,  # on-policy: one update per generation
            "max_completion_length": r.max_generation_length,
            "temperature": r.diversity_temperature,
            "top_p": 1.0,  # untruncated sampling: the score-function gradient needs on-policy samples
            "top_k": 0,
            "mask_truncated_completions": False,
            "disable_dropout": True,  # our log-probs are recomputed without dropout, as sampled
        }

    def problems(self, args) -> tuple[list[str], list[str]]:
        """(errors, departures) for a GRPOConfig (any object with its attributes). errors: settings
        under which the reward cannot see its groups; departures: settings under which TRL's step
        is no longer exactly lambda x div_loss (+ beta x KL)."""
        n = self.num_generations
        errors, off = [], []
        g = lambda name, default=None: getattr(args, name, default)  # noqa: E731
        if g("num_generations") != n:
            errors.append(f"num_generations={g('num_generations')}: the reward groups completions by {n} (PolychromicReward(num_generations={n}))")
        if g("num_generations_eval") not in (None, n):
            errors.append(f"num_generations_eval={g('num_generations_eval')}: evaluation groups must also hold {n} completions; leave it None")
        if g("loss_type") != "dr_grpo":
            off.append(f"loss_type={g('loss_type')!r}: use 'dr_grpo' (a constant normaliser, our L_norm); other losses normalise by lengths or token counts")
        if g("scale_rewards") not in ("none", False):
            off.append(f"scale_rewards={g('scale_rewards')!r}: use 'none' (dividing by a reward std rescales the set advantages per group)")
        if g("multi_objective_aggregation", "sum_then_normalize") != "sum_then_normalize":
            off.append(f"multi_objective_aggregation={g('multi_objective_aggregation')!r}: use 'sum_then_normalize' (the other divides by stds)")
        if g("num_iterations", 1) != 1:
            off.append(f"num_iterations={g('num_iterations')}: use 1 (later passes are off-policy, PPO-clipped updates)")
        spg, ga = g("steps_per_generation"), g("gradient_accumulation_steps", 1)
        if spg is not None and ga % spg != 0:
            off.append(f"steps_per_generation={spg} with gradient_accumulation_steps={ga}: a generation then spans optimizer steps "
                       "(later steps are off-policy, importance-weighted and clipped); make gradient_accumulation_steps a multiple of it")
        if g("top_p", 1.0) != 1.0 or (g("top_k") or 0) != 0 or g("min_p") is not None or g("repetition_penalty", 1.0) != 1.0:
            off.append(f"top_p={g('top_p')}, top_k={g('top_k')}, min_p={g('min_p')}, repetition_penalty={g('repetition_penalty')}: "
                       "sampling is then not from the policy being differentiated; use 1.0, 0, None, 1.0")
        if g("mask_truncated_completions", False):
            off.append("mask_truncated_completions=True: drops truncated completions from the loss; our term keeps them (the guard scores them)")
        if not g("disable_dropout", False):
            off.append("disable_dropout=False: TRL then recomputes log-probs with dropout on (LoRA dropout too); ours are "
                       "recomputed without, like the samples were drawn; set disable_dropout=True")
        if g("top_entropy_quantile", 1.0) < 1.0:
            off.append(f"top_entropy_quantile={g('top_entropy_quantile')}: masks tokens out of the gradient; use 1.0")
        if g("off_policy_mask_threshold") is not None:
            off.append(f"off_policy_mask_threshold={g('off_policy_mask_threshold')}: masks sequences out of the gradient; use None")
        if (g("entropy_coef", 0.0) or 0.0) != 0.0 or g("use_adaptive_entropy", False):
            off.append("entropy_coef / use_adaptive_entropy: an entropy bonus is not part of the objective; use 0 / False")
        if g("beta", 0.0) and bool(g("use_bias_correction_kl", True)) != (self.objective.kl_estimator == "k2"):
            want = self.objective.kl_estimator == "k2"
            off.append(f"use_bias_correction_kl={g('use_bias_correction_kl')} with beta={g('beta')}: objective.kl_estimator="
                       f"{self.objective.kl_estimator!r} is TRL's KL with use_bias_correction_kl={want}")
        return errors, off

    def check(self, args, exact: bool = True) -> None:
        """Raise ValueError on every setting that breaks the reward (always) or, with exact=True,
        that makes TRL's step differ from ours (with exact=False those only warn)."""
        errors, off = self.problems(args)
        if exact:
            errors += off
        elif off:
            warnings.warn("TRL's step is not exactly the polychromic term:\n  " + "\n  ".join(off), stacklevel=2)
        if errors:
            raise ValueError("GRPOConfig settings PolychromicReward does not support:\n  " + "\n  ".join(errors))

    # -- scoring -------------------------------------------------------------------------------

    @property
    def embedder(self):
        if self._embedder is None and needs_embedder(self.objective):
            from polychromic.models import load_embedder

            self._embedder = load_embedder(self.objective.diversity_encoder_model)
        return self._embedder

    def set_advantages(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Sequence[Sequence[int]],
                       rng: np.random.Generator, relevance_prompts: Sequence[str] | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """(A (G, N), logs) for whole groups: G x N completions, each prompt's N consecutive.
        `relevance_prompts`: per completion, the text relevance is measured against (default:
        `prompt_text` of its prompt)."""
        n, total = self.num_generations, len(completions)
        if total == 0 or total % n:
            raise ValueError(
                f"PolychromicReward(num_generations={n}) got {total} completions, not whole groups of {n}: set "
                f"GRPOConfig.num_generations={n} (and leave num_generations_eval None)")
        keys = [p if isinstance(p, str) else json.dumps(p, sort_keys=True, default=str) for p in prompts]
        for start in range(0, total, n):
            if len(set(keys[start : start + n])) != 1:
                raise ValueError(
                    f"PolychromicReward: completions {start}..{start + n - 1} do not share one prompt, so TRL did not group "
                    f"them by num_generations={n}: GRPOConfig.num_generations (num_generations_eval in evaluation) must be {n}")
        texts = [completion_text(c) for c in completions]
        done = finished_flags(completion_ids, self.eos_token_ids)
        groups = _Groups(
            prompt_texts=[prompt_text(prompts[s]) if relevance_prompts is None else str(relevance_prompts[s]) for s in range(0, total, n)],
            completion_ids=[[list(x) for x in completion_ids[s : s + n]] for s in range(0, total, n)],
            finished=[done[s : s + n] for s in range(0, total, n)],
            texts=[texts[s : s + n] for s in range(0, total, n)],
        )
        q, dist, logs = score_rollouts(groups, self.embedder, self.objective)
        adv = np.stack([advantages(q[i], dist[i], self.objective, self.set_size, rng) for i in range(groups.m)])
        logs = {k.replace("train/", f"{REWARD_NAME}/"): v for k, v in logs.items()}
        logs[f"{REWARD_NAME}/advantage_std"] = float(adv.std())
        logs[f"{REWARD_NAME}/finished_fraction"] = float(np.mean(done))
        return adv, logs

    def __call__(self, prompts, completions, completion_ids, trainer_state=None, log_metric=None, **kwargs) -> list[float]:
        if not (len(prompts) == len(completions) == len(completion_ids)):
            raise ValueError(f"PolychromicReward: {len(prompts)} prompts, {len(completions)} completions, {len(completion_ids)} id lists")
        step = int(getattr(trainer_state, "global_step", 0) or 0)
        call = self._step_calls[1] if self._step_calls[0] == step else 0
        self._step_calls = (step, call + 1)
        rng = np.random.default_rng(np.random.SeedSequence([self.config.seed, step, call]))
        local = (list(prompts), list(completions), [list(map(int, x)) for x in completion_ids], self._relevance_prompts(kwargs, len(prompts)))
        dist = _dist()
        if dist is None:
            adv, logs = self.set_advantages(*local[:3], rng, local[3])
            rewards, offset = (self.scale * adv).reshape(-1), 0
        else:
            # Every rank calls the reward in step; gather the slices in rank order (TRL's layout).
            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, local)
            sizes = [len(p[0]) for p in parts]
            result: list = [None]
            if dist.get_rank() == 0:
                try:
                    full = [sum((list(p[k]) for p in parts), []) for k in range(3)]
                    rel = None if self.relevance_column is None else sum((list(p[3]) for p in parts), [])
                    adv, logs = self.set_advantages(*full, rng, rel)
                    result = [((self.scale * adv).reshape(-1), logs, None)]
                except Exception as exc:  # re-raised on every rank below, so none hangs
                    result = [(None, None, f"{type(exc).__name__}: {exc}")]
            dist.broadcast_object_list(result, src=0)
            rewards, logs, err = result[0]
            if err is not None:
                raise ValueError(f"PolychromicReward on rank 0 (completions of all {len(sizes)} processes): {err}")
            offset = sum(sizes[: dist.get_rank()])
        if log_metric is not None:
            for k, v in logs.items():
                log_metric(k, v)
        return [float(x) for x in rewards[offset : offset + len(prompts)]]

    def _relevance_prompts(self, kwargs: dict, count: int) -> list[str] | None:
        if self.relevance_column is None:
            return None
        if self.relevance_column not in kwargs:
            raise ValueError(f"PolychromicReward(relevance_column={self.relevance_column!r}): TRL passed no such dataset column "
                             f"(it has {sorted(k for k in kwargs if k not in ('trainer_state', 'log_extra', 'log_metric'))}); "
                             "keep the column in the dataset")
        values = list(kwargs[self.relevance_column])
        if len(values) != count:
            raise ValueError(f"PolychromicReward: column {self.relevance_column!r} has {len(values)} values for {count} completions")
        return [str(v) for v in values]
