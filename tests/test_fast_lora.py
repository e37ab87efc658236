"""The lean LoRA training path (training/fast_lora.py) against peft's own forward, on tiny Llama
and Qwen3 models built from config objects: outputs and A/B gradients (float32 to rounding,
bfloat16 as close to a float64 reference as peft is), dropout masks from the same RNG, the
autograd function by gradcheck, gradient checkpointing, peft's fallbacks (no_grad, disabled,
merged, DoRA), the state dict, and a short training run whose adapter reloads in plain peft."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from polychromic.config import load_config
from polychromic.training import fast_lora
from polychromic.training.fast_lora import FastLoraLinear
from helpers import write_prepared

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny(arch: str, dtype=torch.float32, dropout: float = 0.0, use_dora: bool = False, seed: int = 0):
    """A 2-layer random model of `arch` with a LoRA on the seven projections, B non-zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    kw = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, attn_implementation="eager")
    model = (LlamaForCausalLM(LlamaConfig(**kw)) if arch == "llama" else Qwen3ForCausalLM(Qwen3Config(head_dim=12, **kw))).to(dtype)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=TARGETS, use_dora=use_dora))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    return model.train()


def run(model, ids, seed: int = 1):
    """Logits and the LoRA gradients of one CE forward/backward, dropout seeded."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(input_ids=ids, labels=ids, use_cache=False)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


IDS = torch.randint(0, 96, (3, 13), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_float32_matches_peft(arch, dropout):
    ref = tiny(arch, dropout=dropout)
    fast = copy.deepcopy(ref)
    assert fast_lora.install(fast) == 2 * len(TARGETS)
    l_ref, g_ref = run(ref, IDS)
    l_fast, g_fast = run(fast, IDS)  # the same seed: the same dropout masks, or the logits would differ
    torch.testing.assert_close(l_fast, l_ref, rtol=1e-5, atol=1e-5)
    assert g_fast.keys() == g_ref.keys() and len(g_ref) == 4 * len(TARGETS)
    for n in g_ref:
        assert g_fast[n].dtype == torch.float32
        assert rel(g_fast[n], g_ref[n]) < 1e-5, n


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_bfloat16_is_about_as_close_to_float64_as_peft(dropout):
    """bf16 model, float32 adapter: both paths against the same model in float64. The bf16
    activations dominate both errors (about 1% on each gradient); the bf16 low-rank branch adds
    a little (over seeds: logits 1.0-1.25x peft's error, all gradients together 1.0-1.4x)."""
    ref = tiny("qwen3", torch.bfloat16, dropout)
    fast = copy.deepcopy(ref)
    fast_lora.install(fast)
    hi = copy.deepcopy(ref).double()
    (l_ref, g_ref), (l_fast, g_fast), (l_hi, g_hi) = run(ref, IDS), run(fast, IDS), run(hi, IDS)
    assert l_fast.dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in g_fast.values())
    assert rel(l_fast, l_hi) < 1.5 * rel(l_ref, l_hi)

    def flat(g):  # every tensor on the scale of its float64 gradient
        return torch.cat([g[n].double().flatten() / g_hi[n].double().norm() for n in sorted(g_hi)])

    assert rel(flat(g_fast), flat(g_hi)) < 1.6 * rel(flat(g_ref), flat(g_hi))
    for n in g_hi:
        assert rel(g_fast[n], g_hi[n]) < 4 * rel(g_ref[n], g_hi[n]) < 0.1, n


def test_dropout_masks_follow_the_global_rng():
    fast = tiny("llama", dropout=0.5)
    fast_lora.install(fast)
    a, b, c = run(fast, IDS, seed=3)[0], run(fast, IDS, seed=3)[0], run(fast, IDS, seed=4)[0]
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("with_dropout", [False, True])
def test_function_gradcheck(with_dropout):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w, bias = torch.randn(4, 5, dtype=torch.float64, generator=g), torch.randn(4, dtype=torch.float64, generator=g)
    a = torch.randn(2, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, 2, dtype=torch.float64, generator=g, requires_grad=True)
    mask = (torch.rand(2, 3, 5, generator=g) > 0.3).double() / 0.7

    def f(x, a, b):
        d = x * mask if with_dropout else None
        return fast_lora.lora_linear(x, d, w, bias, a, b, 1.5)

    assert torch.autograd.gradcheck(f, (x, a, b))
    expected = x @ w.T + bias + 1.5 * (((x * mask) if with_dropout else x) @ a.T) @ b.T
    torch.testing.assert_close(f(x, a, b), expected)


@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_compiled_branch_is_added_out_of_place_and_matches_eager(monkeypatch, scale):
    """Under torch.compile the low-rank branch is a plain add (fused by inductor), in place
    only when INPLACE_UNDER_COMPILE is set; either way output and gradients equal eager's."""
    from torch._functorch.aot_autograd import aot_module_simplified

    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, generator=g, requires_grad=True)
    w = torch.randn(4, 5, generator=g)  # no bias: F.linear with one is itself an addmm
    a = torch.randn(2, 5, generator=g, requires_grad=True)
    b = torch.randn(4, 2, generator=g, requires_grad=True)

    def f(x, a, b):
        return fast_lora.lora_linear(x, None, w, None, a, b, scale)

    def grads(fn):
        for t in (x, a, b):
            t.grad = None
        y = fn(x, a, b)
        (y * torch.arange(4.0)).sum().backward()
        return [y.detach()] + [t.grad.clone() for t in (x, a, b)]

    want = grads(f)
    for inplace in (False, True):
        ops: list[set[str]] = []

        def backend(gm, example):
            def record(graph, _):
                ops.append({str(n.target) for n in graph.graph.nodes if n.op == "call_function"})
                return graph.forward

            return aot_module_simplified(gm, example, fw_compiler=record, bw_compiler=record)

        monkeypatch.setattr(fast_lora, "INPLACE_UNDER_COMPILE", inplace)
        torch._dynamo.reset()
        got = grads(torch.compile(f, backend=backend, fullgraph=True))
        for have, expected in zip(got, want):
            torch.testing.assert_close(have, expected)
        forward, backward = ops
        assert ("aten.addmm.default" in forward) is inplace
        assert ("aten.addmm.default" in backward) is inplace
    torch._dynamo.reset()


def test_gradient_checkpointing_gives_the_same_gradients():
    fast = tiny("qwen3", dropout=0.1)
    fast_lora.install(fast)
    _, plain = run(fast, IDS)
    fast.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    fast.get_base_model().enable_input_require_grads()
    _, ckpt = run(fast, IDS)
    for n in plain:
        assert rel(ckpt[n], plain[n]) < 1e-6, n


def test_peft_behaviour_is_kept_outside_the_fast_path():
    ref = tiny("llama", dropout=0.1)
    fast = copy.deepcopy(ref)
    fast_lora.install(fast)
    layer = fast.get_base_model().model.layers[0].self_attn.q_proj
    assert isinstance(layer, FastLoraLinear) and layer.fast_adapter(torch.zeros(1, 48)) == "default"
    ref.eval(), fast.eval()
    with torch.no_grad():  # sampling: peft's own forward, bit for bit
        assert layer.fast_adapter(torch.zeros(1, 48)) is None
        assert torch.equal(fast(input_ids=IDS).logits, ref(input_ids=IDS).logits)
        with fast.disable_adapter():
            base = fast(input_ids=IDS).logits
    with fast.disable_adapter():  # the reference policy: no adapter, no LoRA gradient
        assert layer.fast_adapter(torch.zeros(1, 48)) is None
        out = fast(input_ids=IDS, labels=IDS)
        assert torch.equal(out.logits.detach(), base)
        assert not out.loss.requires_grad
    live = fast(input_ids=IDS).logits.detach()
    fast.merge_adapter()
    try:
        assert layer.merged and layer.fast_adapter(torch.zeros(1, 48)) is None
        torch.testing.assert_close(fast(input_ids=IDS).logits.detach(), live, rtol=1e-4, atol=1e-4)
    finally:
        fast.unmerge_adapter()
    assert not layer.merged and torch.allclose(fast(input_ids=IDS).logits.detach(), live, atol=1e-5)
    assert not torch.allclose(live, base)


def test_dora_and_float16_keep_peft_forward():
    dora = tiny("llama", use_dora=True)
    fast = copy.deepcopy(dora)
    fast_lora.install(fast)
    layer = fast.get_base_model().model.layers[0].mlp.down_proj
    assert layer.fast_adapter(torch.zeros(1, 80)) is None
    assert torch.equal(run(fast, IDS)[0], run(dora, IDS)[0])
    half = tiny("llama", torch.float16)
    fast_lora.install(half)
    assert half.get_base_model().model.layers[0].mlp.down_proj.fast_adapter(torch.zeros(1, 80, dtype=torch.float16)) is None


def test_install_keeps_the_state_dict_and_fast_generation_and_uninstall_restores_peft():
    from peft.tuners.lora.layer import Linear

    from polychromic.generation.fast_support import unsupported_reason

    model = tiny("qwen3", dropout=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = fast_lora.install(model)
    assert n == fast_lora.installed(model) == 14 and fast_lora.install(model) == 14  # idempotent
    assert unsupported_reason(model) is None  # fast generation still serves the model
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert fast_lora.uninstall(model) == 14 and fast_lora.installed(model) == 0
    assert all(type(m) is Linear for m in model.modules() if isinstance(m, Linear))


def _config(tmp_path, model_dir, fast: bool):
    data = {
        "experiment": f"fast_{fast}", "runs_dir": str(tmp_path / "runs"),
        "model": {"path": str(model_dir), "dtype": "float32"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj", "down_proj"]},
        "data": {"prepared_dir": str(write_prepared(tmp_path / "prepared")), "max_length": 64},
        "objective": {"name": "sft"},
        "trainer": {"max_steps": 3, "batch_size": 2, "grad_accum": 2, "lr": 1e-2, "warmup_ratio": 0.0,
                    "save_every": 10, "device": "cpu", "fast_lora": fast},
    }
    path = tmp_path / f"fast_{fast}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def test_training_run_moves_the_adapter_and_it_reloads_in_plain_peft(tmp_path, tiny_model_dir, monkeypatch):
    from peft import PeftModel
    from safetensors.torch import load_file

    from polychromic.models import load_base_model
    from polychromic.training import loop

    counts = []
    real = fast_lora.install
    monkeypatch.setattr(loop.fast_lora, "install", lambda m: counts.append(real(m)) or counts[-1])
    runs = {fast: loop.train(_config(tmp_path, tiny_model_dir, fast)) for fast in (True, False)}
    assert counts == [2 * 3]  # the fast run only: 2 layers x 3 target modules
    w = {fast: load_file(str(r / "adapter" / "adapter_model.safetensors")) for fast, r in runs.items()}
    assert w[True].keys() == w[False].keys() and len(w[True]) == 12
    for k in w[True]:  # the same training up to float rounding (float32)
        assert rel(w[True][k], w[False][k]) < 1e-4, k
    assert json.loads((runs[True] / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"

    cfg = _config(tmp_path, tiny_model_dir, True)
    base = load_base_model(cfg.model, torch.device("cpu"))
    with torch.no_grad():
        before = base(input_ids=IDS).logits
    loaded = PeftModel.from_pretrained(base, runs[True] / "adapter")
    assert fast_lora.installed(loaded) == 0  # plain peft layers
    with torch.no_grad():
        after = loaded(input_ids=IDS).logits
    assert not torch.allclose(before, after, atol=1e-4)  # the trained adapter changes the outputs
    state = {k.replace(".default", ""): v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert all(torch.equal(state[k], w[True][k]) for k in w[True])
