"""The policy-gradient recompute batched across prompt groups: the chunked tempered log-softmax
against torch's, and rollout_term's gradient (one pass, one sequence per pass, through the fast
LoRA path) against a plain group-by-group reference that runs every sequence on its own, unpadded."""

import inspect
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polychromic.config import LoraConfig, ModelConfig, load_config
from polychromic.models import attach_lora, load_base_model, load_tokenizer
from polychromic.training import fast_lora
from polychromic.training.objectives import polychromic as poly
from polychromic.training import packed as packed_mod
from polychromic.training.rollout import (fitting_rows, generate_rollouts, laid_tokens, pack, pack_packed, packing,
                                          rows_per_pass, scoring_stream, tempered_logprobs, to_device, token_logprobs)


def test_tempered_logprobs_match_log_softmax_in_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(13, 50, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 50, (13,), generator=g)
    block = torch.arange(13) % 3 == 0
    eos = [7, 11]
    y[block & torch.isin(y, torch.tensor(eos))] = 0  # a blocked EOS cannot have been sampled
    w = torch.randn(13, generator=g, dtype=torch.float64)
    for blk, fused in ((None, False), (block, False), (block, True)):
        ref_z = (z / 0.7).clone()
        if blk is not None:
            ref_z[blk.nonzero(), torch.tensor(eos)[None]] = float("-inf")
        z1 = z.clone().requires_grad_(True)
        ref = torch.log_softmax(z1 / 0.7 + (ref_z - z / 0.7).nan_to_num(neginf=float("-inf")), -1).gather(1, y[:, None])[:, 0]
        (ref * w).sum().backward()
        z2 = z.clone().requires_grad_(True)
        # 2 rows per chunk: the chunk loop runs 7 times, the last chunk short; fused: one compiled kernel
        got = tempered_logprobs(z2, y, 0.7, blk, eos if blk is not None else (), chunk_bytes=2 * 4 * 50, fused=fused)
        (got * w).sum().backward()
        torch.testing.assert_close(got, ref.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(z2.grad, z1.grad, rtol=1e-12, atol=1e-12)
        assert got.dtype == torch.float64 and torch.all(z2.grad.abs().sum(1) > 0)
    # bf16 logits: float32 arithmetic inside, the gradient returned in bf16
    zb = z.to(torch.bfloat16).requires_grad_(True)
    lp = tempered_logprobs(zb, y, 1.3)
    ref = torch.log_softmax(zb.detach().float() / 1.3, -1).gather(1, y[:, None])[:, 0]
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp.detach(), ref, rtol=1e-6, atol=1e-6)
    lp.sum().backward()
    assert zb.grad.dtype == torch.bfloat16


def test_pack_is_right_padded_with_real_positions():
    b = pack([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], 0, "cpu")
    assert b["input_ids"].tolist() == [[5, 6, 7, 1, 2], [8, 3, 4, 9, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert b["position_ids"].tolist() == [list(range(b["input_ids"].shape[1]))]  # one row, broadcast
    assert b["logit_index"].tolist() == [[2, 3, 0], [0, 1, 2]]
    assert b["completion_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    with pytest.raises(ValueError, match="empty prompt"):
        pack([[]], [[1]], 0, "cpu")
    # rounded up to a multiple: only padding is added, every other tensor is the same
    b8 = pack([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], 0, "cpu", multiple=8)
    assert b8["input_ids"].tolist() == [[5, 6, 7, 1, 2, 0, 0, 0], [8, 3, 4, 9, 0, 0, 0, 0]]
    assert b8["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]]
    for k in ("logit_index", "completion_mask", "completion_ids"):
        assert torch.equal(b8[k], b[k]), k
    assert pack([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], 0, "cpu", multiple=5)["input_ids"].shape == (2, 5)
    with pytest.raises(ValueError, match="pad multiple 0"):
        pack([[5]], [[1]], 0, "cpu", multiple=0)


def test_pack_packed_lays_sequences_end_to_end_with_restarting_positions():
    b = pack_packed([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], "cpu")
    assert b["input_ids"].tolist() == [[5, 6, 7, 1, 2, 8, 3, 4, 9]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3]]
    assert b["cu_seqlens"].tolist() == [0, 5, 9] and b["cu_seqlens"].dtype == torch.int32
    assert b["max_len"] == 5
    assert b["logit_index"].tolist() == [[2, 3, 0], [5, 6, 7]]  # positions in the row
    assert b["completion_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert b["completion_ids"].tolist() == [[1, 2, 0], [3, 4, 9]]
    # the same completion tensors as the padded layout, an empty completion included
    p, y = [[5, 6, 7], [8], [4, 4]], [[1, 2], [3, 4, 9], []]
    for k in ("completion_ids", "completion_mask"):
        assert torch.equal(pack_packed(p, y, "cpu")[k], pack(p, y, 0, "cpu")[k]), k
    with pytest.raises(ValueError, match="empty prompt"):
        pack_packed([[]], [[1]], "cpu")
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        pack_packed([[1], [2]], [[1]], "cpu")


def test_pack_packed_shares_a_prompt_among_the_samples_that_follow_it():
    p = [[5, 6, 7], [5, 6, 7], [8], [5, 6, 7], [8], [8]]
    y = [[1, 2], [3], [4, 9], [10, 11], [], [12]]
    b = pack_packed(p, y, "cpu")
    # [5,6,7]+[1,2] | [3] | [8]+[4,9] | [5,6,7]+[10,11] (not after its like) | [8]+[] (empty: its own) | [12]
    assert b["input_ids"].tolist() == [[5, 6, 7, 1, 2, 3, 8, 4, 9, 5, 6, 7, 10, 11, 8, 12]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 2, 0, 1, 2, 3, 4, 0, 1]]
    assert b["cu_seqlens"].tolist() == [0, 5, 6, 9, 14, 15, 16] and b["max_len"] == 5
    assert b["cu_seqlens_k"].tolist() == [0, 5, 9, 12, 17, 18, 20] and b["max_len_k"] == 5
    assert b["cu_seqlens_k"].dtype == torch.int32
    assert b["kv_index"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 14, 15]
    # token 0 of a shared completion is predicted at its prompt copy's last token
    assert b["logit_index"].tolist() == [[2, 3], [2, 0], [6, 7], [11, 12], [0, 0], [14, 0]]
    assert b["completion_ids"].tolist() == [[1, 2], [3, 0], [4, 9], [10, 11], [0, 0], [12, 0]]
    assert b["completion_mask"].tolist() == [[1, 1], [1, 0], [1, 1], [1, 1], [0, 0], [1, 0]]
    # without sharing: the layout of one prompt copy per sequence, and no key-side tensors
    flat = pack_packed(p, y, "cpu", share_prompts=False)
    assert "kv_index" not in flat and flat["input_ids"].shape[1] == sum(map(len, p)) + sum(map(len, y))
    assert flat["cu_seqlens"].tolist() == [0, 5, 9, 12, 17, 18, 20]
    assert "kv_index" not in pack_packed([[5], [6]], [[1], [2]], "cpu")  # nothing to share


def test_shared_prompt_attention_is_bottom_right_causal():
    """The per-segment attention of a shared prompt against SDPA over the whole sequence."""
    g = torch.Generator().manual_seed(1)
    heads, kv_heads, d = 4, 2, 8
    prompt, comps = 5, (3, 4, 1)
    full = [torch.randn(prompt + c, heads + 2 * kv_heads, d, generator=g, dtype=torch.float64) for c in comps]
    for f in full[1:]:
        f[:prompt] = full[0][:prompt]  # one prompt, three samples: the prompt's q, k, v are the same
    ref = [F.scaled_dot_product_attention(*(f[:, s:e].transpose(0, 1) for s, e in ((0, heads), (heads, heads + kv_heads),
                                           (heads + kv_heads, heads + 2 * kv_heads))), is_causal=True,
                                           enable_gqa=True).transpose(0, 1) for f in full]
    b = pack_packed([list(range(prompt))] * 3, [list(range(c)) for c in comps], "cpu")
    row = torch.cat([full[0]] + [f[prompt:] for f in full[1:]])  # the packed row's tokens
    q, k, v = row[:, :heads], row[:, heads : heads + kv_heads], row[:, heads + kv_heads :]
    out, _ = packed_mod.packed_attention(None, q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], None,
                                         **{packed_mod.CU_SEQLENS: b["cu_seqlens"], packed_mod.MAX_LEN: b["max_len"],
                                            packed_mod.KV_INDEX: b["kv_index"], packed_mod.CU_SEQLENS_K: b["cu_seqlens_k"],
                                            packed_mod.MAX_LEN_K: b["max_len_k"]})
    want = torch.cat([ref[0]] + [r[prompt:] for r in ref[1:]])
    torch.testing.assert_close(out[0], want, rtol=1e-12, atol=1e-12)


def test_shared_segments_are_refused_where_the_kernel_aligns_the_causal_mask_at_the_top_left(monkeypatch):
    def top_left(q, k, v, cu, cu_k, max_q, max_k, scaling):  # SDPA's is_causal: query i sees keys 0 .. i
        (s, e), (sk, ek) = cu.tolist(), cu_k.tolist()
        return F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[sk:ek].transpose(0, 1), v[sk:ek].transpose(0, 1),
                                              is_causal=True).transpose(0, 1)

    def bottom_right(q, k, v, cu, cu_k, max_q, max_k, scaling):
        return packed_mod._per_sequence(q, k, v, cu, cu_k, scaling)

    for kernel, ok in ((top_left, False), (bottom_right, True)):
        monkeypatch.setattr(packed_mod, "_varlen", kernel)
        packed_mod._aligns_bottom_right.cache_clear()
        assert packed_mod._aligns_bottom_right("cpu") is ok
    packed_mod._aligns_bottom_right.cache_clear()
    packed_mod.check_shared_segments("cpu")  # a CPU runs the per-segment path: nothing to check
    if packed_mod.varlen_kernel():
        monkeypatch.setattr(packed_mod, "_aligns_bottom_right", lambda device: False)
        with pytest.raises(RuntimeError, match="rollout.share_prompts: this torch's variable-length attention kernel "
                                               "does not align .* set rollout.share_prompts: false"):
            packed_mod.check_shared_segments("cuda")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    mcfg = ModelConfig(path=str(tiny_model_dir), dtype="float32")
    tok = load_tokenizer(mcfg)
    torch.manual_seed(0)
    model = attach_lora(load_base_model(mcfg, torch.device("cpu")), LoraConfig(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():  # B = 0 would make the A gradients vanish
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.train()
    return model, tok


def _embed(texts):
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    return np.array([[t.lower().count(c) for c in chars] + [1.0] for t in texts], dtype=float)


def _grads(model):
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _reference_grads(model, ro, cfg):
    """The group-by-group term with every sequence run alone (no padding at all), through
    torch.log_softmax: the maths rollout_term must reproduce."""
    o = cfg.objective
    q, dist, _ = poly.score_rollouts(ro, _embed, o)
    rng = np.random.default_rng(ro.seed)
    adv = np.stack([poly.advantage_parts(q[i], dist[i], o, cfg.set_size, rng)["total"] for i in range(ro.m)])
    min_new, eos = poly.eos_blocked(ro)
    temp, l_norm = ro.params.temperature, float(ro.params.max_new_tokens)

    def logp(p, y):
        logits = model(input_ids=torch.tensor([p + y])).logits[0, len(p) - 1 : -1] / temp
        logits[: min(min_new, len(y)), eos] = float("-inf")
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(y)[:, None])[:, 0]

    with poly.dropout_off(model):
        for i in range(ro.m):
            toks = [logp(ro.prompt_ids[i], y) for y in ro.completion_ids[i]]
            loss = o.diversity_weight * poly.div_loss(torch.stack([t.sum() for t in toks]), torch.tensor(adv[i], dtype=torch.float32), l_norm, ro.m)
            with torch.no_grad(), model.disable_adapter():
                refs = [logp(ro.prompt_ids[i], y) for y in ro.completion_ids[i]]
            kl = sum(poly.k3(t, r, torch.ones_like(t)).sum() for t, r in zip(toks, refs)) / (ro.m * ro.n * l_norm)
            (loss + o.kl_beta * kl).backward()
    assert np.abs(adv).sum() > 0
    return _grads(model)


def test_batched_recompute_gives_the_group_by_group_gradient(tiny):
    model, tok = tiny
    base = ["objective.name=polychromic", "objective.diversity_weight=1.0", "objective.quality=constant", "objective.kl_beta=0.3",
            "rollout.n_generations=4", "rollout.max_examples_for_diversity=3", "rollout.max_generation_length=7",
            "rollout.min_generation_length=2", "rollout.diversity_temperature=0.8"]
    cfg = load_config(None, base)
    texts = ["hello there, how are you doing on this fine day?", "tell me a joke", "what is the weather like?"]
    ids = [tok(t)["input_ids"] for t in texts]
    assert len(set(map(len, ids))) == 3  # prompts of three lengths: a batched pass pads
    ro = generate_rollouts(model, tok, texts, ids, cfg.rollout, seed=5)
    assert len({len(y) for g in ro.completion_ids for y in g}) > 1 or any(not f for g in ro.finished for f in g)
    ref = _reference_grads(model, ro, cfg)
    assert ref and all(torch.isfinite(g).all() for g in ref.values()) and any(g.abs().sum() > 0 for g in ref.values())
    # one pass of all 12; one sequence per pass; passes straddling groups; widths padded to 16
    for extra in ([], ["rollout.recompute_rows=1"], ["rollout.recompute_rows=5"], ["trainer.pad_to_multiple_of=16"],
                  ["rollout.recompute_rows=5", "trainer.pad_to_multiple_of=7"], ["rollout.packed_recompute=true"],
                  ["rollout.packed_recompute=true", "rollout.recompute_rows=5"]):
        c = load_config(None, base + extra)
        terms = poly.rollout_term(model, ro, _embed, c, lambda loss: loss.backward())
        got = _grads(model)
        assert got.keys() == ref.keys()
        for n in ref:
            torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-7, msg=f"{n} with {extra}")
        assert terms.logs["train/kl"] >= 0
    # the trainer's LoRA path (training/fast_lora.py) against the same peft-path reference
    assert fast_lora.install(model) == 6
    try:
        for extra in ([], ["rollout.packed_recompute=true"]):
            poly.rollout_term(model, ro, _embed, load_config(None, base + extra), lambda loss: loss.backward())
            got = _grads(model)
            for n in ref:
                torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-7, msg=f"{n} through fast_lora {extra}")
    finally:
        fast_lora.uninstall(model)


OVERLAP_BASE = ["objective.name=polychromic", "objective.diversity_weight=1.0", "objective.quality=constant",
                "objective.kl_beta=0.3", "objective.diversity_metric=semantic", "rollout.n_generations=4",
                "rollout.max_examples_for_diversity=3", "rollout.max_generation_length=6", "rollout.diversity_temperature=0.8"]
OVERLAP_TEXTS = ["tell me a joke", "hello there, how are you?", "what is the weather like?"]


def test_rollout_term_labels_its_phases_in_order_and_overlaps_nothing_on_a_cpu(tiny, monkeypatch):
    """benchmarks/pg_profile.py names what the host was in during the GPU's idle gaps by these
    labels. On a CPU the overlapped scoring has no stream to overlap on: the same term."""
    from torch.profiler import ProfilerActivity, profile

    model, tok = tiny
    cfg = load_config(None, OVERLAP_BASE + ["rollout.recompute_rows=6"])  # two passes of 6
    ro = generate_rollouts(model, tok, OVERLAP_TEXTS, [tok(t)["input_ids"] for t in OVERLAP_TEXTS], cfg.rollout, seed=4)
    out = {}
    for on in (False, True):
        monkeypatch.setattr(poly, "OVERLAP_SCORING", on)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            terms = poly.rollout_term(model, ro, _embed, cfg, lambda loss: loss.backward())
        out[on] = (_grads(model), terms.loss)
        ranges = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events() if e.name.startswith("rollout_term."))
        assert [name for *_, name in ranges] == ["rollout_term.forward", "rollout_term.score", "rollout_term.advantages",
                                                "rollout_term.backward", "rollout_term.forward", "rollout_term.backward"]
        assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))  # one after another, none nested
    assert out[True][1] == out[False][1]
    for n, g in out[False][0].items():
        assert torch.equal(out[True][0][n], g), n


def test_to_device_keeps_values_and_dtype_and_scoring_stream_off_is_the_current_stream():
    values = np.array([0.5, -1.25, 3.0e-3])
    for dtype in (torch.float32, torch.bfloat16):
        t = to_device(values, dtype, torch.device("cpu"), overlap=False)
        assert t.dtype == dtype and t.device.type == "cpu"
        assert torch.equal(t, torch.as_tensor(values).to(dtype))
    with scoring_stream(torch.device("cpu"), False):
        assert torch.ones(2).sum() == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the second stream is a CUDA stream")
def test_overlapped_scoring_runs_on_a_second_stream_and_gives_the_same_term_on_a_gpu(monkeypatch):
    """A small random Qwen3 with LoRA on the GPU, rollouts of random ids laid out by hand (no
    tokenizer or embedded model needed there), KL on: the term and every gradient are the same
    with the scoring on the forward's stream and on a second one, where it runs only when on."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from polychromic.generation import SamplingParams
    from polychromic.training.rollout import Rollouts

    torch.manual_seed(0)
    qcfg = Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
    gpu = attach_lora(Qwen3ForCausalLM(qcfg), LoraConfig(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():  # B = 0 would make the A gradients vanish
        for name, p in gpu.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    gpu = gpu.to("cuda").train()
    cfg = load_config(None, OVERLAP_BASE)
    m, n = len(OVERLAP_TEXTS), cfg.rollout.n_generations
    g = torch.Generator().manual_seed(4)
    ro = Rollouts(prompt_texts=OVERLAP_TEXTS, prompt_ids=[torch.randint(4, 256, (5 + i,), generator=g).tolist() for i in range(m)],
                  completion_ids=[[torch.randint(4, 256, (2 + (i + j) % 5,), generator=g).tolist() for j in range(n)] for i in range(m)],
                  finished=[[False] * n for _ in range(m)], texts=[[f"reply {i} {j} " + "xyz"[j % 3] * (j + 1) for j in range(n)] for i in range(m)],
                  params=SamplingParams(temperature=0.8, max_new_tokens=6), seed=4, seconds=0.0, eos_ids=[1])
    streams = []

    def embed(texts):  # an encoder on the GPU, as the trainer's is: a copy in, a computation, a copy out
        streams.append(torch.cuda.current_stream())
        return (torch.as_tensor(_embed(texts)).to("cuda") * 2.0).cpu().numpy()

    out = {}
    for on in (False, True):
        monkeypatch.setattr(poly, "OVERLAP_SCORING", on)
        streams.clear()
        terms = poly.rollout_term(gpu, ro, embed, cfg, lambda loss: loss.backward())
        torch.cuda.synchronize()
        out[on] = (_grads(gpu), terms.loss)
        default = torch.cuda.default_stream()
        assert streams and all((s != default) == on for s in streams), (on, streams)
    assert torch.cuda.current_stream() == torch.cuda.default_stream()  # the current stream is given back
    assert out[False][1] != 0.0 and out[True][1] == pytest.approx(out[False][1], rel=1e-6)
    assert out[False][0] and set(out[True][0]) == set(out[False][0])
    for n, g in out[False][0].items():
        torch.testing.assert_close(out[True][0][n], g, rtol=1e-6, atol=1e-9, msg=n)


def test_groups_with_zero_advantages_are_recomputed_only_when_the_first_pass_took_them(tiny, monkeypatch):
    """The first pass is queued before the scoring, so it may hold a group whose advantages turn
    out all 0; the passes after it leave such groups out, and a first pass holding only such
    groups is not backpropagated. The gradient is the reference's either way."""
    import dataclasses

    model, tok = tiny
    base = ["objective.name=polychromic", "objective.diversity_weight=1.0", "objective.quality=constant",
            "objective.diversity_metric=semantic", "rollout.n_generations=4", "rollout.max_examples_for_diversity=3",
            "rollout.max_generation_length=5", "rollout.diversity_temperature=0.8"]
    cfg = load_config(None, base)
    texts = ["tell me a joke", "hello there, how are you?", "what is the weather like?"]
    ro = generate_rollouts(model, tok, texts, [tok(t)["input_ids"] for t in texts], cfg.rollout, seed=2)
    sizes = []
    real = poly.token_logprobs
    monkeypatch.setattr(poly, "token_logprobs", lambda m, b, *a: (sizes.append(b["completion_ids"].shape[0]), real(m, b, *a))[1])
    # Packed passes go group by group (the padded ones longest first): pass sizes as planned.
    for dead, rows, want_sizes, want_backwards in ((1, 2, [2, 2, 2, 2], 4),  # group 1 dead: never recomputed
                                                   (0, 4, [4, 4, 4], 2),  # the first pass is group 0, dead: no backward
                                                   (0, 2, [2, 2, 2, 2, 2], 4)):  # dead group 0 split: its rest left out
        groups = [list(g) for g in ro.texts]
        groups[dead] = ["the same reply"] * ro.n  # distances 0: every F(S) is 0, so every A_i is 0
        r = dataclasses.replace(ro, texts=groups)
        for extra in (["rollout.packed_recompute=true"], ["rollout.packed_recompute=false"]):
            c = load_config(None, base + [f"rollout.recompute_rows={rows}"] + extra)
            ref = _reference_grads(model, r, c)
            sizes.clear()
            calls = []
            poly.rollout_term(model, r, _embed, c, lambda loss: (calls.append(1), loss.backward()))
            got = _grads(model)
            if "rollout.packed_recompute=true" in extra:
                assert sizes == want_sizes and len(calls) == want_backwards, (dead, rows, sizes, calls)
            assert got.keys() == ref.keys()
            for n in ref:
                torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-7, msg=f"{n}, dead group {dead}, rows {rows}, {extra}")


def test_packed_token_logprobs_equal_the_padded_ones_and_the_config_is_restored(tiny):
    model, _ = tiny
    p, y = [[5, 6, 7, 9, 11], [8], [4, 4, 2]], [[1, 2], [3, 4, 9, 10], [12]]
    with poly.dropout_off(model):
        ref = token_logprobs(model, pack(p, y, 0, "cpu"), 0.7)
        got = token_logprobs(model, pack_packed(p, y, "cpu"), 0.7)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert model.get_base_model().config._attn_implementation != packed_mod.PACKED_ATTENTION


def test_packing_is_chosen_where_it_runs_and_refused_with_the_reason(tiny):
    model, _ = tiny
    assert packing(model, None) is False  # a CPU model: the padded passes
    assert packing(model, True) is True and packing(model, False) is False
    base = model.get_base_model()
    base.gradient_checkpointing_enable()
    try:
        with pytest.raises(ValueError, match="packed_recompute: true.*gradient checkpointing"):
            packing(model, True)
        assert packing(model, None) is False
    finally:
        base.gradient_checkpointing_disable()
    with pytest.raises(RuntimeError, match="without polychromic_cu_seqlens"):
        packed_mod.packed_attention(None, *(torch.zeros(1, 2, 3, 4) for _ in range(3)), None)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_checkpointing_reads_the_flags_the_library_walks_every_module_for(arch):
    """packed.checkpointing reads the model's, its decoder's and its layers' flags, where
    transformers sets them; the library's is_activation_checkpointing walks every module."""
    import warnings

    from test_fast_lora import tiny as tiny_lora

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from host_overhead import library_checkpointing  # transformers' own walk, under either of its names

    base = tiny_lora(arch).get_base_model()
    cases = [("off", lambda: None), ("on", lambda: base.gradient_checkpointing_enable()),
             ("off again", lambda: base.gradient_checkpointing_disable())]
    if "every_n_layers" in inspect.signature(base.activation_checkpointing_enable).parameters:
        cases += [("every 2nd layer", lambda: base.activation_checkpointing_enable(every_n_layers=2))]
    seen = []
    for name, act in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the deprecated gradient_checkpointing_* names
            act()
        seen.append(packed_mod.checkpointing(base))
        assert seen[-1] == library_checkpointing(base), name
        assert (packed_mod.unsupported(base) is not None) == seen[-1], name
    assert seen[:3] == [False, True, False]
    if len(cases) == 4:
        assert [layer.gradient_checkpointing for layer in base.model.layers] == [True, False]  # a layer left off
        assert seen[3] is True


def test_the_recompute_stays_without_dropout_after_a_kl_reference_pass(tiny):
    """peft puts its layers' dropout back in the model's (train) mode when disable_adapter()
    exits: the passes after a KL reference pass must still run without dropout."""
    model, _ = tiny
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.training and m.p == 0.1 for m in drops)
    batch = pack([[5, 6, 7, 9]], [[1, 2, 3]], 0, "cpu")
    with poly.dropout_off(model):
        first = token_logprobs(model, batch, 0.7).detach()
        with torch.no_grad(), poly.adapter_disabled(model):
            ref = token_logprobs(model, batch, 0.7)
        assert all(not m.training and m.p == 0.0 for m in drops)
        for _ in range(3):
            torch.testing.assert_close(token_logprobs(model, batch, 0.7).detach(), first, rtol=0, atol=0)
        with torch.no_grad(), model.disable_adapter():  # peft's own: the mode comes back, the rate stays 0
            pass
        torch.testing.assert_close(token_logprobs(model, batch, 0.7).detach(), first, rtol=0, atol=0)
    assert all(m.training and m.p == 0.1 for m in drops) and model.training
    assert not torch.equal(ref, first)  # the reference policy is another one (LoRA B is not zero)


def test_token_logprobs_rejects_an_eos_inside_the_min_new_tokens_block(tiny):
    model, tok = tiny
    batch = pack([[5, 6]], [[7, 8, 9]], 0, "cpu")
    with pytest.raises(ValueError, match="min_new_tokens=2"):
        token_logprobs(model, batch, 1.0, min_new_tokens=2, eos=[8])


def test_rows_per_pass_on_a_cpu_takes_all_unless_capped(tiny):
    model, _ = tiny
    assert rows_per_pass(model, [300] * 40, None, probe=5) == 40
    assert rows_per_pass(model, [300] * 40, 16, probe=5) == 16
    assert rows_per_pass(model, [300] * 3, 16, probe=5) == 3


def test_laid_tokens_are_the_segments_pack_packed_lays():
    g = torch.Generator().manual_seed(5)
    p = [torch.randint(5, 200, (int(n),), generator=g).tolist() for n in (7, 19, 3)]
    p = [p[0], p[0], p[0], p[1], p[2], p[2], p[0]]
    y = [[9] * 4, [8] * 6, [], [7] * 2, [6] * 5, [5] * 3, [4] * 2]
    # prompt 0 laid once for its first two samples; the empty completion and the later run of
    # prompt 0 lay it again
    assert laid_tokens(p, y) == [7 + 4, 6, 7 + 0, 19 + 2, 3 + 5, 3, 7 + 2]
    assert laid_tokens(p, y, share_prompts=False) == [len(a) + len(b) for a, b in zip(p, y)]
    for share in (True, False):
        lay = laid_tokens(p, y, share)
        batch = pack_packed(p, y, "cpu", share_prompts=share)
        assert batch["cu_seqlens"].diff().tolist() == lay
        assert batch["input_ids"].shape[1] == sum(lay)
        for k in range(1, len(p) + 1):  # a first-k pass lays the first k counts
            assert pack_packed(p[:k], y[:k], "cpu", share_prompts=share)["input_ids"].shape[1] == sum(lay[:k])


def test_fitting_rows_takes_the_longest_prefix_that_fits():
    tokens = [100, 50, 50, 200]  # at 2 bytes a token: 200, 300, 400, 800 bytes
    assert fitting_rows(tokens, 2.0, 400) == 3  # exactly full fits
    assert fitting_rows(tokens, 2.0, 399.9) == 2
    assert fitting_rows(tokens, 2.0, 10_000) == 4
    assert fitting_rows(tokens, 2.0, 150) == 1  # not even one fits: one is still tried


def test_rows_per_pass_on_a_gpu_sizes_a_shared_pass_by_the_tokens_it_lays(monkeypatch):
    """The GPU branch with a stand-in device: a packed pass counts a shared prompt once, so the
    same memory holds more sequences than rows x the longest width would say."""
    import polychromic.training.rollout as rollout_mod

    class OnCuda(torch.nn.Module):
        def parameters(self, recurse=True):
            yield types.SimpleNamespace(device=torch.device("cuda", 0))

    model = OnCuda()
    monkeypatch.setattr(rollout_mod, "free_gpu_bytes", lambda d: 1_000_000.0)
    monkeypatch.setattr(rollout_mod, "gpu_budget_bytes", lambda d: 1_000_000.0)
    prompts, completions = [[1] * 90] * 10, [[2] * 10] * 10  # two groups of 5 share one prompt
    assert rows_per_pass(model, laid_tokens(prompts, completions), None, probe=5) == 5  # nothing measured yet: one group
    rollout_mod._note_bytes_per_token(model, 1000.0)
    usable = 1_000_000.0 - rollout_mod.RESERVE_FRACTION * 1_000_000.0  # 940,000 bytes: 752 tokens at 1,250 a token
    assert usable // (rollout_mod.BACKWARD_FACTOR * 1000.0) == 752
    shared = laid_tokens(prompts, completions)  # 100, 10, 10, 10, 10, 100, ...
    assert rows_per_pass(model, shared, None, probe=5) == 10  # 280 tokens
    assert rows_per_pass(model, laid_tokens(prompts, completions, False), None, probe=5) == 7  # 100 each: 700 fits, 800 not
    assert rows_per_pass(model, [100] * 10, None, probe=5) == 7
    assert rows_per_pass(model, [100] * 10, 4, probe=5) == 4


def test_scoring_embeds_all_rollout_texts_in_one_call():
    from polychromic.generation import SamplingParams
    from polychromic.rewards import distance_matrix
    from polychromic.training.rollout import Rollouts

    texts = [[f"reply {i} {j} " + "xyz"[j % 3] * (j + 1) for j in range(4)] for i in range(3)]
    ro = Rollouts(prompt_texts=["a", "b", "c"], prompt_ids=[[1], [2], [3]], completion_ids=[[[5]] * 4] * 3,
                  finished=[[True] * 4] * 3, texts=texts, params=SamplingParams(), seed=0, seconds=0.0)
    calls = []

    def counting(batch):
        calls.append(list(batch))
        return _embed(batch)

    cfg = load_config(None, ["objective.quality=constant", "objective.diversity_metric=semantic"]).objective
    q, dist, _ = poly.score_rollouts(ro, counting, cfg)
    assert calls == [[t for g in texts for t in g]]  # one call, every text once
    for i, group in enumerate(texts):  # the same distances as embedding each group alone
        np.testing.assert_allclose(dist[i], distance_matrix(group, "semantic", _embed), rtol=0, atol=1e-12)
    assert q.shape == (3, 4)


@pytest.mark.parametrize("metric", ["semantic", "distinct"])
def test_scoring_with_relevance_reads_the_texts_before_one_encoder_call(monkeypatch, metric):
    """Relevance needs the distinct prompts and the replies embedded: one encoder call takes them
    all, after every guard and word count (the work on the texts alone, which the host does
    while the GPU runs the queued forward); the scores are those of unbatched scoring."""
    from polychromic import rewards
    from polychromic.generation import SamplingParams
    from polychromic.rewards import distance_matrix, score_quality
    from polychromic.training.rollout import Rollouts

    texts = [[f"a reply {i} {j} that says " + "xyz"[j % 3] * (j + 1) for j in range(4)] for i in range(3)]
    prompts = ["first prompt", "second prompt", "first prompt"]  # a prompt twice: embedded once
    ro = Rollouts(prompt_texts=prompts, prompt_ids=[[1], [2], [3]], completion_ids=[[[5]] * 4] * 3,
                  finished=[[True] * 4] * 3, texts=texts, params=SamplingParams(), seed=0, seconds=0.0)
    events, calls = [], []
    real_guard, real_words = rewards.guard, poly.words
    monkeypatch.setattr(rewards, "guard", lambda *a: (events.append("guard"), real_guard(*a))[1])
    monkeypatch.setattr(poly, "words", lambda t: (events.append("words"), real_words(t))[1])

    def counting(batch):
        events.append("encode")
        calls.append(list(batch))
        return _embed(batch)

    cfg = load_config(None, ["objective.quality=guard_x_relevance", f"objective.diversity_metric={metric}",
                             "objective.min_reply_words=1"]).objective
    q, dist, logs = poly.score_rollouts(ro, counting, cfg)
    flat = [t for g in texts for t in g]
    assert calls == [["first prompt", "second prompt", *flat]]
    assert events == ["words"] * 12 + ["guard"] * 12 + ["encode"]
    want_q = score_quality([p for p in prompts for _ in range(4)], flat, [True] * 12, _embed, cfg).reshape(3, 4)
    np.testing.assert_allclose(q, want_q, rtol=0, atol=1e-12)
    assert (q > 0).all()
    for i, group in enumerate(texts):
        np.testing.assert_allclose(dist[i], distance_matrix(group, metric, _embed), rtol=0, atol=1e-12)
    assert logs["train/avg_unique_words"] == pytest.approx(np.mean([len(set(real_words(t))) for t in flat]))


@pytest.mark.skipif(not (torch.cuda.is_available() and packed_mod.varlen_kernel()),
                    reason="needs a CUDA GPU and torch's variable-length attention kernel")
@pytest.mark.parametrize("compiled", [False, True])
def test_packed_pass_through_the_varlen_kernel_matches_the_padded_pass_on_a_gpu(compiled):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from polychromic.training.compiled import compile_layers, uncompile

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, max_position_embeddings=512)
    base = Qwen3ForCausalLM(cfg).to(device="cuda", dtype=torch.bfloat16)
    model = attach_lora(base, LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    assert packing(model, None) is True  # the default on a GPU with the kernel
    g = torch.Generator().manual_seed(3)
    # three samples of one prompt (shared in the packed row), one alone, two of another
    p = [torch.randint(5, 200, (int(n),), generator=g).tolist() for n in (7, 19, 3, 12)]
    p = [p[0], p[0], p[0], p[1], p[2], p[2]]
    y = [torch.randint(5, 200, (int(n),), generator=g).tolist() for n in (9, 4, 15, 1, 6, 11)]
    w = torch.randn(len(p), 15, generator=g).to("cuda")
    if compiled:
        compile_layers(model)
    out = []
    try:
        for batch in (pack(p, y, 0, "cuda"), pack_packed(p, y, "cuda", share_prompts=False), pack_packed(p, y, "cuda")):
            lp = token_logprobs(model, batch, 0.9)
            (lp * batch["completion_mask"] * w).sum().backward()
            out.append((torch.cat([q.grad.flatten().float() for q in model.parameters() if q.grad is not None]),
                        lp.detach().float()))
            model.zero_grad(set_to_none=True)
    finally:
        uncompile(model)
        torch._dynamo.reset()
    assert "kv_index" in batch  # the last layout shared its prompts
    (g_pad, lp_pad) = out[0]
    for g_packed, lp_packed in out[1:]:
        torch.testing.assert_close(lp_packed, lp_pad, rtol=0, atol=0.06)  # bf16 rounding of a different schedule
        assert float((g_packed - g_pad).norm() / g_pad.norm()) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the fused log-softmax is the GPU default")
def test_fused_tempered_logprobs_equal_the_chunked_ones_on_a_gpu():
    g = torch.Generator(device="cuda").manual_seed(0)
    z = (torch.randn(300, 5000, generator=g, device="cuda") * 4).to(torch.bfloat16)
    y = torch.randint(0, 5000, (300,), generator=g, device="cuda")
    block = torch.arange(300, device="cuda") % 4 == 0
    y[block & (y == 7)] = 0
    w = torch.randn(300, generator=g, device="cuda")
    out = []
    for fused in (False, True):
        zz = z.clone().requires_grad_(True)
        lp = tempered_logprobs(zz, y, 0.9, block, [7, 11], chunk_bytes=64 * 4 * 5000, fused=fused)
        (lp * w).sum().backward()
        out.append((lp.detach(), zz.grad.float()))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=0, atol=2e-3)


def test_attention_dropout_is_off_in_the_recompute_and_keeps_sft_unpacked():
    """A config with attention dropout: the recompute (dropout_off) runs without it, as the
    sampler did, the rate is restored after; a packed SFT pass, which would have to apply it, is
    not chosen by default and refused when asked for, with the reason."""
    from test_fast_lora import tiny

    model = tiny("qwen3")
    attn = [m for m in model.modules() if isinstance(getattr(m, "attention_dropout", None), float)]
    assert len(attn) == 2
    model.get_base_model().config.attention_dropout = 0.5
    for m in attn:
        m.attention_dropout = 0.5
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.eval()(input_ids=ids, use_cache=False).logits
        model.train()
        torch.manual_seed(1)
        assert not torch.allclose(model(input_ids=ids, use_cache=False).logits, ref)  # dropout on in train mode
        with poly.dropout_off(model):
            off = model(input_ids=ids, use_cache=False).logits
    assert torch.allclose(off, ref, atol=1e-6) and model.training
    assert [m.attention_dropout for m in attn] == [0.5, 0.5]

    assert packed_mod.use_packed(model, None, "trainer.packed_sft", training=True) is False
    with pytest.raises(ValueError, match=r"trainer.packed_sft: true, but Qwen3ForCausalLM cannot take a packed pass: "
                                         r"its attention dropout \(0.5\) applies in training"):
        packed_mod.use_packed(model, True, "trainer.packed_sft", training=True)
    assert packed_mod.use_packed(model, True, "rollout.packed_recompute", training=False) is True
