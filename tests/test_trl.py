"""polychromic inside TRL: PolychromicReward as a GRPOTrainer reward function.

- For fixed prompts and completions, the gradient of TRL's own GRPO loss (GRPOTrainer's scoring
  and compute_loss, generation replaced by the fixed completions) with PolychromicReward equals the
  gradient of our rollout_term (lambda 1, no CE; with TRL's beta the KL matches ours too), over one
  micro-batch or two; the rewards of each group sum to 0 with full enumeration.
- Groups split across processes are gathered (2 gloo processes, and a 2-process GRPOTrainer run).
- A short GRPOTrainer run on the tiny model changes the adapter; the example runs on the embedded
  SmolLM2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("trl")

from polychromic.config import ConfigError, ModelConfig, load_config  # noqa: E402
from polychromic.generation import SamplingParams  # noqa: E402
from polychromic.integrations.trl import PolychromicReward, completion_text, finished_flags, prompt_text  # noqa: E402
from polychromic.models import load_base_model, load_embedder, load_tokenizer  # noqa: E402
from polychromic.rewards import distance_matrix  # noqa: E402
from polychromic.training.objectives import polychromic as poly  # noqa: E402
from polychromic.training.rollout import Rollouts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N, L, T = 4, 12, 0.9
PROMPTS = ["What do you like to do on weekends?", "Tell me about your favourite food."]
REPLIES = [
    ["I like hiking in the hills with friends.", "Mostly I read books and drink tea.", "I sleep a lot, honestly.",
     "hiking hiking hiking hiking hiking hiking"],
    ["Pizza with lots of cheese is my favourite.", "I love spicy noodles from the market", "Fresh bread and butter.", "food"],
]


def char_embedder(texts):
    # letter/digit counts: a deterministic stand-in for a sentence embedder (the tiny model's
    # random-token replies would otherwise need the real one)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    return np.array([[t.lower().count(c) for c in chars] + [1.0] for t in texts], dtype=float)


def chat(p: str) -> list[dict]:
    return [{"role": "user", "content": p}]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(ModelConfig(path=str(tiny_model_dir), dtype="float32"))


def fixed_completion_ids(tok) -> list[list[int]]:
    """The REPLIES as token ids, EOS-terminated except one (a truncated completion)."""
    out = []
    for g, group in enumerate(REPLIES):
        for j, text in enumerate(group):
            ids = tok(text, add_special_tokens=False)["input_ids"][: L - 1]
            out.append(ids if (g, j) == (0, 2) else ids + [tok.eos_token_id])
    return out


def make_trainer(model_dir, tok, reward, out: Path, prompts, **overrides):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    model = load_base_model(ModelConfig(path=str(model_dir), dtype="float32"), torch.device("cpu"))
    settings = {**reward.grpo_settings(), "max_completion_length": L, "temperature": T}
    batch = overrides.pop("per_device_train_batch_size", len(prompts) * N)
    settings.update(overrides)
    # bf16=False: TRL's default (True) autocasts the forward to bfloat16, on a CPU too
    args = GRPOConfig(output_dir=str(out), per_device_train_batch_size=batch, report_to=[], use_cpu=True, bf16=False,
                      save_strategy="no", logging_steps=1, learning_rate=1e-2, seed=0, **settings)
    reward.check(args)
    dataset = Dataset.from_dict({"prompt": [chat(p) for p in prompts], "raw_prompt": list(prompts)})
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset, processing_class=tok, peft_config=lora)


def lora_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for _, p in sorted(model.named_parameters()) if p.requires_grad])


# --- exactness: TRL's loss gradient == our rollout_term's ---------------------------------------


@pytest.mark.parametrize("beta, estimator", [(0.0, "k3"), (0.5, "k3"), (0.5, "k2")])
def test_trl_gradient_equals_rollout_term(tiny_model_dir, tok, tmp_path, beta, estimator):
    embedder = load_embedder()  # the default quality and distance both embed (MiniLM, offline)
    reward = PolychromicReward(N, tokenizer=tok, embedder=embedder, kl_beta=beta, kl_estimator=estimator)
    trainer = make_trainer(tiny_model_dir, tok, reward, tmp_path / "trl", PROMPTS, max_steps=1)
    model = trainer.model
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA B starts at 0 (no gradient into A): give it a value
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.train()
    comp = fixed_completion_ids(tok)
    # TRL's own path from completions to the loss, with generation replaced by the fixed ids
    trainer._generate_single_turn = lambda prompt_ids, *a, **k: ([list(c) for c in comp], None)
    batch = trainer._generate_and_score_completions([{"prompt": chat(p), "raw_prompt": p} for p in PROMPTS for _ in range(N)])
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop in a run
    model.zero_grad(set_to_none=True)
    trainer.compute_loss(model, batch).backward()
    g_trl = lora_grads(model)

    # ours, on the same prompt ids (as TRL rendered them) and completions
    prompt_ids = [batch["prompt_ids"][i][batch["prompt_mask"][i].bool()].tolist() for i in range(0, len(comp), N)]
    assert len(set(map(len, prompt_ids))) == 2  # left padding is exercised
    groups = [comp[s : s + N] for s in range(0, len(comp), N)]
    ro = Rollouts(prompt_texts=PROMPTS, prompt_ids=prompt_ids, completion_ids=groups,
                  finished=[[c[-1] == tok.eos_token_id for c in g] for g in groups],
                  texts=[[tok.decode(c, skip_special_tokens=True).strip() for c in g] for g in groups],
                  params=SamplingParams(temperature=T, max_new_tokens=L), seed=0, seconds=0.0)
    cfg = load_config(None, ["objective.name=polychromic", "objective.diversity_weight=1.0", f"objective.kl_beta={beta}",
                             f"objective.kl_estimator={estimator}", f"rollout.n_generations={N}",
                             f"rollout.max_generation_length={L}", f"rollout.diversity_temperature={T}"])
    model.zero_grad(set_to_none=True)
    terms = poly.rollout_term(model, ro, embedder, cfg, lambda loss: loss.backward())
    g_ours = lora_grads(model)

    assert g_ours.norm() > 0 and terms.logs["train/advantage_std"] > 0
    torch.testing.assert_close(g_trl, g_ours, rtol=1e-4, atol=1e-7)

    # the rewards are lambda * N * A, each group's sum is 0, and TRL's advantages are the rewards
    q, dist, _ = poly.score_rollouts(ro, embedder, cfg.objective)
    adv = np.stack([poly.advantages(q[i], dist[i], cfg.objective, cfg.set_size, None) for i in range(2)])
    assert not np.allclose(adv, 0)
    torch.testing.assert_close(batch["advantages"], torch.tensor(N * adv.reshape(-1), dtype=torch.float32), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch["advantages"].view(2, N).sum(1).numpy(), 0.0, atol=1e-6)

    if beta == 0:
        # two micro-batches of one group each (gradient_accumulation_steps 2): the same gradient
        from trl.trainer.utils import split_tensor_dict

        model.zero_grad(set_to_none=True)
        trainer.current_gradient_accumulation_steps = 2
        for half in split_tensor_dict(batch, 2):
            trainer.compute_loss(model, half).backward()
        torch.testing.assert_close(lora_grads(model), g_ours, rtol=1e-4, atol=1e-7)


# --- the reward function alone -----------------------------------------------------------------


def test_rewards_are_lambda_n_times_our_set_advantages_and_sum_to_zero(tok):
    comp = fixed_completion_ids(tok)
    completions = [[{"role": "assistant", "content": tok.decode(c, skip_special_tokens=True)}] for c in comp]
    prompts = [chat(p) for p in PROMPTS for _ in range(N)]
    logged = {}
    for lam in (1.0, 2.5):
        reward = PolychromicReward(N, tokenizer=tok, embedder=char_embedder, quality="guard", diversity_weight=lam)
        assert reward.__name__ == "polychromic" and reward.set_size == 2  # our default n = max(2, min(4, N // 2))
        r = np.array(reward(prompts, completions, comp, log_metric=logged.__setitem__))
        q = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=float)  # guard: truncated, repetitive, one word -> 0
        assert logged["polychromic/quality_mean"] == pytest.approx(q.mean())
        assert logged["polychromic/finished_fraction"] == pytest.approx(7 / 8)
        texts = [completion_text(c) for c in completions]
        expected = np.concatenate([
            poly.set_advantages(q[g], distance_matrix(texts[g * N : (g + 1) * N], "semantic", char_embedder), 2)
            for g in range(2)])
        np.testing.assert_allclose(r, lam * N * expected, atol=1e-12)
        np.testing.assert_allclose(r.reshape(2, N).sum(1), 0.0, atol=1e-12)
        assert np.abs(r).max() > 0.01


def test_sampled_subsets_are_seeded_by_step_and_pointwise_sums_to_zero(tok):
    texts = ["a cat sat here", "dogs run fast", "birds can fly high", "fish swim deep", "the cat is back",
             "run dogs run", "sky is blue", "deep blue sea"]
    prompts = ["pets?"] * 8
    ids = [[5, tok.eos_token_id]] * 8
    sampled = PolychromicReward(8, eos_token_ids=[tok.eos_token_id], embedder=char_embedder, quality="constant",
                                set_size=4, max_subsets=10)  # C(8, 4) = 70 > 10: sampled subsets

    class State:
        global_step = 3

    a = sampled(prompts, texts, ids, trainer_state=State())
    b = PolychromicReward(8, eos_token_ids=[tok.eos_token_id], embedder=char_embedder, quality="constant",
                          set_size=4, max_subsets=10)(prompts, texts, ids, trainer_state=State())
    assert a == b  # same (seed, step, call): same subsets
    assert sampled(prompts, texts, ids, trainer_state=State()) != a  # the step's second call draws others
    point = PolychromicReward(8, eos_token_ids=[tok.eos_token_id], embedder=char_embedder, quality="constant", estimator="pointwise")
    assert sum(point(prompts, texts, ids)) == pytest.approx(0.0, abs=1e-12)


def test_finished_comes_from_the_last_completion_id_and_the_eos_ids(tok, tiny_model_dir):
    eos = tok.eos_token_id
    assert finished_flags([[5, 6, eos], [5, eos, 6], [], [eos]], [eos]) == [True, False, False, True]
    model = load_base_model(ModelConfig(path=str(tiny_model_dir), dtype="float32"), torch.device("cpu"))
    model.generation_config.eos_token_id = [eos, 7]
    reward = PolychromicReward(N, tokenizer=tok, model=model, embedder=char_embedder)
    assert reward.eos_token_ids == sorted({eos, 7})
    with pytest.raises(ValueError, match="no EOS token id"):
        PolychromicReward(N, embedder=char_embedder)
    assert prompt_text([{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]) == "hi"
    assert completion_text("  hello \n") == "hello"


def test_bad_groups_and_settings_raise_naming_the_setting(tok):
    reward = PolychromicReward(N, tokenizer=tok, embedder=char_embedder)
    prompts = [chat(p) for p in PROMPTS for _ in range(N)]
    comps = ["one reply here"] * 8
    ids = [[5, tok.eos_token_id]] * 8
    with pytest.raises(ValueError, match="got 6 completions, not whole groups of 4.*num_generations=4"):
        reward(prompts[:6], comps[:6], ids[:6])
    with pytest.raises(ValueError, match=r"completions 0\.\.3 do not share one prompt.*num_generations"):
        reward(prompts[2:] + prompts[:2], comps, ids)
    with pytest.raises(ConfigError, match="set_size"):
        PolychromicReward(N, tokenizer=tok, set_size=4)
    with pytest.raises(ConfigError, match="objective.set_reward"):
        PolychromicReward(N, tokenizer=tok, set_reward="mean")
    with pytest.raises(ValueError, match="relevance_column='raw'.*no such dataset column"):
        PolychromicReward(N, tokenizer=tok, embedder=char_embedder, relevance_column="raw")(prompts, comps, ids)

    from trl import GRPOConfig

    good = GRPOConfig(output_dir="unused", use_cpu=True, per_device_train_batch_size=N, report_to=[], **reward.grpo_settings())
    reward.check(good)  # raises nothing
    bad = GRPOConfig(output_dir="unused", use_cpu=True, per_device_train_batch_size=N, report_to=[], num_generations=2,
                     loss_type="dapo", scale_rewards="group", top_p=0.9, num_iterations=2, gradient_accumulation_steps=3,
                     steps_per_generation=2)
    errors, off = reward.problems(bad)
    assert len(errors) == 1 and "num_generations=2" in errors[0]
    text = "\n".join(off)
    for name in ("loss_type='dapo'", "scale_rewards='group'", "top_p=0.9", "num_iterations=2", "steps_per_generation=2",
                 "disable_dropout=False"):
        assert name in text, name
    with pytest.raises(ValueError, match="num_generations=2"):
        reward.check(bad, exact=False)
    ok_groups = GRPOConfig(output_dir="unused", use_cpu=True, per_device_train_batch_size=N, report_to=[], num_generations=N)
    with pytest.warns(UserWarning, match="loss_type"):
        reward.check(ok_groups, exact=False)
    with pytest.raises(ValueError, match="loss_type"):
        reward.check(ok_groups)


def test_from_config_takes_our_objective_and_rollout_settings(tok):
    reward = PolychromicReward.from_config("demo/polychromic", ["objective.kl_beta=0.1", "objective.kl_estimator=k2"], tokenizer=tok)
    cfg = load_config("demo/polychromic")
    assert reward.num_generations == cfg.rollout.n_generations and reward.objective.quality == cfg.objective.quality
    assert reward.scale == cfg.objective.diversity_weight * cfg.rollout.n_generations
    s = reward.grpo_settings()
    assert (s["max_completion_length"], s["temperature"]) == (cfg.rollout.max_generation_length, cfg.rollout.diversity_temperature)
    assert (s["beta"], s["use_bias_correction_kl"], s["loss_type"], s["scale_rewards"]) == (0.1, True, "dr_grpo", "none")

    from trl import GRPOConfig

    k3_kl = GRPOConfig(output_dir="unused", use_cpu=True, per_device_train_batch_size=reward.num_generations, report_to=[],
                       **{**s, "use_bias_correction_kl": False})
    assert any("use_bias_correction_kl=False" in p and "'k2'" in p for p in reward.problems(k3_kl)[1])


# --- processes ---------------------------------------------------------------------------------


def _gather_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        texts = ["a cat sat here", "dogs run fast", "birds can fly high", "fish swim deep"]
        half = slice(2 * rank, 2 * rank + 2)  # one group of 4 split 2 / 2 across the processes
        reward = PolychromicReward(4, eos_token_ids=[2], embedder=char_embedder, quality="constant")
        r = reward(["pets?"] * 2, texts[half], [[5, 2]] * 2)
        Path(out, f"rank{rank}.json").write_text(json.dumps(r))
        if rank == 1:  # a bad slice on one rank fails on every rank, none hangs
            bad = ["x?", "y?"]
        else:
            bad = ["x?", "x?"]
        try:
            reward(bad, texts[half], [[5, 2]] * 2)
            Path(out, f"err{rank}.txt").write_text("")
        except ValueError as exc:
            Path(out, f"err{rank}.txt").write_text(str(exc))
    finally:
        dist.destroy_process_group()


def test_groups_split_across_processes_are_gathered(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(2, f"file://{tmp_path / 'store'}", str(tmp_path)), nprocs=2, join=True)
    got = json.loads((tmp_path / "rank0.json").read_text()) + json.loads((tmp_path / "rank1.json").read_text())
    whole = PolychromicReward(4, eos_token_ids=[2], embedder=char_embedder, quality="constant")(
        ["pets?"] * 4, ["a cat sat here", "dogs run fast", "birds can fly high", "fish swim deep"], [[5, 2]] * 4)
    np.testing.assert_allclose(got, whole, atol=1e-12)
    assert sum(got) == pytest.approx(0.0, abs=1e-12) and max(map(abs, got)) > 0
    for rank in (0, 1):
        assert "do not share one prompt" in (tmp_path / f"err{rank}.txt").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TWO_PROCESS_RUN = r'''
import json, os, sys, numpy as np, torch
sys.path.insert(0, sys.argv[3])
from test_trl import char_embedder, make_trainer, PROMPTS
from polychromic.config import ModelConfig
from polychromic.integrations.trl import PolychromicReward
from polychromic.models import load_tokenizer
tok = load_tokenizer(ModelConfig(path=sys.argv[1], dtype="float32"))
seen = []
class Recording(PolychromicReward):
    def __call__(self, prompts, completions, completion_ids, **kw):
        r = super().__call__(prompts, completions, completion_ids, **kw)
        seen.append({"prompts": [p[-1]["content"] for p in prompts], "rewards": r})
        return r
reward = Recording(4, tokenizer=tok, embedder=char_embedder, quality="constant")
trainer = make_trainer(sys.argv[1], tok, reward, __import__("pathlib").Path(sys.argv[2]) / "trl", PROMPTS * 2,
                       per_device_train_batch_size=2, max_steps=2)
before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
trainer.train()
moved = any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if p.requires_grad)
rank = int(os.environ["RANK"])
open(os.path.join(sys.argv[2], f"seen{rank}.json"), "w").write(json.dumps({"seen": seen, "moved": moved}))
'''


@pytest.mark.slow
def test_two_process_grpo_run_scores_split_groups(tiny_model_dir, tmp_path):
    # per_device_train_batch_size 2 with num_generations 4: every group is split across the ranks
    script = tmp_path / "run.py"
    script.write_text(TWO_PROCESS_RUN)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(script), str(tiny_model_dir), str(tmp_path), str(ROOT / "tests")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    runs = [json.loads((tmp_path / f"seen{k}.json").read_text()) for k in (0, 1)]
    assert all(run["moved"] for run in runs)
    for c0, c1 in zip(runs[0]["seen"], runs[1]["seen"]):
        assert len(c0["prompts"]) == len(c1["prompts"]) == 2 and c0["prompts"] == c1["prompts"]  # one group, half each
        group = c0["rewards"] + c1["rewards"]
        assert sum(group) == pytest.approx(0.0, abs=1e-9) and max(map(abs, group)) > 0


# --- runs --------------------------------------------------------------------------------------


def test_short_grpo_run_changes_the_adapter(tiny_model_dir, tok, tmp_path):
    reward = PolychromicReward(N, tokenizer=tok, embedder=char_embedder, quality="constant", relevance_column="raw_prompt")
    trainer = make_trainer(tiny_model_dir, tok, reward, tmp_path / "trl", PROMPTS * 3, per_device_train_batch_size=2 * N, max_steps=3)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    changed = [n for n in before if not torch.equal(before[n], after[n].detach())]
    assert changed and any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    logs = [row for row in trainer.state.log_history if "loss" in row]
    assert len(logs) == 3
    for row in logs:
        assert abs(row["rewards/polychromic/mean"]) < 1e-6 and row["rewards/polychromic/std"] > 0
        assert 0 < row["polychromic/diversity_score"] <= 1 and row["polychromic/quality_mean"] == 1.0


def _load_example():
    spec = importlib.util.spec_from_file_location("trl_grpo_example", ROOT / "examples" / "trl_grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_example_runs_on_the_embedded_model(tmp_path, embedded_dir):
    example = _load_example()
    out = tmp_path / "run"
    # 8 new tokens truncate every reply (the guard would zero every quality): relevance alone
    rc = example.main(["--output-dir", str(out), "--max-steps", "1", "--prompts-per-step", "1", "--max-completion-length", "8",
                       "--set", f"data.prepared_dir={tmp_path / 'missing'}", "--set", "objective.quality=relevance"])
    assert rc == 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "data" / "train.jsonl").is_file()
    rows = [json.loads(x) for x in (out / "log_history.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and abs(rows[0]["rewards/polychromic/mean"]) < 1e-6
    assert rows[0]["rewards/polychromic/std"] > 0 and rows[0]["grad_norm"] > 0 and 0 < rows[0]["polychromic/quality_mean"] <= 1
