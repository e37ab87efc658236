"""LoRA analysis: the factored SVD equals the dense one; adapters compare module by module."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from polychromic.evaluation import lora_analysis as la


@pytest.mark.parametrize("m,n,r", [(40, 30, 4), (7, 50, 8), (64, 5, 16), (3, 3, 6), (128, 96, 1)])
def test_factored_singular_values_equal_dense_svd(m, n, r):
    rng = np.random.default_rng(m * 1000 + n + r)
    A, B, scale = rng.normal(size=(r, n)), rng.normal(size=(m, r)), 2.5
    dense = np.linalg.svd(scale * B @ A, compute_uv=False)
    fast = la.singular_values(A, B, scale)
    k = min(m, n, r)
    np.testing.assert_allclose(fast[:k], dense[:k], rtol=1e-10, atol=1e-10)
    # Beyond rank r the dense spectrum is numerically zero, and so is the factored one.
    assert np.all(dense[k:] < 1e-9) and np.all(fast[k:] < 1e-9)

    f = la.LoraFactors("x", A, B, scale)
    st = la.module_stats(f, top=3)
    assert st["frobenius_norm"] == pytest.approx(np.linalg.norm(scale * B @ A), rel=1e-10)
    assert st["spectral_norm"] == pytest.approx(dense[0], rel=1e-10)
    p = dense[:k] / dense[:k].sum()
    assert st["effective_rank"] == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-9)
    assert st["stable_rank"] == pytest.approx(np.sum(dense**2) / dense[0] ** 2, rel=1e-9)
    assert st["top_singular_values"] == pytest.approx(list(dense[: min(3, k)]), rel=1e-9)


def test_effective_rank_known_answers():
    assert la.effective_rank(np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert la.effective_rank(np.array([5.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert la.effective_rank(np.zeros(3)) is None


def test_zero_update_has_undefined_ranks():
    f = la.LoraFactors("x", np.ones((4, 10)), np.zeros((6, 4)), 1.0)  # PEFT initialises B = 0
    st = la.module_stats(f)
    assert st["frobenius_norm"] == 0.0 and st["effective_rank"] is None and st["stable_rank"] is None


def test_inner_product_and_cosine_equal_dense():
    rng = np.random.default_rng(1)
    f = la.LoraFactors("x", rng.normal(size=(4, 30)), rng.normal(size=(20, 4)), 0.5)
    g = la.LoraFactors("x", rng.normal(size=(8, 30)), rng.normal(size=(20, 8)), 2.0)
    df, dg = f.scale * f.B @ f.A, g.scale * g.B @ g.A
    assert la.inner_product(f, g) == pytest.approx(float(np.sum(df * dg)), rel=1e-10)
    c = la.compare_modules(f, g)
    assert c["cosine"] == pytest.approx(float(np.sum(df * dg) / np.linalg.norm(df) / np.linalg.norm(dg)), rel=1e-10)
    assert c["norm_ratio"] == pytest.approx(np.linalg.norm(dg) / np.linalg.norm(df), rel=1e-10)
    assert c["relative_difference"] == pytest.approx(np.linalg.norm(dg - df) / np.linalg.norm(df), rel=1e-9)
    with pytest.raises(ValueError, match="shapes differ"):
        la.inner_product(f, la.LoraFactors("x", np.ones((4, 31)), np.ones((20, 4)), 1.0))


def _write_adapter(path, modules: dict, r=4, alpha=8, **extra):
    path.mkdir(parents=True)
    tensors = {}
    for name, (A, B) in modules.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = torch.tensor(A, dtype=torch.float32)
        tensors[f"base_model.model.{name}.lora_B.weight"] = torch.tensor(B, dtype=torch.float32)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": alpha, **extra}))
    return path


def test_compare_two_adapters_by_module_name(tmp_path):
    rng = np.random.default_rng(2)
    q = (rng.normal(size=(4, 16)), rng.normal(size=(24, 4)))
    v = (rng.normal(size=(4, 16)), rng.normal(size=(8, 4)))
    o = (rng.normal(size=(4, 24)), rng.normal(size=(16, 4)))
    a = _write_adapter(tmp_path / "a", {"model.layers.0.q_proj": q, "model.layers.0.v_proj": v, "model.layers.0.o_proj": o})
    b = _write_adapter(
        tmp_path / "b",
        {"model.layers.0.q_proj": (q[0], 2 * q[1]), "model.layers.0.v_proj": (v[0], -v[1]), "model.layers.1.q_proj": q},
    )
    out = la.compare_adapters(a, b)
    assert out["only_in_a"] == ["model.layers.0.o_proj"]
    assert out["only_in_b"] == ["model.layers.1.q_proj"]
    mq, mv = out["modules"]["model.layers.0.q_proj"], out["modules"]["model.layers.0.v_proj"]
    assert mq["cosine"] == pytest.approx(1.0) and mq["norm_ratio"] == pytest.approx(2.0)
    assert mq["relative_difference"] == pytest.approx(1.0)
    assert mv["cosine"] == pytest.approx(-1.0) and mv["norm_ratio"] == pytest.approx(1.0)
    assert mv["relative_difference"] == pytest.approx(2.0)
    assert out["summary"]["n_common_modules"] == 2
    assert out["summary"]["mean_module_cosine"] == pytest.approx(0.0)

    analysis = la.analyze_adapter(a)
    assert analysis["summary"]["n_modules"] == 3
    st = analysis["modules"]["model.layers.0.q_proj"]
    dense = np.linalg.svd(2.0 * q[1] @ q[0], compute_uv=False)  # scale = alpha / r = 8 / 4
    assert st["scale"] == 2.0 and st["shape"] == [24, 16]
    assert st["spectral_norm"] == pytest.approx(dense[0], rel=1e-5)


def test_rslora_and_alpha_pattern_scales(tmp_path):
    rng = np.random.default_rng(3)
    mods = {"model.layers.0.q_proj": (rng.normal(size=(4, 8)), rng.normal(size=(8, 4))),
            "model.layers.0.k_proj": (rng.normal(size=(4, 8)), rng.normal(size=(8, 4)))}
    d = _write_adapter(tmp_path / "rs", mods, r=4, alpha=8, use_rslora=True, alpha_pattern={"k_proj": 2})
    _, f = la.read_adapter(d)
    assert f["model.layers.0.q_proj"].scale == pytest.approx(8 / 2.0)  # alpha / sqrt(r)
    assert f["model.layers.0.k_proj"].scale == pytest.approx(2 / 2.0)


def test_bad_adapters_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json is missing"):
        la.read_adapter(tmp_path)
    d = _write_adapter(tmp_path / "dora", {"m.q_proj": (np.ones((2, 3)), np.ones((3, 2)))}, use_dora=True)
    with pytest.raises(ValueError, match="DoRA"):
        la.read_adapter(d)
    half = tmp_path / "half"
    half.mkdir()
    save_file({"base_model.model.m.q_proj.lora_A.weight": torch.ones(2, 3)}, str(half / "adapter_model.safetensors"))
    (half / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2}))
    with pytest.raises(ValueError, match="not both A and B"):
        la.read_adapter(half)


def test_real_peft_adapter_round_trip(tmp_path):
    """Key names and scale as PEFT writes them; the analysis matches the dense delta PEFT applies."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    model = get_peft_model(Qwen3ForCausalLM(cfg), LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    model.save_pretrained(tmp_path / "ad")
    out = la.analyze_adapter(tmp_path / "ad")
    assert sorted(out["modules"]) == ["model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj"]
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    dense = layer.get_delta_weight("default").detach().double().numpy()
    st = out["modules"]["model.layers.0.self_attn.q_proj"]
    assert st["scale"] == 3.0
    assert st["frobenius_norm"] == pytest.approx(np.linalg.norm(dense), rel=1e-5)
    assert st["top_singular_values"] == pytest.approx(list(np.linalg.svd(dense, compute_uv=False)[:4]), rel=1e-5)
