"""The fast rollout path (polychromic.generation.fast) against plain generate() on the same weights.

The CPU tests run fastgen's arithmetic eagerly (no graphs, no compile), so CI checks that the
hand-written forward, masking, positions and sampling rules agree with transformers. The CUDA
tests run the real path (merged copy, static cache, torch.compile, CUDA graphs) through
`generation.sample`'s dispatch; without a GPU they skip, saying so.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from polychromic.generation import fast as fastgen
from polychromic.generation import SamplingParams, sample

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: the captured, compiled decode path only exists there")

VOCAB = 96
EOS = VOCAB - 1
PAD = 0
TOK = SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD)


def _tiny(model_type: str = "qwen3", dtype=torch.float32, vocab: int = VOCAB, lora: bool = True, logit_scale: float = 1.0, device="cpu"):
    """A 2-layer random model of the given family with a LoRA (random B, so the adapter matters)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, eos_token_id=None, bos_token_id=None, pad_token_id=PAD,
    )
    cls, cfg = {
        "qwen3": (Qwen3ForCausalLM, lambda: Qwen3Config(tie_word_embeddings=False, **common)),
        "llama": (LlamaForCausalLM, lambda: LlamaConfig(tie_word_embeddings=True, **common)),  # SmolLM2's family
        "qwen2": (Qwen2ForCausalLM, lambda: Qwen2Config(tie_word_embeddings=False, **common)),  # q/k/v biases
    }[model_type]
    torch.manual_seed(0)
    model = cls(cfg())
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.1)
    model = model.to(device=device, dtype=dtype).eval()
    if not lora:
        return model
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    return model.eval()


def _reference(model):
    """A plain transformers model holding exactly the weights the fast path generated with."""
    merged = fastgen.merged_weights(model)
    ref = copy.deepcopy(model).merge_and_unload()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name in merged:
                p.copy_(merged[name])
    return ref


PROMPTS = [[5, 17, 33, 2, 9], [44, 3], [7, 7, 7, 12, 60, 61, 62, 8, 1], [90, 31, 4]]


def _teacher_forced_margins(ref, prompt, completion):
    """Top-1 minus top-2 logit of the reference model at each completion position."""
    ids = torch.tensor([prompt + completion], device=ref.device)
    with torch.no_grad():
        logits = ref(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(completion)].float()
    top2 = logits.topk(2, dim=-1).values
    return (top2[:, 0] - top2[:, 1]).tolist()


def _assert_greedy_agrees(ref, prompts, fast, plain, tol: float, min_compared: float):
    """Token-for-token equality, except that after a position where the reference's top two
    logits are closer than `tol` (a near-tie that differently ordered rounding may break either
    way) the rest of that row cannot be compared. Fails on any other difference, and when too
    little could be compared for the check to mean anything."""
    compared = total = 0
    for p, f_row, r_row in zip(prompts, fast, plain):
        for f, r in zip(f_row, r_row):
            margins = _teacher_forced_margins(ref, list(p), r.ids)
            total += len(r.ids)
            for j, tok in enumerate(r.ids):
                if j >= len(f.ids) or f.ids[j] != tok:
                    assert margins[j] < tol, f"fast {f.ids} vs plain {r.ids}: differ at {j} where the margin is {margins[j]:.4g} >= {tol}"
                    break
                compared += 1
            else:
                assert len(f.ids) == len(r.ids) and f.finished == r.finished, (f, r)
    assert compared >= min_compared * total, f"only {compared}/{total} tokens comparable"


# ---------------------------------------------------------------------------------------------
# CPU: fastgen's arithmetic (eager) against transformers


@pytest.mark.parametrize("model_type,attention", [("qwen3", "sdpa"), ("llama", "sdpa"), ("qwen2", "sdpa"),
                                                  ("qwen3", "flex")])
def test_greedy_equals_plain_generate_cpu(model_type, attention, monkeypatch):
    monkeypatch.setattr(fastgen, "DECODE_ATTENTION", attention)
    model = _tiny(model_type)
    params = SamplingParams(greedy=True, max_new_tokens=12)
    fast = fastgen.sample(model, TOK, PROMPTS, 2, params, batch_size=3)
    plain = sample(_reference(model), TOK, PROMPTS, 2, params)
    assert fastgen.last_stats["chunks"] == 3 and fastgen.last_stats["steps"] == 3 * 11
    _assert_greedy_agrees(_reference(model), PROMPTS, fast, plain, tol=1e-4, min_compared=0.95)


def test_eos_and_min_new_tokens_match_plain_generate_cpu():
    model = _tiny("qwen3")
    params = SamplingParams(greedy=True, max_new_tokens=16)
    # Make EOS the token greedy decoding emits most, so rows stop at different steps.
    first = fastgen.sample(model, SimpleNamespace(eos_token_id=None, pad_token_id=PAD), PROMPTS, 1, params)
    counts = torch.bincount(torch.tensor([t for row in first for c in row for t in c.ids]), minlength=VOCAB)
    eos = int(counts.argmax())
    tok = SimpleNamespace(eos_token_id=eos, pad_token_id=PAD)
    for min_new in (0, 3):
        p = SamplingParams(greedy=True, max_new_tokens=16, min_new_tokens=min_new)
        fast = fastgen.sample(model, tok, PROMPTS, 1, p)
        plain = sample(_reference(model), tok, PROMPTS, 1, p)
        assert [[c.ids for c in r] for r in fast] == [[c.ids for c in r] for r in plain]
        assert [[c.finished for c in r] for r in fast] == [[c.finished for c in r] for r in plain]
        assert any(c.finished for r in fast for c in r) and any(not c.finished for r in fast for c in r)
        assert all(len(c.ids) > min_new for r in fast for c in r)


def _first_token_target(ref, prompt, params: SamplingParams):
    """The exact distribution of the first sampled token, through transformers' own warpers."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    with torch.no_grad():
        logits = ref(input_ids=torch.tensor([prompt], device=ref.device)).logits[:, -1].float()
    if params.temperature != 1.0:
        logits = TemperatureLogitsWarper(params.temperature)(None, logits)
    if params.top_k:
        logits = TopKLogitsWarper(params.top_k)(None, logits)
    if params.top_p < 1.0:
        logits = TopPLogitsWarper(params.top_p)(None, logits)
    return logits.softmax(-1)[0].double().cpu()


def _gof_pvalue(tokens: list[int], probs: torch.Tensor) -> float:
    """Chi-square goodness of fit; tokens with expected count < 5 pooled into one cell."""
    from scipy.stats import chisquare

    n = len(tokens)
    observed = torch.bincount(torch.tensor(tokens), minlength=len(probs)).double()
    expected = probs * n
    assert observed[probs == 0].sum() == 0, "sampled a token the warpers removed"
    big = expected >= 5
    obs = torch.cat([observed[big], observed[~big].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    return float(chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue)


def _two_sample_pvalue(a: list[int], b: list[int]) -> float:
    from scipy.stats import chi2_contingency

    ca = torch.bincount(torch.tensor(a), minlength=VOCAB)
    cb = torch.bincount(torch.tensor(b), minlength=VOCAB)
    big = (ca + cb) >= 10
    table = torch.stack([torch.cat([ca[big], ca[~big].sum().view(1)]), torch.cat([cb[big], cb[~big].sum().view(1)])])
    table = table[:, table.sum(0) > 0]
    return float(chi2_contingency(table.numpy()).pvalue)


SAMPLING_CASES = [
    SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=2),  # on-policy
    SamplingParams(temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=2),
]


def _check_frequencies(model, params: SamplingParams, n: int):
    prompt = [5, 17, 33, 2, 9]
    # On a GPU through generation.sample's dispatch (graphs, compile); on a CPU fastgen eagerly.
    run = sample if model.device.type == "cuda" else fastgen.sample
    fast = run(model, TOK, [prompt], n, params, seed=1)[0]
    ref = _reference(model)
    target = _first_token_target(ref, prompt, params)
    first = [c.ids[0] for c in fast]
    assert _gof_pvalue(first, target) > 1e-3
    # The test has power: the same samples reject the distribution at another temperature.
    other = _first_token_target(ref, prompt, SamplingParams(temperature=params.temperature * 1.5, top_p=params.top_p, top_k=params.top_k))
    assert _gof_pvalue(first, other) < 1e-6
    # The second token (conditional on the first) against plain sampling with generate().
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(fastgen.ENV_SWITCH, "0")
        plain = sample(ref, TOK, [prompt], n, params, seed=2)[0]
    second_fast = [c.ids[1] for c in fast if len(c.ids) > 1]
    second_plain = [c.ids[1] for c in plain if len(c.ids) > 1]
    assert _two_sample_pvalue(second_fast, second_plain) > 1e-3


@pytest.mark.parametrize("params", SAMPLING_CASES, ids=["on_policy", "t0.7_p0.9_k20"])
def test_sampled_frequencies_match_cpu(params):
    _check_frequencies(_tiny("qwen3", vocab=VOCAB, logit_scale=6.0), params, n=3000)


def test_trainable_state_bit_identical_and_adapter_used_cpu():
    model = _tiny("qwen3")
    model.train()
    ids = torch.tensor([PROMPTS[0] + PROMPTS[2]])
    model(input_ids=ids, labels=ids).loss.backward()  # mid-accumulation: gradients present
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    params = SamplingParams(greedy=True, max_new_tokens=8)
    with_adapter = fastgen.sample(model, TOK, PROMPTS, 1, params)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert grads and all(torch.equal(grads[k], p.grad) for k, p in model.named_parameters() if p.grad is not None)
    assert flags == {k: p.requires_grad for k, p in model.named_parameters()} and model.training
    with model.disable_adapter():
        without = fastgen.sample(model, TOK, PROMPTS, 1, params)
        base_ref = copy.deepcopy(model).unload()
    assert [c.ids for r in with_adapter for c in r] != [c.ids for r in without for c in r]
    _assert_greedy_agrees(base_ref, PROMPTS, without, sample(base_ref, TOK, PROMPTS, 1, params), tol=1e-4, min_compared=0.95)


def test_unsupported_models_are_named():
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB))
    assert "gpt2" in fastgen.unsupported_reason(gpt2)
    with pytest.raises(ValueError, match="gpt2"):
        fastgen.sample(gpt2, TOK, PROMPTS, 1, SamplingParams(greedy=True))
    dora = get_peft_model(_tiny(lora=False), LoraConfig(r=4, use_dora=True, target_modules=["q_proj"]))
    assert "DoRA" in fastgen.unsupported_reason(dora)
    head = get_peft_model(_tiny(lora=False), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    assert "lm_head" in fastgen.unsupported_reason(head)
    merged = _tiny()
    merged.merge_adapter()
    assert "merged" in fastgen.unsupported_reason(merged)
    assert fastgen.unsupported_reason(_tiny()) is None and fastgen.unsupported_reason(_tiny(lora=False)) is None
    with pytest.raises(ValueError, match="temperature"):
        fastgen.sample(_tiny(), TOK, PROMPTS, 1, SamplingParams(temperature=0.0))


def test_plan_chunks():
    assert fastgen.plan_chunks(5000, 512) == [500] * 10
    assert fastgen.plan_chunks(40, 512) == [40]
    assert fastgen.plan_chunks(10, 4) == [4, 3, 3]
    assert fastgen.plan_chunks(0, 8) == []


def test_chunk_cap_from_free_memory():
    # budget = MEMORY_FRACTION (0.5) x 100 = 50 bytes; a new bucket costs 1 + 0.25 a row -> 40 rows
    assert fastgen.MEMORY_FRACTION == 0.5
    assert fastgen.chunk_cap(100, None, 100, 1.0, 0.25) == 40
    assert fastgen.chunk_cap(30, None, 100, 1.0, 0.25) == 30  # the rows there are
    assert fastgen.chunk_cap(100, 16, 100, 1.0, 0.25) == 16  # batch_size
    assert fastgen.chunk_cap(100, None, 1, 1.0, 0.25) == fastgen.ROW_BUCKET  # never below one bucket
    # A held bucket at this length needs only its temporaries: 48 rows x 0.25 = 12 <= 50
    assert fastgen.chunk_cap(96, None, 100, 1.0, 0.25, held=[48]) == 48  # 2 x 48
    assert fastgen.chunk_cap(100, None, 100, 1.0, 0.25, held=[48]) == 40  # 34 + 33 + 33 would fill a new 40-row bucket
    assert fastgen.chunk_cap(100, None, 100, 1.0, 0.25, held=[104]) == 100  # 100 rows fit the 104-row bucket
    assert fastgen.chunk_cap(100, None, 100, 1.0, 0.25, held=[200]) == 40  # larger than any chunk: not taken
    assert fastgen.chunk_cap(96, None, 100, 1.0, 2.0, held=[48]) == 16  # its temporaries (96) do not fit: 50 // 3
    assert fastgen.chunk_cap(100, None, 100, 1.0, 0.25, held=[16]) == 40  # a larger new bucket fits: taken
    # 600 rows at 504 would be planned as 2 x 300 (a new 304-row bucket): the held one is not taken
    assert fastgen.plan_chunks(600, 504) == [300, 300]
    assert fastgen.chunk_cap(600, 512, 2000, 28.0, 1.0, held=[504]) == 32  # 1000 // 29 = 34 -> 32 rows
    assert fastgen.chunk_cap(1000, 512, 2000, 28.0, 1.0, held=[504]) == 504  # 2 x 500: both in the held bucket


def test_chunk_cap_on_a_gpu_counts_the_buckets_held_at_this_length(monkeypatch):
    """The engine's branch with a stand-in CUDA engine and fixed free memory: the buckets held at
    the call's cache length enter as `held`, those at another length do not."""
    from collections import OrderedDict

    from polychromic.generation.fast_layers import Shape

    shape = Shape(n_heads=4, n_kv=2, head_dim=4, inter=8, eps=1e-6, scaling=0.5)
    eng = SimpleNamespace(device=torch.device("cuda", 0), shape=shape, dtype=torch.bfloat16, n_layers=2, buckets=OrderedDict())
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (6_000_000, 80_000_000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 1_000)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1_000)
    kv = 2 * 2 * 2 * 192 * 4 * 2  # layers x (K, V) x KV heads x length x head_dim x bytes: 12,288 a row
    temp = 64 * 4 * 8 * 2 + 6 * 16 * 4  # prefill temporaries + sampling's vocabulary rows: 4,480 a row
    assert 3_000_000 // (kv + temp) // 8 * 8 == 176
    args = (eng, 500, 512, 64, 192, 16)
    assert fastgen._chunk_cap(*args) == 176  # nothing held
    eng.buckets[(496, 256)] = None  # another cache length: no help
    assert fastgen._chunk_cap(*args) == 176
    eng.buckets[(504, 192)] = None  # 504 x 4,480 = 2.26 MB of temporaries fit the 3 MB budget
    assert fastgen._chunk_cap(*args) == 500


def test_chunk_cap_keeps_the_bucket_a_first_call_allocated():
    """500 rows: the first call takes a 504-row bucket; its cache then leaves less free memory,
    which must not send the second call of the same shape to a new, smaller bucket."""
    kv, temp, free = 28.0, 10.0, 40_000.0
    first = fastgen.chunk_cap(500, 512, free, kv, temp)
    assert first == 500 and fastgen.plan_chunks(500, first) == [500]
    bucket = 504
    left = free - bucket * kv
    assert int(0.5 * left // (kv + temp)) // 8 * 8 == 336  # what free memory alone would allow now
    assert fastgen.chunk_cap(500, 512, left, kv, temp, held=[bucket]) == 500
    assert fastgen.plan_chunks(5000, fastgen.chunk_cap(5000, 512, left, kv, temp, held=[bucket])) == [500] * 10


# ---------------------------------------------------------------------------------------------
# CUDA: the real path, through generation.sample's dispatch


@needs_cuda
@pytest.mark.parametrize("dtype,attention", [(torch.float32, "sdpa"), (torch.bfloat16, "sdpa"), (torch.float32, "flex"),
                                             (torch.bfloat16, "flex")], ids=["fp32_sdpa", "bf16_sdpa", "fp32_flex", "bf16_flex"])
def test_cuda_greedy_equals_plain_generate(dtype, attention, monkeypatch):
    monkeypatch.setattr(fastgen, "DECODE_ATTENTION", attention)
    model = _tiny("qwen3", dtype=dtype, device="cuda")
    params = SamplingParams(greedy=True, max_new_tokens=24)
    fast = sample(model, TOK, PROMPTS, 2, params)
    assert fastgen.last_stats["graphs"] and fastgen.last_stats["compiled"], fastgen.last_stats
    ref = _reference(model)
    monkeypatch.setenv(fastgen.ENV_SWITCH, "0")
    plain = sample(ref, TOK, PROMPTS, 2, params)
    # bf16: kernels that order their sums differently round differently; a flip is legitimate only
    # where the reference's top two logits lie within a few bf16 steps of each other.
    tol = 1e-4 if dtype == torch.float32 else 0.1
    _assert_greedy_agrees(ref, PROMPTS, fast, plain, tol=tol, min_compared=0.95 if dtype == torch.float32 else 0.5)


@needs_cuda
@pytest.mark.parametrize("params", SAMPLING_CASES, ids=["on_policy", "t0.7_p0.9_k20"])
def test_cuda_sampled_frequencies_match(params):
    _check_frequencies(_tiny("qwen3", vocab=VOCAB, logit_scale=6.0, device="cuda"), params, n=4000)


@needs_cuda
def test_cuda_seeded_and_state_bit_identical():
    model = _tiny("qwen3", dtype=torch.bfloat16, device="cuda")
    model.train()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = SamplingParams(temperature=1.0, max_new_tokens=20)
    a = sample(model, TOK, PROMPTS, 3, params, seed=7)  # first call: compiles and captures
    assert fastgen.last_stats["capture_s"] > 0
    b = sample(model, TOK, PROMPTS, 3, params, seed=7)  # replays the captured graph
    assert fastgen.last_stats["capture_s"] < 0.05
    c = sample(model, TOK, PROMPTS, 3, params, seed=8)
    ids = lambda out: [c.ids for r in out for c in r]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and model.training
    # Training moves the adapter: the next call must generate with the new weights.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p))
    d = sample(model, TOK, PROMPTS, 3, params, seed=7)
    assert ids(d) != ids(a)
    layer = model.get_base_model().model.layers[0].self_attn.q_proj

    def merged_q():
        return fastgen.merged_weights(model)["model.layers.0.self_attn.q_proj.weight"].float()

    def expect():
        return layer.base_layer.weight.float() + layer.scaling["default"] * layer.lora_B["default"].weight.float() @ layer.lora_A["default"].weight.float()

    torch.testing.assert_close(merged_q(), expect(), rtol=2e-2, atol=2e-2)
    # A tensor replaced (a new address) or the adapter switched off must reach the merged copy too.
    layer.lora_B["default"].weight = torch.nn.Parameter(torch.randn_like(layer.lora_B["default"].weight))
    sample(model, TOK, PROMPTS, 1, params, seed=7)
    torch.testing.assert_close(merged_q(), expect(), rtol=2e-2, atol=2e-2)
    with model.disable_adapter():
        sample(model, TOK, PROMPTS, 1, params, seed=7)
        assert torch.equal(merged_q(), layer.base_layer.weight.float())
    sample(model, TOK, PROMPTS, 1, params, seed=7)
    torch.testing.assert_close(merged_q(), expect(), rtol=2e-2, atol=2e-2)


@needs_cuda
def test_cuda_eos_and_min_new_match_plain(monkeypatch):
    model = _tiny("qwen3", device="cuda")
    params = SamplingParams(greedy=True, max_new_tokens=20, min_new_tokens=3)
    first = sample(model, SimpleNamespace(eos_token_id=None, pad_token_id=PAD), PROMPTS, 1, SamplingParams(greedy=True, max_new_tokens=20))
    eos = int(torch.bincount(torch.tensor([t for r in first for c in r for t in c.ids])).argmax())
    tok = SimpleNamespace(eos_token_id=eos, pad_token_id=PAD)
    fast = sample(model, tok, PROMPTS, 1, params)
    ref = _reference(model)
    monkeypatch.setenv(fastgen.ENV_SWITCH, "0")
    plain = sample(ref, tok, PROMPTS, 1, params)
    assert [[(c.ids, c.finished) for c in r] for r in fast] == [[(c.ids, c.finished) for c in r] for r in plain]
    assert any(c.finished for r in fast for c in r)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k,r", [(64, 128, 16), (100, 300, 8), (1024, 4096, 16), (77, 200, 24)])
def test_cuda_merge_kernel_equals_addmm(dtype, n, k, r):
    from polychromic.generation import fast_kernels

    g = torch.Generator(device="cuda").manual_seed(n + k + r)
    w = torch.randn(n, k, device="cuda", generator=g).to(dtype)
    b = torch.randn(n, r, device="cuda", generator=g) * 0.1  # float32 adapters, as peft keeps them
    a = torch.randn(r, k, device="cuda", generator=g) * 0.1
    want = torch.addmm(w, b.to(dtype), a.to(dtype), alpha=0.5)
    out = torch.full((n + 3, k), float("nan"), device="cuda", dtype=dtype)[1 : n + 1]  # a row slice of a larger buffer
    got = fast_kernels.merge_into(out, w, b, a, 0.5)
    assert got.data_ptr() == out.data_ptr() and torch.isfinite(got).all()
    # both round one float32 sum of the same bf16/fp32 products; only the summation order differs
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=8e-3, atol=8e-3)
    torch.testing.assert_close(got, want, **tol)
    with pytest.raises(ValueError, match="do not fit"):
        fast_kernels.merge_into(out, w, b[:, :-1], a, 0.5)
