"""Objectives on the tiny model: exact zero gradient for zero advantages, a live diversity gradient
for lambda > 0, float_penalty == sft bit for bit, CE normalisation under gradient accumulation,
and the quality guard / distances they rely on."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from polychromic.config import LoraConfig, ModelConfig, ObjectiveConfig, load_config
from polychromic.data import collate, collate_packed, encode_example
from polychromic.models import attach_lora, load_base_model, load_tokenizer
from polychromic.training.objectives import OBJECTIVES, polychromic as poly
from polychromic.training.objectives.sft import ce_loss, count_targets
from polychromic.rewards import distance_matrix, guard, relevance, repeat_fraction, score_parts, score_quality
from polychromic.training.rollout import generate_rollouts, pack, token_logprobs
from polychromic.training.loop import train

PROMPTS = [f"what do you think of topic number {i} today?" for i in range(12)]


def write_prepared(folder, n_rows=24):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": f"r{i}", "group": f"g{i // 2}", "prompt": PROMPTS[i // 2], "reply": f"I like topic {i // 2}, it is fine number {i % 5}."}
        for i in range(n_rows)
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def make_config(tmp_path, model_dir, overrides=()):
    data = write_prepared(tmp_path / "prepared")
    base = [
        f"model.path={model_dir}", "model.dtype=float32",
        "lora.r=4", "lora.alpha=8", "lora.dropout=0.1", "lora.target_modules=[q_proj,v_proj]",
        f"data.prepared_dir={data}", "data.max_length=64",
        "rollout.n_generations=4", "rollout.max_examples_for_diversity=2", "rollout.max_generation_length=6",
        "trainer.batch_size=2", "trainer.grad_accum=2", "trainer.lr=1e-3", "trainer.warmup_ratio=0.0",
        "trainer.save_every=100", "trainer.device=cpu", f"runs_dir={tmp_path / 'runs'}",
    ]
    return load_config(None, base + list(overrides))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    mcfg = ModelConfig(path=str(tiny_model_dir), dtype="float32")
    tok = load_tokenizer(mcfg)
    torch.manual_seed(0)
    model = attach_lora(load_base_model(mcfg, torch.device("cpu")), LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    # LoRA B starts at zero, which would make the A gradients vanish: give it a value.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.train()
    return model, tok


def lora_grads(model):
    return {n: p.grad.clone() if p.grad is not None else None for n, p in model.named_parameters() if p.requires_grad}


def test_registry_has_one_module_per_objective():
    assert set(OBJECTIVES) == {"sft", "float_penalty", "polychromic"}
    assert OBJECTIVES["sft"].NEEDS_ROLLOUTS is False
    assert OBJECTIVES["polychromic"].NEEDS_ROLLOUTS and OBJECTIVES["float_penalty"].NEEDS_ROLLOUTS


def _rollouts(model, tok, n=4, length=6, seed=3):
    cfg = load_config(None, ["rollout.n_generations=%d" % n, "rollout.max_generation_length=%d" % length])
    ids = [tok("hello there, how are you?")["input_ids"], tok("tell me a joke")["input_ids"]]
    return generate_rollouts(model, tok, ["hello there, how are you?", "tell me a joke"], ids, cfg.rollout, seed=seed)


def test_rollouts_one_call_seeded_and_rng_untouched(tiny):
    model, tok = tiny
    torch.manual_seed(7)
    before = torch.get_rng_state()
    a = _rollouts(model, tok)
    assert torch.equal(torch.get_rng_state(), before)  # the run's RNG stream is left alone
    b = _rollouts(model, tok)
    assert a.completion_ids == b.completion_ids and (a.m, a.n) == (2, 4)
    c = _rollouts(model, tok, seed=4)
    assert c.completion_ids != a.completion_ids
    assert all(len(y) <= 6 for g in a.completion_ids for y in g)
    assert a.params.top_p == 1.0 and a.params.top_k == 0 and a.params.temperature == 0.9


def test_recomputed_logprobs_match_a_plain_forward(tiny):
    model, tok = tiny
    ro = _rollouts(model, tok)
    model.eval()
    # both groups in one batch: the shorter prompt is left-padded, completions right-padded
    prompts = [p for p in ro.prompt_ids for _ in range(ro.n)]
    comps = [y for g in ro.completion_ids for y in g]
    assert len(set(map(len, prompts))) == 2
    batch = pack(prompts, comps, 0, "cpu")
    with torch.no_grad():
        lp = token_logprobs(model, batch, 0.9)
        for i, (p, y) in enumerate(zip(prompts, comps)):
            full = torch.tensor([p + y])
            logits = model(input_ids=full).logits[0, len(p) - 1 : -1] / 0.9
            ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(y)[:, None])[:, 0]
            torch.testing.assert_close(lp[i, : len(y)], ref, atol=1e-5, rtol=1e-5)
            assert torch.all(lp[i, len(y) :] == 0)
    model.train()


def test_zero_advantages_give_exactly_zero_gradient(tiny):
    model, tok = tiny
    ro = _rollouts(model, tok)
    model.zero_grad(set_to_none=True)
    batch = pack([ro.prompt_ids[0]] * ro.n, ro.completion_ids[0], 0, "cpu")
    loss = poly.div_loss(token_logprobs(model, batch, 0.9).sum(1), torch.zeros(ro.n), 6.0, ro.m)
    loss.backward()
    grads = lora_grads(model)
    assert grads and all(g is not None and torch.all(g == 0) for g in grads.values())
    # and non-zero advantages do move the parameters (the check above can fail)
    model.zero_grad(set_to_none=True)
    poly.div_loss(token_logprobs(model, batch, 0.9).sum(1), torch.tensor([1.0, -1.0, 0.5, -0.5]), 6.0, ro.m).backward()
    assert any(torch.any(g != 0) for g in lora_grads(model).values())
    model.zero_grad(set_to_none=True)


def _char_embedder(texts):
    # letter/digit counts: a deterministic stand-in for a sentence embedder (injected function);
    # the tiny model's random-token replies share no word, so lexical distances are all 1 there
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    return np.array([[t.lower().count(c) for c in chars] + [1.0] for t in texts], dtype=float)


def test_diversity_term_has_nonzero_gradient_with_lambda(tiny):
    model, tok = tiny
    cfg = load_config(None, ["objective.name=polychromic", "objective.diversity_weight=1.0", "objective.quality=constant",
                             "rollout.n_generations=4", "rollout.max_generation_length=6"])
    ro = _rollouts(model, tok)
    model.zero_grad(set_to_none=True)
    terms = poly.rollout_term(model, ro, _char_embedder, cfg, lambda loss: loss.backward())
    norm = torch.sqrt(sum((g ** 2).sum() for g in lora_grads(model).values() if g is not None))
    assert norm > 0
    assert terms.logs["train/advantage_std"] > 0 and 0 < terms.logs["train/diversity_score"] <= 1
    assert terms.logs["train/quality_mean"] == 1.0
    model.zero_grad(set_to_none=True)
    # KL to the base with the adapter disabled: positive, since B != 0 makes policy != base
    cfg_kl = load_config(None, ["objective.name=polychromic", "objective.diversity_weight=1.0", "objective.kl_beta=0.5",
                                "objective.quality=constant", "rollout.n_generations=4"])
    kl_terms = poly.rollout_term(model, ro, _char_embedder, cfg_kl, lambda loss: loss.backward())
    assert kl_terms.logs["train/kl"] > 0
    model.zero_grad(set_to_none=True)


def test_ce_normalised_over_the_whole_accumulated_batch(tiny):
    model, tok = tiny
    model.eval()  # no dropout: compare gradients exactly
    dcfg = load_config(None, ["data.max_length=64"]).data
    ex = [encode_example(tok, dcfg, PROMPTS[i], "ok " * (1 + 3 * i) + "done") for i in range(4)]  # unequal lengths
    pad = tok.pad_token_id

    def grads_for(micro_sizes, per_micro_mean=False, multiple=1, packed=False):
        model.zero_grad(set_to_none=True)
        batches, start = [], 0
        for s in micro_sizes:
            batches.append(collate_packed(ex[start : start + s]) if packed else collate(ex[start : start + s], pad, multiple))
            start += s
        total = sum(count_targets(b) for b in batches)
        for b in batches:
            loss, _ = ce_loss(model, b, count_targets(b) * len(batches) if per_micro_mean else total)
            loss.backward()
        return torch.cat([g.flatten() for g in lora_grads(model).values()])

    one_batch = grads_for([4])
    accumulated = grads_for([2, 2])
    torch.testing.assert_close(accumulated, one_batch, atol=1e-6, rtol=1e-5)
    # trainer.pad_to_multiple_of: wider batches, padding never attended nor scored, same gradient
    assert collate(ex[:2], pad, 32)["input_ids"].shape[1] % 32 == 0
    torch.testing.assert_close(grads_for([2, 2], multiple=32), one_batch, atol=1e-6, rtol=1e-5)
    # trainer.packed_sft: the micro-batches end to end without padding, the same loss and gradient
    assert sum(count_targets(collate_packed(ex[i : i + 2])) for i in (0, 2)) == count_targets(collate(ex, pad))
    torch.testing.assert_close(grads_for([2, 2], packed=True), one_batch, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grads_for([4], packed=True), one_batch, atol=1e-6, rtol=1e-5)
    _, ce_padded = ce_loss(model, collate(ex, pad), 1.0)
    _, ce_packed = ce_loss(model, collate_packed(ex), 1.0)
    torch.testing.assert_close(ce_packed, ce_padded, atol=1e-5, rtol=1e-6)
    # averaging per micro-batch (the usual mistake) gives a different gradient here
    assert not torch.allclose(grads_for([2, 2], per_micro_mean=True), one_batch, atol=1e-6, rtol=1e-5)
    model.train()
    model.zero_grad(set_to_none=True)


def test_float_penalty_trains_exactly_sft(tiny_model_dir, tmp_path):
    # LoRA dropout 0.1 is on: the rollouts must not shift the dropout RNG stream.
    common = ["trainer.max_steps=3", "objective.diversity_weight=2.0"]
    sft = train(make_config(tmp_path, tiny_model_dir, common + ["experiment=sft", "objective.name=sft"]))
    fp = train(make_config(tmp_path, tiny_model_dir, common + ["experiment=fp", "objective.name=float_penalty"]))
    a, b = load_file(str(sft / "adapter" / "adapter_model.safetensors")), load_file(str(fp / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_sft = [json.loads(x) for x in (sft / "metrics.jsonl").read_text().splitlines()]
    rows_fp = [json.loads(x) for x in (fp / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/quality_loss"] for r in rows_sft] == [r["train/quality_loss"] for r in rows_fp]
    # only the logged loss moves: combined = CE - lambda * D with D > 0
    for r in rows_fp:
        assert 0 < r["train/diversity_score"] <= 1
        assert r["train/combined_loss"] == pytest.approx(r["train/quality_loss"] - 2.0 * r["train/diversity_score"])
        assert r["train/grad_norm_div"] == 0.0
    assert "train/diversity_score" not in rows_sft[0]


def test_packed_sft_trains_the_padded_adapter(tiny_model_dir, tmp_path, monkeypatch):
    """trainer.packed_sft=true through `polychromic train` (the per-sequence attention on a CPU):
    the micro-batches go packed, and without dropout the adapter is the padded run's."""
    import polychromic.training.loop as loop

    seen, real = [], loop.collate_packed
    monkeypatch.setattr(loop, "collate_packed", lambda ex: (seen.append(len(ex)), real(ex))[1])
    common = ["trainer.max_steps=3", "objective.name=sft", "lora.dropout=0.0"]
    padded = train(make_config(tmp_path, tiny_model_dir, common + ["experiment=padded", "trainer.packed_sft=false"]))
    assert not seen
    packed = train(make_config(tmp_path, tiny_model_dir, common + ["experiment=packed", "trainer.packed_sft=true"]))
    assert seen == [2] * 6  # 3 steps x 2 micro-batches of 2
    a, b = load_file(str(padded / "adapter" / "adapter_model.safetensors")), load_file(str(packed / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-4, msg=k)
    rows = [[json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()] for r in (padded, packed)]
    assert [r["train/quality_loss"] for r in rows[1]] == pytest.approx([r["train/quality_loss"] for r in rows[0]], rel=1e-5)
    assert not torch.equal(a[next(k for k in a if "lora_B" in k)], torch.zeros_like(a[next(k for k in a if "lora_B" in k)]))


def test_packed_sft_is_refused_with_the_reason(tiny_model_dir, tmp_path):
    cfg = make_config(tmp_path, tiny_model_dir, ["trainer.max_steps=1", "objective.name=sft", "trainer.packed_sft=true",
                                                 "model.gradient_checkpointing=true"])
    with pytest.raises(ValueError, match="trainer.packed_sft: true.*gradient checkpointing"):
        train(cfg)


# ---------------------------------------------------------------------------------------------
# quality and distances


def test_guard_cases():
    assert guard("", True, 2, 0.5) == 0.0
    assert guard("   ", True, 2, 0.5) == 0.0
    assert guard("!!", True, 1, 0.5) == 0.0  # punctuation is not a word
    assert guard("hello", True, 2, 0.5) == 0.0  # too short
    assert guard("hello there", True, 2, 0.5) == 1.0
    assert guard("hello there friend", False, 2, 0.5) == 0.0  # truncated
    assert guard("ha ha ha ha ha ha", True, 2, 0.5) == 0.0  # repetitive
    assert guard("i love it i love it i love it", True, 2, 0.5) == 0.0
    assert guard("the cat sat on the mat and the cat slept", True, 2, 0.5) == 1.0
    assert repeat_fraction("a b c d".split()) == 0.0
    assert repeat_fraction("a b c a b c x y z w".split()) == pytest.approx(0.6)
    assert guard("a b c a b c x y z w", True, 2, 0.5) == 0.0 and guard("a b c a b c x y z w", True, 2, 0.7) == 1.0


def _toy_embedder(texts):
    # 3-d bag of a few words: deterministic, no model
    vocab = ["cat", "dog", "car"]
    return np.array([[t.count(w) for w in vocab] for t in texts], dtype=float) + 1e-9


def test_relevance_and_quality_modes():
    prompts = ["cat cat", "cat cat", "dog"]
    texts = ["cat", "car", "hello there dog dog"]
    r = relevance(prompts, texts, _toy_embedder)
    np.testing.assert_allclose(r, [1.0, 0.0, 1.0], atol=1e-6)
    ocfg = ObjectiveConfig(min_reply_words=2)
    finished = [True, True, True]
    parts = score_parts(prompts, texts, finished, _toy_embedder, ocfg)
    np.testing.assert_allclose(parts["guard"], [0, 0, 1])
    np.testing.assert_allclose(parts["quality"], [0, 0, 1.0], atol=1e-6)
    np.testing.assert_allclose(score_quality(prompts, texts, finished, _toy_embedder, ObjectiveConfig(quality="relevance")), [1, 0, 1], atol=1e-6)
    np.testing.assert_allclose(score_quality(prompts, texts, finished, None, ObjectiveConfig(quality="guard", min_reply_words=1)), [1, 1, 1])
    np.testing.assert_allclose(score_quality(prompts, texts, [False] * 3, None, ObjectiveConfig(quality="constant")), [1, 1, 1])
    with pytest.raises(ValueError, match="needs a sentence embedder"):
        score_quality(prompts, texts, finished, None, ObjectiveConfig())


def test_relevance_gate_is_a_constraint_not_a_reward():
    # relevance 1.0, 0.0, and cos = 0.6 for the third: the gate passes exactly those >= tau, as 1.
    emb = lambda xs: np.array([[1.0, 0.0] if "cat" in x else [0.0, 1.0] if "car" in x else [0.6, 0.8] for x in xs])
    prompts, texts = ["cat"] * 3, ["cat cat", "car car", "dog dog"]
    gate = lambda tau: score_quality(prompts, texts, [True] * 3, emb, ObjectiveConfig(quality="guard_x_relevance_gate", relevance_threshold=tau))
    np.testing.assert_array_equal(gate(0.5), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(gate(0.7), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(score_quality(prompts, texts, [True] * 3, emb, ObjectiveConfig()), [1.0, 0.0, 0.6], atol=1e-6)


def test_relevance_ramp_pays_relevance_up_to_tau_only():
    # relevance 1.0, 0.0, 0.6 (as above); the ramp is min(1, r / tau), times the guard.
    emb = lambda xs: np.array([[1.0, 0.0] if "cat" in x else [0.0, 1.0] if "car" in x else [0.6, 0.8] for x in xs])
    prompts, texts = ["cat"] * 3, ["cat cat", "car car", "dog dog"]
    ramp = lambda tau, fin=(True,) * 3: score_quality(prompts, texts, list(fin), emb,
                                                      ObjectiveConfig(quality="guard_x_relevance_ramp", relevance_threshold=tau))
    np.testing.assert_allclose(ramp(0.5), [1.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(ramp(0.8), [1.0, 0.0, 0.75], atol=1e-6)
    np.testing.assert_allclose(ramp(0.8, (True, True, False)), [1.0, 0.0, 0.0], atol=1e-6)  # a cut reply fails the guard


def test_semantic_distinct_is_the_mean_of_both():
    texts = ["the cat sat on the mat", "the cat sat on a hat", "a dog drove a red car fast"]
    both = distance_matrix(texts, "semantic_distinct", _toy_embedder)
    sem, dist = distance_matrix(texts, "semantic", _toy_embedder), distance_matrix(texts, "distinct")
    np.testing.assert_allclose(both, (sem + dist) / 2.0)
    assert 0.0 < both[0, 1] < both[0, 2]  # sharing words and meaning is closer than sharing nothing


@pytest.mark.parametrize("metric", ["semantic", "bleu", "distinct", "semantic_distinct"])
def test_distance_matrices(metric):
    texts = ["the cat sat on the mat", "the cat sat on the mat", "a dog drove a red car fast", ""]
    d = distance_matrix(texts, metric, _toy_embedder)
    assert d.shape == (4, 4)
    assert np.all(d >= 0) and np.all(d <= 1) and np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    assert d[0, 1] == pytest.approx(0.0, abs=1e-9)  # identical texts
    assert d[0, 2] > 0.5  # unrelated texts
    if metric in ("bleu", "distinct"):
        assert d[0, 3] == 1.0  # empty vs non-empty
    with pytest.raises(ValueError, match="unknown"):
        distance_matrix(texts, "cosine", _toy_embedder)


@pytest.mark.parametrize("quality, metric, expected", [
    ("guard", "semantic_distinct", True),  # the distance embeds (a third-run variant failed here before)
    ("guard", "semantic", True),
    ("guard", "distinct", False),
    ("guard", "bleu", False),
    ("guard_x_relevance_ramp", "distinct", True),  # the quality embeds
    ("constant", "distinct", False),
])
def test_needs_embedder(quality, metric, expected):
    from polychromic.rewards import needs_embedder

    assert needs_embedder(ObjectiveConfig(quality=quality, diversity_metric=metric)) is expected
