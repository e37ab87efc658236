"""Two-stage training on the tiny model: the SFT adapter merged into the base (disable_adapter() is
then exactly the SFT policy), validation of the adapter's base, a stage-2 run that trains only
the fresh LoRA against a KL reference that is the SFT policy, the stacked adapter that evaluates
both stages on the plain base, and EOS blocked consistently when min_new_tokens > 0."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from polychromic.config import EMBEDDED_MODEL, LoraConfig, ModelConfig, load_config
from polychromic.models import attach_lora, load_adapter, load_base_model, load_tokenizer, stack_adapters
from polychromic.training.loop import STACKED_ADAPTER_DIR, train
from helpers import write_prepared

CPU = torch.device("cpu")
LORA = ["lora.r=4", "lora.alpha=8", "lora.dropout=0.0", "lora.target_modules=[q_proj,v_proj]"]


def base_settings(tmp_path, model_dir, experiment):
    return [
        f"experiment={experiment}", f"runs_dir={tmp_path / 'runs'}", f"model.path={model_dir}", "model.dtype=float32",
        *LORA, f"data.prepared_dir={write_prepared(tmp_path / 'prepared')}", "data.max_length=64",
        "rollout.n_generations=4", "rollout.max_examples_for_diversity=2", "rollout.max_generation_length=6",
        "trainer.batch_size=2", "trainer.grad_accum=2", "trainer.warmup_ratio=0.0", "trainer.save_every=100", "trainer.device=cpu",
    ]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model_dir):
    """A real stage-1 run: 3 SFT steps at a high rate, so its adapter is far from zero."""
    root = tmp_path_factory.mktemp("stage1")
    cfg = load_config(None, base_settings(root, tiny_model_dir, "sft") + ["trainer.max_steps=3", "trainer.lr=2e-2"])
    run = train(cfg)
    return root, run


def _ids(tok, text="hello there, how are you today?"):
    return torch.tensor([tok(text)["input_ids"]])


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_base_with_lora_disabled_is_the_sft_policy(sft_run, tiny_model_dir):
    _, run = sft_run
    mcfg = ModelConfig(path=str(tiny_model_dir), dtype="float32")
    tok = load_tokenizer(mcfg)
    ids = _ids(tok)
    sft = load_adapter(load_base_model(mcfg, CPU), run / "adapter")
    want = _logits(sft, ids)
    plain = _logits(load_base_model(mcfg, CPU), ids)
    assert (want - plain).abs().max() > 1e-2  # the SFT adapter really moved the policy

    merged_cfg = ModelConfig(path=str(tiny_model_dir), dtype="float32", init_adapter=str(run / "adapter"))
    stage2 = attach_lora(load_base_model(merged_cfg, CPU), LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "k_proj"]))
    with torch.no_grad():
        for name, p in stage2.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # the fresh LoRA now changes the policy
    torch.testing.assert_close(_disabled(stage2, ids), want, atol=2e-5, rtol=0)
    assert (_logits(stage2, ids) - want).abs().max() > 1e-3
    # only the fresh LoRA is trainable; the merged base is frozen
    trainable = [n for n, p in stage2.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".default." in n for n in trainable)
    assert not any("init" in n for n, _ in stage2.named_parameters())  # the SFT adapter is merged, not kept


def _disabled(model, ids):
    with torch.no_grad(), model.disable_adapter():
        return model(input_ids=ids).logits


def test_merge_consumes_no_random_numbers(sft_run, tiny_model_dir):
    _, run = sft_run
    torch.manual_seed(3)
    load_base_model(ModelConfig(path=str(tiny_model_dir), dtype="float32"), CPU)
    plain = torch.rand(4)
    torch.manual_seed(3)
    load_base_model(ModelConfig(path=str(tiny_model_dir), dtype="float32", init_adapter=str(run / "adapter")), CPU)
    assert torch.equal(torch.rand(4), plain)  # the fresh LoRA's seeded init is the same either way


def test_init_adapter_validation(sft_run, tiny_model_dir, tmp_path):
    root, run = sft_run
    good = run / "adapter"

    def load(path, model_path=str(tiny_model_dir)):
        return load_base_model(ModelConfig(path=model_path, dtype="float32", init_adapter=str(path)), CPU)

    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        load(tmp_path / "missing")
    # the run that wrote the adapter names another base model: refused, naming both
    other = tmp_path / "other_model"
    shutil.copytree(tiny_model_dir, other)
    with pytest.raises(ValueError, match=r"was trained on model.path=.*but this config loads model.path="):
        load(good, str(other))
    # an adapter whose matrices do not fit the base (outside a run directory: shapes are the check)
    bad = tmp_path / "bad" / "adapter"
    shutil.copytree(good, bad)
    w = load_file(str(bad / "adapter_model.safetensors"))
    key = next(k for k in w if "q_proj.lora_A" in k)
    w[key] = torch.zeros(4, 7)
    save_file(w, str(bad / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=r"does not fit the base model.*q_proj.lora_A: shape \(4, 7\), the base needs \(4, 64\)"):
        load(bad)
    dora = tmp_path / "dora"
    shutil.copytree(good, dora)
    conf = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**conf, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        load(dora)
    # an adapter that was itself trained on a merged base: chains are refused
    chained = tmp_path / "chained"
    shutil.copytree(run, chained, ignore=shutil.ignore_patterns("checkpoints"))
    data = yaml.safe_load((chained / "config.yaml").read_text())
    data["model"]["init_adapter"] = "/somewhere/adapter"
    (chained / "config.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="chains of merged adapters are not supported"):
        load(chained / "adapter")


def test_stage2_trains_only_the_fresh_lora_against_the_sft_policy(sft_run, tiny_model_dir):
    root, sft = sft_run
    sft_bytes = (sft / "adapter" / "adapter_model.safetensors").read_bytes()
    cfg = load_config(None, base_settings(root, tiny_model_dir, "stage2") + [
        f"model.init_adapter={sft / 'adapter'}", "objective.name=polychromic", "objective.diversity_weight=1.0",
        "objective.quality=relevance", "objective.kl_beta=0.5", "objective.kl_estimator=k2", "objective.ce_weight=0",
        "objective.set_diversity=vendi", "trainer.max_steps=2", "trainer.lr=1e-2", "rollout.diversity_temperature=1.0",
    ])
    run = train(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # step 1: the fresh LoRA's B is 0, so the policy IS the reference: with the SFT policy as the
    # reference the KL is exactly 0 (with the pre-SFT base it would not be: the SFT adapter moved it)
    assert rows[0]["train/kl"] == 0.0 and rows[1]["train/kl"] > 0.0
    for r in rows:  # ce_weight 0: CE measured, not trained
        assert r["train/grad_norm_ce"] == 0.0 and r["train/quality_loss"] > 0 and r["train/grad_norm_div"] > 0
        assert r["train/loss"] == pytest.approx(r["train/rollout_term"])
        for k in ("train/adv_var_quality", "train/adv_var_diversity", "train/set_diversity"):
            assert np.isfinite(r[k]) and r[k] >= 0
        assert 0.5 - 1e-9 <= r["train/set_diversity"] <= 1.0  # Vendi / n with n = 2 lies in [1/2, 1]
    assert (sft / "adapter" / "adapter_model.safetensors").read_bytes() == sft_bytes  # stage 1 untouched

    mcfg = ModelConfig(path=str(tiny_model_dir), dtype="float32")
    fresh = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert fresh and all(t.shape[0] == 4 or t.shape[1] == 4 for t in fresh.values())  # r = 4: the fresh LoRA alone
    assert any(float(t.abs().max()) > 0 for k, t in fresh.items() if "lora_B" in k)  # and it trained
    # The stacked adapter on the plain base = the merged base + the stage-2 adapter.
    tok = load_tokenizer(mcfg)
    ids = _ids(tok, "tell me a joke about topics")
    merged = load_adapter(load_base_model(cfg.model, CPU), run / "adapter")
    stacked = load_adapter(load_base_model(mcfg, CPU), run / STACKED_ADAPTER_DIR)
    torch.testing.assert_close(_logits(stacked, ids), _logits(merged, ids), atol=2e-5, rtol=0)
    assert json.loads((run / STACKED_ADAPTER_DIR / "adapter_config.json").read_text())["r"] == 8
    # ... and differs from the SFT policy alone (stage 2 moved it)
    sft_model = load_adapter(load_base_model(mcfg, CPU), sft / "adapter")
    assert (_logits(stacked, ids) - _logits(sft_model, ids)).abs().max() > 1e-4


def test_stage2_sft_control_continues_sft_from_the_merged_base(sft_run, tiny_model_dir):
    # dialog/stage2_sft's shape: objective sft on the merged base (CE alone, no rollouts)
    root, sft = sft_run
    cfg = load_config(None, base_settings(root, tiny_model_dir, "stage2_sft") + [
        f"model.init_adapter={sft / 'adapter'}", "objective.name=sft", "trainer.max_steps=1", "trainer.lr=1e-2"])
    run = train(cfg)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["train/grad_norm_ce"] > 0 and "train/kl" not in row
    assert json.loads((run / STACKED_ADAPTER_DIR / "adapter_config.json").read_text())["r"] == 8


def test_stack_adapters_with_different_modules_ranks_and_scalings(tiny_model_dir, tmp_path):
    mcfg = ModelConfig(path=str(tiny_model_dir), dtype="float32")
    tok = load_tokenizer(mcfg)
    ids = _ids(tok)

    def random_adapter(path, r, alpha, modules, rslora=False, seed=0):
        torch.manual_seed(seed)
        m = attach_lora(load_base_model(mcfg, CPU), LoraConfig(r=r, alpha=alpha, dropout=0.0, target_modules=modules))
        if rslora:
            m.peft_config["default"].use_rslora = True
            for mod in m.modules():
                if hasattr(mod, "scaling") and isinstance(mod.scaling, dict) and "default" in mod.scaling:
                    mod.scaling["default"] = alpha / r**0.5
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        m.save_pretrained(path)
        return path

    a = random_adapter(tmp_path / "a", 2, 4, ["q_proj", "v_proj"], seed=1)
    b = random_adapter(tmp_path / "b", 4, 2, ["q_proj", "k_proj"], rslora=True, seed=2)
    two_stage = load_adapter(load_base_model(ModelConfig(path=str(tiny_model_dir), dtype="float32", init_adapter=str(a)), CPU), b)
    out = stack_adapters(a, b, tmp_path / "ab")
    stacked = load_adapter(load_base_model(mcfg, CPU), out)
    torch.testing.assert_close(_logits(stacked, ids), _logits(two_stage, ids), atol=2e-5, rtol=0)
    assert not (tmp_path / ".ab.tmp").exists()


def test_embedded_gguf_merge(tmp_path):
    mcfg = ModelConfig(path=EMBEDDED_MODEL, dtype="float32")
    tok = load_tokenizer(mcfg)
    ids = _ids(tok)
    torch.manual_seed(0)
    m = attach_lora(load_base_model(mcfg, CPU), LoraConfig(r=2, alpha=4, dropout=0.0, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    want = _logits(m, ids)
    m.save_pretrained(tmp_path / "adapter")
    del m
    merged = load_base_model(ModelConfig(path=EMBEDDED_MODEL, dtype="float32", init_adapter=str(tmp_path / "adapter")), CPU)
    torch.testing.assert_close(_logits(merged, ids), want, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# min_new_tokens: EOS blocked at sampling is blocked in the recomputed log-probs too


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recomputed_logprobs_are_the_sampling_distribution(tiny_model_dir, temperature):
    from polychromic.generation import SamplingParams
    from polychromic.generation.params import eos_ids
    from polychromic.training.rollout import pack, token_logprobs

    mcfg = ModelConfig(path=str(tiny_model_dir), dtype="float32")
    tok = load_tokenizer(mcfg)
    model = load_base_model(mcfg, CPU)
    eos = eos_ids(model, tok)
    # untie the head and make EOS likely (p ~ 0.3), so blocking it changes the log-probs visibly
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[eos] = 10.0
    model.lm_head = head
    prompt = tok("hello there")["input_ids"]
    params = SamplingParams(temperature=temperature, max_new_tokens=8, min_new_tokens=4)
    torch.manual_seed(0)
    pad = tok.pad_token_id
    out = model.generate(input_ids=torch.tensor([prompt] * 6), attention_mask=torch.ones(6, len(prompt), dtype=torch.long),
                         output_scores=True, return_dict_in_generate=True, **params.generation_kwargs(pad, eos))
    seqs = out.sequences[:, len(prompt):]
    # the distribution each token was drawn from: transformers' processed scores (EOS block, then T)
    sampled = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1).gather(-1, seqs[..., None])[..., 0]
    comps = []
    for row in seqs.tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
        comps.append(row[:cut])
    assert all(len(c) >= 4 for c in comps) and any(len(c) < 8 for c in comps)  # EOS came right after the block
    batch = pack([prompt] * 6, comps, 0, CPU)
    mask = batch["completion_mask"] > 0
    with torch.no_grad():
        on = token_logprobs(model, batch, temperature, 4, eos)
        off = token_logprobs(model, batch, temperature)
    torch.testing.assert_close(on[mask], sampled[:, : on.shape[1]][mask], atol=1e-4, rtol=0)
    gap = (off - on)[:, :4][mask[:, :4]]
    assert float(gap.abs().min()) > 0.1  # unblocked, the first 4 tokens would be scored off-policy
    assert torch.equal(off[:, 4:], on[:, 4:])  # after the block both agree
    with pytest.raises(ValueError, match="EOS id before min_new_tokens=4"):
        token_logprobs(model, pack([prompt], [[eos[0]]], 0, CPU), temperature, 4, eos)


def test_rollouts_carry_the_eos_ids_they_stopped_on(tiny_model_dir):
    from polychromic.generation.params import eos_ids
    from polychromic.training.objectives.polychromic import eos_blocked
    from polychromic.training.rollout import generate_rollouts

    mcfg = ModelConfig(path=str(tiny_model_dir), dtype="float32")
    tok = load_tokenizer(mcfg)
    model = load_base_model(mcfg, CPU)
    cfg = load_config(None, ["rollout.n_generations=2", "rollout.max_generation_length=5", "rollout.min_generation_length=2"])
    ro = generate_rollouts(model, tok, ["hi"], [tok("hi")["input_ids"]], cfg.rollout, seed=1)
    assert ro.eos_ids == eos_ids(model, tok) and ro.eos_ids
    assert eos_blocked(ro) == (2, ro.eos_ids)
